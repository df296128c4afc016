"""lema.core.security: what every channel carries (no servers; the balancing itself: tests/test_grpc_balancing.py)."""

from __future__ import annotations

import json

from lema.core.config import ClientConfig
from lema.core.security import is_loopback, service_config


def test_the_service_config_names_the_policy_and_the_retry():
    config = json.loads(service_config(ClientConfig()))
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["methodConfig"][0]["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert "methodConfig" not in json.loads(service_config(ClientConfig(retry_attempts=1, load_balancing="pick_first")))


def test_loopback_covers_all_of_127_and_ipv6():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.3", "localhost", "::1", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "example.com", "::"))
