"""Synthetic CCTA phantom: a CT-like chest volume with a known coronary lumen mask (synthetic data only).

The project cannot ship real CCTA, so demos, sample data and tests use this generator. Weights trained on it are
demo weights. It is built to make segmentation non-trivial (design section 6):

* contrast-filled blood pools (left/right ventricles and atria, aortic root and ascending aorta, pulmonary trunk
  and arteries, pulmonary veins, SVC, descending aorta) at the SAME HU as the coronary lumen (300-450 HU per seed;
  250-600 HU in the cohort preset);
* myocardium (~100 HU), epicardial and mediastinal fat (~-100 HU), pericardium, lungs (~-850 HU) with contrast-filled
  pulmonary vessels, spine, sternum and ribs (cortex ~700-1100 HU, marrow), liver, chest wall, air outside the body;
* a left coronary tree (left main -> LAD with diagonals, LCX with obtuse marginals) and a right tree (RCA with acute
  marginals, PDA/PLB; right- or left-dominant per seed) leaving the aortic root and running on the epicardium
  inside the fat; radii taper by Murray's law (r_parent^3 = sum r_child^3; unmodelled small branches drain the
  parent continuously between the modelled ones) from ~2 mm to ~0.4 mm, below the voxel size;
* smooth random tortuosity, stenoses (local lumen narrowing filled with soft plaque), calcified plaques
  (800-1200 HU blobs beside the lumen, not in the label) and, in cohort cases, metal stents (a wire mesh on the
  lumen wall; the stented lumen stays in the label);
* partial volume (soft occupancy of thin tubes), a Gaussian PSF in mm, correlated Gaussian noise (Gaussian-filtered
  white noise: in-plane in the legacy volumes, in 3D with a drawn grain in cohort cases).

Geometry (legacy). Anatomy is laid out in millimetres for a reference field of view ``REF_FOV_MM`` (96 x 89.6 x
89.6 mm, i.e. 96 x 128 x 128 voxels of 1.0 x 0.7 x 0.7 mm: a small, heart-centred chest with a heart about half real
size) and scaled isotropically by ``scale = min(FOV / REF_FOV_MM)`` where ``FOV = shape * spacing``; the anatomy is
centred in the volume. Volumes with the same field of view therefore show the same anatomy whatever their shape and
spacing. Coronary (and pulmonary vessel) radii are absolute millimetres and are not scaled, so thin distal vessels
stay below the voxel size.

Cohort preset (``make_phantom(seed=n, cohort=True)``, :mod:`.cohort`). Each seed draws a real-size case: heart
(left-ventricular long semi-axis 40-51 mm, aortic root radius 13-16 mm) and chest (218-364 mm wide) sized apart,
the coronaries laid out on that heart with the same absolute radii, a 512 x 512 scan at 0.3-0.5 mm in-plane and
0.25-1.0 mm slices covering the coronary tree plus 10-30 mm, centred on the tree, and per-case contrast, noise,
PSF, dominance, lesions and stents, and a left main 5-10 mm long (the legacy one is a short loop);
``matrix`` scales the scan down for small CPU sizes.
:class:`~.cohort.PhantomOptions` replaces single properties of a legacy or cohort case.

Array axes are ``(z, y, x)`` = (inferior->superior, anterior->posterior, patient right->left): displayed with row 0
at the top, an axial slice reads like a radiological image. The affine maps ``(x, y, z)`` voxel indices to RAS mm
(``diag(-sx, -sy, sz)`` with the volume centred on the origin), as in NIfTI files converted from DICOM.

Label. ``label`` is 1 where a voxel centre lies inside a coronary lumen (distance to the centreline <= lumen
radius, in mm); additionally the voxel nearest to every centreline sample is labelled so that vessels thinner than
a voxel stay connected, as an annotator would draw them. Each tree is one 26-connected component.

Ground truth. ``Phantom.truth`` lists every vessel's centreline (name, tree, lumen and healthy radius), every
stenosis (centre, severity, length) and every stent (ends, length, radius) in world RAS mm, for validating vessel
analysis (:mod:`.truth`). The volume is always centred on world RAS 0 (cohort cases included).

Determinism. Everything is drawn from ``numpy.random.default_rng`` seeded with ``seed``: the anatomy from one stream
(independent of shape and spacing), the noise from another (legacy ``[seed, 0]`` and ``[seed, 1]``; cohort cases
``[seed, 2]`` for the preset's draws, ``[seed, 3]`` and ``[seed, 4]``). Same arguments -> identical arrays; without
``cohort`` and ``options``, the arrays of every earlier version (tests/test_phantom.py keeps their hashes).

Modules, in the order a volume is made: :mod:`.cohort` (per-case options and the cohort preset), :mod:`.geometry`
(the mm grid, ellipsoids, polylines, tube distances), :mod:`.anatomy` (tissues, heart, chest tubes),
:mod:`.coronary` (trees, stenoses, plaques, stents), :mod:`.rendering` (painting, HU, blur, noise),
:mod:`.generator` (:func:`make_phantom`), :mod:`.truth` (ground truth in RAS mm), :mod:`.files` (NIfTI cases,
preview PNGs).
"""

from seg2refine_core.data.phantom.anatomy import REF_FOV_MM, TISSUES
from seg2refine_core.data.phantom.cohort import (
    COHORT_RANGES,
    LOOPED_LEFT_MAIN,
    CohortDraw,
    PhantomOptions,
    draw_cohort,
)
from seg2refine_core.data.phantom.coronary import SEVERITY_RANGE
from seg2refine_core.data.phantom.files import preview_cases_png, preview_png, write_phantom_case
from seg2refine_core.data.phantom.generator import (
    DEFAULT_SHAPE,
    DEFAULT_SPACING,
    Phantom,
    make_phantom,
    phantom_affine,
)
from seg2refine_core.data.phantom.truth import (
    MAIN_VESSELS,
    PhantomTruth,
    TruthStenosis,
    TruthStent,
    TruthVessel,
    grid_mm_to_ras,
    write_truth_json,
)

__all__ = [
    "COHORT_RANGES", "DEFAULT_SHAPE", "DEFAULT_SPACING", "LOOPED_LEFT_MAIN", "MAIN_VESSELS", "REF_FOV_MM",
    "SEVERITY_RANGE", "TISSUES",
    "CohortDraw", "Phantom", "PhantomOptions", "PhantomTruth", "TruthStenosis", "TruthStent", "TruthVessel",
    "draw_cohort", "grid_mm_to_ras", "make_phantom", "phantom_affine", "preview_cases_png", "preview_png",
    "write_phantom_case", "write_truth_json",
]  # fmt: skip
