"""QLoRA fine-tuning with TRL's SFTTrainer: a 4-bit nf4 base (double quantisation), LoRA on all linear layers,
loss on the completion only, checkpoints that a killed run resumes from.

CPU notes (measured; README, 'The CPU stack'): keep compute in float32, gradient checkpointing off, bf16 off; TRL casts LoRA
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
    """Export rows in TRL's conversational prompt-completion form: what plain TRL gets in `bench/trainer.py`.
    lema's own trainer tokenizes rows itself (`encode_dataset`)."""
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


class DatasetError(ValueError):
    """A training file the trainer refuses; the message names the file and the row."""


def encode_dataset(tokenizer, path: Path, max_seq_len: int) -> list[dict]:
    """Tokenize every export row exactly as it will train (lema.core.rendering) and refuse the file if any row is
    longer than `max_seq_len`: TRL would cut it at the end, and the end is the completion (for a correction, the
    corrected steps, the answer line and the end token). `lema export --max-seq-len` shortens or drops such rows."""
    from lema.core.rendering import encode_row

    rows = []
    with path.open() as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                prompt, completion = row["prompt"], row["completion"]
            except (ValueError, KeyError, TypeError) as exc:
                raise DatasetError(f"{path.name} row {number}: not a prompt/completion JSON object ({exc})") from None
            if not isinstance(prompt, str) or not isinstance(completion, str) or not completion.strip():
                raise DatasetError(f"{path.name} row {number}: 'prompt' and 'completion' must be strings, "
                                   "the completion not empty")
            context = row.get("context", "")
            if not isinstance(context, str):
                raise DatasetError(f"{path.name} row {number}: 'context' must be a string")
            encoded = encode_row(tokenizer, prompt, completion, context)
            if encoded.length > max_seq_len:
                raise DatasetError(
                    f"{path.name} row {number} (problem {row.get('problem_id', '?')}, {row.get('type', '?')}): "
                    f"{encoded.prompt_length} prompt + {encoded.length - encoded.prompt_length} completion tokens = "
                    f"{encoded.length} > max_seq_len {max_seq_len}; the completion would be cut. Re-export with "
                    f"`lema export --max-seq-len {max_seq_len}` (shortens or drops over-long rows) or raise "
                    "max_seq_len")
            rows.append({"input_ids": encoded.input_ids, "completion_mask": encoded.completion_mask})
    if not rows:
        raise DatasetError(f"{path.name} has no training examples")
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
    from transformers import AutoTokenizer, PrinterCallback, TrainerCallback
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
    # Refuse a bad dataset before the (slow) model load.
    dataset = Dataset.from_list(encode_dataset(tokenizer, data_path, recipe.max_seq_len))
    model = load_quantized_base(recipe, model_path)
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
        train_sampling_strategy="group_by_length" if recipe.group_by_length else "random",
        completion_only_loss=recipe.completion_only_loss,
        seed=recipe.seed,
        data_seed=recipe.seed,
        save_strategy="steps",
        save_steps=recipe.save_steps,
        # best_validation chooses among every saved checkpoint; otherwise two suffice to resume.
        save_total_limit=None if recipe.select_checkpoint == "best_validation" else 2,
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
    # With tqdm off the HF Trainer prints every log dict ({'loss': ...}); on_progress reports progress instead.
    trainer.remove_callback(PrinterCallback)
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
