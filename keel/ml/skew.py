"""Training-serving skew: the verdict on a day's feature rows recomputed by the online path."""
from __future__ import annotations

import pandas as pd


def skew_verdict(day, compared: int, mismatches: pd.DataFrame) -> tuple[bool, str]:
    """Whether the day passes (rows were compared and every value was equal), and why.
    ``mismatches`` holds one row per differing value, with its ``column``."""
    passed = compared > 0 and mismatches.empty
    if passed:
        return True, f"{compared} rows recomputed online: every feature equal"
    if compared == 0:
        return False, f"no feature rows for {day}"
    columns = mismatches["column"].nunique() if "column" in mismatches else "?"
    return False, f"{len(mismatches)} differing values in {columns} column(s) over {compared} rows"
