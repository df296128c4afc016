"""The corrector's boundary: wire messages in, typed values out, or InvalidInput naming the field (the gRPC
interceptor answers INVALID_ARGUMENT with the message)."""

from __future__ import annotations

from lema.core.config import CorrectorConfig
from lema.core.errors import InvalidInput
from lema.core.formats import split_steps
from lema.core.proto_convert import kind_from_pb
from lema.core.validation import check_batch
from lema.services.corrector.upstreams import CorrectionInput
from lema.v1 import corrector_pb2 as cpb

_KINDS = "gsm8k (1), math (2) or synthetic (3)"


def correction_job(request: cpb.CorrectRequest, config: CorrectorConfig, where: str = "") -> CorrectionInput:
    problem = request.problem
    kind = kind_from_pb(problem.kind)
    if kind is None:
        raise InvalidInput(f"{where}problem.kind must be {_KINDS}; got {problem.kind}")
    if not problem.question.strip():
        raise InvalidInput(f"{where}problem.question is empty")
    if len(problem.question) > config.max_question_chars:
        raise InvalidInput(f"{where}problem.question has {len(problem.question)} characters; the limit is "
                           f"{config.max_question_chars}")
    if not request.wrong_solution.strip():
        raise InvalidInput(f"{where}wrong_solution is empty")
    if len(request.wrong_solution) > config.max_solution_chars:
        raise InvalidInput(f"{where}wrong_solution has {len(request.wrong_solution)} characters; the limit is "
                           f"{config.max_solution_chars}")
    if not split_steps(request.wrong_solution):
        raise InvalidInput(f"{where}wrong_solution has no steps")
    if request.max_candidates < 0 or request.max_candidates > 16:
        raise InvalidInput(f"{where}max_candidates must be in 0..16 (got {request.max_candidates})")
    temperature = request.sampling.temperature if request.HasField("sampling") else None
    if temperature is not None and not 0 <= temperature <= 2:
        raise InvalidInput(f"{where}sampling.temperature must be in 0..2 (got {temperature})")
    return CorrectionInput(kind, problem.question, request.wrong_solution, problem.gold_answer, problem.program_json,
                           temperature=temperature)


def batch_jobs(request: cpb.CorrectBatchRequest, config: CorrectorConfig) -> list[CorrectionInput]:
    """Every item, validated before any work starts: one bad item refuses the batch, naming its index."""
    check_batch(request.items, config.max_batch_items)
    return [correction_job(item, config, where=f"items[{i}]: ") for i, item in enumerate(request.items)]


def augmentation_job(request: cpb.AugmentRequest) -> tuple[CorrectionInput, int]:
    problem = request.problem
    kind = kind_from_pb(problem.kind)
    if kind is None:
        raise InvalidInput(f"problem.kind must be {_KINDS}")
    if not problem.question.strip() or not problem.gold_answer.strip():
        raise InvalidInput("problem.question and problem.gold_answer are required for augmentation")
    if not 1 <= request.num_solutions <= 16:
        raise InvalidInput(f"num_solutions must be in 1..16 (got {request.num_solutions})")
    return CorrectionInput(kind, problem.question, "", problem.gold_answer, problem.program_json), request.num_solutions
