"""The measured sections: the large-convolution reference, stage 1 (+ its skip-path profile), stage 2, the
pipeline and stage-1 training. Each returns a dict of JSON-ready numbers (keys in the package doc)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from seg2refine_core.devices import autocast_dtype
from seg2refine_core.errors import one_line
from seg2refine_core.inference.models import fold_batchnorm, use_channels_last
from seg2refine_core.inference.pipeline import run_pipeline
from seg2refine_core.inference.stage1 import segment_slices
from seg2refine_core.inference.stage2 import count_windows, refine_volume
from seg2refine_core.tools.benchmark.config import STAGE1_VARIANTS, BenchmarkConfig
from seg2refine_core.tools.benchmark.flops import count_flops, n_params
from seg2refine_core.tools.benchmark.subjects import as_loaded, build_generator, build_stage1, matched_monai_unet3d
from seg2refine_core.tools.benchmark.timing import median, paired_ratio, spread, sync, time_interleaved


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
    rates = {k: flops / median(v) for k, v in timings.wall.items()}
    best = max(rates, key=rates.get)
    return {
        "large_conv_gflops": rates[best] / 1e9,
        "large_conv_cpu_gflops": flops / median(timings.cpu[best]) / 1e9,
        "large_conv_batch": batch,
        "large_conv_layout": best,
        "cpu_share": timings.cpu_share(),
    }


def bench_stage1(cfg: BenchmarkConfig, device: torch.device, xprime: np.ndarray) -> tuple[dict, dict]:
    """Stage 1 for the four variants: ms per slice, ratios, FLOPs; and SFANet's skip-path profile shares."""
    size = tuple(xprime.shape[1:])
    models = {v: build_stage1(v, cfg.width, size, cfg.seed).to(device) for v in STAGE1_VARIANTS}

    def call(model: nn.Module) -> Callable[[], Any]:
        return lambda: segment_slices(model, xprime, batch_size=cfg.batch_size, device=device)

    timings = time_interleaved({v: call(m) for v, m in models.items()}, cfg.repeats, device)
    times = timings.wall
    depth = xprime.shape[0]
    out: dict[str, Any] = {
        "slices": depth, "batch_size": cfg.batch_size, "channels_last": use_channels_last(device, 2),
        "cpu_share": timings.cpu_share(),
    }
    for v in STAGE1_VARIANTS:
        key = v.replace("-", "_")
        out[f"{key}_ms_per_slice"] = median(times[v]) / depth * 1e3
        out[f"{key}_spread"] = spread(times[v])
    for v in ("ag-unet", "ag-att-unet", "sfanet"):
        out[f"{v.replace('-', '_')}_over_unet"] = paired_ratio(times[v], times["unet"])
    for v in ("unet", "sfanet"):
        out[f"{v}_cpu_ms_per_slice"] = median(timings.cpu[v]) / depth * 1e3
    out["sfanet_over_unet_cpu"] = paired_ratio(timings.cpu["sfanet"], timings.cpu["unet"])
    for v in ("unet", "sfanet"):
        flops = count_flops(models[v], (1, 1, *size)).total
        out[f"{v}_gflop_per_slice"] = flops / 1e9
        out[f"{v}_gflops"] = flops / (median(times[v]) / depth) / 1e9
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
            sync(device)
            open_ranges.append(record_function(label).__enter__())

        return hook

    def leave(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        sync(device)
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
            sync(device)
            with profile(activities=activities) as prof:
                for _ in range(repeats):
                    with record_function("bench::forward"):
                        model(x)
                        sync(device)
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
    out: dict[str, Any] = {
        "windows": windows, "patch_size": list(patch), "overlap": cfg.overlap, "sw_batch_size": cfg.sw_batch_size,
        "generator_params": n_params(generator), "monai_unet3d_params": n_params(peer),
        "monai_unet3d_channels": peer_channels, "cpu_share": timings.cpu_share(),
    }
    for name, model in (("generator", generator), ("monai_unet3d", peer)):
        t = median(times[name])
        flops = count_flops(model, (1, 2, *patch)).total
        out[f"{name}_s_per_volume"] = t
        out[f"{name}_spread"] = spread(times[name])
        out[f"{name}_gflop_per_window"] = flops / 1e9
        out[f"{name}_gflops"] = flops * windows / t / 1e9
    out["generator_over_monai_unet3d"] = paired_ratio(times["generator"], times["monai_unet3d"])
    return out


def bench_pipeline(cfg: BenchmarkConfig, device: torch.device, image_hu: np.ndarray) -> dict:
    """``run_pipeline`` with SFANet and the generator (random weights): s per volume and per stage."""
    size = tuple(image_hu.shape[1:])
    stage1 = as_loaded(build_stage1("sfanet", cfg.width, size, cfg.seed).to(device), "sfanet", {})
    stage2 = as_loaded(
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
        "s_per_volume": median(times),
        "spread": spread(times),
        "stage1_s": median([r["stage1"] for r in timed]),
        "stage2_s": median([r["stage2"] for r in timed]),
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
            sync(device)
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
        "sfanet_slices_per_s": batch / median(times["sfanet"]),
        "unet_slices_per_s": batch / median(times["unet"]),
        "sfanet_spread": spread(times["sfanet"]),
        "sfanet_over_unet_step": paired_ratio(times["sfanet"], times["unet"]),
    })
    if "sfanet_compiled" in times:
        out["sfanet_compiled_slices_per_s"] = batch / median(times["sfanet_compiled"])
        out["compiled_over_eager_step"] = paired_ratio(times["sfanet_compiled"], times["sfanet"])
    return out
