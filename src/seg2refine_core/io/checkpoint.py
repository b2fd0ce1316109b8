"""Checkpoints: ``<name>.safetensors`` (weights) beside ``<name>.json`` (config and provenance).

The JSON config holds ``architecture`` (a key of :data:`ARCHITECTURES`), ``model`` (the constructor's keyword
arguments), ``preprocess`` (:class:`~seg2refine_core.data.preprocess.PreprocessConfig` as a dict), optional ``input``
facts (e.g. the training slice size or patch size) and ``training`` provenance (data, epochs, seed, metrics).
Loading never unpickles: weights come from safetensors; pickle files (``.pt``, ``.pth``, ``.ckpt``, ``.pkl``) are
refused. A config that does not match its weights is a :class:`CheckpointError` naming the mismatch.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seg2refine_core.errors import CheckpointError
from seg2refine_core.io.atomic import atomic_path, write_text_atomic

FORMAT = "seg2refine-checkpoint"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")

#: architecture name → "module:attribute" of the ``nn.Module`` class, imported on demand.
ARCHITECTURES: dict[str, str] = {
    "sfanet": "seg2refine_core.nets.sfanet:SFANet",
    "attention-gan-3d": "seg2refine_core.nets.attention_gan:AttentionGenerator3d",
    "patch-discriminator-3d": "seg2refine_core.nets.attention_gan:PatchDiscriminator3d",
    "monai-unet-3d": "monai.networks.nets:UNet",
}


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """``(weights, config)`` paths for a checkpoint named by either file or by its stem."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: pickle checkpoints are refused (they can run arbitrary code); use a .safetensors checkpoint"
        )
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def model_class(architecture: str) -> Callable[..., nn.Module]:
    """The model class registered under ``architecture``."""
    if architecture not in ARCHITECTURES:
        raise CheckpointError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    module_name, attribute = ARCHITECTURES[architecture].split(":")
    return getattr(importlib.import_module(module_name), attribute)


def build_model(config: dict[str, Any]) -> nn.Module:
    """Instantiate the model a checkpoint config describes (weights not loaded)."""
    try:
        return model_class(config["architecture"])(**config.get("model", {}))
    except TypeError as err:
        message = f"model settings {config.get('model')} do not fit {config['architecture']}: {err}"
        raise CheckpointError(message) from None


def save_checkpoint(
    path: str | Path, model: nn.Module, config: dict[str, Any], dtype: torch.dtype | None = None
) -> Path:
    """Write weights and config atomically; returns the ``.safetensors`` path.

    ``config`` must name ``architecture`` and ``model``; the format marker is added. Parameters of a
    DistributedDataParallel or compiled wrapper are saved under the inner module's names. ``dtype`` (e.g.
    ``torch.float16``, used for the bundled demo weights) stores floating tensors at that precision; loading
    casts them back to the model's dtype.
    """
    from safetensors.torch import save_file

    if "architecture" not in config or "model" not in config:
        raise CheckpointError("checkpoint config needs 'architecture' and 'model'")
    weights_path, config_path = checkpoint_paths(path)
    module = unwrap(model)
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    full_config = {"format": FORMAT, "version": FORMAT_VERSION, **config}
    with atomic_path(weights_path) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT, "architecture": config["architecture"]})
    write_text_atomic(config_path, json.dumps(full_config, indent=2, default=_json_default) + "\n")
    return weights_path


def read_config(path: str | Path) -> dict[str, Any]:
    """The JSON config of a checkpoint, validated for format and architecture."""
    weights_path, config_path = checkpoint_paths(path)
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: checkpoint config not found (expected beside {weights_path.name})")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_path}: not valid JSON ({err})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{config_path}: not a Seg2Refine checkpoint config (missing format {FORMAT!r})")
    if config.get("architecture") not in ARCHITECTURES:
        raise CheckpointError(f"{config_path}: unknown architecture {config.get('architecture')!r}")
    return config


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Build the model from the config, load its safetensors weights strictly, and return ``(model, config)``.

    The model is in eval mode on ``device``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights_path, _ = checkpoint_paths(path)
    config = read_config(path)
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: checkpoint weights not found")
    try:
        state = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({err})") from None
    model = build_model(config)
    load_state_strict(model, state, weights_path.name)
    return model.to(device).eval(), config


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    """Load ``state`` into ``model``, raising :class:`CheckpointError` that lists missing, extra and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {', '.join(missing[:3])})")
        if extra:
            parts.append(f"unexpected {len(extra)} (e.g. {', '.join(extra[:3])})")
        if shapes:
            parts.append(f"shape mismatch {len(shapes)} (e.g. {'; '.join(shapes[:2])})")
        raise CheckpointError(f"{name}: weights do not match the config's model: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
