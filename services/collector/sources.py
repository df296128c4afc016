"""Problem sources for `lema collect --source`: synthetic:N[:seed=S][:split=train|test|ood], gsm8k:PATH, math:PATH."""

from __future__ import annotations

import json
import re
from pathlib import Path

from lema.core.answers import DatasetKind
from lema.core.errors import InvalidInput
from lema.core.store.repository import ProblemIn


class SourceError(InvalidInput):
    """A source spec or dataset file that cannot be read; the message names it."""


def gsm8k_solution_to_steps(answer: str) -> tuple[str, str]:
    """GSM8K's reference solution in lema's Step format (calculator annotations removed) and its gold answer."""
    from lema.core.formats import render_solution

    body, _, gold = answer.rpartition("####")
    lines = [re.sub(r"<<[^>]*>>", "", line).strip() for line in body.strip().splitlines() if line.strip()]
    gold = gold.strip().replace(",", "")
    return render_solution(lines, gold), gold


def load_source(spec: str, limit: int | None = None) -> list[ProblemIn]:
    kind, _, rest = spec.partition(":")
    if kind == "synthetic":
        parts = rest.split(":")
        try:
            n = int(parts[0])
        except ValueError:
            raise SourceError(f"synthetic source needs a count, e.g. synthetic:60 (got {spec!r})") from None
        options = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        seed, split = int(options.get("seed", 0)), options.get("split", "train")
        from lema.core.synthetic import generate

        problems = generate(n, seed=seed, split=split)
        return [
            ProblemIn(id=f"synthetic:{split}:{seed}:{p.id}", kind=DatasetKind.SYNTHETIC, question=p.question,
                      gold_answer=p.answer, source=f"synthetic:seed={seed}:split={split}", gold_solution=p.gold_solution,
                      program_json=p.program.to_json(), meta={"family": p.family, "n_steps": p.n_steps})
            for p in problems
        ]
    if kind in ("gsm8k", "math"):
        path = Path(rest).expanduser()
        if not path.exists():
            raise SourceError(f"{path} does not exist")
        out = []
        with path.open() as f:
            for number, line in enumerate(f, start=1):
                if limit is not None and len(out) >= limit:
                    break
                row = json.loads(line)
                if kind == "gsm8k":
                    solution, gold = gsm8k_solution_to_steps(row["answer"])
                    out.append(ProblemIn(id=f"gsm8k:{path.stem}:{number}", kind=DatasetKind.GSM8K,
                                         question=row["question"], gold_answer=gold, gold_solution=solution,
                                         source=f"gsm8k:{path}"))
                else:
                    out.append(ProblemIn(id=f"math:{row.get('unique_id') or f'{path.stem}:{number}'}",
                                         kind=DatasetKind.MATH, question=row["problem"], gold_answer=row["answer"],
                                         gold_solution=row.get("solution"), source=f"math:{path}",
                                         meta={"subject": row.get("subject") or row.get("type"), "level": row.get("level")}))
        return out
    raise SourceError(f"unknown source {spec!r}: use synthetic:N, gsm8k:PATH or math:PATH")
