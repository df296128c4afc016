"""Training data in the paper's two formats, from the store.

- CoT: prompt = a solve instruction + the question + "Let's think step by step."; completion = the step-by-step
  solution ending "The answer is X." Sources: reference solutions (gold chains of thought) and verified
  augmentations.
- Correction: prompt = a correction instruction + the question + the original wrong solution as numbered steps,
  ending "Incorrect Step:"; completion = the step number, the explanation and the corrected solution. Only
  corrections the verifier accepted.

Files are JSONL with `prompt`/`completion` string fields (TRL's prompt-completion format: loss on the completion
only) plus `type`, `problem_id` and `source`; `datasets.load_dataset("json", data_files=...)` loads them. The
settings of the paper's comparisons (main, equal, matched) are built from these files by `lema.trainer.settings`.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from lema.core.formats import (
    correction_input,
    correction_output,
    cot_prompt,
    full_corrected_solution,
    step_correction,
    step_preference,
)
from lema.core.rendering import encode_row, framing_of
from lema.core.reviews import GradeFilter, effective_grades
from lema.core.store.models import Attempt, Augmentation, Correction, Export, Problem


@dataclass(frozen=True)
class Example:
    type: str  # "cot" | "correction"
    prompt: str
    completion: str
    problem_id: str
    source: str
    # Corrections: the mistake path and the correction; a corrected-CoT row carries the correction it came from.
    attempt_id: str = ""
    correction_id: str = ""
    # Step-level corrections: the start of the answer that is given, not trained (the model's correct steps).
    context: str = ""

    def row(self) -> dict:
        out = {"type": self.type, "prompt": self.prompt, "completion": self.completion,
               "problem_id": self.problem_id, "source": self.source}
        out.update({key: getattr(self, key) for key in ("context", "attempt_id", "correction_id") if getattr(self, key)})
        return out


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


def cot_examples(session: Session, problem_filter=None, augment_per_problem: int | None = None) -> list[Example]:
    """Reference solutions (gold chains of thought), then verified augmentations (verified-correct sampled
    solutions, as the paper's CoT data adds GPT-4's correct paths): at most `augment_per_problem` distinct ones per
    problem beyond the reference (None: all)."""
    query = select(Problem).order_by(Problem.id)
    if problem_filter is not None:
        query = query.where(problem_filter)
    examples = []
    for p in session.scalars(query):
        if p.gold_solution:
            examples.append(Example("cot", cot_prompt(p.question), p.gold_solution.strip(), p.id, "reference"))
    if augment_per_problem == 0:
        return examples
    aug = select(Augmentation, Problem).join(Problem, Augmentation.problem_id == Problem.id).where(
        Augmentation.verified.is_(True)).order_by(Augmentation.id)
    if problem_filter is not None:
        aug = aug.where(problem_filter)
    seen = {(ex.problem_id, _normalized(ex.completion)) for ex in examples}
    per_problem: dict[str, int] = {}
    for a, p in session.execute(aug):
        key = (p.id, _normalized(a.text))
        if key in seen or (augment_per_problem is not None and per_problem.get(p.id, 0) >= augment_per_problem):
            continue  # a duplicate of the reference or of a kept sample, or the problem's cap is reached
        seen.add(key)
        per_problem[p.id] = per_problem.get(p.id, 0) + 1
        examples.append(Example("cot", cot_prompt(p.question), a.text.strip(), p.id, f"augment:{a.upstream_model}"))
    return examples


def _accepted_corrections(session: Session):
    query = (
        select(Correction, Attempt, Problem)
        .join(Attempt, Correction.attempt_id == Attempt.id)
        .join(Problem, Correction.problem_id == Problem.id)
        .where(Correction.status == "accepted")
        .order_by(Correction.id)
    )
    seen_attempts: set[str] = set()
    for c, a, p in session.execute(query):
        if a.id in seen_attempts:  # at most one correction per mistake path (the first accepted one)
            continue
        seen_attempts.add(a.id)
        yield c, a, p


CORRECTION_FORMATS = ("paper", "step")


def _correction_example(c: Correction, a: Attempt, p: Problem, through_step: bool,
                        correction_format: str = "paper") -> Example:
    """One correction as a training row.

    - `paper`: the paper's correction input (instruction, question, the original solution; `through_step` stops it
      at the incorrect step) and output (the incorrect step, the explanation, the corrected solution).
    - `step`: the CoT prompt, the model's own correct steps as given context, then the corrected steps from the
      incorrect one on as the target (`lema.core.formats.step_correction`)."""
    if correction_format == "step":
        context, target = step_correction(a.text, c.incorrect_step, c.corrected_solution)
        return Example("correction", cot_prompt(p.question), target, p.id,
                       f"correction-step:{c.upstream_model}:{c.prompt_id}@{c.prompt_version}",
                       attempt_id=a.id, correction_id=c.id, context=context)
    return Example("correction",
                   correction_input(p.question, a.text, through_step=c.incorrect_step if through_step else None),
                   correction_output(c.incorrect_step, c.explanation, c.corrected_solution).lstrip(),
                   p.id, f"correction:{c.upstream_model}:{c.prompt_id}@{c.prompt_version}",
                   attempt_id=a.id, correction_id=c.id)


def _corrected_twin(c: Correction, a: Attempt, p: Problem) -> Example:
    """The whole corrected solution as a CoT row (the original steps before the incorrect one, then the corrected
    steps): the paper's CoT-45K control, a verified correct solution of the *same* question as the correction."""
    return Example("cot", cot_prompt(p.question), full_corrected_solution(a.text, c.incorrect_step, c.corrected_solution),
                   p.id, f"corrected:{c.upstream_model}", attempt_id=a.id, correction_id=c.id)


MISTAKE_FILTERS = ("all", "systematic")


def _systematic(session: Session, model: str) -> tuple[set[str], dict]:
    """The accepted corrections whose mistake is systematic for `model` (lema.core.mistakes), and the counts."""
    from lema.core.mistakes import candidate, score
    from lema.core.model_resolve import resolve_model

    accepted = list(_accepted_corrections(session))
    total = len(accepted)
    candidates = [cand for c, a, p in accepted
                  if (cand := candidate(c.id, cot_prompt(p.question), a.text, c.incorrect_step, c.corrected_solution))]
    scores = score(resolve_model(model), candidates) if candidates else {}
    kept = {key for key, s in scores.items() if s.systematic}
    return kept, {"filter": "systematic", "model": model, "corrections": total, "scored": len(scores),
                  "systematic": len(kept), "sampling_noise": len(scores) - len(kept),
                  "not_scorable": total - len(scores)}


# --- length hygiene ----------------------------------------------------------------------------------------


@dataclass
class LengthCheck:
    """Every row measured with the base model's tokenizer, framed exactly as the trainer frames it."""

    tokenizer: object
    max_seq_len: int
    model: str = ""
    shortened: dict = field(default_factory=dict)
    dropped_over_length: dict = field(default_factory=dict)
    longest: dict = field(default_factory=dict)

    def length(self, ex: Example) -> int:
        return encode_row(self.tokenizer, ex.prompt, ex.completion, ex.context).length

    def keep(self, ex: Example, shorter: Example | None = None) -> Example | None:
        """The row if it fits, else its shorter form if that fits (counted as shortened), else None (dropped)."""
        n = self.length(ex)
        if n > self.max_seq_len and shorter is not None:
            n = self.length(shorter)
            if n <= self.max_seq_len:
                self.shortened[ex.type] = self.shortened.get(ex.type, 0) + 1
                ex = shorter
        if n > self.max_seq_len:
            self.dropped_over_length[ex.type] = self.dropped_over_length.get(ex.type, 0) + 1
            return None
        self.longest[ex.type] = max(self.longest.get(ex.type, 0), n)
        return ex

    def report(self) -> dict:
        return {"model": self.model, "max_seq_len": self.max_seq_len,
                "framing": framing_of(self.tokenizer),
                "shortened": self.shortened, "dropped_over_length": self.dropped_over_length,
                # 0 by construction: a row that does not fit is shortened or dropped, never written to be cut.
                "longest": self.longest, "truncated_completions": 0}


def _write(path: Path, examples: list[Example]) -> dict:
    return _write_rows(path, [ex.row() for ex in examples])


def _write_rows(path: Path, rows: list[dict]) -> dict:
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {"file": path.name, "rows": len(rows), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def export(session: Session, out_dir: Path, size: int | None = None, seed: int = 0,
           lengths: LengthCheck | None = None, augment_per_problem: int | None = 3,
           correction_format: str = "paper", mistakes: str = "all", scoring_model: str | None = None,
           grades: GradeFilter | None = None) -> dict:
    """Write cot.jsonl (references + capped augmentations), correction.jsonl (one per mistake path),
    corrected_cot.jsonl (each correction's whole corrected solution, for the `matched` setting), preference.jsonl
    (a step-level pair per correction: the model's continuation from its first wrong step vs the corrected one)
    and, with `size`, the two equal-size 50/50 mixes of earlier versions; return the manifest. `mistakes`:
    `systematic` keeps only the mistakes `scoring_model` believes (lema.core.mistakes).

    With `lengths`, every row is measured against the recipe's max_seq_len: a correction that does not fit is
    shortened (its original solution stops at the incorrect step) or dropped, any other row that does not fit is
    dropped, so no completion is ever cut in training. A correction and its corrected-CoT twin are kept or dropped
    together, so the `matched` setting always has a twin for every correction. `correction_format`: `paper` (the
    default) or `step` (see `_correction_example`). `grades`: which corrections people's grades keep
    (`lema serve review`; default: every one); the manifest's `review` counts what was kept and left out, and why."""
    if correction_format not in CORRECTION_FORMATS:
        raise ValueError(f"correction format must be one of {', '.join(CORRECTION_FORMATS)} (got {correction_format!r})")
    if mistakes not in MISTAKE_FILTERS:
        raise ValueError(f"mistakes must be one of {', '.join(MISTAKE_FILTERS)} (got {mistakes!r})")
    keep_ids, mistake_counts = None, {"filter": mistakes}
    if mistakes == "systematic":
        if not scoring_model:
            raise ValueError("the systematic-mistakes filter needs a model to score with")
        keep_ids, mistake_counts = _systematic(session, scoring_model)
    cot = dedupe(cot_examples(session, augment_per_problem=augment_per_problem))
    corrections, corrected, preferences = [], [], []
    seen_keys: set[str] = set()
    grades = grades or GradeFilter()
    graded = effective_grades(session)
    review = {"min_grade": grades.min_grade, "ungraded": grades.ungraded, "kept": Counter(), "left_out": Counter()}
    for c, a, p in _accepted_corrections(session):
        if keep_ids is not None and c.id not in keep_ids:
            continue
        kept, why = grades.keeps(graded.get(c.id))
        review["kept" if kept else "left_out"][why] += 1
        if not kept:
            continue
        full = _correction_example(c, a, p, through_step=False, correction_format=correction_format)
        twin = _corrected_twin(c, a, p)
        text = f"{_normalized(full.prompt)}\x00{_normalized(full.context)}\x00{_normalized(full.completion)}"
        key = hashlib.sha256(text.encode()).hexdigest()
        if key in seen_keys:
            continue
        seen_keys.add(key)
        if lengths is not None:
            shorter = _correction_example(c, a, p, through_step=True) if correction_format == "paper" else None
            full = lengths.keep(full, shorter)
            twin = lengths.keep(twin) if full is not None else None
            if full is None or twin is None:
                continue
        corrections.append(full)
        corrected.append(twin)
        pair = step_preference(a.text, c.incorrect_step, c.corrected_solution)
        if pair is not None:
            preferences.append({"prompt": cot_prompt(p.question), "context": pair[0], "chosen": pair[1],
                                "rejected": pair[2], "problem_id": p.id, "correction_id": c.id})
    if lengths is not None:
        cot = [kept for ex in cot if (kept := lengths.keep(ex)) is not None]
    if size is not None and len(cot) < size:
        raise ValueError(f"only {len(cot)} CoT examples: cannot build CoT-only mixes of size {size}")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"cot": _write(out_dir / "cot.jsonl", cot), "correction": _write(out_dir / "correction.jsonl", corrections),
             "corrected_cot": _write(out_dir / "corrected_cot.jsonl", corrected),
             "preference": _write_rows(out_dir / "preference.jsonl", preferences)}
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
        "counts": {"cot": len(cot), "correction": len(corrections), "corrected_cot": len(corrected),
                   "preference": len(preferences),
                   "cot_reference": sum(ex.source == "reference" for ex in cot),
                   "cot_augmentation": sum(ex.source.startswith("augment:") for ex in cot)},
        "augment_per_problem": augment_per_problem,
        "correction_format": correction_format,
        "mistakes": mistake_counts,
        "review": {**review, "kept": dict(review["kept"]), "left_out": dict(review["left_out"])},
        "sources": sorted({ex.source for ex in cot + corrections}),
        "mixes": mixes,
        "length": lengths.report() if lengths is not None else None,
        "formats": {"fields": ["type", "prompt", "completion", "problem_id", "source"],
                    "loss": "completion only (TRL prompt-completion format)"},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    session.add(Export(id=manifest["id"], path=str(out_dir), manifest=manifest))
    return manifest
