"""The adapter registry: one versioned folder per adapter in PEFT format, plus metadata.json.

    <root>/<adapter id>/adapter_config.json, adapter_model.safetensors, metadata.json[, gate-outcomes.json]

Ids are never reused (vLLM serves stale prefix-cache entries for a reused name, its issue #42125): an id is the
recipe name, a UTC timestamp and a random suffix. The content hash covers the adapter's weight and config files.
`gate-outcomes.json` holds the adapter's per-problem outcomes on the promotion gate's validation problems
(lema.trainer.gate): a file of its own, because the endpoint serves metadata.json in its adapter listings and these
are thousands of problem ids.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from lema.core.promotion_record import content_hash

GATE_OUTCOMES = "gate-outcomes.json"


@dataclass
class AdapterRecord:
    id: str
    base_model: str
    path: str
    content_hash: str
    rank: int
    target_modules: list[str]
    export_id: str = ""
    parent_adapter: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    created_at: str = ""
    config_yaml: str = ""
    run_id: str = ""


def default_root() -> Path:
    return Path(os.environ.get("LEMA_ADAPTERS", Path.home() / ".cache" / "lema" / "adapters"))


class AdapterRegistry:
    def __init__(self, root: Path | None = None):
        self.root = Path(root or default_root())
        self.root.mkdir(parents=True, exist_ok=True)

    def new_id(self, prefix: str) -> str:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        return f"{prefix}-{stamp}-{uuid.uuid4().hex[:6]}"

    def register(self, adapter_dir: Path, base_model: str, prefix: str, metrics: dict[str, float] | None = None,
                 export_id: str = "", parent_adapter: str = "", config_yaml: str = "", run_id: str = "",
                 gate_outcomes: dict | None = None) -> AdapterRecord:
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
        adapter_id = self.new_id(prefix)
        target = self.root / adapter_id
        tmp = self.root / f".{adapter_id}.tmp"
        shutil.copytree(adapter_dir, tmp)
        modules = config.get("target_modules") or []
        record = AdapterRecord(
            id=adapter_id, base_model=base_model, path=str(target), content_hash=content_hash(tmp),
            rank=int(config.get("r", 0)), target_modules=sorted(modules) if isinstance(modules, list) else [modules],
            export_id=export_id, parent_adapter=parent_adapter, metrics=dict(metrics or {}),
            created_at=datetime.now(timezone.utc).isoformat(), config_yaml=config_yaml, run_id=run_id,
        )
        (tmp / "metadata.json").write_text(json.dumps(asdict(record), indent=2))
        if gate_outcomes:
            (tmp / GATE_OUTCOMES).write_text(json.dumps(gate_outcomes))
        tmp.rename(target)  # atomic: a half-copied adapter never looks registered
        return record

    def get(self, adapter_id: str) -> AdapterRecord:
        if not adapter_id or len(adapter_id.encode("utf-8", "surrogatepass")) > 255 or "\x00" in adapter_id:
            raise KeyError(adapter_id)  # no folder can have that name (asking the file system raised OSError)
        folder = (self.root / adapter_id).resolve()
        if folder.parent != self.root.resolve() or not (folder / "metadata.json").exists():
            raise KeyError(adapter_id)
        return AdapterRecord(**json.loads((folder / "metadata.json").read_text()))

    def gate_outcomes(self, adapter_id: str) -> dict:
        """The adapter's outcomes on the gate's problems as registered; {} when it has none (or is unknown)."""
        try:
            self.get(adapter_id)  # a registered adapter's folder directly in the store, never a path elsewhere
            data = json.loads((self.root / adapter_id / GATE_OUTCOMES).read_text())
        except (KeyError, OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def list(self, base_model: str = "") -> list[AdapterRecord]:
        records = []
        for meta in sorted(self.root.glob("*/metadata.json")):
            record = AdapterRecord(**json.loads(meta.read_text()))
            if not base_model or record.base_model == base_model:
                records.append(record)
        return sorted(records, key=lambda r: r.created_at)
