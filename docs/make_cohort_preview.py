"""Preview of four cohort phantoms for the README: `python docs/make_cohort_preview.py [--matrix 256]`.

Cohort seeds 0-3 (`make_phantom(seed=s, cohort=True, matrix=256)`: the drawn scans at half the real in-plane
resolution, same fields of view) side by side on one mm scale: CT axial and coronal 16-mm slab MIPs through the
middle of the coronary tree and the coronal MIP of the label. Written to docs/phantom_cohort.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from seg2refine_core.data.phantom import make_phantom, preview_cases_png

OUT = Path(__file__).parent / "phantom_cohort.png"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--matrix", type=int, default=256)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    args = parser.parse_args()
    phantoms, titles = [], []
    for seed in args.seeds:
        ph = make_phantom(seed=seed, cohort=True, matrix=args.matrix)
        m, real = ph.meta, ph.meta["cohort_scan"]["real_spacing_mm"]
        phantoms.append(ph)
        titles.append(
            f"cohort seed {seed}: heart x{m['heart_scale']:.2f} (LV {m['lv_long_semi_axis_mm']:.0f} mm), "
            f"chest {116 * m['body_scale']:.0f} mm, real {real[1]:.2f}/{real[0]:.2f} mm, blood {m['hu']['blood']:.0f} "
            f"HU, noise {m['noise_sd_hu']:.0f} HU, {m['dominance']}-dominant, {len(m['stenoses'])} stenoses, "
            f"{len(m['calcified_plaques'])} Ca, {len(m['stents'])} stents"
        )
    preview_cases_png(phantoms, OUT, titles=titles)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
