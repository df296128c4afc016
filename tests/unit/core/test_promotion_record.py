"""The promotion record (lema.core.promotion_record) and the trainer's fleet-wide promotion (trainer/promote.py):
files only, no servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lema.core.promotion_record import (
    PromotionRecordError,
    content_hash,
    read_record,
    record_path,
    write_record,
)
from lema.trainer.promote import promote_fleet
from lema.trainer.registry import AdapterRegistry


def _adapter(folder: Path, payload: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "target_modules": ["q_proj"]}))
    (folder / "adapter_model.safetensors").write_bytes(payload)
    return folder


def test_records_count_generations_and_keep_the_previous_adapter(tmp_path):
    path = tmp_path / "promotion.json"
    assert read_record(path) is None
    first = write_record(path, "adapter-1", "a" * 64)
    second = write_record(path, "adapter-2", "b" * 64)
    back = write_record(path, None)  # the base model
    assert (first.generation, second.generation, back.generation) == (1, 2, 3)
    assert second.previous == "adapter-1" and back.previous == "adapter-2"
    assert read_record(path) == back and back.adapter is None and back.content_hash == ""
    assert [p.name for p in tmp_path.iterdir()] == ["promotion.json"]  # no temporary file left behind


@pytest.mark.parametrize("content", [b"{not json", b'{"adapter": "../etc", "content_hash": "' + b"a" * 64 + b'"}',
                                     b'{"adapter": "x", "content_hash": "short"}', b'{"adapter": "x", "generation": -1}',
                                     b"[1, 2]", b" " * (65 << 10)])
def test_an_unusable_record_is_a_clear_error_without_its_content(tmp_path, content):
    path = tmp_path / "promotion.json"
    path.write_bytes(content)
    with pytest.raises(PromotionRecordError) as error:
        read_record(path)
    assert "not json" not in str(error.value)
    # A broken record does not block a fix: the next write replaces it.
    assert write_record(path, "adapter-1", "c" * 64).generation == 1


@pytest.mark.parametrize("name", ["../promotion.json", "/tmp/promotion.json", ".hidden", "a/b"])
def test_the_record_file_is_a_plain_name_inside_the_store(tmp_path, name):
    with pytest.raises(PromotionRecordError, match="promotion_record"):
        record_path(tmp_path, name)
    assert record_path(tmp_path, "promotion.json") == tmp_path / "promotion.json"


def test_content_hash_covers_weights_and_config(tmp_path):
    one = _adapter(tmp_path / "one", b"weights")
    two = _adapter(tmp_path / "two", b"weights")
    assert content_hash(one) == content_hash(two)
    (two / "adapter_model.safetensors").write_bytes(b"weightz")
    assert content_hash(one) != content_hash(two)


def test_fleet_promotion_gates_then_writes_the_record(tmp_path):
    registry = AdapterRegistry(tmp_path / "store")
    good = registry.register(_adapter(tmp_path / "good", b"1"), "lema-tiny", "good", {"validation_accuracy": 0.6})
    worse = registry.register(_adapter(tmp_path / "worse", b"2"), "lema-tiny", "worse", {"validation_accuracy": 0.4})
    unmeasured = registry.register(_adapter(tmp_path / "none", b"3"), "lema-tiny", "none", {})
    path = registry.root / "promotion.json"

    below_base = promote_fleet(good, registry, path, base_metrics={"validation_accuracy": 0.7})
    assert not below_base.promoted and "base model" in below_base.reason and read_record(path) is None
    outcome = promote_fleet(good, registry, path, base_metrics={"validation_accuracy": 0.5})
    assert outcome.promoted and "generation 1" in outcome.reason
    record = read_record(path)
    assert (record.adapter, record.content_hash) == (good.id, good.content_hash)

    refused = promote_fleet(worse, registry, path)  # worse than the serving adapter the record names
    assert not refused.promoted and good.id in refused.reason and read_record(path).adapter == good.id
    assert not promote_fleet(unmeasured, registry, path).promoted
    forced = promote_fleet(worse, registry, path, force=True)
    assert forced.promoted and forced.previous == good.id and read_record(path).adapter == worse.id
    again = promote_fleet(worse, registry, path, force=True)
    assert "already promoted" in again.reason and read_record(path).generation == 2


def test_the_promotion_commands_set_show_and_roll_back(tmp_path):
    from typer.testing import CliRunner

    from lema.app.cli import app

    registry = AdapterRegistry(tmp_path / "store")
    first = registry.register(_adapter(tmp_path / "one", b"1"), "lema-tiny", "one", {})
    second = registry.register(_adapter(tmp_path / "two", b"2"), "lema-tiny", "two", {})
    runner = CliRunner()

    def lema(*args: str):
        return runner.invoke(app, ["promotion", *args, "--store", str(registry.root)])

    assert lema("show").exit_code == 1
    assert lema("set", first.id).exit_code == 0
    assert lema("set", second.id).exit_code == 0
    shown = json.loads(lema("show").stdout)
    assert (shown["adapter"], shown["previous"], shown["generation"]) == (second.id, first.id, 2)
    assert json.loads(lema("rollback").stdout)["adapter"] == first.id
    assert json.loads(lema("set", "--base").stdout)["adapter"] is None

    refused = lema("set", "no-such-adapter")
    assert refused.exit_code == 2 and "no registered adapter" in refused.stderr
    (registry.root / first.id / "adapter_model.safetensors").write_bytes(b"tampered")
    tampered = lema("set", first.id)
    assert tampered.exit_code == 2 and "changed since it was registered" in tampered.stderr
    assert read_record(registry.root / "promotion.json").adapter is None  # unchanged by the refusals
    both = lema("set", first.id, "--base")
    assert both.exit_code == 2 and "one of them" in both.stderr
