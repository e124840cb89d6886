"""HiFi-GAN objectives (Kong et al. 2020, eq. 1-6) and validation distances.

Generator: sum over sub-discriminators of the least-squares adversarial loss (D(G(s)) - 1)^2, plus
lambda_fm = 2 x feature-matching L1 (summed over layers of the mean |D_l(x) - D_l(G(s))|), plus
lambda_mel = 45 x L1 between log-mels of the real and generated waveform, computed with `tta.audio.log_mel`
(the project's one mel front end). Discriminator: sum of (D(x) - 1)^2 + D(G(s))^2.
The multi-resolution STFT distance (spectral convergence + log-magnitude L1, Yamamoto et al. 2020) is a
validation metric here, not a training term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from tta.audio import MelConfig, log_mel


@dataclass(frozen=True)
class LossConfig:
    adversarial: float = 1.0
    feature_matching: float = 2.0   # lambda_fm
    mel: float = 45.0               # lambda_mel
    # Weight of the multi-resolution STFT loss (spectral convergence + log magnitude, Yamamoto et al. 2020)
    # in the generator objective. Always used while the discriminator is off (step < disc_start); 0 = only
    # then. A cheap way to get an intelligible vocoder on a CPU before the adversarial phase.
    stft: float = 0.0
    # (n_fft, hop_length, win_length) triples for the validation multi-resolution STFT distance
    stft_resolutions: tuple[tuple[int, int, int], ...] = ((512, 50, 240), (1024, 120, 600), (2048, 240, 1200))

    def __post_init__(self) -> None:
        for name in ("adversarial", "feature_matching", "mel", "stft"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name}={getattr(self, name)} must be >= 0")
        for r in self.stft_resolutions:
            if len(r) != 3 or not 0 < r[1] <= r[2] <= r[0]:
                raise ValueError(f"loss.stft_resolutions entry {list(r)} must be (n_fft, hop, win) with "
                                 "0 < hop <= win <= n_fft")


def discriminator_loss(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """LSGAN discriminator loss summed over sub-discriminators."""
    return sum(torch.mean((1 - r) ** 2) + torch.mean(f ** 2) for r, f in zip(real_logits, fake_logits))


def generator_adversarial_loss(fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """LSGAN generator loss summed over sub-discriminators."""
    return sum(torch.mean((1 - f) ** 2) for f in fake_logits)


def feature_matching_loss(real_fmaps: list[list[torch.Tensor]], fake_fmaps: list[list[torch.Tensor]]) -> torch.Tensor:
    """Sum over sub-discriminators and layers of mean |real - fake| (real features are constants)."""
    return sum(torch.mean(torch.abs(r.detach() - f))
               for rs, fs in zip(real_fmaps, fake_fmaps) for r, f in zip(rs, fs))


def mel_l1(wav_hat: torch.Tensor, wav: torch.Tensor, mel: MelConfig) -> torch.Tensor:
    """Mean |log_mel(wav_hat) - log_mel(wav)|; wav_hat, wav: (B, T) at mel.sample_rate."""
    return F.l1_loss(log_mel(wav_hat, mel), log_mel(wav, mel).detach())


def stft_magnitude(wav: torch.Tensor, n_fft: int, hop_length: int, win_length: int) -> torch.Tensor:
    """(B, n_fft // 2 + 1, frames) magnitude with a Hann window (center=True), floored for the log."""
    window = torch.hann_window(win_length, device=wav.device, dtype=wav.dtype)
    spec = torch.stft(wav, n_fft, hop_length, win_length, window, return_complex=True)
    return spec.abs().clamp_min(1e-7)


def multi_resolution_stft_distance(wav_hat: torch.Tensor, wav: torch.Tensor,
                                   resolutions: tuple[tuple[int, int, int], ...]) -> torch.Tensor:
    """Mean over resolutions of spectral convergence + mean |log S_hat - log S|. wav_hat, wav: (B, T)."""
    total = wav.new_zeros(())
    for n_fft, hop, win in resolutions:
        s_hat, s = stft_magnitude(wav_hat, n_fft, hop, win), stft_magnitude(wav, n_fft, hop, win)
        convergence = torch.linalg.norm(s - s_hat) / torch.linalg.norm(s).clamp_min(1e-7)
        total = total + convergence + F.l1_loss(torch.log(s_hat), torch.log(s))
    return total / len(resolutions)


@dataclass
class GeneratorLosses:
    total: torch.Tensor
    adversarial: torch.Tensor
    feature_matching: torch.Tensor
    mel_l1: torch.Tensor
    stft: torch.Tensor


def warmup_generator_loss(wav_hat: torch.Tensor, wav: torch.Tensor, mel: MelConfig, weights: LossConfig,
                          resolutions: tuple[tuple[int, int, int], ...]) -> GeneratorLosses:
    """The objective before the discriminator starts: lambda_mel * mel L1 + multi-resolution STFT (weight
    `weights.stft`, or 1 when that is 0). No discriminator is run."""
    l1 = mel_l1(wav_hat, wav, mel)
    stft = multi_resolution_stft_distance(wav_hat, wav, resolutions)
    zero = wav.new_zeros(())
    return GeneratorLosses(weights.mel * l1 + (weights.stft or 1.0) * stft, zero, zero, l1, stft)


def generator_loss(discriminator, wav_hat: torch.Tensor, wav: torch.Tensor, mel: MelConfig,
                   weights: LossConfig) -> GeneratorLosses:
    """The full generator objective; wav_hat, wav: (B, T). Gradients flow into the generator only through
    wav_hat (the discriminator's parameters also receive gradients; zero them before its own step)."""
    fake_logits, fake_fmaps = discriminator(wav_hat)
    with torch.no_grad():
        _, real_fmaps = discriminator(wav)
    adv = generator_adversarial_loss(fake_logits)
    fm = feature_matching_loss(real_fmaps, fake_fmaps)
    l1 = mel_l1(wav_hat, wav, mel)
    total = weights.adversarial * adv + weights.feature_matching * fm + weights.mel * l1
    stft = wav.new_zeros(())
    if weights.stft:
        stft = multi_resolution_stft_distance(wav_hat, wav, weights.stft_resolutions)
        total = total + weights.stft * stft
    return GeneratorLosses(total, adv, fm, l1, stft)
