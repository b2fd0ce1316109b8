"""Frequency feature enhancement (FFE), the front of the paper's SFAM (Methods, eqs. 1-4; design §3.1).

Definition (per channel of a feature map ``x`` of size H×W)::

    X  = fftshift(fft2(x))                       # zero frequency at (H//2, W//2)
    M  = centred (H//K)×(W//K) square            # rows H//2 - h//2 ... H//2 - h//2 + h - 1, same for columns
    X' = X·(1 - M) + X·M·L                       # eq. 4: f' = f_high + f_low ⊙ L, L real, learnable
    F' = Re(ifft2(ifftshift(X')))

How it is computed (exactly the same numbers, cheaper):

* Only the low window changes, so ``F' = x + Re(ifft2(X ⊙ D))`` with ``D = M·(L - 1)``: the correction is
  band-limited to the window and is exactly zero at initialisation (L = 1), so FFE starts as the identity.
* ``Re(ifft2(Z)) = ifft2((Z[k] + conj(Z[-k])) / 2)``. With ``Z = X ⊙ D``, X Hermitian (x is real) and D real,
  this is ``ifft2(X ⊙ D_s)`` with ``D_s[k] = (D[k] + D[-k]) / 2``: taking the real part equals using the
  point-symmetrised filter. ``X ⊙ D_s`` is Hermitian, so half the spectrum (``rfft``/``irfft`` along W) holds
  all of it and nothing is approximated. (For even window sizes the window is one bin wider on the negative
  side; ``D_s`` then reaches one bin further on the positive side with half weight, as the definition implies.)
* Only the frequencies of the window are transformed along H: ``rfft`` along W (all rows), keep the
  ``w//2 + 1`` low columns, ``fft`` along H on those columns only, keep the ``2·(h//2) + 1`` low rows; the
  inverse mirrors it, ``irfft`` along W zero-pads the columns.

K must be >= 2 (K = 1 would be a global filter; it also keeps the symmetrised window inside one period).
The transforms run in float32 with autocast disabled; the result is cast back to the input dtype.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FrequencyFeatureEnhancement", "low_window_size"]


def low_window_size(size: tuple[int, int], k: int) -> tuple[int, int]:
    """Low-frequency window ``(h, w) = (max(1, H // K), max(1, W // K))`` for a feature map of ``size=(H, W)``."""
    return max(1, int(size[0]) // k), max(1, int(size[1]) // k)


class FrequencyFeatureEnhancement(nn.Module):
    """Learnable real filter on the centred low-frequency window of each channel's 2D spectrum.

    Args:
        channels: C, number of feature channels (one filter per channel).
        low_fraction_k: K; the window is (H/K)×(W/K) of the H×W spectrum. Must be >= 2.
        train_size: the feature-map size (H, W) the filter is laid out for; ``L`` has shape
            ``(C, H//K, W//K)``. ``None`` means (64, 64). At any other runtime size ``L`` is resampled
            bilinearly (``F.interpolate``, ``align_corners=False``) to the runtime window.

    Shapes: ``forward(x: (B, C, H, W)) -> (B, C, H, W)``, same dtype and memory format as ``x``.
    """

    def __init__(self, channels: int, low_fraction_k: int = 4, train_size: tuple[int, int] | None = None):
        super().__init__()
        if low_fraction_k < 2:
            raise ValueError(f"low_fraction_k must be >= 2, got {low_fraction_k}")
        self.channels = int(channels)
        self.k = int(low_fraction_k)
        self.train_size = tuple(train_size) if train_size is not None else (64, 64)
        h, w = low_window_size(self.train_size, self.k)
        self.filter = nn.Parameter(torch.ones(self.channels, h, w))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, k={self.k}, train_size={self.train_size}"

    def window_filter(self, size: tuple[int, int]) -> torch.Tensor:
        """The filter ``L`` for a runtime feature-map ``size=(H, W)``: ``(C, h, w)``, resampled if needed."""
        h, w = low_window_size(size, self.k)
        weight = self.filter
        if weight.shape[-2:] != (h, w):
            weight = F.interpolate(weight[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        return weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected (B, {self.channels}, H, W), got {tuple(x.shape)}")
        height, width = x.shape[-2:]
        with _autocast_off(x.device.type):
            x32 = x.float()
            delta = _low_band_correction(x32, self.window_filter((height, width)).float() - 1.0)
            out = x32 + delta
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            out = out.contiguous(memory_format=torch.channels_last)
        return out.to(x.dtype)

    def fft_flops(self, size: tuple[int, int]) -> float:
        """Analytic FLOPs of this module's transforms for one sample of ``size=(H, W)`` (5·N·log2 N per
        complex FFT of N points, half that for a real one); the flop counter does not see FFTs."""
        height, width = size
        h, w = low_window_size(size, self.k)
        cols = w // 2 + 1
        per_channel = 2 * height * 2.5 * width * math.log2(max(width, 2))  # rfft + irfft along W
        per_channel += 2 * cols * 5.0 * height * math.log2(max(height, 2))  # fft + ifft along H, low columns
        return self.channels * per_channel


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Disable autocast for ``device_type`` if it is on (no-op for devices without autocast, e.g. meta)."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except RuntimeError:
        enabled = False
    return torch.autocast(device_type, enabled=False) if enabled else contextlib.nullcontext()


def _symmetrised_half(delta: torch.Tensor) -> torch.Tensor:
    """``D_s = (D[k] + D[-k]) / 2`` on rows ``-h//2 .. h//2`` and columns ``0 .. w//2`` (the half plane).

    ``delta``: (C, h, w) window values in centred order (row a is frequency ``a - h//2``).
    Returns (C, 2·(h//2) + 1, w//2 + 1); row i is frequency ``i - h//2``, column j is frequency j.
    """
    h, w = delta.shape[-2:]
    ar, ac = h // 2, w // 2
    # Pad the positive end so the grid is symmetric (-ar..ar, -ac..ac); flipping it then maps k to -k.
    grid = F.pad(delta, (0, 2 * ac + 1 - w, 0, 2 * ar + 1 - h))
    sym = 0.5 * (grid + grid.flip(-2, -1))
    return sym[..., ac:]


def _low_band_correction(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``Re(ifft2(fft2(x) ⊙ D))`` for D = ``delta`` placed on the centred low window (see module doc).

    ``x``: (B, C, H, W) float32; ``delta``: (C, h, w) float32 with h <= H // 2, w <= W // 2.
    Returns (B, C, H, W) float32.
    """
    height, width = x.shape[-2:]
    d_half = _symmetrised_half(delta)
    ar, cols = d_half.shape[-2] // 2, d_half.shape[-1]
    spec = torch.fft.rfft(x, dim=-1)[..., :cols]
    spec = torch.fft.fft(spec, dim=-2)
    low = torch.cat([spec[..., height - ar :, :], spec[..., : ar + 1, :]], dim=-2) * d_half
    gap = low.new_zeros((*low.shape[:-2], height - 2 * ar - 1, cols))
    spec = torch.cat([low[..., ar:, :], gap, low[..., :ar, :]], dim=-2)
    spec = torch.fft.ifft(spec, dim=-2)
    return torch.fft.irfft(spec, n=width, dim=-1)
