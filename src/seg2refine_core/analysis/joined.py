"""Left and right coronary trees that touch in the mask: one connected component holding two trees, split in two.

The analysis takes one tree per connected component (:mod:`.trees`). Where a distal left vessel touches a right
one (on the phantoms, and in real hearts with a co-dominant circulation, the LCX's end lies against the RCA's near
the crux) the mask holds both trees in one component, which would get one ostium and one side.

**Detection**, on the component's centerline graph with the lumen radius averaged over about 2 mm
(:meth:`~.trees.PixelTree.width`): let ``w1`` be its widest point (one ostium's region). A second ostium is a
point ``v`` at least ``SECOND_OSTIUM_FRACTION`` as wide, within ``OSTIA_MAX_MM`` of ``w1`` (both ostia lie on the
aortic root), whose way along the centerline from ``w1`` is at least ``DETOUR`` times their straight distance (it
runs round the heart and back) and has a neck: somewhere along it the median equivalent diameter of the
cross-sections (:mod:`.cross_section`) over ``NECK_MM`` is at most ``NECK_FRACTION`` of the narrower ostium's
diameter (twice its width): thin distal vessels. A coronary tree tapers from its ostium (Murray's law) and its
proximal vessels run away from the aortic root, so within one tree no such point exists; a focal stenosis
followed by a healthy lumen is too short for the neck and too straight for the detour.

**Split**: at the point of that way where the running ``NECK_MM`` median of the cross-section diameter is
smallest (the junction of the two trees is where their thin distal vessels meet), the lumen is cut by an
ellipsoid of the local lumen radius plus one voxel along each axis, grown by a voxel per axis (``MAX_GROW`` times
at most) until the two ostia lie in different pieces; the component's centerlines are computed again piece by piece
(each piece checked again, ``MAX_SPLITS`` times at most, for trees that touch in more than one place, on the lumen with
every earlier cut cleared: where the first cut leaves them joined through a second contact, the second parts them). The
lumen voxels of a cut belong to neither piece. Where the two vessels taper to the same calibre over a long way
the narrowest point can lie some way from the contact (on the cohort phantoms up to ~30 mm; the contact itself
reads wide, two lumens in one cross-section), and the vessel between them lands on the other tree.

Positions are voxel indices (z, y, x); lengths mm.
"""

from __future__ import annotations

import cc3d
import numpy as np
from scipy.sparse import csgraph

from seg2refine_core.analysis.centerline import CenterlineGraph, component_graph
from seg2refine_core.analysis.cross_section import equivalent_diameters
from seg2refine_core.analysis.trees import PixelTree

#: a second ostium is at least this fraction as wide as the widest point of the component
SECOND_OSTIUM_FRACTION = 0.6
#: the two ostia lie on the aortic root: at most this far apart (mm)
OSTIA_MAX_MM = 50.0
#: the centerline between two ostia runs round the heart: at least this many times their straight distance
DETOUR = 3.0
#: length (mm) of the stretch whose median cross-section diameter makes the neck between two trees
NECK_MM = 10.0
#: the neck's median diameter is at most this fraction of the narrower ostium's
NECK_FRACTION = 0.5
#: at most this many cuts per connected component
MAX_SPLITS = 3
#: the cut's ellipsoid grows by one voxel along each axis, at most this many times, until it parts the two ostia
MAX_GROW = 4
#: at most this many second-ostium candidates (distinct wide regions) are tried per component
MAX_TRIES = 5


def find_junction(mask: np.ndarray, graph: CenterlineGraph, spacing: tuple[float, float, float]
                  ) -> tuple[np.ndarray, float, tuple[np.ndarray, np.ndarray]] | None:
    """Where one component's two trees meet (see the module docstring): the voxel (3,) int (z, y, x) to cut at,
    the lumen radius there (mm) and the two ostia's voxels, or None if the component holds one tree.
    mask: (z, y, x), the graph's mask."""
    pt = PixelTree(graph, spacing, np.eye(4))
    if len(pt.voxels) < 3:
        return None
    width = pt.width()
    w1 = int(np.argmax(width))
    along, pred = csgraph.dijkstra(pt.adjacency, indices=w1, return_predecessors=True)
    straight = np.linalg.norm(pt.mm - pt.mm[w1], axis=1)
    candidate = ((width >= SECOND_OSTIUM_FRACTION * width[w1]) & (straight <= OSTIA_MAX_MM)
                 & np.isfinite(along) & (along >= DETOUR * straight) & (along >= 2.0 * NECK_MM))
    tried: list[int] = []
    for v in np.nonzero(candidate)[0][np.argsort(-width[candidate], kind="stable")]:
        if any(np.linalg.norm(pt.mm[v] - pt.mm[t]) < NECK_MM for t in tried):
            continue  # the same wide region as one already tried
        tried.append(int(v))
        path = [int(v)]
        while path[-1] != w1:
            path.append(int(pred[path[-1]]))
        path = np.asarray(path[::-1])
        diameter = equivalent_diameters(mask, spacing, pt.voxels[path], np.maximum(4.0 * pt.radius[path], 2.0))
        neck = _running_median(along[path], diameter, NECK_MM)
        cut = int(np.argmin(neck))
        if neck[cut] <= NECK_FRACTION * 2.0 * min(width[w1], width[v]):
            return pt.voxels[path[cut]].copy(), float(pt.radius[path[cut]]), (pt.voxels[w1], pt.voxels[v])
        if len(tried) >= MAX_TRIES:
            break
    return None


def _running_median(s: np.ndarray, values: np.ndarray, window: float) -> np.ndarray:
    """Median of ``values`` over [s - window / 2, s + window / 2] at each point (inf where the window runs past an
    end of the path)."""
    lo = np.searchsorted(s, s - window / 2.0, side="left")
    hi = np.searchsorted(s, s + window / 2.0, side="right")
    inside = (s - window / 2.0 >= s[0]) & (s + window / 2.0 <= s[-1])
    return np.array([np.median(values[a:b]) if ok else np.inf for a, b, ok in zip(lo, hi, inside, strict=True)])


def separate_joined_trees(mask: np.ndarray, graphs: list[CenterlineGraph], spacing: tuple[float, float, float],
                          *, spur_mm: float, min_length_mm: float) -> list[CenterlineGraph]:
    """``graphs`` (of ``mask``'s components, from :func:`~.centerline.centerline_graphs`) with every component that
    holds two trees replaced by the graphs of its pieces (module docstring), largest first (by lumen voxels).

    mask: (z, y, x), nonzero = lumen; spacing (sz, sy, sx) mm; spur_mm and min_length_mm as for the centerlines.
    """
    sp = np.asarray(spacing, dtype=float)
    out: list[CenterlineGraph] = []
    todo = [(g, 0) for g in graphs]
    lumen = None  # the mask with every cut made so far cleared: trees that touch twice need both cuts to part
    while todo:
        graph, splits = todo.pop(0)
        current = mask if lumen is None else lumen
        junction = find_junction(current, graph, spacing) if splits < MAX_SPLITS else None
        if junction is None:
            out.append(graph)
            continue
        comp, offset = _component(current, graph, sp)
        voxel, radius, ostia = junction
        crop = tuple(slice(int(o), int(o) + n) for o, n in zip(offset, comp.shape, strict=True))
        grid = np.ogrid[crop]
        for grow in range(1, MAX_GROW + 1):  # the lumen radius plus one voxel along each axis, more if needed
            reach = radius + grow * sp
            cut = comp & (sum(((g - c) * s / r) ** 2 for g, c, s, r in zip(grid, voxel, sp, reach, strict=True))
                          > 1.0)
            pieces, n = cc3d.connected_components(cut, connectivity=26, return_N=True)
            first, second = (pieces[tuple(o - offset)] for o in ostia)
            if first != second:
                break
        if lumen is None:
            lumen = np.asarray(mask) != 0
        lumen[crop] &= ~(comp & ~cut)
        stats = cc3d.statistics(pieces)
        for k in range(1, n + 1):
            box = stats["bounding_boxes"][k]
            piece = component_graph(np.pad(pieces[box] == k, 1), offset + [b.start - 1 for b in box], spacing,
                                    spur_mm)
            if piece is not None and piece.length_mm >= min_length_mm:
                piece.component = graph.component
                todo.append((piece, splits + 1))
    return sorted(out, key=lambda g: -g.voxel_count)


def _component(mask: np.ndarray, graph: CenterlineGraph, sp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The component of ``graph`` as a bool crop of ``mask`` (everything else cleared) and the crop's offset."""
    vox = np.concatenate([s.voxels for s in graph.segments] + [graph.nodes])
    radius = max([float(s.radius_mm.max()) for s in graph.segments if len(s.radius_mm)] + [0.0])
    margin = np.ceil(radius / sp).astype(int) + 2
    lo = np.maximum(vox.min(0) - margin, 0)
    hi = np.minimum(vox.max(0) + margin + 1, mask.shape)
    crop = np.asarray(mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]) != 0
    labels = cc3d.connected_components(crop, connectivity=26)
    z, y, x = graph.nodes[0] - lo
    return labels == labels[z, y, x], lo
