"""Drills: cheap sequences that teach lema-tiny the two skills a word problem needs before it can be solved, and the
correction format it has to read before it can learn from mistakes.

- Arithmetic drills, packed lines "So a op b = c.": arithmetic was the bottleneck of a from-scratch model
  (docs/development.md, 'The CPU stack'); a word problem spends ~150 tokens on 2-6 equations, a drill packs ~15 equations into
  the same budget. Operands follow the story families' limits; the loss covers only what follows "=".
- Copy drills, a question then the same question again (loss on the copy): copying from the context
  (induction) is how the model brings a question's sentence and numbers into its steps.
- Random copy drills, a random token sequence then the same sequence again: the only way to predict the copy
  is to look back (an induction head). At the committed recipe's share they did not get learned (the model's
  random-copy loss stays near chance; see docs/lema-tiny.md); on their own they take ~700 steps to click. Question
  copies can mostly be predicted from the story grammar, so
  they teach copying weakly; pilots with them still invented names and numbers after 450 steps.
- Correction sequences, the paper's correction prompt and output on synthetic wrong solutions: a model pretrained
  on error-free solutions only never saw the format's words, and fine-tuning on corrections then pushes it toward
  tokens it cannot predict (issue 13); in pretraining, the format is in distribution the way English is for an LLM.
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


def copy_examples(tokenizer, questions: list[str]) -> list[Example]:
    """One sequence per question: [bos] question newline question newline, loss on the second copy."""
    first = tokenizer([f"{q}\n" for q in questions], add_special_tokens=False)["input_ids"]
    examples = []
    for ids in first:
        seq = [tokenizer.bos_token_id, *ids, *ids]
        examples.append(Example(seq, 0, [0] * (1 + len(ids)) + [1] * len(ids)))
    return examples


def random_copy_examples(tokenizer, n: int, rng: random.Random, min_len: int = 8, max_len: int = 48) -> list[Example]:
    """`n` sequences [bos] x1..xk newline x1..xk newline of random ordinary tokens; loss on the copy."""
    special = set(tokenizer.all_special_ids)
    pool = [i for i in range(len(tokenizer)) if i not in special]
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    examples = []
    for _ in range(n):
        body = [rng.choice(pool) for _ in range(rng.randint(min_len, max_len))] + newline
        seq = [tokenizer.bos_token_id, *body, *body]
        examples.append(Example(seq, 0, [0] * (1 + len(body)) + [1] * len(body)))
    return examples


def correction_row(problem, rng: random.Random, shortened_fraction: float | None = None) -> tuple[str, str] | None:
    """One paper-format correction row of a synthetic problem, (prompt, completion): a synthetic wrong solution
    (`lema.core.synthetic.errors`) in the paper's correction prompt and the reference corrector's output, as the
    exporter writes a `correction.jsonl` row. None when the drawn corruption does not apply.

    `shortened_fraction`: the chance that the prompt shows the original solution only through its incorrect step
    ("..." after it, the exporter's form for over-long rows); it costs one more draw from `rng` (None: no draw)."""
    from lema.core.formats import correction_input
    from lema.core.reference_corrector import correct
    from lema.core.synthetic.errors import wrong_solution

    drawn = wrong_solution(problem, rng)
    if drawn is None:
        return None
    text, step, _ = drawn
    through = step if shortened_fraction is not None and rng.random() < shortened_fraction else None
    return correction_input(problem.question, text, through_step=through), correct(problem, text).text.lstrip()


def correction_examples(tokenizer, problems: list, rng: random.Random, max_length: int,
                        shortened_fraction: float = 0.3) -> list[Example]:
    """Correction-format sequences (`correction_row`), framed and masked exactly as the trainer frames a
    `correction.jsonl` row (`lema.core.rendering.encode_row`), loss on the output only. Problems whose drawn
    corruption does not apply give no example; sequences longer than `max_length` are left out."""
    from lema.core.rendering import encode_row

    examples = []
    for problem in problems:
        row = correction_row(problem, rng, shortened_fraction)
        if row is None:
            continue
        encoded = encode_row(tokenizer, *row)
        if encoded.length <= max_length:
            examples.append(Example(encoded.input_ids, 0, encoded.completion_mask))
    return examples


def correction_texts(problems: list, rng: random.Random) -> list[str]:
    """Correction prompts and outputs as plain text, for training the tokenizer on the correction format's words."""
    rows = (correction_row(problem, rng) for problem in problems)
    return [prompt + " " + completion for prompt, completion in (r for r in rows if r is not None)]
