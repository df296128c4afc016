"""lema's one error hierarchy: each class carries the gRPC status and the HTTP status its transport answers with.

Code raises these; one interceptor per transport maps them (gRPC: lema.core.grpc_server.ErrorInterceptor; HTTP:
the endpoint's error handlers, services/endpoint/errors.py). Messages name the field or the thing at fault and are
truncated by the transport (they may quote input).

    LemaError            INTERNAL             500
    ├── InvalidInput     INVALID_ARGUMENT     400   a request (or file, or config) that can never succeed as it is
    ├── NotFound         NOT_FOUND            404
    ├── Conflict         FAILED_PRECONDITION  409   the state forbids it now (a name used before, a run running)
    │   └── AlreadyExists ALREADY_EXISTS     409   a create that names something that exists
    ├── Rejected         FAILED_PRECONDITION  422   well-formed but refused on inspection (an adapter)
    └── Unavailable      UNAVAILABLE          503   a dependency is down or busy: retry later
"""

from __future__ import annotations

import grpc

MAX_MESSAGE_CHARS = 1_000  # an error that quoted a 10 MB input would itself exceed a message's size limit


class LemaError(Exception):
    grpc_status: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500
    kind: str = "internal_error"  # the OpenAI-style error type of an HTTP error body

    def public_message(self) -> str:
        message = str(self) or type(self).__name__
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[:MAX_MESSAGE_CHARS] + f"... ({len(message)} characters)"
        return message


class InvalidInput(LemaError, ValueError):
    grpc_status = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400
    kind = "invalid_request_error"


class NotFound(LemaError, LookupError):
    grpc_status = grpc.StatusCode.NOT_FOUND
    http_status = 404
    kind = "not_found_error"


class Conflict(LemaError):
    grpc_status = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 409
    kind = "conflict"


class AlreadyExists(Conflict):
    grpc_status = grpc.StatusCode.ALREADY_EXISTS


class Rejected(LemaError, ValueError):
    grpc_status = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 422
    kind = "rejected"


class Unavailable(LemaError, ConnectionError):
    grpc_status = grpc.StatusCode.UNAVAILABLE
    http_status = 503
    kind = "unavailable"
