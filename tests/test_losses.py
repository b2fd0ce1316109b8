"""Stage-1 loss: eq. 8 weights and their guard, eq. 7 by hand, eq. 9, and that it trains a tiny SFANet."""

from __future__ import annotations

import math

import pytest
import torch

from seg2refine_core.nets import build_sfanet
from seg2refine_core.training.losses import WeightedBCEDiceLoss, class_weights, weighted_bce

pytestmark = pytest.mark.usefixtures("one_thread")


def eq7(logits: torch.Tensor, target: torch.Tensor, w_pos: float, w_neg: float) -> float:
    """Eq. 7 written out term by term, in Python floats."""
    total = 0.0
    for z, y in zip(logits.flatten().tolist(), target.flatten().tolist(), strict=True):
        p = 1.0 / (1.0 + math.exp(-z))
        total += w_pos * y * math.log(p) + w_neg * (1.0 - y) * math.log(1.0 - p)
    return -total / logits.numel()


def test_weights_and_wbce_match_hand_computation():
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    w_pos, w_neg = class_weights(target)
    assert w_pos.item() == pytest.approx(4 / 2)  # N / (2 N_vessel) = 4 / 2
    assert w_neg.item() == pytest.approx(4 / 6)  # N / (2 N_background) = 4 / 6
    assert weighted_bce(logits, target).item() == pytest.approx(eq7(logits, target, 2.0, 4 / 6), rel=1e-6)


def test_soft_targets_follow_eq7():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 1, 3, 3), torch.rand(2, 1, 3, 3)
    n, n_v = target.numel(), target.sum().item()
    w_pos, w_neg = n / (2 * n_v), n / (2 * (n - n_v))
    assert weighted_bce(logits, target).item() == pytest.approx(eq7(logits, target, w_pos, w_neg), rel=1e-5)


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_one_class_batch_uses_unit_weights_and_stays_finite(fill):
    torch.manual_seed(1)
    logits = torch.randn(3, 1, 4, 4, requires_grad=True)
    target = torch.full((3, 1, 4, 4), fill)
    w_pos, w_neg = class_weights(target)
    assert (w_pos.item(), w_neg.item()) == (1.0, 1.0)
    assert weighted_bce(logits, target).item() == pytest.approx(eq7(logits.detach(), target, 1, 1), rel=1e-6)
    loss = WeightedBCEDiceLoss()(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_combined_loss_is_eq9():
    torch.manual_seed(2)
    logits = torch.randn(2, 1, 5, 5)
    target = (torch.rand(2, 1, 5, 5) > 0.7).float()
    p = torch.sigmoid(logits)
    dice = 1 - (2 * (p * target).sum() + 1e-5) / (p.sum() + target.sum() + 1e-5)  # one Dice over the batch
    for alpha in (0.0, 0.5, 0.8):
        expected = alpha * weighted_bce(logits, target) + (1 - alpha) * dice
        torch.testing.assert_close(WeightedBCEDiceLoss(alpha)(logits, target), expected)
    with pytest.raises(ValueError):
        WeightedBCEDiceLoss(1.5)
    with pytest.raises(ValueError):
        WeightedBCEDiceLoss()(logits, target[:1])


def test_loss_decreases_when_training_a_tiny_sfanet():
    torch.manual_seed(3)
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    target = (((yy - 12) ** 2 + (xx - 20) ** 2) < 16).float()[None, None].repeat(2, 1, 1, 1)
    image = 0.3 + 0.5 * target + 0.05 * torch.randn_like(target)
    model = build_sfanet("sfanet", width=4, input_size=(32, 32))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-2)
    criterion = WeightedBCEDiceLoss()
    losses = []
    for _ in range(30):
        optimiser.zero_grad()
        loss = criterion(model(image), target)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) < sum(losses[:5])
    assert losses[-1] < 0.75 * losses[0]
