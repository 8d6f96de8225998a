"""Shadow and canary on the real ``keel serve`` process and in batch scoring, against the
rollout record (the ``keel.rollout`` tag, written here directly as the staged promotion
writes it).

The home is this module's ``served_home``: v1 of each kind is the champion; the module
registers v2 (copies of v1: a good candidate) and v3 (models that raise on every call).
Expected arms come from the contract's formula, recomputed here with hashlib; log lines are
read and counted as plain JSON, without the code that writes them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import time
import uuid

import httpx
import numpy as np
import pytest
from conftest import SERVED_END, ServerProcess, query, schedule
from conftest import registry as open_home_registry
from conftest import score as score_days_job

from keel.registry.promotion import registered_names
from keel.registry.rollout import ROLLOUT_TAG

pytestmark = pytest.mark.slow

NAMES = registered_names("flight_disruption")
DAY = SERVED_END


def expected_arm(key: str, rollout_id: str, share: float) -> str:
    u = int.from_bytes(hashlib.sha256(f"{rollout_id}\x1f{key}".encode()).digest()[:8], "big") / 2**64
    return "canary" if u < share else "champion"


def write_rollout(paths, stage: str, versions: int, share: float = 0.0) -> str:
    rollout_id = uuid.uuid4().hex[:12]
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    record = {"id": rollout_id, "set": {kind: versions for kind in NAMES}, "stage": stage, "share": share,
              "step": -1 if stage == "shadow" else 0, "started_at": now, "stage_since": now, "by": "test"}
    open_home_registry(paths).client().set_registered_model_tag(NAMES["primary"], ROLLOUT_TAG, json.dumps(record))
    return rollout_id


def end_rollout(paths) -> None:
    open_home_registry(paths).client().delete_registered_model_tag(NAMES["primary"], ROLLOUT_TAG)


def wait_for_rollout(server, rollout_id: str | None, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        models = httpx.get(f"{server.url}/v1/models", timeout=10).json()
        seen = (models.get("rollout") or {}).get("id")
        if seen == rollout_id:
            return models
        assert time.monotonic() < deadline, f"the server never loaded rollout {rollout_id}; it has {seen}"
        time.sleep(0.2)


def lines(paths, folder: str) -> list[dict]:
    return [json.loads(line) for path in sorted((paths.home / "serving" / folder).glob("*/*.jsonl"))
            for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def candidates(served_home):
    """v2 of each kind (v1's models again) and v3 (models that raise on every call: a booster
    fed one feature too few, a baseline with no feature to read)."""
    registry = open_home_registry(served_home)
    for version, broken in ((2, False), (3, True)):
        for kind, name in NAMES.items():
            model = registry.load(name, 1)
            if broken:
                model = dataclasses.replace(model, features=model.features[:-1] if kind != "baseline" else ())
            registered = registry.log_and_register(model, name=name, metrics={}, params={},
                                                   lineage={"dagster_run_id": f"rollout-test-{version}"})
            assert registered.version == version
    return {"good": 2, "raising": 3}


@pytest.fixture(scope="module")
def rollout_server(served_home, candidates):
    import threading

    process = ServerProcess(served_home, reload_seconds=0.5)
    # LightGBM prints a line for every call that raises: unread, the pipe fills and the
    # server's writes block, which would measure the test's pipe, not the server.
    output: list[str] = []
    drain = threading.Thread(target=lambda: output.extend(process.process.stdout), daemon=True)
    drain.start()
    try:
        process.wait_ready()
        yield process
    finally:
        end_rollout_quietly(served_home)
        stopped = process.stop()
        drain.join(timeout=10)
        assert stopped, "".join(output[-50:])


def end_rollout_quietly(paths) -> None:
    try:
        end_rollout(paths)
    except Exception:  # no tag left to delete
        pass


def timed_post(url: str, body) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = httpx.post(f"{url}/v1/predict", json=body, timeout=30)
    return response, time.perf_counter() - started


def test_a_shadow_candidate_that_raises_never_changes_a_response_and_its_errors_are_logged(
        rollout_server, served_home, candidates):
    from keel.serving.evidence import arm_evidence

    requests = schedule(served_home, DAY, limit=60)
    since = dt.datetime.now(dt.timezone.utc)
    before = [timed_post(rollout_server.url, r) for r in requests]
    assert {r.status_code for r, _ in before} == {200}

    rollout_id = write_rollout(served_home, "shadow", candidates["raising"])
    models = wait_for_rollout(rollout_server, rollout_id)
    assert [(t["tier"], t["version"], t["loaded"]) for t in models["rollout"]["candidate"]] == [
        ("primary", 3, True), ("fallback", 3, True), ("baseline", 3, True)]
    during = [timed_post(rollout_server.url, r) for r in requests]
    batch, _ = timed_post(rollout_server.url, requests)

    for (a, _), (b, _) in zip(before, during):
        assert b.status_code == 200 and b.headers["keel-arm"] == "champion"
        assert b.headers["keel-rollout"].startswith(f"{rollout_id};stage=shadow")
        (x,), (y,) = a.json()["predictions"], b.json()["predictions"]
        assert set(y) == set(x)
        assert (y["key"], y["score"], y["tier"], y["model_version"]) == (x["key"], x["score"], x["tier"], 1)
    assert batch.status_code == 200
    assert [p["score"] for p in batch.json()["predictions"]] == [r.json()["predictions"][0]["score"] for r, _ in during]
    # The candidate's failures cost the response nothing it can see: the same order of time.
    before_ms = np.median([s for _, s in before]) * 1e3
    during_ms = np.median([s for _, s in during]) * 1e3
    assert during_ms < before_ms * 3 + 20, (before_ms, during_ms)
    assert max(s for _, s in during) < 2.0

    answered = {p["request_id"]: p for r, _ in during for p in r.json()["predictions"]}
    answered.update({p["request_id"]: p for p in batch.json()["predictions"]})
    deadline = time.monotonic() + 30
    while True:
        shadow = {row["request_id"]: row for row in lines(served_home, "shadow") if row["rollout_id"] == rollout_id}
        logged = {row["request_id"]: row for row in lines(served_home, "predictions") if row["request_id"] in answered}
        if len(shadow) >= len(answered) and len(logged) >= len(answered) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    shadow_state = httpx.get(f"{rollout_server.url}/v1/models", timeout=10).json()["shadow"]
    assert shadow_state["dropped"] == 0 and shadow_state["log_dropped"] == 0
    assert set(shadow) == set(answered)
    for request_id, row in shadow.items():
        assert row["arm"] == "shadow" and row["error"] is True and row["score"] is None
        assert [f.split(":")[0] for f in row["failures"]] == ["primary v3", "fallback v3", "baseline v3"]
        assert row["champion_score"] == answered[request_id]["score"] and row["date"] == DAY.isoformat()
    assert set(logged) == set(answered)
    assert {(r["arm"], r["rollout_id"], tuple(r["failures"])) for r in logged.values()} == {("champion", rollout_id, ())}
    evidence = arm_evidence(served_home, rollout_id, since)
    assert {arm: (e["requests"], e["errors"]) for arm, e in evidence.items()} == {
        "champion": (len(logged), 0), "shadow": (len(shadow), len(shadow)), "canary": (0, 0)}
    assert evidence["shadow"]["latency_p99_us"] == pytest.approx(
        np.percentile([row["latency_us"] for row in shadow.values()], 99))
    assert evidence["shadow"]["positive_rate"] is None

    # The shadow log's own asset loads the day's shadow scores, one row per logged line.
    import dagster as dg

    from assets.serving import online_shadow_predictions
    from resources.keel_state import KeelState

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KEEL_HOME", str(served_home.home))
        result = dg.materialize([online_shadow_predictions], partition_key=DAY.isoformat(),
                                resources={"keel": KeelState()}, instance=dg.DagsterInstance.ephemeral())
    assert result.success
    of_the_day = [row for row in lines(served_home, "shadow") if row["date"] == DAY.isoformat()]
    rows = query(served_home.warehouse, "select request_id, rollout_id, error, score from "
                 "serving.online_shadow_predictions where flight_date = ?", [DAY])
    assert sorted(rows) == sorted((r["request_id"], r["rollout_id"], r["error"], r["score"]) for r in of_the_day)
    assert {(rollout, error) for _, rollout, error, _ in rows if rollout == rollout_id} == {(rollout_id, True)}
    end_rollout(served_home)
    wait_for_rollout(rollout_server, None)


def test_canary_arms_follow_arm_of_and_every_answer_logs_its_arm(rollout_server, served_home, candidates):
    requests = schedule(served_home, DAY)
    rollout_id = write_rollout(served_home, "canary", candidates["good"], share=0.25)
    wait_for_rollout(rollout_server, rollout_id)
    answers, arms = [], []
    for start in range(0, len(requests), 100):
        response = httpx.post(f"{rollout_server.url}/v1/predict", json=requests[start:start + 100], timeout=30)
        assert response.status_code == 200, response.text
        answers += response.json()["predictions"]
        header = response.headers["keel-arm"]
        arms += header.split(",") if "," in header else [header] * len(response.json()["predictions"])
    single = httpx.post(f"{rollout_server.url}/v1/predict", json=requests[0], timeout=30)
    answers += single.json()["predictions"]
    arms.append(single.headers["keel-arm"])

    expected = [expected_arm(a["key"], rollout_id, 0.25) for a in answers]
    assert arms == expected
    assert 0.15 < expected.count("canary") / len(expected) < 0.35
    assert [a["model_version"] for a in answers] == [2 if arm == "canary" else 1 for arm in expected]
    time.sleep(2.0)  # past the log's flush interval
    logged = {row["request_id"]: row for row in lines(served_home, "predictions")}
    for answer, arm in zip(answers, expected):
        row = logged[answer["request_id"]]
        assert (row["arm"], row["rollout_id"], row["model_version"]) == (arm, rollout_id, answer["model_version"])
        assert row["model_set"]["versions"] == {kind: answer["model_version"] for kind in NAMES}

    # The same flights scored in batch during the rollout get the same arms.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KEEL_HOME", str(served_home.home))
        patch.setenv("DAGSTER_HOME", str(served_home.dagster_home))
        result = score_days_job(DAY, DAY)
    assert result.success
    (materialization,) = result.asset_materializations_for_node("models__predictions")
    assert materialization.metadata["rollout"].value["id"] == rollout_id
    batch = {key: (arm, score, version, champion) for key, arm, score, version, champion in query(
        served_home.warehouse, "select flight_id, arm, score, model_version, champion_score "
        "from serving.shadow_predictions where rollout_id = ? and flight_date = ?", [rollout_id, DAY])}
    online = {a["key"]: arm for a, arm in zip(answers, expected)}
    assert set(batch) == set(online)
    assert {key: arm for key, (arm, *_) in batch.items()} == online
    assert {version for _, _, version, _ in batch.values()} == {2}
    served = dict(query(served_home.warehouse, "select flight_id, score from serving.predictions where flight_date = ?",
                        [DAY]))
    assert {key: champion for key, (_, _, _, champion) in batch.items()} == {key: served[key] for key in batch}
    end_rollout(served_home)
    wait_for_rollout(rollout_server, None)


def test_a_canary_that_raises_costs_no_answer_and_arm_evidence_counts_equal_the_log_lines(
        rollout_server, served_home, candidates):
    from keel.serving.evidence import arm_evidence

    since = dt.datetime.now(dt.timezone.utc)
    requests = schedule(served_home, DAY, limit=80)
    # A canary whose every tier raises: its keys fall back to the champion's chain, and every
    # one of them is an error of the canary arm.
    rollout_id = write_rollout(served_home, "canary", candidates["raising"], share=0.3)
    wait_for_rollout(rollout_server, rollout_id)
    responses = [httpx.post(f"{rollout_server.url}/v1/predict", json=r, timeout=30) for r in requests]
    assert {r.status_code for r in responses} == {200}
    answers = [r.json()["predictions"][0] for r in responses]
    arms = [expected_arm(a["key"], rollout_id, 0.3) for a in answers]
    assert [r.headers["keel-arm"] for r in responses] == arms
    assert {(a["tier"], a["model_version"]) for a in answers} == {("primary", 1)}
    assert 10 < arms.count("canary") < 40
    time.sleep(2.0)  # past the logs' flush interval
    evidence = arm_evidence(served_home, rollout_id, since, threshold=0.2)

    logged = [r for r in lines(served_home, "predictions") if r["rollout_id"] == rollout_id]
    assert [r for r in lines(served_home, "unanswered") if r["rollout_id"] == rollout_id] == []
    by_arm = {arm: [r for r in logged if r["arm"] == arm] for arm in ("champion", "canary")}
    assert len(by_arm["champion"]) == arms.count("champion") and len(by_arm["canary"]) == arms.count("canary")
    for row in by_arm["canary"]:
        assert [f.split(":")[0] for f in row["failures"]] == ["primary v3", "fallback v3", "baseline v3"]
        assert row["model_set"]["versions"] == {kind: 1 for kind in NAMES}  # the set that answered
    for arm, rows in by_arm.items():
        scores = np.array([r["score"] for r in rows])
        assert evidence[arm] == {
            "requests": len(rows), "errors": sum(bool(r["failures"]) for r in rows),
            "latency_p99_us": pytest.approx(np.percentile([r["latency_us"] for r in rows], 99)),
            "positive_rate": pytest.approx(float(np.mean(scores >= 0.2))),
        }
    assert evidence["champion"]["errors"] == 0 and evidence["canary"]["errors"] == arms.count("canary")
    assert evidence["shadow"] == {"requests": 0, "errors": 0, "latency_p99_us": None, "positive_rate": None}
    # Nothing before ``since`` counts, and another rollout's lines never do.
    assert arm_evidence(served_home, rollout_id, dt.datetime.now(dt.timezone.utc))["champion"]["requests"] == 0
    assert arm_evidence(served_home, "000000000000", since)["champion"]["requests"] == 0
    end_rollout(served_home)
    wait_for_rollout(rollout_server, None)
