"""How fast AudioDataset serves random 10.24 s crops of long files, compared in one run with the naive way.

Peers, all producing the same kind of item (16 kHz, 10.24 s, normalised; naive draws its crop offsets with its
own generator, so the crops are not the same spans of the file):
  naive   decode the whole file, resample all of it, then crop (what a simple loader does)
  seek    AudioDataset without cache: decode only the crop's span (soundfile seek), resample that
  cache   AudioDataset with cache_dir: resampled once to .npy, crops sliced from a memory map (warm cache)

Every peer reads the file just written, so from the page cache: this times decoding and resampling, not disk.

Usage: .venv/bin/python bench/bench_data_loading.py [--seconds 60] [--items 20] [--results PATH] [--no-record]
Prints a table (ms per item and speed-up vs naive) and appends a JSON line to --results (bench/results.jsonl)
unless --no-record.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tta.audio import load_audio, normalize_wav
from tta.data.dataset import AudioDataset
from tta.data.manifest import ManifestRow, write_manifest

SR, SEGMENT = 16_000, 10.24


def naive_item(path: Path, rng: np.random.Generator) -> np.ndarray:
    wav, _ = load_audio(path, SR)
    n = int(round(SEGMENT * SR))
    start = int(rng.integers(0, max(len(wav) - n, 0) + 1))
    return normalize_wav(wav[start:start + n])


def time_per_item(fn, items: int) -> float:
    fn(0)  # warm-up (imports, cache fill)
    t0 = time.perf_counter()
    for i in range(1, items + 1):
        fn(i)
    return (time.perf_counter() - t0) / items * 1000


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each test file")
    ap.add_argument("--items", type=int, default=20, help="random crops timed per peer and format")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results.jsonl")
    ap.add_argument("--no-record", action="store_true", help="do not append to --results")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        audio = (0.3 * rng.standard_normal((int(args.seconds * 44_100), 2))).astype(np.float32)
        for fmt in ("wav", "flac"):
            path = tmp / f"long.{fmt}"
            sf.write(path, audio, 44_100)
            manifest = write_manifest(tmp / f"{fmt}.jsonl", [ManifestRow("x", str(path), ("noise",),
                                                                         args.seconds, 44_100)])
            seek = AudioDataset(manifest, "train", SR, SEGMENT)
            cache = AudioDataset(manifest, "train", SR, SEGMENT, cache_dir=tmp / "cache")
            ms = {
                "naive": time_per_item(lambda i: naive_item(path, np.random.default_rng(i)), args.items),
                "seek": time_per_item(lambda i: seek[(0, i)], args.items),
                "cache": time_per_item(lambda i: cache[(0, i)], args.items),
            }
            results.append({"format": fmt, "ms_per_item": {k: round(v, 2) for k, v in ms.items()},
                            "speedup_vs_naive": {k: round(ms["naive"] / v, 2) for k, v in ms.items()}})
    print(f"random {SEGMENT} s crops at {SR} Hz from a {args.seconds:g} s 44.1 kHz stereo file, "
          f"{args.items} items per peer")
    print(f"{'format':8}{'peer':8}{'ms/item':>10}{'x naive':>10}")
    for r in results:
        for peer, ms in r["ms_per_item"].items():
            print(f"{r['format']:8}{peer:8}{ms:>10.2f}{r['speedup_vs_naive'][peer]:>10.2f}")
    from bench.record import append_record, machine_info

    machine = machine_info()
    record = {"bench": "data_loading", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              # bench.record.machine_info(); this script used to store platform.machine() here (now machine.arch)
              "machine": machine, "cpu_count": machine["cpu_count"], "python": machine["python"],
              "versions": {"numpy": np.__version__, "soundfile": sf.__version__, "soxr": soxr.__version__,
                           "libsndfile": sf.__libsndfile_version__, "torch": torch.__version__,
                           "tta": machine["tta"]},
              "settings": {"file_seconds": args.seconds, "items": args.items, "segment_seconds": SEGMENT,
                           "sample_rate": SR, "threads": 1},
              "loadavg": os.getloadavg(), "results": results,
              "note": "shared CPU: absolute times are noisy, compare the ratios within this run"}
    if not args.no_record:
        append_record(args.results, record)
    return record


if __name__ == "__main__":
    main()
