"""Stage-2 training: the 3D Attention-GAN refiner (paper Algorithm 1, eqs. 10-12; design §4, §5, §8).

What one run does:

- **Which volumes.** G must learn from S that the stage-1 model produced on volumes it never saw (the paper
  trains G on the 50 ImageCAS validation volumes). The stage-1 checkpoint's provenance
  (``training.cases.train``, written by :mod:`seg2refine_core.training.stage1`) lists the cases it trained on.
  The stage-2 *pool* is
    - with a split table (``split``, ``fold``): that fold's ``val`` cases (the paper's rule);
    - without one: every labelled case that is neither a stage-1 training case nor a held-out test case. The
      test cases are :func:`~seg2refine_core.data.datasets.holdout_split`'s test share for ``test_fraction`` and
      ``split_seed``; by default both are read from the stage-1 run's options (else 0.2 and 0), so stage 2
      holds out exactly the test cases stage 1 held out, and the pool is stage 1's validation set.
  Any overlap between the pool and the stage-1 training cases is refused (ids are compared by name, so a
  stage-1 model trained on another dataset with coinciding ids is refused too). A stage-1 checkpoint that
  records no training cases is refused unless ``allow_unknown_stage1``. The pool is split into stage-2 train
  and validation cases by :func:`~seg2refine_core.data.datasets.holdout_split` (``val_fraction``, ``split_seed``).
- **Inputs.** X' comes from the preprocessed memmap cache (:mod:`seg2refine_core.data.cache`) made with the stage-1
  checkpoint's preprocessing (stage 2 must see the same X'). S is made once per pool case with
  :func:`~seg2refine_core.inference.stage1.segment_slices` and thresholded at 0.5 into a uint8 mask, stored beside the
  X' cache under ``stage1-s/<fingerprint>/`` (fingerprint = SHA-256 of the stage-1 weights and model config):
  another stage-1 model gets its own folder, a rebuilt X' is noticed by the X' file's size and mtime. G's input
  is ``concat(X', S)`` with S the float {0, 1} mask, exactly what
  :func:`~seg2refine_core.inference.stage2.refine_volume` gets at inference time.
- **Patches.** :mod:`seg2refine_core.data.patches` (vessel-centred and random patches, rotation ≤ 15°, random masking
  of S, Gaussian noise on X'; seeded per patch and sharded across ranks).
- **One step (Algorithm 1).** ``Y = G(concat(X', S))``; D sees ``concat(T, X', S)`` (real) and
  ``concat(Y.detach(), X', S)`` (fake) in one batch (InstanceNorm is per sample, so this equals two calls);
  ``D_loss`` (eq. 12) updates D; then ``G_loss`` (eq. 10: ``BCE(D(Y), 1) + λ·Dice(Y, T) + ΔB0``, optional
  topology term) updates G, with D frozen. Y is the sigmoid probability map. Adam (betas 0.5, 0.999), constant
  learning rates (pix2pix/Vox2Vox). Mixed precision and channels_last_3d on CUDA only.
- **Each epoch** logs D and G losses and G's components, then segments every validation volume whole with the
  Gaussian-blended sliding window (:func:`~seg2refine_core.inference.stage2.refine_volume`) and logs the mean Dice of Y
  and of S against T and their Betti-0 errors (``metrics.jsonl``, ``curves.png``). ``best`` keeps the highest
  validation Dice of Y (the lowest G loss without validation cases), ``last`` the latest state; both hold G
  only. D's weights, both optimizers, the loss scalers, counters and RNG states go to ``last.resume.pt``, so
  ``resume`` continues exactly, even mid-epoch (a stop request saves ``last`` at once).
- Under ``torchrun`` G and D are wrapped in DistributedDataParallel; ranks share the S build and the validation
  volumes, G's batch-norm buffers (MONAI attention gates) are copied from rank 0 each epoch, rank 0 writes.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seg2refine_core import distributed
from seg2refine_core.data.cache import CacheIndex
from seg2refine_core.data.datasets import Case, discover_cases, holdout_split, read_split
from seg2refine_core.data.patches import PatchConfig, PatchDataset, patch_loader, patch_sources
from seg2refine_core.devices import autocast_dtype
from seg2refine_core.errors import CheckpointError, DatasetError, Seg2RefineError
from seg2refine_core.evaluation.metrics import betti0_error, dice
from seg2refine_core.inference.models import LoadedModel, load_stage, use_channels_last
from seg2refine_core.inference.stage1 import segment_slices
from seg2refine_core.inference.stage2 import refine_volume
from seg2refine_core.io.atomic import atomic_path, write_text_atomic
from seg2refine_core.io.checkpoint import checkpoint_paths, load_state_strict, read_config, save_checkpoint
from seg2refine_core.nets.attention_gan import AttentionGenerator3d, PatchDiscriminator3d
from seg2refine_core.progress import ProgressFn, StopFn
from seg2refine_core.training.common import (
    OPTION_NAMES,
    EpochFn,
    RunHistory,
    options_kwargs,
    options_to_dict,
    prepare_xprime_cache,
    seed_run,
    split_provenance,
    wrap_ddp,
)
from seg2refine_core.training.gan_losses import TOPOLOGY_TERMS, GeneratorLoss, discriminator_loss
from seg2refine_core.training.runlog import (
    capture_rng_state,
    check_resume_options,
    open_run,
    restore_rng_state,
    resume_path,
    save_resume_state,
)

THRESHOLD = 0.5
BETAS = (0.5, 0.999)
S_DIR = "stage1-s"
S_VERSION = 1
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_SPLIT_SEED = 0
#: Options that define a run; ``resume`` refuses values that differ from the stored run's.
RUN_DEFINING = (
    "split", "fold", "val_fraction", "test_fraction", "split_seed", "layout", "width", "disc_width", "patch_size",
    "batch_size", "patches_per_epoch", "lam", "delta_b0", "topology", "topology_weight", "lr_g", "lr_d",
    "vessel_fraction", "augment", "seed",
)  # fmt: skip
PATH_OPTIONS = ("data", "stage1", "out", "split", "cache_dir")
PANELS = {
    "losses": ["d_loss", "g_loss"],
    "generator terms": ["g_adv", "g_dice", "g_delta_b0", "g_topology"],
    "validation Dice": ["val_dice_y", "val_dice_s"],
    "validation Betti-0 error": ["val_b0_error_y", "val_b0_error_s"],
}


@dataclass
class Stage2TrainConfig:
    """Options of a stage-2 training run (CLI: ``seg2refine train stage2``); see the module doc.

    data: dataset folder; stage1: stage-1 checkpoint; out: run folder. split/fold: split table (pool = its val
    cases). val_fraction: share of the pool kept for stage-2 validation. test_fraction/split_seed: hold-out rule
    without a table (None: the stage-1 run's values). width/disc_width: G and D widths (disc_width None = width).
    patch_size: (d, h, w), multiples of 16, >= 32 (64³ on CPU, 128³ suggested on GPU). patches_per_epoch: over
    all ranks. lam: Dice weight λ; delta_b0: add ΔB0 to G's loss; topology: None or "cldice".
    vessel_fraction: share of vessel-centred patches; augment: rotation / S masking / noise. cache_dir: None →
    the stage-1 run's cache folder when it exists (``<stage-1 dir>/cache``), else ``<out>/cache``.
    """

    data: Path
    stage1: Path
    out: Path
    split: Path | None = None
    fold: int = 1
    val_fraction: float = 0.2
    test_fraction: float | None = None
    split_seed: int | None = None
    layout: str = "auto"
    width: int = 16
    disc_width: int | None = None
    patch_size: tuple[int, int, int] = (64, 64, 64)
    epochs: int = 50
    batch_size: int = 2
    patches_per_epoch: int = 200
    lam: float = 5.0
    delta_b0: bool = True
    topology: str | None = None
    topology_weight: float = 1.0
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    vessel_fraction: float = 0.7
    augment: bool = True
    val_overlap: float = 0.25
    s_batch_size: int = 4
    num_workers: int = 2
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    amp: bool = True
    deterministic: bool = False
    cache_dir: Path | None = None
    allow_unknown_stage1: bool = False
    command: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings, ``patch_size`` as a list)."""
        out = options_to_dict(self, PATH_OPTIONS)
        out["patch_size"] = [int(p) for p in self.patch_size]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stage2TrainConfig:
        """Inverse of :meth:`to_dict` (unknown keys are ignored so old runs stay readable)."""
        kwargs = options_kwargs(cls, data, PATH_OPTIONS)
        if "patch_size" in kwargs:
            kwargs["patch_size"] = tuple(int(p) for p in kwargs["patch_size"])
        return cls(**kwargs)

    def check(self) -> None:
        """Raise :class:`Seg2RefineError` naming the first invalid option."""
        for name in ("width", "epochs", "batch_size", "patches_per_epoch", "s_batch_size"):
            if getattr(self, name) < 1:
                raise Seg2RefineError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.disc_width is not None and self.disc_width < 1:
            raise Seg2RefineError(f"--disc-width must be >= 1, got {self.disc_width}")
        if len(self.patch_size) != 3 or any(p < 32 or p % 16 for p in self.patch_size):
            raise Seg2RefineError(f"--patch needs three sides, multiples of 16 and >= 32, got {self.patch_size}")
        if self.topology is not None and self.topology not in TOPOLOGY_TERMS:
            raise Seg2RefineError(f"--topology {self.topology!r}: expected one of {', '.join(TOPOLOGY_TERMS)}")
        if not (self.lr_g > 0 and self.lr_d > 0 and self.lam >= 0 and self.topology_weight >= 0):
            raise Seg2RefineError("--lr-g and --lr-d must be > 0, --lambda and --topology-weight >= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise Seg2RefineError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.vessel_fraction <= 1.0:
            raise Seg2RefineError(f"--vessel-fraction must be in [0, 1], got {self.vessel_fraction}")
        if not 0.0 <= self.val_overlap < 1.0:
            raise Seg2RefineError(f"--val-overlap must be in [0, 1), got {self.val_overlap}")
        if self.num_workers < 0:
            raise Seg2RefineError(f"--num-workers must be >= 0, got {self.num_workers}")

    def patch_config(self) -> PatchConfig:
        return PatchConfig(patch_size=self.patch_size, vessel_fraction=self.vessel_fraction, augment=self.augment)


def stored_run_config(run_dir: str | Path) -> Stage2TrainConfig:
    """The options a run was started with, from ``run_dir/last.json`` (for ``--resume`` without repeating them)."""
    config = read_config(Path(run_dir) / "last")
    stored = config.get("training", {}).get("config")
    if config.get("architecture") != "attention-gan-3d" or not isinstance(stored, dict):
        raise CheckpointError(f"{Path(run_dir) / 'last.json'}: holds no stage-2 training options to resume")
    return Stage2TrainConfig.from_dict(stored)


# ------------------------------------------------------------------------------------------------- which cases


def checkpoint_fingerprint(path: str | Path) -> str:
    """SHA-256 (hex) of a checkpoint's weights file and its architecture, model and preprocessing settings."""
    weights, _ = checkpoint_paths(path)
    config = read_config(path)
    digest = hashlib.sha256()
    with open(weights, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    facts = {k: config.get(k) for k in ("architecture", "model", "preprocess")}
    digest.update(json.dumps(facts, sort_keys=True).encode())
    return digest.hexdigest()


def stage2_split(
    cases: Sequence[Case], stage1_config: dict[str, Any], config: Stage2TrainConfig
) -> dict[str, list[str]]:
    """Stage-2 ``{"train", "val", "test"}`` case ids by the pool rule of the module doc.

    Raises :class:`DatasetError` when the pool overlaps the stage-1 training cases, is too small, or holds
    unlabelled cases; :class:`CheckpointError` when the stage-1 checkpoint records no training cases (unless
    ``config.allow_unknown_stage1``).
    """
    training = stage1_config.get("training") or {}
    recorded = (training.get("cases") or {}).get("train")
    if recorded is None and not config.allow_unknown_stage1:
        raise CheckpointError(
            f"{config.stage1}: the stage-1 checkpoint records no training cases, so stage 2 cannot make sure it "
            "trains on volumes stage 1 never saw; pass --allow-unknown-stage1 to use it anyway"
        )
    stage1_train = set(recorded or [])
    by_id = {case.case_id: case for case in cases}
    if config.split is not None:
        table = read_split(config.split, config.fold)
        missing = [i for i in table["val"] if i not in by_id]
        if missing:
            raise DatasetError(f"split file {config.split}: val case(s) not in {config.data}: {', '.join(missing[:5])}")
        pool, test = list(table["val"]), list(table["test"])
    else:
        test_fraction, seed = resolve_holdout(stage1_config, config)
        test = holdout_split(cases, 0.0, test_fraction, seed)["test"]
        held = stage1_train | set(test)
        pool = [case.case_id for case in cases if case.case_id not in held and case.label is not None]
    overlap = [i for i in pool if i in stage1_train]
    if overlap:
        raise DatasetError(
            f"stage-2 case(s) {', '.join(overlap[:5])}{' ...' if len(overlap) > 5 else ''} were used to train the "
            f"stage-1 model {config.stage1}; stage 2 must train on S from volumes stage 1 never saw "
            "(use the split's val cases of the fold stage 1 was trained on)"
        )
    unlabelled = [i for i in pool if by_id[i].label is None]
    if unlabelled:
        raise DatasetError(f"{config.data}: stage-2 case(s) without a label: {', '.join(unlabelled[:5])}")
    if not pool:
        raise DatasetError(f"{config.data}: no labelled case is left for stage 2 after the stage-1 and test cases")
    seed = resolve_holdout(stage1_config, config)[1]
    parts = holdout_split([by_id[i] for i in pool], config.val_fraction, 0.0, seed) if len(pool) > 1 else None
    if parts is None:
        if config.val_fraction > 0:
            raise DatasetError(f"{config.data}: stage 2 has a single case ({pool[0]}); it cannot hold out validation")
        parts = {"train": pool, "val": []}
    return {"train": parts["train"], "val": parts["val"], "test": sorted(test)}


def resolve_holdout(stage1_config: dict[str, Any], config: Stage2TrainConfig) -> tuple[float, int]:
    """``(test_fraction, split_seed)``: the given values, else the stage-1 run's, else 0.2 and 0."""
    stored = (stage1_config.get("training") or {}).get("config") or {}
    test_fraction = config.test_fraction if config.test_fraction is not None else stored.get("test_fraction")
    seed = config.split_seed if config.split_seed is not None else stored.get("split_seed")
    return (
        float(DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction),
        int(DEFAULT_SPLIT_SEED if seed is None else seed),
    )


def default_cache_dir(config: Stage2TrainConfig, stage1_config: dict[str, Any]) -> Path:
    """``config.cache_dir``, else the stage-1 run's cache folder if it exists, else ``<out>/cache``."""
    if config.cache_dir is not None:
        return Path(config.cache_dir)
    stored = ((stage1_config.get("training") or {}).get("config") or {}).get("cache_dir")
    for candidate in (stored, Path(config.stage1).parent / "cache"):
        if candidate and (Path(candidate) / "index.json").is_file():
            return Path(candidate)
    return Path(config.out) / "cache"


# -------------------------------------------------------------------------------------------------- the S cache


def _s_entry_fresh(entry: dict[str, Any], folder: Path, image_path: Path, fingerprint: str) -> bool:
    stat = image_path.stat()
    return (
        entry.get("version") == S_VERSION
        and entry.get("stage1") == fingerprint
        and entry.get("xprime") == {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        and (folder / entry.get("file", "")).is_file()
    )


def build_s_cache(
    cache: CacheIndex,
    case_ids: Sequence[str],
    stage1: LoadedModel,
    fingerprint: str,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 4,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """Stage-1 masks S (uint8, threshold 0.5) of ``case_ids`` beside the X' cache; ``{id: (npy path, counts)}``.

    Files: ``<cache>/stage1-s/<fingerprint[:16]>/<name>.s.npy`` and ``<name>.s.json`` (foreground voxels per
    axial slice, the stage-1 fingerprint and the X' file's size and mtime). Up-to-date files are reused. This
    rank makes its share ``case_ids[rank::world_size]``; call :func:`~seg2refine_core.distributed.barrier`
    and then again with ``world_size=1`` to read all entries.
    """
    folder = cache.root / S_DIR / fingerprint[:16]
    folder.mkdir(parents=True, exist_ok=True)
    about = folder / "stage1.json"
    if not about.is_file():
        write_text_atomic(about, json.dumps({"stage1": str(stage1.path), "fingerprint": fingerprint}) + "\n")
    out: dict[str, tuple[Path, tuple[int, ...]]] = {}
    mine = list(case_ids)[rank::world_size]
    for done, case_id in enumerate(mine):
        cached = cache[case_id]
        name = cached.image_path.name.removesuffix(".image.npy")
        meta = folder / f"{name}.s.json"
        try:
            entry = json.loads(meta.read_text())
        except (OSError, ValueError):
            entry = {}
        if not _s_entry_fresh(entry, folder, cached.image_path, fingerprint):
            stat = cached.image_path.stat()
            prob = segment_slices(stage1.model, cache.image(case_id), batch_size=batch_size, device=device,
                                  should_stop=should_stop)
            mask = (prob >= THRESHOLD).astype(np.uint8)
            del prob
            with atomic_path(folder / f"{name}.s.npy") as tmp:
                np.save(tmp, mask)
            entry = {
                "version": S_VERSION, "case_id": case_id, "file": f"{name}.s.npy", "stage1": fingerprint,
                "xprime": {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}, "threshold": THRESHOLD,
                "counts": [int(n) for n in mask.reshape(mask.shape[0], -1).sum(axis=1, dtype=np.int64)],
            }
            write_text_atomic(meta, json.dumps(entry) + "\n")
        out[case_id] = (folder / entry["file"], tuple(int(n) for n in entry["counts"]))
        if progress is not None:
            progress(done + 1, len(mine), f"stage-1 S: {case_id}")
    return out


# --------------------------------------------------------------------------------------------------- training


def _validate(
    generator: nn.Module, cache: CacheIndex, s_files: dict[str, tuple[Path, tuple[int, ...]]],
    val_ids: list[str], config: Stage2TrainConfig, info: distributed.DistInfo,
) -> dict[str, float | None]:
    """Mean Dice and Betti-0 error of Y (sliding window) and of S against T over whole validation volumes."""
    keys = ("val_dice_y", "val_dice_s", "val_b0_error_y", "val_b0_error_s")
    if not val_ids:
        return dict.fromkeys(keys)
    sums = [0.0] * 5
    for case_id in val_ids[info.rank :: info.world_size]:
        label = np.asarray(cache.label(case_id))
        s_mask = np.load(s_files[case_id][0])
        y = refine_volume(generator, cache.image(case_id), s_mask, patch_size=config.patch_size,
                          overlap=config.val_overlap, sw_batch_size=config.batch_size, device=info.device) >= THRESHOLD
        values = (dice(y, label), dice(s_mask, label), betti0_error(y, label), betti0_error(s_mask, label), 1.0)
        sums = [a + b for a, b in zip(sums, values, strict=True)]
    totals = distributed.all_reduce_sum(sums)
    return {k: v / totals[-1] for k, v in zip(keys, totals[:4], strict=True)}


def _check_resume(config: Stage2TrainConfig, state: dict[str, Any], split: dict[str, list[str]], fp: str) -> None:
    check_resume_options(config.out, config.to_dict(), state["config"], RUN_DEFINING, OPTION_NAMES)
    if state["stage1_fingerprint"] != fp:
        raise Seg2RefineError(f"{config.stage1}: not the stage-1 model the run in {config.out} was started with")
    if {"train": split["train"], "val": split["val"]} != state["cases"]:
        raise Seg2RefineError(f"{config.data}: the stage-2 train/val cases differ from those of the run being resumed")


def train_stage2(
    config: Stage2TrainConfig,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    on_epoch: EpochFn | None = None,
) -> dict[str, Any]:
    """Train stage 2 as the module doc describes and return a summary dict.

    progress(done, total, info) counts cases while caching (X', then S), then optimisation steps over all
    epochs; should_stop() is polled after every step: a stop saves ``last`` (resumable) and returns with
    ``stopped=True``. on_epoch(record) gets each epoch's metrics record (rank 0 only). Summary keys: run_dir,
    best, last, epochs_done, best_epoch, best_metric, best_value, stopped, train_cases, val_cases, patch_size,
    stage1_fingerprint, history.
    """
    config.check()
    info = distributed.init_distributed(config.device)
    run_dir = Path(config.out)
    state = open_run(run_dir, config.resume)
    stage1 = load_stage("stage1", config.stage1, info.device)
    fingerprint = checkpoint_fingerprint(config.stage1)
    cases = discover_cases(config.data, config.layout)
    split = stage2_split(cases, stage1.config, config)
    if state is not None:
        _check_resume(config, state, split, fingerprint)
    seed_run(config.seed, config.deterministic, info.device)

    train_ids, val_ids = split["train"], split["val"]
    by_id = {case.case_id: case for case in cases}
    preprocess = stage1.preprocess_config
    cache_dir = default_cache_dir(config, stage1.config)
    cache = prepare_xprime_cache([by_id[i] for i in train_ids + val_ids], cache_dir, preprocess, info, progress,
                                 should_stop)
    s_args = {"device": info.device, "batch_size": config.s_batch_size, "should_stop": should_stop}
    build_s_cache(cache, train_ids + val_ids, stage1, fingerprint, progress=progress if info.is_main else None,
                  rank=info.rank, world_size=info.world_size, **s_args)
    distributed.barrier()
    s_files = build_s_cache(cache, train_ids + val_ids, stage1, fingerprint, **s_args)
    del stage1

    dataset = PatchDataset(patch_sources(cache, train_ids, s_files), config.patch_config(), with_s=True)
    loader, sampler = patch_loader(
        dataset, batch_size=config.batch_size, patches_per_epoch=config.patches_per_epoch, seed=config.seed,
        num_workers=config.num_workers, rank=info.rank, world_size=info.world_size,
        pin_memory=info.device.type == "cuda",
    )
    steps_per_epoch = math.ceil(sampler.per_rank / config.batch_size)

    generator = AttentionGenerator3d(in_channels=2, out_channels=1, width=config.width)
    discriminator = PatchDiscriminator3d(in_channels=3, width=config.disc_width or config.width)
    if state is not None:
        from safetensors.torch import load_file

        load_state_strict(generator, load_file(str(run_dir / "last.safetensors")), "last.safetensors")
        load_state_strict(discriminator, state["discriminator"], "last.resume.pt (discriminator)")
    memory_format = torch.channels_last_3d if use_channels_last(info.device, 3) else torch.contiguous_format
    generator.to(info.device, memory_format=memory_format)
    discriminator.to(info.device, memory_format=memory_format)
    train_g, train_d = wrap_ddp(generator, info), wrap_ddp(discriminator, info)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr_g, betas=BETAS)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=config.lr_d, betas=BETAS)
    amp_dtype = autocast_dtype(info.device) if config.amp else None
    scaler_g = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    scaler_d = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    loss_fn = GeneratorLoss(lam=config.lam, use_delta_b0=config.delta_b0, topology=config.topology,
                            topology_weight=config.topology_weight)
    term_keys = ["d_loss", "g_loss", "g_adv", "g_dice", "g_delta_b0"] + (["g_topology"] if config.topology else [])

    epoch, step_in_epoch = 0, 0
    sums = dict.fromkeys(term_keys, 0.0)
    count = 0
    history = RunHistory.start(run_dir, info.is_main, state, score="val_dice_y", loss="g_loss",
                               validating=bool(val_ids), panels=PANELS, on_epoch=on_epoch)
    if state is not None:
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        scaler_g.load_state_dict(state["scaler_g"])
        scaler_d.load_state_dict(state["scaler_d"])
        restore_rng_state(state["rng"])
        epoch, step_in_epoch = int(state["epoch"]), int(state["step"])
        if info.is_main:  # the stored sums are over all ranks; rank 0 carries them
            sums, count = {k: float(v) for k, v in state["sums"].items()}, int(state["count"])

    run_config = config.to_dict()
    case_ids = {"train": train_ids, "val": val_ids}

    def checkpoint_config() -> dict[str, Any]:
        return {
            "architecture": "attention-gan-3d",
            "model": generator.config(),
            "preprocess": preprocess.to_dict(),
            "input": {"patch_size": list(config.patch_size), "s_input": "mask", "threshold": THRESHOLD},
            "training": {
                "stage": 2,
                **split_provenance(config),
                "cases": {**case_ids, "test": split["test"]},
                "stage1": {"path": str(config.stage1), "sha256": fingerprint},
                "epochs_done": epoch,
                "step_in_epoch": step_in_epoch,
                "epochs": config.epochs,
                "seed": config.seed,
                "lambda": config.lam,
                "delta_b0": config.delta_b0,
                "topology": config.topology,
                "topology_weight": config.topology_weight,
                "discriminator": discriminator.config(),
                "patches": config.patch_config().to_dict(),
                **history.provenance(info.world_size, config.command, run_config),
            },
        }

    def save_last() -> None:
        if not info.is_main:
            return
        save_checkpoint(run_dir / "last", generator, checkpoint_config())
        save_resume_state(
            resume_path(run_dir / "last"),
            {
                "epoch": epoch, "step": step_in_epoch, "sums": sums, "count": count,
                "discriminator": {k: v.detach().cpu() for k, v in discriminator.state_dict().items()},
                "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                "scaler_g": scaler_g.state_dict(), "scaler_d": scaler_d.state_dict(),
                "best": history.best.to_dict(), "rng": capture_rng_state(), "config": run_config,
                "cases": case_ids, "stage1_fingerprint": fingerprint,
            },
        )

    def autocast():
        return torch.autocast(info.device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    total_steps = config.epochs * steps_per_epoch
    global_step = epoch * steps_per_epoch + step_in_epoch
    stopped = False
    train_g.train()
    train_d.train()
    while epoch < config.epochs and not stopped:
        sampler.set_epoch(epoch, skip=step_in_epoch * config.batch_size)
        t0 = time.perf_counter()
        seen = 0
        for batch in loader:
            x = batch["input"].to(info.device, non_blocking=True)
            t = batch["label"].to(info.device, non_blocking=True)
            x = x.contiguous(memory_format=memory_format)
            t = t.contiguous(memory_format=memory_format)
            with autocast():
                y_logits = train_g(x)
            y_logits = y_logits.float()
            y = torch.sigmoid(y_logits)
            # D step (eq. 12): real concat(T, X', S) and fake concat(Y, X', S) in one batch
            pair = torch.cat([torch.cat([t, x], dim=1), torch.cat([y.detach(), x], dim=1)], dim=0)
            with autocast():
                d_logits = train_d(pair).float()
            d_real, d_fake = d_logits.split(x.shape[0])
            d_loss = discriminator_loss(d_real, d_fake)
            opt_d.zero_grad(set_to_none=True)
            scaler_d.scale(d_loss).backward()
            scaler_d.step(opt_d)
            scaler_d.update()
            # G step (eq. 10) with D frozen: plain module, so DDP sees one forward/backward per step
            discriminator.requires_grad_(False)
            with autocast():
                d_on_y = discriminator(torch.cat([y, x], dim=1)).float()
            g_loss, terms = loss_fn(d_on_y, y_logits, t)
            opt_g.zero_grad(set_to_none=True)
            scaler_g.scale(g_loss).backward()
            scaler_g.step(opt_g)
            scaler_g.update()
            discriminator.requires_grad_(True)

            values = {"d_loss": float(d_loss.detach()), "g_loss": terms["total"], "g_adv": terms["adv"],
                      "g_dice": terms["dice"], "g_delta_b0": terms["delta_b0"]}
            if config.topology:
                values["g_topology"] = terms["topology"]
            sums = {k: sums[k] + values[k] for k in term_keys}
            count += 1
            seen += x.shape[0]
            step_in_epoch += 1
            global_step += 1
            if info.is_main and progress is not None:
                progress(global_step, total_steps, f"epoch {epoch + 1}/{config.epochs} "
                         f"D {sums['d_loss'] / count:.3f} G {sums['g_loss'] / count:.3f}")
            if distributed.any_rank(should_stop is not None and bool(should_stop())):
                stopped = True
                break
        train_time = time.perf_counter() - t0
        if stopped:
            totals = distributed.all_reduce_sum([*sums.values(), count])
            sums, count = dict(zip(term_keys, totals[:-1], strict=True)), int(totals[-1])
            save_last()
            break
        if info.distributed:
            distributed.sync_buffers(generator)
        totals = distributed.all_reduce_sum([*sums.values(), count])
        means = {k: v / max(totals[-1], 1) for k, v in zip(term_keys, totals[:-1], strict=True)}
        if info.is_main and progress is not None:
            progress(global_step, total_steps, f"epoch {epoch + 1}/{config.epochs}: validating")
        metrics = _validate(generator, cache, s_files, val_ids, config, info)
        generator.train()
        epoch += 1
        record = {
            "epoch": epoch, **means, **metrics, "lr_g": config.lr_g, "lr_d": config.lr_d,
            "time_s": time.perf_counter() - t0,
            "patches_per_s": distributed.all_reduce_sum([seen])[0] / max(train_time, 1e-9),
        }
        step_in_epoch, sums, count = 0, dict.fromkeys(term_keys, 0.0), 0
        history.end_epoch(record, generator, checkpoint_config, save_last)
    distributed.barrier()
    return history.summary(epoch, stopped, train_cases=len(train_ids), val_cases=len(val_ids),
                           patch_size=list(config.patch_size), stage1_fingerprint=fingerprint)
