"""Eval-gated promotion: hot-swap a registered adapter into the running endpoint through its admin API.

Refuses an adapter whose evaluation is worse than the serving adapter's (on the gate metric) unless forced.
The admin token comes from an environment variable and is never logged.
"""

from __future__ import annotations

import os
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


def promote(record: AdapterRecord, endpoint_url: str, token_env: str, gate_metric: str = "accuracy",
            force: bool = False) -> PromotionOutcome:
    with _client(endpoint_url, token_env) as client:
        listing = _call(client, "GET", ADMIN_LIST)
        adapters = listing.get("adapters", [])
        serving = next((a for a in adapters if a.get("promoted") or a.get("default")), None)
        previous = serving["name"] if serving else ""
        new_score = record.metrics.get(gate_metric)
        old_score = ((serving or {}).get("metadata") or {}).get("metrics", {}).get(gate_metric) if serving else None
        if old_score is None and serving is None:
            old_score = listing.get("base_metrics", {}).get(gate_metric)
        if not force and new_score is not None and old_score is not None and new_score < old_score:
            return PromotionOutcome(False, f"refused: {gate_metric} {new_score:.4f} is worse than the serving "
                                           f"{previous or 'base model'}'s {old_score:.4f} (force to override)", previous)
        if not any(a.get("name") == record.id for a in adapters):
            _call(client, "POST", ADMIN_LOAD, json={
                "name": record.id, "path": record.id,
                "metadata": {"base_model": record.base_model, "rank": record.rank, "created": record.created_at,
                             "metrics": record.metrics, "content_hash": record.content_hash}})
        _call(client, "POST", ADMIN_PROMOTE, json={"name": record.id})
    detail = f"{gate_metric} {new_score:.4f}" if new_score is not None else "no evaluation"
    return PromotionOutcome(True, f"promoted {record.id} ({detail}); previously {previous or 'base model'}", previous)
