"""lema-tiny: the small from-scratch Llama that ships with lema as its default, partly competent reasoner."""

from __future__ import annotations

from pathlib import Path


def default_model_path() -> Path:
    """The folder of the committed lema-tiny weights and tokenizer (inside the installed package)."""
    return Path(__file__).resolve().parent.parent / "assets" / "lema-tiny"
