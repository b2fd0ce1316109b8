"""The one-call GPU check (benchmarks/gpu/gpu_check.py) keeps working without a GPU: its dry run on the CPU, and
its install step with the project's wheel, offline."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu" / "gpu_check.py"


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dry_run_passes_every_section_and_returns_few_files(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
        timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    sections = json.loads((tmp_path / "results.json").read_text())["sections"]
    assert {name: s["status"] for name, s in sections.items()} == {
        "environment": "ok", "install": "skipped", "cuda_tests": "ok", "benchmark": "ok", "training": "ok",
        "training_compiled": "skipped",
    }
    assert sections["cuda_tests"]["tests"] == 5 and sections["cuda_tests"]["skipped"] == 0  # run, on the CPU
    numbers = sections["benchmark"]["numbers"]
    assert {"reference", "stage1", "stage2", "pipeline", "memory"} <= numbers.keys()
    assert numbers["stage1"]["sfanet_ms_per_slice"] > 0 and numbers["memory"]["peak_rss_mb"] > 0
    assert sections["training"]["numbers"]["training"]["sfanet_slices_per_s"] > 0
    # what the device tool returns: at most 8 plain files, here 5
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "benchmark.json", "cuda_tests.xml", "gpu_check.log", "results.json", "training.json"
    ]
    assert "gpu_check: all sections ok" in (tmp_path / "gpu_check.log").read_text()


def test_install_puts_the_carried_wheel_first_and_lists_missing_requirements(tmp_path):
    wheels = tmp_path / "wheels"
    command = [sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", str(wheels), str(ROOT)]
    built = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    gpu_check = load_gpu_check()
    (tmp_path / "out").mkdir()
    check = gpu_check.Check(tmp_path / "out", dry_run=False, budget_s=300, site=tmp_path / "site")
    assert gpu_check.install(check, wheels)
    section = json.loads((tmp_path / "out" / "results.json").read_text())["sections"]["install"]
    assert section["status"] == "ok" and section["location"].startswith(str(tmp_path / "site"))
    assert section["missing"] == [] and section["resolver_satisfied"]  # this venv has every requirement
    assert check.env["PYTHONPATH"].startswith(str(tmp_path / "site"))

    empty = gpu_check.Check(tmp_path / "out", dry_run=False, budget_s=300, site=tmp_path / "site2")
    assert not gpu_check.install(empty, tmp_path / "no-wheels")
    section = json.loads((tmp_path / "out" / "results.json").read_text())["sections"]["install"]
    assert section["status"] == "failed" and "make gpu-wheels" in section["reason"]
