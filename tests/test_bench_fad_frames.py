"""bench/fad_frames.py: the measurement behind eval/report.py's FAD_FRAMES_SPREAD, checked on Gaussian frames whose
FAD bias and noise are known. Against N(0, I_D) itself, FAD of n frames is |mean|^2 + tr(S) + D - 2 tr(S^1/2),
whose expectation is (D + D(D + 1) / 4) / n to first order (9 / n for D = 4); against N(m, I_D) its std is
2 |m| / sqrt(n) (the term -2 m . mean), for independent sets of n frames."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.test_ldm_fixtures import bench_module

D = 4
SLOPE = D + D * (D + 1) / 4          # 9


@pytest.fixture(scope="module")
def fad_frames():
    return bench_module("fad_frames")


def reference(mu):
    from eval.fad import FrechetStats

    return FrechetStats(mu=np.asarray(mu, np.float64), sigma=np.eye(D), n=10**9)


def test_the_ladder_pairs_every_count_with_one_a_tenth_smaller(fad_frames):
    sizes = fad_frames.ladder(1000)
    assert sizes == [227, 250, 455, 500, 606, 667, 727, 800, 909, 1000]
    assert fad_frames.ladder(20) == sorted(set(fad_frames.ladder(20))) and min(fad_frames.ladder(20)) >= 2


def test_the_fitted_bias_slope_and_the_paired_step_are_those_of_gaussian_frames(fad_frames):
    frames = np.random.default_rng(0).standard_normal((8000, D))
    sizes = fad_frames.ladder(4000)
    values = fad_frames.draw_fads(frames, None, sizes, reference(np.zeros(D)), draws=100, seed=1)
    assert values.shape == (100, len(sizes))
    summary = fad_frames.summarise(values, sizes, len(frames), D)
    assert summary["fit"]["slope"] == pytest.approx(SLOPE, rel=0.15)
    for rung in (r for r in summary["rungs"] if "step" in r):     # 10 % fewer frames: 0.1 x SLOPE / n higher
        assert rung["partner"] == round(rung["n"] / 1.1)
        expected = SLOPE * (1 / rung["partner"] - 1 / rung["n"])
        assert abs(rung["step"] - expected) < 3 * rung["step_se"] < expected, rung
        assert rung["step_fit"] == pytest.approx(expected, rel=0.15)


def test_the_std_of_one_run_is_bounded_from_the_draws_of_a_finite_pool(fad_frames):
    """Subsets of half the pool vary up to sqrt(2) times less than independent sets of that size: the bound is
    reached where the terms linear in the frames dominate (a shifted reference), and the std of independent
    sets lies between the two bounds where they do not (the reference the frames' own distribution)."""
    frames = np.random.default_rng(2).standard_normal((6000, D))
    shift = np.zeros(D)
    shift[0] = 1.0
    sizes = fad_frames.ladder(3000)
    values = fad_frames.draw_fads(frames, None, sizes, reference(shift), draws=200, seed=3)
    rungs = fad_frames.summarise(values, sizes, len(frames), D)["rungs"]
    expected = [2.0 / np.sqrt(r["n"]) for r in rungs]
    assert np.mean([r["sd_run_high"] / e for r, e in zip(rungs, expected)]) == pytest.approx(1.0, abs=0.1)
    top = rungs[-1]
    assert top["n"] == 3000 and top["sd_run_high"] == pytest.approx(expected[-1], rel=0.15)
    assert top["sd_draws"] < 0.8 * expected[-1]        # the std across half-pool subsets is too small

    rng = np.random.default_rng(4)
    values = fad_frames.draw_fads(frames, None, [1500, 3000], reference(np.zeros(D)), draws=200, seed=5)
    top = fad_frames.summarise(values, [1500, 3000], len(frames), D)["rungs"][-1]
    independent = np.std([fad_frames.draw_fads(rng.standard_normal((3000, D)), None, [3000], reference(np.zeros(D)),
                                               draws=1, seed=i)[0, 0] for i in range(200)], ddof=1)
    assert 0.9 * top["sd_draws"] < independent < 1.1 * top["sd_run_high"]


def test_whole_clips_move_together(fad_frames):
    """Clips of 3 identical frames: n frames hold n / 3 independent ones, so the bias slope is 3 times as steep
    drawn by clips, and a draw by clips still scores exactly n frames (the last clip cut)."""
    frames = np.repeat(np.random.default_rng(4).standard_normal((3000, D)), 3, axis=0)
    sizes = fad_frames.ladder(4500)
    assert any(n % 3 for n in sizes)
    values = fad_frames.draw_fads(frames, [3] * 3000, sizes, reference(np.zeros(D)), draws=100, seed=5)
    assert fad_frames.summarise(values, sizes, len(frames), D)["fit"]["slope"] == pytest.approx(3 * SLOPE, rel=0.2)
    with pytest.raises(ValueError, match="clip_frames add up to 8999"):
        fad_frames.draw_fads(frames, [3] * 2999 + [2], sizes, reference(np.zeros(D)), draws=3)



def test_the_draws_are_those_fad_infinity_fits(fad_frames):
    """One sampling code: the bench's draws of one seed are eval/fad.py's, by rows and by whole clips (the mean
    over draws is fad_infinity's value per size, to the bit)."""
    from eval.fad import fad_infinity

    frames = np.random.default_rng(6).standard_normal((600, D)) + 0.1
    sizes = [100, 250, 600]
    for clips in (None, [3] * 200):
        values = fad_frames.draw_fads(frames, clips, sizes, reference(np.zeros(D)), draws=4, seed=7)
        fit = fad_infinity(frames, reference(np.zeros(D)), sizes=tuple(sizes), clip_frames=clips, draws=4, seed=7)
        assert values.mean(axis=0).tolist() == fit["values"]

def test_the_verdict_reads_the_step_against_the_noise(fad_frames):
    def rung(n, low, high, fad, spread):
        return {"n": n, "step": 1.0, "step_over_sd": [low, high], "step_over_fad": fad, "spread_at_one_sd": spread}

    rungs = [rung(100, 2.0, 2.5, 0.05, [1.04, 1.05]), rung(400, 0.3, 0.5, 0.02, [1.2, 1.3]),
             rung(800, 0.7, 1.1, 0.01, None), {"n": 880}]
    v = fad_frames.verdict({"rungs": rungs}, 10, 5)
    assert v["n"] == [100, 400, 800] and v["max_step_over_sd"] == [2.0, 2.5] and v["spread_at_one_sd"] == [1.04, 1.05]
    assert v["ten_percent_within_noise"] is False
    v = fad_frames.verdict({"rungs": rungs[1:2]}, 40, 5)     # 400 frames: 10 x D are enough
    assert v["n"] == [400] and v["ten_percent_within_noise"] is True and v["max_step_over_fad"] == 0.02
    v = fad_frames.verdict({"rungs": rungs}, 40, 5)          # 100 frames < 5 x 40: the rungs of 400 and 800 count
    assert v["n"] == [400, 800] and v["max_step_over_sd"] == [0.7, 1.1] and v["spread_at_one_sd"] == [1.2, 1.3]
    assert v["ten_percent_within_noise"] is None             # the step of 800 is not told from one sd
    assert fad_frames.verdict({"rungs": rungs[3:]}, 40, 5)["ten_percent_within_noise"] is None


def test_the_script_embeds_real_files_and_appends_a_record_without_machine_paths(fad_frames, tmp_path):
    from tests.test_recorded_results import machine_path, strings

    _write_clips(tmp_path / "clips")
    results = tmp_path / "results.jsonl"
    fad_frames.main(["--generated", str(tmp_path / "clips"), "--halves", "--embedders", "mfcc", "--draws", "4",
                     "--top", "0.9", "--cache-dir", str(tmp_path / "cache"), "--results", str(results)])
    record = json.loads(results.read_text())
    assert record["bench"] == "fad_frames" and record["settings"]["halves"]
    (r,) = [r for r in record["results"] if r["unit"] == "clips"]
    assert r["generated"]["clips"] == 12 and r["generated"]["frames"] == 12 * 5 and r["reference"]["files_used"] == 12
    assert {"mean", "sd_draws", "sd_run_high"} <= set(r["rungs"][0]) and record["answer"]
    assert not [s for s in strings(record) if machine_path(s)]


def _write_clips(folder):
    """24 clips of 3 s (5 mfcc frames each): tones in noise."""
    from tta.audio import save_audio

    rng = np.random.default_rng(6)
    t = np.arange(3 * 16_000) / 16_000
    for i in range(24):
        wav = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 3000) * t) + 0.05 * rng.standard_normal(t.shape)
        save_audio(folder / f"c{i:02d}.wav", wav.astype(np.float32), 16_000)


def test_a_ladder_with_one_rung_above_d_records_the_same_sizes_fit_as_skipped(fad_frames, tmp_path, capsys):
    """--top 0.7 of 60 mfcc frames (D 40) leaves one rung above D: fad_infinity's ValueError stopped the bench
    with a traceback. It records the fit as skipped with the reason, as it does the default fit."""
    _write_clips(tmp_path / "clips")
    record = fad_frames.main(["--generated", str(tmp_path / "clips"), "--halves", "--embedders", "mfcc", "--draws",
                              "4", "--top", "0.7", "--units", "clips", "--cache-dir", str(tmp_path / "cache"),
                              "--results", str(tmp_path / "results.jsonl")])
    (r,) = record["results"]
    assert r["fad_infinity_same_sizes"] == {"skipped": "FAD-inf needs >= 2 subset sizes in [2, 60], got (42,)"}
    assert "skipped" in r["fad_infinity_default"] and r["rungs"]
    assert "fad_infinity's – (FAD-inf needs >= 2 subset sizes" in capsys.readouterr().out
