"""Serving benchmark: latency and throughput of ``keel serve`` on 127.0.0.1, beside its floors.

Starts ``keel serve`` (one worker) on a home where ``keel run`` trained and promoted models,
then drives it from another process: the closed-loop phases with ``wrk`` when it is installed
(one thread, keep-alive connections), else with the minimal asyncio HTTP/1.1 client below
(keep-alive connections, no HTTP library on the client's path); the fixed-rate phase always
with the asyncio client (``wrk`` has no fixed rate; ``wrk2`` is not packaged here).
Prints, side by side, from the same run and server:
  - noop:         POST /v1/noop with the same one-flight body (parsed and validated, nothing else):
                  the floor of the server itself;
  - predict x1:   POST /v1/predict for one flight;
  - predict x100: POST /v1/predict for a batch of 100 flights;
  - peak x3:      /v1/predict for one flight at a fixed 3x the expected peak rate (default
                  3 x 1,000/s), open loop, every send timed from its scheduled moment;
each with requests, errors, throughput, p50/p95/p99; then the server's own handler time
(from the prediction log) and, in this process, the bare model call and the feature lookup.
Every phase is bounded in requests and seconds.

Usage: python bench/bench_serving.py [--home KEEL_HOME] [--seconds 10] [--peak-seconds 20]
       [--connections 8] [--peak-rate 3000] [--python-client]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def percentiles(values_us: list[float]) -> tuple[float, float, float]:
    if not values_us:
        return (float("nan"),) * 3
    ordered = sorted(values_us)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return at(0.50), at(0.95), at(0.99)


# -- the load generator (runs in its own process) ----------------------------------------------


def _request_bytes(path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    return status


async def _closed_loop(port: int, payload: bytes, connections: int, seconds: float, limit: int):
    latencies, errors, done = [], 0, 0
    deadline = time.perf_counter() + seconds

    async def worker():
        nonlocal errors, done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline and done < limit:
                start = time.perf_counter()
                writer.write(payload)
                status = await _read_response(reader)
                latencies.append((time.perf_counter() - start) * 1e6)
                done += 1
                errors += status != 200
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return latencies, errors, time.perf_counter() - started


async def _open_loop(port: int, payload: bytes, rate: float, seconds: float, connections: int):
    """Sends at ``rate`` per second on a fixed schedule; latency counts from the scheduled
    moment, so a stalled server shows in the figures (no coordinated omission)."""
    latencies, errors = [], 0
    total = int(rate * seconds)
    queue: asyncio.Queue = asyncio.Queue()
    started = time.perf_counter()

    async def worker():
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                scheduled = await queue.get()
                if scheduled is None:
                    return
                writer.write(payload)
                try:
                    status = await _read_response(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    errors += 1
                    return
                latencies.append((time.perf_counter() - scheduled) * 1e6)
                errors += status != 200
        finally:
            writer.close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    for i in range(total):
        moment = started + i / rate
        delay = moment - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(moment)
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return latencies, errors, time.perf_counter() - started


def run_wrk(port: int, path: str, body: bytes, connections: int, seconds: float) -> dict:
    """One closed-loop phase with wrk: requests, errors, seconds and p50/p95/p99 in us."""
    import tempfile

    script = (
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [==[{body.decode()}]==]\n"
        "done = function(summary, latency, requests)\n"
        "  local e = summary.errors\n"
        "  io.write(string.format('KEEL %d %d %f %f %f %f\\n', summary.requests,\n"
        "    e.connect + e.read + e.write + e.status + e.timeout, summary.duration / 1e6,\n"
        "    latency:percentile(50), latency:percentile(95), latency:percentile(99)))\n"
        "end\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        done = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", handle.name,
                               f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True)
    finally:
        os.unlink(handle.name)
    (line,) = [l for l in done.stdout.splitlines() if l.startswith("KEEL ")]
    requests, errors, elapsed, p50, p95, p99 = line.split()[1:]
    return {"requests": int(requests), "errors": int(errors), "seconds": float(elapsed),
            "percentiles": (float(p50), float(p95), float(p99))}


def _load(args: tuple) -> tuple[list[float], int, float]:
    kind, port, payload, *rest = args
    if kind == "closed":
        return asyncio.run(_closed_loop(port, payload, *rest))
    return asyncio.run(_open_loop(port, payload, *rest))


def run_load(*args) -> tuple[list[float], int, float]:
    """The load in a process of its own, so the client never shares the server's core."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_load, (args,))


# -- the run ------------------------------------------------------------------------------------


def schedule_rows(home: Path, limit: int) -> list[dict]:
    import duckdb

    columns = ("year", "month", "day", "carrier", "flight", "tailnum", "origin", "dest",
               "sched_dep_time", "sched_arr_time", "distance", "hour", "minute", "time_hour")
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        (day,) = con.execute("select max(flight_date) from serving.predictions").fetchone()
        rows = con.execute(f"select {', '.join(columns)} from validated.flights where _partition_date = ? "
                           f"order by carrier, flight limit {int(limit)}", [day]).fetchall()
    finally:
        con.close()
    out = []
    for row in rows:
        record = dict(zip(columns, row))
        record["time_hour"] = record["time_hour"].isoformat() + "Z"
        out.append(record)
    return out


def in_process_floors(home: Path, requests: list[dict], repeats: int = 2000) -> dict[str, tuple]:
    """The bare champion call on one feature row, and the feature lookup for one request."""
    import datetime as dt

    import pandas as pd

    from keel.core.config import at
    from keel.registry.promotion import registered_names
    from keel.registry.tracking import open_registry
    from keel.serving.snapshot import current_snapshot, snapshots_root

    deployment = at(home)
    usecase = deployment.usecase
    registry = open_registry(deployment.tracking)
    name = registered_names(usecase.name)["primary"]
    model = registry.load(name, registry.CHAMPION)
    store = usecase.serving.load_store(current_snapshot(snapshots_root(home)).path)
    # A request as the API hands it on: contract-typed values, the time stamp a datetime.
    request = {**requests[0], "time_hour": dt.datetime.fromisoformat(requests[0]["time_hour"].replace("Z", "+00:00"))}
    (record,) = usecase.serving.features(store, [request])
    features = pd.DataFrame([record])
    matrix = model.row_matrix(record)
    timings = {}
    for label, call in (("model.predict_matrix (1 row)", lambda: model.predict_matrix(matrix)),
                        ("model.row_matrix + predict_matrix", lambda: model.predict_matrix(model.row_matrix(record))),
                        ("model.predict (1-row frame)", lambda: model.predict(features)),
                        ("feature lookup (1 request)", lambda: usecase.serving.features(store, [request]))):
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            samples.append((time.perf_counter() - start) * 1e6)
        timings[label] = percentiles(samples)
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=os.environ.get("KEEL_HOME", str(ROOT / ".keel")))
    parser.add_argument("--seconds", type=float, default=10.0, help="per closed-loop phase")
    parser.add_argument("--requests", type=int, default=200_000, help="cap per closed-loop phase")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--peak-rate", type=float, default=3000.0)
    parser.add_argument("--peak-seconds", type=float, default=20.0)
    parser.add_argument("--python-client", action="store_true", help="the asyncio client even when wrk is installed")
    args = parser.parse_args()
    home = Path(args.home).resolve()
    requests = schedule_rows(home, 100)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "KEEL_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    server = subprocess.Popen([sys.executable, "-m", "keel", "serve", "--port", str(port)], env=env)
    try:
        import httpx

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit("keel serve did not become ready")
        one = json.dumps(requests[0]).encode()
        batch = json.dumps(requests[:100]).encode()
        log_root = home / "serving" / "predictions"
        log_before = sum(len(p.read_bytes().splitlines()) for p in log_root.glob("*/*.jsonl"))
        # warm up both paths
        run_load("closed", port, _request_bytes("/v1/predict", one), 2, 1.0, 500)
        phases = [
            ("noop", _request_bytes("/v1/noop", one), 1),
            ("predict x1", _request_bytes("/v1/predict", one), 1),
            ("predict x100", _request_bytes("/v1/predict", batch), 100),
        ]
        use_wrk = _which("wrk") and not args.python_client
        print(f"client: {'wrk (1 thread)' if use_wrk else 'Python asyncio (wrk not installed)'}, "
              f"{args.connections} keep-alive connections, own process; the fixed-rate phase: Python asyncio, "
              "open loop")
        print(f"{'phase':<14}{'requests':>10}{'errors':>8}{'req/s':>10}{'flights/s':>11}"
              f"{'p50 us':>10}{'p95 us':>10}{'p99 us':>10}")
        bodies = {"noop": one, "predict x1": one, "predict x100": batch}
        for label, payload, flights in phases:
            if use_wrk:
                path = "/v1/noop" if label == "noop" else "/v1/predict"
                result = run_wrk(port, path, bodies[label], args.connections, args.seconds)
                _row_of(label, result["requests"], result["errors"], result["seconds"], flights,
                        result["percentiles"])
                continue
            latencies, errors, elapsed = run_load("closed", port, payload, args.connections, args.seconds,
                                                  args.requests)
            _row(label, latencies, errors, elapsed, flights)
        latencies, errors, elapsed = run_load("open", port, _request_bytes("/v1/predict", one),
                                              args.peak_rate, args.peak_seconds, 64)
        _row(f"peak {args.peak_rate:,.0f}/s", latencies, errors, elapsed, 1)
        time.sleep(2)  # the prediction log flushes every second
        records = [json.loads(line) for p in sorted(log_root.glob("*/*.jsonl")) for line in p.read_bytes().splitlines()]
        handler = [r["latency_us"] for r in records[log_before:]]
        p50, p95, p99 = percentiles(handler)
        print(f"server handler time (prediction log, {len(handler):,} answers): p50 {p50:.0f} us, "
              f"p95 {p95:.0f} us, p99 {p99:.0f} us")
    finally:
        server.terminate()
        server.wait(timeout=30)
    for label, (p50, p95, p99) in in_process_floors(home, requests).items():
        print(f"in process, {label}: p50 {p50:.1f} us, p95 {p95:.1f} us, p99 {p99:.1f} us")
    return 0


def _which(name: str) -> bool:
    from shutil import which

    return which(name) is not None


def _row(label: str, latencies: list[float], errors: int, elapsed: float, flights: int) -> None:
    _row_of(label, len(latencies), errors, elapsed, flights, percentiles(latencies))


def _row_of(label: str, count: int, errors: int, elapsed: float, flights: int,
            quantiles: tuple[float, float, float]) -> None:
    p50, p95, p99 = quantiles
    rate = count / elapsed if elapsed else 0.0
    print(f"{label:<14}{count:>10,}{errors:>8}{rate:>10,.0f}{rate * flights:>11,.0f}"
          f"{p50:>10.0f}{p95:>10.0f}{p99:>10.0f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
