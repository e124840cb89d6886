"""The CLAP score's 95% interval (tta.clap.interval): Student's t with one degree of freedom fewer than its
independent draws (files, or a `--takes` run's prompts), as the report's paired test takes; it was 1.96
standard errors whatever the draws, 2.2 times too narrow for 3 prompts (t 4.30 with 2 degrees of freedom)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tta.clap.interval import (clap_half_width, clap_interval, clap_standard_error, interval_words,
                               recorded_interval, t95, welch_df)


def _files(scores) -> list[dict]:
    """items rows of one file per prompt."""
    return [{"name": f"f{i}", "prompt": f"prompt {i}", "clap_score": repr(float(v))} for i, v in enumerate(scores)]


def test_the_interval_of_three_files_is_t_with_2_degrees_of_freedom():
    scores = [0.1, 0.25, 0.4]
    se = np.std(scores, ddof=1) / np.sqrt(3)
    rows = _files(scores)
    assert clap_standard_error(rows) == pytest.approx(se, rel=1e-12)
    assert clap_half_width(rows) == pytest.approx(4.3027 * se, rel=1e-4)   # it was 1.96 * se
    got = clap_interval(0.25, rows)
    assert got["clap_score_ci95"] == pytest.approx([0.25 - 4.3027 * se, 0.25 + 4.3027 * se], rel=1e-4)
    assert (got["clap_score_ci95_draws"], got["clap_score_ci95_unit"]) == (3, "files")
    assert (got["clap_score_ci95_distribution"], got["clap_score_ci95_df"]) == ("t", 2)
    assert interval_words(got) == f"95% CI ±{4.3027 * se:.2g}"


def test_a_takes_runs_interval_takes_its_prompts_as_the_draws_for_the_degrees_of_freedom():
    """Three prompts of two takes each: 2 degrees of freedom, not 5 (the files)."""
    rows = [{"name": f"p{row}_{t}", "prompt": f"prompt {row}", "clap_score": repr(v), "take": str(t),
             "row": str(row)} for row, takes in enumerate(((0.1, 0.3), (0.4, 0.4), (0.5, 0.7)))
            for t, v in enumerate(takes, 1)]
    se = np.std([0.2, 0.4, 0.6], ddof=1) / np.sqrt(3)
    assert clap_half_width(rows) == pytest.approx(4.3027 * se, rel=1e-4)
    got = clap_interval(0.4, rows)
    assert (got["clap_score_ci95_draws"], got["clap_score_ci95_unit"], got["clap_score_ci95_df"]) == \
        (3, "prompts", 2)


def test_the_interval_of_many_draws_is_near_1_96_standard_errors():
    scores = np.random.default_rng(0).uniform(-0.2, 0.6, 2000)
    rows = _files(scores)
    ratio = clap_half_width(rows) / (np.std(scores, ddof=1) / np.sqrt(len(scores)))
    assert 1.96 < ratio < 1.962   # t with 1999 degrees of freedom: 1.9612


def test_one_draw_has_no_interval_and_records_null():
    got = clap_interval(0.3, _files([0.3]))
    assert got == {"clap_score_ci95": None, "clap_score_ci95_draws": 1, "clap_score_ci95_unit": "files",
                   "clap_score_ci95_distribution": "t", "clap_score_ci95_df": None}
    json.dumps(got, allow_nan=False)   # no inf or nan in eval.json
    assert clap_half_width(_files([0.3])) is None and interval_words(got) is None
    assert recorded_interval(got) == (None, None, None, 1, False)


def test_a_recorded_interval_gives_back_its_standard_error_by_the_rule_it_was_made_by():
    """The report compares runs without their items.csv by the standard errors of their recorded intervals:
    half-width / t95(df) where the record names t, half-width / 1.96 in a record from before (no
    clap_score_ci95_distribution), which took 1.96 whatever the draws; the degrees of freedom are the draws - 1
    in both (an old record's standard error was over its draws too), for Welch's test."""
    rows = _files([0.1, 0.25, 0.4])
    recorded = clap_interval(0.25, rows)
    half, se, df, draws, takes = recorded_interval(recorded)
    assert half == pytest.approx(clap_half_width(rows)) and se == pytest.approx(clap_standard_error(rows))
    assert (df, draws, takes) == (2, 3, False)
    old = {"clap_score_ci95": [0.2, 0.3], "clap_score_ci95_draws": 3, "clap_score_ci95_unit": "files"}
    assert recorded_interval(old) == pytest.approx((0.05, 0.05 / 1.96, 2, 3, False))
    assert interval_words(old) == "95% CI ±0.05"   # as it was printed
    assert recorded_interval({**old, "clap_score_ci95_draws": 1}) == (None, None, None, 1, False)   # none wrote
    assert recorded_interval({}) == (None, None, None, None, False)   # from before intervals were recorded


def test_welch_df_gives_the_p_value_of_scipys_welch_test():
    """The report's unpaired CLAP comparison takes t95(welch_df) standard errors of the difference: the
    Welch-Satterthwaite degrees of freedom, so that the two-sided p-value of the difference over its standard
    error at them is scipy's Welch's t test's (ttest_ind, equal_var=False), here of unequal sizes and spreads.
    Equal standard errors and degrees of freedom give twice them (3 draws a run: 4, t 2.78, not 1.96); one
    standard error 0, the other's; both 0, the sum (the difference is then compared with 0)."""
    from scipy.stats import t, ttest_ind

    rng = np.random.default_rng(0)
    a, b = rng.normal(0.4, 0.05, 5), rng.normal(0.44, 0.12, 9)
    se_a, se_b = (np.std(x, ddof=1) / np.sqrt(len(x)) for x in (a, b))
    df = welch_df(se_a, len(a) - 1, se_b, len(b) - 1)
    p = 2 * t.sf(abs(np.mean(a) - np.mean(b)) / np.hypot(se_a, se_b), df)
    assert p == pytest.approx(ttest_ind(a, b, equal_var=False).pvalue, rel=1e-9)
    assert min(len(a), len(b)) - 1 < df < len(a) + len(b) - 2
    assert welch_df(0.01, 2, 0.01, 2) == pytest.approx(4.0) and t95(4.0) == pytest.approx(2.776, abs=1e-3)
    assert welch_df(0.0, 2, 0.03, 7) == pytest.approx(7.0) and welch_df(0.0, 2, 0.0, 7) == 9.0
