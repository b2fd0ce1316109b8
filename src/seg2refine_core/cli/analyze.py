"""seg2refine analyze: centerlines, named branches, lumen diameters and stenosis candidates of coronary masks.

Each MASK is a file (NIfTI or NRRD; voxels > 0.5 are lumen) or a folder, whose masks named <id>.SUFFIX.<ext>
(--suffix, default y: the refined masks predict writes) are analysed in turn. Positions are reported in world
RAS mm through the mask's affine. With one mask, --json and --png name files, or folders where they end in / or
are folders (<stem>.analysis.json, <stem>.analysis.png); with several they name folders; --csv names one file,
a table of every branch of every mask. Missing folders are created. Existing outputs, and outputs that would
replace an input, are refused before any work (--overwrite replaces existing outputs). --image adds straightened
CPRs of the branches with the worst stenoses to the PNG: a CT file for one mask, or a folder holding
<id>.img.<ext> for several. A mask that cannot be analysed is reported and the others go on (exit status 2 at
the end). The rules (trees, names, QCA-style stenosis reference) are in the README and in the JSON under "rules".
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from seg2refine_core.errors import Seg2RefineError

if TYPE_CHECKING:
    from seg2refine_core.analysis.result import TreeAnalysis
    from seg2refine_core.analysis.stenosis import StenosisOptions


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="coronary tree analysis of masks: centerlines, branches, diameters, stenosis candidates",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("masks", nargs="+", metavar="MASK", help="a mask file or a folder of masks")
    p.add_argument("--image", metavar="CT", help="the CT of the mask (a file), or a folder of <id>.img.<ext>")
    p.add_argument("--suffix", default="y", metavar="S",
                   help="in folders, analyse the masks named <id>.S.<ext> (default: y; 'label' for ground truth)")
    p.add_argument("--json", metavar="F", help="write the report as JSON (a folder with several masks)")
    p.add_argument("--csv", metavar="F", help="write one row per branch as CSV (every mask in one table)")
    p.add_argument("--png", metavar="F", help="write the figure as PNG (a folder with several masks)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--min-reference", type=float, default=1.5, metavar="MM",
                   help="grade stenoses only where the reference diameter is at least this (default 1.5 mm, as "
                        "CAD-RADS); from 0.75 mm up, narrowings a voxel deep are reported as 'small vessel'")
    p.set_defaults(run=run)


def find_masks(inputs: list[str], suffix: str) -> list[Path]:
    """The mask files of ``inputs`` (files as given; folders: ``<id>.<suffix>.<ext>``, sorted), each once."""
    from seg2refine_core.io.volume import SUPPORTED_SUFFIXES

    if not suffix:
        raise Seg2RefineError("--suffix must not be empty (e.g. y, or label for ground truth)")
    masks: dict[Path, Path] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and any(
                p.name.lower().endswith(f".{suffix}{ext}") for ext in SUPPORTED_SUFFIXES))
            if not found:
                raise Seg2RefineError(f"{path}: no masks named <id>.{suffix}.nii.gz/.nii/.nrrd in this folder")
        elif path.exists():
            found = [path]
        else:
            raise Seg2RefineError(f"{path}: no such file or folder")
        for mask in found:
            masks.setdefault(mask.resolve(), mask)
    return list(masks.values())


def _case_id(path: Path) -> str:
    return path.name.split(".")[0]


def _image_for(mask: Path, image: str | None, several: bool) -> Path | None:
    """The CT of ``mask`` for ``--image``: a file (one mask), or ``<id>.img.<ext>`` in a folder; a folder without
    one is taken as the one mask's DICOM series."""
    from seg2refine_core.io.volume import SUPPORTED_SUFFIXES

    if image is None:
        return None
    where = Path(image)
    if where.is_dir():
        for ext in SUPPORTED_SUFFIXES:
            candidate = where / f"{_case_id(mask)}.img{ext}"
            if candidate.is_file():
                return candidate
        if several:
            raise Seg2RefineError(f"--image {where}: no {_case_id(mask)}.img.nii.gz/.nii/.nrrd for {mask.name}")
    elif several:
        raise Seg2RefineError(f"--image {where}: with several masks, give a folder of <id>.img.<ext>")
    return where


def _is_folder(target: str, several: bool) -> bool:
    return several or target.endswith(("/", os.sep)) or Path(target).is_dir()


def plan_outputs(args: argparse.Namespace, masks: list[Path]) -> list[tuple[Path, Path | None, Path | None,
                                                                          Path | None]]:
    """``(mask, image, json, png)`` per mask and the checks made before any work: every mask has its CT (with
    ``--image``), no output names an input or another output, none exists (without ``--overwrite``), every output
    folder can be made and written (made only once all else is checked). Raises :class:`Seg2RefineError` naming
    the first problem."""
    from seg2refine_core.io.atomic import check_output
    from seg2refine_core.io.volume import strip_suffix

    for kind in ("json", "csv", "png"):
        if getattr(args, kind) == "":
            raise Seg2RefineError(f"--{kind}: empty path")
    several = len(masks) > 1
    plans = []
    for mask in masks:
        stem = strip_suffix(mask)
        paths = []
        for kind in ("json", "png"):
            target = getattr(args, kind)
            if not target:
                paths.append(None)
            elif _is_folder(target, several):
                if Path(target).exists() and not Path(target).is_dir():
                    raise Seg2RefineError(f"--{kind} {target}: must be a folder here (<id>.analysis.{kind} in it)")
                paths.append(Path(target) / f"{stem}.analysis.{kind}")
            else:
                paths.append(Path(target))
        plans.append((mask, _image_for(mask, args.image, several), paths[0], paths[1]))
    if args.csv and (args.csv.endswith(("/", os.sep)) or Path(args.csv).is_dir()):
        raise Seg2RefineError(f"--csv {args.csv}: must name a file (one table of every mask), not a folder")
    outputs = [p for *_, j, g in plans for p in (j, g) if p is not None] + ([Path(args.csv)] if args.csv else [])
    inputs = {m.resolve() for m in masks}
    if args.image:
        image = Path(args.image)
        inputs |= {p.resolve() for p in image.iterdir()} if image.is_dir() else {image.resolve()}
    seen: set[Path] = set()
    for path in outputs:
        if path.resolve() in seen:
            raise Seg2RefineError(f"{path}: named for two outputs (--json, --csv, --png); give each its own file")
        seen.add(path.resolve())
        check_output(path, inputs, args.overwrite)
    for folder in sorted({p.parent for p in outputs}):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise Seg2RefineError(f"{folder}: cannot create the output folder ({err.strerror})") from None
        if not os.access(folder, os.W_OK):
            raise Seg2RefineError(f"{folder}: output folder is not writable")
    return plans


def _note(message: str) -> None:
    print(f"seg2refine analyze: note: {message}", file=sys.stderr, flush=True)


def _analyze_one(mask: Path, image: Path | None, json_path: Path | None, png_path: Path | None,
                 options: StenosisOptions) -> TreeAnalysis:
    """:func:`~seg2refine_core.analysis.report.analyze_file`, a failed write raised as :class:`Seg2RefineError`."""
    from seg2refine_core.analysis.report import analyze_file

    try:
        return analyze_file(mask, image_path=image, json_path=json_path, png_path=png_path, options=options)
    except OSError as err:
        raise Seg2RefineError(f"{err.filename or json_path or png_path}: cannot write ({err.strerror})") from None


def run(args: argparse.Namespace) -> int:
    from seg2refine_core.analysis.report import summary, write_csv
    from seg2refine_core.analysis.stenosis import StenosisOptions
    from seg2refine_core.data.canonical import notices_to
    from seg2refine_core.progress import tqdm_progress

    if not args.min_reference >= 0:
        raise Seg2RefineError(f"--min-reference must be >= 0 mm, got {args.min_reference}")
    masks = find_masks(args.masks, args.suffix)
    several = len(masks) > 1
    plans = plan_outputs(args, masks)
    options = StenosisOptions(min_reference_mm=args.min_reference)
    analyses, failed = [], []
    with notices_to(_note), tqdm_progress("analyze", unit="mask") as progress:
        progress(0, len(masks), "")
        for done, (path, image, json_path, png_path) in enumerate(plans, start=1):
            try:
                analysis = _analyze_one(path, image, json_path, png_path, options)
            except Seg2RefineError as err:
                if not several:
                    raise
                failed.append(path)
                where = "" if str(path) in str(err) else f"{path}: "
                print(f"seg2refine analyze: error: {where}{err}", file=sys.stderr, flush=True)
            else:
                analyses.append(analysis)
                print(f"{path}:\n" + "\n".join(f"  {line}" for line in summary(analysis).splitlines()))
            progress(done, len(masks), path.name)
    if args.csv and analyses:
        try:
            write_csv(analyses, args.csv)
        except OSError as err:
            raise Seg2RefineError(f"{args.csv}: cannot write ({err.strerror})") from None
    if failed:
        raise Seg2RefineError(f"{len(failed)} of {len(masks)} mask(s) failed: {', '.join(p.name for p in failed)}")
    return 0
