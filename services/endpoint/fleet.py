"""Fleet-wide promotion, the replica's side: follow the promotion record in the shared adapter store.

Every `promotion_poll_s` the replica reads the record (lema.core.promotion_record). When it names another adapter
than the one this replica applied, the replica checks the adapter folder's content hash against the record's, loads
it through the same path as the admin API (confinement, validation, smoke generation; the adapter id is its served
name) and promotes it. A new or restarted replica does this before it reports ready, so it comes up serving the
promoted adapter.

States (`report()`, `GET /admin/serving`, metrics):
- `in_sync`: serving what the record names (or no record was ever written);
- `behind`: the record names something this replica does not serve yet: readiness fails, so a Kubernetes Service
  routes away from it (the readiness probe's failureThreshold x periodSeconds is the grace a normal swap takes,
  typically well under a probe period);
- `refused`: the record names an adapter that failed its hash check or validation: the replica keeps serving the
  previous adapter and stays ready (a corrupt promotion must not take the fleet down); a new record clears it;
- `unavailable`: the record cannot be read; the replica keeps serving what it serves.

The record decides while it is configured: a promotion through the admin API lasts until the next record change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lema.core.adapter_registry import AdapterRegistry, AdapterRejected
from lema.core.promotion_record import PromotionRecord, PromotionRecordError, content_hash, read_record
from lema.services.endpoint.swap import ServingState, StateConflict

if TYPE_CHECKING:
    from lema.services.endpoint.metrics import EndpointMetrics


class FollowedEndpoint(Protocol):
    """What the follower drives: the endpoint's core (`EndpointCore`, which starts the follower; a protocol here
    keeps the import one way, core -> fleet)."""

    registry: AdapterRegistry
    state: ServingState
    metrics: EndpointMetrics

    async def load(self, path: str, name: str | None = None, metadata: dict | None = None,
                   promote: bool = False) -> dict[str, Any]: ...

    async def unload(self, name: str) -> dict[str, Any]: ...

    def promote(self, name: str | None) -> dict[str, Any]: ...

logger = logging.getLogger("lema.endpoint.fleet")


@dataclass(frozen=True)
class _Refusal:
    key: tuple[str | None, str, int]  # (adapter, content hash, generation) of the refused record
    reason: str
    retry: bool = False  # the folder is missing (maybe not visible on this node yet): try again every poll


class PromotionFollower:
    def __init__(self, core: FollowedEndpoint, path: Path, poll_s: float):
        self.core = core
        self.path = path
        self.poll_s = poll_s
        self.applied: PromotionRecord | None = None  # the record this replica serves
        self.seen: PromotionRecord | None = None  # the last record read
        self.served_as: str | None = None  # the served name of the applied adapter
        self.refusal: _Refusal | None = None
        self.error: str | None = None  # the record could not be read
        self._loaded_here: list[str] = []  # adapters this follower loaded, oldest first (it unloads old ones)
        self._task: asyncio.Task | None = None

    # -- state ---------------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        if self.error is not None:
            return "unavailable"
        if self.seen is None or self._matches(self.seen):
            return "in_sync"
        if self.refusal is not None and self.refusal.key == _key(self.seen):
            return "refused"
        return "behind"

    @property
    def behind(self) -> bool:
        return self.state == "behind"

    def report(self) -> dict[str, Any]:
        seen = self.seen
        return {
            "state": self.state,
            "serving": self.core.state.served_name(self.core.state.default) if self.core.state else None,
            "applied_generation": self.applied.generation if self.applied else None,
            "record": {"adapter": seen.adapter, "content_hash": seen.content_hash, "generation": seen.generation,
                       "promoted_at": seen.promoted_at} if seen else None,
            "reason": self.refusal.reason if self.state == "refused" else self.error,
        }

    def _matches(self, record: PromotionRecord) -> bool:
        applied = self.applied
        return applied is not None and (applied.adapter, applied.content_hash) == (record.adapter, record.content_hash)

    # -- reconciling ---------------------------------------------------------------------------------
    async def sync(self) -> str:
        """One reconcile step: read the record, apply it when it changed. Returns the state (also published as
        metrics, whatever the path)."""
        try:
            await self._step()
        finally:
            self._publish()
        return self.state

    async def _step(self) -> None:
        try:
            record = await asyncio.to_thread(read_record, self.path)
        except PromotionRecordError as exc:
            if self.error != str(exc):
                logger.warning("promotion record %s: %s; serving what is served", self.path, exc)
            self.error = str(exc)
            return
        self.error = None
        self.seen = record
        if record is None or self._matches(record):
            if record is not None:
                self.applied = record  # the same adapter under a newer generation (e.g. re-promoted)
            return
        if self.refusal is not None and self.refusal.key == _key(record) and not self.refusal.retry:
            return
        try:
            await self._apply(record)
        except (AdapterRejected, PromotionRecordError, StateConflict, FileNotFoundError) as exc:
            # A missing folder may not be visible on this node yet (shared storage): retried every poll. Anything
            # else is refused until the record changes. Either way the previous adapter keeps serving.
            missing = isinstance(exc, FileNotFoundError) or getattr(exc, "status", None) == 404
            reason = f"{record.target}: {exc.strerror}" if isinstance(exc, FileNotFoundError) else str(exc)[:1000]
            first = self.refusal is None or self.refusal.key != _key(record)
            self.refusal = _Refusal(_key(record), reason, retry=missing)
            if first:
                self.core.metrics.swaps.labels("follow", "rejected").inc()
                logger.error("refused promotion generation %d (%s): %s; still serving %s", record.generation,
                             record.target, reason, self.core.state.served_name(self.core.state.default))

    async def _apply(self, record: PromotionRecord) -> None:
        started = time.perf_counter()
        name = None
        if record.adapter is not None:
            folder = self.core.registry.resolve(record.adapter)  # confined to the store; 400/404 -> refused
            actual = await asyncio.to_thread(content_hash, folder)
            if actual != record.content_hash:
                raise PromotionRecordError(f"{record.adapter}: content hash {actual[:12]} differs from the record's "
                                           f"{record.content_hash[:12]} (the folder changed after promotion)")
            name = self._loaded_name(record) or await self._load(record)
        self.core.promote(name)
        self.applied, self.served_as, self.refusal = record, name, None
        logger.info("promotion generation %d applied: serving %s (%.2f s)", record.generation, record.target,
                    time.perf_counter() - started)
        await self._unload_old()

    def _loaded_name(self, record: PromotionRecord) -> str | None:
        """An adapter already loaded from the same folder with the same content (e.g. a rollback)."""
        for adapter in self.core.state.live():
            if (adapter.manifest.relative_path == record.adapter
                    and adapter.metadata.get("content_hash") == record.content_hash):
                return adapter.name
        return None

    async def _load(self, record: PromotionRecord) -> str:
        # The adapter id is the served name; a replica that served it before under that name (then unloaded it)
        # takes a new one, because the endpoint never reuses a name.
        name = record.adapter if record.adapter not in self.core.state.used_names else \
            f"{record.adapter}.g{record.generation}"
        metadata = {"content_hash": record.content_hash, "promotion_generation": record.generation}
        await self.core.load(record.adapter, name, metadata)
        self._loaded_here.append(name)
        return name

    async def _unload_old(self, keep: int = 2) -> None:
        """Unload adapters this follower loaded, except the serving one and the one before it (a rollback is then a
        promotion only). Adapters loaded through the admin API are left alone."""
        serving = self.core.state.default
        stale = [n for n in self._loaded_here if n != serving][: max(0, len(self._loaded_here) - keep)]
        for name in stale:
            try:
                await self.core.unload(name)
            except Exception as exc:  # noqa: BLE001 - an unload that fails leaves it loaded; never stops following
                logger.warning("could not unload %s after promotion: %s", name, exc)
            self._loaded_here.remove(name)

    def _publish(self) -> None:
        self.core.metrics.set_fleet(self.applied.generation if self.applied else 0, self.state)

    # -- life cycle ----------------------------------------------------------------------------------
    async def catch_up(self) -> None:
        """Before the replica reports ready: sync until it serves the record (or refused it, or no record)."""
        while await self.sync() == "behind":
            await asyncio.sleep(self.poll_s)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.sync()
            except Exception:  # noqa: BLE001 - a bug in one step must not stop the replica following the fleet
                logger.exception("promotion follower step failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


def _key(record: PromotionRecord | None) -> tuple[str | None, str, int]:
    return (record.adapter, record.content_hash, record.generation) if record else (None, "", 0)
