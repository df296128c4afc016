"""Length-grouped batches vs random batches: lema's trainer on the same rows, the same recipe and steps, each run in
its own process one after the other (side by side). The rows that matter are a LEMA arm's: short CoT rows mixed with
long correction rows, where random batches pad every CoT row to the length of the longest correction in its batch.

    python bench/grouping.py --data .lema/demo/round1/seed0/lema/train.jsonl [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, resource
from pathlib import Path
from lema.trainer.recipe import load_recipe
from lema.trainer.train import train
grouped, data, steps, out = sys.argv[1] == "1", Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
recipe = load_recipe("tiny", {"max_steps": steps, "group_by_length": grouped, "save_steps": 10_000})
result = train(recipe, data, out)
print(json.dumps({"seconds": result.seconds, "loss": result.train_loss,
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(grouped: bool, data: Path, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", CHILD, "1" if grouped else "0", str(data), str(steps), tmp],
                             capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a training JSONL (e.g. an ablation arm's)")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    random_batches = run(False, args.data, args.steps)
    grouped = run(True, args.data, args.steps)
    print("| batches | seconds | final loss | peak RSS MiB |")
    print("|---|---:|---:|---:|")
    for name, r in (("random", random_batches), ("grouped by length", grouped)):
        print(f"| {name} | {r['seconds']:.1f} | {r['loss']:.3f} | {r['rss_mib']:,.0f} |")
    print(f"speed ratio (random / grouped time): {random_batches['seconds'] / grouped['seconds']:.2f}x")


if __name__ == "__main__":
    main()
