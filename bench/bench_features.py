"""Feature-layer benchmark: dbt build of the feature models beside the same SQL in DuckDB.

Prepares a warehouse holding a year of validated nycflights13 (through Keel's own ingest,
validate and gate functions), then prints:
  - dbt_full: `dbt run --full-refresh` of every model (and `dbt build` with data tests);
  - dbt_day:  an incremental `dbt run` of one day (2013-12-30) on top of the year;
  - plain_sql: the models' compiled SQL executed directly in DuckDB, in dependency order,
    with no dbt process: the floor of the SQL itself.
Wall times include dbt's process start and project parse, which every real run pays.

Usage: python bench/bench_features.py
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DBT_DIR = ROOT / "dbt_project"
DBT = str(Path(sys.executable).parent / "dbt")
DAY = "2013-12-30"


def prepare(home: Path) -> None:
    from keel.data.contract import validate_partitions
    from keel.data.gates import evaluate_partitions
    from keel.data.ingest import load_partitions, parse_file
    from keel.data.replay import replay
    from keel.core.config import current
    from keel.core.settings import prepare_environment
    from keel.core.warehouse import connect, ensure_tables

    paths = prepare_environment()
    usecase = current().usecase
    replay(usecase, paths.landing, usecase.start, usecase.end)
    with connect(paths.warehouse) as con:
        ensure_tables(con, list(usecase.tables))
        for spec in usecase.tables:
            parts = usecase.days() if spec.partitioned else [None]
            load_partitions(con, spec, [parse_file(spec, paths.landing, p) for p in parts], paths.landing, paths.rejected_files)
            validate_partitions(con, usecase, spec, parts)
            evaluate_partitions(con, spec, parts)


def dbt(*args: str, target: Path) -> tuple[float, float]:
    """(wall seconds, seconds dbt itself reports) of one dbt command."""
    started = time.perf_counter()
    done = subprocess.run(
        [DBT, *args, "--project-dir", str(DBT_DIR), "--profiles-dir", str(DBT_DIR), "--target-path", str(target)],
        capture_output=True, text=True, env=os.environ,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"dbt {' '.join(args)} failed:\n{done.stdout[-3000:]}")
    reported = re.search(r"Finished running .* in .*?([\d.]+) seconds", done.stdout)
    return wall, float(reported.group(1)) if reported else float("nan")


def plain_sql(warehouse: Path, target: Path) -> float:
    """Run each model's compiled SQL directly in DuckDB, in dependency order."""
    import duckdb

    manifest = json.loads((target / "manifest.json").read_text())
    nodes = {uid: n for uid, n in manifest["nodes"].items() if n["resource_type"] in ("model", "seed")}
    order, seen = [], set()

    def visit(uid: str) -> None:
        if uid in seen or uid not in nodes:
            return
        seen.add(uid)
        for dep in nodes[uid].get("depends_on", {}).get("nodes", []):
            visit(dep)
        order.append(uid)

    for uid in nodes:
        visit(uid)
    con = duckdb.connect(str(warehouse))
    con.execute("set TimeZone = 'UTC'")
    started = time.perf_counter()
    for uid in order:
        node = nodes[uid]
        relation = f'"{node["schema"]}"."{node["alias"]}"'
        con.execute(f'create schema if not exists "{node["schema"]}"')
        if node["resource_type"] == "seed":
            path = DBT_DIR / node["original_file_path"]
            con.execute(f"create or replace table {relation} as select * from read_csv(?)", [str(path)])
            continue
        sql = (target / "compiled" / node["package_name"] / node["original_file_path"]).read_text()
        kind = "view" if node["config"]["materialized"] == "view" else "table"
        con.execute(f"create or replace {kind} {relation} as {sql}")
    elapsed = time.perf_counter() - started
    con.close()
    return elapsed


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="keel-bench-features-"))
    os.environ["KEEL_HOME"] = str(work / "home")
    os.environ.pop("DAGSTER_HOME", None)
    os.environ.setdefault("DO_NOT_TRACK", "true")
    started = time.perf_counter()
    prepare(work / "home")
    print(f"prepared a year of validated data in {time.perf_counter() - started:.1f} s (not timed below)")
    target = work / "target"
    dbt("seed", target=target)
    full_run = dbt("run", "--full-refresh", target=target)
    full_build = dbt("build", "--full-refresh", "--exclude-resource-type", "unit_test", target=target)
    window = json.dumps({"min_date": DAY, "max_date": DAY})
    day_run = dbt("run", "--select", "config.materialized:incremental", "--vars", window, target=target)
    day_build = dbt("build", "--select", "config.materialized:incremental", "--vars", window,
                    "--exclude-resource-type", "unit_test", target=target)
    dbt("compile", "--full-refresh", target=target)
    sql_full = plain_sql(work / "home" / "warehouse.duckdb", target)

    print(f"\n{'what':<38} {'wall':>8} {'dbt says':>9}")
    for name, (wall, reported) in [
        ("full year: dbt run --full-refresh", full_run),
        ("full year: dbt build (models + tests)", full_build),
        ("one day: dbt run (incremental)", day_run),
        ("one day: dbt build (incremental+tests)", day_build),
    ]:
        print(f"{name:<38} {wall:>7.2f}s {reported:>8.2f}s")
    print(f"{'full year: compiled SQL in DuckDB':<38} {sql_full:>7.2f}s")
    print(f"\nfull-year dbt run / plain SQL: {full_run[0] / sql_full:.1f}x wall, {full_run[1] / sql_full:.1f}x model time")


if __name__ == "__main__":
    main()
