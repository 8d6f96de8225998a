"""The real-time API: an ASGI application (FastAPI on uvicorn, uvloop and httptools).

Endpoints, versioned under ``/v1``: ``POST /v1/predict`` scores one request or a list of them
in the deployment's request schema (the columns ``ServingSpec.request_columns`` of its
request table, typed by that table's contract; unknown fields are rejected);
During a rollout the answers carry the headers ``keel-rollout`` (``<id>;stage=...;share=...``)
and ``keel-arm`` (``champion`` or ``canary``; per prediction, comma-separated, when a batch
mixes arms); the response body keeps its keys. ``POST /v1/events`` takes live rows of the event tables
(``keel.serving.events``); ``POST /v1/feedback`` takes label corrections and human labels
(``keel.serving.feedback``); ``GET /v1/models`` says what serves;
``GET /healthz`` (the process lives) and ``GET /readyz`` (a bundle is loaded; degraded tiers
named); ``GET /metrics`` (Prometheus text, ``keel.serving.metrics``); ``GET /v1/noop``
answers without work, the floor the benchmark measures beside ``/v1/predict``; the OpenAPI
document at ``/openapi.json``.

The handlers are ``async def``: their work is lookups and one model call, well under a
millisecond, and a sync handler pays a thread hop (70 ms p95 under concurrency here). The
per-request path builds no pandas frame: requests stay pydantic fields read as dicts, and
the features come back as dicts (``ServingSpec.features``). The only middleware is pure
ASGI (``Measured``, ``BodyLimit``): Starlette's ``BaseHTTPMiddleware`` costs a third of the
throughput.

This module does not use ``from __future__ import annotations``: the request models are
built at run time from the contract, and FastAPI must see the real annotation objects.
"""

import asyncio
import os
import time
import uuid
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic import Field, TypeAdapter, ValidationError

from keel.core import env
from keel.core.config import current
from keel.data.feedback import LABELS, MAX_ACTOR, MAX_ID, MAX_REASON
from keel.serving.runtime import OPTIONS_ENV, ServeOptions, ServingRuntime
from keel.serving.schema import row_model

def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status_code,
                    media_type="application/json", headers=headers)


def _readable(errors: list[dict]) -> list[dict[str, str]]:
    """pydantic's errors as a person reads them: where, and what is wrong."""
    readable = []
    for error in errors[:20]:
        where = ".".join(str(part) for part in error.get("loc", ()))
        readable.append({"field": where or "(body)", "problem": error.get("msg", "invalid"),
                         "rule": error.get("type", "invalid")})
    return readable


class BodyLimit:
    """Pure ASGI middleware: a body above ``max_bytes`` gets 413 before anything parses it."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                if not value.isdigit() or int(value) > self.max_bytes:
                    return await self._too_large(send)
                break
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await self._too_large(send)

    async def _too_large(self, send):
        body = orjson.dumps({"error": f"request body larger than {self.max_bytes} bytes",
                             "rule": "max_body_bytes"})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class Measured:
    """Pure ASGI middleware: every answer counted and timed, from the request's arrival to the
    end of its body, by endpoint (the API's paths; anything else is ``other``), method and
    status code."""

    def __init__(self, app, metrics, endpoints: set[str]):
        self.app, self.metrics, self.endpoints = app, metrics, endpoints
        self._labels: dict[tuple[str, str, int], tuple] = {}

    def _record(self, path: str, method: str, status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        key = (path, method, status)
        labels = self._labels.get(key)
        if labels is None:
            endpoint = path if path in self.endpoints else "other"
            labels = self._labels[key] = ((("endpoint", endpoint), ("method", method)),
                                          (("endpoint", endpoint), ("method", method), ("status", str(status))))
            if len(self._labels) > 1000:  # paths outside the API are many; keep the cache bounded
                self._labels.clear()
        timed, counted = labels
        metrics = self.metrics
        metrics.observe("keel_http_request_duration_seconds", timed, elapsed)
        metrics.inc("keel_http_requests_total", counted)
        if status >= 400:
            metrics.inc("keel_http_errors_total", counted)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500
        done = False

        async def measured_send(message):
            nonlocal status, done
            await send(message)
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                done = True
                self._record(scope["path"], scope["method"], status, started)

        try:
            await self.app(scope, receive, measured_send)
        finally:
            if not done:  # raised before its answer was sent: the server answers 500
                self._record(scope["path"], scope["method"], 500, started)


def create_app(runtime: ServingRuntime) -> FastAPI:
    """The API over ``runtime`` (which loads bundles, logs predictions and keeps events)."""
    options = runtime.options
    serving = runtime.serving
    request_table = runtime.usecase.table(serving.request_table)
    PredictionRequest = row_model(request_table, serving.request_columns, "PredictionRequest")
    key_column = runtime.model.key
    worker = str(os.getpid())  # which worker answered, for a reader of --workers N
    one_request = TypeAdapter(PredictionRequest)
    many_requests = TypeAdapter(
        Annotated[list[PredictionRequest], Field(min_length=1, max_length=options.max_batch)])

    app = FastAPI(title=f"Keel: {runtime.usecase.name}", version="1",
                  lifespan=runtime.lifespan, openapi_url="/openapi.json", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        return json_response({"error": "invalid request", "detail": _readable(exc.errors())}, 422)

    def log_state() -> dict:
        log = runtime.predictions
        return {"queue_depth": log.depth, "queue_capacity": log.capacity, "written": log.written,
                "dropped": log.dropped}

    def shadow_state() -> dict:
        shadow = runtime.shadow
        return {"queue_depth": shadow.depth, "queue_capacity": shadow.capacity, "scored": shadow.scored,
                "errors": shadow.errors, "dropped": shadow.dropped, "log_dropped": runtime.shadow_log.dropped,
                "sample": shadow.sample}

    @app.get("/healthz")
    async def healthz():
        return json_response({"status": "alive"})

    @app.get("/readyz")
    async def readyz():
        bundle = runtime.bundle
        if bundle is None:
            return json_response({"ready": False, "reason": runtime.load_error or "loading"}, 503)
        if len(bundle.degraded) == len(bundle.tiers):
            return json_response({"ready": False, "reason": "no tier loaded", "degraded": bundle.degraded}, 503)
        return json_response({"ready": True, "degraded": bundle.degraded,
                              "snapshot": bundle.snapshot.version, "prediction_log": log_state()})

    @app.get("/v1/models")
    async def models():
        bundle = runtime.bundle
        if bundle is None:
            return json_response({"error": runtime.load_error or "loading"}, 503)
        return json_response({**bundle.describe(), "prediction_log": log_state(), "shadow": shadow_state()})

    @app.get("/metrics")
    async def metrics():
        return Response(runtime.metrics_text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/noop")
    async def noop():
        return json_response({"ok": True})

    def parse(body: bytes) -> list:
        """One request (a JSON object) or many (a JSON array), parsed and validated in one pass
        by pydantic-core, whatever the content type says."""
        if body.lstrip()[:1] == b"[":
            return many_requests.validate_json(body)
        return [one_request.validate_json(body)]

    @app.post("/v1/noop", openapi_extra=_request_body_schema(options.max_batch))
    async def noop_post(request: Request):
        try:
            parse(await request.body())
        except ValidationError as exc:
            return json_response({"error": "invalid request", "detail": _readable(exc.errors())}, 422)
        return json_response({"ok": True})

    @app.post("/v1/predict", openapi_extra=_request_body_schema(options.max_batch))
    async def predict(request: Request):
        started = time.perf_counter()
        try:
            items = parse(await request.body())
        except ValidationError as exc:
            return json_response({"error": "invalid request", "detail": _readable(exc.errors())}, 422)
        bundle = runtime.bundle  # read once: the whole request is served by this bundle
        if bundle is None:
            return json_response({"error": runtime.load_error or "models are loading"}, 503)
        requests = [item.__dict__ for item in items]
        try:
            records = serving.features(bundle.store, requests)
        except (KeyError, ValueError) as exc:
            message = exc.args[0] if exc.args else str(exc)
            return json_response({"error": "cannot build features", "detail": str(message)}, 422)
        keys = [record[key_column] for record in records]
        arms = runtime.arms(bundle, keys)
        chain = runtime.score_arms(bundle, records, arms)
        unscored = chain.unscored()
        headers = {"keel-model-set": bundle.set_label, "keel-worker": worker}
        if bundle.rollout is not None:
            rollout = bundle.rollout
            headers["keel-rollout"] = f"{rollout.id};stage={rollout.stage};share={rollout.share:g}"
            headers["keel-arm"] = arms[0] if len(set(arms)) == 1 else ",".join(arms)
        if unscored:
            runtime.record_unanswered(bundle, requests, keys, arms, chain.failures,
                                      (time.perf_counter() - started) * 1e6)
            return json_response({
                "error": "no tier could score the request",
                "detail": [{"key": keys[i], "reasons": chain.failures[i]} for i in unscored[:20]],
            }, 503, headers)
        as_of = runtime.features_as_of(bundle)
        predictions = []
        for i, key in enumerate(keys):
            tier = chain.tier[i]
            predictions.append({
                "key": key, "score": float(chain.scores[i]), "tier": tier.name,
                "model_name": tier.model_name, "model_version": tier.version,
                "features_as_of": as_of, "request_id": uuid.uuid4().hex,
            })
        runtime.record_answers(bundle, records, requests, predictions, arms, chain,
                               (time.perf_counter() - started) * 1e6)
        return json_response({"predictions": predictions}, headers=headers)

    @app.post("/v1/events")
    async def events(request: Request):
        try:
            payload = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return json_response({"error": "invalid event batch", "detail": [
                {"field": "(body)", "problem": f"not JSON: {exc}", "rule": "json_invalid"}]}, 422)
        status, answer = runtime.accept_events(payload)
        return json_response(answer, status)

    @app.post("/v1/feedback", openapi_extra=_feedback_body_schema(options.max_batch))
    async def feedback(request: Request):
        intake = runtime.feedback
        if intake is None:
            return json_response({"error": f"the use case {runtime.usecase.name} takes no label feedback"}, 404)
        try:
            payload = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return json_response({"error": "invalid feedback; nothing was recorded", "detail": [
                {"record": "(body)", "problem": f"not JSON: {exc}", "rule": "json_invalid"}]}, 422)
        # A thread: the key check may wait for the warehouse, and the append waits for fsync.
        status, answer, headers = await asyncio.to_thread(intake.accept, payload)
        return json_response(answer, status, {**headers, "keel-worker": worker})

    def openapi():
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {})["PredictionRequest"] = (
                PredictionRequest.model_json_schema())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    endpoints = {route.path for route in app.routes}
    return Measured(BodyLimit(app, options.max_body_bytes), runtime.metrics, endpoints)


def _request_body_schema(max_batch: int) -> dict:
    request = {"$ref": "#/components/schemas/PredictionRequest"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "oneOf": [request, {"type": "array", "items": request, "minItems": 1, "maxItems": max_batch}],
    }}}}}


def _feedback_body_schema(max_batch: int) -> dict:
    record = {"type": "object", "additionalProperties": False, "required": ["key", "label", "reason"],
              "properties": {
                  "key": {"type": "string", "minLength": 1},
                  "label": {"type": "integer", "enum": list(LABELS)},
                  "reason": {"type": "string", "minLength": 1, "maxLength": MAX_REASON},
                  "actor": {"type": "string", "maxLength": MAX_ACTOR},
                  "feedback_id": {"type": "string", "maxLength": MAX_ID, "pattern": "^[A-Za-z0-9._:-]+$"},
              }}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "oneOf": [record, {"type": "array", "items": record, "minItems": 1, "maxItems": max_batch}],
    }}}}}


def asgi_app():
    """The application one uvicorn worker serves (``uvicorn --factory``), configured by the
    options ``keel.serving.runtime.serve`` put in the environment."""
    text = env.get(OPTIONS_ENV)
    if text is None:
        raise RuntimeError(f"{OPTIONS_ENV} is not set: start the API with keel serve")
    return create_app(ServingRuntime(options=ServeOptions.from_json(text), usecase=current().usecase))
