"""lema-tiny: the small from-scratch Llama that ships with lema as its default, partly competent reasoner."""

from __future__ import annotations

# Where the weights are is the core's knowledge (lema.core.model_resolve): the core never imports lema.tiny.
from lema.core.model_resolve import default_model_path

__all__ = ["default_model_path"]
