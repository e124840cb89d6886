"""The mel-VAE: a KL autoencoder over log-mel images (AudioLDM §3.2, after Rombach et al. 2022).

The network is diffusers' `AutoencoderKL` (so diffusers-format AudioLDM VAEs load as they are), wrapped
with the mel contract. A mel `(B, n_mels, frames)` is treated as a one-channel image `(B, 1, frames, n_mels)`
— time on the height axis, frequency on the width axis, exactly as AudioLDM feeds its first stage — so
latents are `(B, C, frames / f, n_mels / f)` with f = 2 ** (len(block_out_channels) - 1). This time-major
latent layout is AudioLDM's (its UNet weights expect it), not the `(B, C, F', T')` order named in STYLE.md.

Any number of frames is accepted: frames are edge-padded up to a multiple of f before encoding and the
reconstruction is cropped back. `scale_factor` (LDM's scale_by_std: 1 / std of latents over data) is a
buffer saved with the weights and mirrored in the config; `compute_scale_factor` measures it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import nn

from tta.audio import MelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VAEConfig:
    mel: MelConfig = field(default_factory=MelConfig)  # the one mel space; must equal the vocoder's
    block_out_channels: tuple[int, ...] = (128, 256, 512)  # AudioLDM-S: ch 128 x mult (1, 2, 4)
    layers_per_block: int = 2  # res blocks per encoder level (the decoder has one more)
    latent_channels: int = 8  # z channels (= AudioLDM's embed_dim and z_channels)
    norm_num_groups: int = 32  # GroupNorm groups (the reference hard-codes 32)
    mid_block_add_attention: bool = True  # single-head self-attention in the mid blocks (reference: on)
    scale_factor: float = 1.0  # latents x scale_factor feed the diffusion model (data-derived)

    def __post_init__(self) -> None:
        if not self.block_out_channels or any(c <= 0 for c in self.block_out_channels):
            raise ValueError(
                f"model.block_out_channels={self.block_out_channels} must be non-empty and positive"
            )
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(
                    f"model.block_out_channels entry {c} is not divisible by "
                    f"model.norm_num_groups={self.norm_num_groups}"
                )
        if self.layers_per_block <= 0 or self.latent_channels <= 0:
            raise ValueError("model.layers_per_block and model.latent_channels must be > 0")
        if self.mel.n_mels % self.downsample_factor:
            raise ValueError(
                f"mel.n_mels={self.mel.n_mels} must be divisible by the VAE's downsampling factor "
                f"{self.downsample_factor} (2 ** (len(block_out_channels) - 1))"
            )
        if not (self.scale_factor > 0 and math.isfinite(self.scale_factor)):
            raise ValueError(f"model.scale_factor={self.scale_factor} must be a positive finite number")

    @property
    def downsample_factor(self) -> int:
        """Latent downsampling in time and in frequency."""
        return 2 ** (len(self.block_out_channels) - 1)


def build_autoencoder(config: VAEConfig):
    """The diffusers AutoencoderKL described by `config` (one input/output channel: the mel image)."""
    from diffusers import AutoencoderKL

    levels = len(config.block_out_channels)
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        act_fn="silu",
        latent_channels=config.latent_channels,
        norm_num_groups=config.norm_num_groups,
        sample_size=config.mel.n_mels,
        scaling_factor=config.scale_factor,
        mid_block_add_attention=config.mid_block_add_attention,
    )


class MelVAE(nn.Module):
    """KL autoencoder over log-mel spectrograms.

    encode(mel (B, n_mels, frames)) -> posterior (diffusers DiagonalGaussianDistribution over
        latents (B, C, ceil(frames / f), n_mels / f); `.mean`, `.logvar`, `.sample(generator)`, `.mode()`).
    decode(latents (B, C, T', F'), num_frames=None) -> mel (B, n_mels, frames) (cropped to num_frames).
    mel_to_latents / latents_to_mel are the same with scale_factor applied: what the diffusion model sees.
    """

    config_class = VAEConfig

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.net = build_autoencoder(config)
        self.register_buffer("scale_factor", torch.tensor(float(config.scale_factor)))

    # -- shapes ----------------------------------------------------------------------------------

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    def check_mel(self, mel: torch.Tensor) -> torch.Tensor:
        """Validate a (B, n_mels, frames) log-mel; raise ValueError naming the shape or the bad values."""
        if not isinstance(mel, torch.Tensor):
            raise TypeError(
                f"MelVAE expects a torch tensor mel (B, n_mels, frames), got {type(mel).__name__}"
            )
        n_mels = self.config.mel.n_mels
        if mel.ndim != 3 or mel.shape[1] != n_mels or mel.shape[2] < 1:
            raise ValueError(
                f"MelVAE expects mel of shape (B, n_mels={n_mels}, frames), got {tuple(mel.shape)}"
            )
        if not torch.is_floating_point(mel):
            raise ValueError(f"MelVAE expects a floating-point mel, got dtype {mel.dtype}")
        bad = ~torch.isfinite(mel)
        if bool(bad.any()):
            kinds = sorted({"NaN" if math.isnan(v) else "inf" for v in mel[bad][:64].tolist()})
            raise ValueError(
                f"mel of shape {tuple(mel.shape)} contains {int(bad.sum())} non-finite values "
                f"({'/'.join(kinds)}); expected finite log-mel values"
            )
        return mel

    def mel_to_image(self, mel: torch.Tensor, *, pad: bool = True) -> torch.Tensor:
        """(B, n_mels, frames) -> (B, 1, frames, n_mels); with `pad`, frames are edge-padded up to a
        multiple of the downsampling factor (what the network needs; losses use the unpadded image)."""
        image = rearrange(mel, "b f t -> b 1 t f")
        pad = (-image.shape[2]) % self.downsample_factor if pad else 0
        if pad:
            image = nn.functional.pad(image, (0, 0, 0, pad), mode="replicate")
        return image

    @staticmethod
    def image_to_mel(image: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """(B, 1, frames, n_mels) -> (B, n_mels, frames), cropped to num_frames when given."""
        if num_frames is not None:
            image = image[:, :, :num_frames]
        return rearrange(image, "b 1 t f -> b f t")

    def latent_shape(self, num_frames: int) -> tuple[int, int, int]:
        """(C, T', F') of the latents for a mel of `num_frames` frames."""
        f = self.downsample_factor
        return (self.config.latent_channels, -(-num_frames // f), self.config.mel.n_mels // f)

    @property
    def identity(self) -> str:
        """"tta-vae:" + a short hash of the weights rounded to float16 (names, shapes, values): a model and its
        float16 export share it, a retrained or other VAE does not. Names the latent space a datastore's
        stored latents live in; a mel framing other than the default is named too (the same weights encode
        audio framed half a hop apart into other latents)."""
        from tta.checkpoint import weights_hash

        framing = self.config.mel.framing
        suffix = "" if framing == "hifigan" else f"+{framing}"
        return f"tta-vae:{weights_hash(self.state_dict(), float16=True)}{suffix}"

    @torch.no_grad()
    def latent_summary(self, mel: torch.Tensor, tokens: int) -> torch.Tensor:
        """One clip's acoustic summary: mel (1, n_mels, frames) -> the posterior mean latents x scale_factor
        average-pooled over time to `tokens` frames, (tokens, C * F') (each token: every channel of every
        latent frequency row, channel-major). A clip shorter than `tokens` latent frames repeats frames."""
        if mel.ndim != 3 or mel.shape[0] != 1:
            raise ValueError(f"latent_summary takes one clip's mel (1, n_mels, frames), got {tuple(mel.shape)}")
        z = self.encode(mel).mean.float() * self.scale_factor            # (1, C, T', F')
        z = nn.functional.adaptive_avg_pool2d(z, (tokens, z.shape[-1]))  # (1, C, tokens, F')
        return rearrange(z[0], "c t f -> t (c f)")

    # -- the autoencoder -------------------------------------------------------------------------

    def encode(self, mel: torch.Tensor):
        """mel (B, n_mels, frames) -> posterior over latents (B, C, ceil(frames / f), n_mels / f)."""
        image = self.mel_to_image(self.check_mel(mel))
        return self.net.encode(image.to(self.net.dtype)).latent_dist

    def decode(self, latents: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Unscaled latents (B, C, T', F') -> mel (B, n_mels, T' * f), cropped to num_frames when given."""
        expected = (self.config.latent_channels, self.config.mel.n_mels // self.downsample_factor)
        if latents.ndim != 4 or (latents.shape[1], latents.shape[3]) != expected:
            raise ValueError(
                f"MelVAE.decode expects latents of shape (B, {expected[0]}, frames', {expected[1]}), "
                f"got {tuple(latents.shape)}"
            )
        if not bool(torch.isfinite(latents).all()):
            raise ValueError(f"latents of shape {tuple(latents.shape)} contain non-finite values")
        image = self.net.decode(latents.to(self.net.dtype)).sample
        return self.image_to_mel(image, num_frames)

    def forward(self, mel: torch.Tensor, *, sample: bool = True, generator: torch.Generator | None = None):
        """Reconstruct: returns (reconstruction (B, n_mels, frames), posterior)."""
        posterior = self.encode(mel)
        z = posterior.sample(generator=generator) if sample else posterior.mode()
        return self.decode(z, num_frames=mel.shape[-1]), posterior

    def mel_to_latents(
        self, mel: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """mel -> latents x scale_factor (the diffusion model's space). Posterior mode unless `sample`."""
        posterior = self.encode(mel)
        z = posterior.sample(generator=generator) if sample else posterior.mode()
        return z * self.scale_factor

    def latents_to_mel(self, latents: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Scaled latents (diffusion space) -> mel (B, n_mels, frames)."""
        return self.decode(latents / self.scale_factor, num_frames)

    def last_layer(self) -> torch.Tensor:
        """The decoder's output conv weight (for the adaptive GAN weight)."""
        return self.net.decoder.conv_out.weight

    def set_scale_factor(self, value: float) -> None:
        """Store a data-derived scale factor in the buffer (saved with the weights) and in the config."""
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"scale_factor={value} must be a positive finite number")
        self.scale_factor.fill_(float(value))
        self.config = dataclasses.replace(self.config, scale_factor=float(value))
        self.net.register_to_config(scaling_factor=float(value))


@torch.no_grad()
def compute_scale_factor(
    model: MelVAE, mels: Iterable[torch.Tensor], *, seed: int = 0, progress: bool = False
) -> float:
    """LDM's scale_by_std: 1 / std of posterior samples over `mels` (an iterable of (B, n_mels, frames)).

    Samples (not modes) are used, as the reference does on its first training batch; a seeded generator
    keeps the value reproducible. Raises ValueError when there is no data or the latents are constant.
    """
    from tqdm.auto import tqdm

    device = model.scale_factor.device
    generator = torch.Generator(device=device).manual_seed(seed)
    count, total, total_sq = 0, 0.0, 0.0
    was_training = model.training
    model.eval()
    try:
        for mel in tqdm(mels, desc="scale factor", disable=not progress, leave=False):
            z = model.encode(mel.to(device)).sample(generator=generator).double()
            count += z.numel()
            total += float(z.sum())
            total_sq += float((z * z).sum())
    finally:
        model.train(was_training)
    if count < 2:
        raise ValueError("compute_scale_factor got no mel data (an empty split?)")
    var = (total_sq - total * total / count) / (count - 1)
    if not var > 0:
        raise ValueError(
            f"latent variance {var} over {count} values is not positive; cannot derive a scale factor"
        )
    return 1.0 / math.sqrt(var)


def load_vae(folder, *, mel: MelConfig | None = None, device="cpu") -> MelVAE:
    """Load a MelVAE component folder; with `mel`, refuse one trained in another mel space (naming both)."""
    from tta.audio import check_same_mel
    from tta.checkpoint import load_component

    model = load_component(folder, MelVAE, device=device)
    if mel is not None:
        check_same_mel(model.config.mel, mel, f"VAE {folder}", "the expected mel config")
    return model
