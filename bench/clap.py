"""CLAP embedding cost on this machine: tta's own CLAP (configs/clap/small.json and default.json) against
a LAION-CLAP-sized model (transformers ClapModel at its default HTSAT-tiny + RoBERTa-base size, random
weights: the cost does not depend on the values), and the embedding cache (warm) against computing.

Measures, in one run: audio clips/s (10 s clips) and captions/s through the shared `embed_*` interface. Every
peer's audio and text calls are warmed up once, then timed alternately for --repeats rounds (rotating order,
bench.record.time_alternately); the rates are from each one's median round.
Usage: .venv/bin/python bench/clap.py [--clips 8] [--captions 64] [--threads 1] [--repeats 3]
                                      [--results bench/results.jsonl] [--no-record]
Prints a table and appends a JSON line to --results unless --no-record.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--captions", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per peer (median reported)")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results.jsonl")
    ap.add_argument("--no-record", action="store_true", help="do not append to --results")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from transformers import ClapConfig, ClapModel

    from tta.clap.laion import LaionClapEmbedder
    from tta.clap.model import TTAClap, TTAClapEmbedder
    from tta.clap.towers import load_tokenizer, minilm_folder
    from tta.clap.train import RunConfig
    from tta.config import load_config

    rng = np.random.default_rng(0)
    wav16 = (0.1 * rng.standard_normal((args.clips, 160_000))).astype(np.float32)
    captions = [f"a recording number {i} of rain and a dog barking far away" for i in range(args.captions)]
    peers = {}
    for name in ("small", "default"):
        cfg = load_config(RunConfig, ROOT / "configs" / "clap" / f"{name}.json")
        peers[f"tta-{name}"] = TTAClapEmbedder(TTAClap(cfg.model), identity=f"bench-{name}", batch_size=8)
    # LAION size; a real WordPiece vocabulary stands in for RoBERTa's (tokenizer speed is not the point)
    peers["laion-size"] = LaionClapEmbedder(ClapModel(ClapConfig()).eval(), load_tokenizer(str(minilm_folder())),
                                            identity="bench-laion", batch_size=8)
    from bench.record import append_record, clear_text_memo, machine_info, time_alternately

    fns = {}
    for name, emb in peers.items():
        fns[(name, "audio")] = lambda e=emb: e.embed_audio(wav16, 16_000)
        # a frozen tta text tower remembers captions it has seen: forget them, so every round computes
        fns[(name, "text")] = lambda e=emb: (clear_text_memo(e), e.embed_text(captions))
    times = time_alternately(fns, args.repeats)       # one warm-up call each (lazy init, allocator) first
    rows = []
    for name, emb in peers.items():
        t_audio, t_text = statistics.median(times[(name, "audio")]), statistics.median(times[(name, "text")])
        params = sum(p.numel() for p in emb.model.parameters()) / 1e6
        rows.append({"model": name, "params_m": round(params, 2), "audio_clips_per_s": args.clips / t_audio,
                     "captions_per_s": args.captions / t_text,
                     "audio_rounds_s": [round(x, 4) for x in times[(name, "audio")]],
                     "text_rounds_s": [round(x, 4) for x in times[(name, "text")]]})
    with tempfile.TemporaryDirectory() as tmp:
        emb = peers["tta-small"]
        emb.set_cache(tmp)
        cold = _timed(lambda: emb.embed_audio(wav16, 16_000))
        warm = _timed(lambda: emb.embed_audio(wav16, 16_000))
        emb.set_cache(None)
    ref = next(r for r in rows if r["model"] == "laion-size")
    for r in rows:
        r["audio_speedup_vs_laion"] = r["audio_clips_per_s"] / ref["audio_clips_per_s"]
        r["text_speedup_vs_laion"] = r["captions_per_s"] / ref["captions_per_s"]
    print(f"{'model':<12} {'params M':>9} {'clips/s':>9} {'x laion':>8} {'captions/s':>11} {'x laion':>8}")
    for r in rows:
        print(f"{r['model']:<12} {r['params_m']:>9.2f} {r['audio_clips_per_s']:>9.2f} "
              f"{r['audio_speedup_vs_laion']:>8.2f} {r['captions_per_s']:>11.1f} {r['text_speedup_vs_laion']:>8.2f}")
    print(f"cache (tta-small, {args.clips} clips): cold {cold:.3f} s, warm {warm:.4f} s, x{cold / warm:.0f}")
    import transformers

    machine = machine_info()
    record = {"bench": "clap.embed", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": machine,          # bench.record.machine_info() (keeps node, cpu_count, platform)
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "tta": machine["tta"]},
              "settings": {"clips": args.clips, "clip_seconds": 10.0, "captions": args.captions,
                           "threads": args.threads, "batch_size": 8, "repeats": args.repeats,
                           "stat": "median of --repeats rounds; peers warmed up, then timed alternately"},
              "loadavg": list(os.getloadavg()), "results": rows,
              "cache": {"cold_s": cold, "warm_s": warm, "speedup": cold / warm},
              "note": "shared 2-core CPU with other jobs running: absolute times are noisy; compare ratios "
                      "within this run. LAION-size = transformers ClapModel default config, random weights."}
    if not args.no_record:
        append_record(args.results, record)
    return record


if __name__ == "__main__":
    main()
