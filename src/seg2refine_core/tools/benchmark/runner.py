"""Runs the selected sections in order and gathers one report (what ``seg2refine benchmark`` calls)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from seg2refine_core.devices import resolve_device
from seg2refine_core.inference.stage1 import default_batch_size
from seg2refine_core.inference.stage2 import default_sw_batch_size
from seg2refine_core.progress import ProgressFn
from seg2refine_core.tools.benchmark.config import BenchmarkConfig
from seg2refine_core.tools.benchmark.memory import pipeline_peak_memory
from seg2refine_core.tools.benchmark.report import load_average, machine_facts
from seg2refine_core.tools.benchmark.sections import (
    bench_pipeline,
    bench_stage1,
    bench_stage2,
    bench_training,
    large_conv_flops_per_s,
)
from seg2refine_core.tools.benchmark.subjects import random_ct


def run_benchmark(cfg: BenchmarkConfig, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Run the reference and the selected sections; the report (keys in the package doc, ``meta`` for the
    machine, load and the resolved config)."""
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
    report: dict[str, Any] = {"meta": {**machine_facts(device), "config": cfg.as_dict()}}
    report["meta"]["load_before"] = load_average()
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
    report["meta"]["load_after"] = load_average()
    return report
