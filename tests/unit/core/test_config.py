"""lema.core.config: one mechanism, one precedence rule: defaults < the YAML file < LEMA_<SECTION>__<FIELD> < flags."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lema.core.config import load_config, section_env


def test_the_file_then_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "lema.yaml"
    path.write_text("endpoint:\n  port: 4000\n  engine: transformers\nverifier:\n  workers: 3\n")
    config = load_config(path)
    assert (config.endpoint.port, config.endpoint.engine, config.verifier.workers) == (4000, "transformers", 3)
    assert config.reasoner.port == 50062  # a default the file leaves alone
    monkeypatch.setenv("LEMA_ENDPOINT__PORT", "4100")
    monkeypatch.setenv("LEMA_CLIENT__VERIFIER", "dns:///lema-verifier:50061")
    monkeypatch.setenv("LEMA_ENDPOINT__PRELOAD", '["a=a1"]')
    config = load_config(path)
    assert config.endpoint.port == 4100 and config.endpoint.engine == "transformers"  # merged, not replaced
    assert config.client.verifier == "dns:///lema-verifier:50061" and config.endpoint.preload == ["a=a1"]
    monkeypatch.setenv("LEMA_CONFIG", str(path))
    assert load_config().verifier.workers == 3


@pytest.mark.parametrize("name, value, field", [("LEMA_ENDPOINT__PROT", "1", "endpoint.prot"),
                                                ("LEMA_ENDPOINT__PORT", "99999", "endpoint.port")])
def test_a_bad_variable_is_an_error_naming_the_field(monkeypatch, name, value, field):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=field.replace(".", r"\.")):
        load_config()


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "lema.yaml"
    path.write_text("- a list\n")
    with pytest.raises(ValueError, match="mapping of sections"):
        load_config(path)


def test_section_env_round_trips(monkeypatch):
    values = {"port": 3100, "preload": ["x=y"], "promote": None, "registry_dir": "/srv/adapters", "threads": 2}
    for name, value in section_env("endpoint", values).items():
        monkeypatch.setenv(name, value)
    endpoint = load_config().endpoint
    assert (endpoint.port, endpoint.preload, endpoint.promote, endpoint.registry_dir, endpoint.threads) == \
        (3100, ["x=y"], None, "/srv/adapters", 2)
