"""A second judge of the recognisable bench's generations: YAMNet's AudioSet classes (issue 8).

bench/recognisable.py asks whether each generation's nearest real recording of the starter corpus (aisfx
embeddings) carries the prompt's label. That judge is independent of the model's own CLAP, but its references
are this project's corpus. This bench judges the same saved generations (the wavs recognisable.py writes to
its --out folders) with YAMNet (eval/yamnet.py), a classifier trained on AudioSet's ~2 M YouTube clips, which
owes nothing to the corpus.

Each judged label maps to AudioSet classes (LABEL_CLASSES; "elephant" has none in AudioSet's ontology and is
left out). YAMNet scores each 0.975 s window of a clip (hop 0.4875 s); a clip's score for a class is its
highest window's (an event anywhere in the clip counts), and its score for a label is the highest of the
label's classes.

  hit@1     the prompt's label scores highest among the judged labels (closed set; chance 1 / labels)
  named@5   one of the label's classes is among YAMNet's 5 highest of its 521 (open set)

The generations are judged as recognisable.py wrote them (not trimmed: windows of silence score as "Silence"
and do not raise any label), so runs written otherwise are not judged together: settings.output_fit "generate"
(as tta generate writes them) or, absent in older runs, "pipeline" (saved clipped). With --manifest, the
manifest's real recordings of those labels (rows from Debian packages, training and held-out splits) are judged the same way: what the judge makes of real audio; --ceiling
MODEL judges them through MODEL's vocoder alone and through its VAE and vocoder as well (what a generation
through those parts could reach). Per model, hit@1 comes with a 95 % bootstrap interval over seeds and, for
every model after the first judged on the same prompts and seeds, the paired difference from the first (the
intervals of bench/recognisable.py). Each model's runs are pooled (same folder, weights and component configs
fingerprints and generation defaults); the aisfx judge's verdicts saved in the runs' summaries are set beside
YAMNet's, per label (both, aisfx only, YAMNet only), and each label's precision (right verdicts / times YAMNet
gave that label to any of the model's generations) shows which labels YAMNet gives too freely.

Writes --out/summary.json and appends it to bench/results.jsonl.

Usage: .venv/bin/python bench/audioset_judge.py --run RUN1 [RUN2 ...] [--manifest MANIFEST] [--ceiling MODEL]
           --out DIR
       (RUN: an --out folder of bench/recognisable.py, holding summary.json and the models' wav folders)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.default_quality import machine, versions
from bench.recognisable import (config_print_of, folder_name, intervals, output_fit, recorded_config_prints,
                                 relative)

# judged label -> AudioSet classes (YAMNet's class names) that name it; a class belongs to one label only
LABEL_CLASSES: dict[str, tuple[str, ...]] = {
    "dog": ("Dog", "Bark", "Yip", "Bow-wow", "Whimper (dog)"),
    "wolf": ("Howl", "Growling", "Canidae, dogs, wolves"),
    "cow": ("Cattle, bovinae", "Moo"),
    "sheep": ("Sheep", "Bleat"),
    "pig": ("Pig", "Oink"),
    "horse": ("Horse", "Clip-clop", "Neigh, whinny"),
    "chicken": ("Fowl", "Chicken, rooster", "Cluck", "Crowing, cock-a-doodle-doo"),
    "birds": ("Bird", "Bird vocalization, bird call, bird song", "Chirp, tweet", "Pigeon, dove", "Crow",
              "Bird flight, flapping wings"),
    "rain": ("Rain", "Raindrop", "Rain on surface"),
    "thunder": ("Thunderstorm", "Thunder"),
    "fire": ("Fire", "Crackle"),
    "explosion": ("Explosion", "Boom"),
    "footsteps": ("Walk, footsteps", "Run", "Shuffle"),
    "chopping": ("Chopping (food)", "Chop", "Wood"),
}
TOP = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, nargs="+", required=True,
                    help="--out folders of bench/recognisable.py (summary.json + the models' wav folders)")
    ap.add_argument("--manifest", type=Path, help="also judge this manifest's real recordings of the labels")
    ap.add_argument("--ceiling", type=Path, action="append", default=[], metavar="MODEL",
                    help="also judge --manifest's real clips through MODEL's vocoder, and its VAE and vocoder")
    ap.add_argument("--yamnet", help="YAMNet TFLite file (default $TTA_YAMNET, else the venv's copy)")
    ap.add_argument("--pool", choices=("max", "mean"), default="max", help="windows -> clip score")
    ap.add_argument("--threads", type=int, default=1, help="TFLite interpreter threads")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "audioset_judge")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results.jsonl")
    ap.add_argument("--quiet", action="store_true")
    return ap.parse_args(argv)


class Judge:
    """YAMNet's verdicts on clips for a fixed set of labels."""

    def __init__(self, yamnet, labels: list[str], pool: str = "max"):
        self.yamnet, self.labels, self.pool = yamnet, labels, pool
        self.classes = {lab: [yamnet.index(c) for c in LABEL_CLASSES[lab]] for lab in labels}

    def __call__(self, wav: np.ndarray, sample_rate: int) -> dict:
        s = self.yamnet.clip_scores(wav, sample_rate, pool=self.pool)
        by_label = {lab: float(s[idx].max()) for lab, idx in self.classes.items()}
        top = set(np.argsort(-s, kind="stable")[:TOP].tolist())
        return {"predicted": max(self.labels, key=lambda lab: by_label[lab]),   # first label wins ties
                "named": sorted(lab for lab, idx in self.classes.items() if top & set(idx)),
                "top": [self.yamnet.labels[i] for i in np.argsort(-s, kind="stable")[:3]],
                "scores": {lab: round(v, 4) for lab, v in by_label.items()}}


def read_run(folder: Path) -> dict:
    path = folder / "summary.json"
    try:
        run = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"{path}: not a readable summary.json ({e})") from None
    if not isinstance(run, dict) or run.get("bench") != "recognisable" or not isinstance(run.get("models"), list):
        raise SystemExit(f"{path}: not a summary of one bench/recognisable.py run (merged summaries hold no wavs)")
    return run


def model_key(m: dict, config_prints: dict) -> tuple[str, str | None]:
    """Runs of one folder pool: the same path, weights, component configs (when recorded) and defaults.

    A run recorded before the component configs were fingerprinted takes the fingerprint of another run of the
    same folder and weights (`config_prints`), as bench/recognisable.py's --merge does. Returns the key and the
    configs' fingerprint.
    """
    cfp = config_print_of(m, config_prints)
    return json.dumps([m["model"], m.get("fingerprint"), cfp, m.get("defaults")], sort_keys=True), cfp


def judge_runs(runs: list[tuple[Path, dict]], judge: Judge, progress: bool) -> list[dict]:
    """Per model (pooled over runs, first-seen order): per label, the seeds and both judges' verdicts."""
    from tqdm.auto import tqdm

    from tta.audio import load_audio

    models: dict[str, dict] = {}
    jobs = []
    config_prints = recorded_config_prints([run for _, run in runs])
    for folder, run in runs:
        for i, m in enumerate(run["models"]):
            key, cfp = model_key(m, config_prints)
            entry = models.setdefault(key, {"model": m["model"], "fingerprint": m.get("fingerprint"),
                                            "config_fingerprint": cfp, "defaults": m.get("defaults"),
                                            "runs": [], "labels": defaultdict(dict)})
            entry["runs"].append(relative(folder))
            wav_dir = folder / f"{i}-{folder_name(m['model'])}"
            seeds = m.get("seeds") or []
            for p in m.get("per_prompt", []):
                if p["label"] not in judge.labels:
                    continue
                if len(seeds) != len(p["nearest"]):
                    raise SystemExit(f"{folder}/summary.json: {m['model']} {p['label']}: {len(p['nearest'])} "
                                     f"verdicts for {len(seeds)} seeds")
                for seed, nearest in zip(seeds, p["nearest"]):
                    if seed in entry["labels"][p["label"]]:   # two runs of one model on one seed: refuse, as
                        raise SystemExit(f"{folder}/summary.json: {m['model']} {p['label']} seed {seed} was already "
                                         "judged in an earlier run given; pass each seed once")   # --merge does
                    entry["labels"][p["label"]][seed] = None
                    wav = wav_dir / f"{p['label']}-{seed}.wav"
                    if not wav.is_file():
                        raise SystemExit(f"{wav}: generation missing (the run's wav folder is incomplete)")
                    jobs.append((entry, p["label"], p["prompt"], seed, nearest, wav))
    for entry, label, prompt, seed, nearest, wav in tqdm(jobs, desc="YAMNet generations", unit="clip",
                                                          disable=not progress):
        w, sr = load_audio(wav)
        v = judge(w, sr)
        entry["labels"][label].setdefault("prompt", prompt)
        entry["labels"][label][seed] = {"aisfx": nearest == label, **v}
    return list(models.values())


def model_summary(entry: dict) -> dict:
    per_prompt, agreement = [], {}
    for label, by_seed in entry["labels"].items():
        seeds = sorted(s for s in by_seed if s != "prompt")
        vs = [by_seed[s] for s in seeds]
        hits = [v["predicted"] == label for v in vs]
        per_prompt.append({"prompt": by_seed["prompt"], "label": label, "of": len(vs), "hit@1": sum(hits),
                           f"named@{TOP}": sum(label in v["named"] for v in vs),
                           "nearest": [v["predicted"] for v in vs], "seeds": seeds,
                           "confused_with": dict(Counter(v["predicted"] for v in vs if v["predicted"] != label)
                                                 .most_common(3)),
                           "top_classes": dict(Counter(c for v in vs for c in v["top"][:1]).most_common(3))})
        a = [v["aisfx"] for v in vs]
        agreement[label] = {"both": sum(x and y for x, y in zip(a, hits)),
                            "aisfx_only": sum(x and not y for x, y in zip(a, hits)),
                            "yamnet_only": sum(y and not x for x, y in zip(a, hits)), "of": len(vs)}
    n = max(1, sum(p["of"] for p in per_prompt))
    predicted = Counter(lab for p in per_prompt for lab in p["nearest"])
    precision = {p["label"]: [p["hit@1"], predicted[p["label"]]] for p in per_prompt}
    aisfx = sum(g["both"] + g["aisfx_only"] for g in agreement.values())
    return {"model": entry["model"], "fingerprint": entry["fingerprint"],
            "config_fingerprint": entry["config_fingerprint"], "defaults": entry["defaults"],
            "runs": entry["runs"], "generations": n,
            "hit@1": round(sum(p["hit@1"] for p in per_prompt) / n, 4),
            f"named@{TOP}": round(sum(p[f"named@{TOP}"] for p in per_prompt) / n, 4),
            "aisfx_hit@1_same_clips": round(aisfx / n, 4),
            "per_prompt": per_prompt, "agreement": agreement,
            "precision": precision}    # label: [right, times YAMNet gave it to any of the model's generations]


def real_clips(manifest: Path, labels: list[str], judge: Judge, progress: bool, through=None,
               desc: str = "real clips") -> dict:
    """The manifest's real recordings of `labels` (16 kHz), each passed through `through` (wav -> wav) first
    when given, judged like generations."""
    from tqdm.auto import tqdm

    from tta.audio import load_audio
    from tta.data.manifest import read_manifest, resolve_path

    rows = [r for r in read_manifest(manifest)
            if r.source.startswith("debian:") and r.labels and r.labels[0] in labels]
    per = defaultdict(lambda: {"hit@1": 0, f"named@{TOP}": 0, "of": 0, "given": 0})
    for r in tqdm(rows, desc=f"YAMNet {desc}", unit="clip", disable=not progress):
        w, sr = load_audio(resolve_path(r, manifest), 16_000)
        if through is not None:
            w = np.asarray(through(w), dtype=np.float32)
        v = judge(w, sr)
        c = per[r.labels[0]]
        c["of"] += 1
        per[v["predicted"]]["given"] += 1
        c["hit@1"] += v["predicted"] == r.labels[0]
        c[f"named@{TOP}"] += r.labels[0] in v["named"]
    n = max(1, len(rows))
    return {"clips": len(rows), "hit@1": round(sum(c["hit@1"] for c in per.values()) / n, 4),
            f"named@{TOP}": round(sum(c[f"named@{TOP}"] for c in per.values()) / n, 4),
            "per_label": {lab: per[lab] for lab in sorted(per) if per[lab]["of"]}}


def report(summary: dict) -> None:
    s = summary["settings"]
    print(f"YAMNet judge ({s['judge']}, pool {s['pool']}), {len(s['labels'])} labels, "
          f"chance {summary['chance']:.3f}")
    if "real" in summary:
        r = summary["real"]
        print(f"real recordings ({r['clips']} clips): hit@1 {r['hit@1']:.3f}, "
              f"named@{TOP} {r[f'named@{TOP}']:.3f}; "
              + ", ".join(f"{lab} {c['hit@1']}/{c['of']}" for lab, c in r["per_label"].items()))
    for c in summary.get("ceilings", []):
        for part in ("vocoder", "vae"):
            r = c[part]
            print(f"  real recordings via {c['model']}'s {'VAE and vocoder' if part == 'vae' else 'vocoder'}: "
                  f"hit@1 {r['hit@1']:.3f}, named@{TOP} {r[f'named@{TOP}']:.3f}; "
                  + ", ".join(f"{lab} {x['hit@1']}/{x['of']}" for lab, x in r["per_label"].items()))
    for m in summary["models"]:
        lo, hi = m.get("hit@1_ci95", (float("nan"), float("nan")))
        diff = (f"; minus the first {m['hit@1_minus_first']:+.3f} [{m['hit@1_minus_first_ci95'][0]:+.3f}, "
                f"{m['hit@1_minus_first_ci95'][1]:+.3f}]" if "hit@1_minus_first" in m else "")
        print(f"{m['model']}: hit@1 {m['hit@1']:.3f} [{lo:.3f}, {hi:.3f}]{diff}, "
              f"named@{TOP} {m[f'named@{TOP}']:.3f} ({m['generations']} generations; "
              f"aisfx judge on the same clips {m['aisfx_hit@1_same_clips']:.3f}); "
              + ", ".join(f"{p['label']} {p['hit@1']}/{p['of']}" for p in m["per_prompt"]))
        print("  precision (right / given): "
              + ", ".join(f"{lab} {a}/{b}" for lab, (a, b) in m["precision"].items()))
        print("  both judges / aisfx only / YAMNet only: "
              + ", ".join(f"{lab} {a['both']}/{a['aisfx_only']}/{a['yamnet_only']}"
                          for lab, a in m["agreement"].items()))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from eval.yamnet import Yamnet, YamnetError

    runs = [(folder, read_run(folder)) for folder in args.run]
    judged = [p[1] for p in runs[0][1]["settings"]["prompts"]]
    for folder, run in runs[1:]:
        if [p[1] for p in run["settings"]["prompts"]] != judged:
            raise SystemExit(f"{folder}/summary.json: other prompts than {args.run[0]}'s")
    fit = output_fit(runs[0][1])         # the runs' wavs were saved as tta generate writes them, or clipped
    for folder, run in runs[1:]:
        if output_fit(run) != fit:
            raise SystemExit(f"{folder}/summary.json: saved with settings.output_fit {output_fit(run)!r}, not "
                             f"{fit!r} as {args.run[0]}'s (absent: 'pipeline', clipped as the pipeline returned "
                             "them); judge runs written alike")
    labels = [lab for lab in judged if lab in LABEL_CLASSES]
    try:
        judge = Judge(Yamnet(args.yamnet, threads=args.threads), labels, args.pool)
    except YamnetError as e:
        raise SystemExit(f"audioset_judge: {e}") from None
    progress = not args.quiet
    models = [model_summary(e) for e in judge_runs(runs, judge, progress)]
    for m in models:     # the same seeds in the same order for every prompt, as intervals() pairs them
        m["per_prompt"].sort(key=lambda p: labels.index(p["label"]))
    seeds = [[tuple(p["seeds"]) for p in m["per_prompt"]] for m in models]
    for m, extra in zip(models, intervals([m["per_prompt"] for m in models], seeds)):
        m.update(extra)
    summary = {"bench": "audioset_judge", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "machine": machine(), "versions": versions(),
               "settings": {"runs": [relative(f) for f in args.run], "judge": judge.yamnet.identity,
                            "pool": args.pool, "output_fit": fit, "window": 15_600, "hop": 7_800, "top": TOP,
                            "labels": labels,
                            "label_classes": {lab: list(LABEL_CLASSES[lab]) for lab in labels},
                            "left_out": [lab for lab in judged if lab not in LABEL_CLASSES]},
               "chance": round(1 / len(labels), 4), "models": models}
    if args.manifest is not None:
        summary["settings"]["manifest"] = relative(args.manifest)
        summary["settings"]["manifest_sha256"] = hashlib.sha256(Path(args.manifest).read_bytes()).hexdigest()
        summary["real"] = real_clips(args.manifest, labels, judge, progress)
        summary["ceilings"] = []
        for model in args.ceiling:
            from tta.pipeline import TTAPipeline

            pipe = TTAPipeline.from_pretrained(model)
            summary["ceilings"].append({"model": relative(model), **{
                part: real_clips(args.manifest, labels, judge, progress, desc=f"real clips via {part}",
                                 through=lambda w, part=part: pipe.resynthesise(w, through=part))
                for part in ("vocoder", "vae")}})
    elif args.ceiling:
        raise SystemExit("audioset_judge: --ceiling needs --manifest (the real clips to resynthesise)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    with open(args.results, "a") as f:
        f.write(json.dumps(summary) + "\n")
    report(summary)
    return summary


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
