"""Shared by the trainer tests: training runs through the command line, made once per augmentation preset."""

from collections.abc import Callable
from pathlib import Path

from seg2refine_core.cli import main


def runs_per_preset(tmp_path_factory, args_for: Callable[[Path], list[str]]) -> Callable[[str], Path]:
    """``straight(preset)``: the run folder of ``main(args_for(out) + --augment preset)``, made on first use
    (``default`` without ``--augment``, the default of a new run)."""
    runs: dict[str, Path] = {}

    def straight(preset: str) -> Path:
        if preset not in runs:
            out = tmp_path_factory.mktemp("runs") / f"straight-{preset}"
            chosen = [] if preset == "default" else ["--augment", preset]
            assert main(args_for(out) + chosen) == 0
            runs[preset] = out
        return runs[preset]

    return straight
