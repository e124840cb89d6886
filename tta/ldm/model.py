"""The latent-diffusion UNet: diffusers' `UNet2DConditionModel` configured the AudioLDM way.

AudioLDM (Liu et al. 2023, §3.3) conditions its UNet on one CLAP embedding per clip, not on a token
sequence. The embedding enters FiLM-style: a Linear(512 -> 4·ch) whose output is *concatenated* to the
timestep embedding, so every ResNet block sees [t_emb, c_emb] (diffusers: `class_embed_type=
"simple_projection"`, `class_embeddings_concat=True`, the embedding passed as `class_labels`). The attention
blocks are the LDM SpatialTransformer with no context: both of its attention layers attend over the latent
itself. diffusers expresses that with `cross_attention_dim` = the block's own width per level and
`encoder_hidden_states=None` (exactly how diffusers' AudioLDM conversion and pipeline run AudioLDM-S).

`LDMConfig.context_dim` is the slot for a real cross-attention context (Re-AudioLDM's retrieved
neighbours): when set, every attention block's second layer attends to a `(B, L, context_dim)` context,
built by `tta.ldm.retrieval_context.RetrievalContext` (L = 1 null token + k neighbours x features). With
`context_dim` null, `retrieval_context.attach_decoupled` can instead add a zero-started context branch to those
self-attention layers (decoupled retrieval attention, for fine-tuning a trained UNet); the weights stay the same.

Latents are `(B, C, T', F')` in the VAE's time-major layout; T' and F' must be multiples of
`downsample_factor` (the pipeline pads T' and crops the audio afterwards).

Storage: a training run writes this wrapper as a tta component (config.json with `LDMConfig` +
model.safetensors, keys `net.*`). A pipeline folder's `unet/` keeps diffusers' own files
(`save_diffusers` / `load_diffusers`: config.json + diffusion_pytorch_model.safetensors), so a diffusers
user can open it with `UNet2DConditionModel.from_pretrained`; `LDMConfig.from_diffusers` reads the
config back (and imports diffusers AudioLDM UNets). A `unet/` packed with `tta export pipeline --dtype int8`
keeps its linear layers in 8 bits in optimum-quanto's layout (`tta.checkpoint.quantize_int8`); it loads here
widened to float32, and in diffusers when optimum-quanto is installed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LDMConfig:
    latent_channels: int = 8                                 # = the VAE's latent_channels
    block_out_channels: tuple[int, ...] = (128, 256, 384, 640)  # AudioLDM-S: ch 128 x mult (1, 2, 3, 5)
    layers_per_block: int = 2                                # res blocks per level
    attention_downsample: tuple[int, ...] = (2, 4, 8)        # levels (as downsample factor 2**i) with attention
    head_channels: int = 32                                  # channels per attention head
    num_heads: int = 0                                       # > 0: fixed head count at every level (diffusers'
                                                             # AudioLDM conversion uses 8); 0: width / head_channels
    class_embed_dim: int = 512                               # CLAP embedding width (FiLM input)
    context_dim: Optional[int] = None                        # cross-attention context width (retrieval); None = off
    transformer_layers: int = 1                              # transformer blocks per attention level
    norm_num_groups: int = 32

    def __post_init__(self) -> None:
        if self.latent_channels <= 0:
            raise ValueError(f"model.latent_channels={self.latent_channels} must be > 0")
        if not self.block_out_channels or any(c <= 0 for c in self.block_out_channels):
            raise ValueError(f"model.block_out_channels={self.block_out_channels} must be non-empty and positive")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"model.block_out_channels entry {c} is not divisible by "
                                 f"model.norm_num_groups={self.norm_num_groups}")
            if self.num_heads == 0 and c % self.head_channels:
                raise ValueError(f"model.block_out_channels entry {c} is not divisible by "
                                 f"model.head_channels={self.head_channels}")
            if self.num_heads > 0 and c % self.num_heads:
                raise ValueError(f"model.block_out_channels entry {c} is not divisible by "
                                 f"model.num_heads={self.num_heads}")
        valid = [2 ** i for i in range(len(self.block_out_channels))]
        for ds in self.attention_downsample:
            if ds not in valid:
                raise ValueError(f"model.attention_downsample entry {ds} must be one of {valid} "
                                 "(2**level for the configured levels)")
        for name in ("layers_per_block", "head_channels", "class_embed_dim", "transformer_layers"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name}={getattr(self, name)} must be > 0")
        if self.num_heads < 0:
            raise ValueError(f"model.num_heads={self.num_heads} must be >= 0")
        if self.context_dim is not None and self.context_dim <= 0:
            raise ValueError(f"model.context_dim={self.context_dim} must be > 0 or null")

    @property
    def downsample_factor(self) -> int:
        """Latent height and width must be multiples of this."""
        return 2 ** (len(self.block_out_channels) - 1)

    def attention_levels(self) -> list[bool]:
        return [2 ** i in self.attention_downsample for i in range(len(self.block_out_channels))]

    def heads(self) -> list[int]:
        if self.num_heads:
            return [self.num_heads] * len(self.block_out_channels)
        return [c // self.head_channels for c in self.block_out_channels]

    def diffusers_kwargs(self) -> dict:
        """Keyword arguments of the equivalent `UNet2DConditionModel`."""
        attn = self.attention_levels()
        heads = self.heads()
        cross = self.context_dim if self.context_dim is not None else tuple(self.block_out_channels)
        return dict(
            sample_size=None, in_channels=self.latent_channels, out_channels=self.latent_channels,
            down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
            up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
            block_out_channels=tuple(self.block_out_channels), layers_per_block=self.layers_per_block,
            norm_num_groups=self.norm_num_groups, cross_attention_dim=cross,
            # diffusers' historical naming: `attention_head_dim` is the number of heads here
            attention_head_dim=heads[0] if len(set(heads)) == 1 else tuple(heads),
            transformer_layers_per_block=self.transformer_layers,
            class_embed_type="simple_projection", projection_class_embeddings_input_dim=self.class_embed_dim,
            class_embeddings_concat=True, only_cross_attention=False, use_linear_projection=False,
        )

    @classmethod
    def from_diffusers(cls, config: dict, *, where: str = "unet config") -> LDMConfig:
        """The LDMConfig of a diffusers UNet2DConditionModel config (AudioLDM layout), or a ValueError."""
        from tta.config import ConfigError, from_known_fields

        try:
            from_known_fields(DiffusersUNetFields, config)
        except ConfigError as e:
            raise ValueError(f"{where}: {e}") from None
        need = {"class_embed_type": "simple_projection", "class_embeddings_concat": True}
        for k, v in need.items():
            if config.get(k) != v:
                raise ValueError(f"{where}: {k}={config.get(k)!r}, expected {v!r} (not an AudioLDM-style UNet)")
        # settings that change what the weights compute without changing their shapes: tta builds the UNet with
        # diffusers' defaults for them (AudioLDM's), so another value would load silently and compute otherwise
        defaults = {"flip_sin_to_cos": True, "freq_shift": 0, "norm_eps": 1e-5, "act_fn": "silu",
                    "center_input_sample": False, "time_embedding_act_fn": None, "only_cross_attention": False,
                    "upcast_attention": False, "resnet_time_scale_shift": "default", "time_embedding_type": "positional",
                    "mid_block_type": "UNetMidBlock2DCrossAttn", "dual_cross_attention": False}
        for k, v in defaults.items():
            if k in config and config[k] != v:
                raise ValueError(f"{where}: {k}={config[k]!r} is not supported (tta computes the UNet with {v!r})")
        channels = tuple(config["block_out_channels"])
        downs = list(config["down_block_types"])
        attn = tuple(2 ** i for i, t in enumerate(downs) if t.startswith("CrossAttn"))
        heads = config.get("attention_head_dim", 8)
        heads = list(heads) if isinstance(heads, (list, tuple)) else [heads] * len(channels)
        if any(h <= 0 for h in heads):
            raise ValueError(f"{where}: attention_head_dim={config.get('attention_head_dim', 8)!r} must be positive")
        cross = config.get("cross_attention_dim")
        if isinstance(cross, (list, tuple)) and list(cross) != list(channels):
            raise ValueError(f"{where}: cross_attention_dim={list(cross)!r} per block is not supported (a list must "
                             f"equal block_out_channels {list(channels)}: AudioLDM's self-attention layout)")
        context = None if isinstance(cross, (list, tuple)) else cross
        per_head = {c // h for c, h in zip(channels, heads)}
        if len(per_head) == 1 and all(c % h == 0 for c, h in zip(channels, heads)):
            head_channels, num_heads = per_head.pop(), 0
        elif len(set(heads)) == 1:
            head_channels, num_heads = 1, heads[0]
        else:
            raise ValueError(f"{where}: attention_head_dim={heads} is neither one head count nor one head width")
        tl = config.get("transformer_layers_per_block", 1)
        if not isinstance(tl, int):
            raise ValueError(f"{where}: transformer_layers_per_block={tl!r} per level is not supported")
        if config.get("in_channels") != config.get("out_channels"):
            raise ValueError(f"{where}: in_channels != out_channels")
        return cls(latent_channels=config["in_channels"], block_out_channels=channels,
                   layers_per_block=config["layers_per_block"], attention_downsample=attn,
                   head_channels=head_channels if num_heads == 0 else 32, num_heads=num_heads,
                   class_embed_dim=config["projection_class_embeddings_input_dim"],
                   context_dim=context, transformer_layers=tl, norm_num_groups=config.get("norm_num_groups", 32))


@dataclass(frozen=True)
class DiffusersUNetFields:
    """The fields of a diffusers UNet2DConditionModel config.json that `LDMConfig.from_diffusers` reads, typed as
    they must be: read with tta.config.from_known_fields first, so a damaged file names the field (it failed on
    Python's own words, e.g. "unsupported operand type(s) for //: 'str' and 'int'")."""
    block_out_channels: tuple[int, ...]
    down_block_types: tuple[str, ...]
    layers_per_block: int
    in_channels: int
    out_channels: int
    projection_class_embeddings_input_dim: int
    attention_head_dim: Union[int, tuple[int, ...]] = 8
    cross_attention_dim: Optional[Union[int, tuple[int, ...]]] = None
    norm_num_groups: int = 32


class LDMUNet(nn.Module):
    """Noise/velocity predictor: forward(latents (B, C, T', F'), timesteps (B,), cond (B, class_embed_dim),
    context (B, L, context_dim) | None) -> prediction (B, C, T', F')."""

    config_class = LDMConfig
    decoupled_width: int | None = None   # set by retrieval_context.attach_decoupled: the context's width

    def __init__(self, config: LDMConfig):
        super().__init__()
        from diffusers import UNet2DConditionModel

        self.config = config
        self.net = UNet2DConditionModel(**config.diffusers_kwargs())

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    @property
    def dtype(self) -> torch.dtype:
        return self.net.conv_in.weight.dtype

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor,
                context: torch.Tensor | None = None) -> torch.Tensor:
        c = self.config
        if latents.ndim != 4 or latents.shape[1] != c.latent_channels:
            raise ValueError(f"LDMUNet expects latents (B, {c.latent_channels}, T', F'), got {tuple(latents.shape)}")
        f = self.downsample_factor
        if latents.shape[2] % f or latents.shape[3] % f:
            raise ValueError(f"LDMUNet latents {tuple(latents.shape)}: T' and F' must be multiples of {f}")
        if cond.ndim != 2 or cond.shape != (latents.shape[0], c.class_embed_dim):
            raise ValueError(f"LDMUNet expects cond ({latents.shape[0]}, {c.class_embed_dim}), got {tuple(cond.shape)}")
        if self.decoupled_width is not None:   # decoupled retrieval attention: a context is optional
            if context is not None and (context.ndim != 3 or context.shape[-1] != self.decoupled_width):
                raise ValueError(f"LDMUNet (decoupled retrieval attention) expects a context (B, L, "
                                 f"{self.decoupled_width}), got {tuple(context.shape)}")
        elif (context is None) != (c.context_dim is None):
            raise ValueError("LDMUNet: a context is required exactly when model.context_dim is set "
                             f"(context_dim={c.context_dim}, context {'given' if context is not None else 'absent'})")
        dtype = self.dtype
        return self.net(latents.to(dtype), timesteps, encoder_hidden_states=None if context is None
                        else context.to(dtype), class_labels=cond.to(dtype)).sample

    # -- diffusers folder ------------------------------------------------------------------------

    def save_diffusers(self, folder: str | os.PathLike) -> Path:
        """Write diffusers' own UNet files (config.json + diffusion_pytorch_model.safetensors), atomically."""
        from tta.checkpoint import atomic_dir

        with atomic_dir(folder) as tmp:
            self.net.save_pretrained(str(tmp), safe_serialization=True)
        return Path(folder)

    @classmethod
    def load_diffusers(cls, folder: str | os.PathLike, *, device="cpu") -> LDMUNet:
        """Load a diffusers UNet folder (AudioLDM layout) into an LDMUNet; errors name the folder."""
        from tta.checkpoint import (DIFFUSERS_WEIGHT_NAMES, CheckpointError, keep_global_rng, load_into,
                                    read_foreign_folder)

        raw, state, _ = read_foreign_folder(folder, DIFFUSERS_WEIGHT_NAMES, what="a diffusers UNet folder")
        cfg_path = Path(folder) / "config.json"
        if raw.get("_class_name") != "UNet2DConditionModel":
            raise CheckpointError(f"{folder}: holds a {raw.get('_class_name') or raw.get('class')!r}, "
                                  "expected a diffusers UNet2DConditionModel")
        try:
            config = LDMConfig.from_diffusers(raw, where=str(cfg_path))
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{cfg_path}: missing or malformed UNet field ({e})") from None
        with keep_global_rng():   # (the initial weights drawn are replaced by the stored ones)
            model = cls(config)
        load_into(model.net, state, where=str(folder))
        return model.to(device).eval()


def identity_new_blocks(unet: LDMUNet, fresh: list[str]) -> int:
    """Make every transformer block that is wholly new (all of its tensors in `fresh`) start as the identity.

    A transformer block adds its attention and feed-forward branches to its input, so zeroing the last linear
    layer of each branch makes it pass its input through unchanged. A UNet grown from a trained one with more
    `transformer_layers` then computes exactly what the trained one did until training moves the new blocks
    (function-preserving growth, as in Net2Net; the zero output layers still get gradients). Blocks with only
    some tensors new (e.g. the retrieval context's reshaped key/value projections) are left alone. Returns the
    number of blocks made the identity."""
    from diffusers.models.attention import BasicTransformerBlock

    fresh_set = set(fresh)
    made = 0
    for prefix, block in unet.named_modules():
        if not isinstance(block, BasicTransformerBlock):
            continue
        keys = [f"{prefix}.{k}" for k, v in block.state_dict().items() if v.is_floating_point()]
        if not keys or not all(k in fresh_set for k in keys):
            continue
        outs = [a.to_out[0] for a in (block.attn1, getattr(block, "attn2", None)) if a is not None]
        outs.append(block.ff.net[-1])
        with torch.no_grad():
            for layer in outs:
                layer.weight.zero_()
                if layer.bias is not None:
                    layer.bias.zero_()
        made += 1
    if made:
        log.info("init_from: %d new transformer block(s) start as the identity", made)
    return made
