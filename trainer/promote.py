"""Eval-gated promotion: hot-swap a registered adapter into the running endpoint through its admin API, or write the
fleet's promotion record.

The gate (unless forced; lema.trainer.gate): the adapter's per-problem outcomes on the gate's validation problems
(never the reported test problems), paired with those of the adapter serving now and of the base model on the same
problems, must show it not worse than each by more than `margin` with confidence; a validation set too small to see
`margin` refuses as "too small to decide". An adapter without outcomes is refused. The base model's outcomes come
from the caller (the trainer measures them once per base model and evaluation settings). The admin token comes from
an environment variable and is never logged.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx

from lema.core.errors import LemaError
from lema.core.promotion_record import PromotionRecordError, read_record, write_record
from lema.trainer.gate import DEFAULT_MARGIN, Gate, GateError, Outcomes, gate
from lema.trainer.registry import GATE_OUTCOMES, AdapterRecord, AdapterRegistry

# The endpoint's admin API (services/endpoint): list, load, promote.
ADMIN_LIST = "/admin/adapters"
ADMIN_LOAD = "/admin/adapters/load"
ADMIN_PROMOTE = "/admin/adapters/promote"


class PromotionError(LemaError, RuntimeError):
    """The endpoint refused or could not be reached: UNAVAILABLE when transient, else FAILED_PRECONDITION."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient
        self.grpc_status = grpc.StatusCode.UNAVAILABLE if transient else grpc.StatusCode.FAILED_PRECONDITION
        self.http_status = 503 if transient else 409


@dataclass
class PromotionOutcome:
    promoted: bool
    reason: str
    previous: str = ""
    gate: dict | None = None  # lema.trainer.gate.Gate.to_json(): the decision and its numbers


def _client(url: str, token_env: str) -> httpx.Client:
    token = os.environ.get(token_env, "")
    if not token:
        raise PromotionError(f"the endpoint's admin token is not set: export {token_env}=...")
    return httpx.Client(base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {token}"}, timeout=120)


def _call(client: httpx.Client, method: str, path: str, **kwargs) -> dict:
    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise PromotionError(f"cannot reach the endpoint: {exc}", transient=True) from exc
    if response.status_code >= 400:
        raise PromotionError(f"endpoint {method} {path} -> {response.status_code}: {response.text[:300]}",
                             transient=response.status_code >= 500)
    return response.json()


def _outcomes(registry: AdapterRegistry | None, adapter_id: str, notes: list[str]) -> Outcomes | None:
    """An adapter's registered outcomes on the gate's problems; None (with a note) when it has none usable."""
    if registry is None:
        return None
    try:
        return Outcomes.from_json(registry.gate_outcomes(adapter_id))
    except GateError as exc:
        notes.append(f"{adapter_id}'s {GATE_OUTCOMES} is unusable ({exc})")
        return None


def _gate(record: AdapterRecord, serving: str, registry: AdapterRegistry | None,
          base_outcomes: Outcomes | Callable[[], Outcomes] | None, margin: float, force: bool) -> Gate:
    """The gate's checks of `record` against what serves (`serving`: an adapter id; "" for the base model) and
    against the base model."""
    notes: list[str] = []
    candidate = _outcomes(registry, record.id, notes)
    references: list[tuple[str, Outcomes | None]] = []
    if serving and serving != record.id:
        known = registry is not None and _registered(registry, serving)
        if known:
            references.append((f"the serving {serving}", _outcomes(registry, serving, notes)))
        else:  # promoted from outside this registry: nothing to pair with but the base model
            notes.append(f"the serving {serving} is not in this registry: gated on the base model only")
    # Measuring the base model costs an evaluation: only when the candidate has outcomes the rule can use.
    usable = candidate is not None and not candidate.chosen_on
    base = (base_outcomes() if callable(base_outcomes) else base_outcomes) if usable else None
    references.append(("the base model", base))
    return gate(record.id, candidate, references, margin, forced=force, notes=notes)


def _registered(registry: AdapterRegistry, adapter_id: str) -> bool:
    try:
        registry.get(adapter_id)
    except KeyError:
        return False
    return True


def _refused(record: AdapterRecord, decided: Gate, previous: str) -> PromotionOutcome:
    return PromotionOutcome(False, f"refused {record.id}: {decided.summary()} (force to override)", previous,
                            decided.to_json())


def _promoted(record: AdapterRecord, decided: Gate, previous: str) -> PromotionOutcome:
    forced = " (forced)" if decided.forced else ""
    return PromotionOutcome(True, f"promoted {record.id}{forced}: {decided.summary()}; previously "
                                  f"{previous or 'base model'}", previous, decided.to_json())


def promote(record: AdapterRecord, endpoint_url: str, token_env: str, registry: AdapterRegistry | None,
            force: bool = False, base_outcomes: Outcomes | Callable[[], Outcomes] | None = None,
            margin: float = DEFAULT_MARGIN) -> PromotionOutcome:
    """Hot-swap `record` into the endpoint if it passes the gate. `registry`: where the candidate's and the serving
    adapter's outcomes are registered; `base_outcomes`: the base model's on the same problems (or a function
    measuring them, called only when the gate needs them). Forced, the gate is still computed and recorded."""
    with _client(endpoint_url, token_env) as client:
        listing = _call(client, "GET", ADMIN_LIST)
        adapters = listing.get("adapters", [])
        serving = next((a for a in adapters if a.get("promoted") or a.get("default")), None)
        previous = serving["name"] if serving else ""
        decided = _gate(record, previous, registry, base_outcomes, margin, force)
        if not force and not decided.passed:
            return _refused(record, decided, previous)
        if not any(a.get("name") == record.id for a in adapters):
            _call(client, "POST", ADMIN_LOAD, json={
                "name": record.id, "path": record.id,
                "metadata": {"base_model": record.base_model, "rank": record.rank, "created": record.created_at,
                             "metrics": record.metrics, "content_hash": record.content_hash}})
        _call(client, "POST", ADMIN_PROMOTE, json={"name": record.id})
    return _promoted(record, decided, previous)


def promote_fleet(record: AdapterRecord, registry: AdapterRegistry, record_file: Path, force: bool = False,
                  base_outcomes: Outcomes | Callable[[], Outcomes] | None = None,
                  margin: float = DEFAULT_MARGIN) -> PromotionOutcome:
    """Fleet-wide promotion: the same gate, then write the promotion record every endpoint replica follows
    (lema.core.promotion_record), with the gate's decision in it. The serving adapter is the one the record names
    now."""
    try:
        current = read_record(record_file)
    except PromotionRecordError:
        current = None  # an unreadable record is replaced by this promotion
    previous = current.adapter if current and current.adapter else ""
    if previous == record.id and current.content_hash == record.content_hash:
        return PromotionOutcome(True, f"{record.id} is already promoted (generation {current.generation})", previous,
                                current.gate)
    decided = _gate(record, previous, registry, base_outcomes, margin, force)
    if not force and not decided.passed:
        return _refused(record, decided, previous)
    written = write_record(record_file, record.id, record.content_hash, reason="forced" if force else "gate passed",
                           gate=decided.to_json())
    outcome = _promoted(record, decided, previous)
    outcome.reason += f"; promotion record generation {written.generation}"
    return outcome
