"""`lema demo` end to end at small sizes (it asserts the contract, not that LEMA wins): the real endpoint, collection,
export, the harness with its paired statistics, gated promotion, and the files the README promises."""

from __future__ import annotations

import json
import subprocess

from conftest import lema_command, requires_lema_tiny

pytestmark = requires_lema_tiny


def test_demo_writes_results_and_ablation_json(tmp_path):
    work = tmp_path / "demo"
    run = subprocess.run([*lema_command(), "demo", "--problems", "12", "--samples", "2", "--eval-problems", "16",
                          "--seeds", "0,1", "--max-steps", "2", "--served-check", "8", "--workdir", str(work)],
                         capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "{'loss'" not in run.stdout and "LEMA − CoT-only" in run.stdout
    data = json.loads((work / "ablation.json").read_text())
    assert data["setting"] == "main" and data["seeds"] == [0, 1] and data["eval_problems"] == 16
    cot, lema = data["arms"]["cot"], data["arms"]["lema"]
    assert lema["examples"] > cot["examples"]  # main: the corrections come on top of all the CoT rows
    assert len(cot["accuracy"]) == len(lema["accuracy"]) == 2
    assert set(data["paired"]["lema_vs_cot"]) >= {"mean_diff", "ci95", "mcnemar_p"}
    rows = json.loads((work / "results.json").read_text())
    names = [row["name"] for row in rows]
    assert "base" in names and "CoT-only" in names and "LEMA" in names
    assert any(name.startswith("served:") for name in names)
    for image in ("ablation.png", "results.png"):
        assert (work / image).read_bytes()[:4] == b"\x89PNG"
