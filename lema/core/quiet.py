"""Silence the libraries' own progress bars and per-step log dictionaries in commands that print their own
progress lines (`lema demo`, `lema ablate`)."""

from __future__ import annotations

import logging
import os


def quiet_libraries() -> None:
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    # bitsandbytes tries to fetch an optional CPU kernel from the Hugging Face hub (unreachable offline, and lema
    # downloads nothing at run time) and warns once per process; its built-in fallback is what runs.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
