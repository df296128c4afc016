"""QLoRA fine-tuning with TRL's SFTTrainer: a 4-bit nf4 base (double quantisation), LoRA on all linear layers,
loss on the completion only, checkpoints that a killed run resumes from.

CPU notes (measured; docs/development.md, 'The CPU stack'): keep compute in float32, gradient checkpointing off, bf16 off; TRL casts LoRA
weights to bf16 on a 4-bit base whatever the flag says, so trainable parameters are cast back to float32
after the trainer is built (1.30 -> 0.50 s/step on a tiny model).

Memory (measured; bench/RESULTS.md, 'Trainer memory'): the peak is set by the activations of one forward pass, about
2.5 MB per token for SmolLM2-135M (30 layers, fp32, LoRA dropout copies of every adapted layer's input), so a
recipe's `micro_batch_size` bounds the rows in one forward and gradient accumulation makes up the batch. The loss
(`completion_loss`) projects only the completion positions through the LM head, in chunks, and computes no metrics
on the logits (TRL's fused head on a CPU scores every position, prompt and padding included, and its entropy and
token accuracy).

Several processes (`lema.trainer.distributed` under `accelerate launch` or torchrun; deploy/accelerate/): the same
function runs on every rank. The recipe's batch stays the global batch (rows per optimizer step), split evenly over
the ranks (`rank_batch`), so a recipe takes the same optimizer steps on the same rows whatever the rank count and a
checkpoint resumes on another rank count. Only rank 0 reports progress and writes the adapter.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lema.core.errors import InvalidInput
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
    world_size: int = 1
    # Per rank: {"rank", "rows", "forward_passes"}: the rows each process trained on (all ranks, in rank order).
    ranks: list[dict] = field(default_factory=list)


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


class DatasetError(InvalidInput):
    """A training file the trainer refuses; the message names the file and the row."""


def read_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) for every training row of a JSONL file; DatasetError names the first bad line. Cheap (no
    tokenizer): `StartRun` reads the whole file with it before accepting a run."""
    with path.open() as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                prompt, completion = row["prompt"], row["completion"]
            except (ValueError, KeyError, TypeError) as exc:
                raise DatasetError(f"{path.name} line {number}: not a prompt/completion JSON object "
                                   f"({str(exc)[:120]})") from None
            if not isinstance(prompt, str) or not isinstance(completion, str) or not completion.strip():
                raise DatasetError(f"{path.name} line {number}: 'prompt' and 'completion' must be strings, "
                                   "the completion not empty")
            if not isinstance(row.get("context", ""), str):
                raise DatasetError(f"{path.name} line {number}: 'context' must be a string")
            yield number, row


def check_dataset(path: Path) -> int:
    """The number of training rows; DatasetError for a file that `train` would refuse before tokenizing."""
    count = sum(1 for _ in read_rows(path))
    if not count:
        raise DatasetError(f"{path.name} has no training examples")
    return count


def encode_dataset(tokenizer, path: Path, max_seq_len: int) -> list[dict]:
    """Tokenize every export row exactly as it will train (lema.core.rendering) and refuse the file if any row is
    longer than `max_seq_len`: TRL would cut it at the end, and the end is the completion (for a correction, the
    corrected steps, the answer line and the end token). `lema export --max-seq-len` shortens or drops such rows."""
    from lema.core.rendering import encode_row

    rows = []
    for number, row in read_rows(path):
        encoded = encode_row(tokenizer, row["prompt"], row["completion"], row.get("context", ""))
        if encoded.length > max_seq_len:
            raise DatasetError(
                f"{path.name} line {number} (problem {row.get('problem_id', '?')}, {row.get('type', '?')}): "
                f"{encoded.prompt_length} prompt + {encoded.length - encoded.prompt_length} completion tokens = "
                f"{encoded.length} > max_seq_len {max_seq_len}; the completion would be cut. Re-export with "
                f"`lema export --max-seq-len {max_seq_len}` (shortens or drops over-long rows) or raise "
                "max_seq_len")
        rows.append({"input_ids": encoded.input_ids, "completion_mask": encoded.completion_mask})
    if not rows:
        raise DatasetError(f"{path.name} has no training examples")
    return rows


LOSS_CHUNK = 1024  # completion positions projected through the LM head at once


def completion_loss(model, inputs: dict, num_items_in_batch=None):
    """The causal-LM loss on the completion tokens only (labels != -100), summed and divided by
    `num_items_in_batch` (the Trainer's count of such tokens over all micro-batches of an optimizer step; their
    count in this batch when None): the same value as TRL's SFTTrainer loss and the model's own.

    Only the completion positions go through the LM head, `LOSS_CHUNK` at a time; above one chunk each chunk's logits
    are recomputed in the backward pass instead of kept, so the logits never cost more than one chunk x vocabulary.
    Returns (loss, number of completion tokens). `model` is a causal LM, or a PEFT model wrapping one."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, base.base_model_prefix)
    head = base.get_output_embeddings()
    labels = inputs["labels"]
    forward_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    forward_inputs["use_cache"] = False
    hidden = backbone(**forward_inputs).last_hidden_state
    targets = labels[:, 1:]
    mask = targets != -100
    hidden = hidden[:, :-1][mask]
    targets = targets[mask]

    def chunk_loss(h, y):
        return F.cross_entropy(head(h).float(), y, reduction="sum")

    n = targets.numel()
    if n <= LOSS_CHUNK:
        total = chunk_loss(hidden, targets)
    else:
        total = sum(checkpoint(chunk_loss, hidden[i:i + LOSS_CHUNK], targets[i:i + LOSS_CHUNK], use_reentrant=False)
                    for i in range(0, n, LOSS_CHUNK))
    divisor = n if num_items_in_batch is None else num_items_in_batch
    return total / torch.as_tensor(divisor, device=total.device).clamp(min=1), n


def supports_completion_loss(model) -> bool:
    """Whether `completion_loss` computes this model's loss: a plain LM head (no logit scaling or soft-capping)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.get_text_config()
    plain = all(getattr(config, name, None) in (None, 1.0) for name in
                ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"))
    return plain and hasattr(base, getattr(base, "base_model_prefix", "") or "-") and \
        base.get_output_embeddings() is not None


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    found = sorted(checkpoint_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return found[-1] if found else None


def world() -> tuple[int, int, int]:
    """(rank, local rank, world size) as the launcher (torchrun, `accelerate launch`) set them; (0, 0, 1) in a
    plain process. Read from the environment because the model loads before the Trainer joins the process group."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)))


def fsdp_enabled() -> bool:
    """Launched with an FSDP accelerate config (`accelerate launch` exports this for the Trainer's Accelerator)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")


def rank_batch(recipe: Recipe, world_size: int) -> tuple[int, int]:
    """(rows per forward pass, forward passes per optimizer step) on each of `world_size` ranks.

    The recipe's effective batch is the global batch: each rank takes an equal share of it, in the largest
    micro-batches that divide the share and are no larger than the recipe's (they bound the memory). One rank gets
    exactly the recipe's micro-batch and accumulation. The same global batch on any rank count keeps the optimizer
    steps, and so the steps a checkpoint counts, the same: a 2-rank checkpoint resumes on 1 rank at the right place
    in the data."""
    rows = recipe.effective_batch
    if rows % world_size:
        raise ValueError(f"the recipe's batch ({recipe.batch_size} x grad_accum {recipe.grad_accum} = {rows} rows "
                         f"per optimizer step) does not split evenly over {world_size} ranks")
    share = rows // world_size
    micro = max(d for d in range(1, min(recipe.micro_batch, share) + 1) if share % d == 0)
    return micro, share // micro


def load_quantized_base(recipe: Recipe, model_path: str):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    q = recipe.quantization
    kwargs = {"dtype": torch.float32}
    if q.load_in_4bit:
        storage = getattr(torch, q.quant_storage)
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=q.quant_type,
            bnb_4bit_use_double_quant=q.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype),
            bnb_4bit_quant_storage=storage,
        )
        if storage.is_floating_point:  # FSDP: every weight of a wrapped block in the quantised weights' dtype
            kwargs["dtype"] = storage
    _, local_rank, world_size = world()
    if torch.cuda.is_available() and world_size > 1 and not fsdp_enabled():
        # DDP: each process holds the whole 4-bit base on its own GPU, named here rather than left to whichever
        # CUDA device is current when the model loads (accelerate refuses a 4-bit model on another GPU than its
        # rank's). FSDP gets no device map, as in the PEFT FSDP-QLoRA guide: FSDP places and shards the weights.
        kwargs["device_map"] = {"": local_rank}
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
    if fsdp_enabled() and recipe.quantization.load_in_4bit and \
            recipe.quantization.quant_storage != recipe.quantization.compute_dtype:
        raise ValueError("FSDP shards the 4-bit base only when quantization.quant_storage equals "
                         f"quantization.compute_dtype (got {recipe.quantization.quant_storage} and "
                         f"{recipe.quantization.compute_dtype}): set both to bfloat16")
    rank, _, world_size = world()
    micro_batch, accumulation = rank_batch(recipe, world_size)
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
        # The batch (batch_size x grad_accum rows per optimizer step, over all ranks) runs micro_batch_size rows
        # per forward pass.
        per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=accumulation,
        max_length=recipe.max_seq_len,
        packing=recipe.packing,
        train_sampling_strategy=(("group_by_length" if recipe.group_by_length else "random") if recipe.shuffle
                                 else "sequential"),
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
        gradient_checkpointing=recipe.gradient_checkpointing,
        use_cpu=cpu,
        report_to=[],
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    lora = LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
                      target_modules=recipe.lora.target_modules, modules_to_save=recipe.lora.modules_to_save,
                      task_type="CAUSAL_LM")

    started = time.perf_counter()
    seen = {"tokens": 0.0, "rows": 0, "forward_passes": 0, "stopped": False}

    class Progress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" not in logs or not state.is_world_process_zero:
                return
            elapsed = max(time.perf_counter() - started, 1e-9)
            tokens = float(logs.get("num_tokens") or 0)
            seen["tokens"] = tokens
            on_progress({"step": state.global_step, "total_steps": state.max_steps, "loss": float(logs["loss"]),
                         "learning_rate": float(logs.get("learning_rate", 0.0)), "epoch": float(state.epoch or 0),
                         "grad_norm": float(logs.get("grad_norm") or 0.0),
                         "tokens_per_second": float(tokens) / elapsed if tokens else 0.0})

        def on_step_end(self, args, state, control, **kwargs):
            stop = should_stop()
            if args.world_size > 1:
                # Every rank must stop at the same step: a rank that stopped alone would leave the others waiting
                # in the next gradient all-reduce. SIGTERM reaches the ranks at different moments, so they agree
                # here (one tiny all-reduce per optimizer step).
                import torch.distributed as dist

                flag = torch.tensor([1.0 if stop else 0.0], device=args.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop = bool(flag.item())
            if stop:  # cancelled: stop at this step boundary, saving a checkpoint to resume from
                seen["stopped"] = True
                control.should_save = True
                control.should_training_stop = True
            return control

    class Trainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.model.training:  # the rows this rank trains on (gathered at the end: did every rank train?)
                seen["rows"] += int(inputs["input_ids"].shape[0])
                seen["forward_passes"] += 1
            inner = self.accelerator.unwrap_model(model)
            if return_outputs or not supports_completion_loss(inner) or "labels" not in inputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if inner is model:
                loss, _ = completion_loss(model, inputs, num_items_in_batch)
            else:
                loss = wrapped_completion_loss(model, inputs, num_items_in_batch)
            if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs and \
                    num_items_in_batch is not None:
                # As the Trainer's own loss does: num_items_in_batch counts the tokens of all ranks, and DDP
                # averages the ranks' gradients, so each rank's sum / global count is scaled back by the rank count
                # (x1 in one process). Without it the gradient, and so every update, would shrink by that factor.
                loss = loss * self.accelerator.num_processes
            if self.model.training:  # num_tokens, as TRL logs it (the Progress callback reads it)
                counted = inputs["attention_mask"] if "attention_mask" in inputs else inputs["input_ids"]
                tokens = counted.sum() if "attention_mask" in inputs else torch.tensor(counted.numel())
                if self.accelerator.num_processes > 1:  # every rank's tokens, as TRL counts them
                    tokens = self.accelerator.gather(tokens.to(self.accelerator.device)).sum()
                self._total_train_tokens += int(tokens)
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return loss

    trainer = Trainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                      peft_config=lora, callbacks=[Progress()])
    # With tqdm off the HF Trainer prints every log dict ({'loss': ...}); on_progress reports progress instead.
    trainer.remove_callback(PrinterCallback)
    if not fsdp_enabled():  # FSDP flattens a block's LoRA and (bf16-stored) base weights into one bf16 tensor
        for parameter in trainer.model.parameters():
            if parameter.requires_grad and parameter.dtype != torch.float32:
                parameter.data = parameter.data.float()
    resume = latest_checkpoint(checkpoints)
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - started
    cancelled = seen["stopped"] or (world_size == 1 and should_stop())
    adapter_dir = run_dir / "adapter"
    save_adapter(trainer, adapter_dir)
    ranks = [{"rank": rank, "rows": seen["rows"], "forward_passes": seen["forward_passes"]}]
    if world_size > 1:
        import torch.distributed as dist

        gathered: list = [None] * world_size
        dist.all_gather_object(gathered, ranks[0])
        ranks = gathered
    num_tokens = seen["tokens"]
    return TrainResult(adapter_dir=adapter_dir, steps=trainer.state.global_step,
                       train_loss=float(output.training_loss), seconds=seconds,
                       tokens_per_second=(num_tokens / seconds) if num_tokens else 0.0, cancelled=cancelled,
                       world_size=world_size, ranks=ranks)


def wrapped_completion_loss(wrapper, inputs: dict, num_items_in_batch=None):
    """`completion_loss` through a DDP (or FSDP) wrapper's own forward pass.

    `completion_loss` calls the backbone and the LM head directly; called on the inner model under DDP it would
    skip DDP's forward, which is what arms the gradient all-reduce of the backward pass (the ranks' adapters would
    silently drift apart), and under FSDP the root's weights (embeddings, head) would stay sharded. So for this one
    call the wrapped module's forward *is* `completion_loss`: DDP/FSDP run their pre- and post-forward work around
    it as around any forward."""
    module = wrapper.module
    previous = module.__dict__.get("forward")  # accelerate may have put an autocast forward on the instance
    module.forward = lambda **batch: completion_loss(module, batch, num_items_in_batch)[0]
    try:
        return wrapper(**inputs)
    finally:
        if previous is None:
            del module.forward
        else:
            module.forward = previous


def save_adapter(trainer, adapter_dir: Path) -> None:
    """The PEFT adapter (config + weights only: no tokenizer, no pickled training arguments), written by rank 0.

    Under FSDP the LoRA weights are sharded: every rank takes part in gathering the full state dict (the PEFT
    guide's FULL_STATE_DICT), and PEFT keeps only the adapter's entries of it."""
    accelerator = trainer.accelerator
    state_dict = None
    if getattr(trainer, "is_fsdp_enabled", False):
        accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        state_dict = accelerator.get_state_dict(trainer.model)
    if accelerator.is_main_process:
        accelerator.unwrap_model(trainer.model).save_pretrained(str(adapter_dir), state_dict=state_dict)
    accelerator.wait_for_everyone()
