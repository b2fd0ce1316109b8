"""Both stages on a real CT angiogram, for the README's "on a real CT (no ground truth)":
`python docs/make_real_ct_figure.py [CT] [--z 54 60 66] [--out docs/real_ct.png]`.

Runs the bundled weights (a :class:`~seg2refine_core.inference.predictor.Predictor`, so the scan is mapped into their
canonical space and back) on ``CT`` (default: the 1.5-mm chest CT angiogram in ``../shared/realdata``), then draws
three axial slices (``--z``: voxel indices along z; the defaults pass through that scan's aortic root and the
coronary ostia) with S (yellow) and Y (red) outlined, and coronal maximum-intensity projections of S and Y over a
coronal 15-mm slab MIP of the CT. Prints the voxel counts and volumes of S and Y.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from seg2refine_core.inference.predictor import Predictor  # noqa: E402
from seg2refine_core.io.volume import read_volume  # noqa: E402

REAL_CT = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "ct_angio_chest_1p5mm.nii.gz"
OUT = Path(__file__).parent / "real_ct.png"
WINDOW = (-200.0, 800.0)  # HU shown (level 300, width 1000)
COLOURS = {"S": "#ffd400", "Y": "#ff2020"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ct", nargs="?", type=Path, default=REAL_CT)
    parser.add_argument("--z", type=int, nargs=3, default=[54, 60, 66], help="axial slices (voxel indices)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        volume = read_volume(args.ct)
        predictor = Predictor.from_checkpoints(device="cpu")
    result = predictor.predict_volume(volume)
    hu = volume.array.astype(np.float32)
    dz, dy, dx = volume.spacing
    voxel_ml = dz * dy * dx / 1000.0
    masks = {"S": result.s_mask, "Y": result.y_mask}
    for kind, mask in masks.items():
        print(f"{kind}: {int(mask.sum())} voxels, {mask.sum() * voxel_ml:.2f} ml")

    fig, axes = plt.subplots(1, 5, figsize=(20, 4.6), facecolor="black")
    for ax, z in zip(axes[:3], args.z, strict=True):
        ax.imshow(hu[z], cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], aspect=dy / dx)
        for kind, mask in masks.items():
            if mask[z].any():
                ax.contour(mask[z], levels=[0.5], colors=COLOURS[kind], linewidths=1.0)
        ax.set_title(f"axial z = {z} ({z * dz:.0f} mm)", color="white")
    centre = hu.shape[1] // 2
    half = int(round(7.5 / dy))
    slab = hu[:, centre - half:centre + half + 1].max(axis=1)
    for ax, kind in zip(axes[3:], ("S", "Y"), strict=True):
        ax.imshow(slab, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1] + 400, origin="lower", aspect=dz / dx)
        mip = masks[kind].max(axis=1).astype(float)
        ax.imshow(np.ma.masked_equal(mip, 0), cmap=matplotlib.colors.ListedColormap([COLOURS[kind]]),
                  origin="lower", aspect=dz / dx, alpha=0.85)
        for z in args.z:
            ax.axhline(z, color="white", lw=0.5, ls=":")
        ax.set_title(f"coronal MIP of {kind} over a 15-mm CT slab", color="white")
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"{args.ct.name}: S (stage 1, yellow) and Y (stage 2, red) with the bundled weights; no ground truth",
                 color="white")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80, facecolor="black")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
