"""The shared training loop on a toy trainer (linear regression by SGD with momentum and random input dropout):
resume mid-epoch equal to a straight run, stop, best/last, the resume refusals, callbacks and threads."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from seg2refine_core.data.sampling import BalancedSampler
from seg2refine_core.errors import Seg2RefineError
from seg2refine_core.training.loop import Trainer
from seg2refine_core.training.options import TrainOptions, option
from seg2refine_core.training.runlog import load_resume_state, read_metrics, resume_path, save_resume_state

pytestmark = pytest.mark.usefixtures("one_thread")
TRUE_WEIGHTS = np.array([1.5, -2.0, 0.5], np.float32)


@dataclass(kw_only=True)
class ToyConfig(TrainOptions):
    """12 training and 4 validation points (4 without validation); 6 samples per epoch in batches of 2."""

    lr: float = option(0.05, help="SGD learning rate", defines_run=True)
    validate: bool = option(True, help="keep 4 validation points")
    epochs: int = option(3, help="epochs")
    num_workers: int = option(0, help="DataLoader workers", group="system")


class Points(Dataset):
    """Item ``(i, seed)``: point ``i`` and its target, with a seeded jitter of the target."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = key
        jitter = float(np.random.default_rng(seed).normal(0.0, 0.01))
        return self.x[index], self.y[index] + jitter


class ToyTrainer(Trainer[ToyConfig]):
    config_class = ToyConfig
    architecture = "toy-linear"
    stage = "toy"
    title = "toy"
    score = "val_score"
    rate_key = "samples_per_s"

    def select_cases(self) -> dict[str, list[str]]:
        return {"train": [f"t{i}" for i in range(12)], "val": [f"v{i}" for i in range(4)] if self.config.validate
                else []}

    def prepare_data(self) -> tuple[DataLoader, BalancedSampler]:
        rng = np.random.default_rng(7)
        x = rng.normal(size=(16, 3)).astype(np.float32)
        y = (x @ TRUE_WEIGHTS)[:, None].astype(np.float32)
        self.val_x, self.val_y = torch.from_numpy(x[12:]), torch.from_numpy(y[12:])
        sampler = BalancedSampler(12, np.arange(12), 6, 0.0, self.config.seed, self.info.rank, self.info.world_size)
        return DataLoader(Points(x[:12], y[:12]), batch_size=self.config.batch_size, sampler=sampler), sampler

    def build_networks(self, weights: dict[str, torch.Tensor] | None) -> None:
        self.model = nn.Linear(3, 1)
        if weights is not None:
            self.model.load_state_dict(weights)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.config.lr, momentum=0.9)
        self.threads_seen = torch.get_num_threads()

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[dict[str, float], int]:
        x, y = batch
        x = torch.nn.functional.dropout(x, 0.2)  # draws from torch's global RNG: resume must restore it
        loss = torch.nn.functional.mse_loss(self.model(x), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"train_loss": float(loss.detach())}, x.shape[0]

    def validation(self) -> dict[str, float | None]:
        if not self.cases["val"]:
            return {"val_score": None}
        with torch.no_grad():
            return {"val_score": -float(torch.nn.functional.mse_loss(self.model(self.val_x), self.val_y))}

    def learning_rates(self) -> dict[str, float]:
        return {"lr": self.optimizer.param_groups[0]["lr"]}

    def checkpoint_entries(self) -> dict[str, Any]:
        return {"model": {"in_features": 3}, "input": {"features": 3}}

    def resume_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_resume_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


def toy_config(out: Path, **changes: Any) -> ToyConfig:
    return replace(ToyConfig(data=out.parent, out=out, batch_size=2, device="cpu"), **changes)


def weights(run: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / f"{name}.safetensors"))


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def without_times(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in ("time_s", "samples_per_s")} for r in records]


@pytest.fixture
def straight(tmp_path) -> tuple[Path, dict[str, Any], list[dict[str, torch.Tensor]]]:
    """Three epochs in one go; the model's state after each epoch."""
    out = tmp_path / "straight"
    snapshots: list[dict[str, torch.Tensor]] = []
    trainer = ToyTrainer(toy_config(out), on_epoch=lambda record: snapshots.append(
        {k: v.clone() for k, v in trainer.model.state_dict().items()}))
    return out, trainer.run(), snapshots


def test_a_straight_run_writes_records_best_and_last(straight):
    out, summary, snapshots = straight
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1, 2, 3] and summary["epochs_done"] == 3 and not summary["stopped"]
    assert all({"train_loss", "val_score", "lr", "time_s", "samples_per_s"} <= r.keys() for r in records)
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    scores = [r["val_score"] for r in records]
    best_epoch = int(np.argmax(scores)) + 1
    assert (summary["best_epoch"], summary["best_metric"], summary["best_value"]) == (best_epoch, "val_score",
                                                                                      max(scores))
    assert same_weights(weights(out, "best"), snapshots[best_epoch - 1])
    assert same_weights(weights(out, "last"), snapshots[-1])
    training = json.loads((out / "last.json").read_text())["training"]
    assert training["stage"] == "toy" and training["epochs_done"] == 3 and training["step_in_epoch"] == 0
    assert training["cases"]["val"] == ["v0", "v1", "v2", "v3"] and training["config"]["lr"] == 0.05
    assert summary["train_cases"] == 12 and summary["val_cases"] == 4 and summary["history"] == records


def test_best_stays_at_the_best_epoch_when_later_ones_are_worse(tmp_path):
    """Momentum SGD at a rate that diverges: every epoch is worse than the first, so best keeps epoch 1."""
    out = tmp_path / "diverging"
    snapshots: list[dict[str, torch.Tensor]] = []
    trainer = ToyTrainer(toy_config(out, lr=1.5), on_epoch=lambda record: snapshots.append(
        {k: v.clone() for k, v in trainer.model.state_dict().items()}))
    summary = trainer.run()
    scores = [r["val_score"] for r in read_metrics(out)]
    assert scores[0] > scores[1] > scores[2] and summary["best_epoch"] == 1
    assert same_weights(weights(out, "best"), snapshots[0]) and same_weights(weights(out, "last"), snapshots[2])
    assert not same_weights(weights(out, "best"), weights(out, "last"))


def test_without_validation_best_follows_the_lowest_training_loss(tmp_path):
    summary = ToyTrainer(toy_config(tmp_path / "noval", validate=False)).run()
    losses = [r["train_loss"] for r in read_metrics(tmp_path / "noval")]
    assert summary["best_metric"] == "train_loss" and summary["best_epoch"] == int(np.argmin(losses)) + 1
    assert all(r["val_score"] is None for r in summary["history"])


def test_stop_mid_epoch_then_resume_equals_the_straight_run(straight, tmp_path):
    out = tmp_path / "stopped"
    steps: list[int] = []
    progress: list[tuple[int, int, str]] = []
    first = ToyTrainer(toy_config(out), should_stop=lambda: len(steps) >= 4,
                       on_step=lambda step, loss: steps.append(step)).run()
    assert first["stopped"] and first["epochs_done"] == 1 and steps == [1, 2, 3, 4]
    assert json.loads((out / "last.json").read_text())["training"]["step_in_epoch"] == 1
    assert [r["epoch"] for r in read_metrics(out)] == [1]
    resumed = ToyTrainer(toy_config(out, resume=True), progress=lambda *p: progress.append(p),
                         on_step=lambda step, loss: steps.append(step)).run()
    assert not resumed["stopped"] and steps == list(range(1, 10))
    assert progress[0][:2] == (5, 9) and progress[-1][:2] == (9, 9) and progress[0][2].startswith("epoch 2/3 loss")
    straight_out, straight_summary, _ = straight
    assert same_weights(weights(out), weights(straight_out)) and same_weights(weights(out, "best"),
                                                                              weights(straight_out, "best"))
    # the resumed epoch's mean loss includes the steps before the stop
    assert without_times(read_metrics(out)) == without_times(read_metrics(straight_out))
    assert resumed["best_epoch"] == straight_summary["best_epoch"]


def test_a_resume_state_from_before_the_shared_loop_still_resumes(straight, tmp_path):
    """Older trainers stored the unfinished epoch's loss as loss_sum / loss_count."""
    out = tmp_path / "legacy"
    steps: list[int] = []
    ToyTrainer(toy_config(out), should_stop=lambda: len(steps) >= 4, on_step=lambda s, loss: steps.append(s)).run()
    state = load_resume_state(resume_path(out / "last"))
    sums, count = state.pop("sums"), state.pop("count")
    save_resume_state(resume_path(out / "last"), {**state, "loss_sum": sums["train_loss"], "loss_count": count})
    ToyTrainer(toy_config(out, resume=True)).run()
    straight_out, _, _ = straight
    assert same_weights(weights(out), weights(straight_out))
    assert without_times(read_metrics(out)) == without_times(read_metrics(straight_out))


def test_stop_before_the_first_epoch_leaves_a_resumable_last_and_no_best(tmp_path):
    out = tmp_path / "early"
    summary = ToyTrainer(toy_config(out), should_stop=lambda: True).run()
    assert summary["stopped"] and summary["epochs_done"] == 0 and summary["best"] is None
    assert (out / "last.safetensors").is_file() and not (out / "best.safetensors").exists()
    assert read_metrics(out) == [] and load_resume_state(resume_path(out / "last"))["step"] == 1


def test_resume_refusals_and_the_overwrite_guard(straight, tmp_path):
    out, _, _ = straight
    with pytest.raises(Seg2RefineError, match="already holds checkpoints"):
        ToyTrainer(toy_config(out)).run()
    with pytest.raises(Seg2RefineError, match=r"resume with --lr 0\.1, but the run used 0\.05"):
        ToyTrainer(toy_config(out, lr=0.1, resume=True)).run()
    with pytest.raises(Seg2RefineError, match="cases differ"):
        ToyTrainer(toy_config(out, validate=False, resume=True)).run()
    with pytest.raises(Seg2RefineError, match="nothing to resume"):
        ToyTrainer(toy_config(tmp_path / "empty", resume=True)).run()
    extended = ToyTrainer(toy_config(out, epochs=4, resume=True)).run()  # epochs may grow
    assert extended["epochs_done"] == 4 and [r["epoch"] for r in read_metrics(out)] == [1, 2, 3, 4]


def test_threads_apply_during_the_run_only(tmp_path):
    before = torch.get_num_threads()
    trainer = ToyTrainer(toy_config(tmp_path / "threads", threads=before + 1, epochs=1))
    trainer.run()
    assert trainer.threads_seen == before + 1 and torch.get_num_threads() == before
    with pytest.raises(Seg2RefineError, match="--threads must be >= 1"):
        ToyTrainer(toy_config(tmp_path / "none", threads=0)).run()
