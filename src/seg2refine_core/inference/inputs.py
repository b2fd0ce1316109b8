"""Which files a prediction reads and which it writes: input discovery, case ids and output names.

Inputs are volume files (NIfTI, NRRD, MetaImage) and DICOM series. A case id comes from the file name without its
volume suffix (ImageCAS ``<id>.img.nii.gz`` gives ``<id>``) or, for a DICOM series, from the name of the folder
holding it (also when one of its files is given): :func:`seg2refine_core.io.volume.case_name`. In a folder, every
sub-folder that directly holds DICOM files is one case (:func:`seg2refine_core.io.dicom.dicom_folders`), read with
the series with the most slices unless ``series`` names one.

Outputs are ``<id>.<key><suffix>`` masks, with ``key`` one of :data:`~.pipeline.OUTPUT_KEYS` (``s`` stage 1,
``y`` stage 2, ``b`` 3D baseline) and the suffix of the output format
(:data:`seg2refine_core.io.volume.OUTPUT_FORMATS`: ``.nii.gz``, ``.nrrd``, ``.mha`` or ``.seg.dcm`` for a DICOM
SEG), and ``<id>.<key>_prob.nii.gz`` probabilities (always NIfTI: a SEG holds masks only).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from seg2refine_core.errors import Seg2RefineError
from seg2refine_core.inference.pipeline import OUTPUT_KEYS
from seg2refine_core.io.atomic import check_output

DEFAULT_OUTPUT_FORMAT = "nifti"
PROB_SUFFIX = ".nii.gz"
#: Name endings (before ``.dcm``) of the DICOM SEG files this tool writes (``<id>.<key>.seg.dcm``).
SEG_OUTPUTS = tuple(f".{k}.seg" for k in OUTPUT_KEYS)
#: Name endings (before the file suffix) of files that are never taken as input images in a folder: labels and
#: this tool's outputs, so re-running on a folder that holds earlier outputs is safe.
NOT_IMAGES = (".label", *(f".{k}" for k in OUTPUT_KEYS), *(f".{k}_prob" for k in OUTPUT_KEYS), *SEG_OUTPUTS)


def _case_id(path: Path) -> str:
    """:func:`~seg2refine_core.io.volume.case_name`, with ``.`` and ``..`` resolved (``predict .`` names the
    folder) and the ImageCAS ``.img`` tag dropped."""
    from seg2refine_core.io.volume import case_name

    return case_name(Path(os.path.abspath(path))).removesuffix(".img")


def _is_seg_output(path: Path) -> bool:
    from seg2refine_core.io.volume import strip_suffix

    return path.name.lower().endswith(".dcm") and strip_suffix(path).endswith(SEG_OUTPUTS)


def _series_folders(root: Path) -> list[Path]:
    """The DICOM series folders at or below ``root``, leaving out folders that hold nothing but this tool's SEG
    outputs (an earlier ``--out`` inside the input folder)."""
    from seg2refine_core.io.dicom import dicom_folders, is_dicom_file

    return [
        folder for folder in dicom_folders(root)
        if any(p.is_file() and not _is_seg_output(p) and is_dicom_file(p) for p in folder.iterdir())
    ]  # fmt: skip


def _volumes_in(folder: Path) -> list[Path]:
    """The volume files and DICOM series folders in ``folder`` (recursively) that are input images."""
    from seg2refine_core.io.volume import SUPPORTED_SUFFIXES, strip_suffix

    volumes = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.name.lower().endswith(SUPPORTED_SUFFIXES) and not p.name.startswith(".")
    )  # fmt: skip
    images = [p for p in volumes if strip_suffix(p).endswith(".img")]
    return (images or [p for p in volumes if not strip_suffix(p).endswith(NOT_IMAGES)]) + _series_folders(folder)


def _holding(cases: list[tuple[str, Path]], series: str) -> list[tuple[str, Path]]:
    """The DICOM cases whose folder holds series ``series``; :class:`Seg2RefineError` listing the series found
    when none does."""
    from seg2refine_core.io.dicom import list_series
    from seg2refine_core.io.volume import volume_format

    kept, seen = [], []
    for case_id, path in cases:
        if volume_format(path) == "dicom":
            infos = list_series(path)
            seen += infos
            if any(info.uid == series for info in infos):
                kept.append((case_id, path))
    if not kept:
        listed = "; ".join(info.label() for info in seen) or "none"
        raise Seg2RefineError(f"--series {series}: no DICOM series with this UID in the inputs; the series there "
                              f"are: {listed}")
    return kept


def list_inputs(inputs: Iterable[str | Path], series: str | None = None) -> list[tuple[str, Path]]:
    """``(case id, path)`` for each input given and each input found (recursively) in each folder given.

    A path is a volume file or a DICOM series folder (a DICOM file given reads its series). In a folder: ImageCAS
    images (``<id>.img.*``) when there are any, otherwise every volume file except labels and this tool's outputs
    (names ending in :data:`NOT_IMAGES`); and every folder that directly holds DICOM files (the given folder
    itself too), one case each. Hidden files are skipped. ``series``: a SeriesInstanceUID; only the DICOM cases
    holding that series are kept (everything else found is left out). Raises :class:`Seg2RefineError` for a
    missing path, a file that is not a volume, a folder without volumes, two inputs with the same case id, and a
    ``series`` found in no input.
    """
    from seg2refine_core.io.volume import SUPPORTED_SUFFIXES, is_volume_path

    found: list[tuple[str, Path]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths = _volumes_in(item)
            if not paths:
                suffixes = f"{', '.join(SUPPORTED_SUFFIXES[:-1])} or {SUPPORTED_SUFFIXES[-1]}"
                raise Seg2RefineError(f"{item}: no {suffixes} volumes or DICOM series found")
        elif not item.exists():
            raise Seg2RefineError(f"{item}: file or folder not found")
        elif not is_volume_path(item):
            raise Seg2RefineError(
                f"{item}: not a volume ({', '.join(SUPPORTED_SUFFIXES)}, a DICOM file or a DICOM series folder)"
            )
        else:
            paths = [item]
        found += [(_case_id(path), path) for path in paths]
    if series is not None:
        found = _holding(found, series)
    ids = [c for c, _ in found]
    dupes = sorted({c for c in ids if ids.count(c) > 1})
    if dupes:
        shown = ", ".join(str(p) for c, p in found if c == dupes[0])
        raise Seg2RefineError(
            f"several inputs share the case id(s) {', '.join(dupes[:5])} ({shown}); case ids come from file names "
            "and DICOM series folder names: rename one, or give them in separate runs with separate --out folders"
        )
    return found


def output_path(
    out_dir: str | Path, case_id: str, key: str, prob: bool = False, output_format: str = DEFAULT_OUTPUT_FORMAT
) -> Path:
    """Where output ``key`` of ``case_id`` is written in ``out_dir``: the mask in ``output_format`` (a key of
    :data:`~seg2refine_core.io.volume.OUTPUT_FORMATS`), or with ``prob`` the probabilities (always NIfTI)."""
    from seg2refine_core.io.volume import OUTPUT_FORMATS

    suffix = PROB_SUFFIX if prob else OUTPUT_FORMATS[output_format]
    return Path(out_dir) / f"{case_id}.{key}{'_prob' if prob else ''}{suffix}"


def check_output_format(cases: Sequence[tuple[str, Path]], output_format: str) -> None:
    """Refuse an unknown ``output_format`` and ``dicom-seg`` for an input that is not a DICOM series (a SEG
    references its source series): :class:`Seg2RefineError` naming the first such input."""
    from seg2refine_core.io.volume import OUTPUT_FORMATS, volume_format

    if output_format not in OUTPUT_FORMATS:
        raise Seg2RefineError(f"--output-format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    if output_format != "dicom-seg":
        return
    for _, path in cases:
        fmt = volume_format(path)
        if fmt != "dicom":
            raise Seg2RefineError(
                f"{path}: --output-format dicom-seg needs a DICOM series input (a SEG references its source "
                f"slices) and this is a {fmt} file; use --output-format nifti"
            )


def check_outputs(
    cases: Sequence[tuple[str, Path]],
    out_dir: str | Path,
    keys: Sequence[str],
    *,
    save_prob: bool,
    overwrite: bool,
    output_format: str = DEFAULT_OUTPUT_FORMAT,
) -> None:
    """Refuse, before any work, outputs that would replace an input file, or an existing file without
    ``overwrite``: :class:`Seg2RefineError` naming the first such file."""
    inputs = {path.resolve() for _, path in cases}
    for case_id, _ in cases:
        for key in keys:
            for prob in (False, True) if save_prob else (False,):
                check_output(output_path(out_dir, case_id, key, prob, output_format), inputs, overwrite,
                             "another --out")
