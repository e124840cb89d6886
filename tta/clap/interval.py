"""The CLAP score's 95% confidence interval, one rule for `tta clap score`, `tta eval` and `tta report`.

A CLAP score is a mean over the clips scored, so it comes with the noise of the prompts drawn: a difference
between two runs smaller than the interval's half-width says little. The clips are the draws, except in a
`tta generate --takes N` run, where a prompt's N takes are not N independent draws (counted as files they
narrow the interval by about sqrt(N)): there each prompt is one draw, its takes' mean, weighed by its takes
where prompts hold different numbers of them, so that the interval stays about the score, the mean over the
files (`clap_half_width`); the same weights hold in the paired difference of two runs' scores over the same
draws that `tta report` ranks by (`paired_clap_difference`). The interval is Student's t's with one degree of
freedom fewer than the draws (`t95`: 4.30 standard errors for 3 prompts, 2.26 for 10, near 1.96 for many), as
the paired test's is; eval.json records which (`clap_interval`). Light to import (numpy; scipy's t when an
interval is computed): `tta report` uses it without torch.
"""

from __future__ import annotations

import numpy as np


def clap_draws(rows: list[dict]) -> tuple[list[tuple[tuple, str, float]], int, bool]:
    """A result's CLAP scores as independent draws, from its item rows (items.csv's, the items `tta eval` writes
    there, or those `tta clap score` scored): ([(key, prompt, score)], files scored, whether it is a `--takes` run).
    A row holds "clap_score" (a number, or empty where the file was not scored), "name", "prompt" and, of a
    `--takes` run, "take" and "row" (its row of the run). A file is one draw, keyed ("file", its name); a `--takes`
    run's prompt is one, its takes' mean, keyed ("row", its row of the run), or ("prompt", its text) in older items
    without the row."""
    groups, scored, takes = clap_groups(rows)
    return [(k, text, float(np.mean(v))) for k, text, v in groups], scored, takes


def clap_groups(rows: list[dict]) -> tuple[list[tuple[tuple, str, list[float]]], int, bool]:
    """The scored rows as draws (`clap_draws`): ([(key, prompt, its files' scores)], files scored, whether it
    is a `--takes` run)."""
    scored = [r for r in rows if r.get("clap_score") not in (None, "")]
    if not any(r.get("take") not in (None, "") for r in scored):
        return [(("file", r.get("name")), r.get("prompt") or "", [float(r["clap_score"])]) for r in scored], \
            len(scored), False
    by_prompt: dict[tuple, list[float]] = {}
    texts: dict[tuple, str] = {}
    for r in scored:   # by the run's row (two rows may share a prompt's text); older items by text
        row = r.get("row")
        key = ("row", row) if row not in (None, "") else ("prompt", r.get("prompt") or "")
        by_prompt.setdefault(key, []).append(float(r["clap_score"]))
        texts[key] = r.get("prompt") or ""
    return [(k, texts[k], v) for k, v in by_prompt.items()], len(scored), True


def clap_half_width(rows: list[dict]) -> float | None:
    """The half-width of the 95% confidence interval of a result's CLAP score, the mean over its scored files:
    t95(k - 1) standard errors (`clap_standard_error`) for its k draws (`clap_draws`) drawn at random,
    Student's t as the paired test's (4.30 for 3 draws; it was 1.96 whatever k, over 2 times too narrow
    there); None with fewer than 2 draws (or no rows)."""
    se = clap_standard_error(rows)
    return None if se is None else t95(len(clap_groups(rows)[0]) - 1) * se


def clap_standard_error(rows: list[dict]) -> float | None:
    """The standard error of a result's CLAP score, the mean over its scored files, its draws (`clap_draws`)
    drawn at random; None with fewer than 2 draws (or no rows).

    With one file a draw, or a `--takes` run's prompts each of as many takes, that is sd / sqrt(n) of the
    draws' values. Where a `--takes` run's prompts hold different numbers of takes (a run stopped part-way,
    files left out), the score weighs each prompt by its takes and is not the mean of the prompts' means, and
    the standard error is the score's as a mean over clusters (the ratio estimator's, the prompts the
    clusters): sqrt(k / (k - 1) * sum(n_i^2 (m_i - m)^2)) / N for k prompts of n_i takes of mean m_i, m the
    score and N the files. With equal takes it is the one above; either way [score - x, score + x] is about the
    score it is printed beside."""
    groups = [scores for _, _, scores in clap_groups(rows)[0]]
    if len(groups) < 2:
        return None
    deviations, files = _deviations(groups)
    k = len(groups)
    return float(np.sqrt(k / (k - 1) * np.sum(deviations ** 2)) / files)


def t95(df: float) -> float:
    """The two-sided 95% quantile of Student's t with `df` degrees of freedom (12.71 at 1, 4.30 at 2, 2.26 at
    9, 1.96 in the limit; `welch_df`'s need not be whole): a mean of a few draws is not known to 1.96 of its
    estimated standard errors."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def welch_df(se_a: float, df_a: int, se_b: float, df_b: int) -> float:
    """The degrees of freedom of the difference of two independent means of standard errors `se_a` and `se_b`,
    each with its own (Welch 1947, Satterthwaite 1946): (se_a^2 + se_b^2)^2 / (se_a^4 / df_a + se_b^4 / df_b),
    between min(df_a, df_b) and df_a + df_b; its 95% interval is ± t95 of it times sqrt(se_a^2 + se_b^2),
    not 1.96 times (two runs of 3 draws each, of equal standard errors: 4 degrees of freedom, t 2.78). Both
    standard errors 0: df_a + df_b (the difference is then compared with 0 whatever the quantile)."""
    a, b = se_a ** 2, se_b ** 2
    if a + b == 0:
        return float(df_a + df_b)
    return float((a + b) ** 2 / (a ** 2 / df_a + b ** 2 / df_b))


def paired_clap_difference(pairs: list[tuple[list[float], list[float]]]) -> tuple[float, float] | None:
    """Two runs' CLAP scores over the same k draws, `pairs[i]` draw i's files' scores in run a and in run b (as
    `clap_groups` lists each draw's: one file's score, or a `--takes` run's prompt's takes') -> (a's score minus
    b's, its standard error), the scores being the means over the files; None with fewer than 2 draws, as
    `clap_half_width` gives no interval then. Its 95% interval is ± t95(k - 1) standard errors.

    Each score weighs a draw by its files in its run (`clap_standard_error`), so the difference is that of two
    ratio estimators over the same clusters: its standard error is sqrt(k / (k - 1) * sum(z_i^2)), z_i the
    difference of n_i (m_i - m) / N between the runs. Where each run's draws hold equal numbers of files (one
    file a draw, or equal takes) that is sd / sqrt(k) of the draws' differences, the paired t test's; with
    unequal takes that test was about the prompts' unweighted means, not about the scores."""
    k = len(pairs)
    if k < 2:
        return None
    (deviations_a, files_a), (deviations_b, files_b) = (_deviations([p[run] for p in pairs]) for run in (0, 1))
    z = deviations_a / files_a - deviations_b / files_b
    difference = np.mean(np.concatenate([a for a, _ in pairs])) - np.mean(np.concatenate([b for _, b in pairs]))
    return float(difference), float(np.sqrt(k / (k - 1) * np.sum(z ** 2)))


def _deviations(groups: list[list[float]]) -> tuple[np.ndarray, float]:
    """(n_i (m_i - m) of each draw of n_i files of mean m_i, m the mean over the files; N, the files)."""
    sizes = np.array([len(g) for g in groups], dtype=np.float64)
    means = np.array([np.mean(g) for g in groups])
    score = float(np.sum(sizes * means) / np.sum(sizes))   # the mean over the files
    return sizes * (means - score), float(np.sum(sizes))


def clap_interval(score: float, rows: list[dict]) -> dict:
    """The interval of CLAP score `score` over item `rows` (`clap_draws`) as a result records it: clap_score_ci95
    ([low, high], score ± `clap_half_width`; None with fewer than 2 draws), clap_score_ci95_draws (how many),
    clap_score_ci95_unit ("files", or "prompts" for a `--takes` run), clap_score_ci95_distribution ("t": the
    half-width is t95(df) standard errors; results without it, from before, meant 1.96: `recorded_interval`)
    and clap_score_ci95_df (the draws - 1; None without an interval)."""
    draws, _, takes = clap_draws(rows)
    half = clap_half_width(rows)
    df = None if half is None else len(draws) - 1
    return {"clap_score_ci95": None if half is None else [score - half, score + half],
            "clap_score_ci95_draws": len(draws), "clap_score_ci95_unit": "prompts" if takes else "files",
            "clap_score_ci95_distribution": "t", "clap_score_ci95_df": df}


def recorded_interval(record: dict) -> tuple[float | None, float | None, int | None, int | None, bool]:
    """A CLAP score's interval as `clap_interval` recorded it in `record` (eval.json's protocol.clap, or a
    `tta clap score` result): (its half-width, None without one: fewer than 2 draws, or a record from before
    the interval was recorded; the standard error it is made of, the half-width / t95(df) where the record
    names Student's t, / 1.96 in a record from before (no clap_score_ci95_distribution), which took 1.96
    whatever the draws: read as it was meant, not as a t interval; its degrees of freedom, the draws - 1 in
    either, whose standard error was over its k draws too (eval.json's clap_score_ci95_df repeats it); its
    draws, None in a record from before them; whether they are prompts: a `--takes` run).
    Its fields are checked where read (eval.outputs: every interval recorded its draws with it)."""
    interval, draws = record.get("clap_score_ci95"), record.get("clap_score_ci95_draws")
    if draws is None:   # recorded with the interval: a record from before it
        return None, None, None, None, False
    takes = record.get("clap_score_ci95_unit") == "prompts"
    half = (float(interval[1]) - float(interval[0])) / 2 if interval else None
    if half is None or not np.isfinite(half) or draws < 2:
        return None, None, None, draws, takes
    t = record.get("clap_score_ci95_distribution") == "t"   # else 1.96, as results from before it meant
    return half, half / (t95(draws - 1) if t else 1.96), draws - 1, draws, takes


def interval_words(record: dict) -> str | None:
    """A recorded interval (`recorded_interval`) as `tta clap score`, `tta eval` and `tta report` print it
    (`ci95_words`); None without one."""
    half, _, _, _, takes = recorded_interval(record)
    return None if half is None else ci95_words(half, over_prompts=takes)


def ci95_words(half: float, *, over_prompts: bool) -> str:
    """The interval as the commands print it: "95% CI ±x" (x to 2 significant digits), and of a `--takes` run
    " with the prompts as the draws": it is about the score, the mean over the files, beside which it is
    printed, its standard error counting each prompt as one draw (`clap_standard_error`), not each file."""
    return f"95% CI ±{half:.2g}" + (" with the prompts as the draws" if over_prompts else "")
