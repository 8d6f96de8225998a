"""Deployments of Keel: each module holds one use case's whole configuration."""

# The use case a home runs unless KEEL_USECASE or keel.toml's ``usecase`` names another.
DEFAULT = "usecases.flights"
