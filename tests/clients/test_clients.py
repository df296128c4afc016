"""The client tier (issue 27): widely used OpenAI clients, with their defaults, against a real `bentoml serve` of the
endpoint on lema-tiny: the official `openai` SDK, langchain-openai, litellm, lm-eval (generate-until through chat,
log-likelihood multiple choice through completions) and guidellm (chat and completions, 0 errors)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import requires_lema_tiny

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from lema.core.model_resolve import resolve_model  # noqa: E402
from lema.devtools import bentoml_serve_args, free_port, start_endpoint  # noqa: E402

pytestmark = requires_lema_tiny
MODEL = "lema-tiny"
QUESTION = "Question: Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer:"


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    port = free_port()
    env = {"LEMA_ENDPOINT__MODEL": resolve_model(MODEL), "LEMA_ENDPOINT__ENGINE": "transformers",
           "LEMA_ENDPOINT__REGISTRY_DIR": str(tmp_path_factory.mktemp("registry"))}
    server = start_endpoint(bentoml_serve_args(port), tmp_path_factory.mktemp("endpoint") / "server.log", port,
                            env=env)
    yield server.url
    server.stop()


def test_openai_sdk_retrieves_models_and_uses_the_current_field_names(url):
    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        assert client.models.retrieve(MODEL).id == MODEL
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("no-such-model")
        reply = client.chat.completions.create(model=MODEL, max_completion_tokens=5, temperature=0, messages=[
            {"role": "developer", "content": "Answer step by step."},
            {"role": "user", "content": [{"type": "text", "text": QUESTION}]}])
        assert reply.usage.completion_tokens <= 5
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                           tools=[{"type": "function", "function": {"name": "f"}}])
        assert "tools" in err.value.message
        ids = client.completions.create(model=MODEL, prompt=[1, 300, 301, 302], max_tokens=3, temperature=0)
        assert ids.usage.prompt_tokens == 4 and ids.choices[0].text


def test_logprobs_and_echo_score_the_prompt_as_the_engine_does(url):
    """lm-eval's log-likelihood request: token ids, echo, logprobs=1, max_tokens=1. The prompt's log-probabilities
    equal a teacher-forced pass of the same weights in this process."""
    import asyncio

    from lema.core.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(resolve_model(MODEL), threads=1)
    ids = engine.tokenizer(QUESTION, add_special_tokens=False)["input_ids"]
    reply = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": ids, "echo": True, "logprobs": 1,
                                                      "max_tokens": 1, "temperature": 0}, timeout=60).json()
    logprobs = reply["choices"][0]["logprobs"]
    assert len(logprobs["token_logprobs"]) == len(ids) + 1 and logprobs["token_logprobs"][0] is None
    assert all(len(top) == 1 for top in logprobs["top_logprobs"][1:])
    (local,) = asyncio.run(engine.generate([ids], __import__("lema.core.engines", fromlist=["SamplingParams"])
                                           .SamplingParams(max_tokens=1, prompt_logprobs=1)))
    expected = [e.logprob for e in local[0].prompt_logprobs[1:]]
    assert logprobs["token_logprobs"][1:len(ids)] == pytest.approx(expected, abs=1e-4)
    chat = httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL, "logprobs": True, "top_logprobs": 2,
                                                          "max_tokens": 4, "temperature": 0,
                                                          "messages": [{"role": "user", "content": QUESTION}]},
                      timeout=60).json()
    content = chat["choices"][0]["logprobs"]["content"]
    assert len(content) == chat["usage"]["completion_tokens"] and all(len(c["top_logprobs"]) == 2 for c in content)
    assert all(c["logprob"] == pytest.approx(c["top_logprobs"][0]["logprob"]) for c in content)  # greedy: the top


def test_langchain_openai_invoke_stream_batch_with_max_tokens_honoured(url):
    langchain_openai = pytest.importorskip("langchain_openai")
    chat = langchain_openai.ChatOpenAI(base_url=f"{url}/v1", api_key="unused", model=MODEL, max_tokens=5,
                                       temperature=0, max_retries=0)
    reply = chat.invoke(QUESTION)
    assert reply.content and reply.usage_metadata["output_tokens"] <= 5
    streamed = "".join(chunk.content for chunk in chat.stream(QUESTION))
    assert streamed == reply.content
    batch = chat.batch([QUESTION, "Question: What is 12 - 5?\nAnswer:"])
    assert len(batch) == 2 and all(m.usage_metadata["output_tokens"] <= 5 for m in batch)


def test_litellm_chat_stream_async_and_text_completion(url, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of the price list (no internet in CI)
    litellm = pytest.importorskip("litellm")
    common = {"model": f"openai/{MODEL}", "api_base": f"{url}/v1", "api_key": "unused", "max_tokens": 8,
              "temperature": 0}
    messages = [{"role": "user", "content": QUESTION}]
    reply = litellm.completion(messages=messages, **common)
    text = reply.choices[0].message.content
    assert text and reply.usage.completion_tokens <= 8
    streamed = "".join(c.choices[0].delta.content or "" for c in litellm.completion(messages=messages, stream=True,
                                                                                     **common))
    assert streamed == text
    import asyncio

    assert asyncio.run(litellm.acompletion(messages=messages, **common)).choices[0].message.content == text
    completion = litellm.text_completion(prompt=QUESTION, **common)
    assert completion.choices[0].text


def _lm_eval_tasks(folder: Path) -> Path:
    from lema.core.synthetic import generate

    rows = []
    for i, problem in enumerate(generate(12, seed=5, split="test", steps=(2, 2))):
        answer = int(float(problem.answer))
        choices = [str(answer + d) for d in (0, 1, -1, 10)]
        rows.append({"question": problem.question, "answer": str(answer), "choices": choices, "label": 0})
    data = folder / "arith.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
              "doc_to_text: \"Question: {{question}}\\nAnswer:\"\n")
    (folder / "gen.yaml").write_text(
        "task: lema_arith_gen\n" + common + "output_type: generate_until\ndoc_to_target: \"{{answer}}\"\n"
        "generation_kwargs:\n  until: [\"\\n\\n\"]\n  max_gen_toks: 48\n"
        "metric_list:\n  - metric: exact_match\n")
    (folder / "mc.yaml").write_text(
        "task: lema_arith_mc\n" + common + "output_type: multiple_choice\ndoc_to_choice: \"{{choices}}\"\n"
        "doc_to_target: \"{{label}}\"\nmetric_list:\n  - metric: acc\n")
    return folder


def test_lm_eval_generate_until_over_chat_and_log_likelihood_over_completions(url, tmp_path):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    tasks = TaskManager(include_path=str(_lm_eval_tasks(tmp_path)))
    generated = lm_eval.simple_evaluate(
        model="local-chat-completions", model_args=f"model={MODEL},base_url={url}/v1/chat/completions",
        tasks=["lema_arith_gen"], task_manager=tasks, apply_chat_template=True, log_samples=True)
    samples = generated["samples"]["lema_arith_gen"]
    assert len(samples) == 12 and all(s["resps"][0][0] for s in samples)  # every question got an answer
    assert 0 <= generated["results"]["lema_arith_gen"]["exact_match,none"] <= 1
    scored = lm_eval.simple_evaluate(
        model="local-completions",
        model_args=f"model={MODEL},base_url={url}/v1/completions,tokenizer={resolve_model(MODEL)}",
        tasks=["lema_arith_mc"], task_manager=tasks, log_samples=True)
    samples = scored["samples"]["lema_arith_mc"]
    assert len(samples) == 12
    for sample in samples:
        loglikelihoods = [resp[0][0] for resp in sample["resps"]]
        assert len(loglikelihoods) == 4 and all(ll < 0 for ll in loglikelihoods)
        assert len(set(loglikelihoods)) > 1  # the choices are really scored, not one number repeated
    assert 0 <= scored["results"]["lema_arith_mc"]["acc,none"] <= 1


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
def test_guidellm_runs_without_errors(url, route, tmp_path):
    exe = shutil.which("guidellm", path=str(Path(sys.executable).parent)) or shutil.which("guidellm")
    if exe is None:
        pytest.skip("guidellm is not installed")
    out = tmp_path / "guidellm.json"
    command = [exe, "run", "--backend", f"kind=openai_http,target={url},request_format={route},model={MODEL}",
               "--profile", "kind=concurrent,streams=4", "--constraint", "kind=max_duration,seconds=10",
               "--data", "kind=synthetic_text,prompt_tokens=32,output_tokens=16",
               "--tokenizer", f"kind=huggingface_auto,model={resolve_model(MODEL)}",
               "--output", f"kind=json,path={out}", "--disable-progress", "--disable-console"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    (bench,) = json.loads(out.read_text())["benchmarks"]
    made = bench["scheduler_metrics"]["requests_made"]
    assert made["errored"] == 0 and made["successful"] > 10, made
