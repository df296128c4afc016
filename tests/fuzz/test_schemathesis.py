"""The fuzz tier (issues 28 and 32): schemathesis against the OpenAPI document the endpoint serves (/docs.json:
BentoML's probes and /solve, the admin API with its token, the OpenAI routes with their request bodies, the
correction API with an API key), bounded in examples and time: no 5xx on any generated request, malformed content
types included."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import requires_lema_tiny

from lema.core.api_keys import hash_key
from lema.core.model_resolve import resolve_model
from lema.devtools import ADMIN_TOKEN, bentoml_serve_args, free_port, start_endpoint

pytestmark = requires_lema_tiny


def test_no_server_errors_on_the_served_schema(tmp_path):
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    if exe is None:
        pytest.skip("schemathesis is not installed (the dev extra has it)")
    port = free_port()
    # One bearer token for every route: the admin token is also an API key of the correction API (its hash in
    # LEMA_API_KEYS, as a deployment would mount it), so generated corrections get past the key check.
    api_key = {"name": "fuzz", "sha256": hash_key(ADMIN_TOKEN), "prefix": ADMIN_TOKEN[:12],
               "requests_per_minute": 100_000, "corrections_per_day": 100_000, "created_at": "2026-12-07T00:00:00"}
    env = {"LEMA_ENDPOINT__MODEL": resolve_model("lema-tiny"), "LEMA_ENDPOINT__ENGINE": "transformers",
           "LEMA_ENDPOINT__REGISTRY_DIR": str(tmp_path / "registry"),
           "LEMA_ENDPOINT__API_KEYS_FILE": str(tmp_path / "no-keys-file.json"),
           "LEMA_API_KEYS": json.dumps([api_key]),
           "LEMA_ENDPOINT__MAX_TOKENS_LIMIT": "64"}  # generated max_tokens stay cheap to serve
    server = start_endpoint(bentoml_serve_args(port), tmp_path / "server.log", port, env=env)
    try:
        done = subprocess.run(
            [exe, "run", f"{server.url}/docs.json", "--checks", "not_a_server_error", "--max-examples", "10",
             "-H", f"Authorization: Bearer {ADMIN_TOKEN}", "--request-timeout", "60", "--workers", "1",
             "--generation-deterministic"],
            capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-4000:]
        assert "generated" in done.stdout and " passed" in done.stdout
        import httpx

        paths = httpx.get(f"{server.url}/docs.json", timeout=30).json()["paths"]
        for route in ("/v1/corrections", "/v1/verifications"):  # in the document schemathesis ran over
            body = paths[route]["post"]["requestBody"]["content"]["application/json"]["schema"]
            assert len(body["anyOf"]) == 2 and {"401", "429"} <= set(paths[route]["post"]["responses"]), route
    finally:
        server.stop()
    assert "Exception in ASGI application" not in server.log()
