"""Names of the main coronary vessels: LM, LAD, LCX, RCA (the trees' sides come from :mod:`.sides`).

The rule, in world RAS coordinates (x towards the patient's right, y anterior, z superior):

1. **Right tree**: its root branch, from the ostium along the continuing vessel (see :mod:`.trees`), is the RCA.
2. **Left tree**: the left main (LM) runs from the ostium to the first junction where the tree divides into two
   vessels of at least ``MAJOR_BRANCH_MM`` of centerline downstream each; it is empty when the root itself is that
   junction (a left main shorter than its own radius). Of the two largest vessels leaving that junction, the one
   whose first ``LAD_DIRECTION_MM`` run more anteriorly (larger mean RAS y relative to the junction) is the LAD,
   which runs down the anterior interventricular groove; the other is the LCX, which runs posteriorly in the left
   atrioventricular groove. A third large vessel there (a ramus intermedius) stays unnamed. A division the
   skeleton draws as two junctions counts as one: where the root goes on past a junction only as a stub (under
   ``MAJOR_BRANCH_MM`` downstream) and the one major vessel leaving there divides into two such vessels within that
   junction's inscribed radius plus ``JUNCTION_MARGIN_MM`` of its origin, the left main ends at the first junction
   and those two are the LAD and LCX.
3. Every other branch is 'unnamed' (diagonals, marginals, PDA/PLB and septal branches are not told apart), as are
   fragments; a left tree without a major division has no LM, LAD or LCX.
"""

from __future__ import annotations

import numpy as np

from seg2refine_core.analysis.sides import voxels_to_ras
from seg2refine_core.analysis.trees import JUNCTION_MARGIN_MM, Branch, Tree

#: both vessels at the end of the left main have at least this much centerline downstream (mm)
MAJOR_BRANCH_MM = 20.0
#: arc length (mm) of LAD/LCX candidates whose mean position decides which runs anteriorly
LAD_DIRECTION_MM = 30.0


def name_trees(trees: list[Tree], branches: list[Branch], affine: np.ndarray) -> list[Branch]:
    """Name the main vessels of the left and right trees (sides already set); returns the branch list (the left
    main may be split off the left root branch, adding one branch)."""
    for tree in trees[:2]:
        if tree.side == "right":
            branches[tree.branch_ids[0]].name = "RCA"
        elif tree.side == "left":
            branches = _name_left(tree, branches, affine)
    return branches


def _name_left(tree: Tree, branches: list[Branch], affine: np.ndarray) -> list[Branch]:
    root = branches[tree.branch_ids[0]]
    children = [b for b in branches if b.parent == root.id]
    split, daughters = None, []
    for k in sorted({b.origin for b in children}):
        majors = [b for b in children if b.origin == k and b.downstream_mm >= MAJOR_BRANCH_MM]
        rest = _going_on(root, k, branches)
        if majors and rest >= MAJOR_BRANCH_MM:
            split = k
            break
        if len(majors) == 1 and rest < MAJOR_BRANCH_MM:
            daughters = _divides_at_origin(majors[0], branches, root.radius_mm[k] + JUNCTION_MARGIN_MM)
            if daughters:
                split = k
            break
    if split is None:
        return branches
    continuation = root
    if root.arc_mm[split] > 0.0:
        if split < len(root.arc_mm) - 1:
            branches = _split(branches, root, split, tree)
            continuation = branches[-1]
        root.name = "LM"
    candidates = daughters or [continuation] + [b for b in branches if b.parent == root.id and b.origin == split
                                                and b is not continuation]
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


def _divides_at_origin(branch: Branch, branches: list[Branch], within_mm: float) -> list[Branch]:
    """``branch`` and a child of it leaving within ``within_mm`` of its origin where both go on for at least
    ``MAJOR_BRANCH_MM`` of centerline (the larger such child), or [] where it does not divide there."""
    for child in sorted((b for b in branches if b.parent == branch.id), key=lambda b: -b.downstream_mm):
        k = child.origin
        if (branch.arc_mm[k] <= within_mm and child.downstream_mm >= MAJOR_BRANCH_MM
                and _going_on(branch, k, branches) >= MAJOR_BRANCH_MM):
            return [branch, child]
    return []


def _going_on(branch: Branch, k: int, branches: list[Branch]) -> float:
    """Centerline (mm) downstream of ``branch``'s voxel ``k`` along the branch itself: its rest and every branch
    leaving it after ``k``."""
    return float(branch.arc_mm[-1] - branch.arc_mm[k] + sum(
        b.downstream_mm for b in branches if b.parent == branch.id and b.origin > k))


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
