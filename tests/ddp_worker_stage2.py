"""Helper for tests/test_train_stage2.py (not a test): one rank of a small DDP stage-2 training.

Run as ``python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker_stage2.py DATA STAGE1 OUT CACHE``.
Each rank trains one epoch (with the clDice topology term), then writes ``OUT/rank<r>.sha256``: the hash of its
own final generator state (parameters and buffers) and the number of epochs done.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch

from seg2refine_core import train_stage2 as stage2


def state_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main(data: str, stage1: str, out: str, cache: str) -> None:
    torch.set_num_threads(1)
    generators = []
    make = stage2.AttentionGenerator3d

    def keep(*args, **kwargs):
        generators.append(make(*args, **kwargs))
        return generators[-1]

    stage2.AttentionGenerator3d = keep
    config = stage2.Stage2TrainConfig(
        data=Path(data), stage1=Path(stage1), out=Path(out), cache_dir=Path(cache), width=4, patch_size=(32, 32, 32),
        epochs=1, batch_size=1, patches_per_epoch=4, num_workers=0, device="cpu", val_fraction=0.5, topology="cldice",
    )
    summary = stage2.train_stage2(config)
    rank = int(os.environ["RANK"])
    (Path(out) / f"rank{rank}.sha256").write_text(f"{state_hash(generators[0])} {summary['epochs_done']}\n")
    stage2.distributed.cleanup()


if __name__ == "__main__":
    main(*sys.argv[1:5])
