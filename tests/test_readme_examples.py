"""The correction API's examples run as written (issue 32): the README's and the docs page's bash and Python blocks,
in a fresh folder, against the endpoint they start themselves on 127.0.0.1:3000. The only addition: a wait for
/readyz after `lema serve endpoint &` (the text says to wait), and stopping that endpoint afterwards."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, requires_lema_tiny

pytestmark = requires_lema_tiny
WAIT = ("for i in $(seq 1 180); do curl -sf http://127.0.0.1:3000/readyz >/dev/null && break; sleep 1; done; "
        "curl -sf http://127.0.0.1:3000/readyz >/dev/null")


def _blocks(path: Path, heading: str) -> tuple[str, str]:
    text = path.read_text()
    section = text[text.index(heading):]
    section = section[: section.find("\n## ", 1) if "\n## " in section[1:] else len(section)]
    bash = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    return bash, python


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("page,heading", [("README.md", "## Correction as a service"),
                                          ("docs/correction-api.md", "## Examples")])
def test_the_examples_run_as_written(page, heading, tmp_path):
    if not _port_free(3000):
        pytest.skip("127.0.0.1:3000 is taken (the examples use the endpoint's default port)")
    bash, python = _blocks(REPO_ROOT / page, heading)
    assert "lema serve endpoint &" in bash
    script = bash.replace("lema serve endpoint &", "lema serve endpoint > endpoint.log 2>&1 &\nSERVER=$!\n" + WAIT, 1)
    script = ("set -euo pipefail\ntrap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT\n"
              + script + "\necho \"LEMA_API_KEY=$LEMA_API_KEY\" > key.env\n" + "python example.py\n")
    (tmp_path / "example.py").write_text(python)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}
    env.pop("LEMA_API_KEY", None)
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    log = (tmp_path / "endpoint.log").read_text() if (tmp_path / "endpoint.log").exists() else ""
    assert done.returncode == 0, done.stderr[-2000:] + log[-2000:]
    out = done.stdout  # curl prints no newline after its JSON: the client's lines follow on the same line
    assert '"correct":true' in out.replace(" ", "")  # the curl verification
    assert "True\n" in out  # the client's verification
    if page == "README.md":  # the reference corrector says why it cannot correct a GSM8K item
        assert re.search(r"upstream_error 0 .*reference corrector", out), out
    else:  # the synthetic item is corrected: by curl, then by the client
        assert '"status":"accepted"' in out.replace(" ", "")
        assert re.search(r"accepted \d+ \S", out), out
    assert (tmp_path / ".lema" / "api-keys.json").is_file()  # the key made where the example ran
