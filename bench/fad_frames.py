"""How far apart may two FADs' generated frame counts be for `tta report` to rank them?

eval/report.py ranks two FADs only when their generated frame counts are within FAD_FRAMES_SPREAD of each other,
because FAD's small-sample bias goes as 1/n (Chong & Forsyth 2020): a run with fewer frames scores worse for
that alone. This measures whether a 10 % frame difference moves FAD by less than the run-to-run noise of one FAD.

Two sets of real audio are embedded by tta eval's own path (eval.run.embed_folder: 16-bit reading, resampling,
the embedding cache) with each embedder asked for; the reference statistics are those of the whole reference
set (what tta eval computes), and the generated set is the pool runs are drawn from. For a ladder of frame
counts n (`--top` of the pool, and 1/1.25, 1/1.5, 1/2, 1/4 of that, each with its partner n/1.1), --draws
random subsets are drawn without replacement (seeded) and scored with eval/fad.py (the generated statistics
from summed frames, as tta eval's FrechetDistanceMetric keeps them). The subsets of one draw are nested (the
first n/1.1 of the first n), so the 10 % bias step is measured as a paired difference, with little noise of
its own. Two ways of drawing: "clips" takes whole files in random order (the frames of a clip move together,
as between runs; the last clip is cut to make n exactly, as tta eval's FAD-inf draws) and "frames" takes frame
rows independently (as eval/fad.py's fad_infinity does without clip_frames).

Per n it reports the mean FAD, the std across draws and the bounds on the std of one independent run of n
frames (subsets of one pool vary less than independent sets: between the std across draws and that over
sqrt(1 - n/N), see summarise), the paired step from n to n/1.1 against (a) that std and (b) the FAD, and the
spread at which the bias step would equal one std (1 + 0.1 x std / step). The slope of the mean FAD in 1/n is
fitted over the rungs with more than D frames, and eval/fad.py's fad_infinity fit is run on the same pool and
sizes as tta eval runs it (whole clips, FAD_INF_DRAWS draws per size).

Usage: .venv/bin/python bench/fad_frames.py --generated DIR|MANIFEST [...] (--reference DIR|MANIFEST [...] |
       --halves) [--embedders aisfx,mfcc] [--draws 60] [--top 0.5] [--seed 0] [--threads 1] [--cache-dir DIR]
`--halves` splits the generated files into two sets (even and odd in path order): a model as good as can be.
Set OMP_NUM_THREADS too: numpy's eigendecompositions are most of the time once the embeddings are cached.
Prints a table per embedder and way of drawing, and appends one JSON line to --results (bench/results.jsonl).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASES = (1.0, 1.25, 1.5, 2.0, 4.0)   # the rungs below the top: n = top / base, each with its partner n / STEP
STEP = 1.1                           # eval/report.py's FAD_FRAMES_SPREAD as it was when this was written
INF_KEYS = ("fad_inf", "fad_inf_se", "slope", "r2", "sizes", "draws", "unit")   # of fad_infinity's record


def ladder(top: int, bases=BASES, step: float = STEP) -> list[int]:
    """Frame counts to draw, ascending: top / base and its partner top / base / step, for every base (>= 2)."""
    sizes = {int(round(top / b / s)) for b in bases for s in (1.0, step)}
    return sorted(n for n in sizes if n >= 2)


def draw_fads(frames: np.ndarray, clip_frames: list[int] | None, sizes: list[int], reference, *, draws: int,
              seed: int = 0) -> np.ndarray:
    """FAD of `draws` random subsets of `frames` (N, D) against `reference` (eval.fad.FrechetStats) at each of
    `sizes` -> (draws, len(sizes)). The subsets of one draw are nested prefixes of one random order: of whole
    clips (`clip_frames`: frames per clip, in row order; the last clip cut to the size) or, with None, of rows.
    The statistics are summed frame by frame, as tta eval's FrechetDistanceMetric does: eval/fad.py's
    nested_subset_distances, which fad_infinity draws with."""
    from eval.fad import nested_subset_distances

    sizes = sorted(sizes)
    if sizes[0] < 2 or sizes[-1] > len(frames):
        raise ValueError(f"sizes must lie in [2, {len(frames)}], got {sizes[0]} to {sizes[-1]}")
    if clip_frames is not None and sum(clip_frames) != len(frames):
        raise ValueError(f"clip_frames add up to {sum(clip_frames)} frames, not the {len(frames)} given")
    return nested_subset_distances(np.asarray(frames, dtype=np.float64), reference, sizes, draws, clip_frames, seed)


def summarise(values: np.ndarray, sizes: list[int], pool: int, dim: int, step: float = STEP) -> dict:
    """Per rung: the mean FAD, its std across draws and the bounds on the std of one independent run of n frames;
    where the rung has a partner n / step: the paired bias step (mean, standard error), set against the FAD and
    against the std ([low, high]: step - 2 se over the upper std bound, step + 2 se over the lower one), and the
    spread at which the step would equal the std (from the two bounds; None where the step is within 2 se of 0).
    Plus the fit of the mean FAD in 1/n over the rungs with more than `dim` frames (slope, intercept, r2).

    Subsets of one pool vary less than independent sets: by the law of total variance the std of an independent
    run lies between the std across draws and that over sqrt(1 - n/N) (the pool's own FAD varies at most n/N as
    much as one of n frames, when the variance falls as 1/n or faster); the bound is reached when the terms
    linear in the frames dominate (sets far apart), the std across draws when the quadratic ones do."""
    sizes = list(sizes)
    mean, sd = values.mean(axis=0), values.std(axis=0, ddof=1)
    fit_at = [k for k, n in enumerate(sizes) if n > dim]
    fit = None
    if len(fit_at) >= 2:
        inv = 1.0 / np.asarray([sizes[k] for k in fit_at], dtype=np.float64)
        slope, intercept = np.polyfit(inv, mean[fit_at], 1)
        resid = mean[fit_at] - (slope * inv + intercept)
        spread = ((mean[fit_at] - mean[fit_at].mean()) ** 2).sum()
        fit = {"slope": float(slope), "intercept": float(intercept), "sizes": [sizes[k] for k in fit_at],
               "r2": float(1.0 - (resid ** 2).sum() / spread) if spread > 0 else 1.0}
    rungs = []
    for k, n in enumerate(sizes):
        low, high = float(sd[k]), float(sd[k] / np.sqrt(1.0 - n / pool)) if n < pool else None
        rung = {"n": n, "mean": float(mean[k]), "sd_draws": low, "sd_run_high": high}
        partner = int(round(n / step))
        if partner in sizes and partner != n and high:
            diff = values[:, sizes.index(partner)] - values[:, k]
            d, se = float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))
            rung.update(partner=partner, step=d, step_se=se, step_over_fad=d / float(mean[k]),
                        step_fit=fit["slope"] * (1.0 / partner - 1.0 / n) if fit else None,
                        step_over_sd=[(d - 2 * se) / high, (d + 2 * se) / low],
                        spread_at_one_sd=([1.0 + (step - 1.0) * low / d, 1.0 + (step - 1.0) * high / d]
                                          if d > 2 * se else None))
        rungs.append(rung)
    return {"fit": fit, "rungs": rungs}


def verdict(summary: dict, dim: int, min_frames_per_dim: int) -> dict:
    """The 10 % question over the rungs with a partner, those without tta eval's few-frames warning (>= 5 x D)
    when there are any, else all (`over` says which): the largest step / std ([low, high] as in summarise) and
    step / FAD, the spread at which the step equals one std at the tightest rung, and whether the step is within
    the noise (True: high < 1 at every rung; False: low > 1 at one; None: not told apart)."""
    paired = [r for r in summary["rungs"] if "step" in r]
    enough = [r for r in paired if r["n"] >= min_frames_per_dim * dim]
    use = enough or paired
    if not use:
        return {"over": "no rung with a partner", "n": [], "ten_percent_within_noise": None}
    low, high = max(r["step_over_sd"][0] for r in use), max(r["step_over_sd"][1] for r in use)
    spreads = [r["spread_at_one_sd"] for r in use if r["spread_at_one_sd"]]
    return {"over": f"n >= {min_frames_per_dim} x D" if enough else "all rungs (none has 5 x D frames)",
            "n": [r["n"] for r in use], "max_step_over_sd": [low, high],
            "max_step_over_fad": max(r["step_over_fad"] for r in use),
            "spread_at_one_sd": min(spreads, key=lambda s: s[1]) if spreads else None,
            "ten_percent_within_noise": True if high < 1.0 else False if low > 1.0 else None}


# ----------------------------------------------------------------------------------------------- inputs


def audio_files(paths: list[Path]) -> list[Path]:
    """The audio files of folders (all under them, as tta eval lists them) and manifests (.jsonl rows)."""
    from eval.run import list_audio
    from tta.data.manifest import read_manifest, resolve_path

    files: list[Path] = []
    for path in paths:
        if path.suffix == ".jsonl":
            files += [resolve_path(row, path) for row in read_manifest(path)]
        else:
            files += list_audio(path, "input")
    return files


def link_folder(files: list[Path], folder: Path) -> Path:
    """A folder of links to `files` (names numbered: files of several inputs may share a name), for
    eval.run.embed_folder, which reads a folder as tta eval does."""
    folder.mkdir(parents=True)
    for i, path in enumerate(files):
        (folder / f"{i:05d}_{path.name}").symlink_to(path.resolve())
    return folder


def display(path: Path) -> str:
    """A path as the record names it: relative to the repository while that stays inside its parent folder,
    else its last three parts (no path of this machine goes into bench/results.jsonl)."""
    rel = os.path.relpath(path.resolve(), ROOT)
    return rel if not rel.startswith("../..") else ".../" + "/".join(path.resolve().parts[-3:])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--generated", type=Path, nargs="+", required=True, help="folders / manifests: the pool")
    ap.add_argument("--reference", type=Path, nargs="+", help="folders / manifests: the reference set")
    ap.add_argument("--halves", action="store_true", help="no --reference: split the generated files in two")
    ap.add_argument("--label", default="", help="what the two sets are, for the record")
    ap.add_argument("--embedders", default="aisfx,mfcc", help="comma-separated (default aisfx,mfcc)")
    ap.add_argument("--units", default="clips,frames", help="ways of drawing: clips, frames (default both)")
    ap.add_argument("--draws", type=int, default=60, help="random subsets per frame count (default 60)")
    ap.add_argument("--top", type=float, default=0.5, help="largest count as a fraction of the pool (default 0.5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--cache-dir", type=Path, help="embedding cache root (default: tta eval's)")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results.jsonl")
    args = ap.parse_args(argv)
    if bool(args.reference) == args.halves:
        ap.error("give --reference, or --halves to split the generated files in two")
    if args.draws < 3 or not 0 < args.top < 1:
        ap.error("--draws must be >= 3 and --top a fraction in (0, 1): all N of N frames are one subset")
    bad = set(args.units.split(",")) - {"clips", "frames"}
    if bad:
        ap.error(f"--units: unknown {sorted(bad)}; valid: clips, frames")
    return args


def embed(files: list[Path], embedder, cache_root: Path | None, tmp: Path, what: str):
    """(frames (N, D), frames per clip, the set's protocol fields) through eval.run.embed_folder."""
    from eval.cache import EmbeddingCache
    from eval.run import embed_folder

    cache = EmbeddingCache(cache_root, embedder.identity) if cache_root else None
    folder = tmp / f"{what}-{embedder.name}"
    emb = embed_folder(link_folder(files, folder), embedder, cache, what=what, progress=True)
    keys = emb.in_file_order()
    proto = emb.protocol()
    return (np.concatenate([emb.embeddings[k] for k in keys]), [int(emb.embeddings[k].shape[0]) for k in keys],
            {"files_used": proto["files_used"], "files_skipped": proto["files_skipped"],
             "content_sha256": proto.get("content_sha256"), "seconds": round(sum(emb.seconds.values()), 1)})


def measure(args, embedder, gen_files, ref_files, cache_root, tmp) -> list[dict]:
    from eval.breakdown import MIN_FRAMES_PER_DIM
    from eval.fad import FrechetStats, StatsError, fad_infinity

    gen, clip_frames, gen_proto = embed(gen_files, embedder, cache_root, tmp, "generated")
    ref, _, ref_proto = embed(ref_files, embedder, cache_root, tmp, "reference")
    reference = FrechetStats.from_embeddings(ref)
    full = FrechetStats.from_sums(len(gen), gen.sum(axis=0), gen.T @ gen).distance(reference)
    sizes = ladder(int(args.top * len(gen)))
    try:
        default_inf = fad_infinity(gen, reference, clip_frames=clip_frames, seed=args.seed)
        default_inf = {k: default_inf[k] for k in INF_KEYS}
    except StatsError as e:
        default_inf = {"skipped": str(e)}
    try:    # fewer than two rungs above D: no line to fit
        same_inf = fad_infinity(gen, reference, sizes=tuple(s for s in sizes if s > embedder.dim),
                                clip_frames=clip_frames, seed=args.seed)
        same_inf = {k: same_inf[k] for k in INF_KEYS}
    except ValueError as e:
        same_inf = {"skipped": str(e)}
    out = []
    for unit in args.units.split(","):
        t0 = time.perf_counter()
        values = draw_fads(gen, clip_frames if unit == "clips" else None, sizes, reference, draws=args.draws,
                           seed=args.seed)
        summary = summarise(values, sizes, len(gen), embedder.dim)
        out.append({"embedder": embedder.identity, "dim": embedder.dim, "unit": unit,
                    "generated": {**gen_proto, "frames": len(gen), "clips": len(clip_frames)},
                    "reference": {**ref_proto, "frames": len(ref)}, "fad_all_frames": full, **summary,
                    "fad_infinity_same_sizes": same_inf,
                    "fad_infinity_default": default_inf,
                    "verdict": verdict(summary, embedder.dim, MIN_FRAMES_PER_DIM),
                    "seconds": round(time.perf_counter() - t0, 1)})
        print_table(out[-1])
    return out


def print_table(r: dict) -> None:
    fit = r["fit"] or {}
    print(f"\n{r['embedder']} (D {r['dim']}), draws of {r['unit']}: pool {r['generated']['frames']} frames of "
          f"{r['generated']['clips']} clips, FAD of all {r['fad_all_frames']:.4g}; slope in 1/n "
          f"{fit.get('slope', 0):.4g} (r2 {fit.get('r2', 0):.3f}), fad_infinity's "
          + (f"{inf['slope']:.4g}" if "slope" in (inf := r["fad_infinity_same_sizes"]) else f"– ({inf['skipped']})"))
    print(f"{'n':>6s} {'mean FAD':>9s} {'sd draws':>9s} {'sd run <=':>9s} {'step n/1.1':>10s} {'± se':>8s} "
          f"{'step/sd':>11s} {'step/FAD':>8s} {'spread@1sd':>12s}")
    for g in reversed(r["rungs"]):
        cells = [f"{g['n']:6d}", f"{g['mean']:9.4g}", f"{g['sd_draws']:9.3g}", f"{g['sd_run_high'] or 0:9.3g}"]
        if "step" in g:
            spread = g["spread_at_one_sd"]
            cells += [f"{g['step']:10.3g}", f"{g['step_se']:8.2g}", f"{_range(g['step_over_sd'], '.2f'):>11s}",
                      f"{g['step_over_fad']:8.2%}", f"{_range(spread, '.3f') if spread else '–':>12s}"]
        print(" ".join(cells))
    v = r["verdict"]
    if v["n"]:
        spread = v["spread_at_one_sd"]
        print(f"{STEP - 1:.0%} apart, over {v['over']}: step / sd at most {_range(v['max_step_over_sd'], '.2f')}, "
              f"step / FAD at most {v['max_step_over_fad']:.2%}, within the noise: {v['ten_percent_within_noise']}; "
              "the step equals one sd at a spread of "
              + (_range(spread, ".3f") if spread else "– (no step told from 0)"))


def _range(pair, fmt: str) -> str:
    return f"{pair[0]:{fmt}}–{pair[1]:{fmt}}"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    from bench.record import append_record, machine_info, package_version
    from eval.embedders import get_embedder
    from eval.fad import STATS_FORMAT_VERSION
    from eval.run import default_cache_dir

    torch.set_num_threads(args.threads)
    try:
        gen_files = audio_files(args.generated)
        ref_files = audio_files(args.reference) if args.reference else []
        if args.halves:
            gen_files = sorted(gen_files)
            gen_files, ref_files = gen_files[0::2], gen_files[1::2]
        embedders = [get_embedder(name) for name in args.embedders.split(",")]
    except ValueError as e:                 # EvalError, ManifestError, EmbedderError: one line, exit 1
        raise SystemExit(f"bench/fad_frames.py: {e}") from None
    cache_root = args.cache_dir or default_cache_dir()
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tta-fad-frames-") as tmp:
        results = [r for e in embedders for r in measure(args, e, gen_files, ref_files, cache_root, Path(tmp))]
    record = {"bench": "fad_frames", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": machine_info(), "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
              "versions": {"aisfx": package_version("aisfx"), "fad_stats_format": STATS_FORMAT_VERSION},
              "settings": {"label": args.label, "generated": [display(p) for p in args.generated],
                           "reference": [display(p) for p in args.reference or []], "halves": args.halves,
                           "embedders": args.embedders.split(","), "units": args.units.split(","),
                           "draws": args.draws, "top": args.top, "bases": list(BASES), "step": STEP,
                           "seed": args.seed, "threads": args.threads,
                           "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
              "results": results, "seconds": round(time.perf_counter() - t0, 1),
              "question": (f"two FADs {STEP - 1:.0%} apart in generated frames: is the bias step (paired, n to "
                           f"n/{STEP}) smaller than the std of one FAD over independent runs of n frames?"),
              "answer": {f"{r['embedder']} {r['unit']}": r["verdict"] for r in results}}
    append_record(args.results, record)
    return record


if __name__ == "__main__":
    main()
