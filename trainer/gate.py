"""The promotion gate's rule: is a candidate adapter not worse than a reference (what serves now, the base model),
with confidence, on the same validation problems?

Comparing two accuracies as point estimates let one problem in fifty decide what serves (issue 33: a CoT-only
adapter at 3/50 against the base model's 2/50 was promoted, then scored 0/10 against 2/10 on test). The gate reads
per-problem outcomes instead (`Outcomes`: problem ids and right/wrong) and, for every reference, pairs the two on
the problems both answered:

1. **too small to decide**: the smallest true difference this comparison detects with 80% power (`mde_80`, from the
   measured discordance: `lema.trainer.stats.paired_power`) is larger than `margin`: the set cannot tell a
   margin-sized loss from noise, so it is refused, with the problems it would need;
2. **promote** when the lower end of the paired 95% bootstrap interval of (candidate − reference) is above
   `-margin` and the mean difference is at least 0 (`lema.trainer.stats.paired_bootstrap`);
3. otherwise **not shown non-inferior**.

An adapter chosen among others (a checkpoint, the best of several candidates) on the very problems it is gated on
is refused: the choice favours whichever was luckiest there (eval.gate_problems keeps the gate's problems apart).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lema.core.errors import InvalidInput
from lema.trainer.stats import Z_80, Z_975, paired_bootstrap, paired_power

if TYPE_CHECKING:
    from lema.trainer.evaluate import EvalResult

DEFAULT_MARGIN = 0.01  # one accuracy point
# With k of n problems answered differently, the measured variance of the difference is about k/n; with k near 0
# that says the two agree on these problems, not that they could not differ on others. The power check uses at
# least 3/n (the rule of three: the 95% upper bound on a rate of which none was seen), so a few agreeing problems
# never look decisive.
RULE_OF_THREE = 3.0

PROMOTE = "promote"
TOO_SMALL = "refuse: too small to decide"
NOT_SHOWN = "refuse: not shown non-inferior"
NO_OUTCOMES = "refuse: no paired outcomes"
CHOSEN_ON = "refuse: chosen on its gate problems"


class GateError(InvalidInput):
    """Outcomes that cannot be used (the message names the field)."""


@dataclass(frozen=True)
class Outcomes:
    """Right or wrong per problem, by problem id: what one model answered on the gate's problems."""

    ids: tuple[str, ...]
    correct: tuple[bool, ...]
    chosen_on: bool = False  # a choice among candidates (checkpoints, adapters) was made on these same problems

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.correct):
            raise GateError(f"correct: {len(self.correct)} outcomes for {len(self.ids)} ids")
        if len(set(self.ids)) != len(self.ids):
            raise GateError("ids: a problem id appears twice")

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / self.n if self.n else 0.0

    @classmethod
    def of(cls, result: EvalResult, chosen_on: bool = False) -> Outcomes:
        if len(result.ids) != len(result.outcomes):
            raise GateError("ids: the evaluation kept no problem ids (evaluate it with lema's evaluator)")
        return cls(tuple(result.ids), tuple(bool(x) for x in result.outcomes), chosen_on)

    def to_json(self) -> dict:
        return {"split": "gate", "n": self.n, "accuracy": self.accuracy, "chosen_on": self.chosen_on,
                "ids": list(self.ids), "correct": [int(x) for x in self.correct]}

    @classmethod
    def from_json(cls, data: object) -> Outcomes | None:
        """Outcomes as `to_json` writes them; None for an empty or missing record (an adapter registered without
        them). GateError names the field that is wrong."""
        if not data:
            return None
        if not isinstance(data, dict):
            raise GateError("gate_outcomes: must be an object with ids and correct")
        ids, correct = data.get("ids"), data.get("correct")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise GateError("gate_outcomes.ids: must be a list of problem ids")
        if not isinstance(correct, list) or not all(c in (0, 1, True, False) for c in correct):
            raise GateError("gate_outcomes.correct: must be a list of 0/1")
        return cls(tuple(ids), tuple(bool(c) for c in correct), bool(data.get("chosen_on", False)))

    def paired_with(self, other: Outcomes) -> tuple[list[bool], list[bool]]:
        """(self, other) on the problems both answered, in self's order."""
        theirs = dict(zip(other.ids, other.correct))
        pairs = [(mine, theirs[i]) for i, mine in zip(self.ids, self.correct) if i in theirs]
        return [a for a, _ in pairs], [b for _, b in pairs]


@dataclass(frozen=True)
class Check:
    """The candidate against one reference. Differences are accuracy fractions (0.01 = one point)."""

    candidate: str
    reference: str
    n: int
    diff: float | None
    ci95: tuple[float, float] | None
    mde_80: float | None
    margin: float
    decision: str
    problems_needed: int | None = None
    discordance: float | None = None

    @property
    def passed(self) -> bool:
        return self.decision == PROMOTE

    def to_json(self) -> dict:
        return {"candidate": self.candidate, "reference": self.reference, "n": self.n, "diff": self.diff,
                "ci95": list(self.ci95) if self.ci95 else None, "mde_80": self.mde_80, "margin": self.margin,
                "decision": self.decision, "problems_needed": self.problems_needed,
                "discordance": self.discordance}

    def sentence(self) -> str:
        """The decision with its numbers, in points."""
        head = f"{self.candidate} − {self.reference}"
        if self.decision == CHOSEN_ON:
            return (f"{head}: {self.decision} (a choice among checkpoints or candidates was made on these {self.n} "
                    "problems: gate on others, eval.gate_problems)")
        if self.diff is None:
            return (f"{head}: {self.decision} (per-problem outcomes on problems both answered are needed; "
                    f"{self.n} in common)")
        low, high = self.ci95
        numbers = (f"{head} on {self.n} problems: {100 * self.diff:+.1f} pts [{100 * low:+.1f}, {100 * high:+.1f}], "
                   f"mde_80 {100 * self.mde_80:.1f} pts, margin {100 * self.margin:.1f} pts")
        if self.decision == TOO_SMALL:
            needed = f"about {self.problems_needed:,} problems would be needed" if self.problems_needed else \
                "more problems would be needed"
            return (f"{numbers}: {self.decision} (the set sees only differences of {100 * self.mde_80:.1f} pts or "
                    f"more, discordance {100 * self.discordance:.0f}%; {needed})")
        if self.decision == NOT_SHOWN:
            return (f"{numbers}: {self.decision} (promotion needs the interval's lower end above "
                    f"{-100 * self.margin:.1f} pts and the mean difference at least 0)")
        return f"{numbers}: {self.decision}"


@dataclass
class Gate:
    """Every check of one promotion: it passes when every reference's check does."""

    checks: list[Check]
    forced: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def deciding(self) -> Check:
        """The check that refused (the first), else the closest call (the lowest interval)."""
        failed = [c for c in self.checks if not c.passed]
        if failed:
            return failed[0]
        return min(self.checks, key=lambda c: c.ci95[0] if c.ci95 else math.inf)

    @property
    def decision(self) -> str:
        return self.deciding.decision

    def to_json(self) -> dict:
        """`{candidate, reference, n, diff, ci95, mde_80, margin, decision}` of the deciding check, whether the
        promotion was forced over it, and every check."""
        return {**self.deciding.to_json(), "forced": self.forced, "checks": [c.to_json() for c in self.checks],
                **({"notes": self.notes} if self.notes else {})}

    def summary(self) -> str:
        lines = [c.sentence() for c in self.checks] + self.notes
        if self.forced and not self.passed:
            lines.append("forced: promoted over the gate's refusal")
        return "; ".join(lines)


def check(candidate_name: str, candidate: Outcomes | None, reference_name: str, reference: Outcomes | None,
          margin: float = DEFAULT_MARGIN) -> Check:
    """The rule for one reference (the module's docstring)."""
    if not 0 < margin < 1:
        raise GateError(f"margin: must lie in (0, 1) as an accuracy fraction (got {margin})")

    def refused(decision: str, n: int = 0) -> Check:
        return Check(candidate_name, reference_name, n, None, None, None, margin, decision)

    if candidate is None or reference is None:
        return refused(NO_OUTCOMES)
    if candidate.chosen_on:
        return refused(CHOSEN_ON, candidate.n)
    mine, theirs = candidate.paired_with(reference)
    n = len(mine)
    if n < 2:
        return refused(NO_OUTCOMES, n)
    diff = paired_bootstrap([mine], [theirs])
    power = paired_power([mine], [theirs])
    floor = RULE_OF_THREE / n  # the per-problem variance the power check uses at least (RULE_OF_THREE)
    mde = max(power.mde_80, (Z_975 + Z_80) * math.sqrt(floor / n))
    if mde > margin:
        needed = power.problems_for(margin)
        at_floor = math.ceil((Z_975 + Z_80) * math.sqrt(RULE_OF_THREE) / margin)
        decision, problems_needed = TOO_SMALL, max(needed or 0, at_floor)
    elif diff.mean_diff >= 0 and diff.ci95[0] > -margin:
        decision, problems_needed = PROMOTE, None
    else:
        decision, problems_needed = NOT_SHOWN, None
    return Check(candidate_name, reference_name, n, diff.mean_diff, diff.ci95, mde, margin, decision,
                 problems_needed, power.discordance)


def gate(candidate_name: str, candidate: Outcomes | None, references: Sequence[tuple[str, Outcomes | None]],
         margin: float = DEFAULT_MARGIN, forced: bool = False, notes: Sequence[str] = ()) -> Gate:
    """The candidate against every reference (what serves now, the base model)."""
    if not references:
        raise GateError("references: the gate needs at least one (the base model)")
    return Gate([check(candidate_name, candidate, name, outcomes, margin) for name, outcomes in references],
                forced, list(notes))
