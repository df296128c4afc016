"""lema-tiny's model on disk: loading it and measuring how well it reads each training format (`completion_losses`).
Greedy accuracy goes through lema's one evaluator, `lema.trainer.evaluate.evaluate_engine` (`evaluate_loaded` here, for
`lema models eval-tiny` and lema-tiny's pretraining), which reads answers with the verifier like every other consumer."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lema.core.synthetic import SyntheticProblem

if TYPE_CHECKING:
    from lema.trainer.evaluate import EvalResult


def load_model(model_dir: str | Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer.padding_side = "left"  # batched generation continues every prompt from its last token
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    model.eval()
    return model, tokenizer


def evaluate_loaded(model, tokenizer, problems: list[SyntheticProblem], max_new_tokens: int = 256,
                    batch_size: int = 32, model_id: str = "lema-tiny", split: str = "test") -> EvalResult:
    """Greedy accuracy of a model already in memory (the live weights during pretraining) through the one evaluator:
    the transformers engine over these weights, then the verifier. The engine puts the model in eval mode; a caller
    that goes on training sets `model.train()` again."""
    import asyncio

    from lema.core.engines.transformers_engine import TransformersEngine
    from lema.trainer.evaluate import evaluate_engine

    async def run() -> EvalResult:
        engine = TransformersEngine.from_loaded(model, tokenizer, model_id=model_id, batch_size=batch_size)
        try:
            return await evaluate_engine(engine, problems, max_new_tokens, split=split)
        finally:
            await engine.close()

    return asyncio.run(run())


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
