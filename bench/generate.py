"""Generation cost on this machine: tta's pipeline against diffusers' AudioLDMPipeline on identical weights.

For each size (tiny / default / audioldm-s UNet+VAE+vocoder from configs/*; random weights: the cost does
not depend on the values; the tiny CLAP only supplies the two embeddings), one clip of --seconds is
generated from the same initial latents, embeddings, sampler and steps by
  tta        TTAPipeline.sample (guided denoising -> VAE decode -> HiFi-GAN)
  diffusers  diffusers.AudioLDMPipeline (deprecated in 0.42, same UNet/VAE objects, vocoder exported to
             transformers' SpeechT5HifiGan)
and reported as seconds per clip, seconds per step, the ratio diffusers / tta (>= 1.0: tta is not slower),
the max |difference| of the two waveforms, and the peak RSS of the process (each size runs in its own
subprocess). Steps are few by default because the CPU is small; the table also projects the time of a
full DDIM-200 and a DPM-Solver++-25 clip as decode + steps x (median guided UNet step) ("projected").

With --model DIR (a trained pipeline folder) it additionally measures what the sampler buys: DDIM 200 vs
DPM-Solver++ 25 in time and CLAP score on --prompts.

Usage: .venv/bin/python bench/generate.py [--sizes tiny,default,audioldm-s] [--seconds 10] [--steps 3]
Prints a table and appends a JSON line to bench/results.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VOCODER = {"tiny": "tiny", "default": "audioldm-16k", "audioldm-s": "audioldm-16k"}


def model_config(cls, path: Path):
    from tta.config import from_dict

    return from_dict(cls, json.loads(path.read_text())["model"])


def median_time(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def one_size(size: str, seconds: float, steps: int, sampler: str, guidance: float) -> dict:
    """Build `size` with random weights, time tta and diffusers on it; runs inside a fresh process."""
    import diffusers
    from transformers import ClapTextConfig, ClapTextModelWithProjection, SpeechT5HifiGan

    from tta.clap.model import ClapConfig, TTAClap, TTAClapEmbedder
    from tta.config import load_config
    from tta.ldm.model import LDMUNet
    from tta.ldm.sampling import DiffusionConfig, make_scheduler
    from tta.ldm.train import RunConfig
    from tta.pipeline import PipelineDefaults, TTAPipeline
    from vae.model import MelVAE, VAEConfig
    from vocoder.interop import export_speecht5
    from vocoder.model import HiFiGAN, HiFiGANConfig

    torch.manual_seed(0)
    ldm = load_config(RunConfig, ROOT / "configs" / "ldm" / f"{size}.json").model
    vae = MelVAE(model_config(VAEConfig, ROOT / "configs" / "vae" / f"{size}.json")).eval()
    voc_cfg = model_config(HiFiGANConfig, ROOT / "configs" / "vocoder" / f"{VOCODER[size]}.json")
    if voc_cfg.resblock != "1":   # SpeechT5HifiGan has only resblock type 1
        voc_cfg = dataclasses.replace(voc_cfg, resblock="1", resblock_kernel_sizes=(3,),
                                      resblock_dilation_sizes=((1, 3, 5),))
    vocoder = HiFiGAN(dataclasses.replace(voc_cfg, weight_norm=False)).eval()
    clap_cfg = model_config(ClapConfig, ROOT / "configs" / "clap" / "tiny.json")
    clap = TTAClapEmbedder(TTAClap(dataclasses.replace(clap_cfg, joint_dim=ldm.class_embed_dim)))
    unet = LDMUNet(ldm).eval()
    pipe = TTAPipeline(unet, vae, vocoder, clap, DiffusionConfig().scheduler_config(), PipelineDefaults())
    n = int(round(seconds * pipe.sample_rate))
    cond, uncond = clap.embed_text(["a dog barks"]), clap.embed_text([""])
    noise = torch.randn((1, *pipe.latent_shape(n)), generator=torch.Generator().manual_seed(0))

    with tempfile.TemporaryDirectory() as tmp:
        export_speecht5(vocoder, Path(tmp) / "voc")
        speecht5 = SpeechT5HifiGan.from_pretrained(str(Path(tmp) / "voc")).eval()
    text_encoder = ClapTextModelWithProjection(ClapTextConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
        projection_dim=ldm.class_embed_dim)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = diffusers.AudioLDMPipeline(vae=vae.net, text_encoder=text_encoder, tokenizer=None, unet=unet.net,
                                            scheduler=make_scheduler(sampler, pipe.scheduler_config),
                                            vocoder=speecht5)
    theirs.set_progress_bar_config(disable=True)

    def run_tta():
        return pipe.sample(noise, cond, uncond, n, steps=steps, guidance=guidance, sampler=sampler)[0]

    def run_diffusers():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs.scheduler = make_scheduler(sampler, pipe.scheduler_config)
            return theirs(prompt_embeds=cond, negative_prompt_embeds=uncond, latents=noise.clone(),
                          num_inference_steps=steps, guidance_scale=guidance, audio_length_in_s=seconds,
                          output_type="pt").audios[0]

    with torch.inference_mode():
        run_tta()                                        # warm-up (allocator, kernels)
        times = {}
        outs = {}
        for name, fn in (("tta", run_tta), ("diffusers", run_diffusers), ("tta_again", run_tta)):
            t = time.perf_counter()
            outs[name] = fn()
            times[name] = time.perf_counter() - t
        # the parts of a clip, each the median of 3: one guided UNet step (batch 2) and VAE + vocoder decode
        x_in = torch.cat([noise, noise])
        t_in = torch.tensor([500, 500])
        embeds = torch.cat([uncond, cond])
        per_step = median_time(lambda: unet(x_in, t_in, embeds))
        fixed = median_time(lambda: pipe.decode(noise, n))
    tta_s = min(times["tta"], times["tta_again"])
    return {
        "size": size, "unet_params_M": round(sum(p.numel() for p in unet.parameters()) / 1e6, 2),
        "seconds": seconds, "steps": steps, "sampler": sampler, "guidance": guidance,
        "tta_s": round(tta_s, 3), "diffusers_s": round(times["diffusers"], 3),
        "ratio_diffusers_over_tta": round(times["diffusers"] / tta_s, 3),
        "max_abs_diff": float((outs["tta"] - outs["diffusers"].float()).abs().max()),
        "per_step_s": round(per_step, 4), "decode_s": round(fixed, 3),
        "projected_ddim200_s": round(fixed + 200 * per_step, 1),
        "projected_dpmpp25_s": round(fixed + 25 * per_step, 1),
        "peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def sampler_comparison(model: Path, prompts: list[str], seconds: float) -> list[dict]:
    from tta.pipeline import TTAPipeline

    pipe = TTAPipeline.from_pretrained(model)
    rows = []
    for sampler, steps in (("ddim", 200), ("dpmsolver++", 25)):
        t = time.perf_counter()
        out = pipe(prompts, seconds=seconds, steps=steps, sampler=sampler, guidance=pipe.defaults.guidance, seed=0)
        rows.append({"sampler": sampler, "steps": steps, "s_per_clip": round((time.perf_counter() - t) / len(prompts), 2),
                     "clap_score": round(sum(out.scores) / len(out.scores), 4), "clap_scores": out.scores,
                     "prompts": len(prompts), "guidance": pipe.defaults.guidance, "clap_model": pipe.clap.identity})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="tiny,default,audioldm-s")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--sampler", default="ddim")
    ap.add_argument("--guidance", type=float, default=2.5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--model", type=Path, help="trained pipeline folder for the DDIM-200 vs DPM-Solver++-25 comparison")
    ap.add_argument("--prompts", default="a dog barks;rain on a roof;a church bell rings")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(one_size(args.one, args.seconds, args.steps, args.sampler, args.guidance)))
        return
    rows = []
    for size in [s for s in args.sizes.split(",") if s]:
        cmd = [sys.executable, __file__, "--one", size, "--seconds", str(args.seconds), "--steps", str(args.steps),
               "--sampler", args.sampler, "--guidance", str(args.guidance), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            print(f"{size}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    head = ("size", "unet_params_M", "tta_s", "diffusers_s", "ratio_diffusers_over_tta", "max_abs_diff",
            "per_step_s", "decode_s", "projected_ddim200_s", "projected_dpmpp25_s", "peak_rss_MiB")
    print(f"{args.seconds:g} s clip, {args.steps} {args.sampler} steps, guidance {args.guidance} (CFG doubles the batch)")
    print(" | ".join(head))
    for r in rows:
        print(" | ".join(str(r[h]) for h in head))
    samplers = sampler_comparison(args.model, args.prompts.split(";"), args.seconds) if args.model else None
    if samplers:
        for r in samplers:
            print(r)
    import diffusers

    record = {"bench": "generate", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
              "python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
              "threads": args.threads or torch.get_num_threads(), "loadavg": os.getloadavg(),
              "note": "shared 2-core CPU under load from other jobs: absolute times are noisy, compare ratios",
              "rows": rows, "samplers": samplers}
    with open(ROOT / "bench" / "results.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
