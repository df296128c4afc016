"""`lema correct`: one correction, in-process (the corrector service's own code, no server) or from a running one."""

from __future__ import annotations

import json
import re
import subprocess

from conftest import free_port, lema_command, start_server

from lema.core.proto_convert import synthetic_to_pb
from lema.core.synthetic import generate


def _wrong(problem, step: int) -> str:
    lines = problem.gold_solution.splitlines()
    lines[step - 1] = re.sub(r"= (\d+)", lambda m: f"= {int(m.group(1)) + 3}", lines[step - 1])
    return "\n".join(lines)


def _correct(tmp_path, problem, *extra: str, solution: str | None = None):
    (tmp_path / "wrong.txt").write_text(_wrong(problem, 2) if solution is None else solution)
    (tmp_path / "program.json").write_text(synthetic_to_pb(problem).program_json)
    return subprocess.run([*lema_command(), "correct", "--kind", "synthetic", "--question", problem.question,
                           "--gold", problem.answer, "--solution-file", str(tmp_path / "wrong.txt"),
                           "--program-file", str(tmp_path / "program.json"), *extra],
                          capture_output=True, text=True, timeout=300)


def test_in_process_and_through_a_server_give_the_same_correction(tmp_path):
    problem = generate(1, seed=91, split="test", steps=4)[0]
    local = _correct(tmp_path, problem)
    assert local.returncode == 0, local.stderr[-2000:]
    reply = json.loads(local.stdout)
    assert reply["status"] == "CORRECTION_STATUS_ACCEPTED" and reply["correction"]["incorrect_step"] == 2
    port = free_port()
    server = start_server(["serve", "corrector", "--port", str(port)], port, tmp_path / "corrector.log")
    try:
        remote = _correct(tmp_path, problem, "--server", f"127.0.0.1:{port}")
    finally:
        server.stop()
    assert remote.returncode == 0, remote.stderr[-2000:]
    assert json.loads(remote.stdout)["correction"]["corrected_solution"] == reply["correction"]["corrected_solution"]


def test_bad_input_is_a_clear_error_in_process(tmp_path):
    problem = generate(1, seed=92, split="test", steps=3)[0]
    out = _correct(tmp_path, problem, solution=" \n ")
    assert out.returncode == 1 and "INVALID_ARGUMENT: wrong_solution is empty" in out.stderr
    assert "Traceback" not in out.stderr
