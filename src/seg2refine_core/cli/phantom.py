"""seg2refine phantom: write synthetic CCTA cases (<id>.img.nii.gz + <id>.label.nii.gz, ImageCAS naming).

Case i (ids 1..N) is generated with seed SEED + i - 1, so --seed 5 --count 3 writes the same three volumes as
--seed 5, --seed 6 and --seed 7 with --count 1 (ids aside). --truth adds <id>.truth.json: every vessel's
centerline (name, tree, radius) and every stenosis (centre, severity, length) in world RAS mm, the ground truth
for seg2refine analyze. The images are synthetic.

--cohort draws each case like a real CCTA cohort (seeded per case; cohort seed n is not legacy seed n): real-size
heart (LV long semi-axis 40-51 mm) and chest, 512x512 at 0.3-0.5 mm in-plane, 0.25-1.0 mm slices covering the
coronary tree plus 10-30 mm, blood 250-600 HU, noise 10-50 HU with a 0.3-0.8 mm grain, PSF, dominance, 0-4
stenoses of 25-90 %, calcium and stents. --matrix N scales the scan down to N x N in-plane (voxels 512/N times
larger, same field of view and anatomy); --shape and --spacing replace the drawn grid instead. Without --cohort
and --left-main-mm the arguments make the same volumes as every earlier version (default shape 96 128 128,
spacing 1.0 0.7 0.7).

--left-main-mm LOW HIGH draws the left main's length from the aortic root to its division from that range
(legacy or cohort; an adult left main is typically about 10 mm long). The cohort preset draws 5-10 mm; the legacy
generator's left main is 1.8-3.7 mm long at real size, shorter than it is across, and loops back on itself
(--left-main-mm loop gives a cohort case that one, as every cohort case had before the preset drew 5-10 mm). The
division moves along the AV groove towards the LCX, as far as about 7 mm x the heart's scale (10-12 mm at real
size, about 7 mm in the legacy half-size heart); longer lengths are clamped to that, shorter ones to the loop's
nearest division.
"""

from __future__ import annotations

import argparse

from seg2refine_core.errors import Seg2RefineError

DEFAULT_SHAPE = (96, 128, 128)
DEFAULT_SPACING = (1.0, 0.7, 0.7)
DEFAULT_SEVERITY_PCT = (35.0, 70.0)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "phantom",
        help="write synthetic CCTA volumes with coronary labels (demo and test data)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--count", type=int, default=1, help="number of cases, ids 1..N (default 1)")
    p.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None,
                   help=f"voxels (default {' '.join(map(str, DEFAULT_SHAPE))}; with --cohort the drawn scan)")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("SZ", "SY", "SX"), default=None,
                   help=f"voxel size in mm (default {' '.join(map(str, DEFAULT_SPACING))}; with --cohort the drawn "
                        "scan)")
    p.add_argument("--cohort", action="store_true",
                   help="draw each case from the cohort preset: real-size anatomy, spacing, field of view, contrast, "
                        "noise, PSF, dominance, lesions and stents vary per seed")
    p.add_argument("--matrix", type=int, default=None,
                   help="with --cohort: in-plane voxels of the drawn scan (default 512; 64 makes voxels 8x larger "
                        "over the same field of view); not with --shape or --spacing")
    p.add_argument("--seed", type=int, default=0, help="seed of case 1; case i uses SEED + i - 1 (default 0)")
    p.add_argument("--severity", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                   help="range of stenosis severities, %% diameter reduction, 0 <= LOW <= HIGH <= 90 (default "
                        f"{DEFAULT_SEVERITY_PCT[0]:g} {DEFAULT_SEVERITY_PCT[1]:g}, the range of every earlier volume, "
                        "or 25 90 with --cohort; 25 80 makes every grade occur)")
    p.add_argument("--left-main-mm", nargs="+", metavar="MM", default=None,
                   help="range LOW HIGH of the left main's length, mm from the aortic root to its division, 0.5 <= "
                        "LOW <= HIGH <= 15, or loop (default: 5 10 with --cohort; else the legacy loop, 1.8-3.7 mm "
                        "at real size)")
    p.add_argument("--preview", action="store_true", help="also write <id>.preview.png (MIPs of image and label)")
    p.add_argument("--truth", action="store_true",
                   help="also write <id>.truth.json (vessel centerlines and stenoses in world RAS mm)")
    p.set_defaults(run=run)


def _check(args: argparse.Namespace) -> None:
    if args.count < 1:
        raise Seg2RefineError(f"--count must be at least 1, got {args.count}")
    if args.shape is not None and any(n < 8 for n in args.shape):
        raise Seg2RefineError(f"--shape must be 3 integers >= 8 (Z Y X), got {' '.join(map(str, args.shape))}")
    if args.spacing is not None and any(not s > 0 or s == float("inf") for s in args.spacing):
        raise Seg2RefineError(f"--spacing must be 3 positive numbers in mm, got {' '.join(map(str, args.spacing))}")
    if args.seed < 0:
        raise Seg2RefineError(f"--seed must be non-negative, got {args.seed}")
    if args.severity is not None:
        low, high = args.severity
        if not 0.0 <= low <= high <= 90.0:
            raise Seg2RefineError(f"--severity must satisfy 0 <= LOW <= HIGH <= 90 (percent), got {low:g} {high:g}")
    if args.left_main_mm is not None:
        args.left_main_mm = left_main_option(args.left_main_mm)
    if args.matrix is not None:
        if not args.cohort:
            raise Seg2RefineError("--matrix applies to --cohort cases only")
        if args.shape is not None or args.spacing is not None:
            raise Seg2RefineError("--matrix scales the drawn cohort scan: give it without --shape and --spacing")
        if not 8 <= args.matrix <= 2048:
            raise Seg2RefineError(f"--matrix must be from 8 to 2048, got {args.matrix}")


def left_main_option(words: list[str]) -> tuple[float, float] | str:
    """``--left-main-mm``'s words as :attr:`PhantomOptions.left_main_mm`: (LOW, HIGH) mm or ``'loop'``.

    Raises :class:`Seg2RefineError` naming the option for anything else."""
    from seg2refine_core.data.phantom.cohort import LEFT_MAIN_MM_LIMITS, LOOPED_LEFT_MAIN, left_main_range_ok

    if words == [LOOPED_LEFT_MAIN]:
        return LOOPED_LEFT_MAIN
    low, high = LEFT_MAIN_MM_LIMITS
    try:
        value = tuple(float(w) for w in words)
    except ValueError:
        value = ()
    if len(value) != 2 or not left_main_range_ok(value):
        raise Seg2RefineError(f"--left-main-mm must be LOW HIGH with {low:g} <= LOW <= HIGH <= {high:g} (mm), or "
                              f"{LOOPED_LEFT_MAIN}; got {' '.join(words)}")
    return value


def run(args: argparse.Namespace) -> int:
    _check(args)
    from pathlib import Path

    from seg2refine_core.data.phantom import (
        PhantomOptions,
        make_phantom,
        preview_png,
        write_phantom_case,
        write_truth_json,
    )
    from seg2refine_core.progress import tqdm_progress

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise Seg2RefineError(f"--out {out}: exists and is not a folder")
    shape = None if args.shape is None else tuple(args.shape)
    spacing = None if args.spacing is None else tuple(args.spacing)
    severity = None if args.severity is None else (args.severity[0] / 100.0, args.severity[1] / 100.0)
    options = None if args.left_main_mm is None else PhantomOptions(left_main_mm=args.left_main_mm)
    with tqdm_progress("phantom", unit="case") as progress:
        progress(0, args.count, "")
        for i in range(1, args.count + 1):
            phantom = make_phantom(shape, spacing, seed=args.seed + i - 1, severity_range=severity,
                                   cohort=args.cohort, matrix=args.matrix, options=options)
            img, _ = write_phantom_case(phantom, out, i)
            if args.truth:
                write_truth_json(phantom.truth, out / f"{i}.truth.json")
            if args.preview:
                kind = "cohort " if args.cohort else ""
                preview_png(phantom, out / f"{i}.preview.png",
                            title=f"synthetic case {i} ({kind}seed {args.seed + i - 1})")
            progress(i, args.count, img.name)
    print(f"wrote {args.count} case(s) to {out}")
    return 0
