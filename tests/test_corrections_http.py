"""Correction-as-a-service over HTTP (issue 32): a real endpoint (`lema serve endpoint`), real API keys made with
`lema keys`, the reference corrector and an OpenAI-compatible upstream (lema's own endpoint), lema's client, and
`lema correct --url`."""

from __future__ import annotations

import json
import random
import subprocess
import time

import httpx
import pytest
from conftest import requires_lema_tiny

from lema.core.model_resolve import resolve_model
from lema.core.synthetic import generate
from lema.core.synthetic.errors import wrong_solution
from lema.devtools import cli_args, free_port, lema_command, start_endpoint

pytestmark = requires_lema_tiny
MAX_ITEMS = 8
MAX_SOLUTION_CHARS = 3000


def _keys(path, name: str, rpm: int, per_day: int) -> str:
    done = subprocess.run([*lema_command(), "keys", "create", "--name", name, "--requests-per-minute", str(rpm),
                           "--corrections-per-day", str(per_day), "--file", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["key"]


def _problems(n: int, seed: int = 7) -> list[dict]:
    """Synthetic problems with real wrong solutions (the reference corrector corrects these)."""
    rng = random.Random(seed)
    items = []
    for problem in generate(4 * n, seed=seed, split="train"):
        wrong = wrong_solution(problem, rng)
        if wrong is None:
            continue
        items.append({"question": problem.question, "solution": wrong[0], "kind": "synthetic",
                      "gold_answer": str(problem.answer), "program_json": problem.program.to_json(),
                      "id": problem.id})
        if len(items) == n:
            break
    return items


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corrections")
    keys_file = folder / "api-keys.json"
    keys = {"main": _keys(keys_file, "main", 1000, 1000), "tight": _keys(keys_file, "tight", 12, 1000),
            "quota": _keys(keys_file, "quota", 1000, 2), "doomed": _keys(keys_file, "doomed", 1000, 1000)}
    port = free_port()
    env = {"LEMA_ENDPOINT__API_KEYS_FILE": str(keys_file), "LEMA_ENDPOINT__MAX_CORRECTION_ITEMS": str(MAX_ITEMS),
           "LEMA_CORRECTOR__MAX_SOLUTION_CHARS": str(MAX_SOLUTION_CHARS)}
    server = start_endpoint(cli_args(port, resolve_model("lema-tiny"), folder / "registry"), folder / "server.log",
                            port, env=env)
    try:
        yield server.url, keys, keys_file, server
    finally:
        server.stop()


def _post(url: str, path: str, body, key: str | None, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}/v1/{path}", json=body, headers=headers, timeout=120, **kw)


def test_single_batch_and_streamed_corrections_with_the_reference_corrector(service):
    url, keys, _, _ = service
    items = _problems(6)
    one = _post(url, "corrections", items[0], keys["main"])
    assert one.status_code == 200, one.text
    result = one.json()
    assert result["status"] == "accepted" and result["verified"] and result["id"] == items[0]["id"]
    assert result["incorrect_step"] >= 1 and result["corrected_solution"] and result["corrected_answer"]
    assert result["corrector"]["upstream_model"] == "lema-reference-corrector" and result["cached"] is False

    batch = _post(url, "corrections", {"items": items[1:4]}, keys["main"])
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert [r["index"] for r in results] == [0, 1, 2] and [r["id"] for r in results] == [i["id"] for i in items[1:4]]
    assert all(r["status"] == "accepted" for r in results)

    with httpx.stream("POST", f"{url}/v1/corrections", json={"items": items[3:6], "stream": True},
                      headers={"Authorization": f"Bearer {keys['main']}"}, timeout=120) as streamed:
        assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in streamed.iter_lines() if line.strip()]
    assert sorted(r["index"] for r in lines) == [0, 1, 2]
    assert {r["id"] for r in lines} == {i["id"] for i in items[3:6]}
    assert next(r for r in lines if r["index"] == 0)["cached"] is True  # items[3] was corrected in the batch


def test_verifications(service):
    url, keys, _, _ = service
    right = _post(url, "verifications", {"kind": "gsm8k", "gold_answer": "7", "solution": "12 - 5 = 7. The answer "
                                         "is 7.", "id": "v1"}, keys["main"]).json()
    assert right["correct"] is True and right["extracted_answer"] == "7" and right["id"] == "v1"
    batch = _post(url, "verifications", {"items": [{"kind": "math", "gold_answer": "\\frac{1}{2}",
                                                    "solution": "so \\boxed{0.5}"},
                                                   {"kind": "gsm8k", "gold_answer": "#### 72", "solution": "It is 71."}]},
                  keys["main"]).json()["results"]
    assert [r["correct"] for r in batch] == [True, False]
    with httpx.stream("POST", f"{url}/v1/verifications", headers={"Authorization": f"Bearer {keys['main']}"},
                      json={"items": [{"kind": "gsm8k", "gold_answer": str(i), "solution": f"The answer is {i}."}
                                      for i in range(5)], "stream": True}, timeout=60) as streamed:
        lines = [json.loads(line) for line in streamed.iter_lines() if line.strip()]
    assert sorted(r["index"] for r in lines) == list(range(5)) and all(r["correct"] for r in lines)


def test_bad_input_names_the_field(service):
    url, keys, _, _ = service
    good = _problems(1)[0]
    cases = [
        ({k: v for k, v in good.items() if k != "question"}, "question"),
        ({**good, "solution": "   "}, "solution"),
        ({**good, "solution": "Step 1: x = 1.\n" * 400}, "solution"),
        ({**good, "kind": "physics"}, "kind"),
        ({**good, "kind": "gsm8k", "gold_answer": "seven"}, "gold_answer"),
        ({**good, "kind": "math", "gold_answer": "\\frac{1}{2"}, "gold_answer"),
        ({**good, "max_candidates": 0}, "max_candidates"),
        ({**good, "max_candidates": 17}, "max_candidates"),
        ({**good, "sampling": {"temperature": 9}}, "sampling.temperature"),
        ({**good, "colour": "blue"}, "colour"),
        ({"items": [good] * (MAX_ITEMS + 1)}, "items"),
        ({"items": []}, "items"),
        ({"items": [good, {**good, "kind": "x"}]}, "items.1.kind"),
        ([good], "JSON object"),
    ]
    for body, field in cases:
        answer = _post(url, "corrections", body, keys["main"])
        assert answer.status_code == 400, (field, answer.status_code, answer.text)
        message = answer.json()["error"]["message"]
        assert field in message, (field, message)
        assert len(message) < 400  # never echoes a huge input
    not_json = httpx.post(f"{url}/v1/corrections", content=b"{oops", headers={
        "Authorization": f"Bearer {keys['main']}", "content-type": "application/json"})
    assert not_json.status_code == 400
    for body, field in (({"kind": "gsm8k", "gold_answer": "1"}, "solution"),
                        ({"kind": "gsm8k", "gold_answer": "x", "solution": "1"}, "gold_answer")):
        answer = _post(url, "verifications", body, keys["main"])
        assert answer.status_code == 400 and field in answer.json()["error"]["message"], answer.text


def test_keys_401_429_and_recovery(service):
    url, keys, keys_file, server = service
    item = _problems(1, seed=11)[0]
    for key in (None, "lema_not-a-real-key"):
        refused = _post(url, "corrections", item, key)
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
        assert _post(url, "verifications", {"kind": "gsm8k", "gold_answer": "1", "solution": "1"}, key).status_code == 401

    # requests per minute: 12 pass (a burst of the minute's requests), the 13th is 429 with Retry-After (a request
    # refills every 5 s), then one passes again
    answers = [_post(url, "verifications", {"kind": "gsm8k", "gold_answer": "1", "solution": "1"}, keys["tight"])
               for _ in range(13)]
    assert [a.status_code for a in answers[:12]] == [200] * 12
    assert answers[12].status_code == 429 and answers[12].json()["error"]["type"] == "rate_limit_error"
    wait = float(answers[12].headers["retry-after"])
    assert 1 <= wait <= 6
    time.sleep(wait + 0.5)
    assert _post(url, "verifications", {"kind": "gsm8k", "gold_answer": "1", "solution": "1"},
                 keys["tight"]).status_code == 200

    # corrections per day: 2 billed; the same request again is answered from the cache and not billed
    items = _problems(3, seed=12)
    first = _post(url, "corrections", items[0], keys["quota"]).json()
    again = _post(url, "corrections", items[0], keys["quota"]).json()
    assert first["cached"] is False and again["cached"] is True and again["usage"]["prompt_tokens"] == 0
    assert _post(url, "corrections", items[1], keys["quota"]).status_code == 200  # the 2nd billed correction
    over = _post(url, "corrections", items[2], keys["quota"])
    assert over.status_code == 429 and "per day" in over.json()["error"]["message"]
    assert 0 < float(over.headers["retry-after"]) <= 86_400

    # a revoked key is refused from the next request (the file is re-read when it changes)
    assert _post(url, "verifications", {"kind": "gsm8k", "gold_answer": "1", "solution": "1"},
                 keys["doomed"]).status_code == 200
    subprocess.run([*lema_command(), "keys", "revoke", "doomed", "--file", str(keys_file)], check=True,
                   capture_output=True, timeout=60)
    assert _post(url, "verifications", {"kind": "gsm8k", "gold_answer": "1", "solution": "1"},
                 keys["doomed"]).status_code == 401

    metrics = httpx.get(f"{url}/metrics").text
    assert 'lema_endpoint_api_requests_total{key="tight",route="verifications",status="429"}' in metrics
    assert 'lema_endpoint_api_rate_limited_total{key="quota",limit="corrections_per_day"}' in metrics
    assert 'lema_endpoint_api_corrections_total{key="quota"} 2.0' in metrics
    assert keys["main"] not in metrics and keys["main"] not in server.log()


def test_the_client_retries_after_retry_after_and_types_results(service, tmp_path):
    from lema.client import AsyncCorrectionsClient, CorrectionApiError, CorrectionsClient

    url, keys, keys_file, _ = service
    key = _keys(keys_file, "client", 12, 1)
    items = _problems(4, seed=13)
    with CorrectionsClient(url, key, max_wait_s=30) as client:
        for _ in range(12):
            assert client.verify("gsm8k", "1", "The answer is 1.").correct
        started = time.monotonic()
        verdict = client.verify("gsm8k", "2", "The answer is 3.")  # the bucket is empty: 429, waited, retried
        assert verdict.correct is False and time.monotonic() - started >= 3
        fixed = client.correct(items[0]["question"], items[0]["solution"], "synthetic", items[0]["gold_answer"],
                               program_json=items[0]["program_json"], id="c1")
        assert fixed.status == "accepted" and fixed.id == "c1" and fixed.incorrect_step >= 1
        with pytest.raises(CorrectionApiError) as quota:  # a day's quota is not waited out
            client.correct(items[1]["question"], items[1]["solution"], "synthetic", items[1]["gold_answer"],
                           program_json=items[1]["program_json"])
        assert quota.value.status == 429 and quota.value.retry_after > 30
    with pytest.raises(CorrectionApiError) as unauthorised:
        CorrectionsClient(url, "lema_wrong").verify("gsm8k", "1", "1")
    assert unauthorised.value.status == 401

    import asyncio

    async def run():
        async with AsyncCorrectionsClient(url, keys["main"]) as client:
            results = await client.correct_batch(items[1:3])
            streamed = [r async for r in client.stream_corrections(items[2:4])]
            checks = await client.verify_batch([{"kind": "gsm8k", "gold_answer": "4", "solution": "4"}])
            return results, streamed, checks

    results, streamed, checks = asyncio.run(run())
    assert [r.status for r in results] == ["accepted", "accepted"]
    assert sorted(r.index for r in streamed) == [0, 1] and checks[0].correct

    wrong = tmp_path / "wrong.txt"
    wrong.write_text(items[3]["solution"])
    program = tmp_path / "program.json"
    program.write_text(items[3]["program_json"])
    done = subprocess.run([*lema_command(), "correct", "--url", url, "--question", items[3]["question"],
                           "--solution-file", str(wrong), "--gold", items[3]["gold_answer"], "--kind", "synthetic",
                           "--program-file", str(program)], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "LEMA_API_KEY": keys["main"]})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "accepted"


@pytest.fixture(scope="module")
def openai_upstream_service(tmp_path_factory):
    """The corrector proxy with an OpenAI-compatible upstream: lema's own endpoint (lema-tiny as the corrector)."""
    folder = tmp_path_factory.mktemp("corrections-openai")
    keys_file = folder / "api-keys.json"
    key = _keys(keys_file, "main", 1000, 1000)
    port = free_port()
    env = {"LEMA_ENDPOINT__API_KEYS_FILE": str(keys_file), "LEMA_CORRECTOR__UPSTREAM": "openai",
           "LEMA_CORRECTOR__BASE_URL": f"http://127.0.0.1:{port}/v1", "LEMA_CORRECTOR__MODEL": "default",
           "LEMA_CORRECTOR__MAX_TOKENS": "64", "LEMA_CORRECTOR__MAX_CANDIDATES": "1",
           "LEMA_ENDPOINT__ENGINE": "transformers"}
    server = start_endpoint(cli_args(port, resolve_model("lema-tiny"), folder / "registry"), folder / "server.log",
                            port, env=env)
    try:
        yield server.url, key
    finally:
        server.stop()


def test_lema_s_own_endpoint_as_the_upstream(openai_upstream_service):
    """lema-tiny behind lema's endpoint is an OpenAI-compatible upstream, but its 512-token context cannot hold the
    4-shot correction prompt: the upstream's refusal comes back as that item's upstream_error, naming why, unbilled."""
    url, key = openai_upstream_service
    item = {k: v for k, v in {**_problems(1, seed=21)[0], "kind": "gsm8k", "program_json": None}.items()
            if v is not None}
    answer = _post(url, "corrections", item, key)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["status"] == "upstream_error" and "context of 512 tokens" in result["failure_reason"], result
    assert result["corrector"]["upstream_model"] == "default" and result["usage"]["prompt_tokens"] == 0


def test_an_openai_compatible_upstream_and_the_upstream_down(tmp_path):
    """A scripted OpenAI-compatible server (lema.devtools.upstream: a real HTTP server that can be told to fail)
    as the corrector: its correction parsed, verified and priced; then down: 503 with Retry-After."""
    import sys

    keys_file = tmp_path / "api-keys.json"
    key = _keys(keys_file, "main", 1000, 1000)
    upstream_port, port = free_port(), free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "lema.devtools.upstream", "--port", str(upstream_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"LEMA_ENDPOINT__API_KEYS_FILE": str(keys_file), "LEMA_CORRECTOR__UPSTREAM": "openai",
           "LEMA_CORRECTOR__BASE_URL": f"http://127.0.0.1:{upstream_port}/v1", "LEMA_CORRECTOR__MODEL": "double",
           "LEMA_CORRECTOR__MAX_RETRIES": "1", "LEMA_CORRECTOR__BREAKER_COOLDOWN_S": "7",
           "LEMA_CORRECTOR__USD_PER_MILLION_PROMPT_TOKENS": "10"}
    server = start_endpoint(cli_args(port, resolve_model("lema-tiny"), tmp_path / "registry"), tmp_path / "log",
                            port, env=env)
    try:
        item = {"question": "A rope is 72 inches long. Tom ties on 23 more inches. How long is the rope now?",
                "solution": "Step 1: The rope is 72 inches long.\nStep 2: He has 72 + 23 = 98 inches.\n"
                            "The answer is 98.", "kind": "gsm8k", "gold_answer": "95", "max_candidates": 1}
        fixed = _post(server.url, "corrections", item, key).json()
        assert fixed["status"] == "accepted" and fixed["incorrect_step"] == 2 and fixed["corrected_answer"] == "95"
        assert fixed["usage"] == {"prompt_tokens": 100, "completion_tokens": 40, "cost_usd": pytest.approx(0.001)}
        assert fixed["corrector"]["upstream_model"] == "double" and fixed["corrector"]["prompt_version"]

        httpx.post(f"http://127.0.0.1:{upstream_port}/control", json={"mode": "500", "failures": -1})
        other = {**item, "gold_answer": "95.0", "id": "down"}  # not in the cache
        down = _post(server.url, "corrections", other, key)
        assert down.status_code == 503 and down.json()["error"]["type"] == "unavailable", down.text
        assert down.headers["retry-after"] == "7"
        batch = _post(server.url, "corrections", {"items": [other, other]}, key)
        assert batch.status_code == 503 and "retry-after" in batch.headers
    finally:
        server.stop()
        upstream.terminate()
        upstream.wait(timeout=30)
