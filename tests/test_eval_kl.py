"""KL (paired by name; softmax and sigmoid) and IS on constructed logits with known values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eval.kl import inception_score, kl_divergence, kl_per_pair


def test_kl_known_values():
    ref = np.array([[0.0, 0.0]])  # softmax (1/2, 1/2); sigmoid (1/2, 1/2)
    gen = np.array([[math.log(3.0), 0.0]])  # softmax (3/4, 1/4); sigmoid (3/4, 1/2)
    expected_soft = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    expected_sig = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.5)
    assert kl_per_pair(gen, ref, mode="softmax")[0] == pytest.approx(expected_soft, abs=1e-5)
    assert kl_per_pair(gen, ref, mode="sigmoid")[0] == pytest.approx(expected_sig, abs=1e-5)
    # identical outputs: zero up to the epsilon inside the log (|bias| <= classes x eps)
    z = np.random.default_rng(0).standard_normal((4, 527))
    assert np.abs(kl_per_pair(z, z)).max() <= 527 * 1e-6
    with pytest.raises(ValueError, match="softmax' or 'sigmoid"):
        kl_per_pair(z, z, mode="hinge")


def test_kl_pairs_by_name_and_averages_per_file():
    rng = np.random.default_rng(1)
    ref = {f"a{i}": rng.standard_normal(10) for i in range(4)}
    gen = {"a0": ref["a0"], "a1": ref["a1"] + 2.0, "a2": ref["a2"], "a3": rng.standard_normal(10)}
    out = kl_divergence(gen, ref)
    assert out["pairs"] == 4 and set(out["per_item"]) == set(ref)
    assert out["unpaired_generated"] == 0 and out["unpaired_reference"] == 0
    assert out["per_item"]["a0"][0] == pytest.approx(0.0, abs=1e-4)
    assert out["kl_softmax"] == pytest.approx(np.mean([v[0] for v in out["per_item"].values()]))
    with pytest.raises(ValueError, match="paired files named alike"):
        kl_divergence({"x": ref["a0"]}, ref)


def test_kl_refuses_partial_pairing_like_audioldm_eval():
    """audioldm_eval computes KL only when > 99 % of the names match on both sides; a partial overlap
    (here 1 of 6 generated files, as in the audit's demo) is refused, naming how many are unpaired."""
    rng = np.random.default_rng(2)
    ref = {f"r{i:03d}": rng.standard_normal(5) for i in range(12)}
    gen = {"r000": rng.standard_normal(5), **{f"g{i}": rng.standard_normal(5) for i in range(5)}}
    with pytest.raises(ValueError, match=r"5 of 6 generated and 11 of 12 reference files have no partner") as e:
        kl_divergence(gen, ref)
    assert "\n" not in str(e.value)
    # generated names all paired, but most reference files unpaired: refused too
    with pytest.raises(ValueError, match=r"0 of 1 generated and 11 of 12 reference"):
        kl_divergence({"r000": ref["r000"]}, ref)
    # 1 unpaired of 200 on each side (99.5 % paired) is accepted and counted
    big_ref = {f"r{i:03d}": rng.standard_normal(5) for i in range(200)}
    big_gen = {**{k: v for k, v in big_ref.items() if k != "r000"}, "extra": rng.standard_normal(5)}
    out = kl_divergence(big_gen, big_ref)
    assert (out["pairs"], out["unpaired_generated"], out["unpaired_reference"]) == (199, 1, 1)
    # exactly 99 % paired (99 of 100) is not more than 99 %: refused, as audioldm_eval's strict comparison does
    ref100 = {f"r{i:03d}": rng.standard_normal(5) for i in range(100)}
    gen100 = {**{k: v for k, v in ref100.items() if k != "r000"}, "extra": rng.standard_normal(5)}
    with pytest.raises(ValueError, match=r"1 of 100 generated and 1 of 100 reference"):
        kl_divergence(gen100, ref100)


def _audioldm_eval_is(logits, splits=10, seed=2020):
    """Reference written from audioldm_eval's described procedure: shuffle the rows with
    RandomState(seed).permutation, softmax, split by slices i*N//splits, IS per split, mean and np.std."""
    n = logits.shape[0]
    shuffled = logits[np.random.RandomState(seed).permutation(n)]
    z = shuffled - shuffled.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        part_p, part_log_p = p[i * n // splits:(i + 1) * n // splits], log_p[i * n // splits:(i + 1) * n // splits]
        log_q = np.log(part_p.mean(axis=0, keepdims=True))
        scores.append(math.exp(float((part_p * (part_log_p - log_q)).sum(axis=1).mean())))
    return float(np.mean(scores)), float(np.std(scores))


@pytest.mark.parametrize("n", [100, 964, 1003])
def test_inception_score_matches_audioldm_eval_procedure(n):
    logits = np.random.default_rng(n).standard_normal((n, 527)) * 3.0
    ours = inception_score(logits)
    mean, std = _audioldm_eval_is(logits)
    assert ours["is_mean"] == pytest.approx(mean, rel=1e-10) and ours["is_std"] == pytest.approx(std, rel=1e-8)
    assert ours["splits"] == 10 and ours["seed"] == 2020 and "warning" not in ours


def test_inception_score_known_values():
    k = 8
    confident = np.eye(k) * 50.0  # each sample sure of a different class: IS -> k
    assert inception_score(confident, splits=1)["is_mean"] == pytest.approx(k, rel=1e-6)
    same = np.zeros((k, k))  # uniform predictions: IS = 1
    assert inception_score(same, splits=1)["is_mean"] == pytest.approx(1.0)
    # two splits, each IS 4 once the rows are shuffled with RandomState(2020): place them so
    rows = np.empty((8, 4))
    rows[np.random.RandomState(2020).permutation(8)] = np.tile(np.eye(4) * 50.0, (2, 1))
    two = inception_score(rows, splits=2)
    assert two["is_mean"] == pytest.approx(4.0, rel=1e-6) and two["is_std"] == pytest.approx(0.0, abs=1e-6)


def test_inception_score_refuses_or_warns_on_tiny_sets(caplog):
    logits = np.random.default_rng(0).standard_normal((12, 20))
    with caplog.at_level("WARNING", logger="eval.kl"):
        out = inception_score(logits)  # 12 files in 10 splits: most splits hold a single file
    assert "warning" in out and "at least 20 files" in out["warning"] and out["warning"] in caplog.text
    with pytest.raises(ValueError, match="IS needs at least 10 generated files .* got 6"):
        inception_score(logits[:6])
    assert "warning" not in inception_score(np.random.default_rng(0).standard_normal((20, 20)))


def test_inception_score_names_splits_that_are_not_an_integer():
    """int(splits) took "10" and cut 2.5 down to 2 without a word."""
    logits = np.random.default_rng(0).standard_normal((20, 5))
    for splits in ("10", 2.5):
        with pytest.raises(ValueError, match=f"inception_score splits={splits!r} must be an integer"):
            inception_score(logits, splits=splits)
    assert inception_score(logits, splits=np.int64(2)) == inception_score(logits, splits=2)
