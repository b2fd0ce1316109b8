"""Synthetic CCTA phantom: a CT-like chest volume with a known coronary lumen mask (synthetic data only).

The project cannot ship real CCTA, so demos, sample data and tests use this generator. Weights trained on it are
demo weights. It is built to make segmentation non-trivial (design section 6):

* contrast-filled blood pools (left/right ventricles and atria, aortic root and ascending aorta, pulmonary trunk
  and arteries, pulmonary veins, SVC, descending aorta) at the SAME HU as the coronary lumen (300-450 HU per seed);
* myocardium (~100 HU), epicardial and mediastinal fat (~-100 HU), pericardium, lungs (~-850 HU) with contrast-filled
  pulmonary vessels, spine, sternum and ribs (cortex ~700-1100 HU, marrow), liver, chest wall, air outside the body;
* a left coronary tree (left main -> LAD with diagonals, LCX with obtuse marginals) and a right tree (RCA with acute
  marginals, PDA/PLB; right- or left-dominant per seed) leaving the aortic root and running on the epicardium
  inside the fat; radii taper by Murray's law (r_parent^3 = sum r_child^3; unmodelled small branches drain the
  parent continuously between the modelled ones) from ~2 mm to ~0.4 mm, below the voxel size;
* smooth random tortuosity, stenoses (local lumen narrowing filled with soft plaque) and calcified plaques
  (800-1200 HU blobs beside the lumen, not in the label);
* partial volume (soft occupancy of thin tubes), a Gaussian PSF in mm, in-plane correlated Gaussian noise.

Geometry. Anatomy is laid out in millimetres for a reference field of view ``REF_FOV_MM`` (96 x 89.6 x 89.6 mm,
i.e. 96 x 128 x 128 voxels of 1.0 x 0.7 x 0.7 mm: a small, heart-centred chest) and scaled isotropically by
``scale = min(FOV / REF_FOV_MM)`` where ``FOV = shape * spacing``; the anatomy is centred in the volume. Volumes with
the same field of view therefore show the same anatomy whatever their shape and spacing. Coronary (and pulmonary
vessel) radii are absolute millimetres and are not scaled, so thin distal vessels stay below the voxel size.
Array axes are ``(z, y, x)`` = (inferior->superior, anterior->posterior, patient right->left): displayed with row 0
at the top, an axial slice reads like a radiological image. The affine maps ``(x, y, z)`` voxel indices to RAS mm
(``diag(-sx, -sy, sz)`` with the volume centred on the origin), as in NIfTI files converted from DICOM.

Label. ``label`` is 1 where a voxel centre lies inside a coronary lumen (distance to the centreline <= lumen
radius, in mm); additionally the voxel nearest to every centreline sample is labelled so that vessels thinner than
a voxel stay connected, as an annotator would draw them. Each tree is one 26-connected component.

Ground truth. ``Phantom.truth`` lists every vessel's centreline (name, tree, lumen and healthy radius) and every
stenosis (centre, severity, length) in world RAS mm, for validating vessel analysis (:mod:`.truth`).

Determinism. Everything is drawn from ``numpy.random.default_rng`` seeded with ``seed``: the anatomy from one stream
(independent of shape and spacing), the noise from another. Same arguments -> identical arrays.

Modules, in the order a volume is made: :mod:`.geometry` (the mm grid, ellipsoids, polylines, tube distances),
:mod:`.anatomy` (tissues, heart, chest tubes), :mod:`.coronary` (trees, stenoses, plaques), :mod:`.rendering`
(painting, HU, blur, noise), :mod:`.generator` (:func:`make_phantom`), :mod:`.truth` (ground truth in RAS mm),
:mod:`.files` (NIfTI cases, preview PNG).
"""

from seg2refine_core.data.phantom.anatomy import REF_FOV_MM, TISSUES
from seg2refine_core.data.phantom.cohort import COHORT_RANGES, CohortDraw, PhantomOptions, draw_cohort
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
    "COHORT_RANGES", "DEFAULT_SHAPE", "DEFAULT_SPACING", "MAIN_VESSELS", "REF_FOV_MM", "SEVERITY_RANGE", "TISSUES",
    "CohortDraw", "Phantom", "PhantomOptions", "PhantomTruth", "TruthStenosis", "TruthStent", "TruthVessel",
    "draw_cohort", "grid_mm_to_ras", "make_phantom", "phantom_affine", "preview_cases_png", "preview_png",
    "write_phantom_case", "write_truth_json",
]  # fmt: skip
