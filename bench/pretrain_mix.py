"""Corrections in a continued-pretraining mix: one grid cell, common random numbers.

LoRA fine-tuning on a few hundred rows shows no gain from the model's own corrections; Physics of Language Models
2.2 (arXiv 2408.16293) found mistake/correction data pays in *pretraining* (full-parameter, many tokens, fresh
problems). This cell continues lema-tiny's pretraining that way and asks whether swapping a share of the fresh
problems for the model's own corrections helps:

- every arm starts from lema-tiny's weights, trains every parameter with lema-tiny's own loop (AdamW betas
  (0.9, 0.95), weight decay 0.1 on 2-D parameters, gradient clip 1.0, batch 32), a constant learning rate of 2e-4
  (the floor of lema-tiny's cosine), loss on the assistant turn only, the same torch seed per seed;
- "cot": a stream of fresh TRAIN-split problems with their gold solutions (steps 2-6, generated once per seed from
  seed 50,000 + seed: not lema-tiny's pretraining stream nor the exports' collection), STEPS x 32 rows;
- "mix": the same stream with SHARE of its rows, at seed-fixed positions, replaced by the model's own corrections
  in the paper's format (export `correction.jsonl`: question + wrong solution -> incorrect step, explanation,
  corrected solution), in a seed-fixed order, reused when the stream needs more than the export holds;
- "mix_step": the same positions filled from a step-format export (the model's own correct steps as untrained
  context, the corrected steps from the first wrong one as the target).

Framing, exactly as lema-tiny was pretrained: problem rows by `lema.tiny.data.encode_problems` (generation prompt,
gold solution, eos), correction rows by `lema.core.rendering.encode_row` (what `lema.tiny.drills.correction_examples`
uses; the same tokens as `encode_problems` for a CoT row, plus the chat template's newline after eos). Batches are
consecutive runs of 32 stream rows, in stream order (no length sorting: the arms' batches differ only in the
replaced rows).

    python bench/pretrain_mix.py --exports mix=E600 mix_step=E600STEP [--work .lema/pretrain_mix] [--seeds 0,1]
        [--arms cot,mix,mix_step] [--steps 300]

E600 and E600STEP: `lema export` folders of one collection of 600 problems (`lema collect --source
synthetic:600:seed=1000:split=train --samples 4`; the second with `--correction-format step`).
    python bench/pretrain_mix.py --time-steps 5     # seconds per optimizer step (cot and mix batches); trains nothing

Every arm is evaluated greedily on 2,000 "validation" and 200 "validation_hard" problems (never the test splits),
with the reference log-likelihood; plain lema-tiny once. Resumable: each trained and evaluated arm is kept under
WORK/runs/<arm>-s<seed>-<key>/ (the model, trained.json, one JSON per evaluated split) and is not run again.
Writes WORK/pretrain_mix.json: per arm and seed the accuracies, and `lema.trainer.ablation.compare` of every mix arm
against cot and of cot against the base model (mean paired difference, 95% CI, McNemar p, discordance, mde_80,
reference log-likelihood difference), with the seconds each training run took.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import shutil
import sys
import time
from pathlib import Path

# Run as a script, this folder comes first on sys.path, and bench/trainer.py (a benchmark) would shadow the `trainer`
# package: the folder is not an import root.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

STEPS = 300
BATCH = 32
LR = 2e-4  # constant: where lema-tiny's cosine bottoms out (lr 2e-3 x min_lr_ratio 0.1)
WEIGHT_DECAY = 0.1
GRAD_CLIP = 1.0
SHARE = 0.15  # of the stream's rows replaced by corrections in a mix arm (lema-tiny's last stage: 15% corrections)
SEED_OFFSET = 50_000  # the fresh problems' generator seed: seed + this
MAX_LENGTH = 512  # lema-tiny's max_position_embeddings: longer correction rows are left out
DEFAULT_EXPORTS: dict[str, str] = {}  # --exports names them (machine-specific folders)
SPLITS = (("validation", 2000), ("validation_hard", 200))
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def say(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, flush=True)


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def eval_settings():
    from lema.trainer.recipe import load_recipe

    return load_recipe("tiny").eval.model_copy(update={
        "validation_problems": SPLITS[0][1], "hard_problems": SPLITS[1][1], "threads": 1, "batch_size": 128,
        "reference_logprob": True})


def base_path() -> Path:
    from lema.core.model_resolve import resolve_model

    return Path(resolve_model("lema-tiny"))


def load_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(base_path()))


def cot_examples(tokenizer, seed: int, total: int) -> list:
    """The seed's fresh problems, framed as lema-tiny's pretraining frames them."""
    from lema.core.synthetic import generate
    from lema.tiny.data import encode_problems

    problems = generate(total, seed=SEED_OFFSET + seed, split="train", steps=(2, 6))
    return encode_problems(tokenizer, problems)


def correction_examples(tokenizer, export: Path) -> list:
    """An export's correction rows (paper or step format), framed as lema-tiny's pretraining frames corrections."""
    from lema.core.rendering import encode_row
    from lema.tiny.data import Example

    rows = [json.loads(line) for line in (export / "correction.jsonl").read_text().splitlines() if line.strip()]
    out = []
    for row in rows:
        encoded = encode_row(tokenizer, row["prompt"], row["completion"], row.get("context", ""))
        if encoded.length <= MAX_LENGTH:
            out.append(Example(encoded.input_ids, 0, encoded.completion_mask))
    return out


def slots(seed: int, total: int) -> list[int]:
    """The stream positions a mix arm replaces: fixed by the seed, the same for every mix arm."""
    return sorted(random.Random(f"pretrain_mix:slots:{seed}").sample(range(total), round(SHARE * total)))


def stream(tokenizer, arm: str, seed: int, steps: int, exports: dict[str, Path]) -> tuple[list, list[bool]]:
    """An arm's rows in training order, and which of them are corrections."""
    total = steps * BATCH
    rows = cot_examples(tokenizer, seed, total)
    is_correction = [False] * total
    if arm == "cot":
        return rows, is_correction
    pool = correction_examples(tokenizer, exports[arm])
    order_rng = random.Random(f"pretrain_mix:order:{seed}")
    order: list[int] = []
    for position in slots(seed, total):
        if not order:  # a fresh seed-fixed permutation each time the export is used up
            order = list(range(len(pool)))
            order_rng.shuffle(order)
        rows[position] = pool[order.pop()]
        is_correction[position] = True
    return rows, is_correction


def make_optimizer(model):
    import torch

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                              {"params": no_decay, "weight_decay": 0.0}], lr=LR, betas=(0.9, 0.95))


def train(rows: list, is_correction: list[bool], seed: int, tokenizer, max_steps: int | None = None) -> dict:
    """Full-parameter training from lema-tiny's weights on `rows`, BATCH consecutive rows a step. Returns the model
    and the loss history (mean token loss over every trained token, and over the problem rows' tokens alone)."""
    import torch
    from transformers import LlamaForCausalLM

    from lema.tiny.data import collate

    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(str(base_path()), dtype=torch.float32)
    model.train()
    optimizer = make_optimizer(model)
    n_steps = len(rows) // BATCH if max_steps is None else max_steps
    history, window, seconds = [], {"all": [0.0, 0], "cot": [0.0, 0]}, []
    for step in range(n_steps):
        tick = time.perf_counter()
        batch = rows[step * BATCH:(step + 1) * BATCH]
        ids, mask, labels = collate(batch, tokenizer.pad_token_id, "assistant")
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        target = labels[:, 1:]
        per_token = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                                      ignore_index=-100, reduction="none").view_as(target)
        trained = target != -100
        loss = per_token.sum() / trained.sum()  # the mean over trained tokens, as the model's own loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - tick)
        with torch.no_grad():
            cot_rows = ~torch.tensor(is_correction[step * BATCH:(step + 1) * BATCH])
            window["all"][0] += float(per_token.sum())
            window["all"][1] += int(trained.sum())
            window["cot"][0] += float(per_token[cot_rows].sum())
            window["cot"][1] += int(trained[cot_rows].sum())
        if (step + 1) % 25 == 0 or step + 1 == n_steps:
            history.append({"step": step + 1, "loss": window["all"][0] / max(window["all"][1], 1),
                            "cot_loss": window["cot"][0] / max(window["cot"][1], 1)})
            window = {"all": [0.0, 0], "cot": [0.0, 0]}
            say(f"    step {step + 1}/{n_steps} loss {history[-1]['loss']:.4f} (problem rows "
                f"{history[-1]['cot_loss']:.4f}), {sum(seconds) / len(seconds):.2f} s/step")
    return {"model": model, "history": history, "step_seconds": seconds}


def _outcomes(result) -> dict:
    return {"outcomes": result.outcomes, "reference_logprobs": result.reference_logprobs,
            "reference_tokens": result.reference_tokens, "seconds": result.seconds, "n": result.n,
            "accuracy": result.accuracy, "mean_reference_logprob": result.mean_reference_logprob,
            "by_steps": {str(k): v for k, v in result.by_steps.items()}}


def _result(data: dict):
    from lema.trainer.evaluate import EvalResult

    return EvalResult(correct=sum(data["outcomes"]), n=data["n"], outcomes=data["outcomes"],
                      reference_logprobs=data["reference_logprobs"], reference_tokens=data["reference_tokens"],
                      seconds=data["seconds"])


def evaluate_folder(model_dir: Path, run_dir: Path) -> dict:
    """Each split's outcomes of the model in `model_dir`, evaluated once and kept in `run_dir`."""
    from lema.trainer.evaluate import evaluate

    settings = eval_settings()
    out = {}
    for split, n in SPLITS:
        done = run_dir / f"{split}-{n}.json"
        if not done.exists():
            result = asyncio.run(evaluate(str(model_dir), settings, split=split))
            done.write_text(json.dumps(_outcomes(result)))
        out[split] = json.loads(done.read_text())
    return out


def run_arm(arm: str, seed: int, steps: int, exports: dict[str, Path], work: Path, tokenizer) -> dict:
    export = str(exports[arm].resolve()) if arm != "cot" else None
    design = {"arm": arm, "seed": seed, "steps": steps, "batch": BATCH, "lr": LR, "share": SHARE,
              "seed_offset": SEED_OFFSET, "export": export}
    run_dir = work / "runs" / f"{arm}-s{seed}-{_key(design)}"
    trained_file = run_dir / "trained.json"
    if not trained_file.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        rows, is_correction = stream(tokenizer, arm, seed, steps, exports)
        say(f"  {arm} seed {seed}: training {steps} steps x {BATCH} rows ({sum(is_correction)} corrections)")
        started = time.perf_counter()
        trained = train(rows, is_correction, seed, tokenizer)
        train_seconds = time.perf_counter() - started
        model_dir = run_dir / "model"
        trained["model"].save_pretrained(str(model_dir))
        for name in TOKENIZER_FILES:
            if (base_path() / name).exists():
                shutil.copy(base_path() / name, model_dir / name)
        trained_file.write_text(json.dumps({
            **design, "train_seconds": train_seconds, "corrections": sum(is_correction), "rows": len(rows),
            "trained_tokens": sum(sum(r.label_mask) if r.label_mask is not None else len(r.input_ids) - r.n_prompt
                                  for r in rows),
            "loss_history": trained["history"]}, indent=1))
    out = json.loads(trained_file.read_text())
    out.update(evaluate_folder(run_dir / "model", run_dir))
    say(f"  {arm} seed {seed}: train {out['train_seconds']:.0f} s, validation "
        f"{out['validation']['accuracy']:.3f}, hard {out['validation_hard']['accuracy']:.3f}")
    return out


def time_steps(n: int, exports: dict[str, Path]) -> None:
    tokenizer = load_tokenizer()
    for arm in ("cot", *[a for a in ("mix", "mix_step") if a in exports]):
        rows, is_correction = stream(tokenizer, arm, 0, n, exports)
        trained = train(rows, is_correction, 0, tokenizer, max_steps=n)
        s = trained["step_seconds"]
        say(f"{arm}: {sum(s) / len(s):.2f} s/step over {n} steps ({sum(s[1:]) / max(len(s) - 1, 1):.2f} without "
            f"the first); {STEPS} steps: about {STEPS * sum(s) / len(s) / 60:.1f} min")


def summarize(runs: dict[str, list[dict]], base: dict, seeds: list[int], steps: int) -> dict:
    from lema.trainer.ablation import compare

    out: dict = {"design": {"steps": steps, "batch": BATCH, "lr": LR, "share": SHARE, "seed_offset": SEED_OFFSET,
                            "seeds": seeds, "splits": dict(SPLITS)},
                 "base": {split: {"accuracy": base[split]["accuracy"],
                                  "mean_reference_logprob": base[split]["mean_reference_logprob"]}
                          for split, _ in SPLITS},
                 "arms": {arm: [{"seed": r["seed"], "train_seconds": r["train_seconds"],
                                 "corrections": r["corrections"], "final_loss": r["loss_history"][-1],
                                 **{split: {"accuracy": r[split]["accuracy"],
                                            "mean_reference_logprob": r[split]["mean_reference_logprob"]}
                                    for split, _ in SPLITS}} for r in rs] for arm, rs in runs.items()},
                 "comparisons": {}}
    pairs = [(arm, "cot") for arm in runs if arm != "cot" and "cot" in runs] + \
        ([("cot", "base")] if "cot" in runs else [])
    for a, b in pairs:
        out["comparisons"][f"{a}_vs_{b}"] = {}
        for split, _ in SPLITS:
            xs = [_result(r[split]) for r in runs[a]]
            ys = [_result(r[split]) for r in runs[b]] if b != "base" else [_result(base[split])] * len(seeds)
            out["comparisons"][f"{a}_vs_{b}"][split] = compare(xs, ys, seeds, a, b)
    return out


def main() -> None:
    import torch

    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path(".lema/pretrain_mix"))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--arms", default="cot,mix,mix_step", help="in running order; cot is the reference")
    parser.add_argument("--exports", nargs="*", default=[f"{k}={v}" for k, v in DEFAULT_EXPORTS.items()],
                        help="arm=export folder (its correction.jsonl) for each mix arm")
    parser.add_argument("--steps", type=int, default=STEPS, help="optimizer steps per arm (the same for every arm)")
    parser.add_argument("--time-steps", type=int, default=0, help="time this many steps per arm; train nothing")
    args = parser.parse_args()
    exports = {k: Path(v) for k, v in (item.split("=", 1) for item in args.exports)}
    arms = args.arms.split(",")
    missing = [a for a in arms if a != "cot" and a not in exports]
    if missing:
        parser.error(f"--exports has no folder for {', '.join(missing)}")
    if args.time_steps:
        time_steps(args.time_steps, exports)
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    base_dir = args.work / "base"
    base_dir.mkdir(exist_ok=True)
    base = evaluate_folder(base_path(), base_dir)
    say(f"base lema-tiny: validation {base['validation']['accuracy']:.3f}, hard "
        f"{base['validation_hard']['accuracy']:.3f}")
    tokenizer = load_tokenizer()
    runs: dict[str, list[dict]] = {}
    results_path = args.work / "pretrain_mix.json"
    for arm in arms:  # arm by arm, both seeds: a partial run still gives whole comparisons
        runs[arm] = [run_arm(arm, seed, args.steps, exports, args.work, tokenizer) for seed in seeds]
        results = summarize(runs, base, seeds, args.steps)
        results_path.write_text(json.dumps(results, indent=1))
        for name, by_split in results["comparisons"].items():
            for split, c in by_split.items():
                ll = c.get("reference_logprob")
                say(f"{name} {split}: {100 * c['mean_diff']:+.2f} points [{100 * c['ci95'][0]:+.2f}, "
                    f"{100 * c['ci95'][1]:+.2f}], McNemar p {[round(p, 3) for p in c['mcnemar_p']]}, discordance "
                    f"{100 * c['discordance']:.1f}%, mde_80 {100 * c['mde_80']:.1f}"
                    + (f", ref. log-lik. {ll['mean_diff']:+.4f} [{ll['ci95'][0]:+.4f}, {ll['ci95'][1]:+.4f}]"
                       if ll else ""))


if __name__ == "__main__":
    main()
