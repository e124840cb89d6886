"""Generation cost on this machine: tta's pipeline against diffusers' AudioLDMPipeline on identical weights.

For each size (tiny / default / audioldm-s UNet+VAE+vocoder from configs/*; random weights: the cost does
not depend on the values; the tiny CLAP only supplies the two embeddings), one clip of --seconds is
generated from the same initial latents, embeddings, sampler and steps by
  tta        TTAPipeline.sample (guided denoising -> VAE decode -> HiFi-GAN)
  diffusers  diffusers.AudioLDMPipeline (deprecated in 0.42, same UNet/VAE objects, vocoder exported to
             transformers' SpeechT5HifiGan)
Both are warmed up once, then timed alternately for --rounds rounds (default 3; tta first in even rounds,
diffusers first in odd ones) and the medians are reported: seconds per clip, the ratio diffusers / tta
(>= 1.0: tta is not slower), the max |difference| of the two waveforms. The parts of a tta clip (one guided
UNet step, median of 3 calls; the VAE + vocoder decode) are timed in the same rounds, alternately too, and
checked against the whole clip: parts_sum_s = decode_s + steps x per_step_s and parts_mismatch =
parts_sum_s / tta_s - 1 are recorded (the rest is scheduler and guidance arithmetic). Each size runs in its
own subprocess; peak RSS is measured per peer in a fresh process running that peer alone
(peak_rss_tta_MiB, peak_rss_diffusers_MiB; --no-rss-processes skips them), and the timing process's own
peak (both peers at once) is recorded as peak_rss_timing_process_MiB. Steps are few by default because the
CPU is small; the table also projects the time of a full DDIM-200 and a DPM-Solver++-25 clip as decode +
steps x (median guided UNet step) ("projected"). The rows record candidates (1), guidance_rule ("cfg") and
window (0: exactly --seconds), which is what pipe.sample and diffusers' pipeline do here.

With --model DIR (a trained pipeline folder) it additionally measures what the sampler buys: DDIM 200 vs
DPM-Solver++ 25 in time and CLAP score on --prompts, after an untimed warm-up generation, with the
pipeline's own candidates / guidance_rule / window defaults (recorded).

Usage: .venv/bin/python bench/generate.py [--sizes tiny,default,audioldm-s] [--seconds 10] [--steps 3]
           [--rounds 3] [--results bench/results.jsonl] [--no-record]
Prints a table and appends a JSON line to --results unless --no-record.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
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


def peak_rss_mib() -> float:
    """This process's own peak (bench.record.peak_rss_mib: VmHWM, which a parent's peak does not leak into)."""
    from bench.record import peak_rss_mib as own_peak

    return round(own_peak(), 1)


def one_size(size: str, seconds: float, steps: int, sampler: str, guidance: float, rounds: int = 3,
             peer: str = "both") -> dict:
    """Build `size` with random weights and time it; runs inside a fresh process.

    peer "both": tta and diffusers each warmed up once, then `rounds` rounds that time one clip of each,
    alternately (tta first in even rounds, diffusers first in odd ones), and the parts of a tta clip (one guided
    UNet step, median of 3, and the VAE + vocoder decode), also alternately; medians are reported, with the
    check decode + steps x step against the whole tta clip. peer "tta" / "diffusers": only what that peer
    needs, one warm-up and one timed clip, for the peak RSS of a process running that peer alone."""
    from tta.clap.model import ClapConfig, TTAClap, TTAClapEmbedder
    from tta.config import load_config
    from tta.ldm.model import LDMUNet
    from tta.ldm.sampling import DiffusionConfig, make_scheduler
    from tta.ldm.train import RunConfig
    from tta.pipeline import PipelineDefaults, TTAPipeline
    from vae.model import MelVAE, VAEConfig
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

    def run_tta():
        return pipe.sample(noise, cond, uncond, n, steps=steps, guidance=guidance, sampler=sampler)[0]

    fns = {}
    if peer in ("both", "tta"):
        fns["tta"] = run_tta
    if peer in ("both", "diffusers"):
        import diffusers
        from transformers import ClapTextConfig, ClapTextModelWithProjection, SpeechT5HifiGan

        from vocoder.interop import export_speecht5

        with tempfile.TemporaryDirectory() as tmp:
            export_speecht5(vocoder, Path(tmp) / "voc")
            speecht5 = SpeechT5HifiGan.from_pretrained(str(Path(tmp) / "voc")).eval()
        text_encoder = ClapTextModelWithProjection(ClapTextConfig(
            vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
            projection_dim=ldm.class_embed_dim)).eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = diffusers.AudioLDMPipeline(vae=vae.net, text_encoder=text_encoder, tokenizer=None,
                                                unet=unet.net, scheduler=make_scheduler(sampler, pipe.scheduler_config),
                                                vocoder=speecht5)
        theirs.set_progress_bar_config(disable=True)

        def run_diffusers():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                theirs.scheduler = make_scheduler(sampler, pipe.scheduler_config)
                return theirs(prompt_embeds=cond, negative_prompt_embeds=uncond, latents=noise.clone(),
                              num_inference_steps=steps, guidance_scale=guidance, audio_length_in_s=seconds,
                              output_type="pt").audios[0]

        fns["diffusers"] = run_diffusers
        if peer == "diffusers":
            del pipe.vocoder, vocoder         # diffusers runs its SpeechT5 export, not tta's HiFiGAN

    common = {"size": size, "unet_params_M": round(sum(p.numel() for p in unet.parameters()) / 1e6, 2),
              "seconds": seconds, "steps": steps, "sampler": sampler, "guidance": guidance,
              # what pipe.sample and diffusers' pipeline do here: one draw, plain CFG, exactly `seconds`
              "candidates": 1, "guidance_rule": "cfg", "window": 0.0}
    if peer != "both":
        with torch.inference_mode():
            fns[peer]()                                   # warm-up
            t = time.perf_counter()
            fns[peer]()
            wall = time.perf_counter() - t
        return {**common, "peer": peer, "clip_s": round(wall, 3), "peak_rss_MiB": peak_rss_mib()}

    x_in = torch.cat([noise, noise])                      # one guided UNet step: batch 2 (CFG)
    t_in = torch.tensor([500, 500])
    embeds = torch.cat([uncond, cond])
    clips = {"tta": [], "diffusers": []}
    parts = {"step": [], "decode": []}
    part_fns = {"step": lambda: median_time(lambda: unet(x_in, t_in, embeds)),
                "decode": lambda: median_time(lambda: pipe.decode(noise, n), 1)}
    with torch.inference_mode():
        outs = {"tta": run_tta(), "diffusers": fns["diffusers"]()}    # warm-up of both (allocator, kernels)
        for fn in part_fns.values():
            fn()                                                          # warm-up of the parts
        for r in range(rounds):
            order = ("tta", "diffusers") if r % 2 == 0 else ("diffusers", "tta")
            for name in order:
                t = time.perf_counter()
                fns[name]()
                clips[name].append(time.perf_counter() - t)
            for name in (("step", "decode") if r % 2 == 0 else ("decode", "step")):
                parts[name].append(part_fns[name]())
    tta_s, diffusers_s = statistics.median(clips["tta"]), statistics.median(clips["diffusers"])
    per_step, fixed = statistics.median(parts["step"]), statistics.median(parts["decode"])
    parts_s = fixed + steps * per_step
    return {
        **common, "rounds": rounds,
        "tta_s": round(tta_s, 3), "diffusers_s": round(diffusers_s, 3),
        "ratio_diffusers_over_tta": round(diffusers_s / tta_s, 3),
        "tta_rounds_s": [round(x, 3) for x in clips["tta"]],
        "diffusers_rounds_s": [round(x, 3) for x in clips["diffusers"]],
        "max_abs_diff": float((outs["tta"] - outs["diffusers"].float()).abs().max()),
        "per_step_s": round(per_step, 4), "decode_s": round(fixed, 3),
        "per_step_rounds_s": [round(x, 4) for x in parts["step"]],
        "decode_rounds_s": [round(x, 3) for x in parts["decode"]],
        # check of the parts: decode + steps x step should be close to the whole tta clip (the rest is the
        # scheduler and guidance arithmetic); parts_mismatch = parts_sum_s / tta_s - 1
        "parts_sum_s": round(parts_s, 3), "parts_mismatch": round(parts_s / tta_s - 1, 3),
        "projected_ddim200_s": round(fixed + 200 * per_step, 1),
        "projected_dpmpp25_s": round(fixed + 25 * per_step, 1),
        # this process holds tta, diffusers and the SpeechT5 export at once: not either peer's footprint
        "peak_rss_timing_process_MiB": peak_rss_mib(),
    }


def sampler_comparison(model: Path, prompts: list[str], seconds: float) -> list[dict]:
    from tta.pipeline import TTAPipeline

    pipe = TTAPipeline.from_pretrained(model)
    d = pipe.defaults
    pipe(prompts[:1], seconds=seconds, steps=2, sampler="ddim", guidance=d.guidance, seed=0)   # warm-up, untimed
    rows = []
    for sampler, steps in (("ddim", 200), ("dpmsolver++", 25)):
        t = time.perf_counter()
        out = pipe(prompts, seconds=seconds, steps=steps, sampler=sampler, guidance=d.guidance, seed=0)
        rows.append({"sampler": sampler, "steps": steps, "s_per_clip": round((time.perf_counter() - t) / len(prompts), 2),
                     "clap_score": round(sum(out.scores) / len(out.scores), 4), "clap_scores": out.scores,
                     "prompts": len(prompts), "guidance": d.guidance, "clap_model": pipe.clap.identity,
                     # the pipeline's own defaults, which __call__ applies here
                     "candidates": d.candidates, "guidance_rule": d.guidance_rule, "window": d.window,
                     "precision": d.precision})
    return rows


def run_one(size: str, args, peer: str) -> dict | None:
    cmd = [sys.executable, __file__, "--one", size, "--seconds", str(args.seconds), "--steps", str(args.steps),
           "--sampler", args.sampler, "--guidance", str(args.guidance), "--threads", str(args.threads),
           "--rounds", str(args.rounds), "--peer", peer]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        print(f"{size} ({peer}): failed\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="tiny,default,audioldm-s")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--sampler", default="ddim")
    ap.add_argument("--guidance", type=float, default=2.5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternating timed rounds of tta and diffusers per size, after a warm-up of each (default 3)")
    ap.add_argument("--no-rss-processes", dest="rss_processes", action="store_false",
                    help="skip the two extra processes per size that measure each peer's own peak RSS")
    ap.add_argument("--model", type=Path, help="trained pipeline folder for the DDIM-200 vs DPM-Solver++-25 comparison")
    ap.add_argument("--prompts", default="a dog barks;rain on a roof;a church bell rings")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results.jsonl",
                    help="results file to append the record to (default bench/results.jsonl)")
    ap.add_argument("--no-record", action="store_true", help="do not append to --results")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--peer", choices=("both", "tta", "diffusers"), default="both", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(one_size(args.one, args.seconds, args.steps, args.sampler, args.guidance, args.rounds,
                                  args.peer)))
        return None
    rows = []
    for size in [s for s in args.sizes.split(",") if s]:
        row = run_one(size, args, "both")
        if row is None:
            continue
        for peer in (("tta", "diffusers") if args.rss_processes else ()):
            own = run_one(size, args, peer)
            row[f"peak_rss_{peer}_MiB"] = own["peak_rss_MiB"] if own else None
            row[f"{peer}_alone_clip_s"] = own["clip_s"] if own else None
        rows.append(row)
    head = ("size", "unet_params_M", "tta_s", "diffusers_s", "ratio_diffusers_over_tta", "max_abs_diff",
            "per_step_s", "decode_s", "parts_sum_s", "parts_mismatch", "projected_ddim200_s", "projected_dpmpp25_s",
            "peak_rss_tta_MiB", "peak_rss_diffusers_MiB", "peak_rss_timing_process_MiB")
    print(f"{args.seconds:g} s clip, {args.steps} {args.sampler} steps, guidance {args.guidance} (CFG doubles the "
          f"batch); medians of {args.rounds} alternating rounds")
    print(" | ".join(head))
    for r in rows:
        print(" | ".join(str(r.get(h)) for h in head))
    samplers = sampler_comparison(args.model, args.prompts.split(";"), args.seconds) if args.model else None
    if samplers:
        for r in samplers:
            print(r)
    import diffusers

    from bench.record import append_record, machine_info

    machine = machine_info()
    record = {"bench": "generate", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              # bench.record.machine_info(); the old top-level keys stay: "machine" used to be platform.machine()
              # (now machine.arch), "processor" platform.processor() (now the CPU model where that is "")
              "machine": machine, "processor": machine["processor"], "cpus": machine["cpu_count"],
              "python": machine["python"], "torch": torch.__version__, "diffusers": diffusers.__version__,
              "tta": machine["tta"],
              "threads": args.threads or torch.get_num_threads(), "loadavg": os.getloadavg(),
              "settings": {"rounds": args.rounds, "stat": "median of alternating rounds after a warm-up of each peer",
                           "rss_processes": args.rss_processes},
              "note": "shared 2-core CPU under load from other jobs: absolute times are noisy, compare ratios. "
                      "tta_s / diffusers_s / per_step_s / decode_s are medians of --rounds rounds timed alternately "
                      "(order flips each round) after one warm-up of each; parts_mismatch = (decode_s + steps x "
                      "per_step_s) / tta_s - 1. peak_rss_tta_MiB / peak_rss_diffusers_MiB: a fresh process running "
                      "that peer alone (warm-up + one clip); the diffusers one also builds the UNet/VAE through "
                      "tta's classes (its pipeline wraps their .net), drops tta's HiFiGAN after the SpeechT5 export. "
                      "peak_rss_timing_process_MiB: the process holding both peers.",
              "rows": rows, "samplers": samplers}
    if not args.no_record:
        append_record(args.results, record)
    return record


if __name__ == "__main__":
    main()
