"""`seg2refine benchmark`: placeholder until its issue lands."""

from __future__ import annotations

import argparse

from ..errors import Seg2RefineError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("benchmark", help="(not available yet)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    raise Seg2RefineError("'benchmark' is not implemented yet")
