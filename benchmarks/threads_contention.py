"""Stage 1 under CPU contention: which thread setting degrades gracefully (behind ``devices.default_threads``).

    .venv/bin/python benchmarks/threads_contention.py --busy 0 2 --rounds 3

For each contention level (``--busy`` N extra processes spinning ``while 1: pass``, each ending by itself after
``--busy-seconds``), each thread setting runs in a fresh process (environment variables such as
``OMP_WAIT_POLICY`` act only before torch starts), interleaved round by round so that the other users' load
hits all settings alike. One run: the bundled SFANet on ``--slices`` random X' slices of ``--size``² in batches of
``--batch``, warm, median of 3 passes; it prints wall ms per slice, process CPU ms per slice and the threads
it used. The 1-minute load average is printed before and after every level.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SETTINGS = {
    "default (1 thread per core)": ({}, "none"),
    "--threads 1": ({}, "1"),
    "OMP_WAIT_POLICY=PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, "none"),
    "threads = idle cores": ({}, "idle"),
    "idle cores + PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, "idle"),
}


def child(args: argparse.Namespace) -> None:
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as the CLI does
    from seg2refine_core.devices import default_threads

    threads = {"none": None, "idle": default_threads()}.get(args.threads, None)
    if args.threads.isdigit():
        threads = int(args.threads)
    import numpy as np
    import torch

    from seg2refine_core.inference.pipeline import load_stage, segment_slices

    if threads is not None:
        torch.set_num_threads(threads)
    model = load_stage("stage1", None, torch.device("cpu")).model
    x = np.random.default_rng(0).random((args.slices, args.size, args.size), dtype=np.float32)
    segment_slices(model, x[: args.batch], batch_size=args.batch)
    wall, cpu = [], []
    for _ in range(3):
        w0, c0 = time.perf_counter(), time.process_time()
        segment_slices(model, x, batch_size=args.batch)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    print(json.dumps({"ms": 1000 * statistics.median(wall) / args.slices,
                      "cpu_ms": 1000 * statistics.median(cpu) / args.slices, "threads": torch.get_num_threads()}))


def run_setting(env_extra: dict, threads: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, **env_extra}
    cmd = [sys.executable, __file__, "--child", "--threads", threads, "--slices", str(args.slices),
           "--size", str(args.size), "--batch", str(args.batch)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 2], help="extra spinning processes per level")
    parser.add_argument("--busy-seconds", type=float, default=900.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--settings", nargs="+", type=int, default=list(range(len(SETTINGS))),
                        help="indices into the settings table (default: all)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", default="none", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    chosen = {name: value for i, (name, value) in enumerate(SETTINGS.items()) if i in args.settings}
    spin = f"import time\nend = time.time() + {args.busy_seconds}\nwhile time.time() < end: pass"
    for busy in args.busy:
        spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(busy)]
        try:
            time.sleep(2.0 if busy else 0.0)
            load0 = os.getloadavg()[0]
            results: dict[str, list[dict]] = {name: [] for name in chosen}
            for _ in range(args.rounds):
                for name, (env_extra, threads) in chosen.items():
                    results[name].append(run_setting(env_extra, threads, args))
            load1 = os.getloadavg()[0]
        finally:
            for p in spinners:
                p.kill()
                p.wait()
        print(f"\n{busy} extra busy processes; 1-min load {load0:.1f} -> {load1:.1f}; {args.slices} slices of "
              f"{args.size}², batch {args.batch}; median of {args.rounds} rounds")
        print(f"{'setting':>30} {'ms/slice':>9} {'CPU ms/slice':>12} {'threads':>8}  per round")
        for name, runs in results.items():
            ms = statistics.median(r["ms"] for r in runs)
            cpu = statistics.median(r["cpu_ms"] for r in runs)
            threads = ",".join(str(r["threads"]) for r in runs)
            each = " ".join(f"{r['ms']:.0f}" for r in runs)
            print(f"{name:>30} {ms:9.1f} {cpu:12.1f} {threads:>8}  {each}")


if __name__ == "__main__":
    main()
