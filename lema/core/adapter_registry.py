"""The adapter registry: one folder holds every adapter the endpoint may serve; nothing outside it is opened.

`AdapterRegistry.resolve(path)` confines a requested path to the registry (no `..`, no absolute path outside
it, no symlink escaping it). `inspect_adapter` validates a PEFT LoRA folder *before* any engine sees it:

- `adapter_config.json` parses, is a LoRA config, names this base model (`base_model_name_or_path`), its rank
  and target modules are within the configured limits and every target module exists in the base model;
- `adapter_model.safetensors` is well formed (its header parses, every tensor reads), every tensor belongs to a
  LoRA A/B pair of a linear module of the base model with the shapes that module and the rank imply, and all
  values are finite (pickled `adapter_model.bin` files are refused: they can run code when loaded).

The smoke generation (the last check) needs an engine, so the endpoint (services/endpoint/core.py) runs it after
loading. The reasoner's LoadAdapter uses the same confinement and checks.
Failures raise `AdapterRejected` with a message that says exactly what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from lema.core.errors import Rejected

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# notes kept beside the weights: lema_adapter.json / metadata.json (the trainer's registry record) are merged
# as they are, eval_results.json / metrics.json go under "eval"
METADATA_FILES = ("metadata.json", "lema_adapter.json", "eval_results.json", "metrics.json")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RESERVED_NAMES = frozenset({"default", "base"})
_KEY_RE = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<kind>lora_A|lora_B)(?:\.[^.]+)?\.weight$")


class AdapterRejected(Rejected):
    """An adapter that must not be served. `status` is the HTTP status the admin API answers with: 400 for a path
    that could leave the registry, 404 for a missing folder, 422 for an adapter that failed validation."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = self.http_status = status
        # Over gRPC (the reasoner's LoadAdapter) a refused adapter is the caller's bad argument; 412: this server
        # cannot validate adapters at all.
        self.grpc_status = {404: grpc.StatusCode.NOT_FOUND, 412: grpc.StatusCode.FAILED_PRECONDITION}.get(
            status, grpc.StatusCode.INVALID_ARGUMENT)
        self.kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "adapter_rejected")


@dataclass(frozen=True)
class BaseModelSpec:
    """What an adapter is checked against: the base model's identity and its linear modules' shapes."""

    model_id: str  # the folder or hub id the engine loaded
    served_name: str  # the public name ("lema-tiny")
    architectures: tuple[str, ...]
    model_type: str
    linear: dict[str, tuple[int, int]]  # module path ("model.layers.0.self_attn.q_proj") -> (in, out)
    aliases: frozenset[str] = frozenset()

    @classmethod
    def from_model(cls, model_id: str, served_name: str) -> BaseModelSpec:
        """Build the module table from the model's config on the meta device (no weights are read)."""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(model_id)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
        linear = {
            name: (module.in_features, module.out_features)
            for name, module in skeleton.named_modules()
            if isinstance(module, torch.nn.Linear)
        }
        aliases = {model_id, served_name, Path(model_id).name}
        if Path(model_id).exists():
            aliases.add(str(Path(model_id).resolve()))
        name_or_path = getattr(config, "_name_or_path", "") or ""
        if name_or_path:
            aliases.add(name_or_path)
        return cls(
            model_id=model_id,
            served_name=served_name,
            architectures=tuple(getattr(config, "architectures", None) or ()),
            model_type=str(getattr(config, "model_type", "")),
            linear=linear,
            aliases=frozenset(a for a in aliases if a),
        )

    def matches(self, base_model_name_or_path: str) -> bool:
        value = base_model_name_or_path.strip()
        candidates = {value, value.rstrip("/"), Path(value.rstrip("/")).name}
        return bool(candidates & self.aliases)

    def module_suffixes(self) -> set[str]:
        return {name.rsplit(".", 1)[-1] for name in self.linear}


@dataclass(frozen=True)
class Limits:
    max_rank: int = 64
    allowed_target_modules: tuple[str, ...] | None = None  # None = any linear module of the base model
    max_adapter_bytes: int = 1 << 30


@dataclass
class AdapterManifest:
    """A validated adapter folder: what the admin API lists about it."""

    path: Path  # resolved, inside the registry
    relative_path: str
    rank: int
    alpha: float
    target_modules: list[str]
    base_model: str
    sha256: str
    size_bytes: int
    created: float  # unix time: lema_adapter.json's "created", else the weights' mtime
    tensors: int
    metadata: dict[str, Any] = field(default_factory=dict)  # eval metrics and notes found beside it

    def describe(self) -> dict[str, Any]:
        return {
            "path": self.relative_path,
            "base_model": self.base_model,
            "rank": self.rank,
            "alpha": self.alpha,
            "target_modules": self.target_modules,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "created": self.created,
            "created_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created)),
            "tensors": self.tensors,
        }


class AdapterRegistry:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def resolve(self, requested: str) -> Path:
        """The registry folder a request names; 400 for anything that could leave the registry."""
        if not isinstance(requested, str) or not requested.strip():
            raise AdapterRejected("path: must be a non-empty folder name inside the adapter registry", 400)
        if "\x00" in requested:
            raise AdapterRejected("path: must not contain NUL bytes", 400)
        raw = Path(requested.strip())
        # The file system's own limits (255 bytes a name, 4096 a path), checked before it is asked: past them it
        # raised OSError (File name too long), a 500 with the whole 10 KB path in the message.
        if len(requested.encode("utf-8", "surrogatepass")) > 4096 or any(
                len(part.encode("utf-8", "surrogatepass")) > 255 for part in raw.parts):
            raise AdapterRejected("path: too long (at most 255 bytes a folder name, 4096 in all)", 400)
        requested = requested if len(requested) <= 200 else requested[:200] + "..."  # messages quote at most this
        if ".." in raw.parts:
            raise AdapterRejected(f"path {requested!r}: '..' is not allowed; name a folder inside the registry", 400)
        candidate = raw if raw.is_absolute() else self.root / raw
        resolved = candidate.resolve()
        if not resolved.is_relative_to(self.root):
            raise AdapterRejected(
                f"path {requested!r} is outside the adapter registry {self.root}; adapters are served only from it",
                400,
            )
        if resolved == self.root:
            raise AdapterRejected("path: names the registry itself; name an adapter folder inside it", 400)
        if not resolved.is_dir():
            raise AdapterRejected(f"path {requested!r}: no adapter folder of that name in the registry", 404)
        return resolved

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def candidates(self) -> list[str]:
        """Folders in the registry that look like adapters (hold an adapter_config.json), relative paths."""
        found = []
        for config in sorted(self.root.rglob(ADAPTER_CONFIG)):
            folder = config.parent.resolve()
            hidden = any(part.startswith(".") for part in config.relative_to(self.root).parts)
            if folder.is_relative_to(self.root) and not hidden:  # hidden: e.g. the trainer's half-copied .tmp
                found.append(self.relative(folder))
        return found

    # -- validation --------------------------------------------------------------------------------
    def inspect(self, requested: str, spec: BaseModelSpec, limits: Limits) -> AdapterManifest:
        path = self.resolve(requested)
        for entry in path.iterdir():  # a link inside the folder must not reach outside the registry either
            if entry.is_symlink() and not entry.resolve().is_relative_to(self.root):
                raise AdapterRejected(
                    f"path {requested!r}: {entry.name} links outside the adapter registry; copy the file in", 400
                )
        return inspect_adapter(path, self.relative(path), spec, limits)


def _read_config(path: Path) -> dict[str, Any]:
    config_file = path / ADAPTER_CONFIG
    if not config_file.is_file():
        raise AdapterRejected(f"{ADAPTER_CONFIG} is missing: not a PEFT adapter folder")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterRejected(f"{ADAPTER_CONFIG} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise AdapterRejected(f"{ADAPTER_CONFIG} must hold a JSON object")
    return config


def _check_config(config: dict[str, Any], spec: BaseModelSpec, limits: Limits) -> tuple[int, float, list[str], dict]:
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise AdapterRejected(f"peft_type is {config.get('peft_type')!r}; only LoRA adapters are served")
    task = config.get("task_type")
    if task not in (None, "CAUSAL_LM"):
        raise AdapterRejected(f"task_type is {task!r}; the endpoint serves CAUSAL_LM adapters")
    base = config.get("base_model_name_or_path")
    if not base or not isinstance(base, str):
        raise AdapterRejected("adapter_config.json names no base_model_name_or_path; cannot check the base model")
    if not spec.matches(base):
        raise AdapterRejected(
            f"base model mismatch: the adapter was trained on {base!r}, this endpoint serves {spec.served_name!r}"
        )
    try:
        rank = int(config.get("r"))
        alpha = float(config.get("lora_alpha", rank))
    except (TypeError, ValueError):
        raise AdapterRejected("adapter_config.json: r and lora_alpha must be numbers") from None
    rank_pattern = config.get("rank_pattern") or {}
    if not isinstance(rank_pattern, dict):
        raise AdapterRejected("adapter_config.json: rank_pattern must be an object")
    ranks = [rank, *(int(v) for v in rank_pattern.values())]
    if min(ranks) < 1:
        raise AdapterRejected(f"rank {min(ranks)} is not a valid LoRA rank")
    if max(ranks) > limits.max_rank:
        raise AdapterRejected(f"rank {max(ranks)} is above this endpoint's limit of {limits.max_rank}")
    if config.get("modules_to_save"):
        raise AdapterRejected(
            f"modules_to_save {config['modules_to_save']} replaces whole base modules; only LoRA deltas hot-swap"
        )
    if config.get("use_dora"):
        raise AdapterRejected("DoRA adapters are not served (use_dora=true)")
    targets = config.get("target_modules")
    suffixes = spec.module_suffixes()
    if isinstance(targets, str):  # a regex over module paths
        try:
            pattern = re.compile(targets)
        except re.error as exc:
            raise AdapterRejected(f"target_modules regex {targets!r} does not compile: {exc}") from None
        matched = sorted({n.rsplit(".", 1)[-1] for n in spec.linear if pattern.fullmatch(n)})
        if not matched:
            raise AdapterRejected(f"target_modules regex {targets!r} matches no linear module of the base model")
        target_list = matched
    elif isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets):
        target_list = sorted(set(targets))
        missing = [t for t in target_list if t not in suffixes and t not in spec.linear]
        if missing:
            raise AdapterRejected(
                f"target modules {missing} do not exist in the base model {spec.served_name!r} "
                f"(its linear modules: {sorted(suffixes)})"
            )
    else:
        raise AdapterRejected("adapter_config.json: target_modules must be a non-empty list of module names")
    if limits.allowed_target_modules is not None:
        allowed = set(limits.allowed_target_modules)
        outside = [t for t in target_list if t.rsplit(".", 1)[-1] not in allowed]
        if outside:
            raise AdapterRejected(f"target modules {outside} are not allowed here (allowed: {sorted(allowed)})")
    return rank, alpha, target_list, rank_pattern


def _rank_for(module: str, rank: int, rank_pattern: dict) -> int:
    for pattern, value in rank_pattern.items():
        if module == pattern or module.endswith("." + pattern) or re.fullmatch(pattern, module):
            return int(value)
    return rank


def _check_weights(path: Path, spec: BaseModelSpec, rank: int, rank_pattern: dict, limits: Limits) -> tuple[str, int, int]:
    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        if (path / "adapter_model.bin").exists():
            raise AdapterRejected("adapter_model.bin (pickle) is refused; save the adapter with safetensors")
        raise AdapterRejected(f"{ADAPTER_WEIGHTS} is missing")
    size = weights.stat().st_size
    if size > limits.max_adapter_bytes:
        raise AdapterRejected(f"{ADAPTER_WEIGHTS} is {size} bytes, above the limit of {limits.max_adapter_bytes}")
    data = weights.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        raise AdapterRejected(f"{ADAPTER_WEIGHTS} is not a well-formed safetensors file: {exc}") from None
    if not tensors:
        raise AdapterRejected(f"{ADAPTER_WEIGHTS} holds no tensors")
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, tensor in tensors.items():
        match = _KEY_RE.match(key)
        if not match:
            raise AdapterRejected(f"tensor {key!r} is not a LoRA A/B weight; only LoRA deltas are served")
        module, kind = match.group("module"), match.group("kind")
        if module not in spec.linear:
            raise AdapterRejected(f"tensor {key!r}: the base model has no linear module {module!r}")
        if not tensor.dtype.is_floating_point:
            raise AdapterRejected(f"tensor {key!r} has dtype {tensor.dtype}; LoRA weights must be floating point")
        if not bool(torch.isfinite(tensor).all()):
            raise AdapterRejected(f"tensor {key!r} holds NaN or infinite values")
        pairs.setdefault(module, {})[kind] = tuple(tensor.shape)
    for module, kinds in sorted(pairs.items()):
        in_features, out_features = spec.linear[module]
        r = _rank_for(module, rank, rank_pattern)
        expected = {"lora_A": (r, in_features), "lora_B": (out_features, r)}
        for kind in ("lora_A", "lora_B"):
            if kind not in kinds:
                raise AdapterRejected(f"module {module!r} has no {kind} weight")
            if kinds[kind] != expected[kind]:
                raise AdapterRejected(
                    f"shape mismatch at {module}.{kind}: got {list(kinds[kind])}, the base model and rank {r} "
                    f"need {list(expected[kind])} (was the adapter trained on another model?)"
                )
    return digest, size, len(tensors)


def read_metadata(path: Path) -> dict[str, Any]:
    """Eval metrics and notes stored beside the adapter (lema_adapter.json, eval_results.json, metrics.json)."""
    metadata: dict[str, Any] = {}
    for name in METADATA_FILES:
        file = path / name
        if not file.is_file():
            continue
        try:
            content = json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # notes are optional; a broken notes file does not make the weights unsafe
        if not isinstance(content, dict):
            continue
        if name in ("lema_adapter.json", "metadata.json"):
            metadata.update(content)
        elif isinstance(metadata.setdefault("eval", {}), dict):
            metadata["eval"].update(content)
    if isinstance(metadata.get("metrics"), dict):  # the trainer records eval results as "metrics"; they win
        earlier = metadata.get("eval") if isinstance(metadata.get("eval"), dict) else {}
        metadata["eval"] = {**earlier, **metadata["metrics"]}
    return metadata


def _timestamp(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value:
        from datetime import datetime, timezone

        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()
    return None


def inspect_adapter(path: Path, relative_path: str, spec: BaseModelSpec, limits: Limits) -> AdapterManifest:
    config = _read_config(path)
    rank, alpha, targets, rank_pattern = _check_config(config, spec, limits)
    digest, size, count = _check_weights(path, spec, rank, rank_pattern, limits)
    metadata = read_metadata(path)
    created = _timestamp(metadata.get("created")) or _timestamp(metadata.get("created_at"))
    if created is None:
        created = (path / ADAPTER_WEIGHTS).stat().st_mtime
    return AdapterManifest(
        path=path,
        relative_path=relative_path,
        rank=rank,
        alpha=alpha,
        target_modules=targets,
        base_model=str(config["base_model_name_or_path"]),
        sha256=digest,
        size_bytes=size,
        created=float(created),
        tensors=count,
        metadata=metadata,
    )


def check_name(name: str, base_name: str) -> str:
    if not NAME_RE.match(name):
        raise AdapterRejected(
            f"name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit", 400
        )
    if name in RESERVED_NAMES or name == base_name:
        raise AdapterRejected(f"name {name!r} is reserved", 400)
    return name


def auto_name(manifest: AdapterManifest, used: set[str], base_name: str) -> str:
    """`<folder>-<first 8 hex of the weights' sha256>`, with a `-rN` suffix when that name was used before."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(manifest.relative_path).name).strip("-._") or "adapter"
    stem = stem[:44]
    name = f"{stem}-{manifest.sha256[:8]}"
    candidate, n = name, 1
    while candidate in used or candidate in RESERVED_NAMES or candidate == base_name:
        n += 1
        candidate = f"{name}-r{n}"
    return candidate

