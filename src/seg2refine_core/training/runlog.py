"""A training run's folder: the per-epoch metrics log, its curves, and the state that ``--resume`` needs.

Shared by the trainers. A run folder holds::

    metrics.jsonl          one JSON record per finished epoch (``epoch`` plus any numeric keys), rank 0 only
    curves.png             losses and validation metrics against epoch (redrawn after each epoch)
    best.* / last.*        safetensors checkpoints (see :mod:`seg2refine_core.io.checkpoint`)
    last.resume.pt         optimizer, scheduler, epoch/step counters, best metric and RNG states for ``--resume``

Every file is replaced atomically, so a crash never leaves a torn log or checkpoint. The resume file holds only
tensors and plain Python values and is read with ``torch.load(..., weights_only=True)``: nothing is unpickled.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seg2refine_core.errors import CheckpointError, Seg2RefineError
from seg2refine_core.io.atomic import atomic_path, write_text_atomic

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
RESUME_SUFFIX = ".resume.pt"


def append_metrics(run_dir: str | Path, record: dict[str, Any]) -> Path:
    """Add one record (one JSON line) to ``run_dir/metrics.jsonl``; the file is rewritten atomically.

    Non-finite numbers are written as ``null`` so that every line is strict JSON.
    """
    path = Path(run_dir) / METRICS_FILE
    previous = path.read_text() if path.is_file() else ""
    clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
    write_text_atomic(path, previous + json.dumps(clean, default=_json_number) + "\n")
    return path


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of ``run_dir/metrics.jsonl`` in order (empty if there is none yet)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: str | Path, last_epoch: int) -> list[dict[str, Any]]:
    """Drop records after ``last_epoch`` (a resumed run repeats them) and return the kept ones."""
    records = read_metrics(run_dir)
    kept = [r for r in records if int(r.get("epoch", 0)) <= last_epoch]
    if len(kept) != len(records):
        text = "".join(json.dumps(r) + "\n" for r in kept)
        write_text_atomic(Path(run_dir) / METRICS_FILE, text)
    return kept


def plot_curves(run_dir: str | Path, panels: dict[str, Sequence[str]] | None = None) -> Path | None:
    """Draw ``run_dir/curves.png`` from ``metrics.jsonl``: one panel per group of keys against ``epoch``.

    ``panels`` maps a panel title to the keys it shows; by default "loss" gets every key containing ``loss``
    and "validation" every key starting with ``val_``. Returns the path, or None when there is nothing to draw.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    keys = sorted({k for r in records for k, v in r.items() if _is_number(v)} - {"epoch"})
    if panels is None:
        panels = {
            "loss": [k for k in keys if "loss" in k],
            "validation": [k for k in keys if k.startswith("val_") and "loss" not in k],
        }
    panels = {title: list(ks) for title, ks in panels.items() if ks}
    if not records or not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.6), squeeze=False)
    for ax, (title, panel_keys) in zip(axes[0], panels.items(), strict=True):
        for key in panel_keys:
            points = [(r["epoch"], r[key]) for r in records if _is_number(r.get(key))]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(run_dir) / CURVES_FILE
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def check_run_dir(run_dir: str | Path, resume: bool, names: Sequence[str] = ("best", "last")) -> None:
    """Refuse to overwrite a run's checkpoints unless resuming; refuse to resume a run that has none.

    Raises :class:`~seg2refine_core.errors.Seg2RefineError` naming the folder and what to do.
    """
    run_dir = Path(run_dir)
    existing = sorted(p.name for n in names for p in run_dir.glob(f"{n}.*")) if run_dir.is_dir() else []
    if existing and not resume:
        raise Seg2RefineError(
            f"{run_dir}: already holds checkpoints ({', '.join(existing)}); "
            "pass --resume to continue that run, or choose another --out"
        )
    if resume and not resume_path(run_dir / "last").is_file():
        raise Seg2RefineError(f"{run_dir}: nothing to resume (no last{RESUME_SUFFIX}); start without --resume")


def open_run(run_dir: str | Path, resume: bool) -> dict[str, Any] | None:
    """Check ``run_dir`` with :func:`check_run_dir`; when resuming return the state saved with ``last``, else None."""
    check_run_dir(run_dir, resume)
    return load_resume_state(resume_path(Path(run_dir) / "last")) if resume else None


def check_resume_options(
    run_dir: str | Path, given: dict[str, Any], stored: dict[str, Any], keys: Sequence[str],
    option_names: dict[str, str] | None = None,
) -> None:
    """Refuse to resume the run in ``run_dir`` with a run-defining option (``keys``) whose ``given`` value differs
    from the ``stored`` run's (both as the config's ``to_dict()``); the :class:`Seg2RefineError` names the option
    as ``--key-name`` or by ``option_names[key]``."""
    for key in keys:
        if given[key] != stored.get(key):
            option = (option_names or {}).get(key, "--" + key.replace("_", "-"))
            raise Seg2RefineError(
                f"{run_dir}: resume with {option} {given[key]!r}, but the run used {stored.get(key)!r}; "
                "give the same value or leave the option out"
            )


def resume_path(checkpoint: str | Path) -> Path:
    """The resume-state file that goes with a checkpoint stem: ``run/last`` → ``run/last.resume.pt``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + RESUME_SUFFIX)


def save_resume_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) atomically with ``torch.save``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_resume_state(path: str | Path) -> dict[str, Any]:
    """Read a resume state safely (``weights_only=True``); :class:`CheckpointError` if missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: resume state not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or unsafe files
        raise CheckpointError(f"{path}: unreadable resume state ({type(err).__name__}: {err})") from None


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy (global) and torch (CPU and every CUDA device) RNG states, as loadable-safe values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_lists(random.getstate()),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states are restored when the device count matches)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npy = state["numpy"]
    np.random.set_state(
        (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _to_lists(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_to_lists(v) for v in value]
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _json_number(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
