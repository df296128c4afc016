"""The reproduction harness: the paper's settings built from one export, the paired statistics, `lema ablate` end to
end on a real collection (small sizes: it asserts the contract, not that LEMA wins), and export length hygiene."""

from __future__ import annotations

import json
import math
import subprocess

import pytest
from conftest import REPO_ROOT, lema_command, requires_lema_tiny

from lema.trainer.settings import SettingError, build_arms
from lema.trainer.stats import mcnemar_exact, paired_bootstrap


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def small_export(tmp_path):
    """20 CoT rows over problems p0..p9; 12 corrections (c0..c11, one per mistake path) with their twins."""
    cot = [{"type": "cot", "prompt": f"q{i % 10}", "completion": f"s{i}", "problem_id": f"p{i % 10}",
            "source": "reference"} for i in range(20)]
    corrections = [{"type": "correction", "prompt": f"wrong{j}", "completion": f"fix{j}", "problem_id": f"p{j % 10}",
                    "source": "correction:ref", "attempt_id": f"a{j}", "correction_id": f"c{j}"} for j in range(12)]
    twins = [{"type": "cot", "prompt": f"q{j % 10}", "completion": f"whole{j}", "problem_id": f"p{j % 10}",
              "source": "corrected:ref", "attempt_id": f"a{j}", "correction_id": f"c{j}"} for j in range(12)]
    _write(tmp_path / "cot.jsonl", cot)
    _write(tmp_path / "correction.jsonl", corrections)
    _write(tmp_path / "corrected_cot.jsonl", twins)
    return tmp_path


def _keys(rows):
    return sorted(r["completion"] for r in rows)


def test_main_setting_adds_capped_corrections_to_all_cot(small_export):
    arms = build_arms(small_export, "main", correction_ratio=0.4, seed=0)
    cot, lema = arms["cot"].rows, arms["lema"].rows
    assert len(cot) == 20 and arms["cot"].counts() == {"cot": 20}
    assert arms["lema"].counts() == {"cot": 20, "correction": 8}  # floor(0.4 x 20) of the 12 corrections
    assert {r["completion"] for r in cot} <= {r["completion"] for r in lema}  # all CoT rows in both arms
    corrections = [r for r in lema if r["type"] == "correction"]
    assert len({r["attempt_id"] for r in corrections}) == 8  # at most one per mistake path


def test_equal_setting_keeps_the_size_and_drops_as_many_cot_rows(small_export):
    arms = build_arms(small_export, "equal", correction_ratio=0.4, seed=1)
    assert len(arms["cot"].rows) == len(arms["lema"].rows) == 20
    assert arms["lema"].counts() == {"cot": 12, "correction": 8}


def test_matched_setting_gives_cot_the_corrected_solutions_of_the_same_questions(small_export):
    arms = build_arms(small_export, "matched", correction_ratio=0.25, seed=2)
    cot, lema = arms["cot"].rows, arms["lema"].rows
    assert len(cot) == len(lema) == 25 and arms["cot"].counts() == {"cot": 20, "corrected_cot": 5}
    chosen = [r for r in lema if r["type"] == "correction"]
    twins = [r for r in cot if r["source"].startswith("corrected:")]
    assert sorted(r["correction_id"] for r in chosen) == sorted(r["correction_id"] for r in twins)
    assert sorted(r["problem_id"] for r in chosen) == sorted(r["problem_id"] for r in twins)


def test_settings_are_deterministic_per_seed_and_differ_across_seeds(small_export):
    a, b = build_arms(small_export, "main", seed=3), build_arms(small_export, "main", seed=3)
    assert [r["completion"] for r in a["lema"].rows] == [r["completion"] for r in b["lema"].rows]
    other = build_arms(small_export, "main", seed=4)
    assert [r["completion"] for r in other["lema"].rows] != [r["completion"] for r in a["lema"].rows]


def test_cot_only_arm_and_draw_do_not_depend_on_the_setting_or_the_corrections(small_export, tmp_path):
    """The CoT-only arm of a seed is the same file, row for row, in `main` and `equal` and whatever corrections the
    export holds; the K corrections of a seed are the same in every setting."""
    main, equal = build_arms(small_export, "main", seed=5), build_arms(small_export, "equal", seed=5)
    assert [r["completion"] for r in main["cot"].rows] == [r["completion"] for r in equal["cot"].rows]
    matched = build_arms(small_export, "matched", seed=5)
    drawn = {name: {r["correction_id"] for r in arms["lema"].rows if r["type"] == "correction"}
             for name, arms in (("main", main), ("equal", equal), ("matched", matched))}
    assert drawn["main"] == drawn["equal"] == drawn["matched"] and len(drawn["main"]) == 8
    # Another export with fewer corrections (as a filtered export has): the same CoT-only arm, row for row.
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    (fewer / "cot.jsonl").write_text((small_export / "cot.jsonl").read_text())
    lines = (small_export / "correction.jsonl").read_text().splitlines(keepends=True)
    (fewer / "correction.jsonl").write_text("".join(lines[:9]))
    filtered = build_arms(fewer, "main", seed=5)
    assert [r["completion"] for r in filtered["cot"].rows] == [r["completion"] for r in main["cot"].rows]


def test_bad_settings_are_refused_by_name(small_export, tmp_path_factory):
    with pytest.raises(SettingError, match="setting must be one of"):
        build_arms(small_export, "half", seed=0)
    with pytest.raises(SettingError, match="correction_ratio"):
        build_arms(small_export, "main", correction_ratio=1.5)
    (small_export / "corrected_cot.jsonl").unlink()
    with pytest.raises(SettingError, match="corrected_cot.jsonl is missing"):
        build_arms(small_export, "matched")


def test_exact_mcnemar_counts_discordant_pairs():
    p, wins, losses = mcnemar_exact([False] * 5 + [True] * 10, [True] * 5 + [True] * 10)
    assert (wins, losses) == (0, 5) and p == pytest.approx(2 / 32)  # 2 x P(X <= 0), X ~ Bin(5, 1/2)
    p, wins, losses = mcnemar_exact([True, False] * 10, [False, True] * 10)
    assert (wins, losses) == (10, 10) and p == 1.0
    p, _, _ = mcnemar_exact([True] * 10 + [False] * 21, [False] * 10 + [True] * 21)
    assert p == pytest.approx(2 * sum(math.comb(31, i) for i in range(11)) / 2**31)


def test_paired_bootstrap_interval():
    same = [[True, False, True, True]] * 3
    diff = paired_bootstrap(same, same)
    assert diff.mean_diff == 0 and diff.ci95 == (0.0, 0.0)
    better = paired_bootstrap([[True] * 50] * 2, [[False] * 50] * 2)
    assert better.mean_diff == 1 and better.ci95 == (1.0, 1.0)
    # a 10-point gain on 200 problems in every seed: the interval excludes 0 but is not a point
    a = [[True] * 120 + [False] * 80] * 3
    b = [[True] * 100 + [False] * 100] * 3
    result = paired_bootstrap(a, b)
    assert result.mean_diff == pytest.approx(0.1) and 0.05 < result.ci95[0] < 0.1 < result.ci95[1] < 0.15
    with pytest.raises(ValueError):
        paired_bootstrap([[True]], [[True, False]])


# --- on a real collection ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def collected_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablate")
    store, export = root / "S.db", root / "E"
    run = subprocess.run([*lema_command(), "collect", "--source", "synthetic:24:seed=7", "--store", str(store),
                          "--samples", "2", "--max-tokens", "160"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    run = subprocess.run([*lema_command(), "export", "--store", str(store), "--out", str(export)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return root, store, export


def _export(store, out, *flags) -> dict:
    """`lema export` with these flags; its manifest."""
    run = subprocess.run([*lema_command(), "export", "--store", str(store), "--out", str(out), *flags],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads((out / "manifest.json").read_text())


@requires_lema_tiny
def test_export_measures_every_row_and_never_cuts_a_completion(collected_export, tmp_path):
    from transformers import AutoTokenizer

    from lema.core.model_resolve import resolve_model
    from lema.core.rendering import encode_row

    _, store, _ = collected_export
    limit = 300  # tight enough that some corrections must be shortened or dropped
    manifest = _export(store, tmp_path, "--max-seq-len", str(limit))
    length = manifest["length"]
    assert length["max_seq_len"] == limit and length["truncated_completions"] == 0
    assert sum(length["shortened"].values()) + sum(length["dropped_over_length"].values()) > 0
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("lema-tiny"))
    shortened = 0
    for name in ("cot.jsonl", "correction.jsonl", "corrected_cot.jsonl"):
        for line in (tmp_path / name).open():
            row = json.loads(line)
            assert encode_row(tokenizer, row["prompt"], row["completion"]).length <= limit
            shortened += "\n...\n}\nIncorrect Step:" in row["prompt"]
    assert shortened == length["shortened"].get("correction", 0)
    # every kept correction still has its twin (the matched setting needs one per correction)
    assert manifest["counts"]["correction"] == manifest["counts"]["corrected_cot"]


@requires_lema_tiny
@pytest.mark.parametrize("setting", ["matched"])
def test_lema_ablate_writes_ablation_json_and_png(collected_export, setting):
    root, _, export = collected_export
    work = root / f"A-{setting}"
    run = subprocess.run([*lema_command(), "ablate", "--export", str(export), "--recipe", "tiny", "--setting", setting,
                          "--seeds", "0,1", "--eval-problems", "20", "--max-steps", "2", "--validation",
                          "--hard-problems", "10", "--work-dir", str(work)],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "{'loss'" not in run.stdout  # the HF Trainer's log dictionaries are not printed
    data = json.loads((work / "ablation.json").read_text())
    assert data["setting"] == setting and data["seeds"] == [0, 1] and data["eval_problems"] == 20
    for arm in ("cot", "lema"):
        info = data["arms"][arm]
        assert info["examples"] > 0 and len(info["accuracy"]) == 2 and all(0 <= a <= 1 for a in info["accuracy"])
        assert info["steps"] == [2, 2]  # both arms, the same optimizer steps
    assert data["arms"]["cot"]["examples"] == data["arms"]["lema"]["examples"]  # matched: same size
    paired = data["paired"]["lema_vs_cot"]
    low, high = paired["ci95"]
    assert low <= paired["mean_diff"] <= high and len(paired["mcnemar_p"]) == 2
    assert all(0 <= p <= 1 for p in paired["mcnemar_p"])
    # --validation: every arm measured on the validation problems too, and paired there (what configurations are
    # chosen on)
    assert all(v is not None for arm in ("cot", "lema") for v in data["arms"][arm]["validation_accuracy"])
    on_validation = data["validation_paired"]["lema_vs_cot"]
    mean_validation = lambda arm: sum(data["arms"][arm]["validation_accuracy"]) / 2  # noqa: E731
    assert on_validation["mean_diff"] == pytest.approx(mean_validation("lema") - mean_validation("cot"))
    assert (work / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # What the design could see, per comparison: discordance, the seed spread, mde_80 (consistent with each other)
    assert data["primary_split"] == "test"
    assert 0 <= paired["discordance"] <= 1 and paired["seed_sd"] is not None and paired["se"] >= 0
    assert paired["mde_80"] == pytest.approx(2.8016 * paired["se"], rel=1e-3)
    assert all(s["discordance"] == (s["lema_only_right"] + s["cot_only_right"]) / 20 for s in paired["per_seed"])
    # the continuous secondary measure: the reference solutions' log-likelihood, paired
    ll = paired["reference_logprob"]
    assert ll["ci95"][0] <= ll["mean_diff"] <= ll["ci95"][1] and ll["unit"].startswith("nats")
    # the hard split beside it: 10 problems with more steps than any training problem
    assert data["hard_problems"] == 10 and set(data["paired_hard"]) >= {"lema_vs_cot", "cot_vs_base"}
    assert all(len(data["arms"][arm]["hard_accuracy"]) == 2 for arm in ("cot", "lema"))
    # Common random numbers: per seed, both arms' files are their 2 x 16 training rows in order, and they differ only
    # in the slots where LEMA has a correction and CoT-only that correction's corrected solution (matched).
    for seed in (0, 1):
        cot_rows, lema_rows = ([json.loads(line) for line in (work / f"seed{seed}" / arm / "train.jsonl").open()]
                               for arm in ("cot", "lema"))
        assert len(cot_rows) == len(lema_rows) == 32
        for cot, lema in zip(cot_rows, lema_rows):
            assert cot == lema or (lema["type"] == "correction" and cot["correction_id"] == lema["correction_id"])


def test_lema_ablate_rejects_bad_flags_by_name(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    for flags, field in ((["--setting", "half"], "--setting"), (["--seeds", "a,b"], "--seeds"),
                         (["--correction-ratio", "2"], "--correction-ratio")):
        run = subprocess.run([*lema_command(), "ablate", "--export", str(tmp_path), *flags], capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 2 and field in run.stderr, run.stderr


def test_step_correction_gives_the_correct_steps_as_context_and_trains_the_rest():
    from lema.core.formats import step_correction

    wrong = "Step 1: He has 3 + 4 = 7 pens.\nStep 2: He gives 2, so 7 - 2 = 4 pens.\nThe answer is 4."
    corrected = "...\nStep 2: He gives 2, so 7 - 2 = 5 pens.\nThe answer is 5."
    context, target = step_correction(wrong, 2, corrected)
    assert context == "Step 1: He has 3 + 4 = 7 pens.\n"
    assert target == "Step 2: He gives 2, so 7 - 2 = 5 pens.\nThe answer is 5."
    assert step_correction(wrong, 1, "Step 1: He has 3 + 4 = 7 pens.\nThe answer is 7.")[0] == ""


@requires_lema_tiny
def test_context_tokens_are_given_but_not_trained():
    from transformers import AutoTokenizer

    from lema.core.model_resolve import resolve_model
    from lema.core.rendering import encode_row

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("lema-tiny"))
    context, target = "Step 1: 3 + 4 = 7.\n", "Step 2: 7 - 2 = 5.\nThe answer is 5."
    with_context = encode_row(tokenizer, "Solve it.", target, context)
    whole = encode_row(tokenizer, "Solve it.", context + target)
    assert with_context.input_ids == whole.input_ids  # the same sequence ...
    assert with_context.prompt_length > whole.prompt_length  # ... with the context masked
    trained = tokenizer.decode(with_context.input_ids[with_context.prompt_length:])
    assert trained.startswith("Step 2:") and "Step 1" not in trained


@requires_lema_tiny
def test_export_step_format_rows(collected_export, tmp_path):
    _, store, _ = collected_export
    manifest = _export(store, tmp_path, "--correction-format", "step")
    assert manifest["correction_format"] == "step" and manifest["counts"]["correction"] > 0
    for line in (tmp_path / "correction.jsonl").open():
        row = json.loads(line)
        assert row["prompt"].endswith("Let's think step by step.\n")
        assert row["completion"].splitlines()[-1].startswith("The answer is")
        if row["completion"].startswith("Step "):  # else the mistake was the answer line: the target is that line
            first = int(row["completion"].split(":")[0].split()[1])
            assert row.get("context", "").count("Step ") == first - 1  # the model's own steps before its mistake
    bad = subprocess.run([*lema_command(), "export", "--store", str(store), "--out", str(tmp_path / "x"),
                          "--correction-format", "prose"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--correction-format" in bad.stderr


@requires_lema_tiny
def test_mistake_scoring_tells_a_believed_step_from_an_unlikely_one():
    from lema.core.formats import cot_prompt
    from lema.core.mistakes import MistakeCandidate, score
    from lema.core.model_resolve import resolve_model
    from lema.core.synthetic import generate

    problem = generate(1, seed=5, split="train", steps=3)[0]
    gold = problem.gold_solution.splitlines()
    context = gold[0] + "\n"
    garbled = "Step 2: { } { } Explanation Explanation 9 9 9 9."
    believed = MistakeCandidate("believed", cot_prompt(problem.question), context, wrong=gold[1], right=garbled)
    noise = MistakeCandidate("noise", cot_prompt(problem.question), context, wrong=garbled, right=gold[1])
    scores = score(resolve_model("lema-tiny"), [believed, noise])
    assert scores["believed"].systematic and not scores["noise"].systematic
    assert scores["believed"].logp_wrong == pytest.approx(scores["noise"].logp_right, abs=1e-3)  # batching-invariant


@requires_lema_tiny
def test_export_keeps_only_systematic_mistakes_and_counts_them(collected_export, tmp_path):
    _, store, _ = collected_export
    manifest = _export(store, tmp_path, "--mistakes", "systematic")
    counts = manifest["mistakes"]
    assert counts["filter"] == "systematic" and counts["model"] == "lema-tiny"
    assert counts["scored"] + counts["not_scorable"] == counts["corrections"]
    assert counts["systematic"] + counts["sampling_noise"] == counts["scored"]
    assert 0 < manifest["counts"]["correction"] <= counts["systematic"] < counts["corrections"]


@requires_lema_tiny
def test_preference_pairs_and_the_dpo_arm(collected_export, tmp_path):
    root, _, export = collected_export
    pairs = [json.loads(line) for line in (export / "preference.jsonl").open()]
    corrections = {json.loads(line)["correction_id"] for line in (export / "correction.jsonl").open()}
    assert pairs and {p["correction_id"] for p in pairs} <= corrections
    for pair in pairs:  # the same prefix; chosen is the corrected continuation, rejected the model's own
        assert pair["chosen"] != pair["rejected"]
        assert pair["chosen"].splitlines()[-1].startswith("The answer is")
        assert pair["chosen"].splitlines()[0] != pair["rejected"].splitlines()[0]  # they part at the first line
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text((REPO_ROOT / "trainer" / "configs" / "tiny.yaml").read_text()
                      + "preference: {max_steps: 3, batch_size: 4}\n")
    work = root / "A-dpo"
    run = subprocess.run([*lema_command(), "ablate", "--export", str(export), "--recipe", str(recipe), "--seeds", "0",
                          "--eval-problems", "16", "--max-steps", "2", "--preference", "--work-dir", str(work)],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    data = json.loads((work / "ablation.json").read_text())
    dpo = data["arms"]["dpo"]
    assert dpo["steps"] == [3] and 0 < dpo["examples"] <= data["arms"]["lema"]["examples"]
    assert set(data["paired"]) >= {"dpo_vs_cot", "dpo_vs_lema"}
    assert (work / "seed0" / "dpo" / "adapter" / "adapter_config.json").exists()
