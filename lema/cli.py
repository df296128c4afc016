"""The `lema` command. Heavy imports stay inside commands so `lema --help` is instant."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    name="lema",
    help="Learning from mistakes for LLM math reasoning: services, data collection, training, serving.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
serve_app = typer.Typer(help="Start a lema service.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")

try:  # the tiny-model commands need the `models` extra
    from lema.tiny.cli import models_app

    app.add_typer(models_app, name="models")
except ImportError:  # pragma: no cover - depends on the install
    pass


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@serve_app.command("verifier")
def serve_verifier(
    port: Optional[int] = typer.Option(None, help="gRPC port (default 50061; 0 picks a free one)"),
    host: Optional[str] = typer.Option(None, help="bind address (default 127.0.0.1)"),
    workers: Optional[int] = typer.Option(None, help="verification worker processes"),
    item_timeout: Optional[float] = typer.Option(None, help="hard time limit per item, seconds"),
    metrics_port: Optional[int] = typer.Option(None, help="serve Prometheus metrics on this port"),
    config: Optional[Path] = typer.Option(None, help="lema YAML config file"),
) -> None:
    """Serve the verifier over gRPC (health checking and reflection included)."""
    from lema.core.config import load_config
    from lema.services.verifier.server import main

    section = load_config(config).verifier
    overrides = {
        "port": port,
        "host": host,
        "workers": workers,
        "item_timeout_s": item_timeout,
        "metrics_port": metrics_port,
    }
    try:
        section = section.model_validate({**section.model_dump(), **{k: v for k, v in overrides.items() if v is not None}})
    except ValueError as exc:
        _fail(str(exc))
    main(section)


@app.command()
def verify(
    kind: str = typer.Option(..., help="gsm8k | math | synthetic"),
    gold: str = typer.Option(..., help="the gold answer (or a full reference solution)"),
    candidate: Optional[str] = typer.Option(None, help="the candidate solution text"),
    candidate_file: Optional[Path] = typer.Option(None, help="read the candidate solution from a file"),
    answer_only: bool = typer.Option(False, help="the candidate is a bare answer: skip extraction"),
    timeout: float = typer.Option(5.0, help="hard time limit, seconds"),
    server: Optional[str] = typer.Option(None, help="verify through a running verifier at HOST:PORT"),
) -> None:
    """Verify one candidate against a gold answer and print the verdict as JSON."""
    from lema.core.answers import DatasetKind

    try:
        dataset_kind = DatasetKind(kind.lower())
    except ValueError:
        _fail(f"--kind must be one of gsm8k, math, synthetic (got {kind!r})")
    if (candidate is None) == (candidate_file is None):
        _fail("give exactly one of --candidate or --candidate-file")
    if candidate_file is not None:
        try:
            candidate = candidate_file.read_text()
        except OSError as exc:
            _fail(f"cannot read --candidate-file: {exc}")
    assert candidate is not None
    if not candidate.strip():
        _fail("the candidate is empty")
    if not gold.strip():
        _fail("--gold is empty")
    if timeout <= 0:
        _fail("--timeout must be > 0")

    if server:
        verdict = _verify_remote(server, dataset_kind, gold, candidate, answer_only, timeout)
    else:
        verdict = asyncio.run(_verify_local(dataset_kind, gold, candidate, answer_only, timeout))
    typer.echo(json.dumps(verdict.model_dump(mode="json"), ensure_ascii=False))


async def _verify_local(kind, gold: str, candidate: str, answer_only: bool, timeout: float):
    from lema.core.verifier_pool import VerifierPool, VerifyItem

    pool = VerifierPool(workers=1, item_timeout_s=timeout)
    await pool.start()
    try:
        return await pool.verify(VerifyItem(kind, gold, candidate, answer_only))
    finally:
        await pool.close()


def _verify_remote(address: str, kind, gold: str, candidate: str, answer_only: bool, timeout: float):
    import grpc

    from lema.core.proto_convert import KIND_TO_PB, verdict_from_pb
    from lema.v1 import verifier_pb2, verifier_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = verifier_pb2_grpc.VerifierStub(channel)
        request = verifier_pb2.VerifyRequest(
            kind=KIND_TO_PB[kind], gold_answer=gold, candidate=candidate, candidate_is_answer=answer_only
        )
        try:
            response = stub.Verify(request, timeout=timeout + 5)
        except grpc.RpcError as exc:
            _fail(f"{exc.code().name}: {exc.details()}", code=1)
    return verdict_from_pb(response.verdict)


@app.command()
def demo(
    limit: int = typer.Option(500, help="gold answers per dataset in the verifier check"),
) -> None:
    """The main job on the embedded default: runs every stage of the loop that exists, prints the results."""
    from lema.demo import run_demo

    run_demo(limit=limit)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
