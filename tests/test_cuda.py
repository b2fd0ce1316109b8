"""The CUDA path: bf16 autocast, channels-last, stage-2 windows cut and blended on the GPU, training with AMP,
resume on the GPU, and DDP over NCCL at world size 1 (NCCL refuses two ranks on one device).

Marked ``cuda`` and skipped without a GPU. ``benchmarks/gpu/gpu_check.py`` runs them on a lent GPU; its
``--dry-run`` sets ``SEG2REFINE_CUDA_TESTS_ON_CPU=1`` and runs the same tests on the CPU, where each asserts the
CPU's side of the same rule (no autocast, contiguous 3D), so that CI keeps them working.
"""

from __future__ import annotations

import copy
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import nn

import seg2refine_core
from seg2refine_core import distributed
from seg2refine_core.cli import main
from seg2refine_core.devices import autocast_dtype
from seg2refine_core.inference.models import load_stage, use_channels_last
from seg2refine_core.inference.stage1 import segment_slices
from seg2refine_core.inference.stage2 import refine_volume
from seg2refine_core.io.volume import read_volume

ON_CPU_ENV = "SEG2REFINE_CUDA_TESTS_ON_CPU"


def check_device() -> torch.device | None:
    """cuda when there is a GPU; cpu under ``--dry-run``; else None (the tests are skipped)."""
    if torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu") if os.environ.get(ON_CPU_ENV) == "1" else None


DEVICE = check_device()
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEVICE is None, reason=f"needs a CUDA GPU (or {ON_CPU_ENV}=1: benchmarks/gpu --dry-run)"),
]
CUDA = DEVICE is not None and DEVICE.type == "cuda"
WEIGHTS = Path(seg2refine_core.__file__).parent / "weights"
# 6 phantoms; stage 1's hold-out: 3 train, 2 validation (stage 2's pool: 1 train, 1 validation), 1 test.
SPLIT = ["--val-fraction", "0.34", "--test-fraction", "0.17", "--split-seed", "0"]
STAGE1 = ["--width", "4", "--batch-size", "4", "--samples-per-epoch", "8", "--num-workers", "0", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    assert main(["phantom", "--out", str(root), "--count", "6", "--shape", "16", "64", "64", "--seed", "40"]) == 0
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


class ModuleCalls:
    """Records, for every module call in its ``with`` block, the module type, its first input's memory layout
    and its output's dtype (a global forward hook: it also sees the copies inference makes, e.g. folded BN)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, torch.dtype]] = []

    def hook(self, module: nn.Module, args: tuple, output: object) -> None:
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if x is None or not isinstance(output, torch.Tensor):
            return
        channels_last = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
        if channels_last is None or not x.is_contiguous(memory_format=channels_last):
            layout = "contiguous"
        else:  # one channel (or one pixel) is laid out both ways at once
            layout = "either" if x.is_contiguous() else "channels_last"
        self.calls.append((type(module).__name__, layout, output.dtype))

    def __enter__(self) -> ModuleCalls:
        self.handle = nn.modules.module.register_module_forward_hook(self.hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()

    def dtypes(self, kind: str) -> set[torch.dtype]:
        """Output dtypes of the calls of modules of type ``kind``."""
        return {dtype for name, _, dtype in self.calls if name == kind}

    def first_layout(self, kind: str) -> str:
        """Input layout of the first call of a module of type ``kind``."""
        return next(layout for name, layout, _ in self.calls if name == kind)

    def channels_last_share(self, kind: str) -> float:
        """Share of the calls of ``kind`` whose input was channels-last (inputs laid out both ways left out)."""
        layouts = [layout for name, layout, _ in self.calls if name == kind and layout != "either"]
        return layouts.count("channels_last") / len(layouts)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def test_autocast_dtype_is_bf16_on_hopper_class_gpus():
    dtype = autocast_dtype(DEVICE)
    if CUDA:
        assert torch.cuda.is_bf16_supported() and dtype == torch.bfloat16
    else:
        assert dtype is None


def test_stage1_runs_in_autocast_and_channels_last_and_matches_fp32(phantoms):
    xprime = _xprime(phantoms / "1.img.nii.gz")
    model = load_stage("stage1", None, DEVICE).model
    with ModuleCalls() as calls:
        prob = segment_slices(model, xprime, batch_size=8, device=DEVICE)
    assert calls.dtypes("Conv2d") == {torch.bfloat16 if CUDA else torch.float32}
    # Channels-last on CUDA, and for 2D on the CPU. Not quite all: level 1's second conv gets a contiguous map
    # (the first conv's input and weights have one channel, laid out both ways, so its output is contiguous),
    # and so do the 7x7 convs of CBAM's spatial attention (a cat of two channel statistics).
    assert use_channels_last(DEVICE, 2) and calls.channels_last_share("Conv2d") > 0.8
    reference = segment_slices(load_stage("stage1", None, torch.device("cpu")).model, xprime, device="cpu")
    assert prob.dtype == np.float32 and 0.0 <= prob.min() and prob.max() <= 1.0
    # bf16 keeps 8 bits of mantissa: the same segmentation, not the same bits
    assert float(np.abs(prob - reference).mean()) < (0.02 if CUDA else 1e-6)
    assert dice(prob >= 0.5, reference >= 0.5) > (0.9 if CUDA else 0.999999)


def test_stage2_windows_are_cut_and_blended_on_the_device(phantoms, monkeypatch):
    import monai.inferers

    xprime = _xprime(phantoms / "2.img.nii.gz")
    s_mask = (segment_slices(load_stage("stage1", None, torch.device("cpu")).model, xprime) >= 0.5).astype(np.uint8)
    generator = load_stage("stage2", None, DEVICE).model
    seen = []
    original = monai.inferers.sliding_window_inference

    def spy(inputs, *args, **kwargs):
        seen.append((inputs.device.type, torch.device(kwargs["device"]).type, torch.device(kwargs["sw_device"]).type))
        return original(inputs, *args, **kwargs)

    monkeypatch.setattr(monai.inferers, "sliding_window_inference", spy)
    with ModuleCalls() as calls:
        y = refine_volume(generator, xprime, s_mask, patch_size=(32, 32, 32), sw_batch_size=4, device=DEVICE)
    assert seen == [(DEVICE.type, DEVICE.type, DEVICE.type)]  # X' on the device; windows cut and blended there
    assert calls.dtypes("Conv3d") == {torch.bfloat16 if CUDA else torch.float32}
    # Windows enter the generator channels-last on CUDA, contiguous on the CPU (channels-last measured slower there).
    # Inside, InstanceNorm3d returns contiguous maps, so most later convolutions get contiguous inputs either way.
    assert use_channels_last(DEVICE, 3) == CUDA
    assert calls.first_layout("Conv3d") == ("channels_last" if CUDA else "contiguous")
    monkeypatch.setattr(monai.inferers, "sliding_window_inference", original)
    reference = refine_volume(
        load_stage("stage2", None, torch.device("cpu")).model, xprime, s_mask, patch_size=(32, 32, 32), device="cpu"
    )
    assert y.shape == xprime.shape and y.dtype == np.float32
    assert float(np.abs(y - reference).mean()) < (0.02 if CUDA else 1e-5)
    assert dice(y >= 0.5, reference >= 0.5) > (0.9 if CUDA else 0.99999)


def test_stage1_and_stage2_train_two_steps_with_amp_then_resume(phantoms, cache, tmp_path):
    device = ["--device", str(DEVICE.type)]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ["train", "stage1", "--data", str(phantoms), "--cache-dir", str(cache), *SPLIT, *STAGE1, *device]
    with ModuleCalls() as calls:
        assert main([*common, "--out", str(straight), "--epochs", "2"]) == 0  # 2 epochs x 2 steps
    expected_dtype = torch.bfloat16 if CUDA else torch.float32
    assert calls.dtypes("Conv2d") == {expected_dtype}  # AMP: bf16 autocast on CUDA only
    if CUDA:  # training steps and validation run channels-last on CUDA (on the CPU only validation does)
        assert calls.channels_last_share("Conv2d") > 0.8
    records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and all(np.isfinite(r["train_loss"]) for r in records)
    config = json.loads((straight / "last.json").read_text())
    assert config["training"]["config"]["device"] == DEVICE.type and config["training"]["config"]["amp"]

    assert main([*common, "--out", str(resumed), "--epochs", "1"]) == 0
    assert main(["train", "stage1", "--out", str(resumed), "--resume", "--epochs", "2", *device]) == 0
    a, b = load_file(str(straight / "last.safetensors")), load_file(str(resumed / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.isfinite(t).all() for t in b.values())
    again = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in again] == [1, 2]
    if CUDA:  # cuDNN and atomic adds are not bit-reproducible: the same run within run-to-run noise
        assert again[1]["train_loss"] == pytest.approx(records[1]["train_loss"], rel=2e-2)
        assert again[1]["val_dice"] == pytest.approx(records[1]["val_dice"], abs=2e-2)
    else:  # the CPU resumes bit-exactly (tests/test_train_stage1.py)
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert [r["train_loss"] for r in again] == [r["train_loss"] for r in records]

    stage2_out = tmp_path / "stage2"
    stage2 = ["train", "stage2", "--data", str(phantoms), "--stage1", str(straight / "best.safetensors"),
              "--out", str(stage2_out), "--cache-dir", str(cache), "--width", "4", "--epochs", "1", "--batch-size", "1",
              "--patches-per-epoch", "2", "--num-workers", "0", "--val-fraction", "0.5", *device]  # fmt: skip
    with ModuleCalls() as calls:
        assert main(stage2) == 0  # 1 epoch x 2 steps of generator and discriminator
    assert calls.dtypes("Conv3d") == {expected_dtype}
    record = json.loads((stage2_out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["epoch"] == 1 and all(np.isfinite(v) for k, v in record.items() if "loss" in k)


def test_ddp_step_and_collectives_at_world_size_1():
    """DistributedDataParallel over NCCL (gloo on the CPU) with the project's collectives and a stage-1 step in
    channels-last and autocast: the reduced gradients equal a plain step's."""
    from seg2refine_core.nets.sfanet import build_sfanet
    from seg2refine_core.training.losses import WeightedBCEDiceLoss

    backend = "nccl" if CUDA else "gloo"
    kwargs = {"device_id": DEVICE} if CUDA else {}
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1, **kwargs)
    try:
        assert dist.get_backend() == backend
        assert distributed.broadcast_object({"epoch": 3}) == {"epoch": 3}
        assert distributed.all_reduce_sum([1.5, 2.0]) == [1.5, 2.0] and distributed.average(3.0) == 3.0
        assert distributed.any_rank(True) and not distributed.any_rank(False)
        torch.manual_seed(0)
        layout = torch.channels_last if use_channels_last(DEVICE, 2) else torch.contiguous_format
        model = build_sfanet("sfanet", 4, input_size=(64, 64)).to(DEVICE).to(memory_format=layout).train()
        twin = copy.deepcopy(model)
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[DEVICE.index] if CUDA else None)
        x = torch.rand(4, 1, 64, 64, device=DEVICE).contiguous(memory_format=layout)
        y = (torch.rand(4, 1, 64, 64, device=DEVICE) > 0.9).float()
        dtype = autocast_dtype(DEVICE)
        for net in (ddp, twin):
            with torch.autocast(DEVICE.type, dtype=dtype, enabled=dtype is not None):
                logits = net(x)
            WeightedBCEDiceLoss()(logits.float(), y).backward()
        for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
            assert p.grad is not None and q.grad is not None, name
            assert float((p.grad - q.grad).norm()) <= 2e-2 * float(q.grad.norm()) + 1e-6, name
        distributed.sync_buffers(model)
        distributed.barrier()
    finally:
        dist.destroy_process_group()


def _xprime(path: Path) -> np.ndarray:
    from seg2refine_core.data.preprocess import preprocess

    return preprocess(read_volume(path).array)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
