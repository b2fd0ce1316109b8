"""Seg2Refine core: CCTA I/O, the synthetic phantom, metrics, SFANet, the 3D Attention-GAN and their training.

Headless by design: nothing here imports Qt or napari. Arrays are ``(z, y, x)``; spacing is ``(sz, sy, sx)`` mm.
"""

__version__ = "0.1.0"
