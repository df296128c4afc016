"""Reads and idempotent writes on the store. Every write of a work unit is insert-or-ignore on its key, in one
transaction, so a unit redone after a crash (or by a second collector) is stored exactly once."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import and_, func, inspect, or_, select
from sqlalchemy.orm import Session

from lema.core.answers import DatasetKind
from lema.core.store.models import Attempt, Augmentation, Correction, IntakeItem, Problem, utcnow

MAX_PROGRAM_CHARS = 100_000
MAX_META_CHARS = 16_000


class ProblemIn(BaseModel):
    """A problem as users hand it in (one JSONL line of `lema problems add`)."""

    model_config = ConfigDict(extra="forbid")

    kind: DatasetKind
    question: str = Field(min_length=1, max_length=8_000)
    gold_answer: str = Field(min_length=1, max_length=2_000)
    id: str | None = Field(default=None, max_length=200)
    source: str = Field(default="intake", max_length=300)
    gold_solution: str | None = Field(default=None, max_length=20_000)
    program_json: str | None = Field(default=None, max_length=MAX_PROGRAM_CHARS)
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("question", "gold_answer")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("program_json")
    @classmethod
    def _a_program(cls, value: str | None) -> str | None:
        """A synthetic problem's program must be one the reference corrector can run (else it would fail later,
        inside a collector, for every run)."""
        if value is None or not value.strip():
            return None
        from lema.core.synthetic.program import Program

        try:
            program = Program.from_json(value)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            raise ValueError(f"not a valid program ({type(exc).__name__})") from None
        if not program.steps:
            raise ValueError("a program needs at least one step")
        return value

    @field_validator("meta")
    @classmethod
    def _small_meta(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(value, default=str)) > MAX_META_CHARS:
            raise ValueError(f"at most {MAX_META_CHARS} characters as JSON")
        return value

    def key(self) -> str:
        """The caller's id, or a content hash (the same problem handed in twice is one problem)."""
        if self.id:
            return self.id
        digest = hashlib.sha256(f"{self.kind.value}\n{self.question.strip()}\n{self.gold_answer.strip()}".encode())
        return f"{self.kind.value}:{digest.hexdigest()[:20]}"


def validate_problem(data: dict[str, Any]) -> tuple[ProblemIn | None, str]:
    """One handed-in problem (a JSONL line's object, or a gRPC item as a dict): the problem, or the reason it is
    rejected, naming the field ("question: String should have at least 1 character")."""
    try:
        return ProblemIn.model_validate(data), ""
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "line"
        return None, f"{where}: {first['msg']}"


def parse_problem_lines(lines: Iterable[str]) -> tuple[list[ProblemIn], list[tuple[int, str]]]:
    """Valid problems and (line number, reason) for every rejected line; blank lines are skipped."""
    valid: list[ProblemIn] = []
    errors: list[tuple[int, str]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append((number, f"not valid JSON: {exc.msg} (column {exc.colno})"))
            continue
        if not isinstance(data, dict):
            errors.append((number, "expected a JSON object"))
            continue
        problem, reason = validate_problem(data)
        if problem is None:
            errors.append((number, reason))
        else:
            valid.append(problem)
    return valid, errors


def intake_problems(session: Session, problems: Sequence[ProblemIn]) -> tuple[int, int]:
    """Store the problems and queue them for a `--follow` collector, in the caller's transaction:
    (newly added, newly queued). Problems already stored or queued are left as they are."""
    added = add_problems(session, problems)
    queued = enqueue_intake(session, list(dict.fromkeys(p.key() for p in problems)))
    return added, queued


def _insert_ignore(session: Session, model, rows: Sequence[dict]) -> int:
    """INSERT ... ON CONFLICT DO NOTHING on the primary key (SQLite and PostgreSQL)."""
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    key = inspect(model).primary_key[0]
    # RETURNING counts the rows really inserted (rowcount is -1 for multi-row inserts on psycopg).
    result = session.execute(insert(model).values(list(rows)).on_conflict_do_nothing().returning(key))
    return len(result.all())


def add_problems(session: Session, problems: Sequence[ProblemIn]) -> int:
    rows = [
        dict(id=p.key(), source=p.source, kind=p.kind.value, question=p.question, gold_answer=p.gold_answer,
             gold_solution=p.gold_solution, program_json=p.program_json, meta=p.meta)
        for p in problems
    ]
    added = 0
    for start in range(0, len(rows), 500):
        added += _insert_ignore(session, Problem, rows[start : start + 500])
    return added


def enqueue_intake(session: Session, problem_ids: Sequence[str]) -> int:
    return _insert_ignore(session, IntakeItem, [dict(problem_id=pid, status="pending") for pid in problem_ids])


def pending_intake(session: Session, limit: int) -> list[str]:
    rows = session.execute(
        select(IntakeItem.problem_id).where(IntakeItem.status == "pending").order_by(IntakeItem.seq).limit(limit)
    )
    return [r[0] for r in rows]


def _now(session: Session):
    """The clock leases are measured by. PostgreSQL: the server's (workers on several machines would otherwise
    compare their own clocks, and a skewed one would take live leases or keep dead ones). SQLite is one machine's
    file, so this machine's clock is the only one there is."""
    if session.get_bind().dialect.name == "postgresql":
        return func.now()
    return utcnow()


def _lease_end(session: Session, lease_s: float):
    if not lease_s > 0:
        raise ValueError(f"a lease must be longer than 0 seconds; got {lease_s}")
    return _now(session) + timedelta(seconds=lease_s)


def _claimable(session: Session):
    """Pending, and either never claimed or with a lease that has passed (its worker died or stalled)."""
    return and_(IntakeItem.status == "pending",
                or_(IntakeItem.lease_until.is_(None), IntakeItem.lease_until < _now(session)))


def claim_intake(session: Session, worker_id: str, limit: int, lease_s: float) -> list[str]:
    """Claim up to `limit` intake problems for `worker_id` (oldest first) until now + lease_s, in the caller's
    transaction, which should commit at once: the claim is what other workers see. Returns the problem ids.

    PostgreSQL: SELECT ... FOR UPDATE SKIP LOCKED, then stamp the rows. Concurrent claimers skip each other's
    locked rows instead of waiting on them, and a row claimed by a transaction that committed meanwhile is re-checked
    against the WHERE clause before it is locked (READ COMMITTED), so no row goes to two claimers.
    SQLite has no SKIP LOCKED: one UPDATE ... WHERE seq IN (the claimable ones) ... RETURNING, a single statement,
    which SQLite runs while holding its one writer lock; correct, but only for workers on the machine that holds
    the file (SQLite over a network file system does not lock reliably)."""
    if not worker_id:
        raise ValueError("a claim needs a worker id")
    if limit < 1:
        return []
    stamp = {"worker_id": worker_id, "lease_until": _lease_end(session, lease_s), "claims": IntakeItem.claims + 1}
    candidates = select(IntakeItem.seq).where(_claimable(session)).order_by(IntakeItem.seq).limit(limit)
    table = IntakeItem.__table__
    if session.get_bind().dialect.name == "postgresql":
        rows = session.execute(candidates.add_columns(IntakeItem.problem_id).with_for_update(skip_locked=True)).all()
        if rows:
            session.execute(table.update().where(table.c.seq.in_([seq for seq, _ in rows])).values(stamp))
    else:
        rows = session.execute(table.update().where(table.c.seq.in_(candidates.scalar_subquery())).values(stamp)
                               .returning(table.c.seq, table.c.problem_id)).all()
    return [problem_id for _, problem_id in sorted(rows)]


def renew_intake_leases(session: Session, worker_id: str, problem_ids: Sequence[str], lease_s: float) -> list[str]:
    """Extend this worker's leases on these problems (a live worker's heartbeat); returns the ones it still holds.
    A problem missing from the answer was finished, or taken over by another worker after this one's lease had
    passed (it stalled longer than a lease): the store's keys keep the result once either way."""
    if not problem_ids:
        return []
    table = IntakeItem.__table__
    rows = session.execute(
        table.update()
        .where(table.c.problem_id.in_(list(problem_ids)), table.c.worker_id == worker_id, table.c.status == "pending")
        .values(lease_until=_lease_end(session, lease_s)).returning(table.c.problem_id)).all()
    return [r[0] for r in rows]


def release_intake(session: Session, worker_id: str, problem_ids: Sequence[str]) -> int:
    """Give back unfinished claims now (a worker stopping cleanly), so others need not wait for the lease."""
    if not problem_ids:
        return 0
    table = IntakeItem.__table__
    result = session.execute(
        table.update()
        .where(table.c.problem_id.in_(list(problem_ids)), table.c.worker_id == worker_id, table.c.status == "pending")
        .values(lease_until=None).returning(table.c.problem_id))
    return len(result.all())


def mark_intake_done(session: Session, problem_ids: Sequence[str], worker_id: str | None = None) -> None:
    """Done, and no longer leased; `worker_id` (when given) is stamped as the one that finished it."""
    if problem_ids:
        values: dict = {IntakeItem.status: "done", IntakeItem.lease_until: None}
        if worker_id:
            values[IntakeItem.worker_id] = worker_id
        session.query(IntakeItem).filter(IntakeItem.problem_id.in_(problem_ids)).update(
            values, synchronize_session=False)


def mark_intake_failed(session: Session, problem_id: str, reason: str, worker_id: str | None = None) -> None:
    """Take a problem that cannot be processed off the queue, keeping why (it stays in the store)."""
    values: dict = {IntakeItem.status: "failed", IntakeItem.reason: reason[:1000], IntakeItem.lease_until: None}
    if worker_id:
        values[IntakeItem.worker_id] = worker_id
    session.query(IntakeItem).filter(IntakeItem.problem_id == problem_id).update(values, synchronize_session=False)


def attempt_id(problem_id: str, run_key: str, sample_index: int) -> str:
    """An attempt's key: one per (problem, run, sample). The run key also has a column of its own (indexed)."""
    return f"{problem_id}|{run_key}|{sample_index}"


def correction_id(attempt: str, corrector: str) -> str:
    """A correction's key: one per (attempt, corrector). The corrector tag also has a column of its own."""
    return f"{attempt}|{corrector}"


def add_attempts(session: Session, rows: Sequence[dict]) -> int:
    # The run key is the id's middle part (attempt_id); rows that do not carry the column get it from the id.
    rows = [row if row.get("run_key") else {**row, "run_key": row["id"].rsplit("|", 2)[-2]} for row in rows]
    return _insert_ignore(session, Attempt, rows)


# A correction that failed at the upstream (bad credentials, an unknown model, a request it refused) is kept as
# data, but it settles nothing: a later run asks again, and its answer replaces the failure.
RETRIED_STATUS = "upstream_error"


def add_correction(session: Session, row: dict) -> int:
    """Store a correction once; a new answer replaces an earlier `upstream_error` for the same attempt."""
    if not row.get("corrector"):
        row = {**row, "corrector": row["id"].rsplit("|", 1)[-1]}
    earlier = session.get(Correction, row["id"])
    if earlier is not None and earlier.status == RETRIED_STATUS and row.get("status") != RETRIED_STATUS:
        session.delete(earlier)
        session.flush()
    return _insert_ignore(session, Correction, [row])


def add_augmentations(session: Session, rows: Sequence[dict]) -> int:
    return _insert_ignore(session, Augmentation, rows)


def problems_by_id(session: Session, ids: Sequence[str]) -> list[Problem]:
    found = {p.id: p for p in session.scalars(select(Problem).where(Problem.id.in_(list(ids))))}
    return [found[i] for i in ids if i in found]


def problems_missing_attempts(session: Session, problem_ids: Sequence[str], attempt_prefix: str, k: int) -> list[str]:
    """Problems (of `problem_ids`) that do not yet have all k attempts of this (model, adapter, sampling) run."""
    done: set[str] = set()
    ids = list(problem_ids)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        rows = session.execute(
            select(Attempt.problem_id, func.count())
            .where(Attempt.problem_id.in_(chunk), Attempt.run_key == attempt_prefix)
            .group_by(Attempt.problem_id)
        )
        done |= {pid for pid, count in rows if count >= k}
    return [pid for pid in ids if pid not in done]


def wrong_attempts_without_correction(session: Session, correction_suffix: str, limit: int | None = None,
                                      worker_id: str | None = None) -> list[Attempt]:
    """Wrong attempts that have no correction from this (upstream, prompt version) yet, or only an upstream failure.
    With `worker_id`, leaves out the problems another worker holds a live lease on: their mistakes are being
    corrected by that worker right now (asking twice would be stored once, but costs a corrector call)."""
    corrected = select(Correction.attempt_id).where(Correction.corrector == correction_suffix,
                                                    Correction.status != RETRIED_STATUS)
    conditions = [Attempt.correct.is_(False), Attempt.id.not_in(corrected)]
    if worker_id:
        held = select(IntakeItem.problem_id).where(IntakeItem.status == "pending", IntakeItem.worker_id != worker_id,
                                                   IntakeItem.lease_until >= _now(session))
        conditions.append(Attempt.problem_id.not_in(held))
    query = select(Attempt).where(and_(*conditions)).order_by(Attempt.created_at, Attempt.id)
    if limit:
        query = query.limit(limit)
    return list(session.scalars(query))


def counts(session: Session) -> dict[str, int]:
    return {
        "problems": session.scalar(select(func.count()).select_from(Problem)) or 0,
        "attempts": session.scalar(select(func.count()).select_from(Attempt)) or 0,
        "mistakes": session.scalar(select(func.count()).select_from(Attempt).where(Attempt.correct.is_(False))) or 0,
        "corrections": session.scalar(select(func.count()).select_from(Correction)) or 0,
        "corrections_accepted": session.scalar(
            select(func.count()).select_from(Correction).where(Correction.status == "accepted")) or 0,
        "augmentations": session.scalar(select(func.count()).select_from(Augmentation)) or 0,
        "intake_pending": session.scalar(
            select(func.count()).select_from(IntakeItem).where(IntakeItem.status == "pending")) or 0,
        "intake_done": session.scalar(
            select(func.count()).select_from(IntakeItem).where(IntakeItem.status == "done")) or 0,
        "intake_failed": session.scalar(
            select(func.count()).select_from(IntakeItem).where(IntakeItem.status == "failed")) or 0,
    }
