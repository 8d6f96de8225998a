"""The blocking gates every landed partition must pass before anything downstream uses it.

Each gate is a pure function of the partition's statistics (``audit.partition_stats``) and
of the statistics of earlier partitions, so a gate gives the same answer whether a day is
checked alone or within a year, and its thresholds travel with its result.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics

import duckdb

from keel.data.contract import PartitionStats
from keel.core.spec import TableSpec
from keel.core.verdict import GateResult

DAILY_GATES = (
    "landed_on_time",
    "file_intact",
    "schema_conforms",
    "no_empty_strings",
    "quarantine_rate",
    "volume_within_baseline",
    "null_rates_within_baseline",
)
SNAPSHOT_GATES = (
    "file_intact", "schema_conforms", "no_empty_strings", "quarantine_rate", "volume_within_baseline",
)

GATE_DESCRIPTIONS = {
    "landed_on_time": "The day's file has landed; a day missing while later days arrived fails.",
    "file_intact": "Every line of the file parsed: no truncation, no undecodable bytes.",
    "schema_conforms": "The file has every contract column, none of them changed type.",
    "no_empty_strings": "No empty strings where values or nulls belong.",
    "quarantine_rate": "The share of rejected rows stays under the configured maximum.",
    "volume_within_baseline": (
        "Row count is within bounds of the same weekday's recent median (daily tables) or of "
        "the last accepted snapshot (reference tables)."
    ),
    "null_rates_within_baseline": "Each column's unexplained null rate stays near its recent median.",
}


def gate_thresholds(spec: TableSpec) -> dict:
    """The thresholds the table's gates decide with, as the checks show them."""
    g = spec.gates
    return {
        "max_quarantine_rate": g.max_quarantine_rate,
        "volume_ratio": [g.volume_min_ratio, g.volume_max_ratio],
        "volume_weeks": g.volume_weeks,
        "null_rate_max_increase": g.null_rate_max_increase,
        "null_rate_window_days": g.null_rate_window_days,
        "null_rate_overrides": dict(g.null_rate_overrides),
        "type_change_share": g.type_change_share,
    }


def _not_evaluated(name: str, why: str) -> GateResult:
    return GateResult(name, True, f"not evaluated: {why}", {"evaluated": False})


def landed_on_time(stats: PartitionStats, later_landed: list[dt.date]) -> GateResult:
    if stats.file_present:
        return GateResult("landed_on_time", True, "the file has landed", {"file_present": True})
    if later_landed:
        message = (
            f"{stats.table} for {stats.partition} has not landed, although later days "
            f"up to {max(later_landed)} have ({len(later_landed)} of them)"
        )
    else:
        message = f"{stats.table} for {stats.partition} has not landed"
    return GateResult("landed_on_time", False, message,
                      {"file_present": False, "later_days_landed": len(later_landed)})


def file_intact(stats: PartitionStats, first_problem: str | None) -> GateResult:
    """Blank lines hold nothing to lose: they are kept and counted, but do not fail the file."""
    meta = {"lines_unparsed": stats.unparsed, "blank_lines": stats.blank_lines,
            "read_error": stats.read_error or ""}
    if stats.read_error:
        return GateResult("file_intact", False, f"the file cannot be read: {stats.read_error}", meta)
    broken = stats.unparsed - stats.blank_lines
    if broken:
        return GateResult(
            "file_intact", False,
            f"{broken} line(s) could not be parsed; first: {first_problem}", meta,
        )
    if stats.blank_lines:
        return GateResult("file_intact", True, f"every line parsed ({stats.blank_lines} blank line(s) kept aside)", meta)
    return GateResult("file_intact", True, "every line parsed", meta)


def schema_conforms(stats: PartitionStats) -> GateResult:
    meta = {
        "missing_columns": stats.missing_columns,
        "unexpected_columns": stats.unexpected_columns,
        "changed_types": stats.changed_types,
    }
    problems = [f"column {c} is missing" for c in stats.missing_columns]
    problems += [f"column {c} no longer holds {kind} values" for c, kind in stats.changed_types.items()]
    if stats.unexpected_columns and problems:
        problems.append(
            f"unexpected column(s) {', '.join(stats.unexpected_columns)} (renamed?)"
        )
    if problems:
        return GateResult("schema_conforms", False, "; ".join(problems), meta)
    note = f" (extra columns kept in _extra: {', '.join(stats.unexpected_columns)})" if stats.unexpected_columns else ""
    return GateResult("schema_conforms", True, "every contract column present with its type" + note, meta)


def no_empty_strings(stats: PartitionStats) -> GateResult:
    total = sum(stats.empty_strings.values())
    meta = {"empty_strings": total, "by_column": stats.empty_strings}
    if total:
        worst = ", ".join(f"{c} {n}" for c, n in sorted(stats.empty_strings.items(), key=lambda kv: -kv[1]))
        return GateResult(
            "no_empty_strings", False,
            f'{total} empty strings ("") where values or nulls belong: {worst}', meta,
        )
    return GateResult("no_empty_strings", True, "no empty strings", meta)


def quarantine_rate(stats: PartitionStats, spec: TableSpec) -> GateResult:
    limit = spec.gates.max_quarantine_rate
    rate = stats.quarantined / stats.landed if stats.landed else 0.0
    meta = {"rows_landed": stats.landed, "rows_quarantined": stats.quarantined,
            "quarantine_rate": round(rate, 6), "max_quarantine_rate": limit,
            "rules": stats.rule_counts}
    top = ", ".join(f"{r} ({n})" for r, n in sorted(stats.rule_counts.items(), key=lambda kv: -kv[1])[:3])
    if rate > limit:
        return GateResult(
            "quarantine_rate", False,
            f"{stats.quarantined} of {stats.landed} rows quarantined ({rate:.1%}, "
            f"maximum {limit:.1%}); top rules: {top}", meta,
        )
    suffix = f"; rules: {top}" if top else ""
    return GateResult("quarantine_rate", True, f"{rate:.2%} of rows quarantined{suffix}", meta)


def volume_within_baseline(
    stats: PartitionStats, spec: TableSpec, history: list[PartitionStats]
) -> GateResult:
    g = spec.gates
    day = stats.partition
    window_start = day - dt.timedelta(weeks=g.volume_weeks)
    earlier = [h for h in history if h.file_present and window_start <= h.partition < day]
    same_weekday = [h.landed for h in earlier if h.partition.weekday() == day.weekday()]
    basis = "same weekday"
    counts = same_weekday
    if len(counts) < g.volume_min_history:
        counts = [h.landed for h in earlier if h.partition >= day - dt.timedelta(days=28)]
        basis = "all days"
    meta = {"rows_landed": stats.landed, "min_ratio": g.volume_min_ratio,
            "max_ratio": g.volume_max_ratio, "baseline_days": len(counts), "baseline_basis": basis}
    if len(counts) < g.volume_min_history:
        return GateResult("volume_within_baseline", True,
                          f"learning the baseline: {len(counts)} earlier day(s) so far", meta)
    median = statistics.median(counts)
    ratio = stats.landed / median if median else float("inf")
    meta.update({"baseline_median": median, "ratio": round(ratio, 4)})
    text = (f"{stats.landed} rows landed; median of {len(counts)} earlier days ({basis}) "
            f"is {median:g} (ratio {ratio:.2f}, allowed {g.volume_min_ratio:.2f}-{g.volume_max_ratio:.2f})")
    passed = g.volume_min_ratio <= ratio <= g.volume_max_ratio
    return GateResult("volume_within_baseline", passed, text, meta)


def snapshot_volume(stats: PartitionStats, spec: TableSpec, accepted: int | None) -> GateResult:
    """A reference table may not shrink below a share of its last load that passed every gate."""
    limit = spec.gates.snapshot_min_ratio
    meta = {"rows_landed": stats.landed, "accepted_rows": accepted, "min_ratio": limit}
    if accepted is None:
        return GateResult("volume_within_baseline", True, "first accepted snapshot sets the baseline", meta)
    ratio = stats.landed / accepted if accepted else float("inf")
    meta["ratio"] = round(ratio, 4)
    text = f"{stats.landed} rows landed; the last accepted snapshot had {accepted} (ratio {ratio:.2f}, minimum {limit:.2f})"
    return GateResult("volume_within_baseline", ratio >= limit, text, meta)


def null_rates_within_baseline(
    stats: PartitionStats, spec: TableSpec, history: list[PartitionStats]
) -> GateResult:
    g = spec.gates
    day = stats.partition
    rows = stats.unexplained_nulls.get("__rows__", 0)
    earlier = [
        h for h in history
        if h.file_present and day - dt.timedelta(days=g.null_rate_window_days) <= h.partition < day
        and h.unexplained_nulls.get("__rows__")
    ]
    meta: dict = {"max_increase": g.null_rate_max_increase, "baseline_days": len(earlier),
                  "overrides": dict(g.null_rate_overrides)}
    if not rows:
        return _not_evaluated("null_rates_within_baseline", "no rows landed")
    if len(earlier) < g.null_rate_min_history:
        return GateResult("null_rates_within_baseline", True,
                          f"learning the baseline: {len(earlier)} earlier day(s) so far", meta)
    failures, rates = [], {}
    for column, nulls in stats.unexplained_nulls.items():
        if column == "__rows__" or column in stats.missing_columns:
            continue
        tolerance = g.null_rate_overrides.get(column, g.null_rate_max_increase)
        if tolerance is None:
            continue
        rate = nulls / rows
        baseline = statistics.median(
            h.unexplained_nulls.get(column, 0) / h.unexplained_nulls["__rows__"] for h in earlier
        )
        rates[column] = {"rate": round(rate, 4), "baseline": round(baseline, 4), "tolerance": tolerance}
        if rate > baseline + tolerance:
            failures.append(f"{column} {rate:.1%} null (baseline {baseline:.1%}, allowed +{tolerance:.0%})")
    meta["columns"] = rates
    if failures:
        return GateResult("null_rates_within_baseline", False, "null spike: " + "; ".join(failures), meta)
    return GateResult("null_rates_within_baseline", True,
                      f"{len(rates)} column(s) within their null-rate baselines", meta)


def evaluate(
    spec: TableSpec,
    stats: PartitionStats,
    history: list[PartitionStats],
    later_landed: list[dt.date],
    first_problem: str | None,
    accepted_snapshot_rows: int | None = None,
) -> list[GateResult]:
    """All gates of one partition (or one snapshot load), in a fixed order."""
    if not spec.partitioned:
        if not stats.file_present:
            missing = GateResult("file_intact", False, f"{spec.name} has not landed", {})
            return [missing] + [_not_evaluated(n, "nothing landed") for n in SNAPSHOT_GATES[1:]]
        return [file_intact(stats, first_problem), schema_conforms(stats),
                no_empty_strings(stats), quarantine_rate(stats, spec),
                snapshot_volume(stats, spec, accepted_snapshot_rows)]
    arrival = landed_on_time(stats, later_landed)
    if not stats.file_present:
        return [arrival] + [_not_evaluated(n, "the file has not landed") for n in DAILY_GATES[1:]]
    intact = file_intact(stats, first_problem)
    if stats.read_error:
        return [arrival, intact] + [_not_evaluated(n, "the file cannot be read") for n in DAILY_GATES[2:]]
    return [
        arrival,
        intact,
        schema_conforms(stats),
        no_empty_strings(stats),
        quarantine_rate(stats, spec),
        volume_within_baseline(stats, spec, history),
        null_rates_within_baseline(stats, spec, history),
    ]


def evaluate_partitions(
    con: duckdb.DuckDBPyConnection,
    spec: TableSpec,
    partitions: list[dt.date | None],
    run_id: str | None = None,
) -> dict[dt.date | None, list[GateResult]]:
    """Evaluate the gates of the given partitions and record them in ``audit``."""
    rows = con.execute(
        "select * from audit.partition_stats where table_name = ? order by partition_date",
        [spec.name],
    ).fetchall()
    all_stats = [PartitionStats.from_row(r) for r in rows]
    by_partition = {s.partition: s for s in all_stats}
    landed_days = sorted(s.partition for s in all_stats if s.file_present and s.partition)
    landed_files = {
        r[0] for r in con.execute(
            "select partition_date from raw._files where table_name = ? and file_present",
            [spec.name],
        ).fetchall()
    }
    first_problems = {
        r[0]: f"line {r[1]}: {r[2]}"
        for r in con.execute(
            "select _partition_date, min(_source_row), arg_min(error, _source_row) "
            "from raw._unparsed where table_name = ? and not coalesce(blank, false) group by 1",
            [spec.name],
        ).fetchall()
    }
    accepted = con.execute(
        "select landed from audit.snapshot_baseline where table_name = ?", [spec.name]
    ).fetchone()
    results: dict[dt.date | None, list[GateResult]] = {}
    for partition in partitions:
        stats = by_partition.get(partition) or PartitionStats(spec.name, partition)
        history = [s for s in all_stats if s.partition and partition and s.partition < partition]
        later = [d for d in landed_days if partition and d > partition and d in landed_files]
        results[partition] = evaluate(spec, stats, history, later, first_problems.get(partition),
                                      accepted[0] if accepted else None)

    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    con.execute("begin transaction")
    try:
        con.execute("create or replace temp table _gated (d date)")
        con.executemany("insert into _gated values (?)", [[p] for p in partitions])
        for target in ("audit.check_results", "audit.gate_status"):
            con.execute(
                f"delete from {target} t where table_name = ? and exists "
                "(select 1 from _gated g where t.partition_date is not distinct from g.d)",
                [spec.name],
            )
        con.executemany(
            "insert into audit.check_results values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (spec.name, p, r.name, r.passed, True, r.message, json.dumps(r.metadata, default=str), now, run_id)
                for p, gate_results in results.items()
                for r in gate_results
            ],
        )
        con.executemany(
            "insert into audit.gate_status values (?, ?, ?, ?, ?)",
            [
                (spec.name, p, all(r.passed for r in rs),
                 ",".join(r.name for r in rs if not r.passed), now)
                for p, rs in results.items()
            ],
        )
        if not spec.partitioned and all(r.passed for r in results.get(None, [])) and None in by_partition:
            # Only a snapshot that passed every gate becomes the next load's baseline.
            con.execute(
                "insert or replace into audit.snapshot_baseline select ?, ?, sha256, ? from raw._files "
                "where table_name = ? and partition_date is null",
                [spec.name, by_partition[None].landed, now, spec.name],
            )
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
    return results
