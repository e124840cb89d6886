"""Fréchet distance (FAD / FD) between two sets of embeddings, in float64, with streaming sums.

FD(N(mu_a, S_a), N(mu_b, S_b)) = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))
(Fréchet 1957; Heusel et al. 2017 for FID; Kilgour et al. 2019 for FAD). The trace of the matrix square
root is computed from the eigenvalues of S_a^(1/2) S_b S_a^(1/2), which is symmetric PSD and has the same
spectrum as S_a S_b; this equals SciPy's `sqrtm` reference and torchmetrics' eigenvalue formulation but
never produces the complex round-off those meet on near-singular covariances.

Statistics are sums (n, sum x, sum x x^T) so that sets can be fed in any number of batches and merged
across processes by adding (`FrechetDistanceMetric`, a torchmetrics Metric with dist_reduce_fx="sum").
Covariances use the unbiased (n - 1) normaliser, as numpy.cov and every FAD tool does.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchmetrics import Metric

log = logging.getLogger(__name__)

STATS_FORMAT_VERSION = 1


class StatsError(ValueError):
    """Reference statistics that cannot be used (wrong embedder, too few embeddings, bad file)."""


def _as_float64(x, what: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{what}: expected embeddings of shape (N, D), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what}: embeddings contain NaN or inf")
    return arr


def _sqrt_psd(sigma: np.ndarray) -> np.ndarray:
    """S^(1/2) of a symmetric PSD (D, D) matrix, symmetric (negative round-off eigenvalues taken as 0)."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma_a: np.ndarray, sigma_b: np.ndarray, *, sqrt_b: np.ndarray | None = None) -> float:
    """tr((S_a S_b)^(1/2)) for symmetric PSD (D, D) matrices, float64. `sqrt_b`: S_b^(1/2) computed once (as
    _sqrt_psd does) for many S_a against one S_b; tr((S_a S_b)^(1/2)) = tr((S_b^(1/2) S_a S_b^(1/2))^(1/2))."""
    if sqrt_b is None:
        half = _sqrt_psd(sigma_a)
        m = half @ sigma_b @ half
    else:
        m = sqrt_b @ sigma_a @ sqrt_b
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def frechet_distance(mu_a, sigma_a, mu_b, sigma_b, *, sqrt_b: np.ndarray | None = None) -> float:
    """Fréchet distance between N(mu_a, sigma_a) and N(mu_b, sigma_b); mu (D,), sigma (D, D). `sqrt_b`:
    sigma_b^(1/2) computed once, for many sets against one reference (trace_sqrt_product)."""
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    sigma_a, sigma_b = np.asarray(sigma_a, np.float64), np.asarray(sigma_b, np.float64)
    if mu_a.shape != mu_b.shape or sigma_a.shape != sigma_b.shape or sigma_a.shape != mu_a.shape * 2:
        raise ValueError(f"Fréchet distance needs matching shapes, got mu {mu_a.shape} vs {mu_b.shape}, "
                         f"sigma {sigma_a.shape} vs {sigma_b.shape}")
    diff = mu_a - mu_b
    value = float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b)
                  - 2.0 * trace_sqrt_product(sigma_a, sigma_b, sqrt_b=sqrt_b))
    return max(value, 0.0)  # tiny negative values are round-off around 0 (identical sets)


# ------------------------------------------------------------------------------------ statistics


@dataclass
class FrechetStats:
    """Gaussian statistics of one embedding set, with the protocol that produced them.

    mu (D,) and sigma (D, D) are float64; n is the number of embeddings (frames) they summarise.
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    embedder: str = ""  # embedder identity, e.g. "mfcc@v1" or "aisfx@sha256:1a2b..."
    sample_rate: int = 0
    num_files: int = 0
    audio_read: str = ""  # how the files were read (tta eval's AUDIO_READ); "" where not recorded

    @classmethod
    def from_sums(cls, n: int, total: np.ndarray, outer: np.ndarray, **protocol) -> FrechetStats:
        n = int(n)
        if n < 2:
            raise StatsError(f"need at least 2 embeddings to estimate a covariance, got {n}")
        mu = total / n
        sigma = (outer - n * np.outer(mu, mu)) / (n - 1)
        return cls(mu=mu, sigma=(sigma + sigma.T) / 2, n=n, **protocol)

    @classmethod
    def from_embeddings(cls, x, **protocol) -> FrechetStats:
        arr = _as_float64(x, "embeddings")
        if arr.shape[0] < 2:
            raise StatsError(f"need at least 2 embeddings to estimate a covariance, got {arr.shape[0]}")
        return cls(mu=arr.mean(axis=0), sigma=np.cov(arr, rowvar=False).reshape(arr.shape[1], arr.shape[1]),
                   n=arr.shape[0], **protocol)

    def fingerprint(self) -> str:
        """Short sha256 of (n, mu, sigma): equal for the same statistics, from a folder or a stats file."""
        h = hashlib.sha256(np.int64(self.n).tobytes())
        h.update(np.ascontiguousarray(self.mu, np.float64).tobytes())
        h.update(np.ascontiguousarray(self.sigma, np.float64).tobytes())
        return h.hexdigest()[:16]

    def distance(self, other: FrechetStats) -> float:
        check_same_embedder(self, other)
        return frechet_distance(self.mu, self.sigma, other.mu, other.sigma)

    def save(self, path: str | os.PathLike) -> Path:
        """Write a named `.npz` (mu, sigma, n, embedder, sample_rate, num_files, audio_read, format_version)
        atomically."""
        from tta.checkpoint import atomic_path

        path = Path(path)
        if path.suffix != ".npz":
            raise StatsError(f"{path}: reference statistics are written as .npz")
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, mu=self.mu, sigma=self.sigma, n=np.int64(self.n), embedder=np.str_(self.embedder),
                     sample_rate=np.int64(self.sample_rate), num_files=np.int64(self.num_files),
                     audio_read=np.str_(self.audio_read), format_version=np.int64(STATS_FORMAT_VERSION))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, expected_embedder: str | None = None) -> FrechetStats:
        """Read statistics written by `save`; with `expected_embedder`, refuse stats of another embedder."""
        path = Path(path)
        if not path.is_file():
            raise StatsError(f"{path}: reference statistics file not found")
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in ("mu", "sigma", "n", "embedder", "sample_rate") if k not in z.files]
                if missing:
                    raise StatsError(f"{path}: not a tta statistics file (missing {', '.join(missing)})")
                stats = cls(mu=z["mu"].astype(np.float64), sigma=z["sigma"].astype(np.float64), n=int(z["n"]),
                            embedder=str(z["embedder"]), sample_rate=int(z["sample_rate"]),
                            num_files=int(z["num_files"]) if "num_files" in z.files else 0,
                            audio_read=str(z["audio_read"]) if "audio_read" in z.files else "")
        except StatsError:
            raise
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
            raise StatsError(f"{path}: cannot be read as an .npz statistics file ({e})") from None
        d = stats.mu.shape[0]
        if stats.mu.ndim != 1 or stats.sigma.shape != (d, d):
            raise StatsError(f"{path}: mu {stats.mu.shape} and sigma {stats.sigma.shape} do not match")
        if stats.n < 2:
            raise StatsError(f"{path}: statistics of {stats.n} embedding(s); at least 2 are needed")
        for name, value in (("mu", stats.mu), ("sigma", stats.sigma)):   # a NaN gave FAD nan, exit 0, "fad": null
            if not np.isfinite(value).all():
                raise StatsError(f"{path}: {name} holds NaN or inf; recompute the statistics")
        if (np.diag(stats.sigma) < 0).any():
            raise StatsError(f"{path}: sigma has a negative variance on its diagonal (index "
                             f"{int(np.argmax(np.diag(stats.sigma) < 0))}); not a covariance, recompute the statistics")
        if expected_embedder is not None and stats.embedder != expected_embedder:
            raise StatsError(f"{path}: statistics were computed with embedder {stats.embedder!r}, "
                             f"but this evaluation uses {expected_embedder!r}; recompute them with the same embedder")
        return stats


def check_same_embedder(a: FrechetStats, b: FrechetStats) -> None:
    if a.embedder and b.embedder and a.embedder != b.embedder:
        raise StatsError(f"cannot compare statistics of embedder {a.embedder!r} with those of {b.embedder!r}")
    if a.mu.shape != b.mu.shape:
        raise StatsError(f"embedding sizes differ: {a.mu.shape[0]} vs {b.mu.shape[0]}")


def frechet_distance_from_embeddings(a, b) -> float:
    """Fréchet distance between two embedding sets a (N, D) and b (M, D) (numpy arrays or torch tensors)."""
    return FrechetStats.from_embeddings(_as_float64(a, "a")).distance(FrechetStats.from_embeddings(_as_float64(b, "b")))


# ------------------------------------------------------------------------------ streaming metric


class FrechetDistanceMetric(Metric):
    """Streaming Fréchet distance: `update(x, generated: bool)` with x (N, D); `compute()` -> 0-d float64.

    State per set is (n, sum x, sum x x^T) in float64, all reduced across processes by summation, so the
    result does not depend on how the data was split into batches or processes. A fixed reference (from
    a stats file) can be given with `set_reference(stats)` instead of feeding reference embeddings.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, dim: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.dim = int(dim)
        for which in ("gen", "ref"):
            self.add_state(f"{which}_n", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{which}_sum", default=torch.zeros(self.dim, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{which}_outer", default=torch.zeros(self.dim, self.dim, dtype=torch.float64),
                           dist_reduce_fx="sum")
        self._fixed_reference: FrechetStats | None = None

    def set_reference(self, stats: FrechetStats) -> None:
        if stats.mu.shape != (self.dim,):
            raise StatsError(f"reference statistics have dimension {stats.mu.shape[0]}, the metric {self.dim}")
        self._fixed_reference = stats

    def update(self, x, generated: bool) -> None:  # type: ignore[override]
        x = torch.as_tensor(x).to(dtype=torch.float64, device=self.gen_sum.device)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"FrechetDistanceMetric expects (N, {self.dim}) embeddings, got {tuple(x.shape)}")
        which = "gen" if generated else "ref"
        setattr(self, f"{which}_n", getattr(self, f"{which}_n") + x.shape[0])
        setattr(self, f"{which}_sum", getattr(self, f"{which}_sum") + x.sum(dim=0))
        setattr(self, f"{which}_outer", getattr(self, f"{which}_outer") + x.T @ x)

    def stats(self, generated: bool, **protocol) -> FrechetStats:
        which = "gen" if generated else "ref"
        if not generated and self._fixed_reference is not None:
            return self._fixed_reference
        try:
            return FrechetStats.from_sums(int(getattr(self, f"{which}_n").item()),
                                          getattr(self, f"{which}_sum").cpu().numpy(),
                                          getattr(self, f"{which}_outer").cpu().numpy(), **protocol)
        except StatsError as e:   # which of the two sets: compute() needs both
            how = "update(x, generated=True)" if generated else "update(x, generated=False) or set_reference(stats)"
            raise StatsError(f"FrechetDistanceMetric's {'generated' if generated else 'reference'} set: {e} "
                             f"({how})") from None

    def compute(self):
        value = frechet_distance(*_pair(self.stats(True)), *_pair(self.stats(False)))
        return torch.tensor(value, dtype=torch.float64)


def _pair(s: FrechetStats):
    return s.mu, s.sigma


# ------------------------------------------------------------------------------------------ FAD-inf


FAD_INF_METHOD = ("Chung et al. 2020: nested subsets without replacement (whole clips where known), several draws "
                  "per size, linear fit in 1/N; se from the draws and a delete-d jackknife of the generated set")
FAD_INF_MIN_SUBSET = 500  # fadtk's min_n; Chung et al. start at 5 000
# Draws per subset size. One draw per size left the fit at the mercy of the subsets drawn: on the mfcc FAD of
# two halves of one speech corpus (bench/fad_frames.py's near pair, 5 517 frames) FAD-inf moved over seeds 0-9
# with sd 0.057 around 0.073 and its slope from 43 to 526; with ten draws of whole clips, sd 0.024 (the far
# pair: sd 1.11 and 0.46). What is left is mostly the set's own noise, which the se counts.
FAD_INF_DRAWS = 10


def fad_inf_smallest_subset(dim: int) -> int:
    """Smallest subset of the default FAD-inf fit: max(500, 5 x D), where FD is close to linear in 1/N."""
    return max(FAD_INF_MIN_SUBSET, 5 * int(dim))


def fad_infinity(generated, reference: FrechetStats, *, clip_frames: list[int] | None = None,
                 sizes: tuple[int, ...] | None = None, num_points: int = 15, draws: int = FAD_INF_DRAWS,
                 seed: int = 0, progress: bool = False) -> dict:
    """FAD extrapolated to an infinite sample, as Chung et al. 2020 ("FID∞") do, with its standard error.

    FD is biased upward by ~1/N once N is well above D; FD is computed on random subsets (without
    replacement) of the generated embeddings (N, D), from max(500, 5 x D) frames up to all N, a line is
    fitted in 1/N, and its intercept is FAD∞. Refuses fewer than 2 x max(500, 5 x D) frames. fadtk (Gui et
    al. 2024) samples with replacement, so its FAD∞ is not directly comparable.

    Each of `draws` draws (seeded by `seed`) is one random order of the rows, or, with `clip_frames` (the
    number of rows of each clip, in row order), of whole clips, the last one cut to the size: the frames of a
    clip are not independent draws, and drawn one by one they leave the part of the bias and of the noise that
    the clips share out. A draw's subsets are its prefixes (nested), so its statistics are summed once. The line
    is fitted to each size's mean FD over the draws (the mean of the draws' own intercepts). Its standard error
    adds two parts: the draws' (their intercepts' sd / sqrt(draws): what another seed would change) and the
    generated set's own sampling noise (what another set of N frames of the same model would change; the subsets'
    variance at each size n < N times n / (N - n), a delete-d jackknife, averaged over the sizes). The
    reference is taken as fixed: its own noise is common to every run scored against it.

    Returns {"fad_inf", "fad_inf_se", "fad_inf_ci95" ([low, high], +-1.96 se), "se_from_draws",
    "se_from_generated_set", "slope", "r2" (of the mean FDs), "sizes", "values" (mean FD per size), "draws",
    "unit" ("clips" or "frames"), "seed", "method"}.
    """
    x = _as_float64(generated, "generated")
    n, dim = x.shape
    if reference.mu.shape != (dim,):
        raise StatsError(f"embedding sizes differ: {dim} generated vs {reference.mu.shape[0]} in the reference")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 2:
        raise ValueError(f"FAD-inf draws={draws!r}: expected a whole number >= 2 (the standard error needs the spread "
                         "of several)")
    if clip_frames is not None:
        clip_frames = [int(c) for c in clip_frames]
        if min(clip_frames, default=0) < 1 or sum(clip_frames) != n:
            raise ValueError(f"FAD-inf clip_frames: expected counts >= 1 adding up to the {n} generated frames, got "
                             f"{len(clip_frames)} counts adding up to {sum(clip_frames)}")
    if sizes is None:
        low = fad_inf_smallest_subset(dim)
        if n < 2 * low:
            raise StatsError(f"FAD-inf needs at least {2 * low} generated frames (subsets from max(500, 5 x D={dim}) "
                             f"= {low} frames up to all of them); got {n}")
        sizes = tuple(sorted(set(np.linspace(low, n, num_points).astype(int).tolist())))
    sizes = tuple(sorted(int(s) for s in sizes))
    if len(set(sizes)) < 2 or min(sizes) < 2 or max(sizes) > n:
        raise ValueError(f"FAD-inf needs >= 2 subset sizes in [2, {n}], got {sizes}")
    values = nested_subset_distances(x, reference, sizes, draws, clip_frames, seed, progress)
    inv = 1.0 / np.asarray(sizes, dtype=np.float64)
    fits = np.polyfit(inv, values.T, 1)    # (2, draws): each draw's slope and intercept
    mean = values.mean(axis=0)
    slope, intercept = np.polyfit(inv, mean, 1)
    ss_res = float(((mean - (slope * inv + intercept)) ** 2).sum())
    ss_tot = float(((mean - mean.mean()) ** 2).sum())
    se_draws = float(fits[1].std(ddof=1) / np.sqrt(draws))
    below = np.asarray(sizes) < n           # the subsets of all N frames are the set itself: no spread
    jackknife = values[:, below].var(axis=0, ddof=1) * np.asarray(sizes)[below] / (n - np.asarray(sizes)[below])
    se_set = float(np.sqrt(jackknife.mean()))
    se = float(np.hypot(se_draws, se_set))
    return {"fad_inf": float(intercept), "fad_inf_se": se,
            "fad_inf_ci95": [float(intercept - 1.96 * se), float(intercept + 1.96 * se)],
            "se_from_draws": se_draws, "se_from_generated_set": se_set, "slope": float(slope),
            "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0, "sizes": list(sizes),
            "values": [float(v) for v in mean], "draws": draws, "unit": "frames" if clip_frames is None else "clips",
            "seed": int(seed), "method": FAD_INF_METHOD}


def nested_subset_distances(x: np.ndarray, reference: FrechetStats, sizes, draws: int,
                            clip_frames: list[int] | None = None, seed: int = 0, progress: bool = False) -> np.ndarray:
    """FD against `reference` of the first `sizes` (ascending) rows of `draws` random orders (seeded) of x (N, D),
    of whole clips with `clip_frames` (rows per clip, in row order; the last clip cut to the size) -> (draws,
    len(sizes)); each order's statistics are summed once, as its prefixes grow (as FrechetDistanceMetric sums).
    Also bench/fad_frames.py's draws."""
    from tqdm.auto import tqdm

    n, dim = x.shape
    ref_half = _sqrt_psd(reference.sigma)   # tr((S R)^(1/2)) = tr((R^(1/2) S R^(1/2))^(1/2)): R's root once
    starts = np.cumsum([0, *clip_frames]) if clip_frames is not None else None
    rng = np.random.default_rng(seed)
    values = np.empty((draws, len(sizes)))
    for d in tqdm(range(draws), disable=not progress, desc="FAD-inf draws", unit="draw"):
        if starts is None:
            order = rng.permutation(n)
        else:
            order = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in rng.permutation(len(starts) - 1)])
        rows = x[order[:sizes[-1]]]
        total, outer, done = np.zeros(dim), np.zeros((dim, dim)), 0
        for k, size in enumerate(sizes):
            part = rows[done:size]
            total, outer, done = total + part.sum(axis=0), outer + part.T @ part, size
            s = FrechetStats.from_sums(size, total, outer)
            values[d, k] = frechet_distance(s.mu, s.sigma, reference.mu, reference.sigma, sqrt_b=ref_half)
    return values
