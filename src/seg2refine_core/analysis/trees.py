"""Trees and branches from centerline graphs: the ostium, the flow direction, and vessels from origin to end.

Per connected component (one :class:`~.centerline.CenterlineGraph`), on the graph of its centerline voxels:

* **Ostium** (the root). Coronary lumen is widest at the ostium and tapers downstream, so the search starts at the
  centerline voxel of largest lumen radius (radius averaged over its graph neighbours within about 2 mm). If an
  unbranched direction from there runs to an end point that is still wide (somewhere in its distal half at least
  ``STUB_RADIUS_FRACTION`` of that radius: a blunt end, the cut at the aortic wall, even past an ostial narrowing),
  the nearest such end point is the ostium; a division within the widest voxel's inscribed ball (the widest point of a
  left main lies at its bifurcation) is passed, its directions searched in turn for an end within ``PASSED_STUB_MM``
  (a side branch leaving the bifurcation reaches farther). For the left tree (one of the two largest, beside a right
  tree) the end so found past the division but farther, within ``LEFT_MAIN_MAX_MM`` along the centerline, that lies
  most nearly towards the right tree's ostium as seen from the widest voxel is the ostium if at cos >=
  ``OSTIUM_DIRECTION_COS`` (both ostia lie on the aortic root): a left main 5-15 mm long whose lesion leaves its
  widest point on the LAD or LCX just past the division (cohort phantoms drawn with 5-10 mm left mains). An unbranched
  direction that reaches an end point within ``OSTIAL_STUB_MM`` qualifies whatever its width: an ostial stenosis
  narrows the lumen from the ostium on, so the widest point lies just past it and the ostium's own stub is narrow (the
  nearest qualifying end still wins, so a long tapering vessel's distal tip never beats it). Only end points of the
  graph qualify, not the voxel where two ways round a loop meet. Otherwise the widest voxel is a division with no stub
  before it: a left main a few mm long (narrowed by a lesion, or 3 mm and healthy) reaches no farther than the lumen
  radius at its division plus ``spur_mm`` and loses its skeleton to spur pruning (:mod:`.centerline`, step 4). For the
  left tree (one of the two largest), of the terminal segments pruned there (their inner end inside the division's
  inscribed ball) that reach at least ``OSTIAL_SPUR_REACH_MM`` beyond that ball and head, from their junction pixel to
  their end, for the right tree's ostium (cos >= ``OSTIUM_DIRECTION_COS``: both ostia lie on the aortic root, and a
  left main runs from its bifurcation back towards it), the one reaching farthest is put back and its end point is the
  ostium. On the cohort phantoms the pruned left mains head for the RCA's ostium at cos 0.48-0.69 and the other spurs
  reaching as far at -0.28 to 0.27; the stray twigs that, with no direction test, became ostia on Y (legacy
  main-vessel names 0.626 -> 0.588) head away from it (-0.26, -0.27). A twig heading the same way as a left main would
  is still taken for one. With none such, or no right tree, the widest voxel itself is the root.
* **Flow direction**: every centerline voxel's parent is its predecessor on the shortest path from the root
  (``scipy.sparse.csgraph.dijkstra``); loops are broken there.
* **Branches** (vessels): the root branch starts at the ostium and, at each junction, continues into one child;
  every other child starts a side branch at the parent's wall (its points inside the junction's inscribed ball
  stay the parent's). Which child continues, comparing directions over ``DIRECTION_MM`` beyond the junction's
  ball with the vessel's own last ``DIRECTION_MM``:

  - the right tree's root branch (the RCA, in the right atrioventricular groove) and any vessel that runs round
    the heart (at |cos| < ``AV_GROOVE_COS`` to the base-to-apex axis :data:`~.sides.HEART_AXIS_RAS`, as the LCX
    does in the left groove, both over its last ``DIRECTION_MM`` and from its origin to the junction: a vessel
    heading for the apex, as the LAD does, may run across the axis for a few mm where it winds over the heart's
    surface) continues into the child that heads least towards the apex, among the children
    whose longest path down is at least ``CONTINUATION_MIN_FRACTION`` of the longest and which do not turn back
    (cos >= ``MAX_TURN_COS``): the marginal branches and the PDA run towards the apex;
  - any other vessel continues into the child with the largest cos(angle to its own direction) + (longest path
    down / the longest child's): straight on, and far. On the phantoms this pair of rules names 0.92-0.97 of the
    main vessels' centerline points right, against 0.80 for the angle alone and 0.83 for the longest path alone.

Positions here are voxel indices ``(z, y, x)``; arc lengths, radii and lengths are mm. A branch's points are the
voxel centres; its arc length and length come from the path smoothed over about two voxels (a voxel staircase
is longer than the curve it samples), its ends and junctions kept in place (so a left main cut off at its
division is no shorter than its chord). Tortuosity is length / chord (the distance metric of Bullitt et al.,
IEEE TMI 2003).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from seg2refine_core.analysis.centerline import CenterlineGraph, Segment
from seg2refine_core.analysis.sides import HEART_AXIS_RAS, assign_sides, ras_direction_in_array_mm, voxels_to_ras

#: a direction from the widest voxel that stays this fraction as wide to an end point is the proximal stub
STUB_RADIUS_FRACTION = 0.75
#: an unbranched run from the widest voxel to an end point at most this long (mm) is the ostium's stub even when
#: narrowed (an ostial lesion)
OSTIAL_STUB_MM = 15.0
#: a pruned spur at a division with no stub before it is the ostium's stub if it reaches this far (mm) beyond the
#: division's inscribed radius
OSTIAL_SPUR_REACH_MM = 1.0
#: ... and if it heads for the other tree's ostium at least this closely (cos of the angle)
OSTIUM_DIRECTION_COS = 0.35
#: an end found past a division inside the widest voxel's ball is the ostium's stub only this close (mm along the
#: centerline) to the widest voxel: a left main a few mm long, not a side branch leaving its bifurcation
PASSED_STUB_MM = 8.0
#: ... unless it heads for the other tree's ostium (``OSTIUM_DIRECTION_COS``) within this (mm along the centerline):
#: a longer left main (about 10 mm in adults, rarely over 20; its centerline runs longer than its chord)
LEFT_MAIN_MAX_MM = 25.0
#: a centerline point within a junction's inscribed radius plus this (mm) does not measure its own vessel
JUNCTION_MARGIN_MM = 1.0
#: arc length (mm) over which the directions at a junction are compared
DIRECTION_MM = 5.0
#: a child is a candidate for the continuation if its longest path down is at least this fraction of the longest
CONTINUATION_MIN_FRACTION = 0.25
#: a vessel running at |cos| below this to the heart's axis runs round the heart (an atrioventricular groove)
AV_GROOVE_COS = 0.7
#: a child turning back more than this (cos of the angle to the vessel's own direction) does not continue it
MAX_TURN_COS = -0.2


@dataclass
class Branch:
    """A vessel from its origin to its end. voxels (n, 3) int64 (z, y, x); radius_mm (n,) inscribed lumen radius
    (:mod:`.radius`); diameter_mm (n,) equivalent diameter of the cross-section (:mod:`.cross_section`, set by
    :func:`~.analyze.analyze_mask`; twice the radius until then); arc_mm (n,) arc length from the origin;
    reliable (n,) False within a junction's inscribed radius plus ``JUNCTION_MARGIN_MM`` and one voxel from an end,
    where the lumen measured is not this vessel's own; parent and origin: the parent branch id and the index in its
    voxels where this one leaves (None for the root branch); downstream_mm: centerline length of this branch and
    everything downstream of it; name: LM, LAD, LCX, RCA or 'unnamed' (set by :mod:`.naming`)."""

    id: int
    tree: int
    voxels: np.ndarray
    radius_mm: np.ndarray
    arc_mm: np.ndarray
    reliable: np.ndarray
    parent: int | None
    origin: int | None
    downstream_mm: float
    name: str = "unnamed"
    diameter_mm: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        if len(self.diameter_mm) != len(self.radius_mm):
            self.diameter_mm = 2.0 * self.radius_mm

    @property
    def length_mm(self) -> float:
        return float(self.arc_mm[-1]) if len(self.arc_mm) else 0.0


@dataclass
class Tree:
    """One connected component's tree: root_voxel (3,) int (z, y, x) at the ostium (or the widest point),
    voxel_count lumen voxels, branch ids (root branch first), side 'left', 'right' or 'other' (set by
    :mod:`.naming`)."""

    id: int
    component: int
    root_voxel: np.ndarray
    voxel_count: int
    branch_ids: list[int] = field(default_factory=list)
    side: str = "other"


class PixelTree:
    """The centerline voxels of one graph as a rooted tree (parents from the shortest paths to the root).

    voxels (n, 3) int (z, y, x), mm (n, 3) their positions in array mm, radius (n,) lumen radius mm, adjacency
    (n, n) sparse edge lengths mm, root the ostium's index (found as the module docstring says, or the voxel
    ``ostium`` (3,) int where given), parent/children/dist the shortest-path tree from it."""

    def __init__(self, graph: CenterlineGraph, spacing: tuple[float, float, float], affine: np.ndarray,
                 ostium: np.ndarray | None = None) -> None:
        sp = np.asarray(spacing, dtype=float)
        all_vox = np.concatenate([s.voxels for s in graph.segments] + [graph.nodes])
        self.voxels, inverse = np.unique(all_vox, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        radius = np.zeros(len(self.voxels))
        rows, cols, weights = [], [], []
        start = 0
        for s in graph.segments:
            idx = inverse[start : start + len(s.voxels)]
            radius[idx] = s.radius_mm
            start += len(s.voxels)
            if len(idx) > 1:
                rows.append(idx[:-1])
                cols.append(idx[1:])
                weights.append(np.linalg.norm(np.diff(s.voxels, axis=0) * sp, axis=1))
        node_idx = inverse[start:]
        radius[node_idx] = np.maximum(radius[node_idx], graph.node_radius_mm)
        self.radius = radius
        self.mm = self.voxels * sp
        self.step_max = float(sp.max())
        n = len(self.voxels)
        if rows:
            r, c, w = np.concatenate(rows), np.concatenate(cols), np.concatenate(weights)
            keep = r != c
            r, c, w = r[keep], c[keep], np.maximum(w[keep], 1e-6)
        else:
            r = c = np.zeros(0, dtype=int)
            w = np.zeros(0)
        self.adjacency = sparse.coo_matrix((np.r_[w, w], (np.r_[r, c], np.r_[c, r])), shape=(n, n)).tocsr()
        self.root_at_division = False  # set by _find_root: rooted at the widest voxel, inside the graph (a division,
        # where a pruned stub left one, or mid-vessel), for want of a stub
        self.distant_stubs: list[int] = []  # set by _find_root: ends past a division in the widest voxel's ball,
        # farther than PASSED_STUB_MM and within LEFT_MAIN_MAX_MM
        if ostium is None:
            self.root = self._find_root()
        else:
            at = np.nonzero((self.voxels == np.asarray(ostium)).all(axis=1))[0]
            if len(at) == 0:
                raise ValueError(f"ostium voxel {tuple(int(i) for i in ostium)} is not on the centerline")
            self.root = int(at[0])
        dist, pred = csgraph.dijkstra(self.adjacency, indices=self.root, return_predecessors=True)
        self.parent = np.where(pred >= 0, pred, -1)
        self.dist = dist
        self.children: list[list[int]] = [[] for _ in range(n)]
        for v in np.argsort(dist, kind="stable"):
            if self.parent[v] >= 0:
                self.children[self.parent[v]].append(int(v))
        self.step = np.zeros(n)
        has_parent = self.parent >= 0
        self.step[has_parent] = np.linalg.norm(self.mm[has_parent] - self.mm[self.parent[has_parent]], axis=1)
        self.downstream = self.step.copy()  # centerline length from the parent down, everything below included
        self.longest = np.zeros(n)  # length of the longest path down to an end point
        for v in np.argsort(-dist, kind="stable"):
            if self.parent[v] >= 0:
                self.downstream[self.parent[v]] += self.downstream[v]
                self.longest[self.parent[v]] = max(self.longest[self.parent[v]], self.longest[v] + self.step[v])
        self.apex = ras_direction_in_array_mm(HEART_AXIS_RAS, affine, spacing)  # base to apex, array mm (z, y, x)

    def width(self) -> np.ndarray:
        """Lumen radius (mm, (n,)) averaged over each voxel's graph neighbours within about 2 mm."""
        a = (self.adjacency > 0).astype(float)
        smooth = self.radius.copy()
        deg = np.asarray(a.sum(axis=1)).ravel() + 1.0
        for _ in range(3):
            smooth = (a @ smooth + smooth) / deg
        return smooth

    def _find_root(self) -> int:
        """The ostium (see the module docstring)."""
        n = len(self.voxels)
        if n == 1:
            return 0
        widest = int(np.argmax(self.width()))
        from_widest, pred = csgraph.dijkstra(self.adjacency, indices=widest, return_predecessors=True)
        children: list[list[int]] = [[] for _ in range(n)]
        for v in range(n):
            if pred[v] >= 0:
                children[pred[v]].append(v)
        stubs: list[tuple[float, int]] = []
        distant: list[int] = []
        todo = [(first, False) for first in children[widest]]
        while todo:
            v, passed = todo.pop()
            run = [v]
            while len(children[v]) == 1:
                v = children[v][0]
                run.append(v)
            if children[v]:  # a division within the widest point's ball is part of it: look past it
                if np.linalg.norm(self.mm[v] - self.mm[widest]) <= self.radius[widest]:
                    todo += [(c, True) for c in children[v]]
                continue
            if self.adjacency[v].nnz != 1:  # where two ways round a loop meet: no end of the vessel
                continue
            if passed and from_widest[v] > PASSED_STUB_MM:
                if from_widest[v] <= LEFT_MAIN_MAX_MM:
                    distant.append(v)
                continue
            distal = self.radius[run[len(run) // 2 :]]
            short = float(from_widest[v]) <= OSTIAL_STUB_MM
            if short or distal.max() >= STUB_RADIUS_FRACTION * self.radius[widest]:
                stubs.append((float(from_widest[v]), v))
        if stubs and len(children[widest]) >= 2:
            return int(min(stubs)[1])
        self.root_at_division = len(children[widest]) >= 2
        self.distant_stubs = distant
        return widest

    def stub_towards(self, other_ostium: np.ndarray, spacing: tuple[float, float, float]) -> int | None:
        """Of :attr:`distant_stubs`, the end that lies most nearly towards ``other_ostium`` (3,) int (z, y, x), seen
        from the root, if at cos >= ``OSTIUM_DIRECTION_COS``, or None: a left main longer than ``PASSED_STUB_MM``."""
        sp = np.asarray(spacing, dtype=float)
        towards = _unit((np.asarray(other_ostium) - self.voxels[self.root]) * sp)
        cos = [float(_unit(self.mm[v] - self.mm[self.root]) @ towards) for v in self.distant_stubs]
        if not cos or max(cos) < OSTIUM_DIRECTION_COS:
            return None
        return self.distant_stubs[int(np.argmax(cos))]

    def forward(self, first: int, reach_mm: float) -> int:
        """The voxel about ``reach_mm`` downstream of ``first``'s parent, following the longest downstream path."""
        v, travelled = first, self.step[first]
        while travelled < reach_mm and self.children[v]:
            v = max(self.children[v], key=lambda c: self.longest[c] + self.step[c])
            travelled += self.step[v]
        return v


def build_trees(graphs: list[CenterlineGraph], spacing: tuple[float, float, float], affine: np.ndarray
                ) -> tuple[list[Tree], list[Branch]]:
    """Trees (one per graph, in order; their side set by :func:`~.sides.assign_sides`) and all their branches, ids
    counting from 0 (see the module docstring).

    graphs: largest first; spacing: (sz, sy, sx) mm; affine: 4x4, (x, y, z) voxel indices to world RAS mm.
    """
    pixel_trees = [PixelTree(graph, spacing, affine) for graph in graphs]
    sides = assign_sides([voxels_to_ras(pt.voxels, affine) for pt in pixel_trees],
                         [voxels_to_ras(pt.voxels[pt.root][None], affine)[0] for pt in pixel_trees])
    right = [pt for pt, side in zip(pixel_trees, sides, strict=True) if side == "right"]
    for k, (graph, pt, side) in enumerate(zip(graphs, pixel_trees, sides, strict=True)):
        if k < 2 and side == "left" and pt.root_at_division and right:  # the left tree, not a fragment
            other = right[0].voxels[right[0].root]
            end = pt.stub_towards(other, spacing)
            if end is not None:
                pixel_trees[k] = PixelTree(graph, spacing, affine, ostium=pt.voxels[end])
                continue
            restored = restore_ostial_stub(graph, pt, spacing, other)
            if restored is not None:
                pixel_trees[k] = PixelTree(restored, spacing, affine, ostium=restored.nodes[-1])
    trees: list[Tree] = []
    branches: list[Branch] = []
    for graph, pt, side in zip(graphs, pixel_trees, sides, strict=True):
        tree = Tree(len(trees), graph.component, pt.voxels[pt.root].copy(), graph.voxel_count, side=side)
        trees.append(tree)
        # (junction voxel or None for the root, first voxel, parent branch id, origin index in the parent)
        todo: list[tuple[int | None, int, int | None, int | None]] = [(None, pt.root, None, None)]
        while todo:
            junction, first, parent, origin = todo.pop(0)
            path = [first] if junction is None else [junction, first]
            own_id = len(branches)
            in_groove = parent is None and side == "right"  # the RCA runs in the right AV groove all along
            v = first
            while pt.children[v]:
                kids = pt.children[v]
                nxt = kids[0] if len(kids) == 1 else _continuation(pt, path, v, in_groove)
                todo += [(v, k, own_id, len(path) - 1) for k in kids if k != nxt]
                path.append(nxt)
                v = nxt
            branches.append(_branch(own_id, tree.id, pt, path, parent, origin))
            tree.branch_ids.append(own_id)
    return trees, branches


def restore_ostial_stub(graph: CenterlineGraph, pt: PixelTree, spacing: tuple[float, float, float],
                        other_ostium: np.ndarray) -> CenterlineGraph | None:
    """``graph`` with the pruned spur that is its narrowed ostial stub put back (see the module docstring), or None.

    pt: the graph's :class:`PixelTree`, rooted at its widest voxel, a division; spacing (sz, sy, sx) mm;
    other_ostium (3,) int: the voxel (z, y, x) of the other tree's ostium (the RCA's, for a left tree)."""
    sp = np.asarray(spacing, dtype=float)
    centre, radius = pt.voxels[pt.root], float(pt.radius[pt.root])
    towards = (np.asarray(other_ostium) - centre) * sp
    towards /= max(float(np.linalg.norm(towards)), 1e-9)
    best, reach = None, OSTIAL_SPUR_REACH_MM
    for spur in graph.pruned_spurs:
        if np.linalg.norm((spur.voxels[-1] - centre) * sp) > radius:
            continue
        beyond = float(np.linalg.norm((spur.voxels[0] - centre) * sp)) - radius
        heading = (spur.voxels[0] - spur.voxels[-1]) * sp  # from its junction pixel to its end
        if beyond >= reach and float(heading @ towards) >= OSTIUM_DIRECTION_COS * float(np.linalg.norm(heading)):
            best, reach = spur, beyond
    if best is None:
        return None
    nodes, node_radius = graph.nodes, graph.node_radius_mm
    at = np.nonzero((nodes == centre).all(axis=1))[0]
    if len(at) == 0:  # the division is a segment voxel once the stub is pruned: make it a node again
        nodes, node_radius, at = np.vstack([nodes, centre[None]]), np.r_[node_radius, radius], [len(nodes)]
    path = np.vstack([best.voxels, centre[None]])
    stub = Segment((len(nodes), int(at[0])), path, np.r_[best.radius_mm, radius],
                   float(np.linalg.norm(np.diff(path, axis=0) * sp, axis=1).sum()))
    return replace(graph, nodes=np.vstack([nodes, best.voxels[:1]]), node_radius_mm=np.r_[node_radius,
                   best.radius_mm[0]], segments=[*graph.segments, stub],
                   pruned_spurs=[s for s in graph.pruned_spurs if s is not best])


def _continuation(pt: PixelTree, path: list[int], junction: int, in_groove: bool = False) -> int:
    """The child of ``junction`` the current vessel continues into (see the module docstring)."""
    kids = pt.children[junction]
    reach = np.array([pt.longest[k] + pt.step[k] for k in kids])
    reach /= max(reach.max(), 1e-9)
    back = _back(pt, path, DIRECTION_MM)
    if back is None:
        return kids[int(np.argmax(reach))]
    incoming = _unit(pt.mm[junction] - pt.mm[back])
    out = [_unit(pt.mm[pt.forward(k, pt.radius[junction] + DIRECTION_MM)] - pt.mm[junction]) for k in kids]
    eligible = [i for i in range(len(kids))
                if reach[i] >= CONTINUATION_MIN_FRACTION and float(out[i] @ incoming) >= MAX_TURN_COS]
    course = _unit(pt.mm[junction] - pt.mm[path[0]])  # the vessel's course so far, origin to junction
    round_heart = max(abs(float(incoming @ pt.apex)), abs(float(course @ pt.apex))) < AV_GROOVE_COS
    if (in_groove or round_heart) and len(eligible) > 1:
        return kids[min(eligible, key=lambda i: float(out[i] @ pt.apex))]
    return kids[int(np.argmax([float(o @ incoming) + r for o, r in zip(out, reach, strict=True)]))]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def _back(pt: PixelTree, path: list[int], reach_mm: float) -> int | None:
    """The voxel of ``path`` about ``reach_mm`` before its end (None if the path is shorter than 1 mm)."""
    travelled, i = 0.0, len(path) - 1
    while i > 0 and travelled < reach_mm:
        travelled += float(np.linalg.norm(pt.mm[path[i]] - pt.mm[path[i - 1]]))
        i -= 1
    return path[i] if travelled >= 1.0 else None


def _branch(branch_id: int, tree_id: int, pt: PixelTree, path: list[int], parent: int | None,
            origin: int | None) -> Branch:
    junctions = [v for v in path if len(pt.children[v]) > 1] + ([path[0]] if parent is not None else [])
    ends = [path[-1]] + ([path[0]] if parent is None else [])
    if parent is None:
        downstream = float(pt.downstream[path[0]])
    else:  # a side branch starts at its parent's wall: its points inside the junction's ball are the parent's
        downstream = float(pt.downstream[path[1]] + pt.step[path[1]])
        inside = np.linalg.norm(pt.mm[path] - pt.mm[path[0]], axis=1) <= pt.radius[path[0]]
        first_out = len(path) - 2 if inside.all() else int(np.argmin(inside))
        path = path[min(first_out, len(path) - 2) :]
    idx = np.asarray(path)
    mm = pt.mm[idx]
    smooth = ndimage.gaussian_filter1d(mm, 2.0, axis=0, mode="nearest") if len(mm) > 2 else mm
    if len(mm) > 2:  # keep the ends and junctions where they are: the smoothing only straightens the staircase in
        # between, and a branch cut at a junction later (the left main, :mod:`.naming`) is no shorter than its chord
        pinned = [0, len(path) - 1] + [i for i, v in enumerate(path) if v in junctions]
        smooth[pinned] = mm[pinned]
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(smooth, axis=0), axis=1))])
    reliable = np.ones(len(idx), dtype=bool)
    for v in junctions:  # near a junction the lumen measured is the bifurcation's, not this vessel's own
        reliable &= np.linalg.norm(mm - pt.mm[v], axis=1) > pt.radius[v] + JUNCTION_MARGIN_MM
    for v in ends:  # the last voxel before an end cuts the cap
        reliable &= np.linalg.norm(mm - pt.mm[v], axis=1) > pt.step_max
    return Branch(branch_id, tree_id, pt.voxels[idx], pt.radius[idx].copy(), arc, reliable, parent, origin,
                  downstream)
