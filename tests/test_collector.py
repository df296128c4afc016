"""The collector as users run it: `lema collect` subprocesses on a real SQLite file, SIGKILL and restart,
exports in the paper's formats, and continuous collection from the intake table."""

from __future__ import annotations

import collections
import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest
from conftest import (
    lema_command,
    requires_lema_tiny,  # noqa: E402
)

from lema.core.formats import INCORRECT_STEP_LABEL, SOLVE_INSTRUCTION
from lema.core.synthetic import Program, SyntheticProblem, check_solution_steps

pytestmark = requires_lema_tiny

MODEL = os.environ.get("LEMA_TEST_MODEL", "lema-tiny")
N, K = 60, 2


def collect_args(store, *extra):
    return [*lema_command(), "collect", "--source", f"synthetic:{N}:seed=7", "--store", str(store), "--samples", str(K),
            "--model", MODEL, "--max-tokens", "160", "--batch-size", "8", *extra]


def query(store, sql):
    with sqlite3.connect(store) as db:
        return db.execute(sql).fetchall()


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """Collect N problems, SIGKILL the collector mid-run, restart it to completion."""
    store = tmp_path_factory.mktemp("collect") / "lema.db"
    first = subprocess.Popen(collect_args(store), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    stored = 0
    while time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.5)
        if store.exists():
            try:
                stored = query(store, "select count(*) from attempts")[0][0]
            except sqlite3.OperationalError:
                continue
            if stored >= K * 16:  # some problems done, more to go
                break
    assert first.poll() is None, f"the collector finished before it could be killed:\n{first.stdout.read()}"
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    killed_at = query(store, "select count(*) from attempts")[0][0]
    assert 0 < killed_at < N * K
    second = subprocess.run(collect_args(store), capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    return store, killed_at, json.loads(second.stdout.strip().splitlines()[-1])


def test_every_unit_is_stored_exactly_once_after_sigkill(collected):
    store, killed_at, summary = collected
    assert query(store, "select count(*) from problems")[0][0] == N
    attempts = query(store, "select id, problem_id, correct from attempts")
    assert len(attempts) == N * K == len({a[0] for a in attempts})
    per_problem = query(store, "select problem_id, count(*) from attempts group by problem_id")
    assert len(per_problem) == N and all(count == K for _, count in per_problem)
    assert summary["attempts"] == N * K - killed_at  # the restart did only what was missing
    wrong = {a[0] for a in attempts if not a[2]}
    corrections = query(store, "select attempt_id from corrections")
    assert sorted(c[0] for c in corrections) == sorted(wrong), "every mistake corrected exactly once"
    assert len(wrong) > 0


def test_reference_corrections_name_the_first_wrong_step(collected):
    store, _, _ = collected
    rows = query(store, """select a.text, p.question, p.gold_answer, p.gold_solution, p.program_json,
                                  c.status, c.incorrect_step, c.verified
                           from corrections c join attempts a on a.id = c.attempt_id
                           join problems p on p.id = c.problem_id""")
    accepted = 0
    for text, question, gold, gold_solution, program_json, status, step, verified in rows:
        problem = SyntheticProblem(id="", family="", n_steps=0, question=question, answer=gold,
                                   program=Program.from_json(program_json), gold_solution=gold_solution)
        expected = check_solution_steps(problem, text)
        if status == "accepted":
            accepted += 1
            assert verified and step == expected
        else:  # a "mistake" whose steps are all right (e.g. a lucky wrong extraction) has nothing to correct
            assert expected is None or status in ("unparseable", "rejected"), (status, expected)
    assert accepted > 0


def test_exports_follow_the_papers_formats(collected, tmp_path):
    import datasets

    store, _, _ = collected
    out = subprocess.run([*lema_command(), "export", "--store", str(store), "--out", str(tmp_path), "--size", "40"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["cot_reference"] == N and counts["correction"] > 0
    # Verified-correct samples are CoT augmentations, at most 3 per problem (the default cap), none a duplicate.
    assert counts["cot"] == N + counts["cot_augmentation"] and counts["cot_augmentation"] > 0
    assert counts["corrected_cot"] == counts["correction"]
    cot = datasets.load_dataset("json", data_files=str(tmp_path / "cot.jsonl"), split="train")
    corr = datasets.load_dataset("json", data_files=str(tmp_path / "correction.jsonl"), split="train")
    for row in cot:
        assert row["prompt"].startswith(SOLVE_INSTRUCTION) and row["prompt"].endswith("Let's think step by step.\n")
        assert row["completion"].startswith("Step 1:") and row["completion"].rstrip().endswith(".")
        assert "The answer is" in row["completion"].splitlines()[-1]
    for row in corr:
        assert row["prompt"].rstrip().endswith(INCORRECT_STEP_LABEL) and "Original Solution: {" in row["prompt"]
        assert row["completion"].startswith("Step ") and "Explanation:" in row["completion"]
        assert "Correct Solution: {" in row["completion"] and "The answer is" in row["completion"]
    per_problem = collections.Counter(row["problem_id"] for row in cot if row["source"].startswith("augment:"))
    assert max(per_problem.values()) <= 3
    keys = [(row["problem_id"], " ".join(row["completion"].split())) for row in cot]
    assert len(keys) == len(set(keys))
    with sqlite3.connect(store) as db:
        gold = dict(db.execute("SELECT id, gold_answer FROM problems"))
    for row in cot:
        if row["source"].startswith("augment:"):
            assert row["completion"].splitlines()[-1] == f"The answer is {gold[row['problem_id']]}."
    twins = {row["correction_id"]: row for row in datasets.load_dataset(
        "json", data_files=str(tmp_path / "corrected_cot.jsonl"), split="train")}
    for row in corr:  # every correction has a whole corrected solution of the same problem
        twin = twins[row["correction_id"]]
        assert twin["problem_id"] == row["problem_id"] and twin["completion"].startswith("Step 1:")
        assert twin["completion"].splitlines()[-1] == f"The answer is {gold[row['problem_id']]}."
    # Every row was measured with the recipe's tokenizer: none is longer than max_seq_len, nothing is cut.
    length = manifest["length"]
    assert length["model"] == "lema-tiny" and length["max_seq_len"] == 512 and length["truncated_completions"] == 0
    assert max(length["longest"].values()) <= 512
    size = manifest["mixes"]["size"]
    mix_cot = datasets.load_dataset("json", data_files=str(tmp_path / f"mix-cot-{size}.jsonl"), split="train")
    mix_lema = datasets.load_dataset("json", data_files=str(tmp_path / f"mix-lema-{size}.jsonl"), split="train")
    assert len(mix_cot) == len(mix_lema) == size == 40
    assert set(mix_cot["type"]) == {"cot"} and set(mix_lema["type"]) == {"cot", "correction"}
    for name, info in manifest["files"].items():
        assert info["rows"] == sum(1 for _ in open(tmp_path / info["file"]))


def test_problems_add_rejects_bad_lines_and_keeps_good_ones(tmp_path):
    store = tmp_path / "intake.db"
    path = tmp_path / "problems.jsonl"
    path.write_text("\n".join([
        json.dumps({"kind": "gsm8k", "question": "Tom has 3 apples and buys 4 more. How many apples?", "gold_answer": "7"}),
        "{broken",
        json.dumps({"kind": "gsm8k", "question": "", "gold_answer": "1"}),
        json.dumps({"kind": "gsm8k", "question": "Sara has 10 pens and loses 4. How many pens?", "gold_answer": "6"}),
    ]) + "\n")
    out = subprocess.run([*lema_command(), "problems", "add", str(path), "--store", str(store)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1
    assert f"{path}:2: rejected" in out.stderr and f"{path}:3: rejected" in out.stderr
    summary = json.loads(out.stdout)
    assert summary["valid"] == summary["queued"] == 2 and summary["rejected_lines"] == [2, 3]
    assert query(store, "select count(*) from intake where status = 'pending'")[0][0] == 2


def test_follow_collects_problems_added_while_running(tmp_path):
    store = tmp_path / "follow.db"
    follower = subprocess.Popen([*lema_command(), "collect", "--follow", "--store", str(store), "--samples", "1",
                                 "--model", MODEL, "--max-tokens", "120"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        path = tmp_path / "new.jsonl"
        path.write_text(json.dumps({"kind": "gsm8k", "question": "Ann has 5 cats and gets 2 more. How many cats?",
                                    "gold_answer": "7", "id": "live-1"}) + "\n")
        added = subprocess.run([*lema_command(), "problems", "add", str(path), "--store", str(store)],
                               capture_output=True, text=True, timeout=60)
        assert added.returncode == 0, added.stderr
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            done = query(store, "select count(*) from intake where status = 'done'")[0][0]
            if done == 1:
                break
            assert follower.poll() is None, follower.stderr.read()
            time.sleep(0.5)
        assert query(store, "select count(*) from attempts where problem_id = 'live-1'")[0][0] == 1
    finally:
        follower.send_signal(signal.SIGINT)
        try:
            follower.wait(timeout=30)
        except subprocess.TimeoutExpired:
            follower.kill()
