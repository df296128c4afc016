"""The fleet-wide promotion record: one small JSON file in the shared adapter store naming the adapter every endpoint
replica serves.

    <adapter store>/promotion.json  {"adapter": "<adapter id>" | null, "content_hash": "<sha256>", "generation": N,
                                     "promoted_at": "...", "previous": "<adapter id>" | null, "reason": "...",
                                     "gate": {candidate, reference, n, diff, ci95, mde_80, margin, decision,
                                              forced, checks} | null}

`gate` is the promotion gate's decision the trainer promoted on (lema.trainer.gate; null when set by hand).

Why a record and not a push: a push to an endpoint's admin API reaches one replica behind a Kubernetes Service (the
same limit as vLLM's runtime load endpoint); a declarative record that every replica reconciles to (the approach of
the Kubernetes SIG's dynamic-lora-sidecar and of LoRAX's pull-by-id) also reaches replicas that start later. The
trainer writes it (`trainer.promotion_record`); each replica follows it (`endpoint.promotion_record`,
services/endpoint/fleet.py). Rollback is writing the previous adapter id back.

Adapter ids are immutable (the trainer's registry never reuses one), and the record carries the content hash of the
adapter's weights and config: a replica serves an adapter only when the folder's hash matches, so a folder changed
or corrupted after promotion is refused rather than served. The file is replaced atomically (a temporary file in the
same folder, then rename), so a reader sees the old or the new record, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from lema.core.errors import InvalidInput

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MAX_RECORD_BYTES = 64 << 10
# An adapter id names a folder directly inside the store: no separators, no dot-files, no "..".
_ADAPTER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class PromotionRecordError(InvalidInput):
    """A promotion record that cannot be used (unreadable, malformed, naming an invalid id)."""


def content_hash(folder: Path) -> str:
    """sha256 over the adapter's config and weights (the files an engine loads), in a fixed order."""
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        digest.update(name.encode())
        with (folder / name).open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class PromotionRecord:
    adapter: str | None  # an adapter id in the store; None: the base model serves
    content_hash: str = ""  # of the adapter's files when promoted ("" for the base model)
    generation: int = 0  # grows by one with every write: replicas report the generation they serve
    promoted_at: str = ""
    previous: str | None = None
    reason: str = ""
    # The gate's decision and numbers (forced or passed); None when set by hand. Not hashed: a dict cannot be.
    gate: dict | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        if self.gate is not None and not isinstance(self.gate, dict):
            raise PromotionRecordError("gate: must be an object (the gate's decision) or null")
        if self.adapter is not None and not _ADAPTER_ID.match(self.adapter):
            raise PromotionRecordError(f"adapter: {self.adapter[:80]!r} is not an adapter id")
        if self.adapter is not None and not _SHA256.match(self.content_hash):
            raise PromotionRecordError("content_hash: must be the adapter's sha256 (64 hex digits)")
        if not isinstance(self.generation, int) or self.generation < 0:
            raise PromotionRecordError("generation: must be a non-negative integer")

    @property
    def target(self) -> str:
        return self.adapter or "the base model"


def record_path(root: str | Path, name: str) -> Path:
    """The record file `name` inside the adapter store `root`: a plain file name, never a path elsewhere."""
    if not _ADAPTER_ID.match(name) or name.startswith("."):
        raise PromotionRecordError(f"promotion_record: {name[:80]!r} must be a plain file name in the adapter store")
    return Path(root) / name


def read_record(path: Path) -> PromotionRecord | None:
    """The record, or None when no promotion was ever written. PromotionRecordError when it is unusable."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_RECORD_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PromotionRecordError(f"cannot read the promotion record: {exc.strerror}") from None
    if len(raw) > MAX_RECORD_BYTES:
        raise PromotionRecordError(f"the promotion record is larger than {MAX_RECORD_BYTES} bytes")
    try:
        data = json.loads(raw)
        fields = {k: data[k] for k in PromotionRecord.__dataclass_fields__ if k in data}
        return PromotionRecord(**fields)
    except PromotionRecordError:
        raise
    except (ValueError, TypeError) as exc:  # the message never echoes the file's content
        raise PromotionRecordError(f"the promotion record is not a valid record ({type(exc).__name__})") from None


def write_record(path: Path, adapter: str | None, adapter_hash: str = "", reason: str = "",
                 gate: dict | None = None) -> PromotionRecord:
    """Write a new record naming `adapter` (None: the base model), one generation after the current one, with the
    gate's decision when the trainer's gate promoted it."""
    try:
        current = read_record(path)
    except PromotionRecordError:
        current = None  # a broken record is replaced, not a reason to refuse a fix
    record = PromotionRecord(
        adapter=adapter, content_hash=adapter_hash if adapter else "",
        generation=(current.generation + 1) if current else 1,
        promoted_at=datetime.now(timezone.utc).isoformat(),
        previous=current.adapter if current else None, reason=reason[:500], gate=gate,
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(record), f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic within one folder (also on NFS, the usual ReadWriteMany volume)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return record
