"""seg2refine analyze: centerlines, named branches, lumen diameters and stenosis candidates of coronary masks.

Each MASK is a file (NIfTI or NRRD; voxels > 0.5 are lumen) or a folder, whose masks named <id>.SUFFIX.<ext>
(--suffix, default y: the refined masks predict writes) are analysed in turn. Positions are reported in world
RAS mm through the mask's affine. With one mask, --json, --csv and --png name files; with several, --json and
--png name folders (<stem>.analysis.json, <stem>.analysis.png) and --csv one table of every branch of every mask.
--image adds straightened CPRs of the branches with the worst stenoses to the PNG: a CT file for one mask, or a
folder holding <id>.img.<ext> for several. The rules (trees, names, QCA-style stenosis reference) are in the
README and in the JSON under "rules".
"""

from __future__ import annotations

import argparse
from pathlib import Path

from seg2refine_core.errors import Seg2RefineError


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
    p.add_argument("--min-reference", type=float, default=1.5, metavar="MM",
                   help="grade stenoses only where the reference diameter is at least this (default 1.5 mm, as "
                        "CAD-RADS); from 0.75 mm up, narrowings a voxel deep are reported as 'small vessel'")
    p.set_defaults(run=run)


def find_masks(inputs: list[str], suffix: str) -> list[Path]:
    """The mask files of ``inputs`` (files as given; folders: ``<id>.<suffix>.<ext>``, sorted)."""
    from seg2refine_core.io.volume import SUPPORTED_SUFFIXES

    masks = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and any(
                p.name.lower().endswith(f".{suffix}{ext}") for ext in SUPPORTED_SUFFIXES))
            if not found:
                raise Seg2RefineError(f"{path}: no masks named <id>.{suffix}.nii.gz/.nii/.nrrd in this folder")
            masks += found
        elif path.exists():
            masks.append(path)
        else:
            raise Seg2RefineError(f"{path}: no such file or folder")
    return masks


def _case_id(path: Path) -> str:
    return path.name.split(".")[0]


def _image_for(mask: Path, image: str | None, several: bool) -> Path | None:
    from seg2refine_core.io.volume import SUPPORTED_SUFFIXES

    if image is None:
        return None
    where = Path(image)
    if not several:
        return where
    if not where.is_dir():
        raise Seg2RefineError(f"--image {where}: with several masks, give a folder of <id>.img.<ext>")
    for ext in SUPPORTED_SUFFIXES:
        candidate = where / f"{_case_id(mask)}.img{ext}"
        if candidate.is_file():
            return candidate
    raise Seg2RefineError(f"--image {where}: no {_case_id(mask)}.img.nii.gz/.nii/.nrrd for {mask.name}")


def run(args: argparse.Namespace) -> int:
    from seg2refine_core.analysis.report import analyze_file, summary, write_csv
    from seg2refine_core.analysis.stenosis import StenosisOptions
    from seg2refine_core.io.volume import strip_suffix
    from seg2refine_core.progress import tqdm_progress

    if args.min_reference < 0:
        raise Seg2RefineError(f"--min-reference must be >= 0 mm, got {args.min_reference}")
    masks = find_masks(args.masks, args.suffix)
    several = len(masks) > 1
    for option in ("json", "png"):
        target = getattr(args, option)
        if target and several and Path(target).exists() and not Path(target).is_dir():
            raise Seg2RefineError(f"--{option} {target}: with several masks this must be a folder")
    options = StenosisOptions(min_reference_mm=args.min_reference)
    analyses = []
    with tqdm_progress("analyze", unit="mask") as progress:
        progress(0, len(masks), "")
        for done, path in enumerate(masks, start=1):
            stem = strip_suffix(path)
            json_path = (Path(args.json) / f"{stem}.analysis.json" if several else args.json) if args.json else None
            png_path = (Path(args.png) / f"{stem}.analysis.png" if several else args.png) if args.png else None
            analysis = analyze_file(path, image_path=_image_for(path, args.image, several), json_path=json_path,
                                    png_path=png_path, options=options)
            analyses.append(analysis)
            print(f"{path}:\n" + "\n".join(f"  {line}" for line in summary(analysis).splitlines()))
            progress(done, len(masks), path.name)
    if args.csv:
        write_csv(analyses, args.csv)
    return 0
