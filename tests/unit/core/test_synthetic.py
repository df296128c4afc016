"""The synthetic problem generator: determinism, exact programs, splits, gold solutions, step checking."""

from __future__ import annotations

import re

import pytest

from lema.core.formats import split_steps
from lema.core.synthetic import (
    OOD_FAMILIES,
    TRAIN_FAMILIES,
    Limits,
    Program,
    ProgramError,
    SyntheticProblem,
    canonical_key,
    check_solution_steps,
    generate,
    split_of,
)
from lema.core.synthetic.program import Operand, Step

OOD_NAMES = {f.name for f in OOD_FAMILIES}


@pytest.fixture(scope="module")
def train() -> list[SyntheticProblem]:
    return generate(1500, seed=3, split="train")


@pytest.fixture(scope="module")
def test_split() -> list[SyntheticProblem]:
    return generate(400, seed=3, split="test")


def test_at_least_six_training_families_and_one_ood() -> None:
    assert len(TRAIN_FAMILIES) >= 6 and len(OOD_FAMILIES) == 1
    assert not OOD_NAMES & {f.name for f in TRAIN_FAMILIES}


def test_deterministic_from_seed() -> None:
    a, b = generate(50, seed=11), generate(50, seed=11)
    assert [p.to_dict() for p in a] == [p.to_dict() for p in b]
    assert [p.question for p in generate(50, seed=12)] != [p.question for p in a]


def test_programs_are_exact_small_and_consistent(train: list[SyntheticProblem]) -> None:
    for p in train:
        assert p.program.execute() == int(p.answer) == p.program.answer
        assert p.n_steps == len(p.program) and 2 <= p.n_steps <= 6
        for k, step in enumerate(p.program.steps, start=1):
            assert step.op in "+-*/"
            assert 0 < step.result <= Limits().max_value
            for o in step.operands:
                assert isinstance(o.value, int) and 0 < o.value <= Limits().max_value
                assert o.step is None or 1 <= o.step < k
                if o.from_question:
                    assert re.search(rf"\b{o.value}\b", p.question), (p.question, o.value)
        # Every intermediate result is used later: the chain has no dead ends.
        used = {o.step for s in p.program.steps for o in s.operands if o.step}
        assert used == set(range(1, p.n_steps))


def test_step_counts_and_families(train: list[SyntheticProblem]) -> None:
    assert {p.n_steps for p in train} == {2, 3, 4, 5, 6}
    assert {p.family for p in train} == {f.name for f in TRAIN_FAMILIES}
    for k in (2, 4, 6):
        assert {p.n_steps for p in generate(20, seed=1, steps=k)} == {k}
    assert {p.n_steps for p in generate(40, seed=1, steps=(3, 4))} == {3, 4}
    assert {p.family for p in generate(20, seed=1, families=["ages"])} == {"ages"}


def test_limits_scale_the_numbers() -> None:
    big = generate(300, seed=3, limits=Limits(max_value=100))
    values = [s.result for p in big for s in p.program.steps]
    assert max(values) <= 100 and max(values) > 50
    assert all(p.program.execute() == int(p.answer) for p in big)


def test_variety(train: list[SyntheticProblem]) -> None:
    assert len({p.question for p in train}) == len(train)
    assert len({p.question.split()[0] for p in train}) > 20  # names and openings vary


def test_train_and_test_are_disjoint_by_construction(train, test_split) -> None:
    train_keys = {canonical_key(p.family, p.program) for p in train}
    test_keys = {canonical_key(p.family, p.program) for p in test_split}
    assert not train_keys & test_keys
    assert all(split_of(p.family, p.program) == "train" for p in train)
    assert all(split_of(p.family, p.program) == "test" for p in test_split)
    assert not {p.question for p in train} & {p.question for p in test_split}


def test_validation_is_carved_from_train_and_disjoint_from_train_and_test(train, test_split) -> None:
    validation = generate(300, seed=3, split="validation")
    keys = {canonical_key(p.family, p.program) for p in validation}
    assert all(split_of(p.family, p.program) == "validation" for p in validation)
    assert not keys & {canonical_key(p.family, p.program) for p in train}
    assert not keys & {canonical_key(p.family, p.program) for p in test_split}
    # "pretrain" is train + validation, drawn from the stream "train" drew before validation existed
    pretrain = generate(400, seed=3, split="pretrain")
    kinds = {split_of(p.family, p.program) for p in pretrain}
    assert kinds == {"train", "validation"}
    only_train = [p for p in pretrain if split_of(p.family, p.program) == "train"]
    assert [p.question for p in only_train] == [p.question for p in train[: len(only_train)]]


def test_ood_family_only_in_ood_split(train, test_split) -> None:
    assert not OOD_NAMES & {p.family for p in train + test_split}
    ood = generate(50, seed=3, split="ood")
    assert {p.family for p in ood} == OOD_NAMES
    with pytest.raises(ValueError):
        generate(5, seed=0, split="train", families=sorted(OOD_NAMES))


def test_gold_solutions_parse_and_check(train: list[SyntheticProblem]) -> None:
    for p in train[:500]:
        steps = split_steps(p.gold_solution)
        assert len(steps) == p.n_steps
        for step, op in zip(steps, p.program.steps):
            assert step.rstrip(".").split(" = ")[0].endswith(f"{op.operands[0].value} {op.op} {op.operands[1].value}")
        assert p.gold_solution.endswith(f"The answer is {p.answer}.")
        assert check_solution_steps(p, p.gold_solution) is None


def _corrupt_result(solution: str, k: int, delta: int = 1) -> str:
    """Change the result of step k (and nothing else)."""
    lines = solution.splitlines()
    line = lines[k - 1]
    m = list(re.finditer(r"= (\d+)", line))[-1]
    lines[k - 1] = line[:m.start(1)] + str(int(m.group(1)) + delta) + line[m.end(1):]
    return "\n".join(lines)


def test_check_finds_the_first_wrong_step(train: list[SyntheticProblem]) -> None:
    p = next(p for p in train if p.n_steps >= 4)
    assert check_solution_steps(p, _corrupt_result(p.gold_solution, 3)) == 3
    assert check_solution_steps(p, _corrupt_result(p.gold_solution, 1)) == 1
    # A truncated solution is wrong at its first missing step.
    lines = p.gold_solution.splitlines()
    assert check_solution_steps(p, "\n".join(lines[:2])) == 3
    # Right steps, wrong final answer: the answer line (n + 1) is the mistake.
    wrong_answer = "\n".join([*lines[:-1], f"The answer is {int(p.answer) + 1}."])
    assert check_solution_steps(p, wrong_answer) == p.n_steps + 1
    # A wrong operand with self-consistent arithmetic is still wrong.
    step1 = p.program.steps[0]
    a, b = (o.value for o in step1.operands)
    lines[0] = f"Step 1: So {a + 1} {step1.op} {b} = 999."
    assert check_solution_steps(p, "\n".join(lines)) == 1


def test_check_accepts_commuted_operands_for_plus_and_times(train: list[SyntheticProblem]) -> None:
    p = next(p for p in train if p.program.steps[0].op in "+*")
    s = p.program.steps[0]
    a, b = (o.value for o in s.operands)
    lines = p.gold_solution.splitlines()
    lines[0] = f"Step 1: We get {b} {s.op} {a} = {s.result}."
    assert check_solution_steps(p, "\n".join(lines)) is None


def test_program_json_round_trip(train: list[SyntheticProblem]) -> None:
    for p in train[:100]:
        assert Program.from_json(p.program.to_json()) == p.program
        assert SyntheticProblem.from_dict(p.to_dict()) == p


def test_execute_rejects_bad_programs() -> None:
    bad_div = Program((Step("/", (Operand(7), Operand(2)), 3, "7 / 2 = 3."),))
    with pytest.raises(ProgramError):
        bad_div.execute()
    forward_ref = Program((Step("+", (Operand(1), Operand(2, step=1)), 3, "1 + 2 = 3."),))
    with pytest.raises(ProgramError):
        forward_ref.execute()


def test_wrong_solutions_err_first_at_the_corrupted_step_and_get_a_correct_correction(train) -> None:
    import random
    from collections import Counter

    from lema.core.answers import DatasetKind
    from lema.core.correction_parser import parse_correction
    from lema.core.formats import full_corrected_solution
    from lema.core.reference_corrector import correct
    from lema.core.synthetic.errors import ERROR_KINDS, wrong_solution

    rng = random.Random(0)
    kinds: Counter = Counter()
    for problem in train[:600]:
        drawn = wrong_solution(problem, rng)
        if drawn is None:
            continue
        text, step, kind = drawn
        kinds[kind] += 1
        assert check_solution_steps(problem, text) == step  # the corrupted step is the first wrong one
        assert split_steps(text)[: step - 1] == split_steps(problem.gold_solution)[: step - 1]
        answer = re.search(r"The answer is (\d+)\.$", text)
        assert answer and answer.group(1) != problem.answer  # a real mistake: the verifier rejects it
        parsed = parse_correction(correct(problem, text).text, DatasetKind.SYNTHETIC)
        assert parsed.incorrect_step == step
        fixed = full_corrected_solution(text, parsed.incorrect_step, parsed.corrected_solution)
        assert check_solution_steps(problem, fixed) is None  # the reference correction makes it right
    assert set(kinds) == set(ERROR_KINDS), kinds  # every kind of mistake occurs
    assert sum(kinds.values()) >= 400  # most draws apply


def test_hard_split_has_more_steps_than_any_training_problem_and_keeps_the_split():
    from lema.core.synthetic.generate import HARD_STEPS, TRAIN_STEPS

    hard = generate(60, seed=5, split="test", steps=HARD_STEPS)
    assert {p.n_steps for p in hard} == set(range(HARD_STEPS[0], HARD_STEPS[1] + 1))
    assert min(p.n_steps for p in hard) > TRAIN_STEPS[1]
    assert all(split_of(p.family, p.program) == "test" for p in hard)
    assert all(len(split_steps(p.gold_solution)) == p.n_steps for p in hard)
    assert all(p.program.answer == int(p.answer) for p in hard)
    with pytest.raises(ValueError, match="steps must lie in 2..8"):
        generate(5, seed=5, split="test", steps=(7, 9))
