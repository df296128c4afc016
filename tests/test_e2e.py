"""The whole loop through the real services: endpoint (BentoML), reasoner, corrector and trainer (gRPC), with
the collector calling them by address. Small sizes: this asserts that data flows, not that LEMA wins."""

from __future__ import annotations

import json
import os
import subprocess
import time

import grpc
import httpx
import pytest
from conftest import (
    free_port,
    lema_command,
    requires_lema_tiny,  # noqa: E402
    start_server,
)

from lema.v1 import common_pb2 as pb
from lema.v1 import trainer_pb2 as tpb
from lema.v1 import trainer_pb2_grpc, verifier_pb2_grpc
from lema.v1 import verifier_pb2 as vpb

pytestmark = requires_lema_tiny

MODEL = os.environ.get("LEMA_TEST_MODEL", "lema-tiny")
TOKEN = "lema-e2e-admin-token"


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    registry = root / "adapters"
    registry.mkdir()
    os.environ["LEMA_E2E_TOKEN"] = TOKEN
    # A wide gate margin (50 points): the promotion tests register adapters at the extremes (every gate problem
    # right, or every one wrong) on a few hundred problems, which cannot see the default one-point margin.
    config = root / "lema.yaml"
    config.write_text("trainer:\n  gate_margin: 0.5\n")
    port = free_port()
    endpoint = subprocess.Popen([*lema_command(), "serve", "endpoint", "--port", str(port), "--model", MODEL,
                                 "--engine", "transformers", "--registry", str(registry),
                                 "--admin-token-env", "LEMA_E2E_TOKEN"],
                                stdout=open(root / "endpoint.log", "w"), stderr=subprocess.STDOUT,
                                start_new_session=True)
    started = []
    try:
        grpc_servers = {}
        for name, args in (
            ("verifier", ["--workers", "1"]),
            ("reasoner", ["--model", MODEL, "--engine", "transformers"]),
            ("corrector", []),
            ("trainer", ["--runs-root", str(root / "runs"), "--adapters-root", str(registry), "--exports-root",
                         str(root), "--endpoint-url",
                         f"http://127.0.0.1:{port}", "--admin-token-env", "LEMA_E2E_TOKEN", "--config", str(config)]),
        ):
            p = free_port()
            env_args = ["serve", name, "--port", str(p), *args]
            server = start_server(env_args, p, root / f"{name}.log", timeout=300)
            started.append(server)
            grpc_servers[name] = server.address
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert endpoint.poll() is None, (root / "endpoint.log").read_text()[-3000:]
            time.sleep(0.5)
        yield root, grpc_servers, f"http://127.0.0.1:{port}"
    finally:
        for server in started:
            server.stop(timeout=120)
        os.killpg(endpoint.pid, 15)
        endpoint.wait(timeout=60)


def test_promote_refuses_an_adapter_worse_than_the_serving_base_model_unless_forced(services):
    """Runs first: the base model serves. The trainer measures the base model's outcomes itself (on the adapter's
    recipe's gate problems), pairs them with the adapter's and refuses an adapter not shown non-inferior."""
    root, addresses, endpoint = services
    status = httpx.get(f"{endpoint}/admin/status", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert status.json()["promoted"] == status.json()["model"]  # the base model serves
    recipe = f"base_model: {MODEL}\neval: {{validation_problems: 32}}\n"
    worse = _registered_adapter(root / "adapters", accuracy=0.0, config_yaml=recipe)
    with grpc.insecure_channel(addresses["trainer"]) as channel:
        trainer = trainer_pb2_grpc.TrainerStub(channel)
        refused = trainer.Promote(tpb.PromoteRequest(adapter_id=worse), timeout=300)
        assert not refused.promoted and "the base model on 32 problems" in refused.reason, refused.reason
        assert "not shown non-inferior" in refused.reason and "force to override" in refused.reason
        base = json.loads((root / "adapters" / "base-outcomes.json").read_text())
        (measured,) = base.values()
        assert measured["n"] == 32 and measured["accuracy"] > 0.0
        status = httpx.get(f"{endpoint}/admin/status", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert status.json()["promoted"] == status.json()["model"]  # the refusal changed nothing
        forced = trainer.Promote(tpb.PromoteRequest(adapter_id=worse, force=True), timeout=300)
        assert forced.promoted and "(forced)" in forced.reason and "not shown non-inferior" in forced.reason
    status = httpx.get(f"{endpoint}/admin/status", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert status.json()["promoted"] == worse


def test_loop_collects_corrects_trains_promotes_and_serves(services):
    root, addresses, endpoint = services
    store = root / "lema.db"
    collect = subprocess.run([*lema_command(), "collect", "--source", "synthetic:24:seed=5", "--store", str(store),
                              "--samples", "2", "--max-tokens", "160", "--reasoner", addresses["reasoner"],
                              "--corrector", addresses["corrector"]], capture_output=True, text=True, timeout=900)
    assert collect.returncode == 0, collect.stderr[-3000:]
    summary = json.loads(collect.stdout.strip().splitlines()[-1])
    assert summary["mistakes"] > 0 and summary["accepted"] > 0

    export = subprocess.run([*lema_command(), "export", "--store", str(store), "--out", str(root / "export"),
                             "--size", str(min(24, 2 * summary["accepted"]))], capture_output=True, text=True,
                            timeout=120)
    assert export.returncode == 0, export.stderr
    mix = next((root / "export").glob("mix-lema-*.jsonl"))

    recipe = (f"name: e2e\nbase_model: {MODEL}\nmax_steps: 8\nsave_steps: 4\nlogging_steps: 2\nbatch_size: 8\n"
              "threads: 1\nlora: {r: 8, alpha: 16}\nlearning_rate: 2.0e-3\n"
              "eval: {problems: 16, validation_problems: 16, max_tokens: 160}\n")
    with grpc.insecure_channel(addresses["trainer"]) as channel:
        trainer = trainer_pb2_grpc.TrainerStub(channel)
        run = trainer.StartRun(tpb.StartRunRequest(config_yaml=recipe, export_path=str(mix)), timeout=30)
        states = [e.state for e in trainer.WatchRun(tpb.WatchRunRequest(run_id=run.id), timeout=900)
                  if e.WhichOneof("event") == "state"]
        assert states[-1] == tpb.RUN_STATE_SUCCEEDED, trainer.GetRun(tpb.GetRunRequest(run_id=run.id)).error
        adapter_id = trainer.GetRun(tpb.GetRunRequest(run_id=run.id), timeout=10).adapter_id
        promoted = trainer.Promote(tpb.PromoteRequest(adapter_id=adapter_id, force=True), timeout=300)
    assert promoted.promoted, promoted.reason

    from openai import OpenAI

    client = OpenAI(base_url=f"{endpoint}/v1", api_key="unused", timeout=120)
    assert adapter_id in {m.id for m in client.models.list()}
    from lema.core.formats import cot_prompt
    from lema.core.synthetic import generate

    problems = generate(4, seed=9, split="test", steps=2)
    with grpc.insecure_channel(addresses["verifier"]) as channel:
        verifier = verifier_pb2_grpc.VerifierStub(channel)
        for problem in problems:
            raw = client.chat.completions.with_raw_response.create(
                model="default", temperature=0, max_tokens=160,
                messages=[{"role": "user", "content": cot_prompt(problem.question)}])
            assert raw.headers.get("x-lema-adapter") == adapter_id  # served by the promoted adapter
            text = raw.parse().choices[0].message.content
            verdict = verifier.Verify(vpb.VerifyRequest(kind=pb.DATASET_KIND_SYNTHETIC, gold_answer=problem.answer,
                                                        candidate=text), timeout=30).verdict
            assert verdict.reason != pb.VERDICT_REASON_UNSPECIFIED


def _registered_adapter(registry_root, accuracy: float, config_yaml: str = "") -> str:
    """A real PEFT adapter on the test model (fresh LoRA weights), registered with a given validation accuracy and
    gate outcomes to match (1.0: every gate problem of its recipe right; 0.0: every one wrong)."""
    import tempfile
    from pathlib import Path

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lema.core.model_resolve import resolve_model
    from lema.trainer.baseline import eval_settings_of
    from lema.trainer.evaluate import eval_problems
    from lema.trainer.gate import Outcomes
    from lema.trainer.registry import AdapterRecord, AdapterRegistry

    settings = eval_settings_of(AdapterRecord("", MODEL, "", "", 0, [], config_yaml=config_yaml))
    ids = tuple(p.id for p in eval_problems(settings, "gate"))
    outcomes = Outcomes(ids, (accuracy == 1.0,) * len(ids)).to_json()

    with tempfile.TemporaryDirectory() as tmp:
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(resolve_model(MODEL)),
                               LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        model.save_pretrained(tmp)
        record = AdapterRegistry(registry_root).register(Path(tmp), MODEL, "gate", config_yaml=config_yaml,
                                                         metrics={"validation_accuracy": accuracy, "validation_n": 16},
                                                         gate_outcomes=outcomes)
    return record.id


def test_promote_refuses_a_worse_adapter_unless_forced(services):
    root, addresses, endpoint = services
    best = _registered_adapter(root / "adapters", accuracy=1.0)  # nothing can be better: the gate lets it in
    worse = _registered_adapter(root / "adapters", accuracy=0.0)
    with grpc.insecure_channel(addresses["trainer"]) as channel:
        trainer = trainer_pb2_grpc.TrainerStub(channel)
        first = trainer.Promote(tpb.PromoteRequest(adapter_id=best), timeout=300)
        assert first.promoted, first.reason
        refused = trainer.Promote(tpb.PromoteRequest(adapter_id=worse), timeout=300)
        assert not refused.promoted and refused.previous_adapter_id == best
        assert f"− the serving {best} on 200 problems: -100.0 pts" in refused.reason, refused.reason
        status = httpx.get(f"{endpoint}/admin/status", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert status.json()["promoted"] == best  # the refusal changed nothing on the endpoint
        forced = trainer.Promote(tpb.PromoteRequest(adapter_id=worse, force=True), timeout=300)
        assert forced.promoted and forced.previous_adapter_id == best
        missing = None
        try:
            trainer.Promote(tpb.PromoteRequest(adapter_id="no-such-adapter"), timeout=30)
        except grpc.RpcError as exc:
            missing = exc.code()
        assert missing == grpc.StatusCode.NOT_FOUND
    from openai import OpenAI

    client = OpenAI(base_url=f"{endpoint}/v1", api_key="unused", timeout=120)
    raw = client.chat.completions.with_raw_response.create(
        model="default", temperature=0, max_tokens=8, messages=[{"role": "user", "content": "1 + 1"}])
    assert raw.headers.get("x-lema-adapter") == worse  # the forced promotion is what serves now
