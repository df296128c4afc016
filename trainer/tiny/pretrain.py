"""Pretrain lema-tiny from scratch on synthetic problems: a plain torch loop, nanoGPT style.

1. train a BPE tokenizer on synthetic problems;
2. build a small LlamaForCausalLM;
3. for each curriculum stage, train on fresh problems (each seen once; easy stages first);
4. every `eval.every` steps, greedy-decode validation problems and stop once accuracy reaches
   `eval.stop_at_accuracy`: lema-tiny is meant to be partly competent, making real mistakes;
5. save weights (safetensors), generation config and tokenizer.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

from lema.core.synthetic import Limits, canonical_key, generate
from lema.tiny.data import collate, encode_problems, make_batches
from lema.tiny.drills import (
    copy_examples,
    correction_examples,
    correction_texts,
    drill_examples,
    random_copy_examples,
)
from lema.tiny.recipe import Recipe
from lema.tiny.tokenizer import save_tokenizer, train_tokenizer
from lema.trainer.tiny.evaluate import evaluate_loaded

VAL_SEED_OFFSET = 7919  # validation problems come from another seed than any training stage


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def build_model(recipe: Recipe, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    m = recipe.model
    if m.hidden_size // m.num_heads < 32:
        raise ValueError("head size must be >= 32 (vLLM's CPU attention)")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads, num_key_value_heads=m.num_heads,
        max_position_embeddings=m.max_position_embeddings, tie_word_embeddings=m.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def lr_at(step: int, recipe: Recipe) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio * lr over the whole curriculum."""
    t = recipe.training
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, recipe.total_steps - t.warmup_steps)
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def make_optimizer(model, recipe: Recipe):
    import torch

    # No weight decay on norms (1-D parameters).
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": recipe.training.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.training.lr, betas=(0.9, 0.95))


def save(model, tokenizer, out_dir: Path, summary: dict) -> None:
    from transformers import GenerationConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False, max_new_tokens=256,
    )
    model.save_pretrained(str(out_dir))
    save_tokenizer(tokenizer, out_dir)
    (out_dir / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def validate(model, tokenizer, problems, recipe: Recipe) -> dict:
    """Greedy accuracy of the live weights on the validation problems (lema's one evaluator: the transformers
    engine over the model in memory, then the verifier); the model goes back to training mode after."""
    try:
        result = evaluate_loaded(model, tokenizer, problems, recipe.eval.max_new_tokens, batch_size=32,
                                 model_id="lema-tiny-pretraining", split="validation")
    finally:
        model.train()
    return result.summary()


def stage_batches(recipe: Recipe, stage, stage_index: int, seed: int, tokenizer, val_keys: set[str],
                  rng: random.Random) -> list:
    """The stage's batches: fresh problems (validation problems removed) and drill batches, interleaved."""
    t = recipe.training
    limits = Limits(max_value=stage.max_value)
    n_drill = round(stage.train_steps * stage.drill_fraction)
    n_copy = round(stage.train_steps * stage.copy_fraction)
    n_random = round(stage.train_steps * stage.random_copy_fraction)
    n_correction = round(stage.train_steps * stage.correction_fraction)
    n_problem = stage.train_steps - n_drill - n_copy - n_random - n_correction
    # About 3 in 4 drawn corruptions apply (errors.wrong_solution): draw 1.5x the problems correction batches need.
    n_for_corrections = int(n_correction * t.batch_size * 1.5)
    n_needed = (n_problem + n_copy) * t.batch_size + n_for_corrections + len(val_keys)
    problems = generate(n_needed, seed=seed * 1000 + stage_index, split="pretrain", steps=tuple(stage.steps),
                        limits=limits, distinct=False) if n_needed > len(val_keys) else []
    problems = [p for p in problems if canonical_key(p.family, p.program) not in val_keys]
    copied, problems = problems[:n_copy * t.batch_size], problems[n_copy * t.batch_size:]
    wrong, problems = problems[:n_for_corrections], problems[n_for_corrections:]
    batches = []
    if n_problem:
        batches += make_batches(encode_problems(tokenizer, problems), t.batch_size, rng)[:n_problem]
    if n_copy:
        batches += make_batches(copy_examples(tokenizer, [p.question for p in copied]), t.batch_size, rng)
    if n_random:
        batches += make_batches(random_copy_examples(tokenizer, n_random * t.batch_size, rng), t.batch_size, rng)
    if n_drill:
        drills = drill_examples(tokenizer, n_drill * t.batch_size, rng, limits)
        batches += make_batches(drills, t.batch_size, rng)
    if n_correction:
        corrections = correction_examples(tokenizer, wrong, rng, recipe.model.max_position_embeddings)
        batches += make_batches(corrections, t.batch_size, rng)[:n_correction]
    rng.shuffle(batches)
    return batches


def pretrain(recipe: Recipe, out_dir: Path, seed: int | None = None) -> dict:
    import torch

    seed = recipe.seed if seed is None else seed
    torch.set_num_threads(recipe.training.threads)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    started = time.time()

    tok_problems = generate(recipe.tokenizer.train_problems, seed=seed, split="pretrain")
    tok_texts = [p.question + "\n" + p.gold_solution for p in tok_problems]
    n_corrections = round(len(tok_problems) * recipe.tokenizer.correction_fraction)
    if n_corrections:  # the correction format's words get tokens of their own (a separate rng: v1 stays reproducible)
        tok_texts += correction_texts(tok_problems[:n_corrections], random.Random(f"tokenizer:{seed}"))
    tokenizer = train_tokenizer(tok_texts, recipe.tokenizer.vocab_size, recipe.tokenizer.numbers)
    model = build_model(recipe, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"tokenizer {len(tokenizer)} tokens; model {n_params / 1e6:.2f}M parameters")

    val = generate(recipe.eval.problems, seed=seed + VAL_SEED_OFFSET, split="pretrain")
    val_keys = {canonical_key(p.family, p.program) for p in val}

    optimizer = make_optimizer(model, recipe)
    t = recipe.training
    step, tokens, train_seconds = 0, 0, 0.0
    history: list[dict] = []
    stopped_early = False

    def evaluate(at_step: int) -> float:
        summary = validate(model, tokenizer, val, recipe)
        acc = summary["overall"]["accuracy"]
        by_steps = {k: round(v["accuracy"], 2) for k, v in summary["by_steps"].items()}
        history.append({"step": at_step, "accuracy": acc, "by_steps": by_steps,
                        "elapsed_s": round(time.time() - started)})
        log(f"eval step {at_step}: accuracy {acc:.3f} by steps {by_steps}")
        return acc

    def save_result(at_step: int, early: bool) -> dict:
        result = {
            "seed": seed, "steps": at_step, "tokens": tokens, "params": n_params,
            "wall_seconds": round(time.time() - started), "train_seconds": round(train_seconds),
            "tokens_per_second": round(tokens / max(train_seconds, 1e-9)), "validation": history,
            "stopped_early": early, "recipe": recipe.model_dump(mode="json"),
        }
        save(model, tokenizer, out_dir, result)
        return result

    model.train()
    for stage_index, stage in enumerate(recipe.curriculum):
        batches = stage_batches(recipe, stage, stage_index, seed, tokenizer, val_keys, rng)
        log(f"stage {stage.name}: {len(batches)} batches, steps {stage.steps}, numbers <= {stage.max_value}, "
            f"arithmetic drills {stage.drill_fraction:.0%}, copy drills {stage.copy_fraction:.0%} "
            f"(random {stage.random_copy_fraction:.0%}), corrections {stage.correction_fraction:.0%}")
        for batch in batches:
            tick = time.time()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, recipe)
            ids, mask, labels = collate(batch, tokenizer.pad_token_id, t.loss_on)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens += int(mask.sum())
            train_seconds += time.time() - tick
            if step % 20 == 0:
                log(f"step {step}/{recipe.total_steps} loss {loss.item():.3f} lr {lr_at(step, recipe):.2e} "
                    f"{tokens / train_seconds:.0f} tok/s, {time.time() - started:.0f}s elapsed")
            is_last = step == recipe.total_steps
            if (step % recipe.eval.every == 0 and step >= recipe.eval.start_step) or is_last:
                acc = evaluate(step)
                final_stage = stage_index == len(recipe.curriculum) - 1
                stopped_early = final_stage and acc >= recipe.eval.stop_at_accuracy and not is_last
                result = save_result(step, stopped_early)
                if stopped_early:
                    log(f"validation accuracy {acc:.3f} >= {recipe.eval.stop_at_accuracy}: stopping")
                    return result
    if not history or history[-1]["step"] != step:  # the batches ran out before total_steps or an evaluation
        evaluate(step)
        return save_result(step, False)
    return result
