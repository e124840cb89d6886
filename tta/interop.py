"""AudioLDM interop and packing: `tta import audioldm|diffusers`, `tta export diffusers|pipeline`.

An AudioLDM original `.ckpt` holds `model.diffusion_model.*` (UNet; `model_ema.*` its EMA, preferred),
`first_stage_model.{encoder,decoder,...}` (VAE) + `scale_factor`, `first_stage_model.vocoder.*` (HiFi-GAN)
and `cond_stage_model.model.*` (LAION-CLAP). The file is read once. The UNet is renamed by
`tta.ldm.audioldm` (attention heads of 32 channels for S and M, 64 for L, as the reference configures them;
`--head-channels` overrides), the VAE and vocoder by their packages' importers, and the CLAP is the one under
`cond_stage_model.model.*` (it needs `--tokenizer`, a local RoBERTa tokenizer) unless `--clap` names another.
The scheduler keeps the reference's DDIM step offset of 1 (timesteps 1, 6, ..., 996 for 200 steps), and the
mel config the reference's TacotronSTFT framing (`mel.framing = "tacotron"`: frames half a hop earlier than
tta's own), so audio the imported VAE encodes is framed as AudioLDM's own inference frames it for style
transfer and inpainting.

A diffusers AudioLDM folder (the `cvssp/audioldm-s-full-v2` layout) holds `model_index.json`, `unet/`
(UNet2DConditionModel), `vae/` (AutoencoderKL over the mel image), `vocoder/` (transformers
SpeechT5HifiGan), `scheduler/`, `text_encoder/` (ClapTextModelWithProjection: the text half of LAION-CLAP)
and `tokenizer/` (RoBERTa).

Import: the UNet, VAE, vocoder and scheduler convert as they are; the default length is the one diffusers'
AudioLDMPipeline takes from the UNet's `sample_size`, the other generation defaults (steps, guidance, ...)
those a tta export recorded, else AudioLDM's. The text half alone cannot score audio, and tta's pipeline
re-ranks candidates by CLAP, so the import takes the full CLAP the folder's text encoder came from (`--clap`: a
LAION `.pt`, a transformers CLAP folder, or any CLAP tta can load); its embedding width must equal the UNet's
class-embedding width.

Export: writes that layout from a tta pipeline folder whose text encoder is a transformers CLAP (LAION):
its text tower + projection become `text_encoder/` (ClapTextModelWithProjection) and its tokenizer
`tokenizer/`; the default length becomes the UNet's `sample_size`, the other defaults a private entry of
`model_index.json` (`_tta_defaults`, which diffusers' loader skips). A pipeline built on tta's own CLAP
(MiniLM text tower) has no diffusers equivalent and is refused with that reason.

This module is also the `tta import` / `tta export` command group (argparse only at import time).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import os
from pathlib import Path

from tta.checkpoint import output_path, read_json
from tta.ldm.folder import DEFAULT_KEYS

log = logging.getLogger(__name__)

FRAMINGS = ("hifigan", "tacotron")   # tta.audio.FRAMINGS, spelled out: the CLI parser imports no numpy

AUDIOLDM_PARTS = ("unet", "vae", "vocoder", "scheduler")
# model_index.json's entry for the generation defaults of the pipeline `tta export diffusers` wrote (pipeline.json's
# "defaults"): diffusers' format has no place for them, and a pipeline loader drops private ("_") keys unread
DEFAULTS_KEY = "_tta_defaults"
# vae/config.json's entry for the VAE's mel config, private for the same reason: diffusers' AutoencoderKL warns of
# any other key it does not take ("The config attributes {...} were passed to AutoencoderKL, but are not expected")
# on every load; folders that tta exported before wrote it as LEGACY_VAE_MEL_KEY, still read
VAE_MEL_KEY, LEGACY_VAE_MEL_KEY = "_tta_mel", "tta_mel"


class InteropError(ValueError):
    """A foreign folder that cannot be converted; the message names the folder and the part."""


def _read_json_object(path: Path) -> dict:
    """A foreign folder's JSON file as a dict; bad JSON or another encoding is an InteropError naming it."""
    body = read_json(path, InteropError)
    if not isinstance(body, dict):
        raise InteropError(f"{path}: expected a JSON object")
    return body


def import_diffusers_audioldm(folder: str | os.PathLike, out: str | os.PathLike, *, clap: str | os.PathLike,
                              tokenizer: str | os.PathLike | None = None, mel_framing: str | None = None) -> Path:
    """Convert a diffusers AudioLDM folder (+ the full CLAP at `clap`) into a tta pipeline folder `out`. The mels
    are the ones a tta export recorded in vocoder/config.json and vae/config.json (VAE_MEL_KEY, or an earlier
    export's LEGACY_VAE_MEL_KEY), else AudioLDM's (TacotronSTFT framing) for both; `mel_framing` overrides the
    framing. The generation defaults: the sampler is the scheduler/ folder's; the rest those a tta export
    recorded in model_index.json (DEFAULTS_KEY), else AudioLDM's (200 steps, guidance 2.5); the length
    AudioLDMPipeline's (from unet/config.json's sample_size), except that a recorded length is kept where it
    still gives that sample_size, and without a sample_size the recorded length, else 10 s."""
    import diffusers

    from tta.clap import load_clap
    from tta.config import ConfigError, from_dict, from_known_fields
    from tta.ldm.model import LDMUNet
    from tta.ldm.sampling import DiffusionConfig, sampler_name_of
    from tta.pipeline import PipelineDefaults, TTAPipeline, is_integer
    from vae.interop import load_diffusers_vae
    from vocoder.interop import load_speecht5_folder

    folder = Path(folder)
    index = folder / "model_index.json"
    if not index.is_file():
        raise InteropError(f"{folder}: not a diffusers pipeline folder (no model_index.json)")
    body = _read_json_object(index)
    if body.get("_class_name") not in ("AudioLDMPipeline", None):
        raise InteropError(f"{folder}: holds a {body.get('_class_name')}, expected an AudioLDMPipeline")
    for part in AUDIOLDM_PARTS:
        if not (folder / part).is_dir():
            raise InteropError(f"{folder}: part {part!r} is missing (no {part}/ folder)")
    unet = LDMUNet.load_diffusers(folder / "unet")
    unet_config = folder / "unet" / "config.json"
    sample_size = _read_json_object(unet_config).get("sample_size")   # AudioLDMPipeline's default length
    if sample_size is not None and (not is_integer(sample_size) or sample_size < 1):
        raise InteropError(f"{unet_config}: sample_size={sample_size!r}; expected a whole number of latent frames "
                           ">= 1 (AudioLDMPipeline's default length) or null")
    vocoder = _with_framing(load_speecht5_folder(folder / "vocoder"), mel_framing)
    vae_mel = vocoder.config.mel
    vae_config = folder / "vae" / "config.json"
    vae_body = _read_json_object(vae_config) if vae_config.is_file() else {}
    key = VAE_MEL_KEY if VAE_MEL_KEY in vae_body else LEGACY_VAE_MEL_KEY
    recorded = vae_body.get(key)
    if recorded is not None:   # a tta export's VAE mel (its framing may differ from the vocoder's)
        from tta.audio import recorded_mel

        try:
            vae_mel = recorded_mel(recorded, key=key)
            vae_mel = dataclasses.replace(vae_mel, framing=mel_framing) if mel_framing else vae_mel
        except ValueError as e:
            raise InteropError(f"{vae_config}: {e}") from None
    vae = load_diffusers_vae(folder / "vae", mel=vae_mel)
    sched_cfg = folder / "scheduler" / "scheduler_config.json"
    if not sched_cfg.is_file():
        raise InteropError(f"{folder}: scheduler/ has no scheduler_config.json")
    raw = _read_json_object(sched_cfg)
    try:   # diffusers takes "1000" and fails later in torch.linspace, naming no file
        from_known_fields(DiffusionConfig, raw, where="scheduler")
    except ConfigError as e:
        raise InteropError(f"{sched_cfg}: {e}") from None
    cls = getattr(diffusers, str(raw.get("_class_name")), None)
    if cls is None:
        raise InteropError(f"{sched_cfg}: unknown scheduler class {raw.get('_class_name')!r}")
    scheduler = cls.from_config(raw)
    if sampler_name_of(scheduler, default=None) is None:   # (the pipeline's default falls back to ddim)
        log.warning("%s: tta has no sampler for %s; the pipeline's default sampler is ddim (pick another with "
                    "tta generate --sampler, or tta export pipeline --default sampler=...)", sched_cfg, cls.__name__)
    defaults = PipelineDefaults(steps=200, guidance=2.5, seconds=10.0)   # AudioLDM's (10 s: none recorded)
    recorded = body.get(DEFAULTS_KEY)
    if recorded is not None:   # a tta export's (the sampler is the scheduler/ folder's, below)
        try:
            defaults = from_dict(PipelineDefaults, recorded, where=DEFAULTS_KEY)
        except ConfigError as e:
            raise InteropError(f"{index}: {e}") from None
    embedder = load_clap(clap, tokenizer=tokenizer)
    if (folder / "text_encoder").is_dir():
        check_text_encoder(folder / "text_encoder", embedder, clap)
    try:
        pipe = TTAPipeline(unet, vae, vocoder, embedder, dict(scheduler.config),
                           dataclasses.replace(defaults, sampler=sampler_name_of(scheduler)))
    except ValueError as e:
        raise InteropError(f"{folder}: parts do not fit together: {e}") from None
    if sample_size is not None:
        seconds = _default_seconds(pipe, sample_size, defaults.seconds if recorded is not None else None,
                                   where=unet_config)
        pipe.defaults = dataclasses.replace(pipe.defaults, seconds=seconds)
    return pipe.save_pretrained(out)


def _default_seconds(pipe, sample_size, recorded: float | None, *, where: Path) -> float:
    """The default length of a diffusers AudioLDM folder, as AudioLDMPipeline derives it when no
    audio_length_in_s is given: the UNet's sample_size in latent frames, times the VAE's downsampling factor
    (2 ** (levels - 1)), times the vocoder's hop over its sample rate. `recorded` (a tta export's own default
    seconds, whose latent frames, rounded up to the UNet's multiple, it wrote as sample_size) is kept when it still
    gives that sample_size: 10 s comes back as 10 s, not as the 10.24 s that 256 latent frames make."""
    from tta.pipeline import MAX_SECONDS

    if recorded is not None:
        try:
            if pipe.latent_shape(pipe.check_seconds(recorded))[1] == sample_size:
                return recorded
        except ValueError:
            pass
    seconds = sample_size * pipe.vae.downsample_factor * pipe.mel.hop_length / pipe.mel.sample_rate
    if seconds > MAX_SECONDS:
        log.warning("%s: sample_size=%d makes a default length of %g s (AudioLDMPipeline's), beyond the %g s tta "
                    "generates per clip; the pipeline's default is %g s", where, sample_size, seconds, MAX_SECONDS,
                    MAX_SECONDS)
        return MAX_SECONDS
    return seconds


def check_text_encoder(folder: Path, embedder, clap) -> None:
    """Refuse a CLAP (`--clap`) whose text tower is not the diffusers folder's `text_encoder/` (a
    ClapTextModelWithProjection): the UNet was trained on that tower's embeddings, and another CLAP of the same
    width would condition it on a foreign text space without any error."""
    import torch

    from tta.checkpoint import TRANSFORMERS_WEIGHT_NAMES, CheckpointError, read_foreign_folder

    try:
        _, state, weights = read_foreign_folder(folder, TRANSFORMERS_WEIGHT_NAMES, what="a CLAP text encoder")
    except CheckpointError as e:
        raise InteropError(str(e)) from None
    model = getattr(embedder, "model", None)
    if not hasattr(model, "text_model") or not hasattr(model, "text_projection"):
        raise InteropError(f"{folder.parent}: its UNet was trained on the LAION-CLAP text encoder in text_encoder/, "
                           f"but --clap {clap} is {type(model).__name__} (tta's own CLAP): pass that LAION-CLAP "
                           "checkpoint")
    mine = {f"text_model.{k}": v for k, v in model.text_model.state_dict().items()}
    mine.update({f"text_projection.{k}": v for k, v in model.text_projection.state_dict().items()})
    for key, value in state.items():
        if key.endswith("position_ids") or not value.is_floating_point():   # index buffers (token_type_ids) say
            continue                                                         # nothing of the weights
        other = mine.get(key)
        low = value.dtype in (torch.float16, torch.bfloat16)   # a half-precision copy of the same tower
        if other is None or other.shape != value.shape or not torch.allclose(
                other.to(value.dtype).float() if low else other.float(), value.float(), atol=1e-3 if low else 1e-4):
            why = ("has no such tensor" if other is None else
                   f"has it in shape {tuple(other.shape)}, not {tuple(value.shape)}: another architecture"
                   if other.shape != value.shape else "holds other values")
            raise InteropError(f"{weights}: --clap {clap} is not the CLAP this pipeline was trained with ({key}: "
                               f"--clap {why}); pass the LAION-CLAP checkpoint whose text tower text_encoder/ holds")


def import_audioldm_ckpt(path: str | os.PathLike, out: str | os.PathLike, *, clap: str | os.PathLike | None = None,
                         tokenizer: str | os.PathLike | None = None, prefer_ema: bool = True,
                         vocoder_config=None, vae_norm_groups: int = 32, head_channels: int | None = None,
                         mel_framing: str = "tacotron") -> Path:
    """Convert an AudioLDM original `.ckpt` (UNet: EMA weights preferred; VAE + scale_factor; HiFi-GAN; the
    CLAP under `cond_stage_model.model.*` unless `clap` names another) into a tta pipeline folder `out`. S / M /
    L are told apart by tensor shapes; `head_channels` overrides the reference's attention head width.
    `vocoder_config` (a HiFiGANConfig) overrides AudioLDM's 16 kHz / 64-bin vocoder hyper-parameters and
    `vae_norm_groups` the VAE's GroupNorm groups (the reference's 32), for non-standard sizes. The mel framing
    is AudioLDM's inference TacotronSTFT's ("tacotron") unless `mel_framing` says "hifigan"."""
    from tta.checkpoint import load_torch_file
    from tta.clap import load_clap
    from tta.clap.laion import AUDIOLDM_CLAP_PREFIX, LaionClapEmbedder
    from tta.ldm.audioldm import load_reference_unet
    from tta.ldm.sampling import DiffusionConfig
    from tta.pipeline import PipelineDefaults, TTAPipeline
    from vae.interop import vae_from_audioldm_state
    from vocoder.interop import vocoder_from_audioldm_state

    path = Path(path)
    obj = load_torch_file(path)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise InteropError(f"{path}: expected an AudioLDM checkpoint with a 'state_dict'")
    if not any(k.startswith("model.diffusion_model.") for k in state):
        raise InteropError(f"{path}: not an AudioLDM checkpoint (no model.diffusion_model.* UNet weights; first keys: "
                           f"{', '.join(list(state)[:3])})")
    if clap is None and not any(k.startswith(AUDIOLDM_CLAP_PREFIX) for k in state):
        raise InteropError(f"{path}: holds no CLAP ({AUDIOLDM_CLAP_PREFIX}*); name the one it was trained with "
                           "(--clap)")
    if tokenizer is None and (clap is None or Path(clap).is_file()):   # before the UNet, VAE and vocoder are built
        which = f"the CLAP inside {path}" if clap is None else f"--clap {clap} (a LAION-CLAP file)"
        raise InteropError(f"{which} needs its RoBERTa tokenizer folder (--tokenizer DIR)")
    unet = load_reference_unet(state, where=str(path), prefer_ema=prefer_ema, head_channels=head_channels)
    vocoder = _with_framing(vocoder_from_audioldm_state(obj, path, vocoder_config), mel_framing)
    vae = vae_from_audioldm_state(obj, mel=vocoder.config.mel, norm_num_groups=vae_norm_groups, where=str(path))
    if clap is not None:
        del obj, state
        embedder = load_clap(clap, tokenizer=tokenizer)
    else:
        embedder = LaionClapEmbedder.from_path(path, tokenizer, loaded=obj)
        del obj, state
    # AudioLDM's DDIM visits timesteps 1, 1 + c, ... (its make_ddim_timesteps adds 1): diffusers' steps_offset
    schedule = {**DiffusionConfig().scheduler_config(), "steps_offset": 1}
    # AudioLDM's text_to_audio: DDIM 200 steps at eta 1, guidance 2.5, the best of 3 candidates by its CLAP
    defaults = PipelineDefaults(sampler="ddim", steps=200, guidance=2.5, candidates=3, eta=1.0)
    try:
        pipe = TTAPipeline(unet, vae, vocoder, embedder, schedule, defaults)
    except ValueError as e:
        raise InteropError(f"{path}: parts do not fit together: {e}") from None
    return pipe.save_pretrained(out)


def _with_framing(vocoder, framing: str | None):
    """`vocoder` with its mel framing set to `framing` (None keeps it)."""
    if framing is None or framing == vocoder.config.mel.framing:
        return vocoder
    try:
        mel = dataclasses.replace(vocoder.config.mel, framing=framing)
    except ValueError as e:
        raise InteropError(f"--mel-framing: {e}") from None
    vocoder.config = dataclasses.replace(vocoder.config, mel=mel)
    return vocoder


def export_diffusers_audioldm(pipeline: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write a tta pipeline folder as a diffusers AudioLDM folder (LAION-CLAP text encoders only)."""
    import diffusers

    from tta.checkpoint import atomic_dir
    from tta.config import to_dict
    from tta.ldm.sampling import make_scheduler
    from tta.pipeline import TTAPipeline
    from vocoder.interop import export_speecht5
    from vocoder.model import HiFiGAN

    pipe = TTAPipeline.from_pretrained(pipeline)
    if not isinstance(pipe.vocoder, HiFiGAN):
        raise InteropError(f"{pipeline}: its vocoder is {type(pipe.vocoder).__name__}; diffusers' AudioLDMPipeline "
                           "needs a HiFi-GAN (SpeechT5HifiGan), so this pipeline cannot be exported")
    if getattr(pipe, "retrieval", None) is not None:
        raise InteropError(f"{pipeline}: a retrieval-augmented model (retrieval/ component); diffusers' "
                           "AudioLDMPipeline has no retrieval context, so this pipeline cannot be exported")
    model = getattr(pipe.clap, "model", None)
    if not hasattr(model, "text_model") or not hasattr(model, "text_projection"):
        raise InteropError(f"{pipeline}: its text encoder is {type(model).__name__} (tta's own CLAP); diffusers' "
                           "AudioLDMPipeline needs a LAION-CLAP text encoder, so this pipeline cannot be exported")
    from transformers import ClapTextModelWithProjection

    text = ClapTextModelWithProjection(model.config.text_config)
    state = {f"text_model.{k}": v for k, v in model.text_model.state_dict().items()}
    state.update({f"text_projection.{k}": v for k, v in model.text_projection.state_dict().items()})
    missing, unexpected = text.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InteropError(f"{pipeline}: CLAP text tower does not map onto ClapTextModelWithProjection "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if pipe.defaults.guidance_rule != "cfg":
        log.warning("%s: its default guidance rule %r has no diffusers equivalent; AudioLDMPipeline will use "
                    "classifier-free guidance", pipeline, pipe.defaults.guidance_rule)
    if getattr(pipe.vocoder.config, "resblock", "1") != "1":   # before any part is written, naming the source
        raise InteropError(f"{pipeline}/vocoder: a HiFi-GAN with resblock type {pipe.vocoder.config.resblock!r} "
                           "(configs/vocoder/default.json and tiny.json train type '2', audioldm-16k.json type "
                           "'1'); diffusers' SpeechT5HifiGan has type '1' only, so this pipeline cannot be exported")
    scheduler = make_scheduler(pipe.defaults.sampler, pipe.scheduler_config)
    with atomic_dir(out) as tmp:
        pipe.unet.save_diffusers(tmp / "unet")
        # AudioLDMPipeline derives its default length from the UNet's sample_size (latent frames): make that the
        # pipeline's default seconds, padded as tta pads it (the official conversion writes 128, 5.12 s)
        unet_config = tmp / "unet" / "config.json"
        body = json.loads(unet_config.read_text())
        body["sample_size"] = pipe.latent_shape(pipe.check_seconds(pipe.defaults.seconds))[1]
        unet_config.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
        pipe.vae.net.save_pretrained(str(tmp / "vae"), safe_serialization=True)
        # the pipeline's mel is the VAE's: its framing may differ from the vocoder's (which reads mels alike
        # either way); recorded, as the vocoder's is, so that an import gives the VAE its own (a private key, which
        # AutoencoderKL skips without a warning)
        vae_config = tmp / "vae" / "config.json"
        body = json.loads(vae_config.read_text())
        body[VAE_MEL_KEY] = dataclasses.asdict(pipe.mel)
        vae_config.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
        export_speecht5(pipe.vocoder, tmp / "vocoder")
        scheduler.save_pretrained(str(tmp / "scheduler"))
        text.save_pretrained(str(tmp / "text_encoder"))
        # diffusers pads and truncates prompts to tokenizer.model_max_length: make that the length tta's CLAP
        # embedder uses (LAION: 77 tokens, within the text model's position table), so both encode alike
        tokenizer = copy.deepcopy(pipe.clap.tokenizer)
        tokenizer.model_max_length = pipe.clap.max_length
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        index = {"_class_name": "AudioLDMPipeline", "_diffusers_version": diffusers.__version__,
                 "scheduler": ["diffusers", type(scheduler).__name__],
                 "text_encoder": ["transformers", "ClapTextModelWithProjection"],
                 "tokenizer": ["transformers", type(pipe.clap.tokenizer).__name__],
                 "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                 "vocoder": ["transformers", "SpeechT5HifiGan"],
                 # what AudioLDMPipeline has no place for (steps, guidance, ...; the length is sample_size above),
                 # for `tta import diffusers`
                 DEFAULTS_KEY: to_dict(pipe.defaults)}
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return Path(out)


def export_compact(pipeline: str | os.PathLike, out: str | os.PathLike, *, dtype: str = "float16",
                   defaults: dict | None = None, vocoder: str | os.PathLike | None = None,
                   vae: str | os.PathLike | None = None, average: list | tuple = (),
                   vocoder_set: list | tuple = (), min_elements: int = 1024) -> Path:
    """Copy a tta pipeline folder with its weights stored in `dtype` and new generation defaults.

    Floating-point tensors with at least `min_elements` entries are stored as `dtype` (float16 halves the
    folder); smaller ones (norm scales, biases, the VAE scale factor, BatchNorm statistics) stay float32.
    Loading upcasts to the model's float32 parameters, so only the storage rounding changes outputs. `dtype`
    "int8" stores the UNet's nn.Linear weights in 8 bits with a float32 scale per output row
    (`tta.checkpoint.quantize_int8`: optimum-quanto's layout, which diffusers opens as a quantized model when
    optimum-quanto is installed and tta reads without it) and the other large tensors as float16. The
    text encoder (CLAP) is copied exactly, so its identity (datastores, embedding caches) is unchanged.
    `defaults` overrides fields of pipeline.json's "defaults" (PipelineDefaults), validated. `vocoder` (a
    HiFiGAN component folder or a vocoder run folder) replaces the vocoder: it works on mels, so it can be
    trained on longer than the rest; its mel config must match the VAE's. `vae` (a MelVAE component or run
    folder) replaces the VAE only when it keeps the latent space the UNet was trained on: same config, same
    encoder weights and scale_factor, i.e. a decoder fine-tune (`tta train vae --set freeze_encoder=true`).
    `average` (pipeline folders or LDM run folders) replaces the UNet, and the retrieval context if there is
    one, with the uniform average of its weights and theirs (a "model soup" of checkpoints from one training
    line); every folder must have the same UNet config and the same CLAP. Written "FOLDER:WEIGHT" (all of
    them, then) the mix is weighted instead: each folder gets its weight and `pipeline` the rest, 1 minus their
    sum, so "FT:0.3" moves 30 % of the way from `pipeline` to a fine-tune FT of it (interpolation, as WiSE-FT
    and task arithmetic merge weights) and a negative rest extrapolates past it. `vocoder_set` ("key=value"
    strings) changes fields of the vocoder's config that hold no weights (Griffin-Lim's n_iter, the Vocos
    vocoder's griffin_lim_iter, ...); the mel config stays the VAE's."""
    from dataclasses import fields

    import torch
    from safetensors.torch import load_file

    from tta.checkpoint import QUANTO_INT8, atomic_dir, quantize_int8, save_safetensors
    from tta.config import ConfigError, apply_overrides
    from tta.ldm.sampling import check_sampler
    from tta.pipeline import TTAPipeline

    store = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
             "int8": torch.float16}
    if dtype not in store:
        raise InteropError(f"--dtype {dtype!r}: expected one of {', '.join(store)}")
    pipe = TTAPipeline.from_pretrained(pipeline)
    if average:
        _average_generators(pipe, [str(a) for a in average])
    if vae is not None:
        pipe.vae = _replacement_vae(str(vae), pipe.vae)
    if vocoder is not None:
        pipe.vocoder = _replacement_vocoder(str(vocoder), pipe.vae.config.mel)
    if vocoder_set:
        pipe.vocoder = _reconfigured_vocoder(pipe.vocoder, list(vocoder_set))
    if defaults:
        names = {f.name for f in fields(pipe.defaults)}
        unknown = sorted(set(defaults) - names)
        if unknown:
            raise InteropError(f"--default {unknown[0]}: unknown; valid keys: {', '.join(sorted(names))}")
        try:
            pipe.defaults = apply_overrides(pipe.defaults, [f"{k}={v}" for k, v in defaults.items()])
        except (ConfigError, ValueError) as e:
            raise InteropError(f"--default: {e}") from None
        try:
            check_sampler(pipe.defaults.sampler)
        except ValueError as e:
            raise InteropError(f"--default sampler: {e}") from None
        for key in ("seconds", "window"):   # a default the model cannot generate makes every default call fail
            value = getattr(pipe.defaults, key, 0)
            if key in defaults and value:
                try:   # named as given: a window's message said seconds=
                    pipe.check_seconds(value, what=f"--default {key}={value:g}")
                except ValueError as e:
                    raise InteropError(str(e)) from None
    # the source's notes (a model card, its data's attribution and licences) go with the weights, as save_pretrained
    # writes them; nothing else (an earlier export or generated audio kept in the folder)
    extras = pipe.notes
    changed = [flag for flag, given in (("--average", average), ("--vae", vae), ("--vocoder", vocoder),
                                        ("--vocoder-set", vocoder_set)) if given]
    if extras and changed:
        log.warning("%s: copied %s from %s; they describe its model, which %s changed: edit them to describe this "
                    "one", out, ", ".join(p.name for p in extras), pipeline, " and ".join(changed))
    # int8: the UNet's linear layers in 8 bits (quanto layout, tta.checkpoint.quantize_int8), the rest float16
    linears = {n for n, m in pipe.unet.net.named_modules() if isinstance(m, torch.nn.Linear)}
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp / "pipeline")
        for path in sorted((tmp / "pipeline").rglob("*.safetensors")):
            if path.parent.name == "text_encoder":   # the CLAP stays exact: its identity keys datastores/caches
                continue
            state = load_file(str(path))
            quantized = dtype == "int8" and path.parent.name == "unet"
            if quantized:
                state = quantize_int8(state, linears)
            state = {k: (_stored(v, store[dtype], f"{path.parent.name}/{k}") if v.is_floating_point()
                         and v.numel() >= min_elements and not k.endswith("._scale") else v) for k, v in state.items()}
            save_safetensors(state, path, metadata={"format": "pt"})
            if quantized:
                config = json.loads((path.parent / "config.json").read_text())
                config["quantization_config"] = dict(QUANTO_INT8)
                (path.parent / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for item in (tmp / "pipeline").iterdir():
            item.rename(tmp / item.name)
        (tmp / "pipeline").rmdir()
    return Path(out)


def _stored(value, dtype, name: str):
    """`value` cast to the storage `dtype`, or kept as it is when the cast would turn finite values into inf
    (float16 ends at 65504): a model whose weights load as inf makes NaN audio, with no error anywhere."""
    import torch

    cast = value.to(dtype)
    if dtype != value.dtype and not torch.isfinite(cast).all() and torch.isfinite(value).all():
        log.warning("%s: values up to %.4g overflow %s; stored as %s", name, float(value.abs().max()),
                    str(dtype).removeprefix("torch."), str(value.dtype).removeprefix("torch."))
        return value
    return cast


def _average_weights(specs: list[str]) -> tuple[list[str], list[float], float, int]:
    """Split `--average` specs into folders, their weights, the pipeline's own weight and a final divisor: a
    plain sum over n = len(specs) + 1 divided by n when no spec names a weight (as the uniform soup always was
    summed), else each "FOLDER:WEIGHT" its own weight and the pipeline 1 minus their sum, divided by 1."""
    import math

    folders, weights = [], []
    for spec in specs:
        head, sep, tail = spec.rpartition(":")
        try:
            weight = float(tail) if sep and head else None
        except ValueError:
            weight = None                               # a ':' that is part of the path
        if weight is not None and not math.isfinite(weight):
            raise InteropError(f"--average {spec}: the weight must be a finite number")
        folders.append(head if weight is not None else spec)
        weights.append(weight)
    if all(w is None for w in weights):
        return folders, [1.0] * len(specs), 1.0, len(specs) + 1
    bare = [s for s, w in zip(specs, weights) if w is None]
    if bare:
        raise InteropError(f"--average {bare[0]}: give every folder a weight (FOLDER:WEIGHT) or none")
    return folders, weights, 1.0 - sum(weights), 1


def _average_generators(pipe, specs: list[str]) -> None:
    """`--average`: set pipe's UNet (and retrieval context) to the uniform average of its weights and those of
    the pipelines in `specs` (pipeline folders, or run folders holding pipeline/), or to their weighted sum
    when the specs are "FOLDER:WEIGHT" (`_average_weights`). Sums run in float64, so the order of the folders
    does not matter; every folder must match in UNet config and CLAP."""
    from tta.checkpoint import CheckpointError
    from tta.pipeline import PipelineError, TTAPipeline

    folders, weights, own, divisor = _average_weights(specs)
    parts = {"unet": pipe.unet} if pipe.retrieval is None else {"unet": pipe.unet, "retrieval": pipe.retrieval}
    sums = {name: {k: v.double() * own for k, v in m.state_dict().items() if v.is_floating_point()}
            for name, m in parts.items()}
    for spec, path, weight in zip(specs, folders, weights):
        folder = Path(path)
        if not (folder / "pipeline.json").is_file() and (folder / "pipeline" / "pipeline.json").is_file():
            folder = folder / "pipeline"                  # a `tta train ldm` run folder
        try:
            other = TTAPipeline.from_pretrained(folder)
        except (PipelineError, CheckpointError, ValueError, OSError) as e:
            raise InteropError(f"--average {spec}: {e} (expected a pipeline folder or an LDM run folder)") from None
        why = ""
        if other.unet.config != pipe.unet.config:
            why = "its unet/ config differs from the pipeline's"
        elif other.clap.identity != pipe.clap.identity:
            why = "its text_encoder/ (CLAP) is not the pipeline's, so its UNet answers other embeddings"
        elif _trained_schedule(other.scheduler_config) != _trained_schedule(pipe.scheduler_config):
            why = ("its scheduler's training schedule or prediction type differs from the pipeline's, so its UNet "
                   "predicts another target")
        elif vae_why := latent_space_difference(other.vae, pipe.vae):
            why = f"its vae/ encodes into another latent space ({vae_why}), so its UNet models other latents"
        elif other.retrieval is not None and other.retrieval.config != pipe.retrieval.config:
            # (a retrieval/ component goes with its own unet context_dim, so one that is missing on either side
            # has been refused above by the unet/ config)
            why = "its retrieval/ config differs from the pipeline's"
        if why:
            raise InteropError(f"--average {spec}: {why}; only checkpoints of one model can be averaged")
        mine = {"unet": other.unet, "retrieval": other.retrieval}
        for name, acc in sums.items():
            theirs = mine[name].state_dict()
            for k in acc:
                acc[k] += theirs[k].double() * weight
    for name, m in parts.items():
        state = m.state_dict()
        m.load_state_dict({k: (sums[name][k] / divisor).to(v.dtype) if k in sums[name] else v
                           for k, v in state.items()})


def _trained_schedule(config: dict) -> dict:
    """The parts of a scheduler config a UNet is trained for (what it predicts, on which noise schedule)."""
    keys = ("prediction_type", "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
            "rescale_betas_zero_snr")
    return {k: config.get(k) for k in keys}


def latent_space_difference(model, current) -> str:
    """Why VAE `model` does not encode into `current`'s latent space ("" when it does): another config (apart
    from scale_factor's last digits), scale_factor or encoder (tensors equal up to float16 / bfloat16 storage
    rounding; another encoder differs by far more)."""
    import torch

    if _without_scale(model.config) != _without_scale(current.config):
        return "its config differs from the pipeline's vae/"
    if not math.isclose(float(model.scale_factor), float(current.scale_factor), rel_tol=1e-4):
        return f"its scale_factor {float(model.scale_factor):.6g} is not the pipeline's {float(current.scale_factor):.6g}"
    mine, theirs = current.state_dict(), model.state_dict()
    encoder = [k for k in mine if k.startswith(("net.encoder.", "net.quant_conv."))]
    moved = [k for k in encoder if not torch.allclose(mine[k].float(), theirs[k].float(), rtol=1e-2, atol=1e-5)]
    return f"its encoder differs from the pipeline's ({len(moved)} tensors, first {moved[0]})" if moved else ""


def _run_component(folder: Path) -> Path:
    """The component a `--vae`/`--vocoder` folder names: a training run's final/, or the folder itself. A run
    without final/ (still training, or stopped) is refused with the checkpoint component that can stand in."""
    from tta.checkpoint import unfinished_run

    if (folder / "final" / "config.json").is_file():      # a training run folder
        return folder / "final"
    why = unfinished_run(folder)
    if why:
        raise ValueError(why)
    return folder


def _replacement_vae(spec: str, current):
    """`--vae`: a MelVAE component or run folder whose latent space is `current`'s (same config apart from
    scale_factor's last digits, encoder tensors equal up to float16 storage rounding, same scale_factor)."""

    from tta.checkpoint import CheckpointError, load_component
    from vae.model import MelVAE

    try:
        model = load_component(_run_component(Path(spec)), MelVAE).eval()
    except (CheckpointError, ValueError, OSError) as e:
        raise InteropError(f"--vae {spec}: {e} (expected a MelVAE component or run folder)") from None
    why = latent_space_difference(model, current)
    if why:
        raise InteropError(f"--vae {spec}: {why}; the UNet was trained on that encoder's latents, so only a "
                           "decoder fine-tune of it can replace it (tta train vae --set freeze_encoder=true "
                           "--init-from the pipeline)")
    return model


def _without_scale(config):
    from dataclasses import replace

    return replace(config, scale_factor=1.0)


def _replacement_vocoder(spec: str, mel):
    """`--vocoder`: "griffin-lim[:ITERS]" (the untrained baseline) or a HiFi-GAN / Vocos / Griffin-Lim /
    post-net Griffin-Lim component folder or run folder; its mel config must equal `mel` (the VAE's)."""
    import torch  # noqa: F401  (component classes are torch modules)

    from tta.audio import check_same_mel
    from tta.checkpoint import CheckpointError, load_component
    from tta.ldm.folder import VOCODER_CLASSES, vocoder_class
    from vocoder.griffinlim import GriffinLim, GriffinLimConfig

    try:
        if spec == "griffin-lim" or spec.startswith("griffin-lim:"):
            iters = spec.partition(":")[2]
            if iters and not iters.isdigit():
                raise ValueError(f"expected griffin-lim:ITERS with a whole number, got {iters!r}")
            return GriffinLim(GriffinLimConfig(mel=mel, **({"n_iter": int(iters)} if iters else {}))).eval()
        folder = _run_component(Path(spec))
        model = load_component(folder, vocoder_class(folder)).eval()
        check_same_mel(mel, model.config.mel, "the pipeline's vae", f"--vocoder {spec}")
        return model
    except (CheckpointError, ValueError, OSError) as e:
        classes = ", ".join(VOCODER_CLASSES)   # named once: a folder of another component's error lists them
        expected = "or griffin-lim[:ITERS]" if classes in str(e) else f"expected griffin-lim[:ITERS] or a folder " \
                                                                       f"holding one of {classes}"
        raise InteropError(f"--vocoder {spec}: {e} ({expected})") from None


def _reconfigured_vocoder(model, overrides: list[str]):
    """`--vocoder-set`: the same vocoder weights under a config with `overrides` applied. Only fields that hold
    no weights can change (the weights must load into the new model as they are), and never the mel config."""
    from tta.config import ConfigError, apply_overrides

    for text in overrides:
        key = text.partition("=")[0].strip()
        if key.split(".")[0] == "mel":
            raise InteropError(f"--vocoder-set {text!r}: the vocoder's mel config is the VAE's and cannot change")
    try:
        config = apply_overrides(model.config, overrides)
    except (ConfigError, ValueError) as e:
        raise InteropError(f"--vocoder-set: {e}") from None
    settable = getattr(type(model), "inference_fields", ())   # each vocoder class names its own
    for text in overrides:
        key = text.partition("=")[0].strip()
        if settable is not None and key not in settable:   # it would change what the trained weights compute
            raise InteropError(f"--vocoder-set {key}: the {type(model).__name__}'s weights were trained with it; "
                               f"settable: {', '.join(settable) or 'none'}")
    new = type(model)(config)
    try:
        new.load_state_dict(model.state_dict())
    except RuntimeError:
        changed = ", ".join(o.partition("=")[0].strip() for o in overrides)
        raise InteropError(f"--vocoder-set {changed}: changes the shapes of {type(model).__name__}'s weights; "
                           "only settings that hold no weights can be set") from None
    return new.eval()


# ------------------------------------------------------------------------------------------- CLI


def add_parsers(parser: argparse.ArgumentParser) -> None:
    """Fills `tta import` or `tta export` (this module serves both command names)."""
    verb = parser.prog.split()[-1]
    sub = parser.add_subparsers(dest="interop_kind", metavar="FORMAT")
    sub.required = True
    if verb == "import":
        p = sub.add_parser("audioldm", help="an AudioLDM original .ckpt -> a tta pipeline folder")
        p.add_argument("folder", type=Path, metavar="CKPT", help="AudioLDM .ckpt (read weights-only)")
        p.add_argument("--clap", help="another full CLAP to use (LAION .pt, transformers CLAP folder, or a tta "
                                      "CLAP; default: the one inside the .ckpt, cond_stage_model.model.*)")
        p.add_argument("--tokenizer", type=Path, help="RoBERTa tokenizer folder (the .ckpt's CLAP or a LAION .pt)")
        p.add_argument("--no-ema", action="store_true", help="use the raw UNet weights, not model_ema.*")
        p.add_argument("--head-channels", type=int, metavar="N",
                       help="UNet attention head width (default: the reference's, 64 for AudioLDM-L, else 32)")
        p.add_argument("--mel-framing", choices=FRAMINGS, default="tacotron",
                       help="how audio is framed into mels for the VAE (audio-to-audio, inpainting): tacotron "
                            "(default; as AudioLDM's own inference, TacotronSTFT) or hifigan (half a hop later, "
                            "tta's own and AudioLDM's later training code's)")
        p.add_argument("--out", required=True, type=output_path, help="tta pipeline folder to write")
        p = sub.add_parser("diffusers", help="a diffusers AudioLDM folder -> a tta pipeline folder")
        p.add_argument("folder", type=Path, help="diffusers AudioLDM folder (model_index.json, unet/, vae/, ...)")
        p.add_argument("--clap", required=True, help="the full CLAP its text encoder belongs to "
                                                     "(LAION .pt, transformers CLAP folder, or a tta CLAP)")
        p.add_argument("--tokenizer", type=Path, help="RoBERTa tokenizer folder (LAION .pt only)")
        p.add_argument("--mel-framing", choices=FRAMINGS,
                       help="how audio is framed into mels for the VAE (default: the framing a tta export "
                            "recorded, else tacotron, AudioLDM's TacotronSTFT)")
        p.add_argument("--out", required=True, type=output_path, help="tta pipeline folder to write")
    else:
        p = sub.add_parser("diffusers", help="a tta pipeline folder (LAION-CLAP) -> a diffusers AudioLDM folder",
                           description="A tta pipeline folder -> a diffusers AudioLDM folder. It needs a LAION-CLAP "
                                       "text encoder and a HiFi-GAN vocoder with resblock type \"1\" (diffusers' "
                                       "SpeechT5HifiGan has no other: of configs/vocoder/*.json only "
                                       "audioldm-16k.json trains it, default.json and tiny.json train type \"2\"); "
                                       "other pipelines are refused before anything is written.")
        p.add_argument("folder", type=Path, help="tta pipeline folder")
        p.add_argument("--out", required=True, type=output_path, help="diffusers folder to write")
        p = sub.add_parser("pipeline", help="a tta pipeline folder -> a compact copy (half-precision storage, "
                                            "new generation defaults); how the embedded default model is packed")
        p.add_argument("folder", type=Path, help="tta pipeline folder")
        p.add_argument("--out", required=True, type=output_path, help="pipeline folder to write")
        p.add_argument("--dtype", default="float16",
                       help="storage dtype of the larger tensors: float16 (default), bfloat16, float32, or "
                            "int8: the UNet's linear layers in 8 bits with a scale per output row (the "
                            "layout diffusers' optimum-quanto backend reads), everything else float16")
        p.add_argument("--default", action="append", default=[], metavar="KEY=VALUE",
                       help=f"set a generation default in pipeline.json ({', '.join(DEFAULT_KEYS)}); repeatable")
        p.add_argument("--vocoder", help="replace the vocoder: a HiFiGAN, Vocos or PostnetGriffinLim component, or "
                                         "a `tta train vocoder` / `vocos` / `postnet` run folder (same mel config), "
                                         "or griffin-lim[:ITERS] for the untrained baseline")
        p.add_argument("--vocoder-set", action="append", default=[], metavar="KEY=VALUE",
                       help="set a field of the vocoder's config that holds no weights, after --vocoder: any "
                            "field of Griffin-Lim (n_iter, momentum, nnls_iter, ...); n_iter and momentum of the "
                            "post-net; output_magnitude (network, or nnls: Griffin-Lim's magnitude under the "
                            "network's phase), griffin_lim_iter and griffin_lim_momentum (Griffin-Lim iterations "
                            "from that phase) of the Vocos vocoder; none of a HiFi-GAN's; repeatable")
        p.add_argument("--vae", help="replace the VAE with a decoder fine-tune of it (a MelVAE component or run "
                                     "folder trained with freeze_encoder=true: same encoder and scale_factor)")
        p.add_argument("--average", action="append", default=[], metavar="FOLDER[:WEIGHT]",
                       help="average the UNet (and retrieval) weights with this pipeline or `tta train ldm` run "
                            "folder's (same UNet config and CLAP; repeatable: a uniform average of all, the folder "
                            "included); with :WEIGHT on every one, a weighted mix in which the folder keeps 1 minus "
                            "their sum (FT:0.3 moves 30 %% of the way towards a fine-tune FT)")
    parser.set_defaults(interop_verb=verb)


def run(args: argparse.Namespace) -> int:
    from tta.checkpoint import check_output_path

    if Path(args.out).exists():
        raise InteropError(f"{args.out}: already exists; choose a new --out")
    check_output_path(args.out, "--out", folder=True)   # a parent that is a file: named, not "File exists"
    if args.interop_verb == "import" and args.interop_kind == "audioldm":
        out = import_audioldm_ckpt(args.folder, args.out, clap=args.clap, tokenizer=args.tokenizer,
                                   prefer_ema=not args.no_ema, head_channels=args.head_channels,
                                   mel_framing=args.mel_framing)
    elif args.interop_verb == "import":
        out = import_diffusers_audioldm(args.folder, args.out, clap=args.clap, tokenizer=args.tokenizer,
                                        mel_framing=args.mel_framing)
    elif args.interop_kind == "pipeline":
        pairs = {}
        for item in args.default:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise InteropError(f"--default {item!r}: expected KEY=VALUE")
            pairs[key.strip()] = value.strip()
        out = export_compact(args.folder, args.out, dtype=args.dtype, defaults=pairs, vocoder=args.vocoder,
                             vae=args.vae, average=args.average, vocoder_set=args.vocoder_set)
    else:
        out = export_diffusers_audioldm(args.folder, args.out)
    print(out)
    return 0
