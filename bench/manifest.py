"""How fast `read_manifest` and `write_manifest` handle an AudioCaps/WavCaps-sized manifest, against another commit's
code in one run.

A synthetic manifest of `--rows` rows (seeded) with the fields real ones carry: an AudioSet-style id, a relative
path, one or five captions, two labels, seconds, sample_rate, split, source, licence and, on every fourth row, a
category. Peers, timed alternately round by round (bench.record.time_alternately, medians reported):
  read    this checkout's read_manifest           old_read    the `--old` tree's read_manifest
  write   this checkout's write_manifest of the rows read   old_write   the `--old` tree's
The old code is imported from a git worktree of the commit to compare with (776c9e0 was before the per-row
number checks):

    git worktree add ../tta-old 776c9e0
    .venv/bin/python bench/manifest.py --old ../tta-old [--rows 200000] [--rounds 3] [--profile]

Both peers read the same file just written (from the page cache): this times parsing and checking, not disk.
Manifests are JSON lines only (read_manifest); a CSV is an importer's input (tta data import), which also probes
every audio file, so it is not timed here. `--profile` prints cProfile's top entries of one read by each peer.
Prints a table and appends a JSON line to --results (bench/results.jsonl) unless --no-record.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import io
import json
import os
import pstats
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WORDS = ("a dog barks twice while cars pass by on a wet road and rain falls on a tin roof as people talk birds "
         "chirp in the distance a door slams water flows engine idles piano plays wind blows").split()
LABELS = ("Dog", "Bark", "Vehicle", "Rain", "Speech", "Bird", "Door", "Water", "Engine", "Music", "Wind")


def synthetic_manifest(path: Path, rows: int, seed: int = 0) -> None:
    """`rows` manifest lines with realistic fields (see the module docstring), seeded."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            yid = f"Y{i:010d}{'-_'[i % 2]}"
            row = {"id": f"{yid}_30", "path": f"audio/{i % 256:02x}/{yid}_30.000_40.000.wav",
                   "captions": [" ".join(rng.choices(WORDS, k=rng.randint(6, 14))) for _ in range(rng.choice((1, 5)))],
                   "seconds": round(rng.uniform(1.0, 10.0), 3), "sample_rate": rng.choice((16000, 32000, 44100, 48000)),
                   "split": rng.choice(("train", "train", "train", "valid", "test")), "source": "audiocaps",
                   "licence": "CC BY 4.0", "labels": rng.sample(LABELS, 2)}
            if i % 4 == 0:
                row["category"] = "event"
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def import_old(tree: Path):
    """The `tta.data.manifest` module of the checkout at `tree`, imported beside this checkout's (its `tta` package
    is loaded under the same names, then this checkout's modules are put back)."""
    mine = {k: v for k, v in sys.modules.items() if k == "tta" or k.startswith("tta.")}
    for k in mine:
        del sys.modules[k]
    sys.path.insert(0, str(tree))
    try:
        old = importlib.import_module("tta.data.manifest")
        if not Path(old.__file__).resolve().is_relative_to(tree.resolve()):
            raise SystemExit(f"--old {tree}: imported {old.__file__} instead of that tree's tta")
    finally:
        sys.path.remove(str(tree))
        for k in [k for k in sys.modules if k == "tta" or k.startswith("tta.")]:
            del sys.modules[k]
        sys.modules.update(mine)
    return old


def profile_top(fn, n: int) -> list[str]:
    prof = cProfile.Profile()
    prof.runcall(fn)
    out = io.StringIO()
    # file names only: a record must not carry the paths of the machine that ran it
    pstats.Stats(prof, stream=out).strip_dirs().sort_stats("tottime").print_stats(n)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
    return [lines[0].strip()] + lines[start:start + n + 1]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True, help="a git worktree of the commit to compare with")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per peer (medians reported)")
    ap.add_argument("--profile", action="store_true", help="print cProfile's top entries of one read per peer")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results.jsonl")
    ap.add_argument("--no-record", action="store_true", help="do not append to --results")
    args = ap.parse_args(argv)
    from bench.record import machine_info, time_alternately, git_commit
    from tta.data import manifest as new

    machine = machine_info()   # before timing: the commit whose code is timed
    old = import_old(args.old)
    profiles = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "manifest.jsonl"
        synthetic_manifest(src, args.rows)
        rows = {"new": new.read_manifest(src), "old": old.read_manifest(src)}
        if [r.to_json() for r in rows["new"]] != [r.to_json() for r in rows["old"]]:
            raise SystemExit("the peers read different rows")
        peers = {"read": lambda: new.read_manifest(src), "old_read": lambda: old.read_manifest(src),
                 "write": lambda: new.write_manifest(tmp / "new.jsonl", rows["new"]),
                 "old_write": lambda: old.write_manifest(tmp / "old.jsonl", rows["old"])}
        times = time_alternately(peers, args.rounds)
        if (tmp / "new.jsonl").read_bytes() != (tmp / "old.jsonl").read_bytes():
            raise SystemExit("the peers wrote different files")
        size = src.stat().st_size
        if args.profile:
            for name in ("read", "old_read"):
                profiles[name] = profile_top(peers[name], 12)
    median = {k: statistics.median(v) for k, v in times.items()}
    ratios = {"read_vs_old": median["read"] / median["old_read"], "write_vs_old": median["write"] / median["old_write"]}
    print(f"{args.rows} rows ({size / 1e6:.1f} MB JSONL), {args.rounds} rounds, old = {args.old}")
    print(f"{'peer':12}{'median s':>10}{'us/row':>10}")
    for k, v in median.items():
        print(f"{k:12}{v:>10.3f}{v / args.rows * 1e6:>10.2f}")
    print(f"read / old_read = {ratios['read_vs_old']:.3f}   write / old_write = {ratios['write_vs_old']:.3f}")
    for name, lines in profiles.items():
        print(f"\ncProfile, one {name}:")
        print("\n".join(lines))
    record = {"bench": "manifest", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine,
              "versions": {"python": machine["python"], "tta": machine["tta"]},
              "settings": {"rows": args.rows, "rounds": args.rounds, "bytes": size, "format": "jsonl",
                           "old_commit": git_commit(args.old)},
              "loadavg": os.getloadavg(), "seconds": {k: [round(x, 4) for x in v] for k, v in times.items()},
              "median_seconds": {k: round(v, 4) for k, v in median.items()},
              "ratios": {k: round(v, 3) for k, v in ratios.items()}, "profiles": profiles,
              "note": "shared CPU: absolute times are noisy, compare the ratios within this run"}
    if not args.no_record:
        from bench.record import append_record

        append_record(args.results, record)
    return record


if __name__ == "__main__":
    main()
