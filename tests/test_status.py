"""``keel status``: one view of the latest result of every asset check, of every kind.

The home is the session's trained template (keel run over January and February 2013: data
gates, dbt tests, feature_skew, the promotion gates), trained again, scored and monitored for
February 20-28 (important_feature_drift), then read back through the command.
"""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
from conftest import query
from model_fixtures import copy_home, materialize_reference, monitor, score, train

from keel.app.cli import main
from keel.core.warehouse import CHECK_KINDS
from keel.registry.promotion import GATES

FIRST, LAST = dt.date(2013, 2, 20), dt.date(2013, 2, 28)
MONITORED = [(FIRST + dt.timedelta(days=i)).isoformat() for i in range((LAST - FIRST).days + 1)]


def _dbt_checks() -> set[tuple[str, str]]:
    """(asset, check) of every dbt test, as Dagster's own dbt assets declare them (the
    incremental models' and the others')."""
    from definitions import defs

    found = set()
    for key in (["marts", "flight_features"], ["staging", "stg_airlines"]):
        specs = defs.get_assets_def(dg.AssetKey(key)).check_specs
        found |= {(spec.asset_key.to_user_string(), spec.name) for spec in specs}
    return found


def test_status_lists_the_latest_result_of_every_check_of_each_kind_under_its_real_asset_key(
        template, tmp_path, monkeypatch, capsys):
    paths = copy_home(template, tmp_path / "keel", monkeypatch)
    training = train(trials=1)
    assert training.success
    assert score(dt.date(2013, 2, 14), LAST).success
    assert materialize_reference().success
    monitoring = monitor(FIRST, LAST)
    assert monitoring.success

    assert main(["status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    by_kind: dict[str, list[dict]] = {}
    for check in doc["checks"]:
        assert {"kind", "asset", "partition", "name", "passed", "blocking", "severity", "message"} == set(check)
        by_kind.setdefault(check["kind"], []).append(check)
    assert set(by_kind) == set(CHECK_KINDS)
    keys = [(c["asset"], c["partition"], c["name"]) for c in doc["checks"]]
    assert len(keys) == len(set(keys)), "one latest result per asset, check and partition"

    assert {c["asset"] for c in by_kind["gate"]} == {f"validated/{t}" for t in ("flights", "weather", "airlines",
                                                                                 "airports", "planes")}

    assert {(c["asset"], c["name"]) for c in by_kind["dbt_test"]} == _dbt_checks()
    recency = [c for c in by_kind["dbt_test"] if c["name"].startswith("recency_flight_features")]
    assert [c["asset"] for c in recency] == ["marts/flight_features"]

    featured = {d.isoformat() for (d,) in query(paths.warehouse, "select distinct flight_date from marts.flight_features")}
    skew = by_kind["feature_skew"]
    assert {c["asset"] for c in skew} == {"marts/flight_features"}
    assert {c["partition"] for c in skew} == featured
    assert all(c["passed"] and c["blocking"] for c in skew)

    promotion = {c["name"]: c for c in by_kind["promotion"]}
    assert set(promotion) == set(GATES)
    assert {c["asset"] for c in promotion.values()} == {"models/evaluation_report"}
    verdicts = {e.check_name: e.passed for e in training.get_asset_check_evaluations()}
    assert {name: c["passed"] for name, c in promotion.items()} == verdicts

    drift = by_kind["monitoring"]
    assert {(c["asset"], c["name"]) for c in drift} == {("monitoring/feature_drift", "important_feature_drift")}
    assert sorted(c["partition"] for c in drift) == MONITORED
    evaluated = {e.partition: e.passed for e in monitoring.get_asset_check_evaluations()
                 if e.check_name == "important_feature_drift"}
    assert {c["partition"]: c["passed"] for c in drift} == evaluated
    assert not any(c["blocking"] for c in drift)

    assert main(["status"]) == 0
    text = capsys.readouterr().out
    for kind, checks in by_kind.items():
        passed = sum(c["passed"] for c in checks)
        assert any(line.split()[:3] == [kind, f"{passed:,}", "passed"] for line in text.splitlines()), (kind, text)
