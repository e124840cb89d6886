"""Vocoder benchmark: CPU real-time factor of the HiFi-GAN tiny / default / audioldm-16k configs, each with
weight norm (training form) and with it removed (inference form), and of the Vocos tiny / default configs,
against Griffin-Lim in the same run;
optionally the quality of a trained run against Griffin-Lim on held-out real audio, and where Griffin-Lim's
FAD comes from (--fad-split).

RTF = seconds of compute / seconds of audio (lower is faster; < 1 is faster than real time). Weights are
random: speed does not depend on their values. Speed mode warms every peer up, then times them alternately
round by round (--repeats rounds, rotating order) and reports each one's median round.

    .venv/bin/python bench/vocoder.py [--seconds 4] [--repeats 3] [--threads 2]
    .venv/bin/python bench/vocoder.py --manifest M.jsonl --run RUN [--split test] [--items 32]
    .venv/bin/python bench/vocoder.py --fad-split --manifest M.jsonl [--run RUN] [--vae VAE] [--split valid] [--items 60]

--fad-split: FAD (aisfx unless --embedder) against held-out real clips of each clip rebuilt four ways: from
its log-mel by Griffin-Lim (what a pipeline with the Griffin-Lim vocoder does), from its true STFT magnitude
by Griffin-Lim (the cost of finding the phase alone), from the mel's magnitude with its true phase (the cost
of the 64-band mel's lost detail alone), and from its true magnitude and phase (a check: near 0); with --run,
also from its log-mel by that run's vocoder (a `tta train vocoder` HiFi-GAN or a `tta train postnet`
post-net Griffin-Lim; for a post-net also its magnitude with the true phase). With --vae (a MelVAE component,
run or pipeline folder), also from the VAE's reconstruction of its log-mel (posterior mode) by Griffin-Lim and
by the run's vocoder: the route every generation of a latent diffusion pipeline takes to its wav.

Prints a table and appends a JSON line to bench/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tta.audio import log_mel
from tta.config import load_config
from vocoder.griffinlim import GriffinLim, GriffinLimConfig
from vocoder.losses import LossConfig, mel_l1, multi_resolution_stft_distance
from vocoder.model import HiFiGAN
from vocoder.train import RunConfig
from vocoder.vocos import Vocos
from vocoder.vocos_train import RunConfig as VocosRunConfig

CONFIGS = ("tiny", "default", "audioldm-16k")
VOCOS_CONFIGS = ("tiny", "default")


def bench_speed(seconds: float, repeats: int, gl_iters: int) -> list[dict]:
    """Every peer built first, warmed up once, then timed alternately: `repeats` rounds, each timing every peer
    once in a rotating order (bench.record.time_alternately); the median round per peer is reported, so drift
    of the shared CPU hits all peers alike."""
    from bench.record import time_alternately

    peers, meta = {}, {}
    mel_cfg = None
    for name in CONFIGS:
        cfg = load_config(RunConfig, ROOT / "configs" / "vocoder" / f"{name}.json").model
        mel_cfg = cfg.mel
        frames = int(seconds * mel_cfg.frames_per_second)
        mel = torch.randn(1, mel_cfg.n_mels, frames) - 4.0
        torch.manual_seed(0)
        model = HiFiGAN(cfg).eval()
        params = sum(p.numel() for p in model.parameters())
        for weight_norm in (True, False):
            if not weight_norm:
                model = model.inference_copy()
            key = f"{name}/wn={weight_norm}"
            peers[key] = lambda m=model, x=mel: m(x)
            meta[key] = {"vocoder": name, "weight_norm": weight_norm, "params_m": round(params / 1e6, 3)}
    mel = torch.randn(1, mel_cfg.n_mels, int(seconds * mel_cfg.frames_per_second)) - 4.0
    for name in VOCOS_CONFIGS:
        cfg = load_config(VocosRunConfig, ROOT / "configs" / "vocos" / f"{name}.json").model
        torch.manual_seed(0)
        model = Vocos(cfg).eval()
        key = f"vocos-{name}"
        peers[key] = lambda m=model: m(mel)
        meta[key] = {"vocoder": key, "weight_norm": None,
                     "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3)}
    gl = GriffinLim(GriffinLimConfig(mel_cfg, n_iter=gl_iters))
    peers["griffin-lim"] = lambda: gl(mel)
    meta["griffin-lim"] = {"vocoder": f"griffin-lim-{gl_iters}", "weight_norm": None, "params_m": 0.0}
    with torch.inference_mode():
        times = time_alternately(peers, repeats)
    rows = []
    for key, ts in times.items():
        t = statistics.median(ts)
        rows.append({**meta[key], "seconds": round(t, 4), "rtf": round(t / seconds, 4),
                     "rounds_s": [round(x, 4) for x in ts]})
    ref = next(r["seconds"] for r in rows if r["vocoder"] == "audioldm-16k" and r["weight_norm"] is False)
    for r in rows:
        r["speedup_vs_audioldm16k"] = round(ref / r["seconds"], 2)
    return rows


def bench_quality(manifest: str, run: Path, split: str, items: int, seconds: float, gl_iters: int) -> list[dict]:
    """Mean mel L1 / MR-STFT distance of the run's final/ vocoder and of Griffin-Lim on held-out clips."""
    from tta.checkpoint import load_component
    from tta.data.dataset import AudioDataset
    from tta.ldm.folder import vocoder_class

    model = load_component(run / "final", vocoder_class(run / "final"))
    mel_cfg = model.config.mel
    data = AudioDataset(manifest, split, mel_cfg.sample_rate, seconds, normalize=True, random_crop=False,
                        caption_choice="first")
    resolutions = LossConfig().stft_resolutions
    # the record names the run repo-relative, not by this machine's absolute path
    peers = {os.path.relpath((run / "final").resolve(), ROOT): model,
             f"griffin-lim-{gl_iters}": GriffinLim(GriffinLimConfig(mel_cfg, gl_iters))}
    sums = {name: {"mel_l1": 0.0, "mrstft": 0.0, "seconds": 0.0} for name in peers}
    count = 0
    for i in range(min(items, len(data))):
        item = data[i]
        n = min(int(item["seconds"] * mel_cfg.sample_rate), item["wav"].shape[0])
        n = n // mel_cfg.hop_length * mel_cfg.hop_length
        if n < 2 * mel_cfg.n_fft:
            continue
        wav = item["wav"][None, :n]
        mel = log_mel(wav, mel_cfg)
        count += 1
        for name, peer in peers.items():
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = peer(mel)
            sums[name]["seconds"] += time.perf_counter() - t0
            sums[name]["mel_l1"] += float(mel_l1(out, wav, mel_cfg))
            sums[name]["mrstft"] += float(multi_resolution_stft_distance(out, wav, resolutions))
    if not count:
        raise SystemExit(f"{manifest}: no usable clips in split {split!r}")
    rows = [{"vocoder": name, "clips": count, "mel_l1": round(s["mel_l1"] / count, 4),
             "mrstft": round(s["mrstft"] / count, 4), "seconds_total": round(s["seconds"], 2)}
            for name, s in sums.items()]
    gl = rows[-1]
    for r in rows:
        r["mel_l1_vs_griffin_lim"] = round(r["mel_l1"] / gl["mel_l1"], 3)
    return rows


def bench_fad_split(manifest: str, split: str, items: int, seconds: float, gl_iters: int, nnls_iter: int,
                    embedder_name: str, run: Path | None, progress: bool, vae_path: Path | None = None) -> list[dict]:
    """FAD against the real clips of each clip rebuilt by Griffin-Lim from its mel, from its true magnitude, from
    the mel's magnitude with the true phase, and from the true magnitude and phase (and by `run`'s vocoder;
    for a post-net Griffin-Lim also its magnitude with the true phase; with `vae_path`, Griffin-Lim and the
    vocoder also from the VAE's reconstruction of the mel)."""
    import numpy as np
    from tqdm.auto import tqdm

    from eval.embedders import get_embedder
    from eval.fad import FrechetStats
    from tta.checkpoint import load_component
    from tta.data.dataset import AudioDataset
    from tta.ldm.folder import vocoder_class
    from vocoder.postnet import PostnetGriffinLim
    from vocoder.train import load_frozen_vae, through_vae

    trained = load_component(run / "final", vocoder_class(run / "final")).eval() if run else None
    mel_cfg = trained.config.mel if trained else load_config(RunConfig, ROOT / "configs" / "vocoder" /
                                                              "default.json").model.mel
    gl = GriffinLim(GriffinLimConfig(mel_cfg, n_iter=gl_iters, nnls_iter=nnls_iter))
    vae = load_frozen_vae(str(vae_path), mel_cfg) if vae_path else None
    data = AudioDataset(manifest, split, mel_cfg.sample_rate, seconds, normalize=True, random_crop=False,
                        caption_choice="first")
    routes = {f"mel -> griffin-lim-{gl_iters} (nnls {nnls_iter})": [],
              f"true magnitude -> griffin-lim-{gl_iters}": [],
              f"mel magnitude (nnls {nnls_iter}) + true phase": [],
              "true magnitude + true phase (check)": []}
    if trained is not None:
        name = os.path.relpath((run / "final").resolve(), ROOT)
        routes[f"mel -> {name}"] = []
        if isinstance(trained, PostnetGriffinLim):
            routes[f"{name} magnitude + true phase"] = []
    if vae is not None:
        routes[f"mel -> vae -> griffin-lim-{gl_iters}"] = []
        if trained is not None:
            routes[f"mel -> vae -> {name}"] = []
    real = []
    for i in tqdm(range(min(items, len(data))), desc="rebuild", unit="clip", disable=not progress):
        item = data[i]
        n = min(int(item["seconds"] * mel_cfg.sample_rate), item["wav"].shape[0])
        n = n // mel_cfg.hop_length * mel_cfg.hop_length
        if n < 2 * mel_cfg.n_fft:
            continue
        wav = item["wav"][None, :n].float()
        with torch.inference_mode():
            mel = log_mel(wav, mel_cfg)
            spec = gl._stft(wav)[..., : mel.shape[-1]]
            phase = spec / spec.abs().clamp_min(1e-16)
            outs = [gl(mel), gl.from_magnitude(spec.abs()), gl._istft(gl.magnitude(mel) * phase), gl._istft(spec)]
            if trained is not None:
                outs.append(trained(mel))
                if isinstance(trained, PostnetGriffinLim):
                    outs.append(gl._istft(trained.magnitude(mel) * phase))
            if vae is not None:
                rebuilt = through_vae(vae, mel)
                outs.append(gl(rebuilt))
                if trained is not None:
                    outs.append(trained(rebuilt))
        for out, wavs in zip(outs, routes.values()):
            y = out[0, :n].float().numpy()
            wavs.append(np.pad(y, (0, n - len(y))))
        real.append(wav[0].numpy())
    if len(real) < 2:
        raise SystemExit(f"{manifest}: fewer than 2 usable clips in split {split!r} (FAD needs a covariance)")
    embedder = get_embedder(embedder_name)

    def stats(wavs):
        frames = [embedder.embed(w, mel_cfg.sample_rate) for w in wavs]
        return FrechetStats.from_embeddings(np.concatenate(frames), embedder=embedder.identity,
                                            sample_rate=embedder.sample_rate, num_files=len(wavs))

    reference = stats(real)
    return [{"route": name, "clips": len(real), "embedder": embedder.identity,
             "fad": round(stats(wavs).distance(reference), 3)} for name, wavs in routes.items()]


def print_table(rows: list[dict]) -> None:
    keys = list(rows[0])
    widths = [max(len(k), *(len(str(r[k])) for r in rows)) for k in keys]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
    for r in rows:
        print("  ".join(str(r[k]).ljust(w) for k, w in zip(keys, widths)))


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="audio length per call (speed) / per clip (quality)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gl-iters", type=int, default=32)
    ap.add_argument("--manifest", help="manifest with held-out clips (quality mode, with --run)")
    ap.add_argument("--run", type=Path, help="vocoder or postnet training run folder whose final/ is evaluated")
    ap.add_argument("--split", default="test")
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--fad-split", action="store_true",
                    help="where Griffin-Lim's FAD comes from: mel, phase or both (needs --manifest; --run optional)")
    ap.add_argument("--vae", type=Path, help="MelVAE component, run or pipeline folder: also score the routes "
                    "through its reconstruction of the mel (--fad-split)")
    ap.add_argument("--nnls-iter", type=int, default=50, help="Griffin-Lim's magnitude updates (--fad-split)")
    ap.add_argument("--embedder", default="aisfx", help="FAD embedder (--fad-split)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results.jsonl")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.fad_split:
        if not args.manifest:
            ap.error("--fad-split needs --manifest")
    elif bool(args.manifest) != bool(args.run):
        ap.error("--manifest and --run go together")
    if args.fad_split:
        rows = bench_fad_split(args.manifest, args.split, args.items, args.seconds, args.gl_iters, args.nnls_iter,
                               args.embedder, args.run, not args.quiet, args.vae)
        settings = {"mode": "fad-split", "manifest": os.path.relpath(Path(args.manifest).resolve(), ROOT),
                    "split": args.split, "items": args.items, "clip_seconds": args.seconds,
                    "gl_iters": args.gl_iters, "nnls_iter": args.nnls_iter, "embedder": args.embedder,
                    "run": os.path.relpath(args.run.resolve(), ROOT) if args.run else None,
                    "vae": os.path.relpath(args.vae.resolve(), ROOT) if args.vae else None}
    elif args.run:
        rows = bench_quality(args.manifest, args.run, args.split, args.items, args.seconds, args.gl_iters)
        settings = {"mode": "quality", "manifest": os.path.relpath(Path(args.manifest).resolve(), ROOT), "split": args.split, "items": args.items,
                    "clip_seconds": args.seconds, "gl_iters": args.gl_iters}
    else:
        rows = bench_speed(args.seconds, args.repeats, args.gl_iters)
        settings = {"mode": "speed", "audio_seconds": args.seconds, "repeats": args.repeats,
                    "gl_iters": args.gl_iters, "batch": 1,
                    "stat": "median of --repeats rounds; peers warmed up, then timed alternately (rotating order)"}
    settings["threads"] = args.threads
    print_table(rows)
    from bench.record import machine_info

    machine = machine_info()
    record = {"bench": "vocoder", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": machine,       # bench.record.machine_info() (was platform.machine(), now machine.arch)
              "processor": machine["processor"], "cpu_count": machine["cpu_count"], "python": machine["python"],
              "versions": {"torch": torch.__version__, "tta": machine["tta"]},
              "settings": settings, "loadavg": list(os.getloadavg()), "results": rows,
              "note": "shared CPU (several jobs on 2 cores): absolute times are noisy, compare ratios within this run"}
    with open(args.results, "a") as f:
        f.write(json.dumps(record) + "\n")
    return rows


if __name__ == "__main__":
    main()
