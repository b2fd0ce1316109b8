"""Vessel-aware, seeded, DDP-aware sampling of training items (slices for stage 1, patch centres for stage 2).

Most axial slices of a CCTA volume hold no coronary artery, so drawing slices uniformly would drown the few
vessel-bearing ones. :class:`BalancedSampler` draws each epoch as follows (the rule the docs quote):

    Each epoch draws ``num_samples`` items with replacement. ``round(positive_fraction * num_samples)`` of them
    (default 80 %) are drawn uniformly from the *positive* items (slices with at least one vessel pixel), the
    rest uniformly from *all* items (positive or not); the two parts are shuffled together. With no positive
    item every draw is uniform. The draw depends only on ``(seed, epoch)``, so it is identical on every rank and
    after ``--resume``. Under DistributedDataParallel ``num_samples`` is rounded up to a multiple of the world size
    and rank ``r`` takes ``draw[r::world_size]``, so the ranks see disjoint shares of one draw.

So with 50 % of the slices vessel-bearing, about 0.8 + 0.2 · 0.5 = 90 % of the samples carry vessel pixels.
Each drawn item also gets its own augmentation seed from the same generator, so random transforms
do not depend on the number of DataLoader workers, and a run resumed mid-epoch skips what it had already done.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from seg2refine_core.errors import Seg2RefineError

SEED_LIMIT = 2**31 - 1


class BalancedSampler(Sampler[tuple[int, int]]):
    """Yields ``(item_index, augmentation_seed)`` pairs for this rank; call :meth:`set_epoch` before each epoch.

    num_items: the number of items (e.g. slices) in the dataset; positive: indices of vessel-bearing items;
    num_samples: items drawn per epoch over all ranks; positive_fraction: share drawn from ``positive``.
    """

    def __init__(
        self,
        num_items: int,
        positive: Sequence[int] | np.ndarray,
        num_samples: int,
        positive_fraction: float = 0.8,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_items < 1:
            raise Seg2RefineError("sampler: the dataset holds no items")
        if num_samples < 1:
            raise Seg2RefineError(f"samples per epoch must be >= 1, got {num_samples}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise Seg2RefineError(f"positive fraction must be in [0, 1], got {positive_fraction}")
        if not 0 <= rank < world_size:
            raise Seg2RefineError(f"sampler: rank {rank} outside world size {world_size}")
        self.num_items = int(num_items)
        self.positive = np.asarray(positive, dtype=np.int64)
        self.positive_fraction = float(positive_fraction)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.total = math.ceil(num_samples / world_size) * world_size
        self.epoch = 0
        self.skip = 0

    @property
    def per_rank(self) -> int:
        """Samples each rank sees in a full epoch."""
        return self.total // self.world_size

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Draw for ``epoch`` (0-based) next, leaving out this rank's first ``skip`` samples (mid-epoch resume)."""
        self.epoch = int(epoch)
        self.skip = int(skip)

    def draw(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The whole epoch's draw over all ranks: ``(item indices, augmentation seeds)``, each of length ``total``."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        n_pos = round(self.positive_fraction * self.total) if self.positive.size else 0
        positive = self.positive[rng.integers(0, self.positive.size, n_pos)]
        uniform = rng.integers(0, self.num_items, self.total - n_pos)
        picks = np.concatenate([positive, uniform])
        picks = picks[rng.permutation(self.total)]
        seeds = rng.integers(0, SEED_LIMIT, self.total)
        return picks, seeds

    def __iter__(self) -> Iterator[tuple[int, int]]:
        picks, seeds = self.draw(self.epoch)
        mine = slice(self.rank, None, self.world_size)
        for index, seed in list(zip(picks[mine], seeds[mine], strict=True))[self.skip :]:
            yield int(index), int(seed)

    def __len__(self) -> int:
        return max(self.per_rank - self.skip, 0)
