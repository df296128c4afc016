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
from lema.trainer.recipe import load_recipe
# Random batches like plain TRL's (length grouping is measured in bench/grouping.py).
recipe = load_recipe("tiny", {"max_steps": steps, "packing": packing, "save_steps": 10_000, "logging_steps": 1,
                              "group_by_length": False})
if mode == "lema":
    from lema.trainer.train import train
    result = train(recipe, data, out)
    print(json.dumps({"seconds": result.seconds, "tokens": result.tokens_per_second * result.seconds}))
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
    print(json.dumps({"seconds": time.perf_counter() - started, "tokens": seen["tokens"]}))
"""


def run(mode: str, data: Path, steps: int, packing: bool) -> tuple[float, float, float]:
    """(tokens/s, training seconds, peak RSS MiB of the run's process)."""
    import psutil

    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, mode, str(data), str(steps), "1" if packing else "0", out],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        watched = psutil.Process(proc.pid)
        peak = 0.0
        while proc.poll() is None:
            try:
                peak = max(peak, watched.memory_info().rss / 2**20)
            except psutil.Error:
                pass
            time.sleep(0.2)
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{mode} run failed:\n{stderr[-3000:]}")
        result = json.loads(stdout.strip().splitlines()[-1])
        return result["tokens"] / max(result["seconds"], 1e-9), result["seconds"], peak


def synthetic_export(path: Path, n: int = 512) -> None:
    from lema.core.formats import cot_prompt
    from lema.core.synthetic import generate

    with path.open("w") as f:
        for p in generate(n, seed=5, split="train"):
            f.write(json.dumps({"type": "cot", "prompt": cot_prompt(p.question), "completion": p.gold_solution}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--data", type=Path, default=None, help="training JSONL (default: 512 synthetic CoT rows)")
    args = parser.parse_args()
    console = Console(width=120)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp) / "data.jsonl"
        if args.data is None:
            synthetic_export(data)
        table = Table(title=f"lema trainer vs plain TRL SFTTrainer (lema-tiny, 4-bit base, {args.steps} steps)")
        for col in ("packing", "plain TRL tok/s", "lema tok/s", "ratio", "plain TRL peak RSS MiB",
                    "lema peak RSS MiB", "RSS ratio"):
            table.add_column(col, justify="right")
        for packing in (False, True):
            plain, plain_s, plain_rss = run("plain", data, args.steps, packing)
            ours, ours_s, ours_rss = run("lema", data, args.steps, packing)
            table.add_row("on" if packing else "off", f"{plain:,.0f}", f"{ours:,.0f}", f"{ours / max(plain, 1e-9):.2f}x",
                          f"{plain_rss:.0f}", f"{ours_rss:.0f}", f"{ours_rss / max(plain_rss, 1e-9):.2f}x")
            console.print(f"packing={packing}: plain {plain:,.0f} tok/s, lema {ours:,.0f} tok/s")
        console.print(table)


if __name__ == "__main__":
    main()
