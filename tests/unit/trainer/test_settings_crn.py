"""Common random numbers in the harness (lema.trainer.settings.crn_stream): both arms of a seed see the shared CoT rows in
the same order and differ only in the slots that hold the corrections (or their twins)."""

from __future__ import annotations

import json

import pytest

from lema.trainer.settings import build_arms


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def export(tmp_path):
    cot = [{"type": "cot", "prompt": f"q{i}", "completion": f"s{i}", "problem_id": f"p{i}", "source": "reference"}
           for i in range(30)]
    corrections = [{"type": "correction", "prompt": f"wrong{j}", "completion": f"fix{j}", "problem_id": f"p{j}",
                    "source": "correction:ref", "attempt_id": f"a{j}", "correction_id": f"c{j}"} for j in range(20)]
    twins = [{"type": "cot", "prompt": f"q{j}", "completion": f"whole{j}", "problem_id": f"p{j}",
              "source": "corrected:ref", "attempt_id": f"a{j}", "correction_id": f"c{j}"} for j in range(20)]
    _write(tmp_path / "cot.jsonl", cot)
    _write(tmp_path / "correction.jsonl", corrections)
    _write(tmp_path / "corrected_cot.jsonl", twins)
    return tmp_path


def _names(rows):
    return [r["completion"] for r in rows]


def test_main_streams_share_the_cot_order_and_insert_the_corrections(export):
    arms = build_arms(export, "main", correction_ratio=0.4, seed=3)
    cot, lema = arms["cot"].stream(80), arms["lema"].stream(80)
    assert len(cot) == len(lema) == 80
    shared = [r for r in lema if r["type"] == "cot"]
    # The CoT rows LEMA trains on are the CoT-only arm's, in the same order, up to where LEMA's budget ends.
    assert _names(shared) == _names(cot[:len(shared)])
    # Epoch 1 of LEMA holds each of its 12 corrections once and every CoT row once.
    first_epoch = lema[:42]
    assert sorted(_names(r for r in first_epoch if r["type"] == "correction")) == \
        sorted(_names(r for r in arms["lema"].rows if r["type"] == "correction"))
    assert len({r["completion"] for r in first_epoch if r["type"] == "cot"}) == 30


def test_matched_arms_put_a_correction_and_its_twin_in_the_same_slot(export):
    arms = build_arms(export, "matched", correction_ratio=0.3, seed=1)
    cot, lema = arms["cot"].stream(100), arms["lema"].stream(100)
    differ = [i for i, (a, b) in enumerate(zip(cot, lema)) if a["completion"] != b["completion"]]
    assert differ and all(lema[i]["type"] == "correction" and cot[i]["source"].startswith("corrected:")
                          and lema[i]["correction_id"] == cot[i]["correction_id"] for i in differ)
    assert len(differ) == sum(r["type"] == "correction" for r in lema)


def test_equal_replaces_dropped_cot_rows_in_place(export):
    arms = build_arms(export, "equal", correction_ratio=0.2, seed=2)
    cot, lema = arms["cot"].stream(60), arms["lema"].stream(60)
    differ = [i for i, (a, b) in enumerate(zip(cot, lema)) if a["completion"] != b["completion"]]
    assert len(differ) == 2 * 6  # 6 corrections replace 6 CoT rows in each of two epochs
    assert all(lema[i]["type"] == "correction" and cot[i]["type"] == "cot" for i in differ)


def test_streams_are_deterministic_per_seed_and_differ_across_seeds(export, tmp_path):
    a = build_arms(export, "main", seed=4)["lema"].stream(50)
    b = build_arms(export, "main", seed=4)["lema"].stream(50)
    c = build_arms(export, "main", seed=5)["lema"].stream(50)
    assert _names(a) == _names(b) and _names(a) != _names(c)
    path = build_arms(export, "main", seed=4)["lema"].write(tmp_path / "train.jsonl", 50)
    assert [json.loads(line)["completion"] for line in path.open()] == _names(a)


def test_cot_stream_does_not_depend_on_the_corrections(export, tmp_path):
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    (fewer / "cot.jsonl").write_text((export / "cot.jsonl").read_text())
    lines = (export / "correction.jsonl").read_text().splitlines(keepends=True)
    (fewer / "correction.jsonl").write_text("".join(lines[:5]))
    assert _names(build_arms(fewer, "main", seed=7)["cot"].stream(70)) == \
        _names(build_arms(export, "main", seed=7)["cot"].stream(70))
