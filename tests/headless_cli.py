"""Helper for test_packaging (not a test): the core and the CLI in a Python that cannot import the GUI stack.

``python tests/headless_cli.py JSON`` makes every import of napari, npe2, Qt (qtpy and the four bindings), magicgui,
superqt, vispy and the plugin package fail as if they were not installed (a ``sys.meta_path`` finder raising
``ModuleNotFoundError``), and likewise the heavy medical-image readers (SimpleITK, pydicom, highdicom), which the GPU
kit does not carry (benchmarks/gpu). Then it runs the steps of ``JSON``, a list of:

* ``"import-all"``: import every module of ``seg2refine_core`` (except ``__main__`` modules);
* ``"help-all"``: ``seg2refine --help`` and ``--help`` of every sub-command, nested ones too;
* ``["ARG", ...]``: ``seg2refine ARG ...`` in this process.

It prints one JSON line: ``{"results": [[step, exit status], ...], "refused": [blocked names someone tried]}``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.abc
import json
import pkgutil
import sys

GUI = ("napari", "napari_seg2refine", "npe2", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt",
       "vispy", "app_model")  # fmt: skip
HEAVY_READERS = ("SimpleITK", "pydicom", "highdicom")
BLOCKED = GUI + HEAVY_READERS


class Blocker(importlib.abc.MetaPathFinder):
    """Refuses the top-level packages in :data:`BLOCKED` (and their submodules); records each refusal."""

    def __init__(self) -> None:
        self.refused: set[str] = set()

    def find_spec(self, fullname, path, target=None):
        top = fullname.partition(".")[0]
        if top in BLOCKED:
            self.refused.add(top)
            raise ModuleNotFoundError(f"No module named {fullname!r} (hidden by tests/headless_cli.py)", name=fullname)
        return None


def import_all() -> int:
    import seg2refine_core

    for info in pkgutil.walk_packages(seg2refine_core.__path__, "seg2refine_core."):
        if not info.name.endswith(".__main__"):
            importlib.import_module(info.name)
    return 0


def sub_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of ``parser``: ``()``, ``("predict",)``, ``("train", "stage1")``, ..."""
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                paths += sub_commands(child, (*prefix, name))
    return paths


def run_cli(argv: list[str]) -> int:
    from seg2refine_core.cli import main

    try:
        return main(argv)
    except SystemExit as exit_:  # --help, or an argparse error
        return int(exit_.code or 0)


def help_all() -> int:
    from seg2refine_core.cli import build_parser

    failures = [path for path in sub_commands(build_parser()) if run_cli([*path, "--help"]) != 0]
    return len(failures)


def main(steps: list) -> dict:
    blocker = Blocker()
    sys.meta_path.insert(0, blocker)
    for name in list(sys.modules):
        if name.partition(".")[0] in BLOCKED:
            del sys.modules[name]
    results = []
    for step in steps:
        if step == "import-all":
            results.append([step, import_all()])
        elif step == "help-all":
            results.append([step, help_all()])
        else:
            results.append([step, run_cli(list(step))])
    return {"results": results, "refused": sorted(blocker.refused)}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
