"""VLLMEngine against the reference TransformersEngine on the embedded lema-tiny model (CPU, float32).

One vLLM engine serves the whole module (start-up is 40-60 s on CPU). Every call runs on one event loop that
this module owns, because vLLM's async engine binds its output-handler task to the loop it first runs on.
Set LEMA_TEST_VLLM_MODEL to a local Llama folder (head_dim >= 32) to run this against another model.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")
try:
    import vllm  # noqa: F401
except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install (torchvision beside CPU torch)
    pytest.skip(f"vllm cannot be imported: {type(exc).__name__}: {exc}", allow_module_level=True)

from lema.core.engines.base import EngineError, SamplingParams
from lema.core.formats import cot_prompt

QUESTIONS = [
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "What is 12 + 7?",
    "A box holds 6 pens. How many pens are in 4 boxes?",
    "Sam had 20 dollars and spent 8. How much money is left?",
    "What is 9 times 9?",
    "Ann reads 5 pages a day for 6 days. How many pages does she read?",
    "24 candies are shared equally by 3 kids. How many does each kid get?",
    "What is 100 - 37?",
]
PROMPTS = [[{"role": "user", "content": cot_prompt(q)}] for q in QUESTIONS]
GREEDY = SamplingParams(max_tokens=24)


def model_path() -> Path:
    override = os.environ.get("LEMA_TEST_VLLM_MODEL")
    if override:
        return Path(override)
    try:
        from lema.tiny import default_model_path
    except ImportError as exc:
        pytest.skip(f"lema.tiny is not importable: {exc}")
    return default_model_path()


class Harness:
    def __init__(self, vllm_engine, hf_engine, adapter_path: Path, loop: asyncio.AbstractEventLoop):
        self.vllm = vllm_engine
        self.hf = hf_engine
        self.adapter_path = adapter_path
        self.loop = loop

    def run(self, coro):
        return self.loop.run_until_complete(coro)


def make_adapter(base: Path, out: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1234)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    # init_lora_weights=False: B is not zero, so the adapter really changes the outputs.
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Iterator[Harness]:
    path = model_path()
    if not (path / "config.json").exists():
        pytest.skip(f"no model at {path} (lema-tiny's weights are not built yet; set LEMA_TEST_VLLM_MODEL)")
    from lema.core.engines.transformers_engine import TransformersEngine
    from lema.core.engines.vllm_engine import VLLMEngine

    adapter_path = make_adapter(path, tmp_path_factory.mktemp("adapter") / "lora-a")
    loop = asyncio.new_event_loop()
    hf = TransformersEngine(str(path))
    engine = VLLMEngine(str(path), max_lora_rank=8, max_loras=2, seed=0)
    try:
        loop.run_until_complete(engine.start())
        yield Harness(engine, hf, adapter_path, loop)
    finally:
        loop.run_until_complete(engine.close())
        loop.run_until_complete(hf.close())
        loop.close()


def token_ids(results):
    return [[c.token_ids for c in per_prompt] for per_prompt in results]


def test_greedy_base_matches_transformers(harness):
    expected = harness.run(harness.hf.generate(PROMPTS, GREEDY))
    got = harness.run(harness.vllm.generate(PROMPTS, GREEDY))
    assert token_ids(got) == token_ids(expected)
    for e, g in zip(expected, got):
        assert len(g) == 1
        assert g[0].text == e[0].text
        assert g[0].finish_reason == e[0].finish_reason
        assert g[0].prompt_tokens == e[0].prompt_tokens > 0
        assert g[0].completion_tokens == len(g[0].token_ids) > 0


def test_greedy_adapter_matches_transformers_and_changes_output(harness):
    harness.run(harness.hf.load_adapter("lora-a-v1", str(harness.adapter_path)))
    info = harness.run(harness.vllm.load_adapter("lora-a-v1", str(harness.adapter_path)))
    assert info.rank == 8 and info.name == "lora-a-v1"
    assert [a.name for a in harness.vllm.adapters()] == ["lora-a-v1"]

    expected = harness.run(harness.hf.generate(PROMPTS, GREEDY, adapter="lora-a-v1"))
    got = harness.run(harness.vllm.generate(PROMPTS, GREEDY, adapter="lora-a-v1"))
    assert token_ids(got) == token_ids(expected)

    base = harness.run(harness.vllm.generate(PROMPTS, GREEDY))
    assert token_ids(base) != token_ids(got), "the adapter did not change any greedy output"
    # Base requests after the adapter was used are still the base model's.
    assert token_ids(base) == token_ids(harness.run(harness.hf.generate(PROMPTS, GREEDY)))


def test_adapter_names_are_never_reused(harness):
    if "lora-a-v1" not in {a.name for a in harness.vllm.adapters()}:
        harness.run(harness.vllm.load_adapter("lora-a-v1", str(harness.adapter_path)))
    with pytest.raises(EngineError, match="already loaded"):
        harness.run(harness.vllm.load_adapter("lora-a-v1", str(harness.adapter_path)))

    # A new version gets a new name and a new integer id; the old name stays retired after unloading.
    v2 = harness.run(harness.vllm.load_adapter("lora-a-v2", str(harness.adapter_path)))
    ids = {a.metadata["lora_int_id"] for a in harness.vllm.adapters()}
    assert len(ids) == 2
    harness.run(harness.vllm.unload_adapter("lora-a-v1"))
    assert [a.name for a in harness.vllm.adapters()] == [v2.name]
    with pytest.raises(EngineError):
        harness.run(harness.vllm.generate(PROMPTS[:1], GREEDY, adapter="lora-a-v1"))
    with pytest.raises(EngineError):
        harness.run(harness.vllm.load_adapter("lora-a-v1", str(harness.adapter_path)))
    with pytest.raises(EngineError, match="not a PEFT adapter"):
        harness.run(harness.vllm.load_adapter("lora-missing", str(harness.adapter_path.parent / "nope")))


def test_sampling_gives_n_different_completions(harness):
    params = SamplingParams(n=4, temperature=1.0, max_tokens=24)
    (samples,) = harness.run(harness.vllm.generate(PROMPTS[:1], params))
    assert len(samples) == 4
    assert len({c.token_ids for c in samples}) > 1, "4 samples at temperature 1.0 were all identical"

    seeded = SamplingParams(n=4, temperature=1.0, max_tokens=24, seed=7)
    first = harness.run(harness.vllm.generate(PROMPTS[:2], seeded))
    second = harness.run(harness.vllm.generate(PROMPTS[:2], seeded))
    assert token_ids(first) == token_ids(second)


def test_stop_strings_cut_the_output(harness):
    (base,) = harness.run(harness.vllm.generate(PROMPTS[:1], GREEDY))
    text = base[0].text
    assert len(text) >= 4, f"greedy output too short to pick a stop string from: {text!r}"
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    params = SamplingParams(max_tokens=24, stop=(stop,))
    (cut,) = harness.run(harness.vllm.generate(PROMPTS[:1], params))
    assert cut[0].text == text[: text.find(stop)]
    assert stop not in cut[0].text
    assert cut[0].finish_reason == "stop"
    (reference,) = harness.run(harness.hf.generate(PROMPTS[:1], params))
    assert cut[0].text == reference[0].text


def test_length_finish_and_text_prompts(harness):
    prompt = harness.vllm.render(PROMPTS[0])  # raw text is sent as is, like the transformers engine does
    (got,) = harness.run(harness.vllm.generate([prompt], SamplingParams(max_tokens=2)))
    (expected,) = harness.run(harness.hf.generate([prompt], SamplingParams(max_tokens=2)))
    assert got[0].token_ids == expected[0].token_ids
    if len(got[0].token_ids) == 2:
        assert got[0].finish_reason == "length"


def test_streaming_deltas_add_up_to_the_completion_and_match_transformers(harness):
    """Issue 26: the vLLM engine streams token deltas from its async engine (the endpoint's SSE path)."""
    async def collect(engine, params):
        return [d async for d in engine.generate_stream(PROMPTS[:2], params)]

    params = SamplingParams(n=2, max_tokens=24)
    deltas = harness.run(collect(harness.vllm, params))
    finals = {d.index: d.completion for d in deltas if d.completion is not None}
    assert sorted(finals) == [0, 1, 2, 3]
    for index, completion in finals.items():
        assert "".join(d.text for d in deltas if d.index == index) == completion.text
    assert sum(1 for d in deltas if d.text and d.completion is None) > 4  # really incremental
    reference = harness.run(harness.hf.generate(PROMPTS[:2], params))
    assert [finals[i].token_ids for i in range(4)] == [c.token_ids for per in reference for c in per]


def test_logprobs_and_prompt_logprobs_match_transformers(harness):
    """Issue 27: the endpoint's logprobs and echo come from the engine; vLLM's agree with the transformers engine's."""
    params = SamplingParams(max_tokens=6, logprobs=2, prompt_logprobs=1)
    (got,) = harness.run(harness.vllm.generate(PROMPTS[:1], params))
    (expected,) = harness.run(harness.hf.generate(PROMPTS[:1], params))
    assert got[0].token_ids == expected[0].token_ids
    assert [e.logprob for e in got[0].logprobs] == pytest.approx([e.logprob for e in expected[0].logprobs], abs=1e-3)
    assert [[t for t, _ in e.top] for e in got[0].logprobs] == [[t for t, _ in e.top] for e in expected[0].logprobs]
    assert got[0].prompt_logprobs[0] is None and len(got[0].prompt_logprobs) == len(expected[0].prompt_logprobs)
    assert [e.logprob for e in got[0].prompt_logprobs[1:]] == pytest.approx(
        [e.logprob for e in expected[0].prompt_logprobs[1:]], abs=1e-3)


def test_closing_a_stream_aborts_its_requests(harness):
    async def abandon():
        stream = harness.vllm.generate_stream(PROMPTS[:1], SamplingParams(n=4, temperature=1.0, max_tokens=400))
        first = await stream.__anext__()
        await stream.aclose()
        await asyncio.sleep(0.5)
        return first, harness.vllm._engine.output_processor.get_num_unfinished_requests()

    first, unfinished = harness.run(abandon())
    assert first.text is not None and unfinished == 0


def test_close_stops_the_engine_processes(harness):
    psutil = pytest.importorskip("psutil")

    def engine_children():
        found = []
        for child in psutil.Process().children(recursive=True):
            try:
                if child.status() != psutil.STATUS_ZOMBIE and child.name().startswith("VLLM::"):
                    found.append(child.name())
            except psutil.NoSuchProcess:
                pass
        return found

    assert engine_children(), "no vLLM engine process found while the engine runs"
    harness.run(harness.vllm.close())
    assert engine_children() == []
    with pytest.raises(EngineError):
        harness.run(harness.vllm.generate(PROMPTS[:1], GREEDY))
