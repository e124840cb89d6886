"""Griffin-Lim baseline vocoder with the HiFi-GAN interface: forward(mel (B, n_mels, frames)) -> wav (B, T).

Inverts the mel contract step by step: exp of the natural-log mel, the pseudo-inverse of the Slaney mel
matrix (`tta.audio.mel_basis`, clamped at 0) for a linear magnitude, refined towards the non-negative
least-squares solution by multiplicative updates (Lee & Seung 2001), then the fast Griffin-Lim phase
reconstruction (Griffin & Lim 1984; momentum from Perraudin et al. 2013). The STFT is `log_mel`'s own
(`tta.audio.contract_stft`: the mel config's reflect padding and framing, periodic Hann, center=False); the
inverse is a windowed overlap-add normalised by the squared-window envelope, cropped back to frames * hop
samples.
It needs no training and shows what the neural vocoder buys in reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from tta.audio import MelConfig, contract_stft, mel_basis
from vocoder.model import check_mel_config, check_mel_input


@dataclass(frozen=True)
class GriffinLimConfig:
    mel: MelConfig = field(default_factory=MelConfig)
    n_iter: int = 32
    momentum: float = 0.99  # 0 = the original Griffin-Lim
    nnls_iter: int = 50     # multiplicative NNLS updates of the magnitude (0 = clamped pseudo-inverse only)

    def __post_init__(self) -> None:
        if self.n_iter < 0 or self.nnls_iter < 0:
            raise ValueError(f"n_iter={self.n_iter} and nnls_iter={self.nnls_iter} must be >= 0")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum={self.momentum} must be in [0, 1)")


class GriffinLim(nn.Module):
    """Mel -> linear magnitude (pseudo-inverse) -> Griffin-Lim. No parameters; deterministic (zero initial phase)."""

    config_class = GriffinLimConfig
    # config fields `tta export pipeline --vocoder-set` may change: every one (Griffin-Lim has no weights)
    inference_fields: tuple[str, ...] | None = None

    def __init__(self, config: GriffinLimConfig):
        super().__init__()
        self.config = config
        register_inversion_buffers(self, config.mel)

    @property
    def mel_config(self) -> MelConfig:
        return self.config.mel

    def _stft(self, wav: torch.Tensor) -> torch.Tensor:
        return contract_stft(wav, self.window, self.config.mel)

    def _istft(self, spec: torch.Tensor) -> torch.Tensor:
        """Least-squares inverse of `_stft`: (B, F, frames) complex -> (B, frames * hop) real."""
        return overlap_add_istft(spec, self.window, self.config.mel)

    def magnitude(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, frames) log-mel -> (B, n_fft // 2 + 1, frames) non-negative linear magnitude."""
        return nnls_magnitude(mel, self.basis, self.inverse_basis, self.config.nnls_iter)

    @torch.no_grad()
    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        mel = check_mel_input(mel, self.config.mel, type(self).__name__).to(self.window.dtype)
        return self.from_magnitude(self.magnitude(mel))

    @torch.no_grad()
    def from_magnitude(self, mag: torch.Tensor) -> torch.Tensor:
        """(B, n_fft // 2 + 1, frames) linear magnitude -> (B, frames * hop) wav, its phase found by n_iter
        fast Griffin-Lim iterations from zero phase."""
        angles = torch.ones_like(mag, dtype=torch.complex64)
        spec = fast_griffin_lim(mag, angles, self.config.n_iter, self.config.momentum, self.window, self.config.mel)
        return self._istft(spec)

    @torch.no_grad()
    def vocode(self, mel: torch.Tensor, mel_config: MelConfig | None = None) -> torch.Tensor:
        if mel_config is not None:
            check_mel_config(self.config.mel, mel_config)
        return self(mel)


def fast_griffin_lim(mag: torch.Tensor, angles: torch.Tensor, n_iter: int, momentum: float, window: torch.Tensor,
                     m: MelConfig) -> torch.Tensor:
    """`n_iter` fast Griffin-Lim iterations (momentum as in Perraudin et al. 2013) that keep the magnitude `mag`
    (B, n_fft // 2 + 1, frames) and start from the unit-modulus phase factors `angles` (same shape, complex).
    Returns the complex spectrum mag * angles after the last iteration; a signal too short to reflect-pad keeps
    its starting phase."""
    if mag.shape[-1] * m.hop_length <= m.pad:
        return mag * angles
    previous = torch.zeros_like(angles)
    for _ in range(n_iter):
        rebuilt = contract_stft(overlap_add_istft(mag * angles, window, m), window, m)
        accelerated = rebuilt - momentum / (1 + momentum) * previous
        angles = accelerated / accelerated.abs().clamp_min(1e-16)
        previous = rebuilt
    return mag * angles


def register_inversion_buffers(module: nn.Module, m: MelConfig) -> None:
    """Give `module` the (non-persistent) buffers that invert the mel contract: `basis` (n_mels, n_fft // 2 + 1),
    its pseudo-inverse `inverse_basis`, and the STFT's periodic Hann `window`."""
    basis = mel_basis(m)
    module.register_buffer("basis", basis, persistent=False)
    module.register_buffer("inverse_basis", torch.linalg.pinv(basis), persistent=False)
    module.register_buffer("window", torch.hann_window(m.win_length, periodic=True), persistent=False)


def overlap_add_istft(spec: torch.Tensor, window: torch.Tensor, m: MelConfig) -> torch.Tensor:
    """Least-squares inverse of the mel contract's STFT (reflect padding of `m.pad`, center=False): a windowed
    overlap-add normalised by the squared-window envelope. (B, n_fft // 2 + 1, frames) complex ->
    (B, frames * hop) real. Differentiable (a neural vocoder's output stage uses it too)."""
    frames = spec.shape[-1]
    if m.win_length < m.n_fft:  # torch.stft centres a shorter window inside n_fft
        left = (m.n_fft - m.win_length) // 2
        window = F.pad(window, (left, m.n_fft - m.win_length - left))
    chunks = torch.fft.irfft(spec, n=m.n_fft, dim=1) * window[None, :, None]  # (B, n_fft, frames)
    length = (frames - 1) * m.hop_length + m.n_fft
    fold = {"output_size": (1, length), "kernel_size": (1, m.n_fft), "stride": (1, m.hop_length)}
    signal = F.fold(chunks, **fold).reshape(spec.shape[0], length)
    envelope = F.fold((window ** 2)[None, :, None].expand(1, -1, frames), **fold).reshape(length)
    signal = signal / envelope.clamp_min(1e-8)
    return signal[:, m.pad: m.pad + frames * m.hop_length]


def nnls_magnitude(mel: torch.Tensor, basis: torch.Tensor, inverse_basis: torch.Tensor, iters: int) -> torch.Tensor:
    """(B, n_mels, frames) natural-log mel -> (B, n_fft // 2 + 1, frames) linear magnitude: the clamped
    pseudo-inverse of the mel matrix `basis`, refined by `iters` multiplicative NNLS updates."""
    target = torch.exp(mel)
    mag = torch.matmul(inverse_basis, target).clamp_min(0.0)
    if iters:
        # S <- S * B^T M / (B^T B S): keeps S >= 0 and never increases ||B S - M||^2
        mag = mag.clamp_min(1e-6)
        numerator = torch.matmul(basis.T, target)
        for _ in range(iters):
            mag = mag * numerator / (torch.matmul(basis.T, torch.matmul(basis, mag)) + 1e-10)
    return mag
