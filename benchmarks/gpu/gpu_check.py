"""The GPU path, verified in one call of the device tool: install, CUDA tests, benchmark, training throughput.

On a lent GPU machine (bare: Python 3.12 with torch 2.11 + CUDA 13; no MONAI, nibabel or pynrrd), from the
repository root, after ``make gpu-wheels`` here (benchmarks/README.md gives the exact ``run`` call)::

    python3 benchmarks/gpu/gpu_check.py            # writes into $OUT (the device tool's folder)

Sections, each written to ``results.json`` (and its output to ``gpu_check.log``) as soon as it ends, so that a
run cut short still returns what it measured:

1. ``environment``: Python, torch, CUDA, the GPU, its driver.
2. ``install``: the carried wheels (``.whl/``: the project's own and exactly the ones the machine lacks, see
   ``wheels.txt``) into a private folder with ``pip --no-index --no-deps``, after asking pip's resolver whether
   the declared requirements are satisfied by the machine plus the wheels; then which requirements are missing.
3. ``cuda_tests``: ``pytest -m cuda tests/test_cuda.py`` (bf16 autocast, channels-last, GPU-side windows, training
   with AMP, resume, DDP over NCCL); JUnit XML in ``cuda_tests.xml``.
4. ``benchmark``: ``seg2refine benchmark --device cuda --width 64 --shape 256 512 512`` (stage 1, stage 2, the
   pipeline, memory) → ``benchmark.json``.
5. ``training``: the training section at 512², w=64, 16 slices per step → ``training.json``.
6. ``training_compiled``: the same through ``torch.compile``, only when the time left allows it.

``--dry-run`` runs the same sections on the CPU at tiny sizes (``--quick``), with the tree's ``src`` instead of the
wheels and the ``cuda`` tests on the CPU (``SEG2REFINE_CUDA_TESTS_ON_CPU=1``); CI runs it
(tests/test_gpu_check.py). Exit status 0 when every section passed or was skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SITE = Path("/tmp/seg2refine-site")  # where the carried wheels go on the GPU machine
DIST = "napari-seg2refine"


class Check:
    """The results so far, rewritten to ``results.json`` after each section; output lines go to the log too."""

    def __init__(self, out: Path, dry_run: bool, budget_s: float, site: Path = SITE) -> None:
        self.out, self.dry_run, self.site = out, dry_run, site
        self.start = time.monotonic()
        self.deadline = self.start + budget_s
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
        if dry_run:
            self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
            self.env["SEG2REFINE_CUDA_TESTS_ON_CPU"] = "1"
        self.results: dict[str, Any] = {"dry_run": dry_run, "budget_s": budget_s, "sections": {}}
        self.log = (out / "gpu_check.log").open("w", buffering=1)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.log.write(line + "\n")

    def record(self, name: str, status: str, t0: float, **details: Any) -> None:
        self.results["sections"][name] = {"status": status, "seconds": round(time.monotonic() - t0, 1), **details}
        self.results["elapsed_s"] = round(time.monotonic() - self.start, 1)
        tmp = self.out / "results.json.partial"
        tmp.write_text(json.dumps(self.results, indent=2) + "\n")
        os.replace(tmp, self.out / "results.json")
        self.say(f"gpu_check: {name}: {status} ({self.results['sections'][name]['seconds']} s)")

    def run(self, command: list[str], timeout: float) -> tuple[int, str]:
        """Run ``command`` from the repository root, its output streamed to the console and the log; (status,
        last 40 lines). Status 124 when it ran past ``timeout`` seconds."""
        self.say("$ " + " ".join(command))
        lines: list[str] = []
        with subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace") as proc:  # fmt: skip
            timed_out = threading.Event()

            def stop() -> None:
                timed_out.set()
                proc.kill()

            watchdog = threading.Timer(max(timeout, 1.0), stop)
            watchdog.start()
            assert proc.stdout is not None
            for line in proc.stdout:
                self.say(line.rstrip("\n"))
                lines.append(line.rstrip("\n"))
            status = proc.wait()
            watchdog.cancel()
        if timed_out.is_set():
            self.say(f"(stopped after {timeout:.0f} s)")
            status = 124
        return status, "\n".join(lines[-40:])

    def python(self, *args: str) -> list[str]:
        return [sys.executable, *args]


def environment(check: Check) -> None:
    t0 = time.monotonic()
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpu_count": os.cpu_count(), "executable": sys.executable}  # fmt: skip
    status, out = check.run(check.python("-c", (
        "import json, torch; c = torch.cuda.is_available(); print(json.dumps({'torch': torch.__version__, "
        "'cuda': torch.version.cuda, 'cuda_available': c, 'gpu': torch.cuda.get_device_name(0) if c else None, "
        "'capability': torch.cuda.get_device_capability(0) if c else None, "
        "'bf16': torch.cuda.is_bf16_supported() if c else None, 'threads': torch.get_num_threads()}))"
    )), timeout=60)
    if status == 0:
        info.update(json.loads(out.splitlines()[-1]))
    if shutil.which("nvidia-smi"):
        query = "--query-gpu=name,memory.total,driver_version,clocks.max.sm"
        smi, smi_out = check.run(["nvidia-smi", query, "--format=csv,noheader"], timeout=30)
        info["nvidia_smi"] = smi_out.strip() if smi == 0 else None
    ok = status == 0 and (check.dry_run or info.get("cuda_available"))
    check.record("environment", "ok" if ok else "failed", t0, **info)


def install(check: Check, wheels: Path) -> bool:
    """The carried wheels into ``check.site`` (then first on ``PYTHONPATH``); False when the project is not there."""
    t0 = time.monotonic()
    if check.dry_run:
        check.record("install", "skipped", t0, reason="dry run: the tree's src/ is used")
        return True
    found = sorted(wheels.glob("*.whl"))
    own = [w for w in found if w.name.startswith(DIST.replace("-", "_") + "-")]
    if not own:
        check.record("install", "failed", t0, reason=f"no {DIST} wheel in {wheels}: run `make gpu-wheels` first",
                     wheels=[w.name for w in found])
        return False
    resolver, resolver_out = check.run(check.python(
        "-m", "pip", "install", "--dry-run", "--no-index", "--find-links", str(wheels), "--disable-pip-version-check",
        str(own[0]),
    ), timeout=min(120, check.left()))
    status, out = check.run(check.python(
        "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade",
        "--disable-pip-version-check", "--target", str(check.site), *map(str, found),
    ), timeout=min(180, check.left()))
    if status != 0:
        check.record("install", "failed", t0, reason="pip install failed", output=out)
        return False
    check.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(check.site), os.environ.get("PYTHONPATH")]))
    found_status, found_out = check.run(check.python(__file__, "--probe"), timeout=min(60, check.left()))
    facts = json.loads(found_out.splitlines()[-1]) if found_status == 0 else {}
    ok = found_status == 0 and facts.get("location", "").startswith(str(check.site))
    check.record(
        "install", "ok" if ok else "failed", t0, wheels=[w.name for w in found],
        resolver_satisfied=resolver == 0, resolver_tail=resolver_out.splitlines()[-3:], **facts,
    )
    return ok


def requirement_probe() -> dict[str, Any]:
    """Where ``seg2refine_core`` is imported from, and the runtime requirements of the installed distribution that
    this environment does not satisfy (``--probe``: run with the installed wheels on the path)."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    import seg2refine_core

    missing = []
    for text in md.requires(DIST) or []:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        try:
            version = md.version(requirement.name)
        except md.PackageNotFoundError:
            missing.append(text)
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            missing.append(f"{text} (has {version})")
    return {"location": seg2refine_core.__file__, "missing": missing}


def cuda_tests(check: Check) -> None:
    t0 = time.monotonic()
    xml = check.out / "cuda_tests.xml"
    status, out = check.run(check.python(
        "-m", "pytest", "tests/test_cuda.py", "-m", "cuda", "-q", "-p", "no:cacheprovider", "-rA",
        f"--junitxml={xml}",
    ), timeout=min(150, check.left()))
    counts: dict[str, Any] = {}
    if xml.is_file():
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        counts["failed_tests"] = [
            f"{case.get('name')}: {problem.get('message', '')[:300]}"
            for case in suite.iter("testcase")
            for problem in [p for p in (case.find("failure"), case.find("error")) if p is not None][:1]
        ]
    ran = counts.get("tests", 0) - counts.get("skipped", 0)
    ok = status == 0 and ran > 0 and counts.get("skipped", 0) == 0
    check.record("cuda_tests", "ok" if ok else "failed", t0, exit_status=status, **counts,
                 **({} if ok else {"output_tail": out}))


def benchmark(check: Check, name: str, args: list[str], dry_args: list[str], cap_s: float,
              optional: bool = False) -> None:
    """``seg2refine benchmark ARGS --json OUT/NAME.json`` (``DRY_ARGS`` on the CPU in a dry run). An ``optional``
    section that runs out of time is recorded as skipped, not failed."""
    t0 = time.monotonic()
    report = check.out / f"{name}.json"
    given = ["--device", "cuda", *args]
    if check.dry_run:
        given = ["--device", "cpu", "--threads", "1", "--quick", *dry_args]
    status, out = check.run(check.python("-m", "seg2refine_core.cli", "benchmark", *given, "--json", str(report)),
                            timeout=min(cap_s, check.left()))
    details: dict[str, Any] = {"exit_status": status, "json": report.name if report.is_file() else None}
    if report.is_file():
        data = json.loads(report.read_text())
        details["numbers"] = {section: {k: v for k, v in values.items() if isinstance(v, (int, float))}
                              for section, values in data.items() if section != "meta"}  # fmt: skip
    else:
        details["output_tail"] = out
    if status == 124 and optional:
        check.record(name, "skipped", t0, reason="ran out of the time left", **details)
    else:
        check.record(name, "ok" if status == 0 else "failed", t0, **details)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the same sections on the CPU at tiny sizes (CI)")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)  # see requirement_probe
    parser.add_argument("--out", type=Path, default=None, help="results folder (default $OUT, else runs/gpu-check)")
    parser.add_argument("--wheels", type=Path, default=ROOT / ".whl", help="carried wheels (default .whl)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="time for the whole check; sections are cut to fit (default 230 s, 4 min with slack; "
                             "900 s with --dry-run)")
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(requirement_probe()))
        return 0
    out = args.out or Path(os.environ.get("OUT") or ROOT / "runs" / "gpu-check")
    out.mkdir(parents=True, exist_ok=True)
    budget = args.budget_s if args.budget_s is not None else (900.0 if args.dry_run else 230.0)
    check = Check(out, args.dry_run, budget)
    environment(check)
    if install(check, args.wheels):
        cuda_tests(check)
        benchmark(check, "benchmark", ["--width", "64", "--shape", "256", "512", "512", "--sections", "stage1",
                                       "stage2", "pipeline", "memory"], [], cap_s=150)  # fmt: skip
        training = ["--sections", "training", "--width", "64", "--shape", "1", "512", "512", "--train-batch", "16",
                    "--repeats", "5"]  # fmt: skip
        benchmark(check, "training", training, ["--sections", "training"], cap_s=60)
        if check.dry_run or check.left() < 90:
            check.record("training_compiled", "skipped", time.monotonic(),
                         reason="dry run" if check.dry_run else f"{check.left():.0f} s left, compiling needs ~90")
        else:
            benchmark(check, "training_compiled", [*training, "--compile"], [], cap_s=check.left() - 5, optional=True)
    failed = [name for name, s in check.results["sections"].items() if s["status"] == "failed"]
    check.say(f"gpu_check: {'FAILED: ' + ', '.join(failed) if failed else 'all sections ok'} "
              f"in {time.monotonic() - check.start:.0f} s; results in {out}")  # fmt: skip
    check.log.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
