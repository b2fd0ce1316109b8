"""Helper for the training tests (not a test): a small training on two DDP ranks, and its launcher.

:func:`run_ranks` runs ``python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py STAGE DATA OUT CACHE
[STAGE1]``: ``stage1`` trains stage 1 for two epochs, ``stage2`` trains stage 2 on the stage-1 checkpoint STAGE1
for one epoch (with the clDice topology term). Each rank then writes ``OUT/rank<r>.sha256``: the hash of its own
final model (stage 1) or generator (stage 2) state, parameters and buffers, and the number of epochs done.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from seg2refine_core import distributed
from seg2refine_core.training import stage1, stage2

ROOT = Path(__file__).resolve().parents[1]


def state_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def run_stage1(data: Path, out: Path, cache: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    config = stage1.Stage1TrainConfig(
        data=data, out=out, cache_dir=cache, val_fraction=0.25, test_fraction=0.25,
        width=4, epochs=2, batch_size=2, samples_per_epoch=8, num_workers=0, device="cpu",
    )
    trainer = stage1.Stage1Trainer(config)
    summary = trainer.run()
    return trainer.model, summary


def run_stage2(data: Path, out: Path, cache: Path, stage1_ckpt: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    config = stage2.Stage2TrainConfig(
        data=data, stage1=stage1_ckpt, out=out, cache_dir=cache, width=4, patch_size=(32, 32, 32), epochs=1,
        batch_size=1, patches_per_epoch=4, num_workers=0, device="cpu", val_fraction=0.5, topology="cldice",
    )
    trainer = stage2.Stage2Trainer(config)
    summary = trainer.run()
    return trainer.model, summary


def main(stage: str, data: str, out: str, cache: str, *stage1_ckpt: str) -> None:
    torch.set_num_threads(1)
    run = {"stage1": run_stage1, "stage2": run_stage2}[stage]
    model, summary = run(Path(data), Path(out), Path(cache), *map(Path, stage1_ckpt))
    (Path(out) / f"rank{os.environ['RANK']}.sha256").write_text(f"{state_hash(model)} {summary['epochs_done']}\n")
    distributed.cleanup()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ranks(stage: str, data: Path, out: Path, cache: Path, *stage1_ckpt: Path, timeout: float) -> list[list[str]]:
    """Train ``stage`` on two CPU ranks (arguments as in the module doc); each rank's ``[hash, epochs done]``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
        f"--master_port={free_port()}", str(ROOT / "tests" / "ddp_worker.py"),
        stage, str(data), str(out), str(cache), *map(str, stage1_ckpt),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return [(out / f"rank{rank}.sha256").read_text().split() for rank in (0, 1)]


if __name__ == "__main__":
    main(*sys.argv[1:])
