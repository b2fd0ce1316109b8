"""BalancedSampler: the vessel share of a draw, determinism per (seed, epoch), rank shards, mid-epoch skip."""

from __future__ import annotations

import numpy as np
import pytest

from seg2refine_core.data.sampling import BalancedSampler
from seg2refine_core.errors import Seg2RefineError


def test_positive_fraction_follows_the_rule():
    positive = np.arange(0, 1000, 10)  # 10 % of the items hold vessels
    sampler = BalancedSampler(1000, positive, num_samples=4000, positive_fraction=0.8, seed=3)
    picks, seeds = sampler.draw(0)
    share = np.isin(picks, positive).mean()
    assert share == pytest.approx(0.8 + 0.2 * 0.1, abs=0.02)
    assert len(picks) == len(seeds) == 4000 and picks.min() >= 0 and picks.max() < 1000
    uniform = BalancedSampler(1000, positive, num_samples=4000, positive_fraction=0.0, seed=3).draw(0)[0]
    assert np.isin(uniform, positive).mean() == pytest.approx(0.1, abs=0.02)
    no_positive = BalancedSampler(50, [], num_samples=20, positive_fraction=0.8).draw(0)[0]
    assert len(no_positive) == 20


def test_draw_depends_only_on_seed_and_epoch():
    a = BalancedSampler(100, [1, 2, 3], num_samples=32, seed=5)
    b = BalancedSampler(100, [1, 2, 3], num_samples=32, seed=5)
    np.testing.assert_array_equal(a.draw(2)[0], b.draw(2)[0])
    assert not np.array_equal(a.draw(2)[0], a.draw(3)[0])
    assert not np.array_equal(a.draw(2)[0], BalancedSampler(100, [1, 2, 3], num_samples=32, seed=6).draw(2)[0])


def test_ranks_take_disjoint_shards_of_one_draw():
    shards = []
    for rank in range(3):
        sampler = BalancedSampler(100, [4, 5], num_samples=31, seed=1, rank=rank, world_size=3)
        sampler.set_epoch(4)
        shards.append(list(sampler))
        assert len(sampler) == 11  # 31 rounded up to 33 over 3 ranks
    picks, seeds = BalancedSampler(100, [4, 5], num_samples=31, seed=1, world_size=3).draw(4)
    together = [pair for step in zip(*shards, strict=True) for pair in step]
    assert together == list(zip(picks.tolist(), seeds.tolist(), strict=True))


def test_skip_resumes_mid_epoch():
    sampler = BalancedSampler(100, [7], num_samples=16, seed=2)
    sampler.set_epoch(1)
    full = list(sampler)
    sampler.set_epoch(1, skip=5)
    assert len(sampler) == 11 and list(sampler) == full[5:]


def test_bad_options_are_refused():
    with pytest.raises(Seg2RefineError, match="positive fraction"):
        BalancedSampler(10, [], num_samples=4, positive_fraction=1.5)
    with pytest.raises(Seg2RefineError, match="samples per epoch"):
        BalancedSampler(10, [], num_samples=0)
