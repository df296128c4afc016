"""Arithmetic drills: packed lines "So a op b = c." that teach lema-tiny the four operations cheaply.

STACK.md found arithmetic to be the bottleneck of a from-scratch model: a word problem spends ~200 tokens
on 2-6 equations, a drill sequence packs ~20 equations into the same budget. Operands follow the same
limits as the story families, and the loss covers only what follows "=" (operands are random).
"""

from __future__ import annotations

import random

from lema.core.synthetic.story import Limits
from lema.tiny.data import Example

OP_WEIGHTS = {"+": 0.3, "-": 0.3, "*": 0.25, "/": 0.15}


def random_equation(rng: random.Random, limits: Limits) -> tuple[int, str, int, int]:
    op = rng.choices(list(OP_WEIGHTS), weights=list(OP_WEIGHTS.values()))[0]
    top = limits.max_value
    if op == "+":
        a = rng.randint(1, top - 1)
        b = rng.randint(1, top - a)
        return a, op, b, a + b
    if op == "-":
        a = rng.randint(2, top)
        b = rng.randint(1, a - 1)
        return a, op, b, a - b
    small = rng.randint(2, limits.max_small_factor)
    big = rng.randint(2, min(limits.max_big_factor, top // small))
    if op == "*":
        a, b = (small, big) if rng.random() < 0.5 else (big, small)
        return a, op, b, a * b
    return small * big, op, small, big  # division: exact, divisor <= max_small_factor


def drill_examples(tokenizer, n: int, rng: random.Random, limits: Limits, tokens_per_example: int = 160) -> list[Example]:
    """`n` packed drill sequences; each is [bos] + lines, labels only on results (see Example.label_mask)."""
    cache: dict[str, list[int]] = {}

    def ids(text: str) -> list[int]:
        if text not in cache:
            cache[text] = tokenizer(text, add_special_tokens=False)["input_ids"]
        return cache[text]

    examples = []
    for _ in range(n):
        seq, mask = [tokenizer.bos_token_id], [0]
        while len(seq) < tokens_per_example:
            a, op, b, c = random_equation(rng, limits)
            prefix, suffix = ids(f"So {a} {op} {b} ="), ids(f" {c}.\n")
            seq += prefix + suffix
            mask += [0] * len(prefix) + [1] * len(suffix)
        examples.append(Example(seq, 0, mask))
    return examples
