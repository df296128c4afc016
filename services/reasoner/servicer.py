"""gRPC Reasoner: n step-by-step solutions per problem from one engine (base model or a LoRA adapter)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from prometheus_client import Counter, Histogram

from lema.core.adapter_registry import (
    AdapterRegistry,
    AdapterRejected,
    BaseModelSpec,
    Limits,
    check_name,
)
from lema.core.answers import extract_answer
from lema.core.config import ReasonerConfig
from lema.core.engines import ContextLengthError, Engine, EngineError
from lema.core.errors import Conflict, InvalidInput, NotFound
from lema.core.formats import cot_messages, split_steps
from lema.core.proto_convert import kind_from_pb, verdict_to_pb
from lema.core.records import VerifyItem
from lema.services.reasoner.validation import solve_request
from lema.services.verifier import Verifier
from lema.v1 import common_pb2 as pb
from lema.v1 import reasoner_pb2 as rpb
from lema.v1 import reasoner_pb2_grpc

PATHS = Counter("lema_reasoner_paths_total", "Reasoning paths generated", ["adapter"])
TOKENS = Counter("lema_reasoner_completion_tokens_total", "Completion tokens generated", ["adapter"])
CHUNK_SECONDS = Histogram("lema_reasoner_chunk_seconds", "Engine time per chunk of problems")


class ReasonerServicer(reasoner_pb2_grpc.ReasonerServicer):
    def __init__(self, engine: Engine, config: ReasonerConfig, verifier: Verifier | None = None):
        self.engine = engine
        self.config = config
        self.verifier = verifier
        self.adapters = AdapterRegistry(config.registry_dir)
        self.limits = Limits(max_rank=config.max_lora_rank, max_adapter_bytes=config.max_adapter_mb << 20)
        self._spec: BaseModelSpec | None = None  # built on the first LoadAdapter (reads the model's config only)

    async def _base_spec(self) -> BaseModelSpec:
        """What adapters are checked against; AdapterRejected when the model's config cannot be read here (a remote
        engine's model: nothing can be validated, so nothing is loaded)."""
        if self._spec is None:
            model_id = self.engine.model_id
            try:
                self._spec = await asyncio.to_thread(BaseModelSpec.from_model, model_id, Path(model_id).name)
            except Exception as exc:  # noqa: BLE001 - any failure to read the config means: cannot validate
                raise AdapterRejected(f"this reasoner cannot validate adapters for {model_id!r} "
                                      f"({type(exc).__name__}); it loads none", 412) from None
        return self._spec

    async def Solve(self, request: rpb.SolveRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[rpb.SolveResponse]:
        c = self.config
        problems, params = solve_request(request, c)
        adapter = request.adapter or None
        if adapter and adapter not in {a.name for a in self.engine.adapters()}:
            raise NotFound(f"adapter {adapter[:200]!r} is not loaded")

        sampling_echo = pb.SamplingParams()
        sampling_echo.CopyFrom(request.sampling)
        model = pb.ModelRef(model=self.engine.model_id, adapter=request.adapter)
        # Chunks bound the work done after a client cancels or its deadline passes, and stream results early.
        for start in range(0, len(problems), c.batch_size):
            chunk = problems[start : start + c.batch_size]
            prompts = [cot_messages(p.question) for p in chunk]
            started = time.perf_counter()
            try:
                completions = await self.engine.generate(prompts, params, adapter)
            except ContextLengthError as exc:
                raise InvalidInput(f"problems[{start}..{start + len(chunk) - 1}]: {exc}") from None
            except EngineError as exc:  # the engine cannot serve it as asked (an adapter gone, ...)
                raise Conflict(str(exc)) from None
            elapsed_ms = (time.perf_counter() - started) * 1000
            CHUNK_SECONDS.observe(elapsed_ms / 1000)
            for offset, (problem, samples) in enumerate(zip(chunk, completions)):
                kind = kind_from_pb(problem.kind)
                for index, completion in enumerate(samples):
                    path = pb.ReasoningPath(
                        problem_id=problem.id,
                        sample_index=index,
                        text=completion.text,
                        steps=split_steps(completion.text),
                        extracted_answer=extract_answer(completion.text, kind).answer or "",
                        model=model,
                        sampling=sampling_echo,
                        usage=pb.TokenUsage(
                            prompt_tokens=completion.prompt_tokens,
                            completion_tokens=completion.completion_tokens,
                            total_tokens=completion.prompt_tokens + completion.completion_tokens,
                        ),
                        finish_reason=completion.finish_reason,
                        latency_ms=elapsed_ms,
                    )
                    if request.verify and self.verifier is not None:
                        verdict = await self.verifier.verify(VerifyItem(kind, problem.gold_answer, completion.text))
                        path.verdict.CopyFrom(verdict_to_pb(verdict))
                    PATHS.labels(adapter=request.adapter or "base").inc()
                    TOKENS.labels(adapter=request.adapter or "base").inc(completion.completion_tokens)
                    yield rpb.SolveResponse(path=path, problem_index=start + offset)

    async def ListModels(self, request: rpb.ListModelsRequest, context) -> rpb.ListModelsResponse:
        return self._models()

    def _models(self) -> rpb.ListModelsResponse:
        return rpb.ListModelsResponse(
            base_model=self.engine.model_id,
            engine=self.engine.name,
            adapters=[a.name for a in self.engine.adapters()],
            max_samples_per_problem=self.config.max_samples,
        )

    async def LoadAdapter(self, request: rpb.LoadAdapterRequest, context) -> rpb.ListModelsResponse:
        """The endpoint's rules: a path confined to the registry, a folder validated (config, shapes, finite
        weights, no pickles) before the engine sees it."""
        if not request.name.strip() or not request.path.strip():
            raise InvalidInput("name and path are required")
        # AdapterRejected carries its status: 404 no such folder, 412 cannot validate here, else INVALID_ARGUMENT.
        name = check_name(request.name, Path(self.engine.model_id).name)
        manifest = await asyncio.to_thread(self.adapters.inspect, request.path, await self._base_spec(), self.limits)
        try:
            await self.engine.load_adapter(name, str(manifest.path))
        except EngineError as exc:
            raise InvalidInput(str(exc)) from None
        return self._models()
