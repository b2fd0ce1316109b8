"""Losses of the stage-2 Attention-GAN (paper eqs. 10-12, Algorithm 1; design section 4).

Tensors are ``(B, 1, D, H, W)``. The networks return logits, so every BCE here is BCE-with-logits and the Dice
applies the sigmoid itself.

- ``D_loss = (BCE(D(T), 1) + BCE(D(Y.detach()), 0)) / 2`` (eq. 12): :func:`discriminator_loss`.
- ``G_loss = BCE(D(Y), 1) + lambda * Dice(Y, T) + dB0`` (eq. 10): :class:`GeneratorLoss`.
- ``dB0 = |B0(Y) - B0(T)| / B0(Y)`` (eq. 11): :func:`delta_b0`. B0 counts 26-connected components of the mask
  thresholded at 0.5. A component count is piecewise constant, so dB0 has no gradient: added to the loss as in
  eq. 10 it only shifts the logged value and never changes an update. It is always logged; a differentiable
  topology term (MONAI's soft clDice) can be switched on instead or as well.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss, SoftclDiceLoss
from torch import nn

from seg2refine_core.evaluation.metrics import betti0

__all__ = [
    "TOPOLOGY_TERMS",
    "GeneratorLoss",
    "delta_b0",
    "discriminator_loss",
    "generator_adversarial_loss",
]

TOPOLOGY_TERMS = ("cldice",)


def discriminator_loss(d_real_logits: torch.Tensor, d_fake_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 12: ``(BCE(D(T), 1) + BCE(D(Y), 0)) / 2`` on patch logit maps ``(B, 1, d, h, w)``; a scalar.

    Pass ``D(concat(Y.detach(), X', S))`` as the fake logits so that the generator gets no gradient here.
    """
    real = F.binary_cross_entropy_with_logits(d_real_logits, torch.ones_like(d_real_logits))
    fake = F.binary_cross_entropy_with_logits(d_fake_logits, torch.zeros_like(d_fake_logits))
    return (real + fake) / 2


def generator_adversarial_loss(d_fake_logits: torch.Tensor) -> torch.Tensor:
    """Adversarial term of eq. 10: ``BCE(D(Y), 1)`` on the patch logit map ``(B, 1, d, h, w)``; a scalar."""
    return F.binary_cross_entropy_with_logits(d_fake_logits, torch.ones_like(d_fake_logits))


def _binary_batch(mask: np.ndarray | torch.Tensor, threshold: float, name: str) -> np.ndarray:
    """A mask or probability map as a bool array ``(B, D, H, W)``.

    Accepts ``(D, H, W)``, ``(B, D, H, W)`` or ``(B, 1, D, H, W)``. Floating values are foreground where
    ``>= threshold``; integer and bool values where non-zero.
    """
    if isinstance(mask, torch.Tensor):
        t = mask.detach()
        a = (t >= threshold if t.is_floating_point() else t != 0).cpu().numpy()
    else:
        a = np.asarray(mask)
        a = a >= threshold if np.issubdtype(a.dtype, np.floating) else a != 0
    if a.ndim == 5:
        if a.shape[1] != 1:
            raise ValueError(f"{name}: expected one channel, got shape {a.shape}")
        a = a[:, 0]
    elif a.ndim == 3:
        a = a[None]
    elif a.ndim != 4:
        raise ValueError(f"{name}: expected (D, H, W), (B, D, H, W) or (B, 1, D, H, W), got shape {a.shape}")
    return a


def delta_b0(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor, threshold: float = 0.5) -> float:
    """Eq. 11, ``|B0(Y) - B0(T)| / B0(Y)`` per sample, averaged over the batch; a Python float, no gradient.

    ``pred`` and ``gt`` are masks or probabilities (not logits), ``(D, H, W)``, ``(B, D, H, W)`` or
    ``(B, 1, D, H, W)``, NumPy or torch. B0 counts 26-connected components (``metrics.betti0``).
    Guard for an empty prediction: both empty gives 0; ``B0(Y) = 0 < B0(T)`` divides by 1, giving ``B0(T)``
    (the denominator is ``max(B0(Y), 1)``).
    """
    p = _binary_batch(pred, threshold, "pred")
    g = _binary_batch(gt, threshold, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred shape {p.shape} does not match gt shape {g.shape}")
    values = []
    for p_i, g_i in zip(p, g, strict=True):
        b_y, b_t = betti0(p_i), betti0(g_i)
        values.append(abs(b_y - b_t) / max(b_y, 1))
    return float(np.mean(values))


class GeneratorLoss(nn.Module):
    """Generator objective of eq. 10, with an optional differentiable topology term.

    ``total = BCE(D(Y), 1) + lam * Dice(Y, T) [+ dB0] [+ topology_weight * softclDice(Y, T)]``.

    - ``lam``: Dice weight, 5 by default (Vox2Vox, the paper's reference 31).
    - ``use_delta_b0``: add dB0 (eq. 11) as in the paper. It is a constant (no gradient), so it changes the
      logged total, not the training; it is logged either way.
    - ``topology``: ``None`` or ``"cldice"`` (MONAI ``SoftclDiceLoss`` on the sigmoid, 3 soft-skeleton
      iterations), weighted by ``topology_weight``.
    - ``dice_batch``: MONAI ``DiceLoss(sigmoid=True, batch=...)``. True (the default) pools the batch into one
      Dice, so a patch without vessel (random patches) penalises false positives instead of scoring a flat ~1.
    """

    def __init__(
        self,
        lam: float = 5.0,
        use_delta_b0: bool = True,
        topology: str | None = None,
        topology_weight: float = 1.0,
        dice_batch: bool = True,
    ) -> None:
        super().__init__()
        if topology is not None and topology not in TOPOLOGY_TERMS:
            raise ValueError(f"topology {topology!r}: expected None or one of {', '.join(TOPOLOGY_TERMS)}")
        self.lam = float(lam)
        self.use_delta_b0 = use_delta_b0
        self.topology = topology
        self.topology_weight = float(topology_weight)
        self.dice = DiceLoss(sigmoid=True, batch=dice_batch)
        self.topology_loss = SoftclDiceLoss(sigmoid=True) if topology == "cldice" else None

    def forward(
        self, d_fake_logits: torch.Tensor, y_logits: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Return ``(total, components)``.

        ``d_fake_logits``: ``D(concat(Y, X', S))`` without detaching Y, ``(B, 1, d, h, w)``;
        ``y_logits``: generator output ``(B, 1, D, H, W)``; ``target``: T as float {0, 1}, same shape.
        ``components`` holds floats ``adv``, ``dice``, ``delta_b0`` (always), ``topology`` (when enabled) and
        ``total``.
        """
        target = target.to(y_logits.dtype)
        adv = generator_adversarial_loss(d_fake_logits)
        dice = self.dice(y_logits, target)
        total = adv + self.lam * dice
        db0 = delta_b0(y_logits.detach() >= 0, target)  # sigmoid(y) >= 0.5  <=>  y >= 0
        if self.use_delta_b0:
            total = total + db0
        components = {"adv": float(adv.detach()), "dice": float(dice.detach()), "delta_b0": db0}
        if self.topology_loss is not None:
            topo = self.topology_loss(y_logits, target)
            total = total + self.topology_weight * topo
            components["topology"] = float(topo.detach())
        components["total"] = float(total.detach())
        return total, components
