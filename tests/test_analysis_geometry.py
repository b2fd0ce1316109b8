"""Vessel analysis on analytic tubes: radii, lengths, a known narrowing, branching, anisotropic spacing, CPR."""

import cc3d
import numpy as np
import pytest

from seg2refine_core.analysis import analyze_mask
from seg2refine_core.analysis.centerline import centerline_graphs
from seg2refine_core.analysis.cpr import straighten
from seg2refine_core.analysis.naming import name_trees
from seg2refine_core.analysis.report import summary
from seg2refine_core.analysis.sides import HEART_AXIS_RAS, ras_direction_in_array_mm
from seg2refine_core.analysis.stenosis import (
    FINET_RATIO,
    StenosisOptions,
    find_stenoses,
    finet_reference,
    left_main_stenosis,
    reference_diameter,
)
from seg2refine_core.analysis.trees import Branch, Tree, build_trees


def tube_mask(shape, spacing, pieces):
    """Lumen mask (z, y, x) of the union of capsules (tubes with rounded ends, one radius beyond each end point);
    pieces: (start mm, end mm, radius at start, radius at end, and optionally a function of the fraction along the
    piece returning a radius factor). Positions are mm (z, y, x) from voxel (0, 0, 0)."""
    sp = np.asarray(spacing, float)
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, sp, strict=True)], indexing="ij"), -1)
    mask = np.zeros(shape, dtype=bool)
    for piece in pieces:
        a, b, r0, r1 = (np.asarray(piece[0], float), np.asarray(piece[1], float), piece[2], piece[3])
        factor = piece[4] if len(piece) > 4 else (lambda t: 1.0)
        d = b - a
        t = np.clip(((grid - a) @ d) / (d @ d), 0.0, 1.0)
        dist = np.linalg.norm(grid - (a + t[..., None] * d), axis=-1)
        mask |= dist <= (r0 + t * (r1 - r0)) * factor(t)
    return mask


@pytest.mark.parametrize(("radius", "spacing", "direction"), [
    (1.0, (0.5, 0.5, 0.5), (1, 0, 0)),
    (1.5, (0.5, 0.5, 0.5), (1, 1, 0)),
    (2.0, (0.7, 0.7, 0.7), (0.3, 1, 0.5)),
    (1.5, (1.0, 0.5, 0.5), (1, 1, 1)),
])
def test_straight_tube_radius_diameter_and_length(radius, spacing, direction):
    u = np.asarray(direction, float) / np.linalg.norm(direction)
    centre = np.array([15.0, 15.0, 15.0])
    a, b = centre - 12 * u, centre + 12 * u
    shape = tuple(int(30 / s) + 1 for s in spacing)
    analysis = analyze_mask(tube_mask(shape, spacing, [(a, b, radius, radius)]), spacing)
    assert len(analysis.branches) == 1
    br = analysis.branches[0]
    ok = br.reliable
    assert ok.sum() > 10
    # inscribed radius (distance transform, 3x3x3 maximum) and the cross-section's equivalent diameter
    assert np.median(br.radius_mm[ok]) == pytest.approx(radius, abs=0.3)
    # within 0.25 mm at isotropic voxels; a tube oblique to 1 mm slices reads ~0.3 mm wide (the 0.5 level of the
    # trilinear interpolation between voxel centres 1 mm apart)
    assert np.median(br.diameter_mm[ok]) == pytest.approx(2 * radius, abs=0.25 if len(set(spacing)) == 1 else 0.4)
    # the centerline reaches both tips (24 mm plus a rounded cap of one radius at each end) to within about a voxel
    # at each: the last voxel centre inside an oblique rounded tip lies up to a voxel diagonal short of it
    assert br.length_mm == pytest.approx(24.0 + 2 * radius, abs=1.0 + 2.5 * max(spacing))
    assert analysis.to_dict()["branches"][0]["tortuosity"] == pytest.approx(1.0, abs=0.05)
    assert analysis.stenoses == []


def test_even_thickness_bar_is_not_lost():
    """scikit-image's 3D thinning deletes a 2 x 2 bar entirely (its issue #3757); the repair keeps it."""
    mask = np.zeros((30, 12, 12), dtype=bool)
    mask[5:25, 4:6, 4:6] = True
    from skimage.morphology import skeletonize

    assert not skeletonize(mask).any()  # the library's behaviour this works around
    graphs = centerline_graphs(mask, (1.0, 1.0, 1.0))
    assert len(graphs) == 1 and graphs[0].length_mm == pytest.approx(19.0, abs=1.0)
    # a T whose thin side branch has an even cross-section is eaten back to the junction by thinning alone
    t = np.zeros((40, 40, 12), dtype=bool)
    t[5:35, 17:22, 4:9] = True  # 5 x 5 trunk
    t[20:22, 22:36, 5:7] = True  # 2 x 2 side bar, 14 voxels
    analysis = analyze_mask(t, (1.0, 1.0, 1.0))
    lengths = sorted(b.length_mm for b in analysis.branches)
    assert len(lengths) == 2 and lengths[0] > 10.0


OBLIQUE = np.array([0.2, 0.4, 1.0]) / np.linalg.norm([0.2, 0.4, 1.0])  # a tube axis along no grid axis


def gaussian_narrowing(length: float, at: float, sigma: float, severity: float):
    """Radius factor along a tube of ``length`` mm (t in [0, 1]): a Gaussian narrowing of ``severity`` at ``at`` mm."""
    return lambda t: 1.0 - severity * np.exp(-0.5 * ((t * length - at) / sigma) ** 2)


def test_tube_with_a_known_narrowing():
    """A tapering tube (1.6 -> 1.3 mm) with a 60 % Gaussian narrowing 25 mm from its wide end."""
    spacing, u, a = (0.5, 0.5, 0.5), OBLIQUE, np.array([8.0, 8.0, 5.0])
    length, at = 50.0, 25.0
    shape = (int(24 / 0.5), int(36 / 0.5), int(60 / 0.5))
    mask = tube_mask(shape, spacing, [(a, a + length * u, 1.6, 1.3, gaussian_narrowing(length, at, 2.5, 0.6))])
    analysis = analyze_mask(mask, spacing)
    assert len(analysis.branches) == 1
    assert analysis.trees[0].root_voxel @ u * 0.5 < (a @ u) + 3.0  # the ostium is the wide end
    (s,) = analysis.stenoses
    centre = analysis.branches[0].voxels[s.index] * 0.5
    assert np.linalg.norm(centre - (a + at * u)) < 2.0
    assert s.arc_mm == pytest.approx(at + 1.6, abs=2.0)  # from the tip of the rounded wide end
    assert s.severity_pct == pytest.approx(60.0, abs=10.0)
    assert s.grade == "moderate"
    assert s.reference_diameter_mm == pytest.approx(2 * (1.6 - 0.3 * at / length), abs=0.3)
    # the narrowing's full width at half maximum is 2.355 sigma = 5.9 mm; half the severity is reached earlier
    assert 2.0 < s.length_mm < 8.0


def test_ostial_narrowing_takes_the_distal_reference():
    """A tube cut bluntly at its origin (the aortic wall) whose 60 % narrowing starts there (centre 1.5 mm in,
    sigma 2.5 mm): the ostium stays at the cut although the widest lumen lies past the lesion, and the lesion is
    graded against the distal healthy segment alone (clinical QCA's rule for an ostial lesion)."""
    spacing, u, a = (0.5, 0.5, 0.5), OBLIQUE, np.array([8.0, 8.0, 5.0])
    length, at = 45.0, 1.5
    shape = (48, 72, 120)
    mask = tube_mask(shape, spacing, [(a, a + length * u, 1.8, 1.3, gaussian_narrowing(length, at, 2.5, 0.6))])
    grid = np.stack(np.meshgrid(*[np.arange(n) * 0.5 for n in shape], indexing="ij"), -1)
    mask &= (grid - a) @ u >= 0.0  # no cap at the ostium: the lumen is cut at the aortic wall
    analysis = analyze_mask(mask, spacing)
    (br,) = analysis.branches
    assert (analysis.trees[0].root_voxel * 0.5 - a) @ u < 2.0  # the ostium is the cut, not the far tip
    (s,) = analysis.stenoses
    assert (br.voxels[s.index] * 0.5 - a) @ u == pytest.approx(at, abs=1.5)
    assert s.arc_mm < 3.0
    assert s.severity_pct == pytest.approx(60.0, abs=10.0) and s.grade == "moderate"
    # the reference is the healthy lumen 3-11 mm distal to the lesion (diameter 3.6 -> 3.3 mm there)
    healthy = 2 * (1.8 - 0.5 * (at + 7.0) / length)
    assert s.reference_diameter_mm == pytest.approx(healthy, abs=0.3)


def test_branching_tube_known_lengths():
    """A 40 mm trunk (r 1.5) and a 25 mm side branch (r 1.0) leaving 15 mm from its start at 60 degrees."""
    spacing = (0.5, 0.5, 0.5)
    start = np.array([10.0, 10.0, 5.0])
    along = np.array([0.0, 0.0, 1.0])
    fork = start + 15.0 * along
    side = np.array([0.0, np.sin(np.radians(60)), np.cos(np.radians(60))])
    mask = tube_mask((44, 70, 100), spacing, [(start, start + 40 * along, 1.5, 1.5),
                                               (fork, fork + 25 * side, 1.0, 1.0)])
    analysis = analyze_mask(mask, spacing)
    assert len(analysis.branches) == 2
    trunk, branch = sorted(analysis.branches, key=lambda b: -b.length_mm)
    assert trunk.parent is None and branch.parent == trunk.id
    assert trunk.length_mm == pytest.approx(40.0 + 2 * 1.5, abs=1.5)  # rounded ends add a radius each
    assert trunk.arc_mm[branch.origin] == pytest.approx(15.0 + 1.5, abs=1.5)
    # a side branch starts at its parent's wall (1.5 / sin 60 deg from the trunk's axis) and has a rounded tip
    assert branch.length_mm == pytest.approx(25.0 - 1.5 / np.sin(np.radians(60)) + 1.0, abs=2.0)
    report = {b["id"]: b for b in analysis.to_dict()["branches"]}
    assert report[trunk.id]["tortuosity"] == pytest.approx(1.0, abs=0.05)
    assert report[branch.id]["mean_diameter_mm"] == pytest.approx(2.0, abs=0.3)
    assert report[trunk.id]["mean_diameter_mm"] == pytest.approx(3.0, abs=0.3)
    assert analysis.stenoses == []


def test_anisotropic_spacing_and_world_coordinates():
    """A tube along the array's z axis at 2.0 x 0.5 x 0.5 mm: swapping the spacing's axes changes every answer;
    world positions go through the affine's (x, y, z) -> RAS mapping."""
    spacing = (2.0, 0.5, 0.5)
    a, b = np.array([6.0, 8.0, 8.0]), np.array([66.0, 8.0, 8.0])  # 60 mm along z, radius 1.5 mm
    mask = tube_mask((37, 33, 33), spacing, [(a, b, 1.6, 1.4)])
    # an affine that flips x and y (as DICOM-derived NIfTI does) and shifts the origin
    affine = np.array([[-0.5, 0, 0, 100.0], [0, -0.5, 0, 50.0], [0, 0, 2.0, -30.0], [0, 0, 0, 1]])
    right = analyze_mask(mask, spacing, affine)
    (br,) = right.branches
    assert br.length_mm == pytest.approx(60.0 + 1.6 + 1.4, abs=3.5)  # +- one 2 mm slice at the tips
    assert np.median(br.diameter_mm[br.reliable]) == pytest.approx(3.0, abs=0.4)
    swapped = analyze_mask(mask, spacing[::-1])
    assert abs(sum(b.length_mm for b in swapped.branches) - 63.0) > 20.0
    # the ostium is the wide end (z = 6 mm, voxel 3) and maps through the affine: RAS = A @ (x, y, z, 1)
    z, y, x = right.trees[0].root_voxel
    assert z <= 4
    expected = affine @ np.array([x, y, z, 1.0])
    report = right.to_dict()
    np.testing.assert_allclose(report["trees"][0]["ostium_mm"], expected[:3], atol=0.01)
    assert report["trees"][0]["ostium_mm"][0] == pytest.approx(100.0 - 0.5 * 16, abs=1.0)  # x index 16 flipped
    np.testing.assert_allclose(report["branches"][0]["points_mm"][0], expected[:3], atol=0.01)


def test_cpr_straightens_the_lumen():
    spacing = (0.5, 0.5, 0.5)
    a, b = np.array([8.0, 6.0, 6.0]), np.array([14.0, 20.0, 30.0])
    mask = tube_mask((44, 52, 72), spacing, [(a, b, 1.5, 1.5)])
    image = np.where(mask, 400.0, -50.0).astype(np.float32)
    (br,) = analyze_mask(mask, spacing).branches
    cpr = straighten(image, spacing, br.voxels, mask=mask, half_width_mm=5.0)
    assert cpr.image.shape == cpr.lumen.shape == (len(cpr.arc_mm), len(cpr.offset_mm))
    assert cpr.arc_mm[-1] == pytest.approx(br.length_mm, abs=1.0)
    middle = cpr.image[len(cpr.arc_mm) // 4 : 3 * len(cpr.arc_mm) // 4]
    centre = np.argmin(np.abs(cpr.offset_mm))
    assert middle[:, centre].min() > 300.0 and middle[:, 0].max() < 0.0  # lumen in the middle, background aside
    width = (cpr.lumen[len(cpr.arc_mm) // 2] >= 0.5).sum() * (cpr.offset_mm[1] - cpr.offset_mm[0])
    assert width == pytest.approx(3.0, abs=0.6)


def _two_trees_touching(far_end_radius: float = 2.0, tip_radius: float = 0.6):
    """Two tubes from two blunt ends 22 mm apart on one side of the box (two ostia on the aortic root), each running
    42 mm away from them and turning towards the other, tapering to ``tip_radius`` where their tips meet: one
    connected component. The second tube's blunt end has ``far_end_radius``."""
    spacing = (0.5, 0.5, 0.5)
    z = 5.0
    pieces = [((z, 8.0, 14.0), (z, 50.0, 14.0), 2.0, 1.0 + tip_radius / 2), ((z, 50.0, 14.0), (z, 50.0, 24.5),
                                                                           1.0 + tip_radius / 2, tip_radius),
              ((z, 8.0, 36.0), (z, 50.0, 36.0), far_end_radius, 1.0 + tip_radius / 2),
              ((z, 50.0, 36.0), (z, 50.0, 25.5), 1.0 + tip_radius / 2, tip_radius)]
    mask = tube_mask((20, 110, 100), spacing, pieces)
    mask[:, : int(8.0 / 0.5)] = False  # blunt ostia: the lumen is cut at the aortic wall
    return mask, spacing


def test_two_trees_touching_in_the_mask_are_split_at_their_neck():
    """A component holding two trees (the LCX's end against the RCA's, as in co-dominant hearts) gets two ostia,
    two sides, and every centerline point on the tree of the tube it lies in; the old analysis gave one tree."""
    mask, spacing = _two_trees_touching()
    assert cc3d.connected_components(mask, connectivity=26, return_N=True)[1] == 1
    analysis = analyze_mask(mask, spacing)
    assert len(analysis.trees) == 2
    ostia_x = sorted(float(t.root_voxel[2]) * 0.5 for t in analysis.trees)
    assert ostia_x == [pytest.approx(14.0, abs=1.5), pytest.approx(36.0, abs=1.5)]
    assert all(t.root_voxel[1] * 0.5 < 10.0 for t in analysis.trees)  # the ostia are the blunt cuts
    # the default affine maps array x to RAS x: the tree at smaller x lies to the patient's left
    left = next(t for t in analysis.trees if t.side == "left")
    assert left.root_voxel[2] * 0.5 == pytest.approx(14.0, abs=1.5)
    assert {t.side for t in analysis.trees} == {"left", "right"}
    for b in analysis.branches:  # the cut lies within 5 mm of where the tips meet (x = 25 mm, y = 50 mm)
        x = b.voxels[:, 2] * 0.5
        far = np.linalg.norm(b.voxels[:, 1:] * 0.5 - [50.0, 25.0], axis=1) > 5.0
        own = x < 25.0 if analysis.trees[b.tree].side == "left" else x > 25.0
        assert own[far].all()
    assert sum(b.length_mm for b in analysis.branches) > 0.9 * 2 * (42.0 + 10.5)


def test_two_trees_touching_twice_are_split_by_two_cuts():
    """The same two trees with a second contact 10 mm before the first (a thin branch of each, tips meeting): the
    first cut leaves them joined through the other contact, the second cut, made on the lumen the first one left,
    parts them (each cut was made on the whole mask before, and the second undid the first: one tree)."""
    mask, spacing = _two_trees_touching()
    z = 5.0
    mask |= tube_mask(mask.shape, spacing, [((z, 40.0, 14.0), (z, 40.0, 24.5), 0.8, 0.6),
                                            ((z, 40.0, 36.0), (z, 40.0, 25.5), 0.8, 0.6)])
    mask[:, : int(8.0 / 0.5)] = False
    assert cc3d.connected_components(mask, connectivity=26, return_N=True)[1] == 1
    analysis = analyze_mask(mask, spacing)
    assert sorted(t.side for t in analysis.trees) == ["left", "right"]
    for t in analysis.trees:
        x = 14.0 if t.side == "left" else 36.0
        assert np.linalg.norm(t.root_voxel * 0.5 - [z, 8.0, x]) < 1.5  # the blunt cuts
    for b in analysis.branches:  # the trunks, short of the contacts, lie on their own trees
        trunk = b.voxels[b.voxels[:, 1] * 0.5 < 35.0, 2] * 0.5
        assert (trunk < 25.0).all() if analysis.trees[b.tree].side == "left" else (trunk > 25.0).all()


@pytest.mark.parametrize(("far_end_radius", "tip_radius"), [(0.6, 0.6), (2.0, 1.4)])
def test_one_vessel_turning_back_is_not_split(far_end_radius, tip_radius):
    """The same shape is one vessel when its far end is narrow (no second ostium) or when it never narrows to half
    its ostia's width on the way (no neck between two trees)."""
    mask, spacing = _two_trees_touching(far_end_radius, tip_radius)
    analysis = analyze_mask(mask, spacing)
    assert len(analysis.trees) == 1


def test_vessels_narrower_than_a_slice_are_not_graded():
    """A 50 % narrowing in a 1.7 mm vessel is a candidate at 0.5 mm voxels and none at 2 mm slices, where the
    reference is below 0.9 slice (a binary mask cannot draw such a vessel thinner than a slice)."""
    arc = np.arange(0.0, 40.0, 0.5)
    diameter = 1.7 * (1.0 - 0.5 * np.exp(-0.5 * ((arc - 20.0) / 1.5) ** 2))
    branch = Branch(0, 0, np.zeros((len(arc), 3), dtype=np.int64), diameter / 2, arc, np.ones(len(arc), bool), None,
                    None, 40.0, diameter_mm=diameter)
    (s,) = find_stenoses(branch, StenosisOptions(), voxel_mm=0.5)
    assert s.severity_pct == pytest.approx(50.0, abs=3.0) and s.arc_mm == pytest.approx(20.0, abs=0.5)
    assert find_stenoses(branch, StenosisOptions(), voxel_mm=2.0) == []
    assert len(find_stenoses(branch, StenosisOptions(min_reference_voxels=0.0), voxel_mm=2.0)) == 1


@pytest.mark.parametrize(("voxel", "radius", "severity", "kept"), [
    (0.3, 0.6, 0.6, True), (0.3, 0.6, 0.2, False), (0.7, 0.6, 0.6, False), (0.25, 0.42, 0.6, True),
    (0.25, 0.3, 0.6, False)])
def test_small_vessel_narrowings_only_where_a_voxel_deep(voxel, radius, severity, kept):
    """A 1.2 mm vessel (under CAD-RADS' 1.5 mm) with a Gaussian narrowing (sigma 1.5 mm): at 0.3 mm voxels a 60 %
    lesion is 0.7 mm deep, over two voxels, and is reported as a small-vessel candidate (not graded); a 20 % dip
    is under a voxel deep, and at 0.7 mm voxels the 60 % lesion's 0.7 mm is one voxel at most and the mask draws
    it shallower: neither is kept. At 0.25 mm voxels a 60 % lesion in a 0.84 mm vessel (above ``small_vessel_mm``,
    0.75) is kept; in a 0.6 mm one it is not, however deep."""
    spacing, u, a = (voxel,) * 3, OBLIQUE, np.array([5.0, 5.0, 3.0])
    length = 24.0
    shape = tuple(int(n / voxel) for n in (14.0, 22.0, 32.0))
    mask = tube_mask(shape, spacing, [(a, a + length * u, radius, radius,
                                       gaussian_narrowing(length, 12.0, 1.5, severity))])
    analysis = analyze_mask(mask, spacing)
    if not kept:
        assert analysis.stenoses == []
        return
    (s,) = analysis.stenoses
    assert s.small_vessel and s.grade == "small vessel" and s.reference_diameter_mm < 1.5
    assert np.linalg.norm(analysis.branches[s.branch].voxels[s.index] * voxel - (a + 12.0 * u)) < 2.0
    assert s.severity_pct == pytest.approx(60.0, abs=15.0)
    report = analysis.to_dict()["stenoses"][0]
    assert report["small_vessel"] is True and report["grade"] == "small vessel"
    assert "(small vessel)" in summary(analysis)


def test_staircase_dips_of_a_thick_slice_mask_are_not_candidates():
    """A 2.2 mm tube rising 2 mm over 56 mm through 1.7 mm slices: the binary mask's staircase reads as 28 % dips no
    longer than a slice and 0.6 mm deep, under half the 1.7 mm voxel across the vessel, which step 5 drops. A 50 %
    narrowing (sigma 1.5 mm) of a 3.6 mm tube on the same course reads as short but 1.9 mm deep, and stays."""
    spacing, shape = (1.7, 0.7, 0.7), (17, 34, 91)
    a, b = np.array([10.0, 10.0, 4.0]), np.array([12.0, 14.0, 60.0])
    staircase = tube_mask(shape, spacing, [(a, b, 1.1, 1.1)])
    dips = analyze_mask(staircase, spacing, options=StenosisOptions(staircase_voxels=0.0)).stenoses
    assert dips and all(s.severity_pct < 50.0 and s.length_mm <= 1.7 for s in dips)
    assert analyze_mask(staircase, spacing).stenoses == []
    length = float(np.linalg.norm(b - a))
    lesion = tube_mask(shape, spacing, [(a, b, 1.8, 1.8, gaussian_narrowing(length, length / 2, 1.5, 0.5))])
    analysis = analyze_mask(lesion, spacing)
    (s,) = analysis.stenoses
    assert s.severity_pct == pytest.approx(50.0, abs=10.0) and s.length_mm <= 1.7
    centre = analysis.branches[[br.id for br in analysis.branches].index(s.branch)].voxels[s.index] * spacing
    assert np.linalg.norm(centre - (a + b) / 2) < 2.0


def test_a_dip_is_staircase_only_across_coarse_voxels_and_with_both_ends_measured():
    """The same 0.6 mm dip over two points in a 1.8 mm vessel at 1.7 x 0.7 x 0.7 mm voxels: dropped where the vessel
    runs in the slice plane (1.7 mm across it), a candidate where it runs across the slices (0.7 mm across it: the
    dip is more than half a voxel deep), and a candidate where it runs into an unmeasured point (its extent is
    unknown)."""
    spacing = (1.7, 0.7, 0.7)

    def branch(axis: int, reliable_after: bool = True) -> Branch:
        n = 40
        voxels = np.zeros((n, 3), dtype=np.int64)
        voxels[:, axis] = np.arange(n)
        diameter = np.full(n, 1.8)
        diameter[20:22] = 1.2
        reliable = np.ones(n, bool)
        reliable[22] = reliable_after
        arc = np.arange(n) * spacing[axis]
        return Branch(0, 0, voxels, diameter / 2, arc, reliable, None, None, float(arc[-1]), diameter_mm=diameter)

    (s,) = find_stenoses(branch(2), StenosisOptions(staircase_voxels=0.0), voxel_mm=1.7, spacing=spacing)
    assert s.severity_pct == pytest.approx(100 * (1 - 1.2 / 1.8), abs=1.0) and s.length_mm <= 1.7
    assert find_stenoses(branch(2), StenosisOptions(), voxel_mm=1.7, spacing=spacing) == []
    assert len(find_stenoses(branch(2), StenosisOptions(), voxel_mm=1.7)) == 1  # without the spacing: no rule
    assert len(find_stenoses(branch(0), StenosisOptions(), voxel_mm=1.7, spacing=spacing)) == 1
    assert len(find_stenoses(branch(2, reliable_after=False), StenosisOptions(), voxel_mm=1.7, spacing=spacing)) == 1


def test_vessel_heading_to_the_apex_keeps_its_course_past_a_local_bend():
    """An LAD-like vessel runs 30 mm towards the apex, bends for 8 mm (|cos| 0.4 to the heart's axis over its last
    5 mm, as a tortuous LAD does on the heart's surface) and divides: the continuation heads on to the apex (40 mm),
    a diagonal heads off it (25 mm). The vessel's course, not its last 5 mm, says it does not run round the heart,
    so it continues straight on into the continuation (the groove rule took the diagonal: cohort seeds 3003, 3010,
    3016 lost their distal LAD to a diagonal that way)."""
    spacing = (0.5, 0.5, 0.5)
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    apex = ras_direction_in_array_mm(HEART_AXIS_RAS, affine, spacing)
    p = np.cross(apex, [1.0, 0.0, 0.0])
    p /= np.linalg.norm(p)
    q = np.cross(apex, p)
    bend = 0.4 * apex + np.sqrt(1 - 0.4**2) * p
    diagonal = 0.3 * apex - 0.95 * q
    diagonal /= np.linalg.norm(diagonal)
    points = np.cumsum([np.zeros(3), 30.0 * apex, 8.0 * bend, 40.0 * apex], axis=0)
    points = np.vstack([points, points[2] + 25.0 * diagonal])
    points += 4.0 - points.min(axis=0)  # start, bend, junction, the continuation's end, the diagonal's end (mm)
    start, before, junction, lad_end, diagonal_end = points
    pieces = [(start, before, 1.6, 1.3), (before, junction, 1.3, 1.3), (junction, lad_end, 1.3, 1.0),
              (junction, diagonal_end, 1.0, 0.8)]
    corner = points.max(axis=0) + 4.0
    mask = tube_mask(tuple(int(c / 0.5) for c in corner), spacing, pieces)
    _, branches = build_trees(centerline_graphs(mask, spacing), spacing, affine)
    root = next(b for b in branches if b.parent is None)
    assert np.linalg.norm(root.voxels[0] * np.asarray(spacing) - start) < 3.0
    assert np.linalg.norm(root.voxels[-1] * np.asarray(spacing) - lad_end) < 3.0
    side = [b for b in branches if b.parent == root.id and b.length_mm > 10.0]
    assert len(side) == 1
    assert np.linalg.norm(side[0].voxels[-1] * np.asarray(spacing) - diagonal_end) < 3.0


#: a right coronary tree beside the left ones below: ostium (mm, z y x) to the patient's right of the left ostium
RCA_OSTIUM = np.array([12.0, 40.0, 50.0])


def _rca(shape, spacing):
    """An RCA tapering from r 1.9 to 0.7 mm over 30 mm from :data:`RCA_OSTIUM`, to the right of the left trees."""
    return tube_mask(shape, spacing, [(RCA_OSTIUM, RCA_OSTIUM + 30 * np.array([0.0, 0.5, 0.866]), 1.9, 0.7)])


def _left_main(severity: float, length: float = 3.0, rca: bool = False):
    """A left main ``length`` mm long (r 2.2 mm, Murray's radius for its daughters) cut bluntly at its ostium, with
    a Gaussian narrowing of ``severity`` half-way (sigma 1.5 mm), dividing into an LAD (anterior) and an LCX
    tapering from r 1.75 to 0.5 mm over 40 mm at +-50 degrees; it runs to the patient's left of its ostium, as a
    left tree does; with ``rca``, a right tree lies beside it (:func:`_rca`).
    Returns the mask (0.5 mm voxels), the ostium and the lesion's centre (mm, z y x)."""
    spacing = (0.5, 0.5, 0.5)
    ostium, u = np.array([12.0, 33.0, 40.0]), np.array([0.0, 0.0, -1.0])
    fork = ostium + length * u
    lad = np.array([0.0, np.sin(np.radians(50)), -np.cos(np.radians(50))])
    lcx = lad * [1.0, -1.0, 1.0]
    shape = (48, 132, 160 if rca else 90)
    mask = tube_mask(shape, spacing, [(ostium, fork, 2.2, 2.2, gaussian_narrowing(length, length / 2, 1.5, severity)),
                                      (fork, fork + 40.0 * lad, 1.75, 0.5), (fork, fork + 40.0 * lcx, 1.75, 0.5)])
    grid = np.stack(np.meshgrid(*[np.arange(n) * 0.5 for n in shape], indexing="ij"), -1)
    mask &= (grid - ostium) @ u >= 0.0  # the cut at the aortic wall
    if rca:
        mask |= _rca(shape, spacing)
    return mask, spacing, ostium, ostium + length / 2 * u


@pytest.mark.parametrize("length", [3.0, 4.0, 5.0])
def test_a_narrowed_left_main_is_found_and_graded_against_finets_reference(length):
    """A 60 % lesion half-way along a 3, 4 or 5 mm left main, an RCA beside the left tree. At 3 mm the narrowed stub
    reaches less than spur_mm beyond its bifurcation's ball and the spur pruning removes it: it heads for the RCA's
    ostium, so it is put back. At 4-5 mm it stays, but the tree's widest voxel lies beside the bifurcation, not on
    the stub, so the ostium search passes the bifurcation. Either way the ostium is the cut, the left main is named,
    and its lesion, with no healthy segment of its own, is graded against Finet's 0.678 (D_LAD + D_LCX):
    1 - 1.76 / 4.1 = 57 % at its centre. The same left mains without the lesion give no candidate on the left main.
    Without a right tree a pruned 3 mm stub has no ostium to head for and stays pruned."""
    mask, spacing, ostium, lesion = _left_main(0.6, length, rca=True)
    analysis = analyze_mask(mask, spacing)
    (left,) = [t for t in analysis.trees if t.side == "left"]
    # the cut (the skeleton's end may bend into a corner of it), not the bifurcation 3-5 mm away
    assert np.linalg.norm(left.root_voxel * 0.5 - ostium) < 2.2
    assert {"LM", "LAD", "LCX", "RCA"} <= {b.name for b in analysis.branches}
    (s,) = [s for s in analysis.stenoses if analysis.branches[s.branch].name == "LM"]
    assert np.linalg.norm(analysis.branches[s.branch].voxels[s.index] * 0.5 - lesion) < 1.5
    # the daughters' first 8 mm of reliable lumen: 3.5 -> 3.0 mm across
    assert s.reference_diameter_mm == pytest.approx(0.678 * 2 * 3.0, abs=0.4)
    # 57 % at the lesion's centre; a section nearer the cut than its own radius is not trusted, which can take the
    # lesion's worst point when it lies that close (the 3 mm stub's centre is 1.5 mm from the cut)
    assert 45.0 <= s.severity_pct <= 100 * (1 - 2 * 2.2 * 0.4 / (0.678 * 6.0)) + 8.0
    healthy = analyze_mask(_left_main(0.0, length, rca=True)[0], spacing)
    assert "LM" in {b.name for b in healthy.branches}
    assert not [s for s in healthy.stenoses if healthy.branches[s.branch].name == "LM"]
    if length == 3.0:
        alone = analyze_mask(_left_main(0.6, length)[0], spacing)
        assert "LM" not in {b.name for b in alone.branches}


@pytest.mark.parametrize("rca", [True, False])
def test_a_left_main_longer_than_the_passed_stub_limit_is_the_ostium_when_it_heads_for_the_rca(rca):
    """A 10 mm left main (r 2.0 mm) with a 60 % lesion 5 mm in, whose LAD (r 2.2 mm) flares wider than it: the
    widest voxel lies on the LAD just past the division, and the ostium lies 10 mm beyond the division, farther than
    PASSED_STUB_MM. It heads for the RCA's ostium, so it is the ostium (LEFT_MAIN_MAX_MM); the left main is named and
    its lesion graded: its reliable points are too few for steps 1-2 to give any of them a reference, so against
    Finet's, 0.678 (D_LAD + D_LCX) from the analysis' daughters. Without a right tree nothing tells the left main
    from a side branch: the root stays at the division and no left main is named."""
    spacing, shape = (0.5, 0.5, 0.5), (48, 132, 160)
    ostium, u = np.array([12.0, 33.0, 40.0]), np.array([0.0, 0.0, -1.0])
    fork = ostium + 10.0 * u
    lad = np.array([0.0, np.sin(np.radians(50)), -np.cos(np.radians(50))])
    lcx = lad * [1.0, -1.0, 1.0]
    mask = tube_mask(shape, spacing, [(ostium, fork, 2.0, 2.0, gaussian_narrowing(10.0, 5.0, 1.5, 0.6)),
                                      (fork, fork + 40.0 * lad, 2.2, 0.5), (fork, fork + 40.0 * lcx, 1.6, 0.5)])
    grid = np.stack(np.meshgrid(*[np.arange(n) * 0.5 for n in shape], indexing="ij"), -1)
    mask &= (grid - ostium) @ u >= 0.0  # the cut at the aortic wall
    if rca:
        mask |= _rca(shape, spacing)
    analysis = analyze_mask(mask, spacing)
    (left,) = [t for t in analysis.trees if t.side == "left"]
    if not rca:
        assert np.linalg.norm(left.root_voxel * 0.5 - fork) < 3.0
        assert "LM" not in {b.name for b in analysis.branches}
        return
    assert np.linalg.norm(left.root_voxel * 0.5 - ostium) < 1.5
    (s,) = [s for s in analysis.stenoses if analysis.branches[s.branch].name == "LM"]
    assert np.linalg.norm(analysis.branches[s.branch].voxels[s.index] * 0.5 - (ostium + 5.0 * u)) < 1.0
    left_main = analysis.branches[s.branch]
    assert not np.isfinite(reference_diameter(left_main)[1]).any()
    daughters = [b for b in analysis.branches if b.parent == left_main.id and b.name in ("LAD", "LCX")]
    assert s.reference_diameter_mm == pytest.approx(finet_reference(daughters))
    assert s.severity_pct == pytest.approx(60.0, abs=6.0)


def _straight_branch(branch_id, diameter, reliable, step=0.5):
    """A branch along z (voxels of ``step`` mm) with these diameters (n,) mm and reliable (n,) points."""
    n = len(diameter)
    voxels = np.c_[np.arange(n), np.zeros(n), np.zeros(n)].astype(np.int64)
    return Branch(branch_id, 0, voxels, diameter / 2, np.arange(n) * step, np.asarray(reliable), None, None,
                  n * step, diameter_mm=np.asarray(diameter, dtype=float))


def _path_branch(branch_id, start, step, n, parent=None, origin=None, downstream_mm=None):
    """A straight branch of ``n`` voxels (z, y, x) from ``start`` by ``step`` per point (0.5 mm voxels), r 2 mm."""
    voxels = np.asarray(start) + np.arange(n)[:, None] * np.asarray(step)
    arc = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(voxels, axis=0), axis=1))] * 0.5
    return Branch(branch_id, 0, voxels.astype(np.int64), np.full(n, 2.0), arc, np.ones(n, bool), parent, origin,
                  downstream_mm if downstream_mm is not None else float(arc[-1]))


@pytest.mark.parametrize(("second_origin", "named"), [(1, True), (12, False)])
def test_a_division_drawn_as_two_junctions_ends_the_left_main(second_origin, named):
    """A left main (10 mm along x, r 2 mm) goes on past its junction 9 mm in only as a 1 mm stub; the one major
    vessel leaving there (posterior: smaller y) gives off an anterior one 0.5 mm from its origin, inside the
    junction's ball (r 2 mm + 1 mm): one division that the skeleton drew as two junctions. The left main ends at
    the first junction, the anterior daughter is the LAD, the other the LCX. Given off 6 mm along instead, it is no
    division of the left main: no vessel is named."""
    root = _path_branch(0, (10, 40, 0), (0, 0, 1), 21, downstream_mm=10.0 + 60.0)
    lcx = _path_branch(1, (10, 39, 18), (0, -1, 1), 60, parent=0, origin=18)
    lad = _path_branch(2, lcx.voxels[second_origin] + (0, 1, 0), (0, 1, 1), 60, parent=1, origin=second_origin)
    lcx.downstream_mm += lad.downstream_mm
    root.downstream_mm = root.length_mm + lcx.downstream_mm
    tree = Tree(0, 1, root.voxels[0], 1000, [0, 1, 2], side="left")
    branches = name_trees([tree], [root, lcx, lad], np.diag([0.5, 0.5, 0.5, 1.0]))
    if not named:
        assert {b.name for b in branches} == {"unnamed"}
        return
    assert (root.name, lad.name, lcx.name) == ("LM", "LAD", "LCX")
    assert root.length_mm == pytest.approx(9.0)
    (stub,) = [b for b in branches if b.parent == root.id and b not in (lcx, lad)]
    assert stub.name == "unnamed"


def test_a_left_main_lesion_with_no_reference_of_its_own_is_graded_against_the_left_mains_own_lumen():
    """An 11 mm left main (4 mm across) with a 55 % lesion 6 mm in: steps 1-2 give the lesion's points no
    reference (the windows run off the left main), but give one to points nearer each end. The lesion is graded
    against those, interpolated across it (they see part of the lesion: it reads milder); only points steps 1-2 give
    no reference are graded so (a one-point dip where they give one stays theirs: none); with no reference of its
    own anywhere (a left main a few mm long), against Finet's 0.678 (D_LAD + D_LCX) = 0.678 x 5.6 mm."""
    arc = np.arange(23) * 0.5
    diameter = 4.0 * (1.0 - 0.55 * np.exp(-0.5 * ((arc - 6.0) / 1.5) ** 2))
    spacing = (0.5, 0.5, 0.5)
    daughters = [_straight_branch(1, np.full(60, 3.0), np.arange(60) >= 2),
                 _straight_branch(2, np.full(60, 2.6), np.arange(60) >= 2)]
    left_main = _straight_branch(0, diameter, (arc >= 1.0) & (arc <= 8.5))
    own = reference_diameter(left_main)[1]
    assert np.isnan(own[arc == 6.0]).all() and np.isfinite(own).sum() >= 2
    assert find_stenoses(left_main) == []  # no reference at the lesion: steps 1-3 find nothing
    s = left_main_stenosis(left_main, daughters, spacing)
    assert s.arc_mm == pytest.approx(6.0) and s.min_diameter_mm == pytest.approx(1.8)
    assert np.nanmin(own) <= s.reference_diameter_mm <= np.nanmax(own)
    assert 25.0 <= s.severity_pct < 55.0
    dip = np.where(arc == 1.5, 2.8, 4.0)  # a healthy left main, one point 30 % narrow where it has a reference
    healthy = _straight_branch(0, dip, (arc >= 1.0) & (arc <= 8.5))
    assert np.isfinite(reference_diameter(healthy)[1][arc == 1.5]).all()
    assert find_stenoses(healthy) == [] and left_main_stenosis(healthy, daughters, spacing) is None
    stub = _straight_branch(0, diameter, (arc >= 4.0) & (arc <= 8.0))  # too short for steps 1-2 anywhere
    s = left_main_stenosis(stub, daughters, spacing)
    assert s.reference_diameter_mm == pytest.approx(FINET_RATIO * 5.6)
    assert s.severity_pct == pytest.approx(100 * (1 - 1.8 / (FINET_RATIO * 5.6)), abs=0.5)


@pytest.mark.parametrize("twig", [(3.5, 0.0, 0.0), (-3.5, 0.0, 0.0)])
def test_a_twig_at_a_bifurcation_heading_away_from_the_other_ostium_is_no_left_main(twig):
    """A bifurcation with no left main, an RCA beside it, and a 3.5 mm twig (r 0.6 mm) leaving it upwards or
    downwards, at right angles to the way to the RCA's ostium: the spur pruning removes it, and it is not put back
    as a left main (it would read as a 70 % left-main lesion against Finet's reference)."""
    spacing, shape = (0.5, 0.5, 0.5), (48, 132, 160)
    fork = np.array([12.0, 33.0, 37.0])
    lad = np.array([0.0, np.sin(np.radians(50)), -np.cos(np.radians(50))])
    lcx = lad * [1.0, -1.0, 1.0]
    mask = tube_mask(shape, spacing, [(fork, fork + 40 * lad, 1.75, 0.5), (fork, fork + 40 * lcx, 1.75, 0.5),
                                      (fork, fork + np.asarray(twig), 0.6, 0.5)]) | _rca(shape, spacing)
    analysis = analyze_mask(mask, spacing)
    assert {"LAD", "LCX", "RCA"} <= {b.name for b in analysis.branches}
    assert "LM" not in {b.name for b in analysis.branches}
    (left,) = [t for t in analysis.trees if t.side == "left"]
    assert np.linalg.norm(left.root_voxel * 0.5 - fork) < 2.0


def test_no_left_main_from_a_side_branch_nor_finet_where_it_has_its_own_reference():
    """A bifurcation with no left main but a 10 mm side branch (r 0.9 -> 0.7 mm) leaving it across the daughters'
    plane: its end lies beyond PASSED_STUB_MM, so it is no ostium and no left main is graded (it was taken for a
    moderate left-main lesion). A 14 mm healthy left main (r 1.9 mm, daughters r 2.0 mm) has a reference of its own:
    Finet's rule (which would read 26 %) does not apply."""
    spacing = (0.5, 0.5, 0.5)
    fork = np.array([12.0, 33.0, 37.0])
    lad = np.array([0.0, np.sin(np.radians(50)), -np.cos(np.radians(50))])
    lcx = lad * [1.0, -1.0, 1.0]
    side = tube_mask((48, 132, 90), spacing, [(fork, fork + 40 * lad, 1.75, 0.5), (fork, fork + 40 * lcx, 1.75, 0.5),
                                             (fork, fork + [10.0, 0.0, 0.0], 0.9, 0.7)])
    analysis = analyze_mask(side, spacing)
    assert "LM" not in {b.name for b in analysis.branches}
    ostium, u = np.array([12.0, 33.0, 44.0]), np.array([0.0, 0.0, -1.0])
    fork = ostium + 14.0 * u
    shape = (48, 132, 96)
    long_lm = tube_mask(shape, spacing, [(ostium, fork, 1.9, 1.9), (fork, fork + 40 * lad, 2.0, 1.8),
                                         (fork, fork + 40 * lcx, 2.0, 1.8)])
    grid = np.stack(np.meshgrid(*[np.arange(n) * 0.5 for n in shape], indexing="ij"), -1)
    long_lm &= (grid - ostium) @ u >= 0.0
    analysis = analyze_mask(long_lm, spacing)
    assert "LM" in {b.name for b in analysis.branches}
    assert not [s for s in analysis.stenoses if analysis.branches[s.branch].name == "LM"]
