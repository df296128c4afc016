"""The endpoint's one error body, `{"error": {"message", "type", "code"}}` (OpenAI's shape), for the OpenAI API and
the admin API alike, and its OpenAPI description: every status a route can answer is documented with this body."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from pydantic import BaseModel


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: int


class ErrorBody(BaseModel):
    error: ErrorDetail


DESCRIPTIONS = {
    400: "Invalid request: the message names the field",
    401: "Missing or wrong admin bearer token",
    404: "Unknown model or adapter",
    409: "Conflicts with the serving state (a reused name, too many adapters, the promoted adapter)",
    422: "The adapter was refused (validation failed)",
    499: "The client closed the connection while its request was generating",
    503: "The endpoint is starting, its engine failed, or its queue is full (retry after Retry-After seconds)",
}


def error_response(status: int, message: str, kind: str = "invalid_request_error",
                   headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "code": status}},
                        headers=headers)


def documented(*statuses: int) -> dict[int | str, dict]:
    """`responses=` for a FastAPI app or route: these statuses, each with the error body."""
    return {status: {"model": ErrorBody, "description": DESCRIPTIONS[status]} for status in statuses}


def engine_error_response(exc: Exception) -> JSONResponse:
    """An engine's refusal as a response: a full queue is 503 with Retry-After (lema.core.errors.Unavailable), any
    other refusal of the request 400 (the message names the field or the bound)."""
    from lema.core.errors import Unavailable

    message = str(exc)[:1000]
    if isinstance(exc, Unavailable):
        return error_response(503, message, "unavailable", headers={"Retry-After": "1"})
    return error_response(400, message)
