"""CLAP embedding cost on this machine: tta's own CLAP (configs/clap/small.json and default.json) against
a LAION-CLAP-sized model (transformers ClapModel at its default HTSAT-tiny + RoBERTa-base size, random
weights: the cost does not depend on the values), and the embedding cache (warm) against computing.

Measures, in one run: audio clips/s (10 s clips) and captions/s through the shared `embed_*` interface.
Usage: .venv/bin/python bench/clap.py [--clips 8] [--captions 64] [--threads 1]
Prints a table and appends a JSON line to bench/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--captions", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
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
    rows = []
    for name, emb in peers.items():
        emb.embed_text(captions[:2])
        emb.embed_audio(wav16[:1], 16_000)            # warm-up (lazy init, allocator)
        t_audio = _timed(lambda e=emb: e.embed_audio(wav16, 16_000))
        t_text = _timed(lambda e=emb: e.embed_text(captions))
        params = sum(p.numel() for p in emb.model.parameters()) / 1e6
        rows.append({"model": name, "params_m": round(params, 2), "audio_clips_per_s": args.clips / t_audio,
                     "captions_per_s": args.captions / t_text})
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

    record = {"bench": "clap.embed", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {"node": platform.node(), "cpu_count": os.cpu_count(), "platform": platform.platform()},
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
              "settings": {"clips": args.clips, "clip_seconds": 10.0, "captions": args.captions,
                           "threads": args.threads, "batch_size": 8},
              "loadavg": list(os.getloadavg()), "results": rows,
              "cache": {"cold_s": cold, "warm_s": warm, "speedup": cold / warm},
              "note": "shared 2-core CPU with other jobs running: absolute times are noisy; compare ratios "
                      "within this run. LAION-size = transformers ClapModel default config, random weights."}
    with open(ROOT / "bench" / "results.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
