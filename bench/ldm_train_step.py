"""Time of one LDM training step of a pipeline folder's UNet under each precision, timed alternately.

What `train.mixed_precision` "bf16" buys on a CPU: the UNet of --model (optionally with another number of
transformer blocks per attention level, --transformer-layers, as `make train-ldm-deep` grows it) takes optimizer
steps on a batch of --batch random latents of --seconds (the shape the pipeline generates), with random
timesteps and CLAP-sized conditions: forward under torch.autocast (what accelerate does for "bf16" on a CPU)
or in float32, an ε-prediction MSE loss, backward, AdamW. Weights and data are random, since the speed of a
step does not depend on them; the VAE encoding a real run does on the fly is not included. The precisions
take turns within every round, so the drift of a shared CPU hits them alike: compare the ratios.

Usage: .venv/bin/python bench/ldm_train_step.py --model DIR [--transformer-layers N]
       [--precision float32 --precision bfloat16] [--batch 8] [--rounds 5] [--steps-per-round 3] [--threads 2]
Prints one line per precision and appends a JSON line to --results (bench/results.jsonl).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="pipeline folder whose UNet config is timed")
    ap.add_argument("--transformer-layers", type=int, help="override model.transformer_layers (e.g. 3)")
    ap.add_argument("--precision", action="append", choices=["float32", "bfloat16"],
                    help="repeatable; the first is the baseline of the ratios (default: float32, bfloat16)")
    ap.add_argument("--batch", type=int, default=8, help="clips per step (default 8, the LDM recipes' batch)")
    ap.add_argument("--seconds", type=float, default=10.24, help="clip length (default 10.24)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps-per-round", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results.jsonl")
    args = ap.parse_args(argv)
    if not (args.model / "pipeline.json").is_file():
        ap.error(f"--model {args.model}: no pipeline.json (expected a tta pipeline folder)")
    for name in ("batch", "rounds", "steps_per_round", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} {getattr(args, name)}: expected at least 1")
    if args.transformer_layers is not None and args.transformer_layers < 1:
        ap.error(f"--transformer-layers {args.transformer_layers}: expected at least 1")
    args.precision = args.precision or ["float32", "bfloat16"]
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import diffusers
    import torch

    from tta import __version__
    from tta.ldm.model import LDMUNet
    from tta.ldm.sampling import native_bfloat16
    from tta.pipeline import TTAPipeline

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    pipe = TTAPipeline.from_pretrained(args.model)
    config = pipe.unet.config
    if args.transformer_layers is not None:
        config = dataclasses.replace(config, transformer_layers=args.transformer_layers)
    shape = (args.batch, *pipe.latent_shape(round(args.seconds * pipe.sample_rate)))
    del pipe
    unet = LDMUNet(config).train()
    params = sum(p.numel() for p in unet.parameters())
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-5)

    def step(precision: str) -> float:
        x = torch.randn(shape)
        noise = torch.randn(shape)
        t = torch.randint(0, 1000, (shape[0],))
        cond = torch.nn.functional.normalize(torch.randn(shape[0], config.class_embed_dim), dim=-1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            pred = unet(x + noise, t, cond)
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    load_before = os.getloadavg()
    for p in args.precision:                             # warm-up: allocator, oneDNN kernels, AdamW state
        step(p)
    times: dict[str, list[float]] = {p: [] for p in args.precision}
    for r in range(args.rounds):
        for p in args.precision[r % len(args.precision):] + args.precision[:r % len(args.precision)]:   # rotating
            t0 = time.perf_counter()
            for _ in range(args.steps_per_round):
                if not torch.isfinite(torch.tensor(step(p))):
                    raise SystemExit(f"the {p} step gave a non-finite loss")
            times[p].append((time.perf_counter() - t0) / args.steps_per_round)
    base = statistics.median(times[args.precision[0]])
    rows = []
    for p, ts in times.items():
        med = statistics.median(ts)
        rows.append({"precision": p, "step_s": [round(x, 4) for x in ts], "step_s_median": round(med, 4),
                     "ratio_to_first": round(med / base, 3)})
        print(f"{p}: {med:.3f} s per step (rounds: " + ", ".join(f"{x:.3f}" for x in ts)
              + f"); {med / base:.2f}x {args.precision[0]}")
    from bench.record import machine_info

    summary = {"bench": "ldm_train_step", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "machine": machine_info(),    # bench.record (keeps node, platform, cpu_count)
               "versions": {"tta": __version__, "python": platform.python_version(), "torch": torch.__version__,
                            "diffusers": diffusers.__version__},
               "note": "precisions timed alternately in one process on a shared CPU: compare the ratios; random "
                       "weights and data, no VAE encoding",
               "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
               "settings": {"model": str(args.model), "transformer_layers": config.transformer_layers,
                            "parameters": params, "latents": list(shape), "rounds": args.rounds,
                            "steps_per_round": args.steps_per_round, "threads": args.threads,
                            "native_bfloat16": native_bfloat16("cpu")},
               "precisions": rows}
    with open(args.results, "a") as f:
        f.write(json.dumps(summary) + "\n")
    return summary


if __name__ == "__main__":
    main()
