"""Print a Markdown table (mean ± std over test cases) from the experiment runs' evaluate JSON files.

Usage: python experiments/summarize.py table1 RUN_DIR | python experiments/summarize.py stage2 RUN_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROWS = {
    "table1": [("UNet", "unet/test.json"), ("AG-UNet", "ag-unet/test.json"),
               ("AG-Att-UNet", "ag-att-unet/test.json"), ("SFANet", "sfanet/test.json")],
    "stage2": [("S (SFANet)", "eval/s.json"), ("Y (Attention-GAN, ΔB0)", "eval/y.json"),
               ("Y without ΔB0", "eval/y_no_b0.json"), ("Y with clDice term", "eval/y_cldice.json"),
               ("3D UNet baseline (MONAI)", "eval/baseline3d.json")],
}
METRICS = [("dice", "Dice", "{:.3f}"), ("hd95_mm", "HD95 (mm)", "{:.2f}"), ("betti0_error", "Betti-0 error", "{:.1f}")]


def cell(values: list, fmt: str) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{fmt.format(np.mean(values))} ± {fmt.format(np.std(values))}"


def main(kind: str, run_dir: Path) -> None:
    print("| Model | " + " | ".join(label for _, label, _ in METRICS) + " | cases |")
    print("|---" * (len(METRICS) + 2) + "|")
    for name, rel in ROWS[kind]:
        path = run_dir / rel
        if not path.is_file():
            continue
        cases = json.loads(path.read_text())["cases"]
        cells = [cell([c[key] for c in cases], fmt) for key, _, fmt in METRICS]
        print(f"| {name} | " + " | ".join(cells) + f" | {len(cases)} |")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
