"""CPU thread default: one thread per idle core, at least one (seg2refine_core.devices.default_threads), shared out
between torchrun processes; torch_threads around a call; the train command's default."""

from __future__ import annotations

import subprocess
import sys
import time

from seg2refine_core.devices import available_cores, default_threads


def test_default_threads_stays_between_one_and_the_cores():
    cores = available_cores()
    assert 1 <= default_threads(sample_s=0.1) <= cores
    assert default_threads(reserve=cores, sample_s=0.1) == 1


def test_default_threads_is_one_when_every_core_is_busy():
    spin = "import time\nend = time.time() + 5\nwhile time.time() < end: pass"
    spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(available_cores())]
    try:
        time.sleep(0.5)  # let them start
        assert default_threads(sample_s=0.5) == 1
    finally:
        for p in spinners:
            p.kill()
            p.wait()


def test_torchrun_processes_share_the_idle_cores(monkeypatch):
    import psutil

    monkeypatch.setattr(psutil, "cpu_percent", lambda interval=None: 0.0)  # an idle machine
    cores = available_cores()
    assert default_threads() == cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores))
    assert default_threads() == 1


def test_torch_threads_sets_the_count_in_the_block_then_restores_it(monkeypatch):
    import torch

    from seg2refine_core import devices

    before = torch.get_num_threads()
    with devices.torch_threads(1) as used:
        assert used == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    monkeypatch.setattr(devices, "default_threads", lambda *a, **k: 1)
    with devices.torch_threads(None) as used:  # None: one per idle core
        assert used == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_the_train_command_defaults_to_the_idle_cores(monkeypatch, tmp_path, capsys):
    """`train` runs inside torch_threads(--threads, else default_threads()); a run's options keep threads None, so a
    resumed run samples the load again."""
    from seg2refine_core import cli, devices
    from seg2refine_core.cli import train as train_cli

    seen = []

    class Stopped(Exception):
        pass

    def fake_trainer(config, progress=None, should_stop=None):
        import torch

        seen.append((config.threads, torch.get_num_threads()))
        raise Stopped

    fake_trainer.config_class = train_cli.Stage1TrainConfig
    fake_trainer.stored_options = None
    monkeypatch.setattr(devices, "default_threads", lambda *a, **k: 1)
    monkeypatch.setattr("seg2refine_core.training.stage1.Stage1Trainer", fake_trainer)
    args = cli.build_parser().parse_args(["train", "stage1", "--data", str(tmp_path), "--out", str(tmp_path / "r")])
    try:
        train_cli.run_stage1(args)
    except Stopped:
        pass
    assert seen == [(None, 1)]
