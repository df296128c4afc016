"""`lema serve endpoint`: start the BentoML endpoint exactly as `bentoml serve` does, with lema's config.

The command validates the configuration (config file, environment, then flags), hands the resolved `endpoint`
section to the service as `LEMA_ENDPOINT__<FIELD>` variables (lema.core.config's environment layer) and replaces
itself with `bentoml serve lema.services.endpoint.service:Endpoint --host H --port P`.
Precedence (lowest first): EndpointConfig's defaults, the config file (`--config` or $LEMA_CONFIG),
`LEMA_ENDPOINT__<FIELD>` variables, the flags given.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import typer

SERVICE = "lema.services.endpoint.service:Endpoint"


def bentoml_command(host: str, port: int) -> list[str]:
    exe = shutil.which("bentoml", path=str(Path(sys.executable).parent)) or shutil.which("bentoml")
    base = [exe] if exe else [sys.executable, "-m", "bentoml"]
    return [*base, "serve", SERVICE, "--host", host, "--port", str(port)]


def endpoint_command(
    port: int | None = typer.Option(None, help="HTTP port (default 3000)"),
    host: str | None = typer.Option(None, help="bind address (default 127.0.0.1)"),
    model: str | None = typer.Option(None, help="lema-tiny (default), smollm2, a local folder or a Hugging Face id"),
    engine: str | None = typer.Option(None, help="auto (default) | vllm | transformers (auto: vLLM if it starts, "
                                                 "else transformers)"),
    config: Path | None = typer.Option(None, help="lema YAML config file (its `endpoint` section)"),
    registry: Path | None = typer.Option(None, help="adapter registry folder (every adapter path stays inside)"),
    adapter: list[str] = typer.Option([], help="preload an adapter: PATH or NAME=PATH inside the registry (repeatable)"),
    promote: str | None = typer.Option(None, help="promote this preloaded adapter NAME at start"),
    threads: int | None = typer.Option(None, help="CPU threads for the transformers engine (default 1)"),
    admin_token_env: str | None = typer.Option(None, help="env var holding the admin bearer token"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the command and config, start nothing"),
) -> None:
    """Serve the OpenAI-compatible endpoint with LoRA hot-swap (BentoML); same as `bentoml serve` at the root."""
    from pydantic import ValidationError

    from lema.core.config import EndpointConfig, load_config, section_env

    try:
        section = load_config(config).endpoint  # the file (or $LEMA_CONFIG), else the defaults
        data = section.model_dump()
        flags = {"port": port, "host": host, "model": model, "engine": engine}
        data.update({k: v for k, v in flags.items() if v is not None})  # a flag given wins, even at a default
        if registry is not None:
            data["registry_dir"] = str(registry.expanduser().resolve())
        if adapter:
            data["preload"] = list(adapter)
        if promote is not None:
            data["promote"] = promote
        if threads is not None:
            data["threads"] = threads
        if admin_token_env is not None:
            data["admin_token_env"] = admin_token_env
        section = EndpointConfig.model_validate(data)
    except (ValidationError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    payload = section.model_dump(mode="json", exclude={"host", "port"})
    payload["registry_dir"] = str(Path(section.registry_dir).expanduser().resolve())
    env = {**{k: v for k, v in os.environ.items() if not k.upper().startswith("LEMA_ENDPOINT__")},
           **section_env("endpoint", payload), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if config is not None:  # the service reads the other sections (client: tokens, TLS) from the same file
        env["LEMA_CONFIG"] = str(Path(config).expanduser().resolve())
    command = bentoml_command(section.host, section.port)
    if dry_run:
        typer.echo(" ".join(command))
        typer.echo(json.dumps(payload, indent=2))
        return
    os.execvpe(command[0], command, env)


def main() -> None:  # pragma: no cover - `python -m lema.services.endpoint.cli`
    typer.run(endpoint_command)


if __name__ == "__main__":  # pragma: no cover
    main()
