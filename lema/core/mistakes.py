"""Which sampled mistakes are systematic and which are sampling noise.

A wrong path sampled at temperature T > 0 may go wrong at a step the model itself does not believe: at the first
wrong step, the model gives the *correct* step a higher likelihood than the one it sampled. Correcting such a mistake
teaches little (greedy decoding would not make it). A mistake is **systematic** when, given the question and the
model's own steps before it, the model's log-likelihood of its wrong step exceeds that of the correct step.

Scored with a transformers model (the reasoner's base model by default), framed exactly as the engines frame a
request (`lema.core.rendering`).
"""

from __future__ import annotations

from dataclasses import dataclass

from lema.core.formats import ANSWER_PREFIX, numbered_solution, step_correction


@dataclass(frozen=True)
class MistakeCandidate:
    key: str
    prompt: str  # the CoT prompt (user turn)
    context: str  # the model's own steps before the first wrong one
    wrong: str  # the model's first wrong line
    right: str  # the correct line in its place


@dataclass(frozen=True)
class MistakeScore:
    logp_wrong: float
    logp_right: float

    @property
    def systematic(self) -> bool:
        return self.logp_wrong > self.logp_right


def candidate(key: str, prompt: str, wrong_solution: str, incorrect_step: int,
              corrected_solution: str) -> MistakeCandidate | None:
    """The two competing lines at the first wrong step (None when the wrong solution has no line there)."""
    k = incorrect_step - 1
    context, target = step_correction(wrong_solution, incorrect_step, corrected_solution)
    wrong_lines = numbered_solution(wrong_solution).splitlines()
    if k < 0 or not target:
        return None
    right = target.splitlines()[0]
    wrong = wrong_lines[k] if k < len(wrong_lines) else ""
    if not wrong:  # the model stopped early: its "line" there is the end of the answer, not scorable as text
        return None
    if wrong.lower().startswith(ANSWER_PREFIX.lower()) and not right.lower().startswith(ANSWER_PREFIX.lower()):
        return None  # it answered where a step was due: a missing step, not a competing line
    return MistakeCandidate(key, prompt, context, wrong, right)


def score(model_path: str, candidates: list[MistakeCandidate], batch_size: int = 16) -> dict[str, MistakeScore]:
    """Sum of token log-probabilities of each candidate's wrong and right line after its prompt and context."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lema.core.rendering import common_prefix_length, render_prompt

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def encode(c: MistakeCandidate, line: str) -> tuple[list[int], int]:
        given = render_prompt(tokenizer, [{"role": "user", "content": c.prompt}]) + c.context
        given_ids = tokenizer(given, add_special_tokens=False)["input_ids"]
        ids = tokenizer(given + line + "\n", add_special_tokens=False)["input_ids"]
        return ids, common_prefix_length(given_ids, ids)

    sequences = [encode(c, line) for c in candidates for line in (c.wrong, c.right)]
    totals: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(sequences), batch_size):
            batch = sequences[start : start + batch_size]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), width), pad)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, (ids, _) in enumerate(batch):
                input_ids[i, : len(ids)] = torch.tensor(ids)
                mask[i, : len(ids)] = 1
            logprobs = torch.log_softmax(model(input_ids=input_ids, attention_mask=mask).logits.float(), dim=-1)
            for i, (ids, shared) in enumerate(batch):
                targets = torch.tensor(ids[shared:])
                positions = torch.arange(shared - 1, len(ids) - 1)
                totals.append(float(logprobs[i, positions, targets].sum()))
    return {c.key: MistakeScore(totals[2 * i], totals[2 * i + 1]) for i, c in enumerate(candidates)}
