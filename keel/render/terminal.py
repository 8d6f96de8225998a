"""What ``keel run`` and ``keel simulate`` print: stage lines, progress bars, readable check names.

Pure text: every function here takes values and returns strings, so that the terminal's
look is tested without running anything (tests/test_terminal.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

START, DONE, FAILED = "[ .. ]", "[ ok ]", "[FAIL]"


def duration(seconds: float) -> str:
    """``0.4 s``, ``12 s``, ``3 min 05 s``: as precise as a person reading a log needs."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def stage_started(name: str, detail: str = "") -> str:
    return f"{START} {name}" + (f" ({detail})" if detail else "")


def stage_ended(name: str, seconds: float, counts: str = "", failed: bool = False) -> str:
    """``[ ok ] ingest daily tables   12 s  14 days, 211 checks passed``."""
    line = f"{FAILED if failed else DONE} {name:<28} {duration(seconds):>10}"
    return f"{line}  {counts}" if counts else line


def bar(done: int, total: int, width: int = 24) -> str:
    """``[#########---------------]   9/24``; an unknown total draws an empty bar."""
    filled = 0 if total <= 0 else min(width, round(width * done / total))
    return f"[{'#' * filled}{'-' * (width - filled)}] {done:>{len(str(max(total, 1)))}}/{total}"


def progress_line(name: str, done: int, total: int, seconds: float, detail: str = "") -> str:
    """The line a progress bar redraws in place while a long stage runs (TTY only); with no
    known total (runs decided as the stage goes), the steps done so far."""
    progress = f"{bar(done, total)} steps" if total > 0 else plural(done, "step") + " done"
    line = f"{START} {name:<28} {progress}  {duration(seconds)}"
    return f"{line}  {detail}" if detail else line


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def count_list(counts: Mapping[str, int]) -> str:
    """``3 gate, 120 dbt_test`` from a mapping, in its order, omitting zeros."""
    return ", ".join(f"{n:,} {key}" for key, n in counts.items() if n)


# ------------------------------------------------------------------------------------------
# Check names a person reads


def _ref_name(text: Any) -> str:
    """``order_features`` from ``{{ get_where_subquery(ref('order_features')) }}`` or
    ``ref('order_features')``; other text unchanged."""
    match = re.search(r"(?:ref|source)\(\s*'([^']+)'(?:\s*,\s*'([^']+)')?\s*\)", str(text))
    if not match:
        return str(text)
    return match.group(2) or match.group(1)


def dbt_test_title(test: str, kwargs: Mapping[str, Any], column: str | None = None) -> str:
    """A person's name for a dbt generic test, from the manifest's ``test_metadata``: the
    test's name and arguments (``recency of order_date in order_features``)."""
    model = _ref_name(kwargs.get("model", ""))
    column = column or kwargs.get("column_name") or kwargs.get("field")
    where = f" in {model}" if model else ""
    if test == "not_null":
        return f"{column} is not null{where}"
    if test == "unique":
        return f"{column} is unique{where}"
    if test == "accepted_range":
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        bounds = (f"between {low} and {high}" if low is not None and high is not None
                  else f">= {low}" if low is not None else f"<= {high}")
        return f"{column} {bounds}{where}"
    if test == "accepted_values":
        return f"{column} in its accepted values{where}"
    if test == "relationships":
        return f"every {column}{where} is a {kwargs.get('field', column)} of {_ref_name(kwargs.get('to', ''))}"
    if test == "recency":
        return f"recency of {kwargs.get('field', column)}{where}"
    if test == "expression_is_true":
        return f"{shorten(str(kwargs.get('expression', '')), 80)}{where}"
    if test == "equal_rowcount":
        return f"same row count{where} as {_ref_name(kwargs.get('compare_model', ''))}"
    if test == "not_null_proportion":
        return f"{column} at least {float(kwargs.get('at_least', 0)):.0%} not null{where}"
    if test == "unique_combination_of_columns":
        columns = kwargs.get("combination_of_columns") or []
        return f"({', '.join(map(str, columns))}) unique{where}"
    if test == "not_constant":
        return f"{column} not constant{where}"
    if test == "at_least_one":
        return f"{column} has at least one value{where}"
    subject = f"{column} " if column else ""
    return f"{test.replace('_', ' ')} {subject}{where.strip()}".strip()


def dbt_test_titles(manifest: Mapping[str, Any]) -> dict[str, str]:
    """Every generic dbt test of a manifest, by the name its asset check carries, with a
    person's name for it; singular tests (no ``test_metadata``) keep their own names."""
    titles = {}
    for node in manifest.get("nodes", {}).values():
        meta = node.get("test_metadata") if node.get("resource_type") == "test" else None
        if meta and meta.get("name"):
            titles[node["name"]] = dbt_test_title(meta["name"], meta.get("kwargs") or {}, node.get("column_name"))
    return titles


def check_title(name: str, titles: Mapping[str, str]) -> str:
    """The name a person reads for a check: its title when it has one, else its own name."""
    return titles.get(name, name)


def shorten(text: str | None, width: int = 160) -> str:
    """One line of at most ``width`` characters (messages can span lines)."""
    line = " ".join((text or "").split())
    return line if len(line) <= width else line[: width - 3] + "..."


def columns(rows: Sequence[Sequence[Any]], indent: str = "  ") -> list[str]:
    """Rows of cells aligned in columns (numbers right-aligned, text left-aligned)."""
    if not rows:
        return []
    cells = [[f"{c:,}" if isinstance(c, int) and not isinstance(c, bool) else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells if i < len(row)) for i in range(max(map(len, cells)))]
    numeric = [all(isinstance(row[i], int) for row in rows if i < len(row)) for i in range(len(widths))]
    return [
        indent + "  ".join(cell.rjust(widths[i]) if numeric[i] else cell.ljust(widths[i])
                           for i, cell in enumerate(row)).rstrip()
        for row in cells
    ]


def failed_check_lines(failed: Sequence[Mapping[str, Any]], titles: Mapping[str, str], limit: int = 20) -> list[str]:
    """The failed checks of ``keel status`` (its JSON entries), at most ``limit`` of them."""
    lines = [
        f"  {'FAILED' if c['severity'] == 'ERROR' else 'WARNED'} {c['kind']} {c['asset']} {c['partition'] or ''} "
        f"{check_title(c['name'], titles)}: {shorten(c['message'])}"
        for c in failed[:limit]
    ]
    if len(failed) > limit:
        lines.append(f"  ... {len(failed) - limit:,} more in keel status --json")
    return lines


def simulation_lines(result: dict[str, Any]) -> list[str]:
    """What ``keel simulate`` prints of its summary (the ``--json`` document's figures)."""
    lines = [f"Keel simulate {result['start']}..{result['end']} (step {result['step']}, daemon tick every "
             f"{result['tick_days']} days; static model v{result['static_model_version']} trained through "
             f"{result['warmup_end']})",
             "  month     champion AUC  static AUC  rows     champion versions"]
    for m in result["months"]:
        lines.append(f"  {m['month']}  {_auc_text(m['champion_auc']):>12}  {_auc_text(m['static_auc']):>10}  "
                     f"{m['rows']:>7,}  {','.join(f'v{v}' for v in m['champion_versions'])}")
    avg = result["average"]
    if avg.get("months"):
        lines.append(f"  average over {avg['months']} months: champion {_auc_text(avg['champion_auc'])}, static "
                     f"{_auc_text(avg['static_auc'])} ({avg['difference']:+.4f})")
    lines.append(f"retrains requested {result['retrains']}, promoted {result['promotions']}, rejected "
                 f"{result['rejections']}, failed {result['training_failures']}; {result['decisions']} daily "
                 f"decisions, {result['drifted_days']} days with important-feature drift")
    for event in result["timeline"]:
        lines.append(f"  {event['day']} {event['kind']:<18} {event['detail'][:150]}")
    lines.append(f"timeline plot: {result['plot']}")
    lines.append(f"watch or inspect the replay: KEEL_HOME={result['home']} keel dev")
    if "seconds" in result:
        lines.append(f"{result['runs']} Dagster runs in {result['seconds']:.0f} s")
    return lines


def _auc_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
