"""Training memory bounded by design (issue 13, part 5): the completion-only loss equals the full-logits loss,
micro-batches with gradient accumulation give the same step as one batch, and the demo picks a recipe that fits its
base model."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import requires_lema_tiny

from lema.trainer.recipe import RecipeError, load_recipe


def tiny_llama(vocab: int = 97):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config).float()


def batch(vocab: int = 97):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (3, 20), generator=generator)
    attention = torch.ones_like(ids)
    attention[1, 14:] = 0  # a padded row
    labels = ids.clone()
    labels[:, :7] = -100  # the prompt
    labels[attention == 0] = -100
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


@pytest.mark.parametrize("chunk", [1024, 5])  # one pass; chunks recomputed in the backward pass
def test_completion_loss_equals_the_full_logits_loss_and_its_gradient(monkeypatch, chunk):
    import lema.trainer.train as train_module
    from lema.trainer.train import completion_loss, supports_completion_loss

    monkeypatch.setattr(train_module, "LOSS_CHUNK", chunk)
    model, inputs = tiny_llama(), batch()
    assert supports_completion_loss(model)
    reference = model(**inputs).loss  # the model's own loss: full logits, mean over labelled tokens
    reference.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    loss, n = completion_loss(model, inputs)
    loss.backward()
    assert n == int((inputs["labels"][:, 1:] != -100).sum())
    assert abs(loss.item() - reference.item()) < 1e-5
    for name, parameter in model.named_parameters():
        assert torch.allclose(parameter.grad, expected[name], atol=1e-6), name
    # With num_items_in_batch (the Trainer's count over all micro-batches) the sum is divided by it instead.
    summed, _ = completion_loss(model, inputs, num_items_in_batch=2 * n)
    assert abs(summed.item() - reference.item() / 2) < 1e-5


def test_micro_batch_size_is_validated_and_sets_the_accumulation():
    tiny = load_recipe("tiny")
    assert tiny.micro_batch_size is None and (tiny.micro_batch, tiny.accumulation_steps) == (16, 1)  # unchanged
    small = load_recipe("small")
    assert (small.micro_batch, small.accumulation_steps, small.effective_batch) == (1, 16, 16)
    both = load_recipe(None, {"batch_size": 8, "grad_accum": 3, "micro_batch_size": 2})
    assert (both.micro_batch, both.accumulation_steps, both.effective_batch) == (2, 12, 24)
    with pytest.raises(RecipeError, match="micro_batch_size"):
        load_recipe(None, {"batch_size": 16, "micro_batch_size": 3})


def test_the_demo_picks_a_recipe_that_fits_its_base_model():
    from lema.app.demo import recipe_for_model

    assert recipe_for_model("lema-tiny") == "tiny"
    assert recipe_for_model("smollm2") == "small"
    assert load_recipe(recipe_for_model("smollm2")).base_model == "smollm2"


@requires_lema_tiny
def test_micro_batches_give_the_same_step_as_one_batch(tmp_path):
    """One optimizer step on the same 8 rows, in one forward pass or in four micro-batches of two: the same loss and
    gradient norm (so no 1/accumulation scaling error), on lema-tiny with dropout off."""
    from lema.core.formats import cot_prompt
    from lema.core.synthetic import generate
    from lema.trainer.train import train

    data = tmp_path / "rows.jsonl"
    with data.open("w") as f:
        for p in generate(8, seed=3, split="train"):
            f.write(json.dumps({"type": "cot", "prompt": cot_prompt(p.question), "completion": p.gold_solution}) + "\n")
    logs = {}
    for micro in (None, 2):
        events = []
        recipe = load_recipe("tiny", {"max_steps": 1, "batch_size": 8, "micro_batch_size": micro, "logging_steps": 1,
                                      "save_steps": 100, "threads": 1, "lora": {"dropout": 0.0}})
        result = train(recipe, data, tmp_path / f"run-{micro}", on_progress=events.append)
        assert result.steps == 1
        logs[micro] = events[-1]
    assert logs[None]["grad_norm"] > 0
    for key in ("loss", "grad_norm"):
        assert abs(logs[None][key] - logs[2][key]) < 1e-4 * abs(logs[None][key]), (key, logs)
    assert logs[None]["tokens_per_second"] > 0 and logs[2]["tokens_per_second"] > 0
