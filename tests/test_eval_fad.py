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
