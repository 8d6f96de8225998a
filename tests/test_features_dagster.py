"""The dbt feature layer inside Keel's graph: gated days only, dbt tests as checks, no skew."""

from __future__ import annotations

import io

import pytest
from conftest import FAULT_DAY, FIRST_DAY, LAST_DAY, USECASE, query

import usecases.flights_online as flights_online
from keel.app.pipeline import run_pipeline
from keel.data.replay import replay

pytestmark = pytest.mark.slow


def _run(start, end) -> tuple[int, str]:
    out = io.StringIO()
    code = run_pipeline(start, end, out=out)
    return code, out.getvalue()


def test_keel_run_builds_features_for_every_gated_day_and_holds_back_a_blocked_one(replayed_home):
    replay(USECASE, replayed_home.landing, FIRST_DAY, LAST_DAY, fault="null_spike", fault_date=FAULT_DAY)

    code, out = _run(FIRST_DAY, LAST_DAY)

    assert code == 1, out
    assert f"held back from features: {FAULT_DAY}" in out
    per_day = dict(query(
        replayed_home.warehouse,
        "select flight_date, count(*) from marts.flight_features group by 1",
    ))
    validated = dict(query(
        replayed_home.warehouse,
        "select _partition_date, count(*) from validated.flights group by 1",
    ))
    assert FAULT_DAY not in per_day
    assert set(per_day) == set(validated) - {FAULT_DAY}
    for day, n in per_day.items():
        assert n == validated[day], f"{day}: one feature row per validated flight"
    labels = query(replayed_home.warehouse, "select count(*) from marts.flight_labels where flight_date = ?", [FAULT_DAY])
    assert labels == [(0,)]
    # The label never leaks into the feature columns.
    columns = {c for (c,) in query(
        replayed_home.warehouse,
        "select column_name from information_schema.columns where table_schema = 'marts' and table_name = 'flight_features'",
    )}
    assert not columns & {"is_disrupted", "is_cancelled", "is_diverted", "arr_delay", "dep_delay", "dep_time"}
    assert "feature checks (dbt tests, feature_skew):" in out and ", 0 failed" in out.split("feature checks")[1].splitlines()[0]


def test_feature_skew_fails_when_the_online_path_drifts_from_the_mart(replayed_home, monkeypatch):
    original = flights_online.OnlineFeatureStore.get_features

    def drifted(self, flights, as_of=None):
        rows = original(self, flights, as_of)
        rows["distance"] = rows["distance"] + 1.0  # a second implementation that rounds differently
        return rows

    code, out = _run(FIRST_DAY, FIRST_DAY + (LAST_DAY - FIRST_DAY) // 3)
    assert code == 0, out
    monkeypatch.setattr(flights_online.OnlineFeatureStore, "get_features", drifted)

    import dagster as dg

    from definitions import defs

    result = defs.resolve_job_def("build_daily_features").execute_in_process(
        instance=dg.DagsterInstance.get(), partition_key=FIRST_DAY.isoformat(), raise_on_error=False,
    )
    (skew,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "feature_skew"]
    assert not skew.passed
    assert skew.partition == FIRST_DAY.isoformat()
    assert "differing values" in skew.description
    assert skew.metadata["mismatches"].value == skew.metadata["rows_compared"].value > 0
    assert "distance" in skew.metadata["examples"].value
