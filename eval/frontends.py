"""Feature front ends of the evaluation embedders (numpy/torch, batched over equal-length clips).

Each reproduces the preprocessing its network was trained with; the reference it follows is named in the
docstring. tta's own mel contract (`tta.audio.log_mel`) is used where an embedder is tta's own (MFCC).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from einops import rearrange

# ------------------------------------------------------------------------------------------- MFCC


@functools.lru_cache(maxsize=4)
def dct_matrix(n_mels: int, n_mfcc: int) -> np.ndarray:
    """(n_mfcc, n_mels) orthonormal DCT-II matrix (librosa's `mfcc` uses the same, norm='ortho')."""
    k = np.arange(n_mfcc)[:, None]
    n = np.arange(n_mels)[None, :]
    basis = np.cos(np.pi / n_mels * (n + 0.5) * k) * np.sqrt(2.0 / n_mels)
    basis[0] /= np.sqrt(2.0)
    return basis.astype(np.float32)


def mfcc_window_stats(wav: torch.Tensor, *, n_mfcc: int, window_frames: int, hop_frames: int) -> list[np.ndarray]:
    """wav (B, T) at 16 kHz -> per clip (windows, 2 * n_mfcc): mean and std of MFCCs over ~1 s windows.

    MFCCs are the DCT of tta's log-mel (`tta.audio.log_mel`, the AudioLDM 64-band front end). A clip
    shorter than one window gives one window over all its frames.
    """
    from tta.audio import MelConfig, log_mel

    mel = log_mel(wav, MelConfig())  # (B, 64, frames)
    basis = torch.from_numpy(dct_matrix(mel.shape[1], n_mfcc)).to(mel)
    mfcc = torch.einsum("km,bmt->btk", basis, mel)  # (B, frames, n_mfcc)
    frames = mfcc.shape[1]
    if frames <= window_frames:
        starts = [0]
        size = frames
    else:
        starts = list(range(0, frames - window_frames + 1, hop_frames))
        size = window_frames
    windows = torch.stack([mfcc[:, s:s + size] for s in starts], dim=1)  # (B, W, size, n_mfcc)
    stats = torch.cat([windows.mean(dim=2), windows.std(dim=2, unbiased=False)], dim=-1)
    return [s.double().numpy() for s in stats]


# ----------------------------------------------------------------------------------------- VGGish


def _hz_to_mel_htk(hz):
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


@functools.lru_cache(maxsize=2)
def vggish_mel_matrix(num_bins: int = 257, n_mels: int = 64, sample_rate: int = 16_000,
                      f_min: float = 125.0, f_max: float = 7500.0) -> np.ndarray:
    """(num_bins, n_mels) VGGish mel weights: HTK mel triangles built on the mel axis, no area
    normalisation, DC bin zeroed (the VGGish `mel_features` recipe)."""
    bins_mel = _hz_to_mel_htk(np.linspace(0.0, sample_rate / 2, num_bins))
    edges = np.linspace(_hz_to_mel_htk(f_min), _hz_to_mel_htk(f_max), n_mels + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (center - lower)
    falling = (upper - bins_mel[:, None]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    return weights


def vggish_examples(wav: np.ndarray) -> np.ndarray:
    """16 kHz mono (T,) -> (N, 1, 96, 64) float32 log-mel patches of 0.96 s, hop 0.96 s.

    25 ms periodic-Hann frames every 10 ms (no padding), 512-point FFT magnitude, 64 HTK mel bands
    125-7500 Hz, log(mel + 0.01). Clips shorter than one patch are zero-padded to one patch.
    """
    win, hop, n_fft, patch = 400, 160, 512, 96
    need = win + hop * (patch - 1)
    if wav.shape[0] < need:
        wav = np.pad(wav, (0, need - wav.shape[0]))
    n_frames = 1 + (wav.shape[0] - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(n_frames)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    spec = np.abs(np.fft.rfft(wav[idx].astype(np.float64) * window, n=n_fft))  # (frames, 257)
    logmel = np.log(spec @ vggish_mel_matrix() + 0.01)
    n_patches = n_frames // patch
    patches = rearrange(logmel[: n_patches * patch], "(n t) m -> n 1 t m", t=patch)
    return patches.astype(np.float32)


# ------------------------------------------------------------------------------------------ aisfx

AISFX_SAMPLE_RATE = 44_100
AISFX_N_FFT = 2048
AISFX_HOP = 1024
AISFX_MELS = 96
AISFX_BLOCK_FRAMES = 100  # ~2.32 s per embedding
AISFX_HOP_FRAMES = 50  # the package's default 0.5 x block hop
AISFX_NORM_MAX = 9.457798957824707  # the package's 'original' min-max normalisation (min 0)


def aisfx_blocks(wav: np.ndarray) -> np.ndarray:
    """44.1 kHz mono (T,) -> (N, 100, 96) float32 blocks, as the aisfx package's librosa path computes them.

    Peak-normalise, power mel spectrogram (2048/1024, 96 HTK bands 0-22050 Hz, unit-sum filters),
    log10(1e4 x + 1), divide by the package's normalisation constant; blocks of 100 frames with hop 50,
    the last partial block dropped (a clip shorter than one block gives one zero-padded block).
    """
    from tta.audio import import_librosa

    librosa = import_librosa()
    peak = float(np.max(np.abs(wav))) if wav.size else 0.0
    y = wav / peak if peak > 0 else wav
    power = librosa.feature.melspectrogram(y=y.astype(np.float32), sr=AISFX_SAMPLE_RATE, n_fft=AISFX_N_FFT,
                                           hop_length=AISFX_HOP, win_length=AISFX_N_FFT, n_mels=AISFX_MELS,
                                           fmin=0.0, fmax=AISFX_SAMPLE_RATE / 2, htk=True, norm=1.0, power=2.0)
    spec = (np.log10(power * 1e4 + 1.0) / AISFX_NORM_MAX).T  # (frames, 96)
    frames = spec.shape[0]
    if frames <= AISFX_BLOCK_FRAMES:
        out = np.zeros((1, AISFX_BLOCK_FRAMES, AISFX_MELS), dtype=np.float32)
        out[0, :frames] = spec
        return out
    n_blocks = 1 + (frames - AISFX_BLOCK_FRAMES) // AISFX_HOP_FRAMES
    idx = np.arange(AISFX_BLOCK_FRAMES)[None, :] + AISFX_HOP_FRAMES * np.arange(n_blocks)[:, None]
    return spec[idx].astype(np.float32)
