"""API keys (lema.core.api_keys): shown once, kept hashed, listed without secrets, revoked, re-read on change."""

from __future__ import annotations

import json
import os

import pytest

from lema.core import api_keys
from lema.core.errors import AlreadyExists, InvalidInput, NotFound


def test_a_key_is_kept_only_as_its_hash(tmp_path):
    path = tmp_path / "keys.json"
    key = api_keys.create_key(path, "team-a", requests_per_minute=30, corrections_per_day=500)
    assert key.startswith("lema_") and len(key) > 40
    text = path.read_text()
    assert key not in text and api_keys.hash_key(key) in text
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    (record,) = api_keys.read_keys(path)
    assert (record.name, record.requests_per_minute, record.corrections_per_day) == ("team-a", 30, 500)
    assert record.prefix == key[:12] and record.active


def test_create_and_revoke_refuse_by_name(tmp_path):
    path = tmp_path / "keys.json"
    api_keys.create_key(path, "a")
    with pytest.raises(AlreadyExists, match="^name"):
        api_keys.create_key(path, "a")
    for bad in ("", "-x", "a b", "x" * 65):
        with pytest.raises(InvalidInput, match="^name"):
            api_keys.create_key(path, bad)
    with pytest.raises(InvalidInput, match="requests_per_minute"):
        api_keys.create_key(path, "b", requests_per_minute=0)
    api_keys.revoke_key(path, "a")
    with pytest.raises(NotFound, match="^name"):
        api_keys.revoke_key(path, "a")
    api_keys.create_key(path, "a")  # a new key under a revoked name
    assert [k.active for k in api_keys.read_keys(path)] == [False, True]


def test_the_ring_follows_the_file_and_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "keys.json"
    first = api_keys.create_key(path, "first")
    ring = api_keys.KeyRing(path, "LEMA_TEST_KEYS")
    assert ring.find(first).name == "first" and ring.find(first + "x") is None and ring.find("") is None
    api_keys.revoke_key(path, "first")
    assert ring.find(first) is None  # revoked: refused from the next lookup
    entry = {"name": "mounted", "sha256": api_keys.hash_key("lema_from-a-secret"), "prefix": "lema_from-a",
             "requests_per_minute": 5, "corrections_per_day": 1, "created_at": "2026-12-07"}
    monkeypatch.setenv("LEMA_TEST_KEYS", json.dumps([entry]))
    assert ring.find("lema_from-a-secret").name == "mounted" and len(ring) == 1


def test_a_broken_keys_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text("{not json")
    with pytest.raises(InvalidInput, match="keys.json: not JSON"):
        api_keys.read_keys(path)
    path.write_text(json.dumps({"keys": [{"name": "x", "sha256": "nothex"}]}))
    with pytest.raises(InvalidInput, match="needs name, sha256"):
        api_keys.read_keys(path)
