"""Served outcomes: every prediction served, batch and online, joined to its label as it
resolves, and the served performance and business value measured on them.

The framework part runs on a small warehouse written here (a use case of its own, so nothing
of flights is assumed); its figures are checked against scikit-learn computed on the same
joined rows, read back from the table, and the business value against a hand count. The
Dagster asset runs on the ``trained`` home (real models, February 20-22 scored)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from keel.core.spec import BusinessMetric, ModelSpec
from keel.ml.predictions import write_predictions
from keel.monitoring import outcomes
from keel.serving.served import load_served

FIRST = dt.date(2024, 3, 1)
DAYS = [FIRST + dt.timedelta(days=i) for i in range(9)]
COMPUTED = dt.datetime(2024, 4, 1, 12, 0)
THRESHOLDS = {("items_primary", 3): 0.4, ("items_fallback", 1): 0.55}
VALUE = BusinessMetric(name="net value", unit="EUR", true_positive=10.0, false_positive=2.0,
                       false_negative=3.0, true_negative=0.5)


def band(frame: pd.DataFrame) -> pd.Series:
    return pd.Series(np.where(frame["hour"] < 12, "am", "pm"), index=frame.index)


SPEC = ModelSpec(
    features_relation="marts.item_features", labels_relation="marts.item_labels",
    corrections_relation="marts.item_corrections", key="item_id", date_column="item_date",
    label="is_bad", features=("x", "grp", "hour"), categorical=("grp",), fallback_features=("x",),
    baseline_feature="x", slices=("grp", "hour_band"), derived={"hour_band": band},
    label_resolved_column="known_at", business=VALUE,
)


@pytest.fixture
def warehouse(tmp_path):
    """Nine days of 120 items each: 90 scored in batch (most by the primary v3, some by the
    fallback v1), 30 answered online, 10 of those also scored in batch; a few labels not known
    yet, a few resolved late, two corrected."""
    rng = np.random.default_rng(7)
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    rows = []
    for day in DAYS:
        for i in range(120):
            rows.append((f"{day:%Y%m%d}-{i:03d}", day, float(rng.random()), ["a", "b", "c"][i % 3], int(rng.integers(0, 24))))
    features = pd.DataFrame(rows, columns=["item_id", "item_date", "x", "grp", "hour"])
    truth = rng.random(len(features)) < 0.15 + 0.6 * features["x"]
    hours = rng.uniform(2, 30, len(features))
    known_at = (pd.to_datetime(features["item_date"]) + pd.to_timedelta(hours, unit="h")).dt.floor("s")
    labels = pd.DataFrame({"item_id": features["item_id"], "item_date": features["item_date"],
                           "is_bad": pd.array(truth, dtype="boolean"), "known_at": known_at})
    unknown = features.index[features["item_id"].str.endswith(("-007", "-008"))]
    labels.loc[unknown, "is_bad"] = pd.NA
    con.execute("create schema marts")
    con.register("f", features)
    con.execute("create table marts.item_features as select * from f")
    con.register("l", labels)
    con.execute("create table marts.item_labels as select * from l")
    corrected = [features["item_id"].iloc[5], features["item_id"].iloc[130]]
    con.execute("create table marts.item_corrections (item_id varchar, is_bad boolean, feedback_id varchar, "
                "valid_from timestamp, valid_to timestamp)")
    for n, key in enumerate(corrected):
        upstream = bool(labels.loc[labels["item_id"] == key, "is_bad"].iloc[0])
        con.execute("insert into marts.item_corrections values (?, ?, ?, ?, null)",
                    [key, not upstream, f"fb-{n}", dt.datetime(2024, 3, 20)])
    scores = np.clip(features["x"] + rng.normal(0, 0.2, len(features)), 0, 1)
    batch = features[features.index % 120 < 90].copy()
    batch["score"] = scores[batch.index]
    fallback = batch.index % 120 >= 80
    batch["tier"] = np.where(fallback, "fallback", "primary")
    batch["model_name"] = np.where(fallback, "items_fallback", "items_primary")
    batch["model_version"] = np.where(fallback, 1, 3)
    batch["scored_at"] = dt.datetime(2024, 3, 25)
    write_predictions(con, SPEC, batch, DAYS)
    online = features[features.index % 120 >= 80]
    records = [{
        "request_id": f"r-{k}", "key": key, "date": day.isoformat(), "score": float(scores[k]), "tier": "primary",
        "model_name": "items_primary", "model_version": 3, "snapshot_version": "s1", "features_as_of": "x",
        "latency_us": 100.0, "served_at": f"{day.isoformat()}T08:00:00Z", "features": {},
    } for k, key, day in zip(online.index, online["item_id"], online["item_date"])]
    load_served(con, SPEC, records, DAYS)
    yield con, features, labels, corrected
    con.close()


def measured(con):
    frame = outcomes.joined_outcomes(con, SPEC, DAYS, THRESHOLDS, computed_at=COMPUTED)
    _, rows = outcomes.replace_days(con, DAYS, frame, lambda window: outcomes.performance(
        window, DAYS, slices=SPEC.slices, business=SPEC.business, slice_min_rows=20, computed_at=COMPUTED))
    return frame, rows


def test_every_served_prediction_batch_and_online_is_joined_to_its_corrected_label(warehouse):
    con, features, labels, corrected = warehouse
    frame, _ = measured(con)
    stored = con.execute("select * from monitoring.served_outcomes order by day, source, key, request_id").df()
    # 90 batch + 40 online answers a day (items 80..119 answered online), counted from what was written
    assert len(stored) == len(frame) == 9 * (90 + 40)
    assert stored.groupby("source").size().to_dict() == {"batch": 9 * 90, "online": 9 * 40}
    assert set(stored.loc[stored["source"] == "online", "request_id"].str[:2]) == {"r-"}
    # tier and version as served, and the version's threshold
    assert stored.groupby(["tier", "model_name", "model_version"]).size().to_dict() == {
        ("fallback", "items_fallback", 1): 9 * 10, ("primary", "items_primary", 3): 9 * 80 + 9 * 40}
    assert set(stored.loc[stored["model_version"] == 1, "threshold"]) == {0.55}
    # labels: unknown ones kept, null; corrected ones flipped and marked
    upstream = labels.set_index("item_id")["is_bad"]
    unknown = stored["key"].str.endswith(("-007", "-008"))
    assert stored.loc[unknown, "label"].isna().all() and stored.loc[unknown, "label_source"].isna().all()
    assert stored.loc[unknown, "label_resolved_at"].isna().all()
    for key in corrected:
        row = stored[stored["key"] == key].iloc[0]
        assert row["label"] == int(not upstream[key]) and row["label_source"] == "correction"
        assert row["feedback_id"].startswith("fb-")
    plain = stored[~unknown & ~stored["key"].isin(corrected)]
    assert (plain["label"].to_numpy() == upstream[plain["key"]].astype(int).to_numpy()).all()
    assert set(plain["label_source"]) == {"upstream"}
    # the resolution time is the labels' own, and its maturity in hours after the day began
    known_at = labels.set_index("item_id")["known_at"]
    assert (pd.to_datetime(plain["label_resolved_at"]).to_numpy() == known_at[plain["key"]].to_numpy()).all()
    hours = (known_at[plain["key"]].to_numpy() - pd.to_datetime(plain["day"]).to_numpy()) / np.timedelta64(1, "h")
    assert np.allclose(plain["resolved_after_hours"].to_numpy(dtype=float), hours)
    # slices from the mart, the derived one included
    grp = features.set_index("item_id")
    first = stored.iloc[0]
    assert json.loads(first["slices"]) == {"grp": grp.loc[first["key"], "grp"],
                                           "hour_band": "am" if grp.loc[first["key"], "hour"] < 12 else "pm"}


def test_served_performance_matches_sklearn_on_the_same_joined_rows(warehouse):
    con, *_ = warehouse
    measured(con)
    stored = con.execute("select * from monitoring.served_outcomes").df()
    table = con.execute("select * from monitoring.served_performance").df()
    day = DAYS[-1]
    cases = {
        ("day", "all", None): stored[stored["day"] == pd.Timestamp(day)],
        ("trailing", "all", None): stored[stored["day"] >= pd.Timestamp(day - dt.timedelta(days=6))],
        ("trailing", "online", 3): stored[(stored["day"] >= pd.Timestamp(day - dt.timedelta(days=6)))
                                          & (stored["source"] == "online")],
        ("day", "batch", 1): stored[(stored["day"] == pd.Timestamp(day)) & (stored["model_version"] == 1)],
    }
    for (window, source, version), rows in cases.items():
        rows = rows[rows["label"].notna()]
        y, p, t = rows["label"].astype(int).to_numpy(), rows["score"].to_numpy(), rows["threshold"].to_numpy()
        pick = (table["day"] == pd.Timestamp(day)) & (table["window"] == window) & (table["source"] == source) \
            & (table["slice"] == "all")
        pick &= table["model_version"].isna() if version is None else table["model_version"] == version
        (got,) = table[pick].to_dict("records")
        predicted = (p >= t).astype(int)
        assert got["labelled"] == len(rows)
        assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
        assert got["pr_auc"] == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
        assert got["log_loss"] == pytest.approx(skm.log_loss(y, p), abs=1e-12)
        assert got["brier"] == pytest.approx(skm.brier_score_loss(y, p), abs=1e-12)
        assert got["precision_1"] == pytest.approx(skm.precision_score(y, predicted, pos_label=1))
        assert got["recall_1"] == pytest.approx(skm.recall_score(y, predicted, pos_label=1))
        assert got["precision_0"] == pytest.approx(skm.precision_score(y, predicted, pos_label=0))
        assert got["recall_0"] == pytest.approx(skm.recall_score(y, predicted, pos_label=0))
        (tn, fp), (fn, tp) = skm.confusion_matrix(y, predicted, labels=[0, 1])
        assert (got["tp"], got["fp"], got["fn"], got["tn"]) == (tp, fp, fn, tn)
        # expected calibration error over 10 equal-width bins, by hand
        bins = np.minimum((p * 10).astype(int), 9)
        ece = sum(np.sum(bins == b) / len(p) * abs(p[bins == b].mean() - y[bins == b].mean())
                  for b in range(10) if np.any(bins == b))
        assert got["ece"] == pytest.approx(ece, abs=1e-12)
    # per slice value, pooled over versions
    rows = stored[(stored["day"] == pd.Timestamp(day)) & stored["label"].notna()]
    rows = rows[[json.loads(s)["grp"] == "b" for s in rows["slices"]]]
    (got,) = table[(table["day"] == pd.Timestamp(day)) & (table["window"] == "day") & (table["slice"] == "grp")
                   & (table["slice_value"] == "b")].to_dict("records")
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(rows["label"].astype(int), rows["score"]), abs=1e-12)


def test_the_business_value_is_the_configured_values_of_the_confusion_counts():
    # Five rows at threshold 0.5: two true positives, one false alarm, one miss, one true
    # negative: 2 x 10 - 1 x 2 - 1 x 3 + 1 x 0.5 = 15.5 EUR, 3.1 per prediction.
    y = np.array([1, 1, 0, 1, 0], dtype=float)
    p = np.array([0.9, 0.6, 0.7, 0.2, 0.1])
    got = outcomes.group_metrics(y, p, np.full(5, 0.5), VALUE)
    assert (got["tp"], got["fp"], got["fn"], got["tn"]) == (2, 1, 1, 1)
    assert got["business_value"] == 15.5 and got["business_value_per_prediction"] == pytest.approx(3.1)
    assert got["threshold"] == 0.5
    # A row's own threshold decides: at 0.8 for the second row it is a miss, not a hit.
    got = outcomes.group_metrics(y, p, np.array([0.5, 0.8, 0.5, 0.5, 0.5]), VALUE)
    assert (got["tp"], got["fn"], got["business_value"], got["threshold"]) == (1, 2, 2.5, None)
    # A cost is a positive number, and every value a finite one: a use case that writes a
    # cost as a negative gain is told so when its configuration loads.
    with pytest.raises(ValueError, match="positive"):
        BusinessMetric(name="n", unit="EUR", true_positive=1.0, false_positive=-2.0)
    with pytest.raises(ValueError, match="finite"):
        BusinessMetric(name="n", unit="EUR", true_positive=float("nan"), false_positive=2.0)


def test_a_day_is_replaced_whole_and_a_rerun_gives_the_same_tables(warehouse):
    con, *_ = warehouse
    measured(con)
    before = con.execute("select count(*), sum(score) from monitoring.served_outcomes").fetchone()
    perf = con.execute("select count(*) from monitoring.served_performance").fetchone()
    measured(con)
    assert con.execute("select count(*), sum(score) from monitoring.served_outcomes").fetchone() == before
    assert con.execute("select count(*) from monitoring.served_performance").fetchone() == perf
    # a failure in the measurement leaves both tables as they were
    frame = outcomes.joined_outcomes(con, SPEC, DAYS[:1], THRESHOLDS, computed_at=COMPUTED)

    def broken(window):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        outcomes.replace_days(con, DAYS[:1], frame.head(3), broken)
    assert con.execute("select count(*), sum(score) from monitoring.served_outcomes").fetchone() == before


def test_maturity_shows_what_an_early_read_would_have_seen(warehouse):
    con, *_ = warehouse
    frame, _ = measured(con)
    reads = {r["read_at"]: r for r in outcomes.maturity(frame, hours=(12, 24))}
    labelled = frame[frame["label"].notna()]
    assert reads["final"]["labelled"] == len(labelled)
    assert reads["+12 h"]["labelled"] == int((labelled["resolved_after_hours"] <= 12).sum())
    assert 0 < reads["+12 h"]["labelled"] < reads["+24 h"]["labelled"] < reads["final"]["labelled"]


def test_the_status_summary_holds_the_last_day_pooled_and_per_version(warehouse):
    con, *_ = warehouse
    measured(con)
    doc = outcomes.summary(con)
    assert doc["day"] == DAYS[-1].isoformat() and doc["days_measured"] == len(DAYS)
    trailing = doc["windows"]["trailing"]
    assert trailing["start"] == (DAYS[-1] - dt.timedelta(days=6)).isoformat()
    first = trailing["groups"][0]
    assert (first["source"], first["model_version"]) == ("all", None)
    assert {(g["source"], g["tier"], g["model_version"]) for g in trailing["groups"][1:]} == {
        ("batch", "primary", 3), ("batch", "fallback", 1), ("online", "primary", 3)}
    json.dumps(doc, allow_nan=False)



def test_the_trigger_reads_served_performance_only_when_the_deployment_says_so(warehouse):
    from keel.core.policies import RetrainPolicy, TriggerPolicy
    from keel.monitoring.retraining import Champion, decide

    con, *_ = warehouse
    measured(con)
    champion = Champion("items_primary", 3, DAYS[0] - dt.timedelta(days=1))
    day = DAYS[-1]
    (n, auc) = con.execute(
        "select labelled, roc_auc from monitoring.served_performance where day = ? and \"window\" = 'trailing' "
        "and source = 'all' and slice = 'all'", [day]).fetchone()
    served = decide(con, RetrainPolicy(trigger=TriggerPolicy(performance_source="served_outcomes", min_auc=0.99,
                                                             min_auc_rows=100)), champion, day)
    signal = served.signals["performance"]
    assert (signal["n"], signal["value"]) == (n, auc) and signal["fired"] and served.fired == ["performance"]
    # today's default reads monitoring.performance, which this warehouse does not have
    default = decide(con, RetrainPolicy(trigger=TriggerPolicy(min_auc=0.99, min_auc_rows=100)), champion, day)
    assert default.signals["performance"]["n"] == 0 and not default.signals["performance"]["fired"]
    with pytest.raises(ValueError, match="performance_source"):
        TriggerPolicy(performance_source="holdout")


# --------------------------------------------------------------------------------------------
# The asset, on a home with real models (v1 champion, February 20-22 scored)

SCORED = [dt.date(2013, 2, 20), dt.date(2013, 2, 21), dt.date(2013, 2, 22)]


def measure_served(first: dt.date, last: dt.date):
    import dagster as dg
    from conftest import RANGE_END, RANGE_START

    from definitions import defs

    return defs.resolve_job_def("measure_served_daily").execute_in_process(
        instance=dg.DagsterInstance.get(), raise_on_error=False,
        tags={RANGE_START: first.isoformat(), RANGE_END: last.isoformat()})


def test_the_asset_joins_what_was_served_to_the_flights_labels_and_matches_sklearn(trained):
    from conftest import PRIMARY, query, registry

    paths, _ = trained
    result = measure_served(SCORED[0], SCORED[-1])
    assert result.success
    events = result.asset_materializations_for_node("monitoring__served_outcomes")
    assert [e.partition for e in events] == [d.isoformat() for d in SCORED]
    meta = {k: v.value for k, v in events[-1].metadata.items()}
    # every batch prediction of the days, counted from serving.predictions itself
    ((served,),) = query(paths.warehouse, "select count(*) from serving.predictions where flight_date between ? and ?",
                         [SCORED[0], SCORED[-1]])
    assert served > 0 and meta["dagster/row_count"] == served
    joined = query(paths.warehouse,
                   "select o.label, cast(l.is_disrupted as integer), o.label_resolved_at, l.label_resolved_at_utc, "
                   "o.threshold, o.model_name, o.model_version "
                   "from monitoring.served_outcomes o join marts.flight_labels l on l.flight_id = o.key")
    assert len(joined) == served
    assert all(row[0] == row[1] and row[2] == row[3] for row in joined)
    # the primary's threshold is the one its training run logged
    client = registry(paths).client()
    run = client.get_model_version(PRIMARY, "1").run_id
    threshold = client.get_run(run).data.metrics["valid.threshold"]
    assert {row[4] for row in joined if row[5] == PRIMARY and row[6] == 1} == {threshold}
    # the pooled trailing window of the last day against sklearn, on the stored rows
    rows = pd.DataFrame(query(paths.warehouse, "select label, score, threshold from monitoring.served_outcomes "
                              "where label is not null"), columns=["label", "score", "threshold"])
    ((auc, brier, log_loss, recall, value, labelled),) = query(
        paths.warehouse, "select roc_auc, brier, log_loss, recall_1, business_value, labelled "
        "from monitoring.served_performance where day = ? and \"window\" = 'trailing' and source = 'all' "
        "and slice = 'all'", [SCORED[-1]])
    y, p = rows["label"].to_numpy(), rows["score"].to_numpy()
    predicted = (p >= rows["threshold"].to_numpy()).astype(int)
    assert labelled == len(rows)
    assert auc == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert brier == pytest.approx(skm.brier_score_loss(y, p), abs=1e-12)
    assert log_loss == pytest.approx(skm.log_loss(y, p), abs=1e-12)
    assert recall == pytest.approx(skm.recall_score(y, predicted))
    (tn, fp), (fn, tp) = skm.confusion_matrix(y, predicted, labels=[0, 1])
    assert value == pytest.approx(400.0 * tp - 60.0 * fp)  # flights' configured values
    # slices of flights (carrier, origin, month, departure-hour band) are measured
    slices = {s for (s,) in query(paths.warehouse, "select distinct slice from monitoring.served_performance")}
    assert slices == {"all", "carrier", "origin", "month", "dep_hour_band"}
    assert Path(meta["served_performance_plot"]).stat().st_size > 10_000
    assert "| read at" in meta["label_maturity"] and "precision 1" in meta["per_class_trailing"]


def test_keel_status_json_holds_the_served_performance_of_the_last_day_beside_every_other_key(trained, capsys):
    from keel.app.cli import main

    assert measure_served(SCORED[0], SCORED[-1]).success
    assert main(["status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"tables", "checks", "predictions", "degraded", "monitoring", "retraining", "models"} <= set(doc)
    served = doc["served_performance"]
    assert served["day"] == SCORED[-1].isoformat() and served["days_measured"] == len(SCORED)
    pooled = served["windows"]["trailing"]["groups"][0]
    assert (pooled["source"], pooled["tier"], pooled["model_version"]) == ("all", "all", None)
    assert pooled["rows"] == sum(doc["predictions"][d.isoformat()][t] for d in SCORED for t in ("primary", "fallback", "baseline"))
    assert pooled["tp"] + pooled["fp"] + pooled["fn"] + pooled["tn"] == pooled["labelled"]
    assert {(g["source"], g["tier"]) for g in served["windows"]["day"]["groups"][1:]} <= {
        ("batch", "primary"), ("batch", "fallback"), ("batch", "baseline")}
    # a range that ends before the last day reads that range's last day
    assert main(["status", "--json", "--end", SCORED[0].isoformat()]) == 0
    assert json.loads(capsys.readouterr().out)["served_performance"]["day"] == SCORED[0].isoformat()


def test_served_outcomes_waits_for_the_days_batch_scores_labels_and_online_log():
    import dagster as dg

    from assets.partitions import daily_partitions
    from definitions import defs

    graph = defs.resolve_asset_graph()
    node = graph.get(dg.AssetKey(["monitoring", "served_outcomes"]))
    assert node.parent_keys == {dg.AssetKey(["models", "predictions"]), dg.AssetKey(["marts", "flight_labels"]),
                                dg.AssetKey(["serving", "online_predictions"])}
    assert node.partitions_def == daily_partitions and node.group_name == "monitoring"
    assert node.automation_condition.get_label() == "daily_refresh"
    job = defs.resolve_job_def("measure_served_daily")
    assert set(job.asset_layer.selected_asset_keys) == {node.key}


def test_answers_the_api_logged_are_measured_beside_the_batch_scores(trained):
    # Runs after the status test: it adds online answers to the module's home.
    import dagster as dg
    import orjson
    from conftest import query

    from definitions import defs

    paths, _ = trained
    day = SCORED[-1]
    batch = query(paths.warehouse, "select flight_id, score, model_name, model_version from serving.predictions "
                  "where flight_date = ? and tier = 'primary' order by flight_id limit 25", [day])
    folder = paths.home / "serving" / "predictions" / "2026-12-01"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "4242.jsonl").write_bytes(b"".join(orjson.dumps({
        "request_id": f"req-{i}", "key": key, "date": day.isoformat(), "score": score, "tier": "primary",
        "model_name": name, "model_version": version, "snapshot_version": "s", "features_as_of": "f",
        "latency_us": 900.0, "served_at": "2026-12-01T10:00:00Z", "features": {}, "model_set": {},
    }) + b"\n" for i, (key, score, name, version) in enumerate(batch)))
    # The log's feature vectors are empty, so serving_skew fails; the answers are loaded all the same.
    defs.resolve_job_def("load_served_daily").execute_in_process(
        instance=dg.DagsterInstance.get(), raise_on_error=False, partition_key=day.isoformat())
    assert measure_served(day, day).success
    rows = query(paths.warehouse, "select source, count(*), count(label), count(distinct key) "
                 "from monitoring.served_outcomes where day = ? group by source order by source", [day])
    ((batch_rows,),) = query(paths.warehouse, "select count(*) from serving.predictions where flight_date = ?", [day])
    assert rows == [("batch", batch_rows, batch_rows, batch_rows), ("online", 25, 25, 25)]
    ((online_version, n),) = query(
        paths.warehouse, "select model_version, labelled from monitoring.served_performance where day = ? "
        "and \"window\" = 'day' and source = 'online' and slice = 'all'", [day])
    assert (online_version, n) == (batch[0][3], 25)
