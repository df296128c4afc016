"""Generate synthetic problems, deterministically from a seed, with train/test separated by construction.

Splits: every problem has a canonical key (its family plus its program's mathematical content: operations,
the question's numbers and which earlier results each step uses; no names or wording). A stable hash
(sha256) of that key puts 10% of all possible problems in "test" and the rest in "train", so a test
problem can never appear in training under any seed, even reworded. The "garden" family is held out of
both and only appears with split="ood".

"validation" is carved out of the training distribution by a second, independent slice of the same hash: 10%
of the non-test keys. Fine-tuning data ("train": collection sources, exports) never holds a validation problem,
so checkpoint selection and the promotion gate can be measured on training-distribution problems that no adapter
trained on, and the reported test problems stay untouched until the final table. "pretrain" is train and
validation together: lema-tiny's pretraining corpus predates the validation slice, and generating "pretrain"
reproduces the exact problem stream the committed model was trained on.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Literal

from lema.core.formats import render_solution
from lema.core.synthetic.families import FAMILIES, OOD_FAMILIES, TRAIN_FAMILIES, Family
from lema.core.synthetic.program import Program
from lema.core.synthetic.story import Limits, Reject, Story

Split = Literal["train", "validation", "test", "ood", "pretrain"]
TEST_PERCENT = 10
VALIDATION_PERCENT = 10  # of the non-test keys
DEFAULT_LIMITS = Limits()
# Training problems (collection sources, lema-tiny's pretraining) have 2-6 steps; the "hard" evaluation split asks
# for more steps than any of them (HARD_STEPS), the regime where learning from mistakes paid in the literature
# (Physics of Language Models 2.2: gains concentrate on problems longer than any seen in training).
TRAIN_STEPS = (2, 6)
HARD_STEPS = (7, 8)
MAX_STEPS = HARD_STEPS[1]


@dataclass(frozen=True)
class SyntheticProblem:
    id: str
    family: str
    n_steps: int
    question: str
    answer: str  # the final result as a string of an integer
    program: Program = field(repr=False)
    gold_solution: str = field(repr=False)
    split: str = "train"

    def to_dict(self) -> dict:
        return {"id": self.id, "family": self.family, "n_steps": self.n_steps, "question": self.question,
                "answer": self.answer, "program": self.program.to_dict(), "gold_solution": self.gold_solution,
                "split": self.split}

    @classmethod
    def from_dict(cls, d: dict) -> SyntheticProblem:
        return cls(id=d["id"], family=d["family"], n_steps=int(d["n_steps"]), question=d["question"],
                   answer=str(d["answer"]), program=Program.from_dict(d["program"]),
                   gold_solution=d["gold_solution"], split=d.get("split", "train"))


def canonical_key(family: str, program: Program) -> str:
    return f"{family}|{program.canonical()}"


def split_of(family: str, program: Program) -> Split:
    """Which split a problem belongs to, from its content alone."""
    if family in {f.name for f in OOD_FAMILIES}:
        return "ood"
    digest = hashlib.sha256(canonical_key(family, program).encode()).digest()
    if int.from_bytes(digest[:4], "big") % 100 < TEST_PERCENT:
        return "test"
    return "validation" if int.from_bytes(digest[4:8], "big") % 100 < VALIDATION_PERCENT else "train"


def _in_split(family: str, program: Program, split: Split) -> bool:
    actual = split_of(family, program)
    return actual in ("train", "validation") if split == "pretrain" else actual == split


def build_problem(family: Family, rng: random.Random, n_steps: int, limits: Limits = DEFAULT_LIMITS,
                  max_tries: int = 200) -> tuple[str, Program]:
    """Write one question with exactly `n_steps` operations; returns (question, program)."""
    for _ in range(max_tries):
        story = Story(rng, n_steps, limits)
        try:
            family.setup(story)
            _run_events(story, family)
        except Reject:
            continue
        question = " ".join([*story.sentences, story.question or family.question(story)])
        program = Program(tuple(story.steps))
        program.execute()  # a family bug must fail loudly, never produce a wrong gold answer
        return question, program
    raise RuntimeError(f"could not build a {n_steps}-step {family.name} problem")


def _run_events(story: Story, family: Family) -> None:
    openers = [e for e in family.openers if e.cost < story.n_steps]
    story.rng.choice(openers).fn(story)
    while story.remaining > 0:
        fits = [e for e in family.events if e.cost <= story.remaining and (not e.final or e.cost == story.remaining)
                and story.uses.get(e.fn.__name__, 0) < e.max_uses]
        story.rng.shuffle(fits)
        for event in fits:
            snap = story.snapshot()
            try:
                event.fn(story)
                story.uses[event.fn.__name__] = story.uses.get(event.fn.__name__, 0) + 1
                break
            except Reject:
                story.restore(snap)
        else:
            raise Reject("no event fits")
        if story.question is not None and story.remaining > 0:
            raise Reject("final event before the end")


def generate(n: int, seed: int = 0, split: Split = "train", steps: int | tuple[int, int] = (2, 6),
             families: list[str] | None = None, limits: Limits = DEFAULT_LIMITS,
             distinct: bool = True) -> list[SyntheticProblem]:
    """`n` problems of one split; step counts uniform in `steps` (inclusive) or exactly `steps`.

    With `distinct` (the default) no two problems share a canonical key; training data may turn it off
    (the same arithmetic reworded is still useful there, and small number ranges have few 2-step keys).
    """
    allowed = OOD_FAMILIES if split == "ood" else TRAIN_FAMILIES
    if families is not None:
        unknown = [f for f in families if f not in {a.name for a in allowed}]
        if unknown:
            raise ValueError(f"families {unknown} are not in split {split!r}")
        allowed = tuple(FAMILIES[f] for f in families)
    lo, hi = (steps, steps) if isinstance(steps, int) else steps
    if not 2 <= lo <= hi <= MAX_STEPS:
        raise ValueError(f"steps must lie in 2..{MAX_STEPS}")

    # "pretrain" draws the same stream as "train" did before the validation slice existed (reproducibility).
    stream = "train" if split == "pretrain" else split
    rng = random.Random(f"lema-synthetic:{seed}:{stream}")
    seen: set[str] = set()
    problems: list[SyntheticProblem] = []
    misses = 0
    while len(problems) < n:
        family = rng.choice(allowed)
        n_steps = rng.randint(lo, hi)
        try:
            question, program = build_problem(family, rng, n_steps, limits)
        except RuntimeError:
            # Within the training step counts every family always fits; beyond them (the hard split) a family's
            # events sometimes run out under the number limits: draw again (a miss, bounded below).
            if n_steps <= TRAIN_STEPS[1]:
                raise
            misses += 1
            if misses > 200 * n + 10_000:
                raise RuntimeError(f"cannot build {n} {split} problems of {lo}-{hi} steps") from None
            continue
        key = canonical_key(family.name, program)
        if not _in_split(family.name, program, split) or (distinct and key in seen):
            misses += 1
            if misses > 200 * n + 10_000:
                raise RuntimeError(f"cannot find {n} distinct {split} problems")
            continue
        seen.add(key)
        answer = str(program.answer)
        gold = render_solution([s.description for s in program.steps], answer)
        pid = f"syn-{stream}-{hashlib.sha256((key + question).encode()).hexdigest()[:12]}"
        problems.append(SyntheticProblem(pid, family.name, n_steps, question, answer, program, gold, stream))
    return problems
