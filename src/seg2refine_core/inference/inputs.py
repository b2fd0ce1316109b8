"""Which files a prediction reads and which it writes: input discovery, case ids and output names.

A case id comes from the file name without its volume suffix; ImageCAS ``<id>.img.nii.gz`` gives ``<id>``.
Outputs are ``<id>.<key>.nii.gz`` (masks) and ``<id>.<key>_prob.nii.gz`` (probabilities), with ``key`` one of
:data:`~.pipeline.OUTPUT_KEYS` (``s`` stage 1, ``y`` stage 2, ``b`` 3D baseline).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from seg2refine_core.errors import Seg2RefineError
from seg2refine_core.inference.pipeline import OUTPUT_KEYS

OUTPUT_SUFFIX = ".nii.gz"
#: Name endings (before the file suffix) of files that are never taken as input images in a folder: labels and
#: this tool's outputs, so re-running on a folder that holds earlier outputs is safe.
NOT_IMAGES = (".label", *(f".{k}" for k in OUTPUT_KEYS), *(f".{k}_prob" for k in OUTPUT_KEYS))


def list_inputs(inputs: Iterable[str | Path]) -> list[tuple[str, Path]]:
    """``(case id, image path)`` for each file given and each volume found (recursively) in each folder given.

    In a folder, ImageCAS images (``<id>.img.*``) are taken when there are any; otherwise every volume except
    labels and this tool's outputs (names ending in :data:`NOT_IMAGES`). Hidden files are skipped. Raises
    :class:`Seg2RefineError` for a missing path, a folder without volumes, and two inputs with the same case id.
    """
    from seg2refine_core.io.volume import SUPPORTED_SUFFIXES, strip_suffix

    found: list[tuple[str, Path]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            volumes = sorted(
                p for p in item.rglob("*")
                if p.is_file() and p.name.lower().endswith(SUPPORTED_SUFFIXES) and not p.name.startswith(".")
            )
            images = [p for p in volumes if strip_suffix(p).endswith(".img")]
            files = images or [p for p in volumes if not strip_suffix(p).endswith(NOT_IMAGES)]
            if not files:
                raise Seg2RefineError(f"{item}: no .nii, .nii.gz or .nrrd volumes found")
        elif item.exists():
            files = [item]
        else:
            raise Seg2RefineError(f"{item}: file or folder not found")
        found += [(strip_suffix(path).removesuffix(".img"), path) for path in files]
    ids = [c for c, _ in found]
    dupes = sorted({c for c in ids if ids.count(c) > 1})
    if dupes:
        raise Seg2RefineError(f"several inputs share the case id(s) {', '.join(dupes[:5])}; give them separately")
    return found


def output_path(out_dir: str | Path, case_id: str, key: str, prob: bool = False) -> Path:
    """Where output ``key`` (mask, or probabilities with ``prob``) of ``case_id`` is written in ``out_dir``."""
    return Path(out_dir) / f"{case_id}.{key}{'_prob' if prob else ''}{OUTPUT_SUFFIX}"


def check_outputs(
    cases: Sequence[tuple[str, Path]], out_dir: str | Path, keys: Sequence[str], *, save_prob: bool, overwrite: bool
) -> None:
    """Refuse, before any work, outputs that would replace an input file, or an existing file without
    ``overwrite``: :class:`Seg2RefineError` naming the first such file."""
    inputs = {path.resolve() for _, path in cases}
    for case_id, _ in cases:
        for key in keys:
            for prob in (False, True) if save_prob else (False,):
                target = output_path(out_dir, case_id, key, prob)
                if target.resolve() in inputs:
                    raise Seg2RefineError(f"{target}: output would overwrite an input file; choose another --out")
                if target.exists() and not overwrite:
                    raise Seg2RefineError(f"{target}: already exists; pass --overwrite to replace outputs")
