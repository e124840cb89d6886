"""Near-duplicate clips in a manifest: one recording or render stored twice, under other names, at another gain,
rate (16 kHz or more: a copy at a lower rate lacks the bands above half its rate) or format, or one clip cut
from another.

The importers merge files with the same bytes and the recipe drops bit-identical audio; neither catches more.
Here every clip gets a fingerprint: its log-mel (the mel contract, 16 kHz / 64 bins), floored 50 dB below the
clip's loudest value (so the quiet bins a lossy codec rewrites, and a noise floor, count as silence), trimmed of
silent frames at both ends (so padding does not make unrelated clips alike), and averaged over 200 ms Hann
windows every 100 ms, at two phases 50 ms apart (so a copy cut anywhere is at most 25 ms off one of them).
Candidates are each clip's nearest neighbours by the shape of its mean spectrum; a candidate pair is a
near-duplicate when, at the best time offset (found by cross-correlation, so a crop matches the clip it was cut
from), the overlapping fingerprints agree on both counts:

- `image`: the correlation of the two log-mel images (level-free: a gain change adds a constant in log); and
- `motion`: the correlation after each mel band's own mean is removed, i.e. of how the sound moves in time.
  Two recordings of steady rain share a spectrum (high image) but not their fluctuations (low motion); two
  renders of one score on different instruments share their onsets but not their spectra.

The overlap must cover most of the shorter clip (`min_cover`) and at least MIN_OVERLAP frames: clips with less
than 0.3 s of sound are never near-duplicates here. Pairs across splits are leaks: a held-out clip whose twin
is trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FRAME_RATE = 10            # fingerprint frames per second (windows of the mel contract's 100)
SAMPLE_RATE = 16_000
FLOOR_DB = 50.0            # the fingerprint's floor below the clip's loudest value
WINDOW = 20                # mel frames averaged per fingerprint frame (Hann weights), every 10
MIN_OVERLAP = 3            # fingerprint frames two clips must share to be compared


@dataclass(frozen=True)
class NearDuplicate:
    a: int                  # index of the first clip
    b: int                  # index of the second clip
    image: float            # correlation of the overlapping log-mel images
    motion: float           # correlation of their band-wise fluctuations
    offset_seconds: float   # b's sound starts this many seconds into a's (negative: a starts inside b)
    cover: float            # overlap / length of the shorter clip


def fingerprint(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """(2, 64, frames) float32: the floored, trimmed log-mel of mono `wav` averaged to FRAME_RATE frames per
    second, at phase 0 and 50 ms later (at least one frame)."""
    import torch

    from tta.audio import MelConfig, log_mel, resample

    wav = resample(np.asarray(wav, dtype=np.float32), sample_rate, SAMPLE_RATE)
    config = MelConfig()
    if wav.shape[0] <= config.pad:
        wav = np.pad(wav, (0, config.pad + 1 - wav.shape[0]))
    mel = log_mel(torch.from_numpy(np.ascontiguousarray(wav)), config, precision="float32")[0].numpy()
    floor = max(float(mel.max()) - FLOOR_DB / 20 * math.log(10),  # natural-log magnitude, 20 dB per decade
                math.log(config.log_floor))                         # and never below digital silence
    mel = np.maximum(mel, floor)
    sounding = np.flatnonzero(mel.max(axis=0) > floor + 1e-6)
    if sounding.size:
        mel = mel[:, sounding[0]: sounding[-1] + 1]
    per = round(config.frames_per_second / FRAME_RATE)
    edge = WINDOW // 4
    x = torch.nn.functional.pad(torch.from_numpy(np.ascontiguousarray(mel))[None],
                                (edge, edge + max(0, WINDOW - mel.shape[1])), value=floor)
    weights = torch.hann_window(WINDOW + 2, periodic=False, dtype=x.dtype)[1:-1]
    weights = (weights / weights.sum()).expand(x.shape[1], 1, WINDOW).contiguous()
    pooled = torch.nn.functional.conv1d(x, weights, groups=x.shape[1])[0]   # (64, T + 2 edge - W + 1)
    phases = [pooled[:, 0::per], pooled[:, per // 2::per]]
    frames = min(p.shape[1] for p in phases)
    return torch.stack([p[:, :frames] for p in phases]).numpy().copy()


def held_out_member(pair: NearDuplicate, splits) -> int | None:
    """The clip of a pair across splits to leave out (a leak): the one not in "train", the second when neither
    is; None for a pair within one split. `splits[i]` is clip i's split."""
    if splits[pair.a] == splits[pair.b]:
        return None
    return pair.a if splits[pair.b] == "train" else pair.b


def _summary(prints: list[np.ndarray]) -> np.ndarray:
    """Unit vectors of each clip's power-mean log spectrum (loud frames dominate, so a noise floor or a
    silent stretch barely moves it) with its level removed: (N, 64)."""
    spectra = np.stack([np.log(np.exp(p[0].astype(np.float64)).mean(axis=1)) for p in prints])
    spectra -= spectra.mean(axis=1, keepdims=True)
    return spectra / np.maximum(np.linalg.norm(spectra, axis=1, keepdims=True), 1e-9)


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    den = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum() / den) if den > 1e-12 else 0.0     # a constant image matches nothing


def _best_offset(a: np.ndarray, b: np.ndarray) -> int:
    """Frame offset d maximising the band-summed cross-correlation of a[:, t] with b[:, t - d]."""
    na, nb = a.shape[1], b.shape[1]
    x = a - a.mean(axis=1, keepdims=True)
    y = b - b.mean(axis=1, keepdims=True)
    n = 1 << (na + nb - 1).bit_length()
    c = np.fft.irfft((np.fft.rfft(x, n, axis=1) * np.conj(np.fft.rfft(y, n, axis=1))).sum(axis=0), n)
    lags = np.concatenate([np.arange(0, na), np.arange(-(nb - 1), 0)])
    values = np.concatenate([c[:na], c[n - (nb - 1):]]) if nb > 1 else c[:na]
    return int(lags[int(np.argmax(values))])


def _compare_phase(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int, float]:
    """(image, motion, offset in frames, cover) of two (64, frames) fingerprint phases at their best offset."""
    d = _best_offset(a, b)
    start_a, start_b = max(d, 0), max(-d, 0)
    length = min(a.shape[1] - start_a, b.shape[1] - start_b)
    if length < MIN_OVERLAP:
        return 0.0, 0.0, d, 0.0
    x, y = a[:, start_a: start_a + length], b[:, start_b: start_b + length]
    image = _correlation(x, y)
    motion = _correlation(x - x.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True))
    return image, motion, d, length / min(a.shape[1], b.shape[1])


def compare(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, float]:
    """(image, motion, offset in seconds, cover) of two fingerprints: `a` at phase 0 against both phases of `b`,
    the better match kept."""
    best = None
    for phase, shift in ((0, 0.0), (1, -0.5 / FRAME_RATE)):
        image, motion, d, cover = _compare_phase(a[0], b[phase])
        found = (min(image, motion), image, motion, d / FRAME_RATE + shift, cover)
        if best is None or found[0] > best[0]:
            best = found
    return best[1], best[2], best[3], best[4]


def _nearest(unit_a: np.ndarray, unit_b: np.ndarray, k: int, same: bool) -> set[tuple[int, int]]:
    """(i, j) for each row i of unit_a and its k nearest rows j of unit_b (not itself when `same`)."""
    pairs: set[tuple[int, int]] = set()
    k = min(k, len(unit_b) - (1 if same else 0))
    if k <= 0:
        return pairs
    for start in range(0, len(unit_a), 1024):
        sims = unit_a[start: start + 1024] @ unit_b.T
        for row, i in enumerate(range(start, min(start + 1024, len(unit_a)))):
            if same:
                sims[row, i] = -np.inf
            for j in np.argpartition(-sims[row], k - 1)[:k]:
                pairs.add((i, int(j)))
    return pairs


def find_near_duplicates(prints: list[np.ndarray], others: list[np.ndarray] | None = None, *, image: float = 0.97,
                         motion: float = 0.95, min_cover: float = 0.8, neighbours: int = 10,
                         progress: bool = False) -> list[NearDuplicate]:
    """Near-duplicate pairs among fingerprints (`fingerprint`), each pair once (a < b), best first; with
    `others`, the pairs of a clip of `prints` (a) and one of `others` (b) instead.

    Every clip is compared with its `neighbours` nearest clips (of the other set, with `others`, in both
    directions) by mean-spectrum shape; a pair counts when its image and motion correlations reach `image` and
    `motion` over an overlap of at least `min_cover` of the shorter clip."""
    from tqdm.auto import tqdm

    if others is None:
        if len(prints) < 2:
            return []
        unit = _summary(prints)
        pairs = {(min(i, j), max(i, j)) for i, j in _nearest(unit, unit, neighbours, same=True)}
        second = prints
    else:
        if not prints or not others:
            return []
        unit, unit_o = _summary(prints), _summary(others)
        pairs = _nearest(unit, unit_o, neighbours, same=False)
        pairs |= {(i, j) for j, i in _nearest(unit_o, unit, neighbours, same=False)}
        second = others
    found = []
    for i, j in tqdm(sorted(pairs), desc="compare", unit="pair", disable=not progress):
        img, mot, d, cover = compare(prints[i], second[j])
        if img >= image and mot >= motion and cover >= min_cover:
            found.append(NearDuplicate(i, j, img, mot, d, cover))
    return sorted(found, key=lambda p: (-min(p.image, p.motion), p.a, p.b))
