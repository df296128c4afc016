"""All of lema's configuration in one typed place.

A YAML file (`deploy/lema.yaml` is the reference) maps onto `LemaConfig`; command-line flags override
single fields. Unknown keys are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

DEFAULT_PORTS = {"verifier": 50061, "reasoner": 50062, "corrector": 50063, "trainer": 50064, "endpoint": 3000}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GrpcServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    grace_s: float = Field(default=10.0, ge=0, description="time in-flight calls get to finish on SIGTERM")
    metrics_port: int | None = Field(default=None, ge=0, le=65535, description="Prometheus /metrics port")
    max_message_mb: int = Field(default=64, ge=1)


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class VerifierConfig(GrpcServerConfig):
    port: int = DEFAULT_PORTS["verifier"]
    workers: int = Field(default_factory=_default_workers, ge=1, le=64)
    item_timeout_s: float = Field(default=5.0, gt=0, le=600, description="hard limit per verified item")
    max_candidate_chars: int = Field(default=200_000, ge=1)
    max_gold_chars: int = Field(default=10_000, ge=1)
    max_batch_items: int = Field(default=10_000, ge=1)


class LemaConfig(_Section):
    verifier: VerifierConfig = VerifierConfig()


def load_config(path: str | Path | None = None) -> LemaConfig:
    """Load a config file (or $LEMA_CONFIG, or the defaults)."""
    path = path or os.environ.get("LEMA_CONFIG")
    if not path:
        return LemaConfig()
    data = yaml.safe_load(Path(path).read_text()) or {}
    return LemaConfig.model_validate(data)
