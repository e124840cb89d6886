"""Mel-VAE benchmark: CPU speed of the configs, and reconstruction quality of a trained run.

speed (default): encode (posterior mode) + decode of 10 s of audio (1000 mel frames) on CPU with 2 torch
threads, and one training step (forward + backward of the reconstruction/KL loss, no GAN) on a batch of
2 x 2.56 s, for configs/vae/{tiny,default,audioldm-s}.json plus `default-2x` (default at double width,
the next size up). Random weights: speed does not depend on them. Ratios are against audioldm-s, in one run.

    python bench/vae.py [--repeats 3] [--threads 2]

quality: reconstruct the deterministic crops of a manifest split with RUN/final (and, for comparison in the
same run, an AudioLDM .ckpt given with --peer-ckpt) and report mel L1, log-spectral distance, mel SNR.

    python bench/vae.py quality --run RUN --manifest data/x/manifest.jsonl [--split test] [--items 200]

Both print a table and append one JSON line to --results (bench/results.jsonl; machine, versions, settings,
load) unless --no-record.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

from tta.audio import log_mel
from tta.config import load_config
from vae.losses import VAELoss
from vae.model import MelVAE
from vae.train import RunConfig

RESULTS = ROOT / "bench" / "results.jsonl"
NOTE = (
    "shared 2-core CPU with other jobs running: absolute times are noisy, compare the ratios within this run"
)


def _configs() -> dict:
    out = {
        name: load_config(RunConfig, ROOT / f"configs/vae/{name}.json")
        for name in ("tiny", "default", "audioldm-s")
    }
    d = out["default"].model
    out["default-2x"] = dataclasses.replace(
        out["default"],
        model=dataclasses.replace(d, block_out_channels=tuple(2 * c for c in d.block_out_channels)),
    )
    return out


def bench_speed(args) -> dict:
    """All configs built first; their encode+decode calls are then timed alternately (--repeats rounds, rotating
    order, after one warm-up each; bench.record.time_alternately), and so are their training steps
    (max(1, repeats - 1) rounds); the median round of each is reported."""
    from bench.record import time_alternately

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    wav10 = 0.1 * torch.randn(1, 160_000, generator=g)
    wav_train = 0.1 * torch.randn(2, 40_960, generator=g)
    codecs, steps, meta = {}, {}, {}
    for name, cfg in _configs().items():
        model = MelVAE(cfg.model)
        mel = log_mel(wav10, cfg.model.mel)
        params = sum(p.numel() for p in model.parameters()) / 1e6

        def codec(model=model, mel=mel):
            with torch.no_grad():
                model.decode(model.encode(mel).mode(), mel.shape[-1])

        criterion = VAELoss(cfg.loss)
        mel_t = log_mel(wav_train, cfg.model.mel)
        image = model.mel_to_image(mel_t, pad=False)

        def step(model=model, mel_t=mel_t, image=image, criterion=criterion):
            rec, posterior = model(mel_t)
            loss, _ = criterion.generator_loss(image, model.mel_to_image(rec, pad=False), posterior, step=0)
            loss.backward()
            model.zero_grad(set_to_none=True)

        codecs[name], steps[name] = codec, step
        meta[name] = {"config": name, "params_m": round(params, 3),
                      "block_out_channels": list(cfg.model.block_out_channels),
                      "layers_per_block": cfg.model.layers_per_block,
                      "latent": list(model.latent_shape(mel.shape[-1]))}
    codec_times = time_alternately(codecs, args.repeats)
    print("  encode+decode: done", file=sys.stderr, flush=True)
    step_times = time_alternately(steps, max(1, args.repeats - 1))
    print("  train step: done", file=sys.stderr, flush=True)
    rows = []
    for name in meta:
        codec_s, step_s = statistics.median(codec_times[name]), statistics.median(step_times[name])
        rows.append({**meta[name], "encode_decode_10s_s": round(codec_s, 4), "rtf": round(codec_s / 10.0, 4),
                     "train_step_2x2.56s_s": round(step_s, 4),
                     "encode_decode_rounds_s": [round(x, 4) for x in codec_times[name]],
                     "train_step_rounds_s": [round(x, 4) for x in step_times[name]]})
    ref = next(r for r in rows if r["config"] == "audioldm-s")
    for r in rows:
        r["speedup_vs_audioldm_s"] = round(ref["encode_decode_10s_s"] / r["encode_decode_10s_s"], 2)
        r["train_speedup_vs_audioldm_s"] = round(ref["train_step_2x2.56s_s"] / r["train_step_2x2.56s_s"], 2)
    print(
        f"{'config':<12}{'params M':>10}{'latent':>16}{'enc+dec 10s':>13}{'RTF':>8}{'x vs S':>8}"
        f"{'train step':>12}{'x vs S':>8}"
    )
    for r in rows:
        print(
            f"{r['config']:<12}{r['params_m']:>10.3f}{tuple(r['latent'])!s:>16}"
            f"{r['encode_decode_10s_s']:>12.3f}s"
            f"{r['rtf']:>8.3f}{r['speedup_vs_audioldm_s']:>8.1f}{r['train_step_2x2.56s_s']:>11.3f}s"
            f"{r['train_speedup_vs_audioldm_s']:>8.1f}"
        )
    return {
        "bench": "vae.speed",
        "settings": {
            "audio_seconds": 10.0,
            "frames": int(mel.shape[-1]),
            "train_batch": [2, 2.56],
            "repeats": args.repeats,
            "threads": args.threads,
            "stat": "median of rounds; configs warmed up, then timed alternately (rotating order)",
            "weights": "random",
        },
        "results": rows,
    }


def bench_quality(args) -> dict:
    from tta.checkpoint import load_component
    from tta.data.dataset import AudioDataset
    from vae.metrics import ReconstructionMetrics

    torch.set_num_threads(args.threads)
    models = {"run": load_component(Path(args.run) / "final", MelVAE)}
    if args.peer_ckpt:
        from vae.interop import load_audioldm_ckpt

        models["audioldm"] = load_audioldm_ckpt(args.peer_ckpt)
    mel_cfg = models["run"].config.mel
    ds = AudioDataset(args.manifest, args.split, mel_cfg.sample_rate, args.segment_seconds, random_crop=False)
    n = min(args.items, len(ds))
    metrics = {name: ReconstructionMetrics() for name in models}
    block = max(m.downsample_factor for m in models.values())   # frames per latent step: whole blocks only
    t0 = time.perf_counter()
    used, too_short = 0, 0
    for i in range(n):   # each clip alone, cut to its own length: the loader's zero padding is not audio
        item = ds[i]
        wav = item["wav"][:min(int(item["seconds"] * mel_cfg.sample_rate), item["wav"].shape[0])]
        if wav.shape[0] <= mel_cfg.pad:
            too_short += 1
            continue
        mel = log_mel(wav[None], mel_cfg)
        mel = mel[..., :mel.shape[-1] // block * block]
        if mel.shape[-1] == 0:
            too_short += 1
            continue
        used += 1
        with torch.no_grad():
            for name, model in models.items():
                metrics[name].update(mel, model(mel, sample=False)[0])
    values = {name: m.compute() for name, m in metrics.items()}
    print(
        f"{'model':<10}{'mel L1':>10}{'LSD dB':>10}{'SNR dB':>10}   ({used} clips of up to {args.segment_seconds} s, "
        f"padding excluded, {args.split} split)"
    )
    for name, v in values.items():
        print(f"{name:<10}{v['mel_l1']:>10.4f}{v['lsd_db']:>10.3f}{v['snr_db']:>10.3f}")
    return {
        "bench": "vae.quality",
        "settings": {
            "run": os.path.relpath(Path(args.run).resolve(), ROOT),          # repo-relative: no machine paths
            "manifest": os.path.relpath(Path(args.manifest).resolve(), ROOT),
            "split": args.split,
            "items": used,
            "items_too_short": too_short,
            "segment_seconds": args.segment_seconds,
            "scored": "each clip alone, cut to its own length in whole VAE blocks (the loader's zero padding "
                      "excluded; records before 2026-12-07 scored the padded 10.24 s segments)",
            "peer_ckpt": args.peer_ckpt or None,
        },
        "seconds": round(time.perf_counter() - t0, 2),
        "results": values,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", nargs="?", default="speed", choices=["speed", "quality"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--run", type=Path, help="training run folder (quality)")
    p.add_argument("--manifest", type=Path, help="manifest with the held-out clips (quality)")
    p.add_argument("--split", default="test")
    p.add_argument("--items", type=int, default=200)
    p.add_argument("--segment-seconds", type=float, default=10.24)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--peer-ckpt", default="", help="an AudioLDM .ckpt to score in the same run (optional)")
    p.add_argument("--results", type=Path, default=RESULTS, help="results file to append to (bench/results.jsonl)")
    p.add_argument("--no-record", action="store_true", help="do not append to --results")
    args = p.parse_args()
    if args.mode == "quality" and not (args.run and args.manifest):
        p.error("quality needs --run and --manifest")
    record = bench_speed(args) if args.mode == "speed" else bench_quality(args)
    import diffusers

    from bench.record import append_record, machine_info

    machine = machine_info()
    record.update(
        {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            # bench.record.machine_info(); its "processor" is the CPU model (this script used to store
            # platform.machine(), the architecture, there: that is now machine.arch)
            "machine": machine,
            "versions": {
                "python": machine["python"],
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "tta": machine["tta"],
            },
            "loadavg": list(os.getloadavg()),
            "note": NOTE,
        }
    )
    if not args.no_record:
        append_record(args.results, record)


if __name__ == "__main__":
    main()
