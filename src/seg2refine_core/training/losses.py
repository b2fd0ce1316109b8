"""Stage-1 loss: α·WBCE + (1 − α)·Dice (paper eqs. 7-9; design §3).

WBCE (eq. 7) uses per-batch inverse-frequency weights (eq. 8) computed from the target batch::

    w_pos = N / (2·N_vessel),  w_neg = N / (2·N_background)     (N = all pixels of the batch)

so that WBCE is the mean of the per-class mean BCEs. Guard: when one class is absent from the batch
(an all-background batch, the common case for axial slices, or an all-vessel one) both weights are 1, i.e.
plain BCE, which is the mean BCE of the one class present (the same "mean over present classes" rule).
Soft targets in [0, 1] are allowed: N_vessel = Σ y and eq. 7 is applied as written.

The Dice term is MONAI's ``DiceLoss(sigmoid=True, batch=True)``: one Dice over the whole batch. A per-sample
Dice is undefined-ish on the many slices with no vessel (it rewards only an exactly empty prediction and
makes the gradient of such slices dominate); the batch Dice stays well defined as long as the batch has
any vessel, and still penalises false positives when it has none. Both terms are computed in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

__all__ = ["WeightedBCEDiceLoss", "class_weights", "weighted_bce"]


def class_weights(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 8 weights ``(w_pos, w_neg)`` (0-d float32 tensors) for a target batch of any shape, values in [0, 1].

    Returns ``(1, 1)`` when the batch has no vessel or no background (see module doc).
    """
    y = target.detach().float()
    total = float(y.numel())
    n_vessel = y.sum()
    n_background = total - n_vessel
    one_class = (n_vessel <= 0) | (n_background <= 0)
    one = torch.ones((), dtype=torch.float32, device=y.device)
    w_pos = torch.where(one_class, one, total / (2.0 * n_vessel.clamp_min(1e-12)))
    w_neg = torch.where(one_class, one, total / (2.0 * n_background.clamp_min(1e-12)))
    return w_pos, w_neg


def weighted_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 7 with eq. 8 weights, from logits: ``-(1/N)·Σ[w_pos·y·log p + w_neg·(1-y)·log(1-p)]``, p = σ(logits).

    Uses ``binary_cross_entropy_with_logits`` (log-sum-exp stable) with ``weight=w_neg`` and
    ``pos_weight=w_pos/w_neg``, which is exactly eq. 7 for binary and soft targets.
    """
    y = target.float()
    w_pos, w_neg = class_weights(y)
    return F.binary_cross_entropy_with_logits(logits.float(), y, weight=w_neg, pos_weight=w_pos / w_neg)


class WeightedBCEDiceLoss(nn.Module):
    """``α·WBCE + (1 − α)·Dice`` (eq. 9), α = 0.5 in the paper.

    ``forward(logits: (B, 1, H, W), target: (B, 1, H, W) in {0, 1}) -> scalar``; any shape with a channel
    axis at dim 1 works (3D included).
    """

    def __init__(self, alpha: float = 0.5):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.dice = DiceLoss(sigmoid=True, batch=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
        logits, target = logits.float(), target.float()
        return self.alpha * weighted_bce(logits, target) + (1.0 - self.alpha) * self.dice(logits, target)
