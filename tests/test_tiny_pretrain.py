"""lema-tiny's pretraining recipe: the correction-format sequences it learns from, and a short run end to end."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from lema.core.formats import CORRECT_INSTRUCTION
from lema.core.rendering import encode_row
from lema.core.synthetic import generate
from lema.tiny.drills import correction_examples, correction_row

transformers = pytest.importorskip("transformers")

SHORT_RECIPE = """
seed: 0
tokenizer: {vocab_size: 1024, train_problems: 400, numbers: whole, correction_fraction: 0.3}
model: {hidden_size: 64, num_layers: 1, num_heads: 2, intermediate_size: 128, max_position_embeddings: 512}
training: {batch_size: 4, threads: 1, warmup_steps: 2}
curriculum:
  - {name: short, steps: [2, 3], train_steps: 6, drill_fraction: 0.2, correction_fraction: 0.5}
eval: {every: 6, start_step: 0, problems: 4, max_new_tokens: 16}
"""


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A 6-step run of a small recipe through the real command (heads of 32: vLLM's CPU attention)."""
    root = tmp_path_factory.mktemp("pretrain")
    (root / "recipe.yaml").write_text(SHORT_RECIPE)
    done = subprocess.run([sys.executable, "-m", "lema.app.cli", "models", "pretrain-tiny", "--recipe",
                           str(root / "recipe.yaml"), "--out", str(root / "model")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "corrections 50%" in done.stdout + done.stderr  # the stage log names the correction share
    return root / "model"


def test_short_pretraining_run_saves_a_loadable_model_with_correction_words_as_tokens(pretrained) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(pretrained))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(pretrained))
    assert len(tokenizer) <= 1024 and model.config.vocab_size == len(tokenizer)
    for word in ("Incorrect", "Explanation", "Correct"):  # learned from the correction texts
        assert word in tokenizer.get_vocab(), word
    summary = json.loads((pretrained / "training_summary.json").read_text())
    assert summary["steps"] == 6 and summary["recipe"]["curriculum"][0]["correction_fraction"] == 0.5


def test_correction_sequences_are_framed_and_masked_as_the_trainer_frames_a_correction_row(pretrained) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(pretrained))
    problems = generate(60, seed=4, split="train")
    examples = correction_examples(tokenizer, problems, random.Random(0), max_length=512, shortened_fraction=0.0)
    assert len(examples) >= 30  # most drawn corruptions apply
    for example in examples:
        prompt_len = example.label_mask.index(1)
        assert all(example.label_mask[prompt_len:]) and not any(example.label_mask[:prompt_len])
        prompt = tokenizer.decode(example.input_ids[:prompt_len])
        completion = tokenizer.decode(example.input_ids[prompt_len:])
        assert "Original Solution: {" in prompt and prompt.rstrip().endswith("<|assistant|>")
        assert completion.startswith("Step ") and "Explanation:" in completion and completion.rstrip().endswith("<|eos|>")
    # Exactly the tokens the trainer gets for the same prompt and completion (lema.core.rendering.encode_row).
    rng = random.Random(0)
    rows = (correction_row(problem, rng, shortened_fraction=0.0) for problem in problems)
    prompt, completion = next(row for row in rows if row is not None)
    assert prompt.startswith(CORRECT_INSTRUCTION) and prompt.endswith("Incorrect Step:")
    row = encode_row(tokenizer, prompt, completion)
    assert row.input_ids == examples[0].input_ids and row.completion_mask == examples[0].label_mask


def test_over_long_correction_sequences_are_left_out(pretrained) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(pretrained))
    problems = generate(40, seed=5, split="train", steps=6)
    kept = correction_examples(tokenizer, problems, random.Random(0), max_length=200)
    assert all(len(e.input_ids) <= 200 for e in kept)
    assert len(kept) < len(correction_examples(tokenizer, problems, random.Random(0), max_length=10_000))

