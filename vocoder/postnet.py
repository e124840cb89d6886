"""Griffin-Lim with a learned magnitude front-end: mel -> NNLS magnitude -> conv post-net -> Griffin-Lim.

`GriffinLim` turns the 64-band log-mel back into a 513-bin linear magnitude by non-negative least squares,
which smears each mel band's energy evenly across its bins: the fine harmonic and noise structure inside a
band is gone before the phase search starts (`bench/vocoder.py --fad-split` measures that this, not the
phase search, costs most of Griffin-Lim's FAD). `PostnetGriffinLim` adds a small residual 1-D conv net,
in the spirit of Tacotron's mel -> linear post-net (Wang et al. 2017), that reads the log-mel beside the
NNLS solution's log magnitude and predicts a per-bin log correction; the phase is then found by the same
fast Griffin-Lim. The correction's output layer starts at zero, so an untrained post-net vocodes like
`GriffinLim` (up to the magnitude floor `floor`, about -110 dB of full scale).

`tta train postnet` (vocoder/postnet_train.py) fits it to true STFT magnitudes; it can also learn from a
VAE's reconstructed mels, so that it undoes some of the VAE decoder's smoothing as well, and against a patch
discriminator on log-magnitude spectrograms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from vocoder.griffinlim import GriffinLim, GriffinLimConfig
from vocoder.model import check_mel_input


@dataclass(frozen=True)
class PostnetGriffinLimConfig(GriffinLimConfig):
    n_iter: int = 16
    channels: int = 256      # width of the residual conv stack
    layers: int = 4          # residual blocks (GELU -> conv), each kernel_size frames wide
    kernel_size: int = 5     # odd, so the output stays frame-aligned
    floor: float = 1e-3      # linear magnitudes are clamped to this before the log (input and loss)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.channels <= 0 or self.layers < 0:
            raise ValueError(f"channels={self.channels} must be > 0 and layers={self.layers} >= 0")
        if self.kernel_size <= 0 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={self.kernel_size} must be a positive odd number")
        if not self.floor > 0:
            raise ValueError(f"floor={self.floor} must be > 0")


class PostnetGriffinLim(GriffinLim):
    """forward(mel (B, n_mels, frames)) -> wav (B, frames * hop), like `GriffinLim` and `HiFiGAN`.

    `magnitude(mel)` is differentiable in the post-net's weights (training calls it); `forward` and
    `vocode` run without gradients."""

    config_class = PostnetGriffinLimConfig
    # `--vocoder-set` may change the Griffin-Lim iterations after the network, not the magnitude it reads
    inference_fields: tuple[str, ...] | None = ("n_iter", "momentum")

    def __init__(self, config: PostnetGriffinLimConfig):
        super().__init__(config)
        bins = config.mel.n_fft // 2 + 1
        c, k = config.channels, config.kernel_size
        self.conv_in = nn.Conv1d(config.mel.n_mels + bins, c, k, padding=k // 2)
        self.blocks = nn.ModuleList(nn.Conv1d(c, c, k, padding=k // 2) for _ in range(config.layers))
        self.conv_out = nn.Conv1d(c, bins, 1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def nnls_magnitude(self, mel: torch.Tensor) -> torch.Tensor:
        """The untrained inversion (`GriffinLim.magnitude`): (B, n_mels, frames) -> (B, bins, frames)."""
        with torch.no_grad():
            return super().magnitude(mel)

    def log_magnitude(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, frames) log-mel -> (B, n_fft // 2 + 1, frames) natural-log linear magnitude."""
        mel = mel.to(self.conv_in.weight.dtype)
        base = torch.log(self.nnls_magnitude(mel).clamp_min(self.config.floor))
        h = self.conv_in(torch.cat([mel, base], dim=1))
        for conv in self.blocks:
            h = h + conv(F.gelu(h))
        return base + self.conv_out(F.gelu(h))

    def magnitude(self, mel: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_magnitude(mel))

    @torch.no_grad()
    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        mel = check_mel_input(mel, self.config.mel, type(self).__name__).to(self.conv_in.weight.dtype)
        return self.from_magnitude(self.magnitude(mel).to(self.window.dtype))


def magnitude_loss(log_mag: torch.Tensor, target: torch.Tensor, floor: float,
                   spectral_convergence: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L1 between log magnitudes (both clamped at `floor`) + `spectral_convergence` x
    ||exp(log_mag) - target||_F / ||target||_F (per item, averaged). Returns (total, parts). The log term
    alone fits the quiet bins and blurs the loud ones; the spectral-convergence term weights bins by their
    energy."""
    log_l1 = (log_mag - torch.log(target.clamp_min(floor))).abs().mean()
    diff = torch.linalg.vector_norm(torch.exp(log_mag) - target, dim=(-2, -1))
    sc = (diff / torch.linalg.vector_norm(target, dim=(-2, -1)).clamp_min(1e-8)).mean()
    return log_l1 + spectral_convergence * sc, {"log_l1": log_l1, "sc": sc}
