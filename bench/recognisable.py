"""Does a prompt give a recognisable sound? A judge that is not the model's own CLAP (issue 8).

For each (prompt, label) pair, each pipeline folder generates --seeds clips with its default settings. Every
generation, trimmed to where it is not silent, is embedded with aisfx (a sound-effects CNN that never saw
this corpus) and mean-pooled; so is every real recorded clip of the manifest's training split (rows from
Debian packages, the real recordings) of the prompts' labels, plus --distractors of other labels. The judge is
a k-nearest-neighbour vote among those real clips (cosine):

  hit@1   the nearest real clip carries the prompt's label
  vote@k  the prompt's label is the most common among the k nearest (ties count as a miss)

Two references in the same run: "real held-out" (held-out real clips of the same labels, judged against the
same training clips: how well the judge recognises real audio) and "chance" (the label's share of the
reference clips, averaged over prompts). Per model, two ceilings of its own parts: the held-out clips through
its vocoder alone (mel -> wav) and through its VAE and vocoder (wav -> latents -> mel -> wav); a generation
cannot be recognised better than those, whatever the UNet learns; with them, the mean aisfx cosine between each
held-out clip and its resynthesis (a less noisy measure of what a part keeps). Each generation's nearest label
is kept. --seeds 0 measures only the ceilings (to compare VAEs before a UNet is trained on one).
--train-ceiling adds a per-label ceiling on more clips: every real training clip of the prompts' labels, as
recorded and resynthesised, judged leave-one-out (its own reference removed). --items-ceiling CONFIG judges those
clips as a training run with CONFIG's `data` section sees them (LDM runs repeat short events with gaps to fill the
window): each drawn --item-draws times as a training item and trimmed like a generation, leave-one-out. A UNet
learns to generate its training items, so this is what its generations can be recognised at if learned exactly.

Several --model folders are compared in one run (same prompts, seeds, judge). Writes --out/summary.json and
--out/<model>/<label>-<seed>.wav, appends one JSON line to bench/results.jsonl (repository-relative paths).
Each generation is saved and judged as `tta generate` writes it for the same prompt, seed and settings
(tta.generate.rank_written: a clip over full scale is turned down to fit, its gain in per_prompt's gains, and
candidates are ranked as the file holds them); runs without settings.output_fit "generate" judged them as the
pipeline returned them and saved them clipped ("pipeline"), so --merge and --baseline neither pool nor pair
runs of different output_fit (--baseline alone takes only runs written as a run now writes them, and names the
seeds it leaves out on stderr): a baseline recorded only before the field must be rerun with this bench.

The judge's result depends on the seeds: v0.6 scored hit@1 0.417 on seeds 0-7 and 0.333 on seeds 8-15 and on
16-23. So every model's hit@1 comes with a 95 % bootstrap interval (seeds resampled within each prompt), and
every model after the first with its paired difference from the first (the same resampled seeds for both: a
model's generation for a prompt and seed starts from the same noise). A difference whose interval spans 0 is
not a difference. --seed-start extends a run with new seeds, and --merge pools the summaries of such runs (per
model: its weights, its components' configs and its generation defaults; only runs of the same judge, as
judge_identity compares them: the embedder, k, the trim threshold, the number of reference clips and of
distractors, the prompts, the labels judged and the manifest, by its sha256 where both runs recorded it) into
one, with intervals over all their generations; --merge ... --best-of G estimates from the saved generations
what keeping the best of G by the model's own CLAP (`candidates` G) would score. --baseline FOLDER pools
FOLDER's runs recorded in bench/results.jsonl (its weights' and components' configs' fingerprints and
generation defaults, the same judge as for --merge) on the seeds the --merge summaries hold and puts them
first, so a candidate is paired with the shipped default without the default's own summary files, which live
outside the repository and can be lost.

--labels dog[,...] judges only those prompts (the reference clips stay every prompt's, so a label's hits compare
with a full run's), and --setting KEY=VALUE (steps, candidates, sampler, guidance, guidance_rule, window,
precision, context_guidance) generates with that value instead of each model's default, e.g. a sweep of one
prompt's settings.
Both are recorded in the summary; --merge pools only runs of the same prompts and the same effective settings.

Usage: .venv/bin/python bench/recognisable.py --model tta/assets/default --model OTHER \
           --manifest ../tta-work/corpus/starter-v2/manifest.jsonl [--seeds 24] [--seed-start 0] [--k 5]
       .venv/bin/python bench/recognisable.py --merge RUN1/summary.json RUN2/summary.json --out DIR
       .venv/bin/python bench/recognisable.py --baseline tta/assets/default --merge RUN1/summary.json --out DIR
       .venv/bin/python bench/recognisable.py --merge bench/results.jsonl:290 RUN1/summary.json --out DIR
       .venv/bin/python bench/recognisable.py --model tta/assets/default --manifest ... --labels dog \
           --setting guidance=3.0 --setting candidates=1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.default_quality import machine, versions

# prompt -> label of the starter corpus's real recordings (each label has >= 5 training clips there)
PROMPTS: tuple[tuple[str, str], ...] = (
    ("a dog barks", "dog"), ("a cow moos", "cow"), ("a sheep bleats", "sheep"), ("a pig grunts", "pig"),
    ("a horse neighs", "horse"), ("a chicken clucks", "chicken"), ("a wolf howls", "wolf"),
    ("an elephant trumpets", "elephant"), ("rain falling", "rain"), ("footsteps on gravel", "footsteps"),
    ("birds chirping in a forest", "birds"), ("an explosion", "explosion"), ("thunder rumbling", "thunder"),
    ("a fire crackling", "fire"), ("chopping wood with an axe", "chopping"),
)
# generation settings `--setting KEY=VALUE` may override for every model (the pipeline call's arguments)
GENERATION_SETTINGS = {"steps": int, "candidates": int, "sampler": str, "guidance": float, "guidance_rule": str,
                       "window": float, "precision": str, "context_guidance": str}
RESAMPLES = 2000    # bootstrap resamples of the hit@1 intervals
OUTPUT_FIT = "generate"   # how a run writes and judges its generations (settings.output_fit; see output_fit)
TRIM_DB = 40.0      # a generation is cut to its span above peak - TRIM_DB (generations often end in silence)


def relative(path: Path) -> str:
    return os.path.relpath(Path(path).resolve(), ROOT)


def setting(text: str) -> tuple[str, object]:
    """`--setting KEY=VALUE` -> (key, typed value)."""
    key, sep, value = text.partition("=")
    if not sep or key not in GENERATION_SETTINGS:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE with KEY one of "
                                         f"{', '.join(GENERATION_SETTINGS)}")
    kind = GENERATION_SETTINGS[key]
    try:
        typed = kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {key} must be {'an integer' if kind is int else 'a number'}")
    if key in ("steps", "candidates") and typed < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: {key} must be >= 1")
    if key in ("sampler", "guidance_rule", "precision", "context_guidance"):
        from tta.ldm import sampling
        from tta.pipeline import check_context_guidance

        check = {"sampler": sampling.check_sampler, "guidance_rule": sampling.check_guidance_rule,
                 "precision": sampling.check_precision, "context_guidance": check_context_guidance}[key]
        try:
            check(typed)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text!r}: {e}")
    return key, typed


def labels_list(text: str) -> list[str]:
    """`--labels dog,wolf` -> the prompts' labels to judge, each one of PROMPTS'."""
    known = [label for _, label in PROMPTS]
    labels = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in labels if x not in known]
    if bad or not labels:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated labels among {', '.join(known)}")
    return [label for label in known if label in labels]


def judged_labels(run: dict) -> list[str]:
    """The labels whose prompts a summary (a run or a merge) judged; all of PROMPTS' before --labels existed."""
    return run["settings"].get("labels") or [label for _, label in PROMPTS]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, action="append", help="pipeline folder (repeatable)")
    ap.add_argument("--manifest", type=Path, help="manifest whose train split holds the judges' clips")
    ap.add_argument("--merge", type=Path, nargs="+", metavar="SUMMARY|FILE:N",
                    help="instead of a run: pool the generations of these summary.json files (runs of the same "
                         "models and prompts on other seeds, judged by the same judge: references, embedder, k, "
                         "trim, distractors, prompts and labels, manifest) into one summary with intervals over all of them; a model is its "
                         "weights plus its generation defaults, so copies of a folder pool; FILE:N takes line "
                         "N of a results file, e.g. bench/results.jsonl:290")
    ap.add_argument("--baseline", type=Path, metavar="FOLDER",
                    help="with --merge (or alone): first pool the runs of FOLDER's weights and generation defaults "
                         "recorded in --results (e.g. the shipped default's), on the seeds the summaries cover and "
                         "written as theirs (settings.output_fit), so every model's paired difference is from them; "
                         "no folder of earlier runs is needed. Alone: its runs written as this bench writes "
                         "generations now (output_fit 'generate'), on every seed recorded so")
    ap.add_argument("--best-of", type=int, nargs="+", default=[], metavar="G",
                    help="with --merge: also estimate each model's hit@1 had it kept the best of G generations by its "
                         "own CLAP (what `candidates` G does), averaged over every G of its judged seeds, from the "
                         "runs' saved wavs; with a 95 %% interval of the gain over one generation")
    ap.add_argument("--seeds", type=int, default=24,
                    help="generations per prompt and model (0: only the held-out ceilings of each model's parts; "
                         "8 seeds moved a model's hit@1 by 0.08 between seed sets, so 24 is the default)")
    ap.add_argument("--seed-start", type=int, default=0,
                    help="first seed: prompt generations use seeds seed-start .. seed-start + seeds - 1 (after a "
                         "run with --seeds 8, `--seeds 8 --seed-start 8 --out OTHER` judges 8 new seeds; pool the "
                         "two with --merge)")
    ap.add_argument("--k", type=int, default=5, help="neighbours in the vote")
    ap.add_argument("--distractors", type=int, default=400,
                    help="real training clips of other labels among the judge's clips (seeded sample)")
    ap.add_argument("--train-ceiling", action="store_true",
                    help="also judge the real training clips of the prompts' labels leave-one-out (each without "
                         "itself among the references), as recorded and through each model's vocoder and VAE + "
                         "vocoder, per label: a ceiling on ~10x more clips than the held-out ones")
    ap.add_argument("--items-ceiling", type=Path, action="append", default=[], metavar="CONFIG",
                    help="a training config or run's config.json (repeatable): judge the real training clips of the "
                         "prompts' labels as that config's `data` section draws them as training items (repeats, "
                         "gaps, crops), leave-one-out, per label")
    ap.add_argument("--item-draws", type=int, default=3, help="training items drawn per clip for --items-ceiling")
    ap.add_argument("--guidance", type=float, help="classifier-free guidance for every model (default: each model's)")
    ap.add_argument("--setting", type=setting, action="append", default=[], metavar="KEY=VALUE",
                    help="a generation setting for every model instead of its default (repeatable): "
                         f"{', '.join(GENERATION_SETTINGS)}; recorded with each model's defaults, so runs with "
                         "other settings do not pool in --merge")
    ap.add_argument("--datastore", type=Path, metavar="DIR",
                    help="retrieval models: condition every prompt on its nearest entries of this datastore (`tta "
                         "index build`; recorded with the model's defaults, so runs with and without do not pool)")
    ap.add_argument("--neighbours", type=int, metavar="K", help="with --datastore: neighbours per prompt "
                                                                "(default: the k each model was trained with)")
    ap.add_argument("--labels", type=labels_list, metavar="LABEL[,LABEL...]",
                    help="judge only these prompts' labels (e.g. dog); the judge's reference clips stay those of "
                         "every prompt, so a label's hits are comparable with a full run's")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-dir", type=Path, help="where the reference embeddings are cached")
    ap.add_argument("--out", type=Path, help="folder for the summary and the wavs (default bench/out/recognisable; "
                                              "required with --merge)")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results.jsonl")
    ap.add_argument("--quiet", action="store_true", help="no progress bars, nor --baseline's note of the seeds it "
                                                         "leaves out")
    args = ap.parse_args(argv)
    if args.seeds < 0 or args.seed_start < 0:
        ap.error("--seeds and --seed-start must be >= 0")
    if args.item_draws < 1:
        ap.error("--item-draws must be >= 1")
    if args.neighbours is not None and (args.datastore is None or args.neighbours < 1):
        ap.error("--neighbours K needs --datastore DIR and K >= 1")
    pooling = bool(args.merge) or args.baseline is not None
    if not pooling and (not args.model or args.manifest is None):
        ap.error("--model and --manifest are required (unless --merge or --baseline)")
    if pooling and (args.model or args.manifest is not None):
        ap.error("--merge and --baseline pool finished runs; they take no --model or --manifest")
    if args.best_of and (not args.merge or min(args.best_of) < 2):
        ap.error("--best-of G needs --merge and G >= 2")
    if args.out is None:
        if pooling:
            ap.error("--merge and --baseline need --out (a folder for the pooled summary, not one of the runs')")
        args.out = ROOT / "bench" / "out" / "recognisable"
    return args


def active(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """The span of `wav` above its peak - TRIM_DB (at least 0.25 s), so trailing silence is not judged."""
    a = np.abs(wav)
    peak = float(a.max()) if a.size else 0.0
    if peak <= 0:
        return wav
    idx = np.flatnonzero(a >= peak * 10 ** (-TRIM_DB / 20))
    start, end = int(idx[0]), int(idx[-1]) + 1
    end = max(end, min(len(wav), start + sample_rate // 4))
    return wav[start:end]


def pooled(embedder, wavs: list[np.ndarray], sample_rate: int, *, desc: str, progress: bool) -> np.ndarray:
    from tqdm.auto import tqdm

    out = [embedder.embed(w, sample_rate).mean(axis=0) for w in tqdm(wavs, desc=desc, unit="clip",
                                                                       disable=not progress)]
    x = np.stack(out)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest(query: np.ndarray, refs: np.ndarray, ref_labels: list[str], k: int,
            exclude: int | None = None) -> list[str]:
    """Labels of the k references nearest to `query` (reference `exclude` left out: leave-one-out)."""
    order = np.argsort(-(refs @ query), kind="stable")
    return [ref_labels[j] for j in order if j != exclude][:k]


def judge(queries: np.ndarray, refs: np.ndarray, ref_labels: list[str], label: str, k: int,
          exclude: int | None = None) -> tuple[bool, bool]:
    top = nearest(queries, refs, ref_labels, k, exclude)
    counts = Counter(top).most_common()
    vote = counts[0][0] == label and (len(counts) == 1 or counts[1][1] < counts[0][1])
    return top[0] == label, vote


def rates(judged: list[tuple[bool, bool]], k: int) -> dict:
    return {"hit@1": round(float(np.mean([h for h, _ in judged])), 4) if judged else None,
            f"vote@{k}": round(float(np.mean([v for _, v in judged])), 4) if judged else None}


def per_label(judged: list[tuple[bool, bool]], labels: list[str], k: int) -> dict:
    """{label: {"hit@1": hits, "vote@k": votes, "of": clips}} of judged clips with these labels."""
    out = {}
    for label in sorted(set(labels)):
        js = [j for j, lab in zip(judged, labels) if lab == label]
        out[label] = {"hit@1": sum(h for h, _ in js), f"vote@{k}": sum(v for _, v in js), "of": len(js)}
    return out


def hits_of(prompt_entry: dict) -> list[int]:
    """Per-generation hit@1 of one per_prompt entry, from its nearest labels (so older summaries work too)."""
    return [int(n == prompt_entry["label"]) for n in prompt_entry["nearest"]]


def intervals(per_prompt_of_models: list[list[dict]], seeds_of_models: list[list[int] | None] | None = None, *,
              resamples: int = RESAMPLES, seed: int = 0) -> list[dict]:
    """Per model: hit@1 with a 95 % bootstrap interval; after the first, the paired difference from the first.

    The prompts are fixed and the seeds are the sample, so seeds are resampled within each prompt, with the same
    draw for every model (paired: the models' generations for a prompt and seed start from the same noise when
    they share a latent shape). A model is paired with the first only when it has the same prompts and the same
    seeds (`seeds_of_models`, when given; else the same number of seeds); a model without generations, or with
    unequal seed counts across prompts, gets nothing.
    """
    seeds_of_models = seeds_of_models or [None] * len(per_prompt_of_models)
    grids, labels = [], []
    for pp in per_prompt_of_models:
        counts = {len(p["nearest"]) for p in pp}
        grids.append(np.array([hits_of(p) for p in pp], dtype=np.float64) if len(counts) == 1 else None)
        labels.append([p["label"] for p in pp])
    ci = lambda x: [round(float(np.percentile(x, 2.5)), 4), round(float(np.percentile(x, 97.5)), 4)]
    rng = np.random.default_rng(seed)

    def boot(grid, draw):
        return grid[np.arange(grid.shape[0])[None, :, None], draw].mean(axis=(1, 2))

    usable = lambda g: g is not None and g.ndim == 2 and g.size > 0
    first, first_boot, draw = grids[0] if grids else None, None, None
    if grids and usable(first):
        draw = rng.integers(0, first.shape[1], size=(resamples, *first.shape))
        first_boot = boot(first, draw)
    out = []
    for i, grid in enumerate(grids):
        if not usable(grid):
            out.append({})
            continue
        paired = (i > 0 and first_boot is not None and grid.shape == first.shape and labels[i] == labels[0]
                  and seeds_of_models[i] == seeds_of_models[0])
        if i == 0 or paired:
            b = boot(grid, draw)
        else:
            b = boot(grid, rng.integers(0, grid.shape[1], size=(resamples, *grid.shape)))
        entry = {"hit@1_ci95": ci(b)}
        if paired:
            entry["hit@1_minus_first"] = round(float(grid.mean() - first.mean()), 4)
            entry["hit@1_minus_first_ci95"] = ci(b - first_boot)
        out.append(entry)
    return out


def run_seeds(settings: dict) -> list[int]:
    """The seeds of a run's generations (per prompt), from its settings."""
    start = int(settings.get("seed_start", 0))
    return list(range(start, start + int(settings["seeds"])))


def read_summaries(paths: list[Path], out: Path | None = None) -> list[dict]:
    """The summaries of --merge, each checked to be one of this bench's: a summary.json, or FILE:N, line N
    (from 1) of a results file such as bench/results.jsonl (no copy of a recorded run outside the repository)."""
    runs = []
    for path in paths:
        if out is not None and Path(path).resolve() == (out / "summary.json").resolve():
            raise SystemExit(f"{path}: --merge would overwrite its own input; pass another --out")
        file, _, line = str(path).rpartition(":")
        try:
            if not Path(path).is_file() and line.isdigit() and Path(file).is_file():
                lines = Path(file).read_text().splitlines()
                if not 1 <= int(line) <= len(lines):
                    raise SystemExit(f"{path}: {file} has {len(lines)} lines, not a line {line}")
                runs.append(json.loads(lines[int(line) - 1]))
            else:
                runs.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as e:
            raise SystemExit(f"{path}: not a readable summary.json ({e})")
        if not isinstance(runs[-1], dict) or runs[-1].get("bench") not in ("recognisable", "recognisable-merged"):
            raise SystemExit(f"{path}: not a summary of bench/recognisable.py")
    return runs


def run_settings(run: dict) -> list[dict]:
    """The settings of the single runs a summary holds: its own, or a merge's runs' (settings.runs, nested in
    merges of merges)."""
    def leaves(settings: dict) -> list[dict]:
        return [x for s in settings["runs"] for x in leaves(s)] if settings.get("runs") else [settings]

    return leaves(run["settings"])


def output_fit(run: dict) -> str:
    """How a summary's generations were written and judged: "generate" (as `tta generate` writes them) or
    "pipeline" (a run recorded without settings.output_fit: as the pipeline returned them); a merge's is its
    runs', "generate+pipeline" if it pooled both."""
    return "+".join(sorted({s.get("output_fit", "pipeline") for s in run_settings(run)}))


def same_output_fit(paths: list, runs: list[dict]) -> str | None:
    """The output_fit every run shares (None without runs); a run of another one, or a merge that pooled both,
    is refused: the clips of one are not the files of the other, so a difference would measure the writing."""
    first = output_fit(runs[0]) if runs else None
    for path, run in zip(paths, runs):
        fit = output_fit(run)
        if "+" in fit:
            raise SystemExit(f"{path}: pools runs of settings.output_fit {fit.replace('+', ' and ')}; merge runs "
                             "written alike")
        if fit != first:
            raise SystemExit(f"{path}: judged with settings.output_fit {fit!r}, not {first!r} as {paths[0]} "
                             "(absent: 'pipeline', clips as the pipeline returned them); merge runs written alike")
    return first


def same_judges(paths: list, runs: list[dict]) -> dict | None:
    """The judge (a run's settings) every run shares (None without runs); a run judged otherwise (any part
    of `judge_identity`: reference clips, embedder, vote, labels, trim, distractors, prompts, manifest), or a
    merge that pooled such runs, is refused, naming what differs (`judge_differences`): its hits are not the
    same measure."""
    first = run_settings(runs[0])[0] if runs else None
    for path, run in zip(paths, runs):
        for settings in run_settings(run):
            differs = judge_differences(settings, first)   # what differs, whichever it is (judge_identity)
            if differs and path == paths[0]:
                raise SystemExit(f"{path}: pools runs of different judges (one judged with {'; '.join(differs)} "
                                 "as its first run); merge runs of the same judge")
            if differs:
                raise SystemExit(f"{path}: judged with {'; '.join(differs)} as {paths[0]}; merge runs of the "
                                 "same judge")
    return first


def recorded_config_prints(runs: list[dict]) -> dict[tuple[str, str | None], str]:
    """(folder, weights fingerprint) -> its components' configs' fingerprint, from the runs that recorded one."""
    return {(m["model"], m.get("fingerprint")): m["config_fingerprint"]
            for run in runs for m in run["models"] if m.get("config_fingerprint")}


def config_print_of(m: dict, config_prints: dict, fingerprint: str | None = None) -> str | None:
    """A model entry's configs' fingerprint; an entry recorded before those were fingerprinted (2026-12-05)
    takes the one another run recorded for the same folder and weights."""
    fp = fingerprint or m.get("fingerprint")
    return m.get("config_fingerprint") or config_prints.get((m["model"], fp))


def merge(paths: list[Path], k: int, out: Path, best_of: list[int] = (),
          recorded: list[tuple[str, dict]] = ()) -> dict:
    """One summary pooling the generations of several runs' summaries, per model and prompt.

    A model is its weights' fingerprint (recorded since the judge has intervals), its components' configs'
    fingerprint (recorded since 2026-12-05; an entry without one takes it from an entry of the same folder and
    weights) and its generation defaults, so runs of copies of one folder pool; a summary without fingerprints
    is keyed by its folder. Two runs of a folder whose weights changed in between are refused, and so is a seed
    that two runs of one model share.
    `recorded` runs (source, run; from `recorded_runs`) come first, so their model is the one the others are
    paired with. Each model's generations are put in seed order, so runs given in any order pair.
    """
    runs = [run for _, run in recorded] + read_summaries(paths, out)
    paths = [source for source, _ in recorded] + list(paths)
    prints: dict[str, str] = {}            # folder -> the fingerprint of its weights when judged
    config_prints = recorded_config_prints(runs)
    for path, run in zip(paths, runs):
        for m in run["models"]:
            fp = m.get("fingerprint")
            if fp and prints.setdefault(m["model"], fp) != fp:
                raise SystemExit(f"{path}: {m['model']} holds other weights than in an earlier summary "
                                 f"(fingerprint {fp} vs {prints[m['model']]})")
    fit = same_output_fit(paths, runs)
    same_judges(paths, runs)   # the labels judged are part of the judge: one message names all that differs
    labels = judged_labels(runs[0])
    models: dict[object, dict] = {}
    for path, run in zip(paths, runs):
        if run["settings"].get("k", k) != k:
            raise SystemExit(f"{path}: judged with k={run['settings']['k']}, not k={k} (pass --k)")
        for m in run["models"]:
            if not m["per_prompt"]:
                continue
            if any("nearest" not in p for p in m["per_prompt"]):
                raise SystemExit(f"{path}: {m['model']} has no per-generation nearest labels (an older summary)")
            seeds = m.get("seeds") or run_seeds(run["settings"])
            # a model is its weights and its generation defaults: copies of a folder pool, whatever their path
            # (a summary from before fingerprints takes its folder's from another summary, if one has it)
            fp = m.get("fingerprint") or prints.get(m["model"])
            cfp = config_print_of(m, config_prints, fp)
            key = ((fp, cfp, json.dumps(with_unset_defaults(m["defaults"]), sort_keys=True)) if fp
                   else m["model"])
            into = models.setdefault(key, {"model": m["model"], "folders": [], "defaults": m["defaults"],
                                           "fingerprint": fp, "config_fingerprint": cfp, "seeds": [],
                                           "per_prompt": {}, "wavs": {}})
            if m["model"] not in into["folders"]:
                into["folders"].append(m["model"])
            twice = sorted(set(seeds) & set(into["seeds"]))
            if twice:
                raise SystemExit(f"{path}: {m['model']} was already judged on seed(s) {twice[:5]} in an earlier "
                                 "summary; merge runs on disjoint seeds")
            into["seeds"] += seeds
            for p in m["per_prompt"]:
                q = into["per_prompt"].setdefault(p["label"], {"prompt": p["prompt"], "label": p["label"],
                                                               "hit@1": 0, f"vote@{k}": 0, "of": 0, "nearest": []})
                if q["prompt"] != p["prompt"]:
                    raise SystemExit(f"{path}: label {p['label']!r} has the prompt {p['prompt']!r}, not "
                                     f"{q['prompt']!r} as in an earlier summary")
                q["hit@1"] += p["hit@1"]
                q[f"vote@{k}"] += p[f"vote@{k}"]
                q["of"] += p["of"]
                q["nearest"] += p["nearest"]
                if run["bench"] == "recognisable" and Path(path).is_file():   # wavs: --out/<index>-<folder>/<label>-<seed>.wav
                    folder = Path(path).parent / f"{run['models'].index(m)}-{folder_name(ROOT / m['model'])}"
                    into["wavs"].setdefault(p["label"], []).extend(folder / f"{p['label']}-{s}.wav" for s in seeds)
                else:
                    into["wavs"].setdefault(p["label"], []).extend([None] * len(p["nearest"]))
    if not models:
        raise SystemExit("--merge: the summaries hold no generations")
    for m in models.values():                 # seed order, whatever the order of the runs
        order = sorted(range(len(m["seeds"])), key=m["seeds"].__getitem__)
        m["seeds"] = [m["seeds"][i] for i in order]
        for label, q in m["per_prompt"].items():
            if len(q["nearest"]) == len(order):
                q["nearest"] = [q["nearest"][i] for i in order]
                m["wavs"][label] = [m["wavs"][label][i] for i in order]
    summary = {"bench": "recognisable-merged", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "sources": [relative(Path(p)) for p in paths],
               "settings": {"k": k, "labels": None if len(labels) == len(PROMPTS) else labels, "output_fit": fit,
                            "runs": [r["settings"] for r in runs]},
               "chance": runs[0].get("chance"), "real_held_out": runs[0].get("real_held_out"), "models": []}
    for m in models.values():
        pp = list(m["per_prompt"].values())
        n = sum(p["of"] for p in pp)
        summary["models"].append({"model": m["model"], "folders": m["folders"], "defaults": m["defaults"],
                                  "fingerprint": m["fingerprint"], "config_fingerprint": m["config_fingerprint"],
                                  "seeds": m["seeds"], "hit@1": round(sum(p["hit@1"] for p in pp) / n, 4),
                                  f"vote@{k}": round(sum(p[f"vote@{k}"] for p in pp) / n, 4),
                                  "held_out_resynthesised": {}, "per_prompt": pp})
    ms = summary["models"]
    for m, extra in zip(ms, intervals([m["per_prompt"] for m in ms], [m["seeds"] for m in ms])):
        m.update(extra)
    for m, src in zip(ms, models.values()):
        if best_of:
            m["best_of"] = best_of_estimates(m, src["wavs"], best_of)
    return summary


def judge_identity(settings: dict) -> dict:
    """What makes two runs' judges the same, from their settings: the embedder, the vote's k, the trim threshold
    (trim_db), the number of reference clips and of distractors, the (prompt, label) pairs, the labels judged
    (every prompt's where none are recorded) and the manifest (its sha256, else its path as given)."""
    keys = ("embedder", "k", "trim_db", "distractors", "reference_clips", "prompts")
    ident = {key: settings.get(key) for key in keys}
    ident["labels"] = judged_labels({"settings": settings})       # none recorded: every prompt's
    # the manifest's hash where both runs recorded it, else its path as given
    ident["manifest"] = settings.get("manifest_sha256") or settings.get("manifest")
    return ident


def judge_differences(a: dict, b: dict) -> list[str]:
    """What differs between the judges of two runs' settings, as "KEY A, not B" ("other KEY" for long values);
    empty when they are the same judge. The labels are always named in full (a list of six or more read only
    "other labels"): those of every prompt, a run without --labels, as "every prompt's", and a long list
    followed by the labels A holds that B lacks and those it lacks."""
    ia, ib = judge_identity(a), judge_identity(b)
    if not (a.get("manifest_sha256") and b.get("manifest_sha256")):
        ia["manifest"], ib["manifest"] = a.get("manifest"), b.get("manifest")
    every = [label for _, label in PROMPTS]
    shown = lambda key, v: "every prompt's" if key == "labels" and v == every else repr(v)
    out = []
    for key in (key for key in ia if ia[key] != ib[key]):
        x, y = shown(key, ia[key]), shown(key, ib[key])
        short = len(x) <= 40 and len(y) <= 40
        if key == "labels" and not short:
            changes = [f"{word} {', '.join(labels)}" for word, labels in (
                ("with", [v for v in ia[key] if v not in ib[key]]), ("without", [v for v in ib[key] if v not in ia[key]]))
                if labels]
            out.append(f"{key} {x}, not {y}" + (f" ({'; '.join(changes)})" if changes else ""))
        else:
            out.append(f"{key} {x}, not {y}" if short else f"other {key}")
    return out


def same_judge(a: dict, b: dict) -> bool:
    return not judge_differences(a, b)


def folder_defaults(folder: Path) -> dict:
    """A pipeline folder's generation defaults as a run records them (pipeline.json, read without weights)."""
    from dataclasses import asdict

    from tta.config import ConfigError, from_dict
    from tta.pipeline import PipelineDefaults, PipelineError, read_pipeline_json

    try:
        spec = read_pipeline_json(Path(folder))
        defaults = from_dict(PipelineDefaults, spec.get("defaults", {}), where="defaults")
    except (PipelineError, ConfigError, OSError) as e:
        raise SystemExit(f"{folder}: not a pipeline folder ({e})")
    return {k: v for k, v in asdict(defaults).items() if isinstance(v, (int, float, str))}


def recorded_runs(folder: Path, results: Path, paths: list[Path], k: int,
                  quiet: bool = False) -> list[tuple[str, dict]]:
    """The runs of `folder`'s weights and defaults recorded in `results`, as (source, one-model run) pairs.

    Only single runs ("recognisable", not merges) with the same judge and output_fit as the summaries at
    `paths` count, the earliest run of each seed. With summaries, exactly the seeds they hold are taken and each
    must be recorded; alone, every recorded seed written as this bench writes generations (OUTPUT_FIT) and
    judged as the earliest such run was: runs written otherwise are not the baseline of a run made now, and
    the seeds recorded only so are named in a note on stderr (unless `quiet`).
    """
    fp, defaults = fingerprint(Path(folder)), with_unset_defaults(folder_defaults(folder))
    cfp = config_fingerprint(Path(folder))
    others = read_summaries(paths)
    fit = same_output_fit(paths, others) or OUTPUT_FIT    # alone: as a run made now writes its generations
    judge = same_judges(paths, others)
    wanted = sorted({s for run in others for m in run["models"] if m["per_prompt"]
                     for s in (m.get("seeds") or run_seeds(run["settings"]))})
    held = {s for run in others for m in run["models"] if m.get("fingerprint") == fp and same_configs(m, cfp)
            and with_unset_defaults(m["defaults"]) == defaults for s in (m.get("seeds") or run_seeds(run["settings"]))}
    try:
        lines = Path(results).read_text().splitlines()
    except OSError as e:
        raise SystemExit(f"{results}: cannot read the recorded results ({e})")
    taken, out = set(held), []
    other_fit: dict[int, str] = {}        # seed -> the output_fit of a run passed over for it
    for n, line in enumerate(lines, 1):
        try:
            run = json.loads(line)
        except ValueError:
            continue
        if not isinstance(run, dict) or run.get("bench") != "recognisable" or run["settings"].get("k", k) != k:
            continue
        if judge and not same_judge(run["settings"], judge):
            continue
        for m in run["models"]:
            if (m.get("fingerprint") != fp or not same_configs(m, cfp)
                    or with_unset_defaults(m["defaults"]) != defaults or not m["per_prompt"]):
                continue
            seeds = m.get("seeds") or run_seeds(run["settings"])
            if set(seeds) & taken or (wanted and not set(seeds) <= set(wanted)):
                continue
            if output_fit(run) != fit:
                other_fit.update(dict.fromkeys(seeds, output_fit(run)))
                continue
            if not judge:                     # alone: the judge (its labels too) of the earliest such run
                judge = run["settings"]
            taken |= set(seeds)
            out.append((f"{relative(Path(results))}:{n}", {**run, "models": [m]}))
    missing = sorted(set(wanted) - taken)
    unfit = [s for s in missing if s in other_fit]
    if unfit:
        rerun = (f"a baseline must be rerun with this bench (--model {folder} --seed-start {unfit[0]})"
                 if fit == "generate" else "rerun the summaries' models with this bench")
        raise SystemExit(f"{folder}: its runs in {results} on seed(s) {unfit[:5]}"
                         f"{' ...' if len(unfit) > 5 else ''} were judged with settings.output_fit "
                         f"{other_fit[unfit[0]]!r}, not {fit!r} as the summaries (absent: 'pipeline', clips as the "
                         f"pipeline returned them); {rerun}")
    if missing:
        raise SystemExit(f"{folder}: no recorded run in {results} on seed(s) {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''} with the same judge; run it with --seed-start "
                         f"{missing[0]} (and whole runs of the seeds the summaries hold)")
    if not out and not held and other_fit:
        seeds = sorted(other_fit)
        raise SystemExit(f"{folder}: its runs in {results} (seed(s) {seeds[:5]}"
                         f"{' ...' if len(seeds) > 5 else ''}) were all judged with settings.output_fit "
                         f"{other_fit[seeds[0]]!r}, none with {fit!r} as this bench judges generations "
                         "(absent: 'pipeline', clips as the pipeline returned them); a baseline must be rerun "
                         f"with this bench (--model {folder} --seed-start {seeds[0]})")
    if not out and not held:
        raise SystemExit(f"{folder}: no run of its weights and defaults is recorded in {results}")
    dropped = sorted(set(other_fit) - taken)   # (with summaries, an error above)
    if dropped and not quiet:
        fits = sorted({other_fit[s] for s in dropped})
        print(f"note: {folder}: seed(s) {seed_spans(dropped)} of its runs in {results} left out of the baseline: "
              f"judged with settings.output_fit {' or '.join(map(repr, fits))}, not {fit!r} as this bench judges "
              "generations (absent: 'pipeline', clips as the pipeline returned them); rerun them with this bench "
              f"(--model {folder} --seed-start {dropped[0]}) to pool them", file=sys.stderr)
    return out


def seed_spans(seeds: list[int]) -> str:
    """Sorted seeds as runs of consecutive ones: [0, 1, 2, 5, 8, 9] -> "0-2, 5, 8-9"."""
    spans: list[list[int]] = []
    for s in seeds:
        if spans and s == spans[-1][1] + 1:
            spans[-1][1] = s
        else:
            spans.append([s, s])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in spans)


def with_unset_defaults(defaults: dict) -> dict:
    """A summary's generation defaults, with the ones recorded before they existed (guidance_rule) filled in."""
    from dataclasses import fields

    from tta.pipeline import PipelineDefaults

    base = {f.name: getattr(PipelineDefaults(), f.name) for f in fields(PipelineDefaults)}
    return {**base, **defaults}


def folder_name(model: Path) -> str:
    """The wav folder name a run gives a model folder (after its index)."""
    return Path(model).resolve().name


def best_of_weights(n: int, g: int) -> np.ndarray:
    """w[r]: the chance that the generation ranked r (0 = highest score) of n is the best of a random g-subset."""
    from math import comb

    return np.array([comb(n - 1 - r, g - 1) for r in range(n)], dtype=np.float64) / comb(n, g)


def best_of_hit(score: np.ndarray, hit: np.ndarray, g: int) -> float:
    """Expected hit of the best-scored generation of a random g-subset of these (score, hit) generations."""
    return float(best_of_weights(len(hit), g) @ hit[np.argsort(-score, kind="stable")])


def best_of_estimates(m: dict, wavs: dict[str, list], gs: list[int], *, resamples: int = RESAMPLES,
                      seed: int = 0) -> dict:
    """hit@1 of keeping the best of G generations by the model's own CLAP, for each G in gs.

    Every prompt's judged generations are scored as the pipeline ranks candidates (cosine of the prompt's CLAP
    text embedding and the clip's CLAP audio embedding); the expected hit of the best of a random G-subset of
    them is exact (a weighted sum over the ranks). Seeds are resampled within each prompt for the interval of
    the gain over a single generation.
    """
    from eval.clap_score import cosine_scores
    from tta.audio import load_audio
    from tta.clap import load_clap

    folder = ROOT / m["model"]
    if not (folder / "text_encoder").is_dir():
        raise SystemExit(f"--best-of: {m['model']}: no pipeline folder with a text_encoder/ here")
    if not m.get("fingerprint"):
        raise SystemExit(f"--best-of: {m['model']} was judged before runs recorded the weights' fingerprint, so "
                         "its CLAP cannot be checked against the one that made its generations")
    if fingerprint(folder) != m["fingerprint"]:
        raise SystemExit(f"--best-of: {m['model']} holds other weights now than when it was judged")
    clap = load_clap(folder / "text_encoder")
    grids = []
    for p in m["per_prompt"]:
        paths = wavs[p["label"]]
        missing = [w for w in paths if w is None or not Path(w).is_file()]
        if missing:
            raise SystemExit(f"--best-of: {m['model']}, {p['label']}: generation {missing[0] or '(of a merged summary)'} "
                             "not found; merge the runs' own summaries, next to their wav folders")
        audio = clap.embed_audio([load_audio(w, clap.sample_rate)[0] for w in paths], clap.sample_rate)
        text = np.repeat(np.asarray(clap.embed_text([p["prompt"]])), len(paths), axis=0)
        grids.append((cosine_scores(text, audio), np.array(hits_of(p), dtype=np.float64)))
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(h), size=(resamples, len(h))) for _, h in grids]
    out = {}
    for g in gs:
        if any(len(h) < g for _, h in grids):
            raise SystemExit(f"--best-of {g}: {m['model']} has fewer than {g} generations of a prompt")
        est = np.mean([best_of_hit(sc, h, g) for sc, h in grids])
        gains = np.mean([[best_of_hit(sc[d], h[d], g) - h[d].mean() for d in draw]
                         for (sc, h), draw in zip(grids, draws)], axis=0)
        out[str(g)] = {"hit@1": round(float(est), 4), "gain": round(float(est - np.mean([h.mean() for _, h in grids])), 4),
                       "gain_ci95": [round(float(np.percentile(gains, 2.5)), 4),
                                     round(float(np.percentile(gains, 97.5)), 4)]}
    return out


def fingerprint(folder: Path) -> str:
    """sha256 (16 hex) over a pipeline folder's weight files, so merged runs can tell its versions apart."""
    h = hashlib.sha256()
    for f in sorted(Path(folder).rglob("*.safetensors")):
        h.update(f.relative_to(folder).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def config_fingerprint(folder: Path) -> str:
    """sha256 (16 hex) over the components' JSON files (not the top-level pipeline.json, whose generation
    defaults are compared on their own): two folders with the same weights but, say, another Griffin-Lim
    `n_iter` differ here. Runs recorded before 2026-12-05 carry none and match any."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(folder).rglob("*.json") if p.parent != Path(folder)):
        h.update(f.relative_to(folder).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def same_configs(m: dict, cfp: str | None) -> bool:
    """A judged model entry matches config fingerprint `cfp` (an entry or a cfp without one matches any)."""
    return not m.get("config_fingerprint") or not cfp or m["config_fingerprint"] == cfp


def report(summary: dict, k: int) -> None:
    held = summary.get("real_held_out") or {}
    print(f"chance {summary.get('chance') or 0:.3f}; real held-out ({held.get('clips')} clips) hit@1 {held.get('hit@1')}")
    if "real_train_leave_one_out" in summary:
        t = summary["real_train_leave_one_out"]
        print(f"real training clips of the prompts' labels, leave-one-out ({t['clips']} clips): hit@1 {t['hit@1']}")
    for t in summary.get("training_items", []):
        print(f"as training items of {t['config']} ({t['clips']} items): hit@1 {t['hit@1']}; "
              + ", ".join(f"{lab} {c['hit@1']}/{c['of']}" for lab, c in t["per_label"].items()))
    for m in summary["models"]:
        if m["per_prompt"]:
            gens = sum(p["of"] for p in m["per_prompt"])
            lo, hi = m.get("hit@1_ci95", (float("nan"), float("nan")))
            diff = (f"; minus the first model {m['hit@1_minus_first']:+.3f} [{m['hit@1_minus_first_ci95'][0]:+.3f}, "
                    f"{m['hit@1_minus_first_ci95'][1]:+.3f}]" if "hit@1_minus_first" in m else "")
            print(f"{m['model']}: hit@1 {m['hit@1']:.3f} [{lo:.3f}, {hi:.3f}]{diff}, vote@{k} {m[f'vote@{k}']:.3f} "
                  f"({gens} generations); " + ", ".join(f"{p['label']} {p['hit@1']}/{p['of']}" for p in m["per_prompt"]))
        for g, b in m.get("best_of", {}).items():
            print(f"  {m['model']}: best of {g} by its own CLAP (estimated from its judged seeds): hit@1 "
                  f"{b['hit@1']:.3f}, gain {b['gain']:+.3f} [{b['gain_ci95'][0]:+.3f}, {b['gain_ci95'][1]:+.3f}]")
        for part, r in m["held_out_resynthesised"].items():
            print(f"  {m['model']}: held-out real clips via {part}: hit@1 {r['hit@1']} cosine {r['cosine']}")
        for part, r in m.get("train_resynthesised", {}).items():
            print(f"  {m['model']}: training clips via {part}, leave-one-out: hit@1 {r['hit@1']} cosine "
                  f"{r['cosine']}; " + ", ".join(f"{lab} {c['hit@1']}/{c['of']}" for lab, c in r["per_label"].items()))
        if m["per_prompt"]:
            print("  nearest labels: " + "; ".join(f"{p['label']}: {' '.join(p['nearest'])}" for p in m["per_prompt"]))


def items_config(config: Path, manifest: Path):
    """The `data` section of a training config or run config.json, reading `manifest` instead of its own."""
    from tta.config import ConfigError, from_dict
    from tta.data.manifest import DataConfig

    try:
        data = json.loads(Path(config).read_text()).get("data")
        if not isinstance(data, dict):
            raise SystemExit(f"{config}: no `data` section (expected a training config or a run's config.json)")
        return from_dict(DataConfig, {**data, "manifest": str(manifest), "extra_manifests": [], "cache_dir": ""},
                         where=f"{config}: data")
    except (OSError, AttributeError, json.JSONDecodeError, ConfigError, ValueError) as e:
        raise SystemExit(f"{config}: {e}") from None


def item_wavs(data, ids: list[str], draws: int, sample_rate: int) -> list[np.ndarray]:
    """Each clip of `ids` drawn `draws` times (item seeds 0 .. draws - 1) as a training item of `data` (a
    DataConfig): repeated, gapped and cropped as a training run draws it, in the order of `ids`."""
    from tta.data.dataset import AudioDataset

    ds = AudioDataset.from_config(data, data.train_split, sample_rate, random_crop=True)
    where = {row.id: i for i, row in enumerate(ds.rows)}
    return [ds[(where[i], draw)]["wav"].numpy() for i in ids for draw in range(draws)]


def training_items(config: Path, data, ids: list[str], ref_index: list[int], labels: list[str], draws: int,
                   embedder, refs: np.ndarray, ref_labels: list[str], k: int, progress: bool) -> dict:
    """The clips `ids` drawn `draws` times each as training items with `data` (a DataConfig), trimmed like
    generations, judged leave-one-out (reference ref_index[i] removed)."""
    sr = 16_000
    wavs = [active(w, sr) for w in item_wavs(data, ids, draws, sr)]
    emb = pooled(embedder, wavs, sr, desc=f"aisfx training items of {Path(config).name}", progress=progress)
    every = [(ref, lab) for ref, lab in zip(ref_index, labels) for _ in range(draws)]
    js = [judge(e, refs, ref_labels, lab, k, exclude=ref) for e, (ref, lab) in zip(emb, every)]
    return {"config": relative(config), "draws": draws, "clips": len(js), **rates(js, k),
            "per_label": per_label(js, [lab for _, lab in every], k)}


def resynthesised(pipe, wavs: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each wav through the pipeline's vocoder alone, and through its VAE and vocoder (the parts' ceilings)."""
    return ([pipe.resynthesise(w, through="vocoder") for w in wavs],
            [pipe.resynthesise(w, through="vae") for w in wavs])


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.merge or args.baseline is not None:
        recorded = (recorded_runs(args.baseline, args.results, args.merge or [], args.k, quiet=args.quiet)
                    if args.baseline else [])
        return finish(merge(args.merge or [], args.k, args.out, args.best_of, recorded=recorded), args)
    import torch

    from eval.embedders import get_embedder
    from tta.audio import load_audio, save_audio
    from tta.data.manifest import read_manifest, resolve_path, split_rows
    from tta.generate import rank_written
    from tta.pipeline import TTAPipeline

    progress = not args.quiet
    torch.set_num_threads(args.threads)
    rows = read_manifest(args.manifest)
    item_data = [items_config(c, args.manifest) for c in args.items_ceiling]   # bad configs fail before any work
    real = lambda rs: [r for r in rs if r.source.startswith("debian:") and r.labels]
    train, held = real(split_rows(rows, "train")), real(split_rows(rows, "valid"))
    wanted = {label for _, label in PROMPTS}
    # the judge's clips: every real training clip of the prompts' labels, plus a seeded sample of the
    # others as distractors (embedding all ~2 500 takes half an hour on a busy 2-core CPU)
    others = sorted((r for r in train if r.labels[0] not in wanted), key=lambda r: r.id)
    rng = np.random.default_rng(0)
    keep = set(rng.choice(len(others), size=min(args.distractors, len(others)), replace=False).tolist())
    train = [r for r in train if r.labels[0] in wanted] + [r for i, r in enumerate(others) if i in keep]
    missing = sorted(label for label in wanted if not any(r.labels[0] == label for r in train))
    if missing:
        raise SystemExit(f"{args.manifest}: no training clips labelled {', '.join(missing)}")
    embedder = get_embedder("aisfx")
    sr = 16_000

    key = hashlib.sha256(Path(args.manifest).read_bytes() + embedder.identity.encode()
                         + str(args.distractors).encode()).hexdigest()[:16]
    cache = (args.cache_dir / f"recognisable-refs-{key}.npy") if args.cache_dir else None
    if cache is not None and cache.is_file():
        refs = np.load(cache)
    else:
        wavs = [load_audio(resolve_path(r, args.manifest), sr, normalize=True)[0] for r in train]
        refs = pooled(embedder, wavs, sr, desc="aisfx references", progress=progress)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, refs)
    ref_labels = [r.labels[0] for r in train]
    share = Counter(ref_labels)
    judged = [(prompt, label) for prompt, label in PROMPTS if not args.labels or label in args.labels]
    chance = float(np.mean([share[label] / len(train) for _, label in judged]))
    generation = dict(args.setting)      # what every model generates with instead of its defaults
    if args.guidance is not None:
        generation["guidance"] = args.guidance
    retrieval = {}                       # a datastore for retrieval models, recorded as part of their defaults
    if args.datastore is not None:
        retrieval = {"datastore": relative(args.datastore), **({"neighbours": args.neighbours}
                                                                if args.neighbours is not None else {})}

    held_rows = [r for r in held if r.labels[0] in wanted]
    held_wavs = [load_audio(resolve_path(r, args.manifest), sr, normalize=True)[0] for r in held_rows]
    held_emb = pooled(embedder, held_wavs, sr, desc="aisfx held-out", progress=progress)
    held_j = [judge(e, refs, ref_labels, r.labels[0], args.k) for e, r in zip(held_emb, held_rows)]

    summary = {"bench": "recognisable", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "machine": machine(), "versions": versions(),
               "settings": {"manifest": relative(args.manifest),
                            "manifest_sha256": hashlib.sha256(Path(args.manifest).read_bytes()).hexdigest(),
                            "seeds": args.seeds,
                            "seed_start": args.seed_start, "k": args.k,
                            "guidance": args.guidance, "generation": generation, "labels": args.labels,
                            "threads": args.threads, "embedder": embedder.identity, "trim_db": TRIM_DB,
                            "output_fit": OUTPUT_FIT,   # absent in older runs: clips as the pipeline gave
                            "reference_clips": len(train), "distractors": args.distractors, "prompts": [list(p) for p in PROMPTS]},
               "chance": round(chance, 4),
               "real_held_out": {"clips": len(held_rows), **rates(held_j, args.k)},
               "models": []}
    loo = [i for i, r in enumerate(train) if r.labels[0] in wanted]    # the prompts' labels among the refs
    loo_labels = [ref_labels[i] for i in loo]

    def leave_one_out(emb: np.ndarray) -> dict:
        js = [judge(e, refs, ref_labels, lab, args.k, exclude=i) for e, i, lab in zip(emb, loo, loo_labels)]
        return {"clips": len(js), **rates(js, args.k), "per_label": per_label(js, loo_labels, args.k)}

    if args.train_ceiling:
        loo_wavs = [load_audio(resolve_path(train[i], args.manifest), sr, normalize=True)[0] for i in loo]
        summary["real_train_leave_one_out"] = leave_one_out(refs[loo])
    if args.items_ceiling:
        summary["training_items"] = [
            training_items(config, data, [train[i].id for i in loo], loo, loo_labels, args.item_draws, embedder,
                           refs, ref_labels, args.k, progress)
            for config, data in zip(args.items_ceiling, item_data)]
    for model in args.model:
        pipe = TTAPipeline.from_pretrained(model)
        folder = args.out / f"{len(summary['models'])}-{folder_name(model)}"
        folder.mkdir(parents=True, exist_ok=True)
        ceilings = {}
        for part, wavs in zip(("vocoder", "vae+vocoder"), resynthesised(pipe, held_wavs)):
            emb = pooled(embedder, wavs, sr, desc=f"aisfx held-out via {part}", progress=False)
            ceilings[part] = rates([judge(e, refs, ref_labels, r.labels[0], args.k)
                                    for e, r in zip(emb, held_rows)], args.k)
            ceilings[part]["cosine"] = round(float(np.mean(np.sum(emb * held_emb, axis=1))), 4)  # unit rows
        train_ceilings = {}
        if args.train_ceiling:
            for part, wavs in zip(("vocoder", "vae+vocoder"), resynthesised(pipe, loo_wavs)):
                emb = pooled(embedder, wavs, sr, desc=f"aisfx training clips via {part}", progress=False)
                train_ceilings[part] = leave_one_out(emb)
                train_ceilings[part]["cosine"] = round(float(np.mean(np.sum(emb * refs[loo], axis=1))), 4)
        per_prompt = []
        for prompt, label in (judged if args.seeds > 0 else ()):
            # seed s's clip kept, fitted to full scale and judged as tta generate writes it (rank_written)
            out = pipe([prompt] * args.seeds, seed=args.seed_start, batch_size=args.seeds,
                       return_candidates=True, **generation,
                       **({"datastore": args.datastore, "neighbours": args.neighbours} if retrieval else {}))
            written = [rank_written(pipe, out, s, prompt, None)[0] for s in range(args.seeds)]
            clips = [active(np.asarray(w, dtype=np.float32), out.sample_rate) for w, _, _ in written]
            for s, (w, _, _) in enumerate(written):
                save_audio(folder / f"{label}-{args.seed_start + s}.wav", w, out.sample_rate)
            emb = pooled(embedder, clips, out.sample_rate, desc=f"aisfx {label}", progress=False)
            js = [judge(e, refs, ref_labels, label, args.k) for e in emb]
            per_prompt.append({"prompt": prompt, "label": label, "hit@1": sum(h for h, _ in js),
                               f"vote@{args.k}": sum(v for _, v in js), "of": len(js),
                               "nearest": [nearest(e, refs, ref_labels, 1)[0] for e in emb],
                               "active_seconds": [round(len(c) / out.sample_rate, 2) for c in clips],
                               "gains": [round(gain, 6) for _, gain, _ in written]})
        n = max(1, sum(p["of"] for p in per_prompt))
        summary["models"].append({
            "model": relative(model), "fingerprint": fingerprint(model),
            "config_fingerprint": config_fingerprint(model),
            "seeds": list(range(args.seed_start, args.seed_start + args.seeds)),
            "defaults": {**{k: v for k, v in vars(pipe.defaults).items() if isinstance(v, (int, float, str))},
                         **generation, **retrieval},
            "hit@1": round(sum(p["hit@1"] for p in per_prompt) / n, 4) if per_prompt else None,
            f"vote@{args.k}": round(sum(p[f"vote@{args.k}"] for p in per_prompt) / n, 4) if per_prompt else None,
            "held_out_resynthesised": ceilings, **({"train_resynthesised": train_ceilings} if train_ceilings else {}),
            "per_prompt": per_prompt})
        del pipe
    for m, extra in zip(summary["models"], intervals([m["per_prompt"] for m in summary["models"]])):
        m.update(extra)
    return finish(summary, args)


def finish(summary: dict, args: argparse.Namespace) -> dict:
    """Write --out/summary.json, append the summary to --results, print the report."""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    with open(args.results, "a") as f:
        f.write(json.dumps(summary) + "\n")
    report(summary, args.k)
    return summary


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
