"""The roles a model plays at inference, the checkpoint architectures each accepts, and the demo weights shipped
for them.

A *role* is what a model is used for: ``stage1`` (SFANet on axial slices → S), ``stage2`` (the 3D refiner on
concat(X', S) → Y) or ``baseline3d`` (a 3D network on X' alone, the README's comparison → B). This module imports
neither torch nor numpy, so the napari plugin can list the roles and bundled weights at start-up.
"""

from __future__ import annotations

from pathlib import Path

from seg2refine_core.errors import CheckpointError

WEIGHTS_DIR = Path(__file__).parents[1] / "weights"
#: Human titles of the roles, in pipeline order (CLI and widget labels).
ROLE_TITLES = {"stage1": "Stage 1 (SFANet)", "stage2": "Stage 2 (Attention-GAN)", "baseline3d": "3D baseline (UNet)"}
#: Checkpoint architectures each role accepts; the first is the one named in messages.
ROLE_ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "stage1": ("sfanet",),
    "stage2": ("attention-gan-3d", "monai-unet-3d"),
    "baseline3d": ("monai-unet-3d",),
}
#: Demo weights shipped inside the package, per role (trained on synthetic phantoms only).
BUNDLED: dict[str, Path] = {"stage1": WEIGHTS_DIR / "stage1.safetensors", "stage2": WEIGHTS_DIR / "stage2.safetensors"}


def bundled_checkpoint(role: str) -> Path:
    """Path of the demo weights shipped inside the package for ``role`` (a key of :data:`BUNDLED`).

    Raises :class:`CheckpointError` when the role has no bundled weights or their file is missing.
    """
    if role not in BUNDLED:
        raise CheckpointError(f"there are no bundled weights for {role}; give a checkpoint")
    path = BUNDLED[role]
    if not path.is_file():
        raise CheckpointError(f"{path}: bundled demo weights are missing; build them with `make demo-weights`")
    return path
