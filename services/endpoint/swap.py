"""Which adapter serves which request: promotion, rollback and in-flight pinning, all in one object.

Every method here runs on the server's event loop and none awaits between reading and writing the state, so
each is atomic with respect to requests: a request resolves its adapter and takes a lease on it in one step
(`pin`), and a promotion is one assignment. A request therefore finishes on the adapter it started with, even
if a promotion lands while it is generating; an unload first stops new requests from resolving the adapter
("draining"), then waits until its last lease is returned before the engine deletes it.

`None` stands for the base model (no adapter).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from lema.core.errors import Conflict, NotFound

DEFAULT_ALIASES = frozenset({"default", ""})


class UnknownModel(NotFound, KeyError):
    """A model name that is neither the base model nor a loaded adapter: 404."""

    def public_message(self) -> str:
        return f"{str(self.args[0])[:200]!r} is not a loaded adapter or the base model"


class StateConflict(Conflict, RuntimeError):
    """A state change that is not allowed now (HTTP 409)."""


@dataclass
class ServedAdapter:
    name: str
    manifest: Any  # registry.AdapterManifest
    loaded_at: float
    load_seconds: float
    metadata: dict[str, Any] = field(default_factory=dict)
    draining: bool = False
    in_flight: int = 0
    served: int = 0


@dataclass(frozen=True)
class Promotion:
    name: str | None
    at: float
    action: str  # "promote" | "rollback" | "start"


class ServingState:
    def __init__(self, base_name: str, max_history: int = 64):
        self.base_name = base_name
        self.adapters: dict[str, ServedAdapter] = {}
        self.default: str | None = None
        self.history: list[Promotion] = [Promotion(None, time.time(), "start")]
        self.used_names: set[str] = set()  # every name ever loaded (or reserved by a load attempt)
        self.base_in_flight = 0
        self.max_history = max_history
        self._idle: dict[str, asyncio.Event] = {}

    # -- requests ----------------------------------------------------------------------------------
    def resolve(self, model: str | None) -> str | None:
        """Map a requested model to an adapter name (None = base). Raises UnknownModel."""
        if model is None or model in DEFAULT_ALIASES:
            return self.default
        if model == self.base_name:
            return None
        adapter = self.adapters.get(model)
        if adapter is None or adapter.draining:
            raise UnknownModel(model)
        return model

    @contextmanager
    def pin(self, model: str | None) -> Iterator[str | None]:
        """Resolve and lease in one step; the lease is returned when the request is done."""
        name = self.resolve(model)
        adapter = self.adapters.get(name) if name else None
        if adapter is not None:
            adapter.in_flight += 1
            adapter.served += 1
        else:
            self.base_in_flight += 1
        try:
            yield name
        finally:
            if adapter is not None:
                adapter.in_flight -= 1
                if adapter.in_flight == 0 and name in self._idle:
                    self._idle[name].set()
            else:
                self.base_in_flight -= 1

    def served_name(self, adapter: str | None) -> str:
        return adapter or self.base_name

    # -- adapters ----------------------------------------------------------------------------------
    def reserve(self, name: str) -> None:
        if name in self.used_names:
            raise StateConflict(
                f"adapter name {name!r} was used before; every adapter version needs a new name"
            )
        self.used_names.add(name)

    def add(self, adapter: ServedAdapter) -> None:
        self.adapters[adapter.name] = adapter

    def promote(self, name: str | None, action: str = "promote") -> Promotion:
        if name is not None:
            adapter = self.adapters.get(name)
            if adapter is None or adapter.draining:
                raise UnknownModel(name)
        record = Promotion(name, time.time(), action)
        self.default = name  # the one assignment that switches every later request
        self.history.append(record)
        del self.history[: -self.max_history]
        return record

    def rollback(self) -> Promotion:
        """Back to the default before the current one (skipping adapters unloaded since); base at the bottom."""
        current = self.default
        for earlier in reversed(self.history[:-1]):
            if earlier.name == current:
                continue
            if earlier.name is None or (earlier.name in self.adapters and not self.adapters[earlier.name].draining):
                # drop the rolled-back entries so that a second rollback goes further back
                while len(self.history) > 1 and self.history[-1] is not earlier:
                    self.history.pop()
                self.history.pop()
                return self.promote(earlier.name, action="rollback")
        if current is None:
            raise StateConflict("nothing to roll back to: the base model is serving and no earlier default exists")
        return self.promote(None, action="rollback")

    async def drain(self, name: str, timeout: float) -> ServedAdapter:
        """Stop new requests from using `name`, then wait for its in-flight requests to finish."""
        adapter = self.adapters.get(name)
        if adapter is None or adapter.draining:
            raise UnknownModel(name)
        if self.default == name:
            raise StateConflict(
                f"adapter {name!r} is the promoted default; promote another adapter (or roll back) first"
            )
        adapter.draining = True
        if adapter.in_flight:
            event = self._idle.setdefault(name, asyncio.Event())
            event.clear()
            if adapter.in_flight:
                try:
                    await asyncio.wait_for(event.wait(), timeout)
                except asyncio.TimeoutError:
                    adapter.draining = False
                    raise StateConflict(
                        f"adapter {name!r} still has {adapter.in_flight} requests in flight after {timeout}s"
                    ) from None
                finally:
                    self._idle.pop(name, None)
        return adapter

    def undrain(self, name: str) -> None:
        if name in self.adapters:
            self.adapters[name].draining = False

    def remove(self, name: str) -> None:
        self.adapters.pop(name, None)
        self.history = [p for p in self.history if p.name != name] or [Promotion(None, time.time(), "start")]

    def live(self) -> list[ServedAdapter]:
        return [a for a in self.adapters.values() if not a.draining]
