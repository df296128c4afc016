"""The builder that story families use to write a question and its program side by side.

A story keeps a running quantity (`run`) that each event transforms with one or two operations, so every
intermediate result feeds a later step. Number pickers respect `Limits`, which keep the arithmetic small
enough for lema-tiny to learn (a from-scratch model's bottleneck was big-number arithmetic: docs/development.md, 'The CPU stack').
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from lema.core.synthetic.program import Operand, ProgramError, Step, apply_op
from lema.core.synthetic.vocab import NAMES

MARKERS = ("Then", "Next,", "After that,", "Later,", "Soon after,", "At the end,")


class Reject(Exception):
    """The event (or problem) cannot be built with the numbers at hand; the caller tries another."""


@dataclass(frozen=True)
class Limits:
    max_value: int = 20  # every number in a question and every intermediate result (measured: see RESULTS.md)
    max_small_factor: int = 10  # the smaller factor of a product, and every divisor
    max_big_factor: int = 25  # the larger factor of a product


@dataclass(frozen=True)
class Person:
    name: str
    subj: str  # she / he
    obj: str  # her / him
    poss: str  # her / his

    @property
    def Subj(self) -> str:  # noqa: N802 - sentence-initial pronoun
        return self.subj.capitalize()

    @property
    def Poss(self) -> str:  # noqa: N802
        return self.poss.capitalize()


def make_person(name: str, gender: str) -> Person:
    return Person(name, "she", "her", "her") if gender == "f" else Person(name, "he", "him", "his")


@dataclass
class Story:
    rng: random.Random
    n_steps: int
    limits: Limits
    person: Person = field(init=False)
    sentences: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    run: Operand | None = None
    question: str | None = None
    vars: dict = field(default_factory=dict)  # family-specific wording (objects, units, people)
    used_names: set[str] = field(default_factory=set)
    uses: dict[str, int] = field(default_factory=dict)  # how often each event ran (events have a cap)

    def __post_init__(self) -> None:
        self.person = self.new_person()

    # --- text and operations -------------------------------------------------------------------------
    @property
    def remaining(self) -> int:
        return self.n_steps - len(self.steps)

    def say(self, clause: str, marked: bool = True) -> str:
        """Add a sentence (given without its period) to the question; returns it for the step text.

        Event sentences get the next sequence marker ("Then ...", "Next, ...", ...), always in the same
        order, so the step that uses a sentence can find it by its marker (a one-hop look-up) instead of
        counting sentences. Openings and facts ("One yard is 3 feet") are unmarked.
        """
        if marked:
            n_marked = self.vars.get("_marked", 0)
            if n_marked >= len(MARKERS):
                raise Reject("too many sentences")
            self.vars["_marked"] = n_marked + 1
            clause = f"{MARKERS[n_marked]} {clause[0].lower()}{clause[1:]}"
        self.sentences.append(clause + ".")
        return clause

    def op(self, op: str, a: Operand | int, b: Operand | int, text: str, unit: str = "") -> Operand:
        """Record one step; its sentence is `text`, then the equation, then an optional unit word."""
        a, b = (x if isinstance(x, Operand) else Operand(x) for x in (a, b))
        try:
            result = apply_op(op, a.value, b.value)
        except ProgramError as exc:
            raise Reject(str(exc)) from exc
        if result > self.limits.max_value or (op in "-/" and result == 0):
            raise Reject(f"result {result} out of range")
        tail = f" {unit}" if unit else ""
        self.steps.append(Step(op, (a, b), result, f"{text} {a.value} {op} {b.value} = {result}{tail}."))
        return Operand(result, len(self.steps))

    def snapshot(self) -> tuple:
        return (len(self.sentences), len(self.steps), self.run, self.question, dict(self.vars),
                set(self.used_names), dict(self.uses))

    def restore(self, snap: tuple) -> None:
        n_sent, n_steps, self.run, self.question, self.vars, self.used_names, self.uses = snap
        del self.sentences[n_sent:], self.steps[n_steps:]

    # --- random choices --------------------------------------------------------------------------------
    def choice(self, options):
        return self.rng.choice(options)

    def fresh(self, key: str, options: list[str]) -> str:
        """A word not used yet in this story for `key` (so repeated events read differently)."""
        used = self.vars.get(key, ())
        left = [o for o in options if o not in used]
        if not left:
            raise Reject(f"no fresh {key}")
        word = self.rng.choice(left)
        self.vars[key] = (*used, word)
        return word

    def new_person(self) -> Person:
        name, gender = self.rng.choice([n for n in NAMES if n[0] not in self.used_names])
        self.used_names.add(name)
        return make_person(name, gender)

    def num(self, lo: int, hi: int) -> int:
        if lo > hi:
            raise Reject(f"empty range {lo}..{hi}")
        return self.rng.randint(lo, hi)

    def start(self, lo_frac: float, hi_frac: float) -> int:
        """A starting amount between two fractions of the largest allowed value."""
        top = self.limits.max_value
        return self.num(max(2, round(top * lo_frac)), max(3, round(top * hi_frac)))

    def part(self, frac: float) -> int:
        """A cap for an added amount, as a fraction of the largest allowed value."""
        return max(2, round(self.limits.max_value * frac))

    def addend(self, base: int, lo: int = 2, hi: int | None = None) -> int:
        """A number that can be added to `base` without leaving the range."""
        top = self.limits.max_value - base
        return self.num(lo, top if hi is None else min(hi, top))

    def subtrahend(self, base: int, lo: int = 1) -> int:
        """A number smaller than `base` (results stay positive)."""
        return self.num(lo, base - 1)

    def factor_for(self, base: int, hi: int | None = None) -> int:
        """A multiplier k >= 2 with base * k inside the limits."""
        lim = self.limits
        if base <= lim.max_small_factor:
            top = lim.max_big_factor
        elif base <= lim.max_big_factor:
            top = lim.max_small_factor
        else:
            raise Reject(f"{base} is too big to multiply")
        top = min(top, lim.max_value // base, hi or top)
        return self.num(2, top)

    def product_pair(self, small_hi: int | None = None, big_hi: int | None = None) -> tuple[int, int]:
        """Two factors (count, size) for "n things of m each", product inside the limits."""
        lim = self.limits
        small = self.num(2, min(lim.max_small_factor, small_hi or lim.max_small_factor))
        big = self.num(2, min(lim.max_big_factor, lim.max_value // small, big_hi or lim.max_big_factor))
        return (small, big) if self.rng.random() < 0.5 else (big, small)

    def divisor_of(self, base: int, lo: int = 2) -> int:
        """A divisor k of `base` with a quotient of at least 2."""
        options = [k for k in range(lo, self.limits.max_small_factor + 1) if base % k == 0 and base // k >= 2]
        if not options:
            raise Reject(f"{base} has no small divisor")
        return self.rng.choice(options)
