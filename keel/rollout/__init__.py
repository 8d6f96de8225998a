"""Rollout: the decisions of a staged rollout (guardrails) and their statistics (always-valid
tests for the canary's error rate and quality).

A layer between monitoring and serving: the serving side counts requests and errors per arm,
the registry records the stage, and this package says, from those counts and from matured
labels, whether the canary is worse than the champion, in a way that stays valid however often
the guardrail sensor looks.
"""
