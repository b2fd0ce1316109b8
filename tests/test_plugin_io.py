"""Reader, writer and sample data, through napari's plugin machinery where it matters (no display needed)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from napari_seg2refine import _sample_data
from napari_seg2refine._layers import CT, GT, VOLUME_KEY, S, Y
from napari_seg2refine._reader import napari_get_reader, read_files
from napari_seg2refine._writer import write_labels
from plugin_support import tiny_phantom
from seg2refine_core.io.volume import Volume, read_volume, write_volume


@pytest.fixture
def plugin_discovered():
    """napari's npe2 plugin manager with installed plugins discovered (as napari does at start-up)."""
    import npe2

    npe2.PluginManager.instance().discover(include_npe1=False)


@pytest.fixture
def imagecas_case(tmp_path):
    """An ImageCAS-named pair ``7.img.nii.gz`` + ``7.label.nii.gz`` with an oblique-free RAS affine."""
    phantom = tiny_phantom()
    image = write_volume(tmp_path / "7.img.nii.gz", phantom.image, spacing=phantom.spacing, affine=phantom.affine)
    label = write_volume(tmp_path / "7.label.nii.gz", phantom.label, spacing=phantom.spacing, affine=phantom.affine)
    return image, label


def test_reader_claims_only_volume_files(tmp_path):
    assert napari_get_reader(str(tmp_path / "a.nii.gz")) is read_files
    assert napari_get_reader([str(tmp_path / "a.nrrd"), str(tmp_path / "b.nii")]) is read_files
    assert napari_get_reader(str(tmp_path / "a.tif")) is None
    assert napari_get_reader([str(tmp_path / "a.nii.gz"), str(tmp_path / "b.png")]) is None


def test_imagecas_image_opens_with_its_label_and_physical_scale(imagecas_case, plugin_discovered):
    from napari.plugins.io import read_data_with_plugins

    image_path, _ = imagecas_case
    phantom = tiny_phantom()
    layers, _ = read_data_with_plugins([str(image_path)], plugin="napari-seg2refine")
    (ct_data, ct_meta, ct_type), (gt_data, gt_meta, gt_type) = layers
    assert (ct_type, ct_meta["name"], gt_type, gt_meta["name"]) == ("image", CT, "labels", GT)
    np.testing.assert_array_equal(ct_data, phantom.image)
    np.testing.assert_array_equal(gt_data, phantom.label)
    assert gt_data.dtype == np.uint8
    for meta in (ct_meta, gt_meta):
        assert tuple(meta["scale"]) == pytest.approx(phantom.spacing)
        assert tuple(meta["units"]) == ("mm", "mm", "mm")
        assert isinstance(meta["metadata"][VOLUME_KEY], Volume)
    assert tuple(ct_meta["contrast_limits"]) == (-100.0, 500.0)


def test_mask_files_open_as_labels_by_name(tmp_path, imagecas_case):
    phantom = tiny_phantom()
    for tag, name in (("label", GT), ("s", S), ("y", Y)):
        path = write_volume(tmp_path / f"9.{tag}.nrrd", phantom.label, spacing=phantom.spacing)
        ((data, meta, kind),) = read_files(str(path))
        assert (kind, meta["name"], data.dtype) == ("labels", name, np.uint8)
        np.testing.assert_array_equal(data, phantom.label)
    ((_, meta, kind),) = read_files(str(write_volume(tmp_path / "scan.nrrd", phantom.image, spacing=phantom.spacing)))
    assert (kind, meta["name"]) == ("image", CT)


def test_writer_keeps_the_source_geometry_exactly(tmp_path, imagecas_case, plugin_discovered):
    from napari.layers import Labels
    from napari.plugins.io import save_layers

    image_path, _ = imagecas_case
    (_, ct_meta, _), (gt_data, gt_meta, _) = read_files(str(image_path))
    layer = Labels(gt_data, **gt_meta)
    written = save_layers(str(tmp_path / "out.nii.gz"), [layer], plugin="napari-seg2refine")
    assert written == [str(tmp_path / "out.nii.gz")]
    source, saved = read_volume(image_path), read_volume(tmp_path / "out.nii.gz")
    np.testing.assert_array_equal(saved.affine, source.affine)
    assert saved.spacing == source.spacing
    np.testing.assert_array_equal(saved.array, gt_data)
    # NRRD too, through the same geometry
    write_labels(str(tmp_path / "out.nrrd"), gt_data, {"metadata": gt_meta["metadata"]})
    np.testing.assert_allclose(read_volume(tmp_path / "out.nrrd").affine, source.affine, atol=1e-6)


def test_writer_without_source_uses_the_layer_scale(tmp_path):
    data = np.zeros((4, 8, 8), np.int32)
    data[1:3, 2:5, 2:5] = 1
    (path,) = write_labels(str(tmp_path / "painted"), data, {"scale": (2.5, 0.6, 0.4), "metadata": {}})
    assert path.endswith("painted.nii.gz")
    saved = read_volume(path)
    assert saved.spacing == pytest.approx((2.5, 0.6, 0.4))
    np.testing.assert_array_equal(saved.array, data)


def test_sample_data_is_the_phantom_with_ground_truth(monkeypatch):
    assert _sample_data.SAMPLE_SHAPE == (64, 128, 128)
    monkeypatch.setattr(_sample_data, "SAMPLE_SHAPE", (16, 48, 48))
    (image, image_meta, image_type), (label, label_meta, label_type) = _sample_data.make_sample_data()
    assert (image_type, image_meta["name"], label_type, label_meta["name"]) == ("image", CT, "labels", GT)
    assert image.shape == label.shape == (16, 48, 48)
    assert label.dtype == np.uint8 and label.any()
    assert tuple(image_meta["scale"]) == _sample_data.SAMPLE_SPACING
    assert tuple(image_meta["contrast_limits"]) == (-100.0, 500.0)


def test_plugin_modules_do_not_import_torch():
    """napari imports the reader, writer, sample and widget modules at start-up or on first use: torch waits."""
    modules = ["_reader", "_writer", "_sample_data", "_segment", "_compare", "_slice_dice", "_train"]
    code = (
        "import sys\n"
        + "".join(f"import napari_seg2refine.{m}\n" for m in modules)
        + "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_reader_claims_dicom_folders_and_files_and_metaimage(tmp_path):
    from dicom_support import ct_series

    files = ct_series(tmp_path / "series", np.zeros((3, 32, 32), np.int16))
    (tmp_path / "empty").mkdir()
    assert napari_get_reader(str(tmp_path / "series")) is read_files
    assert napari_get_reader(str(files[0])) is read_files  # no suffix, recognised by its DICM preamble
    assert napari_get_reader(str(tmp_path / "a.mha")) is read_files
    assert napari_get_reader(str(tmp_path / "empty")) is None


def test_dicom_folder_opens_the_largest_series_and_says_so(tmp_path, plugin_discovered, monkeypatch):
    from napari.plugins.io import read_data_with_plugins
    from napari.utils import notifications

    from dicom_support import ct_series

    said = []
    monkeypatch.setattr(notifications, "show_info", said.append)
    phantom = tiny_phantom()
    hu = np.clip(phantom.image, -1024, 3000).astype(np.int16)
    ct_series(tmp_path / "study" / "a", hu, spacing=phantom.spacing, series_uid="1.2.3.1")
    ct_series(tmp_path / "study" / "b", hu[:5], spacing=phantom.spacing, series_uid="1.2.3.2")
    layers, _ = read_data_with_plugins([str(tmp_path / "study")], plugin="napari-seg2refine")
    ((data, meta, kind),) = layers
    assert (kind, meta["name"], data.shape) == ("image", CT, hu.shape)
    np.testing.assert_array_equal(data, hu)
    assert tuple(meta["scale"]) == pytest.approx(phantom.spacing)
    assert len(said) == 1 and "1.2.3.1" in said[0] and "also there: 1.2.3.2" in said[0]
    assert meta["metadata"]["seg2refine_dicom_series"] == said[0]
    # a mask painted on it saves with the series' world geometry, in every writable format
    from napari.layers import Labels

    mask = (data > 150).astype(np.uint8)
    layer = Labels(mask, scale=meta["scale"], metadata=meta["metadata"])
    source = meta["metadata"][VOLUME_KEY]
    for name in ("m.nii.gz", "m.nrrd", "m.mha", "m.mhd"):
        (path,) = write_labels(str(tmp_path / name), layer.data, {"metadata": layer.metadata, "scale": layer.scale})
        saved = read_volume(path)
        np.testing.assert_allclose(saved.affine, source.affine, atol=1e-6)
        np.testing.assert_array_equal(saved.array, mask)
