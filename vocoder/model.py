"""HiFi-GAN generator (Kong et al. 2020, "HiFi-GAN: Generative Adversarial Networks for Efficient and High
Fidelity Speech Synthesis"): log-mel (B, n_mels, frames) -> waveform (B, frames * hop_length).

Module names follow the reference implementation (`conv_pre`, `ups.i`, `resblocks.j.convs1/convs2/convs`,
`conv_post`) so foreign checkpoints map onto it with few renames (see `vocoder.interop`). Weight norm is a
training-time reparameterisation (torch's `parametrizations.weight_norm`, state keys
`*.parametrizations.weight.original0/1` = the reference's `weight_g/weight_v`); `remove_weight_norm()` folds
it into plain weights for inference and records that in `config.weight_norm`, so a saved component always
says which parameterisation its weights use.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrizations, parametrize

from tta.audio import MelConfig

FINAL_LEAKY_SLOPE = 0.01  # the reference applies F.leaky_relu's default slope before conv_post


class VocoderInputError(ValueError):
    """A mel spectrogram a vocoder cannot turn into audio; the message says what was expected."""


@dataclass(frozen=True)
class HiFiGANConfig:
    mel: MelConfig = field(default_factory=MelConfig)  # n_mels and hop_length come from here: one mel space
    upsample_rates: tuple[int, ...] = (5, 4, 2, 2, 2)  # product == mel.hop_length
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 8, 4, 4)
    upsample_initial_channel: int = 1024
    resblock: Literal["1", "2"] = "1"  # "1": two convs per dilation (V1/V2); "2": one conv per dilation (V3)
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    leaky_relu_slope: float = 0.1
    # SpeechT5HifiGan's optional input standardisation (mel - mean) / scale with stored buffers.
    normalize_before: bool = False
    # True while training (weight-norm parameterisation); remove_weight_norm() turns it off.
    weight_norm: bool = True

    def __post_init__(self) -> None:
        hop = math.prod(self.upsample_rates)
        if hop != self.mel.hop_length:
            raise ValueError(f"prod(upsample_rates)={hop} (upsample_rates={list(self.upsample_rates)}) must equal "
                             f"mel.hop_length={self.mel.hop_length}")
        if len(self.upsample_kernel_sizes) != len(self.upsample_rates):
            raise ValueError(f"upsample_kernel_sizes has {len(self.upsample_kernel_sizes)} entries, "
                             f"upsample_rates has {len(self.upsample_rates)}: they must match")
        for i, (u, k) in enumerate(zip(self.upsample_rates, self.upsample_kernel_sizes)):
            if u <= 0 or k < u:
                raise ValueError(f"upsample_kernel_sizes[{i}]={k} must be >= upsample_rates[{i}]={u} > 0")
        if self.upsample_initial_channel % 2 ** len(self.upsample_rates):
            raise ValueError(f"upsample_initial_channel={self.upsample_initial_channel} must be divisible by "
                             f"2**{len(self.upsample_rates)} (channels halve at every upsampling stage)")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes) or not self.resblock_kernel_sizes:
            raise ValueError("resblock_kernel_sizes and resblock_dilation_sizes must be non-empty and of equal length")
        for i, (k, d) in enumerate(zip(self.resblock_kernel_sizes, self.resblock_dilation_sizes)):
            if k % 2 == 0:
                raise ValueError(f"resblock_kernel_sizes[{i}]={k} must be odd (same-length convolutions)")
            if not d or min(d) <= 0:
                raise ValueError(f"resblock_dilation_sizes[{i}]={list(d)} must be non-empty positive dilations")

    @property
    def hop_length(self) -> int:
        return self.mel.hop_length


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


class ResBlock1(nn.Module):
    """Per dilation d: x + conv(lrelu(conv_d(lrelu(x)))) (HiFi-GAN V1/V2 multi-receptive-field block)."""

    def __init__(self, channels: int, kernel_size: int, dilation: tuple[int, ...], slope: float):
        super().__init__()
        self.slope = slope
        self.convs1 = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size, 1, dilation=d,
                                              padding=get_padding(kernel_size, d)) for d in dilation)
        self.convs2 = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size, 1, dilation=1,
                                              padding=get_padding(kernel_size, 1)) for _ in dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, self.slope)), self.slope))
        return x


class ResBlock2(nn.Module):
    """Per dilation d: x + conv_d(lrelu(x)) (HiFi-GAN V3, cheaper)."""

    def __init__(self, channels: int, kernel_size: int, dilation: tuple[int, ...], slope: float):
        super().__init__()
        self.slope = slope
        self.convs = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size, 1, dilation=d,
                                             padding=get_padding(kernel_size, d)) for d in dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c in self.convs:
            x = x + c(F.leaky_relu(x, self.slope))
        return x


def init_conv_weights(module: nn.Module, std: float = 0.01) -> None:
    """The reference's N(0, 0.01) initialisation of generator convolutions (biases keep torch's default)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
            nn.init.normal_(m.weight, 0.0, std)


def check_mel_input(mel: torch.Tensor, config: MelConfig, who: str) -> torch.Tensor:
    """Validate a vocoder input: (B, n_mels, frames) or (n_mels, frames), finite, at least one frame."""
    if not isinstance(mel, torch.Tensor):
        mel = torch.as_tensor(mel)
    if mel.ndim == 2:
        mel = mel.unsqueeze(0)
    if mel.ndim != 3:
        raise VocoderInputError(f"{who} expects mel of shape (B, n_mels, frames), got {tuple(mel.shape)}")
    if mel.shape[1] != config.n_mels:
        raise VocoderInputError(f"{who} expects {config.n_mels} mel bins (vocoder mel config: n_mels="
                                f"{config.n_mels}, hop_length={config.hop_length}, sample_rate={config.sample_rate})"
                                f" but the mel has {mel.shape[1]} bins")
    if mel.shape[-1] == 0 or mel.shape[0] == 0:
        raise VocoderInputError(f"{who} got an empty mel of shape {tuple(mel.shape)}: needs at least one frame")
    if not torch.is_floating_point(mel):
        raise VocoderInputError(f"{who} expects a float mel, got dtype {mel.dtype}")
    if not bool(torch.isfinite(mel).all()):
        raise VocoderInputError(f"{who} got a mel with non-finite values (NaN or inf)")
    return mel


def check_mel_config(vocoder: MelConfig, other: MelConfig, what: str = "the input") -> None:
    """Refuse a mel made in another mel space; the message names both configs' differing fields. The framing
    (half a hop earlier or later) is no other space and is not compared."""
    diffs = vocoder.diff(other, framing=False)
    if diffs:
        raise VocoderInputError(f"mel config of {what} differs from the vocoder's: " + "; ".join(diffs)
                                + f" (vocoder: {vocoder}; {what}: {other})")


class HiFiGAN(nn.Module):
    """HiFi-GAN generator. forward(mel (B, n_mels, frames) natural-log mel) -> wav (B, frames * hop) in [-1, 1]."""

    config_class = HiFiGANConfig
    inference_fields: tuple[str, ...] | None = ()   # every field shapes what the trained weights compute

    def __init__(self, config: HiFiGANConfig):
        super().__init__()
        self.config = config
        c = config
        self.num_kernels = len(c.resblock_kernel_sizes)
        self.conv_pre = nn.Conv1d(c.mel.n_mels, c.upsample_initial_channel, 7, 1, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        block = ResBlock1 if c.resblock == "1" else ResBlock2
        ch = c.upsample_initial_channel
        for i, (u, k) in enumerate(zip(c.upsample_rates, c.upsample_kernel_sizes)):
            ch = c.upsample_initial_channel // 2 ** (i + 1)
            self.ups.append(nn.ConvTranspose1d(2 * ch, ch, k, u, padding=(k - u) // 2))
            for kernel, dilation in zip(c.resblock_kernel_sizes, c.resblock_dilation_sizes):
                self.resblocks.append(block(ch, kernel, tuple(dilation), c.leaky_relu_slope))
        self.conv_post = nn.Conv1d(ch, 1, 7, 1, padding=3)
        init_conv_weights(self.ups)
        init_conv_weights(self.resblocks)
        init_conv_weights(self.conv_post)
        if c.normalize_before:
            self.register_buffer("mean", torch.zeros(c.mel.n_mels))
            self.register_buffer("scale", torch.ones(c.mel.n_mels))
        if c.weight_norm:
            self._apply_weight_norm()

    def convs(self) -> list[nn.Module]:
        """Every convolution, in the order the reference applies/removes weight norm."""
        return [m for m in self.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))]

    def _apply_weight_norm(self) -> None:
        for m in self.convs():
            parametrizations.weight_norm(m)

    def apply_weight_norm(self) -> HiFiGAN:
        """Reparameterise every convolution as g * v / ||v|| (for training / fine-tuning); returns self."""
        if not self.config.weight_norm:
            self._apply_weight_norm()
            self.config = dataclasses.replace(self.config, weight_norm=True)
        return self

    def remove_weight_norm(self) -> HiFiGAN:
        """Fold weight norm into plain weights (same output, faster inference); returns self."""
        if self.config.weight_norm:
            for m in self.convs():
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
            self.config = dataclasses.replace(self.config, weight_norm=False)
        return self

    def inference_copy(self) -> HiFiGAN:
        """A new model with the same weights and weight norm removed; `self` is left untouched.

        (Not copy.deepcopy: a deep copy of a parametrized module shares its generated class, and removing
        the parametrization from the copy breaks the original.)
        """
        copy = HiFiGAN(self.config)
        copy.load_state_dict(self.state_dict())
        return copy.remove_weight_norm().to(self.conv_pre.bias.device).eval()

    @property
    def mel_config(self) -> MelConfig:
        return self.config.mel

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel: (B, n_mels, frames) or (n_mels, frames) log-mel of `config.mel`. Returns wav (B, frames * hop)."""
        x = check_mel_input(mel, self.config.mel, type(self).__name__)
        x = x.to(self.conv_pre.bias.dtype)
        if self.config.normalize_before:
            x = (x - self.mean[:, None]) / self.scale[:, None]
        x = self.conv_pre(x)
        k = self.num_kernels
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, self.config.leaky_relu_slope))
            xs = self.resblocks[i * k](x)
            for j in range(1, k):
                xs = xs + self.resblocks[i * k + j](x)
            x = xs / k
        x = torch.tanh(self.conv_post(F.leaky_relu(x, FINAL_LEAKY_SLOPE)))
        # A stage whose kernel - rate is odd (AudioLDM's 16/5) yields one extra sample, which later stages
        # multiply (AudioLDM: 160 * frames + 32); the contract is exactly frames * hop samples.
        return x[:, 0, : mel.shape[-1] * self.config.hop_length]

    @torch.no_grad()
    def vocode(self, mel: torch.Tensor, mel_config: MelConfig | None = None) -> torch.Tensor:
        """Inference entry: check that `mel_config` (the producer's) matches, then forward without grad."""
        if mel_config is not None:
            check_mel_config(self.config.mel, mel_config)
        return self(mel)
