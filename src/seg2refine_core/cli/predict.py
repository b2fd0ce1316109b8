"""`seg2refine predict`: run stage 1 (S) and/or stage 2 (Y) on one volume or a folder of volumes."""

from __future__ import annotations

import argparse
from pathlib import Path

from seg2refine_core.cli import add_threads_option
from seg2refine_core.devices import DEVICE_CHOICES
from seg2refine_core.errors import Seg2RefineError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="segment CCTA volumes: S (stage 1) and Y (stage 2)",
        description=(
            "Segment one volume or every volume in a folder (.nii, .nii.gz, .nrrd; ImageCAS '<id>.img.nii.gz' names "
            "give '<id>'). Writes <id>.s.nii.gz (stage 1) and <id>.y.nii.gz (stage 2) with the input's geometry. "
            "With neither --stage1 nor --stage2, both stages use the bundled demo weights; with --stage1 alone, only "
            "stage 1 runs; with --stage2 alone, stage 1 uses the bundled weights. The model stays loaded across "
            "the cohort and only one volume is held in memory at a time."
        ),
    )
    p.add_argument("inputs", type=Path, nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--stage1", metavar="CKPT", help="stage-1 (SFANet) checkpoint, or 'bundled'")
    p.add_argument("--stage2", metavar="CKPT", help="stage-2 (3D Attention-GAN) checkpoint, or 'bundled'")
    p.add_argument("--baseline3d", metavar="CKPT", type=Path,
                   help="instead of the two stages: a 3D UNet baseline checkpoint (train baseline3d) -> <id>.b.nii.gz")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--save-prob", action="store_true", help="also write probabilities <id>.s_prob / <id>.y_prob")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold for masks (default 0.5)")
    p.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICE_CHOICES)} (default auto)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="axial slices per stage-1 batch (default: ~256² pixels per batch on CPU; 8 on GPUs)")
    p.add_argument("--overlap", type=float, default=0.25, help="stage-2 sliding-window overlap (default 0.25)")
    p.add_argument("--sw-batch-size", type=int, default=None,
                   help="stage-2 windows per forward (default: 1 on CPU, 8 on GPUs)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out")
    add_threads_option(p)
    p.set_defaults(run=run)


def resolve_stages(stage1: str | None, stage2: str | None) -> tuple[str | None, str | None]:
    """Map the CLI's --stage1/--stage2 to checkpoint paths ('' = bundled, None = stage not run)."""
    if stage1 is None and stage2 is None:
        return "", ""
    s1 = "" if stage1 in (None, "bundled") else stage1
    s2 = None if stage2 is None else ("" if stage2 == "bundled" else stage2)
    return s1, s2


#: Name endings (before the file suffix) of files that are never taken as input images in a folder.
NOT_IMAGES = (".label", ".s", ".y", ".b", ".s_prob", ".y_prob", ".b_prob")


def list_inputs(inputs: list[Path]) -> list[tuple[str, Path]]:
    """(case id, image path) for files and folders.

    In a folder, ImageCAS images (``<id>.img.*``) are taken when there are any; otherwise every volume except
    labels and this tool's outputs (names ending in :data:`NOT_IMAGES`), so re-running on a folder is safe.
    """
    from seg2refine_core.io.volume import SUPPORTED_SUFFIXES, strip_suffix

    found: list[tuple[str, Path]] = []
    for item in inputs:
        if item.is_dir():
            volumes = sorted(
                p for p in item.rglob("*")
                if p.is_file() and p.name.lower().endswith(SUPPORTED_SUFFIXES) and not p.name.startswith(".")
            )
            images = [p for p in volumes if strip_suffix(p).endswith(".img")]
            files = images or [p for p in volumes if not strip_suffix(p).endswith(NOT_IMAGES)]
            if not files:
                raise Seg2RefineError(f"{item}: no .nii, .nii.gz or .nrrd volumes found")
        elif item.exists():
            files = [item]
        else:
            raise Seg2RefineError(f"{item}: file or folder not found")
        for path in files:
            case_id = strip_suffix(path)
            found.append((case_id.removesuffix(".img"), path))
    ids = [c for c, _ in found]
    dupes = sorted({c for c in ids if ids.count(c) > 1})
    if dupes:
        raise Seg2RefineError(f"several inputs share the case id(s) {', '.join(dupes[:5])}; give them separately")
    return found


def check_options(args: argparse.Namespace) -> None:
    """Seg2RefineError naming the first option out of range (before any model or volume is loaded)."""
    if not 0.0 < args.threshold < 1.0:
        raise Seg2RefineError(f"--threshold must be between 0 and 1 (exclusive), got {args.threshold}")
    if not 0.0 <= args.overlap < 1.0:
        raise Seg2RefineError(f"--overlap must be >= 0 and < 1, got {args.overlap}")
    for name in ("batch_size", "sw_batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise Seg2RefineError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def run(args: argparse.Namespace) -> int:
    import time

    from seg2refine_core.devices import resolve_device
    from seg2refine_core.inference.pipeline import load_stage, run_pipeline
    from seg2refine_core.io.checkpoint import load_checkpoint
    from seg2refine_core.io.volume import read_volume, write_volume
    from seg2refine_core.progress import tqdm_progress

    check_options(args)
    device = resolve_device(args.device)
    cases = list_inputs(args.inputs)
    if args.baseline3d is not None:
        if args.stage1 or args.stage2:
            raise Seg2RefineError("--baseline3d replaces both stages; do not combine it with --stage1/--stage2")
        stage1 = stage2 = None
        baseline = load_checkpoint(args.baseline3d, device=device)
    else:
        s1_path, s2_path = resolve_stages(args.stage1, args.stage2)
        stage1 = load_stage("stage1", s1_path or None, device) if s1_path is not None else None
        stage2 = load_stage("stage2", s2_path or None, device) if s2_path is not None else None
        baseline = None
    outputs = {"s": stage1 is not None, "y": stage2 is not None, "b": baseline is not None}
    input_paths = {p.resolve() for _, p in cases}
    planned = []
    for case_id, path in cases:
        names = [f"{case_id}.{k}{suffix}.nii.gz" for k, on in outputs.items() if on
                 for suffix in ("", "_prob") if suffix == "" or args.save_prob]
        targets = [args.out / n for n in names]
        clash = [t for t in targets if t.resolve() in input_paths]
        if clash:
            raise Seg2RefineError(f"{clash[0]}: output would overwrite an input file; choose another --out")
        existing = [t for t in targets if t.exists()]
        if existing and not args.overwrite:
            raise Seg2RefineError(f"{existing[0]}: already exists; pass --overwrite to replace outputs")
        planned.append((case_id, path))
    print(f"device: {device}; stage 1: {stage1.path if stage1 else '-'}; stage 2: {stage2.path if stage2 else '-'}"
          + (f"; 3D baseline: {args.baseline3d}" if baseline else ""))
    for case_id, path in planned:
        volume = read_volume(path)
        t0 = time.perf_counter()
        with tqdm_progress(f"{case_id}", unit="step") as progress:
            if baseline is not None:
                b_prob = predict_baseline(baseline, volume, args, device, progress)
                results = [("b", (b_prob >= args.threshold).astype("uint8"), b_prob)]
            else:
                result = run_pipeline(
                    volume.array, volume.spacing, stage1, stage2, threshold=args.threshold,
                    batch_size=args.batch_size, overlap=args.overlap, sw_batch_size=args.sw_batch_size,
                    device=device, progress=progress,
                )
                results = [("s", result.s_mask, result.s_prob), ("y", result.y_mask, result.y_prob)]
        written = []
        for key, mask, prob in results:
            if mask is None:
                continue
            written.append(write_volume(args.out / f"{case_id}.{key}.nii.gz", mask, like=volume))
            if args.save_prob:
                written.append(write_volume(args.out / f"{case_id}.{key}_prob.nii.gz", prob, like=volume))
        elapsed = time.perf_counter() - t0
        print(f"{case_id}: {volume.shape} in {elapsed:.1f} s -> {', '.join(p.name for p in written)}")
        del volume, results
    return 0


def predict_baseline(baseline, volume, args: argparse.Namespace, device, progress):
    """Probabilities of the 3D UNet baseline for ``volume`` (X' with the checkpoint's preprocessing)."""
    from seg2refine_core.data.preprocess import PreprocessConfig, preprocess
    from seg2refine_core.training.baseline3d import predict_baseline3d

    model, config = baseline
    xprime = preprocess(volume.array, volume.spacing, PreprocessConfig.from_dict(config.get("preprocess", {})))
    return predict_baseline3d(model, xprime, patch_size=config["input"]["patch_size"], overlap=args.overlap,
                              sw_batch_size=args.sw_batch_size, device=device, progress=progress)
