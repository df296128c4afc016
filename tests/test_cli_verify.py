"""`lema verify` and `lema serve verifier` as a user runs them."""

import json
import subprocess

from conftest import lema_command


def run(*args, timeout=60):
    return subprocess.run([*lema_command(), *args], capture_output=True, text=True, timeout=timeout)


def test_verify_prints_one_json_verdict():
    out = run("verify", "--kind", "math", "--gold", r"\frac{1}{2}", "--candidate", r"so it is $\boxed{0.5}$.")
    assert out.returncode == 0, out.stderr
    verdict = json.loads(out.stdout)
    assert verdict["correct"] is True and verdict["reason"] == "matched"
    assert verdict["extraction_method"] == "boxed" and verdict["extracted_answer"] == "0.5"


def test_verify_mismatch_still_exits_zero(tmp_path):
    solution = tmp_path / "solution.txt"
    solution.write_text("Step 1: 6 * 7 = 42.\nThe answer is 42.")
    out = run("verify", "--kind", "gsm8k", "--gold", "41", "--candidate-file", str(solution))
    assert out.returncode == 0
    verdict = json.loads(out.stdout)
    assert verdict["correct"] is False and verdict["reason"] == "mismatch"


def test_verify_timeout_verdict():
    out = run("verify", "--kind", "math", "--gold", "5", "--candidate", r"10^{10^{10^{10}}}", "--answer-only",
              "--timeout", "1")
    assert out.returncode == 0
    assert json.loads(out.stdout)["reason"] == "timeout"


def test_verify_bad_input_exits_nonzero_with_message(tmp_path):
    cases = [
        (["--kind", "physics", "--gold", "1", "--candidate", "1"], "--kind must be one of"),
        (["--kind", "gsm8k", "--gold", "1"], "exactly one of --candidate or --candidate-file"),
        (["--kind", "gsm8k", "--gold", "1", "--candidate", "   "], "the candidate is empty"),
        (["--kind", "gsm8k", "--gold", "1", "--candidate-file", str(tmp_path / "missing.txt")], "cannot read"),
    ]
    for args, message in cases:
        out = run("verify", *args)
        assert out.returncode != 0, args
        assert message in out.stderr, (args, out.stderr)
        assert out.stdout == ""


def test_verify_through_a_running_server(verifier_server):
    out = run("verify", "--kind", "gsm8k", "--gold", "1000", "--candidate", "The answer is 1,000.",
              "--server", verifier_server.address)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["correct"] is True
