"""`tta report`: one self-contained HTML page (or Markdown) from one or more `tta eval` results.

The HTML has no external references at all: inline CSS, charts and spectrograms as PNG data URIs
(matplotlib, Agg backend), audio as data-URI WAV players. Sections: the metrics table (runs side by side),
per-category bar charts and tables, head/tail table, best and worst items by CLAP score (or example items when
a run has no CLAP score) with spectrograms and players, and each run's full protocol.

Each value carries the number of items it rests on (FAD: generated files and frames; FAD∞: also its 95%
interval; CLAP score: prompts, with the 95% confidence interval of the mean; of a `--takes` run, with the
prompts as the draws, each weighed by its takes: `clap_half_width`). Each metric row names its embedder (in
the row when the runs share it, else in each cell). A best value is marked only when the runs used the same
embedder and the same reference (statistics or audio, by content); otherwise the row says what differs ("not
comparable: different reference"; for the CLAP score, the CLAP or the set of prompts; for FAD, numbers of
generated frames more than 1 % apart, where FAD∞, extrapolated to infinite frames, still ranks the runs and
the reason says so; for every metric, files read otherwise: `protocol.common.audio_read`). Where a row ranks,
runs the data cannot tell from the best at 95% are marked with it (FAD∞ and CLAP score; `_marked`), and a note
under the table says by which rules, those of the rows shown (`mark_note`). Runs evaluated by different tta
versions get a note. Category FADs carry their frame count; one too few frames had none for is marked † and
a note says why (NO_FAD_NOTE, which `tta experiment retrieval`'s summary.md shares). """

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eval.outputs import ITEMS_NAME, ResultError, read_result
from tta import UsageError
from tta.clap.interval import (ci95_words, clap_draws, clap_groups, clap_half_width, clap_standard_error,
                               interval_words, paired_clap_difference, recorded_interval, t95, welch_df)

log = logging.getLogger(__name__)

MAX_PLAYER_SECONDS = 10.0  # clips are cut for the page; the full files stay where they are
PLAYER_SAMPLE_RATE = 16_000
METRIC_LABELS = {"fad": "FAD ↓", "fad_inf": "FAD∞ ↓", "fd": "FD (PANNs) ↓", "kl_softmax": "KL softmax ↓",
                 "kl_sigmoid": "KL sigmoid ↓", "is_mean": "IS ↑", "is_std": "IS std", "clap_score": "CLAP score ↑"}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#1d2430;
padding:0 1rem;background:#fafbfc}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{margin-top:2rem;border-bottom:1px solid #d6dbe3;padding-bottom:.3rem}
table{border-collapse:collapse;margin:.6rem 0;background:#fff}th,td{border:1px solid #d6dbe3;padding:.35rem .7rem;
text-align:right}th{background:#eef1f6}td.name,th.name{text-align:left}.best{font-weight:700;color:#0b6b2b}
.items{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:1rem}
.item{background:#fff;border:1px solid #d6dbe3;border-radius:6px;padding:.6rem}.item img{width:100%}
.item audio{width:100%}.muted{color:#667085;font-size:.9rem}pre{background:#fff;border:1px solid #d6dbe3;
padding:.6rem;overflow:auto;font-size:.8rem}img.chart{max-width:100%;background:#fff;border:1px solid #d6dbe3}
.note{color:#b54708;font-size:.85rem}
"""


@dataclass
class Run:
    label: str
    body: dict
    rows: list[dict]
    folder: Path
    items_missing: Path | None = None   # the result's items.csv, when it was not found


def load_runs(paths: list[str | os.PathLike], labels: list[str] | None = None) -> list[Run]:
    if not paths:
        raise ValueError("tta report needs at least one eval result")
    runs, given = [], {}
    for i, p in enumerate(paths):
        body, rows, folder = read_result(p)
        same = next((q for where, (q, b) in given.items() if where == folder.resolve() or _same_result(b, body)),
                    None)
        if same is not None:   # it would be ranked against itself
            raise ResultError(f"{p}: the same result as {same}; give each result once")
        given[folder.resolve()] = (p, body)
        label = labels[i] if labels and i < len(labels) else folder.name
        missing = folder / body.get("items_csv", ITEMS_NAME) if rows is None else None
        runs.append(Run(label, body, rows or [], folder, missing))
    taken: set[str] = set()
    for r in runs:  # keep column headers unique ("A", "A (2)", ... never a label given elsewhere)
        label, n = r.label, 1
        while label in taken or label != r.label and label in {x.label for x in runs}:
            n += 1
            label = f"{r.label} ({n})"
        r.label = label
        taken.add(label)
    return runs


def _same_result(a: dict, b: dict) -> bool:
    """Whether two eval.json bodies hold the same result (a copied folder): equal but for when they ran."""
    def undated(body: dict) -> dict:
        proto = body.get("protocol")
        return {**body, "protocol": {k: v for k, v in proto.items() if k != "date"}} if isinstance(proto, dict) \
            else body
    return undated(a) == undated(b)


# ------------------------------------------------------------------------------------------ pieces


def _fmt(v) -> str:
    return "–" if v is None or v == "" else (f"{v:.4g}" if isinstance(v, float) else str(v))


WHAT_DIFFERS = {"clap_score": "prompts", "is_mean": "IS splits", "is_std": "IS splits"}   # else "reference"
FEW_FRAMES_NOTE = ("fewer than 5 x D frames: that FAD is biased upward by the small set alone; compare only "
                   "categories of similar frame counts")
# why a category's (or a `tta experiment retrieval` bucket's) FAD is "–" where its frames were counted
# (eval.breakdown scores none below 2): the mark on such cells and the note under the table, here and in
# the experiment's summary.md
NO_FAD_MARK = "†"
NO_FAD_NOTE = "no FAD from fewer than 2 generated frames (a Fréchet distance needs their covariance)"


def fad_cell(b: dict) -> str:
    """A breakdown entry's FAD (category, head or tail; a retrieval experiment's bucket), "–" marked with
    NO_FAD_MARK where it has too few frames for one (eval.breakdown counted them and scored none)."""
    return _fmt(b.get("fad")) + (NO_FAD_MARK if no_fad_for_frames(b) else "")


def no_fad_for_frames(b: dict) -> bool:
    """Whether a breakdown entry has no FAD for too few frames (not for no FAD measured, which counts none, nor for
    a distance stored as null, NaN or inf)."""
    frames = b.get("fad_frames")
    return b.get("fad") is None and isinstance(frames, int) and frames < 2


def _comparison_key(run: Run, metric: str) -> tuple[str | None, str | tuple[str | None, str | None] | None]:
    """(embedder identity, reference identity) a metric value depends on, read from the run's protocol; for
    fad_inf the second is (reference identity, FAD∞ method)."""
    proto = run.body.get("protocol", {}) or {}
    if metric in ("fad", "fad_inf"):
        fad = proto.get("fad", {}) or {}
        ref = fad.get("reference", {}) or {}
        ref_id = fad.get("reference_stats_sha256") or ref.get("stats_file") or ref.get("folder")
        if metric == "fad_inf":   # (reference, method): an estimate made otherwise is not ranked against it
            method = fad.get("fad_inf").get("method") if isinstance(fad.get("fad_inf"), dict) else None
            ref_id = (ref_id, method)
        return (fad.get("embedder", {}) or {}).get("identity"), ref_id
    panns = proto.get("panns", {}) or {}
    emb = (panns.get("embedder", {}) or {}).get("identity")
    if metric in ("fd", "kl_softmax", "kl_sigmoid"):
        ref = panns.get("reference", {}) or {}
        return emb, ref.get("content_sha256") or ref.get("folder")
    if metric in ("is_mean", "is_std"):
        split = panns.get("is", {}) or {}
        return emb, f"splits {split.get('splits')}, seed {split.get('shuffle_seed')}"
    if metric == "clap_score":   # the same CLAP on the same prompts (runs recorded before the hash: the CLAP only)
        clap = proto.get("clap", {}) or {}   # see _metric_row: the prompts alone, or file name + prompt
        return (clap.get("model", {}) or {}).get("identity"), clap.get("prompts_sha256")
    return None, None


LOWER_BETTER = {"fad", "fad_inf", "fd", "kl_softmax", "kl_sigmoid"}
# FADs rank where their generated frame counts are within 1 % of each other: FAD's small-sample bias goes as 1/n
# (Chong & Forsyth 2020); bench/fad_frames.py measured 10 % fewer frames raising aisfx's FAD of two halves of one
# speech corpus (a model as good as can be) by 7-14 times one run's std, and 0.7-1.4 % fewer by one std, but on
# 263-1053 frames with D = 512, below 5 x D (its verdict: "none has 5 x D frames"); mfcc, measured at 5 x D and
# above, stays within the noise at 10 % (step / std at most 0.32 on that pair), as do sets far apart. The rule
# keeps to the aisfx figures; so 10.24 s clips do not rank against 10.0 s ones
FAD_FRAMES_SPREAD = 1.01


def protocol_warnings(run: Run) -> list[tuple[str, str]]:
    """(where, message) of every warning an eval.json's protocol carries ("warnings" lists and "warning"
    strings at any depth; `where` is the dotted path, e.g. "fad" or "panns.fd")."""
    found: list[tuple[str, str]] = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "warnings" and isinstance(value, list):
                    found.extend((".".join(path), str(w)) for w in value if w)
                elif key == "warning" and isinstance(value, str) and value:
                    found.append((".".join(path), value))
                else:
                    walk(value, [*path, key])

    walk(run.body.get("protocol", {}), [])
    return found


def _warned(run: Run, metric: str) -> bool:
    """Whether a protocol warning concerns `metric` (FAD: the fad section; fd/kl/is: theirs), or every metric (a
    warning about the generated files themselves: silent ones, a stopped run, files of another run)."""
    name = {"is_mean": "is", "is_std": "is", "kl_softmax": "kl", "kl_sigmoid": "kl", "clap_score": "clap",
            "fad_inf": "fad"}.get(metric, metric)
    return any(name in where.split(".") for where, _ in protocol_warnings(run)) or bool(_generated_warnings(run))


def _generated_warnings(run: Run) -> list[str]:
    """The run's warnings about its generated files as a whole (protocol.generated_*)."""
    proto = run.body.get("protocol", {}) or {}
    return [k for k, v in proto.items() if k.startswith("generated_") and isinstance(v, dict) and v.get("warning")]


def _metric_row(runs: list[Run], metric: str) -> tuple[list, list, set[int], str | None, str | None, set[str]]:
    """One metric across runs: (values, per-run (embedder, reference) keys, the indices of the runs to mark (see
    `_marked`; none where the row does not rank), the embedder all runs with a value share or None, why those runs
    cannot be compared or None, the rules the marks followed (`_marked`; none where the row does not rank))."""
    values = [r.body.get("metrics", {}).get(metric) for r in runs]
    keys = [_comparison_key(r, metric) for r in runs]
    if metric == "clap_score":   # the set of prompts, whatever the files are named, when every run records it
        sets = [((r.body.get("protocol", {}) or {}).get("clap", {}) or {}).get("prompt_set_sha256") for r in runs]
        if all(sets[i] for i, v in enumerate(values) if isinstance(v, (int, float))):
            keys = [(k[0], s) for k, s in zip(keys, sets)]
    present = [k for v, k in zip(values, keys) if isinstance(v, (int, float))]
    embedders = {k[0] for k in present}
    shared = next(iter(embedders)) if len(embedders) == 1 else None
    comparable = len(set(present)) <= 1
    sources = [_reference_source(r, metric) for r, v in zip(runs, values) if isinstance(v, (int, float))]
    why = None if comparable else not_comparable(metric, present, sources)
    reads = {_audio_read(r) for r, v in zip(runs, values) if isinstance(v, (int, float))}
    if why is None and len(reads) > 1:   # the same float files score otherwise (README: tta eval's 16-bit reading)
        why = "not comparable: different audio reading, protocol.common.audio_read"
    real = [v for v in values if isinstance(v, (int, float))]
    short = [r.label for r, v in zip(runs, values) if isinstance(v, (int, float))
             and (_skipped_files(r, metric) or _generated_warnings(r))]
    if why is None and short and len(real) > 1:   # a run that lost files scored a subset of what it was given
        why = (f"not ranked: {', '.join(short)} left files out or holds files that may not be what they should "
               "(see the warnings)")
    frames = {_generated_frames(r) for r, v in zip(runs, values) if isinstance(v, (int, float))}
    if (why is None and metric == "fad" and len(frames) > 1 and None not in frames
            and max(frames) > min(frames) * FAD_FRAMES_SPREAD):
        why = (f"not comparable: different numbers of generated frames ({min(frames)} to {max(frames)}, more than "
               f"{FAD_FRAMES_SPREAD - 1:.0%} apart), and FAD is biased upward as they fall")
        if _fad_inf_ranks(runs, values):
            why += "; FAD∞, extrapolated to infinite frames, compares them"
    marked: set[int] = set()
    rules: set[str] = set()
    if why is None and len(real) > 1 and metric != "is_std":
        marked, rules = _marked(runs, values, metric, min(real) if metric in LOWER_BETTER else max(real))
    return values, keys, marked, shared, why, rules


def _marked(runs: list[Run], values: list, metric: str, best: float) -> tuple[set[int], set[str]]:
    """(The runs a ranked row marks, the rules it compared them by, for the note under the table: `mark_note`):
    those at the best value and those the data cannot tell from one of them at 95%: for FAD∞, a difference
    within 1.96 standard errors of the difference, each run's standard error its 95% interval's half-width /
    1.96 (protocol.fad.fad_inf.fad_inf_ci95); not whether the intervals overlap, which two of equal width do
    up to 2.77 standard errors of the difference, runs separable at 95% among them. For the CLAP score of two
    runs that scored the same items (`_paired_difference`), a paired difference of the scores whose 95%
    interval (Student's t with n - 1 degrees of freedom, `t95`) holds 0; else Welch's test: the difference
    within t95(`welch_df`) standard errors of it, each run's with its degrees of freedom, draws - 1
    (`clap_ci95`; an eval.json's from before t too, whose standard error is its half-width / 1.96 where a
    newer one's is / t95(draws - 1)). A row where a ranked run has no interval (a result from before FAD∞
    recorded one, a CLAP score without its items.csv from before eval.json recorded its interval) marks the
    best value alone, as the other metrics' rows do (plain FAD, FD, KL, IS have no interval): rule "best"."""
    ranked = [i for i, v in enumerate(values) if isinstance(v, (int, float))]
    tops = {i for i in ranked if values[i] == best}
    if metric == "fad_inf":   # the standard errors
        errors = {i: (interval[1] - interval[0]) / 2 / 1.96 if (interval := fad_inf_interval(runs[i].body))
                  else None for i in ranked}
        dfs = {i: None for i in ranked}
    elif metric == "clap_score":   # and their degrees of freedom
        intervals = {i: clap_ci95(runs[i]) for i in ranked}
        errors, dfs = {i: ci[1] for i, ci in intervals.items()}, {i: ci[2] for i, ci in intervals.items()}
    else:
        return tops, {"best"}
    if any(se is None or not np.isfinite(se) for se in errors.values()):
        return tops, {"best"}
    rules: set[str] = set()

    def apart(i: int, j: int) -> bool:
        if metric == "clap_score" and (paired := _paired_difference(runs[i], runs[j])) is not None:
            rules.add("clap_paired")
            difference, se, pairs = paired
            return abs(difference) > t95(pairs - 1) * se
        se = float(np.hypot(errors[i], errors[j]))
        if metric == "clap_score":   # Welch's test
            rules.add("clap_welch")
            return abs(values[i] - values[j]) > t95(welch_df(errors[i], dfs[i], errors[j], dfs[j])) * se
        rules.add("fad_inf_intervals")
        return abs(values[i] - values[j]) > 1.96 * se

    near = {i for i in ranked if i not in tops and not all([apart(i, t) for t in tops])}   # each rule it takes
    return tops | near, rules or {"best"}   # (runs all at the best value: nothing compared)


def mark_note(rules: set[str]) -> str | None:
    """What a mark means, for the rules the table's marked rows followed (`_marked`) and no other: a report of
    FAD, KL and IS rows alone, which mark their best value, is not told of FAD∞'s intervals. None without
    marks."""
    if not rules - {"best"}:
        return "the best value" if rules else None
    unpaired = "difference within 1.96 standard errors of the difference, each from its interval"
    parts = [f"FAD∞: {unpaired}"] if "fad_inf_intervals" in rules else []
    paired = "paired difference on the same prompts, its Student's t interval holding 0"
    welch = "Welch's t interval of the difference holding 0"
    clap = ([paired] if "clap_paired" in rules else []) + ([welch] if "clap_welch" in rules else [])
    if clap:
        parts.append(f"CLAP score: {', else '.join(clap)}")
    if "best" in rules:
        parts.append("other rows: the best value alone")
    return f"best, or not separable from the best at 95% ({'; '.join(parts)})"


def _fad_inf_ranks(runs: list[Run], fads: list) -> bool:
    """Whether every run with a FAD has a FAD∞ and the FAD∞ row ranks them (FAD∞ is extrapolated to infinite
    frames, so their frame counts do not keep it from ranking)."""
    scored = [r for r, v in zip(runs, fads) if isinstance(v, (int, float))]
    if len(scored) < 2 or not all(isinstance(r.body.get("metrics", {}).get("fad_inf"), (int, float)) for r in scored):
        return False
    return _metric_row(scored, "fad_inf")[4] is None


# The intervals a result records, read and written alike by `tta eval` (beside the values it prints) and
# `tta report` (in the cells): `body` is an eval.json's content or the result tta eval writes into it


def fad_inf_interval(body: dict) -> tuple[float, float] | None:
    """A result's FAD∞ 95% interval (low, high) from protocol.fad.fad_inf.fad_inf_ci95; None where not recorded
    (tta eval recorded none before it fitted several draws per subset size) or not finite."""
    fit = ((body.get("protocol", {}) or {}).get("fad", {}) or {}).get("fad_inf")
    interval = fit.get("fad_inf_ci95") if isinstance(fit, dict) else None
    if not isinstance(interval, (list, tuple)) or len(interval) != 2:
        return None
    low, high = float(interval[0]), float(interval[1])
    return (low, high) if np.isfinite([low, high]).all() else None


def fad_inf_words(body: dict) -> str | None:
    """A result's FAD∞ interval as written beside the value: "95% CI ±x", its half-width (the interval is the
    value ± 1.96 se, so that says all of it: the fit's draws and the generated set's own noise,
    eval.fad.fad_infinity) written as the value is (.2g read ±1.2e+02 beside 1500); None without one."""
    interval = fad_inf_interval(body)
    return None if interval is None else f"95% CI ±{_fmt((interval[1] - interval[0]) / 2)}"


def clap_words(body: dict) -> str | None:
    """A result's recorded CLAP score interval (protocol.clap) as written beside the score
    (`tta.clap.interval.interval_words`, as `tta clap score` writes its own); None without one."""
    return interval_words((body.get("protocol", {}) or {}).get("clap", {}) or {})


def _audio_read(run: Run) -> str | None:
    """How the run's tta eval read the audio files (None: an eval from before the rule was recorded, which read
    float files as stored rather than on the 16-bit grid)."""
    common = (run.body.get("protocol", {}) or {}).get("common", {}) or {}
    return common.get("audio_read")


def _generated_frames(run: Run) -> int | None:
    """How many generated embeddings (frames) a run's FAD was computed on (None where not recorded)."""
    frames = ((run.body.get("protocol", {}) or {}).get("fad", {}) or {}).get("generated_frames")
    return frames if isinstance(frames, int) else None


def version_note(runs: list[Run]) -> str | None:
    """A note when the runs were evaluated by different tta versions (None when they all name one)."""
    versions = [((r.body.get("protocol", {}) or {}).get("common", {}) or {}).get("tta_version") for r in runs]
    if len(set(versions)) <= 1:
        return None
    named = ", ".join(f"{r.label} {v or 'unrecorded'}" for r, v in zip(runs, versions))
    return (f"evaluated by different tta versions ({named}): the rows rank them as if each metric were computed "
            "alike in both; compare with care")


def clap_scale_note(runs: list[Run]) -> str | None:
    """What the CLAP score's numbers are (eval.json's protocol.clap.scale), for the runs with one: papers print it
    raw or x100, and a reader comparing with them needs to know which. None when no run has a CLAP score."""
    scored = [r for r in runs if isinstance(r.body.get("metrics", {}).get("clap_score"), (int, float))]
    if not scored:
        return None
    scales = sorted({str(((r.body.get("protocol", {}) or {}).get("clap", {}) or {}).get("scale") or "unrecorded")
                     for r in scored})
    return (f"CLAP score: the mean cosine of each prompt's text embedding and its audio's ({'; '.join(scales)}), "
            "not x100: a paper that prints it x100 shows 100 times these values")


def sample_note(run: Run, metric: str) -> str | None:
    """How many items a run's value rests on and, for the CLAP score (a mean over items), the half-width of its
    95% confidence interval (`clap_half_width`, from items.csv; t95(n - 1) sd / sqrt(n) where each prompt is
    one file): a difference between runs smaller than that is within the noise of the prompts drawn. For a
    `tta generate --takes N` folder (items.csv gives files a take) n counts prompts and the interval is over
    their means (weighed by their takes where those differ in number, `clap_half_width`): a prompt's N takes
    are not N independent draws, and counted as files they narrow it by about sqrt(N). Where the result's
    items.csv was not found, the interval eval.json records (`clap_ci95`).
    None when the result records neither."""
    proto = run.body.get("protocol", {}) or {}
    if metric in ("fad", "fad_inf"):
        fad = proto.get("fad", {}) or {}
        used = (fad.get("generated", {}) or {}).get("files_used")
        frames = fad.get("generated_frames")
        notes = [f"n {used} files" + (f", {frames} frames" if isinstance(frames, int) and frames != used else "")
                 ] if isinstance(used, int) else []
        words = fad_inf_words(run.body) if metric == "fad_inf" else None
        return ", ".join([*notes, words] if words else notes) or None
    if metric != "clap_score":
        return None
    half, _, _, draws, files, takes = clap_ci95(run)
    unit = (f" prompts, {files} takes" if isinstance(files, int) else " prompts") if takes else ""
    if half is not None:
        return f"n {draws}{unit}, {ci95_words(half, over_prompts=takes)}"
    if takes:
        return f"n {draws}{unit}"
    n = (proto.get("clap", {}) or {}).get("num_items")
    return f"n {n}" if isinstance(n, int) else None


def clap_ci95(run: Run) -> tuple[float | None, float | None, int | None, int | None, int | None, bool]:
    """The half-width of the run's CLAP score's 95% interval (None without one: fewer than 2 draws), the
    standard error it is made of, its degrees of freedom (draws - 1; None without an interval), its draws,
    the files scored and whether it is a `--takes` run (its draws are prompts): from items.csv's rows
    (`clap_half_width`, `clap_standard_error`) or, where the result's items.csv was not found, as eval.json
    records it (protocol.clap.clap_score_ci95, tta eval's computation over the same rows, read as its tta
    version meant it: `recorded_interval`; none in a result from before it was recorded)."""
    if run.items_missing is None:
        draws, files, takes = clap_draws(run.rows)
        se = clap_standard_error(run.rows)
        return clap_half_width(run.rows), se, None if se is None else len(draws) - 1, len(draws), files, takes
    clap = (run.body.get("protocol", {}) or {}).get("clap", {}) or {}
    half, se, df, draws, takes = recorded_interval(clap)
    files = clap.get("num_items")
    return half, se, df, draws, files if isinstance(files, int) else None, takes


def _paired_difference(a: Run, b: Run) -> tuple[float, float, int] | None:
    """a's CLAP score minus b's, its standard error and the pairs, where both runs scored the same items
    (`paired_clap_difference`: each run's score weighs a draw by its files, as the row's values do), else None:
    paired by file name (or a `--takes` run's row) and prompt when both runs' draws (`clap_draws`) match so,
    else by prompt text where each run scored each text once and they scored the same texts. Fewer than 2
    pairs: None (paired_clap_difference's)."""
    draws_a, draws_b = clap_groups(a.rows)[0], clap_groups(b.rows)[0]
    for key in (lambda d: (d[0], d[1]), lambda d: d[1]):
        by_a, by_b = {key(d): d[2] for d in draws_a}, {key(d): d[2] for d in draws_b}
        if len(by_a) == len(draws_a) and len(by_b) == len(draws_b) and by_a.keys() == by_b.keys():
            paired = paired_clap_difference([(by_a[k], by_b[k]) for k in by_a])
            return None if paired is None else (*paired, len(by_a))
    return None


def _skipped_files(run: Run, metric: str) -> int:
    """How many generated files the run's `metric` left out (unreadable, or, for the CLAP score, shorter than its
    window), from tta eval's protocol."""
    proto = run.body.get("protocol", {}) or {}
    section = proto.get("fad" if metric in ("fad", "fad_inf") else "clap" if metric == "clap_score" else "panns")
    if not isinstance(section, dict):
        return 0
    generated = section.get("generated")
    count = generated.get("files_skipped") if isinstance(generated, dict) else None
    short = section.get("skipped") if metric == "clap_score" else None
    return (count if isinstance(count, int) else 0) + (len(short) if isinstance(short, list) else 0)


def _reference_source(run: Run, metric: str) -> str | None:
    """The FAD reference a run scored against, whatever the embedder (its folder's content, its stats file, its
    folder); None for other metrics. The reference key of `_comparison_key` is the reference's statistics, which
    differ with the embedder even on the same audio."""
    if metric not in ("fad", "fad_inf"):
        return None
    fad = (run.body.get("protocol", {}) or {}).get("fad", {}) or {}
    ref = fad.get("reference", {}) or {}
    return ref.get("content_sha256") or ref.get("stats_file") or ref.get("folder")


def not_comparable(metric: str, keys: list, sources: list | None = None) -> str:
    """Why values of `metric` with these (embedder, reference) keys cannot be ranked: what differs. `sources`
    (the runs' `_reference_source`) tells whether the reference differs when the embedders do."""
    parts = []
    methods = {k[1][1] for k in keys if isinstance(k[1], tuple)}   # FAD∞'s (reference, method)
    keys = [(k[0], k[1][0] if isinstance(k[1], tuple) else k[1]) for k in keys]
    embedders_differ = len({k[0] for k in keys}) > 1
    if embedders_differ:
        parts.append("embedder" if metric != "clap_score" else "CLAP")
    known = sources is not None and all(sources)
    if len(set(sources)) > 1 if embedders_differ and known else len({k[1] for k in keys}) > 1:
        parts.append(WHAT_DIFFERS.get(metric, "reference"))
    if len(methods) > 1:
        parts.append("FAD∞ method (protocol.fad.fad_inf.method)")
    return f"not comparable: different {' and '.join(parts) or 'protocol'}"


def _metric_names(runs: list[Run]) -> list[str]:
    names: list[str] = []
    for r in runs:
        names += [k for k in r.body.get("metrics", {}) if k not in names]
    return names


def _png_data_uri(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def categories(run: Run, order: Sequence[str] = ()) -> list[tuple[str, dict]]:
    """A run's (category, breakdown) pairs: those named in `order` first, in that order, then the rest as the
    result lists them (by file count)."""
    cats = run.body.get("breakdown", {}).get("categories", {})
    return [(c, cats[c]) for c in order if c in cats] + [(c, b) for c, b in cats.items() if c not in order]


def category_names(runs: list[Run], order: Sequence[str] = ()) -> list[str]:
    """Every run's categories once: those named in `order` first, in that order, then the rest as first seen."""
    cats: list[str] = []
    for r in runs:
        cats += [c for c, _ in categories(r) if c not in cats]
    return [c for c in order if c in cats] + [c for c in cats if c not in order]


def category_chart(runs: list[Run], metric: str, order: Sequence[str] = ()) -> str | None:
    """Grouped bar chart of one per-category metric across runs -> PNG data URI (None if no data); the bars in
    `category_names` order."""
    cats = category_names(runs, order)
    values = [[(r.body.get("breakdown", {}).get("categories", {}).get(c) or {}).get(metric) for c in cats]
              for r in runs]
    if not cats or all(v is None for row in values for v in row):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(cats) * max(1, len(runs)) + 2), 3.2))
    width = 0.8 / len(runs)
    x = np.arange(len(cats))
    for i, (r, row) in enumerate(zip(runs, values)):
        ax.bar(x + i * width - 0.4 + width / 2, [np.nan if v is None else v for v in row], width, label=r.label)
    ax.set_xticks(x, cats, rotation=30, ha="right")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_title(f"{METRIC_LABELS.get(metric, metric)} by category")
    if len(runs) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png_data_uri(fig)


def spectrogram_and_audio(path: str | os.PathLike) -> tuple[str, str]:
    """(spectrogram PNG data URI, WAV data URI) of the first MAX_PLAYER_SECONDS of an audio file."""
    import soundfile as sf

    from tta.audio import MelConfig, load_audio, log_mel, pcm_samples

    wav, sr = load_audio(path, sample_rate=PLAYER_SAMPLE_RATE, max_seconds=MAX_PLAYER_SECONDS)
    if wav.shape[0] <= MelConfig().pad:
        wav = np.pad(wav, (0, MelConfig().pad + 1 - wav.shape[0]))
    mel = log_mel(wav, MelConfig())[0].numpy()
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 1.8))
    ax.imshow(mel, origin="lower", aspect="auto", cmap="magma",
              extent=(0, wav.shape[0] / sr, 0, mel.shape[0]))
    ax.set_xlabel("s")
    ax.set_ylabel("mel band")
    image = _png_data_uri(fig)
    buf = io.BytesIO()
    # on the nearest 16-bit step, as tta.audio.save_audio writes (libsndfile puts a float sample on the one below)
    sf.write(buf, pcm_samples(wav, 16).astype(np.int16), sr, format="WAV", subtype="PCM_16")
    return image, "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def pick_items(run: Run, k: int = 3) -> tuple[str, list[dict], list[dict]]:
    """(title, best, worst) items by CLAP score; example items when the run has no CLAP score."""
    scored = [r for r in run.rows if r.get("clap_score") not in (None, "") and r.get("file")]
    if scored:
        scored.sort(key=lambda r: float(r["clap_score"]), reverse=True)
        k = min(k, len(scored) // 2) or 1
        return "by CLAP score", scored[:k], scored[::-1][:k] if len(scored) > 1 else []  # worst first
    return "examples (this run has no CLAP score)", [r for r in run.rows if r.get("file")][:k], []


def _items_missing(run: Run) -> str:
    return f"no per-item sections: {run.items_missing} (the result's items.csv) was not found"


# ------------------------------------------------------------------------------------------ HTML


def _item_html(row: dict) -> str:
    try:
        if row.get("sha256"):   # the audio the scores describe, not a file written over it since
            from eval.cache import content_hash

            if content_hash(row["file"]) != row["sha256"]:
                raise ValueError(f"{row['file']} has changed since the eval (its sha256 differs); run `tta eval` "
                                 "again to hear and score it")
        image, audio = spectrogram_and_audio(row["file"])
    except (ValueError, OSError) as e:
        return (f'<div class="item"><b>{html.escape(row["name"])}</b><p class="muted">audio not available: '
                f"{html.escape(str(e))}</p></div>")
    meta = " · ".join(f"{k} {html.escape(_fmt(_num(row.get(k))))}" for k in ("clap_score", "category", "seconds")
                      if row.get(k) not in (None, ""))
    prompt = f"<div>“{html.escape(row['prompt'])}”</div>" if row.get("prompt") else ""
    return (f'<div class="item"><b>{html.escape(row["name"])}</b>{prompt}<div class="muted">{meta}</div>'
            f'<img alt="spectrogram of {html.escape(row["name"])}" src="{image}">'
            f'<audio controls preload="metadata" src="{audio}"></audio></div>')


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def _frames_cell(b: dict) -> str:
    return _fmt(b.get("fad_frames")) + (" ⚠" if b.get("warning") else "")


def _category_cells_html(b: dict) -> str:
    warn = f' title="{html.escape(b["warning"])}"' if b.get("warning") else ""
    why = f' title="{html.escape(NO_FAD_NOTE)}"' if no_fad_for_frames(b) else ""
    return (f'<td>{b.get("files", "–")}</td><td{why}>{fad_cell(b)}</td><td{warn}>{_frames_cell(b)}</td>'
            f'<td>{_fmt(b.get("clap_score"))}</td><td>{_fmt(b.get("kl_softmax"))}</td>')


def render_html(runs: list[Run], title: str = "tta evaluation report", *, head_tail: bool = True,
                category_order: Sequence[str] = ()) -> str:
    names = _metric_names(runs)
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             f'<p class="muted">{len(runs)} run(s): {html.escape(", ".join(r.label for r in runs))}</p>',
             '<h2>Metrics</h2><table id="metrics"><tr><th class="name">metric</th>',
             *[f"<th>{html.escape(r.label)}</th>" for r in runs], "</tr>"]
    rules: set[str] = set()
    for m in names:
        values, keys, marked, shared, why, row_rules = _metric_row(runs, m)
        rules |= row_rules
        label = html.escape(METRIC_LABELS.get(m, m))
        if shared:
            label += f' <span class="muted">{html.escape(shared)}</span>'
        if why:
            label += f'<div class="note">{html.escape(why)}</div>'
        cells = "".join(
            f'<td class="{"best" if i in marked else ""}">{_fmt(v)}'
            + (" ⚠" if v is not None and _warned(r, m) else "")
            + (f'<br><span class="muted">{html.escape(k[0])}</span>' if not shared and k[0] and v is not None else "")
            + (f'<br><span class="muted">{html.escape(n)}</span>' if v is not None and (n := sample_note(r, m))
               else "")
            + "</td>" for i, (v, k, r) in enumerate(zip(values, keys, runs)))
        parts.append(f'<tr><td class="name">{label}</td>{cells}</tr>')
    parts.append("</table>")
    if mark_note(rules):
        parts.append(f'<p class="muted" id="mark-note"><span class="best">Bold green</span>: '
                     f"{html.escape(mark_note(rules))}.</p>")
    if clap_scale_note(runs):
        parts.append(f'<p class="muted">{html.escape(clap_scale_note(runs))}</p>')
    if version_note(runs):
        parts.append(f'<p class="note">⚠ {html.escape(version_note(runs))}</p>')
    warned = [(r, where, msg) for r in runs for where, msg in protocol_warnings(r)]
    if warned:
        parts.append('<ul class="note">' + "".join(
            f"<li>⚠ {html.escape(r.label)} ({html.escape(where or 'eval')}): {html.escape(msg)}</li>"
            for r, where, msg in warned) + "</ul>")
    charts = [(m, category_chart(runs, m, category_order)) for m in ("fad", "clap_score", "kl_softmax")]
    charts = [(m, c) for m, c in charts if c]
    if charts:
        parts.append("<h2>By category</h2>")
        parts += [f'<img class="chart" alt="{html.escape(m)} by category" src="{c}">' for m, c in charts]
        parts.append('<table id="categories"><tr><th class="name">run</th><th class="name">category</th><th>files</th>'
                     "<th>FAD</th><th>FAD frames</th><th>CLAP</th><th>KL softmax</th></tr>")
        for r in runs:
            for c, b in categories(r, category_order):
                parts.append(f'<tr><td class="name">{html.escape(r.label)}</td><td class="name">{html.escape(c)}</td>'
                             f"{_category_cells_html(b)}</tr>")
        parts.append("</table>")
        if head_tail:
            parts.append("<h3>Head and tail by file count</h3><p class=\"note\">head: the categories with the most "
                         "files that together hold at least half of them; tail: the rest</p>")
            parts.append('<table id="headtail"><tr><th class="name">run</th><th class="name">part</th><th>files</th>'
                         "<th>FAD</th><th>FAD frames</th><th>CLAP</th><th>KL softmax</th></tr>")
            for r in runs:
                for part in ("head", "tail"):
                    b = r.body.get("breakdown", {}).get(part)
                    if b:
                        parts.append(f'<tr><td class="name">{html.escape(r.label)}</td><td class="name">{part}: '
                                     f'{html.escape(", ".join(b["categories"]))}</td>{_category_cells_html(b)}</tr>')
            parts.append("</table>")
        # of a FAD: a category without one (fewer than 2 frames) has its own warning and note
        if any(b.get("warning") and not no_fad_for_frames(b) for r in runs
               for b in r.body.get("breakdown", {}).get("categories", {}).values()):
            parts.append(f'<p class="note">⚠ {FEW_FRAMES_NOTE}</p>')
        shown = [b for r in runs for _, b in categories(r)]
        if head_tail:
            shown += [r.body.get("breakdown", {}).get(part) or {} for r in runs for part in ("head", "tail")]
        if any(no_fad_for_frames(b) for b in shown):
            parts.append(f'<p class="note">{NO_FAD_MARK} {html.escape(NO_FAD_NOTE)}</p>')
    parts.append("<h2>Items</h2>")
    for r in runs:
        if r.items_missing is not None:
            parts.append(f'<h3>{html.escape(r.label)}</h3><p class="note">⚠ {html.escape(_items_missing(r))}</p>')
            continue
        how, best, worst = pick_items(r)
        parts.append(f"<h3>{html.escape(r.label)} — {html.escape(how)}</h3>")
        for caption, rows in (("best", best), ("worst", worst)):
            if rows:
                parts.append(f'<p class="muted">{caption if worst else ""}</p><div class="items">')
                parts += [_item_html(row) for row in rows]
                parts.append("</div>")
    parts.append("<h2>Protocol</h2>")
    for r in runs:
        parts.append(f"<details open><summary>{html.escape(r.label)} ({html.escape(str(r.folder))})</summary>"
                     f"<pre>{html.escape(json.dumps(r.body.get('protocol', {}), indent=2))}</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _md(text) -> str:
    """Text for a Markdown table cell or list item: a | would split the cell, and HTML in a prompt or label
    would reach whatever renders the file."""
    text = " ".join(str(text).split())
    for a, b in (("\\", "\\\\"), ("|", "\\|"), ("<", "&lt;"), (">", "&gt;"), ("`", "'")):
        text = text.replace(a, b)
    return text


def render_markdown(runs: list[Run], title: str = "tta evaluation report", *,
                    category_order: Sequence[str] = ()) -> str:
    names = _metric_names(runs)
    rules: set[str] = set()
    lines = [f"# {_md(title)}", "", "| metric | " + " | ".join(_md(r.label) for r in runs) + " |",
             "|---|" + "---|" * len(runs)]
    for m in names:
        values, keys, marked, shared, why, row_rules = _metric_row(runs, m)
        rules |= row_rules
        label = METRIC_LABELS.get(m, m) + (f" `{shared}`" if shared else "")
        if why:
            label = f"{label} ({why})"
        cells = [(f"**{_fmt(v)}**" if i in marked else _fmt(v))
                 + (" ⚠" if v is not None and _warned(r, m) else "")
                 + (f" `{k[0]}`" if not shared and k[0] and v is not None else "")
                 + (f" ({n})" if v is not None and (n := sample_note(r, m)) else "")
                 for i, (v, k, r) in enumerate(zip(values, keys, runs))]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if mark_note(rules):
        lines += ["", f"**Bold**: {_md(mark_note(rules))}."]
    if clap_scale_note(runs):
        lines += ["", _md(clap_scale_note(runs))]
    if version_note(runs):
        lines += ["", f"⚠ {_md(version_note(runs))}"]
    warned = [(r, where, msg) for r in runs for where, msg in protocol_warnings(r)]
    if warned:
        lines += [""] + [f"- ⚠ {_md(r.label)} ({_md(where or 'eval')}): {_md(msg)}" for r, where, msg in warned]
    for r in runs:
        cats = dict(categories(r, category_order))
        if cats:
            lines += ["", f"## {_md(r.label)}: by category", "", "| category | files | FAD | FAD frames | CLAP | KL softmax |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {_md(c)} | {v['files']} | {fad_cell(v)} | {_frames_cell(v)} | {_fmt(v.get('clap_score'))} | "
                      f"{_fmt(v.get('kl_softmax'))} |" for c, v in cats.items()]
            lines += [f"- ⚠ {_md(c)}: {v['warning']}" for c, v in cats.items() if v.get("warning")]
            if any(no_fad_for_frames(v) for v in cats.values()):
                lines.append(f"- {NO_FAD_MARK} {NO_FAD_NOTE}")
        if r.items_missing is not None:
            lines += ["", f"## {_md(r.label)}: items", "", f"⚠ {_md(_items_missing(r))}"]
        else:
            how, best, worst = pick_items(r)
            lines += ["", f"## {_md(r.label)}: items {how}", ""]
            tags = (("best" if how.startswith("by CLAP") else "example", best), ("worst", worst))
            lines += [f"- {tag} `{_md(row['name'])}` {_fmt(_num(row.get('clap_score')))} "
                      f"{_md(row.get('prompt') or '')}".rstrip() for tag, rows in tags for row in rows]
        common = r.body.get("protocol", {}).get("common", {})
        fad = r.body.get("protocol", {}).get("fad", {})
        summary = (f"Protocol: embedder `{fad.get('embedder', {}).get('identity', '–')}`, "
                   f"{common.get('generated_files', '–')} generated files ({common.get('skipped_files', 0)} skipped), "
                   f"tta {common.get('tta_version', '–')}, torch {common.get('torch_version', '–')}, "
                   f"{common.get('date', '–')}.")
        lines += ["", summary]
    return "\n".join(lines) + "\n"


def write_report(results: list[str | os.PathLike], out: str | os.PathLike | None = None, *,
                 markdown: str | os.PathLike | None = None, labels: list[str] | None = None,
                 title: str = "tta evaluation report", head_tail: bool = True,
                 category_order: Sequence[str] = ()) -> list[Path]:
    """Write the HTML page (`out`, or Markdown if it ends in .md) and/or `markdown`; returns the paths.

    `head_tail` False leaves out the HTML page's head/tail-by-file-count table (for prompt categories that are
    already such a split, as `tta experiment retrieval`'s frequency buckets are). `category_order`: categories
    listed first, in this order, in charts and tables (the buckets' head, mid, tail); the rest by file count."""
    from tta.checkpoint import atomic_write_text

    if out is None and markdown is None:
        raise UsageError("tta report: pass --out report.html and/or --markdown report.md")
    if out is not None and Path(out).suffix.lower() not in (".html", ".htm", ".md"):
        raise ValueError(f"--out {out}: expected a .html or .md file name")
    if markdown is not None and Path(markdown).suffix.lower() != ".md":
        raise ValueError(f"--markdown {markdown}: expected a .md file name")
    if labels and len(labels) > len(results):
        raise UsageError(f"{len(labels)} --label values for {len(results)} results; "
                         "give at most one per result")
    from tta.checkpoint import check_output_path

    for path, flag in ((out, "--out"), (markdown, "--markdown")):   # both before either is written
        if path is not None:
            check_output_path(path, flag)
    runs = load_runs(list(results), labels)
    texts = []   # every text rendered before any is written: a result that fails to render leaves no file
    for path, as_md in ((out, out is not None and Path(out).suffix.lower() == ".md"), (markdown, True)):
        if path is not None:
            texts.append((path, render_markdown(runs, title, category_order=category_order) if as_md else
                          render_html(runs, title, head_tail=head_tail, category_order=category_order)))
    return [atomic_write_text(path, text) for path, text in texts]
