"""Correction-as-a-service over HTTP: `POST /v1/corrections` and `POST /v1/verifications` on the endpoint.

Both go through the interfaces the collector uses (lema.services.corrector.open_corrector, lema.services.verifier
.open_verifier: in this process or the gRPC services, by `endpoint.corrector` and `client.verifier`), so there is no
second implementation of correcting or verifying here: this module converts, checks bounds, admits and delegates.

- One item, or `{"items": [...]}` up to `endpoint.max_correction_items`; with `"stream": true` the results come as
  newline-delimited JSON, each with its `index`, as each finishes (as the gRPC CorrectBatch stream does).
- API keys (lema.core.api_keys) as bearer tokens: 401 without a key or with a wrong or revoked one; 429 with
  Retry-After past a key's requests per minute or corrections per day. Never open without a key, except to loopback
  clients of a loopback endpoint with `endpoint.corrections_open_on_loopback` (development).
- Bad input is a 400 naming the field; the upstream down is a 503 with Retry-After. A repeated request with the same
  content is answered from the corrector's cache (`cached: true`) and not billed against the day's corrections.

Limits are counted in this process (the endpoint runs one worker): N replicas behind a load balancer allow up to N
times a key's limits.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from lema.core.answers import DatasetKind, gold_answer, normalize_numeric
from lema.core.api_keys import KeyRing
from lema.core.config import CorrectorConfig, EndpointConfig, VerifierConfig
from lema.core.correction_api import (
    CorrectionBatch,
    CorrectionItem,
    CorrectionOut,
    CorrectionsOut,
    CorrectorInfo,
    Usage,
    VerdictInfo,
    VerificationBatch,
    VerificationItem,
    VerificationOut,
    VerificationsOut,
)
from lema.core.errors import InvalidInput
from lema.core.security import is_loopback
from lema.services.endpoint.errors import error_response as _error

# --- errors ----------------------------------------------------------------------------------------------------

class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 retry_after: float | None = None):
        super().__init__(message)
        self.status, self.kind, self.retry_after = status, kind, retry_after

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(max(1, math.ceil(self.retry_after)))} if self.retry_after is not None else None
        return _error(self.status, str(self)[:1000], self.kind, headers=headers)


def _validation_message(exc: ValidationError, prefix: str = "") -> str:
    first = exc.errors()[0]
    where = prefix + ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"{where}: is not a field of this request"
    return f"{where}: {first['msg'].removeprefix('Value error, ')}"


# --- keys and limits ---------------------------------------------------------------------------------------------

@dataclass
class _Bucket:
    """A token bucket of `capacity` requests refilled at capacity per minute."""

    capacity: float
    tokens: float
    at: float

    def take(self, now: float) -> float | None:
        """None when a request may pass; else the seconds until one may."""
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.capacity / 60.0)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return None
        return (1.0 - self.tokens) * 60.0 / self.capacity


@dataclass
class _Day:
    date: str = ""
    used: int = 0


@dataclass
class Gatekeeper:
    """Who may call and how much: the key ring, each key's bucket and day."""

    config: EndpointConfig
    ring: KeyRing
    metrics: Callable[[], Any] = lambda: None
    buckets: dict[str, _Bucket] = field(default_factory=dict)
    days: dict[str, _Day] = field(default_factory=dict)

    def _count(self, name: str, *labels: str) -> None:
        metrics = self.metrics()
        if metrics is not None:
            getattr(metrics, name).labels(*labels).inc()

    def admit(self, request: Request, route: str) -> tuple[str, Any]:
        """(key name, key) of an admitted request, or ApiError 401/429."""
        header = request.headers.get("authorization", "")
        scheme, _, offered = header.partition(" ")
        if not header:
            client = request.client.host if request.client else ""
            if self.config.corrections_open_on_loopback and is_loopback(self.config.host) and is_loopback(client):
                return "loopback-dev", None
            self._count("api_requests", "-", route, "401")
            raise ApiError(401, "an API key is required: Authorization: Bearer <key> (lema keys create)",
                           "authentication_error")
        try:
            key = self.ring.find(offered.strip()) if scheme.lower() == "bearer" else None
        except InvalidInput as exc:  # a keys file broken by hand: no key can be checked (it names the file)
            raise ApiError(503, f"API keys cannot be read: {str(exc)[:300]}", "unavailable", retry_after=30) from None
        if key is None:
            self._count("api_requests", "-", route, "401")
            raise ApiError(401, "the API key is not valid (unknown or revoked)", "authentication_error")
        now = time.monotonic()
        bucket = self.buckets.get(key.name)
        if bucket is None or bucket.capacity != key.requests_per_minute:
            bucket = self.buckets[key.name] = _Bucket(key.requests_per_minute, key.requests_per_minute, now)
        wait = bucket.take(now)
        if wait is not None:
            self._count("api_rate_limited", key.name, "requests_per_minute")
            self._count("api_requests", key.name, route, "429")
            raise ApiError(429, f"rate limit: {key.requests_per_minute} requests per minute for this key",
                           "rate_limit_error", retry_after=wait)
        return key.name, key

    def _today(self, name: str) -> _Day:
        date = datetime.now(timezone.utc).date().isoformat()
        day = self.days.setdefault(name, _Day(date))
        if day.date != date:
            day.date, day.used = date, 0
        return day

    def reserve(self, name: str, key: Any, items: int) -> None:
        """429 when `items` more corrections would pass the key's daily limit."""
        if key is None:
            return
        day = self._today(name)
        if day.used + items > key.corrections_per_day:
            midnight = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
            self._count("api_rate_limited", name, "corrections_per_day")
            raise ApiError(429, f"quota: {key.corrections_per_day} corrections per day for this key "
                                f"({day.used} used today, {items} asked)", "rate_limit_error",
                           retry_after=(midnight - datetime.now(timezone.utc)).total_seconds())

    def bill(self, name: str, key: Any, corrections: int) -> None:
        if key is not None and corrections:
            self._today(name).used += corrections
        metrics = self.metrics()
        if metrics is not None and corrections:
            metrics.api_corrections.labels(name).inc(corrections)


# --- the work ----------------------------------------------------------------------------------------------------

class Backends:
    """The verifier and the corrector, opened on first use in the server's event loop, closed with the endpoint."""

    def __init__(self, config: EndpointConfig, corrector_config: CorrectorConfig):
        self.config, self.corrector_config = config, corrector_config
        self.verifier = self.corrector = None
        self._lock = asyncio.Lock()

    async def open(self):
        if self.corrector is not None:
            return self
        async with self._lock:
            if self.corrector is None:
                from lema.services.corrector import open_corrector
                from lema.services.verifier import open_verifier

                verifier = open_verifier()
                await verifier.start()
                upstream = self.corrector_config
                url = upstream.base_url if upstream.upstream == "openai" else None
                self.verifier = verifier
                self.corrector = open_corrector(self.config.corrector, verifier=verifier, url=url,
                                                model=upstream.model, timeout_s=self.config.correction_timeout_s)
        return self

    async def close(self) -> None:
        if self.corrector is not None:
            await self.corrector.close()
        if self.verifier is not None:
            await self.verifier.close()
        self.corrector = self.verifier = None


def _check_gold(kind: str, gold: str | None, where: str) -> None:
    """A gold answer must be readable for its kind: a number for gsm8k and synthetic, balanced braces for math."""
    if gold is None:
        return
    if not gold.strip():
        raise ApiError(400, f"{where}gold_answer: must not be blank (leave it out for an unverified correction)")
    value = gold_answer(gold, DatasetKind(kind))
    if kind in ("gsm8k", "synthetic") and normalize_numeric(value) is None:
        raise ApiError(400, f"{where}gold_answer: {value[:60]!r} is not a number, as a {kind} answer must be")
    if kind == "math":
        depth = 0
        for char in value:
            depth += {"{": 1, "}": -1}.get(char, 0)
            if depth < 0:
                break
        if depth != 0:
            raise ApiError(400, f"{where}gold_answer: unbalanced braces in {value[:60]!r}")


def _check_item(item: CorrectionItem, corrector: CorrectorConfig, where: str = "") -> None:
    from lema.core.formats import split_steps

    if len(item.question) > corrector.max_question_chars:
        raise ApiError(400, f"{where}question: {len(item.question)} characters; the limit is "
                            f"{corrector.max_question_chars}")
    if len(item.solution) > corrector.max_solution_chars:
        raise ApiError(400, f"{where}solution: {len(item.solution)} characters; the limit is "
                            f"{corrector.max_solution_chars}")
    if not split_steps(item.solution):
        raise ApiError(400, f"{where}solution: has no steps")
    _check_gold(item.kind, item.gold_answer, where)


def _result(index: int, item: CorrectionItem, outcome) -> CorrectionOut:
    f = outcome.fields
    verdict = f.get("verdict") or None
    return CorrectionOut(
        index=index, id=item.id, status=outcome.status, incorrect_step=f.get("incorrect_step", 0),
        explanation=f.get("explanation", ""), corrected_solution=f.get("corrected_solution", ""),
        corrected_answer=f.get("final_answer", ""), verified=bool(f.get("verified", False)),
        verdict=VerdictInfo(correct=verdict.get("correct"), reason=str(verdict.get("reason", "")),
                            extracted_answer=str(verdict.get("extracted_answer") or "")) if verdict else None,
        failure_reason=f.get("failure_reason", ""),
        corrector=CorrectorInfo(upstream_model=f.get("upstream_model", ""), prompt_id=f.get("prompt_id", ""),
                                prompt_version=f.get("prompt_version", "")),
        usage=Usage(prompt_tokens=f.get("prompt_tokens", 0), completion_tokens=f.get("completion_tokens", 0),
                    cost_usd=f.get("cost_usd", 0.0)),
        cached=outcome.cached)


def _request_schema(*models) -> dict:
    """The request body in the OpenAPI document: one of the models (the handler parses the body itself, so that a
    bad field is a 400 naming it), definitions inlined."""
    def inline(node, definitions):
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rsplit("/", 1)[-1]], definitions)
            return {key: inline(value, definitions) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(value, definitions) for value in node]
        return node

    schemas = []
    for model in models:
        schema = model.model_json_schema()
        schemas.append(inline(schema, schema.pop("$defs", {})))
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {"anyOf": schemas}}}}}


def _responses(model, *statuses: int) -> dict:
    from lema.services.endpoint.errors import ErrorBody

    text = {400: "Invalid request: the message names the field", 401: "No API key, or a wrong or revoked one",
            429: "Past the key's requests per minute or corrections per day (Retry-After)",
            503: "The upstream corrector or the verifier is unavailable, or the endpoint is starting (Retry-After)"}
    out: dict = {200: {"model": model, "description": "The results (or, with stream, newline-delimited JSON)"}}
    out.update({s: {"model": ErrorBody, "description": text[s]} for s in statuses})
    return out


def corrections_router(config: EndpointConfig, corrector_config: CorrectorConfig | None = None,
                       verifier_config: VerifierConfig | None = None, metrics: Callable[[], Any] = lambda: None,
                       ) -> tuple[APIRouter, Backends]:
    from lema.core.config import load_config

    loaded = load_config() if corrector_config is None or verifier_config is None else None
    corrector_config = corrector_config or loaded.corrector
    verifier_config = verifier_config or loaded.verifier
    keys_file = Path(config.api_keys_file).expanduser()
    gate = Gatekeeper(config, KeyRing(keys_file, config.api_keys_env), metrics)
    backends = Backends(config, corrector_config)
    router = APIRouter()

    async def body_of(request: Request) -> dict:
        try:
            data = await request.json()
        except ClientDisconnect:
            raise ApiError(499, "the client closed the connection", "client_closed") from None
        except (ValueError, RecursionError):
            raise ApiError(400, "the request body is not valid JSON (UTF-8)") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object: one item, or {\"items\": [...]}")
        return data

    def parse(data: dict, item_model, batch_model) -> tuple[list, bool, bool]:
        """(items, batch?, stream?) or ApiError naming the field."""
        try:
            if "items" in data:
                if isinstance(data.get("items"), list) and len(data["items"]) > config.max_correction_items:
                    raise ApiError(400, f"items: {len(data['items'])} items; at most {config.max_correction_items}")
                batch = batch_model.model_validate(data)
                return batch.items, True, batch.stream
            return [item_model.model_validate(data)], False, False
        except ValidationError as exc:
            raise ApiError(400, _validation_message(exc)) from None

    async def admitted(request: Request, route: str, handler):
        started = time.perf_counter()
        try:
            name, key = gate.admit(request, route)
        except ApiError as exc:
            return exc.response()
        try:
            response = await handler(name, key)
        except ApiError as exc:
            response = exc.response()
        m = metrics()
        if m is not None:
            m.api_requests.labels(name, route, str(response.status_code)).inc()
            m.latency.labels(route).observe(time.perf_counter() - started)
        return response

    async def correct_one(index: int, item: CorrectionItem, name: str, key) -> CorrectionOut:
        from lema.services.corrector import CorrectionOptions

        await backends.open()
        problem = SimpleNamespace(id=item.id or f"http-{index}", kind=item.kind, question=item.question,
                                  gold_answer=item.gold_answer or "", program_json=item.program_json or "")
        attempt = SimpleNamespace(id=item.id or f"http-{index}", text=item.solution)
        options = CorrectionOptions(item.max_candidates, item.sampling.temperature if item.sampling else None)
        try:
            outcome = await asyncio.wait_for(backends.corrector.correct(problem, attempt, options),
                                             timeout=config.correction_timeout_s)
        except asyncio.TimeoutError:
            outcome = SimpleNamespace(status="deferred", fields={}, cached=False)
        if outcome.status == "deferred":  # transient: circuit open, retries spent, a deadline
            raise ApiError(503, "the upstream corrector is unavailable; retry later", "unavailable",
                           retry_after=max(1.0, corrector_config.breaker_cooldown_s))
        if not outcome.cached and outcome.status != "upstream_error":
            gate.bill(name, key, 1)
        return _result(index, item, outcome)

    async def deferred_as_error(index: int, item: CorrectionItem, name: str, key) -> CorrectionOut:
        try:
            return await correct_one(index, item, name, key)
        except ApiError as exc:  # in a batch, one item's transient failure is that item's result
            return CorrectionOut(index=index, id=item.id, status="upstream_error", incorrect_step=0, explanation="",
                                 corrected_solution="", corrected_answer="", verified=False, verdict=None,
                                 failure_reason=str(exc), corrector=CorrectorInfo(upstream_model="", prompt_id="",
                                                                                   prompt_version=""),
                                 usage=Usage(prompt_tokens=0, completion_tokens=0, cost_usd=0.0), cached=False)

    async def gathered(tasks: list[asyncio.Task]) -> list:
        """The batch's results in item order (gather keeps it); whatever is left is cancelled if this one fails."""
        try:
            return await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    def stream_lines(tasks: list[asyncio.Task]) -> StreamingResponse:
        async def lines() -> AsyncIterator[bytes]:
            try:
                for finished in asyncio.as_completed(tasks):
                    result = await finished
                    yield (result.model_dump_json() + "\n").encode()
            finally:
                for task in tasks:  # the client left: nothing more to compute
                    task.cancel()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @router.post("/corrections", openapi_extra=_request_schema(CorrectionItem, CorrectionBatch),
                 responses=_responses(CorrectionsOut, 400, 401, 429, 503), tags=["corrections"],
                 summary="Correct wrong solutions: the first wrong step, why, and a corrected solution")
    async def corrections(request: Request):
        async def handle(name: str, key) -> Any:
            items, batch, stream = parse(await body_of(request), CorrectionItem, CorrectionBatch)
            for i, item in enumerate(items):
                _check_item(item, corrector_config, f"items[{i}]." if batch else "")
            gate.reserve(name, key, len(items))
            if not batch:
                result = await correct_one(0, items[0], name, key)
                return JSONResponse(result.model_dump())
            tasks = [asyncio.ensure_future(deferred_as_error(i, item, name, key)) for i, item in enumerate(items)]
            if stream:
                return stream_lines(tasks)
            results = await gathered(tasks)
            if all(r.status == "upstream_error" and "unavailable" in r.failure_reason for r in results):
                raise ApiError(503, "the upstream corrector is unavailable; retry later", "unavailable",
                               retry_after=max(1.0, corrector_config.breaker_cooldown_s))
            return JSONResponse(CorrectionsOut(results=results).model_dump())

        return await admitted(request, "corrections", handle)

    async def verify_one(index: int, item: VerificationItem) -> VerificationOut:
        from lema.services.verifier import VerifierUnavailable, VerifyItem

        await backends.open()
        try:
            verdict = await backends.verifier.verify(VerifyItem(DatasetKind(item.kind), item.gold_answer,
                                                                item.solution))
        except VerifierUnavailable as exc:
            raise ApiError(503, f"the verifier is unavailable: {str(exc)[:200]}", "unavailable",
                           retry_after=5) from None
        return VerificationOut(index=index, id=item.id, correct=bool(verdict.correct),
                               reason=getattr(verdict.reason, "value", str(verdict.reason)),
                               extracted_answer=verdict.extracted_answer or "",
                               extraction_method=getattr(verdict.extraction_method, "value",
                                                         str(verdict.extraction_method or "")))

    @router.post("/verifications", openapi_extra=_request_schema(VerificationItem, VerificationBatch),
                 responses=_responses(VerificationsOut, 400, 401, 429, 503), tags=["corrections"],
                 summary="Check solutions' final answers against gold answers")
    async def verifications(request: Request):
        async def handle(name: str, key) -> Any:
            items, batch, stream = parse(await body_of(request), VerificationItem, VerificationBatch)
            limit = verifier_config.max_candidate_chars
            for i, item in enumerate(items):
                where = f"items[{i}]." if batch else ""
                if len(item.solution) > limit:
                    raise ApiError(400, f"{where}solution: {len(item.solution)} characters; the limit is {limit}")
                _check_gold(item.kind, item.gold_answer, where)
            if not batch:
                return JSONResponse((await verify_one(0, items[0])).model_dump())
            tasks = [asyncio.ensure_future(verify_one(i, item)) for i, item in enumerate(items)]
            if stream:
                return stream_lines(tasks)
            return JSONResponse(VerificationsOut(results=await gathered(tasks)).model_dump())

        return await admitted(request, "verifications", handle)

    return router, backends
