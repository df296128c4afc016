"""Base models without a chat template (the paper's own, e.g. `meta-llama/Llama-2-7b-hf`): rows train as raw text
(`bos + prompt`, `completion + eos`, loss on the completion only, as the paper's qlora.py) and the engines generate
from the same raw framing. Tested with a tiny randomly initialised Llama saved without a chat template."""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import requires_lema_tiny

pytestmark = requires_lema_tiny


@pytest.fixture(scope="module")
def raw_model(tmp_path_factory):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lema.core.model_resolve import resolve_model

    path = tmp_path_factory.mktemp("raw-llama")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("lema-tiny"))
    tokenizer.chat_template = None
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    saved = json.loads((path / "tokenizer_config.json").read_text())
    assert not saved.get("chat_template") and not (path / "chat_template.jinja").exists()
    return path


def test_raw_rows_are_bos_prompt_then_completion_eos_with_loss_on_the_completion(raw_model):
    from transformers import AutoTokenizer

    from lema.core.rendering import encode_row, framing_of

    tokenizer = AutoTokenizer.from_pretrained(raw_model)
    assert framing_of(tokenizer) == "raw"
    row = encode_row(tokenizer, "Question: 2 + 3?\n", "Step 1: 2 + 3 = 5.\nThe answer is 5.")
    prompt_ids = tokenizer("Question: 2 + 3?\n", add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer("Step 1: 2 + 3 = 5.\nThe answer is 5.", add_special_tokens=False)["input_ids"]
    assert row.input_ids == [tokenizer.bos_token_id, *prompt_ids, *completion_ids, tokenizer.eos_token_id]
    assert row.completion_mask == [0] * (1 + len(prompt_ids)) + [1] * (len(completion_ids) + 1)


def test_a_model_without_chat_template_trains_and_serves_raw_text(raw_model, tmp_path):
    from lema.core.engines import SamplingParams
    from lema.core.engines.transformers_engine import TransformersEngine
    from lema.core.formats import cot_prompt
    from lema.core.synthetic import generate
    from lema.trainer.recipe import load_recipe
    from lema.trainer.train import train

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"type": "cot", "prompt": cot_prompt(p.question), "completion": p.gold_solution})
                            + "\n" for p in generate(8, seed=1, split="train")))
    recipe = load_recipe("tiny", {"base_model": str(raw_model), "max_steps": 3, "batch_size": 4, "max_seq_len": 256,
                                  "threads": 1, "logging_steps": 1})
    result = train(recipe, data, tmp_path / "run")
    assert result.steps == 3 and (result.adapter_dir / "adapter_model.safetensors").exists()

    engine = TransformersEngine(str(raw_model), batch_size=4)
    question = [{"role": "user", "content": cot_prompt("Tom has 3 pens and buys 4 more. How many pens?")}]
    rendered = engine.render(question)
    assert rendered == engine.tokenizer.bos_token + question[0]["content"]  # bos + prompt, as the rows trained
    asyncio.run(engine.load_adapter("raw", str(result.adapter_dir)))
    (completion,), = asyncio.run(engine.generate([question], SamplingParams(max_tokens=8), "raw"))
    assert completion.prompt_tokens == len(engine.tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert 1 <= completion.completion_tokens <= 8
