"""Generation time of several pipeline folders, timed alternately in one process.

On a shared CPU the speed of the machine drifts by tens of percent within an hour, so two models timed in
separate runs (e.g. two `bench/default_quality.py` runs) are not comparable. This loads every --model once,
makes one warm-up generation with each (the loads are timed after one discarded load of the first model, so
load_s compares the models, not the first call's one-time setup), then runs --rounds rounds in which each model in turn generates one
clip of --seconds with its own pipeline defaults (sampler, steps, guidance, candidates) from the same prompt
and seed; drift then hits every model alike. Reported per model: load time, every round's time, the median
and best RTF, and the ratio of its median time to the first model's (the baseline). Used to check that
8-bit storage (`tta export pipeline --dtype int8`) costs no speed, and what a deeper UNet costs. With --precision (repeatable), every model is timed under every precision
given (e.g. float32 against bfloat16 autocast), still alternately; without it, under its own default.

Usage: .venv/bin/python bench/pipeline_speed.py --model A --model B [--precision float32 --precision bfloat16]
       [--rounds 4] [--seconds 10] [--threads 2]
Prints one line per model and appends a JSON line to --results (bench/results.jsonl).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", required=True, type=Path,
                    help="pipeline folder (repeatable; the first is the baseline of the ratios)")
    ap.add_argument("--precision", action="append", choices=["float32", "bfloat16", "auto"],
                    help="the UNet's arithmetic (repeatable: each model is timed under each; default: the model's)")
    ap.add_argument("--rounds", type=int, default=4, help="timed generations per model (default 4)")
    ap.add_argument("--seconds", type=float, default=10.0, help="audio per generation (default 10)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--prompt", default="rain on a tin roof")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results.jsonl")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds {args.rounds}: expected at least 1")
    for m in args.model:
        if not (m / "pipeline.json").is_file():
            ap.error(f"--model {m}: no pipeline.json (expected a tta pipeline folder)")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    from tta.ldm.sampling import native_bfloat16, resolve_precision
    from tta.pipeline import TTAPipeline

    # machine() and versions() of bench/default_quality.py, loaded by path: putting bench/ on sys.path would
    # shadow the top-level `vae` package with bench/vae.py
    spec = importlib.util.spec_from_file_location("bench_default_quality", ROOT / "bench" / "default_quality.py")
    dq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dq)

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    # a discarded first load: the first from_pretrained pays one-time setup (imports of the model code, first
    # allocations), which would otherwise land in the first model's load_s; the timed loads then compare models
    t = time.perf_counter()
    TTAPipeline.from_pretrained(args.model[0])
    discarded_load = time.perf_counter() - t
    pipes, loads = [], []
    for m in args.model:
        t = time.perf_counter()
        pipes.append(TTAPipeline.from_pretrained(m))
        loads.append(time.perf_counter() - t)
    # one entry per (model, precision), in the order given
    entries = [(m, p, load, resolve_precision(prec or p.defaults.precision))
               for m, p, load in zip(args.model, pipes, loads) for prec in (args.precision or [None])]
    for _, p, _, prec in entries:                        # warm-up: first-call allocations, caches
        p([args.prompt], seconds=args.seconds, seed=0, precision=prec)
    times: list[list[float]] = [[] for _ in entries]
    for r in range(args.rounds):
        for i in [(r + j) % len(entries) for j in range(len(entries))]:   # the order rotates round by round
            _, p, _, prec = entries[i]
            t = time.perf_counter()
            p([args.prompt], seconds=args.seconds, seed=r + 1, precision=prec)
            times[i].append(time.perf_counter() - t)
    base = statistics.median(times[0])
    rows = []
    for (m, p, load, prec), ts in zip(entries, times):
        med = statistics.median(ts)
        size = sum(f.stat().st_size for f in m.rglob("*") if f.is_file())
        rows.append({"model": str(m), "precision": prec, "load_s": round(load, 2),
                     "generate_s": [round(x, 3) for x in ts],
                     "rtf_median": round(med / args.seconds, 4), "rtf_best": round(min(ts) / args.seconds, 4),
                     "ratio_to_first": round(med / base, 3), "size_mb": round(size / 1e6, 2),
                     "defaults": json.loads((m / "pipeline.json").read_text()).get("defaults", {})})
        print(f"{m} ({prec}): load {load:.1f} s, {args.seconds:g} s of audio in "
              + ", ".join(f"{x:.2f}" for x in ts) + f" s; RTF median {med / args.seconds:.3f}, "
              f"best {min(ts) / args.seconds:.3f}; {med / base:.2f}x the first model; {size / 1e6:.1f} MB")
    summary = {"bench": "pipeline_speed", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "machine": dq.machine(), "versions": dq.versions(),
               "note": "models timed alternately in one process on a shared CPU: compare the ratios",
               "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
               "settings": {"rounds": args.rounds, "seconds": args.seconds, "threads": args.threads,
                            "prompt": args.prompt, "precisions": args.precision,
                            "native_bfloat16": native_bfloat16("cpu"),
                            "load": "load_s is timed after one discarded load of the first model (one-time setup)",
                            "discarded_first_load_s": round(discarded_load, 2)}, "models": rows}
    with open(args.results, "a") as f:
        f.write(json.dumps(summary) + "\n")
    return summary


if __name__ == "__main__":
    main()
