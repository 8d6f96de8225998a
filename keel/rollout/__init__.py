"""Staged rollout decisions: guardrails and sequential statistics (between monitoring and serving)."""
