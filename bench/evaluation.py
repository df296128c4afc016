"""Evaluation speed: lema's evaluator generating the problems in order of expected length (steps, then question
length: rows that end together share a batch) against the same problems in their given order, side by side in one
process on one loaded model, alternating, several repeats; it also counts outcomes that differ between the orders.

    python bench/evaluation.py [--problems 1000] [--repeats 3] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

# bench/trainer.py would shadow the `trainer` package when this folder leads sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--split", default="validation")
    args = parser.parse_args()

    from lema.core.engines.transformers_engine import TransformersEngine
    from lema.core.model_resolve import resolve_model
    from lema.services.verifier import open_verifier
    from lema.trainer.evaluate import eval_problems, evaluate_engine
    from lema.trainer.recipe import load_recipe

    recipe = load_recipe("tiny", {"eval": {"validation_problems": args.problems, "problems": args.problems}})
    problems = eval_problems(recipe.eval, args.split)
    engine = TransformersEngine(resolve_model("lema-tiny"), batch_size=args.batch_size, threads=1)

    async def run() -> dict[str, list[float]]:
        verifier = open_verifier()
        await verifier.start()
        times: dict[str, list[float]] = {"given order": [], "by length": []}
        outcomes: dict[str, list[bool]] = {}
        try:
            for _ in range(args.repeats):
                for name, by_length in (("given order", False), ("by length", True)):
                    started = time.perf_counter()
                    result = await evaluate_engine(engine, problems, recipe.eval.max_tokens, verifier=verifier,
                                                   split=args.split, by_length=by_length)
                    times[name].append(time.perf_counter() - started)
                    outcomes.setdefault(name, result.outcomes)
        finally:
            await verifier.close()
            await engine.close()
        differ = sum(a != b for a, b in zip(outcomes["given order"], outcomes["by length"]))
        return times, differ, sum(outcomes["given order"]), sum(outcomes["by length"])

    times, differ, correct_given, correct_sorted = asyncio.run(run())
    print(f"{len(problems)} {args.split} problems, batch {args.batch_size}, 1 thread, {args.repeats} repeats")
    print("| order | seconds (median) | problems/s |")
    print("|---|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {len(problems) / median:.1f} |")
    ratio = statistics.median(times["given order"]) / statistics.median(times["by length"])
    print(f"speed-up (given order / by length): {ratio:.2f}x; correct {correct_given} vs {correct_sorted}, "
          f"{differ} outcomes differ (batch composition and padding can move a greedy argmax)")


if __name__ == "__main__":
    main()
