"""Retrieval overhead per generated clip: `TTAPipeline.__call__` with vs without a datastore (Re-AudioLDM).

One retrieval-capable pipeline (UNet with cross-attention context + RetrievalContext; random weights, since
only time is measured) generates the same prompts twice per round, interleaved: on its null context (no
datastore) and with k neighbours from a datastore of `--store-size` random unit entries (flat or IVF index,
memory-mapped like a real store). The two paths alternate which goes first from round to round (plain first
in even rounds, retrieval first in odd ones), so neither always runs in the other's wake; the medians over
--rounds are reported. Reports seconds per clip for both, the ratio, and the retrieval step alone:
retrieve_ms_per_prompt times `pipe.retrieve` on ready CLAP text embeddings (FAISS search + context tokens) and
EXCLUDES the CLAP text embedding of the prompt, which is timed separately as clap_text_ms_per_prompt (the
pipeline computes that embedding for guidance anyway, with or without a datastore). The UNet cost with context is the same in
both runs except for the context length (1 token vs 1 + k * (features + latent tokens)). `--features` picks the
neighbour features ("both" = CLAP audio + text; "all" adds each neighbour's pooled VAE latents, `--latent-tokens`
of them, stored in the synthetic datastore as random values of the VAE's latent width).

    .venv/bin/python bench/retrieval_overhead.py [--size tiny|default] [--store-size 10000] [-k 5] [--features all]
    .venv/bin/python bench/retrieval.py --mode generate ...      (the same, from the retrieval bench)

Prints a table and appends a JSON line to --results (bench/results.jsonl) unless --no-record. Timings on the
shared CPU are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def model_config(cls, kind: str, size: str):
    from tta.config import from_dict

    return from_dict(cls, json.loads((ROOT / "configs" / kind / f"{size}.json").read_text())["model"])


def synthetic_store(folder: Path, identity: str, n: int, dim: int, index: str, latent: dict | None = None) -> Path:
    """A datastore folder of n random unit audio/text embeddings (format of tta.retrieval.datastore); with `latent`
    ({"vae_identity", "tokens", "dim"}) also random float16 pooled latents."""
    import faiss

    from tta.retrieval.datastore import FORMAT_VERSION, DatastoreConfig, fill_index, make_index

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    config = DatastoreConfig(index=index)
    for name in ("audio", "text"):
        emb = rng.standard_normal((n, dim), dtype=np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        np.save(folder / f"{name}_emb.npy", emb)
        faiss.write_index(fill_index(make_index(config, dim, n), emb), str(folder / f"{name}.index"))
    with open(folder / "meta.jsonl", "w") as f:
        f.writelines(json.dumps({"id": f"e{i}", "captions": [f"entry {i}"], "path": "", "audio_sha256": f"{i:064x}"})
                     + "\n" for i in range(n))
    info = {"format_version": FORMAT_VERSION, "clap_identity": identity, "dim": dim, "count": n, "index": index,
            "manifest": "(synthetic)", "config": {"index": index}}
    if latent:
        np.save(folder / "latent.npy", rng.standard_normal((n, latent["tokens"], latent["dim"])).astype(np.float16))
        info["latent"] = latent
    (folder / "datastore.json").write_text(json.dumps(info))
    return folder


def build_pipeline(size: str, k: int, features: str = "both", latent_tokens: int = 8):
    """(pipeline with random weights, its CLAP, the datastore's latent record or None)."""
    from dataclasses import replace

    import torch

    from tta.clap.model import ClapConfig, TTAClap, TTAClapEmbedder
    from tta.ldm.model import LDMConfig, LDMUNet
    from tta.ldm.retrieval_context import RetrievalContext, RetrievalContextConfig, feature_names
    from tta.ldm.sampling import DiffusionConfig
    from tta.pipeline import PipelineDefaults, TTAPipeline
    from vae.model import MelVAE, VAEConfig
    from vocoder.model import HiFiGAN, HiFiGANConfig

    torch.manual_seed(0)
    clap = TTAClapEmbedder(TTAClap(model_config(ClapConfig, "clap", size)).eval())
    ldm = model_config(LDMConfig, "ldm", size)
    ldm = replace(ldm, context_dim=ldm.context_dim or ldm.class_embed_dim)
    vae = MelVAE(model_config(VAEConfig, "vae", size))
    latent = None
    if "latent" in feature_names(features):
        latent = {"vae_identity": vae.identity, "tokens": latent_tokens,
                  "dim": vae.config.latent_channels * (vae.config.mel.n_mels // vae.downsample_factor)}
    lat = {} if latent is None else {"latent_tokens": latent_tokens, "latent_dim": latent["dim"],
                                     "latent_vae": latent["vae_identity"]}
    retrieval = RetrievalContext(RetrievalContextConfig(embed_dim=clap.embed_dim, context_dim=ldm.context_dim,
                                                        neighbours=k, max_neighbours=max(10, k), features=features,
                                                        **lat))
    pipe = TTAPipeline(LDMUNet(ldm), vae, HiFiGAN(model_config(HiFiGANConfig, "vocoder", size)), clap,
                       DiffusionConfig().scheduler_config(), PipelineDefaults(), retrieval=retrieval)
    return pipe, clap, latent


def main(argv: list[str] | None = None) -> dict:
    import faiss
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=("tiny", "default"), default="tiny", help="configs/*/SIZE.json models")
    p.add_argument("--store-size", type=int, default=10_000)
    p.add_argument("--index", choices=("flat", "ivf"), default="flat")
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--features", default="both", help="neighbour features: both (CLAP audio + text), all (+ latents), ...")
    p.add_argument("--latent-tokens", type=int, default=8, help="pooled latent tokens per neighbour (latent features)")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--seconds", type=float, default=2.56)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results.jsonl")
    p.add_argument("--no-record", action="store_true", help="do not append to --results")
    args = p.parse_args(argv)

    from bench.record import clear_text_memo

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    pipe, clap, latent = build_pipeline(args.size, args.k, args.features, args.latent_tokens)
    prompts = [f"a sound number {i}" for i in range(args.prompts)]
    load_before = list(os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        from tta.retrieval import Datastore

        store = Datastore.load(synthetic_store(Path(tmp) / "store", clap.identity, args.store_size,
                                               clap.embed_dim, args.index, latent))
        common = {"seconds": args.seconds, "steps": args.steps, "guidance": 2.5, "batch_size": 1}
        pipe(prompts[:1], **common)                                       # warm-up
        pipe(prompts[:1], datastore=store, neighbours=args.k, **common)
        plain, retrieved, lookup, embed = [], [], [], []

        def run_plain():
            clear_text_memo(clap)    # each round embeds its prompts as new ones, as a real run would
            t = time.perf_counter()
            pipe(prompts, **common)
            plain.append((time.perf_counter() - t) / len(prompts))

        def run_retrieval():
            clear_text_memo(clap)
            t = time.perf_counter()
            out = pipe(prompts, datastore=store, neighbours=args.k, **common)
            retrieved.append((time.perf_counter() - t) / len(prompts))
            assert out.neighbours is not None and len(out.neighbours[0]) == args.k

        for r in range(args.rounds):
            for run in ((run_plain, run_retrieval) if r % 2 == 0 else (run_retrieval, run_plain)):
                run()
            clear_text_memo(clap)
            t = time.perf_counter()
            text = clap.embed_text(prompts)
            embed.append((time.perf_counter() - t) / len(prompts))
            t = time.perf_counter()
            pipe.retrieve(text, store, args.k)
            lookup.append((time.perf_counter() - t) / len(prompts))
    load_after = list(os.getloadavg())
    a, b, c = statistics.median(plain), statistics.median(retrieved), statistics.median(lookup)
    e = statistics.median(embed)
    row = {"size": args.size, "store_size": args.store_size, "index": args.index, "k": args.k,
           "features": args.features, "context_tokens": 1 + args.k * pipe.retrieval.config.tokens_per_neighbour,
           "seconds": args.seconds, "steps": args.steps, "prompts": args.prompts, "rounds": args.rounds,
           "s_per_clip_plain": round(a, 4), "s_per_clip_retrieval": round(b, 4),
           "ratio_retrieval_over_plain": round(b / a, 4),
           # pipe.retrieve on ready text embeddings: FAISS search + context tokens, NOT the CLAP text embedding
           "retrieve_ms_per_prompt": round(c * 1e3, 3), "clap_text_ms_per_prompt": round(e * 1e3, 3),
           "order": "alternating: plain first in even rounds, retrieval first in odd rounds",
           "all_plain": [round(x, 4) for x in plain], "all_retrieval": [round(x, 4) for x in retrieved]}
    print(f"{'size':>7} {'store':>7} {'index':>5} {'k':>3} {'s/clip plain':>12} {'s/clip retr':>12} "
          f"{'ratio':>6} {'retrieve ms':>11} {'CLAP text ms':>12}")
    print(f"{args.size:>7} {args.store_size:>7} {args.index:>5} {args.k:>3} {a:>12.4f} {b:>12.4f} {b / a:>6.3f} "
          f"{c * 1e3:>11.3f} {e * 1e3:>12.3f}")
    print("retrieve ms: FAISS search + context tokens per prompt, excluding the CLAP text embedding (CLAP text ms)")
    if args.no_record:
        return row
    from bench.record import append_record, machine_info, tta_version

    record = {"bench": "retrieval_overhead", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": machine_info(),        # bench.record (keeps node, cpu_count, platform)
              "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                           "faiss": faiss.__version__, "tta": tta_version()},
              "settings": {"threads": args.threads, "guidance": 2.5, "sampler": "ddim", "weights": "random",
                           "comparison": "same pipeline, same prompts/seeds: datastore + k vs null context"},
              "loadavg_before": load_before, "loadavg_after": load_after,
              "note": "shared 2-core CPU (background training runs): timings are noisy; medians of rounds",
              "results": [row]}
    append_record(args.results, record)
    return row


if __name__ == "__main__":
    main()
