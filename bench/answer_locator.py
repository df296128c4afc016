"""The final-answer locator on solutions that do not box their answer (issue 28), beside math-verify.

A set built from the train splits in ../shared/data (never the test problems): each reference solution with its
final marker removed (GSM8K's `#### N` line dropped, MATH's last `\\boxed{X}` unwrapped to X) and a closing sentence
written in one of the styles below, several with context numbers or words after the value. For each item, a positive
(the gold answer in the closing) and a negative (a wrong value in the same place: gold + 1 for numbers, the gold
answer of another problem for MATH). Reported per style: lema's recall (positives accepted) and false accepts
(negatives accepted), and the same for math-verify's own extraction (`parse` with its default LaTeX + expression
configs, then `verify`).

    python bench/answer_locator.py [--problems 100] [--seed 0] [--out bench/results/answer_locator.json]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]  # bench/trainer.py is not `trainer`

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from lema.core.answers import DatasetKind, unbox  # noqa: E402
from lema.core.verification import verify_item  # noqa: E402

DATA = REPO.parent / "shared" / "data"

# {v}: the value as written (math wrapped in $...$ for MATH), {n}: a context number from the problem.
STYLES = {
    "answer_is": "The answer is {v}.",
    "bold": "So the final result is **{v}**.",
    "is_closing": "Therefore, the value we want is {v}.",
    "equals_context": "Adding everything up equals {v}, counted over {n} steps.",
    "total_of_context": "In all, that makes a total of {v} across the {n} parts.",
    "gives_eq": "Putting it together gives {n} + 0 = {v}.",
    "bold_trailing_words": "Hence **{v}** is what we were asked for.",
    "we_get": "Simplifying, we get {v} as the result.",
    "so_colon": "So: {v}",
    "bare_last_line": "{v}",
    "display": "Therefore\n$$ {v} $$",
    "value_then_words": "The result is {v} once all {n} cases are counted.",
}


def gsm8k_items(limit: int, rng: random.Random) -> list[dict]:
    rows = [json.loads(line) for line in (DATA / "gsm8k" / "train.jsonl").read_text().splitlines()[:limit * 3]]
    items = []
    for row in rows[:limit]:
        body, _, gold = row["answer"].rpartition("####")
        gold = gold.strip().replace(",", "")
        body = re.sub(r"<<[^>]*>>", "", body).strip()
        numbers = re.findall(r"\d+", row["question"])
        items.append({"kind": DatasetKind.GSM8K, "body": body, "gold": gold, "value": gold,
                      "wrong": str(int(float(gold)) + 1) if re.fullmatch(r"-?\d+(\.\d+)?", gold) else gold + "1",
                      "n": rng.choice(numbers) if numbers else "2"})
    return items


def math_items(limit: int, rng: random.Random) -> list[dict]:
    rows = [json.loads(line) for line in (DATA / "math" / "train.jsonl").read_text().splitlines()[:limit * 4]]
    unboxed = [(row, u) for row in rows if (u := unbox(row["solution"])) is not None][:limit]
    golds = [gold for _, (_, gold) in unboxed]
    items = []
    for i, (row, (body, gold)) in enumerate(unboxed):
        wrong = next((g for g in golds[i + 1:] + golds[:i] if g.replace(" ", "") != gold.replace(" ", "")), gold)
        items.append({"kind": DatasetKind.MATH, "body": body, "gold": gold, "value": f"${gold}$", "wrong": f"${wrong}$",
                      "n": str(rng.randint(2, 9))})
    return items


def math_verify_accepts(gold: str, text: str) -> bool:
    from math_verify import parse, verify

    try:
        parsed_gold = parse(gold if "$" in gold else f"${gold}$", parsing_timeout=None)
        parsed = parse(text, parsing_timeout=None)
        return bool(parsed_gold and parsed and verify(parsed_gold, parsed, timeout_seconds=None))
    except Exception:  # noqa: BLE001 - math-verify's failure is a rejection
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=100, help="per dataset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "answer_locator.json")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    items = gsm8k_items(args.problems, rng) + math_items(args.problems, rng)
    counts: dict = {}
    for item in items:
        wrong = item["wrong"] if item["kind"] == DatasetKind.GSM8K else item["wrong"]
        for style, template in STYLES.items():
            value = item["value"]
            if style == "display" or (item["kind"] == DatasetKind.MATH and style in ("bold", "bold_trailing_words")):
                value = item["gold"] if item["kind"] == DatasetKind.MATH else item["value"]
            bad = wrong.strip("$") if value == item["gold"] and item["kind"] == DatasetKind.MATH else wrong
            key = (item["kind"].value, style)
            c = counts.setdefault(key, {"n": 0, "lema_recall": 0, "lema_false": 0, "mv_recall": 0, "mv_false": 0})
            c["n"] += 1
            for sign, shown in (("recall", value), ("false", bad)):
                text = item["body"] + "\n" + template.format(v=shown, n=item["n"])
                c[f"lema_{sign}"] += verify_item(item["kind"], item["gold"], text).correct
                c[f"mv_{sign}"] += math_verify_accepts(item["gold"], text)
    rows = []
    for (kind, style), c in sorted(counts.items()):
        rows.append({"kind": kind, "style": style, "n": c["n"],
                     **{k: round(c[k] / c["n"], 3) for k in ("lema_recall", "lema_false", "mv_recall", "mv_false")}})
    totals = {}
    for kind in ("gsm8k", "math"):
        mine = [r for r in rows if r["kind"] == kind]
        totals[kind] = {k: round(sum(r[k] for r in mine) / len(mine), 3)
                        for k in ("lema_recall", "lema_false", "mv_recall", "mv_false")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"problems_per_dataset": args.problems, "seed": args.seed, "rows": rows,
                                    "totals": totals}, indent=2) + "\n")
    table = Table(title="Final-answer locator, no box (train splits; recall / false accepts)")
    for column in ("set", "style", "n", "lema recall", "lema false", "math-verify recall", "math-verify false"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["kind"], r["style"], str(r["n"]), f"{r['lema_recall']:.3f}", f"{r['lema_false']:.3f}",
                      f"{r['mv_recall']:.3f}", f"{r['mv_false']:.3f}")
    for kind, t in totals.items():
        table.add_row(kind, "all styles", "", f"{t['lema_recall']:.3f}", f"{t['lema_false']:.3f}",
                      f"{t['mv_recall']:.3f}", f"{t['mv_false']:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
