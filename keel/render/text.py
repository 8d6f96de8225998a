"""Short texts a person reads in the terminal and the UI."""
from __future__ import annotations


def version_text(version) -> str:
    """``v3``, or ``none`` for a model version that does not exist."""
    return "none" if version in (None, "none") else f"v{version}"
