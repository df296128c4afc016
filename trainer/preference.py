"""The step-level preference arm (beyond the paper): each correction gives a pair at the model's first wrong step —
the same prefix (question and the model's own correct steps), chosen = the corrected solution from that step on,
rejected = the model's own continuation — trained with TRL's `DPOTrainer` on top of the CoT-only adapter.

The policy is the CoT-only adapter itself, trained further (so the result is one adapter on the base model that the
endpoint serves like any other); the reference is the same adapter merged and frozen. The base is loaded in float32
(not 4-bit): a LoRA adapter cannot be merged into 4-bit weights for the reference, and this arm is for models small
enough to run it on a CPU (lema-tiny); QLoRA DPO on a GPU is not built here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from lema.trainer.recipe import Recipe
from lema.trainer.train import DatasetError, TrainResult


def first_step(text: str) -> str:
    """The first step line of a continuation, through its newline."""
    end = text.find("\n")
    return text if end < 0 else text[:end + 1]


def load_pairs(tokenizer, path: Path, max_seq_len: int, keep: set[str] | None = None,
               rejected: str = "first_step") -> list[dict]:
    """Pairs as DPOTrainer text rows: the prompt framed as the engines frame it plus the model's own steps; rows
    longer than `max_seq_len` are refused by row (TRL would cut the continuation).

    The rejected side is by default only the model's first wrong step, not its whole wrong continuation: about 73% of the
    equations in the model's wrong continuations are arithmetically right (the mistake is a wrong operand, and later
    steps compute correctly on wrong numbers), and DPO pushes down every rejected token, so a whole rejected
    continuation taught the model to copy and compute worse (validation 59.6% -> 35.8%)."""
    from lema.core.rendering import render_prompt

    rows = []
    for number, line in enumerate(path.open(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if keep is not None and row.get("correction_id") not in keep:
            continue
        prompt = render_prompt(tokenizer, [{"role": "user", "content": row["prompt"]}]) + row.get("context", "")
        n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        for side in ("chosen", "rejected"):
            n = n_prompt + len(tokenizer(row[side], add_special_tokens=False)["input_ids"]) + 1
            if n > max_seq_len:
                raise DatasetError(f"{path.name} row {number}: prompt + {side} = {n} tokens > max_seq_len "
                                   f"{max_seq_len}; the {side} continuation would be cut")
        rows.append({"prompt": prompt, "chosen": row["chosen"],
                     "rejected": first_step(row["rejected"]) if rejected == "first_step" else row["rejected"]})
    if not rows:
        raise DatasetError(f"{path.name} has no preference pairs")
    return rows


def train_preference(recipe: Recipe, pairs_path: Path, start_adapter: Path, run_dir: Path,
                     keep: set[str] | None = None,
                     on_progress: Callable[[dict], None] | None = None) -> tuple[TrainResult, int]:
    """DPO from `start_adapter` on the pairs (those of `keep` corrections only); the result and the pair count."""
    import torch
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from lema.core.model_resolve import resolve_model

    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    settings = recipe.preference
    model_path = resolve_model(recipe.base_model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    pairs = load_pairs(tokenizer, pairs_path, recipe.max_seq_len, keep, settings.rejected)
    dataset = Dataset.from_list(pairs)
    torch.manual_seed(recipe.seed)
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32),
                                       str(start_adapter), is_trainable=True)
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32),
                                          str(start_adapter)).merge_and_unload().eval()
    config = DPOConfig(
        output_dir=str(run_dir / "checkpoints"), learning_rate=settings.learning_rate, max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size, beta=settings.beta, loss_type=list(settings.loss_type),
        max_length=recipe.max_seq_len, lr_scheduler_type=recipe.lr_scheduler, max_grad_norm=recipe.max_grad_norm,
        seed=recipe.seed, data_seed=recipe.seed, save_strategy="no", logging_steps=recipe.logging_steps,
        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=not torch.cuda.is_available(), report_to=[],
        dataloader_num_workers=0, disable_tqdm=True,
    )
    started = time.perf_counter()
    report = on_progress or (lambda event: None)

    class Progress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                report({"step": state.global_step, "total_steps": state.max_steps, "loss": float(logs["loss"])})

    trainer = DPOTrainer(model=policy, ref_model=reference, args=config, train_dataset=dataset,
                         processing_class=tokenizer, callbacks=[Progress()])
    trainer.remove_callback(PrinterCallback)
    # TRL ends every continuation with EOS; a first step never ends the answer, and "step + EOS" is so unlikely
    # that DPO would win the pair by lowering that one token (and, on the chosen side, teach stopping early).
    eos = tokenizer.eos_token_id

    def no_final_eos(example):
        if example["rejected_ids"] and example["rejected_ids"][-1] == eos:
            example["rejected_ids"] = example["rejected_ids"][:-1]
        return example

    if settings.rejected == "first_step":
        trainer.train_dataset = trainer.train_dataset.map(no_final_eos)
    output = trainer.train()
    adapter_dir = run_dir / "adapter"
    trainer.model.save_pretrained(str(adapter_dir))
    result = TrainResult(adapter_dir=adapter_dir, steps=trainer.state.global_step,
                         train_loss=float(output.training_loss), seconds=time.perf_counter() - started,
                         tokens_per_second=0.0)
    return result, len(pairs)
