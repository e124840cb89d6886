"""HiFi-GAN weights from other projects, loaded from local paths only (no hub, no arbitrary unpickling).

- jik876/hifi-gan generator checkpoints `g_XXXXXXXX`: `{"generator": state_dict}` with weight-norm keys
  `*.weight_g` / `*.weight_v`, plus the run's `config.json` (hyper-parameters; `num_mels`, `hop_size`, ...).
- AudioLDM `.ckpt`: `state_dict` with the vocoder under `first_stage_model.vocoder.*`, weight norm already
  folded into plain `*.weight`; hyper-parameters are AudioLDM's fixed 16 kHz / 64-bin HiFi-GAN.
- transformers `SpeechT5HifiGan` folders (what diffusers' AudioLDM pipelines hold under `vocoder/`):
  transformers' config.json + model.safetensors or pytorch_model.bin; `upsampler.i` instead of `ups.i`, and
  `mean`/`scale` buffers applied as (mel - mean) / scale when `normalize_before` is true.
- export to that SpeechT5HifiGan folder layout (loadable with `SpeechT5HifiGan.from_pretrained`).
`load_vocoder(path)` recognises any of these (and tta's own component folders) by content.

All three sources use the reference module names that `vocoder.model.HiFiGAN` keeps, so mapping is a
handful of renames; every source key must be consumed (strict load) so a layout mismatch is an error.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import typing
from pathlib import Path

import torch

from tta.audio import AUDIOLDM_MEL, MelConfig, recorded_mel
from tta.checkpoint import (TRANSFORMERS_WEIGHT_NAMES, CheckpointError, atomic_dir, check_finite, keep_global_rng,
                            load_into, load_torch_file, read_foreign_folder, read_json, save_safetensors)
from tta.config import from_known_fields
from vocoder.model import HiFiGAN, HiFiGANConfig

log = logging.getLogger(__name__)

AUDIOLDM_PREFIX = "first_stage_model.vocoder."
SPEECHT5_MODEL_TYPE = "speecht5_hifigan"

_WN_OLD = re.compile(r"^(.*)\.weight_([gv])$")


def model_from_reference_state(config: HiFiGANConfig, state: dict, *, where: str,
                               weight_norm: bool = False) -> HiFiGAN:
    """Build a HiFiGAN from a state dict in reference names (`conv_pre`, `ups.i`, `resblocks.j.convs1.k`, ...).

    Weights may be plain (`*.weight`), old-style weight norm (`*.weight_g/_v`) or torch parametrizations
    (`*.parametrizations.weight.original0/1`). Returns the model with weight norm on iff `weight_norm`.
    """
    renamed, normed = {}, False
    for key, value in state.items():
        m = _WN_OLD.match(key)
        if m:
            normed = True
            key = f"{m.group(1)}.parametrizations.weight.original{0 if m.group(2) == 'g' else 1}"
        elif ".parametrizations.weight.original" in key:
            normed = True
        renamed[key] = value
    with keep_global_rng():   # (the initial weights drawn are replaced by the stored ones)
        model = HiFiGAN(dataclasses.replace(config, weight_norm=normed))
    load_into(model, renamed, where=where)
    if weight_norm:
        model.apply_weight_norm()
    else:
        model.remove_weight_norm()
    return model.eval()


# ------------------------------------------------------------------------------------------ jik876


@dataclasses.dataclass(frozen=True)
class Jik876Fields:
    """The fields of a jik876 config.json that `config_from_jik876` reads, typed as they must be (read with
    tta.config.from_known_fields, so a damaged file names the field). resblock is the string jik876 compares
    with '1'; config_from_jik876 reads the numbers 1 and 2 as jik876 builds them (both ResBlock2)."""
    sampling_rate: int
    n_fft: int
    win_size: int
    hop_size: int
    num_mels: int
    fmin: float
    resblock: typing.Literal["1", "2"]
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    upsample_initial_channel: int
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    fmax: float | None = None


def config_from_jik876(h: dict, *, where: str) -> HiFiGANConfig:
    """HiFiGANConfig from a jik876 config.json dict (`num_mels`, `hop_size`, `upsample_rates`, ...)."""
    if not isinstance(h, dict):
        raise CheckpointError(f"{where}: expected a JSON object of HiFi-GAN hyper-parameters, got "
                              f"{type(h).__name__}")
    if type(h.get("resblock")) is int and h["resblock"] in (1, 2):
        # jik876 builds ResBlock1 for the string '1' only (h.resblock == '1'), ResBlock2 for anything else: a run
        # trained with the number 1 holds ResBlock2 weights, so it loads as it was built, with a word
        if h["resblock"] == 1:
            log.warning("%s: resblock is the number 1, which jik876 builds as ResBlock2 (it compares with the "
                        "string '1'); loading ResBlock2 as a run with this config trained (write \"1\" for "
                        "ResBlock1 weights)", where)
        h = {**h, "resblock": "2"}
    try:
        f = from_known_fields(Jik876Fields, h)
        sr = f.sampling_rate
        mel = MelConfig(sample_rate=sr, n_fft=f.n_fft, win_length=f.win_size, hop_length=f.hop_size,
                        n_mels=f.num_mels, f_min=f.fmin, f_max=f.fmax if f.fmax is not None else sr / 2)
        # jik876's ResBlock1 builds convolutions for the first three dilations of each list and ResBlock2 for the
        # first two, whatever the list holds: a config listing more loads there, so it loads here the same way
        used = 3 if f.resblock == "1" else 2
        return HiFiGANConfig(
            mel=mel, upsample_rates=f.upsample_rates, upsample_kernel_sizes=f.upsample_kernel_sizes,
            upsample_initial_channel=f.upsample_initial_channel, resblock=f.resblock,
            resblock_kernel_sizes=f.resblock_kernel_sizes,
            resblock_dilation_sizes=tuple(d[:used] for d in f.resblock_dilation_sizes))
    except (TypeError, ValueError) as e:   # ConfigError is a ValueError
        raise CheckpointError(f"{where}: {e}") from None


def load_jik876(checkpoint: str | os.PathLike, config: str | os.PathLike | None = None, *,
                weight_norm: bool = False) -> HiFiGAN:
    """Load a jik876 generator checkpoint; `config` defaults to config.json beside the checkpoint."""
    return _jik876_from(load_torch_file(checkpoint), Path(checkpoint), config, weight_norm=weight_norm)


def _jik876_from(ckpt, checkpoint: Path, config: str | os.PathLike | None, *, weight_norm: bool) -> HiFiGAN:
    config_path = Path(config) if config is not None else checkpoint.parent / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: HiFi-GAN config.json not found (pass the run's config.json)")
    hparams = config_from_jik876(read_json(config_path), where=str(config_path))
    if not isinstance(ckpt, dict) or "generator" not in ckpt:
        found = ", ".join(list(ckpt)[:5]) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{checkpoint}: expected a jik876 generator checkpoint with a 'generator' entry, "
                              f"found {found}")
    check_finite(ckpt["generator"], str(checkpoint))
    return model_from_reference_state(hparams, ckpt["generator"], where=str(checkpoint), weight_norm=weight_norm)


# ----------------------------------------------------------------------------------------- AudioLDM


def load_audioldm_ckpt(path: str | os.PathLike, config: HiFiGANConfig | None = None, *,
                       weight_norm: bool = False) -> HiFiGAN:
    """The vocoder inside an AudioLDM `.ckpt` (keys `first_stage_model.vocoder.*`). `config` defaults to
    AudioLDM's 16 kHz / 64-bin HiFi-GAN (HiFiGANConfig's defaults with AudioLDM's TacotronSTFT framing)."""
    return vocoder_from_audioldm_state(load_torch_file(path), path, config, weight_norm=weight_norm)


def vocoder_from_audioldm_state(ckpt, path, config: HiFiGANConfig | None = None, *,
                                weight_norm: bool = False) -> HiFiGAN:
    """The vocoder of an already-loaded AudioLDM checkpoint object (so a whole-pipeline import reads the
    file once); `path` names it in errors."""
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict with a 'state_dict'")
    vocoder = {k[len(AUDIOLDM_PREFIX):]: v for k, v in state.items() if k.startswith(AUDIOLDM_PREFIX)}
    if not vocoder:
        raise CheckpointError(f"{path}: no '{AUDIOLDM_PREFIX}*' keys (not an AudioLDM checkpoint with a vocoder)")
    check_finite(vocoder, str(path), prefix=AUDIOLDM_PREFIX)
    return model_from_reference_state(config or HiFiGANConfig(mel=AUDIOLDM_MEL), vocoder, where=f"{path} [{AUDIOLDM_PREFIX}*]",
                                      weight_norm=weight_norm)


# --------------------------------------------------------------------------------------- SpeechT5


@dataclasses.dataclass(frozen=True)
class SpeechT5Fields:
    """The fields of a transformers SpeechT5HifiGan config.json that `load_speecht5_folder` reads, typed as they
    must be (read with tta.config.from_known_fields, so a damaged file names the field)."""
    upsample_rates: tuple[int, ...]
    sampling_rate: int
    model_in_dim: int
    upsample_kernel_sizes: tuple[int, ...]
    upsample_initial_channel: int
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    leaky_relu_slope: float = 0.1
    normalize_before: bool = True


def load_speecht5_folder(folder: str | os.PathLike, mel: MelConfig | None = None, *,
                         weight_norm: bool = False) -> HiFiGAN:
    """A transformers SpeechT5HifiGan folder. The mel config comes from `mel`, else from the folder's
    `tta_mel` entry (written by `export_speecht5`), else AudioLDM's mel (`tta.audio.AUDIOLDM_MEL`: TacotronSTFT
    framing) with the folder's sample rate, bin count and hop (the product of upsample_rates)."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    h, state, _ = read_foreign_folder(folder, TRANSFORMERS_WEIGHT_NAMES, what="a SpeechT5HifiGan folder")
    if h.get("model_type") != SPEECHT5_MODEL_TYPE:
        raise CheckpointError(f"{cfg_path}: model_type is {h.get('model_type')!r}, expected {SPEECHT5_MODEL_TYPE!r}")
    try:
        f = from_known_fields(SpeechT5Fields, h)
        hop, sr, n_mels = math.prod(f.upsample_rates), f.sampling_rate, f.model_in_dim
        if mel is None and "tta_mel" in h:
            mel = recorded_mel(h["tta_mel"])
        if mel is None:
            base = AUDIOLDM_MEL
            mel = dataclasses.replace(base, sample_rate=sr, n_mels=n_mels, hop_length=hop,
                                      f_max=min(base.f_max, sr / 2))
            log.info("%s: no mel config given; assuming %s", folder, mel)
        if (mel.sample_rate, mel.n_mels, mel.hop_length) != (sr, n_mels, hop):
            raise CheckpointError(f"{cfg_path}: sampling_rate={sr}, model_in_dim={n_mels}, hop={hop} do not match "
                                  f"the given mel config (sample_rate={mel.sample_rate}, n_mels={mel.n_mels}, "
                                  f"hop_length={mel.hop_length})")
        config = HiFiGANConfig(
            mel=mel, upsample_rates=f.upsample_rates, upsample_kernel_sizes=f.upsample_kernel_sizes,
            upsample_initial_channel=f.upsample_initial_channel, resblock="1",
            resblock_kernel_sizes=f.resblock_kernel_sizes, resblock_dilation_sizes=f.resblock_dilation_sizes,
            leaky_relu_slope=f.leaky_relu_slope, normalize_before=f.normalize_before)
    except (TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{cfg_path}: {e}") from None
    weights, state = state, {}
    for key, value in weights.items():
        if key in ("mean", "scale") and not config.normalize_before:
            continue  # SpeechT5HifiGan keeps these buffers but only uses them with normalize_before
        state[re.sub(r"^upsampler\.", "ups.", key)] = value
    return model_from_reference_state(config, state, where=str(folder), weight_norm=weight_norm)


def export_speecht5(model: HiFiGAN, folder: str | os.PathLike) -> Path:
    """Write `model` as a transformers SpeechT5HifiGan folder (config.json + model.safetensors)."""
    c = model.config
    if c.resblock != "1":
        raise CheckpointError(f"{folder}: SpeechT5HifiGan only has resblock type '1', this model uses {c.resblock!r}")
    plain = model.inference_copy().cpu()
    state = {}
    for key, value in plain.state_dict().items():
        state[re.sub(r"^ups\.", "upsampler.", key)] = value.detach().float().contiguous()
    if not c.normalize_before:
        state["mean"] = torch.zeros(c.mel.n_mels)
        state["scale"] = torch.ones(c.mel.n_mels)
    body = {
        "architectures": ["SpeechT5HifiGan"], "model_type": SPEECHT5_MODEL_TYPE,
        "model_in_dim": c.mel.n_mels, "sampling_rate": c.mel.sample_rate,
        "upsample_initial_channel": c.upsample_initial_channel, "upsample_rates": list(c.upsample_rates),
        "upsample_kernel_sizes": list(c.upsample_kernel_sizes), "resblock_kernel_sizes": list(c.resblock_kernel_sizes),
        "resblock_dilation_sizes": [list(d) for d in c.resblock_dilation_sizes], "initializer_range": 0.01,
        "leaky_relu_slope": c.leaky_relu_slope, "normalize_before": c.normalize_before, "torch_dtype": "float32",
        "tta_mel": dataclasses.asdict(c.mel),
    }
    with atomic_dir(folder) as tmp:
        save_safetensors(state, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(body, indent=2) + "\n")
    return Path(folder)


def load_vocoder(path: str | os.PathLike, *, weight_norm: bool = False) -> HiFiGAN:
    """A HiFi-GAN in any of the supported forms, recognised by content: a tta HiFi-GAN component folder, a
    SpeechT5HifiGan folder, a jik876 `{"generator": ...}` file (config.json beside it) or an AudioLDM `.ckpt`.
    Other tta vocoders (Griffin-Lim, Vocos, the post-net; the embedded model's is Griffin-Lim) load with
    tta.checkpoint.load_component and the class tta.ldm.folder.vocoder_class names."""
    from tta.checkpoint import load_component, read_component_config

    path = Path(path)
    if path.is_dir():
        cfg = path / "config.json"
        try:
            body = read_json(cfg) if cfg.is_file() else {}
        except CheckpointError:   # read_component_config names the file
            body = {}
        if isinstance(body, dict) and body.get("model_type") == SPEECHT5_MODEL_TYPE:
            return load_speecht5_folder(path, weight_norm=weight_norm)
        read_component_config(path)  # raises a clear error, naming the file, for anything else
        model = load_component(path, HiFiGAN)
        return model.apply_weight_norm() if weight_norm else model.remove_weight_norm()
    ckpt = load_torch_file(path)
    if isinstance(ckpt, dict) and "generator" in ckpt:
        return _jik876_from(ckpt, path, None, weight_norm=weight_norm)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if isinstance(state, dict) and any(str(k).startswith(AUDIOLDM_PREFIX) for k in state):
        return vocoder_from_audioldm_state(ckpt, path, None, weight_norm=weight_norm)
    raise CheckpointError(f"{path}: not a vocoder checkpoint tta knows (expected a tta or SpeechT5HifiGan folder, "
                          f"a jik876 'generator' checkpoint or an AudioLDM .ckpt with '{AUDIOLDM_PREFIX}*' keys)")
