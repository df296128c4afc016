"""Issue 17, item 1: the trainer never sends the endpoint's admin token to an address a client chose.

A real `lema serve trainer` on 127.0.0.1 with the admin token in its environment and a registered adapter; two
listening sockets stand in for endpoints: one the client names (must never be contacted), one the trainer's config
lists in `promote_endpoints` (contacted, with the token, as configured)."""

from __future__ import annotations

import json
import socket
import threading

import grpc
import pytest
from conftest import free_port, start_server

from lema.trainer.registry import AdapterRegistry
from lema.v1 import trainer_pb2 as tpb
from lema.v1 import trainer_pb2_grpc

TOKEN = "lema-security-admin-token"


class Listener:
    """A TCP server on 127.0.0.1 that records what each connection sends, then answers 503."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.received: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    self.received.append(conn.recv(65536))
                    conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    def close(self):
        self.sock.close()


@pytest.fixture
def trainer(tmp_path, monkeypatch):
    foreign, allowed = Listener(), Listener()
    registry = AdapterRegistry(tmp_path / "adapters")
    adapter_dir = tmp_path / "adapter"
    adapter_dir.mkdir()
    (adapter_dir / "adapter_config.json").write_text(json.dumps({"r": 8, "target_modules": ["q_proj"]}))
    (adapter_dir / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    record = registry.register(adapter_dir, "lema-tiny", "security")
    config = tmp_path / "lema.yaml"
    config.write_text(f"trainer:\n  promote_endpoints: ['{allowed.url}']\n")
    monkeypatch.setenv("LEMA_ADMIN_TOKEN", TOKEN)
    port = free_port()
    server = start_server(["serve", "trainer", "--port", str(port), "--runs-root", str(tmp_path / "runs"),
                           "--adapters-root", str(registry.root), "--endpoint-url", f"http://127.0.0.1:{free_port()}",
                           "--config", str(config)], port, tmp_path / "trainer.log")
    channel = grpc.insecure_channel(server.address)
    try:
        yield trainer_pb2_grpc.TrainerStub(channel), record.id, foreign, allowed
    finally:
        channel.close()
        server.stop()
        foreign.close()
        allowed.close()


def test_promote_to_a_client_named_endpoint_is_refused_and_nothing_is_sent(trainer):
    stub, adapter_id, foreign, _ = trainer
    for url in (foreign.url, foreign.url + "/", f"{foreign.url}/admin"):
        with pytest.raises(grpc.RpcError) as err:
            stub.Promote(tpb.PromoteRequest(adapter_id=adapter_id, force=True, endpoint_url=url), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "endpoint_url" in err.value.details() and "not a configured endpoint" in err.value.details()
    assert foreign.received == []  # not even a connection: the token never left


def test_promote_to_a_configured_endpoint_goes_there_with_the_token(trainer):
    stub, adapter_id, foreign, allowed = trainer
    with pytest.raises(grpc.RpcError) as err:  # the stand-in answers 503: the promotion fails, transiently
        stub.Promote(tpb.PromoteRequest(adapter_id=adapter_id, force=True, endpoint_url=allowed.url + "/"),
                     timeout=60)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert any(f"Bearer {TOKEN}".encode() in request for request in allowed.received)
    assert foreign.received == []


def test_promote_without_endpoint_url_uses_the_configured_default(trainer):
    stub, adapter_id, foreign, allowed = trainer
    with pytest.raises(grpc.RpcError) as err:  # nothing listens on the configured default
        stub.Promote(tpb.PromoteRequest(adapter_id=adapter_id, force=True), timeout=60)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "cannot reach the endpoint" in err.value.details()
    assert foreign.received == [] and allowed.received == []
