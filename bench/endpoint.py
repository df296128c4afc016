"""Endpoint benchmark: the BentoML endpoint vs the bare engine in-process, streaming, swap vs cold start.

One `lema serve endpoint` (a real `bentoml serve`; transformers engine with 1 torch thread, or `--engine vllm`)
on 127.0.0.1 with three LoRA adapters (r=8, q_proj+v_proj) made here for the base model. Greedy chat requests on
synthetic problems from C concurrent clients sharing one keep-alive HTTP client, against the same engine class in
this process given the same prompts in batches of C (what batching across requests should approach). Rounds
alternate endpoint and in-process runs; the table shows medians.

    python bench/endpoint.py [--model lema-tiny] [--engine transformers|vllm] [--requests 64] [--concurrency 1,4,16]
                             [--max-tokens 64] [--rounds 3]

Prints: endpoint tokens/s at each concurrency vs the engine in-process at that batch size (ratio), the promoted
adapter vs the base model, a streamed 128-token completion's time to first token vs its total time and its number
of content chunks, and the latency of promote / load (validate + load + smoke) / unload, p50 and p99, next to the
endpoint's cold start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
from lema.core.engines import SamplingParams
from lema.core.formats import cot_messages
from lema.core.model_resolve import resolve_model
from lema.devtools import ADMIN_TOKEN, cli_args, free_port, make_adapters, start_endpoint


def problems(n: int) -> list[str]:
    try:
        from lema.core.synthetic import generate

        return [p.question for p in generate(n, seed=11, split="test", steps=(2, 3))]
    except Exception:  # noqa: BLE001 - the synthetic generator is optional here
        return [f"Tom has {i} apples and buys {i + 3} more. How many apples does he have now?" for i in range(n)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def through_endpoint(url: str, model: str, messages: list, concurrency: int, max_tokens: int) -> tuple[int, float]:
    tokens, lock, errors = [0], threading.Lock(), []
    queue = list(range(len(messages)))
    with httpx.Client(base_url=url, timeout=300) as http:
        def worker() -> None:
            while True:
                with lock:
                    if not queue:
                        return
                    i = queue.pop()
                reply = http.post("/v1/chat/completions", json={
                    "model": model, "messages": messages[i], "max_tokens": max_tokens, "temperature": 0})
                if reply.status_code != 200:
                    errors.append(reply.text)
                    continue
                with lock:
                    tokens[0] += reply.json()["usage"]["completion_tokens"]

        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, first: {errors[0]}")
    return tokens[0], elapsed


async def in_process(engine, adapter: str | None, messages: list, batch: int, max_tokens: int) -> tuple[int, float]:
    """The same prompts through the engine directly, `batch` prompts per generate call, one call at a time."""
    params = SamplingParams(max_tokens=max_tokens)
    tokens = 0
    started = time.perf_counter()
    for start in range(0, len(messages), batch):
        results = await engine.generate(messages[start : start + batch], params, adapter)
        tokens += sum(samples[0].completion_tokens for samples in results)
    return tokens, time.perf_counter() - started


def streamed(url: str, model: str, max_tokens: int) -> tuple[float, float, int]:
    """(time to the first content chunk, total time, content chunks) of one streamed greedy completion."""
    body = {"model": model, "prompt": "Step 1:", "max_tokens": max_tokens, "temperature": 0, "stream": True}
    first, chunks = None, 0
    started = time.perf_counter()
    with httpx.Client(base_url=url, timeout=300) as http, http.stream("POST", "/v1/completions", json=body) as reply:
        for line in reply.iter_lines():
            if not line.startswith("data: {"):
                continue
            choices = json.loads(line[6:]).get("choices") or []
            if choices and choices[0].get("text"):
                chunks += 1
                first = first if first is not None else time.perf_counter() - started
    return first or 0.0, time.perf_counter() - started, chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lema-tiny", help="lema-tiny or a model folder")
    parser.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts (= batch sizes)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--swaps", type=int, default=100, help="promotions timed")
    parser.add_argument("--loads", type=int, default=10, help="load+unload cycles timed")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    top = max(levels)

    import torch

    torch.set_num_threads(1)
    model_dir = Path(resolve_model(args.model))
    if not (model_dir / "config.json").is_file():
        sys.exit(f"{args.model}: no model at {model_dir} (lema-tiny is trained by `lema models pretrain-tiny`)")
    messages = [cot_messages(q) for q in problems(args.requests)]
    console = Console(width=150)

    with tempfile.TemporaryDirectory(prefix="lema-bench-endpoint-") as tmp:
        registry = Path(tmp) / "registry"
        registry.mkdir()
        make_adapters(model_dir, registry, {"bench-a": 1, "bench-b": 2, "bench-c": 3})
        port = free_port()
        server = start_endpoint(cli_args(port, str(model_dir), registry, "--engine", args.engine),
                                Path(tmp) / "server.log", port, env={"VLLM_CPU_KVCACHE_SPACE": "1"}, timeout=600)
        cold_start = server.ready_after_s
        runner = asyncio.Runner()  # one event loop for the in-process engine (vLLM's engine is bound to its loop)
        engine = None
        try:
            admin = httpx.Client(base_url=f"{server.url}/admin", timeout=300,
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            names = {}
            for folder in ("bench-a", "bench-b", "bench-c"):
                reply = admin.post("/adapters", json={"path": folder})
                reply.raise_for_status()
                names[folder] = reply.json()["name"]
            base_name = model_dir.name
            promoted = names["bench-a"]
            admin.post("/promote", json={"name": promoted}).raise_for_status()

            served_by = admin.get("/status").json()["engine"]
            if served_by != args.engine:
                sys.exit(f"the endpoint fell back to {served_by}: {admin.get('/status').json()['engine_fallback']}")
            if args.engine == "vllm":
                from lema.core.engines import create_engine

                engine = create_engine("vllm", str(model_dir))
                runner.run(engine.start())
            else:
                from lema.core.engines.transformers_engine import TransformersEngine

                engine = TransformersEngine(str(model_dir), threads=1)
            runner.run(engine.load_adapter("bench-a", str(registry / "bench-a")))

            # warm-up both sides
            through_endpoint(server.url, "default", messages[:8], top, args.max_tokens)
            runner.run(in_process(engine, None, messages[:8], top, args.max_tokens))

            plan = [(f"ep_base_{c}", lambda c=c: through_endpoint(server.url, base_name, messages, c, args.max_tokens))
                    for c in levels]
            plan += [(f"ip_base_{c}", lambda c=c: runner.run(in_process(engine, None, messages, c, args.max_tokens)))
                     for c in levels]
            plan += [("ep_adapter", lambda: through_endpoint(server.url, "default", messages, top, args.max_tokens)),
                     ("ip_adapter", lambda: runner.run(in_process(engine, "bench-a", messages, top, args.max_tokens)))]
            runs: dict[str, list[float]] = {key: [] for key, _ in plan}
            stream_runs = []
            for _ in range(args.rounds):
                for key, run in plan:
                    tokens, seconds = run()
                    runs[key].append(tokens / seconds)
                stream_runs.append(streamed(server.url, base_name, 128))
            tps = {k: statistics.median(v) for k, v in runs.items()}
            ttft = statistics.median(r[0] for r in stream_runs)
            total = statistics.median(r[1] for r in stream_runs)
            chunks = statistics.median(r[2] for r in stream_runs)

            # swaps: promotions (idle server), then load (validate + load + smoke) and unload cycles
            promote_ms = []
            cycle = [names["bench-b"], names["bench-c"], names["bench-a"]]
            for i in range(args.swaps):
                started = time.perf_counter()
                admin.post("/promote", json={"name": cycle[i % 3]}).raise_for_status()
                promote_ms.append((time.perf_counter() - started) * 1000)
            load_ms, unload_ms = [], []
            for i in range(args.loads):
                started = time.perf_counter()
                reply = admin.post("/adapters", json={"path": "bench-b", "name": f"bench-b-v{i + 2}"})
                reply.raise_for_status()
                load_ms.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                admin.delete(f"/adapters/bench-b-v{i + 2}").raise_for_status()
                unload_ms.append((time.perf_counter() - started) * 1000)
            status = admin.get("/status").json()
        finally:
            if engine is not None:
                runner.run(engine.close())
            runner.close()
            server.stop(timeout=90)

    table = Table(title=f"lema endpoint ({model_dir.name}, {args.engine} engine, {args.requests} chat requests x "
                        f"{args.max_tokens} max tokens, median of {args.rounds})")
    table.add_column("measure")
    table.add_column("endpoint", justify="right")
    table.add_column("reference", justify="right")
    table.add_column("ratio", justify="right")
    for c in levels:
        ep, ip = tps[f"ep_base_{c}"], tps[f"ip_base_{c}"]
        table.add_row(f"tokens/s, base model: endpoint at concurrency {c} vs engine in-process at batch {c}",
                      f"{ep:.0f}", f"{ip:.0f}", f"{ep / ip:.2f}")
    table.add_row(f"tokens/s, promoted adapter: endpoint at concurrency {top} vs in-process at batch {top}",
                  f"{tps['ep_adapter']:.0f}", f"{tps['ip_adapter']:.0f}",
                  f"{tps['ep_adapter'] / tps['ip_adapter']:.2f}")
    table.add_row(f"tokens/s on the endpoint at concurrency {top}: promoted adapter vs base model",
                  f"{tps['ep_adapter']:.0f}", f"{tps[f'ep_base_{top}']:.0f}",
                  f"{tps['ep_adapter'] / tps[f'ep_base_{top}']:.2f}")
    table.add_row("streamed 128-token completion: time to first token vs total (s); content chunks",
                  f"{ttft:.3f}", f"{total:.3f}", f"{ttft / total:.3f} ({chunks:.0f} chunks)")
    cold_ms = cold_start * 1000
    for label, values in (("promote", promote_ms), ("load (validate + load + smoke)", load_ms),
                          ("unload", unload_ms)):
        p50, p99 = percentile(values, 50), percentile(values, 99)
        table.add_row(f"{label} latency p50 / p99 ms (n={len(values)}) vs cold start ms",
                      f"{p50:.1f} / {p99:.1f}", f"{cold_ms:.0f}", f"{cold_ms / p50:.0f}x faster")
    table.add_row("cold start: process spawn to /readyz 200 (engine load inside)", f"{cold_start:.1f} s",
                  f"engine {status['cold_start_s']:.2f} s", "")
    console.print(table)


if __name__ == "__main__":
    main()
