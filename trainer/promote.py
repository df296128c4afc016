"""Eval-gated promotion: hot-swap a registered adapter into the running endpoint through its admin API.

The gate (unless forced): the adapter's gate metric (default `validation_accuracy`: validation problems, never the
reported test problems) must be at least the serving adapter's and at least the base model's, so that while the base
model serves an adapter worse than it is not promoted. An adapter without the metric is refused. The base model's
figure comes from the caller (the trainer measures it once per base model and validation set). The admin token comes
from an environment variable and is never logged.
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
from lema.trainer.registry import AdapterRecord, AdapterRegistry

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


def _gate(record: AdapterRecord, gate_metric: str, serving: tuple[str, dict] | None,
          base_metrics: dict[str, float] | Callable[[], dict[str, float]] | None) -> str | None:
    """Why `record` must not replace the serving adapter (its name and metrics), or None when it passes."""
    new_score = record.metrics.get(gate_metric)
    if new_score is None:
        return f"refused: {record.id} has no {gate_metric} to gate on (evaluate it, or force)"
    references = []
    if serving is not None:
        score = serving[1].get(gate_metric)
        if score is not None:
            references.append((score, f"the serving {serving[0]}"))
    base = base_metrics() if callable(base_metrics) else base_metrics
    if base and base.get(gate_metric) is not None:
        references.append((float(base[gate_metric]), "the base model"))
    for score, who in references:
        if new_score < score:
            return f"refused: {gate_metric} {new_score:.4f} is worse than {who}'s {score:.4f} (force to override)"
    return None


def _promoted(record: AdapterRecord, gate_metric: str, force: bool, previous: str) -> PromotionOutcome:
    new_score = record.metrics.get(gate_metric)
    detail = f"{gate_metric} {new_score:.4f}" if new_score is not None else f"no {gate_metric}"
    forced = " (forced)" if force else ""
    return PromotionOutcome(True, f"promoted {record.id}{forced} ({detail}); previously {previous or 'base model'}",
                            previous)


def promote(record: AdapterRecord, endpoint_url: str, token_env: str, gate_metric: str = "validation_accuracy",
            force: bool = False, base_metrics: dict[str, float] | Callable[[], dict[str, float]] | None = None,
            ) -> PromotionOutcome:
    """Hot-swap `record` into the endpoint if it passes the gate. `base_metrics`: the base model's metrics on the
    same evaluation (or a function measuring them, called only when the gate needs them)."""
    with _client(endpoint_url, token_env) as client:
        listing = _call(client, "GET", ADMIN_LIST)
        adapters = listing.get("adapters", [])
        serving = next((a for a in adapters if a.get("promoted") or a.get("default")), None)
        previous = serving["name"] if serving else ""
        if not force:
            metrics = ((serving.get("metadata") or {}).get("metrics") or {}) if serving else {}
            refusal = _gate(record, gate_metric, (previous, metrics) if serving else None, base_metrics)
            if refusal:
                return PromotionOutcome(False, refusal, previous)
        if not any(a.get("name") == record.id for a in adapters):
            _call(client, "POST", ADMIN_LOAD, json={
                "name": record.id, "path": record.id,
                "metadata": {"base_model": record.base_model, "rank": record.rank, "created": record.created_at,
                             "metrics": record.metrics, "content_hash": record.content_hash}})
        _call(client, "POST", ADMIN_PROMOTE, json={"name": record.id})
    return _promoted(record, gate_metric, force, previous)


def promote_fleet(record: AdapterRecord, registry: AdapterRegistry, record_file: Path,
                  gate_metric: str = "validation_accuracy", force: bool = False,
                  base_metrics: dict[str, float] | Callable[[], dict[str, float]] | None = None) -> PromotionOutcome:
    """Fleet-wide promotion: the same gate, then write the promotion record every endpoint replica follows
    (lema.core.promotion_record). The serving adapter is the one the record names now."""
    try:
        current = read_record(record_file)
    except PromotionRecordError:
        current = None  # an unreadable record is replaced by this promotion
    previous = current.adapter if current and current.adapter else ""
    if not force:
        serving = None
        if previous:
            try:
                serving = (previous, registry.get(previous).metrics)
            except KeyError:
                serving = (previous, {})  # promoted from outside this registry: gate on the base model only
        refusal = _gate(record, gate_metric, serving, base_metrics)
        if refusal:
            return PromotionOutcome(False, refusal, previous)
    if previous == record.id and current.content_hash == record.content_hash:
        return PromotionOutcome(True, f"{record.id} is already promoted (generation {current.generation})", previous)
    written = write_record(record_file, record.id, record.content_hash, reason="forced" if force else "gate passed")
    outcome = _promoted(record, gate_metric, force, previous)
    outcome.reason += f"; promotion record generation {written.generation}"
    return outcome
