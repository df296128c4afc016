"""The admin API (mounted at /admin): adapter load, unload, promote, rollback, list; bearer-token protected.

The token comes from the environment variable named by `EndpointConfig.admin_token_env` (LEMA_ADMIN_TOKEN by
default), read on every call. Without the variable set the admin API refuses everything (401): there is no
token that could be right. Tokens are compared in constant time.

    GET    /admin/adapters              loaded adapters with metadata (base model, rank, created, eval metrics)
    GET    /admin/status                engine, readiness, promoted model, promotion history, cold start
    GET    /admin/serving               open: the adapter served against the fleet's promotion record (503 behind)
    GET    /admin/registry              adapter folders present in the registry (loaded or not)
    POST   /admin/adapters              load: {"path": "<folder in the registry>", "name"?, "metadata"?, "promote"?}
    DELETE /admin/adapters/{name}       unload (waits for the adapter's in-flight requests)
    POST   /admin/unload                unload: {"name": ...}
    POST   /admin/promote               {"name": <adapter> | <base model> | null}
    POST   /admin/rollback              back to the previous default
    POST   /admin/adapters/load, /admin/adapters/unload, /admin/adapters/promote, /admin/adapters/rollback:
           the same four under /adapters (what lema's trainer calls)

Errors: 400 bad request or path outside the registry, 401 token, 404 unknown adapter or folder, 409 conflicting
state (name used before, adapter promoted, too many adapters), 422 adapter failed validation, 503 starting.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from lema.core.errors import LemaError
from lema.services.endpoint.errors import documented
from lema.services.endpoint.errors import error_response as _error

MAX_METADATA_CHARS = 64 * 1024


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, max_length=1024, description="adapter folder, relative to the registry")
    name: str | None = Field(default=None, description="a new, never-used name (default: <folder>-<sha8>)")
    metadata: dict[str, Any] = Field(default_factory=dict, description="eval metrics and notes to keep with it "
                                                                      "(at most 64 KB as JSON)")
    promote: bool = False

    @field_validator("metadata")
    @classmethod
    def _bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        import json

        try:
            size = len(json.dumps(value))
        except (TypeError, ValueError, RecursionError):
            raise ValueError("must be a JSON object of plain values") from None
        if size > MAX_METADATA_CHARS:  # kept in memory for as long as the adapter serves, and listed on every call
            raise ValueError(f"at most {MAX_METADATA_CHARS // 1024} KB as JSON (got {size // 1024} KB)")
        return value


class NameRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = None


class AdminError(Exception):
    def __init__(self, status: int, message: str, kind: str):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def build_admin_app(get_core: Callable[[], Any], token_env: str = "LEMA_ADMIN_TOKEN") -> FastAPI:
    app = FastAPI(title="lema endpoint admin", docs_url=None, redoc_url=None, openapi_url=None,
                  responses=documented(400, 401, 404, 409, 422, 503))

    def authorize(request: Request) -> None:
        expected = os.environ.get(token_env, "")
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not expected:
            raise AdminError(401, f"the admin API is disabled: set {token_env} on the server", "authentication_error")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
            raise AdminError(401, "missing or wrong admin bearer token", "authentication_error")

    def core():
        from lema.services.endpoint.core import NotReady

        try:
            instance = get_core()
            instance.require_ready()
        except (RuntimeError, NotReady) as exc:
            raise AdminError(503, str(exc), "unavailable") from None
        return instance

    @app.exception_handler(AdminError)
    async def admin_error(_: Request, exc: AdminError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, exc.message, exc.kind, headers)

    @app.exception_handler(LemaError)  # adapter rejected, state conflict, unknown adapter, not ready: one mapping
    async def lema_error(_: Request, exc: LemaError):
        return _error(exc.http_status, exc.public_message(), exc.kind)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        message = first["msg"].removeprefix("Value error, ")
        return _error(400, f"{where}: {message}" if where else message, "invalid_request_error")

    @app.exception_handler(StarletteHTTPException)  # unknown routes, wrong methods: the documented body, not {"detail"}
    async def http_error(_: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail)[:200],
                      "not_found_error" if exc.status_code == 404 else "invalid_request_error")

    auth = [Depends(authorize)]

    @app.get("/adapters", dependencies=auth)
    async def list_adapters() -> dict:
        c = core()
        return {
            "base_model": c.state.base_name,
            "engine": c.engine_kind,
            "promoted": c.state.served_name(c.state.default),
            "adapters": [c.describe(a) for a in c.state.live()],
        }

    @app.get("/status", dependencies=auth)
    async def status() -> dict:
        from lema.services.endpoint.core import current_core

        try:
            return current_core().status()
        except RuntimeError as exc:
            raise AdminError(503, str(exc), "unavailable") from None

    @app.get("/serving")
    async def serving():
        """Open (read-only, no secrets): which adapter this replica serves against the fleet's promotion record;
        503 while it is not ready or behind the record, so it doubles as a readiness probe that says why."""
        from fastapi.responses import JSONResponse

        from lema.services.endpoint.core import current_core

        try:
            report = current_core().fleet_report()
        except RuntimeError as exc:
            raise AdminError(503, str(exc), "unavailable") from None
        return JSONResponse(report, status_code=200 if report["ready"] else 503)

    @app.get("/registry", dependencies=auth)
    async def registry() -> dict:
        c = core()
        loaded = {a.manifest.relative_path: a.name for a in c.state.live()}
        return {
            "root": str(c.registry.root),
            "folders": [{"path": p, "loaded_as": loaded.get(p)} for p in c.registry.candidates()],
        }

    @app.post("/adapters", dependencies=auth, status_code=201)
    @app.post("/adapters/load", dependencies=auth, status_code=201)
    async def load(body: LoadRequest) -> dict:
        return await core().load(body.path, body.name, body.metadata, body.promote)

    @app.delete("/adapters/{name}", dependencies=auth)
    async def delete(name: str) -> dict:
        return await core().unload(name)

    @app.post("/unload", dependencies=auth)
    @app.post("/adapters/unload", dependencies=auth)
    async def unload(body: NameRequest) -> dict:
        if not body.name:
            raise AdminError(400, "name: required", "invalid_request_error")
        return await core().unload(body.name)

    @app.post("/promote", dependencies=auth)
    @app.post("/adapters/promote", dependencies=auth)
    async def promote(body: NameRequest) -> dict:
        return core().promote(body.name)

    @app.post("/rollback", dependencies=auth)
    @app.post("/adapters/rollback", dependencies=auth)
    async def rollback() -> dict:
        return core().rollback()

    return app
