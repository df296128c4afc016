"""Issue 15, part 3: many `lema collect --follow` workers, one intake queue.

Workers claim intake problems (repository.claim_intake: SELECT ... FOR UPDATE SKIP LOCKED on PostgreSQL, one
UPDATE ... RETURNING on SQLite) with a lease they renew while working; a dead worker's problems are claimed again
once its lease passes, and the store's keys keep a problem done twice stored once. The claim itself is tested on
both backends; the fleet (three real worker processes, one SIGKILLed mid-run) on a real PostgreSQL server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from conftest import lema_command, requires_lema_tiny
from sqlalchemy import func, select, text, update

from lema.core.answers import DatasetKind
from lema.core.store import repository as repo
from lema.core.store.db import open_store
from lema.core.store.models import Attempt, Correction, IntakeItem


def fresh_database(postgres_url: str) -> str:
    """A new, empty database on the suite's PostgreSQL server, so these tests share no rows with others."""
    import psycopg

    name = f"fleet_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"


def queue(sessions, n: int, prefix: str = "q") -> list[str]:
    problems = [repo.ProblemIn(id=f"{prefix}{i:03d}", kind=DatasetKind.GSM8K, question=f"What is {i} + 1?",
                               gold_answer=str(i + 1)) for i in range(n)]
    with sessions.begin() as session:
        repo.intake_problems(session, problems)
    return [p.key() for p in problems]


def claim(sessions, worker: str, limit: int, lease_s: float = 60.0) -> list[str]:
    with sessions.begin() as session:
        return repo.claim_intake(session, worker, limit, lease_s)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "claims.db")
    return fresh_database(request.getfixturevalue("postgres_url"))


def test_two_open_claims_on_postgresql_skip_each_others_rows(postgres_url):
    # Claim A is not committed yet when claim B runs: B must neither wait for A's locked rows (lock_timeout turns a
    # wait into an error) nor take them; it takes the next ones.
    sessions = open_store(fresh_database(postgres_url))
    ids = queue(sessions, 10)
    with sessions.begin() as a:
        first = repo.claim_intake(a, "w-a", 4, 60)
        with sessions.begin() as b:
            b.execute(text("SET LOCAL lock_timeout = '2s'"))
            second = repo.claim_intake(b, "w-b", 4, 60)
    assert first == ids[:4] and second == ids[4:8]
    assert claim(sessions, "w-c", 10) == ids[8:]
    assert claim(sessions, "w-d", 10) == []  # everything is held by a live lease


def test_concurrent_claims_never_return_the_same_row(store_url):
    # Eight workers claim three at a time, each claim in its own transaction, all started together, until the
    # queue is empty: every problem goes to exactly one of them.
    sessions = open_store(store_url)
    ids = queue(sessions, 90)
    start = threading.Barrier(8)
    got: dict[str, list[str]] = {f"w{i}": [] for i in range(8)}
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            start.wait()
            while batch := claim(sessions, name, 3):
                got[name] += batch
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(name,)) for name in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    everything = [pid for batch in got.values() for pid in batch]
    assert sorted(everything) == ids  # none twice, none missed
    with sessions() as session:
        rows = session.execute(select(IntakeItem.problem_id, IntakeItem.worker_id, IntakeItem.claims)).all()
    owner = {pid: name for name, batch in got.items() for pid in batch}
    assert all(worker_id == owner[pid] and claims == 1 for pid, worker_id, claims in rows)
    sessions.kw["bind"].dispose()


def test_a_live_lease_is_kept_and_an_expired_one_is_claimed_again(store_url):
    sessions = open_store(store_url)
    ids = queue(sessions, 3)
    assert claim(sessions, "w1", 2, lease_s=1.0) == ids[:2]
    assert claim(sessions, "w2", 5, lease_s=60) == ids[2:]   # w1's live leases are not w2's to take
    with sessions.begin() as session:                        # w1's heartbeat keeps one alive
        assert repo.renew_intake_leases(session, "w1", ids[:1], lease_s=60) == ids[:1]
    time.sleep(1.3)                                          # ... and lets the other one pass (w1 "died" on it)
    assert claim(sessions, "w3", 5) == ids[1:2]
    with sessions.begin() as session:
        # w1 wakes up: the problem w3 took is not w1's any more; its heartbeat learns that
        assert repo.renew_intake_leases(session, "w1", ids[:2], lease_s=60) == ids[:1]
        repo.mark_intake_done(session, ids[:1], worker_id="w1")
        assert repo.release_intake(session, "w3", ids[1:2]) == 1  # w3 stops cleanly: claimable at once
    assert claim(sessions, "w4", 5) == ids[1:2]
    with sessions() as session:
        rows = {r.problem_id: r for r in session.scalars(select(IntakeItem))}
    assert (rows[ids[0]].status, rows[ids[0]].worker_id, rows[ids[0]].lease_until) == ("done", "w1", None)
    assert (rows[ids[1]].worker_id, rows[ids[1]].claims) == ("w4", 3)
    assert claim(sessions, "w5", 5) == []  # done items are never claimed; the rest are held
    sessions.kw["bind"].dispose()


def test_bad_claims_are_refused(tmp_path):
    sessions = open_store(str(tmp_path / "bad.db"))
    queue(sessions, 1)
    with sessions.begin() as session:
        with pytest.raises(ValueError, match="worker id"):
            repo.claim_intake(session, "", 1, 60)
        with pytest.raises(ValueError, match="longer than 0 seconds"):
            repo.claim_intake(session, "w", 1, 0)
        assert repo.claim_intake(session, "w", 0, 60) == []


@pytest.mark.parametrize("args, message", [
    (["--lease-s", "0.5"], "--lease-s"),
    (["--worker-id", ""], "--worker-id"),
    (["--worker-id", "x" * 201], "--worker-id"),
])
def test_bad_worker_options_are_clear_errors(tmp_path, args, message):
    done = subprocess.run([*lema_command(), "collect", "--follow", "--store", str(tmp_path / "s.db"), *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_worker_options_without_follow_are_refused(tmp_path):
    done = subprocess.run([*lema_command(), "collect", "--source", "synthetic:1", "--store", str(tmp_path / "s.db"),
                           "--worker-id", "w1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "apply to --follow" in done.stderr, done.stderr


# --- the fleet: three real workers on one PostgreSQL intake, one of them killed mid-run ------------------------

PROBLEMS = 48
SAMPLES = 2
LEASE_S = 5


def _start_worker(store: str, name: str, log_dir, lease_s: float = LEASE_S) -> subprocess.Popen:
    log = open(log_dir / f"{name}.log", "w")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}  # three on shared cores
    return subprocess.Popen(
        [*lema_command(), "collect", "--follow", "--store", store, "--worker-id", name, "--lease-s", str(lease_s),
         "--poll-s", "0.3", "--samples", str(SAMPLES), "--max-tokens", "96", "--batch-size", "2"],
        stdout=log, stderr=subprocess.STDOUT, env=env)


def _intake(sessions) -> dict[str, tuple[str, str | None, int]]:
    with sessions() as session:
        rows = session.execute(select(IntakeItem.problem_id, IntakeItem.status, IntakeItem.worker_id,
                                      IntakeItem.claims))
        return {pid: (status, worker, claims) for pid, status, worker, claims in rows}


def _wait(condition, workers: dict, deadline: float, logs) -> None:
    while not condition():
        for name, process in workers.items():
            assert process.poll() is None, f"{name} exited: {(logs / f'{name}.log').read_text()[-3000:]}"
        assert time.monotonic() < deadline, "the fleet did not get there in time"
        time.sleep(0.2)


@requires_lema_tiny
def test_three_workers_share_the_queue_and_a_killed_ones_problems_are_finished_by_others(postgres_url, tmp_path):
    from lema.services.collector.sources import load_source

    store = fresh_database(postgres_url)
    sessions = open_store(store)  # migrated here, before the workers start
    problems = load_source(f"synthetic:{PROBLEMS}:seed=15")
    with sessions.begin() as session:
        repo.intake_problems(session, problems)
    ids = sorted(p.key() for p in problems)

    began = time.monotonic()
    deadline = began + 420
    workers = {"w1": _start_worker(store, "w1", tmp_path)}
    try:
        def held_by(name):
            return [pid for pid, (status, worker, _) in _intake(sessions).items()
                    if status == "pending" and worker == name]

        def done_by(name):
            return [pid for pid, (status, worker, _) in _intake(sessions).items()
                    if status == "done" and worker == name]

        _wait(lambda: held_by("w1"), workers, deadline, tmp_path)  # w1 has claimed work
        for name in ("w2", "w3"):
            workers[name] = _start_worker(store, name, tmp_path)
        def started(problem_ids):
            with sessions() as session:
                return session.scalar(select(func.count(func.distinct(Attempt.problem_id)))
                                      .where(Attempt.problem_id.in_(problem_ids)))

        # Mid-run: w1 has finished a claim, and has stored some of the next one's attempts but not all of them.
        _wait(lambda: done_by("w1") and 0 < started(held := held_by("w1")) < len(held), workers, deadline, tmp_path)
        workers["w1"].send_signal(signal.SIGKILL)
        workers["w1"].wait(timeout=30)
        killed_at = time.monotonic()
        orphans = held_by("w1")          # claimed by w1, not finished: its lease (<= 5 s) has not passed yet
        done_by_w1 = len(done_by("w1"))
        started_by_w1 = started(orphans)  # w1's half-done work on them, which the others find and do not redo
        alive = {name: workers[name] for name in ("w2", "w3")}

        def drained():
            return all(status != "pending" for status, _, _ in _intake(sessions).values())

        _wait(drained, alive, deadline, tmp_path)
        drained_at = time.monotonic()
        counts_before = _store_counts(sessions)
        at_drain = _intake(sessions)  # who did what (the re-run below re-stamps four problems)

        # A problem done twice: put four done problems back as if the worker that did them had stalled past its
        # lease before marking them (their results are stored). The live workers claim and process them again.
        again = ids[:4]
        with sessions.begin() as session:
            session.execute(update(IntakeItem).where(IntakeItem.problem_id.in_(again)).values(
                status="pending", worker_id="stalled", lease_until=func.now() - timedelta(seconds=1)))
        _wait(drained, alive, deadline, tmp_path)
        assert _store_counts(sessions) == counts_before  # stored once, however often processed

        for name, process in alive.items():  # a clean stop (SIGTERM, as a container is stopped)
            process.send_signal(signal.SIGTERM)
        codes = {name: process.wait(timeout=60) for name, process in alive.items()}
    finally:
        for process in workers.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    for name in ("w2", "w3"):
        log = (tmp_path / f"{name}.log").read_text()
        assert codes[name] == 130 and "Traceback" not in log, log[-3000:]

    intake = _intake(sessions)
    # Every problem done exactly once in the intake: none pending, failed or lost.
    assert sorted(intake) == ids and {status for status, _, _ in intake.values()} == {"done"}
    # Attempts: one per (problem, sample), nothing twice, nothing missing; one correction per wrong attempt.
    with sessions() as session:
        per_problem = dict(session.execute(select(Attempt.problem_id, func.count()).group_by(Attempt.problem_id)).all())
        keys = session.execute(select(Attempt.problem_id, Attempt.sample_index)).all()
        wrong = session.scalar(select(func.count()).select_from(Attempt).where(Attempt.correct.is_(False)))
        corrected = session.execute(select(Correction.attempt_id)).all()
    assert per_problem == {pid: SAMPLES for pid in ids}
    assert len(keys) == len(set(keys)) == PROBLEMS * SAMPLES
    assert len(corrected) == len(set(corrected)) == wrong
    # The killed worker's claimed problems were completed by the others, after its lease passed.
    assert orphans, "w1 held nothing when it was killed"
    for pid in orphans:
        status, worker, claims = intake[pid]
        assert status == "done" and worker in ("w2", "w3") and claims >= 2, (pid, intake[pid])
    assert all(intake[pid][2] >= 2 and intake[pid][1] in ("w2", "w3") for pid in again)
    # No live lease is left behind (SIGTERM released what the workers held; they held nothing by then).
    with sessions() as session:
        assert not session.scalar(select(func.count()).select_from(IntakeItem).where(IntakeItem.lease_until.is_not(None)))

    per_worker = Counter(worker for _, worker, _ in at_drain.values())
    finishers = Counter(at_drain[pid][1] for pid in orphans)
    # claimed more than once although their worker lived: a lease lost to a stall (work redone, stored once)
    reclaimed = sorted(pid for pid, (_, _, claims) in at_drain.items() if claims > 1 and pid not in orphans)
    summary = dict(problems=PROBLEMS, samples=SAMPLES, workers=3, lease_s=LEASE_S, done_per_worker=dict(per_worker),
                   w1_done_before_kill=done_by_w1, w1_claimed_unfinished_at_kill=len(orphans),
                   of_which_w1_had_stored_attempts=started_by_w1,
                   orphans_finished_by=dict(finishers), reclaimed_otherwise=len(reclaimed),
                   kill_to_drain_s=round(drained_at - killed_at, 1), start_to_drain_s=round(drained_at - began, 1))
    print("fleet:", json.dumps(summary), file=sys.stderr)
    assert sum(per_worker.values()) == PROBLEMS and per_worker["w1"] == done_by_w1
    sessions.kw["bind"].dispose()


def _store_counts(sessions) -> dict[str, int]:
    with sessions() as session:
        counts = repo.counts(session)
    return {key: value for key, value in counts.items() if not key.startswith("intake")}


@requires_lema_tiny
def test_a_stopped_worker_gives_its_unfinished_claims_back_at_once(tmp_path):
    # SQLite (workers on one machine): a worker stopped with SIGTERM (a container stopped) releases what it holds,
    # so the next worker need not wait out the lease (an hour here).
    from lema.services.collector.sources import load_source

    store = str(tmp_path / "one-machine.db")
    sessions = open_store(store)
    with sessions.begin() as session:
        repo.intake_problems(session, load_source("synthetic:24:seed=4"))
    worker = _start_worker(store, "w1", tmp_path, lease_s=3600)
    try:
        _wait(lambda: any(s == "done" for s, _, _ in _intake(sessions).values()), {"w1": worker},
              time.monotonic() + 300, tmp_path)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 130
    finally:
        if worker.poll() is None:
            worker.kill()
    with sessions() as session:
        assert not session.scalar(select(func.count()).select_from(IntakeItem).where(IntakeItem.lease_until.is_not(None)))
    intake = _intake(sessions)
    pending = {pid for pid, (status, _, _) in intake.items() if status == "pending"}
    assert any(intake[pid][1] == "w1" for pid in pending)  # it held some when stopped
    assert set(claim(sessions, "w2", 100)) == pending       # all claimable now
    sessions.kw["bind"].dispose()
