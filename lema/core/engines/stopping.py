"""How a completion ends, the same in every local engine: at an end token, or before the first stop string.

The transformers and vLLM engines decode their own token ids and apply these rules after generation (and the
transformers engine while streaming), so one request gives the same text and finish reason on either engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def end_token_ids(config_eos: int | Iterable[int] | None, tokenizer) -> set[int]:
    """The ids that end a completion: the model's generation-config eos id(s), the tokenizer's eos, and its pad
    (generate() pads the rows that finished early with it)."""
    ids: set[int] = set()
    if isinstance(config_eos, int):
        ids.add(config_eos)
    elif config_eos:
        ids.update(config_eos)
    for token in (tokenizer.eos_token_id, tokenizer.pad_token_id):
        if token is not None:
            ids.add(token)
    return ids


def first_stop(text: str, stop: Sequence[str]) -> int:
    """Where the earliest stop string starts in `text`, or -1."""
    cuts = [i for i in (text.find(s) for s in stop) if i != -1]
    return min(cuts, default=-1)


def cut_at_stop(text: str, stop: Sequence[str], finish: str) -> tuple[str, str]:
    """OpenAI's semantics: a text holding a stop string ends before it (the string is not part of the output) and
    finishes with "stop"; any other text keeps `finish`."""
    cut = first_stop(text, stop)
    return (text[:cut], "stop") if cut != -1 else (text, finish)
