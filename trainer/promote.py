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

import httpx
from lema.trainer.registry import AdapterRecord

# The endpoint's admin API (services/endpoint): list, load, promote.
ADMIN_LIST = "/admin/adapters"
ADMIN_LOAD = "/admin/adapters/load"
ADMIN_PROMOTE = "/admin/adapters/promote"


class PromotionError(RuntimeError):
    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


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
        new_score = record.metrics.get(gate_metric)
        if not force:
            if new_score is None:
                return PromotionOutcome(False, f"refused: {record.id} has no {gate_metric} to gate on (evaluate it, "
                                               "or force)", previous)
            references = []
            if serving is not None:
                score = ((serving.get("metadata") or {}).get("metrics") or {}).get(gate_metric)
                if score is not None:
                    references.append((score, f"the serving {previous}"))
            base = base_metrics() if callable(base_metrics) else base_metrics
            if base and base.get(gate_metric) is not None:
                references.append((float(base[gate_metric]), "the base model"))
            for score, who in references:
                if new_score < score:
                    return PromotionOutcome(False, f"refused: {gate_metric} {new_score:.4f} is worse than {who}'s "
                                                   f"{score:.4f} (force to override)", previous)
        if not any(a.get("name") == record.id for a in adapters):
            _call(client, "POST", ADMIN_LOAD, json={
                "name": record.id, "path": record.id,
                "metadata": {"base_model": record.base_model, "rank": record.rank, "created": record.created_at,
                             "metrics": record.metrics, "content_hash": record.content_hash}})
        _call(client, "POST", ADMIN_PROMOTE, json={"name": record.id})
    detail = f"{gate_metric} {new_score:.4f}" if new_score is not None else f"no {gate_metric}"
    forced = " (forced)" if force else ""
    return PromotionOutcome(True, f"promoted {record.id}{forced} ({detail}); previously {previous or 'base model'}",
                            previous)
