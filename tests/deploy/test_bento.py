"""bentofile.yaml packs a bento whose own files serve the endpoint: `services` and `lema` sit side by side in its
src/ as the packages they are in the repository (no alias), so the service imports from the bento alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT


def test_a_built_bento_imports_its_service_from_its_own_files(tmp_path: Path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    bentoml = Path(sys.executable).parent / "bentoml"
    build = subprocess.run([str(bentoml), "build", str(REPO_ROOT), "--output", "tag"], cwd=REPO_ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    (src,) = (tmp_path / "bentoml" / "bentos" / "lema-endpoint").glob("*/src")
    assert (src / "services" / "endpoint" / "service.py").is_file() and (src / "lema" / "core").is_dir()
    assert not (src / "tests").exists() and not (src / "bench").exists()

    # The bento's src/ first on the path (as `bentoml serve` of a bento puts it): every lema module comes from it.
    probe = ("import services.endpoint.service as s, lema, services; "
             "print(s.Endpoint.name); print(s.__file__); print(lema.__file__)")
    run = subprocess.run([sys.executable, "-c", probe], cwd=src, env={**env, "PYTHONPATH": str(src)},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    name, service_file, lema_file = run.stdout.split()[-3:]
    assert name == "lema-endpoint"
    assert Path(service_file).is_relative_to(src) and Path(lema_file).is_relative_to(src), run.stdout
