"""`lema demo` end to end at small sizes (it asserts the contract, not that LEMA wins): the real endpoint, collection,
export, the harness with its paired statistics, gated promotion, and the files the README promises."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import lema_command, requires_lema_tiny


@requires_lema_tiny
def test_demo_writes_results_and_ablation_json(tmp_path):
    work = tmp_path / "demo"
    run = subprocess.run([*lema_command(), "demo", "--problems", "12", "--samples", "2", "--eval-problems", "16",
                          "--hard-problems", "8", "--seeds", "0,1", "--max-steps", "2", "--served-check", "8",
                          "--gate-problems", "40", "--workdir", str(work)],
                         capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "{'loss'" not in run.stdout and "LEMA − CoT-only" in run.stdout
    data = json.loads((work / "ablation.json").read_text())
    assert data["setting"] == "main" and data["seeds"] == [0, 1] and data["eval_problems"] == 16
    cot, lema = data["arms"]["cot"], data["arms"]["lema"]
    assert lema["examples"] > cot["examples"]  # main: the corrections come on top of all the CoT rows
    assert len(cot["accuracy"]) == len(lema["accuracy"]) == 2
    assert set(data["paired"]["lema_vs_cot"]) >= {"mean_diff", "ci95", "mcnemar_p", "discordance", "mde_80"}
    assert data["hard_problems"] == 8 and "lema_vs_cot" in data["paired_hard"]
    assert "power: this run detects" in run.stdout  # the demo says what size of effect it could see
    results = json.loads((work / "results.json").read_text())
    names = [row["name"] for row in results["rows"]]
    assert "base" in names and "CoT-only" in names and "LEMA" in names
    # 40 gate problems cannot see a 3-point margin: the gate refuses as too small and the base model keeps serving.
    gate = results["gate"]
    assert set(gate) >= {"candidate", "reference", "n", "diff", "ci95", "mde_80", "margin", "decision", "forced"}
    assert (gate["n"], gate["margin"], gate["reference"]) == (40, 0.03, "the base model")
    assert gate["decision"] == "refuse: too small to decide" and gate["mde_80"] > 0.03 and not gate["promoted"]
    assert gate["ci95"][0] <= gate["diff"] <= gate["ci95"][1] and gate["problems_needed"] > 40
    # Chosen among the four adapters on the first 100 validation problems, gated on the next 40.
    assert gate["chosen"]["among"] == 4 and gate["chosen"]["validation_problems"] == 100
    assert gate["gate_problems"] == 40 and results["gates"] == [gate]
    assert "served: lema-tiny" in names  # nothing was promoted
    assert "gate, round 1: " in run.stdout and "too small to decide" in run.stdout  # the interval and decision
    for image in ("ablation.png", "results.png"):
        assert (work / image).read_bytes()[:4] == b"\x89PNG"
    rounds = json.loads((work / "rounds.json").read_text())
    assert list(rounds["accuracy"]) == ["base", "round 1"] and rounds["n"] == {"base": 8, "round 1": 8}
    assert rounds["steps"][0]["from"] == "base" and rounds["steps"][0]["n"] == 8
    assert rounds["gates"] == [gate]


def test_rounds_report_pairs_each_round_with_the_one_before_and_says_what_is_noise():
    from lema.app.demo import DemoResult, rounds_report

    base = [True] * 40 + [False] * 60
    better = [True] * 70 + [False] * 30  # +30 points: 30 problems turned right, none turned wrong
    same = list(better)
    report = rounds_report(DemoResult(base_validation=base, served=[better, same]))
    assert report["accuracy"] == {"base": 0.4, "round 1": 0.7, "round 2": 0.7}
    first, second = report["steps"]
    assert first["difference"] == 0.3 and first["ci95"][0] > 0 and first["p_value"] < 0.001
    assert second["difference"] == 0 and second["ci95"] == [0.0, 0.0] and second["p_value"] == 1.0
    assert report["overall"]["from"] == "base" and report["overall"]["to"] == "round 2"
    assert "rose in 1 of 2 steps" in report["summary"] and "1 of 2 gains are outside the noise" in report["summary"]


@requires_lema_tiny
def test_the_served_check_is_the_one_evaluator_through_the_endpoint(tmp_path):
    """`evaluate_through_endpoint`: the OpenAI engine against a real `lema serve endpoint`, then the verifier (the
    evaluator the harness runs in-process): one outcome per problem, in order, and the same greedy verdicts the
    in-process evaluation of the same weights gives."""
    import asyncio

    from lema.app.demo import Endpoint, evaluate_through_endpoint
    from lema.core.engines.transformers_engine import TransformersEngine
    from lema.core.synthetic import generate
    from lema.tiny import default_model_path
    from lema.trainer.evaluate import evaluate_engine

    problems = generate(8, seed=7, split="validation", steps=(2, 3))
    (tmp_path / "adapters").mkdir()
    endpoint = Endpoint("lema-tiny", tmp_path / "adapters", tmp_path / "endpoint.log")
    try:
        endpoint.wait_ready()
        served = evaluate_through_endpoint(endpoint.url, "default", problems, max_tokens=160, concurrency=4)
    finally:
        endpoint.stop()

    async def in_process():
        engine = TransformersEngine(str(default_model_path()), batch_size=8)
        try:
            return await evaluate_engine(engine, problems, 160)
        finally:
            await engine.close()

    local = asyncio.run(in_process())
    assert len(served) == 8 and all(isinstance(o, bool) for o in served)
    assert sum(served) >= 4, served  # lema-tiny answers most 2-3 step problems
    # Greedy on the same weights: batching may flip a near tie at most once.
    assert sum(a != b for a, b in zip(served, local.outcomes)) <= 1, (served, local.outcomes)


def test_demo_refuses_an_unknown_correction_format_by_name():
    run = subprocess.run([*lema_command(), "demo", "--correction-format", "bogus"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and "--correction-format" in run.stderr and "paper, step" in run.stderr


@requires_lema_tiny
@pytest.mark.parametrize("stop", ["SIGTERM", "SIGHUP"])
def test_a_stopped_demo_leaves_no_server_behind(tmp_path, stop):
    """Issue 28: `lema demo` stopped with SIGTERM (as timeout, systemd or a container runtime stop it) left its
    endpoint running: circusd and its worker re-parented to init, holding their port. Every process it started goes."""
    import os
    import signal
    import time

    psutil = pytest.importorskip("psutil")
    demo = subprocess.Popen([*lema_command(), "demo", "--problems", "8", "--samples", "1", "--eval-problems", "10",
                             "--hard-problems", "0", "--seeds", "0", "--workdir", str(tmp_path / "demo")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        log = tmp_path / "demo" / "endpoint.log"
        deadline = time.monotonic() + 180
        while not (log.exists() and "endpoint ready" in log.read_text(errors="replace")):
            assert demo.poll() is None and time.monotonic() < deadline, "the demo's endpoint did not come up"
            time.sleep(0.5)
        started = psutil.Process(demo.pid).children(recursive=True)
        assert started, "the demo started no child process"
        demo.send_signal(getattr(signal, stop))
        assert demo.wait(timeout=90) != 0
        _, alive = psutil.wait_procs(started, timeout=30)
        assert not alive, [p.pid for p in alive]
    finally:
        if demo.poll() is None:
            os.kill(demo.pid, signal.SIGKILL)
