"""Benchmark: FAD over the same synthetic files and embedder, tta's batched + cached path vs a
straightforward per-file loop (what fadtk / frechet_audio_distance do: load each file, embed it alone,
stack, numpy covariance, scipy sqrtm). Same value required; prints a table and appends a JSON line to
bench/results.jsonl.

    .venv/bin/python bench/eval.py [--files 240] [--seconds 4] [--embedder mfcc]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_files(folder: Path, n: int, seconds: float, seed: int) -> None:
    from tta.audio import save_audio

    rng = np.random.default_rng(seed)
    sr = 16_000
    t = np.arange(int(seconds * sr)) / sr
    for i in range(n):
        f0 = rng.uniform(80, 4000)
        wav = 0.4 * np.sin(2 * np.pi * f0 * t * (1 + rng.uniform(0, 0.5) * t / seconds))
        wav += rng.uniform(0.01, 0.2) * rng.standard_normal(t.shape)
        wav *= (1 + np.sin(2 * np.pi * rng.uniform(0.2, 4) * t)) / 2  # some amplitude movement
        save_audio(folder / f"clip_{i:04d}.wav", wav.astype(np.float32), sr)


def per_file_loop(gen: Path, ref: Path, embedder) -> float:
    """The straightforward way: one file at a time, no cache, SciPy's sqrtm recipe."""
    import soundfile as sf
    from scipy import linalg

    from tta.audio import resample

    def embed_dir(folder: Path) -> np.ndarray:
        out = []
        for path in sorted(folder.glob("*.wav")):
            wav, sr = sf.read(str(path), dtype="float32")
            out.append(embedder.embed(resample(wav, sr, embedder.sample_rate), embedder.sample_rate))
        return np.concatenate(out)

    a, b = embed_dir(gen), embed_dir(ref)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = np.asarray(linalg.sqrtm(s1 @ s2)).real
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def tta_path(gen: Path, ref: Path, out: Path, cache: Path, embedder_name: str) -> float:
    from eval.run import EvalOptions, run_eval

    result = run_eval(EvalOptions(generated=gen, reference=ref, out=out, embedder=embedder_name, cache_dir=cache,
                                  progress=False))
    return result["metrics"]["fad"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=240, help="files per set (generated and reference)")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--embedder", default="mfcc")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results.jsonl")
    args = parser.parse_args()

    import torch

    import tta
    from eval.embedders import get_embedder

    tmp = Path(tempfile.mkdtemp(prefix="tta-bench-eval-"))
    try:
        gen, ref = tmp / "gen", tmp / "ref"
        make_files(gen, args.files, args.seconds, seed=1)
        make_files(ref, args.files, args.seconds, seed=2)
        embedder = get_embedder(args.embedder)
        embedder.embed(np.zeros(16_000, np.float32) + 0.01, 16_000)  # warm up (librosa mel basis, torch)

        t0 = time.perf_counter()
        loop_value = per_file_loop(gen, ref, embedder)
        t_loop = time.perf_counter() - t0

        t0 = time.perf_counter()
        cold_value = tta_path(gen, ref, tmp / "out_cold", tmp / "cache", args.embedder)
        t_cold = time.perf_counter() - t0

        t0 = time.perf_counter()
        warm_value = tta_path(gen, ref, tmp / "out_warm", tmp / "cache", args.embedder)
        t_warm = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rel = abs(cold_value - loop_value) / max(abs(loop_value), 1e-12)
    rows = [("per-file loop (fadtk-style)", t_loop, loop_value, 1.0),
            ("tta batched, cold cache", t_cold, cold_value, t_loop / t_cold),
            ("tta batched, warm cache", t_warm, warm_value, t_loop / t_warm)]
    print(f"FAD over {args.files}+{args.files} files of {args.seconds} s, embedder {args.embedder}")
    print(f"{'path':32s} {'seconds':>9s} {'FAD':>14s} {'speed-up':>9s}")
    for name, sec, value, ratio in rows:
        print(f"{name:32s} {sec:9.2f} {value:14.6f} {ratio:8.2f}x")
    print(f"relative difference of the values: {rel:.2e}")
    from bench.record import machine_info

    record = {
        "bench": "eval.fad", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),    # bench.record (keeps node, cpu_count, platform)
        "versions": {"tta": tta.__version__, "torch": torch.__version__, "numpy": np.__version__},
        "settings": {"files_per_set": args.files, "seconds": args.seconds, "embedder": args.embedder,
                     "torch_threads": torch.get_num_threads()},
        "loadavg": os.getloadavg(),
        "seconds": {"per_file_loop": t_loop, "tta_cold": t_cold, "tta_warm": t_warm},
        "ratio_vs_loop": {"tta_cold": t_loop / t_cold, "tta_warm": t_loop / t_warm},
        "fad": {"loop": loop_value, "tta": cold_value, "relative_difference": rel},
        "note": "shared 2-core machine with other jobs running: timings are noisy; ratios taken in one run",
    }
    with open(args.results, "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
