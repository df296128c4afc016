"""The distribution installs one import package, `lema` (issue 29): `services` and `trainer` are names other
projects own on PyPI (Coqui's `trainer` 0.0.36 imports as `trainer`), so lema's wheel must not claim them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")


def _top_level_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return {name.split("/")[0] for name in archive.namelist() if not name.split("/")[0].endswith(".dist-info")}


def test_the_wheel_holds_one_top_level_package_with_its_data(lema_wheel):
    assert _top_level_names(lema_wheel) == {"lema"}
    with zipfile.ZipFile(lema_wheel) as archive:
        names = set(archive.namelist())
    # the root folders inside the namespace, with the data files read at run time
    for expected in ("lema/services/endpoint/service.py", "lema/trainer/configs/paper.yaml",
                     "lema/trainer/tiny/pretrain.py", "lema/app/cli.py", "lema/assets/lema-tiny/model.safetensors",
                     "lema/core/store/migrations/env.py", "lema/core/store/migrations/script.py.mako",
                     "lema/tiny/recipe.yaml", "lema/services/review/templates/correction.html",
                     "lema/services/review/static/review.js"):
        assert expected in names, expected
    assert any(n.startswith("lema/core/store/migrations/versions/") and n.endswith(".py") for n in names)


@pytest.mark.skipif(UV is None, reason="uv (a dependency of bentoml) is not installed")
def test_the_wheel_installs_beside_coqui_trainer(lema_wheel, tmp_path):
    venv = tmp_path / "venv"
    env = {**os.environ, "VIRTUAL_ENV": str(venv)}
    env.pop("PYTHONPATH", None)

    def run(*command: str, timeout: float = 600) -> subprocess.CompletedProcess:
        done = subprocess.run(list(command), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{command}: {done.stderr[-2000:]}"
        return done

    run(UV, "venv", "-q", "--python", sys.executable, str(venv))
    # Not editable: the wheel and the dependencies it declares, from the package registry.
    run(UV, "pip", "install", "-q", str(lema_wheel))
    run(UV, "pip", "install", "-q", "--no-deps", "trainer==0.0.36")
    bin_dir = venv / "bin"
    assert "verify" in run(str(bin_dir / "lema"), "--help").stdout
    verdict = json.loads(run(str(bin_dir / "lema"), "verify", "--kind", "gsm8k", "--gold", "42",
                             "--candidate", "6 * 7 = 42. The answer is 42.").stdout)
    assert verdict["correct"] is True and verdict["extracted_answer"] == "42"
    wrong = json.loads(run(str(bin_dir / "lema"), "verify", "--kind", "gsm8k", "--gold", "42",
                           "--candidate", "The answer is 41.").stdout)
    assert wrong["correct"] is False

    # `import trainer` is Coqui's. Its own imports need torch and coqpit, which `--no-deps` leaves out: coqpit is
    # installed, torch is lent by this environment (a path appended after the venv's own site-packages, so
    # `trainer` and `lema` still come from the venv).
    run(UV, "pip", "install", "-q", "--no-deps", "coqpit")
    import torch

    site = Path(run(str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                .stdout.strip())
    (site / "zz_lent_torch.pth").write_text(str(Path(torch.__file__).parents[1]) + "\n")
    run(str(bin_dir / "python"), "-c", "import trainer")
    where = run(str(bin_dir / "python"), "-c", "import trainer, lema.services.verifier, lema.trainer.stats; "
                "print(trainer.__file__); print(lema.trainer.stats.__file__)").stdout.split()
    assert Path(where[0]) == site / "trainer" / "__init__.py"  # Coqui's, untouched by lema
    assert Path(where[1]) == site / "lema" / "trainer" / "stats.py"
    assert json.loads(run(str(bin_dir / "lema"), "verify", "--kind", "synthetic", "--gold", "12",
                          "--candidate", "So the answer is 12.").stdout)["correct"] is True
