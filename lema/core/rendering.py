"""How a prompt (and, for training, its completion) becomes tokens for one tokenizer: the single definition shared
by the engines (inference), the trainer (training rows) and the exporter (length checks), so what a model is
trained on is exactly what it is later asked.

Two framings:
- **chat**: the tokenizer has a chat template (lema-tiny, instruct models). The prompt is the user turn rendered
  with the generation prompt; the completion is whatever the template adds for the assistant turn (its text and
  end-of-turn tokens), found as the tokens after the common prefix, as TRL does.
- **raw**: no chat template (base models such as `meta-llama/Llama-2-7b-hf`, the paper's own). As in the paper's
  `qlora.py`: the prompt is `bos + prompt`, the completion is `completion + eos`, loss on the completion only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Framing = Literal["chat", "raw"]


def framing_of(tokenizer: Any) -> Framing:
    return "chat" if getattr(tokenizer, "chat_template", None) else "raw"


def _messages_text(messages: list[dict]) -> str:
    """A conversation as raw text for a model without a chat template: the turns' contents, one after another."""
    return "\n\n".join(str(m.get("content", "")) for m in messages)


def render_prompt(tokenizer: Any, prompt: str | list[dict]) -> str:
    """The text an engine feeds the model (tokenized without adding special tokens: the text carries them).

    A plain string is sent as it is (a completions-API prompt); a message list goes through the chat template, or,
    for a model without one, becomes `bos + text` exactly as the raw training rows were framed."""
    if isinstance(prompt, str):
        return prompt
    if framing_of(tokenizer) == "chat":
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return (tokenizer.bos_token or "") + _messages_text(prompt)


@dataclass(frozen=True)
class EncodedRow:
    input_ids: list[int]
    completion_mask: list[int]  # 1 where the loss applies (the completion)

    @property
    def length(self) -> int:
        return len(self.input_ids)

    @property
    def prompt_length(self) -> int:
        return self.completion_mask.index(1) if 1 in self.completion_mask else len(self.completion_mask)


def encode_row(tokenizer: Any, prompt: str, completion: str, context: str = "") -> EncodedRow:
    """Token ids of one prompt/completion training row, with the mask of the tokens that carry the loss.

    `context` is the start of the model's own answer, given but not trained (the step-level correction format:
    the model's correct steps before its mistake); the assistant turn is `context + completion`."""
    if framing_of(tokenizer) == "chat":
        user = [{"role": "user", "content": prompt}]
        given = _ids(tokenizer.apply_chat_template(user, tokenize=True, add_generation_prompt=True))
        full = _ids(tokenizer.apply_chat_template(user + [{"role": "assistant", "content": context + completion}],
                                                  tokenize=True))
        if context:
            given = given + tokenizer(context, add_special_tokens=False)["input_ids"]
        shared = common_prefix_length(given, full)  # a token may merge across the boundary
        return EncodedRow(full, [0] * shared + [1] * (len(full) - shared))
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    given = bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if context:
        given += tokenizer(context, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + eos
    return EncodedRow(given + completion_ids, [0] * len(given) + [1] * len(completion_ids))


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """How many leading tokens two sequences share: where a given prefix and the whole sequence part."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _ids(rendered: Any) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True); older versions a list.
    if isinstance(rendered, dict) or hasattr(rendered, "keys"):
        rendered = rendered["input_ids"]
    return list(rendered)
