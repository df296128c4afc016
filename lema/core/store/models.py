"""The data store's tables. Every row carries its provenance; primary keys of work units are deterministic
keys, so re-doing a unit after a crash can never insert it twice (exactly-once by construction)."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Problem(Base):
    __tablename__ = "problems"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    source: Mapped[str] = mapped_column(String(300))  # e.g. "synthetic:seed=0:train", "gsm8k:/path/train.jsonl"
    kind: Mapped[str] = mapped_column(String(20))  # gsm8k | math | synthetic
    question: Mapped[str] = mapped_column(Text)
    gold_answer: Mapped[str] = mapped_column(Text)
    gold_solution: Mapped[str | None] = mapped_column(Text, nullable=True)  # a reference chain of thought
    program_json: Mapped[str | None] = mapped_column(Text, nullable=True)  # synthetic problems only
    meta: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Attempt(Base):
    """One reasoning path of the reasoner, with its verdict."""

    __tablename__ = "attempts"
    __table_args__ = (Index("ix_attempts_problem_id_run_key", "problem_id", "run_key"),)
    id: Mapped[str] = mapped_column(String(300), primary_key=True)  # problem|run key|sample index
    problem_id: Mapped[str] = mapped_column(ForeignKey("problems.id"), index=True)
    run_key: Mapped[str] = mapped_column(String(40), default="", server_default="")  # model, adapter, sampling
    model: Mapped[str] = mapped_column(String(300))
    adapter: Mapped[str] = mapped_column(String(200), default="")
    sampling: Mapped[dict] = mapped_column(JSON)
    sample_index: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    extracted_answer: Mapped[str] = mapped_column(Text, default="")
    correct: Mapped[bool] = mapped_column(Boolean)
    verdict: Mapped[dict] = mapped_column(JSON)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Correction(Base):
    """The corrector's answer for one wrong attempt (accepted or not: failures are data too)."""

    __tablename__ = "corrections"
    __table_args__ = (Index("ix_corrections_attempt_id_corrector", "attempt_id", "corrector"),)
    id: Mapped[str] = mapped_column(String(400), primary_key=True)  # attempt|corrector tag
    attempt_id: Mapped[str] = mapped_column(ForeignKey("attempts.id"), index=True)
    corrector: Mapped[str] = mapped_column(String(40), default="", server_default="")  # upstream + prompt versions
    problem_id: Mapped[str] = mapped_column(ForeignKey("problems.id"), index=True)
    upstream_model: Mapped[str] = mapped_column(String(200))
    prompt_id: Mapped[str] = mapped_column(String(100))
    prompt_version: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(30))  # accepted | unverified | rejected | unparseable | upstream_error
    incorrect_step: Mapped[int] = mapped_column(Integer, default=0)
    explanation: Mapped[str] = mapped_column(Text, default="")
    corrected_solution: Mapped[str] = mapped_column(Text, default="")
    final_answer: Mapped[str] = mapped_column(Text, default="")
    verified: Mapped[bool] = mapped_column(Boolean, default=False)
    verdict: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    failure_reason: Mapped[str] = mapped_column(Text, default="")
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Augmentation(Base):
    """An extra verified chain of thought for a problem (the paper's CoT augmentation)."""

    __tablename__ = "augmentations"
    id: Mapped[str] = mapped_column(String(400), primary_key=True)
    problem_id: Mapped[str] = mapped_column(ForeignKey("problems.id"), index=True)
    upstream_model: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    verified: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class IntakeItem(Base):
    """Problems fed by users (`lema problems add`, gRPC) for a collector running with --follow."""

    __tablename__ = "intake"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    problem_id: Mapped[str] = mapped_column(ForeignKey("problems.id"), unique=True)
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending | done | failed
    reason: Mapped[str] = mapped_column(Text, default="", server_default="")  # why a failed item failed
    # Claims by `lema collect --follow` workers (repository.claim_intake): who holds or last held the item, until
    # when (a pending item whose lease has passed is claimable again: its worker died), and how often it was
    # claimed (more than once: a worker died or was too slow on it). Done/failed items keep worker_id: who did it.
    worker_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    claims: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Review(Base):
    """A person's grade of one correction (`lema serve review`): Excellent, Good or Poor, as the LEMA paper graded
    its corrector's output by hand. Rows are never deleted: a regrade adds a row (the reviewer's latest row is their
    grade), an undo stamps `withdrawn_at` on the reviewer's latest row (the one before it counts again)."""

    __tablename__ = "reviews"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    correction_id: Mapped[str] = mapped_column(ForeignKey("corrections.id"), index=True)
    reviewer: Mapped[str] = mapped_column(String(64))
    grade: Mapped[str] = mapped_column(String(16))  # excellent | good | poor
    note: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    withdrawn_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Export(Base):
    __tablename__ = "exports"
    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    manifest: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


Index("ix_attempts_problem_correct", Attempt.problem_id, Attempt.correct)
Index("ix_intake_status", IntakeItem.status, IntakeItem.seq)
