"""Per-case phantom options and the ``cohort`` preset that draws them per seed like a real CCTA cohort.

:class:`PhantomOptions` holds the properties a case can vary; a field left ``None`` keeps the generator's own draw.
Without the preset, :func:`~.generator.make_phantom` draws every volume as it always has (a half-size heart in a
~90-mm field of view, blood 300-450 HU, noise 20-40 HU, ...; the legacy volumes, reproducible bit for bit), and
options replace single properties of those volumes. With ``cohort=True`` the case is drawn from the ranges in
:data:`COHORT_RANGES` instead (own random streams, so cohort seed ``n`` shares nothing with legacy seed ``n``), and
options still override single draws. The ranges:

========================  =====================================================================================
property                  cohort range (per seed)
========================  =====================================================================================
heart size                scale k 1.5-1.9 of the canonical heart: LV long semi-axis 27 k = 40.5-51.3 mm, aortic
                          root radius 8.5 k = 12.8-16.2 mm; great-vessel calibres scale with k
body size                 chest/heart scale ratio 1.25-1.65: body scale s = 1.9-3.1 (outer chest width 116 s =
                          218-364 mm; cardiothoracic ratio about 0.41-0.54)
in-plane spacing          0.3-0.5 mm on a 512 x 512 matrix: field of view 154-256 mm, centred on the coronary
                          tree +- 10 mm
slice spacing             0.25-1.0 mm
z coverage                the coronary tree plus 10-30 mm above and below (slices = coverage / slice spacing)
blood (contrast) HU       250-600 HU, also the coronary lumen
noise                     std 10-50 HU; texture: Gaussian-filtered white noise, grain sigma 0.3-0.8 mm in-plane
                          and 0.2-0.5 mm through-plane (1/e correlation length 2 sigma: 0.6-1.6 and 0.4-1.0 mm)
PSF                       Gaussian sigma 0.3-0.6 mm in-plane, 0.3-0.8 mm through-plane
dominance                 right 70 %, co-dominant 20 %, left 10 %
stenoses                  0-4 (uniform), severity 25-90 % diameter reduction (uniform per stenosis)
calcified plaques         none for 30 % of cases, else 1-8; 500-1500 HU each
stents                    none for 70 % of cases, one for 20 %, two for 10 % (8-28 mm, diamond wire mesh)
left main                 5-10 mm from the aortic root to its division (an adult's is about 10 mm; the legacy
                          generator's is a 1.8-3.7 mm loop at real size, :data:`LOOPED_LEFT_MAIN`)
========================  =====================================================================================

Other tissues' HU, the heart's pose, the trees' branching and tortuosity, stenosis length and plaque size are drawn
as in the legacy generator. **Shape and spacing.** The drawn case is a real-size scan: spacing (d_z, d_xy, d_xy)
and shape (coverage / d_z, 512, 512). ``matrix`` (default 512) scales it down for small CPU sizes: the spacing is
multiplied by ``512 / matrix`` and the shape divided by it, so the field of view, the anatomy, the HU, the PSF and
the noise grain (all in mm) and the noise std stay those of the real-size case (``matrix=64``: in-plane 2.4-4 mm,
slices 2-8 mm). Explicit ``shape`` and/or ``spacing`` replace the drawn ones instead (only ``spacing``: the drawn
field of view at that spacing; only ``shape``: the drawn field of view on that matrix; both: exactly that grid,
centred on the coronary tree as drawn).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

REAL_MATRIX = 512  # in-plane voxels of a real-size cohort case

COHORT_RANGES: dict[str, tuple[float, float]] = {
    "heart_scale": (1.5, 1.9),
    "chest_to_heart": (1.25, 1.65),
    "spacing_xy_mm": (0.3, 0.5),
    "spacing_z_mm": (0.25, 1.0),
    "z_margin_mm": (10.0, 30.0),
    "centre_jitter_mm": (-10.0, 10.0),
    "blood_hu": (250.0, 600.0),
    "noise_sd_hu": (10.0, 50.0),
    "grain_xy_mm": (0.3, 0.8),
    "grain_z_mm": (0.2, 0.5),
    "psf_xy_mm": (0.3, 0.6),
    "psf_z_mm": (0.3, 0.8),
    "n_stenoses": (0, 4),
    "severity": (0.25, 0.9),
    "n_calcified": (0, 8),
    "calcium_hu": (500.0, 1500.0),
    "n_stents": (0, 2),
    "left_main_mm": (5.0, 10.0),
}
"""The cohort preset's ranges (see the module docstring for what each means)."""

DOMINANCE_P = {"right": 0.7, "co": 0.2, "left": 0.1}


@dataclass(frozen=True)
class PhantomOptions:
    """Properties of one phantom case; ``None`` keeps the generator's draw (legacy or cohort).

    heart_scale: heart size over the canonical heart (LV long semi-axis 27 x, aortic root radius 8.5 x, mm); the
    great vessels' calibres follow it. body_scale: chest size over the canonical chest (outer width 116 x mm); also
    scales every position. With either set, the diaphragm is moved so that the heart rests on it.
    blood_hu: contrast level of the blood pools and the coronary lumen, HU. noise_sd_hu: noise std, HU.
    noise_grain_mm: (through-plane, in-plane) sigma of the Gaussian that shapes the noise texture, mm (legacy
    (0, 0.5)). psf_sigma_mm: (z, y, x) sigma of the Gaussian PSF, mm. dominance: 'right', 'left' or 'co'.
    n_stenoses: number of stenosed vessels (0-7). severity_range: (low, high) fractional diameter reduction,
    0 <= low <= high <= 0.9. n_calcified: number of calcified plaques. calcium_hu: (low, high) plaque HU.
    n_stents: number of stents (the legacy generator has none). left_main_mm: (low, high) range of the left main's
    length, mm, from the aortic root to its division (0.5 <= low <= high <= 15; at most about 7 x the heart scale
    is reached; the cohort preset draws 5-10 mm), or :data:`LOOPED_LEFT_MAIN` for the legacy generator's short one,
    1.8-3.7 mm at real size, which loops back on itself (the cohort preset's before it drew 5-10 mm).
    """

    heart_scale: float | None = None
    body_scale: float | None = None
    blood_hu: float | None = None
    noise_sd_hu: float | None = None
    noise_grain_mm: tuple[float, float] | None = None
    psf_sigma_mm: tuple[float, float, float] | None = None
    dominance: str | None = None
    n_stenoses: int | None = None
    severity_range: tuple[float, float] | None = None
    n_calcified: int | None = None
    calcium_hu: tuple[float, float] | None = None
    n_stents: int | None = None
    left_main_mm: tuple[float, float] | str | None = None

    def merged(self, base: PhantomOptions) -> PhantomOptions:
        """These options, with ``base``'s value wherever this one is ``None``."""
        return PhantomOptions(**{f.name: getattr(base, f.name) if getattr(self, f.name) is None
                                 else getattr(self, f.name) for f in fields(self)})

    def check(self) -> None:
        """Raise :class:`~seg2refine_core.errors.Seg2RefineError` naming the first invalid option."""
        from seg2refine_core.errors import Seg2RefineError

        def bad(name: str, why: str) -> None:
            raise Seg2RefineError(f"phantom option {name}={getattr(self, name)!r}: {why}")

        for name in ("heart_scale", "body_scale"):
            v = getattr(self, name)
            if v is not None and not 0.2 <= v <= 5.0:
                bad(name, "must be between 0.2 and 5")
        if self.blood_hu is not None and not 0.0 <= self.blood_hu <= 1500.0:
            bad("blood_hu", "must be between 0 and 1500 HU")
        if self.noise_sd_hu is not None and not 0.0 <= self.noise_sd_hu <= 300.0:
            bad("noise_sd_hu", "must be between 0 and 300 HU")
        if self.noise_grain_mm is not None and (len(self.noise_grain_mm) != 2
                                                or not all(0.0 <= g <= 5.0 for g in self.noise_grain_mm)):
            bad("noise_grain_mm", "must be (through-plane, in-plane) sigmas between 0 and 5 mm")
        if self.psf_sigma_mm is not None and (len(self.psf_sigma_mm) != 3
                                              or not all(0.0 <= g <= 5.0 for g in self.psf_sigma_mm)):
            bad("psf_sigma_mm", "must be (z, y, x) sigmas between 0 and 5 mm")
        if self.dominance is not None and self.dominance not in ("right", "left", "co"):
            bad("dominance", "must be 'right', 'left' or 'co'")
        for name, top in (("n_stenoses", 7), ("n_calcified", 50), ("n_stents", 5)):
            v = getattr(self, name)
            if v is not None and (int(v) != v or not 0 <= v <= top):
                bad(name, f"must be an integer from 0 to {top}")
        if self.severity_range is not None:
            low, high = self.severity_range
            if not 0.0 <= low <= high <= 0.9:
                bad("severity_range", "must satisfy 0 <= low <= high <= 0.9")
        if self.calcium_hu is not None:
            low, high = self.calcium_hu
            if not 130.0 <= low <= high <= 3000.0:
                bad("calcium_hu", "must satisfy 130 <= low <= high <= 3000 HU")
        if self.left_main_mm not in (None, LOOPED_LEFT_MAIN) and not left_main_range_ok(self.left_main_mm):
            bad("left_main_mm", "must satisfy {:g} <= low <= high <= {:g} mm, or be {!r}".format(
                *LEFT_MAIN_MM_LIMITS, LOOPED_LEFT_MAIN))

    @property
    def left_main_range_mm(self) -> tuple[float, float] | None:
        """The left main's (low, high) length range, mm; ``None`` for the looped one (or none set)."""
        return None if self.left_main_mm in (None, LOOPED_LEFT_MAIN) else self.left_main_mm


#: bounds (mm) of PhantomOptions.left_main_mm's range
LEFT_MAIN_MM_LIMITS = (0.5, 15.0)

#: PhantomOptions.left_main_mm for the legacy generator's left main: divided 14-22 deg before the anterior groove,
#: 1.8-3.7 mm from the aortic root at real size, shorter than it is across (the volumes of cohort cases made before
#: the preset drew 5-10 mm, the bundled weights' training data among them)
LOOPED_LEFT_MAIN = "loop"


def left_main_range_ok(low_high: object) -> bool:
    """Whether ``low_high`` is a valid left-main length range (low, high) mm: within :data:`LEFT_MAIN_MM_LIMITS`,
    low <= high."""
    if not isinstance(low_high, (tuple, list)) or len(low_high) != 2:
        return False
    low, high = low_high
    return LEFT_MAIN_MM_LIMITS[0] <= low <= high <= LEFT_MAIN_MM_LIMITS[1]


@dataclass(frozen=True)
class CohortDraw:
    """One cohort case's draws: ``options`` (every field set) and the scan geometry at real
    size: ``spacing_mm`` (d_z, d_xy, d_xy), the margins above and below the coronary tree (mm) and the in-plane
    offset of the field of view's centre from the tree's centre (y, x) mm."""

    options: PhantomOptions
    spacing_mm: tuple[float, float, float]
    z_margins_mm: tuple[float, float]
    centre_jitter_mm: tuple[float, float]

    @property
    def fov_xy_mm(self) -> float:
        """In-plane field of view, mm (512 voxels at the drawn in-plane spacing)."""
        return REAL_MATRIX * self.spacing_mm[1]


def draw_cohort(seed: int) -> CohortDraw:
    """The cohort preset's draws for ``seed`` (stream ``[seed, 2]``), in the ranges of :data:`COHORT_RANGES`."""
    rng = np.random.default_rng([int(seed), 2])
    r = COHORT_RANGES

    def uni(name: str) -> float:
        return float(rng.uniform(*r[name]))

    k = uni("heart_scale")
    s = k * uni("chest_to_heart")
    d_xy, d_z = uni("spacing_xy_mm"), uni("spacing_z_mm")
    margins = (uni("z_margin_mm"), uni("z_margin_mm"))
    jitter = (uni("centre_jitter_mm"), uni("centre_jitter_mm"))
    blood, noise = uni("blood_hu"), uni("noise_sd_hu")
    grain = (uni("grain_z_mm"), uni("grain_xy_mm"))
    psf_xy, psf_z = uni("psf_xy_mm"), uni("psf_z_mm")
    u = rng.uniform()
    dominance = "right" if u < DOMINANCE_P["right"] else "co" if u < 1.0 - DOMINANCE_P["left"] else "left"
    n_sten = int(rng.integers(r["n_stenoses"][0], r["n_stenoses"][1] + 1))
    n_calc = 0 if rng.uniform() < 0.3 else int(rng.integers(1, r["n_calcified"][1] + 1))
    u = rng.uniform()
    n_stents = 0 if u < 0.7 else 1 if u < 0.9 else 2
    options = PhantomOptions(
        heart_scale=k, body_scale=s, blood_hu=blood, noise_sd_hu=noise, noise_grain_mm=grain,
        psf_sigma_mm=(psf_z, psf_xy, psf_xy), dominance=dominance, n_stenoses=n_sten,
        severity_range=(float(r["severity"][0]), float(r["severity"][1])), n_calcified=n_calc,
        calcium_hu=(float(r["calcium_hu"][0]), float(r["calcium_hu"][1])), n_stents=n_stents,
        left_main_mm=(float(r["left_main_mm"][0]), float(r["left_main_mm"][1])),
    )
    return CohortDraw(options, (d_z, d_xy, d_xy), margins, jitter)
