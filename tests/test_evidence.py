"""arm_evidence over logs written by the API's own writers (keel.serving.logs), in a temporary
home: the counts, p99 and positive rate of each arm against numpy on the same rows."""

from __future__ import annotations

import datetime as dt
import functools
import json

import numpy as np
import pytest

from keel.serving.evidence import arm_evidence
from keel.serving.logs import JsonlLog, PredictionLog, shadow_lines, unanswered_lines


def day_of(requests):
    return ["2013-02-04"] * len(requests)


def test_answers_503s_and_shadow_scores_count_against_their_arm_and_rollout(tmp_path):
    serving = tmp_path / "serving"
    logs = {name: cls(serving / name, day_of, flush_seconds=0.01) for name, cls in
            (("predictions", PredictionLog), ("unanswered", JsonlLog), ("shadow", JsonlLog))}
    for log in logs.values():
        log.start()
    rng = np.random.default_rng(7)
    since = dt.datetime.now(dt.timezone.utc)
    expected = {"champion": [], "canary": []}
    for i in range(200):
        arm = "canary" if i % 5 == 0 else "champion"
        score, latency = float(rng.uniform()), float(rng.uniform(100, 5000))
        failures = [["primary v2: ValueError: boom"]] if arm == "canary" and i % 3 == 0 else [[]]
        answer = {"request_id": f"r{i}", "key": f"k{i}", "score": score, "tier": "primary", "model_name": "m",
                  "model_version": 1, "features_as_of": ""}
        logs["predictions"].submit([{"x": 1}], [{}], [answer], "s1", latency, {}, arm=arm,
                                   rollout_id="abc", failures=failures)
        expected[arm].append((score, latency, bool(failures[0])))
    logs["predictions"].submit([{"x": 1}], [{}], [{**answer, "request_id": "other"}], "s1", 1.0, {},
                               arm="canary", rollout_id="another")
    logs["unanswered"].submit_lines([{}, {}], 2, functools.partial(
        unanswered_lines, keys=["k1", "k2"], arms=["canary", "champion"], rollout_id="abc",
        failures=[["x"], ["y"]], latency_us=9000.0, served_at=dt.datetime.now(dt.timezone.utc)))
    stamp = dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    shadow = [{"request_id": f"s{i}", "key": f"k{i}", "arm": "shadow", "rollout_id": "abc",
               "score": None if i < 3 else 0.9, "error": i < 3, "failures": [], "latency_us": 10.0 * i,
               "served_at": stamp} for i in range(10)]
    logs["shadow"].submit_lines([{}] * 10, 10, functools.partial(shadow_lines, rows=shadow))
    for log in logs.values():
        log.stop()

    # An independent count, from the files themselves.
    written = [json.loads(line) for path in serving.glob("*/*/*.jsonl") for line in path.read_text().splitlines()]
    assert len(written) == 200 + 1 + 2 + 10

    evidence = arm_evidence(tmp_path, "abc", since, threshold=0.5)
    for arm, rows in expected.items():
        scores = np.array([s for s, _, _ in rows])
        latencies = [lat for _, lat, _ in rows] + [9000.0]  # the 503's latency counts, its score cannot
        assert evidence[arm] == {
            "requests": len(rows) + 1,
            "errors": sum(e for _, _, e in rows) + 1,
            "latency_p99_us": pytest.approx(np.percentile(np.round(latencies, 1), 99)),
            "positive_rate": pytest.approx(float(np.mean(scores >= 0.5))),
        }
    assert evidence["shadow"] == {"requests": 10, "errors": 3, "latency_p99_us": pytest.approx(
        np.percentile([10.0 * i for i in range(10)], 99)), "positive_rate": 1.0}
    later = arm_evidence(tmp_path, "abc", dt.datetime.now(dt.timezone.utc))
    assert {arm: e["requests"] for arm, e in later.items()} == {"champion": 0, "canary": 0, "shadow": 0}
