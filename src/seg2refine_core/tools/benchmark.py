"""Speed and memory benchmark of both stages, the pipeline and stage-1 training, beside their peers.

Every timing is warm (one untimed call first) and the median of ``repeats`` calls; the models being compared
are timed interleaved (A, B, A, B, ...) and their ratios are medians of the paired ratios, so a load change on
a shared machine hits both sides alike. Models are randomly initialised: speed does not depend on the weights.

Measured (section → key):

* ``stage1``: :func:`~seg2refine_core.inference.stage1.segment_slices` over a ``(z, y, x)`` volume, ms per slice, for
  the four Table 1 variants at width ``w`` (``unet``, ``ag-unet``, ``ag-att-unet``, ``sfanet``);
  ``sfanet_over_unet`` = t_sfanet / t_unet; FLOPs per slice (``torch.utils.flop_counter``, 2 per MAC, plus the
  FFE transforms' analytic count) and the achieved FLOP/s as a fraction of the large-convolution reference.
* ``stage1_profile``: shares of the SFANet forward spent in FFE, CBAM and AG (torch profiler ranges).
* ``stage2``: :func:`~seg2refine_core.inference.stage2.refine_volume` (Gaussian sliding window), s per volume, for the
  Attention-GAN generator at width ``w`` and a MONAI 3D UNet of about the same parameter count (the paper's
  Table 2 "3D-UNet" peer); FLOPs per window and achieved FLOP/s.
* ``pipeline``: :func:`~seg2refine_core.inference.pipeline.run_pipeline` (preprocess + both stages), s per volume.
* ``training``: stage-1 training step (forward, backward, Adam) with the paper's loss, slices per second; with
  ``compile``, SFANet's step through ``torch.compile`` too (``compile_s``: the first, compiling step).
* ``reference``: FLOP/s of one large convolution (3×3, 256→256 channels, 64×64) on the device, the best of
  contiguous and channels-last layouts: a practical ceiling for convolution work there.
* ``memory``: the pipeline in a fresh subprocess: peak host RSS (Linux ``VmHWM`` of the child; not
  ``ru_maxrss``, which after fork+exec can carry the parent's high-water mark) and, on CUDA,
  ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seg2refine_core.devices import autocast_dtype, resolve_device
from seg2refine_core.errors import Seg2RefineError, one_line
from seg2refine_core.inference.models import LoadedModel, fold_batchnorm, load_stage, use_channels_last
from seg2refine_core.inference.pipeline import run_pipeline
from seg2refine_core.inference.stage1 import default_batch_size, segment_slices
from seg2refine_core.inference.stage2 import count_windows, default_sw_batch_size, refine_volume
from seg2refine_core.io.checkpoint import save_checkpoint
from seg2refine_core.progress import ProgressFn

SECTIONS = ("stage1", "stage2", "pipeline", "training", "memory")
STAGE1_VARIANTS = ("unet", "ag-unet", "ag-att-unet", "sfanet")
MB = 1024.0**2


@dataclass
class BenchmarkConfig:
    """What to measure. ``shape`` is the volume ``(z, y, x)``; stage 1 runs on its ``z`` slices of ``y × x``.

    width: SFANet and generator width ``w``. batch_size: stage-1 slices per batch (None: what inference uses,
    :func:`~seg2refine_core.inference.stage1.default_batch_size`). train_batch: slices per training step. patch_size /
    overlap / sw_batch_size: stage-2 sliding window (sw_batch_size None: the device's default,
    :func:`~seg2refine_core.inference.stage2.default_sw_batch_size`). sections: subset of
    :data:`SECTIONS`. compile: also time SFANet's training step through ``torch.compile`` (compile time
    reported apart). threads: ``torch.set_num_threads`` for this run and the memory subprocess (None: torch's
    default). On a CPU shared with other busy processes, fewer threads than cores can be much faster: OpenMP
    threads that wait on a descheduled peer stall the whole operation.
    """

    device: str = "auto"
    width: int = 16
    shape: tuple[int, int, int] = (32, 256, 256)
    repeats: int = 3
    batch_size: int | None = None
    train_batch: int = 4
    patch_size: tuple[int, int, int] = (64, 64, 64)
    overlap: float = 0.25
    sw_batch_size: int | None = None
    sections: tuple[str, ...] = SECTIONS
    threads: int | None = None
    compile: bool = False
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)  # type: ignore[assignment]
        self.patch_size = tuple(int(s) for s in self.patch_size)  # type: ignore[assignment]
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise Seg2RefineError(f"--shape needs three positive sizes Z Y X, got {self.shape}")
        if any(p % 16 or p < 32 for p in self.patch_size):
            raise Seg2RefineError(f"--patch sides must be multiples of 16 and >= 32, got {self.patch_size}")
        sizes = (self.width, self.repeats, self.batch_size, self.train_batch, self.sw_batch_size)
        if min(size for size in sizes if size is not None) < 1:
            raise Seg2RefineError("--width, --repeats, --batch-size, --train-batch and --sw-batch-size must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise Seg2RefineError(f"--threads must be >= 1, got {self.threads}")
        unknown = sorted(set(self.sections) - set(SECTIONS))
        if unknown:
            raise Seg2RefineError(f"--sections: unknown {', '.join(unknown)} (known: {', '.join(SECTIONS)})")


#: ``--quick``: tiny sizes for CI (a test that the benchmark works, not a measurement).
QUICK = dict(width=4, shape=(8, 64, 64), repeats=1, batch_size=4, train_batch=2, patch_size=(32, 32, 32))


# ----------------------------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timings:
    """Seconds per call, wall clock and process CPU time (all threads), for each named function."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]

    def cpu_share(self) -> float:
        """Process CPU time over wall time × torch threads: below 1 when other processes took the cores."""
        wall = sum(sum(v) for v in self.wall.values())
        cpu = sum(sum(v) for v in self.cpu.values())
        return cpu / (wall * torch.get_num_threads()) if wall > 0 else 0.0


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device) -> Timings:
    """Time each function: one warm-up call each, then ``repeats`` rounds calling each in turn."""
    for fn in fns.values():
        fn()
    _sync(device)
    timings = Timings({name: [] for name in fns}, {name: [] for name in fns})
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            timings.wall[name].append(time.perf_counter() - w0)
            timings.cpu[name].append(time.process_time() - c0)
    return timings


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median of ``a[i] / b[i]`` over interleaved rounds (robust to load that drifts between rounds)."""
    return float(statistics.median(x / y for x, y in zip(a, b, strict=True)))


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _spread(values: Sequence[float]) -> float:
    """(max − min) / median: how noisy a series of timings was."""
    med = _median(values)
    return float((max(values) - min(values)) / med) if med > 0 else 0.0


# ------------------------------------------------------------------------------------------------ FLOPs


def count_flops(model: nn.Module, x: torch.Tensor) -> float:
    """FLOPs of ``model(x)`` (2 per multiply-add) by ``FlopCounterMode``, plus ``fft_flops`` of modules that
    report their FFTs (the flop counter does not see FFTs)."""
    from torch.utils.flop_counter import FlopCounterMode

    fft = [0.0]

    def add_fft(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        fft[0] += args[0].shape[0] * module.fft_flops(tuple(args[0].shape[-2:]))

    hooks = [m.register_forward_hook(add_fft) for m in model.modules() if hasattr(m, "fft_flops")]
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return float(counter.get_total_flops()) + fft[0]


def large_conv_flops_per_s(device: torch.device, repeats: int = 3, batch: int | None = None) -> dict[str, float]:
    """Measured FLOP/s of a 3×3 conv, 256→256 channels, on a ``batch``×64×64 input (best layout).

    Uses the inference precision of the device (bf16/fp16 autocast on CUDA, fp32 elsewhere).
    """
    batch = batch or (64 if device.type == "cuda" else 4)
    conv = nn.Conv2d(256, 256, 3, padding=1, bias=False).to(device).eval()
    x = torch.randn(batch, 256, 64, 64, device=device)
    flops = 2.0 * batch * 64 * 64 * 256 * 256 * 9
    layouts = {"contiguous": (conv, x)}
    layouts["channels_last"] = (
        nn.Conv2d(256, 256, 3, padding=1, bias=False).to(device).to(memory_format=torch.channels_last).eval(),
        x.contiguous(memory_format=torch.channels_last),
    )
    dtype = autocast_dtype(device)

    def call(module: nn.Module, inp: torch.Tensor) -> Callable[[], Any]:
        def run() -> None:
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                module(inp)

        return run

    timings = time_interleaved({k: call(*v) for k, v in layouts.items()}, repeats, device)
    rates = {k: flops / _median(v) for k, v in timings.wall.items()}
    best = max(rates, key=rates.get)
    return {
        "large_conv_gflops": rates[best] / 1e9,
        "large_conv_cpu_gflops": flops / _median(timings.cpu[best]) / 1e9,
        "large_conv_batch": batch,
        "large_conv_layout": best,
    }


# ------------------------------------------------------------------------------------------------ models


def build_stage1(variant: str, width: int, size: tuple[int, int], seed: int = 0) -> nn.Module:
    """A randomly initialised Table 1 variant at ``width`` laid out for slices of ``size`` (y, x)."""
    from seg2refine_core.nets.sfanet import build_sfanet

    torch.manual_seed(seed)
    return build_sfanet(variant, width, input_size=size).eval()


def build_generator(width: int, seed: int = 0) -> nn.Module:
    """A randomly initialised stage-2 Attention-GAN generator of ``width``."""
    from seg2refine_core.nets.attention_gan import AttentionGenerator3d

    torch.manual_seed(seed)
    return AttentionGenerator3d(in_channels=2, out_channels=1, width=width).eval()


def monai_unet3d_kwargs(channels: int) -> dict[str, Any]:
    """Constructor arguments of the MONAI 3D UNet peer with first-level ``channels`` (5 levels, 2 res units)."""
    return dict(
        spatial_dims=3, in_channels=2, out_channels=1, channels=tuple(channels * m for m in (1, 2, 4, 8, 16)),
        strides=(2, 2, 2, 2), num_res_units=2,
    )


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def matched_monai_unet3d(target_params: int, seed: int = 0) -> tuple[nn.Module, int]:
    """The MONAI 3D UNet whose parameter count is closest to ``target_params``, and its first-level channels."""
    from monai.networks.nets import UNet

    def count(c: int) -> int:
        with torch.device("meta"):
            return n_params(UNet(**monai_unet3d_kwargs(c)))

    lo, hi = 1, 256  # the count grows with c: bisect for the first c at or above the target
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if count(mid) < target_params else (lo, mid)
    best = min({max(lo - 1, 1), lo}, key=lambda c: abs(count(c) - target_params))
    torch.manual_seed(seed)
    return UNet(**monai_unet3d_kwargs(best)).eval(), best


def _loaded(model: nn.Module, architecture: str, config: dict[str, Any], extra: dict | None = None) -> LoadedModel:
    return LoadedModel(
        model=model, config={"architecture": architecture, "model": config, **(extra or {})}, path=Path("random-init")
    )


def random_ct(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """A float32 (z, y, x) volume of uniform noise in [-400, 1000] HU, made without float64 temporaries."""
    volume = np.random.default_rng(seed).random(tuple(shape), dtype=np.float32)
    volume *= 1400.0
    volume -= 400.0
    return volume


# ------------------------------------------------------------------------------------------------ sections


def bench_stage1(cfg: BenchmarkConfig, device: torch.device, xprime: np.ndarray) -> tuple[dict, dict]:
    """Stage 1 for the four variants: ms per slice, ratios, FLOPs; and SFANet's skip-path profile shares."""
    size = tuple(xprime.shape[1:])
    models = {v: build_stage1(v, cfg.width, size, cfg.seed).to(device) for v in STAGE1_VARIANTS}

    def call(model: nn.Module) -> Callable[[], Any]:
        return lambda: segment_slices(model, xprime, batch_size=cfg.batch_size, device=device)

    timings = time_interleaved({v: call(m) for v, m in models.items()}, cfg.repeats, device)
    times = timings.wall
    depth = xprime.shape[0]
    sample = torch.rand(1, 1, *size, device=device)
    out: dict[str, Any] = {
        "slices": depth, "batch_size": cfg.batch_size, "channels_last": use_channels_last(device, 2),
        "cpu_share": timings.cpu_share(),
    }
    for v in STAGE1_VARIANTS:
        key = v.replace("-", "_")
        out[f"{key}_ms_per_slice"] = _median(times[v]) / depth * 1e3
        out[f"{key}_spread"] = _spread(times[v])
    for v in ("ag-unet", "ag-att-unet", "sfanet"):
        out[f"{v.replace('-', '_')}_over_unet"] = paired_ratio(times[v], times["unet"])
    for v in ("unet", "sfanet"):
        out[f"{v}_cpu_ms_per_slice"] = _median(timings.cpu[v]) / depth * 1e3
    out["sfanet_over_unet_cpu"] = paired_ratio(timings.cpu["sfanet"], timings.cpu["unet"])
    for v in ("unet", "sfanet"):
        flops = count_flops(models[v].cpu(), sample.cpu())
        models[v].to(device)
        out[f"{v}_gflop_per_slice"] = flops / 1e9
        out[f"{v}_gflops"] = flops / (_median(times[v]) / depth) / 1e9
        out[f"{v}_params"] = n_params(models[v])
    batch = torch.rand(min(cfg.batch_size, depth), 1, *size, device=device)
    profile = skip_path_profile(models["sfanet"], batch, device, repeats=max(1, min(cfg.repeats, 3)))
    return out, profile


def skip_path_profile(model: nn.Module, x: torch.Tensor, device: torch.device, repeats: int = 1) -> dict[str, float]:
    """Shares of ``model(x)``'s time in its skip-path modules named ``ffe``, ``att`` and ``ag`` (torch profiler).

    The model runs as inference runs it (layout, folded BatchNorm, autocast). Each such module is wrapped in a
    profiler range by forward hooks; on CUDA the hooks synchronise so a range's time is its GPU time.
    Returns ``{ffe_share, att_share, ag_share, other_share, forward_ms, batch}``.
    """
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    parts = ("ffe", "att", "ag")
    open_ranges: list[Any] = []
    hooks = []

    def enter(label: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple) -> None:
            _sync(device)
            open_ranges.append(record_function(label).__enter__())

        return hook

    def leave(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        _sync(device)
        open_ranges.pop().__exit__(None, None, None)

    layout = torch.channels_last if use_channels_last(device, 2) else torch.contiguous_format
    model = fold_batchnorm(model.eval()).to(memory_format=layout)
    x = x.contiguous(memory_format=layout)
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in parts:
            hooks.append(module.register_forward_pre_hook(enter(f"bench::{leaf}")))
            hooks.append(module.register_forward_hook(leave))
    dtype = autocast_dtype(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    try:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            model(x)
            _sync(device)
            with profile(activities=activities) as prof:
                for _ in range(repeats):
                    with record_function("bench::forward"):
                        model(x)
                        _sync(device)
    finally:
        for hook in hooks:
            hook.remove()
    totals = {e.key: e.cpu_time_total for e in prof.key_averages() if e.key.startswith("bench::")}
    forward = totals.get("bench::forward", 0.0)
    if forward <= 0:
        return {}
    shares = {f"{p}_share": totals.get(f"bench::{p}", 0.0) / forward for p in parts}
    shares["other_share"] = max(0.0, 1.0 - sum(shares.values()))
    shares["forward_ms"] = forward / repeats / 1e3
    shares["batch"] = int(x.shape[0])
    return shares


def bench_stage2(cfg: BenchmarkConfig, device: torch.device, xprime: np.ndarray, s_mask: np.ndarray) -> dict:
    """Stage 2 sliding window for the generator and the parameter-matched MONAI 3D UNet: s per volume, FLOPs."""
    generator = build_generator(cfg.width, cfg.seed).to(device)
    peer, peer_channels = matched_monai_unet3d(n_params(generator), cfg.seed)
    peer = peer.to(device)
    patch = cfg.patch_size

    def call(model: nn.Module) -> Callable[[], Any]:
        return lambda: refine_volume(
            model, xprime, s_mask, patch_size=patch, overlap=cfg.overlap, sw_batch_size=cfg.sw_batch_size,
            device=device,
        )

    timings = time_interleaved({"generator": call(generator), "monai_unet3d": call(peer)}, cfg.repeats, device)
    times = timings.wall
    windows = count_windows(xprime.shape, patch, cfg.overlap)
    window = torch.rand(1, 2, *patch)
    out: dict[str, Any] = {
        "windows": windows, "patch_size": list(patch), "overlap": cfg.overlap, "sw_batch_size": cfg.sw_batch_size,
        "generator_params": n_params(generator), "monai_unet3d_params": n_params(peer),
        "monai_unet3d_channels": peer_channels, "cpu_share": timings.cpu_share(),
    }
    for name, model in (("generator", generator), ("monai_unet3d", peer)):
        t = _median(times[name])
        flops = count_flops(model.cpu(), window)
        model.to(device)
        out[f"{name}_s_per_volume"] = t
        out[f"{name}_spread"] = _spread(times[name])
        out[f"{name}_gflop_per_window"] = flops / 1e9
        out[f"{name}_gflops"] = flops * windows / t / 1e9
    out["generator_over_monai_unet3d"] = paired_ratio(times["generator"], times["monai_unet3d"])
    return out


def bench_pipeline(cfg: BenchmarkConfig, device: torch.device, image_hu: np.ndarray) -> dict:
    """``run_pipeline`` with SFANet and the generator (random weights): s per volume and per stage."""
    size = tuple(image_hu.shape[1:])
    stage1 = _loaded(build_stage1("sfanet", cfg.width, size, cfg.seed).to(device), "sfanet", {})
    stage2 = _loaded(
        build_generator(cfg.width, cfg.seed).to(device), "attention-gan-3d", {},
        {"input": {"patch_size": list(cfg.patch_size)}},
    )
    results: list[Any] = []

    def call() -> None:
        results.append(
            run_pipeline(
                image_hu, (1.0, 0.5, 0.5), stage1, stage2, batch_size=cfg.batch_size, overlap=cfg.overlap,
                sw_batch_size=cfg.sw_batch_size, device=device,
            ).timings_s
        )

    timings = time_interleaved({"pipeline": call}, cfg.repeats, device)
    times = timings.wall["pipeline"]
    timed = results[1:]
    return {
        "cpu_share": timings.cpu_share(),
        "s_per_volume": _median(times),
        "spread": _spread(times),
        "stage1_s": _median([r["stage1"] for r in timed]),
        "stage2_s": _median([r["stage2"] for r in timed]),
    }


def bench_training(cfg: BenchmarkConfig, device: torch.device) -> dict:
    """Stage-1 training step (forward, WBCE+Dice loss, backward, Adam) on random slices: slices per second."""
    from seg2refine_core.training.losses import WeightedBCEDiceLoss

    size = tuple(cfg.shape[1:])
    batch = cfg.train_batch
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.rand(batch, 1, *size, generator=gen).to(device)
    y = (torch.rand(batch, 1, *size, generator=gen) > 0.97).float().to(device)
    layout = torch.channels_last if use_channels_last(device, 2) else torch.contiguous_format
    x = x.contiguous(memory_format=layout)
    dtype = autocast_dtype(device)
    loss_fn = WeightedBCEDiceLoss()

    def step_fn(variant: str, compiled: bool = False) -> Callable[[], Any]:
        model = build_stage1(variant, cfg.width, size, cfg.seed).to(device).to(memory_format=layout).train()
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-5)
        forward = torch.compile(model) if compiled else model

        def step() -> None:
            optimiser.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = forward(x)
            loss_fn(logits, y).backward()
            optimiser.step()

        return step

    steps = {v: step_fn(v) for v in ("unet", "sfanet")}
    out: dict[str, Any] = {}
    if cfg.compile:
        t0 = time.perf_counter()
        try:
            compiled_step = step_fn("sfanet", compiled=True)
            compiled_step()
            _sync(device)
        except Exception as exc:  # a failing compile is a result to report, not a crash
            out["compile_error"] = one_line(exc)
        else:
            out["compile_s"] = time.perf_counter() - t0
            steps["sfanet_compiled"] = compiled_step
    timings = time_interleaved(steps, cfg.repeats, device)
    times = timings.wall
    out.update({
        "cpu_share": timings.cpu_share(),
        "batch": batch,
        "sfanet_slices_per_s": batch / _median(times["sfanet"]),
        "unet_slices_per_s": batch / _median(times["unet"]),
        "sfanet_spread": _spread(times["sfanet"]),
        "sfanet_over_unet_step": paired_ratio(times["sfanet"], times["unet"]),
    })
    if "sfanet_compiled" in times:
        out["sfanet_compiled_slices_per_s"] = batch / _median(times["sfanet_compiled"])
        out["compiled_over_eager_step"] = paired_ratio(times["sfanet_compiled"], times["sfanet"])
    return out


# ------------------------------------------------------------------------------------------------ memory


def pipeline_peak_memory(cfg: BenchmarkConfig, device: torch.device, timeout_s: float | None = None) -> dict:
    """Run the pipeline once in a fresh Python process and return its memory high-water marks and timings.

    Keys: ``peak_rss_mb`` (the child's whole-life peak), ``before_rss_mb`` (RSS with libraries, models and the
    input volume loaded, just before the pipeline), ``pipeline_rss_mb`` (their difference), ``volume_mb`` (the
    float32 input), ``s_per_volume``, ``cpu_s`` (process CPU time), ``stage1_s``, ``stage2_s``, ``cuda_peak_mb``
    (CUDA only), ``rss_source``.
    """
    params = {
        "device": str(device), "width": cfg.width, "shape": list(cfg.shape), "patch_size": list(cfg.patch_size),
        "batch_size": cfg.batch_size, "overlap": cfg.overlap, "sw_batch_size": cfg.sw_batch_size, "seed": cfg.seed,
        "threads": torch.get_num_threads(),
    }
    command = [sys.executable, "-m", "seg2refine_core.tools.benchmark", json.dumps(params)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise Seg2RefineError(f"memory benchmark: the pipeline subprocess ran past {timeout_s:.0f} s") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise Seg2RefineError(f"memory benchmark: the pipeline subprocess failed ({tail[0]})")
    return json.loads(lines[-1])


def _rss_high_water_mb() -> tuple[float, str]:
    """This process's peak RSS in MiB: ``VmHWM`` on Linux, else ``ru_maxrss`` (KiB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0, "VmHWM"
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak / MB if sys.platform == "darwin" else peak / 1024.0), "ru_maxrss"


def _memory_child(params: dict[str, Any]) -> dict[str, Any]:
    """Body of the subprocess of :func:`pipeline_peak_memory`: checkpoints saved and loaded, then one pipeline."""
    import psutil

    torch.set_num_threads(params["threads"])
    device = torch.device(params["device"])
    shape = tuple(params["shape"])
    with tempfile.TemporaryDirectory() as tmp:
        s1 = build_stage1("sfanet", params["width"], shape[1:], params["seed"])
        s1_path = save_checkpoint(Path(tmp) / "stage1", s1, {"architecture": "sfanet", "model": s1.config()})
        s2 = build_generator(params["width"], params["seed"])
        s2_path = save_checkpoint(
            Path(tmp) / "stage2", s2,
            {"architecture": "attention-gan-3d", "model": s2.config(), "input": {"patch_size": params["patch_size"]}},
        )
        del s1, s2
        stage1 = load_stage("stage1", s1_path, device)
        stage2 = load_stage("stage2", s2_path, device)
    image_hu = random_ct(shape, params["seed"])
    before = psutil.Process().memory_info().rss / MB
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0, c0 = time.perf_counter(), time.process_time()
    result = run_pipeline(
        image_hu, (1.0, 0.5, 0.5), stage1, stage2, batch_size=params["batch_size"], overlap=params["overlap"],
        sw_batch_size=params["sw_batch_size"], device=device,
    )
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak, source = _rss_high_water_mb()
    out = {
        "peak_rss_mb": peak, "before_rss_mb": before, "pipeline_rss_mb": peak - before,
        "volume_mb": image_hu.nbytes / MB, "s_per_volume": elapsed, "cpu_s": cpu,
        "stage1_s": result.timings_s["stage1"], "stage2_s": result.timings_s["stage2"], "rss_source": source,
    }
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / MB
    return out


# ------------------------------------------------------------------------------------------------ driver


def machine_facts(device: torch.device) -> dict[str, Any]:
    """Where and when: date, host CPU, threads, load average, library versions, GPU name."""
    import monai

    facts: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return []


def run_benchmark(cfg: BenchmarkConfig, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Run the selected sections and return the results (see the module doc for keys)."""
    from seg2refine_core.data.preprocess import preprocess

    device = resolve_device(cfg.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    cfg = replace(
        cfg,
        batch_size=default_batch_size(device, cfg.shape[1:]) if cfg.batch_size is None else cfg.batch_size,
        sw_batch_size=default_sw_batch_size(device) if cfg.sw_batch_size is None else cfg.sw_batch_size,
    )
    torch.manual_seed(cfg.seed)
    report: dict[str, Any] = {"meta": {**machine_facts(device), "config": _config_dict(cfg)}}
    report["meta"]["load_before"] = _load_average()
    steps = ["reference", *cfg.sections]
    image_hu = random_ct(cfg.shape, cfg.seed)
    xprime = preprocess(image_hu)
    s_mask = (np.random.default_rng(cfg.seed).random(cfg.shape) > 0.95).astype(np.uint8)

    def tick(i: int, name: str) -> None:
        if progress is not None:
            progress(i, len(steps), name)

    tick(0, "reference")
    report["reference"] = large_conv_flops_per_s(device, repeats=cfg.repeats)
    peak = report["reference"]["large_conv_gflops"]
    for i, section in enumerate(cfg.sections, start=1):
        tick(i, section)
        if section == "stage1":
            report["stage1"], report["stage1_profile"] = bench_stage1(cfg, device, xprime)
            stage1 = report["stage1"]
            for v in ("unet", "sfanet"):
                stage1[f"{v}_fraction_of_conv_peak"] = stage1[f"{v}_gflops"] / peak
                cpu_rate = stage1[f"{v}_gflop_per_slice"] / (stage1[f"{v}_cpu_ms_per_slice"] / 1e3)
                stage1[f"{v}_fraction_of_conv_peak_cpu"] = cpu_rate / report["reference"]["large_conv_cpu_gflops"]
        elif section == "stage2":
            report["stage2"] = bench_stage2(cfg, device, xprime, s_mask)
            for v in ("generator", "monai_unet3d"):
                report["stage2"][f"{v}_fraction_of_conv_peak"] = report["stage2"][f"{v}_gflops"] / peak
        elif section == "pipeline":
            report["pipeline"] = bench_pipeline(cfg, device, image_hu)
        elif section == "training":
            report["training"] = bench_training(cfg, device)
        elif section == "memory":
            report["memory"] = pipeline_peak_memory(cfg, device)
    tick(len(steps), "done")
    report["meta"]["load_after"] = _load_average()
    return report


def _config_dict(cfg: BenchmarkConfig) -> dict[str, Any]:
    data = asdict(cfg)
    data["shape"], data["patch_size"], data["sections"] = list(cfg.shape), list(cfg.patch_size), list(cfg.sections)
    return data


# Rows of the on-screen table: (section, key, label, format).
TABLE_ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("reference", "large_conv_gflops", "large conv 3x3 256->256 @64x64 (GFLOP/s)", "{:.1f}"),
    ("stage1", "sfanet_ms_per_slice", "stage 1 SFANet (ms/slice)", "{:.2f}"),
    ("stage1", "unet_ms_per_slice", "stage 1 UNet, same width (ms/slice)", "{:.2f}"),
    ("stage1", "ag_unet_over_unet", "  AG-UNet / UNet", "{:.3f}"),
    ("stage1", "ag_att_unet_over_unet", "  AG-Att-UNet / UNet", "{:.3f}"),
    ("stage1", "sfanet_over_unet", "  SFANet / UNet (target <= 1.15)", "{:.3f}"),
    ("stage1", "sfanet_gflop_per_slice", "  SFANet GFLOP/slice", "{:.2f}"),
    ("stage1", "sfanet_gflops", "  SFANet achieved GFLOP/s", "{:.1f}"),
    ("stage1", "sfanet_fraction_of_conv_peak", "  SFANet / large conv (CPU target >= 0.5)", "{:.2f}"),
    ("stage1", "unet_fraction_of_conv_peak", "  UNet / large conv", "{:.2f}"),
    ("stage1", "cpu_share", "  CPU share (process CPU / wall / threads)", "{:.2f}"),
    ("stage1", "sfanet_cpu_ms_per_slice", "  SFANet CPU time (ms/slice)", "{:.2f}"),
    ("stage1", "sfanet_over_unet_cpu", "  SFANet / UNet by CPU time", "{:.3f}"),
    ("stage1", "sfanet_fraction_of_conv_peak_cpu", "  SFANet / large conv by CPU time", "{:.2f}"),
    ("stage1_profile", "ffe_share", "  SFANet forward share: FFE", "{:.1%}"),
    ("stage1_profile", "att_share", "  SFANet forward share: CBAM", "{:.1%}"),
    ("stage1_profile", "ag_share", "  SFANet forward share: AG", "{:.1%}"),
    ("stage2", "generator_s_per_volume", "stage 2 generator, sliding window (s/volume)", "{:.2f}"),
    ("stage2", "monai_unet3d_s_per_volume", "stage 2 MONAI 3D UNet peer (s/volume)", "{:.2f}"),
    ("stage2", "generator_over_monai_unet3d", "  generator / 3D UNet", "{:.3f}"),
    ("stage2", "generator_params", "  generator parameters", "{:,}"),
    ("stage2", "monai_unet3d_params", "  3D UNet parameters", "{:,}"),
    ("stage2", "windows", "  windows", "{}"),
    ("stage2", "generator_gflops", "  generator achieved GFLOP/s", "{:.1f}"),
    ("stage2", "generator_fraction_of_conv_peak", "  generator / large conv", "{:.2f}"),
    ("stage2", "cpu_share", "  CPU share (process CPU / wall / threads)", "{:.2f}"),
    ("pipeline", "s_per_volume", "pipeline, preprocess + both stages (s/volume)", "{:.2f}"),
    ("pipeline", "stage1_s", "  of which preprocess + stage 1 (s)", "{:.2f}"),
    ("pipeline", "stage2_s", "  of which stage 2 (s)", "{:.2f}"),
    ("training", "sfanet_slices_per_s", "training SFANet (slices/s)", "{:.2f}"),
    ("training", "unet_slices_per_s", "training UNet (slices/s)", "{:.2f}"),
    ("training", "sfanet_over_unet_step", "  SFANet / UNet step time", "{:.3f}"),
    ("training", "compile_s", "  torch.compile: first step (s)", "{:.1f}"),
    ("training", "sfanet_compiled_slices_per_s", "training SFANet compiled (slices/s)", "{:.2f}"),
    ("training", "compiled_over_eager_step", "  compiled / eager step time", "{:.3f}"),
    ("training", "compile_error", "  torch.compile failed", "{}"),
    ("memory", "peak_rss_mb", "pipeline peak host RSS, fresh process (MiB)", "{:.0f}"),
    ("memory", "pipeline_rss_mb", "  above the loaded baseline (MiB)", "{:.0f}"),
    ("memory", "volume_mb", "  input volume float32 (MiB)", "{:.0f}"),
    ("memory", "cuda_peak_mb", "pipeline peak CUDA allocated (MiB)", "{:.0f}"),
)


def format_table(report: dict[str, Any]) -> str:
    """The report as a two-column text table, with a header naming the machine, load and sizes."""
    meta = report["meta"]
    cfg = meta["config"]
    lines = [
        f"seg2refine benchmark  {meta['date']}  device={meta['device']}  {meta.get('gpu', meta['cpu'])}",
        f"threads={meta['torch_threads']}/{meta['cpu_count']} cpus  load {meta['load_before']} -> "
        f"{meta.get('load_after')}  torch {meta['torch']}",
        f"width={cfg['width']}  shape(z,y,x)={tuple(cfg['shape'])}  repeats={cfg['repeats']} (median, warm)  "
        f"batch={cfg['batch_size']}  train_batch={cfg['train_batch']}  patch={tuple(cfg['patch_size'])}",
    ]
    rows = []
    for section, key, label, fmt in TABLE_ROWS:
        value = report.get(section, {}).get(key)
        if value is not None:
            rows.append((label, fmt.format(value)))
    width = max(len(label) for label, _ in rows) if rows else 0
    lines.append("-" * (width + 14))
    lines.extend(f"{label:<{width}}  {value:>10}" for label, value in rows)
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(_memory_child(json.loads(sys.argv[1]))))
