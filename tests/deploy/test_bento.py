"""bentofile.yaml packs a bento that serves the endpoint from what it carries: lema's wheel (the one import package
`lema`, services/ and trainer/ inside it), no source folder of the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def test_a_built_bento_imports_its_service_from_its_own_wheel(source_copy, lema_wheel, tmp_path: Path):
    assert lema_wheel.parent == source_copy / "dist"  # where bentofile.yaml's `wheels` entry points
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    bentoml = Path(sys.executable).parent / "bentoml"
    build = subprocess.run([str(bentoml), "build", str(source_copy), "--output", "tag"], cwd=source_copy, env=env,
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    (bento,) = (tmp_path / "bentoml" / "bentos" / "lema-endpoint").glob("*/")
    (carried,) = (bento / "env" / "python" / "wheels").glob("lema-*.whl")
    assert carried.name == lema_wheel.name
    src = bento / "src"
    assert not any(src.rglob("*.py")), "the bento's src/ holds no lema source (the wheel does)"
    assert "lema.services.endpoint.service:Endpoint" in (bento / "bento.yaml").read_text()

    # Install what the bento carries, as its image does, and import the service from there alone (the bento's
    # src/ first on the path, as `bentoml serve` of a bento puts it).
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(carried)],
                   check=True, capture_output=True, timeout=300)
    probe = ("import lema.services.endpoint.service as s, lema; "
             "print(s.Endpoint.name); print(s.__file__); print(lema.__file__)")
    run = subprocess.run([sys.executable, "-c", probe], cwd=src,
                         env={**env, "PYTHONPATH": os.pathsep.join([str(src), str(site)])},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    name, service_file, lema_file = run.stdout.split()[-3:]
    assert name == "lema-endpoint"
    assert Path(service_file).is_relative_to(site) and Path(lema_file).is_relative_to(site), run.stdout
    shutil.rmtree(site)
