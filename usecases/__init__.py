"""Deployments of Keel: each module holds one use case's whole configuration."""
