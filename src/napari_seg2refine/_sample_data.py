"""Sample data: a small synthetic CCTA phantom (64×128×128 voxels of 1.5×0.7×0.7 mm) with its ground truth.

The phantom is synthetic (see ``seg2refine_core.data.phantom``): useful to try the widgets, not real anatomy.
It has seed 1000, which no bundled model was trained on (the demo weights were trained on legacy phantom seeds 0-7
and cohort seeds 0-9, see ``seg2refine_core/weights/*.json``), so the Dice the widgets show on it is a held-out
score. Seed 1000 is also the ``make demo`` phantom; with the same field of view (96×89.6×89.6 mm) it is the same
anatomy at 1.5-mm slices.
"""

from __future__ import annotations

from seg2refine_core.io.volume import Volume

from ._layers import CT, GT, LayerDataTuple, image_kwargs, labels_kwargs

SAMPLE_SHAPE = (64, 128, 128)
SAMPLE_SPACING = (1.5, 0.7, 0.7)  # (sz, sy, sx) mm: the phantom's full reference field of view, 96×89.6×89.6 mm
SAMPLE_SEED = 1000  # held out: the bundled weights were trained on legacy seeds 0-7 and cohort seeds 0-9


def make_sample_data() -> list[LayerDataTuple]:
    """The "Synthetic CCTA phantom" sample: the CT (HU) and its ground truth, with physical spacing."""
    from seg2refine_core.data.phantom import make_phantom

    phantom = make_phantom(shape=SAMPLE_SHAPE, spacing=SAMPLE_SPACING, seed=SAMPLE_SEED)
    volume = Volume.from_array(phantom.image, phantom.spacing, phantom.affine)
    return [
        (phantom.image, image_kwargs(volume, CT), "image"),
        (phantom.label, labels_kwargs(volume, GT), "labels"),
    ]
