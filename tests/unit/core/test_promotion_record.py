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
from lema.trainer.gate import NO_OUTCOMES, NOT_SHOWN, PROMOTE, Outcomes
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


def _outcomes(right: int, n: int = 2500, first: int = 0) -> dict:
    """Gate outcomes on n shared problems: `right` of them answered right, from problem `first` on."""
    return Outcomes(tuple(f"v{i}" for i in range(n)), tuple(first <= i < first + right for i in range(n))).to_json()


def test_fleet_promotion_gates_then_writes_the_record_with_the_gate(tmp_path):
    registry = AdapterRegistry(tmp_path / "store")
    good = registry.register(_adapter(tmp_path / "good", b"1"), "lema-tiny", "good", {},
                             gate_outcomes=_outcomes(1500))  # 60%
    worse = registry.register(_adapter(tmp_path / "worse", b"2"), "lema-tiny", "worse", {},
                              gate_outcomes=_outcomes(1000))  # 40%
    unmeasured = registry.register(_adapter(tmp_path / "none", b"3"), "lema-tiny", "none", {})
    path = registry.root / "promotion.json"
    gated = {"margin": 0.03}

    below_base = promote_fleet(good, registry, path, base_outcomes=Outcomes.from_json(_outcomes(1750)), **gated)
    assert not below_base.promoted and "the base model" in below_base.reason and read_record(path) is None
    assert below_base.gate["decision"] == NOT_SHOWN and below_base.gate["diff"] == pytest.approx(-0.1)
    calls = []

    def base():  # measured only when the gate needs it
        calls.append(1)
        return Outcomes.from_json(_outcomes(1250))

    outcome = promote_fleet(good, registry, path, base_outcomes=base, **gated)
    assert outcome.promoted and "generation 1" in outcome.reason and calls == [1]
    record = read_record(path)
    assert (record.adapter, record.content_hash, record.reason) == (good.id, good.content_hash, "gate passed")
    assert record.gate["decision"] == PROMOTE and record.gate["forced"] is False
    assert record.gate["n"] == 2500 and record.gate["margin"] == 0.03 and record.gate["mde_80"] < 0.03

    refused = promote_fleet(worse, registry, path, base_outcomes=base, **gated)  # worse than what serves
    assert not refused.promoted and f"the serving {good.id}" in refused.reason and read_record(path).adapter == good.id
    assert refused.gate["reference"] == f"the serving {good.id}" and refused.gate["decision"] == NOT_SHOWN
    no_outcomes = promote_fleet(unmeasured, registry, path, base_outcomes=base, **gated)
    assert not no_outcomes.promoted and no_outcomes.gate["decision"] == NO_OUTCOMES
    assert len(calls) == 2  # the unmeasured adapter did not cost a measurement of the base model

    forced = promote_fleet(worse, registry, path, force=True, base_outcomes=base, **gated)
    assert forced.promoted and forced.previous == good.id and "(forced)" in forced.reason
    record = read_record(path)
    assert (record.adapter, record.reason) == (worse.id, "forced")
    assert record.gate["forced"] is True and record.gate["decision"] == NOT_SHOWN  # what the force overrode
    assert hash(record) == hash(read_record(path))  # records stay hashable with the gate's dict in them
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


def test_lema_promote_gates_prints_the_decision_and_records_a_force(tmp_path):
    from typer.testing import CliRunner

    from lema.app.cli import app
    from lema.trainer.baseline import BaseOutcomes
    from lema.trainer.recipe import EvalSettings

    registry = AdapterRegistry(tmp_path / "store")
    # The base model's outcomes as the trainer keeps them (measured once): 50% of the same 2,500 problems.
    (registry.root / "base-outcomes.json").write_text(json.dumps(
        {BaseOutcomes.key("lema-tiny", EvalSettings()): _outcomes(1250)}))
    # One problem ahead of the base model, answering 20% of the problems differently (as lema-tiny's adapters do).
    ahead = registry.register(_adapter(tmp_path / "ahead", b"1"), "lema-tiny", "ahead", {},
                              gate_outcomes=_outcomes(1251, first=250))
    clear = registry.register(_adapter(tmp_path / "clear", b"2"), "lema-tiny", "clear", {},
                              gate_outcomes=_outcomes(1500))  # ten points ahead
    runner = CliRunner()

    def lema(*args: str):
        return runner.invoke(app, ["promote", *args, "--store", str(registry.root)])

    refused = lema(ahead.id)  # the default margin (1 point) needs far more than 2,500 problems here
    assert refused.exit_code == 1, refused.output
    report = json.loads(refused.stdout)
    assert not report["promoted"] and report["gate"]["decision"] == "refuse: too small to decide"
    assert report["gate"]["n"] == 2500 and report["gate"]["margin"] == 0.01 and report["gate"]["mde_80"] > 0.01
    assert read_record(registry.root / "promotion.json") is None

    promoted = lema(clear.id, "--margin", "3")
    assert promoted.exit_code == 0, promoted.output
    assert json.loads(promoted.stdout)["gate"]["decision"] == "promote"
    assert read_record(registry.root / "promotion.json").gate["margin"] == 0.03

    forced = lema(ahead.id, "--force")
    assert forced.exit_code == 0 and json.loads(forced.stdout)["gate"]["forced"] is True
    record = read_record(registry.root / "promotion.json")
    assert (record.adapter, record.reason, record.gate["forced"]) == (ahead.id, "forced", True)
    assert record.gate["reference"] == f"the serving {clear.id}"

    bad = lema(clear.id, "--margin", "0")
    assert bad.exit_code == 2 and "--margin" in bad.stderr
    unknown = lema("no-such-adapter")
    assert unknown.exit_code == 2 and "no registered adapter" in unknown.stderr
