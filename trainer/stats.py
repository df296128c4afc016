"""Statistics for comparing models evaluated on the same problems: Wilson intervals for one accuracy, paired
bootstrap intervals for a difference (over problems, and over seeds when there are several), and the exact McNemar
test per seed.

Why paired: every arm answers the *same* held-out problems, so the difference of two accuracies has far less noise
than two independent intervals suggest (most problems are right or wrong for both). Why seeds: a fine-tuning run
has its own randomness (data order, LoRA init, dropout); one seed cannot tell a 3-point effect from that noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (well-behaved at small n and near 0 or 1)."""
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> tuple[float, int, int]:
    """Two-sided exact McNemar test on paired outcomes: (p-value, #a right and b wrong, #b right and a wrong).
    Under the null each discordant pair goes either way with probability 1/2 (a binomial test)."""
    if len(a) != len(b):
        raise ValueError("paired outcomes must have the same length")
    wins = sum(1 for x, y in zip(a, b) if x and not y)
    losses = sum(1 for x, y in zip(a, b) if y and not x)
    n = wins + losses
    if n == 0:
        return 1.0, 0, 0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail), wins, losses


BOOTSTRAP_CELLS = 4_000_000  # problem indices drawn at once by paired_bootstrap (32 MB)


@dataclass(frozen=True)
class PairedDiff:
    mean_diff: float  # accuracy(a) - accuracy(b), averaged over seeds
    ci95: tuple[float, float]


def paired_bootstrap(a: Sequence[Sequence[bool]], b: Sequence[Sequence[bool]], resamples: int = 10_000,
                     seed: int = 0) -> PairedDiff:
    """Mean paired difference a - b with a 95% percentile bootstrap interval.

    `a[s][i]` is whether arm a got problem i right with training seed s (the same problems for every seed). Each
    resample draws problems with replacement and, with several seeds, seeds with replacement too, so the interval
    holds both sources of noise."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2 or x.shape[1] == 0:
        raise ValueError("paired outcomes must be [seeds][problems] arrays of the same shape")
    diff = x - y  # seeds x problems
    n_seeds, n_problems = diff.shape
    rng = np.random.default_rng(seed)
    # Resampled in chunks of at most BOOTSTRAP_CELLS indices: 10,000 resamples of the gate's thousands of problems
    # at once took gigabytes. The generator yields the same draws chunked or not, so intervals are unchanged.
    per_seed = np.empty((resamples, n_seeds))  # resamples x seeds
    step = max(1, BOOTSTRAP_CELLS // n_problems)
    for start in range(0, resamples, step):
        problems = rng.integers(0, n_problems, size=(min(step, resamples - start), n_problems))
        per_seed[start:start + len(problems)] = np.stack([diff[s][problems].mean(axis=1) for s in range(n_seeds)],
                                                         axis=1)
    if n_seeds > 1:
        seeds = rng.integers(0, n_seeds, size=(resamples, n_seeds))
        stats = np.take_along_axis(per_seed, seeds, axis=1).mean(axis=1)
    else:
        stats = per_seed[:, 0]
    low, high = np.percentile(stats, [2.5, 97.5])
    return PairedDiff(float(diff.mean()), (float(low), float(high)))


Z_975 = 1.959963984540054  # two-sided alpha 0.05
Z_80 = 0.8416212335729143  # power 0.80


@dataclass(frozen=True)
class PairedPower:
    """How much a paired comparison of arms over the same problems and seeds can see.

    The pooled difference's variance has two parts: problem sampling (with the training noise that shows up per
    problem), Var_i(mean over seeds of a_si - b_si) / n, and the seed-to-seed spread of the per-seed difference beyond
    what problem sampling explains (a seed that moves every problem one way), divided by the seeds. `mde_80` is the
    smallest true difference a two-sided test at alpha 0.05 detects with 80% power at this design: (z_0.975 + z_0.8)
    x the standard error. With one seed the second part cannot be estimated and is taken as 0 (`seed_sd` None)."""

    discordance: float  # mean over seeds of the fraction of problems the two arms answer differently
    seed_sd: float | None  # standard deviation over seeds of the per-seed difference
    se: float  # standard error of the pooled mean difference
    mde_80: float
    problems: int
    seeds: int
    seed_excess_var: float  # seed-level variance beyond problem sampling (0 with one seed)
    per_problem_var: float  # Var_i of the per-problem mean difference

    def problems_for(self, effect: float) -> int | None:
        """Problems (at these seeds) for `mde_80` to reach `effect`; None when the seed part alone exceeds it (more
        seeds are needed, not more problems)."""
        room = (effect / (Z_975 + Z_80)) ** 2 - self.seed_excess_var / self.seeds
        if room <= 0:
            return None
        return math.ceil(self.per_problem_var / room)

    def to_json(self, effect: float = 0.02) -> dict:
        return {"discordance": self.discordance, "seed_sd": self.seed_sd, "se": self.se, "mde_80": self.mde_80,
                "problems": self.problems, "seeds": self.seeds,
                f"problems_for_mde_{round(100 * effect)}pts": self.problems_for(effect)}


def paired_power(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> PairedPower:
    """`PairedPower` of arm a against arm b from [seeds][problems] outcomes (booleans or scores)."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2 or x.shape[1] < 2:
        raise ValueError("paired outcomes must be [seeds][problems] arrays of the same shape, 2+ problems")
    diff = x - y
    n_seeds, n = diff.shape
    per_problem_var = float(diff.mean(axis=0).var(ddof=1))
    discordance = float((diff != 0).mean())
    if n_seeds > 1:
        per_seed = diff.mean(axis=1)
        seed_var = float(per_seed.var(ddof=1))
        within = float(np.mean(diff.var(axis=1, ddof=1) / n))  # what problem sampling alone gives a seed's mean
        excess, seed_sd = max(0.0, seed_var - within), math.sqrt(seed_var)
    else:
        excess, seed_sd = 0.0, None
    se = math.sqrt(per_problem_var / n + excess / n_seeds)
    return PairedPower(discordance, seed_sd, se, (Z_975 + Z_80) * se, n, n_seeds, excess, per_problem_var)
