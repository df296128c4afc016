"""Greedy evaluation of a causal LM on synthetic problems with plain transformers batched generation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lema.core.answers import answer_is_integer
from lema.core.synthetic import SyntheticProblem
from lema.tiny.data import prompt_text


@dataclass
class EvalResult:
    problem_id: str
    family: str
    n_steps: int
    gold: str
    prediction: str | None  # the integer after "The answer is", if any
    correct: bool
    output: str


def extract_answer(text: str) -> str | None:
    """The integer after the last "The answer is" (lema.core.answers' one reading of it), as text."""
    answer = answer_is_integer(text)
    return None if answer is None else str(answer)


def load_model(model_dir: str | Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer.padding_side = "left"  # batched generation continues every prompt from its last token
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    model.eval()
    return model, tokenizer


def generate_solutions(model, tokenizer, questions: list[str], batch_size: int = 32,
                       max_new_tokens: int = 256) -> list[str]:
    """Greedy completions (until eos) of the chat-formatted CoT prompts."""
    import torch

    outputs: list[str] = []
    # Longest prompts first: batches of similar length waste less compute on padding.
    order = sorted(range(len(questions)), key=lambda i: -len(questions[i]))
    by_index: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        prompts = [prompt_text(tokenizer, questions[i]) for i in idx]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        by_index.update(zip(idx, texts))
    outputs = [by_index[i].strip() for i in range(len(questions))]
    return outputs


def score(problems: list[SyntheticProblem], outputs: list[str]) -> list[EvalResult]:
    results = []
    for p, out in zip(problems, outputs):
        pred = extract_answer(out)
        correct = pred is not None and int(pred) == int(p.answer)
        results.append(EvalResult(p.id, p.family, p.n_steps, p.answer, pred, correct, out))
    return results


def evaluate(model_dir: str | Path, problems: list[SyntheticProblem], batch_size: int = 32,
             max_new_tokens: int = 256) -> list[EvalResult]:
    """Greedy accuracy check of the model in `model_dir`: one EvalResult per problem."""
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, tokenizer = load_model(model_dir)
    outputs = generate_solutions(model, tokenizer, [p.question for p in problems], batch_size, max_new_tokens)
    return score(problems, outputs)


def summarize(results: list[EvalResult]) -> dict:
    """Accuracy overall, by step count and by family."""
    def acc(rs: list[EvalResult]) -> dict:
        return {"n": len(rs), "accuracy": sum(r.correct for r in rs) / len(rs) if rs else 0.0}

    return {
        "overall": acc(results),
        "by_steps": {k: acc([r for r in results if r.n_steps == k]) for k in sorted({r.n_steps for r in results})},
        "by_family": {f: acc([r for r in results if r.family == f]) for f in sorted({r.family for r in results})},
    }


def completion_losses(model_dir: str | Path, problems: list[SyntheticProblem], seed: int = 0,
                      batch_size: int = 16) -> dict:
    """How well the model reads each training format: mean loss (nats per completion token) on CoT rows (the gold
    solution) and on paper-format correction rows (a synthetic wrong solution of the same problems and the reference
    correction), framed exactly as the trainer frames them. A model that never saw the correction format scores
    several nats there (the committed v1 model: 5.66 on real collected corrections)."""
    import random

    import torch

    from lema.core.formats import cot_prompt
    from lema.core.rendering import encode_row
    from lema.tiny.data import Example, collate
    from lema.tiny.drills import correction_row

    model, tokenizer = load_model(model_dir)
    rng = random.Random(seed)
    rows: dict[str, list] = {"cot": [], "correction": []}
    for p in problems:
        rows["cot"].append(encode_row(tokenizer, cot_prompt(p.question), p.gold_solution))
        row = correction_row(p, rng)
        if row is not None:
            rows["correction"].append(encode_row(tokenizer, *row))
    report = {}
    for name, encoded in rows.items():
        total, count = 0.0, 0
        for start in range(0, len(encoded), batch_size):
            batch = [Example(r.input_ids, 0, r.completion_mask) for r in encoded[start:start + batch_size]]
            ids, mask, labels = collate(batch, tokenizer.pad_token_id)  # right padding: training's positions
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
            target = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                     ignore_index=-100, reduction="sum")
            total += float(loss)
            count += int((target != -100).sum())
        report[name] = {"rows": len(encoded), "tokens": count, "loss_per_token": total / count if count else None}
    return report
