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
    503: "The endpoint is starting, or its engine failed",
}


def error_response(status: int, message: str, kind: str = "invalid_request_error",
                   headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "code": status}},
                        headers=headers)


def documented(*statuses: int) -> dict[int | str, dict]:
    """`responses=` for a FastAPI app or route: these statuses, each with the error body."""
    return {status: {"model": ErrorBody, "description": DESCRIPTIONS[status]} for status in statuses}
