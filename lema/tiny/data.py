"""Training sequences for lema-tiny: chat-formatted synthetic problems, batched by similar length."""

from __future__ import annotations

import random
from dataclasses import dataclass

from lema.core.formats import cot_messages
from lema.core.rendering import render_prompt
from lema.core.synthetic import SyntheticProblem


def prompt_text(tokenizer, question: str) -> str:
    """Exactly what generation sees (every engine renders prompts with `render_prompt`): the chat template up to
    the assistant turn."""
    return render_prompt(tokenizer, cot_messages(question))


@dataclass
class Example:
    input_ids: list[int]
    n_prompt: int  # prompt tokens (excluded from the loss when training on the assistant turn only)
    label_mask: list[int] | None = None  # explicit 0/1 loss mask per token (drills); overrides n_prompt


def encode_problems(tokenizer, problems: list[SyntheticProblem]) -> list[Example]:
    """Prompt and answer are encoded separately and concatenated, so training tokens are exactly the
    generation prompt's tokens followed by what the model must generate (gold solution, then eos)."""
    prompts = tokenizer([prompt_text(tokenizer, p.question) for p in problems], add_special_tokens=False)
    answers = tokenizer([p.gold_solution for p in problems], add_special_tokens=False)
    eos = tokenizer.eos_token_id
    return [Example(pi + ai + [eos], len(pi)) for pi, ai in zip(prompts["input_ids"], answers["input_ids"])]


def make_batches(examples: list[Example], batch_size: int, rng: random.Random, pool: int = 50) -> list[list[Example]]:
    """Shuffle, sort by length within pools of `pool` batches (less padding), then shuffle the batches."""
    examples = examples[:]
    rng.shuffle(examples)
    batches = []
    chunk = batch_size * pool
    for start in range(0, len(examples), chunk):
        part = sorted(examples[start:start + chunk], key=lambda e: len(e.input_ids))
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return [b for b in batches if len(b) == batch_size]


def collate(batch: list[Example], pad_id: int, loss_on: str = "assistant"):
    """Right-padded tensors; labels are -100 on padding (and on the prompt when loss_on == "assistant")."""
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        mask[row, :n] = 1
        if e.label_mask is not None:
            keep = torch.tensor(e.label_mask, dtype=torch.bool)
            labels[row, :n] = torch.where(keep, ids[row, :n], torch.tensor(-100))
        else:
            start = e.n_prompt if loss_on == "assistant" else 0
            labels[row, start:n] = ids[row, start:n]
    return ids, mask, labels
