"""KL divergence between classifier outputs of paired files, and the Inception Score.

Both follow audioldm_eval (Liu et al. 2023), which the AudioLDM / Tango / Make-An-Audio papers report:
- KL pairs a generated and a reference file by file name (more than 99 % of the files of each set must
  have a partner, as audioldm_eval requires; otherwise it refuses), turns the classifier's logits into
  probabilities (softmax over classes, or per-class sigmoid as PANNs' multi-label output), and computes
  sum_c p_ref,c (log p_ref,c - log(p_gen,c + eps)) per pair; the reported KL is the mean over pairs.
  (The sigmoid variant is this same sum over independent sigmoid outputs, as audioldm_eval computes it.)
- IS = exp(E_x KL(p(y|x) || p(y))) over softmax(logits) (Salimans et al. 2016), mean and std over
  `splits` chunks as audioldm_eval (and torch-fidelity) do: the rows are shuffled with
  numpy.random.RandomState(2020).permutation, then split with slices [i*N//splits : (i+1)*N//splits].
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

EPS = 1e-6  # audioldm_eval's epsilon inside the log of the generated probabilities
MIN_PAIRED_FRACTION = 0.99  # audioldm_eval computes KL only when > 99 % of the names match on both sides
IS_SEED = 2020  # audioldm_eval's shuffle seed before the IS splits


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _logits(x, what: str) -> np.ndarray:
    arr = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"{what}: expected logits of shape (N, classes) with N >= 1, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what}: logits contain NaN or inf")
    return arr


def kl_per_pair(generated_logits, reference_logits, *, mode: str = "softmax") -> np.ndarray:
    """Row-paired logits (N, C) -> (N,) KL(reference || generated) per pair, float64."""
    gen = _logits(generated_logits, "generated")
    ref = _logits(reference_logits, "reference")
    if gen.shape != ref.shape:
        raise ValueError(f"paired logits must have the same shape, got {gen.shape} and {ref.shape}")
    if mode == "softmax":
        p, q = _softmax(ref), _softmax(gen)
    elif mode == "sigmoid":
        p, q = _sigmoid(ref), _sigmoid(gen)
    else:
        raise ValueError(f"KL mode {mode!r}: expected 'softmax' or 'sigmoid'")
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - np.log(q + EPS)), 0.0)
    return terms.sum(axis=1)


def pair_by_name(generated: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> list[str]:
    """Names present in both sets (sorted). Raises unless more than 99 % of each set have a partner."""
    common = sorted(set(generated) & set(reference))
    gen_frac = len(common) / max(len(generated), 1)
    ref_frac = len(common) / max(len(reference), 1)
    if not common or gen_frac <= MIN_PAIRED_FRACTION or ref_frac <= MIN_PAIRED_FRACTION:
        lonely_g = sorted(set(generated) - set(reference))[:2]
        lonely_r = sorted(set(reference) - set(generated))[:2]
        example = "; e.g. " + ", ".join([*(f"generated {n}" for n in lonely_g), *(f"reference {n}" for n in lonely_r)])
        raise ValueError(f"KL needs paired files named alike in both folders (> 99 % of each paired): "
                         f"{len(generated) - len(common)} of {len(generated)} generated and "
                         f"{len(reference) - len(common)} of {len(reference)} reference files have no partner"
                         f"{example}")
    return common


def kl_divergence(generated: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict:
    """Per-name logits (C,) of both sets -> {"kl_softmax", "kl_sigmoid", "pairs", "unpaired_generated",
    "unpaired_reference", "per_item": {name: (s, g)}}."""
    names = pair_by_name(generated, reference)
    gen = np.stack([generated[n] for n in names])
    ref = np.stack([reference[n] for n in names])
    soft = kl_per_pair(gen, ref, mode="softmax")
    sig = kl_per_pair(gen, ref, mode="sigmoid")
    return {"kl_softmax": float(soft.mean()), "kl_sigmoid": float(sig.mean()), "pairs": len(names),
            "unpaired_generated": len(generated) - len(names), "unpaired_reference": len(reference) - len(names),
            "per_item": {n: (float(s), float(g)) for n, s, g in zip(names, soft, sig)}}


def inception_score(logits, *, splits: int = 10, seed: int = IS_SEED) -> dict:
    """Logits (N, C) -> {"is_mean", "is_std", "splits", "seed"} (+ "warning" when N < 2 x splits):
    exp(E KL(p(y|x) || p(y))) per split of the shuffled rows, as audioldm_eval. Refuses N < splits."""
    from tta.config import check_number

    splits = check_number(splits, int, "inception_score splits")   # int() took "10" and cut 2.5 down to 2 without a word
    probs = _softmax(_logits(logits, "logits"))
    n = probs.shape[0]
    if splits < 1 or n < splits:
        raise ValueError(f"IS needs at least {splits} generated files ({splits} splits), got {n}")
    probs = probs[np.random.RandomState(seed).permutation(n)]
    scores = []
    for i in range(splits):
        chunk = probs[i * n // splits:(i + 1) * n // splits]
        marginal = chunk.mean(axis=0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(chunk > 0, chunk * (np.log(np.where(chunk > 0, chunk, 1.0)) - np.log(marginal)), 0.0)
        scores.append(float(np.exp(kl.sum(axis=1).mean())))
    out = {"is_mean": float(np.mean(scores)), "is_std": float(np.std(scores)), "splits": splits, "seed": int(seed)}
    if n < 2 * splits:
        out["warning"] = (f"IS on {n} files in {splits} splits: a split of one or two files gives IS near 1 "
                          f"whatever the audio; use at least {2 * splits} files (audioldm_eval's papers use thousands)")
        log.warning(out["warning"])
    return out
