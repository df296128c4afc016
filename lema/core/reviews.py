"""People's grades of corrections: writing them (with undo), reading each reviewer's current grade, the grade a
correction has for training (`effective_grades`), and agreement between reviewers.

The LEMA paper graded 50 of its corrector's outputs by hand (35 Excellent, 11 Good, 4 Poor) before trusting it;
`lema serve review` lets a team do the same every round, and `lema export --min-grade` keeps what was graded below
the bar out of training. History is never lost: a regrade adds a row, an undo stamps the latest row withdrawn.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from lema.core.errors import InvalidInput, NotFound
from lema.core.store.models import Correction, Review

# Best first; the paper's three grades.
GRADES = ("excellent", "good", "poor")
GRADE_RANK = {grade: rank for rank, grade in enumerate(reversed(GRADES))}  # poor 0 < good 1 < excellent 2
MAX_NOTE_CHARS = 2000
REVIEWER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
UNGRADED_POLICIES = ("keep", "drop")


def check_grade(grade: str, field: str = "grade") -> str:
    value = grade.strip().lower() if isinstance(grade, str) else grade
    if value not in GRADES:
        raise InvalidInput(f"{field} must be one of {', '.join(GRADES)} (got {str(grade)[:40]!r})")
    return value


def check_reviewer(name: str) -> str:
    if not isinstance(name, str) or not REVIEWER_PATTERN.match(name):
        raise InvalidInput("reviewer must be 1-64 letters, digits or . _ @ - (starting with a letter or digit)")
    return name


@dataclass(frozen=True)
class Grade:
    correction_id: str
    reviewer: str
    grade: str
    note: str
    created_at: datetime


def record_grade(session: Session, correction_id: str, reviewer: str, grade: str, note: str = "") -> Grade:
    """The reviewer's grade of a correction (a regrade supersedes their earlier one; both rows stay)."""
    grade, reviewer = check_grade(grade), check_reviewer(reviewer)
    if len(note) > MAX_NOTE_CHARS:
        raise InvalidInput(f"note must be at most {MAX_NOTE_CHARS} characters (got {len(note)})")
    if session.get(Correction, correction_id) is None:
        raise NotFound(f"correction_id: no correction {correction_id[:200]!r}")
    row = Review(correction_id=correction_id, reviewer=reviewer, grade=grade, note=note.strip(),
                 created_at=datetime.now(timezone.utc))
    session.add(row)
    session.flush()
    return Grade(row.correction_id, row.reviewer, row.grade, row.note, row.created_at)


def undo_grade(session: Session, correction_id: str, reviewer: str) -> Grade | None:
    """Withdraw the reviewer's latest grade of the correction; return the grade that counts now (their earlier one,
    or None). NotFound when they have nothing to undo there."""
    reviewer = check_reviewer(reviewer)
    latest = session.scalars(select(Review).where(Review.correction_id == correction_id,
                                                  Review.reviewer == reviewer, Review.withdrawn_at.is_(None))
                             .order_by(Review.id.desc()).limit(2)).all()
    if not latest:
        raise NotFound(f"correction_id: {reviewer} has no grade to undo on {correction_id[:200]!r}")
    latest[0].withdrawn_at = datetime.now(timezone.utc)
    session.flush()
    if len(latest) == 1:
        return None
    earlier = latest[1]
    return Grade(earlier.correction_id, earlier.reviewer, earlier.grade, earlier.note, earlier.created_at)


def current_grades(session: Session, correction_ids=None) -> dict[str, dict[str, Grade]]:
    """correction id -> reviewer -> that reviewer's current grade (their latest row not withdrawn)."""
    query = select(Review).where(Review.withdrawn_at.is_(None)).order_by(Review.id)
    if correction_ids is not None:
        ids = list(correction_ids)
        if not ids:
            return {}
        query = query.where(Review.correction_id.in_(ids))
    found: dict[str, dict[str, Grade]] = defaultdict(dict)
    for row in session.scalars(query):  # ascending ids: a later row replaces an earlier one
        found[row.correction_id][row.reviewer] = Grade(row.correction_id, row.reviewer, row.grade, row.note,
                                                       row.created_at)
    return dict(found)


def effective_grades(session: Session) -> dict[str, str]:
    """The grade a correction has for training: the lowest current grade any reviewer gave it (one reviewer's
    Poor keeps it out of a `--min-grade good` export). Ungraded corrections are absent."""
    return {cid: min((g.grade for g in by_reviewer.values()), key=GRADE_RANK.__getitem__)
            for cid, by_reviewer in current_grades(session).items() if by_reviewer}


@dataclass(frozen=True)
class GradeFilter:
    """Which corrections an export keeps: graded at least `min_grade` (None: every grade), and ungraded ones by
    `ungraded` (keep | drop)."""

    min_grade: str | None = None
    ungraded: str = "keep"

    def __post_init__(self):
        if self.min_grade is not None:
            object.__setattr__(self, "min_grade", check_grade(self.min_grade, "min_grade"))
        if self.ungraded not in UNGRADED_POLICIES:
            raise InvalidInput(f"ungraded must be one of {', '.join(UNGRADED_POLICIES)} (got {self.ungraded!r})")

    @property
    def active(self) -> bool:
        return self.min_grade is not None or self.ungraded != "keep"

    def keeps(self, grade: str | None) -> tuple[bool, str]:
        """(kept, why): why is the reason counted in the export manifest."""
        if grade is None:
            return (self.ungraded == "keep"), "ungraded"
        if self.min_grade is not None and GRADE_RANK[grade] < GRADE_RANK[self.min_grade]:
            return False, f"graded_{grade}"
        return True, f"graded_{grade}"


def cohen_kappa(first: list[str], second: list[str]) -> float | None:
    """Cohen's kappa of two reviewers' grades on the same corrections (None when chance agreement is total)."""
    n = len(first)
    if n == 0 or n != len(second):
        return None
    observed = sum(a == b for a, b in zip(first, second)) / n
    left, right = Counter(first), Counter(second)
    expected = sum(left[g] * right[g] for g in GRADES) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def agreement(session: Session) -> list[dict]:
    """For each pair of reviewers who graded the same corrections: how many, the share graded alike, Cohen's kappa."""
    by_pair: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for by_reviewer in current_grades(session).values():
        names = sorted(by_reviewer)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                by_pair[(a, b)].append((by_reviewer[a].grade, by_reviewer[b].grade))
    report = []
    for (a, b), pairs in sorted(by_pair.items()):
        first, second = [x for x, _ in pairs], [y for _, y in pairs]
        report.append({"reviewers": [a, b], "n": len(pairs),
                       "agreement": sum(x == y for x, y in pairs) / len(pairs),
                       "kappa": cohen_kappa(first, second)})
    return report
