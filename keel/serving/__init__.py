"""Serving: the real-time prediction API (features from live events, the tier chain per request)."""
