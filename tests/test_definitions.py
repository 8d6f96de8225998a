"""The one Definitions object loads and holds the graph, checks, jobs and sensor it promises."""

import ast
from pathlib import Path

import dagster as dg
import pytest
from conftest import USECASE

from assets.partitions import daily_partitions
from definitions import defs
from keel.data.gates import DAILY_GATES, SNAPSHOT_GATES
from keel.core.settings import PROJECT_ROOT

ASSET_SPECS = sorted(defs.resolve_all_asset_specs(), key=lambda spec: spec.key.to_user_string())
GRAPH = defs.resolve_asset_graph()
KEEL_KEYS = {
    dg.AssetKey([layer, t.name]) for layer in ("raw", "validated", "quarantine") for t in USECASE.tables
}


def test_definitions_hold_every_landed_table_in_three_layers():
    assert KEEL_KEYS <= {spec.key for spec in ASSET_SPECS}
    for spec in USECASE.tables:
        validated = GRAPH.get(dg.AssetKey(["validated", spec.name]))
        assert validated.parent_keys == {dg.AssetKey(["raw", spec.name])}


@pytest.mark.parametrize("spec", ASSET_SPECS, ids=lambda s: s.key.to_user_string())
def test_every_asset_has_a_description_and_a_group(spec):
    assert spec.description and spec.description.strip()
    assert spec.group_name and spec.group_name != "default"


def test_every_check_on_validated_tables_is_blocking_and_every_gate_is_there():
    check_keys = [k for k in GRAPH.asset_check_keys if k.asset_key.path[0] == "validated"]
    for key in check_keys:
        check = GRAPH.get_check_spec(key)
        assert check.blocking, key
        assert check.description, key
    for table in USECASE.tables:
        gates = {k.name for k in check_keys if k.asset_key == dg.AssetKey(["validated", table.name])}
        assert gates >= set(DAILY_GATES if table.partitioned else SNAPSHOT_GATES)


def test_daily_assets_share_one_partitions_definition_spanning_2013():
    keys = daily_partitions.get_partition_keys()
    assert (keys[0], keys[-1], len(keys)) == ("2013-01-01", "2013-12-31", 365)
    for spec in ASSET_SPECS:
        if spec.key not in KEEL_KEYS:
            continue
        table = USECASE.table(spec.key.path[-1])
        if table.partitioned:
            assert spec.partitions_def == daily_partitions, spec.key
        else:
            assert spec.partitions_def is None, spec.key


def test_jobs_select_their_tables_and_the_sensor_launches_them():
    daily = defs.resolve_job_def("ingest_daily")
    snapshots = defs.resolve_job_def("ingest_snapshots")
    assert daily.partitions_def == daily_partitions
    assert snapshots.partitions_def is None

    def selected(job) -> set[dg.AssetKey]:
        return set(job.asset_layer.selected_asset_keys)

    for table in USECASE.tables:
        keys = {dg.AssetKey([layer, table.name]) for layer in ("raw", "validated", "quarantine")}
        assert keys <= selected(daily if table.partitioned else snapshots)
        assert not keys & selected(snapshots if table.partitioned else daily)

    sensor = defs.resolve_sensor_def("landing_zone_sensor")
    assert {job.name for job in sensor.jobs} == {"ingest_daily", "ingest_snapshots"}
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def private_dagster_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dagster._"):
            found.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}: from {node.module}")
        elif isinstance(node, ast.Import):
            found += [f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}: import {a.name}"
                      for a in node.names if a.name.startswith("dagster._")]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and (
            isinstance(node.value, ast.Name) and node.value.id in ("dg", "dagster")
        ):
            found.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_module_reaches_into_dagster_private_api():
    sources = [PROJECT_ROOT / "definitions.py"]
    for package in ("assets", "resources", "sensors", "keel", "usecases"):
        sources += sorted((PROJECT_ROOT / package).rglob("*.py"))
    assert len(sources) > 10
    offenders = [hit for path in sources for hit in private_dagster_imports(path)]
    assert offenders == []


def test_automation_requests_a_days_skew_and_drift_checks_with_the_day_it_builds():
    # Regression: under the daemon a day that landed alone was built, scored and monitored in
    # a one-day run without its feature_skew, important_feature_drift or serving_skew check:
    # the automation sensor's target held no checks and the checks had no condition.
    graph = defs.resolve_asset_graph()
    features = dg.AssetKey(USECASE.model.features_relation.split("."))
    upstream: set[dg.AssetKey] = set()

    def add_ancestors(key: dg.AssetKey) -> None:
        for parent in graph.get(key).parent_keys:
            if parent not in upstream:
                upstream.add(parent)
                add_ancestors(parent)

    add_ancestors(features)
    sensor = defs.get_sensor_def("keel_automation")
    target = sensor.asset_selection
    instance = dg.DagsterInstance.ephemeral()
    day = "2013-03-17"
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=target)
    for key in upstream:  # what the landing sensor's ingestion run leaves for one day
        partitioned = graph.get(key).partitions_def is not None
        instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=day if partitioned else None))
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=target,
                                               cursor=first.cursor)
    requested = {r.key: r.true_subset for r in result.results if r.true_subset.size}
    wanted_checks = {
        dg.AssetCheckKey(features, "feature_skew"),
        dg.AssetCheckKey(dg.AssetKey(["monitoring", "feature_drift"]), "important_feature_drift"),
        dg.AssetCheckKey(dg.AssetKey(["serving", "online_predictions"]), "serving_skew"),
    }
    assert wanted_checks <= set(requested), sorted(map(str, wanted_checks - set(requested)))
    for key in wanted_checks | {features, dg.AssetKey(["models", "predictions"])}:
        subset = requested[key]
        assert subset.size == 1 and list(subset.expensively_compute_partition_keys()) == [day], key
