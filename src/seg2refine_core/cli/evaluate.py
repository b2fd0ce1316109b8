"""`seg2refine evaluate`: score predicted masks against ground truth (Dice, HD, HD95, B0, clDice)."""

from __future__ import annotations

import argparse
import sys

# (header, key in a case / the mean, width, format of a case value, format of the mean)
_COLUMNS = (
    ("dice", "dice", 7, ".4f", ".4f"),
    ("hd95_mm", "hd95_mm", 8, ".2f", ".2f"),
    ("hd_mm", "hd_mm", 8, ".2f", ".2f"),
    ("cldice", "cldice", 7, ".4f", ".4f"),
    ("b0_pred", "b0_pred", 8, "d", ".1f"),
    ("b0_gt", "b0_gt", 6, "d", ".1f"),
    ("b0_err", "betti0_error", 7, "d", ".2f"),
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score predicted masks against ground-truth masks",
        description=(
            "Pair predictions with ground truth by case id (<id>.label.nii.gz or <id>.nii.gz/.nrrd against "
            "<id>.nii.gz or <id>.<anything>.nii.gz), compute Dice, HD and HD95 in mm (ground-truth spacing), "
            "B0 and its error, clDice and slice-wise Dice, print a table and optionally write JSON/CSV."
        ),
    )
    p.add_argument("--pred", required=True, metavar="P", help="a predicted mask file or a folder of them")
    p.add_argument("--gt", required=True, metavar="G", help="a ground-truth mask file or a folder of them")
    p.add_argument("--suffix", metavar="S", help="only predictions named <id>.S.<ext> (e.g. 'y' or 's')")
    p.add_argument("--json", metavar="F", help="write the full report (per case and mean) as JSON")
    p.add_argument("--csv", metavar="F", help="write one row per case with the scalar metrics as CSV")
    p.set_defaults(run=run)


def _row(name: str, values: dict, mean: bool) -> str:
    cells = [f"{name:<16}"]
    for _, key, width, case_spec, mean_spec in _COLUMNS:
        value = values.get(key)
        cells.append(f"{'-' if value is None else format(value, mean_spec if mean else case_spec):>{width}}")
    return " ".join(cells)


def format_table(report: dict) -> str:
    """A compact text table: one row per case, then the means (None values, e.g. HD of an empty mask: '-')."""
    header = " ".join([f"{'case':<16}", *(f"{title:>{width}}" for title, _, width, _, _ in _COLUMNS)])
    rule = "-" * len(header)
    rows = [_row(str(case["id"]), case, mean=False) for case in report["cases"]]
    mean = report["mean"]
    return "\n".join([header, rule, *rows, rule, _row(f"mean ({mean['n_cases']})", mean, mean=True)])


def run(args: argparse.Namespace) -> int:
    from seg2refine_core.evaluation.evaluate import evaluate_files, match_predictions, write_report
    from seg2refine_core.progress import tqdm_progress

    pairing = match_predictions(args.pred, args.gt, suffix=args.suffix)
    pairs = pairing.checked()
    if pairing.gt_without_pred:
        ids = pairing.gt_without_pred
        left_out = ", ".join(ids[:10]) + (", ..." if len(ids) > 10 else "")
        note = f"seg2refine evaluate: {len(ids)} ground-truth case(s) have no prediction: {left_out}"
        print(note, file=sys.stderr)
    with tqdm_progress("evaluate", unit="case") as progress:
        report = evaluate_files(pairs, progress=progress)
    print(format_table(report))
    write_report(report, json_path=args.json, csv_path=args.csv)
    for path in (args.json, args.csv):
        if path:
            print(f"wrote {path}")
    return 0
