"""Reconstruction quality of the mel-VAE, measured on log-mels (no vocoder needed).

mel_l1: mean |x - x_hat| of the natural-log mel (the training loss's scale).
lsd_db: log-spectral distance on the mel magnitude in dB: mean over frames of the RMS over bins of
        20 * log10(M / M_hat) = (20 / ln 10) * (x - x_hat).
snr_db: 10 * log10(sum M^2 / sum (M - M_hat)^2) on linear mel magnitude M = exp(x), per clip.
All are per-clip values averaged over clips, so they can be summed across batches (`ReconstructionMetrics`).
"""

from __future__ import annotations

import math

import torch

DB_PER_NEPER = 20.0 / math.log(10.0)


def reconstruction_metrics(mel: torch.Tensor, rec: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-clip metrics for log-mels mel, rec (B, n_mels, frames): dict of (B,) tensors."""
    if mel.shape != rec.shape:
        raise ValueError(f"reconstruction_metrics: shapes differ, {tuple(mel.shape)} vs {tuple(rec.shape)}")
    mel, rec = mel.double(), rec.double()
    diff = mel - rec
    mel_l1 = diff.abs().mean(dim=(1, 2))
    lsd = (DB_PER_NEPER * diff).pow(2).mean(dim=1).sqrt().mean(dim=1)
    mag, mag_rec = mel.exp(), rec.exp()
    signal = mag.pow(2).sum(dim=(1, 2))
    noise = (mag - mag_rec).pow(2).sum(dim=(1, 2)).clamp_min(1e-20)
    snr = 10.0 * torch.log10(signal / noise)
    return {"mel_l1": mel_l1, "lsd_db": lsd, "snr_db": snr}


class ReconstructionMetrics:
    """Accumulates per-clip metrics over batches; `compute()` gives their means."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def update(self, mel: torch.Tensor, rec: torch.Tensor) -> None:
        for name, values in reconstruction_metrics(mel, rec).items():
            self.sums[name] = self.sums.get(name, 0.0) + float(values.sum())
        self.count += mel.shape[0]

    def compute(self) -> dict[str, float]:
        if not self.count:
            raise ValueError("ReconstructionMetrics.compute: no clips were added")
        return {name: total / self.count for name, total in self.sums.items()}
