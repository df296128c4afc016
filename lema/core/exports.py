"""Training data in the paper's two formats, from the store.

- CoT: prompt = a solve instruction + the question + "Let's think step by step."; completion = the step-by-step
  solution ending "The answer is X." Sources: reference solutions (gold chains of thought) and verified
  augmentations.
- Correction: prompt = a correction instruction + the question + the original wrong solution as numbered steps,
  ending "Incorrect Step:"; completion = the step number, the explanation and the corrected solution. Only
  corrections the verifier accepted.

Files are JSONL with `prompt`/`completion` string fields (TRL's prompt-completion format: loss on the completion
only) plus `type`, `problem_id` and `source`; `datasets.load_dataset("json", data_files=...)` loads them. Mixes for
the paper's control experiment: CoT-only of size N vs CoT + corrections of the same total N.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from lema.core.formats import correction_input, correction_output, cot_prompt
from lema.core.store.models import Attempt, Augmentation, Correction, Export, Problem


@dataclass(frozen=True)
class Example:
    type: str  # "cot" | "correction"
    prompt: str
    completion: str
    problem_id: str
    source: str

    def row(self) -> dict:
        return {"type": self.type, "prompt": self.prompt, "completion": self.completion,
                "problem_id": self.problem_id, "source": self.source}


def _normalized(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def dedupe(examples: list[Example]) -> list[Example]:
    """Drop examples whose normalised prompt + completion was seen before (first one wins)."""
    seen: set[str] = set()
    kept = []
    for ex in examples:
        key = hashlib.sha256(f"{_normalized(ex.prompt)}\x00{_normalized(ex.completion)}".encode()).hexdigest()
        if key not in seen:
            seen.add(key)
            kept.append(ex)
    return kept


def cot_examples(session: Session, problem_filter=None) -> list[Example]:
    query = select(Problem).order_by(Problem.id)
    if problem_filter is not None:
        query = query.where(problem_filter)
    examples = []
    for p in session.scalars(query):
        if p.gold_solution:
            examples.append(Example("cot", cot_prompt(p.question), p.gold_solution.strip(), p.id, "reference"))
    aug = select(Augmentation, Problem).join(Problem, Augmentation.problem_id == Problem.id).where(
        Augmentation.verified.is_(True)).order_by(Augmentation.id)
    for a, p in session.execute(aug):
        examples.append(Example("cot", cot_prompt(p.question), a.text.strip(), p.id, f"augment:{a.upstream_model}"))
    return examples


def correction_examples(session: Session) -> list[Example]:
    query = (
        select(Correction, Attempt, Problem)
        .join(Attempt, Correction.attempt_id == Attempt.id)
        .join(Problem, Correction.problem_id == Problem.id)
        .where(Correction.status == "accepted")
        .order_by(Correction.id)
    )
    return [
        Example("correction", correction_input(p.question, a.text),
                correction_output(c.incorrect_step, c.explanation, c.corrected_solution).lstrip(),
                p.id, f"correction:{c.upstream_model}:{c.prompt_id}@{c.prompt_version}")
        for c, a, p in session.execute(query)
    ]


def _write(path: Path, examples: list[Example]) -> dict:
    with path.open("w") as f:
        for ex in examples:
            f.write(json.dumps(ex.row(), ensure_ascii=False) + "\n")
    return {"file": path.name, "rows": len(examples), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def export(session: Session, out_dir: Path, size: int | None = None, seed: int = 0) -> dict:
    """Write cot.jsonl, correction.jsonl and (with `size`) the two equal-size mixes; return the manifest."""
    cot = dedupe(cot_examples(session))
    corrections = dedupe(correction_examples(session))
    if size is not None and len(cot) < size:
        raise ValueError(f"only {len(cot)} CoT examples: cannot build CoT-only mixes of size {size}")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"cot": _write(out_dir / "cot.jsonl", cot), "correction": _write(out_dir / "correction.jsonl", corrections)}
    mixes = {}
    if size is not None:
        rng = random.Random(seed)
        shuffled = cot[:]
        rng.shuffle(shuffled)
        n_corr = min(len(corrections), size // 2)
        lema_mix = shuffled[: size - n_corr] + rng.sample(corrections, n_corr)
        rng.shuffle(lema_mix)
        files["mix_cot"] = _write(out_dir / f"mix-cot-{size}.jsonl", shuffled[:size])
        files["mix_lema"] = _write(out_dir / f"mix-lema-{size}.jsonl", lema_mix)
        mixes = {"size": size, "cot_only": {"cot": size}, "lema": {"cot": size - n_corr, "correction": n_corr}}
    manifest = {
        "id": f"export-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}",
        "created_at": datetime.now(timezone.utc).isoformat(),
        "files": files,
        "counts": {"cot": len(cot), "correction": len(corrections)},
        "sources": sorted({ex.source for ex in cot + corrections}),
        "mixes": mixes,
        "formats": {"fields": ["type", "prompt", "completion", "problem_id", "source"],
                    "loss": "completion only (TRL prompt-completion format)"},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    session.add(Export(id=manifest["id"], path=str(out_dir), manifest=manifest))
    return manifest
