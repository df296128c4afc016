"""Issue 17, item 2 (reasoner): `LoadAdapter` applies the endpoint's registry confinement and validation. Before,
it loaded any filesystem path, and an adapter with NaN weights loaded and served empty text."""

from __future__ import annotations

import grpc
import pytest
from conftest import free_port, requires_lema_tiny, start_server

from lema.devtools import base_model_dir, make_adapters, make_broken_adapters
from lema.v1 import reasoner_pb2 as rpb
from lema.v1 import reasoner_pb2_grpc

pytestmark = requires_lema_tiny


@pytest.fixture(scope="module")
def reasoner(tmp_path_factory):
    root = tmp_path_factory.mktemp("reasoner-adapters")
    registry, outside = root / "registry", root / "outside"
    registry.mkdir()
    outside.mkdir()
    model_dir = base_model_dir()
    good = make_adapters(model_dir, registry, {"good": 1})["good"]
    make_adapters(model_dir, outside, {"stray": 2})
    (registry / "escape").symlink_to(outside / "stray")
    broken = make_broken_adapters(good, model_dir, registry)
    port = free_port()
    server = start_server(["serve", "reasoner", "--model", "lema-tiny", "--engine", "transformers", "--port",
                           str(port), "--registry", str(registry)], port, root / "server.log", timeout=300)
    channel = grpc.insecure_channel(server.address)
    try:
        yield reasoner_pb2_grpc.ReasonerStub(channel), root, sorted(broken)
    finally:
        channel.close()
        server.stop()


def _load(stub, name, path):
    return stub.LoadAdapter(rpb.LoadAdapterRequest(name=name, path=path), timeout=120)


def test_paths_outside_the_registry_are_refused(reasoner):
    stub, root, _ = reasoner
    for i, path in enumerate((str(root / "outside" / "stray"), "../outside/stray", "escape", "/etc")):
        with pytest.raises(grpc.RpcError) as err:
            _load(stub, f"stray{i}", path)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert "registry" in err.value.details()
    loaded = _load(stub, "good-a", "good").adapters  # a good one loads by its name in the registry
    assert "good-a" in loaded and not any(name.startswith("stray") for name in loaded)


def test_broken_adapters_are_refused_before_the_engine_sees_them(reasoner):
    stub, _, broken = reasoner
    assert "broken-nan" in broken
    for folder in broken:
        with pytest.raises(grpc.RpcError) as err:
            _load(stub, folder, folder)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (folder, err.value.details())
    models = stub.ListModels(rpb.ListModelsRequest(), timeout=30)
    assert not set(models.adapters) & set(broken)


def test_adapter_names_are_validated(reasoner):
    stub, _, _ = reasoner
    for name in ("../x", "default", "a b", "lema-tiny"):
        with pytest.raises(grpc.RpcError) as err:
            _load(stub, name, "good")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "name" in err.value.details()
