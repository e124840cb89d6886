"""`tta index build|query|info`: the retrieval datastore on the command line.

    tta index build --manifest M --clap CLAP_DIR --out STORE [--index flat|ivf|ivfpq] [--nlist N] [--vae DIR] ...
    tta index query STORE --clap CLAP_DIR (--text "a dog barks" | --audio clip.wav) -k 5 [--json]
    tta index info STORE [--json]

Light module: only argparse at top level; FAISS, torch and the CLAP load inside `run`.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from tta import UsageError
from tta.checkpoint import output_path
from tta.device import DEVICES, pick_device


def add_parsers(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="index_command", metavar="ACTION")
    sub.required = True
    b = sub.add_parser("build", help="embed a manifest with a CLAP and write a datastore folder")
    b.add_argument("--manifest", required=True, type=Path, help="JSONL manifest of the clips to index")
    b.add_argument("--split", help="index only this manifest split (default: every row)")
    _clap_args(b)
    b.add_argument("--out", required=True, type=output_path,
                   help="datastore folder to write (must not exist yet; written atomically)")
    b.add_argument("--index", choices=("flat", "ivf", "ivfpq"), default="flat",
                   help="flat = exact inner product (default); ivf / ivfpq for large stores")
    b.add_argument("--nlist", type=int, default=0, help="IVF cells (0 = about 4*sqrt(N))")
    b.add_argument("--m", type=int, default=16, help="PQ sub-quantisers (ivfpq; must divide the dim)")
    b.add_argument("--nbits", type=int, default=8, help="bits per PQ code (ivfpq)")
    b.add_argument("--nprobe", type=int, default=16, help="IVF cells visited per query")
    b.add_argument("--max-seconds", type=float, default=10.0, help="embed the first S seconds of each clip (default 10; 0 = the whole clip)")
    b.add_argument("--batch-size", type=int, default=32, help="clips embedded per forward pass (default 32)")
    b.add_argument("--no-normalize", dest="normalize", action="store_false",
                   help="embed each clip at its file's own level (default: DC removed and scaled to peak 0.5, as "
                        "the training loader reads clips; audio queries are then normalised alike)")
    b.add_argument("--vae", type=Path, metavar="DIR",
                   help="also store each clip's pooled latents of this VAE (component, run or pipeline folder): "
                        "needed by retrieval models with the \"latent\" neighbour feature")
    b.add_argument("--latent-tokens", type=int, default=None,
                   help="time tokens per clip's latents (with --vae; default 8)")

    q = sub.add_parser("query", help="nearest entries of a text prompt or an audio clip")
    q.add_argument("store", type=Path, help="datastore folder")
    _clap_args(q)
    src = q.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", metavar="PROMPT", help="text query (repeatable)")
    src.add_argument("--audio", action="append", type=Path, metavar="WAV",
                     help="audio query (repeatable), cut as the store cut its clips (build's --max-seconds)")
    q.add_argument("-k", type=int, default=5, help="hits per query (default 5)")
    q.add_argument("--modality", choices=("audio", "text"), default="audio",
                   help="which index to search: the clips' audio (default) or their captions' text embeddings")
    q.add_argument("--nprobe", type=int, help="override the IVF cells visited per query")
    q.add_argument("--exclude-id", action="append", default=[],
                   help="never return the entry with this id, e.g. the query clip's own (repeatable; an id the "
                        "store does not hold is an error)")
    q.add_argument("--json", action="store_true", help="print the hits as JSON")

    i = sub.add_parser("info", help="what a datastore holds: CLAP, count, dim, index type, config")
    i.add_argument("store", type=Path, help="datastore folder")
    i.add_argument("--json", action="store_true", help="print as JSON")


def _clap_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clap", required=True, type=Path,
                   help="CLAP: tta folder (or run folder), transformers CLAP folder, or LAION .pt")
    p.add_argument("--tokenizer", type=Path, help="RoBERTa tokenizer folder (LAION .pt checkpoints)")
    p.add_argument("--device", default="cpu", choices=DEVICES, help="torch device (default cpu; auto: CUDA, then "
                   "MPS, then the CPU)")


def run(args: argparse.Namespace) -> int:
    from tta.retrieval.datastore import Datastore, DatastoreConfig, build_datastore

    if args.index_command == "info":
        info = Datastore.load(args.store).summary()
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            print(f"{info['folder']}: {info['count']} entries, dim {info['dim']}, {info['index']} index, "
                  f"CLAP {info['clap_identity']}")
            print(f"  manifest {info['manifest']}")
            print("  config " + ", ".join(f"{k}={v}" for k, v in info["config"].items()))
            if info.get("latent"):
                lat = info["latent"]
                print(f"  latents of VAE {lat['vae_identity']}: {lat['tokens']} tokens x {lat['dim']} per clip")
        return 0

    from tta.clap import load_clap

    device = pick_device(args.device)   # before anything loads
    if args.index_command == "build":
        check_build_args(args)
        if args.latent_tokens is not None and args.vae is None:
            raise UsageError("--latent-tokens sets the stored VAE latents' length: it needs --vae")
        config = DatastoreConfig(index=args.index, nlist=args.nlist, m=args.m, nbits=args.nbits,
                                 nprobe=args.nprobe, batch_size=args.batch_size, max_seconds=args.max_seconds,
                                 split=args.split, normalize=args.normalize, **({} if args.latent_tokens is None else
                                                      {"latent_tokens": args.latent_tokens}))
        vae = None if args.vae is None else load_vae_folder(args.vae, device)
        clap = load_clap(args.clap, tokenizer=args.tokenizer, device=device, batch_size=args.batch_size)
        out = build_datastore(args.manifest, clap, args.out, config, progress=not getattr(args, "quiet", False),
                              vae=vae)
        print(out)
        return 0

    if args.nprobe is not None and args.nprobe < 1:
        raise ValueError(f"--nprobe {args.nprobe}: must be >= 1 (IVF cells visited per query)")
    if args.k <= 0:
        raise ValueError(f"-k {args.k}: must be a positive number of hits")
    store = Datastore.load(args.store)  # before the CLAP: a missing store fails fast
    unknown = [i for i in args.exclude_id if i not in store.row_of]
    if unknown:   # a mistyped id excluded nothing: the query's own clip came back first, unannounced
        raise ValueError(f"--exclude-id {unknown[0]!r}: {store.folder} holds no entry with this id (its ids are "
                         f"the manifest's, e.g. {store.ids[0]!r})")
    if args.nprobe is not None:
        for index in store.indexes.values():
            if hasattr(index, "nprobe"):
                index.nprobe = args.nprobe
    from tta.config import shortened

    clap = load_clap(args.clap, tokenizer=args.tokenizer, device=device)
    queries = args.text or [str(p) for p in args.audio]
    excl = [args.exclude_id] * len(queries) if args.exclude_id else None
    if args.text:
        hits = store.query_text(clap, args.text, args.k, args.modality, exclude_ids=excl,
                                names=[f"--text {shortened(repr(t))}" for t in args.text])
    else:   # query_audio brings each clip to the level the store's clips were embedded at
        from tta.audio import load_audio

        # the first max_seconds, as the store embedded its clips: a longer clip held in the store came back
        # behind other entries, its whole length compared with its stored opening
        wavs = [load_audio(p, clap.sample_rate, max_seconds=store.max_seconds or None)[0] for p in args.audio]
        for p, w in zip(args.audio, wavs):
            if w.shape[0] < clap.min_samples:
                raise ValueError(f"--audio {p}: {w.shape[0]} samples at {clap.sample_rate} Hz, shorter than the "
                                 f"CLAP's analysis window ({clap.min_samples})")
        hits = store.query_audio(clap, wavs, clap.sample_rate, args.k, args.modality, exclude_ids=excl,
                                 names=[f"--audio {p}" for p in args.audio])
    if args.json:
        print(json.dumps({"store": str(store.folder), "clap": store.identity, "modality": args.modality,
                          "results": [{"query": qy, "hits": [{"rank": r + 1, "id": i, "score": float(s), "caption": c}
                                                             for r, (i, s, c) in enumerate(zip(ids, sc, caps))]}
                                      for qy, ids, sc, caps in zip(queries, hits.ids, hits.scores, hits.captions)]},
                         indent=2))
        return 0
    for qy, ids, sc, caps in zip(queries, hits.ids, hits.scores, hits.captions):
        print(f"query: {qy}  ({args.modality} index, CLAP {store.identity})")
        for r, (i, s, c) in enumerate(zip(ids, sc, caps)):
            print(f"  {r + 1:>3}  {s:+.4f}  {i}  {c}")
    return 0


def check_build_args(args: argparse.Namespace) -> None:
    """Refuse a non-finite --max-seconds and an existing --out (even a datastore) before any work."""
    if not math.isfinite(args.max_seconds) or args.max_seconds < 0:
        raise ValueError(f"--max-seconds {args.max_seconds}: expected a finite number of seconds >= 0 "
                         "(0 = whole clip)")
    if args.out.exists() or args.out.is_symlink():
        raise ValueError(f"{args.out}: already exists; choose a new --out")
    from tta.checkpoint import check_output_path

    check_output_path(args.out, "--out", folder=True)   # a parent that is a file: named, not "File exists"


def load_vae_folder(path: Path, device: str = "cpu"):
    """A MelVAE from a component folder, a training run (its final/) or a pipeline folder (its vae/)."""
    from tta.checkpoint import CONFIG_NAME, find_component
    from vae.model import load_vae

    folder = find_component(path, "vae")
    if folder is None:
        raise ValueError(f"--vae {path}: not a VAE component, run or pipeline folder (no {CONFIG_NAME})")
    return load_vae(folder, device=device).requires_grad_(False).eval()
