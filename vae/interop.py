"""Load (and write) the mel-VAE in AudioLDM's own formats, from local paths only.

- AudioLDM original `.ckpt` (CompVis/LDM layout): `state_dict` holds `first_stage_model.{encoder,decoder,
  quant_conv,post_quant_conv}.*` and a top-level `scale_factor`; `first_stage_model.vocoder.*` (the HiFi-GAN)
  and `first_stage_model.loss.*` (training-only loss state) are not part of the VAE and are ignored. A
  stand-alone VAE training checkpoint (the same keys without the `first_stage_model.` prefix and with no
  `scale_factor`) is accepted too; its scale factor is 1 until measured with `compute_scale_factor`.
- diffusers AudioLDM `vae/` folder: `config.json` (AutoencoderKL) + `diffusion_pytorch_model.safetensors`
  (or `.bin`); attention keys in diffusers' older naming (query/key/value/proj_attn) are renamed.

The name map is derived from our own module tree (every tensor of ours gets exactly one reference key), so
after a load nothing of ours is left unset and nothing of the reference is left unused — either fails with a
CheckpointError listing the keys. Reference layout: haoheliu/AudioLDM `variational_autoencoder/modules.py`
(Encoder/Decoder with `down.i.block.j`, `up.i.block.j` numbered from the lowest level, `mid.block_1/attn_1/
block_2`, 1x1-conv attention q/k/v/proj_out, `nin_shortcut`), converted as diffusers'
`convert_original_audioldm_to_diffusers.py` does (decoder levels reversed, 1x1 convs -> linear).
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
import os
import re
from pathlib import Path

import torch

from tta.audio import AUDIOLDM_MEL, MelConfig
from tta.checkpoint import (DIFFUSERS_WEIGHT_NAMES, CheckpointError, check_finite, keep_global_rng, load_into,
                            load_torch_file, read_foreign_folder, weights_mismatch)
from tta.config import ConfigError, from_known_fields
from vae.model import MelVAE, VAEConfig

log = logging.getLogger(__name__)

PREFIX = "first_stage_model."
IGNORED_PREFIXES = ("vocoder.", "loss.")  # relative to first_stage_model.

_ATTN_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def reference_key(key: str, num_levels: int) -> str:
    """Our AutoencoderKL key (without the `net.` prefix) -> the AudioLDM/LDM reference key."""
    part, _, rest = key.partition(".")
    if part in ("quant_conv", "post_quant_conv"):
        return key
    if part not in ("encoder", "decoder"):
        raise KeyError(key)
    m = re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest)
    if m:
        return f"encoder.down.{m[1]}.block.{m[2]}.{_resnet_name(m[3])}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", rest)
    if m:
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest)
    if m:
        return f"decoder.up.{num_levels - 1 - int(m[1])}.block.{m[2]}.{_resnet_name(m[3])}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", rest)
    if m:
        return f"decoder.up.{num_levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    m = re.fullmatch(r"mid_block\.resnets\.([01])\.(.+)", rest)
    if m:
        return f"{part}.mid.block_{int(m[1]) + 1}.{_resnet_name(m[2])}"
    m = re.fullmatch(r"mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)", rest)
    if m:
        return f"{part}.mid.attn_1.{_ATTN_NAMES[m[1]]}.{m[2]}"
    m = re.fullmatch(r"conv_norm_out\.(.+)", rest)
    if m:
        return f"{part}.norm_out.{m[1]}"
    if re.fullmatch(r"conv_(in|out)\.(weight|bias)", rest):
        return key
    raise KeyError(key)


def _resnet_name(name: str) -> str:
    return name.replace("conv_shortcut", "nin_shortcut")


# ------------------------------------------------------------------------------- reference -> ours


def config_from_reference(
    state: dict, *, mel: MelConfig | None = None, norm_num_groups: int = 32
) -> VAEConfig:
    """Infer the VAE architecture from reference-layout VAE keys (prefix already stripped).

    GroupNorm's group count is not visible in the weights; the reference hard-codes 32. Without `mel`, the
    mel is AudioLDM's (`tta.audio.AUDIOLDM_MEL`, TacotronSTFT framing).
    """
    try:
        levels = sorted({int(m[1]) for k in state if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
        blocks = sorted({int(m[1]) for k in state if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))})
        channels = tuple(int(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) for i in levels)
        z_channels = int(state["post_quant_conv.weight"].shape[1])
        embed_dim2 = int(state["quant_conv.weight"].shape[0])
        z_out = int(state["encoder.conv_out.weight"].shape[0])
    except KeyError as e:
        raise CheckpointError(f"not an AudioLDM/LDM VAE state dict: key {e.args[0]!r} is missing") from None
    if not levels or levels != list(range(len(levels))) or not blocks:
        raise CheckpointError(f"not an AudioLDM/LDM VAE state dict: encoder levels {levels}, blocks {blocks}")
    if embed_dim2 != 2 * z_channels or z_out != 2 * z_channels:
        raise CheckpointError(
            f"VAE with embed_dim={embed_dim2 // 2} != z_channels={z_out // 2} is not supported "
            "(diffusers' AutoencoderKL ties them)"
        )
    return VAEConfig(
        mel=mel or AUDIOLDM_MEL,
        block_out_channels=channels,
        layers_per_block=len(blocks),
        latent_channels=z_channels,
        norm_num_groups=norm_num_groups,
        mid_block_add_attention=any(k.startswith("encoder.mid.attn_1.") for k in state),
    )


def load_reference_state(model: MelVAE, state: dict, *, where: str) -> None:
    """Load reference-layout VAE tensors (prefix stripped) into `model`, every key on both sides used."""
    own = model.net.state_dict()
    levels = len(model.config.block_out_channels)
    converted, used, wanted = {}, set(), {}
    for key, target in own.items():
        ref = reference_key(key, levels)
        wanted[ref] = key
        if ref not in state:
            continue
        value = state[ref]
        if value.ndim == target.ndim + 2 and value.shape[2:] == (1, 1):  # 1x1 conv attention -> linear
            value = value[:, :, 0, 0]
        converted[key] = value
        used.add(ref)
    missing = [ref for ref in wanted if ref not in state]
    unused = [k for k in state if k not in used]
    if missing or unused:
        shape = f"{model.config.block_out_channels} x {model.config.layers_per_block}"
        raise CheckpointError(f"{where}: VAE weights do not match: " + weights_mismatch(
            missing=missing, unexpected=unused,
            words=("reference key{s} missing", f"key{{s}} not used by {shape}", "with other shapes")))
    load_into(model.net, converted, where=where)


def split_audioldm_checkpoint(obj) -> tuple[dict, float | None]:
    """(VAE state with reference keys, scale_factor or None) from a loaded AudioLDM/VAE checkpoint object."""
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError("checkpoint holds no state_dict")
    if any(k.startswith(PREFIX) for k in state):
        vae = {
            k[len(PREFIX) :]: v
            for k, v in state.items()
            if k.startswith(PREFIX) and not k[len(PREFIX) :].startswith(IGNORED_PREFIXES)
        }
        if "scale_factor" not in state:
            raise CheckpointError(
                "AudioLDM checkpoint has first_stage_model.* but no top-level 'scale_factor'"
            )
        scale = state["scale_factor"]
        # one number as tta.config's rule has it (numpy scalars too, bools not); whether it is finite and
        # positive the config checks, in its own words
        number = isinstance(scale, numbers.Real) and not isinstance(scale, bool)
        if not number and not isinstance(scale, torch.Tensor) or (
                isinstance(scale, torch.Tensor) and (scale.numel() != 1 or scale.dtype == torch.bool or scale.is_complex())):
            what = (f"a tensor of shape {tuple(scale.shape)} and dtype {scale.dtype}" if isinstance(scale, torch.Tensor)
                    else f"a {type(scale).__name__}")
            raise CheckpointError(f"its 'scale_factor' is {what}; expected one number (the latent scale)")
        return vae, float(scale)
    if "encoder.conv_in.weight" in state:  # a stand-alone VAE training checkpoint
        return {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}, None
    raise CheckpointError(
        "neither an AudioLDM checkpoint (first_stage_model.*) nor a VAE checkpoint "
        f"(encoder.*); first keys: {', '.join(list(state)[:5])}"
    )


def load_audioldm_ckpt(
    path: str | os.PathLike, *, mel: MelConfig | None = None, norm_num_groups: int = 32
) -> MelVAE:
    """A MelVAE from an AudioLDM original `.ckpt` (or a stand-alone VAE checkpoint), read weights-only."""
    path = Path(path)
    return vae_from_audioldm_state(
        load_torch_file(path), mel=mel, norm_num_groups=norm_num_groups, where=str(path)
    )


def vae_from_audioldm_state(
    obj, *, mel: MelConfig | None = None, norm_num_groups: int = 32, where: str = "checkpoint"
) -> MelVAE:
    """A MelVAE from an already-loaded AudioLDM checkpoint object ({"state_dict": ...} or the state dict
    itself), so a whole-pipeline import reads the file once."""
    try:
        vae_state, scale = split_audioldm_checkpoint(obj)
        config = config_from_reference(vae_state, mel=mel, norm_num_groups=norm_num_groups)
        if scale is not None:   # (a nan or negative one is refused by the config, here naming the file)
            config = dataclasses.replace(config, scale_factor=scale)
    except (CheckpointError, ValueError) as e:
        raise CheckpointError(f"{where}: {e}") from None
    check_finite(vae_state, where, prefix=PREFIX if scale is not None else "")   # (its keys as the file has them)
    if scale is None:
        log.warning(
            "%s: no scale_factor in the checkpoint; using 1.0 (measure it with compute_scale_factor)", where
        )
    with keep_global_rng():   # (the initial weights drawn are replaced by the stored ones)
        model = MelVAE(config)
    load_reference_state(model, vae_state, where=where)
    return model.eval()


def audioldm_state_dict(model: MelVAE) -> dict:
    """Our VAE as AudioLDM checkpoint entries: `first_stage_model.*` + the top-level `scale_factor`."""
    state = {PREFIX + k: v for k, v in reference_state_dict(model).items()}
    state["scale_factor"] = model.scale_factor.detach().clone()
    return state


def reference_state_dict(model: MelVAE) -> dict:
    """Our weights under reference keys (1x1-conv attention shapes): the inverse of load_reference_state."""
    levels = len(model.config.block_out_channels)
    out = {}
    for key, value in model.net.state_dict().items():
        ref = reference_key(key, levels)
        if re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", ref):
            value = value[:, :, None, None]
        out[ref] = value.detach().clone()
    return out


# ------------------------------------------------------------------------------------- diffusers


_OLD_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


@dataclasses.dataclass(frozen=True)
class DiffusersVAEFields:
    """The fields of a diffusers AutoencoderKL config.json that `config_from_diffusers` reads into a VAEConfig,
    typed as they must be (read with tta.config.from_known_fields, so a damaged file names the field)."""
    block_out_channels: tuple[int, ...]
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    mid_block_add_attention: bool = True
    scaling_factor: float = 0.18215


def config_from_diffusers(
    body: dict, *, mel: MelConfig | None = None, where: str = "config.json"
) -> VAEConfig:
    """VAEConfig from a diffusers AutoencoderKL config.json body (checks it is a 1-channel mel VAE). Without
    `mel`, the mel is AudioLDM's (`tta.audio.AUDIOLDM_MEL`, TacotronSTFT framing): the folder does not say."""

    def need(name, ok, expected):
        if name not in body or not ok(body[name]):
            raise CheckpointError(f"{where}: {name}={body.get(name)!r}, expected {expected}")

    need("_class_name", lambda v: v == "AutoencoderKL", "'AutoencoderKL'")
    need("in_channels", lambda v: v == 1, "1 (a mel image)")
    need("out_channels", lambda v: v == 1, "1 (a mel image)")
    need("block_out_channels", lambda v: isinstance(v, list) and v, "a list of channels")
    try:
        f = from_known_fields(DiffusersVAEFields, body)
    except ConfigError as e:
        raise CheckpointError(f"{where}: {e}") from None
    levels = len(f.block_out_channels)
    for name, kind in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        if name in body:
            need(name, lambda v, k=kind: list(v) == [k] * levels, f"{levels} x {kind!r}")
    if "act_fn" in body:
        need("act_fn", lambda v: v == "silu", "'silu'")
    for name in ("use_quant_conv", "use_post_quant_conv"):
        if name in body:
            need(name, lambda v: v is True, "true")
    if body.get("shift_factor") not in (None, 0, 0.0):
        raise CheckpointError(
            f"{where}: shift_factor={body['shift_factor']!r} is not supported (AudioLDM has none)"
        )
    try:
        return VAEConfig(
            mel=mel or AUDIOLDM_MEL, block_out_channels=f.block_out_channels, layers_per_block=f.layers_per_block,
            latent_channels=f.latent_channels, norm_num_groups=f.norm_num_groups,
            mid_block_add_attention=f.mid_block_add_attention, scale_factor=f.scaling_factor,
        )
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None


def load_diffusers_vae(folder: str | os.PathLike, *, mel: MelConfig | None = None) -> MelVAE:
    """A MelVAE from a diffusers AudioLDM `vae/` folder (config.json + diffusion_pytorch_model.*)."""
    body, state, weights = read_foreign_folder(folder, DIFFUSERS_WEIGHT_NAMES, what="a diffusers VAE folder")
    config = config_from_diffusers(body, mel=mel, where=str(Path(folder) / "config.json"))
    with keep_global_rng():   # (the initial weights drawn are replaced by the stored ones)
        model = MelVAE(config)
    load_into(model.net, _modernise_diffusers_keys(state, model.net.state_dict()), where=str(weights))
    return model.eval()


def _modernise_diffusers_keys(state: dict, own: dict) -> dict:
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"(.*mid_block\.attentions\.0)\.(query|key|value|proj_attn)\.(weight|bias)", key)
        if m:
            key = f"{m[1]}.{_OLD_ATTN[m[2]]}.{m[3]}"
        if key in own and value.ndim == own[key].ndim + 2 and value.shape[2:] == (1, 1):
            value = value[:, :, 0, 0]
        out[key] = value
    return out


def save_diffusers_vae(model: MelVAE, folder: str | os.PathLike) -> Path:
    """Write `model` as a diffusers AutoencoderKL folder (scaling_factor = the model's scale factor)."""
    from tta.checkpoint import atomic_dir

    model.net.register_to_config(scaling_factor=float(model.scale_factor))
    with atomic_dir(folder) as tmp:
        model.net.save_pretrained(str(tmp), safe_serialization=True)
    return Path(folder)
