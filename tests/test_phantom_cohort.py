"""The phantom's per-case options and the cohort preset: determinism, ranges, real-size anatomy, noise texture,
stents, ground truth, the CLI, and legacy volumes unchanged."""

import json
import re
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from seg2refine_core.cli import main
from seg2refine_core.data.phantom import (
    COHORT_RANGES,
    LOOPED_LEFT_MAIN,
    TISSUES,
    PhantomOptions,
    draw_cohort,
    make_phantom,
)
from seg2refine_core.data.phantom.rendering import add_ct_noise, gaussian_std_factor
from seg2refine_core.errors import Seg2RefineError

T = {name: code for code, name in enumerate(TISSUES)}
SMALL = ((48, 64, 64), (2.0, 1.4, 1.4))
TINY = 32  # in-plane matrix of the tiny cohort cases (16x the real voxel size)


def _inside(value: float, name: str, factor: float = 1.0) -> bool:
    lo, hi = COHORT_RANGES[name]
    return lo * factor - 1e-9 <= value <= hi * factor + 1e-9


def test_cohort_is_deterministic_per_seed_and_independent_of_legacy_seeds():
    a = make_phantom(seed=5, cohort=True, matrix=TINY)
    b = make_phantom(seed=5, cohort=True, matrix=TINY)
    c = make_phantom(seed=6, cohort=True, matrix=TINY)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert a.meta == b.meta and a.meta["cohort"] is True
    assert a.meta["heart_scale"] != c.meta["heart_scale"] and a.spacing != c.spacing
    legacy = make_phantom(seed=5)
    assert [v["length_mm"] for v in legacy.meta["vessels"]] != [v["length_mm"] for v in a.meta["vessels"]]


def test_drawn_properties_lie_in_their_ranges_and_vary():
    draws = [draw_cohort(seed) for seed in range(60)]
    opts = [d.options for d in draws]
    checks = {
        "heart_scale": [o.heart_scale for o in opts],
        "chest_to_heart": [o.body_scale / o.heart_scale for o in opts],
        "spacing_xy_mm": [d.spacing_mm[1] for d in draws],
        "spacing_z_mm": [d.spacing_mm[0] for d in draws],
        "z_margin_mm": [m for d in draws for m in d.z_margins_mm],
        "centre_jitter_mm": [j for d in draws for j in d.centre_jitter_mm],
        "blood_hu": [o.blood_hu for o in opts],
        "noise_sd_hu": [o.noise_sd_hu for o in opts],
        "grain_z_mm": [o.noise_grain_mm[0] for o in opts],
        "grain_xy_mm": [o.noise_grain_mm[1] for o in opts],
        "psf_z_mm": [o.psf_sigma_mm[0] for o in opts],
        "psf_xy_mm": [o.psf_sigma_mm[1] for o in opts],
        "n_stenoses": [o.n_stenoses for o in opts],
        "n_calcified": [o.n_calcified for o in opts],
        "n_stents": [o.n_stents for o in opts],
    }
    for name, values in checks.items():
        lo, hi = COHORT_RANGES[name]
        assert all(_inside(v, name) for v in values), name
        assert max(values) - min(values) >= 0.6 * (hi - lo), name  # spread over the range, not stuck
    for name in ("n_stenoses", "n_calcified", "n_stents"):
        assert min(checks[name]) == 0, name
    assert set(checks["n_stenoses"]) == {0, 1, 2, 3, 4} and set(checks["n_stents"]) == {0, 1, 2}
    assert {o.dominance for o in opts} == {"right", "left", "co"}
    assert sum(o.dominance == "right" for o in opts) > 30
    assert all(o.severity_range == COHORT_RANGES["severity"] for o in opts)
    assert all(d.fov_xy_mm == pytest.approx(512 * d.spacing_mm[1]) for d in draws)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_rendered_tiny_cases_follow_their_draws(seed):
    ph = make_phantom(seed=seed, cohort=True, matrix=TINY)
    draw, m = draw_cohort(seed), ph.meta
    factor = 512 / TINY
    # the scaled-down variant: real spacing x 512/matrix, the drawn field of view
    assert ph.image.shape[1:] == (TINY, TINY)
    np.testing.assert_allclose(ph.spacing, np.asarray(draw.spacing_mm) * factor)
    assert _inside(ph.spacing[1], "spacing_xy_mm", factor) and _inside(ph.spacing[0], "spacing_z_mm", factor)
    assert m["field_of_view_mm"][1] == pytest.approx(draw.fov_xy_mm, abs=0.01)
    pts = np.concatenate([v.points_ras for v in ph.truth.vessels])
    tree_z = pts[:, 2].max() - pts[:, 2].min()
    margins = sum(draw.z_margins_mm)
    assert abs(m["field_of_view_mm"][0] - (tree_z + margins)) <= ph.spacing[0] / 2 + 0.01  # coverage: tree + margins
    assert m["hu"]["blood"] == pytest.approx(draw.options.blood_hu, abs=0.1)
    assert m["dominance"] == draw.options.dominance
    assert len(m["stenoses"]) == draw.options.n_stenoses
    assert len(m["calcified_plaques"]) == draw.options.n_calcified
    assert len(m["stents"]) <= draw.options.n_stents
    assert all(25.0 <= s.severity_pct <= 90.0 for s in ph.truth.stenoses)
    assert all(500 <= p["hu"] <= 1500 for p in m["calcified_plaques"])
    # noise: the same case without noise differs by the drawn std (away from the CT range clip)
    quiet = make_phantom(seed=seed, cohort=True, matrix=TINY, options=PhantomOptions(noise_sd_hu=0.0))
    np.testing.assert_array_equal(quiet.label, ph.label)
    keep = (np.abs(quiet.image) < 1000) & (ph.image > -1024) & (ph.image < 3071)
    assert float((ph.image - quiet.image)[keep].std()) == pytest.approx(draw.options.noise_sd_hu, rel=0.05)
    # contrast: the noiseless left-ventricular blood pool sits at the drawn blood HU
    lv = quiet.tissue == T["lv_blood"]
    assert lv.sum() > 0
    assert float(np.median(quiet.image[lv])) == pytest.approx(draw.options.blood_hu, abs=40)


def test_matrix_scales_the_same_patient():
    a = make_phantom(seed=7, cohort=True, matrix=TINY)
    b = make_phantom(seed=7, cohort=True, matrix=2 * TINY)
    np.testing.assert_allclose(np.asarray(a.spacing), 2 * np.asarray(b.spacing))
    np.testing.assert_allclose(a.meta["field_of_view_mm"][1:], b.meta["field_of_view_mm"][1:])
    assert abs(a.meta["field_of_view_mm"][0] - b.meta["field_of_view_mm"][0]) <= a.spacing[0]
    for va, vb in zip(a.truth.vessels, b.truth.vessels, strict=True):  # the same vessels in the same world mm
        np.testing.assert_allclose(va.points_ras, vb.points_ras, atol=a.spacing[0] / 2)
    # the labels lie in the same place (the world centroid of each agrees within a coarse voxel)
    centroids = [np.argwhere(p.label)[:, ::-1].mean(0) @ p.affine[:3, :3].T + p.affine[:3, 3] for p in (a, b)]
    assert np.all(np.abs(centroids[0] - centroids[1]) < np.asarray(a.spacing)[::-1])


def test_explicit_spacing_or_shape_keeps_the_drawn_field_of_view():
    drawn = make_phantom(seed=8, cohort=True, matrix=TINY)
    fov = np.asarray(drawn.meta["field_of_view_mm"])
    at_spacing = make_phantom(spacing=(6.0, 5.0, 5.0), seed=8, cohort=True)
    np.testing.assert_allclose(np.asarray(at_spacing.label.shape) * (6.0, 5.0, 5.0), fov, atol=6.0)
    on_matrix = make_phantom(shape=(12, 40, 40), seed=8, cohort=True)
    np.testing.assert_allclose(np.asarray(on_matrix.spacing) * (12, 40, 40), fov, atol=drawn.spacing[0])
    for other in (at_spacing, on_matrix):  # the same patient, the volume centred on world RAS 0 as drawn
        for va, vb in zip(drawn.truth.vessels, other.truth.vessels, strict=True):
            np.testing.assert_allclose(va.points_ras, vb.points_ras, atol=drawn.spacing[0] / 2)


def _ray_exit(tissue: np.ndarray, spacing, origin_idx: np.ndarray, direction: np.ndarray, codes, max_mm: float
              ) -> float:
    """Distance (mm) from ``origin_idx`` (z, y, x voxel) along ``direction`` (unit, mm (z, y, x)) to the first voxel
    whose tissue is not in ``codes``."""
    sp = np.asarray(spacing)
    for t in np.arange(0.0, max_mm, 0.1):
        idx = np.rint(origin_idx + t * direction / sp).astype(int)
        if np.any(idx < 0) or np.any(idx >= tissue.shape) or tissue[tuple(idx)] not in codes:
            return float(t)
    return max_mm


@pytest.fixture(scope="module")
def real_heart():
    """A cohort heart on a 1-mm grid that holds the whole coronary tree."""
    return make_phantom((100, 144, 144), (1.0, 1.0, 1.0), seed=4, cohort=True, options=PhantomOptions(n_stenoses=0))


def test_real_size_heart_measured_on_the_maps(real_heart):
    ph, m = real_heart, real_heart.meta
    k = m["heart_scale"]
    assert _inside(k, "heart_scale")
    centre = (np.asarray(ph.image.shape) - 1) / 2
    heart = m["lv_center_mm"], np.asarray(m["lv_long_axis"])
    lv_idx = centre + np.asarray(heart[0]) / np.asarray(ph.spacing)
    # left-ventricular long semi-axis: from the LV centre along the base->apex axis to the epicardium
    apex = _ray_exit(ph.tissue, ph.spacing, lv_idx, heart[1], (T["lv_blood"], T["myocardium"]), 80.0)
    assert apex == pytest.approx(27.0 * k, abs=1.5)
    assert 40.0 <= apex <= 52.0  # a real left ventricle (~45 mm), not the legacy ~27 mm
    # aortic root: lumen radius (median over directions) 7.5 k, wall 1 k: outer radius 8.5 k
    root_idx = centre + np.asarray(m["aortic_root_center_mm"]) / np.asarray(ph.spacing)
    dirs = np.array([d for d in np.ndindex(3, 3, 3) if d != (1, 1, 1)], dtype=float) - 1.0
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    lumen = np.median([_ray_exit(ph.tissue, ph.spacing, root_idx, d, (T["blood"], T["lv_blood"]), 40.0)
                       for d in dirs])
    assert lumen == pytest.approx(7.5 * k, abs=1.5)
    assert 11.0 <= lumen + k <= 17.0 and m["aortic_root_radius_mm"] == pytest.approx(8.5 * k, abs=0.01)


def test_real_size_coronaries_measured_on_the_label(real_heart):
    ph = real_heart
    dense = np.concatenate([v.points_ras for v in ph.truth.vessels])
    owner = np.concatenate([[i] * len(v.points_ras) for i, v in enumerate(ph.truth.vessels)])
    arc = np.concatenate([np.r_[0, np.cumsum(np.linalg.norm(np.diff(v.points_ras, axis=0), axis=1))]
                          for v in ph.truth.vessels])
    idx = np.argwhere(ph.label > 0)
    ras = idx[:, ::-1] @ ph.affine[:3, :3].T + ph.affine[:3, 3]
    _, nearest = cKDTree(dense).query(ras)  # each lumen voxel belongs to its nearest centreline sample
    for name in ("LAD", "RCA"):
        i = next(j for j, v in enumerate(ph.truth.vessels) if v.name == name)
        v = ph.truth.vessels[i]
        seg = (arc >= 3.0) & (arc <= 15.0) & (owner == i)
        volume = int(seg[nearest].sum()) * float(np.prod(ph.spacing))
        r_label = np.sqrt(volume / (np.pi * 12.0))  # a 12-mm tube of that volume
        r_truth = float(np.mean(v.radius_mm[seg[owner == i]]))
        assert 1.3 <= v.reference_radius_mm[0] <= 2.3  # proximal radius of a real coronary
        assert r_label == pytest.approx(r_truth, rel=0.15), name


def test_body_size_measured_on_a_wide_field_of_view():
    for seed in (0, 1):
        ph = make_phantom((8, 110, 110), (4.0, 4.0, 4.0), seed=seed, cohort=True)
        body = ph.tissue[4] != T["air"]
        width = body.sum(axis=1).max() * 4.0  # widest left-right run
        depth = body.sum(axis=0).max() * 4.0
        s = ph.meta["body_scale"]
        assert width == pytest.approx(116.0 * s, abs=8.0) and depth == pytest.approx(102.0 * s, abs=8.0)
        assert 200.0 <= width <= 370.0


def _acf_length(noise: np.ndarray, axis: int, spacing: float) -> float:
    """1/e correlation length (mm) of ``noise`` along ``axis``, linear between lags."""
    x = noise - noise.mean()
    var = float((x * x).mean())
    acf = [1.0]
    for lag in range(1, 12):
        a = np.take(x, range(lag, x.shape[axis]), axis=axis)
        b = np.take(x, range(0, x.shape[axis] - lag), axis=axis)
        acf.append(float((a * b).mean()) / var)
    acf = np.asarray(acf)
    j = int(np.argmax(acf < np.exp(-1)))
    return spacing * (j - 1 + (acf[j - 1] - np.exp(-1)) / (acf[j - 1] - acf[j]))


def test_noise_std_and_correlation_length():
    spacing, grain, sd = (0.4, 0.4, 0.4), (0.4, 0.6), 30.0
    image = np.zeros((40, 96, 96), dtype=np.float32)
    add_ct_noise(image, spacing, sd, seed=9, tick=lambda _: None, grain_mm=grain, stream=4)
    assert float(image[6:-6, 8:-8, 8:-8].std()) == pytest.approx(sd, rel=0.04)  # away from the mirrored edges
    # Gaussian-filtered white noise: autocorrelation exp(-d^2 / (4 g^2)), 1/e at d = 2 g
    assert _acf_length(image, 2, 0.4) == pytest.approx(2 * grain[1], rel=0.12)
    assert _acf_length(image, 1, 0.4) == pytest.approx(2 * grain[1], rel=0.12)
    assert _acf_length(image, 0, 0.4) == pytest.approx(2 * grain[0], rel=0.12)
    # slab by slab with halos = the whole volume's white noise filtered at once
    rng = np.random.default_rng([9, 4])
    white = np.concatenate([rng.standard_normal((min(16, 40 - z0), 96, 96), dtype=np.float32)
                            for z0 in range(0, 40, 16)])
    sig = np.asarray(grain)[[0, 1, 1]] / 0.4
    gain = sd / np.prod([gaussian_std_factor(s) for s in sig])
    np.testing.assert_allclose(image, ndimage.gaussian_filter(white, sig) * gain, atol=1e-3)


def test_stent_adds_metal_near_its_segment_only():
    opts = PhantomOptions(n_stents=1, n_stenoses=0)
    with_stent = make_phantom(seed=2, cohort=True, matrix=128, options=opts)
    without = make_phantom(seed=2, cohort=True, matrix=128, options=replace(opts, n_stents=0))
    np.testing.assert_array_equal(with_stent.label, without.label)  # the stented lumen stays lumen
    assert len(with_stent.truth.stents) == 1
    st = with_stent.truth.stents[0]
    assert 8.0 <= st.length_mm <= 28.0 and st.radius_mm >= 1.1
    diff = with_stent.image - without.image
    changed = np.argwhere(np.abs(diff) > 1.0)
    ras = changed[:, ::-1] @ with_stent.affine[:3, :3].T + with_stent.affine[:3, 3]
    vessel = next(v for v in with_stent.truth.vessels if v.name == st.vessel and v.tree == st.tree)
    arc = np.r_[0, np.cumsum(np.linalg.norm(np.diff(vessel.points_ras, axis=0), axis=1))]
    segment = vessel.points_ras[(arc >= st.start_mm) & (arc <= st.end_mm)]
    dist, _ = cKDTree(segment).query(ras)
    assert dist.max() < st.radius_mm + 4 * max(with_stent.spacing)  # metal, blurred, around the segment only
    assert float(diff.max()) > 100.0


def test_cohort_truth_in_world_ras_mm():
    ph = make_phantom(seed=3, cohort=True, matrix=128, options=PhantomOptions(n_stenoses=3))
    inv = np.linalg.inv(ph.affine)
    near = ndimage.binary_dilation(ph.label, np.ones((3, 3, 3)))
    hits = []
    for v in ph.truth.vessels:
        idx = np.rint((v.points_ras @ inv[:3, :3].T + inv[:3, 3])[:, ::-1]).astype(int)
        inside = np.all((idx >= 0) & (idx < ph.label.shape), axis=1)
        assert inside.mean() > 0.9  # the field of view is centred on the tree
        hits.append(ph.label[tuple(idx[inside].T)])
        assert near[tuple(idx[inside].T)].all()
    assert np.concatenate(hits).mean() > 0.98
    assert len(ph.truth.stenoses) == 3
    for s, m in zip(ph.truth.stenoses, ph.meta["stenoses"], strict=True):
        np.testing.assert_allclose(s.center_ras_mm, m["center_ras_mm"], atol=0.02)
        np.testing.assert_allclose(m["center_ras_mm"], [-m["center_mm"][2], -m["center_mm"][1], m["center_mm"][0]],
                                   atol=0.02)
        assert 1.0 - s.min_diameter_mm / s.reference_diameter_mm == pytest.approx(m["severity"], abs=0.02)
    data = json.loads(json.dumps(ph.truth.to_dict()))
    assert {v["anatomical_name"] for v in data["vessels"]} >= {"LM", "LAD", "LCX", "RCA"}
    assert data["stents"] == [] or set(data["stents"][0]) >= {"start_ras_mm", "end_ras_mm", "radius_mm"}


def test_dominance_option_builds_the_trees():
    names = {}
    for kind in ("right", "left", "co"):
        ph = make_phantom(seed=1, cohort=True, matrix=TINY, options=PhantomOptions(dominance=kind))
        names[kind] = {(v.name, v.tree) for v in ph.truth.vessels}
        assert ph.meta["dominance"] == kind
    assert ("PDA", "right") in names["right"] and ("PDA", "left") not in names["right"]
    assert ("PDA", "left") in names["left"] and ("PDA", "right") not in names["left"]
    assert ("PDA", "right") in names["co"] and ("PDA", "left") not in names["co"]


def _left_main_chord_mm(ph) -> float:
    lm = next(v for v in ph.truth.vessels if v.name == "LM")
    return float(np.linalg.norm(lm.points_ras[-1] - lm.points_ras[0]))


def test_cohort_left_main_is_5_to_10_mm_and_the_loop_stays_available():
    """The cohort preset draws the left main 5-10 mm from the aortic root to its division (an adult's length);
    LOOPED_LEFT_MAIN gives the legacy generator's short loop; only the left tree's division moves."""
    chords = []
    for seed in (0, 1, 2, 3):
        drawn = make_phantom(seed=seed, cohort=True, matrix=TINY)
        loop = make_phantom(seed=seed, cohort=True, matrix=TINY, options=PhantomOptions(left_main_mm=LOOPED_LEFT_MAIN))
        chords.append(_left_main_chord_mm(drawn))
        assert 5.0 - 0.1 <= chords[-1] <= 10.0 + 0.1  # the division is searched in 0.25 deg steps along the groove
        assert _left_main_chord_mm(loop) < 4.5
        assert [(s.vessel, s.severity_pct) for s in drawn.truth.stenoses] == [
            (s.vessel, s.severity_pct) for s in loop.truth.stenoses]
        assert drawn.spacing == loop.spacing and drawn.meta["hu"] == loop.meta["hu"]
    assert max(chords) - min(chords) > 1.0  # drawn per case
    with pytest.raises(Seg2RefineError, match="left_main_mm"):
        make_phantom(seed=0, cohort=True, matrix=TINY, options=PhantomOptions(left_main_mm="long"))


def test_legacy_volumes_unchanged_by_empty_options_and_options_change_single_draws():
    legacy = make_phantom(*SMALL, seed=3)
    same = make_phantom(*SMALL, seed=3, options=PhantomOptions())
    np.testing.assert_array_equal(same.image, legacy.image)
    np.testing.assert_array_equal(same.tissue, legacy.tissue)
    bright = make_phantom(*SMALL, seed=3, options=PhantomOptions(blood_hu=550.0))
    np.testing.assert_array_equal(bright.tissue, legacy.tissue)
    np.testing.assert_array_equal(bright.label, legacy.label)
    lv = ndimage.binary_erosion(legacy.tissue == T["lv_blood"], iterations=2)
    gain = float(np.mean(bright.image[lv] - legacy.image[lv]))
    assert gain == pytest.approx(550.0 - legacy.meta["hu"]["blood"], rel=0.05)


@pytest.mark.parametrize("kwargs", [{"matrix": 64}, {"cohort": True, "matrix": 64, "shape": (16, 32, 32)},
                                    {"cohort": True, "matrix": 4},
                                    {"options": PhantomOptions(dominance="both")},
                                    {"options": PhantomOptions(n_stents=-1)},
                                    {"options": PhantomOptions(noise_grain_mm=(0.5,))},
                                    {"cohort": True, "options": PhantomOptions(severity_range=(0.5, 0.2))}])
def test_bad_cohort_arguments_raise(kwargs):
    with pytest.raises(Seg2RefineError):
        make_phantom(**kwargs)


def test_cli_cohort_writes_drawn_cases(tmp_path, capsys):
    out = tmp_path / "cohort"
    rc = main(["phantom", "--out", str(out), "--cohort", "--matrix", str(TINY), "--count", "2", "--seed", "40",
               "--truth"])
    assert rc == 0
    shapes = []
    for i, seed in ((1, 40), (2, 41)):
        img = nib.load(out / f"{i}.img.nii.gz")
        ph = make_phantom(seed=seed, cohort=True, matrix=TINY)
        assert img.shape == ph.image.shape[::-1]
        np.testing.assert_allclose(img.header.get_zooms(), ph.spacing[::-1], rtol=1e-5)
        shapes.append(img.shape)
        truth = json.loads((out / f"{i}.truth.json").read_text())
        assert "stents" in truth
    assert shapes[0][:2] == shapes[1][:2] == (TINY, TINY)
    assert "wrote 2 case(s)" in capsys.readouterr().out
    assert main(["phantom", "--out", str(tmp_path / "x"), "--matrix", "64"]) == 2
    assert "--matrix" in capsys.readouterr().err
    assert main(["phantom", "--out", str(tmp_path / "loop"), "--cohort", "--matrix", str(TINY), "--seed", "40",
                 "--left-main-mm", "loop"]) == 0
    label = np.asarray(nib.load(tmp_path / "loop" / "1.label.nii.gz").dataobj).transpose(2, 1, 0)
    loop = make_phantom(seed=40, cohort=True, matrix=TINY, options=PhantomOptions(left_main_mm=LOOPED_LEFT_MAIN))
    np.testing.assert_array_equal(label, loop.label)


def test_sample_data_seed_was_never_trained_on():
    from napari_seg2refine import _sample_data

    weights = Path(__file__).resolve().parents[1] / "src" / "seg2refine_core" / "weights"
    for path in sorted(weights.glob("*.json")):
        meta = json.loads(path.read_text())
        data = meta["training"]["demo_weights"]["data"]  # "synthetic phantoms, seeds 0-17, ..."
        lo, hi = (int(v) for v in re.search(r"seeds (\d+)-(\d+)", data).groups())
        assert not lo <= _sample_data.SAMPLE_SEED <= hi, path.name
