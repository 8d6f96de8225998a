"""Label corrections: taken in from the CLI and CSV files, loaded into the warehouse by their
asset, in effect in dbt's corrections model, applied to training as of a moment, and ignored
by ``keel reproduce`` when they came after the model it reproduces."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import pandas as pd
import pytest
from conftest import TEMPLATE_END, TEMPLATE_START, query, train

from keel.app.cli import main
from keel.core.config import current
from keel.core.warehouse import connect
from keel.data.feedback import MAX_REASON, log_path, read_log, submit
from keel.ml.datasets import build_training_set, labelled_frame, labels_in_effect, latest_feedback, training_config

DAY = dt.date(2013, 1, 10)


def log_lines(home) -> list[dict]:
    """The feedback log as the file holds it, read without the code that writes it."""
    path = log_path(home.home)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def flights_of(home, day: dt.date, n: int) -> list[tuple[str, bool]]:
    return query(home.warehouse, "select flight_id, is_disrupted from marts.flight_labels "
                 "where flight_date = ? order by flight_id limit ?", [day, n])


def build_views():
    from definitions import defs

    result = defs.resolve_job_def("build_feature_views").execute_in_process(
        instance=dg.DagsterInstance.get(), raise_on_error=False)
    assert result.success
    return result


def add(*args: str) -> int:
    return main(["feedback", "add", *args])


def test_feedback_is_validated_before_anything_is_stored_and_an_id_is_recorded_once(home, capsys, tmp_path):
    (key, upstream), (other, _) = flights_of(home, DAY, 2)
    label = str(int(not upstream))
    assert add("--key", key, "--label", label, "--reason", "diverted to BDL", "--actor", "ops", "--id", "fb-1") == 0
    assert add("--key", key, "--label", label, "--reason", "diverted to BDL", "--actor", "ops", "--id", "fb-1") == 0
    assert "already recorded fb-1" in capsys.readouterr().out
    assert [(r["feedback_id"], r["key"], r["label"], r["actor"], r["source"]) for r in log_lines(home)] == [
        ("fb-1", key, int(label), "ops", "cli")]

    refused = {
        "same id, other content": ["--key", key, "--label", str(upstream * 1), "--reason", "x", "--id", "fb-1"],
        "unknown key": ["--key", "no-such-flight", "--label", "1", "--reason", "x"],
        "oversized reason": ["--key", key, "--label", "1", "--reason", "r" * (MAX_REASON + 1)],
        "empty reason": ["--key", key, "--label", "1", "--reason", "  "],
        "bad id": ["--key", key, "--label", "1", "--reason", "x", "--id", "a b"],
    }
    for case, args in refused.items():
        assert add(*args) == 2, case
        err = capsys.readouterr().err
        assert "nothing was recorded" in err, (case, err)
    with pytest.raises(SystemExit) as bad_label:
        add("--key", key, "--label", "2", "--reason", "x")
    assert bad_label.value.code == 2
    assert len(log_lines(home)) == 1

    # A CSV is all or nothing: one bad row refuses the file and names its line.
    bad = tmp_path / "bad.csv"
    bad.write_text(f"key,label,reason\n{other},1,late crew\n{key},0,data error\nnope,1,ghost flight\n")
    assert main(["feedback", "import", str(bad), "--actor", "analyst"]) == 2
    assert "line 4: key 'nope' is not a known key" in capsys.readouterr().err
    assert len(log_lines(home)) == 1
    good = tmp_path / "good.csv"
    good.write_text(f"key,label,reason,feedback_id\n{other},1,late crew,csv-1\n{key},{int(upstream)},data error,csv-2\n")
    assert main(["feedback", "import", str(good), "--actor", "analyst", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"recorded": ["csv-1", "csv-2"], "already_recorded": []}
    assert [r["feedback_id"] for r in log_lines(home)] == ["fb-1", "csv-1", "csv-2"]
    assert {r["source"] for r in log_lines(home)[1:]} == {"csv"}

    assert main(["status", "--json"]) == 0
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    assert json.loads(capsys.readouterr().out)["feedback"] == {today: {"cli": 1, "csv": 2}}


def test_corrections_reach_training_as_of_a_moment(home, capsys):
    spec = current().usecase.model
    (first, first_upstream), (second, second_upstream) = flights_of(home, DAY, 2)
    with connect(home.warehouse, read_only=True) as con:
        before = build_training_set(con, spec, TEMPLATE_START, TEMPLATE_END, valid_weeks=2, test_weeks=2)
    assert before.meta["feedback"] == {"as_of": None, "labels_corrected": 0}

    assert add("--key", first, "--label", str(int(not first_upstream)), "--reason", "diverted", "--actor", "ops") == 0
    build_views()
    (as_of,) = query(home.warehouse, "select valid_from from marts.label_corrections")[0]
    # Later: the first flight is corrected back, and another flight is corrected too.
    assert add("--key", first, "--label", str(int(first_upstream)), "--reason", "diversion was a data error",
               "--actor", "lead") == 0
    assert add("--key", second, "--label", str(int(not second_upstream)), "--reason", "cancelled late",
               "--actor", "ops") == 0
    result = build_views()
    loaded = result.asset_materializations_for_node("feedback__label_corrections")[0].metadata
    assert loaded["dagster/row_count"].value == 3 and loaded["conflicting_keys"].value == 1

    in_effect = query(home.warehouse, "select flight_id, is_disrupted, is_current, is_conflicting "
                      "from marts.label_corrections order by valid_from")
    assert in_effect == [(first, not first_upstream, False, True), (first, first_upstream, True, True),
                         (second, not second_upstream, True, False)]

    with connect(home.warehouse, read_only=True) as con:
        upstream = labelled_frame(con, spec, DAY, DAY).set_index("flight_id")["is_disrupted"]
        then = labelled_frame(con, spec, DAY, DAY, feedback_as_of=as_of.isoformat()).set_index("flight_id")["is_disrupted"]
        now = build_training_set(con, spec, TEMPLATE_START, TEMPLATE_END, valid_weeks=2, test_weeks=2)
        again = build_training_set(con, spec, TEMPLATE_START, TEMPLATE_END, valid_weeks=2, test_weeks=2,
                                   feedback_as_of=None)
    assert (upstream.to_dict() == {f: int(v) for f, v in query(
        home.warehouse, "select flight_id, is_disrupted from marts.flight_labels where flight_date = ?", [DAY])})
    assert then[first] == int(not first_upstream) and then[second] == int(second_upstream)
    assert (then != upstream).sum() == 1
    now_labels = now.frame.set_index("flight_id")["is_disrupted"]
    assert now_labels[first] == int(first_upstream) and now_labels[second] == int(not second_upstream)
    assert now.meta["feedback"]["labels_corrected"] == 2
    assert training_config(now.meta)["feedback_as_of"] == now.meta["feedback"]["as_of"] > as_of.isoformat()
    # None applies no correction: the upstream labels, bit for bit.
    assert again.meta["frame_sha256"] == before.meta["frame_sha256"] != now.meta["frame_sha256"]


def test_the_labels_training_applies_at_the_latest_feedback_are_the_relation_analysts_read(home):
    # One rule (marts.label_corrections: the last received is in effect), two readers: training
    # reads it as of a moment in Python; marts.flight_labels_corrected reads it now, in dbt.
    spec = current().usecase.model
    (first, first_upstream), (second, second_upstream) = flights_of(home, DAY, 2)
    ((third, third_upstream),) = flights_of(home, DAY + dt.timedelta(days=1), 1)
    for key, label, fid in [(first, not first_upstream, "c1"), (second, not second_upstream, "c2"),
                            (first, first_upstream, "c3"), (third, not third_upstream, "c4")]:
        assert add("--key", key, "--label", str(int(label)), "--reason", "checked", "--actor", "ops",
                   "--id", fid) == 0
    build_views()

    with connect(home.warehouse, read_only=True) as con:
        in_python = labels_in_effect(con, spec, latest_feedback(con, spec))
    trained = {key: (int(label), None if pd.isna(fid) else fid)
               for key, label, fid in in_python.itertuples(index=False)}
    relation = query(home.warehouse, "select flight_id, is_disrupted, feedback_id, label_source, is_conflicting, "
                     "upstream_is_disrupted from marts.flight_labels_corrected")
    assert {key: (int(label), fid) for key, label, fid, *_ in relation} == trained
    (upstream_rows,) = query(home.warehouse, "select count(*) from marts.flight_labels")[0]
    assert len(relation) == len(trained) == upstream_rows

    corrected = {key: (label, fid, conflicting, upstream) for key, label, fid, source, conflicting, upstream
                 in relation if source == "correction"}
    assert corrected == {
        # Corrected back to upstream's label: still a correction, and a conflicting one.
        first: (first_upstream, "c3", True, first_upstream),
        second: (not second_upstream, "c2", False, second_upstream),
        third: (not third_upstream, "c4", False, third_upstream),
    }
    assert {source for _, _, fid, source, _, _ in relation if fid is None} == {"upstream"}


@pytest.mark.slow
def test_reproduce_ignores_a_correction_received_after_the_model_was_trained(home, capsys):
    (key, upstream), = flights_of(home, DAY, 1)
    assert add("--key", key, "--label", str(int(not upstream)), "--reason", "diverted", "--actor", "ops") == 0
    build_views()
    assert train().success
    capsys.readouterr()  # what feedback add printed
    assert main(["lineage", "1", "--json"]) == 0
    lineage = json.loads(capsys.readouterr().out)
    assert lineage["feedback"]["labels_corrected"] == 1
    assert lineage["training_config"]["feedback_as_of"] == lineage["feedback"]["as_of"]

    assert add("--key", key, "--label", str(int(upstream)), "--reason", "was a data error", "--actor", "lead") == 0
    build_views()
    capsys.readouterr()
    assert main(["reproduce", "1"]) == 0
    out = capsys.readouterr().out
    assert "training set: same rows as recorded" in out and "reproduced: the same model" in out


def test_a_record_after_a_line_cut_short_by_a_crash_starts_a_line_of_its_own(tmp_path):
    # Regression: a correction acknowledged after a crash had cut the log's last line short was
    # appended to that line, and the log then read as if it had never been recorded.
    log = log_path(tmp_path)
    log.parent.mkdir(parents=True)
    log.write_bytes(b'{"feedback_id": "half", "key": "k')
    item = {"key": "k", "label": 1, "reason": "diverted", "actor": "ops", "feedback_id": "f1"}
    new, _ = submit(tmp_path, [item], "cli", known=lambda keys: keys)
    lines = log.read_bytes().splitlines()
    assert lines[0] == b'{"feedback_id": "half", "key": "k'
    assert json.loads(lines[1])["feedback_id"] == "f1" and len(lines) == 2
    assert [r.feedback_id for r in read_log(tmp_path)] == ["f1"] == [r.feedback_id for r in new]
