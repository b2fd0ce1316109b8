"""The benchmark's report: where and when it ran, and the two-column table that ``seg2refine benchmark`` prints,
with each section's CPU share and a warning when other processes took the cores (wall times then swing ~10×)."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from typing import Any

import torch

from seg2refine_core.clock import LOW_CPU_SHARE


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


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages (empty where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return []


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

#: Sections that record a ``cpu_share``, in the order they run.
SHARE_SECTIONS = ("reference", "stage1", "stage2", "pipeline", "training", "memory")


def cpu_shares(report: dict[str, Any]) -> dict[str, float]:
    """``{section: cpu_share}`` for the measured sections that recorded one."""
    return {s: report[s]["cpu_share"] for s in SHARE_SECTIONS if "cpu_share" in report.get(s, {})}


def low_cpu_share_warning(report: dict[str, Any]) -> str | None:
    """A warning when a CPU run's process got less than :data:`LOW_CPU_SHARE` of its threads' time in any section
    (other processes took the cores, so its wall times are inflated), else None. Not given on GPUs, where the host
    mostly waits for the device and a low share means nothing."""
    meta = report["meta"]
    shares = cpu_shares(report)
    if meta["device"] != "cpu" or not shares:
        return None
    section = min(shares, key=shares.get)
    if shares[section] >= LOW_CPU_SHARE:
        return None
    return (
        f"WARNING: low CPU share ({shares[section]:.2f} in {section}; load average {meta['load_before']} -> "
        f"{meta.get('load_after')} on {meta['cpu_count']} CPUs): other processes took the cores, so the wall times "
        "above are inflated (on a busy machine up to ~10x). Compare the CPU-time rows, or rerun on an idle machine, "
        "with fewer --threads."
    )


def format_table(report: dict[str, Any]) -> str:
    """The report as a two-column text table, with a header naming the machine, load and sizes, a line of CPU
    shares and, on a loaded CPU, :func:`low_cpu_share_warning`."""
    meta = report["meta"]
    cfg = meta["config"]
    lines = [
        f"seg2refine benchmark  {meta['date']}  device={meta['device']}  {meta.get('gpu', meta['cpu'])}",
        f"threads={meta['torch_threads']}/{meta['cpu_count']} cpus  load {meta['load_before']} -> "
        f"{meta.get('load_after')}  torch {meta['torch']}",
        f"width={cfg['width']}  shape(z,y,x)={tuple(cfg['shape'])}  repeats={cfg['repeats']} (median, warm)  "
        f"batch={cfg['batch_size']}  train_batch={cfg['train_batch']}  patch={tuple(cfg['patch_size'])}",
    ]
    shares = cpu_shares(report)
    if shares:
        note = "host waits for the GPU: not a load sign" if meta["device"] != "cpu" else "1.00 = had its cores"
        listed = ", ".join(f"{section} {share:.2f}" for section, share in shares.items())
        lines.append(f"CPU share (process CPU / wall / threads; {note}): {listed}")
    rows = []
    for section, key, label, fmt in TABLE_ROWS:
        value = report.get(section, {}).get(key)
        if value is not None:
            rows.append((label, fmt.format(value)))
    width = max(len(label) for label, _ in rows) if rows else 0
    lines.append("-" * (width + 14))
    lines.extend(f"{label:<{width}}  {value:>10}" for label, value in rows)
    warning = low_cpu_share_warning(report)
    if warning:
        lines.append(warning)
    return "\n".join(lines)
