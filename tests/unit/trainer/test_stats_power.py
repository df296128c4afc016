"""What a paired comparison can see (lema.trainer.stats.paired_power): discordance, seed spread and mde_80."""

from __future__ import annotations

import numpy as np
import pytest

from lema.trainer.stats import Z_80, Z_975, paired_power


def test_identical_arms_have_no_discordance_and_no_uncertainty():
    x = [[True, False, True, True]] * 3
    power = paired_power(x, x)
    assert power.discordance == 0 and power.se == 0 and power.mde_80 == 0 and power.seed_sd == 0


def test_one_seed_mde_matches_the_mcnemar_normal_approximation():
    rng = np.random.default_rng(0)
    n = 4000
    a = rng.random(n) < 0.6
    flip = rng.random(n) < 0.15  # 15% discordance, symmetric: no true difference
    b = np.where(flip, ~a, a)
    power = paired_power([a.tolist()], [b.tolist()])
    assert power.discordance == pytest.approx(flip.mean())
    # McNemar: Var(mean diff) = (d - D^2) / n; mde_80 = (z_0.975 + z_0.8) x that SE
    assert power.mde_80 == pytest.approx((Z_975 + Z_80) * np.sqrt(power.discordance / n), rel=0.05)
    assert power.seed_sd is None and 0.015 < power.mde_80 < 0.02
    # for 2 points at this discordance the normal approximation asks for about 2,900 problems
    assert 2500 < power.problems_for(0.02) < 3300


def test_seed_noise_beyond_problem_sampling_widens_the_mde_and_more_problems_cannot_remove_it():
    rng = np.random.default_rng(1)
    n = 2000
    base = rng.random(n) < 0.6
    a, b = [], []
    for shift in (0.06, -0.06, 0.0):  # each seed moves every problem one way
        flips = rng.random(n) < 0.1
        gain = rng.random(n) < abs(shift)
        x = np.where(flips, ~base, base)
        if shift > 0:
            x = x | gain
        elif shift < 0:
            x = x & ~gain
        a.append(x.tolist())
        b.append(base.tolist())
    noisy = paired_power(a, b)
    assert noisy.seed_sd > 0.03 and noisy.seed_excess_var > 0
    quiet = paired_power([base.tolist()] * 3, [np.where(rng.random(n) < 0.1, ~base, base).tolist()] * 3)
    assert noisy.mde_80 > quiet.mde_80
    assert noisy.problems_for(0.02) is None  # the seed part alone is above 2 points: more seeds, not problems


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        paired_power([[True, False]], [[True]])
