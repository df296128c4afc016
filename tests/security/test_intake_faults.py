"""Issue 17, item 6: the poison pill. An intake problem whose program has no steps was accepted, then made every
`lema collect --follow` crash with IndexError, so the queue never drained. Now such a program is refused at intake
(naming the field), and one already in a store fails alone: its corrections are stored as failures with a reason,
the rest of the queue is collected, the follower keeps running, and `lema collect` reports the failures. A problem
that cannot be processed at all (here: beyond the model's context) is marked failed in the intake, with its
reason, and the queue moves on."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time

from conftest import lema_command, requires_lema_tiny

from lema.core.answers import DatasetKind
from lema.core.store import repository as repo
from lema.core.store.db import open_store

pytestmark = requires_lema_tiny


def _query(store, sql):
    with sqlite3.connect(store) as connection:
        return connection.execute(sql).fetchall()


def test_a_program_without_steps_and_oversized_fields_are_refused_at_intake(tmp_path):
    lines = [
        {"kind": "gsm8k", "question": "Q1?", "gold_answer": "1", "program_json": '{"steps": []}'},
        {"kind": "gsm8k", "question": "Q2?", "gold_answer": "2", "program_json": "{not json"},
        {"kind": "gsm8k", "question": "Q3?", "gold_answer": "3", "program_json": "x" * 200_000},
        {"kind": "gsm8k", "question": "Q4?", "gold_answer": "4", "meta": {"blob": "y" * 50_000}},
        {"kind": "gsm8k", "question": "Q5?", "gold_answer": "5"},
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = subprocess.run([*lema_command(), "problems", "add", str(path), "--store", str(tmp_path / "s.db")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert json.loads(out.stdout)["rejected_lines"] == [1, 2, 3, 4]
    for number, field in ((1, "program_json"), (2, "program_json"), (3, "program_json"), (4, "meta")):
        assert f"{path}:{number}: rejected: {field}" in out.stderr, out.stderr
    assert "y" * 100 not in out.stderr and "x" * 100 not in out.stderr  # reasons never echo the input


def test_a_poison_pill_in_the_store_fails_alone_and_the_queue_drains(tmp_path):
    store = tmp_path / "poison.db"
    sessions = open_store(str(store))
    poison = repo.ProblemIn.model_construct(  # stored by an older version, before intake checked programs
        kind=DatasetKind.GSM8K, question="Tom has 4 boxes of 123 pens and 7 more pens. How many pens?",
        gold_answer="499", id="poison", source="intake", gold_solution=None, program_json='{"steps": []}', meta={})
    good = repo.ProblemIn(kind=DatasetKind.GSM8K, question="Ann has 5 cats and gets 2 more. How many cats?",
                          gold_answer="7", id="good")
    too_long = repo.ProblemIn(kind=DatasetKind.GSM8K, question=" ".join(str(i) for i in range(1500)) + "?",
                              gold_answer="1", id="too-long")  # valid, but beyond lema-tiny's 512-token context
    with sessions.begin() as session:
        repo.intake_problems(session, [poison, too_long, good])
    follower = subprocess.Popen([*lema_command(), "collect", "--follow", "--store", str(store), "--samples", "2",
                                 "--max-tokens", "120"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                # A suite started as a shell's background job inherits SIGINT ignored: the Ctrl-C
                                # this test sends must reach the follower's handler.
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while _query(store, "select count(*) from intake where status = 'pending'")[0][0]:
            assert follower.poll() is None, follower.stderr.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.5)
        time.sleep(1)
        assert follower.poll() is None  # still following
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(timeout=60)
    assert _query(store, "select count(*) from attempts where problem_id = 'good'")[0][0] == 2
    # the one that cannot be processed at all is taken off the queue with its reason; the others are done
    statuses = dict(_query(store, "select problem_id, status from intake"))
    assert statuses == {"poison": "done", "too-long": "failed", "good": "done"}
    reason = _query(store, "select reason from intake where problem_id = 'too-long'")[0][0]
    assert "ContextLengthError" in reason and "context of 512 tokens" in reason
    assert _query(store, "select count(*) from attempts where problem_id = 'poison'")[0][0] == 2
    failures = _query(store, "select status, failure_reason from corrections where problem_id = 'poison'")
    wrong = _query(store, "select count(*) from attempts where problem_id = 'poison' and not correct")[0][0]
    assert len(failures) == wrong
    assert all(status == "upstream_error" and "no steps" in reason for status, reason in failures)

    # A later run asks again (the failures are not settled), reports them, and --strict makes that an error.
    again = subprocess.run([*lema_command(), "collect", "--store", str(store), "--source", "synthetic:2:seed=9",
                            "--samples", "1", "--max-tokens", "120", "--strict"], capture_output=True, text=True,
                           timeout=300)
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    if wrong:
        assert again.returncode == 1 and summary["failed"] >= wrong and "failed at the upstream" in again.stderr
    assert "Traceback" not in again.stderr
