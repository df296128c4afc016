"""gRPC Trainer: start, watch, cancel runs; list adapters; eval-gated promotion into the endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp

from lema.core.config import TrainerConfig
from lema.core.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from lema.core.promotion_record import record_path
from lema.trainer.baseline import BaseOutcomes, eval_settings_of
from lema.trainer.promote import promote, promote_fleet
from lema.trainer.recipe import RecipeError, load_recipe
from lema.trainer.registry import AdapterRecord, AdapterRegistry
from lema.trainer.runs import TERMINAL, RunDir, RunManager, RunState, check_run_id
from lema.trainer.train import check_dataset
from lema.v1 import common_pb2 as pb
from lema.v1 import trainer_pb2 as tpb
from lema.v1 import trainer_pb2_grpc

STATE_TO_PB = {
    "queued": tpb.RUN_STATE_QUEUED, "running": tpb.RUN_STATE_RUNNING, "evaluating": tpb.RUN_STATE_EVALUATING,
    "succeeded": tpb.RUN_STATE_SUCCEEDED, "failed": tpb.RUN_STATE_FAILED, "cancelled": tpb.RUN_STATE_CANCELLED,
}


def _timestamp(iso: str) -> Timestamp | None:
    if not iso:
        return None
    ts = Timestamp()
    ts.FromDatetime(datetime.fromisoformat(iso))
    return ts


def run_to_pb(run: RunDir, state: RunState | None = None) -> tpb.TrainingRun:
    state = state or run.state()
    spec = run.spec()
    message = tpb.TrainingRun(id=run.id, state=STATE_TO_PB[state.state], config_yaml=spec["config_yaml"],
                              export_path=spec["export_path"], base_model=spec["base_model"], step=state.step,
                              total_steps=state.total_steps, adapter_id=state.adapter_id, error=state.error,
                              metrics=state.metrics)
    if (created := _timestamp(state.created_at)) is not None:
        message.created_at.CopyFrom(created)
    if (finished := _timestamp(state.finished_at)) is not None:
        message.finished_at.CopyFrom(finished)
    return message


def adapter_to_pb(record: AdapterRecord) -> pb.Adapter:
    message = pb.Adapter(id=record.id, base_model=record.base_model, path=record.path,
                         content_hash=record.content_hash, rank=record.rank, target_modules=record.target_modules,
                         export_id=record.export_id, parent_adapter=record.parent_adapter, metrics=record.metrics,
                         config_yaml=record.config_yaml)
    if (created := _timestamp(record.created_at)) is not None:
        message.created_at.CopyFrom(created)
    return message


def event_to_pb(run_id: str, event: dict) -> tpb.RunEvent:
    message = tpb.RunEvent(run_id=run_id)
    if (ts := _timestamp(event.get("time", ""))) is not None:
        message.time.CopyFrom(ts)
    kind = event["type"]
    if kind == "progress":
        message.progress.CopyFrom(tpb.ProgressEvent(
            step=event["step"], total_steps=event["total_steps"], loss=event["loss"],
            learning_rate=event["learning_rate"], tokens_per_second=event["tokens_per_second"],
            epoch=event.get("epoch", 0.0)))
    elif kind == "eval":
        message.eval.CopyFrom(tpb.EvalEvent(metrics=event["metrics"]))
    elif kind == "state":
        message.state = STATE_TO_PB[event["state"]]
    else:
        message.log = str(event.get("message", ""))
    return message


class TrainerServicer(trainer_pb2_grpc.TrainerServicer):
    def __init__(self, config: TrainerConfig):
        self.config = config
        self.runs = RunManager(config.runs_root, config.adapters_root)
        self.registry = AdapterRegistry(config.adapters_root)
        self.base_outcomes = BaseOutcomes(config.adapters_root)

    def _run(self, run_id: str) -> RunDir | None:
        try:
            return self.runs.get(run_id)
        except KeyError:
            return None

    def _existing_run(self, run_id: str) -> RunDir:
        run = self._run(run_id)
        if run is None:
            raise NotFound(f"no run {run_id[:200]!r}")
        return run

    def _export_file(self, export_path: str) -> Path:
        """The client's export_path as a file confined to exports_root (symbolic links resolved); InvalidInput
        names the field and never the file's content."""
        if not export_path:
            raise InvalidInput("export_path: required (a training JSONL under the trainer's exports root)")
        root = self.config.exports_root.resolve()
        if len(export_path.encode("utf-8", "surrogatepass")) > 4096 or "\x00" in export_path:
            raise InvalidInput("export_path: too long or not a path (at most 4096 bytes)")
        path = Path(export_path)
        if any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in path.parts):
            raise InvalidInput("export_path: a name in it is longer than 255 bytes")
        path = (path if path.is_absolute() else root / path).resolve()
        if not path.is_relative_to(root):
            raise InvalidInput(f"export_path: {export_path[:200]!r} is outside the trainer's exports root")
        if not path.is_file():
            raise InvalidInput(f"export_path: {export_path[:200]!r} is not a file (a training JSONL)")
        return path

    async def StartRun(self, request: tpb.StartRunRequest, context) -> tpb.TrainingRun:
        try:
            if request.run_id:
                check_run_id(request.run_id)
            recipe = load_recipe(request.config_yaml or None, allow_paths=False)
            export = self._export_file(request.export_path)
            await asyncio.to_thread(check_dataset, export)  # a bad line is refused now, with its number
        except RecipeError as exc:
            raise InvalidInput(f"config_yaml: {exc}") from None
        except OSError as exc:  # run id, export path and dataset errors are InvalidInput already
            raise InvalidInput(f"export_path: cannot read it ({exc.strerror})") from None
        except UnicodeDecodeError as exc:  # an export that is not UTF-8 text (the message names no content)
            raise InvalidInput(f"export_path: not UTF-8 text (byte {exc.start})") from None
        existing = self._run(request.run_id) if request.run_id else None
        if existing is not None:
            state = existing.state()
            if state.state in ("running", "evaluating") and self.runs.active() is not None:
                return run_to_pb(existing, state)  # idempotent start
            if not request.resume:
                raise AlreadyExists(f"run {request.run_id} exists ({state.state}); pass resume=true to continue it")
            if state.state == "succeeded":
                return run_to_pb(existing, state)
        active = self.runs.active()
        if active is not None:
            raise Conflict(f"run {active.id} is training; this trainer runs one at a time")
        run = existing or self.runs.create(request.config_yaml, str(export), recipe.base_model, request.run_id)
        self.runs.launch(run)
        return run_to_pb(run)

    async def WatchRun(self, request: tpb.WatchRunRequest, context) -> AsyncIterator[tpb.RunEvent]:
        run = self._existing_run(request.run_id)
        offset = 0
        while True:
            self.runs.reap()  # a dead worker's run turns failed here, with its state event
            events, offset = run.events(offset)
            for event in events:
                yield event_to_pb(run.id, event)
            state = run.state()
            if state.state in TERMINAL and not events:
                return
            if state.state not in TERMINAL and not self.runs.is_running(run.id):
                return  # no process of this trainer runs it (nothing more will happen until StartRun)
            await asyncio.sleep(0.5)

    async def CancelRun(self, request: tpb.CancelRunRequest, context) -> tpb.TrainingRun:
        run = self._existing_run(request.run_id)
        state = await asyncio.to_thread(self.runs.cancel, run)
        return run_to_pb(run, state)

    async def GetRun(self, request: tpb.GetRunRequest, context) -> tpb.TrainingRun:
        self.runs.reap()
        run = self._existing_run(request.run_id)
        return run_to_pb(run)

    async def ListAdapters(self, request: tpb.ListAdaptersRequest, context) -> tpb.ListAdaptersResponse:
        return tpb.ListAdaptersResponse(adapters=[adapter_to_pb(r) for r in self.registry.list(request.base_model)])

    def _promotion_target(self, requested: str) -> str | None:
        """The configured endpoint a Promote call goes to: the default, or one of `promote_endpoints` named by the
        request. The call carries the endpoint's admin token, so a URL the client chose is never called."""
        configured = [self.config.endpoint_url, *self.config.promote_endpoints]
        if not requested:
            return self.config.endpoint_url
        return next((url for url in configured if url.rstrip("/") == requested.rstrip("/")), None)

    async def Promote(self, request: tpb.PromoteRequest, context) -> tpb.PromoteResponse:
        # With a promotion record configured, a Promote that names no endpoint is fleet-wide: the record every
        # endpoint replica follows. Naming an endpoint still pushes to that one endpoint's admin API.
        fleet = bool(self.config.promotion_record) and not request.endpoint_url
        url = None if fleet else self._promotion_target(request.endpoint_url)
        if not fleet and url is None:
            raise InvalidInput(f"endpoint_url: {request.endpoint_url[:200]!r} is not a configured endpoint "
                               "(trainer.endpoint_url or trainer.promote_endpoints); Promote sends the admin token "
                               "to configured endpoints only")
        try:
            record = self.registry.get(request.adapter_id)
        except KeyError:
            raise NotFound(f"no adapter {request.adapter_id[:200]!r} in the registry") from None
        base = lambda: self.base_outcomes.get(record.base_model, eval_settings_of(record))  # noqa: E731
        gated = {"force": request.force, "base_outcomes": base, "margin": self.config.gate_margin}
        try:
            if fleet:
                outcome = await asyncio.to_thread(
                    promote_fleet, record, self.registry,
                    record_path(self.config.adapters_root, self.config.promotion_record), **gated)
            else:
                outcome = await asyncio.to_thread(
                    promote, record, url, self.config.admin_token_env, self.registry, **gated)
        except OSError as exc:  # PromotionError carries its own status (UNAVAILABLE when transient)
            raise Conflict(f"cannot write the promotion record: {exc}") from None
        return tpb.PromoteResponse(promoted=outcome.promoted, reason=outcome.reason, adapter=adapter_to_pb(record),
                                   previous_adapter_id=outcome.previous)
