"""A typed Python client for lema's correction API (`/v1/corrections`, `/v1/verifications`), sync and async.

    from lema.client import CorrectionsClient

    with CorrectionsClient("http://127.0.0.1:3000", api_key="lema_...") as client:
        fixed = client.correct(question, wrong_solution, kind="gsm8k", gold_answer="7")
        print(fixed.status, fixed.incorrect_step, fixed.explanation)

Results are the API's own types (lema.core.correction_api). 429 and 503 are retried after the server's Retry-After
(at most `max_retries` times, and never when the wait is longer than `max_wait_s`: a daily quota is not waited out);
any other error raises `CorrectionApiError` with the server's status and message. Each call has a deadline
(`timeout_s`). Why not `bentoml.SyncHTTPClient`: it lists the service's `@bentoml.api` methods (here only `/solve`),
not the routes mounted under /v1, and does not retry after Retry-After.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx

from lema.core.correction_api import CorrectionItem, CorrectionOut, VerificationItem, VerificationOut

RETRIED = (429, 503)


class CorrectionApiError(Exception):
    def __init__(self, status: int, message: str, retry_after: float | None = None):
        super().__init__(f"{status}: {message}")
        self.status, self.message, self.retry_after = status, message, retry_after


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _error(response: httpx.Response) -> CorrectionApiError:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:500]
    return CorrectionApiError(response.status_code, message, _retry_after(response))


def _item(value: CorrectionItem | VerificationItem | dict, model) -> dict:
    item = value if isinstance(value, model) else model.model_validate(value)
    return item.model_dump(exclude_none=True)


def _correction(question: str, solution: str, kind: str, gold_answer: str | None, **extra: Any) -> dict:
    return _item({"question": question, "solution": solution, "kind": kind, "gold_answer": gold_answer,
                  **{k: v for k, v in extra.items() if v is not None}}, CorrectionItem)


class _Base:
    def __init__(self, url: str, api_key: str | None = None, *, timeout_s: float = 600.0, max_retries: int = 5,
                 max_wait_s: float = 120.0):
        self.base = url.rstrip("/") + "/v1"
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout_s, self.max_retries, self.max_wait_s = timeout_s, max_retries, max_wait_s

    def _wait(self, error: CorrectionApiError, attempt: int) -> float | None:
        """Seconds to wait before trying again, or None to give up."""
        if error.status not in RETRIED or attempt >= self.max_retries:
            return None
        wait = error.retry_after if error.retry_after is not None else min(2.0 ** attempt, 30.0)
        return wait if wait <= self.max_wait_s else None


class CorrectionsClient(_Base):
    def __init__(self, url: str, api_key: str | None = None, *, transport: httpx.BaseTransport | None = None,
                 **options: Any):
        super().__init__(url, api_key, **options)
        self.http = httpx.Client(headers=self.headers, timeout=self.timeout_s, transport=transport)

    def __enter__(self) -> CorrectionsClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _post(self, path: str, body: dict) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            response = self.http.post(self.base + path, json=body)
            if response.status_code == 200:
                return response
            error = _error(response)
            wait = self._wait(error, attempt)
            if wait is None:
                raise error
            time.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def correct(self, question: str, solution: str, kind: str = "gsm8k", gold_answer: str | None = None, *,
                max_candidates: int | None = None, temperature: float | None = None, id: str | None = None,
                program_json: str | None = None) -> CorrectionOut:
        body = _correction(question, solution, kind, gold_answer, max_candidates=max_candidates, id=id,
                           program_json=program_json,
                           sampling={"temperature": temperature} if temperature is not None else None)
        return CorrectionOut.model_validate(self._post("/corrections", body).json())

    def correct_batch(self, items: Sequence[CorrectionItem | dict]) -> list[CorrectionOut]:
        body = {"items": [_item(i, CorrectionItem) for i in items]}
        return [CorrectionOut.model_validate(r) for r in self._post("/corrections", body).json()["results"]]

    def stream_corrections(self, items: Sequence[CorrectionItem | dict]) -> Iterator[CorrectionOut]:
        """Results as each finishes (`index` says which item); not retried once results have started."""
        body = {"items": [_item(i, CorrectionItem) for i in items], "stream": True}
        for attempt in range(self.max_retries + 1):
            with self.http.stream("POST", self.base + "/corrections", json=body) as response:
                if response.status_code == 200:
                    for line in response.iter_lines():
                        if line.strip():
                            yield CorrectionOut.model_validate(json.loads(line))
                    return
                response.read()
                error = _error(response)
            wait = self._wait(error, attempt)
            if wait is None:
                raise error
            time.sleep(wait)

    def verify(self, kind: str, gold_answer: str, solution: str, id: str | None = None) -> VerificationOut:
        body = _item({"kind": kind, "gold_answer": gold_answer, "solution": solution, "id": id}, VerificationItem)
        return VerificationOut.model_validate(self._post("/verifications", body).json())

    def verify_batch(self, items: Sequence[VerificationItem | dict]) -> list[VerificationOut]:
        body = {"items": [_item(i, VerificationItem) for i in items]}
        return [VerificationOut.model_validate(r) for r in self._post("/verifications", body).json()["results"]]


class AsyncCorrectionsClient(_Base):
    def __init__(self, url: str, api_key: str | None = None, *, transport: httpx.AsyncBaseTransport | None = None,
                 **options: Any):
        super().__init__(url, api_key, **options)
        self.http = httpx.AsyncClient(headers=self.headers, timeout=self.timeout_s, transport=transport)

    async def __aenter__(self) -> AsyncCorrectionsClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _post(self, path: str, body: dict) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            response = await self.http.post(self.base + path, json=body)
            if response.status_code == 200:
                return response
            error = _error(response)
            wait = self._wait(error, attempt)
            if wait is None:
                raise error
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    async def correct(self, question: str, solution: str, kind: str = "gsm8k", gold_answer: str | None = None, *,
                      max_candidates: int | None = None, temperature: float | None = None, id: str | None = None,
                      program_json: str | None = None) -> CorrectionOut:
        body = _correction(question, solution, kind, gold_answer, max_candidates=max_candidates, id=id,
                           program_json=program_json,
                           sampling={"temperature": temperature} if temperature is not None else None)
        return CorrectionOut.model_validate((await self._post("/corrections", body)).json())

    async def correct_batch(self, items: Sequence[CorrectionItem | dict]) -> list[CorrectionOut]:
        body = {"items": [_item(i, CorrectionItem) for i in items]}
        return [CorrectionOut.model_validate(r) for r in (await self._post("/corrections", body)).json()["results"]]

    async def stream_corrections(self, items: Sequence[CorrectionItem | dict]) -> AsyncIterator[CorrectionOut]:
        body = {"items": [_item(i, CorrectionItem) for i in items], "stream": True}
        for attempt in range(self.max_retries + 1):
            async with self.http.stream("POST", self.base + "/corrections", json=body) as response:
                if response.status_code == 200:
                    async for line in response.aiter_lines():
                        if line.strip():
                            yield CorrectionOut.model_validate(json.loads(line))
                    return
                await response.aread()
                error = _error(response)
            wait = self._wait(error, attempt)
            if wait is None:
                raise error
            await asyncio.sleep(wait)

    async def verify(self, kind: str, gold_answer: str, solution: str, id: str | None = None) -> VerificationOut:
        body = _item({"kind": kind, "gold_answer": gold_answer, "solution": solution, "id": id}, VerificationItem)
        return VerificationOut.model_validate((await self._post("/verifications", body)).json())

    async def verify_batch(self, items: Sequence[VerificationItem | dict]) -> list[VerificationOut]:
        body = {"items": [_item(i, VerificationItem) for i in items]}
        return [VerificationOut.model_validate(r) for r in (await self._post("/verifications", body)).json()["results"]]
