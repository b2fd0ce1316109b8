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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seg2refine_core import distributed
from seg2refine_core.data.canonical import (
    CanonicalMapping,
    CanonicalSpace,
    describe_mapping,
    from_canonical,
    to_canonical,
)
from seg2refine_core.devices import resolve_device
from seg2refine_core.errors import CheckpointError, Seg2RefineError, VolumeError
from seg2refine_core.inference.inputs import (
    DEFAULT_OUTPUT_FORMAT,
    check_output_format,
    check_outputs,
    list_inputs,
    output_path,
)
from seg2refine_core.inference.models import LoadedModel, load_stage
from seg2refine_core.inference.pipeline import OUTPUT_KEYS, PipelineResult, run_pipeline, threshold_mask
from seg2refine_core.inference.stage2 import count_windows, window_size
from seg2refine_core.io.volume import Volume
from seg2refine_core.progress import ProgressFn, StopFn, check_stop

#: The checkpoint choice that means "the demo weights shipped in the package".
BUNDLED_CHOICE = "bundled"
#: Arrays of the canonical size a model holds at once (HU, X', S and Y probabilities), for the memory check.
MODEL_SPACE_COPIES = 4

Checkpoint = str | Path | None


@dataclass
class CaseRecord:
    """What happened to one input: its ``case_id`` and ``path``, the volume ``shape`` (z, y, x), the files
    written, seconds spent, the ``rank`` that did it, the one-line ``error`` when it could not be segmented, for
    a DICOM input which ``series`` was read and what else its folder holds (one line,
    :meth:`~seg2refine_core.io.dicom.SeriesChoice.message`), and the ``grids`` the models ran on (role → one line,
    :attr:`PipelineResult.grids <seg2refine_core.inference.pipeline.PipelineResult.grids>`)."""

    case_id: str
    path: Path
    shape: tuple[int, int, int] | None = None
    outputs: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    rank: int = 0
    error: str | None = None
    series: str | None = None
    grids: dict[str, str] = field(default_factory=dict)

    def grid_line(self) -> str:
        """The models' grids in one line: ``"model grid: <grid>"`` when they share one, else per role."""
        if not self.grids:
            return ""
        if len(set(self.grids.values())) == 1:
            return f"model grid: {next(iter(self.grids.values()))}"
        return "; ".join(f"{role} grid: {grid}" for role, grid in self.grids.items())


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
                 "error": c.error, "series": c.series, "grids": c.grids}
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

    def to_model_space(self, volume: Volume, model: LoadedModel) -> tuple[np.ndarray, CanonicalMapping]:
        """``volume`` (HU) as ``model`` sees it: reoriented and resampled into the canonical space its checkpoint
        records (:func:`~seg2refine_core.data.canonical.to_canonical`, trilinear), or unchanged for a checkpoint that
        records none (the native grid, with a one-line notice when the checkpoint is loaded). Returns the float32
        (z, y, x) array in the model's space and the mapping :meth:`from_model_space` inverts. The memory check
        counts four arrays of the canonical size (HU, X', S and Y probabilities); :class:`VolumeError` (one line)
        when they would not fit. This and :meth:`from_model_space` are the only places where inputs and outputs
        change grids."""
        return to_canonical(volume, model.space, copies=MODEL_SPACE_COPIES)

    def from_model_space(self, prob: np.ndarray, mapping: CanonicalMapping) -> np.ndarray:
        """Probabilities (float32, (z, y, x) of ``mapping.shape``) made in a model's space, on the input's exact grid
        (:func:`~seg2refine_core.data.canonical.from_canonical`: reoriented back, trilinear); ``prob`` itself for
        the native grid. Masks are thresholded afterwards."""
        return from_canonical(prob, mapping)

    def predict_volume(
        self,
        volume: Volume,
        *,
        s_mask: np.ndarray | None = None,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> PipelineResult:
        """Segment one CT volume (HU; wrap a bare array with :meth:`Volume.from_array`, or
        :func:`~seg2refine_core.data.canonical.layer_volume` without a file affine): S, Y and/or B on ``volume``'s
        grid (uint8 masks, float32 probabilities, (z, y, x) of ``volume.shape``), whatever its voxel order and size.

        Each model runs in the canonical space its checkpoint records (:meth:`to_model_space`); models that share a
        space share one mapped input, and S goes from stage 1 to stage 2 on that grid. When stage 2 records another
        space, or S is given (``s_mask``, on the volume's grid, for stage 2 without stage 1), S reaches stage 2
        through stage 2's own mapping of the input: its probabilities (a given mask as 0/1) on the input's grid are
        mapped like the image and thresholded (``threshold``; 0.5 for a given mask). Probabilities come back with
        :meth:`from_model_space` and are thresholded on the input's grid. ``result.grids`` describes the grid each
        model ran on; ``result.timings_s["mapping"]`` is the time spent mapping between grids.

        ``progress(done, total, info)`` counts slices then windows over all models; ``should_stop()`` is polled
        before every batch and raises :class:`~seg2refine_core.errors.StopRequested`. Raises
        :class:`~seg2refine_core.errors.CheckpointError` when the loaded models cannot make anything from this input
        (e.g. stage 2 alone without ``s_mask``), :class:`~seg2refine_core.errors.VolumeError` for an ``s_mask`` of
        another shape or a canonical grid that would not fit in memory.
        """
        models = {role: m for role, m in (("stage1", self.stage1), ("stage2", self.stage2),
                                          ("baseline3d", self.baseline3d)) if m is not None}
        if not models:
            raise CheckpointError("nothing to run: give a stage-1, stage-2 or 3D baseline model")
        if self.stage2 is not None and self.stage1 is None and s_mask is None:
            raise CheckpointError("stage 2 refines S: give a stage-1 model or an existing S mask")
        if s_mask is not None and tuple(np.shape(s_mask)) != volume.shape:
            raise VolumeError(f"{volume.name}: the S mask has shape {tuple(np.shape(s_mask))}, the CT {volume.shape}")
        t0 = time.perf_counter()
        groups: dict[CanonicalSpace | None, list[str]] = {}
        for role, model in models.items():
            groups.setdefault(model.space, []).append(role)
        mapped = {space: self.to_model_space(volume, models[roles[0]]) for space, roles in groups.items()}
        mapping_s = time.perf_counter() - t0
        steps = {space: self._steps(roles, mapped[space][1].shape) for space, roles in groups.items()}
        total, done = sum(steps.values()), 0
        result = PipelineResult()
        for space, roles in groups.items():
            check_stop(should_stop)
            array, mapping = mapped.pop(space)
            group_s = None
            if "stage2" in roles and "stage1" not in roles:
                t1 = time.perf_counter()
                group_s = self._s_for_stage2(volume, result, s_mask)
                mapping_s += time.perf_counter() - t1
            part = run_pipeline(
                array, mapping.spacing, models["stage1"] if "stage1" in roles else None,
                models["stage2"] if "stage2" in roles else None,
                baseline3d=models["baseline3d"] if "baseline3d" in roles else None, s_mask=group_s,
                threshold=self.threshold, batch_size=self.batch_size, overlap=self.overlap,
                sw_batch_size=self.sw_batch_size, device=self.device, progress=_shifted(progress, done, total),
                should_stop=should_stop,
            )
            del array
            done += steps[space]
            result.timings_s.update(part.timings_s)
            t1 = time.perf_counter()
            for key, (mask, prob) in part.outputs().items():
                back = self.from_model_space(prob, mapping)
                setattr(result, f"{key}_prob", back)
                setattr(result, f"{key}_mask", mask if back is prob else threshold_mask(back, self.threshold))
            mapping_s += time.perf_counter() - t1
            for role in roles:
                result.grids[role] = describe_mapping(mapping)
        result.timings_s["mapping"] = mapping_s
        return result

    def _steps(self, roles: list[str], shape: tuple[int, int, int]) -> int:
        """Progress steps of ``roles`` on a grid of ``shape``: stage-1 slices plus sliding windows."""
        steps = shape[0] if "stage1" in roles else 0
        for role in ("stage2", "baseline3d"):
            if role in roles:
                steps += count_windows(shape, window_size(getattr(self, role)), self.overlap)
        return steps

    def _s_for_stage2(self, volume: Volume, result: PipelineResult, s_mask: np.ndarray | None) -> np.ndarray:
        """S for stage 2 on its own grid: stage 1's probabilities on the input grid (``result.s_prob``), else the
        given mask, mapped like the image (:meth:`to_model_space` of stage 2) and thresholded."""
        source, threshold = (result.s_prob, self.threshold) if result.s_prob is not None else (s_mask, 0.5)
        s_volume = replace(volume, array=np.asarray(source, dtype=np.float32))
        array, _ = self.to_model_space(s_volume, self.stage2)  # type: ignore[arg-type]
        return threshold_mask(array, threshold)

    def write_outputs(
        self,
        case_id: str,
        result: PipelineResult,
        like: Volume,
        out_dir: str | Path,
        *,
        save_prob: bool = False,
        output_format: str = DEFAULT_OUTPUT_FORMAT,
    ) -> list[Path]:
        """Write each mask of ``result`` (and its probabilities with ``save_prob``) as
        :func:`~.inputs.output_path` names in ``out_dir``, atomically, on ``like``'s grid: masks in
        ``output_format`` (``nifti``, ``nrrd``, ``metaimage``, or ``dicom-seg`` referencing ``like``'s DICOM series,
        see :func:`~seg2refine_core.io.volume.write_mask`), probabilities as NIfTI; ``like``'s header and geometry
        are kept. Raises :class:`~seg2refine_core.errors.VolumeError` for a SEG of a source that cannot be
        referenced."""
        from seg2refine_core.io.volume import write_mask, write_volume

        written = []
        for key, (mask, prob) in result.outputs().items():
            written.append(write_mask(output_path(out_dir, case_id, key, output_format=output_format), mask, like))
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
        series: str | None = None,
        output_format: str = DEFAULT_OUTPUT_FORMAT,
        shard: tuple[int, int] | None = None,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
        on_case: Callable[[CaseRecord], None] | None = None,
    ) -> PredictionSummary:
        """Segment every volume in ``inputs`` (files and folders, :func:`~.inputs.list_inputs`) into ``out_dir``.

        Before any work, refuses outputs that exist (without ``overwrite``) or would replace an input, and
        ``output_format="dicom-seg"`` for an input that is not DICOM. Then each case of this process's shard is read,
        segmented (:meth:`predict_volume`) and written (:meth:`write_outputs` in ``output_format``); only one volume
        is held at a time. ``series``: the SeriesInstanceUID to read; only the DICOM inputs holding it are
        segmented (:func:`~.inputs.list_inputs`). A case that cannot be read or written (for a SEG: a source with
        blank UIDs, found before segmenting) is recorded with its one-line error and the others go on.
        ``shard``: ``(rank, world_size)``, by default this process's place in the ``torchrun`` group (``(0, 1)``
        alone); rank ``r`` takes cases ``r::world_size``. ``progress`` counts the steps of the current case (its info
        starts with the case id), ``on_case(record)`` follows each case this rank finishes. Returns the summary of
        all ranks (gathered on every rank), cases in input order.
        """
        t0 = time.perf_counter()
        cases = self._plan(inputs, out_dir, save_prob, overwrite, series, output_format)
        rank, world_size = shard if shard is not None else distributed.rank_and_world_size()
        mine = cases[rank::world_size]
        records = []
        for index, (case_id, path) in enumerate(mine):
            check_stop(should_stop)
            label = f"{case_id} ({index + 1}/{len(mine)})"
            records.append(self._predict_case(case_id, path, out_dir, save_prob, series, output_format, rank, label,
                                              progress, should_stop))
            if on_case is not None:
                on_case(records[-1])
        order = {case_id: i for i, (case_id, _) in enumerate(cases)}
        gathered = [r for part in distributed.all_gather_object(records) for r in part]
        return PredictionSummary(cases=sorted(gathered, key=lambda r: order[r.case_id]), world_size=world_size,
                                 seconds=time.perf_counter() - t0)

    def _plan(
        self, inputs: Iterable[str | Path], out_dir: str | Path, save_prob: bool, overwrite: bool,
        series: str | None, output_format: str,
    ) -> list[tuple[str, Path]]:
        """The cases, after every rank has checked them and the outputs; no rank writes before all have checked
        (a fast rank's first output would otherwise look like an existing file to a slow one). The first problem
        any rank found is raised on all."""
        cases: list[tuple[str, Path]] = []
        try:
            cases = list_inputs(inputs, series=series)
            check_output_format(cases, output_format)
            check_outputs(cases, out_dir, self.output_keys, save_prob=save_prob, overwrite=overwrite,
                          output_format=output_format)
            problem = None
        except Seg2RefineError as err:
            problem = str(err)
        problems = [p for p in distributed.all_gather_object(problem) if p is not None]
        if problems:
            raise Seg2RefineError(problems[0])
        return cases

    def _predict_case(
        self, case_id: str, path: Path, out_dir: str | Path, save_prob: bool, series: str | None,
        output_format: str, rank: int, label: str, progress: ProgressFn | None, should_stop: StopFn | None,
    ) -> CaseRecord:
        from seg2refine_core.io.dicom_seg import check_seg_source
        from seg2refine_core.io.volume import read_volume

        t0 = time.perf_counter()
        record = CaseRecord(case_id=case_id, path=path, rank=rank)
        try:
            volume = read_volume(path, series=series)  # with a series, every case is DICOM (list_inputs)
            record.series = None if volume.series is None else volume.series.message()
            if output_format == "dicom-seg":
                check_seg_source(volume, output_path(out_dir, case_id, self.output_keys[0], output_format="dicom-seg"))
        except Seg2RefineError as err:
            record.error = str(err)
            return record
        record.shape = volume.shape

        def case_progress(done: int, total: int, info: str = "") -> None:
            progress(done, total, f"{label}: {info}" if info else label)  # type: ignore[misc]

        result = self.predict_volume(volume, progress=case_progress if progress else None, should_stop=should_stop)
        record.grids = dict(result.grids)
        try:
            record.outputs = self.write_outputs(case_id, result, volume, out_dir, save_prob=save_prob,
                                                output_format=output_format)
        except Seg2RefineError as err:
            record.error = str(err)
        record.seconds = time.perf_counter() - t0
        return record


def _shifted(progress: ProgressFn | None, offset: int, total: int) -> ProgressFn | None:
    """``progress`` of one model group reported as steps ``offset + done`` of the whole run's ``total``."""
    if progress is None:
        return None
    return lambda done, _total, info="": progress(offset + done, total, info)
