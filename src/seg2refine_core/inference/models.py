"""Models for inference: loading a checkpoint (or the bundled demo weights) for a role, and preparing a network to
run on a device.

Roles and bundled weights are listed in :mod:`.roles`. Preparing a model for a device folds its BatchNorms into the
convolutions and puts its weights in the layout that is fastest there.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seg2refine_core.data.canonical import CanonicalSpace, space_from_config
from seg2refine_core.data.preprocess import PreprocessConfig
from seg2refine_core.devices import autocast_dtype
from seg2refine_core.errors import CheckpointError
from seg2refine_core.inference.roles import ROLE_ARCHITECTURES, bundled_checkpoint
from seg2refine_core.io.checkpoint import load_checkpoint


@dataclass
class LoadedModel:
    """A model in eval mode with its checkpoint config and the path it came from.

    :attr:`space` is the canonical space the checkpoint records.
    """

    model: nn.Module
    config: dict[str, Any]
    path: Path

    @cached_property
    def space(self) -> CanonicalSpace | None:
        """The canonical space of the checkpoint (:data:`~seg2refine_core.data.canonical.CONFIG_KEY`), or None for a
        checkpoint from before canonical spaces: that model runs on the input's native grid, said once (when first
        asked) as a :class:`~seg2refine_core.data.canonical.CanonicalNotice` naming the checkpoint. Raises
        :class:`CheckpointError` for a malformed entry."""
        return space_from_config(self.config, source=str(self.path))

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.config.get("preprocess", {}))


def load_stage(role: str, path: str | Path | None, device: torch.device) -> LoadedModel:
    """Load the checkpoint at ``path`` for ``role`` (``None`` → the bundled demo weights) onto ``device``.

    Raises :class:`CheckpointError` for a missing or unsafe checkpoint, one whose config does not match its weights,
    one whose architecture does not fit the role (e.g. a stage-2 generator given as stage 1) and one with a malformed
    canonical space; a checkpoint without one gets its one-line notice here (:attr:`LoadedModel.space`).
    """
    if role not in ROLE_ARCHITECTURES:
        raise ValueError(f"role must be one of {', '.join(ROLE_ARCHITECTURES)}, got {role!r}")
    path = Path(path) if path is not None else bundled_checkpoint(role)
    model, config = load_checkpoint(path, device=device)
    expected = ROLE_ARCHITECTURES[role]
    if config["architecture"] not in expected:
        raise CheckpointError(
            f"{path}: a {config['architecture']} checkpoint cannot be used for {role} (expected {expected[0]})"
        )
    loaded = LoadedModel(model=model, config=config, path=path)
    _ = loaded.space  # a malformed canonical space is refused, and an old checkpoint's notice given, at load time
    return loaded


def autocast(device: torch.device):
    """The autocast context for inference on ``device``: bf16/fp16 on CUDA, disabled elsewhere."""
    dtype = autocast_dtype(device)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else torch.autocast("cpu", enabled=False)


def use_channels_last(device: torch.device | str, spatial_dims: int) -> bool:
    """Whether models run channels-last (NHWC / NDHWC) on ``device``.

    CUDA: always (tensor-core convolutions want it). CPU: for 2D models only; measured with
    ``benchmarks/compare_options.py`` (1 thread, process CPU time): SFANet w=16 at 512² runs in 0.77-0.90 of the
    contiguous time, the 3D generator in 1.10 of it (see ``benchmarks/README.md``).
    """
    device = torch.device(device)
    return device.type == "cuda" or (device.type == "cpu" and spatial_dims == 2)


def memory_layout(device: torch.device | str, spatial_dims: int) -> torch.memory_format:
    """The memory format of inputs and weights for a ``spatial_dims``-D model on ``device``
    (:func:`use_channels_last`)."""
    if not use_channels_last(device, spatial_dims):
        return torch.contiguous_format
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d


def prepare_for_inference(model: nn.Module, device: torch.device, spatial_dims: int) -> nn.Module:
    """``model`` ready to run on ``device``: eval mode, BatchNorms folded (:func:`fold_batchnorm`), weights in
    :func:`memory_layout`. The caller's model is left as it is when something had to be folded."""
    layout = memory_layout(device, spatial_dims)
    model = fold_batchnorm(model.to(device).eval())
    if layout != torch.contiguous_format:
        rank = spatial_dims + 2
        for param in model.parameters():
            if param.dim() == rank:
                param.data = param.data.contiguous(memory_format=layout)
    return model


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _foldable_pairs(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module, str]]:
    """``(conv_owner, conv_name, norm_owner, norm_name)`` for each eval BatchNorm fed directly by a convolution.

    Two layouts are recognised: a MONAI ``Convolution`` whose ADN block starts with a BatchNorm (``N``), and a
    ``Sequential`` in which a convolution (bare, or a conv-only MONAI ``Convolution``) is followed by a BatchNorm.
    """
    from monai.networks.blocks import ADN, Convolution

    pairs = []
    for module in model.modules():
        adn = getattr(module, "adn", None)
        if isinstance(module, Convolution) and isinstance(adn, ADN) and isinstance(module.conv, _CONVS):
            first = next(iter(adn._modules), None)
            if first == "N" and isinstance(adn.N, nn.modules.batchnorm._BatchNorm):
                pairs.append((module, "conv", adn, "N"))
        elif isinstance(module, nn.Sequential) and not isinstance(module, Convolution | ADN):
            names = list(module._modules)
            for a, b in zip(names, names[1:], strict=False):
                first, second = module._modules[a], module._modules[b]
                if not isinstance(second, nn.modules.batchnorm._BatchNorm):
                    continue
                if isinstance(first, _CONVS):
                    pairs.append((module, a, module, b))
                elif isinstance(first, Convolution) and list(first._modules) == ["conv"]:
                    pairs.append((first, "conv", module, b))
    return pairs


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """For inference: an eval-mode copy of ``model`` with every BatchNorm that directly follows a convolution
    folded into that convolution's weights, and the ReLU of each MONAI ADN block made in-place; ``model``
    itself (untouched) when it has nothing to fold.

    Same outputs up to float rounding, two fewer passes over each activation: SFANet w=16 at 512² ran in
    0.75-0.95 of its CPU time (``benchmarks/compare_options.py``). The copy costs one set of weights.
    """
    from monai.networks.blocks import ADN
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if model.training or not _foldable_pairs(model):
        return model
    model = copy.deepcopy(model)
    for conv_owner, conv_name, norm_owner, norm_name in _foldable_pairs(model):
        conv, norm = getattr(conv_owner, conv_name), getattr(norm_owner, norm_name)
        setattr(conv_owner, conv_name, fuse_conv_bn_eval(conv, norm))
        setattr(norm_owner, norm_name, nn.Identity())
    for module in model.modules():
        if isinstance(module, ADN) and isinstance(getattr(module, "A", None), nn.ReLU):
            module.A.inplace = True  # its input is a fresh convolution output
    return model
