"""Issue 17, item 2: authenticated gRPC. With $LEMA_API_TOKEN set, every RPC of every lema gRPC service started by
`lema up` refuses a call without the token (UNAUTHENTICATED) and serves lema's own clients, which send it; health
and reflection stay open. A service refuses to listen beyond loopback unguarded. TLS and mutual TLS through the one
config file."""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import subprocess
import time

import grpc
import pytest
import yaml
from conftest import free_port, lema_command, requires_lema_tiny, start_server
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lema.core.clients import CollectorClient, VerifierClient, VerifyItem
from lema.core.config import ClientConfig
from lema.core.security import open_aio_channel, open_channel
from lema.v1 import collector_pb2, corrector_pb2, reasoner_pb2, trainer_pb2, verifier_pb2

TOKEN = "lema-security-api-token"
GRPC_SERVICES = {"verifier": verifier_pb2, "reasoner": reasoner_pb2, "corrector": corrector_pb2,
                 "trainer": trainer_pb2, "collector": collector_pb2}


def _wait_for(path, text, process, timeout=420):
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert process.poll() is None, path.read_text()[-3000:]
        assert time.monotonic() < deadline, path.read_text()[-3000:]
        time.sleep(0.5)


@pytest.fixture(scope="module")
def guarded_services(tmp_path_factory):
    """`lema up` (the five gRPC services) with LEMA_API_TOKEN in its environment."""
    root = tmp_path_factory.mktemp("auth")
    ports = {name: free_port() for name in GRPC_SERVICES}
    config = {
        "verifier": {"port": ports["verifier"], "workers": 1},
        "reasoner": {"port": ports["reasoner"], "model": "lema-tiny", "engine": "transformers"},
        "corrector": {"port": ports["corrector"]},
        "trainer": {"port": ports["trainer"], "runs_root": str(root / "runs"), "adapters_root": str(root / "adapters")},
        "collector": {"port": ports["collector"], "store": str(root / "lema.db")},
    }
    path = root / "lema.yaml"
    path.write_text(yaml.safe_dump(config))
    log = root / "up.log"
    only = [arg for name in GRPC_SERVICES for arg in ("--only", name)]
    up = subprocess.Popen([*lema_command(), "up", "--config", str(path), *only, "--timeout", "400"], cwd=root,
                          stdout=open(log, "w"), stderr=subprocess.STDOUT,
                          env={**os.environ, "LEMA_API_TOKEN": TOKEN, "COLUMNS": "200"})
    try:
        _wait_for(log, "all services up", up)
        yield {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=120)


def _every_method():
    for service_name, module in GRPC_SERVICES.items():
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                yield service_name, f"/{service.full_name}/{method.name}", method


def _call_without_token(channel: grpc.Channel, path: str, method, metadata=()):
    request_class = message_factory.GetMessageClass(method.input_type)
    serializer, deserializer = request_class.SerializeToString, lambda raw: raw
    if method.client_streaming and method.server_streaming:
        call = channel.stream_stream(path, serializer, deserializer)(iter([request_class()]), timeout=30,
                                                                    metadata=metadata)
        return list(call)
    if method.client_streaming:
        return channel.stream_unary(path, serializer, deserializer)(iter([request_class()]), timeout=30,
                                                                   metadata=metadata)
    if method.server_streaming:
        return list(channel.unary_stream(path, serializer, deserializer)(request_class(), timeout=30,
                                                                         metadata=metadata))
    return channel.unary_unary(path, serializer, deserializer)(request_class(), timeout=30, metadata=metadata)


@requires_lema_tiny
def test_every_rpc_of_every_service_refuses_calls_without_the_token(guarded_services):
    checked = 0
    for service_name, path, method in _every_method():
        with grpc.insecure_channel(guarded_services[service_name]) as channel:
            for metadata in ((), (("authorization", "Bearer wrong-token"),), (("authorization", TOKEN),)):
                with pytest.raises(grpc.RpcError) as err:
                    _call_without_token(channel, path, method, metadata)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, (path, err.value.details())
                assert TOKEN not in err.value.details()
        checked += 1
    assert checked >= 16  # every RPC of the five services (StartRun, Promote, AddProblems, LoadAdapter, ...)


@requires_lema_tiny
def test_health_and_reflection_stay_open_and_lema_clients_send_the_token(guarded_services, monkeypatch):
    for address in guarded_services.values():
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    monkeypatch.setenv("LEMA_API_TOKEN", TOKEN)  # what a client process configured like the services has
    with VerifierClient(guarded_services["verifier"]) as verifier:
        assert verifier.verify(VerifyItem("gsm8k", "42", "so the answer is 42")).correct
        assert [v.correct for v in verifier.verify_batch([VerifyItem("gsm8k", "1", "1"), VerifyItem("gsm8k", "2", "3")])
                ] == [True, False]  # a streaming RPC through the token interceptor
    with CollectorClient(guarded_services["collector"]) as collector:
        assert collector.stats()["problems"] == 0
    with open_channel(guarded_services["trainer"]) as channel:
        from lema.v1 import trainer_pb2_grpc

        assert list(trainer_pb2_grpc.TrainerStub(channel).ListAdapters(trainer_pb2.ListAdaptersRequest(),
                                                                        timeout=30).adapters) == []

    async def reason() -> int:
        from lema.v1 import common_pb2, reasoner_pb2_grpc

        async with open_aio_channel(guarded_services["reasoner"]) as channel:
            request = reasoner_pb2.SolveRequest(
                problems=[common_pb2.Problem(kind=common_pb2.DATASET_KIND_GSM8K, question="What is 2 + 3?",
                                             gold_answer="5")],
                sampling=common_pb2.SamplingParams(n=1, max_tokens=8))
            return len([r async for r in reasoner_pb2_grpc.ReasonerStub(channel).Solve(request, timeout=120)])

    import asyncio

    assert asyncio.run(reason()) >= 1


def test_a_service_refuses_to_listen_beyond_loopback_without_a_token(tmp_path, monkeypatch):
    monkeypatch.delenv("LEMA_API_TOKEN", raising=False)
    port = free_port()
    refused = subprocess.run([*lema_command(), "serve", "verifier", "--host", "0.0.0.0", "--port", str(port),
                              "--workers", "1"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "host: 0.0.0.0" in refused.stderr and "LEMA_API_TOKEN" in refused.stderr and "insecure" in refused.stderr
    assert "Traceback" not in refused.stderr
    config = tmp_path / "lema.yaml"
    config.write_text("verifier:\n  insecure: true\n  workers: 1\n")
    server = start_server(["serve", "verifier", "--host", "0.0.0.0", "--port", str(port), "--config", str(config)],
                          port, tmp_path / "verifier.log")
    server.stop()


def _certificates(folder):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def issue(name, issuer_key, issuer_name, key, ca=False, san=None):
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def write(name, cert, key):
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                               serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lema test CA")])
    ca = issue("lema test CA", ca_key, ca_name, ca_key, ca=True)
    write("ca", ca, ca_key)
    for name, san in (("server", [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                      ("client", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        write(name, issue(name, ca_key, ca_name, key, san=san), key)


def test_tls_and_mutual_tls_from_the_config_file(tmp_path, monkeypatch):
    monkeypatch.delenv("LEMA_API_TOKEN", raising=False)
    _certificates(tmp_path)
    port = free_port()
    config = tmp_path / "lema.yaml"
    config.write_text(yaml.safe_dump({"verifier": {"workers": 1, "tls_cert": str(tmp_path / "server.pem"),
                                                   "tls_key": str(tmp_path / "server.key"),
                                                   "tls_client_ca": str(tmp_path / "ca.pem")}}))
    log = tmp_path / "verifier.log"
    process = subprocess.Popen([*lema_command(), "serve", "verifier", "--port", str(port), "--config", str(config)],
                               stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        _wait_for(log, "listening", process, timeout=120)
        address = f"127.0.0.1:{port}"
        job = VerifyItem("gsm8k", "7", "the answer is 7")
        mutual = ClientConfig(tls=True, tls_ca=tmp_path / "ca.pem", tls_cert=tmp_path / "client.pem",
                              tls_key=tmp_path / "client.key")
        with VerifierClient(address, timeout_s=30, config=mutual) as client:
            assert client.verify(job).correct
        for refused in (ClientConfig(), ClientConfig(tls=True, tls_ca=tmp_path / "ca.pem")):  # plain text; no cert
            with VerifierClient(address, timeout_s=10, config=refused) as client, pytest.raises(grpc.RpcError) as err:
                client.verify(job)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        process.terminate()
        process.wait(timeout=60)
