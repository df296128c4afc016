"""The reasoner's boundary: wire messages in, typed values out, or InvalidInput naming the field (the gRPC
interceptor answers INVALID_ARGUMENT with the message)."""

from __future__ import annotations

from lema.core.config import ReasonerConfig
from lema.core.engines import SamplingParams
from lema.core.errors import InvalidInput
from lema.core.proto_convert import kind_from_pb
from lema.core.validation import check_batch
from lema.v1 import common_pb2 as pb
from lema.v1 import reasoner_pb2 as rpb


def sampling(message: pb.SamplingParams, config: ReasonerConfig) -> SamplingParams:
    """This server's limits (samples, tokens), then the engine-wide bounds SamplingParams itself keeps."""
    if message.n <= 0:
        raise InvalidInput(f"sampling.n must be >= 1 (got {message.n})")
    if message.n > config.max_samples:
        raise InvalidInput(f"sampling.n is {message.n}; this server allows at most {config.max_samples} samples "
                           "per problem")
    if message.max_tokens < 0 or message.max_tokens > config.max_tokens_limit:
        raise InvalidInput(f"sampling.max_tokens must be in 1..{config.max_tokens_limit} (got {message.max_tokens})")
    try:
        return SamplingParams(n=message.n, temperature=message.temperature, top_p=message.top_p or 1.0,
                              max_tokens=message.max_tokens or config.default_max_tokens, stop=tuple(message.stop),
                              seed=message.seed if message.HasField("seed") else None)
    except ValueError as exc:  # temperature, top_p, stop strings, ...
        raise InvalidInput(f"sampling.{exc}") from None


def solve_request(request: rpb.SolveRequest, config: ReasonerConfig) -> tuple[list[pb.Problem], SamplingParams]:
    check_batch(request.problems, config.max_problems, "problems")
    for i, problem in enumerate(request.problems):
        if not problem.question.strip():
            raise InvalidInput(f"problems[{i}].question is empty")
        if len(problem.question) > config.max_question_chars:
            raise InvalidInput(f"problems[{i}].question has {len(problem.question)} characters; the limit is "
                               f"{config.max_question_chars}")
        if kind_from_pb(problem.kind) is None:
            raise InvalidInput(f"problems[{i}].kind must be gsm8k (1), math (2) or synthetic (3)")
        if request.verify and not problem.gold_answer.strip():
            raise InvalidInput(f"problems[{i}].gold_answer is empty but verify was requested")
    return list(request.problems), sampling(request.sampling, config)
