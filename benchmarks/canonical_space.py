"""Measurements behind ``seg2refine_core.data.canonical``: the label rule, the resampler, the real-size mapping.

    .venv/bin/python benchmarks/canonical_space.py labels --seeds 11 12 13
    .venv/bin/python benchmarks/canonical_space.py resampler --threads 1
    .venv/bin/python benchmarks/canonical_space.py realsize --threads 2
    .venv/bin/python benchmarks/canonical_space.py dice [--realsize] [--json F]


``labels``: a phantom label made at a source spacing is taken to the target spacing by each candidate rule and
compared with the label the phantom generator draws natively at the target spacing (same field of view, so same
anatomy): Dice, clDice, Betti-0 (the native label has one component per coronary tree) and the lumen volume ratio.
``resampler``: ``scipy.ndimage.zoom`` (order 1, grid mode) against ``torch.nn.functional.interpolate`` (trilinear,
``align_corners=False``) on 256 x 512 x 512 float32, warm, median of ``--repeats``, interleaved.
``realsize``: ``to_canonical`` and ``from_canonical`` of a 256 x 512 x 512 phantom at 0.5 x 0.4 x 0.4 mm (image
and label) to 1.0 x 0.7 x 0.7 mm and back, time and peak RSS (``VmHWM``, reset before each step) in a fresh
process; ``from_canonical`` is timed with the ``to_canonical`` before it.
``dice``: the bundled weights through the :class:`~seg2refine_core.inference.predictor.Predictor` (only its
``from_checkpoints`` and ``predict_volume``, so the same script measures older code: run it with
``PYTHONPATH=<other checkout>/src``) on one phantom anatomy (seed 4321, field of view 96 x 89.6 x 89.6 mm) at 0.4,
0.7 and 1.2 mm in-plane (1.0 mm slices), on the demo phantom (seed 1000) stored in four voxel orders (masks
compared in world space, i.e. after an exact reorientation back to the phantom's order), and with ``--realsize`` on
256 x 512 x 512 at 0.5 x 0.4 x 0.4 mm (seed 4242) in a fresh process with ``THP_MEM_ALLOC_ENABLE=1`` (as the
command line sets it): Dice of S and Y, seconds per step, the mapping's share (``timings_s["mapping"]`` where the code
reports it), peak RSS (``VmHWM``, reset after the phantom is made) and the load average before and after; then two
controls on seed 4242: the weights' field of view (96 x 89.6 x 89.6 mm) at 0.5 x 0.4 x 0.4 mm, and the real-size
field of view (128 x 204.8 x 204.8 mm, anatomy 4/3 larger) directly at 1.0 x 0.7 x 0.7 mm.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

from seg2refine_core.data.canonical import CanonicalSpace, from_canonical, resample, resample_label, to_canonical
from seg2refine_core.data.phantom import make_phantom
from seg2refine_core.evaluation.metrics import betti0, cldice, dice
from seg2refine_core.io.volume import Volume

TARGET = (1.0, 0.7, 0.7)
# same 96 x 89.6 x 89.6 mm field of view as the target grid 96 x 128 x 128
SOURCES = {"down (0.5x0.4x0.4 -> 1.0x0.7x0.7)": ((192, 224, 224), (0.5, 0.4, 0.4)),
           "up (2.0x1.4x1.4 -> 1.0x0.7x0.7)": ((48, 64, 64), (2.0, 1.4, 1.4))}


def _nearest(label: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    import torch

    t = torch.from_numpy(label.astype(np.float32))[None, None]
    return torch.nn.functional.interpolate(t, size=shape, mode="nearest-exact")[0, 0].numpy() > 0.5


def _volume_preserving(linear: np.ndarray, voxels: float) -> np.ndarray:
    """Threshold so that the mask has as many voxels as the source's lumen volume covers at the target."""
    k = int(round(voxels))
    if k <= 0:
        return np.zeros_like(linear, dtype=bool)
    t = np.partition(linear.ravel(), -k)[-k]
    return linear >= max(t, 1e-6)


def label_rules(label: np.ndarray, src: tuple, shape: tuple) -> dict[str, np.ndarray]:
    linear = resample(label, shape)
    ratio = float(np.prod(src)) / float(np.prod(TARGET))
    t0 = time.perf_counter()
    chosen = resample_label(label, shape) > 0
    print(f"  resample_label {label.shape} -> {shape}: {time.perf_counter() - t0:.2f} s", flush=True)
    return {
        "resample_label": chosen,
        "nearest": _nearest(label, shape),
        "linear >= 0.5": linear >= 0.5,
        "linear >= 0.4": linear >= 0.4,
        "linear >= 0.3": linear >= 0.3,
        "linear >= 0.25": linear >= 0.25,
        "linear >= 0.1": linear >= 0.1,
        "volume-preserving": _volume_preserving(linear, label.sum() * ratio),
    }


def cmd_labels(args: argparse.Namespace) -> None:
    for title, (src_shape, src_spacing) in SOURCES.items():
        rows: dict[str, list[tuple[float, ...]]] = {}
        natives = []
        for seed in args.seeds:
            native = make_phantom((96, 128, 128), TARGET, seed=seed).label
            source = make_phantom(src_shape, src_spacing, seed=seed).label
            natives.append((betti0(source), betti0(native), native.sum() * np.prod(TARGET)))
            for name, mask in label_rules(source, src_spacing, native.shape).items():
                vol = mask.sum() * np.prod(TARGET) / (source.sum() * np.prod(src_spacing))
                rows.setdefault(name, []).append((dice(mask, native), cldice(mask, native), betti0(mask), vol))
        print(f"\n{title}; seeds {args.seeds}; B0 source / native: {[(a, b) for a, b, _ in natives]}")
        print(f"{'rule':>20} {'Dice':>6} {'clDice':>7} {'B0 per seed':>16} {'vol ratio':>9}")
        for name, vals in rows.items():
            d = statistics.mean(v[0] for v in vals)
            c = statistics.mean(v[1] for v in vals)
            b = ",".join(str(v[2]) for v in vals)
            r = statistics.mean(v[3] for v in vals)
            print(f"{name:>20} {d:6.3f} {c:7.3f} {b:>16} {r:9.2f}")


def _timed(cases: dict[str, Callable[[], object]], repeats: int) -> None:
    for fn in cases.values():
        fn()
    wall: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            wall[name].append(time.perf_counter() - t0)
    for name, w in wall.items():
        print(f"{name:>40}: {statistics.median(w):6.2f} s (median of {repeats})")


def cmd_resampler(args: argparse.Namespace) -> None:
    import torch
    from scipy import ndimage

    torch.set_num_threads(args.threads)
    a = np.random.default_rng(0).standard_normal((256, 512, 512), dtype=np.float32)
    small = (183, 293, 293)  # 0.5 x 0.4 x 0.4 mm -> 0.7 mm
    b = resample(a, small)

    def zoom(x: np.ndarray, shape: tuple) -> np.ndarray:
        return ndimage.zoom(x, [o / i for o, i in zip(shape, x.shape, strict=True)], order=1, mode="nearest",
                            grid_mode=True, output=np.float32)

    _timed({"torch down 256x512x512 -> 183x293x293": lambda: resample(a, small),
            "scipy down": lambda: zoom(a, small),
            "torch up 183x293x293 -> 256x512x512": lambda: resample(b, a.shape),
            "scipy up": lambda: zoom(b, a.shape)}, args.repeats)
    diff = np.abs(resample(a, small) - zoom(a, small)).max()
    print(f"torch threads {args.threads}; max |torch - scipy| down: {diff:.2e}")


def _vmhwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_vmhwm() -> None:
    """Reset the peak-RSS mark (``echo 5 > /proc/self/clear_refs``), so that phantom generation is not counted."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def cmd_realsize(args: argparse.Namespace) -> None:
    if not args.child:
        subprocess.run([sys.executable, __file__, "realsize", "--threads", str(args.threads), "--child"], check=True)
        return
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    phantom = make_phantom((256, 512, 512), (0.5, 0.4, 0.4), seed=4242)
    print(f"phantom 256x512x512 made in {time.perf_counter() - t0:.0f} s (peak RSS so far {_vmhwm_mb():.0f} MB)")
    volume = Volume.from_array(phantom.image, phantom.spacing, phantom.affine)
    label = Volume.from_array(phantom.label, phantom.spacing, phantom.affine)
    del phantom
    space = CanonicalSpace(TARGET)
    steps = {"to_canonical image": lambda: to_canonical(volume, space)[0],
             "from_canonical": lambda: from_canonical(*to_canonical(volume, space)),
             "to_canonical label": lambda: to_canonical(label, space, kind="label")[0]}
    _, mapping = to_canonical(volume, space)
    print(f"input {volume.shape} at {volume.spacing} mm -> canonical {mapping.shape} at "
          f"{tuple(round(s, 4) for s in mapping.spacing)} mm; torch threads {args.threads}")
    for name, step in steps.items():
        _reset_vmhwm()
        base = _vmhwm_mb()
        t0 = time.perf_counter()
        result = step()
        seconds = time.perf_counter() - t0
        print(f"{name:>20}: {seconds:5.2f} s, peak RSS {_vmhwm_mb():.0f} MB (+{_vmhwm_mb() - base:.0f} MB over the "
              f"{base:.0f} MB of libraries and the input image and label); result {result.shape} {result.dtype}")
        del result


#: in-plane spacing (mm) -> voxels across the 89.6 mm field of view of the 96 x 128 x 128 phantom at 0.7 mm
INPLANE = {0.4: 224, 0.7: 128, 1.2: 75}
ORDERS = ("LPS", "RAS", "LPI", "LSP")


def _segment(predictor: object, image: np.ndarray, spacing: tuple, affine: np.ndarray) -> tuple[object, float]:
    t0 = time.perf_counter()
    result = predictor.predict_volume(Volume.from_array(image, spacing, affine))  # type: ignore[attr-defined]
    return result, time.perf_counter() - t0


def _reoriented(array: np.ndarray, affine: np.ndarray, codes: str) -> tuple[np.ndarray, tuple, np.ndarray]:
    """``array`` (z, y, x) with ``affine`` stored in the voxel order ``codes`` (exact; nibabel)."""
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    image = nib.Nifti1Image(np.ascontiguousarray(array.T), affine)
    image = image.as_reoriented(ornt_transform(io_orientation(affine), axcodes2ornt(tuple(codes))))
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    return np.ascontiguousarray(np.asarray(image.dataobj).T), zooms[::-1], image.affine


def cmd_dice(args: argparse.Namespace) -> None:
    import torch

    from seg2refine_core.inference.predictor import Predictor

    if args.child:
        return _dice_realsize(args)
    torch.set_num_threads(args.threads)
    report: dict[str, object] = {"pythonpath": os.environ.get("PYTHONPATH", ""), "load_before": os.getloadavg()[0]}
    predictor = Predictor.from_checkpoints(device="cpu")
    rows = {}
    for inplane, n in INPLANE.items():
        phantom = make_phantom((96, n, n), (1.0, inplane, inplane), seed=4321)
        result, seconds = _segment(predictor, phantom.image, phantom.spacing, phantom.affine)
        rows[inplane] = {"shape": [96, n, n], "dice_s": dice(result.s_mask, phantom.label),
                         "dice_y": dice(result.y_mask, phantom.label), "seconds": round(seconds, 2)}
        print(f"seed 4321 at 1.0 x {inplane} x {inplane} mm {rows[inplane]}", flush=True)
    report["inplane"] = rows
    phantom = make_phantom((96, 128, 128), (1.0, 0.7, 0.7), seed=1000)
    masks, orders = {}, {}
    for codes in ORDERS:
        image, spacing, affine = _reoriented(phantom.image, phantom.affine, codes)
        result, seconds = _segment(predictor, image, spacing, affine)
        back = _reoriented(result.y_mask, affine, "LPS")[0]  # world space: the phantom's own voxel order
        masks[codes] = back
        orders[codes] = {"dice_y": dice(back, phantom.label), "agreement_with_lps": dice(back, masks["LPS"]),
                         "seconds": round(seconds, 2)}
        print(f"demo phantom stored as {codes}: {orders[codes]}", flush=True)
    report["orders"] = orders
    if args.realsize:
        env = {**os.environ, "THP_MEM_ALLOC_ENABLE": "1"}  # as the command line sets it
        done = subprocess.run([sys.executable, __file__, "dice", "--child", "--threads", str(args.threads)],
                              check=True, capture_output=True, text=True, env=env)
        print(done.stdout, end="")
        report["realsize"] = json.loads(done.stdout.splitlines()[-1])
        # controls: the same anatomy in the weights' field of view at the real-size voxels, and the real-size field
        # of view on the weights' own grid (no mapping at all)
        controls = {}
        for name, shape, spacing in (("training field of view at 0.5 x 0.4 x 0.4 mm", (192, 224, 224), (0.5, 0.4, 0.4)),
                                     ("real-size field of view at 1.0 x 0.7 x 0.7 mm", (128, 293, 293), TARGET)):
            phantom = make_phantom(shape, spacing, seed=4242)
            result, seconds = _segment(predictor, phantom.image, phantom.spacing, phantom.affine)
            controls[name] = {"shape": list(shape), "dice_s": dice(result.s_mask, phantom.label),
                              "dice_y": dice(result.y_mask, phantom.label), "seconds": round(seconds, 1)}
            print(f"seed 4242, {name}: {controls[name]}", flush=True)
        report["realsize_controls"] = controls
    report["load_after"] = os.getloadavg()[0]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


def _dice_realsize(args: argparse.Namespace) -> None:
    import torch

    from seg2refine_core.inference.predictor import Predictor

    torch.set_num_threads(args.threads)
    phantom = make_phantom((256, 512, 512), (0.5, 0.4, 0.4), seed=4242)
    predictor = Predictor.from_checkpoints(device="cpu")
    image, label = phantom.image, phantom.label
    spacing, affine = phantom.spacing, phantom.affine
    del phantom
    load = os.getloadavg()[0]
    _reset_vmhwm()
    base = _vmhwm_mb()
    result, seconds = _segment(predictor, image, spacing, affine)
    out = {"shape": [256, 512, 512], "spacing": [0.5, 0.4, 0.4], "seconds": round(seconds, 1),
           "timings_s": {k: round(v, 2) for k, v in result.timings_s.items()}, "peak_rss_mb": round(_vmhwm_mb()),
           "rss_before_mb": round(base), "load_before": load, "load_after": os.getloadavg()[0],
           "threads": torch.get_num_threads(), "dice_s": dice(result.s_mask, label),
           "dice_y": dice(result.y_mask, label)}
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("labels")
    p.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    p.set_defaults(run=cmd_labels)
    p = sub.add_parser("resampler")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.set_defaults(run=cmd_resampler)
    p = sub.add_parser("realsize")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(run=cmd_realsize)
    p = sub.add_parser("dice")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--realsize", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(run=cmd_dice)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
