"""Reasoner throughput: tokens/s through the gRPC service vs the same engine in-process, at batch 1, 8 and 32.

Greedy decoding of synthetic test problems with lema-tiny. For each local engine (transformers; vLLM where its
package is installed) the service and the in-process engine run the same prompts with the same settings, one
after the other in the same run, and the table prints the ratio.

    python bench/reasoner.py [--engines transformers,vllm] [--batches 1,8,32] [--max-tokens 160]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import time
from pathlib import Path

import grpc
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
from lema.core.engines import SamplingParams, create_engine  # noqa: E402
from lema.core.formats import cot_messages  # noqa: E402
from lema.core.model_resolve import resolve_model  # noqa: E402
from lema.core.proto_convert import synthetic_to_pb  # noqa: E402
from lema.core.synthetic import generate  # noqa: E402
from lema.devtools import free_port, start_server  # noqa: E402
from lema.v1 import common_pb2 as pb  # noqa: E402
from lema.v1 import reasoner_pb2 as rpb  # noqa: E402
from lema.v1 import reasoner_pb2_grpc  # noqa: E402


def in_process(engine_kind: str, problems, batch: int, max_tokens: int) -> tuple[int, float]:
    async def run() -> tuple[int, float]:
        engine = create_engine(engine_kind, resolve_model("lema-tiny"))
        if hasattr(engine, "start"):
            await engine.start()
        params = SamplingParams(max_tokens=max_tokens)
        prompts = [cot_messages(p.question) for p in problems]
        await engine.generate(prompts[:batch], params)  # warm-up
        tokens, started = 0, time.perf_counter()
        for i in range(0, len(prompts), batch):
            for samples in await engine.generate(prompts[i : i + batch], params):
                tokens += sum(c.completion_tokens for c in samples)
        elapsed = time.perf_counter() - started
        await engine.close()
        return tokens, elapsed

    return asyncio.run(run())


def through_service(address: str, problems, batch: int, max_tokens: int) -> tuple[int, float]:
    with grpc.insecure_channel(address) as channel:
        stub = reasoner_pb2_grpc.ReasonerStub(channel)
        sampling = pb.SamplingParams(n=1, temperature=0, max_tokens=max_tokens)
        messages = [synthetic_to_pb(p) for p in problems]
        list(stub.Solve(rpb.SolveRequest(problems=messages[:batch], sampling=sampling), timeout=600))  # warm-up
        tokens, started = 0, time.perf_counter()
        for i in range(0, len(messages), batch):
            request = rpb.SolveRequest(problems=messages[i : i + batch], sampling=sampling)
            tokens += sum(r.path.usage.completion_tokens for r in stub.Solve(request, timeout=600))
        return tokens, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="transformers,vllm")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=160)
    args = parser.parse_args()
    console = Console(width=120)
    problems = generate(args.problems, seed=99, split="test")
    batches = [int(b) for b in args.batches.split(",")]
    table = Table(title=f"Reasoner: gRPC service vs in-process engine (lema-tiny, greedy, {args.problems} problems)")
    for col in ("engine", "batch", "in-process tok/s", "service tok/s", "ratio"):
        table.add_column(col, justify="right")
    for kind in args.engines.split(","):
        if kind == "vllm" and importlib.util.find_spec("vllm") is None:
            console.print("[yellow]vllm is not installed: skipping the vllm engine[/]")
            continue
        port = free_port()
        server = start_server(["serve", "reasoner", "--engine", kind, "--port", str(port), "--max-samples", "8"],
                              port, Path("/tmp") / f"lema-bench-reasoner-{kind}.log", timeout=300)
        try:
            service = {b: through_service(server.address, problems, b, args.max_tokens) for b in batches}
        finally:
            server.stop()
        for b in batches:
            tokens_in, seconds_in = in_process(kind, problems, b, args.max_tokens)
            tokens_sv, seconds_sv = service[b]
            rate_in, rate_sv = tokens_in / seconds_in, tokens_sv / seconds_sv
            table.add_row(kind, str(b), f"{rate_in:,.0f}", f"{rate_sv:,.0f}", f"{rate_sv / rate_in:.2f}x")
            console.print(f"{kind} batch {b}: in-process {rate_in:,.0f} tok/s, service {rate_sv:,.0f} tok/s")
    console.print(table)


if __name__ == "__main__":
    main()
