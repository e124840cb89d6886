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
    gen = {"a0": ref["a0"], "a1": ref["a1"] + 2.0, "zz": rng.standard_normal(10)}  # zz has no partner
    out = kl_divergence(gen, ref)
    assert out["pairs"] == 2 and set(out["per_item"]) == {"a0", "a1"}
    assert out["per_item"]["a0"][0] == pytest.approx(0.0, abs=1e-4)
    assert out["kl_softmax"] == pytest.approx(np.mean([v[0] for v in out["per_item"].values()]))
    with pytest.raises(ValueError, match="no common file names"):
        kl_divergence({"x": ref["a0"]}, ref)


def test_inception_score_known_values():
    k = 8
    confident = np.eye(k) * 50.0  # each sample sure of a different class: IS -> k
    assert inception_score(confident, splits=1)["is_mean"] == pytest.approx(k, rel=1e-6)
    same = np.zeros((k, k))  # uniform predictions: IS = 1
    assert inception_score(same, splits=1)["is_mean"] == pytest.approx(1.0)
    two = inception_score(np.tile(np.eye(4) * 50.0, (2, 1)), splits=2)  # two splits, each IS 4
    assert two["is_mean"] == pytest.approx(4.0, rel=1e-6) and two["is_std"] == pytest.approx(0.0, abs=1e-6)
