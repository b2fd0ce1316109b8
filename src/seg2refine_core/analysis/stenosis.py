"""Stenosis candidates: local lumen narrowings against a reference diameter from healthy lumen on both sides.

The rule follows quantitative coronary angiography (QCA), where the percent diameter stenosis is
``100 * (1 - D_min / D_ref)`` and ``D_ref`` is interpolated from the healthy vessel proximal and distal to the
lesion (the "interpolated reference diameter" of QCA software; Reiber et al., Circulation 1985; the grades are
those of CAD-RADS 2.0, Cury et al., JCCT 2022). Along each branch:

1. The lumen diameter ``D(s)`` (the branch's ``diameter_mm``: the cross-section's equivalent diameter of
   :mod:`.cross_section` after :func:`~.analyze.analyze_mask`) at its centerline points, median filtered over 3
   points (one-voxel noise). Points inside a junction's or an end's inscribed ball are not used:
   the distance transform measures the bifurcation or the blunt end there, not this vessel.
2. At each point the reference is the mean of two medians: of ``D`` over the proximal window
   ``[s - gap - window, s - gap]`` and over the distal window ``[s + gap, s + gap + window]`` (mm along the branch;
   ``gap_mm`` 3, ``window_mm`` 8): linear interpolation between the healthy segments on both sides, evaluated
   mid-way. The gap keeps the lesion's core out of its reference; a median over the window keeps the lesion's
   shoulders, a neighbouring lesion or a side branch's flare from moving it. (Over 30 phantoms, gap/window 3/8 mm
   found as many stenoses as 4/6 and 5/4 with the fewest false candidates.) A side counts only where the branch's
   reliable points cover at least half its window (``min_cover`` 0.5): near the origin there is no healthy
   proximal segment, and a few points of the lesion itself between the origin and the window would drag the
   reference down. **Ostial lesions** (clinical QCA's rule for a lesion at the ostium, where no proximal segment
   exists): where only the distal window counts, the reference is the distal healthy segment alone; likewise the
   proximal one alone near the branch's distal end. The ostium itself is found by :mod:`.trees` even when it is
   narrowed.
3. ``%DS(s) = 100 * (1 - D(s) / D_ref(s))``. Every run of points with ``%DS >= min_pct`` (25) is one candidate:
   its centre is the point of largest %DS, its severity that %DS, its length the extent (mm) around the centre
   where %DS stays at or above half the severity (the lesion's full width at half maximum).
4. Candidates with ``D_ref < min_reference_mm`` (1.5 mm) are dropped: CAD-RADS grades vessels of at least 1.5 mm,
   and below that a single voxel is a large fraction of the lumen. So are candidates with ``D_ref`` below
   ``min_reference_voxels`` (0.9) times the largest voxel spacing (the slice spacing of thick-slice scans): a binary
   mask draws a vessel narrower than a slice at least a slice thick wherever it runs through the slices, so the
   cross-section reads it too wide (on the cohort phantoms at 1.4-1.9 mm slices: +0.39 mm for vessels under 1 mm,
   +0.13 mm for 1-1.5 mm, and a quarter of the 1-1.5 mm vessels' points read >= 1.5 mm, against 5 % at thinner
   slices) and its staircase makes 25-45 % dips that are no lesion. On the cohort phantoms at matrix 256 this cut
   the false candidates from 1.70 to 1.30 per volume (seeds 3000-3019) and from 1.75 to 1.00 (4000-4019) and lost
   no true stenosis; a factor of 1.0 lost one. **Small vessels**: a candidate with ``small_vessel_mm`` (0.75)
   ``<= D_ref < min_reference_mm`` (below the grading size, CAD-RADS' 1.5 mm by default) is kept, flagged
   ``small_vessel`` (reported for the reader, not graded), where its depth ``D_ref - D_min`` is at least
   ``small_vessel_depth_voxels`` (1.0) times the coarsest voxel spacing across the vessel
   (:func:`across_voxel_mm`): a narrowing a whole voxel deep is no digitisation step. At real-size resolution
   (cohort phantoms at matrix 512, 0.3-0.5 mm in-plane) the cross-sections resolve lesions of 1-1.5 mm vessels
   (90 % and 87 % ones read 62 % and 69 %): >= 50 % found 15/27 -> 19/27 (seeds 3000-3019) and 14/29 -> 21/29
   (4000-4019) at 0.20 -> 0.30 and 0.00 -> 0.30 false candidates per volume. At coarser voxels their dips stay
   under a voxel: the legacy and matrix-256 phantoms gain none and one false candidate in 60 volumes. The voxel
   across the vessel, not the in-plane one (21/27 at 0.55 false on seeds 3000-3019), as in step 5. The size floor
   was 1.0 mm at first; 0.75 mm (half the grading size; the depth, not the size, keeps digitisation steps out)
   found one more lesion each on seeds 3000-3019, 4000-4019 and 6000-6019 at matrix 512 with the 5-10 mm left
   main (0.8-0.9 mm marginals, 0.3-0.5 mm voxels) and added no false candidate there nor at matrix 256 or on the
   legacy phantoms; a depth factor of 0.8 found one more on 3000-3019, 4000-4019 and 6000-6019 at 0.05, 0.20 and
   0.15 more false candidates per volume, and none on 5000-5019 at 0.30 more.
5. **Staircase dips** are dropped: a candidate whose half-maximum extent is measured on both sides (neither end
   runs into an unmeasured point nor the branch's end, where the lesion may go on) and is no longer than the largest
   voxel spacing (one slice), and whose depth ``D_ref - D_min`` is under ``staircase_voxels`` (0.5) times the
   coarsest voxel spacing across the vessel at its centre (:func:`across_voxel_mm`: the slice spacing for a vessel
   in the slice plane, the in-plane spacing for one crossing the slices). A binary mask moves a wall by a whole
   voxel where the vessel crosses from one slice or column to the next; the equivalent diameter ``2 sqrt(A / pi)``
   moves by about half of that when one of the cross-section's two axes does, so a narrowing shorter than a slice
   and shallower than half a voxel across is below the mask's resolution in both directions (true phantom lesions,
   sigma 1.5-3 mm, are 3.5-7 mm long at half maximum). Over the cohort phantoms at matrix 256 it dropped 16
   candidates, all false: 1.20 -> 0.90 per volume (seeds 3000-3019) and 1.00 -> 0.75 (4000-4019), both looked at
   while choosing it, and 1.05 -> 0.80 (5000-5019, untouched until the rule was fixed), no true stenosis of any
   grade lost; the legacy phantoms (1 x 0.7 x 0.7 mm) keep theirs (0.50, 0.50, 0.70). The nearest true ones kept: two
   50 % lesions measured as 31-32 % and 1.2-1.3 mm long, in LADs crossing 1.5-1.7 mm slices steeply (1.0-1.1 mm
   voxels across them), 0.52-0.55 voxel deep; with the slice spacing as the yardstick, or a factor of 0.6, both were
   lost.

**Left main** (:func:`left_main_stenosis`, where steps 1-5 find no candidate on it): a left main is short (about 10 mm
in adults), so steps 1-2 give few of its points a reference, its windows running off it; a lesion's own points often
get none. Where they give some, the left main's reference is theirs, interpolated between them and the nearest one
beyond them (they may see part of the lesion in their window, which then reads milder: an analytic 55 % lesion in an
11 mm left main reads 25-55 %); only the points they give no reference are graded so, the others being steps 1-5's.
Where they give none, as in a left main a few mm long that lies almost wholly inside its bifurcation's inscribed ball
(one pruned as a spur is put back by :mod:`.trees` where the mask has a right tree), its reference is that of
bifurcation QCA, Finet's law ``D_ref = 0.678 (D_LAD + D_LCX)`` (Finet et al., EuroIntervention 2008), from the LAD's
and LCX's healthy proximal diameters (the median of ``D`` over the first ``window_mm`` of their reliable points). Its
sections are measured beyond its first point's voxel (more than half a voxel, along the vessel, from it) where their
distance to the cut, half a voxel outside that point, is at least their own equivalent radius; distances are taken
along the straight line from the ostium to the division (a stub of a few points has its smoothed arc length run ahead:
along it, a healthy left main at 1.57 mm slices read 31 % 0.7 mm in; and a restored stub may start in a corner of the
cut, off its axis). The cut at the aortic wall is oblique, and a plane it clips loses the lumen beyond a chord: up to
45 degrees off the perpendicular, a clipped section's equivalent radius exceeds its distance to the cut, so none is
kept; at 60 or 75 degrees one kept reads at most 10 or 20 % narrow (a healthy left main's section one voxel in read
37 % on a cohort phantom). A narrowed section is small and stays measured: trusting only sections farther from the cut
than the inscribed radius there found no candidate for a 66 % lesion of a cohort phantom (51 % now) and read a 76 %
one as 44 % (59 % now). Sections within the bifurcation can only read wide. It is one candidate, at the largest
``%DS``, if that is at least ``min_pct``. Analytic 3-5 mm left mains beside an RCA: a 60 % lesion reads 47-57 %,
healthy ones none (a 3 mm one with no right tree is not found).

Grades: 25-49 % mild, 50-69 % moderate, 70-99 % severe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from seg2refine_core.analysis.cross_section import tangents
from seg2refine_core.analysis.trees import Branch

#: CAD-RADS 2.0 grades of a percent diameter stenosis, as (lower bound %, name)
GRADES = ((70.0, "severe"), (50.0, "moderate"), (25.0, "mild"))


@dataclass(frozen=True)
class StenosisOptions:
    """Parameters of the rule in the module docstring (mm and percent)."""

    min_pct: float = 25.0
    gap_mm: float = 3.0
    window_mm: float = 8.0
    min_reference_mm: float = 1.5
    min_cover: float = 0.5
    min_reference_voxels: float = 0.9
    small_vessel_mm: float = 0.75
    small_vessel_depth_voxels: float = 1.0
    staircase_voxels: float = 0.5


@dataclass
class Stenosis:
    """A stenosis candidate on ``branch`` at its centerline point ``index`` (voxel (z, y, x) ``voxel``), ``arc_mm``
    from the branch's origin: severity (% diameter reduction), length (mm), reference and minimum lumen diameter
    (mm), its CAD-RADS grade, and whether it lies in a small vessel (reference under ``min_reference_mm``: reported,
    not graded by CAD-RADS; step 4)."""

    branch: int
    index: int
    voxel: np.ndarray
    arc_mm: float
    severity_pct: float
    length_mm: float
    reference_diameter_mm: float
    min_diameter_mm: float
    small_vessel: bool = False

    @property
    def label(self) -> str:
        """Its severity for a figure, '57%', or '57% (small)' in a small vessel."""
        return f"{self.severity_pct:.0f}%" + (" (small)" if self.small_vessel else "")

    @property
    def grade(self) -> str:
        """The CAD-RADS grade of the severity, or 'small vessel' (not graded)."""
        return "small vessel" if self.small_vessel else grade(self.severity_pct)


def worst_first(stenoses: list[Stenosis]) -> list[Stenosis]:
    """Graded candidates by severity, most severe first, then the small-vessel ones (not graded) likewise."""
    return sorted(stenoses, key=lambda s: (s.small_vessel, -s.severity_pct))


def grade(severity_pct: float) -> str:
    """'severe' (>= 70 %), 'moderate' (>= 50 %), 'mild' (>= 25 %) or 'minimal'."""
    for low, name in GRADES:
        if severity_pct >= low:
            return name
    return "minimal"


def reference_diameter(branch: Branch, options: StenosisOptions = StenosisOptions()) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed diameter (n,) and interpolated reference diameter (n,) along ``branch`` in mm (NaN where a point
    is unreliable or neither side has healthy lumen), as step 1-2 of the module docstring."""
    d = ndimage.median_filter(branch.diameter_mm, size=3, mode="nearest")
    s, ok = branch.arc_mm, branch.reliable
    n = len(d)
    ref = np.full(n, np.nan)
    use_s, use_d = s[ok], d[ok]
    lo_p = np.searchsorted(use_s, s - options.gap_mm - options.window_mm, side="left")
    hi_p = np.searchsorted(use_s, s - options.gap_mm, side="right")
    lo_d = np.searchsorted(use_s, s + options.gap_mm, side="left")
    hi_d = np.searchsorted(use_s, s + options.gap_mm + options.window_mm, side="right")
    # a window counts where the branch's reliable points span at least min_cover of it (an ostial lesion: distal only)
    first, last = (use_s[0], use_s[-1]) if len(use_s) else (0.0, 0.0)
    need = options.min_cover * options.window_mm
    prox_ok = s - options.gap_mm - first >= need
    dist_ok = last - s - options.gap_mm >= need
    for i in np.nonzero(ok)[0]:
        sides = [float(np.median(use_d[a:b])) for a, b, good in ((lo_p[i], hi_p[i], prox_ok[i]),
                                                                 (lo_d[i], hi_d[i], dist_ok[i]))
                 if good and b - a >= 2]
        if sides:
            ref[i] = float(np.mean(sides))
    d = np.where(ok, d, np.nan)
    return d, ref


def across_voxel_mm(tangent: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """The coarsest voxel spacing (mm) across a vessel of unit ``tangent`` (3,) (z, y, x): the largest
    ``sqrt(sum(u_i^2 spacing_i^2))`` over unit directions ``u`` perpendicular to it, the root of the largest
    eigenvalue of ``P diag(spacing^2) P`` (``P`` the projection onto that plane). The slice spacing for a vessel in
    the slice plane, the in-plane spacing for one running across the slices."""
    t = np.asarray(tangent, dtype=float)
    p = np.eye(3) - np.outer(t, t)
    return float(np.sqrt(max(np.linalg.eigvalsh(p @ np.diag(np.asarray(spacing, dtype=float) ** 2) @ p)[-1], 0.0)))


def find_stenoses(branch: Branch, options: StenosisOptions = StenosisOptions(), voxel_mm: float = 0.0,
                  spacing: tuple[float, float, float] | None = None) -> list[Stenosis]:
    """Stenosis candidates along one branch (see the module docstring), proximal first. voxel_mm: the mask's
    largest voxel spacing (mm; 0 leaves out the rule on it). spacing: the mask's (z, y, x) voxel spacing (mm; None
    leaves out the staircase rule, step 5, and the small vessels of step 4)."""
    d, ref = reference_diameter(branch, options)
    with np.errstate(invalid="ignore", divide="ignore"):
        pct = 100.0 * (1.0 - d / ref)
    hit = np.nan_to_num(pct, nan=-np.inf) >= options.min_pct
    runs, n_runs = ndimage.label(hit)
    tangent = None if spacing is None else tangents(branch.voxels * np.asarray(spacing, dtype=float))
    out = []
    for k in range(1, n_runs + 1):
        idx = np.nonzero(runs == k)[0]
        centre = int(idx[np.argmax(pct[idx])])
        if ref[centre] < max(options.min_reference_voxels * voxel_mm,
                             min(options.small_vessel_mm, options.min_reference_mm)):
            continue
        small = bool(ref[centre] < options.min_reference_mm)
        across = None if tangent is None else across_voxel_mm(tangent[centre], spacing)
        if small and (across is None or ref[centre] - d[centre] < options.small_vessel_depth_voxels * across):
            continue
        severity = float(pct[centre])
        a, b, length = _half_maximum(np.nan_to_num(pct, nan=-np.inf) >= severity / 2.0, centre, branch.arc_mm)
        # step 5: both ends of the half-maximum extent measured (not cut by an unmeasured point or the branch's end)
        observed = a > 0 and b < len(pct) - 1 and np.isfinite(pct[a - 1]) and np.isfinite(pct[b + 1])
        if (across is not None and observed and length <= max(spacing)
                and ref[centre] - d[centre] < options.staircase_voxels * across):
            continue
        out.append(Stenosis(branch.id, centre, branch.voxels[centre].copy(), float(branch.arc_mm[centre]), severity,
                            length, float(ref[centre]), float(d[centre]), small))
    return out


#: Finet's law of coronary bifurcations: the mother vessel's diameter is this times the sum of the daughters'
FINET_RATIO = 0.678


def left_main_stenosis(left_main: Branch, daughters: list[Branch], spacing: tuple[float, float, float],
                       options: StenosisOptions = StenosisOptions()) -> Stenosis | None:
    """The left-main rule of the module docstring: one candidate on ``left_main`` among the points to which steps
    1-2 give no reference, against the left main's own references interpolated (the nearest one beyond them) or,
    with none, Finet's reference from its two ``daughters`` (the LAD and LCX); or None. spacing: the mask's (z, y,
    x) voxel spacing (mm)."""
    sp = np.asarray(spacing, dtype=float)
    voxel_mm = float(sp.max())
    own = reference_diameter(left_main, options)[1]
    known = np.nonzero(np.isfinite(own))[0]
    if len(known):  # its own reference where steps 1-2 give one, interpolated between, the nearest one beyond
        ref = np.interp(left_main.arc_mm, left_main.arc_mm[known], own[known])
    else:
        finet = finet_reference(daughters, options)
        if finet is None:
            return None
        ref = np.full(len(own), finet)
    diameter = left_main.diameter_mm
    tangent = tangents(left_main.voxels * sp)
    along = np.linalg.norm(tangent * sp, axis=1)  # the voxel spacing along the vessel
    # a section clipped by the cut has an equivalent radius above its distance to it (the module docstring)
    axis = (left_main.voxels[-1] - left_main.voxels[0]) * sp  # ostium to division
    axis = axis / max(float(np.linalg.norm(axis)), 1e-9)
    from_first = ((left_main.voxels - left_main.voxels[0]) * sp) @ axis  # the first point may sit in a corner
    measured = ((from_first > along / 2.0) & (from_first + along / 2.0 >= diameter / 2.0) & ~np.isfinite(own)
                & (ref >= max(options.min_reference_mm, options.min_reference_voxels * voxel_mm)))
    if not measured.any():
        return None
    pct = 100.0 * (1.0 - diameter / ref)
    centre = int(np.argmax(np.where(measured, pct, -np.inf)))
    severity = float(pct[centre])
    if severity < options.min_pct:
        return None
    _, _, length = _half_maximum(measured & (pct >= severity / 2.0), centre, left_main.arc_mm)
    return Stenosis(left_main.id, centre, left_main.voxels[centre].copy(), float(left_main.arc_mm[centre]),
                    severity, length, float(ref[centre]), float(diameter[centre]))


def finet_reference(daughters: list[Branch], options: StenosisOptions = StenosisOptions()) -> float | None:
    """Finet's reference diameter (mm) of a mother vessel from its two ``daughters``' healthy proximal diameters
    (the median of step 1's ``D`` over the first ``window_mm`` of their reliable points), or None without two
    daughters with two reliable points each."""
    if len(daughters) != 2:
        return None
    healthy = []
    for daughter in daughters:
        d, _ = reference_diameter(daughter, options)
        ok = np.nonzero(np.isfinite(d))[0]
        if len(ok) < 2:
            return None
        first = daughter.arc_mm[ok] <= daughter.arc_mm[ok[0]] + options.window_mm
        healthy.append(float(np.median(d[ok][first])))
    return FINET_RATIO * sum(healthy)


def _half_maximum(half: np.ndarray, centre: int, arc_mm: np.ndarray) -> tuple[int, int, float]:
    """The run of True in ``half`` (n,) bool around ``centre`` as (first, last, length mm along ``arc_mm``); one
    point is one mean step long."""
    a = b = centre
    while a > 0 and half[a - 1]:
        a -= 1
    while b < len(half) - 1 and half[b + 1]:
        b += 1
    if b > a:
        return a, b, float(arc_mm[b] - arc_mm[a])
    return a, b, float(np.diff(arc_mm).mean()) if len(arc_mm) > 1 else 0.0
