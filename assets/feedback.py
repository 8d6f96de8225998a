"""Feedback assets: label corrections and human labels, loaded into the warehouse.

``feedback/label_corrections`` loads the append-only feedback log (``keel.data.feedback``:
``keel feedback add``, ``keel feedback import``, ``POST /v1/feedback``) into
``feedback.label_corrections``, which the use case's dbt models read as a source. The
feedback sensor (``sensors/feedback.py``) requests it when the log grows; ``keel run``
loads it before it builds the features.
"""

import dagster as dg

from keel.data.feedback import counts, load, read_log
from keel.render.tables import markdown_table
from resources.keel_state import KeelState

GROUP = "feedback"
LABEL_CORRECTIONS_KEY = dg.AssetKey(["feedback", "label_corrections"])


@dg.asset(key=LABEL_CORRECTIONS_KEY, group_name=GROUP, kinds={"duckdb"})
def label_corrections(context: dg.AssetExecutionContext, keel: KeelState) -> dg.MaterializeResult:
    """Every label correction and human label Keel recorded, as recorded (feedback.label_corrections)."""
    records = read_log(keel.paths.home)
    with keel.warehouse() as con:
        written = load(con, records)
    per_day = counts(records)
    labels_of: dict[str, set[int]] = {}
    for r in records:
        labels_of.setdefault(r.key, set()).add(r.label)
    conflicting = sorted(k for k, labels in labels_of.items() if len(labels) > 1)
    context.log.info(f"{written} feedback record(s) for {len(labels_of)} key(s) loaded")
    if conflicting:
        context.log.warning(f"{len(conflicting)} key(s) have corrections that disagree; the one received "
                            f"last is in effect: {', '.join(conflicting[:10])}")
    rows = [(day, *(by_source.get(s, 0) for s in ("cli", "csv", "api"))) for day, by_source in per_day.items()]
    return dg.MaterializeResult(
        data_version=dg.DataVersion(f"{written}:{records[-1].feedback_id if records else '-'}"),
        metadata={
            "dagster/row_count": written,
            "keys": len(labels_of),
            "conflicting_keys": len(conflicting),
            "conflicting_examples": dg.MetadataValue.json(conflicting[:20]),
            "per_day": dg.MetadataValue.md(markdown_table(["received", "cli", "csv", "api"], rows[-30:]) if rows else "none"),
        },
    )


feedback_assets = [label_corrections]
