"""Run folder bookkeeping: metrics log and curves, RNG and resume state round trips, the overwrite guard."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from seg2refine_core.errors import CheckpointError, Seg2RefineError
from seg2refine_core.training.runlog import (
    append_metrics,
    capture_rng_state,
    check_run_dir,
    load_resume_state,
    plot_curves,
    read_metrics,
    restore_rng_state,
    save_resume_state,
    truncate_metrics,
)


def test_metrics_log_and_curves(tmp_path):
    assert plot_curves(tmp_path) is None
    for epoch in (1, 2, 3):
        dice = float("nan") if epoch == 1 else 0.5
        append_metrics(tmp_path, {"epoch": epoch, "g_loss": 1.0 / epoch, "val_dice": dice})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["val_dice"] is None and len(lines) == 3
    assert plot_curves(tmp_path).read_bytes()[:4] == b"\x89PNG"
    assert [r["epoch"] for r in truncate_metrics(tmp_path, 2)] == [1, 2]
    assert len(read_metrics(tmp_path)) == 2


def test_rng_and_resume_state_round_trip(tmp_path):
    state = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1))
    save_resume_state(tmp_path / "last.resume.pt", {"rng": state, "epoch": 3})
    loaded = load_resume_state(tmp_path / "last.resume.pt")
    restore_rng_state(loaded["rng"])
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])
    assert loaded["epoch"] == 3
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="unreadable resume state"):
        load_resume_state(tmp_path / "bad.pt")


def test_run_dir_guard(tmp_path):
    check_run_dir(tmp_path / "new", resume=False)
    with pytest.raises(Seg2RefineError, match="nothing to resume"):
        check_run_dir(tmp_path, resume=True)
    (tmp_path / "best.safetensors").write_bytes(b"")
    with pytest.raises(Seg2RefineError, match="pass --resume"):
        check_run_dir(tmp_path, resume=False)
