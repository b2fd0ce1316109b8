"""`seg2refine evaluate`: score predicted masks against ground truth (Dice, HD, HD95, B0, clDice).

Several kinds of prediction (``<id>.s.nii.gz`` and ``<id>.y.nii.gz``, ...) are scored in one run and printed side
by side: each case's kinds on adjacent rows, then each kind's mean.
"""

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
PLAIN = "plain"  # how the table names the kind of predictions named <id>.<ext>


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score predicted masks (e.g. S and Y side by side) against ground-truth masks",
        description=(
            "Pair predictions with ground truth by case id (<id>.label.nii.gz or <id>.nii.gz/.nrrd against "
            "<id>.nii.gz or <id>.<kind>.nii.gz, e.g. <id>.s.nii.gz and <id>.y.nii.gz), compute Dice, HD and HD95 "
            "in mm (ground-truth spacing), B0 and its error, clDice and slice-wise Dice for every kind, print them "
            "side by side (each case's kinds on adjacent rows, then each kind's mean) and optionally write "
            "JSON/CSV with one row per case and kind."
        ),
    )
    p.add_argument("--pred", required=True, metavar="P", help="a predicted mask file or a folder of them")
    p.add_argument("--gt", required=True, metavar="G", help="a ground-truth mask file or a folder of them")
    p.add_argument(
        "--suffix", nargs="+", metavar="S",
        help="score the predictions named <id>.S.<ext> for each S given (e.g. '--suffix s y'; '' for <id>.<ext>); "
             "default: every kind found except probability maps (<id>.<kind>_prob.<ext>)",
    )
    p.add_argument("--json", metavar="F", help="write the full report (per case and kind, each kind's mean) as JSON")
    p.add_argument("--csv", metavar="F", help="write one row per case and kind with the scalar metrics as CSV")
    p.set_defaults(run=run)


def _row(name: str, kind: str, values: dict, mean: bool) -> str:
    cells = [f"{name:<16}", f"{kind or PLAIN:<6}"]
    for _, key, width, case_spec, mean_spec in _COLUMNS:
        value = values.get(key)
        cells.append(f"{'-' if value is None else format(value, mean_spec if mean else case_spec):>{width}}")
    return " ".join(cells)


def format_table(report: dict) -> str:
    """A compact text table: one row per case and kind (a case's kinds side by side on adjacent rows), then each
    kind's mean (None values, e.g. HD of an empty mask: '-'; a plain ``<id>.<ext>`` prediction's kind: 'plain')."""
    header = " ".join(
        [f"{'case':<16}", f"{'kind':<6}", *(f"{title:>{width}}" for title, _, width, _, _ in _COLUMNS)]
    )
    rule = "-" * len(header)
    rows = [_row(str(case["id"]), case["kind"], case, mean=False) for case in report["cases"]]
    means = [_row(f"mean ({m['n_cases']})", m["kind"], m, mean=True) for m in report["mean"]]
    return "\n".join([header, rule, *rows, rule, *means])


def run(args: argparse.Namespace) -> int:
    from seg2refine_core.evaluation.evaluate import evaluate_files, match_kinds, write_report
    from seg2refine_core.progress import tqdm_progress

    pairings = match_kinds(args.pred, args.gt, suffixes=args.suffix)
    pairs_by_kind = {pairing.suffix or "": pairing.checked() for pairing in pairings}
    for pairing in pairings:
        if pairing.gt_without_pred:
            ids = pairing.gt_without_pred
            left_out = ", ".join(ids[:10]) + (", ..." if len(ids) > 10 else "")
            kind = f" (kind {pairing.suffix or PLAIN})" if len(pairings) > 1 else ""
            note = f"seg2refine evaluate: {len(ids)} ground-truth case(s) have no prediction{kind}: {left_out}"
            print(note, file=sys.stderr)
    with tqdm_progress("evaluate", unit="case") as progress:
        report = evaluate_files(pairs_by_kind, progress=progress)
    print(format_table(report))
    write_report(report, json_path=args.json, csv_path=args.csv)
    for path in (args.json, args.csv):
        if path:
            print(f"wrote {path}")
    return 0
