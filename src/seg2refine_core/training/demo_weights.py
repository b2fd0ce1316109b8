"""Build the bundled demo weights: both stages trained on synthetic phantoms by one command.

``seg2refine train demo`` (``make demo-weights``) makes two kinds of phantoms: legacy ones (seeds ``0 .. n-1``,
ids ``1 .. n``: a half-size heart in a heart-centred ~90-mm field of view) and cohort ones (seeds ``0 .. m-1``, ids
``c1 .. cm``: real-size hearts in a whole-chest field of view, with contrast, noise, PSF, voxel size, plaques and
stents drawn per case, :mod:`seg2refine_core.data.phantom.cohort`, scaled down to ``cohort_matrix`` in-plane voxels;
their left main is the looped one, ``LOOPED_LEFT_MAIN``, as when the bundled weights were trained).
It trains SFANet (stage 1) on a seeded hold-out split of them, then trains the 3D Attention-GAN (stage 2) on S that
the stage-1 model produced for the cases it never trained on (its validation cases, as the paper does with the
ImageCAS validation set), and copies both best checkpoints into the package's ``weights/`` folder as ``stage1`` and
``stage2`` (float16 on disk to stay small). Both runs augment with the ``default`` preset (contrast level, HU
scale/shift, noise, blur, low resolution, gamma, zoom, rotation, flips; :mod:`seg2refine_core.data.augment`). The demo
evaluates on seed 1000, never used here. These are demo weights: trained on synthetic data only, not for clinical or
research use on real scans.

Both stages train in one fixed, coarse canonical space, LPS at ``target_spacing`` = 1.0 x 0.7 x 0.7 mm, recorded in
both checkpoints: every case is cached mapped there, and every input, whatever its voxel order and size, is mapped
there at inference, so a real-size CT (512 x 512 in-plane at 0.4 mm) is segmented on about 290 x 290 voxels per slice
and stays fast on a CPU.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seg2refine_core.progress import ProgressFn, StopFn
from seg2refine_core.tools.demo import DEMO_SEED
from seg2refine_core.training.options import AUGMENT_PRESETS, option


@dataclass(kw_only=True)
class DemoWeightsConfig:
    """Sizes and budgets of the demo-weights training (the time ``make demo-weights`` takes on this 2-core CPU is in
    the README's Demo weights section). Every field is an option of ``seg2refine train demo``; the stage-1 and
    stage-2 runs take the other options at their defaults."""

    out: Path = option(help="where the stage1/stage2 .safetensors + .json go (the package's weights/ folder for "
                            "the bundled weights)", metavar="DIR", group="run")
    work: Path = option(Path("runs/demo-weights"), help="folder for the phantoms, both runs and their caches",
                        metavar="DIR", group="run")
    n_cases: int = option(8, help="legacy phantoms to make (seeds 0..N-1, ids 1..N); stage 1 trains on a hold-out "
                                  "split of all phantoms, stage 2 on the rest", flag="--cases", metavar="N",
                          group="cases")
    shape: tuple[int, int, int] = option((96, 128, 128), help="legacy phantom shape in voxels",
                                         metavar=("Z", "Y", "X"), group="cases")
    cohort_cases: int = option(10, help="cohort phantoms to make (seeds 0..M-1, ids c1..cM: real-size hearts, "
                                        "whole-chest field of view; contrast, noise, PSF, voxels drawn per case)",
                               metavar="M", group="cases")
    cohort_matrix: int = option(256, help="in-plane voxels of the cohort phantoms (512 is a real-size scan; 256 keeps "
                                          "the field of view at twice the voxel size)", metavar="N", group="cases")
    val_fraction: float = option(0.4, help="share of the phantoms stage 1 does not train on (its validation cases, "
                                           "stage 2's cases)", metavar="F", group="cases")
    target_spacing: tuple[float, float, float] = option(
        (1.0, 0.7, 0.7), help="the canonical spacing (sz sy sx, mm, LPS) both stages train in and record: fixed and "
                              "coarse, so that real-size CT stays fast on a CPU", metavar=("SZ", "SY", "SX"))
    width: int = option(16, help="width of both networks", metavar="W")
    stage1_epochs: int = option(6, help="stage-1 epochs", metavar="E")
    stage1_samples_per_epoch: int = option(1600, help="stage-1 slices per epoch", metavar="N")
    stage1_crop: tuple[int, int] = option((160, 160), help="stage-1 training slice size (112 mm at 0.7 mm: most of a "
                                                          "real-size heart's coronary tree)", metavar=("H", "W"))
    stage1_batch_size: int = option(8, help="stage-1 slices per step", metavar="B")
    stage1_lr: float = option(1e-3, help="stage-1 Adam learning rate: 10x the paper's 1e-4, which left SFANet w=16 at "
                                         "validation Dice ~0.01 after 1,000 slices, too slow for a CPU budget of a "
                                         "few thousand slices", metavar="LR")
    stage2_epochs: int = option(60, help="stage-2 epochs", metavar="E")
    stage2_patches_per_epoch: int = option(32, help="stage-2 patches per epoch", metavar="N")
    stage2_batch_size: int = option(2, help="stage-2 patches per step", metavar="B")
    patch_size: tuple[int, int, int] = option((64, 64, 64), help="stage-2 patch (d h w), multiples of 16",
                                              flag="--patch", metavar=("D", "H", "W"))
    seed: int = option(0, help="seed of both runs and of stage 1's hold-out split", metavar="S")
    augment: str = option("default", help="augmentation preset of both runs (see 'train stage1 --help'); none is the "
                                          "paper's recipe", choices=AUGMENT_PRESETS)
    device: str = option("auto", help="auto (cuda, then mps, then cpu), cuda, cuda:N, mps or cpu", metavar="D",
                         group="system")
    threads: int | None = option(None, help="CPU threads for torch (default: one per core that is idle when the "
                                            "run starts, at least 1)", metavar="N",
                                 group="system")
    num_workers: int = option(1, help="DataLoader worker processes", metavar="N", group="system")


def train_demo_weights(
    config: DemoWeightsConfig,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> dict[str, Any]:
    """Run the three steps (phantoms, stage 1, stage 2) and install the weights; returns a summary."""
    from seg2refine_core.data.phantom import LOOPED_LEFT_MAIN, PhantomOptions, make_phantom, write_phantom_case
    from seg2refine_core.training.stage1 import Stage1TrainConfig, train_stage1
    from seg2refine_core.training.stage2 import Stage2TrainConfig, train_stage2

    if max(config.n_cases, config.cohort_cases) >= DEMO_SEED:
        raise ValueError(f"the phantom counts must stay below the demo seed {DEMO_SEED}")
    work = Path(config.work)
    data = work / "phantoms"
    t0 = time.perf_counter()
    cases = [(str(seed + 1), {"shape": config.shape, "seed": seed}) for seed in range(config.n_cases)]
    loop = PhantomOptions(left_main_mm=LOOPED_LEFT_MAIN)
    cases += [(f"c{seed + 1}", {"seed": seed, "cohort": True, "matrix": config.cohort_matrix, "options": loop})
              for seed in range(config.cohort_cases)]
    for done, (case_id, kwargs) in enumerate(cases, 1):
        if not (data / f"{case_id}.label.nii.gz").exists():
            write_phantom_case(make_phantom(**kwargs), data, case_id)
        if progress is not None:
            progress(done, len(cases), f"phantom {done}/{len(cases)}")
    s1 = train_stage1(
        Stage1TrainConfig(
            data=data, out=work / "stage1", val_fraction=config.val_fraction, test_fraction=0.0,
            split_seed=config.seed, variant="sfanet", width=config.width, epochs=config.stage1_epochs,
            batch_size=config.stage1_batch_size, samples_per_epoch=config.stage1_samples_per_epoch,
            lr=config.stage1_lr, crop=config.stage1_crop, num_workers=config.num_workers, device=config.device,
            threads=config.threads,
            seed=config.seed, augment=config.augment, target_spacing=config.target_spacing,
            command="seg2refine train demo",
        ),
        progress=progress, should_stop=should_stop,
    )
    s2 = train_stage2(
        Stage2TrainConfig(
            data=data, stage1=Path(s1["best"]), out=work / "stage2", width=config.width,
            patch_size=config.patch_size, epochs=config.stage2_epochs, batch_size=config.stage2_batch_size,
            patches_per_epoch=config.stage2_patches_per_epoch, num_workers=config.num_workers,
            device=config.device, threads=config.threads, seed=config.seed, augment=config.augment,
            target_spacing=config.target_spacing, command="seg2refine train demo",
        ),
        progress=progress, should_stop=should_stop,
    )
    provenance = {
        "command": f"seg2refine train demo --out {config.out}",
        "data": f"synthetic phantoms: legacy seeds 0-{config.n_cases - 1} at shape {list(config.shape)}, cohort "
                f"seeds 0-{config.cohort_cases - 1} at matrix {config.cohort_matrix}",
        "augment": config.augment,
        "evaluated_on": f"phantom seed {DEMO_SEED} (make demo)",
        "minutes": round((time.perf_counter() - t0) / 60, 1),
        "note": "demo weights trained on synthetic phantoms only",
    }
    installed = {name: install(Path(run["best"]), Path(config.out) / name, provenance)
                 for name, run in (("stage1", s1), ("stage2", s2))}
    return {"stage1": s1, "stage2": s2, "installed": {k: str(v) for k, v in installed.items()}, **provenance}


def install(best: Path, target: Path, provenance: dict[str, Any]) -> Path:
    """Copy checkpoint ``best`` to ``target`` (a stem) in float16, adding ``provenance`` to its training record."""
    import torch

    from seg2refine_core.io.checkpoint import load_checkpoint, read_config, save_checkpoint

    model, _ = load_checkpoint(best)
    config = read_config(best)
    config.pop("format", None)
    config.pop("version", None)
    config["training"] = {**config.get("training", {}), "demo_weights": provenance}
    target.parent.mkdir(parents=True, exist_ok=True)
    path = save_checkpoint(target, model, config, dtype=torch.float16)
    metrics = best.parent / "metrics.jsonl"
    if metrics.is_file():
        shutil.copyfile(metrics, target.parent / f"{target.name}.metrics.jsonl")
    return path


def describe(out: Path) -> str:
    """One line per installed checkpoint: size and best validation metric."""
    lines = []
    for name in ("stage1", "stage2"):
        weights = out / f"{name}.safetensors"
        if weights.is_file():
            training = json.loads((out / f"{name}.json").read_text()).get("training", {})
            best = {k: v for k, v in training.items() if k.startswith("best")}
            lines.append(f"{weights} ({weights.stat().st_size / 1e6:.1f} MB) {best}")
    return "\n".join(lines)
