"""Phantom coronary trees: left (LM -> LAD with diagonals, LCX with obtuse marginals) and right (RCA with acute
marginals, PDA/PLB) vessels on the epicardium with Murray radii and tortuosity, their stenoses, calcified plaques
and stents."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from seg2refine_core.data.phantom.anatomy import Heart
from seg2refine_core.data.phantom.geometry import resample, unit

CENTRELINE_STEP_MM = 0.25  # coronary centreline sampling (independent of the voxel size)
SEVERITY_RANGE = (0.35, 0.7)  # default range of stenosis severities (fractional diameter reduction)
CALCIUM_HU = (800.0, 1200.0)  # default range of calcified-plaque densities
DOMINANCE = ("right", "left", "co")


@dataclass
class Vessel:
    """One coronary vessel: dense centreline (n, 3) mm, nominal radius, lumen radius (after stenoses), tree."""

    name: str
    tree: str
    points: np.ndarray
    r_nom: np.ndarray
    r_lumen: np.ndarray


@dataclass
class Plaque:
    """A calcified plaque: a sphere (centre mm, radius mm) of ``hu`` beside the lumen of ``vessel``."""

    center: np.ndarray
    radius: float
    hu: float
    vessel: str


@dataclass
class Stent:
    """A metal stent in ``vessel`` from arc ``start_mm`` to ``end_mm`` (mm along its centreline): ``wires`` helical
    wires (half of each handedness, a diamond mesh) of equivalent radius ``wire_mm`` on the lumen wall, ``pitch_mm``
    per turn, metal ``hu`` (before partial volume, blur and the CT range clip). ``paths`` are the wire centrelines
    (n, 3) mm, set by :func:`stents`."""

    vessel: str
    tree: str
    start_mm: float
    end_mm: float
    radius_mm: float
    wires: int
    wire_mm: float
    pitch_mm: float
    hu: float
    paths: list[np.ndarray]


def wiggle(rng: np.random.Generator, n: int, length: float, amp_mm: float) -> np.ndarray:
    """Smooth random 1D perturbation (n,) in mm: sum of a few sines with wavelengths 10-25 mm."""
    t = np.linspace(0.0, length, n)
    out = np.zeros(n)
    for _ in range(4):
        lam = rng.uniform(10.0, 25.0)
        out += rng.normal() * np.sin(2 * np.pi * t / lam + rng.uniform(0, 2 * np.pi))
    return out * amp_mm / 2.0


def murray_profile(n: int, step: float, r0: float, r_end: float, branches: list[tuple[int, float]]
                    ) -> tuple[np.ndarray, dict[int, float]]:
    """Radius (n,) along a vessel sampled every ``step`` mm, and the start radius of each modelled branch.

    At branch sample i with fraction f the child starts at r_child = f * r_parent and the parent keeps
    (r^3 - r_child^3)^(1/3) (Murray). Between modelled branches, unmodelled small branches drain a constant fraction
    of the flow (~ r^3) per mm, so r^3 decays exponentially at the rate that ends the vessel at ``r_end``.
    """
    events = dict(branches)
    keep = math.prod(1.0 - f**3 for f in events.values())
    length = step * (n - 1)
    lam = max(0.0, math.log(r0**3 * keep / r_end**3) / length) if length > 0 else 0.0
    decay = math.exp(-lam * step)
    r3 = np.empty(n)
    r3[0] = r0**3
    child = {}
    for i in range(1, n):
        r3[i] = r3[i - 1] * decay
        if i in events:
            child[i] = events[i] * r3[i] ** (1 / 3)
            r3[i] -= child[i] ** 3
    return np.cbrt(np.maximum(r3, r_end**3)), child


@dataclass
class SurfacePath:
    """A path on the heart: per sample the direction angles from the heart centre (deg), the distance from the
    centre to the epicardium along that direction (mm), the position along the node path (0..1) and the point."""

    theta: np.ndarray
    phi: np.ndarray
    depth: np.ndarray
    pos: np.ndarray
    points: np.ndarray


class TreeBuilder:
    """Builds coronary vessels as paths in (theta, phi) on the heart surface, with Murray radii."""

    def __init__(self, heart: Heart, rng: np.random.Generator, step: float) -> None:
        self.heart, self.rng, self.step = heart, rng, step
        self.gap = 0.6  # mm of fat between the epicardium and the vessel wall
        self.vessels: list[Vessel] = []

    def angle_path(self, nodes: list[tuple[float, float]], amp_mm: float, offset: float = 2.0) -> SurfacePath:
        """Path through (theta, phi) nodes (deg) with tortuosity, ``offset`` mm outside the epicardium, resampled
        every ``step`` mm."""
        nodes_arr = np.asarray(nodes, float)
        seg = np.hypot(*np.diff(nodes_arr, axis=0).T)
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        m = 400
        t = np.linspace(0, cum[-1], m)
        theta = ndimage.gaussian_filter1d(np.interp(t, cum, nodes_arr[:, 0]), 6, mode="nearest")
        phi = ndimage.gaussian_filter1d(np.interp(t, cum, nodes_arr[:, 1]), 6, mode="nearest")
        pts = self.heart.on_surface(theta, phi, offset)
        length = float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum())
        dist = max(float(np.linalg.norm(pts - self.heart.o, axis=1).mean()), 1.0)
        ramp = np.clip(np.linspace(0, 10, m), 0, 1)  # no wiggle at the origin: branches stay on their parent
        dth = np.degrees(ramp * wiggle(self.rng, m, length, amp_mm) / dist)
        dph = np.degrees(ramp * wiggle(self.rng, m, length, amp_mm) / dist)
        theta, phi = theta + dth, phi + dph / np.maximum(np.abs(np.sin(np.radians(theta))), 0.3)
        dirs = self.heart.direction(theta, phi)
        depth = self.heart.surface_distance(dirs)
        dense, frac = resample(self.heart.o + dirs * (depth + offset)[:, None], self.step)
        idx = np.arange(m)
        return SurfacePath(np.interp(frac, idx, theta), np.interp(frac, idx, phi), np.interp(frac, idx, depth),
                            frac / (m - 1), dense)

    def finish(self, name: str, tree: str, path: SurfacePath, r: np.ndarray) -> None:
        """Seat the vessel ``gap`` mm outside the epicardium (its wall touching the fat) and store it."""
        dirs = self.heart.direction(path.theta, path.phi)
        pts = self.heart.o + dirs * (path.depth + self.gap + r)[:, None]
        self.vessels.append(Vessel(name, tree, pts, r.copy(), r.copy()))

    def vessel(self, name: str, tree: str, nodes: list[tuple[float, float]], r0: float, r_end: float,
               branch_at: list[float], fractions: list[float], amp_mm: float
               ) -> tuple[SurfacePath, list[tuple[int, float]]]:
        """A surface vessel with side branches at ``branch_at`` (0..1 along the node path) taking ``fractions`` of
        the local radius. Returns its path and the children as (sample index, start radius)."""
        path = self.angle_path(nodes, amp_mm)
        n = len(path.points)
        events = [
            (int(np.clip(np.searchsorted(path.pos, f), 1, n - 2)), fr)
            for f, fr in zip(branch_at, fractions, strict=True)
        ]
        r, child = murray_profile(n, self.step, r0, r_end, events)
        self.finish(name, tree, path, r)
        return path, [(i, child[i]) for i, _ in events]

    def branch(self, name: str, tree: str, parent: SurfacePath, i: int, r0: float, end: tuple[float, float],
               r_end: float, amp_mm: float) -> None:
        """A side branch leaving the parent at sample ``i`` towards angle ``end``, tapering to ``r_end``."""
        th0, ph0 = float(parent.theta[i]), float(parent.phi[i])
        end_phi = ph0 + (end[1] - ph0 + 180.0) % 360.0 - 180.0  # the short way round
        path = self.angle_path([(th0, ph0), (end[0], end_phi)], amp_mm)
        r, _ = murray_profile(len(path.points), self.step, r0, r_end, [])
        self.finish(name, tree, path, r)

    def straight(self, name: str, tree: str, start: np.ndarray, end: np.ndarray, r: float, bow: np.ndarray
                 ) -> None:
        """A short proximal segment (left main, proximal RCA) from an ostium, bowed by ``bow`` mm mid-way."""
        t = np.linspace(0, 1, 50)[:, None]
        pts = start + t * (end - start) + np.sin(np.pi * t) * bow
        dense, _ = resample(pts, self.step)
        self.vessels.append(Vessel(name, tree, dense, np.full(len(dense), r), np.full(len(dense), r)))


def grooves(heart: Heart) -> tuple[float, float, float]:
    """Azimuths (deg) of the anterior and posterior interventricular grooves, and the AV-groove polar angle."""
    phi = np.arange(-180.0, 180.0, 1.0)
    d = heart.direction(np.full(len(phi), 70.0), phi)
    t_lv = heart.surface_distance(d, [heart.lv_epi])
    t_rv = heart.surface_distance(d, [heart.rv_epi])
    rv_out = t_rv > t_lv
    change = np.nonzero(rv_out != np.roll(rv_out, 1))[0]
    cands = phi[change]
    ant = float(cands[np.argmin(np.abs(cands + 75))])
    post = float(cands[np.argmin(np.abs(cands - 75))])
    r_base = 17.0 * math.sqrt(1 - (heart.base / 27.0) ** 2)
    theta_av = math.degrees(math.atan2(r_base, heart.base)) - 4.0
    return ant, post, theta_av


def division_azimuth(heart: Heart, theta: float, ant: float, offset: float, length_mm: float) -> float:
    """Azimuth (deg) of the left main's division on the AV groove (polar angle ``theta``, ``offset`` mm off the
    epicardium) that puts it ``length_mm`` from the aortic root's surface: the first one, going from 14 deg before
    the anterior groove ``ant`` towards the LCX, where the distance reaches ``length_mm``, at most 54 deg before it
    (beyond, the groove leaves the ventricle; there the distance is about 7 ``heart.k`` mm). A length shorter than
    the distance at 14 deg or longer than at 54 deg is clamped to that end."""
    phi = np.arange(ant - 14.0, ant - 54.25, -0.25)
    points = heart.on_surface(np.full(len(phi), theta), phi, offset)
    distance = np.linalg.norm(points - heart.root.center, axis=1) - heart.root.radii[0]
    reached = np.nonzero(distance >= length_mm)[0]
    return float(phi[reached[0]] if len(reached) else phi[-1])


def coronary_trees(rng: np.random.Generator, heart: Heart, step: float, dominance: str | None = None,
                   left_main_mm: tuple[float, float] | None = None) -> tuple[list[Vessel], dict]:
    """Left and right coronary trees with Murray radii, tortuosity and a dominance: ``dominance`` ('right', 'left'
    or 'co') or else drawn (80 % right, 20 % left; the draw is made either way).

    The left main runs straight (bowed outwards by 1.5 ``heart.k`` mm) from the aortic root to its division on the
    AV groove, 14-22 deg before the anterior groove: 1.8-3.7 mm from the root at real size, shorter than the left
    main is across, so it loops back on itself. ``left_main_mm`` (low, high) places the division instead where the
    root is a length drawn from that range away (mm, about 7 ``heart.k`` at most, clamped;
    :func:`division_azimuth`), from the same draw, so nothing else drawn changes.

    Right-dominant: the RCA gives the PDA at the crux and continues as the posterolateral branch, the LCX ends on
    the lateral wall. Left-dominant: the LCX runs to the crux and gives the PDA, the RCA ends before it.
    Co-dominant: the RCA gives the PDA as when right-dominant and the LCX runs round to just short of the crux.
    """
    b = TreeBuilder(heart, rng, step)
    ant, post, th_av = grooves(heart)
    amp = rng.uniform(0.6, 1.4)
    drawn = "right" if rng.uniform() < 0.8 else "left"
    kind = drawn if dominance is None else dominance
    right_dominant = kind != "left"  # the RCA gives the PDA
    r_end = 0.4

    # left: left main -> LAD (diagonals) + LCX (obtuse marginals; PDA when left-dominant)
    r_lm = rng.uniform(1.9, 2.3)
    g = rng.uniform(0.78, 0.86)
    r_lad, r_lcx = g * r_lm, (1 - g**3) ** (1 / 3) * r_lm
    before_ant = rng.uniform(14, 22)
    if left_main_mm is None:
        bif_phi = ant - before_ant
    else:
        low, high = left_main_mm
        length = low + (before_ant - 14) / 8 * (high - low)
        bif_phi = division_azimuth(heart, th_av, ant, b.gap + r_lm, length)
    bif = heart.on_surface(np.array([th_av]), np.array([bif_phi]), b.gap + r_lm)[0]
    ostium = heart.root.center + unit(bif - heart.root.center) * heart.root.radii[0]
    b.straight("LM", "left", ostium, bif, r_lm, unit(bif - heart.o) * 1.5 * heart.k)

    n_diag = int(rng.integers(1, 4))
    d_at = list(np.sort(rng.uniform(0.12, 0.55, n_diag)))
    lad, kids = b.vessel("LAD", "left", [(th_av, bif_phi), (th_av - 8, ant), (20, ant + 4), (-18, ant + 10)],
                         r_lad, r_end, d_at, list(rng.uniform(0.6, 0.75, n_diag)), amp)
    for j, (i, rc) in enumerate(kids):
        end = (lad.theta[i] - rng.uniform(35, 55), lad.phi[i] - rng.uniform(45, 70))
        b.branch(f"D{j + 1}", "left", lad, i, rc, end, r_end, amp)

    n_om = int(rng.integers(1, 4))
    at = list(np.sort(rng.uniform(0.25, 0.75, n_om)))
    fr = list(rng.uniform(0.6, 0.8, n_om))
    if kind == "right":
        lcx_end = rng.uniform(-240, -220)
    elif kind == "co":
        lcx_end = post - 360.0 - rng.uniform(10, 20)
    else:
        lcx_end = post - 360.0
        at.append(0.985)
        fr.append(0.85)
    lcx, kids = b.vessel("LCX", "left", [(th_av, bif_phi), (th_av + 2, bif_phi - 30), (th_av + 2, lcx_end)],
                         r_lcx, r_end, at, fr, amp)
    for j, (i, rc) in enumerate(kids[:n_om]):
        b.branch(f"OM{j + 1}", "left", lcx, i, rc, (rng.uniform(25, 45), lcx.phi[i] - rng.uniform(0, 20)), r_end,
                 amp)
    if kind == "left":
        i, rc = kids[-1]
        b.branch("PDA", "left", lcx, i, rc, (rng.uniform(20, 35), post + 4), r_end, amp)

    # right: proximal RCA from the right sinus -> right AV groove -> crux (PDA + PLB when right-dominant)
    r_rca = rng.uniform(1.7, 2.1)
    start_phi = ant + rng.uniform(25, 35)
    groove0 = heart.on_surface(np.array([th_av]), np.array([start_phi]), b.gap + r_rca)[0]
    ostium = heart.root.center + unit(groove0 - heart.root.center) * heart.root.radii[0]
    b.straight("RCA-prox", "right", ostium, groove0, r_rca, unit(groove0 - heart.o) * 1.5 * heart.k)
    n_am = int(rng.integers(1, 3))
    at = list(np.sort(rng.uniform(0.3, 0.55, n_am)))
    fr = list(rng.uniform(0.55, 0.7, n_am))
    if right_dominant:
        nodes = [(th_av, start_phi), (th_av + 3, post), (th_av - 12, post + rng.uniform(15, 30))]
        legs = np.hypot(*np.diff(np.asarray(nodes), axis=0).T)
        at.append(float(legs[0] / legs.sum()))  # the crux
        fr.append(0.8)
    else:
        nodes = [(th_av, start_phi), (th_av + 3, post - rng.uniform(20, 35))]
    rca, kids = b.vessel("RCA", "right", nodes, r_rca, r_end, at, fr, amp)
    for j, (i, rc) in enumerate(kids[:n_am]):
        b.branch(f"AM{j + 1}", "right", rca, i, rc, (rng.uniform(50, 70), rca.phi[i] + rng.uniform(-5, 10)), r_end,
                 amp)
    if right_dominant:
        i, rc = kids[-1]
        b.branch("PDA", "right", rca, i, rc, (rng.uniform(20, 35), post + 4), r_end, amp)
    info = {"right_dominant": right_dominant, "dominance": kind, "grooves_deg": [ant, post, th_av]}
    return b.vessels, info


MAIN = ("LM", "LAD", "LCX", "RCA", "RCA-prox", "D1", "OM1")  # the vessels that carry lesions


def lesions(rng: np.random.Generator, vessels: list[Vessel], severity_range: tuple[float, float] = SEVERITY_RANGE,
            n_stenoses: int | None = None, n_calcified: int | None = None,
            calcium_hu: tuple[float, float] = CALCIUM_HU) -> tuple[list[dict], list[Plaque]]:
    """Narrow 1-3 vessels (soft-plaque stenoses) and place 1-4 calcified plaques beside the lumen.

    A stenosis at arc length ``s0`` (mm) multiplies the lumen radius by ``1 - severity * exp(-((s - s0) / sigma)^2
    / 2)``: ``severity`` (drawn uniformly from ``severity_range``) is the fractional diameter reduction at its centre
    against the vessel's own (nominal) diameter there; ``sigma`` is 1.5-3 mm. The draws do not depend on
    ``severity_range`` beyond the severities themselves, so the rest of a volume stays the same when it changes.
    ``n_stenoses`` (0-7, one vessel each) and ``n_calcified`` replace the drawn counts (drawn either way);
    plaque densities are drawn from ``calcium_hu``.
    """
    main = [v for v in vessels if v.name in MAIN]
    stenoses = []
    count = int(rng.integers(1, 4))
    count = count if n_stenoses is None else min(int(n_stenoses), len(main))
    for v in rng.choice(main, size=count, replace=False):
        s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(v.points, axis=0), axis=1))])
        s0 = rng.uniform(0.1, 0.6) * s[-1]
        half = rng.uniform(1.5, 3.0)
        severity = rng.uniform(severity_range[0], severity_range[1])
        v.r_lumen *= 1.0 - severity * np.exp(-0.5 * ((s - s0) / half) ** 2)
        stenoses.append({"vessel": v.name, "tree": v.tree, "at_mm": round(float(s0), 2),
                         "severity": round(float(severity), 3), "sigma_mm": round(float(half), 3),
                         "center_mm": v.points[int(np.argmin(np.abs(s - s0)))].round(2).tolist()})
    plaques = []
    count = int(rng.integers(1, 5))
    count = count if n_calcified is None else int(n_calcified)
    for _ in range(count):
        v = main[int(rng.integers(len(main)))]
        i = int(round(rng.uniform(0.1, 0.7) * (len(v.points) - 1)))
        tangent = unit(v.points[min(i + 1, len(v.points) - 1)] - v.points[max(i - 1, 0)])
        side = rng.normal(size=3)
        side = unit(side - (side @ tangent) * tangent)
        pr = rng.uniform(0.8, 1.6)
        center = v.points[i] + side * (v.r_nom[i] + 0.35 * pr)
        plaques.append(Plaque(center, float(pr), float(rng.uniform(calcium_hu[0], calcium_hu[1])), v.name))
    return stenoses, plaques


def stents(rng: np.random.Generator, vessels: list[Vessel], stenoses: list[dict], count: int) -> list[Stent]:
    """Place ``count`` stents (8-28 mm long) on the LAD, LCX, RCA, D1 or OM1 where the vessel's healthy radius is
    at least 1.1 mm (stents come in diameters of 2.25 mm and up), clear of the stenoses (a treated segment has a
    healthy lumen: the stent holds it at the nominal radius). Each has 8-12 wires of 0.05-0.07 mm equivalent radius
    (struts of ~0.1 x 0.1 mm), a 3-6 mm pitch and metal of 20000-40000 HU (cobalt-chromium at ~70 keV). A stent
    that finds no room in 20 tries is left out. Draws nothing when ``count`` is 0."""
    cands = [v for v in vessels if v.name in ("LAD", "LCX", "RCA", "D1", "OM1")]
    out: list[Stent] = []
    for _ in range(count):
        for _try in range(20):
            v = cands[int(rng.integers(len(cands)))]
            s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(v.points, axis=0), axis=1))])
            wide = s[v.r_nom >= 1.1]
            room = float(wide[-1]) if len(wide) else 0.0
            length = rng.uniform(8.0, 28.0)
            start = rng.uniform(0.0, 1.0) * (room - length)
            end = start + length
            busy = [(st["at_mm"] - 3 * st["sigma_mm"], st["at_mm"] + 3 * st["sigma_mm"])
                    for st in stenoses if st["vessel"] == v.name and st["tree"] == v.tree]
            busy += [(o.start_mm - 2.0, o.end_mm + 2.0) for o in out if o.vessel == v.name and o.tree == v.tree]
            if start >= 0.0 and all(end < lo or start > hi for lo, hi in busy):
                break
        else:
            continue
        wires, pitch = 2 * int(rng.integers(4, 7)), rng.uniform(3.0, 6.0)
        wire_mm, hu = rng.uniform(0.05, 0.07), rng.uniform(20000.0, 40000.0)
        phase = rng.uniform(0, 2 * np.pi)
        inside = (s >= start) & (s <= end)
        pts, arc = v.points[inside], s[inside] - start
        radius = float(v.r_nom[inside].mean())
        tangent = np.gradient(pts, axis=0)
        tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
        n1 = np.empty_like(pts)  # parallel-transported normal
        seed_dir = np.eye(3)[int(np.argmin(np.abs(tangent[0])))]
        n1[0] = unit(seed_dir - (seed_dir @ tangent[0]) * tangent[0])
        for i in range(1, len(pts)):
            n = n1[i - 1] - (n1[i - 1] @ tangent[i]) * tangent[i]
            n1[i] = unit(n)
        n2 = np.cross(tangent, n1)
        paths = []
        for j in range(wires):
            hand = 1.0 if j % 2 == 0 else -1.0
            angle = phase + 2 * np.pi * (j // 2) / (wires // 2) + hand * 2 * np.pi * arc / pitch
            ring = np.cos(angle)[:, None] * n1 + np.sin(angle)[:, None] * n2
            paths.append(pts + radius * ring)
        out.append(Stent(v.name, v.tree, float(start), float(end), radius, wires, float(wire_mm), float(pitch),
                         float(hu), paths))
    return out
