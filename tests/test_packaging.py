"""The distribution as users get it: the core and every CLI command without napari or Qt, and the built wheel/sdist."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import seg2refine_core

ROOT = Path(__file__).resolve().parents[1]
GUI_REQUIREMENTS = ("napari", "npe2", "pyqt5", "pyqt6", "pyside2", "pyside6")


def headless(steps: list, cwd: Path, timeout: float = 240) -> dict:
    """Run ``tests/headless_cli.py`` (napari, Qt and the heavy readers hidden) on ``steps``; its JSON answer."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "tests" / "headless_cli.py"), json.dumps(steps)]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_core_and_every_command_work_without_napari_or_qt(tmp_path):
    steps = [
        "import-all",
        "help-all",
        ["phantom", "--out", "cases", "--count", "1", "--shape", "48", "128", "128", "--seed", "3"],
        ["predict", "cases", "--out", "pred", "--device", "cpu", "--threads", "1"],
        ["evaluate", "--pred", "pred", "--gt", "cases", "--suffix", "y", "--json", "y.json"],
        ["models", "--width", "4", "--size", "64", "64"],
    ]
    answer = headless(steps, tmp_path)
    assert answer["results"] == [[step, 0] for step in steps]
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["1.s.nii.gz", "1.y.nii.gz"]
    (case,) = json.loads((tmp_path / "y.json").read_text())["cases"]
    assert case["id"] == "1" and 0.0 < case["dice"] <= 1.0  # the bundled models found vessels (measured Y 0.226)


def test_the_blocker_hides_what_it_says(tmp_path):
    """The check above means something only if napari and Qt really cannot be imported there."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import sys\nsys.path.insert(0, sys.argv[1])\nimport headless_cli\nheadless_cli.main([])\n"
        "for name in ('napari', 'qtpy', 'PyQt6', 'magicgui', 'SimpleITK', 'napari_seg2refine._segment'):\n"
        "    try:\n        __import__(name)\n    except ModuleNotFoundError:\n        print('hidden', name)\n"
    )
    done = subprocess.run(
        [sys.executable, str(probe), str(ROOT / "tests")], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:-1] == [
        f"hidden {n}" for n in ("napari", "qtpy", "PyQt6", "magicgui", "SimpleITK", "napari_seg2refine._segment")
    ]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """The sdist, and the wheel built from it (``python -m build``: what a release does)."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return wheel, sdist


def test_wheel_holds_the_manifest_the_weights_and_nothing_else_large(built):
    wheel, _ = built
    with zipfile.ZipFile(wheel) as archive:
        sizes = {info.filename: info.file_size for info in archive.infolist()}
        manifest = archive.read("napari_seg2refine/napari.yaml").decode()
        metadata = Parser().parsestr(archive.read(next(n for n in sizes if n.endswith(".dist-info/METADATA"))).decode())
        entry_points = archive.read(next(n for n in sizes if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert manifest == (ROOT / "napari.yaml").read_text()  # the file itself, not the link
    weights = {f"seg2refine_core/weights/stage{i}.{ext}" for i in (1, 2) for ext in ("safetensors", "json")}
    assert weights <= sizes.keys()
    large = {name for name, size in sizes.items() if size > 100_000}
    assert large <= weights, large - weights
    assert not [n for n in sizes if n.startswith("tests/") or "__pycache__" in n or n.endswith(".pyc")]
    assert metadata["Version"] == seg2refine_core.__version__
    assert "seg2refine = seg2refine_core.cli:main" in entry_points
    assert "napari-seg2refine = napari_seg2refine:napari.yaml" in entry_points
    runtime = [r for r in metadata.get_all("Requires-Dist") if "extra ==" not in r]
    names = {r.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in runtime}
    assert {"torch", "monai", "magicgui", "qtpy"} <= names
    assert not names & set(GUI_REQUIREMENTS), "napari, npe2 and Qt bindings belong in extras"
    assert {"napari", "all", "dev"} <= set(metadata.get_all("Provides-Extra"))


def test_sdist_builds_the_wheel_and_both_pass_twine_check(built):
    wheel, sdist = built
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"napari.yaml", "pyproject.toml", "README.md", "tests/conftest.py", "benchmarks/gpu/gpu_check.py"} <= names
    done = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASSED") == 2
