"""Layer names, colours and geometry shared by the reader, the sample data and the widgets.

Every layer carries its physical spacing as ``scale`` (sz, sy, sx) with units of mm, so napari's scale bar,
measurements and grid tiles are in millimetres. The source file's geometry (a :class:`Volume` whose array is a
zero-cost broadcast of the right shape) rides along in ``layer.metadata[VOLUME_KEY]``; the writer uses it to
save masks with the source header and affine exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from seg2refine_core.io.volume import Volume

CT = "CT"
S = "S (stage 1)"
Y = "Y (refined)"
GT = "ground truth"
Y_VS_GT = "Y vs ground truth"
Y_VS_S = "Y vs S"

VOLUME_KEY = "seg2refine_volume"
UNITS = ("mm", "mm", "mm")

MASK_COLOURS = {S: "#ff8c1a", Y: "#00e5ff", GT: "#ffe119"}
#: TP / FP / FN colours of the difference layer: FP blue and FN brown as in the paper's Fig. 6.
DIFFERENCE_COLOURS = {1: "#c8e6c0", 2: "#1f4dff", 3: "#8b4513"}

LayerDataTuple = tuple[np.ndarray, dict[str, Any], str]


def hu_window() -> tuple[float, float]:
    """The preprocessing HU window (center 200, width 600 → [-100, 500]) as contrast limits."""
    from seg2refine_core.data.preprocess import PreprocessConfig

    cfg = PreprocessConfig()
    return (cfg.window_center - cfg.window_width / 2, cfg.window_center + cfg.window_width / 2)


def geometry(volume: Volume) -> Volume:
    """``volume`` without its voxels: same shape (a read-only broadcast), spacing, affine, header and path."""
    return Volume(
        array=np.broadcast_to(np.zeros((), np.float32), volume.shape),
        spacing=volume.spacing,
        affine=volume.affine,
        path=volume.path,
        header=volume.header,
        fmt=volume.fmt,
    )


def mask_colormap(colour: str) -> dict:
    """A direct labels colormap: 0 transparent, 1 ``colour``."""
    return {None: "transparent", 0: "transparent", 1: colour}


def difference_colormap() -> dict:
    """The TP/FP/FN colormap of a difference layer (labels 1, 2, 3)."""
    return {None: "transparent", 0: "transparent", **DIFFERENCE_COLOURS}


def image_kwargs(volume: Volume, name: str = CT) -> dict[str, Any]:
    """``add_image`` keyword arguments for a CT volume: spacing as scale in mm, contrast at the HU window."""
    return {
        "name": name,
        "scale": volume.spacing,
        "units": UNITS,
        "contrast_limits": hu_window(),
        "colormap": "gray",
        "metadata": {VOLUME_KEY: geometry(volume)},
    }


def labels_kwargs(volume: Volume, name: str) -> dict[str, Any]:
    """``add_labels`` keyword arguments for a mask on ``volume``'s grid, coloured by its role ``name``."""
    return {
        "name": name,
        "scale": volume.spacing,
        "units": UNITS,
        "colormap": mask_colormap(MASK_COLOURS.get(name, "#ff00ff")),
        "opacity": 0.8,
        "metadata": {VOLUME_KEY: geometry(volume)},
    }


def kwargs_like(layer: Any, name: str, colormap: dict) -> dict[str, Any]:
    """Keyword arguments for a labels layer on the same grid as ``layer`` (scale, translate, units, metadata)."""
    return {
        "name": name,
        "scale": tuple(layer.scale),
        "translate": tuple(layer.translate),
        "units": tuple(str(u) for u in layer.units),
        "colormap": colormap,
        "opacity": 0.8,
        "metadata": dict(layer.metadata),
    }


def put_labels(viewer: Any, data: np.ndarray, like: Any, name: str, colormap: dict | None = None) -> Any:
    """Show ``data`` as the labels layer ``name`` on ``like``'s grid: replace the data of an existing layer of that
    name and shape, otherwise add a new one. Returns the layer."""
    from napari.layers import Labels

    if name in viewer.layers:
        layer = viewer.layers[name]
        if isinstance(layer, Labels) and layer.data.shape == data.shape:
            layer.data = data
            layer.metadata = dict(like.metadata)
            return layer
        viewer.layers.remove(layer)
    colormap = colormap or mask_colormap(MASK_COLOURS.get(name, "#ff00ff"))
    return viewer.add_labels(data, **kwargs_like(like, name, colormap))
