"""Which cases a run trains and validates on, the canonical space it trains in, and their HU cache.

- :func:`labelled_split`: the labelled train/val cases of stage 1 and the 3D baseline (stage 2 has its own pool
  rule, :func:`seg2refine_core.training.stage2.stage2_split`);
- :func:`training_space`: the canonical space of a run (``--target-spacing``, else derived from the training cases'
  headers by :func:`~seg2refine_core.data.canonical.target_spacing`), recorded in its checkpoints;
- :func:`prepare_hu_cache`: the memmap cache of the cases in HU in that space (:mod:`seg2refine_core.data.cache`; X'
  is made from it on the fly, after intensity augmentation), its build shared out between ranks;
- :class:`LabelledCasesTrainer`: the three together, for the trainers that train on :func:`labelled_split`'s cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from seg2refine_core import distributed
from seg2refine_core.data.cache import CacheIndex, build_cache
from seg2refine_core.data.canonical import CanonicalSpace, canonical_geometry, header_geometry, target_spacing
from seg2refine_core.data.datasets import Case, discover_cases, holdout_split, read_split, split_cases
from seg2refine_core.errors import DatasetError
from seg2refine_core.progress import ProgressFn, StopFn
from seg2refine_core.training.loop import Trainer
from seg2refine_core.training.options import TrainOptions


class SplitOptions(Protocol):
    """The options that choose a run's cases (fields of every trainer's config)."""

    data: Path
    layout: str
    split: Path | None
    fold: int
    val_fraction: float
    test_fraction: float | None
    split_seed: int | None


def labelled_split(config: SplitOptions) -> tuple[list[Case], list[Case]]:
    """Training and validation cases: the split table's ``train``/``val`` of ``fold``, or without a table
    :func:`~seg2refine_core.data.datasets.holdout_split` (``val_fraction``, ``test_fraction``, ``split_seed``).

    Raises :class:`DatasetError` when no training case is left or one of the cases has no label.
    """
    cases = discover_cases(config.data, config.layout)
    if config.split is not None:
        ids = read_split(config.split, config.fold)
    else:
        ids = holdout_split(cases, config.val_fraction, config.test_fraction, config.split_seed)
    parts = split_cases(cases, ids)
    train, val = parts["train"], parts["val"]
    if not train:
        raise DatasetError(f"{config.data}: the split leaves no training case")
    unlabelled = [case.case_id for case in train + val if case.label is None]
    if unlabelled:
        raise DatasetError(f"{config.data}: training/validation case(s) without a label: {', '.join(unlabelled[:5])}")
    return train, val


class SpaceOptions(Protocol):
    """The option that fixes a run's canonical space (a field of every trainer's config)."""

    target_spacing: tuple[float, float, float] | None


def training_space(config: SpaceOptions, cases: Sequence[Case]) -> tuple[CanonicalSpace, str]:
    """The canonical space a run trains in and how it was chosen (one line, recorded in the checkpoint).

    ``config.target_spacing`` (``--target-spacing``) when given; otherwise nnU-Net's rule
    (:func:`~seg2refine_core.data.canonical.target_spacing`: per-axis median, the 10th percentile along a strongly
    anisotropic axis) over the training ``cases``' voxel sizes in canonical axis order, read from their headers
    (:func:`~seg2refine_core.data.canonical.header_geometry`, then
    :func:`~seg2refine_core.data.canonical.canonical_geometry`), so a case stored with permuted axes
    counts its slice spacing as the slice spacing. The orientation is always LPS. Raises
    :class:`~seg2refine_core.errors.VolumeError` for an unreadable case.
    """
    if config.target_spacing is not None:
        return CanonicalSpace(tuple(config.target_spacing)), "given (--target-spacing)"  # type: ignore[arg-type]
    geometry = [canonical_geometry(*header_geometry(case.image)) for case in cases]
    spacing = target_spacing([sp for _, sp in geometry], [shape for shape, _ in geometry])
    return CanonicalSpace(spacing), f"nnU-Net's rule over the headers of the {len(cases)} training case(s)"


def prepare_hu_cache(
    cases: Sequence[Case], cache_dir: Path, space: CanonicalSpace | None, info: distributed.DistInfo,
    progress: ProgressFn | None, should_stop: StopFn | None,
) -> CacheIndex:
    """Build (or reuse) the HU cache of ``cases`` mapped into ``space``, sharing the work between ranks; rank 0
    writes the index."""
    report = progress if info.is_main else None
    if info.distributed:
        build_cache(cases[info.rank :: info.world_size], cache_dir, space, progress=report, should_stop=should_stop,
                    write_index=False)
        distributed.barrier()
    return build_cache(cases, cache_dir, space, progress=report, should_stop=should_stop, write_index=info.is_main)


Config = TypeVar("Config", bound=TrainOptions)


class LabelledCasesTrainer(Trainer[Config]):
    """A trainer on :func:`labelled_split`'s cases (stage 1 and the 3D baseline), with :meth:`build_hu_cache` for
    its :meth:`~seg2refine_core.training.loop.Trainer.prepare_data` (which also sets the run's canonical space)."""

    def select_cases(self) -> dict[str, list[str]]:
        """The split table's train/val cases of the fold, or the seeded hold-out's; DatasetError for unlabelled."""
        self.train_cases, self.val_cases = labelled_split(self.config)
        return {"train": [c.case_id for c in self.train_cases], "val": [c.case_id for c in self.val_cases]}

    def build_hu_cache(self) -> CacheIndex:
        """The run's canonical space (:func:`training_space` over the training cases), then HU of the train and val
        cases mapped into it in ``cache_dir`` (default ``<out>/cache``), shared out between ranks."""
        self.space, self.space_rule = training_space(self.config, self.train_cases)
        return prepare_hu_cache(self.train_cases + self.val_cases, self.config.cache_dir or self.run_dir / "cache",
                                self.space, self.info, self.progress, self.should_stop)
