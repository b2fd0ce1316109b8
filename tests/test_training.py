"""The trainers' shared pieces: best-checkpoint choice, end-of-epoch writes, summary."""

from __future__ import annotations

from torch import nn

from seg2refine_core.training.history import BestCheckpoint, RunHistory
from seg2refine_core.training.runlog import append_metrics, read_metrics


def test_best_checkpoint_by_score_or_loss_and_resumed():
    best = BestCheckpoint.start("val_dice", "train_loss", validating=True)
    assert (best.metric, best.higher, best.epoch) == ("val_dice", True, None)
    taken = [best.update({"epoch": e, "val_dice": v}) for e, v in ((1, 0.5), (2, 0.4), (3, 0.5), (4, 0.7))]
    assert taken == [True, False, False, True] and best.to_dict() == {"metric": "val_dice", "value": 0.7, "epoch": 4}
    loss = BestCheckpoint.start("val_dice", "train_loss", validating=False)
    losses = ((1, 0.5), (2, 0.6), (3, 0.2))
    assert [loss.update({"epoch": e, "train_loss": v}) for e, v in losses] == [True, False, True]
    resumed = BestCheckpoint.start("val_dice", "train_loss", validating=True, stored=loss.to_dict())
    assert resumed == loss and not resumed.higher


def test_run_history_writes_on_rank0_only_and_resumes(tmp_path):
    calls, seen = [], []
    model = nn.Linear(1, 1)

    def config():
        calls.append("best")
        return {"architecture": "test", "model": {}}

    main = RunHistory.start(tmp_path, True, None, score="val_dice", loss="train_loss", validating=True,
                            on_epoch=seen.append)
    for epoch, value in ((1, 0.5), (2, 0.3)):
        main.end_epoch({"epoch": epoch, "train_loss": 1.0, "val_dice": value}, model, config,
                       lambda: calls.append("last"))
    assert calls == ["best", "last", "last"] and [r["epoch"] for r in seen] == [1, 2]
    assert [r["val_dice"] for r in read_metrics(tmp_path)] == [0.5, 0.3] and (tmp_path / "curves.png").is_file()
    assert (tmp_path / "best.safetensors").is_file()
    summary = main.summary(2, False, train_cases=3)
    assert list(summary) == ["run_dir", "best", "last", "epochs_done", "best_epoch", "best_metric", "best_value",
                             "stopped", "train_cases", "history"]
    assert summary["best_epoch"] == 1 and summary["history"] == main.records

    other = RunHistory.start(tmp_path / "other", False, None, score="val_dice", loss="train_loss", validating=True)
    other.end_epoch({"epoch": 1, "val_dice": 0.1}, model, config, lambda: calls.append("last"))
    assert len(calls) == 3 and not (tmp_path / "other").exists() and other.best.epoch == 1

    append_metrics(tmp_path, {"epoch": 3, "val_dice": 0.9})  # an epoch the resumed run repeats
    state = {"epoch": 2, "best": main.best.to_dict()}
    resumed = RunHistory.start(tmp_path, True, state, score="val_dice", loss="train_loss", validating=True)
    assert [r["epoch"] for r in resumed.records] == [1, 2] and resumed.best == main.best
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2]
