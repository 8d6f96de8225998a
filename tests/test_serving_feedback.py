"""``POST /v1/feedback``: the real ``keel serve`` process on 127.0.0.1 takes label corrections as
``keel feedback add`` does: validated before anything is stored, fsynced to the feedback log
before it answers, idempotent by feedback id, and the same log whether one worker appends or
several.

The log is read here as the file holds it (``json.loads`` per line), not through the code that
writes it; ``keel feedback list --json`` is run as its own process.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import SERVED_END, ServerProcess, query

from keel.data.feedback import MAX_REASON, log_path

pytestmark = pytest.mark.slow

DAY = SERVED_END


def log_lines(paths) -> list[dict]:
    path = log_path(paths.home)
    return [json.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def flights(paths, n: int, offset: int = 0) -> list[tuple[str, bool]]:
    return query(paths.warehouse, "select flight_id, is_disrupted from marts.flight_labels "
                 "where flight_date = ? order by flight_id limit ? offset ?", [DAY, n, offset])


def post(url: str, body, **kwargs) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{url}/v1/feedback", content=content, headers={"content-type": "application/json"},
                      timeout=30, **kwargs)


def feedback_list(paths) -> dict:
    env = {**os.environ, "KEEL_HOME": str(paths.home), "DAGSTER_HOME": str(paths.dagster_home)}
    done = subprocess.run([sys.executable, "-m", "keel", "feedback", "list", "--json"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_feedback_over_http_is_recorded_once_refused_with_its_reason_and_listed(server, served_home):
    (key, upstream), (other, other_upstream), (third, _) = flights(served_home, 3)
    before = len(log_lines(served_home))
    good = {"key": key, "label": int(not upstream), "reason": "diverted to BDL", "actor": "ops",
            "feedback_id": "api-1"}

    first = post(server.url, good)
    assert first.status_code == 201, first.text
    (stored,) = first.json()["recorded"]
    assert first.json()["already_recorded"] == []
    on_file = log_lines(served_home)[before:]
    assert on_file == [stored]
    assert {k: on_file[0][k] for k in ("feedback_id", "key", "label", "reason", "actor", "source")} == {
        "feedback_id": "api-1", "key": key, "label": int(not upstream), "reason": "diverted to BDL",
        "actor": "ops", "source": "api"}
    received = dt.datetime.fromisoformat(on_file[0]["received_at"])
    assert abs(dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - received) < dt.timedelta(minutes=5)

    # The same id with the same content: 200 with the record as stored, nothing appended.
    again = post(server.url, good)
    assert again.status_code == 200, again.text
    assert again.json() == {"recorded": [], "already_recorded": [stored]}
    # The same id with other content: 409, naming the id, nothing appended.
    conflict = post(server.url, {**good, "label": int(upstream), "reason": "a data error"})
    assert conflict.status_code == 409, conflict.text
    assert "api-1" in conflict.text and "nothing was recorded" in conflict.text
    assert len(log_lines(served_home)) == before + 1

    # A list is all or nothing; a record without an id gets one, without an actor is the API's.
    batch = post(server.url, [{"key": other, "label": int(not other_upstream), "reason": "cancelled late"},
                              {"key": third, "label": 1, "reason": "crew timed out", "actor": "lead",
                               "feedback_id": "api-2"}])
    assert batch.status_code == 201, batch.text
    recorded = batch.json()["recorded"]
    assert [(r["key"], r["actor"]) for r in recorded] == [(other, "api"), (third, "lead")]
    assert len(recorded[0]["feedback_id"]) == 32 and recorded[1]["feedback_id"] == "api-2"
    assert log_lines(served_home)[before:] == [stored, *recorded]

    refused = {
        "unknown key": ({**good, "key": "20130204-XX-0-NOPE", "feedback_id": "r1"}, 422, "not a known key"),
        "bad label": ({**good, "label": 2, "feedback_id": "r2"}, 422, "label must be one of 0, 1"),
        "label as text": ({**good, "label": "1", "feedback_id": "r3"}, 422, "label must be one of"),
        "label as boolean": ({**good, "label": True, "feedback_id": "r4"}, 422, "label must be one of"),
        "oversized reason": ({**good, "reason": "r" * (MAX_REASON + 1), "feedback_id": "r5"}, 422,
                             f"at most {MAX_REASON}"),
        "no reason": ({k: v for k, v in good.items() if k not in ("reason", "feedback_id")}, 422, "reason is missing"),
        "key not a string": ({**good, "key": 42, "feedback_id": "r6"}, 422, "key must be a string"),
        "bad feedback id": ({**good, "feedback_id": "a b"}, 422, "feedback id must be"),
        "unknown field": ({**good, "feedback_id": "r7", "is_disrupted": 1}, 422, "extra_forbidden"),
        "one bad record in a list": ([{**good, "feedback_id": "r8"}, {**good, "key": "nope", "feedback_id": "r9"}],
                                     422, "record 2"),
        "oversized batch": ([{**good, "feedback_id": f"b{i}"} for i in range(1001)], 413, "at most 1000"),
        "empty list": ([], 422, "too_short"),
        "not an object": ([42], 422, "object_type"),
        "malformed JSON": (b'{"key": "x", "label": 1,', 422, "json_invalid"),
        "body too large": (b"[" + b" " * 2_000_000 + b"]", 413, "max_body_bytes"),
    }
    for case, (body, status, named) in refused.items():
        response = post(server.url, body)
        assert response.status_code == status, (case, response.text)
        assert named in response.text, (case, response.text)
    assert len(log_lines(served_home)) == before + 3

    listed = feedback_list(served_home)
    assert [r["feedback_id"] for r in listed["feedback"]] == [r["feedback_id"] for r in log_lines(served_home)]
    assert listed["feedback"][before:] == [stored, *recorded]
    today = received.date().isoformat()
    assert listed["per_day"][today]["api"] == sum(1 for r in log_lines(served_home)
                                                   if r["source"] == "api" and r["received_at"].startswith(today))
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    schema = httpx.get(f"{server.url}/openapi.json").json()
    body = schema["paths"]["/v1/feedback"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["oneOf"][0]["properties"]) == {"key", "label", "reason", "actor", "feedback_id"}
    assert body["oneOf"][1]["maxItems"] == 1000


def test_several_workers_record_each_id_once_and_the_log_in_the_order_received(served_home):
    keys = [k for k, _ in flights(served_home, 40, offset=10)]
    before = len(log_lines(served_home))
    process = ServerProcess(served_home, "--workers", "2")
    try:
        process.wait_ready()

        def send(i: int) -> tuple[int, str, str]:
            body = {"key": keys[i % len(keys)], "label": i % 2, "reason": f"checked {i}", "actor": "ops",
                    "feedback_id": f"w-{i}"}
            with httpx.Client() as client:  # a new connection each time: the kernel spreads them
                response = client.post(f"{process.url}/v1/feedback", json=body, timeout=60)
            return response.status_code, response.headers.get("keel-worker", ""), body["feedback_id"]

        # Every id twice, all at once, from 8 clients.
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(send, [i for i in range(80) for _ in (0, 1)]))
    finally:
        assert process.stop(), process.output()

    assert {status for status, _, _ in answers} <= {200, 201}
    for fid in {f for _, _, f in answers}:
        assert sorted(s for s, _, f in answers if f == fid) == [200, 201], fid
    assert len({worker for _, worker, _ in answers}) == 2, "every request went to one worker"
    raw = log_path(served_home.home).read_bytes()
    assert raw.endswith(b"\n")
    new = log_lines(served_home)[before:]
    assert sorted(r["feedback_id"] for r in new) == sorted(f"w-{i}" for i in range(80))
    stamps = [r["received_at"] for r in new]
    assert stamps == sorted(stamps)
