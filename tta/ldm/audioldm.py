"""The UNet of an AudioLDM original `.ckpt` (LDM `openaimodel` layout) as an `LDMUNet`.

Reference layout (`model.diffusion_model.*`, or the EMA copy `model_ema.diffusion_model<key without dots>`):

    time_embed.{0,2}                 -> time_embedding.linear_{1,2}
    film_emb                         -> class_embedding            (CLAP FiLM projection)
    input_blocks.0.0                 -> conv_in
    input_blocks.i.0 (ResBlock)      -> down_blocks.b.resnets.l    i = 1 + b (n + 1) + l
    input_blocks.i.1 (Transformer)   -> down_blocks.b.attentions.l
    input_blocks.i.0.op              -> down_blocks.b.downsamplers.0.conv   i = 1 + b (n + 1) + n
    middle_block.{0,1,2}             -> mid_block.{resnets.0, attentions.0, resnets.1}
    output_blocks.i.0                -> up_blocks.b.resnets.l      i = b (n + 1) + l
    output_blocks.i.1                -> up_blocks.b.attentions.l   (attention levels)
    output_blocks.i.{1|2}.conv       -> up_blocks.b.upsamplers.0.conv (last layer of a level)
    out.{0,2}                        -> conv_norm_out, conv_out
    ResBlock: in_layers.{0,2} -> norm1, conv1; emb_layers.1 -> time_emb_proj; out_layers.{0,3} -> norm2, conv2;
              skip_connection -> conv_shortcut. Transformer inner names are the same in both layouts.

The sizes (S / M / L differ in model_channels and depth) are read from tensor shapes. The head width leaves
no trace in the weights: the reference uses 32-channel heads (`num_head_channels: 32`) for S and M and
64-channel heads for L (model_channels 256), so that is what is assumed unless a width is given.
"""

from __future__ import annotations

import logging
import re

from tta.ldm.model import LDMConfig, LDMUNet

log = logging.getLogger(__name__)

PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema."
_RES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
        "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}


def ema_key(key: str) -> str:
    """The key of the EMA copy of the UNet tensor `key` (relative to PREFIX): `diffusion_model.<key>` without
    its dots, under EMA_PREFIX."""
    return EMA_PREFIX + ("diffusion_model." + key).replace(".", "")


def unet_state_from_checkpoint(state: dict, *, prefer_ema: bool = True) -> tuple[dict, bool]:
    """(UNet state with reference keys, whether EMA weights were used) from an AudioLDM state_dict."""
    raw = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    if not raw:
        raise ValueError(f"no {PREFIX}* keys: not an AudioLDM checkpoint (first keys: {', '.join(list(state)[:4])})")
    if prefer_ema:
        ema = {k: state.get(ema_key(k)) for k in raw}
        if all(v is not None for v in ema.values()):
            return ema, True
        missing = [k for k, v in ema.items() if v is None]
        if len(missing) < len(ema):   # some EMA weights but not all: a damaged file, not a run without EMA
            raise ValueError(f"holds EMA weights ({EMA_PREFIX}*) for {len(ema) - len(missing)} of the UNet's "
                             f"{len(ema)} tensors (missing e.g. the EMA of {PREFIX}{missing[0]}); pass "
                             "--no-ema to import the raw weights")
    return raw, False


def reference_head_channels(base_width: int) -> int:
    """The reference's attention head width for a UNet of this base width (L: 256 -> 64, else 32)."""
    return 64 if base_width >= 256 else 32


def config_from_reference(state: dict, *, head_channels: int | None = None) -> LDMConfig:
    """LDMConfig from reference-layout UNet weights (AudioLDM S/M/L are told apart by these shapes);
    `head_channels` None takes the reference's width for that size (`reference_head_channels`)."""
    in_ch = state["input_blocks.0.0.weight"].shape[1]
    idx = sorted({int(m.group(1)) for k in state if (m := re.match(r"input_blocks\.(\d+)\.", k))})
    widths, attn_levels, level, layers = [], [], 0, 0
    per_level: list[int] = []
    for i in idx[1:]:
        if f"input_blocks.{i}.0.op.weight" in state:
            per_level.append(layers)
            level, layers = level + 1, 0
            continue
        if layers == 0:
            widths.append(state[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0])
            if f"input_blocks.{i}.1.proj_in.weight" in state:
                attn_levels.append(2 ** level)
        layers += 1
    per_level.append(layers)
    if len(set(per_level)) != 1:
        raise ValueError(f"res blocks per level differ ({per_level}); not an AudioLDM UNet")
    if "film_emb.weight" not in state:
        raise ValueError("no film_emb.* weights: the UNet has no CLAP FiLM conditioning (not AudioLDM)")
    if head_channels is None:
        head_channels = reference_head_channels(widths[0])
    bad = [w for w in widths if w % head_channels]
    if head_channels <= 0 or bad:
        raise ValueError(f"head width {head_channels} does not divide the UNet's widths {tuple(widths)}")
    return LDMConfig(latent_channels=in_ch, block_out_channels=tuple(widths), layers_per_block=per_level[0],
                     attention_downsample=tuple(attn_levels), head_channels=head_channels, num_heads=0,
                     class_embed_dim=state["film_emb.weight"].shape[1], context_dim=None, transformer_layers=1,
                     norm_num_groups=32)


def rename_reference_key(key: str, config: LDMConfig) -> str:
    """The diffusers UNet2DConditionModel name of one reference-layout key."""
    n = config.layers_per_block
    levels = len(config.block_out_channels)
    attn = config.attention_levels()

    def res(rest: str) -> str:
        for old, new in _RES.items():
            if rest.startswith(old + "."):
                return new + rest[len(old):]
        raise KeyError(key)

    simple = {"time_embed.0.": "time_embedding.linear_1.", "time_embed.2.": "time_embedding.linear_2.",
              "film_emb.": "class_embedding.", "input_blocks.0.0.": "conv_in.", "out.0.": "conv_norm_out.",
              "out.2.": "conv_out."}
    for old, new in simple.items():
        if key.startswith(old):
            return new + key[len(old):]
    if m := re.fullmatch(r"input_blocks\.(\d+)\.(\d+)\.(.+)", key):
        i, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        b, l = divmod(i - 1, n + 1)
        if l == n:
            if rest.startswith("op."):
                return f"down_blocks.{b}.downsamplers.0.conv.{rest[3:]}"
            raise KeyError(key)
        return f"down_blocks.{b}.resnets.{l}.{res(rest)}" if j == 0 else f"down_blocks.{b}.attentions.{l}.{rest}"
    if m := re.fullmatch(r"middle_block\.(\d)\.(.+)", key):
        j, rest = int(m.group(1)), m.group(2)
        if j == 1:
            return f"mid_block.attentions.0.{rest}"
        if j in (0, 2):
            return f"mid_block.resnets.{j // 2}.{res(rest)}"
    if m := re.fullmatch(r"output_blocks\.(\d+)\.(\d+)\.(.+)", key):
        i, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        b, l = divmod(i, n + 1)
        has_attn = attn[levels - 1 - b]
        if j == 0:
            return f"up_blocks.{b}.resnets.{l}.{res(rest)}"
        if j == 1 and has_attn:
            return f"up_blocks.{b}.attentions.{l}.{rest}"
        if rest.startswith("conv."):
            return f"up_blocks.{b}.upsamplers.0.conv.{rest[5:]}"
    raise KeyError(key)


def load_reference_unet(state: dict, *, where: str, prefer_ema: bool = True,
                        head_channels: int | None = None) -> LDMUNet:
    """An LDMUNet carrying the UNet of an AudioLDM checkpoint's state_dict (EMA weights when present);
    `head_channels` as in `config_from_reference`."""
    from tta.checkpoint import CheckpointError, check_finite, keep_global_rng, load_into

    try:
        ref, used_ema = unet_state_from_checkpoint(state, prefer_ema=prefer_ema)
        config = config_from_reference(ref, head_channels=head_channels)
    except KeyError as e:   # a tensor the layout needs is absent
        raise CheckpointError(f"{where}: not a complete AudioLDM UNet (no {PREFIX}{e.args[0]})") from None
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None
    # the weights used (EMA or raw), each named by its key in the file
    check_finite({(ema_key(k) if used_ema else PREFIX + k): v for k, v in ref.items()}, where)
    with keep_global_rng():   # (the initial weights drawn are replaced by the stored ones)
        model = LDMUNet(config)
    renamed, unknown = {}, []
    for k, v in ref.items():
        try:
            renamed[rename_reference_key(k, config)] = v
        except KeyError:
            unknown.append(k)
    if unknown:
        raise CheckpointError(f"{where}: {len(unknown)} UNet keys have no place in the model "
                              f"(first: {', '.join(unknown[:5])})")
    # proj_in / proj_out are 1x1 convs in both layouts (use_linear_projection=False): no reshaping
    load_into(model.net, renamed, where=where)
    log.info("%s: AudioLDM UNet %s (%s weights), attention heads of %d channels%s", where,
             config.block_out_channels, "EMA" if used_ema else "raw", config.head_channels,
             "" if head_channels else " (the reference's width for this size)")
    return model.eval()


def reference_state_dict(model: LDMUNet) -> dict:
    """The reference-layout state of `model` (inverse of the renaming; for export and tests)."""
    own = model.net.state_dict()
    config = model.config
    out = {}
    names = {}
    for k in _candidate_reference_keys(own, config):
        names[rename_reference_key(k, config)] = k
    missing = [k for k in own if k not in names]
    if missing:
        raise ValueError(f"no reference name for {missing[:5]}")
    for new, old in names.items():
        out[old] = own[new]
    return out


def _candidate_reference_keys(own: dict, config: LDMConfig) -> list[str]:
    """Every reference key the config's layout has (generated, then checked by renaming)."""
    inv = {v: k for k, v in _RES.items()}
    n, levels = config.layers_per_block, len(config.block_out_channels)
    keys = []
    for k in own:
        if k.startswith("time_embedding.linear_1."):
            keys.append("time_embed.0." + k.split(".", 2)[2])
        elif k.startswith("time_embedding.linear_2."):
            keys.append("time_embed.2." + k.split(".", 2)[2])
        elif k.startswith("class_embedding."):
            keys.append("film_emb." + k.split(".", 1)[1])
        elif k.startswith("conv_in."):
            keys.append("input_blocks.0.0." + k.split(".", 1)[1])
        elif k.startswith("conv_norm_out."):
            keys.append("out.0." + k.split(".", 1)[1])
        elif k.startswith("conv_out."):
            keys.append("out.2." + k.split(".", 1)[1])
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", k):
            b, kind, l, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
            i = 1 + b * (n + 1) + l
            keys.append(f"input_blocks.{i}.0.{_inv(rest, inv)}" if kind == "resnets" else f"input_blocks.{i}.1.{rest}")
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", k):
            keys.append(f"input_blocks.{1 + int(m.group(1)) * (n + 1) + n}.0.op.{m.group(2)}")
        elif m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d)\.(.+)", k):
            kind, j, rest = m.group(1), int(m.group(2)), m.group(3)
            keys.append(f"middle_block.{2 * j}.{_inv(rest, inv)}" if kind == "resnets" else f"middle_block.1.{rest}")
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", k):
            b, kind, l, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
            i = b * (n + 1) + l
            keys.append(f"output_blocks.{i}.0.{_inv(rest, inv)}" if kind == "resnets" else f"output_blocks.{i}.1.{rest}")
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", k):
            b = int(m.group(1))
            j = 2 if config.attention_levels()[levels - 1 - b] else 1
            keys.append(f"output_blocks.{b * (n + 1) + n}.{j}.conv.{m.group(2)}")
    return keys


def _inv(rest: str, inv: dict) -> str:
    for new, old in inv.items():
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    raise KeyError(rest)
