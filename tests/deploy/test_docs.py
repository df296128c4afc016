"""The README is a landing page and the documentation site builds strictly (issue 29)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

MKDOCS = Path(sys.executable).parent / "mkdocs"


def _build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(MKDOCS), "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
                          cwd=config.parent, capture_output=True, text=True, timeout=300,
                          env={"PATH": str(MKDOCS.parent), "NO_MKDOCS_2_WARNING": "1", "HOME": str(site.parent)})


def test_the_readme_is_a_landing_page():
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024
    top = readme[: readme.index("## What it measures")]
    assert "make demo" in top and "make test" in top  # the two commands come first
    for link in ("docs/getting-started.md", "docs/architecture.md", "docs/harness.md", "docs/security.md"):
        assert f"]({link})" in readme and (REPO_ROOT / link).is_file(), link


def test_the_site_builds_strictly_with_its_generated_pages(tmp_path):
    from lema.core.config import LemaConfig

    done = _build(REPO_ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stderr[-3000:]
    site = tmp_path / "site"
    reference = (site / "configuration" / "index.html").read_text()
    for section, field in LemaConfig.model_fields.items():  # every field of every section, with its variable
        for name in field.annotation.model_fields:
            assert f"LEMA_{section.upper()}__{name.upper()}" in reference, (section, name)
    assert "Benchmark results" in (site / "benchmarks" / "index.html").read_text()
    assert (site / "results" / "learning.png").is_file()  # the figure bench/RESULTS.md shows
    index = (site / "index.html").read_text()
    assert "make demo" in index and 'href="getting-started/"' in index  # the README, its links made the site's
    assert not [p for p in site.rglob("*.html") if "fonts.googleapis.com" in p.read_text()]  # offline: no CDN fonts


def test_a_broken_link_fails_the_build(tmp_path):
    """--strict is real: the same site with one link to a page that does not exist does not build."""
    copy = tmp_path / "repo"
    copy.mkdir()
    for name in ("mkdocs.yml", "README.md"):
        shutil.copy2(REPO_ROOT / name, copy / name)
    for folder in ("docs", "bench", "deploy"):
        shutil.copytree(REPO_ROOT / folder, copy / folder, ignore=shutil.ignore_patterns("*.py", "__pycache__")
                        if folder != "docs" else None)
    page = copy / "docs" / "security.md"
    page.write_text(page.read_text() + "\nSee [the missing page](no-such-page.md).\n")
    done = _build(copy / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0 and "no-such-page.md" in done.stderr, done.stderr[-2000:]
