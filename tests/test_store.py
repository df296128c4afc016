"""The store: migrations, SQLite WAL, exactly-once writes, intake validation, and a real PostgreSQL server."""

from __future__ import annotations

import json
import sqlite3

from sqlalchemy import func, inspect, select

from lema.core.answers import DatasetKind
from lema.core.store import repository as repo
from lema.core.store.db import make_engine, open_store
from lema.core.store.models import Review

TABLES = {"problems", "attempts", "corrections", "augmentations", "intake", "exports", "reviews",
          "alembic_version"}


def problem(i: int) -> repo.ProblemIn:
    return repo.ProblemIn(kind=DatasetKind.GSM8K, question=f"What is {i} + 1?", gold_answer=str(i + 1),
                          source="test")


def exercise(url: str) -> None:
    sessions = open_store(url)
    open_store(url)  # migrating twice is a no-op
    assert TABLES <= set(inspect(sessions.kw["bind"]).get_table_names())
    with sessions.begin() as s:
        assert repo.add_problems(s, [problem(i) for i in range(5)]) == 5
    with sessions.begin() as s:  # the same problems again: nothing new
        assert repo.add_problems(s, [problem(i) for i in range(5)]) == 0
    ids = [problem(i).key() for i in range(5)]
    rows = [dict(id=f"{ids[0]}|run|{k}", problem_id=ids[0], model="m", adapter="", sampling={}, sample_index=k,
                 text="t", extracted_answer="1", correct=k == 0, verdict={}, prompt_tokens=1, completion_tokens=1)
            for k in range(3)]
    with sessions.begin() as s:
        assert repo.add_attempts(s, rows) == 3
    with sessions.begin() as s:
        assert repo.add_attempts(s, rows) == 0  # exactly once
        assert repo.problems_missing_attempts(s, ids, "run", 3) == ids[1:]
        assert len(repo.wrong_attempts_without_correction(s, "cX")) == 2
        repo.add_correction(s, dict(id=f"{rows[1]['id']}|cX", attempt_id=rows[1]["id"], problem_id=ids[0],
                                    upstream_model="u", prompt_id="p", prompt_version="v", status="accepted"))
    with sessions.begin() as s:
        assert [a.id for a in repo.wrong_attempts_without_correction(s, "cX")] == [rows[2]["id"]]
        assert repo.enqueue_intake(s, ids[:2]) == 2 and repo.enqueue_intake(s, ids[:2]) == 0
        assert repo.pending_intake(s, 10) == ids[:2]
        repo.mark_intake_done(s, ids[:1])
    with sessions() as s:
        assert repo.pending_intake(s, 10) == ids[1:2]
        c = repo.counts(s)
        assert (c["problems"], c["attempts"], c["mistakes"], c["corrections_accepted"]) == (5, 3, 2, 1)
    # People's grades (migration 0005): a regrade and an undo keep every row; the lowest current grade counts.
    from lema.core import reviews

    correction = f"{rows[1]['id']}|cX"
    with sessions.begin() as s:
        reviews.record_grade(s, correction, "alice", "excellent")
        reviews.record_grade(s, correction, "alice", "good", "second look")
        reviews.record_grade(s, correction, "bob", "poor")
    with sessions.begin() as s:
        assert reviews.effective_grades(s) == {correction: "poor"}
        assert reviews.undo_grade(s, correction, "bob") is None
        assert reviews.effective_grades(s) == {correction: "good"}
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Review)) == 3
        # The review pages' queries on this database (filters, search with LIKE metacharacters, the summary).
        from lema.services.review import queries

        page = queries.queue(s, queries.QueueFilter(grade="ungraded", q="0 + 1"), "bob")
        assert [r["id"] for r in page.rows] == [correction] and page.total == 1
        assert queries.queue(s, queries.QueueFilter(grade="good"), "alice").total == 1
        assert queries.queue(s, queries.QueueFilter(q="100%_"), "bob").total == 0
        assert queries.neighbours(s, queries.QueueFilter(), "bob", correction) == (None, None)
        assert queries.correction_view(s, correction)["grades"][0]["grade"] == "good"
        assert queries.summary(s)["totals"] == {"excellent": 0, "good": 1, "poor": 0}


def test_sqlite_store_in_wal_mode(tmp_path):
    path = tmp_path / "lema.db"
    exercise(str(path))
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_postgresql_store(postgres_url):
    exercise(postgres_url)
    assert make_engine(postgres_url).dialect.name == "postgresql"


def test_upstream_errors_are_retried_by_a_later_run_and_replaced(tmp_path):
    """Issue 17, item 5: a correction stored as `upstream_error` used to settle its attempt for good."""
    sessions = open_store(str(tmp_path / "lema.db"))
    with sessions.begin() as s:
        repo.add_problems(s, [problem(1)])
    pid = problem(1).key()
    attempt = dict(id=f"{pid}|run|0", problem_id=pid, model="m", adapter="", sampling={}, sample_index=0, text="t",
                   extracted_answer="3", correct=False, verdict={}, prompt_tokens=1, completion_tokens=1)
    failed = dict(id=f"{attempt['id']}|cX", attempt_id=attempt["id"], problem_id=pid, upstream_model="u",
                  prompt_id="p", prompt_version="v", status="upstream_error", failure_reason="401 bad key")
    with sessions.begin() as s:
        repo.add_attempts(s, [attempt])
        repo.add_correction(s, failed)
    with sessions.begin() as s:  # the next run asks again
        assert [a.id for a in repo.wrong_attempts_without_correction(s, "cX")] == [attempt["id"]]
        assert repo.add_correction(s, {**failed, "failure_reason": "still 401"}) == 0  # a failure again: kept
        assert repo.add_correction(s, {**failed, "status": "accepted", "failure_reason": ""}) == 1
    with sessions() as s:
        assert repo.wrong_attempts_without_correction(s, "cX") == []
        assert repo.counts(s)["corrections_accepted"] == 1


def test_intake_file_rejected_line_by_line_and_valid_lines_kept(tmp_path):
    lines = [
        json.dumps({"kind": "gsm8k", "question": "What is 2 + 2?", "gold_answer": "4"}),
        "{not json",
        json.dumps({"kind": "physics", "question": "Q", "gold_answer": "1"}),
        "",
        json.dumps({"kind": "math", "question": "   ", "gold_answer": "1"}),
        json.dumps(["a", "list"]),
        json.dumps({"kind": "math", "question": "Compute $1+1$.", "gold_answer": "2", "surprise": 1}),
        json.dumps({"kind": "math", "question": "Compute $2+2$.", "gold_answer": "4", "id": "m-1"}),
    ]
    valid, errors = repo.parse_problem_lines(lines)
    assert [p.question for p in valid] == ["What is 2 + 2?", "Compute $2+2$."]
    assert [n for n, _ in errors] == [2, 3, 5, 6, 7]
    reasons = dict(errors)
    assert "not valid JSON" in reasons[2] and "kind" in reasons[3] and "question" in reasons[5]
    assert "surprise" in reasons[7]


def test_an_unreachable_store_is_a_clear_error_not_a_traceback(tmp_path):
    """Issue 17, item 8: `sqlite:///tmp/x.db` is relative to the working directory (SQLAlchemy's rule); a folder that
    does not exist gave a driver traceback."""
    import subprocess

    from conftest import lema_command

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"kind": "gsm8k", "question": "What is 1 + 1?", "gold_answer": "2"}) + "\n")
    for url, expected in (("sqlite:///no-such-folder/x.db", "folder does not exist"),
                          ("postgresql://user:hunter2@127.0.0.1:1/x", "cannot open")):
        out = subprocess.run([*lema_command(), "problems", "add", str(path), "--store", url], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and expected in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and "hunter2" not in out.stderr


def test_migration_0004_backfills_run_keys_and_corrector_tags(tmp_path):
    """A store written before 0004 (run key and corrector tag only inside the ids) upgrades with both columns filled,
    and the queries that used leading-wildcard LIKE scans find the same rows by column."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from lema.core.store.db import MIGRATIONS

    url = str(tmp_path / "old.db")
    engine = make_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0003")
    pid = problem(1).key()
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO problems (id, kind, question, gold_answer, source, program_json, meta, "
                                "created_at) VALUES (:id, 'gsm8k', 'q', '2', 's', '', '{}', '2026-01-01')"), {"id": pid})
        for k in range(2):
            connection.execute(text(
                "INSERT INTO attempts (id, problem_id, model, adapter, sampling, sample_index, text, extracted_answer, "
                "correct, verdict, prompt_tokens, completion_tokens, created_at) VALUES (:id, :p, 'm', '', '{}', :k, "
                "'t', '1', 0, '{}', 1, 1, '2026-01-01')"), {"id": f"{pid}|runA|{k}", "p": pid, "k": k})
        connection.execute(text(
            "INSERT INTO corrections (id, attempt_id, problem_id, upstream_model, prompt_id, prompt_version, status, "
            "incorrect_step, explanation, corrected_solution, final_answer, verified, failure_reason, prompt_tokens, "
            "completion_tokens, cost_usd, created_at) VALUES (:id, :a, :p, 'u', 'p', 'v', 'accepted', 1, '', '', '', "
            "1, '', 0, 0, 0, '2026-01-01')"), {"id": f"{pid}|runA|0|cTag", "a": f"{pid}|runA|0", "p": pid})
    sessions = open_store(url)  # upgrades to head
    with sessions() as s:
        assert s.execute(text("SELECT DISTINCT run_key FROM attempts")).scalars().all() == ["runA"]
        assert s.execute(text("SELECT corrector FROM corrections")).scalars().all() == ["cTag"]
        assert repo.problems_missing_attempts(s, [pid], "runA", 2) == []
        assert [a.id for a in repo.wrong_attempts_without_correction(s, "cTag")] == [f"{pid}|runA|1"]
