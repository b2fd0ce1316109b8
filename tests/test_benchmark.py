"""The benchmark runs end to end at tiny sizes (a check that it works, not a timed test)."""

import json
import math

import pytest
import torch
from torch import nn

from seg2refine_core.cli import main
from seg2refine_core.cli.benchmark import SECTION_NAMES
from seg2refine_core.cli.models import model_table
from seg2refine_core.errors import Seg2RefineError
from seg2refine_core.tools.benchmark import (
    SECTIONS,
    BenchmarkConfig,
    build_generator,
    build_stage1,
    count_flops,
    format_table,
    low_cpu_share_warning,
    paired_ratio,
)

EXPECTED = {
    "reference": ["large_conv_gflops", "large_conv_cpu_gflops", "cpu_share"],
    "stage1": [
        "sfanet_ms_per_slice", "unet_ms_per_slice", "ag_unet_ms_per_slice", "ag_att_unet_ms_per_slice",
        "sfanet_over_unet", "ag_unet_over_unet", "ag_att_unet_over_unet", "sfanet_over_unet_cpu",
        "sfanet_cpu_ms_per_slice", "unet_cpu_ms_per_slice", "sfanet_gflop_per_slice", "unet_gflop_per_slice",
        "sfanet_gflops", "unet_gflops", "sfanet_fraction_of_conv_peak", "unet_fraction_of_conv_peak",
        "sfanet_fraction_of_conv_peak_cpu", "sfanet_params", "unet_params", "cpu_share",
    ],
    "stage1_profile": ["ffe_share", "att_share", "ag_share", "forward_ms"],
    "stage2": [
        "generator_s_per_volume", "monai_unet3d_s_per_volume", "generator_over_monai_unet3d", "windows",
        "generator_params", "monai_unet3d_params", "generator_gflop_per_window", "generator_gflops",
        "generator_fraction_of_conv_peak", "monai_unet3d_gflops",
    ],
    "pipeline": ["s_per_volume", "stage1_s", "stage2_s"],
    "training": ["sfanet_slices_per_s", "unet_slices_per_s", "sfanet_over_unet_step"],
    "memory": ["peak_rss_mb", "before_rss_mb", "s_per_volume", "cpu_share"],
}


def test_quick_benchmark_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["benchmark", "--quick", "--threads", "1", "--device", "cpu", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    for section, keys in EXPECTED.items():
        for key in keys:
            value = report[section][key]
            assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (section, key, value)
    assert report["meta"]["config"]["width"] == 4 and report["meta"]["device"] == "cpu"
    assert report["meta"]["config"]["sw_batch_size"] == 1  # the CPU default
    assert report["stage2"]["windows"] == 9  # (8, 64, 64): z padded to one 32 window, 3 × 3 in-plane (step 24)
    assert report["memory"]["peak_rss_mb"] >= report["memory"]["before_rss_mb"]
    printed = capsys.readouterr().out
    assert "SFANet / UNet" in printed and "peak host RSS" in printed
    shares = next(line for line in printed.splitlines() if line.startswith("CPU share"))
    assert all(f"{section} " in shares for section in ("reference", "stage1", "stage2", "training", "memory"))


def test_count_flops_is_two_per_mac_and_leaves_the_model_alone():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    before = conv.weight.detach().clone()
    flops = count_flops(conv, (2, 3, 10, 12))
    assert flops.counted == flops.total == 2 * 2 * 10 * 12 * 8 * 3 * 9 and flops.fft == 0
    assert conv.weight.device.type == "cpu" and torch.equal(conv.weight, before)


def test_one_flop_counter_for_models_and_benchmark():
    """`seg2refine models` and the benchmark count the same FLOPs; FFE's FFTs are added for SFANet only."""
    rows = {row["variant"]: row for row in model_table(8, (64, 96))}
    for variant in ("unet", "sfanet"):
        flops = count_flops(build_stage1(variant, 8, (64, 96)), (1, 1, 64, 96))
        assert rows[variant]["gflops"] * 1e9 == pytest.approx(flops.counted)
        assert rows[variant]["fft_gflops"] * 1e9 == pytest.approx(flops.fft)
    assert rows["unet"]["fft_gflops"] == 0 < rows["sfanet"]["fft_gflops"]
    assert rows["unet"]["gflops"] < rows["sfanet"]["gflops"]  # the attention paths add matrix work
    generator = count_flops(build_generator(4), (1, 2, 32, 32, 32))
    assert generator.counted > 0 and generator.fft == 0


def test_cpu_share_warning_only_for_a_loaded_cpu():
    meta = {"date": "d", "device": "cpu", "cpu": "c", "torch_threads": 2, "cpu_count": 2, "load_before": [7.1],
            "load_after": [6.9], "torch": "t", "config": {"width": 4, "shape": [1, 2, 3], "repeats": 1,
                                                          "batch_size": 1, "train_batch": 1, "patch_size": [32] * 3}}
    loaded = {"meta": meta, "reference": {"large_conv_gflops": 9.0, "cpu_share": 0.97},
              "stage1": {"sfanet_ms_per_slice": 5.0, "cpu_share": 0.41}}
    warning = low_cpu_share_warning(loaded)
    assert "0.41 in stage1" in warning and "[7.1]" in warning
    table = format_table(loaded)
    assert "reference 0.97, stage1 0.41" in table and table.endswith(warning)
    idle = {**loaded, "stage1": {"sfanet_ms_per_slice": 5.0, "cpu_share": 0.95}}
    assert low_cpu_share_warning(idle) is None and "WARNING" not in format_table(idle)
    gpu = {**loaded, "meta": {**meta, "device": "cuda", "gpu": "H200"}}  # the host waits for the GPU: no warning
    assert low_cpu_share_warning(gpu) is None and "not a load sign" in format_table(gpu)


def test_cli_sections_match_the_benchmark():
    assert SECTION_NAMES == SECTIONS


def test_paired_ratio_and_options():
    assert paired_ratio([2.0, 4.0, 9.0], [1.0, 2.0, 3.0]) == 2.0
    with pytest.raises(Seg2RefineError, match="--patch"):
        BenchmarkConfig(patch_size=(48, 64, 24))
    for option in ("batch_size", "sw_batch_size"):
        with pytest.raises(Seg2RefineError, match="--batch-size"):
            BenchmarkConfig(**{option: 0})
    with pytest.raises(Seg2RefineError, match="--sections"):
        BenchmarkConfig(sections=("stage3",))


def test_table_lists_only_measured_rows():
    report = {
        "meta": {"date": "d", "device": "cpu", "cpu": "c", "torch_threads": 1, "cpu_count": 2, "load_before": [],
                 "torch": "t", "config": {"width": 4, "shape": [1, 2, 3], "repeats": 1, "batch_size": 1,
                                          "train_batch": 1, "patch_size": [32, 32, 32]}},
        "reference": {"large_conv_gflops": 12.5},
    }
    table = format_table(report)
    assert "12.5" in table and "SFANet" not in table


def test_compile_option_times_the_compiled_step_or_reports_why_not(tmp_path, monkeypatch, capsys):
    compiled = []

    def fake_compile(module):  # stands for torch.compile: the same module, counted
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    args = ["benchmark", "--quick", "--threads", "1", "--device", "cpu", "--sections", "training", "--compile"]
    assert main([*args, "--json", str(tmp_path / "a.json")]) == 0
    training = json.loads((tmp_path / "a.json").read_text())["training"]
    assert len(compiled) == 1 and training["compile_s"] > 0 and training["sfanet_compiled_slices_per_s"] > 0
    assert 0.2 < training["compiled_over_eager_step"] < 5  # the same model and work on both sides
    assert "compiled / eager step time" in capsys.readouterr().out

    def broken_compile(module):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", broken_compile)
    assert main([*args, "--json", str(tmp_path / "b.json")]) == 0
    training = json.loads((tmp_path / "b.json").read_text())["training"]
    assert training["compile_error"] == "RuntimeError: no C++ compiler found"
    assert "sfanet_compiled_slices_per_s" not in training and training["sfanet_slices_per_s"] > 0
