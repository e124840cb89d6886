"""Fréchet distance: invariants, closed form, SciPy / torchmetrics parity, streaming, merging, stats files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval.fad import (
    FrechetDistanceMetric,
    FrechetStats,
    StatsError,
    fad_infinity,
    frechet_distance,
    frechet_distance_from_embeddings,
)


def _data(n=400, d=12, seed=0, shift=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    return (rng.standard_normal((n, d)) @ mix) * scale + shift


def _scipy_fd(a, b):
    """The reference recipe (Heusel et al.'s TTUR code, adopted by the FAD tools) with scipy's sqrtm."""
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = np.asarray(linalg.sqrtm(s1.dot(s2))).real
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_identical_sets_give_zero_and_symmetry():
    x = _data()
    y = _data(seed=1, shift=0.3, scale=1.4)
    assert frechet_distance_from_embeddings(x, x) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance_from_embeddings(x, y) > 0.1
    assert frechet_distance_from_embeddings(x, y) == pytest.approx(frechet_distance_from_embeddings(y, x), rel=1e-10)
    # torch tensors are accepted too
    assert frechet_distance_from_embeddings(torch.from_numpy(x).float(), torch.from_numpy(y)) == pytest.approx(
        frechet_distance_from_embeddings(x.astype(np.float32), y), rel=1e-9)


def test_closed_form_gaussians():
    # diagonal covariances: FD = |mu_a - mu_b|^2 + sum (sqrt(a_i) - sqrt(b_i))^2
    rng = np.random.default_rng(3)
    mu_a, mu_b = rng.standard_normal(6), rng.standard_normal(6)
    var_a, var_b = rng.uniform(0.2, 3.0, 6), rng.uniform(0.2, 3.0, 6)
    expected = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()
    assert frechet_distance(mu_a, np.diag(var_a), mu_b, np.diag(var_b)) == pytest.approx(expected, rel=1e-12)
    # a rotation applied to both Gaussians leaves the distance unchanged
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    rotated = frechet_distance(q @ mu_a, q @ np.diag(var_a) @ q.T, q @ mu_b, q @ np.diag(var_b) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_scipy_sqrtm_and_torchmetrics(seed):
    from torchmetrics.image.fid import _compute_fid

    a = _data(n=300, d=16, seed=seed)
    b = _data(n=250, d=16, seed=seed + 10, shift=0.2, scale=0.8)
    ours = frechet_distance_from_embeddings(a, b)
    assert ours == pytest.approx(_scipy_fd(a, b), rel=1e-6)
    sa, sb = FrechetStats.from_embeddings(a), FrechetStats.from_embeddings(b)
    tm = _compute_fid(torch.from_numpy(sa.mu), torch.from_numpy(sa.sigma), torch.from_numpy(sb.mu),
                      torch.from_numpy(sb.sigma))
    assert ours == pytest.approx(float(tm), rel=1e-6)



def test_a_precomputed_reference_root_gives_the_same_distance():
    """sqrt_b (the reference's root, computed once for FAD-inf's many subsets) is tr((S_a S_b)^(1/2)) read from
    S_b's side: the same distance as from S_a's, and the one scipy's sqrtm gives."""
    from eval.fad import _sqrt_psd, trace_sqrt_product

    a, b = _data(n=300, d=16, seed=3), _data(n=250, d=16, seed=13, shift=0.2, scale=0.8)
    sa, sb = FrechetStats.from_embeddings(a), FrechetStats.from_embeddings(b)
    root = _sqrt_psd(sb.sigma)
    assert trace_sqrt_product(sa.sigma, sb.sigma, sqrt_b=root) == pytest.approx(
        trace_sqrt_product(sa.sigma, sb.sigma), rel=1e-10)
    assert frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma, sqrt_b=root) == pytest.approx(_scipy_fd(a, b), rel=1e-6)
    assert frechet_distance(sb.mu, sb.sigma, sb.mu, sb.sigma, sqrt_b=root) == 0.0   # round-off below 0 clamped

def test_streaming_equals_batch_and_states_merge_across_processes():
    gen, ref = _data(n=333, d=10, seed=4, shift=0.5), _data(n=290, d=10, seed=5)
    batch = frechet_distance_from_embeddings(gen, ref)

    streaming = FrechetDistanceMetric(10)
    for chunk in np.array_split(gen, 7):
        streaming.update(chunk, generated=True)
    for chunk in np.array_split(ref, 3):
        streaming.update(chunk, generated=False)
    assert float(streaming.compute()) == pytest.approx(batch, rel=1e-9)

    # two "processes", each seeing part of both sets; summing their states (what dist_reduce_fx="sum"
    # does in a DDP all-reduce) gives the single-process value
    p0, p1 = FrechetDistanceMetric(10), FrechetDistanceMetric(10)
    p0.update(gen[:100], generated=True)
    p1.update(gen[100:], generated=True)
    p0.update(ref[:200], generated=False)
    p1.update(ref[200:], generated=False)
    from torchmetrics.utilities.data import dim_zero_sum

    assert all(p0._reductions[name] is dim_zero_sum for name in p0._defaults)
    summed = FrechetDistanceMetric(10)
    summed.update(np.zeros((0, 10)), generated=True)  # marks the metric as updated; adds nothing
    for name in summed._defaults:
        setattr(summed, name, getattr(p0, name) + getattr(p1, name))
    assert float(summed.compute()) == pytest.approx(batch, rel=1e-9)
    p0.merge_state(p1)
    assert float(p0.compute()) == pytest.approx(batch, rel=1e-9)


def test_stats_round_trip_and_embedder_check(tmp_path):
    x = _data(n=50, d=8)
    stats = FrechetStats.from_embeddings(x, embedder="mfcc@v1", sample_rate=16_000, num_files=5)
    path = stats.save(tmp_path / "ref.npz")
    back = FrechetStats.load(path, expected_embedder="mfcc@v1")
    np.testing.assert_array_equal(back.mu, stats.mu)
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    assert (back.n, back.embedder, back.sample_rate, back.num_files) == (50, "mfcc@v1", 16_000, 5)
    with pytest.raises(StatsError, match=r"'mfcc@v1'.*'aisfx@sha256:abc'"):
        FrechetStats.load(path, expected_embedder="aisfx@sha256:abc")
    other = FrechetStats.from_embeddings(x, embedder="vggish@sha256:1")
    with pytest.raises(StatsError, match="vggish"):
        stats.distance(other)
    with pytest.raises(StatsError, match="at least 2"):
        FrechetStats.from_embeddings(x[:1])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(StatsError, match="bad.npz"):
        FrechetStats.load(tmp_path / "bad.npz")


def test_fad_infinity_removes_small_sample_bias():
    rng = np.random.default_rng(7)
    d = 24
    population = FrechetStats(mu=np.zeros(d), sigma=np.eye(d), n=10**6)
    gen = rng.standard_normal((1500, d))  # same distribution: the true FD is 0, finite N biases it upward
    finite = FrechetStats.from_embeddings(gen).distance(population)
    result = fad_infinity(gen, population, seed=0)
    assert result["slope"] > 0  # FD falls as N grows
    assert abs(result["fad_inf"]) < finite / 2
    # the whole fit is returned: sizes from max(500, 5 x D) up to all frames, its quality, seed and method
    assert result["sizes"][0] == 500 and result["sizes"][-1] == 1500 and len(result["values"]) == len(result["sizes"])
    assert 0.0 <= result["r2"] <= 1.0 and result["seed"] == 0 and result["method"].startswith("Chung et al. 2020")
    with pytest.raises(StatsError, match="needs at least 1000 generated frames.*got 999"):
        fad_infinity(gen[:999], population)


def test_fad_infinity_recovers_the_true_distance_when_d_is_large():
    """D = 64: subsets below D (the old rule started at 50) make FD non-linear in 1/N and pulled FAD-inf
    11-15 % low on this data; from max(500, 5 x D) frames the intercept is the true FD within a few %."""
    d, n, scale, shift = 64, 2000, 0.8, 0.05
    true_fd = d * (1 - scale) ** 2 + d * shift**2  # N(shift, scale^2 I) against N(0, I)
    population = FrechetStats(mu=np.zeros(d), sigma=np.eye(d), n=10**9)
    values = []
    for seed in range(4):
        gen = scale * np.random.default_rng(100 + seed).standard_normal((n, d)) + shift
        finite = FrechetStats.from_embeddings(gen).distance(population)
        assert finite > 1.15 * true_fd  # the plain FAD of 2000 frames is far off
        result = fad_infinity(gen, population, seed=seed)
        values.append(result["fad_inf"])
        assert result["fad_inf"] == pytest.approx(true_fd, rel=0.06)
        assert result["sizes"][0] == 500 and result["r2"] > 0.9
    assert np.mean(values) == pytest.approx(true_fd, rel=0.02)


def test_fad_infinity_reports_an_interval_that_holds_the_known_distance():
    """N(0.3, 0.9^2 I) against N(0, I) exactly (FD = D x 0.1^2 + D x 0.3^2 = 0.8 for D = 8): over 40 generated sets
    the 95 % interval holds the true FD in at least 80 % of them and its se is the sd of FAD-inf across the sets
    within 25 %. The draws' part alone (all that one set's subsets show) held it in 14 of 40: what another set of
    the model would change is most of the error here, and the jackknife of the set is what counts it."""
    d = 8
    true_fd = d * 0.1**2 + d * 0.3**2
    population = FrechetStats(mu=np.zeros(d), sigma=np.eye(d), n=10**9)
    results = [fad_infinity(0.9 * np.random.default_rng(p).standard_normal((1200, d)) + 0.3, population, seed=p)
               for p in range(40)]
    first = results[0]
    assert first["fad_inf_ci95"][0] < true_fd < first["fad_inf_ci95"][1]
    assert first["fad_inf_ci95"] == pytest.approx([first["fad_inf"] - 1.96 * first["fad_inf_se"],
                                                   first["fad_inf"] + 1.96 * first["fad_inf_se"]])
    assert first["fad_inf_se"] == pytest.approx(np.hypot(first["se_from_draws"], first["se_from_generated_set"]))
    assert first["draws"] == 10 and first["unit"] == "frames" and first["method"].startswith("Chung et al. 2020")
    estimates = np.array([r["fad_inf"] for r in results])
    se = np.array([r["fad_inf_se"] for r in results])
    assert np.mean([r["fad_inf_ci95"][0] <= true_fd <= r["fad_inf_ci95"][1] for r in results]) >= 0.8
    assert abs(estimates.mean() - true_fd) < 3 * estimates.std(ddof=1) / np.sqrt(len(results))
    assert np.mean(se) == pytest.approx(estimates.std(ddof=1), rel=0.25)
    draws_only = np.array([r["se_from_draws"] for r in results])
    assert np.mean(np.abs(estimates - true_fd) < 1.96 * draws_only) < 0.5


def test_more_draws_steady_fad_infinity_down_to_the_noise_of_the_set():
    """One set, seeds 0-7: FAD-inf's spread over seeds (0.0052 with 3 draws, 0.0008 with 40) and the draws' part of
    its se fall as 1/sqrt(draws); the set's part (0.006) stays, for no number of draws of one set's subsets tells
    what another set would give: here the whole se is 0.0065 with 3 draws or 40."""
    d = 8
    population = FrechetStats(mu=np.zeros(d), sigma=np.eye(d), n=10**9)
    gen = np.random.default_rng(0).standard_normal((1500, d))
    few, many = ([fad_infinity(gen, population, draws=draws, seed=s) for s in range(8)] for draws in (3, 40))
    spread = [np.std([r["fad_inf"] for r in runs], ddof=1) for runs in (few, many)]
    assert spread[1] < spread[0] / 3
    se_draws = [np.mean([r["se_from_draws"] for r in runs]) for runs in (few, many)]
    assert se_draws[1] < se_draws[0] / 2
    se_set = [np.mean([r["se_from_generated_set"] for r in runs]) for runs in (few, many)]
    assert se_set[1] == pytest.approx(se_set[0], rel=0.3)
    assert fad_infinity(gen, population, draws=5, seed=3) == fad_infinity(gen, population, draws=5, seed=3)


def test_fad_infinity_draws_whole_clips_when_told_where_they_are():
    """Clips of 10 frames that share 30 % of their variance, N(0, I) in all, against N(0, I): the true FD is 0. Drawn
    frame by frame the subsets lose what a clip's frames share, so the fit leaves part of the bias in (FAD-inf 0.02
    on average over 30 sets, 2.3 sd of one set above 0) and the interval held 0 in a third of the sets; drawn by
    clips, FAD-inf is 0 within its noise and the interval holds it."""
    d, clips, length = 8, 150, 10
    population = FrechetStats(mu=np.zeros(d), sigma=np.eye(d), n=10**9)
    by = {"frames": [], "clips": []}
    for p in range(30):
        rng = np.random.default_rng(50 + p)
        gen = (np.sqrt(0.3) * np.repeat(rng.standard_normal((clips, d)), length, axis=0)
               + np.sqrt(0.7) * rng.standard_normal((clips * length, d)))
        by["frames"].append(fad_infinity(gen, population, seed=p))
        by["clips"].append(fad_infinity(gen, population, seed=p, clip_frames=[length] * clips))
    assert by["clips"][0]["unit"] == "clips" and by["frames"][0]["unit"] == "frames"
    frames, whole = (np.array([r["fad_inf"] for r in by[unit]]) for unit in ("frames", "clips"))
    assert frames.mean() > 2 * frames.std(ddof=1)
    assert abs(whole.mean()) < 3 * whole.std(ddof=1) / np.sqrt(len(whole))
    covered = {unit: np.mean([r["fad_inf_ci95"][0] <= 0 <= r["fad_inf_ci95"][1] for r in by[unit]]) for unit in by}
    assert covered["frames"] < 0.5 and covered["clips"] >= 0.9


def test_fad_infinity_refuses_what_it_cannot_fit():
    d = 4
    population = FrechetStats(mu=np.zeros(d), sigma=np.eye(d), n=10**9)
    gen = np.random.default_rng(1).standard_normal((100, d))
    with pytest.raises(ValueError, match=r"draws=1: expected a whole number >= 2"):
        fad_infinity(gen, population, sizes=(50, 100), draws=1)
    with pytest.raises(ValueError, match=r"clip_frames: expected counts >= 1 adding up to the 100 generated frames, "
                                         r"got 9 counts adding up to 90"):
        fad_infinity(gen, population, sizes=(50, 100), clip_frames=[10] * 9)
    with pytest.raises(StatsError, match="embedding sizes differ: 4 generated vs 3"):
        fad_infinity(gen, FrechetStats(mu=np.zeros(3), sigma=np.eye(3), n=10), sizes=(50, 100))
    with pytest.raises(ValueError, match=r">= 2 subset sizes in \[2, 100\]"):
        fad_infinity(gen, population, sizes=(100, 100))
    # a clip longer than the smallest subset is cut to it; subsets are exactly the sizes asked for
    result = fad_infinity(gen, population, sizes=(30, 60, 100), clip_frames=[40, 40, 20], draws=4)
    assert result["sizes"] == [30, 60, 100] and result["unit"] == "clips" and np.isfinite(result["fad_inf_se"])


def test_a_streaming_fad_without_one_of_its_sets_names_the_missing_set():
    """FrechetDistanceMetric.compute() with no reference said "need at least 2 embeddings to estimate a covariance,
    got 0", naming neither set nor how to give it."""
    metric = FrechetDistanceMetric(4)
    metric.update(_data(n=20, d=4, seed=1), generated=True)
    with pytest.raises(StatsError, match=r"reference set: need at least 2 embeddings .* got 0 \(update\(x, "
                                         r"generated=False\) or set_reference\(stats\)\)"):
        metric.compute()
    metric.update(_data(n=1, d=4, seed=2), generated=False)
    with pytest.raises(StatsError, match="reference set: .* got 1"):
        metric.compute()
    other = FrechetDistanceMetric(4)
    other.set_reference(FrechetStats.from_embeddings(_data(n=20, d=4, seed=2)))
    with pytest.raises(StatsError, match=r"generated set: .* got 0 \(update\(x, generated=True\)\)"):
        other.compute()
    other.update(_data(n=20, d=4, seed=1), generated=True)
    assert float(other.compute()) == pytest.approx(float(metric.stats(True).distance(other.stats(False))))


def test_reference_statistics_holding_nan_or_a_negative_variance_are_refused(tmp_path):
    """A stats file with a NaN in mu gave `tta eval` 'fad nan', exit 0 and "fad": null in eval.json; one with a
    negative variance a number. Both are refused, naming the file and the array."""
    stats = FrechetStats.from_embeddings(_data(n=50, d=8), embedder="mfcc@v1", sample_rate=16_000)
    stats.mu[3] = np.nan
    with pytest.raises(StatsError, match=r"nan\.npz: mu holds NaN or inf"):
        FrechetStats.load(stats.save(tmp_path / "nan.npz"))
    stats = FrechetStats.from_embeddings(_data(n=50, d=8), embedder="mfcc@v1", sample_rate=16_000)
    stats.sigma[2, 2] = -1.0
    with pytest.raises(StatsError, match=r"neg\.npz: sigma has a negative variance on its diagonal \(index 2\)"):
        FrechetStats.load(stats.save(tmp_path / "neg.npz"))
