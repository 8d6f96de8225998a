"""The real-time API: the real ``keel serve`` process on 127.0.0.1, over a home where ``keel run``
trained and promoted real models, answering as batch scoring does.

Every test here talks HTTP to the server process; the expected scores come from
``serving.predictions``, written by batch scoring in the same ``keel run``.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time

import httpx
import pytest
from conftest import REQUEST_COLUMNS, SERVED_END, USECASE, ServerProcess, query, schedule

from keel.registry.promotion import registered_names

pytestmark = pytest.mark.slow

NAMES = registered_names("flight_disruption")
FEATURES = USECASE.model.features
DAY = SERVED_END  # scored in batch by the keel run that built the home
def key(request: dict) -> str:
    return (f"{request['year']:04d}{request['month']:02d}{request['day']:02d}-{request['carrier']}-"
            f"{request['flight']}-{request['origin']}")


def batch_scores(paths, day: dt.date) -> dict[str, tuple[float, str, int]]:
    rows = query(paths.warehouse, "select flight_id, score, tier, model_version from serving.predictions "
                 "where flight_date = ?", [day])
    return {flight: (score, tier, version) for flight, score, tier, version in rows}


def test_every_flight_of_a_day_scores_as_batch_scoring_scored_it(server, served_home):
    requests = schedule(served_home, DAY)
    expected = batch_scores(served_home, DAY)
    assert len(requests) == len(expected) > 500

    answers = []
    for start in range(0, len(requests), 200):
        response = httpx.post(f"{server.url}/v1/predict", json=requests[start:start + 200], timeout=30)
        assert response.status_code == 200, response.text
        answers += response.json()["predictions"]

    assert [a["key"] for a in answers] == [key(r) for r in requests]
    for answer in answers:
        score, tier, version = expected[answer["key"]]
        assert answer["score"] == pytest.approx(score, rel=1e-9, abs=1e-12)
        assert (answer["tier"], answer["model_name"], answer["model_version"]) == ("primary", NAMES["primary"], version)
        assert answer["features_as_of"] >= (DAY - dt.timedelta(days=1)).isoformat()
    assert len({a["request_id"] for a in answers}) == len(answers)


def test_one_request_alone_gets_one_prediction(server, served_home):
    (request,) = schedule(served_home, DAY, limit=1)
    response = httpx.post(f"{server.url}/v1/predict", json=request, timeout=10)
    assert response.status_code == 200, response.text
    (answer,) = response.json()["predictions"]
    assert set(answer) == {"key", "score", "tier", "model_name", "model_version", "features_as_of", "request_id"}
    assert answer["score"] == pytest.approx(batch_scores(served_home, DAY)[key(request)][0], rel=1e-9)


def test_health_readiness_and_models_say_what_serves(server):
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "alive"}
    ready = httpx.get(f"{server.url}/readyz").json()
    assert ready["ready"] is True and ready["degraded"] == {}
    models = httpx.get(f"{server.url}/v1/models").json()
    assert [(t["tier"], t["model_name"], t["version"], t["alias"], t["loaded"]) for t in models["tiers"]] == [
        ("primary", NAMES["primary"], 1, "champion", True),
        ("fallback", NAMES["fallback"], 1, "champion", True),
        ("baseline", NAMES["baseline"], 1, "champion", True),
    ]
    assert models["snapshot"]["version"] == ready["snapshot"]
    assert models["snapshot"]["as_of"] >= DAY.isoformat()
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert "/v1/predict" in schema["paths"]
    assert set(schema["components"]["schemas"]["PredictionRequest"]["properties"]) == set(REQUEST_COLUMNS)


def _bad_inputs(good: dict) -> dict[str, tuple[object, int, str]]:
    """name -> (body, expected status, a rule or field the answer must name)."""
    return {
        "not_json": (b"{not json", 422, "json_invalid"),
        "a_number_as_text": ({**good, "flight": "1545"}, 422, "flight"),
        "a_text_as_number": ({**good, "carrier": 9}, 422, "carrier"),
        "an_unknown_field": ({**good, "arr_delay": 3.0}, 422, "extra_forbidden"),
        "a_missing_field": ({k: v for k, v in good.items() if k != "origin"}, 422, "origin"),
        "a_null_where_the_contract_forbids_it": ({**good, "distance": None}, 422, "distance"),
        "a_time_that_is_not_a_time": ({**good, "time_hour": "yesterday"}, 422, "time_hour"),
        "an_empty_batch": ([], 422, "too_short"),
        "a_batch_too_long": ([good] * 1001, 422, "too_long"),
        "a_bare_string": ("flight", 422, "(body)"),
        "a_date_outside_the_calendar": ({**good, "year": 2031}, 422, "calendar"),
        "a_body_too_large": (b"[" + b" " * 2_000_000 + b"]", 413, "max_body_bytes"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs({})))
def test_bad_input_gets_a_4xx_that_names_what_is_wrong(server, served_home, case):
    (good,) = schedule(served_home, DAY, limit=1)
    body, status, named = _bad_inputs(good)[case]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"{server.url}/v1/predict", content=content,
                          headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == status, response.text
    assert named in response.text
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_a_primary_that_fails_to_load_hands_its_requests_to_the_fallback(served_home, tmp_path):
    (model_file,) = [
        path for path in (served_home.mlflow / "artifacts").rglob("model.txt")
        if json.loads((path.parent / "model.json").read_text())["kind"] == "primary"
    ]
    kept = tmp_path / "model.txt"
    shutil.copy(model_file, kept)
    model_file.write_text(model_file.read_text() + "\n")  # the stored file no longer matches its hash
    process = ServerProcess(served_home)
    try:
        ready = process.wait_ready()
        assert list(ready["degraded"]) == ["primary"]
        assert "does not match model.json" in ready["degraded"]["primary"]
        requests = schedule(served_home, DAY, limit=20)
        answers = httpx.post(f"{process.url}/v1/predict", json=requests, timeout=30).json()["predictions"]
        assert {(a["tier"], a["model_name"]) for a in answers} == {("fallback", NAMES["fallback"])}
        assert all(0 <= a["score"] <= 1 for a in answers)
    finally:
        stopped = process.stop()
        shutil.copy(kept, model_file)
    assert stopped, process.output()



# -- the prediction log, its warehouse table and serving_skew ----------------------------------


def logged(paths) -> list[dict]:
    """Every line of the prediction log, read without the code that writes it."""
    return [json.loads(line) for path in sorted((paths.home / "serving/predictions").glob("*/*.jsonl"))
            for line in path.read_text().splitlines()]


def materialize_served(paths, day: dt.date):
    import dagster as dg

    from assets.serving import online_predictions, serving_skew
    from resources.keel_state import KeelState

    # KeelState reads the deployment's home from KEEL_HOME, as a Dagster run of that home does.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KEEL_HOME", str(paths.home))
        return dg.materialize([online_predictions, serving_skew], partition_key=day.isoformat(),
                              resources={"keel": KeelState()},
                              instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)


def test_every_answer_is_logged_loaded_by_day_and_held_to_the_mart_by_serving_skew(server, served_home):
    requests = schedule(served_home, DAY, limit=120)
    answered = httpx.post(f"{server.url}/v1/predict", json=requests, timeout=60).json()["predictions"]
    answered += httpx.post(f"{server.url}/v1/predict", json=requests[0], timeout=60).json()["predictions"]
    time.sleep(2.5)  # past the one-second flush interval

    log = {r["request_id"]: r for r in logged(served_home)}
    for answer in answered:
        record = log[answer["request_id"]]
        assert (record["key"], record["score"], record["tier"], record["model_version"]) == (
            answer["key"], answer["score"], answer["tier"], answer["model_version"])
        assert record["date"] == DAY.isoformat() and record["latency_us"] > 0
        assert len(record["features"]) == 1 + len(FEATURES)

    result = materialize_served(served_home, DAY)
    assert result.success
    of_the_day = [r for r in log.values() if r["date"] == DAY.isoformat()]
    rows = query(served_home.warehouse, "select request_id, score, tier from serving.online_predictions "
                 "where flight_date = ?", [DAY])
    assert sorted(rows) == sorted((r["request_id"], r["score"], r["tier"]) for r in of_the_day)
    (check,) = result.get_asset_check_evaluations()
    assert check.passed, check.description
    assert check.metadata["answers_compared"].value == len(of_the_day)

    # The proof fails when the served path is altered: one value off by far more than noise.
    path = sorted((served_home.home / "serving/predictions").glob("*/*.jsonl"))[-1]
    original = path.read_text()
    lines = original.splitlines()
    record = json.loads(lines[-1])
    record["features"]["weather_temp"] = (record["features"]["weather_temp"] or 0.0) + 0.5
    path.write_text("\n".join([*lines[:-1], json.dumps(record)]) + "\n")
    try:
        altered = materialize_served(served_home, DAY)
        (check,) = altered.get_asset_check_evaluations()
        assert not check.passed
        assert check.metadata["features_differing"].value == ["weather_temp"]
        assert check.metadata["differences"].value == 1
    finally:
        path.write_text(original)


def test_a_clean_shutdown_logs_every_answer_and_kill_9_loses_at_most_the_last_flush(served_home):
    requests = schedule(served_home, DAY, limit=10)
    process = ServerProcess(served_home)
    try:
        process.wait_ready()
        ids = [httpx.post(f"{process.url}/v1/predict", json=r, timeout=30).json()["predictions"][0]["request_id"]
               for r in requests]
    finally:
        assert process.stop(), process.output()
    assert set(ids) <= {r["request_id"] for r in logged(served_home)}

    process = ServerProcess(served_home)
    process.wait_ready()
    served = []
    started = time.monotonic()
    while time.monotonic() - started < 4.0:
        answer = httpx.post(f"{process.url}/v1/predict", json=requests[len(served) % 10], timeout=30).json()
        served.append((time.monotonic(), answer["predictions"][0]["request_id"]))
    process.kill()
    killed_at = time.monotonic()
    kept = {r["request_id"] for r in logged(served_home)}
    lost = [at for at, request_id in served if request_id not in kept]
    assert len(served) >= 5
    # Whatever was lost was answered within the last flush interval (1 s) before the kill.
    assert all(killed_at - at <= 1.5 for at in lost), (len(lost), killed_at - min(lost))


# -- live events ------------------------------------------------------------------------------

OUTCOMES = ("dep_time", "dep_delay", "arr_time", "arr_delay", "air_time")


def table_rows(paths, table: str, first: dt.date, last: dt.date) -> list[dict]:
    """Validated rows of ``table`` as events: every contract column, time stamps in ISO."""
    con_rows = query(paths.warehouse, f"select * exclude (_partition_date, _source_file, _source_row) "
                     f"from validated.{table} where _partition_date between ? and ? order by time_hour, 1",
                     [first, last])
    columns = [c for (c,) in query(paths.warehouse, "select column_name from information_schema.columns "
                                   "where table_schema = 'validated' and table_name = ? and column_name "
                                   "not like '\\_%' escape '\\' order by ordinal_position", [table])]
    rows = []
    for values in con_rows:
        row = dict(zip(columns, values))
        row["time_hour"] = row["time_hour"].isoformat() + "Z"
        rows.append(row)
    return rows


def post_events(url: str, table: str, rows: list[dict]) -> int:
    accepted = 0
    for start in range(0, len(rows), 500):
        response = httpx.post(f"{url}/v1/events", json={"table": table, "rows": rows[start:start + 500]}, timeout=60)
        assert response.status_code == 200, response.text[:2000]
        accepted += response.json()["accepted"]
    return accepted


def test_an_event_that_breaks_the_contract_gets_its_rule_and_is_kept_with_its_reason(server, served_home):
    (good,) = table_rows(served_home, "weather", DAY, DAY)[:1]
    bad = {**good, "origin": "BOS", "humid": 140.0}
    response = httpx.post(f"{server.url}/v1/events", json={"table": "weather", "rows": [good, bad]}, timeout=30)

    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["accepted"] == 1
    (rejected,) = answer["rejected"]
    assert rejected["index"] == 1
    assert set(rejected["rules"]) == {"origin:isin(['EWR', 'JFK', 'LGA'])", "humid:in_range(0, 100)"}
    kept = [json.loads(line) for path in (served_home.home / "serving/events/rejected/weather").glob("*.jsonl")
            for line in path.read_text().splitlines()]
    assert [(k["row"], k["rules"]) for k in kept][-1] == (bad, rejected["rules"])
    logged = [json.loads(line)["row"] for path in (served_home.home / "serving/events/weather").glob("*.jsonl")
              for line in path.read_text().splitlines()]
    assert good in logged and bad not in logged

    for body, rule in [({"table": "planes", "rows": [good]}, "unknown_table"),
                       ({"table": "weather", "rows": []}, "rows_type"),
                       ({"table": "weather", "rows": [good], "extra": 1}, "extra_forbidden"),
                       ({"table": "weather", "rows": [{**good, "temp": "cold"}]}, "temp:type")]:
        response = httpx.post(f"{server.url}/v1/events", json=body, timeout=30)
        assert response.status_code == 422 and rule in response.text, (body, response.text)


def _snapshot_without_the_day(paths, day: dt.date) -> str:
    """A new current snapshot: the served one with the time-bucketed tables cut before ``day``,
    as the snapshot built at the end of the day before holds them."""
    import duckdb

    from keel.serving.runtime import ensure_snapshot
    from keel.serving.snapshot import CURRENT_FILE, SNAPSHOT_FILE, current_snapshot, snapshots_root

    root = snapshots_root(paths.home)
    ensure_snapshot(paths, USECASE)  # what keel serve exports when it starts on a home without one
    current = current_snapshot(root)
    version = f"{current.version}-before-{day}"
    shutil.rmtree(root / version, ignore_errors=True)
    shutil.copytree(current.path.parent, root / version)
    con = duckdb.connect(str(root / version / SNAPSHOT_FILE))
    for table in ("origin_weather_hourly", "origin_ops_minutely"):
        con.execute(f"delete from online.{table} where feature_date >= ?", [day])
    con.close()
    manifest = json.loads((root / version / "manifest.json").read_text())
    (root / version / "manifest.json").write_text(json.dumps({**manifest, "version": version,
                                                               "as_of": (day - dt.timedelta(days=1)).isoformat()}))
    (root / CURRENT_FILE).write_text(version + "\n")
    return current.version


def _restore_snapshot(paths, version: str, server, timeout: float = 120.0) -> None:
    """Make ``version`` current again and wait until the module's server serves it again: it
    follows the current snapshot too, and an answer it gave from the cut one would be logged
    for the day and held to the mart by serving_skew."""
    from keel.serving.snapshot import CURRENT_FILE, snapshots_root

    (snapshots_root(paths.home) / CURRENT_FILE).write_text(version + "\n")
    deadline = time.monotonic() + timeout
    while (serving := httpx.get(f"{server.url}/readyz", timeout=10).json().get("snapshot")) != version:
        assert time.monotonic() < deadline, f"the module's server still serves {serving}, not {version}"
        time.sleep(0.2)


def _mart_rows(paths, day: dt.date) -> dict[str, dict]:
    rows = query(paths.warehouse, f"select flight_id, {', '.join(FEATURES)} from marts.flight_features "
                 "where flight_date = ?", [day])
    return {key: dict(zip(FEATURES, values)) for key, *values in rows}


def _differences(vector: dict, row: dict) -> list[str]:
    """The features of a served vector that are not the mart row's: numbers within 1e-9
    relative, null equal to null (NaN or None), text exactly."""
    def missing(value):
        return value is None or (isinstance(value, float) and value != value)

    differing = []
    for feature, expected in row.items():
        served = vector.get(feature)
        if missing(served) or missing(expected):
            same = missing(served) and missing(expected)
        elif isinstance(expected, (int, float)):
            same = served == pytest.approx(expected, rel=1e-9, abs=0)
        else:
            same = served == expected
        if not same:
            differing.append(feature)
    return differing


def test_live_events_serve_what_batch_scoring_scored_and_survive_kill_9(server, served_home):
    from keel.serving.snapshot import current_snapshot, snapshots_root

    served_before = _snapshot_without_the_day(served_home, DAY)
    process = ServerProcess(served_home)
    try:
        process.wait_ready()
        requests = schedule(served_home, DAY)
        # Before any event the day's weather and recent departures are unknown: not the mart.
        # Asked of the store the server loads, in process: an answer served now would be logged
        # for the day, and serving_skew rightly holds every logged answer of it to the mart.
        cut = USECASE.serving.load_store(current_snapshot(snapshots_root(served_home.home)).path)
        mart = _mart_rows(served_home, DAY)
        early = USECASE.serving.features(cut, requests[:200])
        assert sum(bool(_differences(vector, mart[vector["flight_id"]])) for vector in early) > 50
        expected = batch_scores(served_home, DAY)

        accepted = post_events(process.url, "weather", table_rows(served_home, "weather", DAY - dt.timedelta(days=2), DAY))
        flights = table_rows(served_home, "flights", DAY - dt.timedelta(days=3), DAY)
        published = [{**row, **{c: None for c in OUTCOMES}} for row in flights]
        accepted += post_events(process.url, "flights", published)
        accepted += post_events(process.url, "flights", [row for row in flights if row["dep_time"] is not None])

        answers = []
        for start in range(0, len(requests), 200):
            answers += httpx.post(f"{process.url}/v1/predict", json=requests[start:start + 200],
                                  timeout=60).json()["predictions"]
        assert len(answers) == len(expected)
        for answer in answers:
            assert answer["score"] == pytest.approx(expected[answer["key"]][0], rel=1e-9, abs=1e-12), answer["key"]
            assert answer["features_as_of"] > DAY.isoformat()

        process.kill()
        logged = sum(len(path.read_text().splitlines())
                     for table in ("weather", "flights")
                     for path in (served_home.home / "serving/events" / table).glob("*.jsonl"))
        earlier = 1  # the one valid weather event of the contract test, when it ran first
        assert logged in (accepted, accepted + earlier)
    finally:
        if process.process.poll() is None:
            process.stop()
        _restore_snapshot(served_home, served_before, server)


# -- /metrics ---------------------------------------------------------------------------------


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """``GET /metrics`` parsed as the Prometheus text format: (sample name, labels) -> value.
    Every sample must belong to a family declared with # TYPE, and every line must parse."""
    import re

    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    declared, samples = {}, {}
    sample = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
    label = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in response.text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            declared[name] = kind
            continue
        if line.startswith("#") or not line:
            continue
        match = sample.match(line)
        assert match, line
        name, _, labels, value = match.groups()
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in declared else name
        assert family in declared, line
        samples[(name, frozenset(label.findall(labels or "")))] = float(value)
    return samples


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def histogram(samples: dict, name: str, **labels: str) -> list[tuple[float, float]]:
    """The (upper bound, cumulative count) pairs of one histogram, in bound order."""
    buckets = [(float(dict(l)["le"]), v) for (n, l), v in samples.items()
               if n == f"{name}_bucket" and {k: x for k, x in l if k != "le"} == labels]
    return sorted(buckets)


def test_metrics_count_requests_errors_latency_tiers_events_and_the_log_queue(server, served_home):
    requests = schedule(served_home, DAY, limit=5)
    (weather,) = table_rows(served_home, "weather", DAY, DAY)[:1]
    before = scrape(server.url)

    for request in requests:
        assert httpx.post(f"{server.url}/v1/predict", json=request, timeout=30).status_code == 200
    assert httpx.post(f"{server.url}/v1/predict", json=requests, timeout=30).status_code == 200
    for body in ({**requests[0], "flight": "1"}, {**requests[0], "arr_delay": 1.0}):
        assert httpx.post(f"{server.url}/v1/predict", json=body, timeout=30).status_code == 422
    events = httpx.post(f"{server.url}/v1/events", json={"table": "weather", "rows": [weather, {**weather, "humid": 140.0}]},
                        timeout=30)
    assert events.status_code == 422 and events.json()["accepted"] == 1
    after = scrape(server.url)

    def delta(name, **labels):
        return sample(after, name, **labels) - sample(before, name, **labels)

    predict = {"endpoint": "/v1/predict", "method": "POST"}
    assert delta("keel_http_requests_total", **predict, status="200") == 6
    assert delta("keel_http_requests_total", **predict, status="422") == 2
    assert delta("keel_http_errors_total", **predict, status="422") == 2
    assert delta("keel_http_errors_total", **predict, status="200") == 0
    assert delta("keel_http_request_duration_seconds_count", **predict) == 8
    assert delta("keel_http_request_duration_seconds_sum", **predict) > 0
    assert delta("keel_predictions_total", tier="primary") == 10
    assert delta("keel_tier_duration_seconds_count", tier="primary") == 6
    assert delta("keel_events_accepted_total", table="weather") == 1
    assert delta("keel_events_rejected_total", table="weather") == 1
    assert delta("keel_http_requests_total", endpoint="/v1/events", method="POST", status="422") == 1

    buckets = histogram(after, "keel_http_request_duration_seconds", **predict)
    bounds = [bound for bound, _ in buckets]
    # Fine enough to resolve 50 us to 10 ms: at least ten bounds in that range.
    assert 50e-6 in bounds and 10e-3 in bounds and len([b for b in bounds if 50e-6 <= b <= 10e-3]) >= 10
    counts = [count for _, count in buckets]
    assert counts == sorted(counts) and bounds[-1] == float("inf")
    assert counts[-1] == sample(after, "keel_http_request_duration_seconds_count", **predict)
    assert sample(after, "keel_prediction_log_queue_capacity") == 10_000
    assert ("keel_prediction_log_queue_depth", frozenset()) in after
    assert sample(after, "keel_prediction_log_dropped_total") == 0
    assert sample(after, "keel_metrics_workers") == 1
    # The scrape itself is counted, on the next scrape.
    assert delta("keel_http_requests_total", endpoint="/metrics", method="GET", status="200") == 1


def test_metrics_add_up_the_counts_of_every_worker(served_home):
    # Regression: with --workers 2 a request could land on a worker still loading its models
    # and get a 503 while the other worker was ready; a worker now takes connections once loaded.
    requests = schedule(served_home, DAY, limit=1)
    process = ServerProcess(served_home, "--workers", "2")
    try:
        process.wait_ready()
        deadline = time.monotonic() + 60
        while sample(scrape(process.url), "keel_metrics_workers") < 2:
            assert time.monotonic() < deadline, "the second worker never published its metrics"
            time.sleep(0.5)
        sent = 0
        pids = set()
        while sent < 60 or len(pids) < 2:
            # A new connection each time: the kernel spreads them over the workers.
            with httpx.Client() as client:
                response = client.post(f"{process.url}/v1/predict", json=requests[0], timeout=30)
            assert response.status_code == 200
            pids.add(response.headers["keel-worker"])
            sent += 1
            assert sent < 2000, "every request went to one worker"
        time.sleep(2.5)  # past one share interval
        for _ in range(4):  # whichever worker answers the scrape, the totals are the server's
            samples = scrape(process.url)
            assert sample(samples, "keel_metrics_workers") == 2
            assert sample(samples, "keel_predictions_total", tier="primary") == sent
            assert sample(samples, "keel_http_requests_total", endpoint="/v1/predict", method="POST",
                          status="200") == sent
    finally:
        assert process.stop(), process.output()


# -- per-tier time budgets --------------------------------------------------------------------


def test_a_primary_over_its_time_budget_is_skipped_and_the_fallback_answers(served_home, tmp_path):
    import re

    written = (served_home.home / "keel.toml").read_text() if (served_home.home / "keel.toml").exists() else ""
    written = re.sub(r"(?ms)^\[serving\]\n.*?(?=^\[|\Z)", "", written)
    # 0.1 ns per request: no model call is that fast.
    (tmp_path / "keel.toml").write_text(written + "\n[serving]\nprimary_budget_ms = 0.0000001\n")
    process = ServerProcess(served_home, environment={"KEEL_CONFIG": str(tmp_path / "keel.toml")})
    requests = schedule(served_home, DAY, limit=4)
    try:
        process.wait_ready()
        answers = [httpx.post(f"{process.url}/v1/predict", json=r, timeout=30).json()["predictions"][0]
                   for r in requests[:3]]
        answers += httpx.post(f"{process.url}/v1/predict", json=requests, timeout=30).json()["predictions"]
        assert [(a["tier"], a["model_name"]) for a in answers] == [("fallback", NAMES["fallback"])] * 7
        samples = scrape(process.url)
        assert sample(samples, "keel_tier_skipped_total", tier="primary", reason="over_budget") == 7
        assert sample(samples, "keel_predictions_total", tier="fallback") == 7
        assert sample(samples, "keel_predictions_total", tier="primary") == 0
        # The primary was called (and timed) once per request, then its late scores dropped.
        assert sample(samples, "keel_tier_duration_seconds_count", tier="primary") == 4
    finally:
        assert process.stop(), process.output()
    log = {r["request_id"]: r for r in logged(served_home)}
    assert {log[a["request_id"]]["tier"] for a in answers} == {"fallback"}


# -- the features of a request, without pandas ------------------------------------------------


def test_the_records_a_request_is_served_from_equal_the_online_stores_frame(server, served_home):
    import math

    import pandas as pd

    from keel.serving.snapshot import current_snapshot, snapshots_root

    store = USECASE.serving.load_store(current_snapshot(snapshots_root(served_home.home)).path)
    requests = schedule(served_home, DAY)
    typed = [{**r, "time_hour": dt.datetime.fromisoformat(r["time_hour"].replace("Z", "+00:00"))} for r in requests]
    frame = pd.DataFrame(typed)
    frame["time_hour"] = pd.to_datetime(frame["time_hour"], utc=True).dt.tz_convert(None)
    expected = store.get_features(frame)
    records = USECASE.serving.features(store, typed)
    assert [list(r) for r in records[:1]] == [list(expected.columns)]
    assert len(records) == len(expected) > 500
    for record, row in zip(records, expected.to_dict("records")):
        for column, value in row.items():
            served = record[column]
            if isinstance(value, float) and math.isnan(value):
                assert isinstance(served, float) and math.isnan(served), (record["flight_id"], column)
            else:
                assert served == value and type(served) in (int, float, str, type(None)), (
                    record["flight_id"], column, served, value)



def test_the_serving_assets_refresh_once_the_days_mart_is_built_and_keel_run_loads_served_days():
    import dagster as dg
    from definitions import defs

    graph = defs.resolve_asset_graph()
    mart = dg.AssetKey(["marts", "flight_features"])
    for name in ("online_snapshot", "online_predictions"):
        node = graph.get(dg.AssetKey(["serving", name]))
        assert node.parent_keys == {mart}
        assert node.automation_condition.get_label() == "daily_refresh"
    check = graph.get_check_spec(dg.AssetCheckKey(dg.AssetKey(["serving", "online_predictions"]), "serving_skew"))
    assert check.blocking
    job = defs.resolve_job_def("load_served_daily")
    assert set(job.asset_layer.selected_asset_keys) == {dg.AssetKey(["serving", "online_predictions"])}


def test_keel_run_loads_the_served_answers_of_its_days_and_holds_them_to_the_mart(server, served_home):
    import io

    from keel.app.pipeline import run_pipeline

    requests = schedule(served_home, DAY, limit=30)
    assert httpx.post(f"{server.url}/v1/predict", json=requests, timeout=60).status_code == 200
    time.sleep(2.5)  # past the prediction log's flush interval
    of_the_day = {r["request_id"] for r in logged(served_home) if r["date"] == DAY.isoformat()}
    query(served_home.warehouse, "select 1")  # the server never holds the warehouse
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KEEL_HOME", str(served_home.home))
        patch.setenv("DAGSTER_HOME", str(served_home.dagster_home))
        out = io.StringIO()
        code = run_pipeline(DAY, DAY, out=out)
    assert code == 0, out.getvalue()
    assert "served predictions (serving_skew): 1 passed, 0 failed" in out.getvalue(), out.getvalue()
    rows = query(served_home.warehouse, "select request_id from serving.online_predictions where flight_date = ?", [DAY])
    assert {r for (r,) in rows} == of_the_day


def test_a_day_replayed_live_sends_every_event_and_every_request_in_time_order(server, served_home):
    # Regression: serving_skew failed on the replayed day with thousands of weather and
    # recent-operations differences. They came from answers served before any event of the
    # day (this module's probe of the cut snapshot), never from the replay.
    import os
    import subprocess
    import sys

    # The snapshot as the end of the day before leaves it: the day's weather and operations
    # can come only from the replayed events.
    served_before = _snapshot_without_the_day(served_home, DAY)
    process = ServerProcess(served_home)
    try:
        process.wait_ready()
        logged_before = {r["request_id"] for r in logged(served_home)}
        env = {**os.environ, "KEEL_HOME": str(served_home.home), "DAGSTER_HOME": str(served_home.dagster_home)}
        done = subprocess.run([sys.executable, "-m", "keel", "replay", "--live", "--date", DAY.isoformat(),
                               "--speed", "20000", "--url", process.url, "--json"],
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout.splitlines()[-1])
        flights = len(schedule(served_home, DAY))
        assert report["requests_sent"] == flights and report["answered"] == {"primary": flights}
        assert report["errors"] == 0 and report["events_rejected"] == 0
        assert report["events_accepted"] == report["events_sent"] > flights
    finally:
        assert process.stop(), process.output()
        _restore_snapshot(served_home, served_before, server)
    replayed = [r for r in logged(served_home) if r["request_id"] not in logged_before]
    assert len(replayed) == flights
    # Served before the day's batch: from the live events, never the snapshot's day.
    assert {r["snapshot_version"] for r in replayed} == {f"{served_before}-before-{DAY}"}

    # Each replayed answer is its mart row, and the day's check passes on every logged answer.
    mart = _mart_rows(served_home, DAY)
    differing = {r["key"]: _differences(r["features"], mart[r["key"]]) for r in replayed}
    assert {key: features for key, features in differing.items() if features} == {}
    result = materialize_served(served_home, DAY)
    assert result.success
    (check,) = result.get_asset_check_evaluations()
    assert check.passed, check.description
    of_the_day = [r for r in logged(served_home) if r["date"] == DAY.isoformat()]
    assert check.metadata["answers_compared"].value == len(of_the_day) >= flights


# -- a promotion and a rollback under load (last: it registers a second version) ---------------


def test_a_promotion_and_a_rollback_under_load_answer_every_request_from_one_whole_set(server, served_home):
    import os
    import subprocess
    import sys
    import threading

    from conftest import registry as open_home_registry

    from keel.registry import model_set
    from keel.registry.promotion import GATES_TAG

    registry = open_home_registry(served_home)
    for kind, name in NAMES.items():  # version 2 of each kind, from one run, gates passed
        version = registry.log_and_register(registry.load(name, 1), name=name, metrics={}, params={},
                                            lineage={"dagster_run_id": "serving-swap-test"}, trials=None)
        assert int(version.version) == 2
    registry.client().set_model_version_tag(NAMES["primary"], "2", GATES_TAG, "passed")
    sets = {v: f"primary={v};fallback={v};baseline={v}" for v in (1, 2)}

    requests = schedule(served_home, DAY, limit=3)
    seen: list[tuple[int, str, list]] = []
    stop = threading.Event()

    def client():
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                response = http.post(f"{server.url}/v1/predict", json=requests)
                answers = response.json().get("predictions", []) if response.status_code == 200 else []
                seen.append((response.status_code, response.headers.get("keel-model-set"),
                             [(a["tier"], a["model_version"], a["request_id"]) for a in answers]))

    def wait_for(label: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not (seen and seen[-1][1] == label):
            assert time.monotonic() < deadline, f"the server never served {label}; last {seen[-1:]}"
            time.sleep(0.05)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        wait_for(sets[1])
        model_set.promote_set(registry, NAMES, 2, actor="test", note="a promotion under load")
        wait_for(sets[2])
        env = {**os.environ, "KEEL_HOME": str(served_home.home), "DAGSTER_HOME": str(served_home.dagster_home)}
        rollback = subprocess.run([sys.executable, "-m", "keel", "rollback", "--note", "under load"], env=env,
                                  capture_output=True, text=True, timeout=300)
        assert rollback.returncode == 0, rollback.stdout + rollback.stderr
        wait_for(sets[1])
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(timeout=60)

    assert len(seen) > 20
    assert {status for status, _, _ in seen} == {200}
    order = []
    for _, label, answers in seen:
        assert label in sets.values(), label
        version = int(label.split(";")[0].split("=")[1])
        # Every answer of the request comes from the set its header names, whichever tier.
        assert {(tier, v) for tier, v, _ in answers} == {("primary", version)}
        if not order or order[-1] != version:
            order.append(version)
    assert order == [1, 2, 1]
    time.sleep(1.5)  # past the prediction log's flush interval
    log = {r["request_id"]: r for r in logged(served_home)}
    for _, label, answers in seen:
        for tier, version, request_id in answers:
            assert log[request_id]["model_set"]["versions"] == {kind: version for kind in NAMES}
