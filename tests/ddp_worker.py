"""Helper for tests/test_train_stage1.py (not a test): one rank of a small DDP stage-1 training.

Run as ``python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py DATA OUT CACHE``. Each rank
trains, then writes ``OUT/rank<r>.sha256``: the hash of its own final model state (parameters and buffers).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch

from seg2refine_core import train_stage1 as stage1


def state_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main(data: str, out: str, cache: str) -> None:
    torch.set_num_threads(1)
    learners = []
    make_learner = stage1._make_learner

    def keep(*args, **kwargs):
        learners.append(make_learner(*args, **kwargs))
        return learners[-1]

    stage1._make_learner = keep
    config = stage1.Stage1TrainConfig(
        data=Path(data), out=Path(out), cache_dir=Path(cache), val_fraction=0.25, test_fraction=0.25,
        width=4, epochs=2, batch_size=2, samples_per_epoch=8, num_workers=0, device="cpu",
    )
    summary = stage1.train_stage1(config)
    rank = int(os.environ["RANK"])
    (Path(out) / f"rank{rank}.sha256").write_text(f"{state_hash(learners[0].model)} {summary['epochs_done']}\n")
    stage1.distributed.cleanup()


if __name__ == "__main__":
    main(*sys.argv[1:4])
