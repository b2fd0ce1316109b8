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
- **Canonical space.** Stage 2 trains in its own canonical space (``target_spacing``, else nnU-Net's rule over its
  training cases' headers, :func:`~seg2refine_core.training.cases.training_space`), recorded in its checkpoints;
  stage 1 keeps the space its checkpoint records. Each stage maps its own input, as the
  :class:`~seg2refine_core.inference.predictor.Predictor` does at inference.
- **Inputs.** The CT comes from the memmap cache of HU in stage 2's space (:mod:`seg2refine_core.data.cache`); X' is
  made from it with the stage-1 checkpoint's preprocessing (stage 2 must see the same X'), per patch on the fly and
  for whole volumes when S is made and when validating. S is made once per pool case and thresholded at 0.5 into a
  uint8 mask on stage 2's grid: when stage 1 records the same space, by
  :func:`~seg2refine_core.inference.stage1.segment_slices` on the cached HU; otherwise (another space, or an older
  stage-1 checkpoint that records none and runs on the native grid) by the Predictor's stage 1 on the case's file
  in stage 1's space, its probabilities mapped back to the file's grid and then into stage 2's space, exactly the
  path of S at inference. S is stored beside the HU cache under ``stage1-s/<fingerprint>/`` (fingerprint = SHA-256
  of the stage-1 weights, model config, preprocessing and canonical space): another stage-1 model gets its own
  folder, a rebuilt HU file is noticed by its size and mtime. G's input is ``concat(X', S)`` with S the float
  {0, 1} mask, exactly what :func:`~seg2refine_core.inference.stage2.refine_volume` gets at inference time.
- **Patches.** :mod:`seg2refine_core.data.patches` (vessel-centred and random patches, seeded per patch and sharded
  across ranks), augmented by the ``augment`` preset (:mod:`seg2refine_core.data.augment`): intensity on the HU of
  the patch (CT only), spatial transforms on X', S and T together, random masking of S; ``none`` is the recipe
  before the presets (rotation ≤ 15°, masking of S, Gaussian noise on X').
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

The run itself (folder, resume, seeding, DDP, stop, progress, log, checkpoints) is the shared loop of
:mod:`seg2refine_core.training.loop`; :class:`Stage2Trainer` supplies the pool, the S cache, G and D, one step of
Algorithm 1 and the validation. The options are :class:`~seg2refine_core.training.configs.Stage2TrainConfig`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from seg2refine_core import distributed
from seg2refine_core.data.augment import augment_preset
from seg2refine_core.data.cache import CacheIndex
from seg2refine_core.data.canonical import CONFIG_KEY, CanonicalSpace, to_canonical
from seg2refine_core.data.datasets import Case, discover_cases, holdout_split, read_split
from seg2refine_core.data.patches import PatchConfig, PatchDataset, patch_loader, patch_sources
from seg2refine_core.data.sampling import BalancedSampler
from seg2refine_core.errors import CheckpointError, DatasetError, Seg2RefineError
from seg2refine_core.evaluation.metrics import betti0_error, dice
from seg2refine_core.inference.models import LoadedModel, load_stage, use_channels_last
from seg2refine_core.inference.stage1 import segment_slices
from seg2refine_core.inference.stage2 import refine_volume
from seg2refine_core.io.atomic import atomic_path, write_text_atomic
from seg2refine_core.io.checkpoint import checkpoint_paths, load_state_strict, read_config
from seg2refine_core.io.volume import read_volume
from seg2refine_core.nets.attention_gan import AttentionGenerator3d, PatchDiscriminator3d
from seg2refine_core.progress import ProgressFn, StopFn
from seg2refine_core.training.cases import prepare_hu_cache, training_space
from seg2refine_core.training.configs import Stage2TrainConfig
from seg2refine_core.training.gan_losses import GeneratorLoss, discriminator_loss
from seg2refine_core.training.history import EpochFn
from seg2refine_core.training.loop import StepFn, Trainer

THRESHOLD = 0.5
BETAS = (0.5, 0.999)
S_DIR = "stage1-s"
S_VERSION = 2  # 1: made from the float16 X' cache, keyed by the X' file
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_SPLIT_SEED = 0
PANELS = {
    "losses": ["d_loss", "g_loss"],
    "generator terms": ["g_adv", "g_dice", "g_delta_b0", "g_topology"],
    "validation Dice": ["val_dice_y", "val_dice_s"],
    "validation Betti-0 error": ["val_b0_error_y", "val_b0_error_s"],
}


# ------------------------------------------------------------------------------------------------- which cases


def checkpoint_fingerprint(path: str | Path) -> str:
    """SHA-256 (hex) of a checkpoint's weights file and its architecture, model and preprocessing settings, and its
    canonical space when it records one."""
    weights, _ = checkpoint_paths(path)
    config = read_config(path)
    digest = hashlib.sha256()
    with open(weights, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    facts = {k: config.get(k) for k in ("architecture", "model", "preprocess")}
    if CONFIG_KEY in config:  # checkpoints from before canonical spaces keep their fingerprint
        facts[CONFIG_KEY] = config[CONFIG_KEY]
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
        if candidate and any(Path(candidate).glob("*/index.json")):
            return Path(candidate)
    return Path(config.out) / "cache"


# -------------------------------------------------------------------------------------------------- the S cache


def _s_entry_fresh(entry: dict[str, Any], folder: Path, hu_path: Path, fingerprint: str) -> bool:
    stat = hu_path.stat()
    return (
        entry.get("version") == S_VERSION
        and entry.get("stage1") == fingerprint
        and entry.get("hu") == {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        and (folder / entry.get("file", "")).is_file()
    )


def build_s_cache(
    cache: CacheIndex,
    case_ids: Sequence[str],
    stage1: LoadedModel,
    fingerprint: str,
    *,
    sources: Mapping[str, Case] | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 4,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """Stage-1 masks S (uint8, threshold 0.5) of ``case_ids`` on the HU cache's grid, stored beside it;
    ``{id: (npy path, counts)}``.

    When ``stage1`` records the cache's canonical space, S is the stage-1 model on the whole volume's X', made from
    the cached HU with the model's preprocessing. Otherwise each case is read from its file in ``sources`` and S is
    what inference gives (:func:`stage1_s_on`). Files: ``<cache>/stage1-s/<fingerprint[:16]>/<name>.s.npy`` and
    ``<name>.s.json`` (foreground voxels per axial slice, the stage-1 fingerprint and the HU file's size and mtime).
    Up-to-date files are reused. This rank makes its share ``case_ids[rank::world_size]``; call
    :func:`~seg2refine_core.distributed.barrier` and then again with ``world_size=1`` to read all entries. Raises
    ValueError when S must come from the files and ``sources`` lacks a case.
    """
    folder = cache.root / S_DIR / fingerprint[:16]
    folder.mkdir(parents=True, exist_ok=True)
    about = folder / "stage1.json"
    if not about.is_file():
        write_text_atomic(about, json.dumps({"stage1": str(stage1.path), "fingerprint": fingerprint}) + "\n")
    same_space = stage1.space == cache.space
    out: dict[str, tuple[Path, tuple[int, ...]]] = {}
    mine = list(case_ids)[rank::world_size]
    for done, case_id in enumerate(mine):
        cached = cache[case_id]
        name = cached.hu_path.name.removesuffix(".hu.npy")
        meta = folder / f"{name}.s.json"
        try:
            entry = json.loads(meta.read_text())
        except (OSError, ValueError):
            entry = {}
        if not _s_entry_fresh(entry, folder, cached.hu_path, fingerprint):
            stat = cached.hu_path.stat()
            if same_space:
                xprime = cache.xprime(case_id, stage1.preprocess_config)
                prob = segment_slices(stage1.model, xprime, batch_size=batch_size, device=device,
                                      should_stop=should_stop)
                del xprime
                mask = (prob >= THRESHOLD).astype(np.uint8)
                del prob
            else:
                if sources is None or case_id not in sources:
                    raise ValueError(f"S of case {case_id!r} must be made from its file: give its Case in sources")
                mask = stage1_s_on(sources[case_id], stage1, cache.space, device=device, batch_size=batch_size,
                                   should_stop=should_stop)
                if mask.shape != cached.shape:
                    raise DatasetError(f"case {case_id!r}: S on {mask.shape} does not match its cache {cached.shape}")
            with atomic_path(folder / f"{name}.s.npy") as tmp:
                np.save(tmp, mask)
            entry = {
                "version": S_VERSION, "case_id": case_id, "file": f"{name}.s.npy", "stage1": fingerprint,
                "hu": {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}, "threshold": THRESHOLD,
                "made": "from the cached HU" if same_space else "from the file, through both canonical mappings",
                "counts": [int(n) for n in mask.reshape(mask.shape[0], -1).sum(axis=1, dtype=np.int64)],
            }
            write_text_atomic(meta, json.dumps(entry) + "\n")
        out[case_id] = (folder / entry["file"], tuple(int(n) for n in entry["counts"]))
        if progress is not None:
            progress(done + 1, len(mine), f"stage-1 S: {case_id}")
    return out


def stage1_s_on(
    case: Case, stage1: LoadedModel, space: CanonicalSpace | None, *, device: torch.device | str = "cpu",
    batch_size: int = 4, should_stop: StopFn | None = None,
) -> np.ndarray:
    """S of ``case`` (uint8, threshold 0.5) on the grid of ``space``, made as inference makes stage 2's S input:
    stage 1 in its own space (:class:`~seg2refine_core.inference.predictor.Predictor`), its probabilities on the
    file's grid, mapped into ``space`` like the image (trilinear) and thresholded."""
    from seg2refine_core.inference.predictor import Predictor

    volume = read_volume(case.image)
    predictor = Predictor(stage1=stage1, device=str(device), batch_size=batch_size, threshold=THRESHOLD)
    s_prob = predictor.predict_volume(volume, should_stop=should_stop).s_prob
    mapped, _ = to_canonical(replace(volume, array=s_prob), space)
    return (mapped >= THRESHOLD).astype(np.uint8)


# --------------------------------------------------------------------------------------------------- training


class Stage2Trainer(Trainer[Stage2TrainConfig]):
    """Stage 2 on the shared loop: the pool, the X' and S caches, G and D with their Adam optimizers, one step of
    Algorithm 1 and the validation of Y and S. ``best`` and ``last`` hold G; D, both optimizers and both loss
    scalers go to ``last.resume.pt``. Records hold the mean ``d_loss``, ``g_loss`` and G's terms, ``val_dice_y``,
    ``val_dice_s``, ``val_b0_error_y``, ``val_b0_error_s``, ``lr_g``, ``lr_d`` and ``patches_per_s``."""

    config_class = Stage2TrainConfig
    architecture = "attention-gan-3d"
    stage = 2
    title = "stage-2"
    score = "val_dice_y"
    loss = "g_loss"
    panels = PANELS

    def select_cases(self) -> dict[str, list[str]]:
        """The stage-2 pool of the stage-1 checkpoint (loaded here; its fingerprint keys the S cache)."""
        config = self.config
        self.stage1 = load_stage("stage1", config.stage1, self.info.device)
        self.fingerprint = checkpoint_fingerprint(config.stage1)
        cases = discover_cases(config.data, config.layout)
        self.by_id = {case.case_id: case for case in cases}
        self.split = stage2_split(cases, self.stage1.config, config)
        return {"train": self.split["train"], "val": self.split["val"]}

    def check_resume(self, state: dict[str, Any]) -> None:
        super().check_resume(state)
        if state["stage1_fingerprint"] != self.fingerprint:
            raise Seg2RefineError(f"{self.config.stage1}: not the stage-1 model the run in {self.config.out} was "
                                  "started with")

    def prepare_data(self) -> tuple[DataLoader, BalancedSampler]:
        """The run's canonical space (:func:`~seg2refine_core.training.cases.training_space` over the stage-2
        training cases), the HU cache in it, then S on its grid (both shared out between ranks), then the patches
        (X' with the stage-1 model's preprocessing)."""
        config, info = self.config, self.info
        ids = self.cases["train"] + self.cases["val"]
        self.preprocess = self.stage1.preprocess_config
        self.stage1_space = self.stage1.space
        self.space, self.space_rule = training_space(config, [self.by_id[i] for i in self.cases["train"]])
        cache_dir = default_cache_dir(config, self.stage1.config)
        self.cache = prepare_hu_cache([self.by_id[i] for i in ids], cache_dir, self.space, info, self.progress,
                                      self.should_stop)
        s_args = {"device": info.device, "batch_size": config.s_batch_size, "should_stop": self.should_stop,
                  "sources": self.by_id}
        build_s_cache(self.cache, ids, self.stage1, self.fingerprint, rank=info.rank, world_size=info.world_size,
                      progress=self.progress if info.is_main else None, **s_args)
        distributed.barrier()
        self.s_files = build_s_cache(self.cache, ids, self.stage1, self.fingerprint, **s_args)
        del self.stage1
        dataset = PatchDataset(patch_sources(self.cache, self.cases["train"], self.s_files), self.patch_config(),
                               with_s=True, preprocess=self.preprocess)
        return patch_loader(
            dataset, batch_size=config.batch_size, patches_per_epoch=config.patches_per_epoch, seed=config.seed,
            num_workers=config.num_workers, rank=info.rank, world_size=info.world_size,
            pin_memory=info.device.type == "cuda",
        )

    def patch_config(self) -> PatchConfig:
        """How patches are drawn and augmented (the ``augment`` preset, 3D)."""
        config = self.config
        return PatchConfig(patch_size=config.patch_size, vessel_fraction=config.vessel_fraction,
                           augment=augment_preset(config.augment, ndim=3))

    def build_networks(self, weights: dict[str, torch.Tensor] | None) -> None:
        """G (``self.model``) and D, channels-last-3d where it helps, DDP-wrapped; Adam (betas 0.5, 0.999) each."""
        config, device = self.config, self.info.device
        self.generator = AttentionGenerator3d(in_channels=2, out_channels=1, width=config.width)
        self.discriminator = PatchDiscriminator3d(in_channels=3, width=config.disc_width or config.width)
        if weights is not None:
            load_state_strict(self.generator, weights, "last.safetensors")
        self.memory_format = torch.channels_last_3d if use_channels_last(device, 3) else torch.contiguous_format
        self.generator.to(device, memory_format=self.memory_format)
        self.discriminator.to(device, memory_format=self.memory_format)
        self.model = self.generator
        self.train_g, self.train_d = self.ddp(self.generator), self.ddp(self.discriminator)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=config.lr_g, betas=BETAS)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=config.lr_d, betas=BETAS)
        self.scaler_g, self.scaler_d = self.grad_scaler(), self.grad_scaler()
        self.loss_fn = GeneratorLoss(lam=config.lam, use_delta_b0=config.delta_b0, topology=config.topology,
                                     topology_weight=config.topology_weight)
        self.train_g.train()
        self.train_d.train()

    def loss_terms(self) -> tuple[str, ...]:
        return ("d_loss", "g_loss", "g_adv", "g_dice", "g_delta_b0") + (("g_topology",) if self.config.topology else ())

    def train_step(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, float], int]:
        """Algorithm 1: D's step on real and fake pairs (eq. 12), then G's (eq. 10) with D frozen."""
        x = batch["input"].to(self.info.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        t = batch["label"].to(self.info.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        with self.autocast():
            y_logits = self.train_g(x)
        y_logits = y_logits.float()
        y = torch.sigmoid(y_logits)
        # D step (eq. 12): real concat(T, X', S) and fake concat(Y, X', S) in one batch
        pair = torch.cat([torch.cat([t, x], dim=1), torch.cat([y.detach(), x], dim=1)], dim=0)
        with self.autocast():
            d_logits = self.train_d(pair).float()
        d_real, d_fake = d_logits.split(x.shape[0])
        d_loss = discriminator_loss(d_real, d_fake)
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler_d.scale(d_loss).backward()
        self.scaler_d.step(self.opt_d)
        self.scaler_d.update()
        # G step (eq. 10) with D frozen: plain module, so DDP sees one forward/backward per step
        self.discriminator.requires_grad_(False)
        with self.autocast():
            d_on_y = self.discriminator(torch.cat([y, x], dim=1)).float()
        g_loss, terms = self.loss_fn(d_on_y, y_logits, t)
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler_g.scale(g_loss).backward()
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        self.discriminator.requires_grad_(True)
        values = {"d_loss": float(d_loss.detach()), "g_loss": terms["total"], "g_adv": terms["adv"],
                  "g_dice": terms["dice"], "g_delta_b0": terms["delta_b0"]}
        if self.config.topology:
            values["g_topology"] = terms["topology"]
        return values, x.shape[0]

    def validation(self) -> dict[str, float | None]:
        """Mean Dice and Betti-0 error of Y (sliding window) and of S against T over whole validation volumes."""
        keys = ("val_dice_y", "val_dice_s", "val_b0_error_y", "val_b0_error_s")
        val_ids, info, config = self.cases["val"], self.info, self.config
        if not val_ids:
            return dict.fromkeys(keys)
        sums = [0.0] * 5
        for case_id in val_ids[info.rank :: info.world_size]:
            label = np.asarray(self.cache.label(case_id))
            s_mask = np.load(self.s_files[case_id][0])
            y = refine_volume(self.generator, self.cache.xprime(case_id, self.preprocess), s_mask,
                              patch_size=config.patch_size, overlap=config.val_overlap,
                              sw_batch_size=config.batch_size, device=info.device) >= THRESHOLD
            values = (dice(y, label), dice(s_mask, label), betti0_error(y, label), betti0_error(s_mask, label), 1.0)
            sums = [a + b for a, b in zip(sums, values, strict=True)]
        totals = distributed.all_reduce_sum(sums)
        self.generator.train()
        return {k: v / totals[-1] for k, v in zip(keys, totals[:4], strict=True)}

    def learning_rates(self) -> dict[str, float]:
        return {"lr_g": self.config.lr_g, "lr_d": self.config.lr_d}

    def progress_text(self, means: dict[str, float]) -> str:
        return f"D {means['d_loss']:.3f} G {means['g_loss']:.3f}"

    def checkpoint_entries(self) -> dict[str, Any]:
        return {"model": self.generator.config(), "preprocess": self.preprocess.to_dict(),
                "input": {"patch_size": list(self.config.patch_size), "s_input": "mask", "threshold": THRESHOLD}}

    def recorded_cases(self) -> dict[str, list[str]]:
        return {**self.cases, "test": self.split["test"]}

    def training_facts(self) -> dict[str, Any]:
        """The stage-1 model, G's loss, D, ``patches`` (how they are drawn) and ``augmentation`` (every probability
        and range of the ``augment`` preset, 3D)."""
        config = self.config
        patches = self.patch_config().to_dict()
        augmentation = patches.pop("augment")
        return {
            "stage1": {"path": str(config.stage1), "sha256": self.fingerprint,
                       CONFIG_KEY: None if self.stage1_space is None else self.stage1_space.to_dict()},
            "lambda": config.lam,
            "delta_b0": config.delta_b0,
            "topology": config.topology,
            "topology_weight": config.topology_weight,
            "discriminator": self.discriminator.config(),
            "patches": patches,
            "augmentation": augmentation,
        }

    def resume_state(self) -> dict[str, Any]:
        return {
            "discriminator": {k: v.detach().cpu() for k, v in self.discriminator.state_dict().items()},
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict(),
            "stage1_fingerprint": self.fingerprint,
        }

    def load_resume_state(self, state: dict[str, Any]) -> None:
        load_state_strict(self.discriminator, state["discriminator"], "last.resume.pt (discriminator)")
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.scaler_g.load_state_dict(state["scaler_g"])
        self.scaler_d.load_state_dict(state["scaler_d"])

    def summary_details(self) -> dict[str, Any]:
        return {"patch_size": list(self.config.patch_size), "stage1_fingerprint": self.fingerprint}


def train_stage2(
    config: Stage2TrainConfig,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    on_epoch: EpochFn | None = None,
    on_step: StepFn | None = None,
) -> dict[str, Any]:
    """Train stage 2 as the module doc describes and return the summary of
    :meth:`Trainer.run <seg2refine_core.training.loop.Trainer.run>` (plus ``patch_size`` and
    ``stage1_fingerprint``). ``progress`` first counts cases while caching (X', then S); ``on_step`` gets G's loss.
    """
    return Stage2Trainer(config, progress, should_stop, on_epoch, on_step).run()
