"""A synthetic problem's program: the ordered arithmetic operations that solve it.

Step k of a gold solution is exactly operation k of the program, so a solution can be checked step by
step against it (see `check.py`). Operands record where they come from: a number stated in the question
(`step is None`) or the result of an earlier step (`step` = its 1-based index).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from lema.core.errors import InvalidInput

OPS = ("+", "-", "*", "/")


class ProgramError(InvalidInput):
    """An operation that does not give an exact non-negative integer, or a dangling step reference."""


def apply_op(op: str, a: int, b: int) -> int:
    """Apply one operation, insisting on exact non-negative integer results."""
    if op == "+":
        return a + b
    if op == "-":
        if b > a:
            raise ProgramError(f"{a} - {b} is negative")
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        if b == 0 or a % b:
            raise ProgramError(f"{a} / {b} is not an exact division")
        return a // b
    raise ProgramError(f"unknown operation {op!r}")


@dataclass(frozen=True)
class Operand:
    value: int
    step: int | None = None  # None: stated in the question; k: the result of step k (1-based)

    @property
    def from_question(self) -> bool:
        return self.step is None


@dataclass(frozen=True)
class Step:
    op: str
    operands: tuple[Operand, Operand]
    result: int
    description: str  # the gold step sentence, ending with the equation "a op b = result"

    @property
    def equation(self) -> str:
        a, b = self.operands
        return f"{a.value} {self.op} {b.value} = {self.result}"


@dataclass(frozen=True)
class Program:
    steps: tuple[Step, ...] = field(default_factory=tuple)

    @property
    def answer(self) -> int:
        return self.steps[-1].result

    def __len__(self) -> int:
        return len(self.steps)

    def execute(self) -> int:
        """Recompute every step from the question's numbers and earlier results; return the final result.

        Raises ProgramError if an operation is inexact or negative, a reference points forward, or a
        stored result disagrees with the recomputation.
        """
        results: list[int] = []
        for k, step in enumerate(self.steps, start=1):
            values = []
            for operand in step.operands:
                if operand.step is None:
                    values.append(operand.value)
                elif 1 <= operand.step < k:
                    values.append(results[operand.step - 1])
                else:
                    raise ProgramError(f"step {k} refers to step {operand.step}")
            result = apply_op(step.op, *values)
            if result != step.result:
                raise ProgramError(f"step {k}: {step.equation} recomputes to {result}")
            results.append(result)
        if not results:
            raise ProgramError("empty program")
        return results[-1]

    def question_numbers(self) -> list[int]:
        """The numbers taken from the question, in order of use."""
        return [o.value for s in self.steps for o in s.operands if o.from_question]

    def canonical(self) -> str:
        """The program's mathematical content (no wording), used to split train/test by construction."""
        parts = []
        for s in self.steps:
            a, b = (f"q{o.value}" if o.from_question else f"s{o.step}" for o in s.operands)
            parts.append(f"{a}{s.op}{b}")
        return ";".join(parts)

    def to_dict(self) -> dict:
        return {"steps": [asdict(s) for s in self.steps]}

    @classmethod
    def from_dict(cls, data: dict) -> Program:
        steps = []
        for s in data["steps"]:
            a, b = (Operand(value=int(o["value"]), step=o.get("step")) for o in s["operands"])
            steps.append(Step(op=s["op"], operands=(a, b), result=int(s["result"]), description=s["description"]))
        return cls(steps=tuple(steps))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Program:
        """ValueError for anything that is not a program, a document nested past the parser's depth included (a
        RecursionError there failed a whole AddProblems batch and a Correct call with UNKNOWN)."""
        try:
            return cls.from_dict(json.loads(text))
        except RecursionError:
            raise ValueError("the program JSON is nested too deeply") from None
