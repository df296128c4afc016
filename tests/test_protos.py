"""The committed gRPC stubs must match what protos/ generates (run `make protos` after editing a .proto)."""

import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT


def test_generated_stubs_are_fresh(tmp_path: Path):
    subprocess.run([sys.executable, str(REPO_ROOT / "protos" / "generate.py"), "--out", str(tmp_path)], check=True)
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "lema" / "v1").iterdir() if p.is_file()}
    committed = {p.name: p.read_bytes() for p in (REPO_ROOT / "lema" / "v1").iterdir() if p.is_file()}
    assert set(fresh) == set(committed), "stub files differ: run `make protos`"
    stale = sorted(name for name in fresh if fresh[name] != committed[name])
    assert not stale, f"stale generated stubs {stale}: run `make protos`"


def test_every_service_has_a_proto():
    names = {p.stem for p in (REPO_ROOT / "protos" / "lema" / "v1").glob("*.proto")}
    assert {"common", "verifier", "reasoner", "corrector", "trainer", "collector"} <= names


def test_contract_services_and_streaming():
    from lema.v1 import corrector_pb2, reasoner_pb2, trainer_pb2, verifier_pb2

    def methods(module, service):
        return {m.name: m for m in module.DESCRIPTOR.services_by_name[service].methods}

    v = methods(verifier_pb2, "Verifier")
    assert not v["Verify"].server_streaming and v["VerifyBatch"].server_streaming
    assert methods(reasoner_pb2, "Reasoner")["Solve"].server_streaming
    assert methods(corrector_pb2, "Corrector")["CorrectBatch"].server_streaming
    t = methods(trainer_pb2, "Trainer")
    assert {"StartRun", "WatchRun", "CancelRun", "ListAdapters", "Promote"} <= set(t)
    assert t["WatchRun"].server_streaming
    from lema.v1 import collector_pb2

    assert {"AddProblems", "GetStats"} <= set(methods(collector_pb2, "Collector"))
