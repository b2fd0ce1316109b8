"""The file-level predictor: models loaded once, then volumes or whole cohorts of files segmented with them.

Modelled on nnU-Net v2's ``nnUNetPredictor``: a :class:`Predictor` is built once (checkpoints or the bundled demo
weights, device, batch sizes, threshold) and then called per volume (:meth:`Predictor.predict_volume`, the napari
widget and the demo) or per cohort (:meth:`Predictor.predict_files`, ``seg2refine predict``). The CLI, the Segment
widget and the demo all go through it, so input discovery, output naming, overwrite checks and the mapping of an
input into the models' space happen in one place.

Under ``torchrun --nproc_per_node=N`` the cohort is sharded: rank ``r`` takes cases ``r, r + N, r + 2N, …`` of the
sorted input list (each on its own GPU where there is CUDA), and every rank ends with the whole summary.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seg2refine_core import distributed
from seg2refine_core.devices import resolve_device
from seg2refine_core.errors import Seg2RefineError
from seg2refine_core.inference.inputs import check_outputs, list_inputs, output_path
from seg2refine_core.inference.models import LoadedModel, load_stage
from seg2refine_core.inference.pipeline import OUTPUT_KEYS, PipelineResult, run_pipeline, threshold_mask
from seg2refine_core.io.volume import Volume
from seg2refine_core.progress import ProgressFn, StopFn, check_stop

#: The checkpoint choice that means "the demo weights shipped in the package".
BUNDLED_CHOICE = "bundled"

Checkpoint = str | Path | None


@dataclass
class CaseRecord:
    """What happened to one input: its ``case_id`` and ``path``, the volume ``shape`` (z, y, x), the files
    written, seconds spent, the ``rank`` that did it, and the one-line ``error`` when it could not be segmented."""

    case_id: str
    path: Path
    shape: tuple[int, int, int] | None = None
    outputs: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    rank: int = 0
    error: str | None = None


@dataclass
class PredictionSummary:
    """All cases of a :meth:`Predictor.predict_files` run in input order, over every rank."""

    cases: list[CaseRecord]
    world_size: int
    seconds: float

    @property
    def failed(self) -> list[CaseRecord]:
        return [c for c in self.cases if c.error is not None]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings)."""
        return {
            "world_size": self.world_size,
            "seconds": round(self.seconds, 3),
            "cases": [
                {"case_id": c.case_id, "path": str(c.path), "shape": None if c.shape is None else list(c.shape),
                 "outputs": [str(p) for p in c.outputs], "seconds": round(c.seconds, 3), "rank": c.rank,
                 "error": c.error}
                for c in self.cases
            ],
        }


def check_options(threshold: float, overlap: float, batch_size: int | None, sw_batch_size: int | None) -> None:
    """Seg2RefineError naming the first inference option out of range."""
    if not 0.0 < threshold < 1.0:
        raise Seg2RefineError(f"--threshold must be between 0 and 1 (exclusive), got {threshold}")
    if not 0.0 <= overlap < 1.0:
        raise Seg2RefineError(f"--overlap must be >= 0 and < 1, got {overlap}")
    for name, value in (("batch-size", batch_size), ("sw-batch-size", sw_batch_size)):
        if value is not None and value < 1:
            raise Seg2RefineError(f"--{name} must be >= 1, got {value}")


class Predictor:
    """Stage 1, stage 2 and/or the 3D baseline, loaded once on one device, with the inference options.

    ``stage1``/``stage2``/``baseline3d``: loaded models (``None``: that output is not made); see
    :meth:`from_checkpoints` to load them. ``device``: ``auto``/``cuda``/``cuda:N``/``mps``/``cpu`` or a torch
    device. ``threshold``: probability → mask, in (0, 1). ``batch_size``: stage-1 slices per batch, ``overlap`` and
    ``sw_batch_size``: the sliding window of stage 2 and the baseline (None: the device's defaults, see
    :func:`~.stage1.default_batch_size`, :func:`~.stage2.default_sw_batch_size`). Raises :class:`Seg2RefineError`
    for an option out of range or a device that is not available.
    """

    def __init__(
        self,
        *,
        stage1: LoadedModel | None = None,
        stage2: LoadedModel | None = None,
        baseline3d: LoadedModel | None = None,
        device: torch.device | str = "auto",
        threshold: float = 0.5,
        batch_size: int | None = None,
        overlap: float = 0.25,
        sw_batch_size: int | None = None,
    ) -> None:
        check_options(threshold, overlap, batch_size, sw_batch_size)
        self.device = resolve_device(str(device))
        self.stage1, self.stage2, self.baseline3d = stage1, stage2, baseline3d
        self.threshold, self.batch_size = threshold, batch_size
        self.overlap, self.sw_batch_size = overlap, sw_batch_size

    @classmethod
    def from_checkpoints(
        cls,
        stage1: Checkpoint = BUNDLED_CHOICE,
        stage2: Checkpoint = BUNDLED_CHOICE,
        baseline3d: Checkpoint = None,
        **options: Any,
    ) -> Predictor:
        """Check ``options`` (the keyword arguments of :class:`Predictor`), then load each model once.

        Each of ``stage1``/``stage2``/``baseline3d`` is a checkpoint path (``.safetensors``, ``.json`` or the stem),
        :data:`BUNDLED_CHOICE` for the demo weights in the package (stage 1 and 2 only), or ``None`` to leave that
        model out. Raises :class:`~seg2refine_core.errors.CheckpointError` for a missing, unsafe or wrong-kind
        checkpoint (e.g. a generator given as stage 1).
        """
        predictor = cls(**options)
        for role, choice in (("stage1", stage1), ("stage2", stage2), ("baseline3d", baseline3d)):
            if choice is not None:
                path = None if str(choice) == BUNDLED_CHOICE else choice
                setattr(predictor, role, load_stage(role, path, predictor.device))
        return predictor

    @property
    def output_keys(self) -> tuple[str, ...]:
        """The outputs a full run makes, in :data:`~.pipeline.OUTPUT_KEYS` order (``s``, ``y``, ``b``)."""
        made = {"s": self.stage1, "y": self.stage2, "b": self.baseline3d}
        return tuple(k for k in OUTPUT_KEYS if made[k] is not None)

    def describe(self) -> str:
        """One line: the device and each model's checkpoint."""
        parts = [f"device: {self.device}"]
        for title, model in (("stage 1", self.stage1), ("stage 2", self.stage2), ("3D baseline", self.baseline3d)):
            if model is not None:
                parts.append(f"{title}: {model.path}")
        return "; ".join(parts)

    def to_model_space(self, volume: Volume, s_mask: np.ndarray | None = None) -> tuple[Volume, np.ndarray | None]:
        """The input as the models see it: ``volume`` (and an existing S mask on its grid) mapped into the models'
        space. This is the one place where that mapping happens; :meth:`from_model_space` is its inverse.

        Today the models' space is the input's own voxel grid, so both are returned unchanged. The canonical-space
        issue (``data/canonical.py``) fills it: reorient and resample to the space a checkpoint records.
        """
        return volume, s_mask

    def from_model_space(self, prob: np.ndarray, volume: Volume) -> np.ndarray:
        """Probabilities (float32) made in the models' space, on ``volume``'s exact grid (the inverse of
        :meth:`to_model_space`; masks are thresholded afterwards). Today: ``prob`` unchanged."""
        return prob

    def predict_volume(
        self,
        volume: Volume,
        *,
        s_mask: np.ndarray | None = None,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> PipelineResult:
        """Segment one CT volume (HU; wrap a bare array with :meth:`Volume.from_array`): S, Y and/or B on
        ``volume``'s grid (uint8 masks, float32 probabilities, (z, y, x) of ``volume.shape``).

        ``s_mask``: an existing S on the volume's grid, for stage 2 without stage 1. ``progress(done, total, info)``
        counts slices then windows; ``should_stop()`` is polled before every batch and raises
        :class:`~seg2refine_core.errors.StopRequested`. Raises :class:`~seg2refine_core.errors.CheckpointError`
        when the loaded models cannot make anything from this input (e.g. stage 2 alone without ``s_mask``).
        """
        model_volume, model_s = self.to_model_space(volume, s_mask)
        result = run_pipeline(
            model_volume.array, model_volume.spacing, self.stage1, self.stage2, baseline3d=self.baseline3d,
            s_mask=model_s, threshold=self.threshold, batch_size=self.batch_size, overlap=self.overlap,
            sw_batch_size=self.sw_batch_size, device=self.device, progress=progress, should_stop=should_stop,
        )
        for key, (_, prob) in result.outputs().items():
            back = self.from_model_space(prob, volume)
            if back is not prob:
                setattr(result, f"{key}_prob", back)
                setattr(result, f"{key}_mask", threshold_mask(back, self.threshold))
        return result

    def write_outputs(
        self, case_id: str, result: PipelineResult, like: Volume, out_dir: str | Path, *, save_prob: bool = False
    ) -> list[Path]:
        """Write each mask of ``result`` (and its probabilities with ``save_prob``) as
        :func:`~.inputs.output_path` names in ``out_dir``, atomically, with ``like``'s header and geometry."""
        from seg2refine_core.io.volume import write_volume

        written = []
        for key, (mask, prob) in result.outputs().items():
            written.append(write_volume(output_path(out_dir, case_id, key), mask, like=like))
            if save_prob and prob is not None:
                written.append(write_volume(output_path(out_dir, case_id, key, prob=True), prob, like=like))
        return written

    def predict_files(
        self,
        inputs: Iterable[str | Path],
        out_dir: str | Path,
        *,
        save_prob: bool = False,
        overwrite: bool = False,
        shard: tuple[int, int] | None = None,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
        on_case: Callable[[CaseRecord], None] | None = None,
    ) -> PredictionSummary:
        """Segment every volume in ``inputs`` (files and folders, :func:`~.inputs.list_inputs`) into ``out_dir``.

        Before any work, refuses outputs that exist (without ``overwrite``) or would replace an input. Then each
        case of this process's shard is read, segmented (:meth:`predict_volume`) and written
        (:meth:`write_outputs`); only one volume is held at a time. A case that cannot be read is recorded with its
        one-line error and the others go on. ``shard``: ``(rank, world_size)``, by default this process's place in
        the ``torchrun`` group (``(0, 1)`` alone); rank ``r`` takes cases ``r::world_size``. ``progress`` counts
        the steps of the current case (its info starts with the case id), ``on_case(record)`` follows each case
        this rank finishes. Returns the summary of all ranks (gathered on every rank), cases in input order.
        """
        t0 = time.perf_counter()
        cases = self._plan(inputs, out_dir, save_prob, overwrite)
        rank, world_size = shard if shard is not None else distributed.rank_and_world_size()
        mine = cases[rank::world_size]
        records = []
        for index, (case_id, path) in enumerate(mine):
            check_stop(should_stop)
            records.append(self._predict_case(case_id, path, out_dir, save_prob, rank, f"{case_id} "
                                              f"({index + 1}/{len(mine)})", progress, should_stop))
            if on_case is not None:
                on_case(records[-1])
        order = {case_id: i for i, (case_id, _) in enumerate(cases)}
        gathered = [r for part in distributed.all_gather_object(records) for r in part]
        return PredictionSummary(cases=sorted(gathered, key=lambda r: order[r.case_id]), world_size=world_size,
                                 seconds=time.perf_counter() - t0)

    def _plan(
        self, inputs: Iterable[str | Path], out_dir: str | Path, save_prob: bool, overwrite: bool
    ) -> list[tuple[str, Path]]:
        """The cases, after every rank has checked them and the outputs; no rank writes before all have checked
        (a fast rank's first output would otherwise look like an existing file to a slow one). The first problem
        any rank found is raised on all."""
        cases: list[tuple[str, Path]] = []
        try:
            cases = list_inputs(inputs)
            check_outputs(cases, out_dir, self.output_keys, save_prob=save_prob, overwrite=overwrite)
            problem = None
        except Seg2RefineError as err:
            problem = str(err)
        problems = [p for p in distributed.all_gather_object(problem) if p is not None]
        if problems:
            raise Seg2RefineError(problems[0])
        return cases

    def _predict_case(
        self, case_id: str, path: Path, out_dir: str | Path, save_prob: bool, rank: int, label: str,
        progress: ProgressFn | None, should_stop: StopFn | None,
    ) -> CaseRecord:
        from seg2refine_core.io.volume import read_volume

        t0 = time.perf_counter()
        record = CaseRecord(case_id=case_id, path=path, rank=rank)
        try:
            volume = read_volume(path)
        except Seg2RefineError as err:
            record.error = str(err)
            return record
        record.shape = volume.shape

        def case_progress(done: int, total: int, info: str = "") -> None:
            progress(done, total, f"{label}: {info}" if info else label)  # type: ignore[misc]

        result = self.predict_volume(volume, progress=case_progress if progress else None, should_stop=should_stop)
        record.outputs = self.write_outputs(case_id, result, volume, out_dir, save_prob=save_prob)
        record.seconds = time.perf_counter() - t0
        return record
