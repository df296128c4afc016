"""The committed lema-tiny weights: loadable with transformers, small, and answering in the Step format."""

from __future__ import annotations

import json

import pytest
from conftest import requires_lema_tiny  # noqa: E402

from lema.core.formats import split_steps
from lema.tiny import default_model_path

pytestmark = requires_lema_tiny

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

MODEL_DIR = default_model_path()


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(str(MODEL_DIR))


@pytest.fixture(scope="module")
def model():
    return transformers.AutoModelForCausalLM.from_pretrained(str(MODEL_DIR)).eval()


def test_weights_folder_is_complete_and_small() -> None:
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json"):
        assert (MODEL_DIR / name).is_file(), name
    assert (MODEL_DIR / "model.safetensors").stat().st_size <= 25 * 1024 * 1024


def test_config_is_a_small_llama_with_wide_heads(model) -> None:
    cfg = model.config
    assert cfg.model_type == "llama"
    assert cfg.hidden_size // cfg.num_attention_heads >= 32  # vLLM's CPU attention
    assert sum(p.numel() for p in model.parameters()) <= 6_500_000
    gen = json.loads((MODEL_DIR / "generation_config.json").read_text())
    assert gen["eos_token_id"] == cfg.eos_token_id and gen["pad_token_id"] == cfg.pad_token_id


def test_tokenizer_has_chat_template_and_whole_number_tokens(tokenizer) -> None:
    assert tokenizer.chat_template and tokenizer.bos_token and tokenizer.eos_token and tokenizer.pad_token
    assert len(tokenizer) <= 1024
    for n in range(21):  # the synthetic number range: one token each, so a op b = c is a one-token look-up
        tokens = tokenizer.tokenize(f"She has {n} pens.")
        assert [t for t in tokens if any(c.isdigit() for c in t)] == [str(n)], tokens
    text = "Tom has 2024 pens and 3.75 dollars; 1/2 of 1,000 is 500."  # anything else still round-trips
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                         tokenize=False)
    assert text.endswith("<|assistant|>\n") and "Hi" in text
    full = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}],
                                         tokenize=False)
    assert tokenizer.eos_token in full


def test_greedy_generation_uses_the_step_format(model, tokenizer) -> None:
    """Through the one evaluator (the transformers engine over the weights in memory, then the verifier), as
    pretraining and `lema models eval-tiny` run it."""
    from lema.core.synthetic import generate
    from lema.trainer.tiny.evaluate import evaluate_loaded

    torch.set_num_threads(2)
    problems = generate(16, seed=5, split="test", steps=(2, 3))
    result = evaluate_loaded(model, tokenizer, problems, max_new_tokens=160, batch_size=16)
    outputs = result.outputs
    assert len(outputs) == 16
    # Every solution is in the Step format (so a mistake can be located) and ends with an answer line.
    assert all(o.startswith("Step 1:") and len(split_steps(o)) >= 1 for o in outputs), outputs
    assert sum("The answer is" in o for o in outputs) >= 15, outputs
    assert result.summary()["overall"] == {"n": 16, "accuracy": result.correct / 16}


def test_eval_tiny_reports_accuracy_overall_by_steps_and_by_family() -> None:
    from typer.testing import CliRunner

    from lema.app.models import models_app

    run = CliRunner().invoke(models_app, ["eval-tiny", "--n", "8", "--seed", "3", "--ood", "--json"])
    assert run.exit_code == 0, run.output
    report = json.loads(run.stdout)
    assert set(report) == {"test", "ood"}
    for summary in report.values():
        assert summary["overall"]["n"] == 8 and 0.0 <= summary["overall"]["accuracy"] <= 1.0
        assert sum(v["n"] for v in summary["by_steps"].values()) == 8
        assert sum(v["n"] for v in summary["by_family"].values()) == 8
    assert report["test"]["overall"]["accuracy"] > 0.3, report  # lema-tiny is partly competent on its test split


def test_reads_the_correction_format_as_well_as_it_reads_solutions() -> None:
    """v2 saw corrections in pretraining: its loss on the paper's correction completions is low (v1, pretrained on
    solutions only: 5.65 nats/token on correction completions against 0.22 on CoT completions)."""
    from lema.core.synthetic import generate
    from lema.trainer.tiny.evaluate import completion_losses

    losses = completion_losses(MODEL_DIR, generate(40, seed=2026, split="test"))
    assert losses["correction"]["rows"] >= 20
    assert losses["correction"]["loss_per_token"] < 1.0, losses
    assert losses["cot"]["loss_per_token"] < 0.5, losses
