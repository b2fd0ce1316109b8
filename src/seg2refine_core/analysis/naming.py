"""Left and right coronary trees and the names of their main vessels (LM, LAD, LCX, RCA).

The rule, in world RAS coordinates (x towards the patient's right, y anterior, z superior):

1. **Sides.** Of the trees, the two with the most lumen voxels are the coronary trees. With two, the one whose
   centerline centroid lies further to the patient's left (smaller RAS x) is the *left* tree, the other the
   *right*. With one, it is left if its centroid lies to the left of its own ostium (the left tree runs leftwards
   round the heart from the left sinus; the RCA runs rightwards and down from the right sinus), else right.
   Smaller trees (fragments cut off by a narrowing or a gap in the mask) join the side of the nearest main tree
   when their centerline comes within ``ATTACH_MM`` of it, and are 'other' otherwise.
2. **Right tree**: its root branch, from the ostium along the continuing vessel (see :mod:`.trees`), is the RCA.
3. **Left tree**: the left main (LM) runs from the ostium to the first junction where the tree divides into two
   vessels of at least ``MAJOR_BRANCH_MM`` of centerline downstream each; it is empty when the root itself is that
   junction (a left main shorter than its own radius). Of the two largest vessels leaving that junction, the one
   whose first ``LAD_DIRECTION_MM`` run more anteriorly (larger mean RAS y relative to the junction) is the LAD,
   which runs down the anterior interventricular groove; the other is the LCX, which runs posteriorly in the left
   atrioventricular groove. A third large vessel there (a ramus intermedius) stays unnamed.
4. Every other branch is 'unnamed' (diagonals, marginals, PDA/PLB and septal branches are not told apart).

Fragments and side branches keep 'unnamed'; a tree without a major division has no LM, LAD or LCX.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from seg2refine_core.analysis.trees import Branch, Tree

#: a fragment within this distance (mm) of a main tree's centerline joins its side
ATTACH_MM = 10.0
#: both vessels at the end of the left main have at least this much centerline downstream (mm)
MAJOR_BRANCH_MM = 20.0
#: arc length (mm) of LAD/LCX candidates whose mean position decides which runs anteriorly
LAD_DIRECTION_MM = 30.0


def voxels_to_ras(voxels: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World RAS mm (n, 3) of voxel indices (n, 3) in array order (z, y, x); the affine takes (x, y, z)."""
    v = np.asarray(voxels, dtype=float).reshape(-1, 3)[:, ::-1]
    a = np.asarray(affine, dtype=float)
    return v @ a[:3, :3].T + a[:3, 3]


def name_trees(trees: list[Tree], branches: list[Branch], affine: np.ndarray) -> list[Branch]:
    """Set every tree's side and the main vessels' names; returns the branch list (the left main may be split off
    the root branch, adding one branch). Trees must be ordered by lumen voxels, largest first."""
    main = trees[:2]
    centroid = {t.id: voxels_to_ras(np.concatenate([branches[i].voxels for i in t.branch_ids]), affine).mean(0)
                for t in trees}
    if len(main) == 2:
        left, right = sorted(main, key=lambda t: centroid[t.id][0])
        left.side, right.side = "left", "right"
    elif len(main) == 1:
        root_x = voxels_to_ras(main[0].root_voxel[None], affine)[0, 0]
        main[0].side = "left" if centroid[main[0].id][0] < root_x else "right"
    _attach_fragments(trees, branches, affine)
    for tree in main:
        root = branches[tree.branch_ids[0]]
        if tree.side == "right":
            root.name = "RCA"
        else:
            branches = _name_left(tree, branches, affine)
    return branches


def _attach_fragments(trees: list[Tree], branches: list[Branch], affine: np.ndarray) -> None:
    main = [t for t in trees[:2] if t.side in ("left", "right")]
    if not main:
        return
    index = {t.id: cKDTree(voxels_to_ras(np.concatenate([branches[i].voxels for i in t.branch_ids]), affine))
             for t in main}
    for tree in trees[2:]:
        pts = voxels_to_ras(np.concatenate([branches[i].voxels for i in tree.branch_ids]), affine)
        gaps = {t.id: float(index[t.id].query(pts)[0].min()) for t in main}
        nearest = min(gaps, key=gaps.get)
        if gaps[nearest] <= ATTACH_MM:
            tree.side = trees[nearest].side


def _name_left(tree: Tree, branches: list[Branch], affine: np.ndarray) -> list[Branch]:
    root = branches[tree.branch_ids[0]]
    children = [b for b in branches if b.parent == root.id]
    split = None
    for k in sorted({b.origin for b in children}):
        majors = [b for b in children if b.origin == k and b.downstream_mm >= MAJOR_BRANCH_MM]
        rest = root.arc_mm[-1] - root.arc_mm[k] + sum(
            b.downstream_mm for b in children if b.origin > k)  # the continuation's downstream length
        if majors and rest >= MAJOR_BRANCH_MM:
            split = k
            break
    if split is None:
        return branches
    if root.arc_mm[split] > 0.0:
        branches = _split(branches, root, split, tree)
        root.name = "LM"
        continuation = branches[-1]
    else:
        continuation = root
    candidates = [continuation] + [b for b in branches
                                   if b.parent == root.id and b.origin == split and b is not continuation]
    candidates = sorted(candidates, key=lambda b: -b.downstream_mm)[:2]
    if len(candidates) < 2:
        return branches
    junction_y = voxels_to_ras(root.voxels[split][None], affine)[0, 1]

    def anterior(b: Branch) -> float:
        first = b.voxels[b.arc_mm <= LAD_DIRECTION_MM]
        return float(voxels_to_ras(first, affine)[:, 1].mean() - junction_y)

    lad, lcx = sorted(candidates, key=anterior, reverse=True)
    lad.name, lcx.name = "LAD", "LCX"
    return branches


def _split(branches: list[Branch], root: Branch, k: int, tree: Tree) -> list[Branch]:
    """Cut ``root`` at voxel ``k``: it keeps [0, k], a new branch (appended) takes the rest from the junction's wall
    on (as side branches do, see :mod:`.trees`); branches leaving after ``k`` move to the new one."""
    arc_from_k = root.arc_mm[k:] - root.arc_mm[k]
    outside = np.nonzero(arc_from_k > root.radius_mm[k])[0]
    start = k + int(min(outside[0] if len(outside) else len(arc_from_k) - 2, len(arc_from_k) - 2))
    start = max(start, k)
    tail = Branch(len(branches), root.tree, root.voxels[start:].copy(), root.radius_mm[start:].copy(),
                  root.arc_mm[start:] - root.arc_mm[start], root.reliable[start:].copy(), root.id, k,
                  root.downstream_mm - float(root.arc_mm[k]), diameter_mm=root.diameter_mm[start:].copy())
    for b in branches:
        if b.parent == root.id and b.origin > k:
            b.parent, b.origin = tail.id, max(b.origin - start, 0)
    tail.downstream_mm = float(tail.arc_mm[-1]) + sum(b.downstream_mm for b in branches if b.parent == tail.id)
    root.voxels, root.radius_mm, root.diameter_mm = root.voxels[: k + 1], root.radius_mm[: k + 1], root.diameter_mm[
        : k + 1]
    root.arc_mm, root.reliable = root.arc_mm[: k + 1], root.reliable[: k + 1]
    tree.branch_ids.insert(1, tail.id)
    return [*branches, tail]
