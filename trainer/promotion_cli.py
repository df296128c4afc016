"""`lema promote` (through the gate) and `lema promotion` (by hand): the fleet's promotion record.

    lema promote ADAPTER_ID [--force]       every replica serves this adapter if it passes the promotion gate
    lema promotion show                     the record and the adapter it names
    lema promotion set ADAPTER_ID           every replica serves this registered adapter
    lema promotion set --base               every replica serves the base model
    lema promotion rollback                 back to the adapter the record names as previous

The store and the record's file name come from the config's `trainer` section (`adapters_root`,
`promotion_record`), or `--store` and `--record`. `lema promote` applies the trainer's gate (lema.trainer.gate,
the same as the trainer's Promote) and writes its decision into the record; `lema promotion` skips it: the
operator's explicit choice. An adapter is written into the record only when its folder's content hash matches the
hash the registry recorded when the adapter was registered.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

promotion_app = typer.Typer(help="The fleet's promotion record: show, set, rollback.", no_args_is_help=True)

_STORE = typer.Option(None, help="the adapter store (default: trainer.adapters_root of the config)")
_RECORD = typer.Option(None, help="the record's file name in the store (default: trainer.promotion_record)")
_CONFIG = typer.Option(None, help="lema YAML config file")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _locate(store: Optional[Path], record: Optional[str], config: Optional[Path]) -> tuple[Path, Path]:
    from lema.core.config import load_config
    from lema.core.promotion_record import PromotionRecordError, record_path

    section = load_config(config).trainer
    root = Path(store or section.adapters_root)
    name = record or section.promotion_record or "promotion.json"
    if not root.is_dir():
        _fail(f"--store: {root} is not a folder")
    try:
        return root, record_path(root, name)
    except PromotionRecordError as exc:
        _fail(str(exc))


def _read(path: Path):
    from lema.core.promotion_record import PromotionRecordError, read_record

    try:
        return read_record(path)
    except PromotionRecordError as exc:
        _fail(f"{exc}; `lema promotion set` writes a new record")


def _write(root: Path, path: Path, adapter_id: Optional[str], reason: str) -> None:
    from lema.core.promotion_record import content_hash, write_record
    from lema.trainer.registry import AdapterRegistry

    adapter_hash = ""
    if adapter_id is not None:
        try:
            registered = AdapterRegistry(root).get(adapter_id)
        except (KeyError, ValueError, TypeError):
            _fail(f"ADAPTER_ID: no registered adapter {adapter_id[:200]!r} in {root}")
        adapter_hash = content_hash(root / adapter_id)
        if adapter_hash != registered.content_hash:
            _fail(f"{adapter_id}: its files changed since it was registered (content hash differs); not promoted")
    record = write_record(path, adapter_id, adapter_hash, reason=reason)
    typer.echo(json.dumps(asdict(record)))


@promotion_app.command("show")
def show(store: Optional[Path] = _STORE, record: Optional[str] = _RECORD, config: Optional[Path] = _CONFIG) -> None:
    """Print the promotion record (JSON); exit 1 when none was written."""
    _, path = _locate(store, record, config)
    current = _read(path)
    if current is None:
        typer.echo(f"no promotion record at {path}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(asdict(current)))


@promotion_app.command("set")
def set_command(
    adapter_id: Optional[str] = typer.Argument(None, help="a registered adapter id"),
    base: bool = typer.Option(False, "--base", help="serve the base model"),
    store: Optional[Path] = _STORE, record: Optional[str] = _RECORD, config: Optional[Path] = _CONFIG,
) -> None:
    """Name the adapter every endpoint replica serves (or the base model)."""
    if base == (adapter_id is not None):
        _fail("give an ADAPTER_ID or --base (one of them)")
    root, path = _locate(store, record, config)
    _write(root, path, adapter_id, reason="set by hand")


@promotion_app.command("rollback")
def rollback(store: Optional[Path] = _STORE, record: Optional[str] = _RECORD, config: Optional[Path] = _CONFIG) -> None:
    """Write the record's previous adapter back (the base model when there was none)."""
    root, path = _locate(store, record, config)
    current = _read(path)
    if current is None:
        _fail(f"no promotion record at {path}: nothing to roll back")
    _write(root, path, current.previous, reason=f"rollback from generation {current.generation}")


def promote_command(
    adapter_id: str = typer.Argument(..., help="a registered adapter id"),
    force: bool = typer.Option(False, "--force", help="promote even when the gate refuses (recorded as forced)"),
    margin: Optional[float] = typer.Option(None, help="the gate's margin in accuracy points (default: the "
                                                      "config's trainer.gate_margin, 1 point)"),
    store: Optional[Path] = _STORE, record: Optional[str] = _RECORD, config: Optional[Path] = _CONFIG,
) -> None:
    """Promote a registered adapter fleet-wide through the gate: its outcomes on the gate's validation problems,
    paired with the serving adapter's and the base model's (measured here once when not yet in the store), must show
    it not worse by more than the margin. Prints {promoted, reason, previous, gate} (JSON); exit 1 when refused."""
    from lema.core.config import load_config
    from lema.core.promotion_record import content_hash
    from lema.trainer.baseline import BaseOutcomes, eval_settings_of
    from lema.trainer.gate import GateError
    from lema.trainer.promote import promote_fleet
    from lema.trainer.registry import AdapterRegistry

    if margin is not None and not 0 < margin < 100:
        _fail(f"--margin: must lie in (0, 100) accuracy points (got {margin})")
    root, path = _locate(store, record, config)
    registry = AdapterRegistry(root)
    try:
        candidate = registry.get(adapter_id)
    except (KeyError, ValueError, TypeError):
        _fail(f"ADAPTER_ID: no registered adapter {adapter_id[:200]!r} in {root}")
    if content_hash(root / adapter_id) != candidate.content_hash:
        _fail(f"{adapter_id}: its files changed since it was registered (content hash differs); not promoted")
    settings = eval_settings_of(candidate)

    def base():
        kept = BaseOutcomes(root)
        if kept.cached(candidate.base_model, settings) is None:
            typer.echo(f"measuring {candidate.base_model} on the gate's problems (once: kept in {kept.path}) ...",
                       err=True)
        return kept.get(candidate.base_model, settings)

    gate_margin = margin / 100 if margin is not None else load_config(config).trainer.gate_margin
    try:
        outcome = promote_fleet(candidate, registry, path, force=force, base_outcomes=base, margin=gate_margin)
    except GateError as exc:
        _fail(str(exc))
    typer.echo(json.dumps({"promoted": outcome.promoted, "reason": outcome.reason, "previous": outcome.previous,
                           "gate": outcome.gate}))
    if not outcome.promoted:
        raise typer.Exit(1)
