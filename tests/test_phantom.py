"""The synthetic CCTA phantom: deterministic, anatomically sane, non-trivial to segment, and its CLI."""

import hashlib
import json

import cc3d
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from seg2refine_core.cli import main
from seg2refine_core.data.phantom import (
    TISSUES,
    Phantom,
    PhantomOptions,
    make_phantom,
    preview_png,
    write_phantom_case,
)
from seg2refine_core.errors import Seg2RefineError, StopRequested

SMALL = ((48, 64, 64), (2.0, 1.4, 1.4))  # same field of view as the default, 8x fewer voxels
T = {name: code for code, name in enumerate(TISSUES)}


@pytest.fixture(scope="module")
def default() -> Phantom:
    return make_phantom(seed=0)


@pytest.fixture(scope="module")
def small() -> Phantom:
    return make_phantom(*SMALL, seed=3)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def test_same_seed_same_arrays_other_seed_differs(small):
    a = small
    b = make_phantom(*SMALL, seed=3)
    c = make_phantom(*SMALL, seed=4)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert a.meta == b.meta
    assert not np.array_equal(a.label, c.label)
    assert np.abs(a.image - c.image).mean() > 5.0


# sha256 of (rint(image) as int16, label, tissue), computed with the single-module phantom.py before it was split into
# the data/phantom/ package (commit 17294fa): the split and later additions must not change any volume.
PRE_SPLIT = {
    ((48, 64, 64), (2.0, 1.4, 1.4), 3): (
        "580283f55c830db86b0ef8ceb2ccf05d69fe17c8050421236003c0ad099a2124",
        "cd94ff6e107923eb8ea650d46fc6b70accfdfcb131d1eb6f1d5fe691813687f0",
        "e2cf7622a95ea977dbe33988306a1a1b1641e9fab007679d9d400099985bcd8f",
    ),
    ((40, 50, 60), (2.5, 1.6, 1.3), 11): (  # a left-dominant case, anisotropic in all three axes
        "1416c282ba5ebbd01397b65a5a9923834faddf4a0b72ef81f2c24a0e4d1b1973",
        "468ec96d8c311cf32c7bfacdf3d07c20ba01e6c5ada57f499cbbdc6ae98815b5",
        "2a796b00b84fa64c44d9886d74a1a819dcfc5b5908220a2ebba4f5d906066a5a",
    ),
}


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.mark.parametrize("case", list(PRE_SPLIT))
def test_volumes_identical_to_the_pre_split_module(case, small):
    shape, spacing, seed = case
    ph = small if case == (*SMALL, 3) else make_phantom(shape, spacing, seed=seed)
    got = (_sha(np.rint(ph.image).astype(np.int16)), _sha(ph.label), _sha(ph.tissue))
    assert got == PRE_SPLIT[case]


def test_severity_range_changes_only_the_stenoses(small):
    wide = make_phantom(*SMALL, seed=3, severity_range=(0.25, 0.8))
    np.testing.assert_array_equal(wide.tissue, small.tissue)  # walls follow the healthy radius: unchanged
    assert [s["vessel"] for s in wide.meta["stenoses"]] == [s["vessel"] for s in small.meta["stenoses"]]
    for a, b in zip(wide.meta["stenoses"], small.meta["stenoses"], strict=True):
        # the same uniform draw mapped onto the wider range
        assert (a["severity"] - 0.25) / 0.55 == pytest.approx((b["severity"] - 0.35) / 0.35, abs=2e-3)
    changed = np.argwhere(wide.image != small.image)  # partial-volume lumen, blurred
    assert len(changed) > 0
    centres = np.array([s["center_mm"] for s in small.meta["stenoses"]])
    mm = (changed - (np.array(SMALL[0]) - 1) / 2) * np.array(SMALL[1])
    nearest = np.linalg.norm(mm[:, None, :] - centres[None], axis=2).min(1)
    assert nearest.max() < 12.0  # the image changes only around the stenoses
    severities = [100 * s["severity"] for seed in range(12) for s in
                  make_phantom((24, 32, 32), (4.0, 2.8, 2.8), seed=seed, severity_range=(0.25, 0.8)).meta["stenoses"]]
    assert min(severities) < 50 <= max(severities) and max(severities) >= 70  # every grade occurs
    assert min(severities) >= 25 and max(severities) <= 80


def test_left_main_length_option_moves_only_the_left_tree(default):
    """--left-main-mm draws the left main from the aortic root to its division that long (the same draw that
    places the division by default), so the right tree and the lesions' draws stay as they were."""
    chords = []
    for seed in (0, 1, 2):
        base = default if seed == 0 else make_phantom(seed=seed)
        long = make_phantom(seed=seed, options=PhantomOptions(left_main_mm=(4.0, 6.0)))
        lm = {v.tree + v.name: v for v in long.truth.vessels}
        old = {v.tree + v.name: v for v in base.truth.vessels}
        assert lm.keys() == old.keys()
        chord = float(np.linalg.norm(lm["leftLM"].points_ras[-1] - lm["leftLM"].points_ras[0]))
        chords.append(chord)
        assert 4.0 - 0.1 <= chord <= 6.0 + 0.1  # the division is searched in 0.25 deg steps along the groove
        assert np.linalg.norm(old["leftLM"].points_ras[-1] - old["leftLM"].points_ras[0]) < 3.0
        for key in old:  # the right tree is drawn after the left one from the same stream: unchanged
            if key.startswith("right"):
                np.testing.assert_array_equal(lm[key].points_ras, old[key].points_ras)
        assert [(s.vessel, s.severity_pct) for s in long.truth.stenoses] == [
            (s.vessel, s.severity_pct) for s in base.truth.stenoses]
    assert max(chords) - min(chords) > 0.3  # drawn per case
    with pytest.raises(Seg2RefineError, match="left_main_mm"):
        make_phantom(*SMALL, options=PhantomOptions(left_main_mm=(6.0, 4.0)))


def test_truth_in_world_ras_mm(default):
    truth = default.truth
    names = {(v.name, v.tree) for v in truth.vessels}
    assert {(m["name"], m["tree"]) for m in default.meta["vessels"]} == names
    inv = np.linalg.inv(default.affine)
    shape = np.array(default.label.shape)
    near_label = ndimage.binary_dilation(default.label, np.ones((3, 3, 3)))
    hits = []
    for v in truth.vessels:
        idx_xyz = v.points_ras @ inv[:3, :3].T + inv[:3, 3]
        idx = np.rint(idx_xyz[:, ::-1]).astype(int)  # (z, y, x)
        inside = np.all((idx >= 0) & (idx < shape), axis=1)
        # the label holds the voxel nearest to every (resampled) centreline sample: world points map back onto it
        hits.append(default.label[tuple(idx[inside].T)])
        assert near_label[tuple(idx[inside].T)].all()
        assert np.all(v.radius_mm <= v.reference_radius_mm + 1e-12)
    assert np.concatenate(hits).mean() > 0.98
    # the left tree lies to the patient's left of the right tree: smaller RAS x
    left = np.concatenate([v.points_ras for v in truth.vessels if v.tree == "left"])
    right = np.concatenate([v.points_ras for v in truth.vessels if v.tree == "right"])
    assert left[:, 0].mean() < right[:, 0].mean()
    for s, m in zip(truth.stenoses, default.meta["stenoses"], strict=True):
        assert s.severity_pct == pytest.approx(100 * m["severity"], abs=0.1)
        assert 1.0 - s.min_diameter_mm / s.reference_diameter_mm == pytest.approx(m["severity"], abs=0.02)
        np.testing.assert_allclose(s.center_ras_mm, m["center_ras_mm"], atol=0.02)
        # the phantom affine is diag(-sx, -sy, sz) centred on 0: RAS = (-x, -y, z) of the (z, y, x) mm position
        np.testing.assert_allclose(m["center_ras_mm"], [-m["center_mm"][2], -m["center_mm"][1], m["center_mm"][0]],
                                   atol=0.02)
    data = json.loads(json.dumps(truth.to_dict()))
    assert data["coordinates"] == "world RAS mm" and len(data["vessels"]) == len(truth.vessels)
    assert {v["anatomical_name"] for v in data["vessels"]} >= {"LM", "LAD", "LCX", "RCA"}


def test_types_geometry_and_affine(default):
    assert default.image.shape == default.label.shape == default.tissue.shape == (96, 128, 128)
    assert default.image.dtype == np.float32 and default.label.dtype == np.uint8
    assert set(np.unique(default.label)) == {0, 1}
    assert default.spacing == (1.0, 0.7, 0.7)
    # (x, y, z) indices -> RAS: x towards patient left, y towards posterior, z superior, centred on the origin
    assert nib.aff2axcodes(default.affine) == ("L", "P", "S")
    np.testing.assert_allclose(np.abs(np.diag(default.affine)[:3]), (0.7, 0.7, 1.0))
    centre = default.affine @ np.array([63.5, 63.5, 47.5, 1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)


def test_label_is_two_small_coronary_trees(default):
    label = default.label
    fraction = label.mean()
    assert 0.0003 < fraction < 0.01  # coronaries are well under 1 % of the voxels
    _, n = cc3d.connected_components(label, connectivity=26, return_N=True)
    assert 1 <= n <= 4  # a left and a right tree (they may touch)
    trees = {v["tree"] for v in default.meta["vessels"]}
    assert trees == {"left", "right"}
    names = {v["name"] for v in default.meta["vessels"]}
    assert {"LM", "LAD", "LCX", "RCA"} <= names
    # Murray taper: from ~2 mm at the ostia to below the voxel size distally
    radii = {v["name"]: (v["r_start_mm"], v["r_end_mm"]) for v in default.meta["vessels"]}
    assert 1.5 < radii["LM"][0] < 2.6 and 1.5 < radii["RCA"][0] < 2.6
    assert all(radii[name][1] < 0.7 for name in ("LAD", "LCX", "RCA"))
    lm, lad, lcx = radii["LM"][0], radii["LAD"][0], radii["LCX"][0]
    assert lm**3 == pytest.approx(lad**3 + lcx**3, rel=1e-3)


def test_hu_ranges_blood_pools_share_the_lumen_hu(default):
    image, tissue = default.image, default.tissue
    lv = ndimage.binary_erosion(tissue == T["lv_blood"], iterations=2)
    lumen_core = ndimage.binary_erosion(default.label > 0)  # away from partial volume at the lumen edge
    assert lv.sum() > 1000 and lumen_core.sum() > 50
    blood = float(image[lv].mean())
    assert 250 < blood < 500
    assert abs(float(image[lumen_core].mean()) - blood) < 100
    myo = ndimage.binary_erosion(tissue == T["myocardium"], iterations=2)
    assert 50 < float(image[myo].mean()) < 160
    fat = ndimage.binary_erosion(tissue == T["epicardial_fat"], iterations=1)
    assert -160 < float(np.median(image[fat])) < -30
    lung = ndimage.binary_erosion(tissue == T["lung"], iterations=3)
    assert float(np.median(image[lung])) < -700
    air = ndimage.binary_erosion(tissue == T["air"], iterations=2)
    assert float(np.median(image[air])) < -900
    bone = ndimage.binary_erosion(tissue == T["cortical_bone"], iterations=1)
    assert float(np.percentile(image[bone], 90)) > 600
    assert len(default.meta["calcified_plaques"]) >= 1 and len(default.meta["stenoses"]) >= 1
    assert all(800 <= p["hu"] <= 1200 for p in default.meta["calcified_plaques"])
    assert 15 < default.meta["noise_sd_hu"] < 45


def test_no_single_threshold_segments_the_coronaries(default):
    """Acceptance criterion: the best global HU threshold scores Dice < 0.8 against the label."""
    label = default.label > 0
    best = max(_dice(default.image >= t, label) for t in np.arange(-200.0, 1400.0, 10.0))
    assert best < 0.8


def test_anatomy_is_in_mm_whatever_the_spacing(default):
    coarse = make_phantom((96, 96, 96), (1.0, 0.9333, 0.9333), seed=0)  # same field of view, other spacing
    vol_default = default.label.sum() * np.prod(default.spacing)
    vol_coarse = coarse.label.sum() * np.prod(coarse.spacing)
    assert vol_coarse == pytest.approx(vol_default, rel=0.25)
    same = [(v["name"], v["r_start_mm"], v["r_end_mm"]) for v in coarse.meta["vessels"]]
    assert same == [(v["name"], v["r_start_mm"], v["r_end_mm"]) for v in default.meta["vessels"]]


def test_progress_and_stop():
    calls = []
    make_phantom(*SMALL, progress=lambda done, total, info: calls.append((done, total)))
    assert calls[-1][0] == calls[-1][1] and len(calls) > 5
    with pytest.raises(StopRequested):
        make_phantom(*SMALL, should_stop=lambda: True)


@pytest.mark.parametrize("kwargs", [{"shape": (0, 64, 64)}, {"spacing": (1.0, -0.7, 0.7)}, {"seed": -1},
                                    {"severity_range": (0.5, 0.3)}, {"severity_range": (0.2, 0.95)}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(Seg2RefineError):
        make_phantom(**kwargs)


def test_write_case_and_preview(tmp_path, small):
    ph = small
    img_path, label_path = write_phantom_case(ph, tmp_path, 7)
    assert (img_path.name, label_path.name) == ("7.img.nii.gz", "7.label.nii.gz")
    img = nib.load(img_path)
    assert img.get_data_dtype() == np.int16
    np.testing.assert_allclose(img.affine, ph.affine, atol=1e-5)
    hu = np.asarray(img.dataobj).transpose(2, 1, 0)
    np.testing.assert_allclose(hu, np.rint(ph.image), atol=0.5)
    lab = np.asarray(nib.load(label_path).dataobj).transpose(2, 1, 0)
    np.testing.assert_array_equal(lab, ph.label)
    png = preview_png((ph.image, ph.label, ph.spacing), tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".partial*"))


def test_cli_writes_imagecas_cases(tmp_path, capsys, small):
    out = tmp_path / "cases"
    rc = main(["phantom", "--out", str(out), "--count", "2", "--shape", "48", "64", "64",
               "--spacing", "2", "1.4", "1.4", "--seed", "2", "--preview", "--truth"])  # fmt: skip
    assert rc == 0
    names = sorted(p.name for p in out.iterdir())
    kinds = ("img.nii.gz", "label.nii.gz", "preview.png", "truth.json")
    assert names == sorted(f"{i}.{kind}" for i in (1, 2) for kind in kinds)
    truth = json.loads((out / "2.truth.json").read_text())
    assert truth["stenoses"][0]["center_ras_mm"] == small.meta["stenoses"][0]["center_ras_mm"]
    assert (out / "2.preview.png").read_bytes()[:4] == b"\x89PNG"
    # case i uses seed SEED + i - 1
    lab2 = np.asarray(nib.load(out / "2.label.nii.gz").dataobj).transpose(2, 1, 0)
    np.testing.assert_array_equal(lab2, small.label)
    assert "wrote 2 case(s)" in capsys.readouterr().out
    rc = main(["phantom", "--out", str(tmp_path / "lm"), "--shape", "48", "64", "64", "--spacing", "2", "1.4", "1.4",
               "--seed", "3", "--left-main-mm", "4", "6", "--truth"])  # fmt: skip
    lm = next(v for v in json.loads((tmp_path / "lm" / "1.truth.json").read_text())["vessels"] if v["name"] == "LM")
    assert rc == 0 and 3.9 <= np.linalg.norm(np.subtract(lm["points_ras_mm"][-1], lm["points_ras_mm"][0])) <= 6.1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--count", "0"], "--count"),
        (["--shape", "48", "0", "64"], "--shape"),
        (["--spacing", "1", "-1", "1"], "--spacing"),
        (["--seed", "-3"], "--seed"),
        (["--severity", "60", "40"], "--severity"),
        (["--left-main-mm", "0", "10"], "--left-main-mm"),
        (["--left-main-mm", "5"], "--left-main-mm"),
        (["--left-main-mm", "five", "ten"], "--left-main-mm"),
    ],
)
def test_cli_bad_arguments_exit_2(tmp_path, capsys, args, message):
    assert main(["phantom", "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_cli_help_is_plain_text(capsys):
    with pytest.raises(SystemExit):
        main(["phantom", "--help"])
    out = capsys.readouterr().out
    assert "``" not in out and "--truth" in out and "SEED + i - 1" in out
