"""A Vocos-style vocoder (Siuzdak 2023, "Vocos: Closing the gap between time-domain and Fourier-based neural
vocoders for audio synthesis"): log-mel (B, n_mels, frames) -> STFT magnitude and phase at the mel's own frame
rate -> inverse STFT -> waveform (B, frames * hop).

HiFi-GAN upsamples by 160 with transposed convolutions and runs its residual stacks at 800 Hz, 4 kHz and
16 kHz; here every layer runs at the 100 Hz frame rate (a ConvNeXt stack: depthwise conv, LayerNorm, a
two-layer MLP, a learned per-channel scale), and the last linear layer emits, for each frame, the log
magnitude and the phase of every STFT bin. The waveform comes from the same windowed overlap-add inverse as
Griffin-Lim's (`vocoder.griffinlim.overlap_add_istft`), on the mel contract's own STFT framing (n_fft,
win_length, hop_length, reflect padding), so frame k of the output spectrum sits where mel frame k was taken.
No layer runs at the audio rate: `bench/vocoder.py` times the default config (NNLS base and inverse STFT
included) at about half the 0.38 M HiFi-GAN's CPU time per second of audio and a third of Griffin-Lim 16's.

`magnitude_base` (our addition): the log magnitude is predicted as a correction to the non-negative
least-squares inversion of the mel (`vocoder.griffinlim.nnls_magnitude`, Griffin-Lim's magnitude), and the
correction's weights start at zero, so training starts from Griffin-Lim's magnitudes and only the phase is
learned from scratch. The phase is the angle p of each bin: S = |S| (cos p + i sin p), as in Vocos.
Trained by `tta train vocos` (vocoder/vocos_train.py) with HiFi-GAN's discriminators and losses. Layers start
from PyTorch's default initialisation (Vocos initialises its convolutions and linear layers from a truncated
normal of std 0.02), as the recorded runs did.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from tta.audio import MelConfig
from vocoder.griffinlim import fast_griffin_lim, nnls_magnitude, overlap_add_istft, register_inversion_buffers
from vocoder.model import check_mel_config, check_mel_input


@dataclass(frozen=True)
class VocosConfig:
    mel: MelConfig = field(default_factory=MelConfig)
    dim: int = 128                  # channels of the ConvNeXt stack
    intermediate_dim: int = 384     # hidden width of each block's MLP
    layers: int = 4                 # ConvNeXt blocks
    kernel_size: int = 7            # depthwise conv width in frames (odd)
    magnitude_base: bool = True     # predict a log correction to the NNLS magnitude (False: the log magnitude)
    nnls_iter: int = 50             # NNLS updates of the base magnitude
    max_log_magnitude: float = 7.0  # log magnitudes are clamped here (|S| <= sum of the window = 512 for |x| <= 1)
    # inference only, no weights: the magnitude of the output spectrum, the network's ("network") or the NNLS
    # inversion of the mel ("nnls", Griffin-Lim's), under the network's phase; then griffin_lim_iter fast
    # Griffin-Lim iterations started from that phase (0 = none)
    output_magnitude: str = "network"
    griffin_lim_iter: int = 0
    griffin_lim_momentum: float = 0.99

    def __post_init__(self) -> None:
        if self.dim <= 0 or self.intermediate_dim <= 0 or self.layers < 0:
            raise ValueError(f"dim={self.dim} and intermediate_dim={self.intermediate_dim} must be > 0 and "
                             f"layers={self.layers} >= 0")
        if self.kernel_size <= 0 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={self.kernel_size} must be a positive odd number")
        if self.nnls_iter < 0 or self.griffin_lim_iter < 0:
            raise ValueError(f"nnls_iter={self.nnls_iter} and griffin_lim_iter={self.griffin_lim_iter} must be >= 0")
        if self.output_magnitude not in ("network", "nnls"):
            raise ValueError(f"output_magnitude={self.output_magnitude!r}: expected 'network' or 'nnls'")
        if not 0 <= self.griffin_lim_momentum < 1:
            raise ValueError(f"griffin_lim_momentum={self.griffin_lim_momentum} must be in [0, 1)")

    @property
    def hop_length(self) -> int:
        return self.mel.hop_length


class ConvNeXtBlock(nn.Module):
    """x + scale * MLP(LayerNorm(depthwise_conv(x))) on (B, C, frames)."""

    def __init__(self, dim: int, intermediate_dim: int, kernel_size: int, layer_scale: float):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dwconv(x).transpose(1, 2)                   # (B, frames, C)
        h = self.pwconv2(F.gelu(self.pwconv1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


class Vocos(nn.Module):
    """forward(mel (B, n_mels, frames) natural-log mel) -> wav (B, frames * hop), like `HiFiGAN`."""

    config_class = VocosConfig
    # fields that only steer inference (`--vocoder-set`); the NNLS base and the rest were trained with
    inference_fields: tuple[str, ...] | None = ("output_magnitude", "griffin_lim_iter", "griffin_lim_momentum")

    def __init__(self, config: VocosConfig):
        super().__init__()
        self.config = config
        c, m = config, config.mel
        bins = m.n_fft // 2 + 1
        self.embed = nn.Conv1d(m.n_mels, c.dim, c.kernel_size, padding=c.kernel_size // 2)
        self.norm = nn.LayerNorm(c.dim, eps=1e-6)
        scale = 1.0 / max(c.layers, 1)
        self.blocks = nn.ModuleList(ConvNeXtBlock(c.dim, c.intermediate_dim, c.kernel_size, scale)
                                    for _ in range(c.layers))
        self.final_norm = nn.LayerNorm(c.dim, eps=1e-6)
        self.head = nn.Linear(c.dim, 2 * bins)               # [log magnitude (correction) | phase] per bin
        if c.magnitude_base:
            with torch.no_grad():
                self.head.weight[:bins].zero_()
                self.head.bias[:bins].zero_()
        register_inversion_buffers(self, m)

    @property
    def mel_config(self) -> MelConfig:
        return self.config.mel

    def inference_copy(self) -> Vocos:
        """A new model in eval mode with the same weights; `self` is left untouched."""
        copy = Vocos(self.config)
        copy.load_state_dict(self.state_dict())
        return copy.to(self.embed.bias.device).eval()

    def spectrum(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, frames) log-mel -> (B, n_fft // 2 + 1, frames) complex STFT (differentiable)."""
        mel = mel.to(self.embed.weight.dtype)
        h = self.norm(self.embed(mel).transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            h = block(h)
        out = self.head(self.final_norm(h.transpose(1, 2))).transpose(1, 2).float()  # (B, 2 * bins, frames)
        log_mag, phase = out.chunk(2, dim=1)
        if self.config.magnitude_base:
            with torch.no_grad():
                base = nnls_magnitude(mel.float(), self.basis, self.inverse_basis, self.config.nnls_iter)
            floor = self.config.mel.log_floor
            log_mag = log_mag + torch.log(base.clamp_min(floor))
        mag = torch.exp(log_mag.clamp(max=self.config.max_log_magnitude))
        return torch.complex(mag * torch.cos(phase), mag * torch.sin(phase))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel: (B, n_mels, frames) or (n_mels, frames) log-mel of `config.mel`. Returns wav (B, frames * hop)."""
        x = check_mel_input(mel, self.config.mel, type(self).__name__)
        spec = self.spectrum(x)
        if self.config.griffin_lim_iter or self.config.output_magnitude != "network":
            spec = self.refine(spec, x)
        return overlap_add_istft(spec, self.window, self.config.mel)

    def refine(self, spec: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """The network's spectrum (B, bins, frames) -> one with `output_magnitude` (the network's or the mel's
        NNLS inversion) under the network's phase, refined by `griffin_lim_iter` fast Griffin-Lim iterations."""
        c = self.config
        angles = spec / spec.abs().clamp_min(1e-16)
        if c.output_magnitude == "nnls":
            mag = nnls_magnitude(mel.float(), self.basis, self.inverse_basis, c.nnls_iter)
        else:
            mag = spec.abs()
        return fast_griffin_lim(mag, angles, c.griffin_lim_iter, c.griffin_lim_momentum, self.window, c.mel)

    @torch.no_grad()
    def vocode(self, mel: torch.Tensor, mel_config: MelConfig | None = None) -> torch.Tensor:
        """Inference entry: check that `mel_config` (the producer's) matches, then forward without grad."""
        if mel_config is not None:
            check_mel_config(self.config.mel, mel_config)
        return self(mel)

