"""The trainer as a real `lema serve trainer` process: QLoRA on lema-tiny, progress streaming, the adapter
registry, kill-and-resume from a checkpoint, recipe validation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import grpc
import pytest
from conftest import (
    free_port,
    requires_lema_tiny,  # noqa: E402
    start_server,
)

from lema.v1 import trainer_pb2 as tpb
from lema.v1 import trainer_pb2_grpc

pytestmark = requires_lema_tiny

MODEL = os.environ.get("LEMA_TEST_MODEL", "lema-tiny")
RECIPE = f"""
name: test
base_model: {MODEL}
max_steps: 12
save_steps: 4
logging_steps: 2
batch_size: 8
threads: 1
lora: {{r: 8, alpha: 16, dropout: 0.05, target_modules: all-linear}}
learning_rate: 2.0e-3
eval: {{problems: 24, validation_problems: 24, gate_problems: 16, max_tokens: 160}}
"""


@pytest.fixture(scope="module")
def export_file(tmp_path_factory):
    from lema.core.formats import cot_prompt
    from lema.core.synthetic import generate

    path = tmp_path_factory.mktemp("export") / "mix.jsonl"
    with path.open("w") as f:
        for p in generate(120, seed=3, split="train"):
            f.write(json.dumps({"type": "cot", "prompt": cot_prompt(p.question), "completion": p.gold_solution}) + "\n")
    return path


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer")
    port = free_port()
    server = start_server(["serve", "trainer", "--port", str(port), "--runs-root", str(root / "runs"),
                           "--adapters-root", str(root / "adapters"), "--exports-root",
                           str(tmp_path_factory.getbasetemp())], port, root / "server.log")
    with grpc.insecure_channel(server.address) as channel:
        yield trainer_pb2_grpc.TrainerStub(channel), server, root
    assert server.stop(timeout=120) == 0


def watch(stub, run_id, until=None, timeout=900):
    events = []
    for event in stub.WatchRun(tpb.WatchRunRequest(run_id=run_id), timeout=timeout):
        events.append(event)
        if until is not None and until(event):
            break
    return events


def test_quantized_base_uses_linear4bit():
    import bitsandbytes as bnb

    from lema.core.model_resolve import resolve_model
    from lema.trainer.recipe import load_recipe
    from lema.trainer.train import load_quantized_base

    model = load_quantized_base(load_recipe("tiny"), resolve_model(MODEL))
    quantized = [name for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)]
    assert len(quantized) >= 7 * model.config.num_hidden_layers  # q, k, v, o, gate, up, down in every layer
    assert model.config.quantization_config.bnb_4bit_quant_type == "nf4"
    assert model.config.quantization_config.bnb_4bit_use_double_quant


@pytest.mark.parametrize(
    "config, field",
    [("lora: {r: 0}", "lora.r"), ("learning_rat: 0.1", "learning_rat"), ("lr_scheduler: cyclic", "lr_scheduler"),
     ("quantization: {quant_type: int3}", "quantization.quant_type"), ("[1, 2]", "mapping")],
)
def test_invalid_recipe_is_rejected_naming_the_field(trainer, export_file, config, field):
    stub, _, _ = trainer
    with pytest.raises(grpc.RpcError) as err:
        stub.StartRun(tpb.StartRunRequest(config_yaml=config, export_path=str(export_file)), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()


def test_missing_export_is_rejected(trainer):
    stub, _, root = trainer
    with pytest.raises(grpc.RpcError) as err:
        stub.StartRun(tpb.StartRunRequest(config_yaml=RECIPE, export_path=str(root / "nope.jsonl")), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "export_path" in err.value.details()


def test_run_streams_progress_evaluates_and_registers_an_adapter(trainer, export_file):
    stub, _, root = trainer
    run = stub.StartRun(tpb.StartRunRequest(config_yaml=RECIPE, export_path=str(export_file)), timeout=30)
    events = watch(stub, run.id)
    progress = [e.progress for e in events if e.WhichOneof("event") == "progress"]
    assert progress and progress[-1].step == 12 and all(p.loss > 0 for p in progress)
    assert any(p.tokens_per_second > 0 for p in progress)
    evals = [e.eval.metrics for e in events if e.WhichOneof("event") == "eval"]
    assert evals and 0 <= evals[0]["accuracy"] <= 1 and evals[0]["n"] == 24
    # validation metrics (they gate promotion) come from the validation split, not the test problems
    assert 0 <= evals[0]["validation_accuracy"] <= 1 and evals[0]["validation_n"] == 24
    assert evals[0]["gate_n"] == 16
    final = stub.GetRun(tpb.GetRunRequest(run_id=run.id), timeout=10)
    assert final.state == tpb.RUN_STATE_SUCCEEDED and final.adapter_id
    adapters = {a.id: a for a in stub.ListAdapters(tpb.ListAdaptersRequest(), timeout=10).adapters}
    adapter = adapters[final.adapter_id]
    assert adapter.rank == 8 and adapter.metrics["accuracy"] == evals[0]["accuracy"]
    assert len(adapter.content_hash) == 64 and adapter.base_model == MODEL
    assert {"q_proj", "v_proj", "down_proj"} <= set(adapter.target_modules)
    # The gate's per-problem outcomes: 16 validation problems after the 24 the metrics (and a checkpoint choice)
    # come from, never the same ones.
    from lema.trainer.evaluate import eval_problems
    from lema.trainer.gate import Outcomes
    from lema.trainer.recipe import load_recipe
    from lema.trainer.registry import AdapterRegistry

    gated = Outcomes.from_json(AdapterRegistry(root / "adapters").gate_outcomes(adapter.id))
    assert gated.n == 16 and not gated.chosen_on and gated.accuracy == evals[0]["gate_accuracy"]
    chosen_on = {p.id for p in eval_problems(load_recipe(RECIPE).eval, "validation")}
    assert len(chosen_on) == 24 and not chosen_on & set(gated.ids)
    # the registered folder is a PEFT adapter that peft loads on the base model
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lema.core.model_resolve import resolve_model

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(resolve_model(MODEL)), adapter.path)


def _worker_pid(server_pid: int) -> int | None:
    out = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    for line in out.splitlines()[1:]:
        pid, ppid, args = line.split(None, 2)
        if int(ppid) == server_pid and "lema.trainer.worker" in args:
            return int(pid)
    return None


def test_killed_run_resumes_from_its_last_checkpoint(trainer, export_file):
    stub, server, _ = trainer
    recipe = RECIPE.replace("max_steps: 12", "max_steps: 24")
    run = stub.StartRun(tpb.StartRunRequest(config_yaml=recipe, export_path=str(export_file), run_id="resumable"),
                        timeout=30)
    watch(stub, run.id, until=lambda e: e.WhichOneof("event") == "progress" and e.progress.step >= 10)
    pid = _worker_pid(server.process.pid)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    # Issue 17, item 7: the run turns FAILED (resumable) at once, and WatchRun ends on that state; before, it read
    # RUNNING until the trainer restarted and WatchRun ended with no terminal event.
    started = time.monotonic()
    states = [e.state for e in watch(stub, run.id, timeout=60) if e.WhichOneof("event") == "state"]
    assert states[-1] == tpb.RUN_STATE_FAILED and time.monotonic() - started < 30
    failed = stub.GetRun(tpb.GetRunRequest(run_id=run.id), timeout=10)
    assert failed.state == tpb.RUN_STATE_FAILED and "SIGKILL" in failed.error and "resume" in failed.error
    with pytest.raises(grpc.RpcError) as err:  # the run exists: restarting it needs resume=true
        stub.StartRun(tpb.StartRunRequest(config_yaml=recipe, export_path=str(export_file), run_id="resumable"),
                      timeout=30)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    stub.StartRun(tpb.StartRunRequest(config_yaml=recipe, export_path=str(export_file), run_id="resumable",
                                      resume=True), timeout=30)
    events = watch(stub, run.id)
    logs = [e.log for e in events if e.WhichOneof("event") == "log"]
    assert any(line.startswith("resuming from checkpoint-") and int(line.rsplit("-", 1)[1]) >= 8 for line in logs), logs
    final = stub.GetRun(tpb.GetRunRequest(run_id=run.id), timeout=10)
    assert final.state == tpb.RUN_STATE_SUCCEEDED and final.step == 24


def test_cancel_stops_a_run(trainer, export_file):
    stub, _, _ = trainer
    recipe = RECIPE.replace("max_steps: 12", "max_steps: 400")
    run = stub.StartRun(tpb.StartRunRequest(config_yaml=recipe, export_path=str(export_file)), timeout=30)
    watch(stub, run.id, until=lambda e: e.WhichOneof("event") == "progress")
    cancelled = stub.CancelRun(tpb.CancelRunRequest(run_id=run.id), timeout=180)
    assert cancelled.state == tpb.RUN_STATE_CANCELLED and cancelled.step < 400


def test_trainer_refuses_a_row_whose_completion_would_be_cut(tmp_path):
    """A row longer than max_seq_len would lose the end of its completion (TRL keeps the start): the trainer
    refuses the file before loading the model, naming the row."""
    from lema.core.formats import cot_prompt
    from lema.core.synthetic import generate
    from lema.trainer.recipe import load_recipe
    from lema.trainer.train import DatasetError, train

    problems = generate(3, seed=4, split="train", steps=2)
    rows = [{"type": "cot", "prompt": cot_prompt(p.question), "completion": p.gold_solution} for p in problems]
    rows[1]["completion"] = "\n".join([problems[1].gold_solution] * 10)  # far beyond 256 tokens
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = load_recipe(RECIPE, {"max_seq_len": 256})
    with pytest.raises(DatasetError) as refused:
        train(recipe, data, tmp_path / "run")
    message = str(refused.value)
    assert "rows.jsonl line 2 " in message and "> max_seq_len 256" in message and "cut" in message
    assert not (tmp_path / "run" / "adapter").exists()
    # the same rows without the long one train
    data.write_text("".join(json.dumps(r) + "\n" for i, r in enumerate(rows) if i != 1))
    result = train(load_recipe(RECIPE, {"max_seq_len": 256, "max_steps": 1}), data, tmp_path / "run")
    assert result.steps == 1 and (result.adapter_dir / "adapter_config.json").exists()
