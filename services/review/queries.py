"""What the review pages read from the store: the queue (filtered, searched, ungraded first), one correction with
everything a reviewer needs beside it, and the summary. Grades are written through lema.core.reviews."""

from __future__ import annotations

import difflib
import html
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lema.core.errors import InvalidInput, NotFound
from lema.core.formats import split_steps
from lema.core.reviews import GRADES, agreement, current_grades, effective_grades
from lema.core.store.models import Attempt, Correction, Problem, Review

STATUSES = ("accepted", "unverified", "rejected", "unparseable", "upstream_error")
GRADE_FILTERS = ("ungraded", *GRADES, "any")
MAX_SEARCH_CHARS = 200
MAX_FILTER_CHARS = 300


@dataclass(frozen=True)
class QueueFilter:
    """The queue's filters as typed values (from the page's query string): run (the attempts' run key: model,
    adapter, sampling), source (the problem's), status (the correction's), grade (yours: ungraded first by
    default, a grade, or any) and a search in the problem text."""

    run: str = ""
    source: str = ""
    status: str = ""
    grade: str = "any"
    q: str = ""

    def __post_init__(self):
        for name in ("run", "source", "status", "grade", "q"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise InvalidInput(f"{name} must be text")
            limit = MAX_SEARCH_CHARS if name == "q" else MAX_FILTER_CHARS
            if len(value) > limit:
                raise InvalidInput(f"{name} must be at most {limit} characters (got {len(value)})")
        if self.status and self.status not in STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(STATUSES)} (got {self.status[:40]!r})")
        if self.grade not in GRADE_FILTERS:
            raise InvalidInput(f"grade must be one of {', '.join(GRADE_FILTERS)} (got {self.grade[:40]!r})")

    def query_string(self) -> str:
        from urllib.parse import urlencode

        return urlencode({k: v for k, v in self.__dict__.items() if v and not (k == "grade" and v == "any")})


def _current_review(reviewer: str):
    """The reviewer's current (latest, not withdrawn) review rows."""
    latest = (select(func.max(Review.id)).where(Review.reviewer == reviewer, Review.withdrawn_at.is_(None))
              .group_by(Review.correction_id))
    return select(Review.correction_id, Review.grade).where(Review.id.in_(latest)).subquery()


def _escape_like(text: str) -> str:
    return re.sub(r"([\\%_])", r"\\\1", text)


def _filtered(flt: QueueFilter, reviewer: str):
    mine = _current_review(reviewer)
    query = (select(Correction.id, Correction.status, Correction.upstream_model, Correction.verified,
                    Problem.question, Problem.source, Attempt.run_key, Attempt.model, Attempt.adapter, mine.c.grade)
             .join(Attempt, Correction.attempt_id == Attempt.id)
             .join(Problem, Correction.problem_id == Problem.id)
             .outerjoin(mine, mine.c.correction_id == Correction.id))
    if flt.run:
        query = query.where(Attempt.run_key == flt.run)
    if flt.source:
        query = query.where(Problem.source == flt.source)
    if flt.status:
        query = query.where(Correction.status == flt.status)
    if flt.grade == "ungraded":
        query = query.where(mine.c.grade.is_(None))
    elif flt.grade in GRADES:
        query = query.where(mine.c.grade == flt.grade)
    if flt.q.strip():
        query = query.where(Problem.question.ilike(f"%{_escape_like(flt.q.strip())}%", escape="\\"))
    return query, mine


@dataclass
class QueuePage:
    rows: list[dict]
    total: int
    offset: int
    limit: int
    runs: list[dict] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)


def queue(session: Session, flt: QueueFilter, reviewer: str, offset: int = 0, limit: int = 50) -> QueuePage:
    if offset < 0:
        raise InvalidInput("offset must be >= 0")
    query, mine = _filtered(flt, reviewer)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    ordered = query.order_by(mine.c.grade.is_not(None), Correction.id).offset(offset).limit(limit)
    rows = [dict(row._mapping) for row in session.execute(ordered)]
    runs = [dict(r._mapping) for r in session.execute(
        select(Attempt.run_key, Attempt.model, Attempt.adapter).join(Correction, Correction.attempt_id == Attempt.id)
        .group_by(Attempt.run_key, Attempt.model, Attempt.adapter).order_by(Attempt.run_key))]
    sources = list(session.scalars(select(Problem.source).join(Correction, Correction.problem_id == Problem.id)
                                   .group_by(Problem.source).order_by(Problem.source)))
    return QueuePage(rows, total, offset, limit, runs, sources)


def neighbours(session: Session, flt: QueueFilter, reviewer: str, correction_id: str) -> tuple[str | None, str | None]:
    """The previous and next correction in the filtered queue, by id (stable while grades change)."""
    query, _ = _filtered(flt, reviewer)
    ids = query.with_only_columns(Correction.id)
    before = session.scalar(ids.where(Correction.id < correction_id).order_by(Correction.id.desc()).limit(1))
    after = session.scalar(ids.where(Correction.id > correction_id).order_by(Correction.id).limit(1))
    return before, after


def first_in_queue(session: Session, flt: QueueFilter, reviewer: str) -> str | None:
    query, mine = _filtered(flt, reviewer)
    return session.scalar(query.with_only_columns(Correction.id).order_by(mine.c.grade.is_not(None), Correction.id)
                          .limit(1))


def _word_diff(before: str, after: str) -> str:
    """HTML of a word-level diff (escaped): <del> what the corrector removed, <ins> what it wrote."""
    left, right = re.findall(r"\S+|\s+", before), re.findall(r"\S+|\s+", after)
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=left, b=right, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(html.escape("".join(left[i1:i2])))
            continue
        if i2 > i1:
            out.append(f"<del>{html.escape(''.join(left[i1:i2]))}</del>")
        if j2 > j1:
            out.append(f"<ins>{html.escape(''.join(right[j1:j2]))}</ins>")
    return "".join(out)


def correction_view(session: Session, correction_id: str) -> dict:
    found = session.execute(select(Correction, Attempt, Problem).join(Attempt, Correction.attempt_id == Attempt.id)
                            .join(Problem, Correction.problem_id == Problem.id)
                            .where(Correction.id == correction_id)).first()
    if found is None:
        raise NotFound(f"id: no correction {correction_id[:200]!r}")
    c, a, p = found
    steps = split_steps(a.text)
    wrong = c.incorrect_step if 1 <= c.incorrect_step <= len(steps) else None
    from_wrong = "\n".join(steps[wrong - 1:]) if wrong else a.text
    verdict = c.verdict or {}
    grades = current_grades(session, [c.id]).get(c.id, {})
    return {
        "id": c.id, "status": c.status, "verified": c.verified, "incorrect_step": c.incorrect_step,
        "explanation": c.explanation, "corrected_solution": c.corrected_solution, "final_answer": c.final_answer,
        "failure_reason": c.failure_reason, "corrector": f"{c.upstream_model} ({c.prompt_id} {c.prompt_version})",
        "verdict": {"correct": verdict.get("correct"), "reason": verdict.get("reason", ""),
                    "extracted_answer": verdict.get("extracted_answer", "")},
        "question": p.question, "gold_answer": p.gold_answer, "source": p.source, "kind": p.kind,
        "solution_steps": [{"number": i, "text": s, "wrong": i == wrong} for i, s in enumerate(steps, start=1)],
        "model_answer": a.extracted_answer, "run": {"key": a.run_key, "model": a.model, "adapter": a.adapter},
        "diff_html": _word_diff(from_wrong, c.corrected_solution),
        "grades": [{"reviewer": g.reviewer, "grade": g.grade, "note": g.note,
                    "at": g.created_at.isoformat(timespec="seconds")} for g in grades.values()],
    }


def summary(session: Session) -> dict:
    """Grades (each correction's grade for training: the lowest any reviewer gave) per round (the attempts' run:
    model and adapter) and per corrector model, and agreement between reviewers."""
    graded = effective_grades(session)
    rows = session.execute(select(Correction.id, Correction.upstream_model, Correction.prompt_version,
                                  Attempt.model, Attempt.adapter, Attempt.run_key)
                           .join(Attempt, Correction.attempt_id == Attempt.id))
    per_run: dict[str, Counter] = defaultdict(Counter)
    per_corrector: dict[str, Counter] = defaultdict(Counter)
    for cid, upstream, prompt_version, model, adapter, run_key in rows:
        grade = graded.get(cid, "ungraded")
        run = f"{adapter or model} [{run_key[:8]}]" if run_key else (adapter or model)
        per_run[run][grade] += 1
        per_corrector[f"{upstream} ({prompt_version})"][grade] += 1
    order = (*GRADES, "ungraded")

    def table(counts: dict[str, Counter]) -> list[dict]:
        return [{"name": name, "counts": {g: c[g] for g in order}, "total": sum(c.values())}
                for name, c in sorted(counts.items())]

    reviewers = session.execute(select(Review.reviewer, func.count()).where(Review.withdrawn_at.is_(None))
                                .group_by(Review.reviewer).order_by(Review.reviewer)).all()
    return {"grades": list(order), "per_run": table(per_run), "per_corrector": table(per_corrector),
            "totals": {g: sum(1 for v in graded.values() if v == g) for g in GRADES},
            "agreement": agreement(session), "reviewers": [{"name": r, "rows": n} for r, n in reviewers]}
