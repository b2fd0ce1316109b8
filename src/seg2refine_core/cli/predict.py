"""`seg2refine predict`: run stage 1 (S), stage 2 (Y) and/or the 3D baseline (B) on volumes and folders of volumes.

Argument parsing and printing only; the work is :meth:`seg2refine_core.inference.predictor.Predictor.predict_files`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from seg2refine_core.cli import add_threads_option
from seg2refine_core.devices import DEVICE_CHOICES
from seg2refine_core.errors import Seg2RefineError
from seg2refine_core.io.volume import OUTPUT_FORMATS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="segment CCTA volumes: S (stage 1), Y (stage 2), B (3D baseline)",
        description=(
            "Segment volumes and every volume in folders (.nii, .nii.gz, .nrrd, .mha, .mhd; ImageCAS "
            "'<id>.img.nii.gz' names give '<id>') and DICOM CT series (every folder that holds DICOM files is one "
            "case, named after the folder; a DICOM file given reads its series; the series with the most slices is "
            "read unless --series names one, and the line printed says which). Writes <id>.s.nii.gz (stage 1), "
            "<id>.y.nii.gz (stage 2) and <id>.b.nii.gz (3D baseline) with the input's geometry, or another format "
            "with --output-format (dicom-seg: a DICOM SEG referencing the source series). Each model runs in the "
            "canonical space its checkpoint records (LPS voxel order at its target spacing; the bundled weights: "
            "1.0 x 0.7 x 0.7 mm): the input is mapped there and the probabilities back onto the input's grid, and the "
            "line printed per case names the grid; a checkpoint that records none runs on the input's own grid (a "
            "'note:' line says so). With neither --stage1 nor "
            "--stage2, both stages use the bundled demo weights (none when --baseline3d is given); with --stage1 "
            "alone, only stage 1 runs; with --stage2 alone, stage 1 uses the bundled weights. The models stay loaded "
            "across the cohort and only one volume is held in memory at a time; a case that cannot be read is "
            "reported and the others go on (exit status 2 at the end). Under `torchrun --nproc_per_node=N -m "
            "seg2refine_core.cli predict ...` the cases are shared out across the N processes (one GPU each with "
            "CUDA) and rank 0 prints the summary. Progress is a bar on a terminal and a plain line every 10% or 30 s "
            "otherwise."
        ),
    )
    p.add_argument("inputs", type=Path, nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--stage1", metavar="CKPT", help="stage-1 (SFANet) checkpoint, or 'bundled'")
    p.add_argument("--stage2", metavar="CKPT", help="stage-2 (3D Attention-GAN) checkpoint, or 'bundled'")
    p.add_argument("--baseline3d", metavar="CKPT",
                   help="a 3D UNet baseline checkpoint (train baseline3d) -> <id>.b.nii.gz")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--series", metavar="UID",
                   help="DICOM SeriesInstanceUID to segment (default: the series with the most slices in each DICOM "
                        "folder); only the DICOM inputs holding it are segmented")
    p.add_argument("--output-format", choices=list(OUTPUT_FORMATS), default="nifti",
                   help="masks as nifti (.nii.gz, default), nrrd, metaimage (.mha), or dicom-seg (<id>.<key>.seg.dcm, "
                        "a DICOM SEG in the source's study, for DICOM inputs with their UIDs); probabilities stay "
                        "NIfTI")
    p.add_argument("--save-prob", action="store_true", help="also write probabilities <id>.s_prob / .y_prob / .b_prob")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold for masks (default 0.5)")
    p.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICE_CHOICES)} (default auto)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="axial slices per stage-1 batch (default: ~256² pixels per batch on CPU; 8 on GPUs)")
    p.add_argument("--overlap", type=float, default=0.25,
                   help="stage-2 and baseline sliding-window overlap (default 0.25)")
    p.add_argument("--sw-batch-size", type=int, default=None,
                   help="stage-2 and baseline windows per forward (default: 1 on CPU, 8 on GPUs)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out")
    p.add_argument("--analyze", action="store_true",
                   help="then run the vessel analysis (as `seg2refine analyze`) on each case's Y (S when stage 2 does "
                        "not run, else B): <id>.<key>.analysis.json and .png beside the masks")
    add_threads_option(p)
    p.set_defaults(run=run)


def resolve_stages(
    stage1: str | None, stage2: str | None, baseline3d: str | None = None
) -> tuple[str | None, str | None]:
    """Map the CLI's --stage1/--stage2 to checkpoint choices (a path, ``"bundled"``, or None = stage not run).

    Neither given: both bundled, unless --baseline3d is given (then only the baseline runs). --stage2 alone: stage 1
    bundled. --stage1 alone: stage 1 only.
    """
    from seg2refine_core.inference.predictor import BUNDLED_CHOICE

    if stage1 is None and stage2 is None:
        return (None, None) if baseline3d is not None else (BUNDLED_CHOICE, BUNDLED_CHOICE)
    return stage1 or BUNDLED_CHOICE, stage2


def analysis_mask(outputs: list[Path]) -> tuple[str, Path] | None:
    """The written mask ``--analyze`` reads, as (key, path): Y, else S, else B; None when none was written."""
    from seg2refine_core.io.volume import strip_suffix

    masks = {strip_suffix(path).rsplit(".", 1)[-1]: path for path in outputs}
    return next(((key, masks[key]) for key in ("y", "s", "b") if key in masks), None)


def run(args: argparse.Namespace) -> int:
    from seg2refine_core.data.canonical import notices_to

    if args.analyze and args.output_format == "dicom-seg":
        raise Seg2RefineError("--analyze reads the masks written: use --output-format nifti, nrrd or metaimage")

    with notices_to(lambda message: print(f"seg2refine predict: note: {message}", file=sys.stderr, flush=True)):
        return _run(args)


def say(text: str) -> None:
    """Print ``text`` and its newline in one write, flushed: the ranks of ``torchrun`` share one stdout pipe, and
    print's separate writes of a line and its newline let another rank's line land in between."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _run(args: argparse.Namespace) -> int:
    from seg2refine_core import distributed
    from seg2refine_core.clock import Stopwatch
    from seg2refine_core.inference.predictor import CaseRecord, Predictor
    from seg2refine_core.progress import tqdm_progress

    info = distributed.init_distributed(args.device)
    try:
        stage1, stage2 = resolve_stages(args.stage1, args.stage2, args.baseline3d)
        predictor = Predictor.from_checkpoints(
            stage1, stage2, args.baseline3d, device=info.device, threshold=args.threshold,
            batch_size=args.batch_size, overlap=args.overlap, sw_batch_size=args.sw_batch_size,
        )
        where = f"[rank {info.rank}/{info.world_size}] " if info.distributed else ""
        say(where + predictor.describe())

        def report(case: CaseRecord) -> None:
            if case.series is not None:
                say(f"{where}{case.case_id}: {case.series}")
            if case.error is not None:
                say(f"{where}{case.case_id}: error: {case.error}")
            else:
                say(f"{where}{case.case_id}: {case.shape} in {case.seconds:.1f} s ({case.grid_line()}) -> "
                    f"{', '.join(p.name for p in case.outputs)}")
                if args.analyze:
                    analyze(case)

        def analyze(case: CaseRecord) -> None:
            from seg2refine_core.analysis.report import analyze_file, summary

            found = analysis_mask(case.outputs)
            if found is None:
                return
            key, mask = found
            base = f"{case.case_id}.{key}.analysis"
            analysis = analyze_file(
                mask, image_path=case.path if args.series is None else None,  # the CPR panels' CT
                json_path=args.out / f"{base}.json", png_path=args.out / f"{base}.png",
            )
            lines = "\n".join(f"{where}  {line}" for line in summary(analysis).splitlines())
            say(f"{where}{case.case_id}: vessel analysis of {mask.name} -> {base}.json, {base}.png\n{lines}")

        clock = Stopwatch()
        with tqdm_progress("predict", unit="step", disable=not info.is_main) as progress:
            summary = predictor.predict_files(
                args.inputs, args.out, save_prob=args.save_prob, overwrite=args.overwrite, series=args.series,
                output_format=args.output_format, progress=progress, on_case=report,
            )
    finally:
        distributed.cleanup()
    if not info.is_main:
        return 0
    done = len(summary.cases) - len(summary.failed)
    ranks = f" on {summary.world_size} ranks" if summary.world_size > 1 else ""
    print(f"{done} of {len(summary.cases)} case(s) segmented in {summary.seconds:.1f} s{ranks} -> {args.out}")
    if note := clock.busy_note(str(predictor.device)):
        print(note)
    if summary.failed:
        raise Seg2RefineError(f"{len(summary.failed)} case(s) failed: {', '.join(c.case_id for c in summary.failed)}")
    return 0
