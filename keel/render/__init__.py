"""Render: every plot and table a person sees, as pure functions of the figures they show."""
