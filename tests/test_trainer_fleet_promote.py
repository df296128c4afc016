"""The trainer's Promote with `trainer.promotion_record` set writes the fleet's record (no endpoint is called): a
real `lema serve trainer` on 127.0.0.1."""

from __future__ import annotations

import json

import grpc
from conftest import free_port, start_server

from lema.core.promotion_record import read_record
from lema.trainer.registry import AdapterRegistry
from lema.v1 import trainer_pb2 as tpb
from lema.v1 import trainer_pb2_grpc


def test_promote_writes_the_promotion_record(tmp_path, monkeypatch):
    registry = AdapterRegistry(tmp_path / "adapters")
    ids = []
    for payload in (b"\0" * 16, b"\1" * 16):
        folder = tmp_path / f"adapter-{payload[0]}"
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "target_modules": ["q_proj"]}))
        (folder / "adapter_model.safetensors").write_bytes(payload)
        ids.append(registry.register(folder, "lema-tiny", "fleet", {"validation_accuracy": 0.5}).id)
    config = tmp_path / "lema.yaml"
    config.write_text("trainer:\n  promotion_record: promotion.json\n")
    monkeypatch.setenv("LEMA_ADMIN_TOKEN", "unused-by-fleet-promotion")
    port = free_port()
    server = start_server(["serve", "trainer", "--port", str(port), "--runs-root", str(tmp_path / "runs"),
                           "--adapters-root", str(registry.root), "--endpoint-url", f"http://127.0.0.1:{free_port()}",
                           "--config", str(config)], port, tmp_path / "trainer.log")
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = trainer_pb2_grpc.TrainerStub(channel)
            first = stub.Promote(tpb.PromoteRequest(adapter_id=ids[0], force=True), timeout=60)
            assert first.promoted and "generation 1" in first.reason, first.reason
            second = stub.Promote(tpb.PromoteRequest(adapter_id=ids[1], force=True), timeout=60)
            assert second.promoted and second.previous_adapter_id == ids[0]
            record = read_record(registry.root / "promotion.json")
            assert (record.adapter, record.previous, record.generation) == (ids[1], ids[0], 2)
            assert record.content_hash == registry.get(ids[1]).content_hash
            try:
                stub.Promote(tpb.PromoteRequest(adapter_id="no-such-adapter", force=True), timeout=60)
                raise AssertionError("an unknown adapter was promoted")
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND
            assert read_record(registry.root / "promotion.json").generation == 2
    finally:
        server.stop()
