"""Verifier agreement with math-verify when a solution has no boxed answer and no "answer is" phrase.

Items: every problem of the MATH test set (../shared/data/math/test500.jsonl by default) as a candidate solution
whose final `\\boxed{X}` is unwrapped to `X`, so the final answer must be found the fallback way; checked against
its own gold answer (a positive) and against the next problem's gold answer (a negative, when the two differ).
For each item: lema's verdict (`lema.core.verification.verify_item`) and math-verify's own (`parse` with its default
LaTeX + expression extraction, then `verify`). Prints the agreement, lema's recall on positives and its false
accepts on negatives, and what lema extracted where the two disagree.

    python bench/verifier_agreement.py [--data PATH] [--limit N]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lema.core.answers import DatasetKind, extract_answer, unbox
from lema.core.verification import verify_item

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "math" / "test500.jsonl"


def math_verify_verdict(gold: str, candidate: str) -> bool:
    from math_verify import parse, verify

    try:
        return bool(verify(parse(f"${gold}$"), parse(candidate)))
    except Exception:  # noqa: BLE001 - math-verify's own failure counts as "not verified"
        return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.data.open()][: args.limit]
    items = []
    for i, row in enumerate(rows):
        unboxed = unbox(row["solution"])
        candidate = unboxed[0] if unboxed else None
        if candidate is None:
            continue
        items.append(("positive", row["answer"], candidate))
        other = rows[(i + 1) % len(rows)]["answer"]
        if other.strip() != row["answer"].strip():
            items.append(("negative", other, candidate))
    counts: Counter = Counter()
    disagreements = []
    for label, gold, candidate in items:
        ours = verify_item(DatasetKind.MATH, gold, candidate).correct
        theirs = math_verify_verdict(gold, candidate)
        counts[(label, ours, theirs)] += 1
        if ours != theirs and len(disagreements) < 12:
            disagreements.append((label, gold, extract_answer(candidate, DatasetKind.MATH).answer, ours, theirs))
    positives = sum(v for (label, _, _), v in counts.items() if label == "positive")
    negatives = sum(v for (label, _, _), v in counts.items() if label == "negative")
    agree = sum(v for (_, ours, theirs), v in counts.items() if ours == theirs)
    table = Table(title=f"lema vs math-verify on {args.data.name}: unboxed reference solutions")
    for col in ("items", "agreement", "lema recall (positives)", "math-verify recall", "lema false accepts",
                "math-verify false accepts"):
        table.add_column(col)
    recall = sum(v for (label, ours, _), v in counts.items() if label == "positive" and ours)
    mv_recall = sum(v for (label, _, theirs), v in counts.items() if label == "positive" and theirs)
    false = sum(v for (label, ours, _), v in counts.items() if label == "negative" and ours)
    mv_false = sum(v for (label, _, theirs), v in counts.items() if label == "negative" and theirs)
    table.add_row(str(len(items)), f"{agree / len(items):.1%}", f"{recall / positives:.1%}",
                  f"{mv_recall / positives:.1%}", f"{false}/{negatives}", f"{mv_false}/{negatives}")
    console = Console()
    console.print(table)
    for label, gold, extracted, ours, theirs in disagreements:
        console.print(f"{label}: gold {gold!r}, lema extracted {extracted!r}: lema {ours}, math-verify {theirs}")


if __name__ == "__main__":
    main()
