"""What a person reads in the terminal: stage lines, bars and check names, as pure text."""

import json

import pytest

from keel.ml.lineage import dbt_manifest
from resources.dbt import ensure_manifest
from keel.render.terminal import (
    bar,
    check_title,
    columns,
    dbt_test_title,
    dbt_test_titles,
    duration,
    failed_check_lines,
    progress_line,
    shorten,
    stage_ended,
    stage_started,
)


@pytest.mark.parametrize("seconds, text", [
    (0.04, "0.0 s"), (0.44, "0.4 s"), (9.96, "10.0 s"), (12.4, "12 s"), (59.4, "59 s"),
    (60, "1 min 00 s"), (185.2, "3 min 05 s"), (3600, "60 min 00 s"),
])
def test_durations_read_as_a_person_says_them(seconds, text):
    assert duration(seconds) == text


@pytest.mark.parametrize("done, total, filled", [(0, 24, 0), (6, 24, 6), (12, 24, 12), (24, 24, 24),
                                                 (30, 24, 24), (1, 3, 8), (5, 0, 0)])
def test_a_bar_fills_in_proportion_to_the_steps_done(done, total, filled):
    text = bar(done, total)
    inside = text[1:text.index("]")]
    assert len(inside) == 24
    assert inside.count("#") == filled and inside.count("-") == 24 - filled
    assert text.endswith(f"{done}/{total}")


def test_a_stage_prints_one_line_as_it_starts_and_one_as_it_ends_with_its_time_and_counts():
    assert stage_started("ingest daily tables", "2013-03-01..2013-03-14") == \
        "[ .. ] ingest daily tables (2013-03-01..2013-03-14)"
    ended = stage_ended("ingest daily tables", 48.2, "14 days, gates: 196 passed, 0 failed")
    assert ended.startswith("[ ok ] ingest daily tables ")
    assert ended.endswith("48 s  14 days, gates: 196 passed, 0 failed")
    assert stage_ended("score", 1.25, failed=True) == f"[FAIL] {'score':<28} {'1.2 s':>10}"
    assert "\n" not in ended


def test_a_progress_line_without_a_known_total_counts_the_steps_done():
    assert "3 steps done" in progress_line("tick at 2013-06-28", 3, 0, 4.0)
    assert "[######------------------] 2/8 steps" in progress_line("score", 2, 8, 4.0)


def test_shorten_keeps_one_line_of_bounded_width():
    assert shorten("a\n  b\tc") == "a b c"
    long = shorten("x" * 500, 40)
    assert len(long) == 40 and long.endswith("...")
    assert shorten(None) == ""


def test_columns_align_numbers_right_and_text_left():
    lines = columns([["flights", 13084], ["planes", 3322]])
    assert lines == ["  flights  13,084", "  planes    3,322"]


@pytest.fixture(scope="module")
def manifest() -> dict:
    ensure_manifest()  # a fresh checkout has not parsed the dbt project yet
    return json.loads(dbt_manifest().read_text())


# The names dbt gives its tests, as they reach Dagster as asset checks, and what a person reads.
@pytest.mark.parametrize("name, title", [
    ("recency_flight_features_day__flight_date__0___select_max_partition_date_from_source_audit_gate_status"
     "_where_table_name_flights_and_passed_", "recency of flight_date in flight_features"),
    ("not_null_flight_features_flight_id", "flight_id is not null in flight_features"),
    ("unique_flight_features_flight_id", "flight_id is unique in flight_features"),
    ("accepted_range_flight_features_sched_dep_hour__23__0", "sched_dep_hour between 0 and 23 in flight_features"),
    ("relationships_flight_labels_flight_id__flight_id__ref_flight_features_",
     "every flight_id in flight_labels is a flight_id of flight_features"),
    ("equal_rowcount_flight_features_ref_flight_labels_", "same row count in flight_features as flight_labels"),
    ("not_null_proportion_flight_features_0_9__weather_temp", "weather_temp at least 90% not null in flight_features"),
])
def test_the_dbt_tests_of_the_project_get_a_name_a_person_reads(manifest, name, title):
    titles = dbt_test_titles(manifest)
    assert titles[name] == title
    assert check_title(name, titles) == title


def test_every_generic_dbt_test_gets_a_short_title_and_other_checks_keep_their_names(manifest):
    generic = [n for n in manifest["nodes"].values() if n["resource_type"] == "test" and n.get("test_metadata")]
    titles = dbt_test_titles(manifest)
    assert len(titles) == len(generic) > 100
    assert all(len(t) <= 120 and "{{" not in t and "__" not in t for t in titles.values())
    assert check_title("feature_skew", titles) == "feature_skew"


def test_an_unknown_generic_test_reads_as_its_name_and_column():
    assert dbt_test_title("mostly_positive", {"column_name": "dep_delay", "model": "{{ ref('flights') }}"}) == \
        "mostly positive dep_delay in flights"


def test_failed_checks_read_by_their_title_and_stop_at_the_limit():
    failed = [{"kind": "dbt_test", "asset": "marts/flight_features", "partition": None, "severity": "WARN",
               "name": "recency_x", "message": "Got 1 result"},
              *({"kind": "gate", "asset": "validated/weather", "partition": f"2013-12-{d}", "severity": "ERROR",
                 "name": "volume_within_baseline", "message": "0 rows\nlanded"} for d in (29, 30, 31))]
    lines = failed_check_lines(failed, {"recency_x": "recency of flight_date in flight_features"}, limit=2)
    assert lines == [
        "  WARNED dbt_test marts/flight_features  recency of flight_date in flight_features: Got 1 result",
        "  FAILED gate validated/weather 2013-12-29 volume_within_baseline: 0 rows landed",
        "  ... 2 more in keel status --json",
    ]
