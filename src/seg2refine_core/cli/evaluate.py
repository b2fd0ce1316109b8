"""`seg2refine evaluate`: placeholder until its issue lands."""

from __future__ import annotations

import argparse

from ..errors import Seg2RefineError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="(not available yet)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    raise Seg2RefineError("'evaluate' is not implemented yet")
