"""Stage-2 networks: shapes, gradient flow, attention gates, config, channels_last."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets.attentionunet import AttentionBlock

from seg2refine_core.nets.attention_gan import AttentionGenerator3d, PatchDiscriminator3d


@pytest.mark.parametrize("shape", [(64, 64, 64), (128, 128, 128), (32, 64, 48)])
def test_generator_output_matches_input_shape(shape):
    torch.manual_seed(0)
    g = AttentionGenerator3d(width=2)
    with torch.no_grad():
        y = g(torch.randn(1, 2, *shape))
    assert y.shape == (1, 1, *shape)
    assert torch.isfinite(y).all()


def test_generator_rejects_sides_not_multiple_of_16():
    g = AttentionGenerator3d(width=2)
    with pytest.raises(ValueError, match="multiples of 16"):
        g(torch.zeros(1, 2, 32, 40, 32))
    with pytest.raises(ValueError, match="expected input"):
        g(torch.zeros(1, 3, 32, 32, 32))


def test_probabilities_are_sigmoid_of_logits():
    torch.manual_seed(0)
    g = AttentionGenerator3d(width=2).eval()
    x = torch.randn(1, 2, 32, 32, 32)
    with torch.no_grad():
        p, y = g.probabilities(x), g(x)
    assert torch.allclose(p, torch.sigmoid(y))
    assert p.min() >= 0 and p.max() <= 1


@pytest.mark.parametrize(("shape", "out"), [((64, 64, 64), (3, 3, 3)), ((32, 64, 48), (1, 3, 2))])
def test_discriminator_is_a_patch_map(shape, out):
    d = PatchDiscriminator3d(width=2)
    with torch.no_grad():
        logits = d(torch.randn(2, 3, *shape))
    assert logits.shape == (2, 1, *out)


def test_discriminator_rejects_small_input():
    with pytest.raises(ValueError, match="at least 32"):
        PatchDiscriminator3d(width=2)(torch.zeros(1, 3, 16, 32, 32))


def test_gradients_reach_every_generator_parameter():
    torch.manual_seed(0)
    g = AttentionGenerator3d(width=4)
    x = torch.randn(2, 2, 32, 32, 32)
    target = (torch.rand(2, 1, 32, 32, 32) > 0.8).float()
    F.binary_cross_entropy_with_logits(g(x), target).backward()
    for name, p in g.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        if p.ndim > 1:  # a bias right before a norm layer gets a (numerically) zero gradient by design
            assert p.grad.abs().sum() > 0, name


def test_three_attention_gates_gate_the_skips():
    g = AttentionGenerator3d(width=4)
    gates = [m for m in g.modules() if isinstance(m, AttentionBlock)]
    assert len(gates) == 3
    calls: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    for gate in gates:
        gate.register_forward_hook(
            lambda m, args, kwargs, out: calls.append((kwargs["x"].shape, out.shape)), with_kwargs=True
        )
    with torch.no_grad():
        g(torch.randn(1, 2, 32, 32, 32))
    assert sorted(c[1][1:] for c in calls) == [(4, 16, 16, 16), (8, 8, 8, 8), (16, 4, 4, 4)]
    assert all(x_shape == out_shape for x_shape, out_shape in calls)


def test_checkpoint_round_trip_rebuilds_the_same_networks(tmp_path):
    from seg2refine_core.io.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32, 32)
    nets = {"attention-gan-3d": AttentionGenerator3d(width=4), "patch-discriminator-3d": PatchDiscriminator3d(width=4)}
    for name, net in nets.items():
        save_checkpoint(tmp_path / name, net, {"architecture": name, "model": net.config()})
        rebuilt, config = load_checkpoint(tmp_path / f"{name}.safetensors")
        assert type(rebuilt) is type(net) and config["model"] == net.config()
        inp = x[:, :2] if name == "attention-gan-3d" else x
        with torch.no_grad():
            torch.testing.assert_close(rebuilt(inp), net.eval()(inp))


def test_channels_last_3d_gives_the_same_output():
    torch.manual_seed(0)
    g = AttentionGenerator3d(width=4).eval()
    x = torch.randn(1, 2, 32, 32, 32)
    with torch.no_grad():
        ref = g(x)
        g_cl = g.to(memory_format=torch.channels_last_3d)
        out = g_cl(x.contiguous(memory_format=torch.channels_last_3d))
    assert torch.allclose(out, ref, atol=1e-4)


def test_generator_starts_near_the_vessel_prior():
    from seg2refine_core.nets.attention_gan import OUTPUT_PRIOR

    torch.manual_seed(0)
    g = AttentionGenerator3d(width=4).eval()
    with torch.no_grad():
        prob = torch.sigmoid(g(torch.rand(1, 2, 32, 32, 32)))
    assert abs(float(prob.mean()) - OUTPUT_PRIOR) < 0.02
    assert float((prob >= 0.5).float().mean()) < 0.01  # nothing is called vessel before training
