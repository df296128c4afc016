"""lema.core.errors: one hierarchy; each error carries the status its transport answers with, and the classes
that joined it keep the built-in base their callers catch."""

from __future__ import annotations

import grpc
import pytest

from lema.core.adapter_registry import AdapterRejected
from lema.core.engines.base import ContextLengthError, EngineError
from lema.core.errors import Conflict, InvalidInput, LemaError, NotFound, Unavailable
from lema.core.resilience import CircuitOpenError
from lema.services.collector.sources import SourceError
from lema.services.endpoint.swap import StateConflict, UnknownModel
from lema.services.verifier import VerifierUnavailable
from lema.trainer.promote import PromotionError
from lema.trainer.recipe import RecipeError


@pytest.mark.parametrize("error, grpc_status, http_status, builtin", [
    (ContextLengthError("too long"), grpc.StatusCode.INVALID_ARGUMENT, 400, RuntimeError),
    (RecipeError("lr: bad"), grpc.StatusCode.INVALID_ARGUMENT, 400, ValueError),
    (SourceError("no file"), grpc.StatusCode.INVALID_ARGUMENT, 400, ValueError),
    (UnknownModel("x"), grpc.StatusCode.NOT_FOUND, 404, KeyError),
    (StateConflict("used"), grpc.StatusCode.FAILED_PRECONDITION, 409, RuntimeError),
    (AdapterRejected("NaN"), grpc.StatusCode.INVALID_ARGUMENT, 422, ValueError),
    (AdapterRejected("..", 400), grpc.StatusCode.INVALID_ARGUMENT, 400, ValueError),
    (AdapterRejected("gone", 404), grpc.StatusCode.NOT_FOUND, 404, ValueError),
    (CircuitOpenError("open"), grpc.StatusCode.UNAVAILABLE, 503, RuntimeError),
    (VerifierUnavailable("down"), grpc.StatusCode.UNAVAILABLE, 503, ConnectionError),
    (PromotionError("down", transient=True), grpc.StatusCode.UNAVAILABLE, 503, RuntimeError),
    (PromotionError("refused"), grpc.StatusCode.FAILED_PRECONDITION, 409, RuntimeError),
    (EngineError("bug"), grpc.StatusCode.INTERNAL, 500, RuntimeError),
])
def test_each_error_carries_its_statuses_and_keeps_its_builtin_base(error, grpc_status, http_status, builtin):
    assert isinstance(error, LemaError) and isinstance(error, builtin)
    assert (error.grpc_status, error.http_status) == (grpc_status, http_status)


def test_the_families():
    assert issubclass(ContextLengthError, InvalidInput) and issubclass(UnknownModel, NotFound)
    assert issubclass(StateConflict, Conflict) and issubclass(VerifierUnavailable, Unavailable)


def test_messages_are_truncated_and_never_empty():
    assert len(InvalidInput("x" * 10_000_000).public_message()) < 1_100
    assert InvalidInput().public_message() == "InvalidInput"
    assert "is not a loaded adapter" in UnknownModel("nope").public_message()
