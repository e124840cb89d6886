"""What refusing NaN / inf weights costs a load (`tta.checkpoint.check_finite`).

Every safetensors file tta reads (its own component folders, diffusers and transformers folders) and every
foreign torch checkpoint (AudioLDM `.ckpt`, LAION-CLAP `.pt`, jik876 `g_*`) is checked for non-finite tensors
before it is used. This builds --params million float32 parameters in memory, in the shapes of a UNet (3x3
convolutions and linear layers of 128 to 1280 channels, with their biases), writes them once as a safetensors
file and as a torch checkpoint, and times, alternately in one process, reading each file into a model's
tensors (load, then copy into preallocated tensors as load_state_dict does) without and with the check, and
the check alone on tensors already in memory. A safetensors file is mapped, not read, by load_file: its pages
are read by whatever touches them first, so the fair comparison is the whole load, not the check against
load_file's own time.

Usage: .venv/bin/python bench/check_finite.py [--params 300] [--rounds 3] [--threads 1]
Prints one line per case and appends a JSON line to --results (bench/results.jsonl).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=float, default=300.0, help="million float32 parameters (default 300)")
    ap.add_argument("--rounds", type=int, default=3, help="timed loads per case (default 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results.jsonl")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.params <= 0:
        ap.error("--rounds and --params must be positive")
    return args


def unet_like_state(params: int) -> dict:
    """float32 tensors in a UNet's shapes, `params` elements at least."""
    import torch

    shapes = []
    for c in (128, 256, 384, 640, 1024, 1280):
        shapes += [(c, c, 3, 3)] * 10 + [(c, c)] * 10 + [(c,)] * 40
    gen = torch.Generator().manual_seed(0)
    state, n = {}, 0
    while n < params:
        shape = shapes[len(state) % len(shapes)]
        state[f"block.{len(state)}.weight"] = torch.randn(shape, generator=gen) * 0.02
        n += state[f"block.{len(state) - 1}.weight"].numel()
    return state


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch
    from safetensors.torch import load_file, save_file

    from bench.record import append_record, machine_info, time_alternately
    from tta.checkpoint import check_finite

    torch.set_num_threads(args.threads)
    state = unet_like_state(int(args.params * 1e6))
    count = sum(v.numel() for v in state.values())
    model = {k: torch.empty_like(v) for k, v in state.items()}   # the tensors a built model would hold

    def into_model(loaded: dict, check: bool) -> None:
        if check:
            check_finite(loaded, "bench")
        for k, v in loaded.items():
            model[k].copy_(v)

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=ROOT / "bench") as tmp:
        st, pt = Path(tmp) / "w.safetensors", Path(tmp) / "w.ckpt"
        save_file(state, str(st))
        torch.save({"state_dict": state}, str(pt))
        cases = {
            "safetensors": lambda: into_model(load_file(str(st)), False),
            "safetensors+check": lambda: into_model(load_file(str(st)), True),
            "torch.load": lambda: into_model(torch.load(str(pt), weights_only=True)["state_dict"], False),
            "torch.load+check": lambda: into_model(torch.load(str(pt), weights_only=True)["state_dict"], True),
            "check alone (in memory)": lambda: check_finite(state, "bench"),
        }
        times = time_alternately(cases, args.rounds)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    added = {"safetensors": median["safetensors+check"] - median["safetensors"],
             "torch.load": median["torch.load+check"] - median["torch.load"]}
    print(f"{count / 1e6:.0f} M float32 parameters in {len(state)} tensors, {args.threads} thread(s), "
          f"{args.rounds} rounds (median seconds)")
    for name, ts in times.items():
        print(f"  {name:24s} {median[name]:6.3f}   ({', '.join(f'{t:.3f}' for t in ts)})")
    for kind, extra in added.items():
        print(f"  the check adds {extra:+.3f} s to a {kind} load ({100 * extra / median[kind]:+.1f} %)")
    record = {"bench": "check_finite", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": machine_info(), "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
              "settings": {"params": count, "tensors": len(state), "rounds": args.rounds, "threads": args.threads},
              "seconds": {k: [round(t, 4) for t in v] for k, v in times.items()},
              "median_seconds": {k: round(v, 4) for k, v in median.items()},
              "added_seconds": {k: round(v, 4) for k, v in added.items()},
              "added_percent": {k: round(100 * v / median[k], 1) for k, v in added.items()},
              "note": "shared CPU: absolute times are noisy, compare the cases within this run"}
    append_record(args.results, record)
    return record


if __name__ == "__main__":
    main()
