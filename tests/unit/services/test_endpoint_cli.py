"""`lema serve endpoint` precedence: defaults < the config file < the flags given (a flag at a default value
still wins over the file). `--dry-run` prints the bentoml command and the configuration; nothing starts."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from lema.app.cli import app


def _dry_run(*args: str) -> tuple[str, dict]:
    result = CliRunner().invoke(app, ["serve", "endpoint", "--dry-run", *args])
    assert result.exit_code == 0, result.output
    command, _, payload = result.stdout.partition("\n")
    return command, json.loads(payload)


def test_flags_override_the_config_file_even_at_default_values(tmp_path):
    config = tmp_path / "lema.yaml"
    config.write_text("endpoint:\n  port: 4000\n  engine: vllm\n  model: smollm2\n")
    command, payload = _dry_run("--config", str(config))
    assert command.endswith("--port 4000") and payload["engine"] == "vllm" and payload["model"] == "smollm2"
    command, payload = _dry_run("--config", str(config), "--port", "3000", "--engine", "auto", "--model", "lema-tiny")
    assert command.endswith("--port 3000") and payload["engine"] == "auto" and payload["model"] == "lema-tiny"
    command, _ = _dry_run()
    assert command.endswith("--host 127.0.0.1 --port 3000")  # the defaults, without a file


def test_an_invalid_flag_value_names_the_field(tmp_path):
    result = CliRunner().invoke(app, ["serve", "endpoint", "--dry-run", "--engine", "tpu"])
    assert result.exit_code == 2 and "engine" in result.output


def test_the_environment_sits_between_the_file_and_the_flags(tmp_path, monkeypatch):
    config = tmp_path / "lema.yaml"
    config.write_text("endpoint:\n  port: 4000\n")
    monkeypatch.setenv("LEMA_ENDPOINT__PORT", "4100")
    assert _dry_run("--config", str(config))[0].endswith("--port 4100")
    assert _dry_run("--config", str(config), "--port", "3000")[0].endswith("--port 3000")
