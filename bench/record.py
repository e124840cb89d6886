"""What every bench record says about the machine and the software that produced it.

`machine_info()` is the one description of the machine used by every script that appends to
bench/results.jsonl: the CPU model name and its bf16-relevant flags (read from /proc/cpuinfo where it
exists), the core count, the kernel, the python / torch / numpy / tta versions and the git commit of the
checkout ("" when the repository is not a git checkout). Older records named some of these differently; the
old keys (node, platform, processor, cpu_count) are kept so readers of either kind work.

`append_record(path, record)` appends one JSON line to a results file, creating its folder.

`peak_rss_mib()` is this process's own peak resident set size in MiB. On Linux it reads VmHWM from
/proc/self/status: getrusage's ru_maxrss survives fork and exec, so a child started from a large process
reports the parent's peak when that was higher (measured: a child of a 1.2 GB process said 1 171 MiB by
ru_maxrss and 13 MiB by VmHWM).

Import it as `bench.record` with the repository root on sys.path (putting bench/ itself first on sys.path
would shadow the top-level `vae` package with bench/vae.py), or load it by path.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the flags that decide which bf16 / wide-vector kernels torch can use on x86
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpuinfo(path: str | Path = "/proc/cpuinfo") -> dict:
    """{"model_name", "flags"} of the first processor in a /proc/cpuinfo file; empty values when it is absent
    (macOS, Windows) or carries no such lines (some ARM kernels name the CPU elsewhere)."""
    model, flags = "", set()
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return {"model_name": "", "flags": []}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if not model and key in ("model name", "cpu model", "hardware"):
            model = value.strip()
        elif not flags and key in ("flags", "features"):
            flags = set(value.split())
        if model and flags:
            break
    return {"model_name": model, "flags": sorted(f for f in CPU_FLAGS if f in flags)}


def git_commit(root: Path = ROOT) -> str:
    """HEAD's commit of the checkout at `root`, or "" when it is not a git checkout (or git is missing).
    Read-only: `git rev-parse` neither refreshes the index nor takes its lock."""
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def git_dirty(root: Path = ROOT) -> bool | None:
    """Whether tracked files of the checkout differ from HEAD (the record's commit did not alone make the
    result); None when it cannot be told. `git diff --quiet` reads without taking the index lock."""
    try:
        out = subprocess.run(["git", "-C", str(root), "--no-optional-locks", "diff", "HEAD", "--quiet"],
                             capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return {0: False, 1: True}.get(out.returncode)


def clear_text_memo(embedder) -> None:
    """Forget the caption features a frozen tta text tower keeps, so a timed call computes them (a benchmark
    that times the same captions again would otherwise time a dictionary lookup)."""
    text = getattr(getattr(embedder, "model", None), "text", None)
    if hasattr(text, "clear_memo"):
        text.clear_memo()


def package_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def tta_version() -> str:
    from tta import __version__       # cheap: tta/__init__ imports nothing heavy

    return __version__


def machine_info() -> dict:
    """The machine and software of this run (see the module docstring). Versions come from the installed
    distributions' metadata, so nothing heavy is imported here."""
    cpu = cpuinfo()
    return {
        "cpu_model": cpu["model_name"] or platform.processor(),
        "cpu_flags": cpu["flags"],                     # those of CPU_FLAGS the CPU has
        "cpu_flags_checked": list(CPU_FLAGS),
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "node": platform.node(),
        "platform": platform.platform(),
        # old key: platform.processor() is "" on Linux, so it now falls back to the cpuinfo model name
        "processor": platform.processor() or cpu["model_name"],
        "python": platform.python_version(),
        "torch": package_version("torch"),
        "numpy": package_version("numpy"),
        "tta": tta_version(),
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
    }


def peak_rss_mib() -> float:
    """This process's own peak RSS in MiB: VmHWM of /proc/self/status where it exists, else ru_maxrss (KiB on
    Linux, bytes on macOS)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def append_record(path: str | Path, record: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def time_alternately(fns: dict, rounds: int, *, warmup: bool = True) -> dict[str, list[float]]:
    """Wall seconds of each `fns[name]()` per round, the peers timed round by round in one process: after one
    untimed warm-up call of each (allocator, kernels, lazy imports), round r times every peer once, starting
    from peer r mod len(fns) (the order rotates, so no peer is always first after another's cache churn and
    drift on a shared CPU hits all alike). Returns {name: [seconds of round 0, 1, ...]}; take the median."""
    import time

    names = list(fns)
    if warmup:
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t)
    return times
