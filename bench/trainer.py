"""Trainer throughput and memory: lema's QLoRA trainer vs a plain TRL SFTTrainer run, same model, data and LoRA.

Each run is a separate process (peak RSS = its ru_maxrss), with and without sequence packing. "plain TRL" is
SFTTrainer with TRL's default SFTConfig (only output folder, steps, batch size, learning rate, max_length, and on a
CPU use_cpu and bf16 off set) on the same
4-bit base and the same LoraConfig; lema's run is `lema.trainer.train.train` with the tiny recipe.

    python bench/trainer.py [--steps 20] [--data EXPORT.jsonl]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
from pathlib import Path
mode, data, steps, packing, out = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", Path(sys.argv[5])
model_name, recipe_name, plain_batch = sys.argv[6], sys.argv[7], int(sys.argv[8])
def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
from lema.trainer.recipe import load_recipe
# Random batches like plain TRL's (length grouping is measured in bench/grouping.py).
recipe = load_recipe(recipe_name, {"base_model": model_name, "max_steps": steps, "packing": packing,
                                   "save_steps": 10_000, "logging_steps": 1, "group_by_length": False})
if mode == "plain" and plain_batch:
    recipe = recipe.model_copy(update={"batch_size": plain_batch})
if mode == "lema":
    import transformers.modeling_utils as mu  # report the RSS of the loaded model, before training
    loaded = {"rss": 0.0}
    original = mu.PreTrainedModel.from_pretrained.__func__
    def from_pretrained(cls, *args, **kwargs):
        model = original(cls, *args, **kwargs)
        loaded["rss"] = rss_mib()
        return model
    mu.PreTrainedModel.from_pretrained = classmethod(from_pretrained)
    from lema.trainer.train import train
    result = train(recipe, data, out)
    print(json.dumps({"seconds": result.seconds, "tokens": result.tokens_per_second * result.seconds,
                      "loaded_rss": loaded["rss"], "forward_rows": recipe.micro_batch,
                      "effective_batch": recipe.effective_batch}))
else:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer
    from lema.core.model_resolve import resolve_model
    from lema.trainer.train import load_examples, load_quantized_base
    path = resolve_model(recipe.base_model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = load_quantized_base(recipe, path)
    loaded_rss = rss_mib()
    seen = {"tokens": 0.0}
    class Count(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            seen["tokens"] = float((logs or {}).get("num_tokens") or seen["tokens"])
    import torch
    # TRL's defaults plus what a CPU-only machine needs: use_cpu (TRL refuses to start without it) and bf16 off
    # (TRL's default bf16 ran 3x slower without packing and did not finish 6 packed steps in 15 minutes here), and
    # lema's max_length, so both runs see the same sequences.
    cpu = not torch.cuda.is_available()
    config = SFTConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=recipe.batch_size,
                       learning_rate=recipe.learning_rate, packing=packing, report_to=[], logging_steps=1,
                       save_strategy="no", use_cpu=cpu, bf16=not cpu, max_length=recipe.max_seq_len)
    lora = LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
                      target_modules=recipe.lora.target_modules, task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(load_examples(data)),
                         processing_class=tokenizer, peft_config=lora, callbacks=[Count()])
    started = time.perf_counter()
    trainer.train()
    print(json.dumps({"seconds": time.perf_counter() - started, "tokens": seen["tokens"], "loaded_rss": loaded_rss,
                      "forward_rows": recipe.batch_size, "effective_batch": recipe.batch_size}))
"""


def run(mode: str, data: Path, steps: int, packing: bool, model: str, recipe: str, plain_batch: int,
        cap_mib: float) -> dict:
    """tokens_per_s, seconds, peak_rss (MiB of the run's process), loaded_rss, forward_rows, effective_batch;
    `killed` when the run passed `cap_mib` (then only the peak so far is known)."""
    import psutil

    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, mode, str(data), str(steps), "1" if packing else "0", out,
                                 model, recipe, str(plain_batch)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        watched = psutil.Process(proc.pid)
        peak = 0.0
        while proc.poll() is None:
            try:
                peak = max(peak, watched.memory_info().rss / 2**20)
            except psutil.Error:
                pass
            if peak > cap_mib:
                proc.kill()
                proc.communicate()
                return {"killed": True, "peak_rss": peak}
            time.sleep(0.2)
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{mode} run failed:\n{stderr[-3000:]}")
        result = json.loads(stdout.strip().splitlines()[-1])
        result["tokens_per_s"] = result["tokens"] / max(result["seconds"], 1e-9)
        result["peak_rss"] = peak
        return result


def synthetic_export(path: Path, n: int = 512) -> None:
    from lema.core.formats import cot_prompt
    from lema.core.synthetic import generate

    with path.open("w") as f:
        for p in generate(n, seed=5, split="train"):
            f.write(json.dumps({"type": "cot", "prompt": cot_prompt(p.question), "completion": p.gold_solution}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lema-tiny", help="base model (lema-tiny, smollm2, a folder)")
    parser.add_argument("--recipe", default=None, help="lema's recipe (default: tiny for lema-tiny, else small)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--plain-batch", type=int, default=0,
                        help="plain TRL's batch (default: the recipe's batch_size, all rows in one forward pass)")
    parser.add_argument("--no-packing", action="store_true", help="only the runs without packing")
    parser.add_argument("--rss-cap-mib", type=float, default=12_000, help="kill a run whose RSS passes this")
    parser.add_argument("--data", type=Path, default=None, help="training JSONL (default: 512 synthetic CoT rows)")
    args = parser.parse_args()
    from lema.app.demo import recipe_for_model

    recipe = args.recipe or recipe_for_model(args.model)
    console = Console(width=150)

    def cell(result: dict, key: str, fmt: str) -> str:
        if result.get("killed"):
            return f"killed > {args.rss_cap_mib:,.0f} MiB" if key == "peak_rss" else "-"
        return format(result[key], fmt)

    def per_row(result: dict) -> float | None:
        return None if result.get("killed") else (result["peak_rss"] - result["loaded_rss"]) / result["forward_rows"]

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp) / "data.jsonl"
        if args.data is None:
            synthetic_export(data)
        table = Table(title=f"lema trainer ({recipe} recipe) vs plain TRL SFTTrainer ({args.model}, 4-bit base, "
                            f"{args.steps} steps)")
        for col in ("packing", "run", "rows/forward", "rows/step", "tok/s", "loaded RSS MiB", "peak RSS MiB",
                    "MiB per row", "peak MiB per row of the step"):
            table.add_column(col, justify="right")
        for packing in ((False,) if args.no_packing else (False, True)):
            results = {}
            for mode in ("plain", "lema"):
                result = run(mode, data, args.steps, packing, args.model, recipe, args.plain_batch, args.rss_cap_mib)
                results[mode] = result
                row = per_row(result)
                table.add_row("on" if packing else "off", "plain TRL" if mode == "plain" else "lema",
                              cell(result, "forward_rows", "d"), cell(result, "effective_batch", "d"),
                              cell(result, "tokens_per_s", ",.0f"), cell(result, "loaded_rss", ",.0f"),
                              cell(result, "peak_rss", ",.0f"), "-" if row is None else f"{row:,.0f}",
                              "-" if result.get("killed") else f"{result['peak_rss'] / result['effective_batch']:,.0f}")
                console.print(f"packing={packing} {mode}: {json.dumps(result)}")
            plain, ours = per_row(results["plain"]), per_row(results["lema"])
            if plain and ours:
                console.print(f"packing={packing}: lema / plain TRL, MiB per row of a forward pass: "
                              f"{ours / plain:.2f}x; peak RSS: "
                              f"{results['lema']['peak_rss'] / results['plain']['peak_rss']:.2f}x")
        console.print(table)


if __name__ == "__main__":
    main()
