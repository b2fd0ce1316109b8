"""Stage-2 losses: eq. 12, eq. 11 (dB0) and its guards, the generator objective, a tiny adversarial loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seg2refine_core.nets.attention_gan import AttentionGenerator3d, PatchDiscriminator3d
from seg2refine_core.training.gan_losses import (
    GeneratorLoss,
    delta_b0,
    discriminator_loss,
    generator_adversarial_loss,
)


def _softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_discriminator_loss_is_eq12_on_hand_made_logits():
    real = torch.tensor([2.0, -1.0]).view(1, 1, 2, 1, 1)
    fake = torch.tensor([0.5, -3.0]).view(1, 1, 2, 1, 1)
    # BCE(l, 1) = softplus(-l), BCE(l, 0) = softplus(l), each averaged over the patch map
    d_real = (_softplus(-2.0) + _softplus(1.0)) / 2
    d_fake = (_softplus(0.5) + _softplus(-3.0)) / 2
    assert discriminator_loss(real, fake).item() == pytest.approx((d_real + d_fake) / 2, rel=1e-6)
    assert generator_adversarial_loss(torch.zeros(1, 1, 3, 3, 3)).item() == pytest.approx(
        math.log(2), rel=1e-6
    )


def _three_blobs() -> np.ndarray:
    y = np.zeros((16, 16, 16), np.uint8)
    y[1:4, 1:4, 1:4] = 1
    y[8:10, 8:10, 8:10] = 1
    y[10, 10, 10] = 1  # touches the second blob at a corner only: same 26-connected component
    y[13:15, 1:3, 12:15] = 1
    return y


def test_delta_b0_on_hand_made_masks():
    y, t = _three_blobs(), np.zeros((16, 16, 16), np.uint8)
    t[2:14, 5, 5] = 1
    assert delta_b0(y, t) == pytest.approx(2 / 3)
    # batch of two: (2/3 + 0) / 2, as float probabilities in (B, 1, D, H, W) torch tensors
    y_b = torch.from_numpy(np.stack([y, t])[:, None].astype(np.float32)) * 0.9
    t_b = torch.from_numpy(np.stack([t, t])[:, None].astype(np.float32))
    assert delta_b0(y_b, t_b) == pytest.approx(1 / 3)
    assert delta_b0(y_b * 0.5, t_b) == pytest.approx(1.0)  # 0.45 < 0.5: Y empty, T has one component


def test_delta_b0_empty_guard():
    empty, t = np.zeros((8, 8, 8), bool), np.zeros((8, 8, 8), bool)
    assert delta_b0(empty, empty) == 0.0
    t[1, 1, 1] = t[5, 5, 5] = True
    assert delta_b0(empty, t) == 2.0  # denominator max(B0(Y), 1)
    with pytest.raises(ValueError, match="does not match"):
        delta_b0(empty, np.zeros((8, 8, 4), bool))


def _toy_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two 32^3 patches: T = a tube along z, S = T with a gap and a spurious blob, X' = noisy T."""
    g = torch.Generator().manual_seed(seed)
    zz, yy, xx = torch.meshgrid(*(torch.arange(32.0),) * 3, indexing="ij")
    ts, ss = [], []
    for cy, cx in ((10.0, 12.0), (20.0, 18.0)):
        t = (((yy - cy) ** 2 + (xx - cx) ** 2) <= 9).float()
        s = t.clone()
        s[12:18] = 0
        s[4:7, 25:28, 2:5] = 1
        ts.append(t)
        ss.append(s)
    t = torch.stack(ts)[:, None]
    s = torch.stack(ss)[:, None]
    x = 0.2 + 0.6 * t + 0.1 * torch.randn(t.shape, generator=g)
    return x, s, t


def test_delta_b0_has_no_gradient_but_topology_term_does():
    x, s, t = _toy_batch()
    y = (6 * s - 3 + 0.5 * torch.randn(s.shape)).requires_grad_()  # 3 components (gap + blob), T has 1
    d_fake = torch.zeros(2, 1, 1, 1, 1)
    grads, comps = [], []
    for use_db0, topo in ((False, None), (True, None), (True, "cldice")):
        total, c = GeneratorLoss(use_delta_b0=use_db0, topology=topo)(d_fake, y, t)
        (grad,) = torch.autograd.grad(total, y)
        grads.append(grad)
        comps.append(c)
    assert isinstance(comps[1]["delta_b0"], float)
    assert comps[1]["delta_b0"] == pytest.approx(2 / 3)
    assert comps[1]["total"] == pytest.approx(comps[0]["total"] + comps[1]["delta_b0"], rel=1e-5)
    assert torch.equal(grads[0], grads[1])  # dB0 is a constant: identical gradient
    assert not torch.allclose(grads[2], grads[1])  # soft clDice moves the gradient
    c = comps[2]
    assert c["total"] == pytest.approx(c["adv"] + 5 * c["dice"] + c["delta_b0"] + c["topology"], rel=1e-5)


def test_generator_loss_rejects_unknown_topology():
    with pytest.raises(ValueError, match="topology"):
        GeneratorLoss(topology="betti")


def test_tiny_adversarial_loop_reduces_dice_loss():
    torch.manual_seed(0)
    x, s, t = (v[:1] for v in _toy_batch())
    g, d = AttentionGenerator3d(width=4), PatchDiscriminator3d(width=4)
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-2, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    g_loss = GeneratorLoss()
    cond = torch.cat([x, s], dim=1)  # X~ = concat(X', S)
    dice = []
    for _ in range(20):
        y = g(cond)
        d_real, d_fake = d(torch.cat([t, cond], 1)), d(torch.cat([torch.sigmoid(y.detach()), cond], 1))
        d_loss = discriminator_loss(d_real, d_fake)
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        total, comps = g_loss(d(torch.cat([torch.sigmoid(y), cond], 1)), y, t)
        opt_g.zero_grad()
        total.backward()
        opt_g.step()
        dice.append(comps["dice"])
    assert np.mean(dice[-3:]) < 0.95 * np.mean(dice[:3])  # seeds vary from x0.92 to x0.1 at 20 steps
