"""The options every training run shares, and how a config dataclass describes its own options.

A trainer's config is a keyword-only dataclass derived from :class:`TrainOptions` (the 3D patch trainers from
:class:`PatchTrainOptions`) whose fields are declared with :func:`option`: the field's metadata holds its help
text, command-line flag and whether it defines the run. Everything else is generated from those fields, so it
cannot drift from them:

- ``seg2refine train <stage>``'s options (:mod:`seg2refine_core.cli.train`): type, default and help;
- the napari Train widget's defaults and tooltips (:func:`option_default`, :func:`option_help`);
- the JSON form stored in checkpoints (``training.config``) and resume states (:meth:`TrainOptions.to_dict`,
  :meth:`TrainOptions.from_dict`), and the options a resumed run must keep (:meth:`TrainOptions.run_defining`).

This module imports neither torch nor a trainer, so that ``seg2refine --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from seg2refine_core.data.datasets import LAYOUTS
from seg2refine_core.errors import Seg2RefineError

#: Option groups in the order ``--help`` shows them.
GROUPS = {
    "run": "run",
    "cases": "cases (split table, or a seeded hold-out)",
    "training": "training",
    "system": "system",
}

#: The presets of :data:`seg2refine_core.data.augment.PRESETS` (a test keeps the two equal; that module imports
#: torch, this one must not).
AUGMENT_PRESETS = ("default", "none", "off")

Options = TypeVar("Options", bound="TrainOptions")
#: "no value given" for :func:`option`'s ``absent`` (None is a value).
UNSET: Any = object()


def option(
    default: Any = MISSING, *, help: str, flag: str | None = None, metavar: str | Sequence[str] | None = None,
    choices: Sequence[str] | None = None, defines_run: bool = False, group: str = "training", cli: bool = True,
    factory: Any = MISSING, former: Mapping[Any, Any] | None = None, absent: Any = UNSET,
) -> Any:
    """A dataclass field described for the command line and the widget.

    default / factory: the field's default (none: a required field). help: one line, also the widget's tooltip
    (the command line appends the default). flag: the command-line flag (default ``--name-with-dashes``, and
    ``--no-name`` for a bool that defaults to True). metavar, choices: as argparse takes them. defines_run: a
    resumed run refuses another value. group: a key of :data:`GROUPS`. cli: False keeps the field off the command
    line (set by code, e.g. the command that started the run). former: values that runs of older versions stored,
    mapped to what they mean now (a stored value matches a key of the same type only, so ``True`` is not ``1``);
    absent: the value of a run stored before the field existed (default: the field's default); both are applied
    by :meth:`TrainOptions.from_dict`.
    """
    if group not in GROUPS:
        raise ValueError(f"unknown option group {group!r}")
    metadata = {"help": help, "flag": flag, "metavar": metavar, "choices": None if choices is None else tuple(choices),
                "defines_run": defines_run, "group": group, "cli": cli,
                "former": tuple((former or {}).items()), "absent": absent}
    if factory is not MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class OptionSpec:
    """One field of a config dataclass as the command line, the widget and the JSON form see it.

    kind: the scalar type (``Path``, ``int``, ``float``, ``str``, ``bool`` or a nested config dataclass);
    optional: the field also takes None; length: the number of items of a tuple field (None otherwise);
    required: the field has no default; former, absent: as :func:`option` takes them (former as pairs).
    """

    name: str
    kind: Any
    optional: bool
    length: int | None
    required: bool
    default: Any
    help: str
    flag: str
    metavar: str | tuple[str, ...] | None
    choices: tuple[str, ...] | None
    defines_run: bool
    group: str
    cli: bool
    former: tuple[tuple[Any, Any], ...] = ()
    absent: Any = UNSET

    def upgraded(self, stored: Any) -> Any:
        """``stored`` as this version reads it: its :attr:`former` meaning, else itself."""
        for old, new in self.former:
            if type(stored) is type(old) and stored == old:
                return new
        return stored


@cache
def option_specs(config_class: type) -> tuple[OptionSpec, ...]:
    """The :class:`OptionSpec` of every field of ``config_class`` (declared with :func:`option`), in field order.

    Raises TypeError for a field declared without :func:`option` (it would have no help text).
    """
    hints = typing.get_type_hints(config_class)
    specs = []
    for field in dataclasses.fields(config_class):
        meta = field.metadata
        if "help" not in meta:
            raise TypeError(f"{config_class.__name__}.{field.name} is not declared with option()")
        kind, optional, length = _scalar_type(hints[field.name])
        required = field.default is MISSING and field.default_factory is MISSING
        default = field.default_factory() if field.default_factory is not MISSING else field.default
        dashed = field.name.replace("_", "-")
        flag = meta["flag"] or (f"--no-{dashed}" if kind is bool and default is True else f"--{dashed}")
        metavar = tuple(meta["metavar"]) if isinstance(meta["metavar"], list | tuple) else meta["metavar"]
        specs.append(OptionSpec(field.name, kind, optional, length, required, None if required else default,
                                meta["help"], flag, metavar, meta["choices"], meta["defines_run"], meta["group"],
                                meta["cli"], meta["former"], meta["absent"]))
    return tuple(specs)


def option_spec(config_class: type, name: str) -> OptionSpec:
    """The :class:`OptionSpec` of field ``name`` of ``config_class`` (KeyError if there is none)."""
    for spec in option_specs(config_class):
        if spec.name == name:
            return spec
    raise KeyError(f"{config_class.__name__} has no option {name!r}")


def option_default(config_class: type, name: str) -> Any:
    """The default of field ``name`` of ``config_class`` (what the Train widget starts with)."""
    return option_spec(config_class, name).default


def option_help(config_class: type, name: str) -> str:
    """The help text of field ``name`` of ``config_class`` (the Train widget's tooltip)."""
    return option_spec(config_class, name).help


def _scalar_type(hint: Any) -> tuple[Any, bool, int | None]:
    """``(kind, optional, length)`` of a field's type hint: ``X``, ``X | None``, ``tuple[X, ...]`` (fixed length)."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        optional = len(members) < len(typing.get_args(hint))
        if len(members) != 1:
            raise TypeError(f"option type {hint} has more than one non-None member")
        hint = members[0]
    if typing.get_origin(hint) is tuple:
        items = typing.get_args(hint)
        return items[0], optional, len(items)
    return hint, optional, None


@dataclass(kw_only=True)
class TrainOptions:
    """The options every trainer shares: where the run and its data are, which cases it uses, its length and seed,
    and the machine it runs on. A trainer's config derives from it and adds its own fields (see the module doc);
    a field may be redeclared to change its default or help."""

    data: Path = option(help="dataset folder: ImageCAS, ASOCA or images/ + labels/ (required unless --resume)",
                        metavar="DIR", group="run")
    out: Path = option(help="run folder: best.* and last.* checkpoints, metrics.jsonl, curves.png",
                       metavar="RUN_DIR", group="run")
    resume: bool = option(False, help="continue the run in RUN_DIR exactly where its 'last' state stopped; options "
                                      "left out keep the run's values, --epochs may be raised", group="run")
    cache_dir: Path | None = option(None, help="cache of the volumes in HU (int16 memmaps), shareable between runs "
                                               "(default: RUN_DIR/cache)", metavar="DIR", group="run")
    command: str | None = option(None, help="the command that started the run (recorded in its checkpoints)",
                                 cli=False)
    split: Path | None = option(None, help="official split table (ImageCAS .xlsx or .csv); without one, a seeded "
                                           "hold-out split by the shares below", metavar="FILE", defines_run=True,
                                group="cases")
    fold: int = option(1, help="column Split-K of the split table, 1-4", metavar="K", defines_run=True, group="cases")
    val_fraction: float = option(0.1, help="share of the cases kept for validation (without a split table)",
                                 metavar="F", defines_run=True, group="cases")
    test_fraction: float = option(0.2, help="share of the cases held out for testing, never read in training "
                                            "(without a split table)", metavar="F", defines_run=True, group="cases")
    split_seed: int = option(0, help="seed of the hold-out split (without a split table)", metavar="S",
                             defines_run=True, group="cases")
    layout: str = option("auto", help="dataset layout", choices=LAYOUTS, defines_run=True, group="cases")
    epochs: int = option(50, help="epochs; with --resume a larger value extends the run", metavar="E")
    batch_size: int = option(2, help="samples per optimisation step and rank", metavar="B", defines_run=True)
    seed: int = option(0, help="seed of initialisation, sampling and augmentation", metavar="S", defines_run=True)
    augment: str = option(
        "default",
        help="augmentation preset (README: Augmentation): default = HU intensity (contrast level, scale/shift, noise, "
             "blur, low resolution), flips, rotation, scaling ±20 %, gamma, and masking of S in stage 2; none = the "
             "paper's recipe (slices: flips, rotation; patches: rotation, masking of S, noise on X'); off = nothing",
        choices=AUGMENT_PRESETS, defines_run=True, former={True: "none", False: "off"}, absent="none",
    )
    target_spacing: tuple[float, float, float] | None = option(
        None,
        help="the model's voxel size in mm (axial slice, row, column): every case is mapped to the canonical space "
             "(LPS voxel order, this spacing) for training and the checkpoint records it, so inputs are mapped there "
             "at inference (default: derived from the training cases' headers by nnU-Net's rule; README: Canonical "
             "space)",
        metavar=("SZ", "SY", "SX"), defines_run=True,
    )
    device: str = option("auto", help="auto (cuda, then mps, then cpu), cuda, cuda:N, mps or cpu; under torchrun "
                                      "each rank takes its own GPU", metavar="D", group="system")
    threads: int | None = option(None, help="CPU threads for torch during the run (default: one per core that is "
                                            "idle when the run starts, at least 1); fewer leave cores to napari or "
                                            "other jobs", metavar="N", group="system")
    num_workers: int = option(2, help="DataLoader worker processes", metavar="N", group="system")
    amp: bool = option(True, help="no mixed precision (autocast and channels-last are used on CUDA only)",
                       group="system")
    deterministic: bool = option(False, help="deterministic cuDNN kernels on CUDA (slower)", group="system")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field: paths as strings, tuples as lists, nested configs by their ``to_dict``."""
        out: dict[str, Any] = {}
        for spec in option_specs(type(self)):
            value = getattr(self, spec.name)
            if value is None:
                out[spec.name] = None
            elif spec.length is not None:
                out[spec.name] = [spec.kind(v) for v in value]
            elif spec.kind is Path:
                out[spec.name] = str(value)
            elif dataclasses.is_dataclass(spec.kind):
                out[spec.name] = value.to_dict()
            else:
                out[spec.name] = value
        return out

    @classmethod
    def from_dict(cls: type[Options], data: dict[str, Any]) -> Options:
        """Inverse of :meth:`to_dict`. Keys that are not fields are ignored and missing fields take their ``absent``
        value or their defaults, and values an older version stored take their ``former`` meaning (:func:`option`),
        so the options of runs written by older versions stay readable."""
        specs = {spec.name: spec for spec in option_specs(cls)}
        kwargs: dict[str, Any] = {
            spec.name: spec.absent for spec in specs.values() if spec.absent is not UNSET and spec.name not in data
        }
        for key, value in data.items():
            spec = specs.get(key)
            if spec is None:
                continue
            value = spec.upgraded(value)
            if value is None:
                kwargs[key] = None
            elif spec.length is not None:
                kwargs[key] = tuple(spec.kind(v) for v in value)
            elif spec.kind is Path:
                kwargs[key] = Path(value)
            elif dataclasses.is_dataclass(spec.kind):
                kwargs[key] = spec.kind.from_dict(value)
            else:
                kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def run_defining(cls) -> tuple[str, ...]:
        """The fields a resumed run must keep (declared with ``defines_run=True``)."""
        return tuple(spec.name for spec in option_specs(cls) if spec.defines_run)

    @classmethod
    def flag(cls, name: str) -> str:
        """The command-line flag of field ``name`` (as error messages name it)."""
        return option_spec(cls, name).flag

    def check(self) -> None:
        """Raise :class:`Seg2RefineError` naming the first invalid option; a trainer's config extends it."""
        if self.augment not in AUGMENT_PRESETS:
            raise Seg2RefineError(f"--augment {self.augment!r}: expected one of {', '.join(AUGMENT_PRESETS)}")
        self.check_at_least(1, "epochs", "batch_size")
        self.check_at_least(0, "num_workers")
        if self.threads is not None:
            self.check_at_least(1, "threads")
        spacing = self.target_spacing
        if spacing is not None and not (len(spacing) == 3 and all(0 < float(s) < float("inf") for s in spacing)):
            raise Seg2RefineError(f"--target-spacing needs three positive sizes in mm (SZ SY SX), got {spacing}")

    def check_at_least(self, low: int, *names: str) -> None:
        """Raise :class:`Seg2RefineError` for the first of ``names`` whose value is below ``low``."""
        for name in names:
            if getattr(self, name) < low:
                raise Seg2RefineError(f"{self.flag(name)} must be >= {low}, got {getattr(self, name)}")

    def check_share(self, name: str, *, closed: bool = False) -> None:
        """Raise :class:`Seg2RefineError` unless field ``name`` is in [0, 1) (``closed``: [0, 1])."""
        value = getattr(self, name)
        if not (0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0):
            raise Seg2RefineError(f"{self.flag(name)} must be in [0, 1{']' if closed else ')'}, got {value}")


@dataclass(kw_only=True)
class PatchTrainOptions(TrainOptions):
    """The options the 3D patch trainers (stage 2 and the 3D baseline) add: patches and their sampling, and the
    sliding window of validation."""

    batch_size: int = option(2, help="patches per optimisation step and rank", metavar="B", defines_run=True)
    patch_size: tuple[int, int, int] = option(
        (64, 64, 64), help="training and sliding-window patch (d h w), multiples of 16; 128 128 128 suits a GPU",
        flag="--patch", metavar=("D", "H", "W"), defines_run=True,
    )
    patches_per_epoch: int = option(200, help="patches per epoch over all ranks", metavar="N", defines_run=True)
    vessel_fraction: float = option(0.7, help="share of the patches centred on a vessel voxel (the rest at random)",
                                    metavar="P", defines_run=True)
    val_overlap: float = option(0.25, help="sliding-window overlap when validating on whole volumes", metavar="F")

    def check(self) -> None:
        super().check()
        self.check_at_least(1, "patches_per_epoch")
        self.check_share("vessel_fraction", closed=True)
        self.check_share("val_overlap")
