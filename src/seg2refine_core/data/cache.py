"""On-disk cache of training volumes in HU, in a model's canonical space, read back as memory-mapped arrays.

Training at ImageCAS scale (700 volumes × ~250 slices of 512²) must not hold the dataset in RAM: each case is
read once, mapped into the run's canonical space (:mod:`seg2refine_core.data.canonical`: LPS voxel order, the run's
target spacing) and written beside its label as ``.npy`` files that training opens with
``np.load(mmap_mode="r")``, so a batch touches only the slices (or patches) it needs.

Layout of ``cache_dir`` (one folder per canonical space, :func:`cache_root`, so runs in different spaces share a
cache folder without rebuilding each other's cases)::

    <space>/index.json                  every cached case's entry (below) under "cases", plus format, version, space
    <space>/cases/<name>.hu.npy         CT in HU (z, y, x) int16, on the canonical grid
    <space>/cases/<name>.label.npy      lumen mask (z, y, x) uint8 {0, 1} on the canonical grid (absent when unlabelled)
    <space>/cases/<name>.json           the case's entry: canonical shape and spacing, the space, the native shape and
                                        spacing, per-slice vessel pixel counts, voxels clipped to int16, source
                                        files' size and mtime

``<space>`` is e.g. ``LPS-1x0.7x0.7mm-1f2e3d4c`` (orientation, target spacing, and a hash of the exact space) or
``native`` (no mapping, the files' own grids). The HU are mapped like images (trilinear) and the label like labels
(:func:`~seg2refine_core.data.canonical.resample_label`: thin vessels stay connected), exactly as
:func:`~seg2refine_core.data.canonical.to_canonical` maps them at inference.

The cache holds **HU, not X'**, so intensity augmentation (:mod:`seg2refine_core.data.augment`) can act on HU
before the window; readers make X' of the slice or patch they take on the fly (:func:`~.preprocess.xprime_box`,
:func:`~.preprocess.preprocess_slice`), and the same cache serves every preprocessing config. HU are stored as
**int16**, rounded to the nearest integer and clipped to [-32768, 32767]: CT scanners store integer HU in that
range, so a CT read from its file and not resampled is kept exactly; a resampled volume (or a float phantom) is off
by at most 0.5 HU (0.0008 after the default 600-HU window, far below CT noise of 10-50 HU). The number of clipped
voxels is recorded in each entry.

A case is **reused** (not read again) when its entry exists, names the same source files with the same size and
modification time, was made with the same cache version and in the same space; otherwise it is rebuilt. Caches of
earlier versions (``index.json`` and ``cases/`` at the top of ``cache_dir``, on the files' own grids) are not read;
delete them to free their disk space. Every file is written to a temporary name and renamed, so an interrupted
build leaves no half case.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seg2refine_core.data.canonical import CanonicalSpace, to_canonical
from seg2refine_core.data.datasets import Case
from seg2refine_core.data.preprocess import PreprocessConfig, preprocess
from seg2refine_core.errors import DatasetError
from seg2refine_core.io.atomic import atomic_path, write_text_atomic
from seg2refine_core.io.volume import Volume, read_mask, read_volume
from seg2refine_core.progress import ProgressFn, StopFn, check_stop

CACHE_FORMAT = "seg2refine-cache"
CACHE_VERSION = 3  # 1: float16 X'; 2: int16 HU on the files' own grids; 3: int16 HU in a canonical space
NATIVE = "native"
HU_DTYPE = np.int16
HU_RANGE = (-32768, 32767)
LABEL_DTYPE = np.uint8
CHUNK_SLICES = 16


@dataclass(frozen=True)
class CachedCase:
    """One cached volume: ``hu_path`` (int16 HU), ``shape`` (z, y, x) and ``spacing`` (sz, sy, sx) mm of the
    canonical grid it was mapped to, ``vessel_pixels`` per axial slice."""

    case_id: str
    hu_path: Path
    label_path: Path | None
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    vessel_pixels: tuple[int, ...] | None


def space_name(space: CanonicalSpace | None) -> str:
    """The folder name of ``space`` in a cache: orientation, target spacing and 8 hex digits of the exact space
    (e.g. ``LPS-1x0.7x0.7mm-1f2e3d4c``), or :data:`NATIVE` for None."""
    if space is None:
        return NATIVE
    exact = json.dumps(space.to_dict(), sort_keys=True)
    spacing = "x".join(f"{s:g}" for s in space.spacing)
    return f"{space.orientation}-{spacing}mm-{hashlib.sha1(exact.encode()).hexdigest()[:8]}"


def cache_root(cache_dir: str | Path, space: CanonicalSpace | None) -> Path:
    """Where the cases mapped into ``space`` live in ``cache_dir``: ``cache_dir / space_name(space)``."""
    return Path(cache_dir) / space_name(space)


class CacheIndex:
    """The cases of a cache (one canonical space), in order; arrays come back as read-only memmaps (nothing is
    loaded eagerly). ``root`` is the space's folder (:func:`cache_root`), ``space`` the space (None: native)."""

    def __init__(self, root: Path, cases: Sequence[CachedCase], space: CanonicalSpace | None = None) -> None:
        self.root = Path(root)
        self.space = space
        self.cases: dict[str, CachedCase] = {case.case_id: case for case in cases}

    @classmethod
    def load(
        cls, cache_dir: str | Path, space: CanonicalSpace | None, case_ids: Iterable[str] | None = None
    ) -> CacheIndex:
        """Read the index of ``space`` in ``cache_dir``; with ``case_ids``, keep those (in that order) and require
        each. Raises :class:`DatasetError` for a missing or unreadable index or a missing case."""
        root = cache_root(cache_dir, space)
        path = root / "index.json"
        try:
            index = json.loads(path.read_text())
        except FileNotFoundError:
            raise DatasetError(f"{path}: cache index not found (build the cache first)") from None
        except (OSError, ValueError) as err:
            raise DatasetError(f"{path}: unreadable cache index ({err})") from None
        if index.get("format") != CACHE_FORMAT or index.get("version") != CACHE_VERSION:
            raise DatasetError(f"{path}: not a version-{CACHE_VERSION} Seg2Refine cache index")
        entries = index.get("cases", {})
        ids = list(entries) if case_ids is None else list(case_ids)
        missing = [case_id for case_id in ids if case_id not in entries]
        if missing:
            raise DatasetError(f"{path}: case(s) not in the cache: {', '.join(missing[:5])}")
        return cls(root, [_cached_case(root, entries[case_id]) for case_id in ids], space)

    @property
    def case_ids(self) -> list[str]:
        return list(self.cases)

    def __len__(self) -> int:
        return len(self.cases)

    def __contains__(self, case_id: object) -> bool:
        return case_id in self.cases

    def __getitem__(self, case_id: str) -> CachedCase:
        try:
            return self.cases[case_id]
        except KeyError:
            raise DatasetError(f"case {case_id!r} is not in the cache at {self.root}") from None

    def hu(self, case_id: str) -> np.ndarray:
        """CT of ``case_id`` in HU: read-only int16 memmap (z, y, x)."""
        return np.load(self[case_id].hu_path, mmap_mode="r")

    def xprime(
        self, case_id: str, config: PreprocessConfig | None = None, *, workers: int | None = None
    ) -> np.ndarray:
        """X' of the whole volume ``case_id`` made now from its HU: float32 (z, y, x) in [0, 1], in memory.

        Equal to :func:`~.preprocess.preprocess` of the cached HU (for validation and for stage 1's S on whole
        volumes). ``workers``: threads of :func:`~.preprocess.preprocess` (None = torch's thread count).
        """
        case = self[case_id]
        return preprocess(self.hu(case_id), case.spacing, config, workers=workers)

    def label(self, case_id: str) -> np.ndarray:
        """Lumen mask of ``case_id``: read-only uint8 memmap (z, y, x) {0, 1}."""
        case = self[case_id]
        if case.label_path is None:
            raise DatasetError(f"case {case_id!r} has no label in the cache at {self.root}")
        return np.load(case.label_path, mmap_mode="r")

    def subset(self, case_ids: Iterable[str]) -> CacheIndex:
        """A view with only ``case_ids`` (in that order)."""
        return CacheIndex(self.root, [self[case_id] for case_id in case_ids], self.space)


def build_cache(
    cases: Sequence[Case],
    cache_dir: str | Path,
    space: CanonicalSpace | None,
    *,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    write_index: bool = True,
) -> CacheIndex:
    """Write ``cases`` into ``cache_dir`` as int16 HU and labels mapped into ``space`` (None: on their own grids;
    see module doc); return their :class:`CacheIndex`.

    Up-to-date cases are reused (the cache does not depend on the preprocessing config).
    ``progress(done, total, case_id)`` counts cases. With ``write_index`` the entries are merged into
    ``index.json``; distributed callers let every rank build its own share of cases with ``write_index=False``,
    then one rank calls again on all cases (each is then reused) to write the index.
    Raises :class:`~seg2refine_core.errors.VolumeError` for unreadable volumes or labels that do not match.
    """
    root = cache_root(cache_dir, space)
    (root / "cases").mkdir(parents=True, exist_ok=True)
    names = _file_names([case.case_id for case in cases])
    entries = []
    for done, case in enumerate(cases):
        check_stop(should_stop)
        entry = _fresh_entry(root, case, names[case.case_id], space)
        if entry is None:
            entry = _build_case(root, case, names[case.case_id], space, should_stop)
        entries.append(entry)
        if progress is not None:
            progress(done + 1, len(cases), case.case_id)
    if write_index:
        _merge_index(root, entries, space)
    return CacheIndex(root, [_cached_case(root, entry) for entry in entries], space)


def _file_names(case_ids: Sequence[str]) -> dict[str, str]:
    """File-system-safe, unique names for case ids (ids that are already safe keep their name)."""
    names: dict[str, str] = {}
    for case_id in case_ids:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", case_id)
        if safe != case_id or safe.startswith("."):
            safe = f"{safe.lstrip('.')}-{hashlib.sha1(case_id.encode()).hexdigest()[:8]}"
        names[case_id] = safe
    if len(set(names.values())) != len(names):
        raise DatasetError("case ids collide after making them file names; rename the cases")
    return names


def _source_stat(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _space_dict(space: CanonicalSpace | None) -> dict[str, Any] | None:
    return None if space is None else space.to_dict()


def _fresh_entry(root: Path, case: Case, name: str, space: CanonicalSpace | None) -> dict[str, Any] | None:
    """The stored entry of ``case`` if it is complete and up to date, else None."""
    meta_path = root / "cases" / f"{name}.json"
    try:
        entry = json.loads(meta_path.read_text())
        source = {"image": _source_stat(case.image), "label": _source_stat(case.label)}
    except (OSError, ValueError):
        return None
    files = [entry.get("image")] + ([entry.get("label")] if case.label is not None else [])
    if (
        entry.get("version") != CACHE_VERSION
        or entry.get("space") != _space_dict(space)
        or entry.get("case_id") != case.case_id
        or entry.get("source") != source
        or not all(f and (root / "cases" / f).is_file() for f in files)
    ):
        return None
    return entry


def _build_case(
    root: Path, case: Case, name: str, space: CanonicalSpace | None, should_stop: StopFn | None
) -> dict[str, Any]:
    """Read one case, map it into ``space`` and write its int16 HU and label (atomically); return its entry."""
    source = {"image": _source_stat(case.image), "label": _source_stat(case.label)}
    volume = read_volume(case.image)
    check_stop(should_stop)
    hu, mapping = to_canonical(volume, space, kind="image")
    hu_file = f"{name}.hu.npy"
    clipped = 0
    with atomic_path(root / "cases" / hu_file) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=HU_DTYPE, shape=hu.shape)
        for z0 in range(0, hu.shape[0], CHUNK_SLICES):
            check_stop(should_stop)
            chunk = np.rint(hu[z0 : z0 + CHUNK_SLICES])
            clipped += int(np.count_nonzero((chunk < HU_RANGE[0]) | (chunk > HU_RANGE[1])))
            out[z0 : z0 + CHUNK_SLICES] = np.clip(chunk, *HU_RANGE)
        out.flush()
        del out
    del hu
    label_file = vessel_pixels = None
    if case.label is not None:
        native = read_mask(case.label, like=volume)
        label, _ = to_canonical(Volume.from_array(native, volume.spacing, volume.affine), space, kind="label")
        del native
        vessel_pixels = [int(n) for n in label.reshape(label.shape[0], -1).sum(axis=1, dtype=np.int64)]
        label_file = f"{name}.label.npy"
        with atomic_path(root / "cases" / label_file) as tmp:
            np.save(tmp, label.astype(LABEL_DTYPE, copy=False))
    entry = {
        "version": CACHE_VERSION,
        "case_id": case.case_id,
        "space": _space_dict(space),
        "image": hu_file,
        "label": label_file,
        "image_dtype": np.dtype(HU_DTYPE).name,
        "clipped_voxels": clipped,
        "shape": list(mapping.shape),
        "spacing": list(mapping.spacing),
        "native": {"shape": list(volume.shape), "spacing": list(volume.spacing)},
        "vessel_pixels": vessel_pixels,
        "source": source,
    }
    write_text_atomic(root / "cases" / f"{name}.json", json.dumps(entry) + "\n")
    return entry


def _merge_index(root: Path, entries: Sequence[dict[str, Any]], space: CanonicalSpace | None) -> None:
    path = root / "index.json"
    try:
        previous = json.loads(path.read_text()).get("cases", {})
    except (OSError, ValueError, AttributeError):
        previous = {}
    cases = {**previous, **{entry["case_id"]: entry for entry in entries}}
    index = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "space": _space_dict(space), "cases": cases}
    write_text_atomic(path, json.dumps(index) + "\n")


def _cached_case(root: Path, entry: dict[str, Any]) -> CachedCase:
    label = entry.get("label")
    pixels = entry.get("vessel_pixels")
    return CachedCase(
        case_id=entry["case_id"],
        hu_path=root / "cases" / entry["image"],
        label_path=root / "cases" / label if label else None,
        shape=tuple(int(s) for s in entry["shape"]),  # type: ignore[arg-type]
        spacing=tuple(float(s) for s in entry["spacing"]),  # type: ignore[arg-type]
        vessel_pixels=tuple(int(n) for n in pixels) if pixels is not None else None,
    )
