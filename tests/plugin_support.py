"""Helpers for the plugin tests: a tiny phantom, tiny checkpoints, a viewer holding them, waiting for jobs."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

SHAPE = (16, 48, 48)
SPACING = (2.0, 0.7, 0.7)
WIDTH = 4
PATCH = [16, 32, 32]


@lru_cache(maxsize=1)
def tiny_phantom():
    """A 16×48×48 synthetic CT (HU) with its coronary label; spacing (2.0, 0.7, 0.7) mm."""
    from seg2refine_core.data.phantom import make_phantom

    return make_phantom(shape=SHAPE, spacing=SPACING, seed=3)


def tiny_checkpoints(folder: Path) -> tuple[Path, Path]:
    """Untrained width-4 SFANet and Attention-GAN generator checkpoints in ``folder``: (stage 1, stage 2)."""
    from seg2refine_core.data.preprocess import PreprocessConfig
    from seg2refine_core.io.checkpoint import save_checkpoint
    from seg2refine_core.nets.attention_gan import AttentionGenerator3d
    from seg2refine_core.nets.sfanet import build_sfanet

    preprocess = PreprocessConfig().to_dict()
    sfanet = build_sfanet("sfanet", WIDTH)
    s1 = save_checkpoint(
        folder / "tiny-s1", sfanet,
        {"architecture": "sfanet", "model": sfanet.config(), "preprocess": preprocess,
         "training": {"cases": {"train": ["elsewhere"]}}},
    )
    generator = AttentionGenerator3d(in_channels=2, out_channels=1, width=WIDTH)
    s2 = save_checkpoint(
        folder / "tiny-s2", generator,
        {"architecture": "attention-gan-3d", "model": generator.config(), "preprocess": preprocess,
         "input": {"patch_size": PATCH}},
    )
    return s1, s2


def add_phantom(viewer, with_gt: bool = True):
    """Add the tiny phantom as "CT" (and "ground truth") the way the reader does; returns the CT layer."""
    from napari_seg2refine._layers import CT, GT, image_kwargs, labels_kwargs
    from seg2refine_core.io.volume import Volume

    phantom = tiny_phantom()
    volume = Volume.from_array(phantom.image, phantom.spacing, phantom.affine)
    ct = viewer.add_image(phantom.image, **image_kwargs(volume, CT))
    if with_gt:
        viewer.add_labels(phantom.label, **labels_kwargs(volume, GT))
    return ct


def add_masks(viewer, ct):
    """Add hand-made S and Y masks: S = ground truth with its last vessel slice removed and a stray blob,
    Y = the ground truth. Returns (S, Y) arrays."""
    from napari_seg2refine._layers import S, Y, put_labels

    gt = tiny_phantom().label
    s = gt.copy()
    last = int(np.flatnonzero(gt.any(axis=(1, 2)))[-1])
    s[last] = 0
    s[1, 2:5, 2:5] = 1
    put_labels(viewer, s, ct, S)
    put_labels(viewer, gt.copy(), ct, Y)
    return s, gt


def wait_for_job(qtbot, widget, timeout: int = 60_000) -> str:
    """Wait until ``widget.job`` has ended (its worker finished and ``on_end`` ran); returns its status."""
    qtbot.waitUntil(lambda: widget.job is not None and widget.job.ended, timeout=timeout)
    return widget.job.status
