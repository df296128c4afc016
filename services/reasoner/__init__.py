"""The reasoner: one interface, two implementations, one factory.

- `LocalReasoner`: an engine in this process (lema.core.engines) whose paths a verifier checks;
- `RemoteReasoner`: the reasoner service (`lema serve reasoner`) over gRPC (token, TLS, round_robin, retries).

Both answer `solve(problems, sampling, adapter)` with one list of `PathResult` per problem (text, extracted answer,
verdict, token counts); `open_reasoner` picks one from a target ("local" or a gRPC address). A problem is anything
with `id`, `kind`, `question` and `gold_answer` (the store's rows, for one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from lema.core.answers import DatasetKind, extract_answer
from lema.core.engines import SamplingParams
from lema.core.formats import cot_messages
from lema.core.proto_convert import KIND_TO_PB, verdict_from_pb
from lema.core.records import VerifyItem
from lema.core.security import open_aio_channel
from lema.services.verifier import Verifier

LOCAL = "local"


@dataclass(frozen=True)
class PathResult:
    text: str
    extracted: str
    correct: bool
    verdict: dict
    prompt_tokens: int
    completion_tokens: int


class Reasoner(Protocol):
    model_id: str  # what attempts record as their model

    async def start(self) -> None: ...

    async def solve(self, problems: list[Any], params: SamplingParams, adapter: str) -> list[list[PathResult]]: ...

    async def close(self) -> None: ...


class LocalReasoner:
    """An engine in this process, its paths checked by the given verifier."""

    def __init__(self, model: str, engine: str, verifier: Verifier, adapter: tuple[str, str] | None = None):
        from lema.core.engines import create_engine
        from lema.core.model_resolve import resolve_model

        self.engine = create_engine(engine, resolve_model(model))
        self.model_id = model
        self.verifier = verifier
        self.adapter = adapter  # (name, PEFT folder) loaded at start

    async def start(self) -> None:
        if hasattr(self.engine, "start"):
            await self.engine.start()
        if self.adapter:
            await self.engine.load_adapter(*self.adapter)

    async def solve(self, problems: list[Any], params: SamplingParams, adapter: str) -> list[list[PathResult]]:
        prompts = [cot_messages(p.question) for p in problems]
        completions = await self.engine.generate(prompts, params, adapter or None)
        results = []
        for problem, samples in zip(problems, completions):
            kind = DatasetKind(problem.kind)
            row = []
            for c in samples:
                verdict = await self.verifier.verify(VerifyItem(kind, problem.gold_answer, c.text))
                row.append(PathResult(c.text, verdict.extracted_answer or (extract_answer(c.text, kind).answer or ""),
                                      verdict.correct, verdict.model_dump(mode="json"), c.prompt_tokens,
                                      c.completion_tokens))
            results.append(row)
        return results

    async def close(self) -> None:
        await self.engine.close()


class RemoteReasoner:
    """The reasoner service (`lema serve reasoner`) over gRPC; it verifies the paths itself."""

    def __init__(self, address: str, timeout_s: float):
        from lema.v1 import reasoner_pb2_grpc

        self.channel = open_aio_channel(address)
        self.stub = reasoner_pb2_grpc.ReasonerStub(self.channel)
        self.timeout_s = timeout_s
        self.model_id = address

    async def start(self) -> None:
        from lema.v1 import reasoner_pb2

        models = await self.stub.ListModels(reasoner_pb2.ListModelsRequest(), timeout=30)
        self.model_id = models.base_model

    async def solve(self, problems: list[Any], params: SamplingParams, adapter: str) -> list[list[PathResult]]:
        from lema.v1 import common_pb2 as pb
        from lema.v1 import reasoner_pb2

        request = reasoner_pb2.SolveRequest(
            problems=[pb.Problem(id=p.id, kind=KIND_TO_PB[DatasetKind(p.kind)], question=p.question,
                                 gold_answer=p.gold_answer) for p in problems],
            sampling=pb.SamplingParams(n=params.n, temperature=params.temperature, top_p=params.top_p,
                                       max_tokens=params.max_tokens, seed=params.seed),
            adapter=adapter, verify=True,
        )
        results: list[list[PathResult]] = [[] for _ in problems]
        async for response in self.stub.Solve(request, timeout=self.timeout_s):
            path = response.path
            verdict = verdict_from_pb(path.verdict)
            results[response.problem_index].append(PathResult(
                path.text, path.extracted_answer, verdict.correct, verdict.model_dump(mode="json"),
                path.usage.prompt_tokens, path.usage.completion_tokens))
        return results

    async def close(self) -> None:
        await self.channel.close()



def open_reasoner(target: str | None, *, model: str, engine: str, verifier: Verifier,
                  adapter: tuple[str, str] | None = None, timeout_s: float = 600.0) -> Reasoner:
    """The reasoner at `target` (a gRPC address), or `model` on `engine` in this process for None or "local"."""
    if target and target.strip() != LOCAL:
        return RemoteReasoner(target.strip(), timeout_s)
    return LocalReasoner(model, engine, verifier, adapter)
