"""How far a retrieval context moves a trained UNet's noise prediction (Re-AudioLDM fine-tuning).

With a plain pipeline (`--model`, default: the embedded one) it builds the two retrieval UNets that
`tta train ldm --init-from PIPELINE --datastore ...` starts from, each with a freshly initialised context encoder
fed random unit-norm neighbour embeddings, and reports ||eps_retrieval - eps_plain|| / ||eps_plain|| per timestep:

- "replace" (`retrieval.attention`'s default): the second attention layers attend to the context instead of the
  latent, so their key / value projections are new (randomly initialised, as training leaves them);
- "decoupled": those layers keep their self-attention and gain a zero-started attention over the context.

With a trained retrieval pipeline and `--datastore` it reports instead how far each prompt's retrieved context
moves the prediction from the null context (what the model learned to take from its neighbours), and that move
as a fraction of the prompt's own: ||eps(prompt, neighbours) - eps(prompt, null)|| / ||eps(prompt, null) -
eps(empty caption, null)||.

Both modes also report the scale to read these against: how far the prompt's CLAP condition itself moves the
prediction from the empty caption's (`prompt_effect`, plain UNet or null context). A trained text-to-audio UNet's
prompt moves it by only a few percent, the rest of the prediction being the noise it must find either way.

Latents are seeded Gaussian noise of a 10.24 s clip, the condition the prompts' CLAP text embeddings; the UNet
runs in float32 on the CPU. Prints a table and appends a JSON line to --results.

    .venv/bin/python bench/retrieval_attention.py [--model PIPELINE] [--datastore STORE]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.default_quality import machine, versions  # noqa: E402
from bench.recognisable import relative  # noqa: E402

PROMPTS = ("a dog barks", "rain falling on a roof", "a cow moos", "footsteps on gravel")
TIMESTEPS = (50, 300, 600, 900)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from tta.generate import DEFAULT_MODEL

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="pipeline folder (default: the embedded one)")
    ap.add_argument("--datastore", type=Path, help="a trained retrieval model's datastore: measure its context")
    ap.add_argument("--seconds", type=float, default=10.24, help="latent length")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results.jsonl")
    return ap.parse_args(argv)


def relative_change(a, b) -> list[float]:
    """Per item ||a - b|| / ||b||."""
    return [round(float((x - y).norm() / y.norm()), 5) for x, y in zip(a, b)]


def main(argv: list[str] | None = None) -> dict:
    import torch

    from tta.ldm.model import LDMUNet
    from tta.pipeline import TTAPipeline

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = TTAPipeline.from_pretrained(args.model)
    unet = pipe.unet.float().eval()
    g = torch.Generator().manual_seed(args.seed)
    frames = round(args.seconds * pipe.mel.sample_rate / pipe.mel.hop_length) // pipe.vae.downsample_factor
    frames -= frames % unet.downsample_factor
    freq = pipe.mel.n_mels // pipe.vae.downsample_factor
    x = torch.randn(len(PROMPTS), unet.config.latent_channels, frames, freq, generator=g)
    cond = torch.as_tensor(pipe.clap.embed_text(list(PROMPTS))).float()
    empty = torch.as_tensor(pipe.clap.embed_text([""])).float().expand(len(PROMPTS), -1)
    rows, prompt_rows, ratio_rows = {}, {}, {}
    with torch.no_grad():
        if args.datastore is not None:      # a trained retrieval model: retrieved vs null context
            if pipe.retrieval is None:
                raise SystemExit(f"{args.model}: not a retrieval model (no retrieval/ component)")
            context, found = pipe.retrieve(cond, args.datastore, None)
            null = pipe.retrieval.null_context(len(PROMPTS))
            for t in TIMESTEPS:
                tt = torch.full((len(PROMPTS),), t)
                with_ctx, plain, blank = unet(x, tt, cond, context), unet(x, tt, cond, null), unet(x, tt, empty, null)
                rows[t] = relative_change(with_ctx, plain)
                prompt_rows[t] = relative_change(plain, blank)
                ratio_rows[t] = [round(float((a - b).norm() / (b - c).norm()), 4)
                                 for a, b, c in zip(with_ctx, plain, blank)]
            mode = f"trained {pipe.retrieval.config.attention}: retrieved vs null context"
            extra = {"neighbours": [[n["caption"] for n in f] for f in found]}
        else:                               # the two ways a plain UNet starts a retrieval fine-tune
            if pipe.retrieval is not None:
                raise SystemExit(f"{args.model}: already a retrieval model; pass its --datastore")
            from dataclasses import replace

            from tta.ldm.retrieval_context import (RetrievalConfig, RetrievalContext, attach_decoupled,
                                                   attention_layers, context_config)

            feats = {f: torch.nn.functional.normalize(torch.randn(len(PROMPTS), 3, cond.shape[1], generator=g), dim=-1)
                     for f in ("audio", "text")}
            width = unet.config.class_embed_dim
            replaced = LDMUNet(replace(unet.config, context_dim=width)).eval()
            own, trained = replaced.state_dict(), unet.state_dict()
            replaced.load_state_dict({k: trained[k] if k in trained and trained[k].shape == v.shape else v
                                      for k, v in own.items()})
            r = RetrievalConfig(datastore="-", neighbours=3)
            ctx_replace = RetrievalContext(context_config(r, cond.shape[1], width)).eval()
            decoupled = copy.deepcopy(unet)
            r = RetrievalConfig(datastore="-", neighbours=3, attention="decoupled")
            ctx_decoupled = RetrievalContext(context_config(r, cond.shape[1], width, attention_layers(decoupled)))
            attach_decoupled(decoupled, ctx_decoupled.config)
            for t in TIMESTEPS:
                tt = torch.full((len(PROMPTS),), t)
                plain = unet(x, tt, cond)
                prompt_rows[t] = relative_change(plain, unet(x, tt, empty))
                rows[t] = {"replace": relative_change(replaced(x, tt, cond, ctx_replace(feats)), plain),
                           "decoupled": relative_change(decoupled(x, tt, cond, ctx_decoupled.eval()(feats)), plain)}
            mode = "init from a plain UNet: replace vs decoupled"
            extra = {}
    summary = {"bench": "retrieval_attention", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "machine": machine(), "versions": versions(),
               "settings": {"model": relative(args.model), "datastore": relative(args.datastore)
                            if args.datastore else None, "prompts": list(PROMPTS), "seconds": args.seconds,
                            "seed": args.seed, "threads": args.threads},
               "mode": mode, "relative_change": {str(t): v for t, v in rows.items()},
               "prompt_effect": {str(t): v for t, v in prompt_rows.items()}, **extra}
    if ratio_rows:
        summary["context_vs_prompt"] = {str(t): v for t, v in ratio_rows.items()}
    print(f"{relative(args.model)}: {mode}; ||eps' - eps|| / ||eps|| per prompt ({', '.join(PROMPTS)})")
    for t, v in rows.items():
        print(f"  t={t:4d}  " + ("  ".join(f"{k} {v[k]}" for k in v) if isinstance(v, dict) else str(v)))
    print("the prompt's own effect, ||eps(prompt) - eps(empty caption)|| / ||eps(empty caption)||:")
    for t, v in prompt_rows.items():
        print(f"  t={t:4d}  {v}")
    if ratio_rows:
        print("the context's move as a fraction of the prompt's:")
        for t, v in ratio_rows.items():
            print(f"  t={t:4d}  {v}")
    with open(args.results, "a") as f:
        f.write(json.dumps(summary) + "\n")
    return summary


if __name__ == "__main__":
    main()
