"""The feedback sensor: a label correction recorded anywhere reaches the warehouse.

``keel feedback add``, ``keel feedback import`` and ``POST /v1/feedback`` append to the
feedback log under the Keel home; when the log has grown since the last run this sensor
requested, it requests ``feedback/label_corrections`` (which loads the whole log, so a run
that was lost is made good by the next one), and declarative automation rebuilds the dbt
model of the corrections in effect after it.
"""

import dagster as dg

from assets.feedback import LABEL_CORRECTIONS_KEY
from keel.data.feedback import log_path
from resources.keel_state import KeelState

load_feedback_job = dg.define_asset_job(
    "load_feedback",
    selection=dg.AssetSelection.assets(LABEL_CORRECTIONS_KEY),
    description="Load the feedback log (label corrections, human labels) into the warehouse.",
)


@dg.sensor(job=load_feedback_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def feedback_sensor(context: dg.SensorEvaluationContext, keel: KeelState) -> dg.SensorResult | dg.SkipReason:
    path = log_path(keel.paths.home)
    if not path.exists():
        return dg.SkipReason(f"no feedback recorded yet ({path})")
    size = path.stat().st_size
    if context.cursor == str(size):
        return dg.SkipReason(f"no new feedback since the last load ({size:,} bytes)")
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"feedback-{size}")], cursor=str(size))
