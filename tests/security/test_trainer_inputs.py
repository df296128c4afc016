"""Issue 17, items 3, 4 and 7 (dataset): the trainer treats a client's names and paths as data. A real
`lema serve trainer` on 127.0.0.1; every case below is refused with INVALID_ARGUMENT naming the field, before any
file outside the trainer's folders is opened or written, and no error echoes a file's content."""

from __future__ import annotations

import json

import grpc
import pytest
from conftest import free_port, start_server

from lema.v1 import trainer_pb2 as tpb
from lema.v1 import trainer_pb2_grpc

SECRET = "root:x:0:0:lema-secret-canary:/root:/bin/bash"


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer-inputs")
    exports = root / "exports"
    exports.mkdir()
    (root / "secret.yaml").write_text(SECRET + "\n")
    (root / "secret.jsonl").write_text(json.dumps({"prompt": SECRET, "completion": SECRET}) + "\n")
    (exports / "link.jsonl").symlink_to(root / "secret.jsonl")
    good = {"prompt": "Question: 1 + 1?\nAnswer:", "completion": " 1 + 1 = 2.\nThe answer is 2."}
    (exports / "good.jsonl").write_text(json.dumps(good) + "\n")
    (exports / "garbage.jsonl").write_text(json.dumps(good) + "\n\n" + SECRET + "\n" + json.dumps(good) + "\n")
    port = free_port()
    server = start_server(["serve", "trainer", "--port", str(port), "--runs-root", str(root / "runs"),
                           "--adapters-root", str(root / "adapters"), "--exports-root", str(exports)],
                          port, root / "server.log")
    channel = grpc.insecure_channel(server.address)
    try:
        yield trainer_pb2_grpc.TrainerStub(channel), root
    finally:
        channel.close()
        server.stop()


def _refused(stub, **fields) -> str:
    fields.setdefault("config_yaml", "tiny")
    with pytest.raises(grpc.RpcError) as err:
        stub.StartRun(tpb.StartRunRequest(**fields), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    details = err.value.details()
    assert "lema-secret-canary" not in details and "root:x" not in details
    return details


def test_a_recipe_is_a_name_or_inline_yaml_never_a_path(trainer):
    stub, root = trainer
    for path in (str(root / "secret.yaml"), "/etc/passwd", "../secret.yaml", "tiny.yaml"):
        details = _refused(stub, config_yaml=path, export_path="good.jsonl")
        assert details.startswith("config_yaml:"), details
    long_inline = "{max_steps: 5, " + ", ".join(f"field_{i}: {i}" for i in range(40)) + "}"
    assert len(long_inline) > 400 and "\n" not in long_inline
    details = _refused(stub, config_yaml=long_inline, export_path="good.jsonl")
    assert "field_0" in details and "too long" not in details


def test_run_ids_are_names_not_paths(trainer):
    stub, root = trainer
    for run_id in ("../../escaped", str(root / "abs"), "a/b", "..", ".hidden", "x" * 200):
        details = _refused(stub, run_id=run_id, export_path="good.jsonl")
        assert details.startswith("run_id:"), details
    assert not (root / "escaped").exists() and not (root / "abs").exists()
    assert not any(p.name == "escaped" for p in root.parent.iterdir())
    with pytest.raises(grpc.RpcError) as err:
        stub.GetRun(tpb.GetRunRequest(run_id="../../escaped"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_export_path_is_confined_to_the_exports_root(trainer):
    stub, root = trainer
    for path in (str(root / "secret.jsonl"), "../secret.jsonl", "link.jsonl", "/etc/passwd", ""):
        details = _refused(stub, export_path=path)
        assert details.startswith("export_path:"), details


def test_a_bad_dataset_line_is_refused_at_start_with_its_number(trainer):
    stub, _ = trainer
    details = _refused(stub, export_path="garbage.jsonl")
    assert "garbage.jsonl line 3" in details and "prompt/completion" in details


def test_errors_do_not_echo_huge_inputs(trainer):
    """Issue 17, item 8: an error quoting a 10 MB input exceeded the message limit (the client saw
    RESOURCE_EXHAUSTED instead of the real error)."""
    stub, _ = trainer
    huge = "r" * 10_000_000
    for call, request in ((stub.GetRun, tpb.GetRunRequest(run_id=huge)),
                          (stub.CancelRun, tpb.CancelRunRequest(run_id=huge))):
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and len(err.value.details()) < 2_000
    details = _refused(stub, config_yaml="{" + "k" * 10_000_000 + ": 1}", export_path="good.jsonl")
    assert len(details) < 2_000
