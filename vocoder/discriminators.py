"""HiFi-GAN discriminators (Kong et al. 2020, sec. 2.2-2.3): multi-period (MPD) + multi-scale (MSD).

MPD folds the waveform into (T / p, p) for each period p and applies 2-D convolutions along time, so each
sub-discriminator sees one phase of a periodic structure. MSD (from MelGAN) looks at the raw, x2 and x4
average-pooled waveform with grouped 1-D convolutions; its first scale uses spectral norm, the others weight
norm. Channel widths are configurable so tests can use tiny ones; the defaults are the paper's. Module names
follow the reference (`mpd.discriminators.i.convs.j`, `msd.discriminators.i.convs.j`, `conv_post`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrizations

from vocoder.model import get_padding

LRELU_SLOPE = 0.1

# (list of per-sub-discriminator logits (B, N), list of per-sub-discriminator feature-map lists)
DiscOutput = tuple[list[torch.Tensor], list[list[torch.Tensor]]]


@dataclass(frozen=True)
class DiscriminatorConfig:
    periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    mpd_channels: tuple[int, ...] = (32, 128, 512, 1024, 1024)  # last entry: the stride-1 layer
    mpd_kernel_size: int = 5
    mpd_stride: int = 3
    msd_scales: int = 3                                          # raw, /2, /4 (average pooling)
    msd_channels: tuple[int, ...] = (128, 128, 256, 512, 1024, 1024, 1024)
    msd_groups: tuple[int, ...] = (1, 4, 16, 16, 16, 16, 1)

    def __post_init__(self) -> None:
        if not self.periods or min(self.periods) < 1:
            raise ValueError(f"discriminator.periods={list(self.periods)} must be non-empty positive integers")
        if len(self.mpd_channels) < 2:
            raise ValueError("discriminator.mpd_channels needs at least 2 entries")
        if self.msd_scales < 0:
            raise ValueError(f"discriminator.msd_scales={self.msd_scales} must be >= 0")
        if len(self.msd_channels) != 7 or len(self.msd_groups) != 7:
            raise ValueError("discriminator.msd_channels and discriminator.msd_groups need 7 entries each "
                             "(one per MSD convolution)")
        ins = (1,) + self.msd_channels[:-1]
        for i, (cin, cout, g) in enumerate(zip(ins, self.msd_channels, self.msd_groups)):
            if cin % g or cout % g:
                raise ValueError(f"discriminator.msd_groups[{i}]={g} must divide both the input ({cin}) and output "
                                 f"({cout}) channels of MSD convolution {i}")


class PeriodDiscriminator(nn.Module):
    def __init__(self, period: int, channels: tuple[int, ...], kernel_size: int, stride: int):
        super().__init__()
        self.period = period
        wn = parametrizations.weight_norm
        ins = (1,) + channels[:-1]
        layers = []
        for i, (cin, cout) in enumerate(zip(ins, channels)):
            last = i == len(channels) - 1
            layers.append(wn(nn.Conv2d(cin, cout, (kernel_size, 1), (1 if last else stride, 1),
                                       padding=(get_padding(kernel_size, 1), 0))))
        self.convs = nn.ModuleList(layers)
        self.conv_post = wn(nn.Conv2d(channels[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """wav: (B, 1, T). Returns logits (B, N) and the feature maps after each layer."""
        t = wav.shape[-1]
        if t % self.period:
            n_pad = self.period - t % self.period
            # reflect needs n_pad < T; for very short inputs fall back to zero padding of the tail
            wav = F.pad(wav, (0, n_pad), "reflect" if n_pad < t else "constant")
        x = rearrange(wav, "b c (t p) -> b c t p", p=self.period)
        fmap = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LRELU_SLOPE)
            fmap.append(x)
        x = self.conv_post(x)
        fmap.append(x)
        return torch.flatten(x, 1), fmap


class ScaleDiscriminator(nn.Module):
    def __init__(self, channels: tuple[int, ...], groups: tuple[int, ...], spectral: bool):
        super().__init__()
        norm = parametrizations.spectral_norm if spectral else parametrizations.weight_norm
        # (kernel, stride) of the reference's seven convolutions
        shape = [(15, 1), (41, 2), (41, 2), (41, 4), (41, 4), (41, 1), (5, 1)]
        ins = (1,) + channels[:-1]
        self.convs = nn.ModuleList(
            norm(nn.Conv1d(cin, cout, k, s, groups=g, padding=get_padding(k, 1)))
            for cin, cout, g, (k, s) in zip(ins, channels, groups, shape))
        self.conv_post = norm(nn.Conv1d(channels[-1], 1, 3, 1, padding=1))

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x, fmap = wav, []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LRELU_SLOPE)
            fmap.append(x)
        x = self.conv_post(x)
        fmap.append(x)
        return torch.flatten(x, 1), fmap


class MultiPeriodDiscriminator(nn.Module):
    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        self.discriminators = nn.ModuleList(
            PeriodDiscriminator(p, config.mpd_channels, config.mpd_kernel_size, config.mpd_stride)
            for p in config.periods)

    def forward(self, wav: torch.Tensor) -> DiscOutput:
        outs = [d(wav) for d in self.discriminators]
        return [o[0] for o in outs], [o[1] for o in outs]


class MultiScaleDiscriminator(nn.Module):
    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        self.discriminators = nn.ModuleList(
            ScaleDiscriminator(config.msd_channels, config.msd_groups, spectral=i == 0)
            for i in range(config.msd_scales))
        self.meanpools = nn.ModuleList(nn.AvgPool1d(4, 2, padding=2) for _ in range(max(config.msd_scales - 1, 0)))

    def forward(self, wav: torch.Tensor) -> DiscOutput:
        logits, fmaps = [], []
        for i, d in enumerate(self.discriminators):
            if i:
                wav = self.meanpools[i - 1](wav)
            out, fmap = d(wav)
            logits.append(out)
            fmaps.append(fmap)
        return logits, fmaps


class HiFiGANDiscriminator(nn.Module):
    """MPD + MSD in one module (one checkpoint component). forward(wav (B, T) or (B, 1, T)) -> DiscOutput
    with the MPD sub-discriminators first, then the MSD scales."""

    config_class = DiscriminatorConfig

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        self.config = config
        self.mpd = MultiPeriodDiscriminator(config)
        self.msd = MultiScaleDiscriminator(config)

    def forward(self, wav: torch.Tensor) -> DiscOutput:
        if wav.ndim == 2:
            wav = wav.unsqueeze(1)
        if wav.ndim != 3 or wav.shape[1] != 1:
            raise ValueError(f"discriminator expects wav of shape (B, T) or (B, 1, T), got {tuple(wav.shape)}")
        p_logits, p_fmaps = self.mpd(wav)
        s_logits, s_fmaps = self.msd(wav)
        return p_logits + s_logits, p_fmaps + s_fmaps
