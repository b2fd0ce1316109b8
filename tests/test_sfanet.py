"""SFANet and its blocks: FFE against its definition, CBAM/AG shapes, variants, sizes, the `models` command."""

from __future__ import annotations

import pytest
import torch

from seg2refine_core.cli import main
from seg2refine_core.nets import (
    CBAM,
    VARIANTS,
    ChannelAttention,
    FrequencyFeatureEnhancement,
    SFANet,
    SpatialAttention,
    attention_gate,
    build_sfanet,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def ffe_by_definition(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Design §3.1 literally, in float64: fftshift(fft2), multiply the centred window by L, ifft2, real part."""
    height, width = x.shape[-2:]
    h, w = weight.shape[-2:]
    spec = torch.fft.fftshift(torch.fft.fft2(x.double()), dim=(-2, -1))
    gain = torch.ones(x.shape[1], height, width, dtype=torch.float64)
    r0, c0 = height // 2 - h // 2, width // 2 - w // 2
    gain[:, r0 : r0 + h, c0 : c0 + w] = weight.double()
    out = torch.fft.ifft2(torch.fft.ifftshift(spec * gain, dim=(-2, -1))).real
    return out.float()


def test_ffe_is_identity_at_init():
    torch.manual_seed(0)
    ffe = FrequencyFeatureEnhancement(3, low_fraction_k=4, train_size=(32, 24))
    assert ffe.filter.shape == (3, 8, 6)
    x = torch.randn(2, 3, 32, 24)
    torch.testing.assert_close(ffe(x), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size,k", [((32, 32), 4), ((33, 20), 4), ((17, 9), 2), ((64, 48), 3), ((1, 5), 2)])
def test_ffe_matches_definition(size, k):
    torch.manual_seed(1)
    ffe = FrequencyFeatureEnhancement(3, low_fraction_k=k, train_size=size)
    with torch.no_grad():
        ffe.filter.add_(0.5 * torch.randn_like(ffe.filter))
    x = torch.randn(2, 3, *size)
    torch.testing.assert_close(ffe(x), ffe_by_definition(x, ffe.filter.detach()), atol=1e-5, rtol=1e-5)


def test_ffe_filter_gradient_matches_definition():
    torch.manual_seed(6)
    ffe = FrequencyFeatureEnhancement(2, low_fraction_k=4, train_size=(24, 16))  # even window: 6×4
    with torch.no_grad():
        ffe.filter.add_(0.3 * torch.randn_like(ffe.filter))
    x, upstream = torch.randn(2, 2, 24, 16), torch.randn(2, 2, 24, 16)
    (ffe(x) * upstream).sum().backward()
    weight = ffe.filter.detach().double().requires_grad_(True)
    (ffe_by_definition(x, weight).double() * upstream).sum().backward()
    torch.testing.assert_close(ffe.filter.grad, weight.grad.float(), atol=1e-5, rtol=1e-4)


def test_ffe_changes_output_and_trains_its_filter():
    torch.manual_seed(2)
    ffe = FrequencyFeatureEnhancement(2, train_size=(16, 16))
    x = torch.randn(1, 2, 16, 16)
    ffe(x).square().sum().backward()
    assert ffe.filter.grad is not None and ffe.filter.grad.abs().sum() > 0
    with torch.no_grad():
        ffe.filter[0].mul_(3.0)
    out = ffe(x)
    assert (out[:, 0] - x[:, 0]).abs().max() > 1e-2
    torch.testing.assert_close(out[:, 1], x[:, 1], atol=1e-5, rtol=0)  # channel 1 still has L = 1


def test_ffe_resamples_filter_and_keeps_dtype_under_autocast():
    torch.manual_seed(3)
    ffe = FrequencyFeatureEnhancement(2, train_size=(16, 16))
    assert ffe.window_filter((48, 40)).shape == (2, 12, 10)
    with torch.no_grad():
        ffe.filter.add_(0.2)
    x = torch.randn(1, 2, 48, 40)
    torch.testing.assert_close(ffe(x), ffe_by_definition(x, ffe.window_filter((48, 40)).detach()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ffe(x.bfloat16())
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    with pytest.raises(ValueError):
        FrequencyFeatureEnhancement(2, low_fraction_k=1)


@pytest.mark.parametrize("spatial_dims,shape", [(2, (2, 32, 6, 5)), (3, (2, 32, 4, 5, 3))])
def test_cbam_blocks_keep_shape_in_2d_and_3d(spatial_dims, shape):
    x = torch.randn(shape)
    ca = ChannelAttention(32, reduction=16, spatial_dims=spatial_dims)
    assert ca.mlp[0].out_features == 2
    assert ca(x).shape == x.shape
    assert SpatialAttention(7, spatial_dims).conv.weight.shape == (1, 2) + (7,) * spatial_dims
    out = CBAM(32, spatial_dims=spatial_dims)(x)
    assert out.shape == x.shape
    # attention maps are in (0, 1): the output never exceeds the input in magnitude
    assert torch.all(out.abs() <= x.abs() + 1e-6)


def test_attention_gate_is_gated_by_decoder_feature():
    torch.manual_seed(4)
    gate = attention_gate(2, gate_channels=6, skip_channels=4, inter_channels=3).eval()
    skip, g = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 8, 8)
    out = gate(g=g, x=skip)
    assert out.shape == skip.shape
    assert not torch.allclose(out, gate(g=torch.randn_like(g), x=skip))


def test_variants_grow_in_parameters_and_config_round_trips():
    counts = {}
    for name in VARIANTS:
        model = build_sfanet(name, width=4, input_size=(64, 64))
        assert model.variant == name
        assert SFANet(**model.config()).config() == model.config()
        counts[name] = sum(p.numel() for p in model.parameters())
    assert counts["unet"] < counts["ag-unet"] < counts["ag-att-unet"] < counts["sfanet"]
    with pytest.raises(ValueError, match="unknown SFANet variant"):
        build_sfanet("vnet", width=4)
    with pytest.raises(ValueError, match="fixed by variant"):
        build_sfanet("unet", width=4, use_ffe=True)


@pytest.mark.parametrize("size", [(100, 75), (16, 16), (5, 3)])
def test_output_size_equals_input_size(size):
    model = build_sfanet("sfanet", width=4, input_size=(64, 64)).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, *size))
    assert out.shape == (2, 1, *size)
    assert torch.isfinite(out).all()


def test_full_size_slice():
    model = build_sfanet("sfanet", width=2).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 1, 512, 512))
    assert out.shape == (1, 1, 512, 512)


def test_trained_at_one_size_runs_at_another():
    torch.manual_seed(5)
    model = build_sfanet("sfanet", width=4, input_size=(64, 64))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.rand(2, 1, 64, 64), (torch.rand(2, 1, 64, 64) > 0.9).float()
    for _ in range(2):
        optimiser.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
        optimiser.step()
    ffe = model.decoder[-1].skip.ffe
    assert not torch.allclose(ffe.filter, torch.ones_like(ffe.filter))  # the filter learned something
    assert ffe.filter.shape == (4, 16, 16)
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(1, 1, 96, 80))
        channels_last = model.to(memory_format=torch.channels_last)
        x_cl = torch.rand(1, 1, 96, 80).contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(channels_last(x_cl), model(x_cl.contiguous()), atol=1e-4, rtol=1e-4)
    assert out.shape == (1, 1, 96, 80) and torch.isfinite(out).all()


def test_models_command_lists_all_variants(capsys):
    assert main(["models", "--width", "8"]) == 0
    out = capsys.readouterr().out
    for name in VARIANTS:
        assert f"\n{name} " in out
    assert "GFLOPs" in out
    assert main(["models", "--width", "0"]) == 2
