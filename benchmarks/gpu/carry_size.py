"""What the device tool's ``run`` sends to the GPU machine, against its 64 MiB limit.

The tool sends the repository's tracked files, its untracked files that git does not ignore, and the ignored
paths named in ``carry`` (here the wheels of ``make gpu-wheels``). Prints each part and the total; exits 1 when
they do not fit.

    python benchmarks/gpu/carry_size.py .whl
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

LIMIT_MIB = 64.0
ROOT = Path(__file__).resolve().parents[2]


def tree_bytes(root: Path) -> int:
    """Bytes of the tracked files and of the untracked files git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    files = (root / name for name in listed if name)
    return sum(path.stat().st_size for path in files if path.is_file() and not path.is_symlink())


def path_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def main(carried: list[str]) -> int:
    mib = 1024.0**2
    parts = {"working tree (tracked + untracked, not ignored)": tree_bytes(ROOT)}
    for name in carried:
        path = ROOT / name
        if not path.exists():
            print(f"carry path {name} does not exist (run `make gpu-wheels`)", file=sys.stderr)
            return 1
        parts[f"carry {name}"] = path_bytes(path)
        if path.is_dir():
            for wheel in sorted(path.glob("*.whl")):
                print(f"  {wheel.name:<90} {wheel.stat().st_size / mib:6.2f} MiB")
    total = sum(parts.values())
    for label, size in parts.items():
        print(f"{label:<50} {size / mib:7.2f} MiB")
    print(f"{'total (the device tool allows 64 MiB)':<50} {total / mib:7.2f} MiB")
    return 0 if total <= LIMIT_MIB * mib else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
