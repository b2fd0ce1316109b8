"""The npe2 manifest: valid, the one napari loads for the plugin, and the one a built wheel ships."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import npe2
import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "napari.yaml"
PACKAGE_MANIFEST = ROOT / "src" / "napari_seg2refine" / "napari.yaml"
NPE2 = Path(sys.executable).with_name("npe2")


def test_package_manifest_is_a_symlink_to_the_root_file():
    assert PACKAGE_MANIFEST.is_symlink()
    assert PACKAGE_MANIFEST.resolve() == MANIFEST.resolve()


def test_npe2_validate_accepts_the_manifest_and_imports_every_command():
    by_file = subprocess.run([str(NPE2), "validate", str(MANIFEST)], capture_output=True, text=True)
    assert by_file.returncode == 0, by_file.stdout + by_file.stderr
    by_name = subprocess.run(
        [str(NPE2), "validate", "napari-seg2refine", "--imports"], capture_output=True, text=True
    )
    assert by_name.returncode == 0, by_name.stdout + by_name.stderr


def test_napari_loads_the_root_manifest_for_the_plugin():
    pm = npe2.PluginManager()
    pm.discover()
    loaded = pm.get_manifest("napari-seg2refine")
    root = npe2.PluginManifest.from_file(MANIFEST)
    assert loaded.name == root.name == "napari-seg2refine"
    assert loaded.contributions.model_dump() == root.contributions.model_dump()
    raw = yaml.safe_load(MANIFEST.read_text())
    assert [c.id for c in loaded.contributions.commands] == [c["id"] for c in raw["contributions"]["commands"]]
    widgets = {w.display_name for w in loaded.contributions.widgets}
    assert widgets == {"Segment", "Compare S and Y", "Slice-wise Dice", "Train", "Vessel analysis"}
    assert [s.display_name for s in loaded.contributions.sample_data] == ["Synthetic CCTA phantom"]
    reader = loaded.contributions.readers[0]
    assert set(reader.filename_patterns) == {"*.nii", "*.nii.gz", "*.nrrd", "*.mha", "*.mhd", "*.dcm", "*.ima"}
    assert reader.accepts_directories  # DICOM series folders
    writer = loaded.contributions.writers[0]
    assert [str(t) for t in writer.layer_types] == ["labels"] and ".nii.gz" in writer.filename_extensions


def test_built_wheel_ships_the_root_manifest(tmp_path):
    """hatchling follows the package's symlink and puts the root file's contents in the wheel.

    Builds without isolation when hatchling is installed (fast), else in build's isolated environment."""
    isolation = [] if importlib.util.find_spec("hatchling") is None else ["--no-isolation"]
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", *isolation, "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (wheel,) = tmp_path.glob("napari_seg2refine-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.read("napari_seg2refine/napari.yaml")
        entry_points = archive.read(next(n for n in archive.namelist() if n.endswith("entry_points.txt")))
    assert shipped == MANIFEST.read_bytes()
    assert b"napari-seg2refine = napari_seg2refine:napari.yaml" in entry_points
