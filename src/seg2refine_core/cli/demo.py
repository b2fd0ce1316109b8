"""`seg2refine demo`: placeholder until its issue lands."""

from __future__ import annotations

import argparse

from ..errors import Seg2RefineError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="(not available yet)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    raise Seg2RefineError("'demo' is not implemented yet")
