"""The CLAP score's 95% confidence interval, one rule for `tta clap score`, `tta eval` and `tta report`.

A CLAP score is a mean over the clips scored, so it comes with the noise of the prompts drawn: a difference
between two runs smaller than the interval's half-width says little. The clips are the draws, except in a
`tta generate --takes N` run, where a prompt's N takes are not N independent draws (counted as files they
narrow the interval by about sqrt(N)): there each prompt is one draw, its takes' mean. Light to import (numpy
only): `tta report` uses it without torch.
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
    scored = [r for r in rows if r.get("clap_score") not in (None, "")]
    takes = any(r.get("take") not in (None, "") for r in scored)
    if not takes:
        return [(("file", r.get("name")), r.get("prompt") or "", float(r["clap_score"])) for r in scored], \
            len(scored), False
    by_prompt: dict[tuple, list[float]] = {}
    texts: dict[tuple, str] = {}
    for r in scored:   # by the run's row (two rows may share a prompt's text); older items by text
        row = r.get("row")
        key = ("row", row) if row not in (None, "") else ("prompt", r.get("prompt") or "")
        by_prompt.setdefault(key, []).append(float(r["clap_score"]))
        texts[key] = r.get("prompt") or ""
    return [(k, texts[k], float(np.mean(v))) for k, v in by_prompt.items()], len(scored), True


def clap_half_width(rows: list[dict]) -> float | None:
    """The half-width of the 95% confidence interval of a result's CLAP score (1.96 sd / sqrt(n) over its draws,
    `clap_draws`); None with fewer than 2 draws (or no rows)."""
    values = [v for _, _, v in clap_draws(rows)[0]]
    return 1.96 * float(np.std(values, ddof=1)) / np.sqrt(len(values)) if len(values) >= 2 else None


def clap_interval(score: float, rows: list[dict]) -> dict:
    """The interval of CLAP score `score` over item `rows` (`clap_draws`) as a result records it: clap_score_ci95
    ([low, high], score ± `clap_half_width`; None with fewer than 2 draws), clap_score_ci95_draws (how many) and
    clap_score_ci95_unit ("files", or "prompts" for a `--takes` run)."""
    draws, _, takes = clap_draws(rows)
    half = clap_half_width(rows)
    return {"clap_score_ci95": None if half is None else [score - half, score + half],
            "clap_score_ci95_draws": len(draws), "clap_score_ci95_unit": "prompts" if takes else "files"}


def ci95_words(half: float, *, over_prompts: bool) -> str:
    """The interval as the commands print it: "95% CI ±x" (x to 2 significant digits), and of a `--takes` run
    " over the prompts' means"."""
    return f"95% CI ±{half:.2g}" + (" over the prompts' means" if over_prompts else "")
