"""QLoRA fine-tuning with TRL's SFTTrainer: a 4-bit nf4 base (double quantisation), LoRA on all linear layers,
loss on the completion only, checkpoints that a killed run resumes from.

CPU notes (measured, STACK.md): keep compute in float32, gradient checkpointing off, bf16 off; TRL casts LoRA
weights to bf16 on a 4-bit base whatever the flag says, so trainable parameters are cast back to float32
after the trainer is built (1.30 -> 0.50 s/step on a tiny model).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lema.trainer.recipe import Recipe

ProgressFn = Callable[[dict], None]


@dataclass
class TrainResult:
    adapter_dir: Path
    steps: int
    train_loss: float
    seconds: float
    tokens_per_second: float
    cancelled: bool = False


def load_examples(path: Path) -> list[dict]:
    """Export rows (prompt/completion strings) in TRL's conversational prompt-completion form, so the model's own
    chat template frames them exactly as the reasoner will at inference time."""
    rows = []
    with path.open() as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                rows.append({"prompt": [{"role": "user", "content": row["prompt"]}],
                             "completion": [{"role": "assistant", "content": row["completion"]}]})
    if not rows:
        raise ValueError(f"{path} has no training examples")
    return rows


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    found = sorted(checkpoint_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return found[-1] if found else None


def load_quantized_base(recipe: Recipe, model_path: str):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    q = recipe.quantization
    kwargs = {"dtype": torch.float32}
    if q.load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=q.quant_type,
            bnb_4bit_use_double_quant=q.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype),
        )
    return AutoModelForCausalLM.from_pretrained(model_path, **kwargs)


def train(recipe: Recipe, data_path: Path, run_dir: Path, on_progress: ProgressFn | None = None,
          should_stop: Callable[[], bool] | None = None) -> TrainResult:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from lema.core.model_resolve import resolve_model

    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    on_progress = on_progress or (lambda event: None)
    should_stop = should_stop or (lambda: False)
    model_path = resolve_model(recipe.base_model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_quantized_base(recipe, model_path)
    dataset = Dataset.from_list(load_examples(data_path))
    cpu = not torch.cuda.is_available()
    checkpoints = run_dir / "checkpoints"
    config = SFTConfig(
        output_dir=str(checkpoints),
        learning_rate=recipe.learning_rate,
        lr_scheduler_type=recipe.lr_scheduler,
        max_grad_norm=recipe.max_grad_norm,
        num_train_epochs=recipe.epochs,
        max_steps=recipe.max_steps,
        per_device_train_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.grad_accum,
        max_length=recipe.max_seq_len,
        packing=recipe.packing,
        completion_only_loss=recipe.completion_only_loss,
        seed=recipe.seed,
        data_seed=recipe.seed,
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=2,
        logging_steps=recipe.logging_steps,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=cpu,
        report_to=[],
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    lora = LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
                      target_modules=recipe.lora.target_modules, task_type="CAUSAL_LM")

    started = time.perf_counter()
    seen = {"tokens": 0.0}

    class Progress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" not in logs:
                return
            elapsed = max(time.perf_counter() - started, 1e-9)
            tokens = float(logs.get("num_tokens") or 0)
            seen["tokens"] = tokens
            on_progress({"step": state.global_step, "total_steps": state.max_steps, "loss": float(logs["loss"]),
                         "learning_rate": float(logs.get("learning_rate", 0.0)), "epoch": float(state.epoch or 0),
                         "tokens_per_second": float(tokens) / elapsed if tokens else 0.0})

        def on_step_end(self, args, state, control, **kwargs):
            if should_stop():  # cancelled: stop at this step boundary, saving a checkpoint to resume from
                control.should_save = True
                control.should_training_stop = True
            return control

    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora, callbacks=[Progress()])
    for parameter in trainer.model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    resume = latest_checkpoint(checkpoints)
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - started
    cancelled = should_stop()
    adapter_dir = run_dir / "adapter"
    trainer.model.save_pretrained(str(adapter_dir))
    num_tokens = seen["tokens"]
    return TrainResult(adapter_dir=adapter_dir, steps=trainer.state.global_step,
                       train_loss=float(output.training_loss), seconds=seconds,
                       tokens_per_second=(num_tokens / seconds) if num_tokens else 0.0, cancelled=cancelled)
