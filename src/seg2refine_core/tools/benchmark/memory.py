"""Peak memory of the pipeline, measured in a fresh Python process so that nothing else counts.

Host: the child's ``VmHWM`` (Linux), not ``ru_maxrss``, which after fork+exec can carry the parent's high-water
mark; CUDA: ``torch.cuda.max_memory_allocated``. Run as ``python -m seg2refine_core.tools.benchmark.memory PARAMS``
it is that child (PARAMS: JSON, see :func:`pipeline_peak_memory`) and prints one JSON line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from seg2refine_core.errors import Seg2RefineError
from seg2refine_core.inference.models import load_stage
from seg2refine_core.inference.pipeline import run_pipeline
from seg2refine_core.io.checkpoint import save_checkpoint
from seg2refine_core.tools.benchmark.config import BenchmarkConfig
from seg2refine_core.tools.benchmark.subjects import build_generator, build_stage1, random_ct
from seg2refine_core.tools.benchmark.timing import cpu_share

MB = 1024.0**2


def pipeline_peak_memory(cfg: BenchmarkConfig, device: torch.device, timeout_s: float | None = None) -> dict:
    """Run the pipeline once in a fresh Python process and return its memory high-water marks and timings.

    Keys: ``peak_rss_mb`` (the child's whole-life peak), ``before_rss_mb`` (RSS with libraries, models and the
    input volume loaded, just before the pipeline), ``pipeline_rss_mb`` (their difference), ``volume_mb`` (the
    float32 input), ``s_per_volume``, ``cpu_s`` (process CPU time), ``stage1_s``, ``stage2_s``, ``cuda_peak_mb``
    (CUDA only), ``rss_source``, ``cpu_share``.
    """
    params = {
        "device": str(device), "width": cfg.width, "shape": list(cfg.shape), "patch_size": list(cfg.patch_size),
        "batch_size": cfg.batch_size, "overlap": cfg.overlap, "sw_batch_size": cfg.sw_batch_size, "seed": cfg.seed,
        "threads": torch.get_num_threads(),
    }
    command = [sys.executable, "-m", "seg2refine_core.tools.benchmark.memory", json.dumps(params)]
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
        "cpu_share": cpu_share(cpu, elapsed),
    }
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / MB
    return out


if __name__ == "__main__":
    print(json.dumps(_memory_child(json.loads(sys.argv[1]))))
