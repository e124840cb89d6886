"""`tta train ldm`: the latent diffusion model on a frozen mel-VAE and a frozen CLAP (AudioLDM §3).

Each step: clip -> log-mel -> VAE posterior -> latents x scale_factor; condition = the clip's CLAP *audio*
embedding (AudioLDM's trick: no paired text is needed; `condition` = "text" uses its caption and "mix"
draws one of the two per clip); with probability `cfg_dropout` the condition is replaced by CLAP("")
(the unconditional embedding used at sampling time, not zeros); t ~ U{0..T-1}; the UNet regresses ε or
v (`diffusion.prediction_type`) with an MSE loss.

`precompute: true` encodes every training clip once (deterministic crop) to a cache file holding the
posterior mean/std and both embeddings, so a CPU step is a UNet step only; latents are then drawn
from the cached posterior (or its mean) every step. The text embeddings of every caption are cached and each
item draws one (`precompute_captions: "first"` keeps the first only, as the shipped stages trained). The cache
is keyed by the data settings, the manifests, each audio file's size and modification time, the VAE's weights
and mel settings and the CLAP. With `precompute_seconds` longer than the segment, the cached audio embedding is
the whole clip's, so `condition` "audio"/"mix" and audio-queried retrieval are refused there, and a crop keeps
the loudness it had within its whole clip (the clip is normalised as one piece).

Every `train.validate_every` steps the (EMA) UNet samples the fixed validation prompts: wav + mel PNG in
`samples/step_N/` and the CLAP score (cosine of prompt and audio embeddings) in metrics.jsonl. At the
end `final/` holds the UNet (a tta component) and `pipeline/` a complete pipeline folder for
`tta generate --model RUN/pipeline`.

Retrieval (Re-AudioLDM; `retrieval.datastore` + `retrieval.neighbours`, or `--datastore DIR --neighbours
K`): each clip's k neighbours (its own entry and duplicates excluded) become a cross-attention context
through a `RetrievalContext` trained with the UNet (tta.ldm.retrieval_context; `final/retrieval/`,
`pipeline/retrieval/`); `retrieval.attention: "decoupled"` adds it beside the UNet's self-attention instead, so a
trained text-only UNet can be fine-tuned into a retrieval one without first losing what it computes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from tta.audio import log_mel
from tta.checkpoint import (CONFIG_NAME, WEIGHTS_NAME, CheckpointError, atomic_path, load_component,
                            load_torch_file, loads_draw, read_json, save_train_state)
from tta.config import counted, to_dict
from tta.data.manifest import DataConfig
from tta.ldm.model import LDMConfig, LDMUNet, identity_new_blocks
from tta.ldm.retrieval_context import RetrievalConfig
from tta.ldm.sampling import (
    SAMPLERS,
    DiffusionConfig,
    denoise,
    denoise_loss_target,
    draw_noise,
    make_scheduler,
)
from tta.training import (
    RunError,
    TrainConfig,
    TrainingRun,
    check_keyed_fields,
    check_run_config,
    make_optimizer,
    make_warmup_scheduler,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ComponentsConfig:
    """Frozen component folders (a component folder or a run folder whose final/ is used)."""

    vae: str = ""        # vae.model.MelVAE (its scale_factor is used)
    clap: str = ""       # own CLAP folder or transformers CLAP folder (a LAION .pt needs a tokenizer this config
    #                      cannot name: convert it, or use an imported pipeline's text_encoder/): conditioning + score
    vocoder: str = ""    # HiFi-GAN or Griffin-Lim component: validation audio and the assembled pipeline


@dataclass(frozen=True)
class ValidationConfig:
    prompts: tuple[str, ...] = ("a dog barks", "rain falling on a roof", "a church bell rings")
    seconds: float = 5.12
    steps: int = 50
    sampler: str = "ddim"
    guidance: float = 2.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"validation.sampler={self.sampler!r}; valid samplers: {', '.join(SAMPLERS)}")
        if self.seconds <= 0 or self.steps < 1 or not math.isfinite(self.guidance):
            raise ValueError("validation.seconds must be > 0, validation.steps >= 1, validation.guidance finite")


@dataclass(frozen=True)
class RunConfig:
    model: LDMConfig = field(default_factory=LDMConfig)
    components: ComponentsConfig = field(default_factory=ComponentsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=3e-5, ema_decay=0.9999))
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    condition: Literal["audio", "text", "mix"] = "audio"   # what the UNet is conditioned on while training
    text_probability: float = 0.5                           # "mix" only: chance of the caption's text embedding
    cfg_dropout: float = 0.1                                # chance of the unconditional embedding CLAP("")
    # min-SNR-γ loss weighting (Hang et al. 2023): each item's MSE is weighted by min(SNR(t), γ) / SNR(t)
    # (ε-prediction) or min(SNR(t), γ) / (SNR(t) + 1) (v-prediction), so the nearly clean timesteps stop
    # dominating the gradient; 0 = the plain MSE. 5 is the paper's value.
    snr_gamma: float = 0.0
    latent_sampling: Literal["sample", "mean"] = "sample"   # posterior sample each step, or its mean
    precompute: bool = False                                # encode latents + embeddings once to cache_dir
    # with precompute: seconds of each clip that are encoded (0 = data.segment_seconds, one fixed crop per
    # clip). Longer: every step draws a random data.segment_seconds crop from the cached latents, so the
    # whole clip is used while the UNet still trains on short segments.
    precompute_seconds: float = 0.0
    # with precompute: the caption text embeddings cached per clip, "all" (each training item draws one, as
    # on-the-fly training does) or "first" (only the first caption: how tta trained before 2026-12-07)
    precompute_captions: Literal["all", "first"] = "all"
    # what runs begun before a field existed did (read on --resume when their config.json lacks it)
    legacy_defaults: ClassVar[dict] = {"precompute_captions": "first"}
    cache_dir: str = ""                                     # "" = RUN/cache
    # fnmatch patterns over the UNet's parameter names ("net.class_embedding.*", "*.time_emb_proj.*"): only
    # the parameters they match train, the rest stay as initialised (with --init-from, the start's), as Custom
    # Diffusion tunes a few layers to teach a model a concept from a handful of clips; () = every parameter
    trainable: tuple[str, ...] = ()
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)  # Re-AudioLDM neighbours (off by default)

    def __post_init__(self) -> None:
        if not 0 <= self.cfg_dropout < 1:
            raise ValueError(f"cfg_dropout={self.cfg_dropout} must be in [0, 1)")
        r, m = self.retrieval, self.model
        if r.enabled and r.attention == "decoupled":   # the UNet keeps its self-attention (context_dim null)
            if m.context_dim is not None:
                raise ValueError(f"retrieval.attention=\"decoupled\" keeps the UNet without cross-attention; "
                                 f"model.context_dim={m.context_dim} must be null")
        elif r.enabled and m.context_dim is None:   # resolved here so run/config.json records the width used
            from dataclasses import replace

            object.__setattr__(self, "model", replace(m, context_dim=r.context_dim or m.class_embed_dim))
        elif r.enabled and r.context_dim and r.context_dim != m.context_dim:
            raise ValueError(f"retrieval.context_dim={r.context_dim} differs from model.context_dim={m.context_dim}")
        elif not r.enabled and m.context_dim is not None:
            raise ValueError(f"model.context_dim={m.context_dim} is set but retrieval is off; set "
                             "retrieval.datastore (--datastore DIR) or model.context_dim=null")
        if not (self.snr_gamma >= 0 and math.isfinite(self.snr_gamma)):
            raise ValueError(f"snr_gamma={self.snr_gamma} must be >= 0 (0 = plain MSE)")
        if not 0 <= self.text_probability <= 1:
            raise ValueError(f"text_probability={self.text_probability} must be in [0, 1]")
        if self.condition != "mix" and self.text_probability != 0.5:   # a setting that would silently do nothing
            raise ValueError(f"text_probability={self.text_probability} applies to condition \"mix\" only "
                             f"(condition is {self.condition!r})")
        if self.precompute_seconds and self.precompute_seconds < self.data.segment_seconds:
            raise ValueError(f"precompute_seconds={self.precompute_seconds} must be 0 or >= "
                             f"data.segment_seconds={self.data.segment_seconds}")
        if self.precompute and self.precompute_seconds > self.data.segment_seconds and (
                self.condition in ("audio", "mix") or r.enabled and r.modality == "audio_to_audio"):
            raise ValueError(f"precompute_seconds={self.precompute_seconds} > data.segment_seconds: the cached CLAP "
                             "audio embedding describes the whole clip, not the crop a step trains on, so it cannot "
                             f"condition (condition={self.condition!r}) or query neighbours (retrieval.modality="
                             f"{r.modality!r}); use condition \"text\" and a text query, or precompute_seconds=0")
        if self.precompute_captions not in ("all", "first"):
            raise ValueError(f"precompute_captions={self.precompute_captions!r}: expected 'all' or 'first'")
        if self.precompute and self.data.repeat_below:
            raise ValueError(f"data.repeat_below={self.data.repeat_below} needs precompute=false: repeats are "
                             "drawn afresh for every training item, pre-encoded latents are fixed")
        if self.precompute and self.data.speed_by_key:
            raise ValueError("data.speed_by_key needs precompute=false: speeds are drawn afresh for every "
                             "training item, pre-encoded latents are fixed")


# ------------------------------------------------------------------------------------ components


def component_dir(path: str, what: str) -> Path:
    if not path:
        raise ValueError(f"components.{what} is empty; set it with --set components.{what}=FOLDER")
    folder = Path(path)
    if (folder / "final" / CONFIG_NAME).is_file():   # a training run folder: its release weights
        folder = folder / "final"
    if not (folder / CONFIG_NAME).is_file():
        raise ValueError(f"components.{what}={path}: not a component folder (no {CONFIG_NAME})")
    return folder


@dataclass
class Frozen:
    vae: torch.nn.Module
    clap: object
    vocoder: torch.nn.Module | None
    null_emb: torch.Tensor   # (D,) CLAP("")


def load_frozen(config: RunConfig, device) -> Frozen:
    """The run's frozen VAE, CLAP and vocoder. Loaded as runs always loaded them, drawing each model's
    discarded initial weights from the seeded global streams (tta.checkpoint.loads_draw): the UNet built after
    them, and so every recorded run, depends on those draws."""
    from tta.clap import open_clap
    from tta.ldm.folder import vocoder_class
    from vae.model import MelVAE

    c = config.components
    with loads_draw():
        vae = load_component(component_dir(c.vae, "vae"), MelVAE, device=device).requires_grad_(False)
    if not c.clap:
        raise ValueError("components.clap is empty; set it with --set components.clap=FOLDER")
    clap = open_clap(c.clap, device=device)   # (it loads inside loads_draw itself)
    vocoder = None
    if c.vocoder or config.validation.prompts:
        folder = component_dir(c.vocoder, "vocoder")
        with loads_draw():
            vocoder = load_component(folder, vocoder_class(folder), device=device).requires_grad_(False)
        from tta.audio import check_same_mel

        check_same_mel(vae.config.mel, vocoder.config.mel, "components.vae", "components.vocoder")
    check_component_fit(config.model, vae, clap.embed_dim)
    return Frozen(vae, clap, vocoder, clap.embed_text([""])[0])


def _init_run(src: Path) -> Path | None:
    """The LDM run folder an init_from names: the folder itself, its final/ or one of its checkpoints; else None."""
    if (src / "checkpoints").is_dir() or (src / "final").is_dir():
        return src
    if src.parent.name == "checkpoints":
        return src.parent.parent
    return src.parent if src.name == "final" else None


def init_pipeline(source: str) -> tuple[Path, dict] | None:
    """(folder, its pipeline.json) of the pipeline an init_from stands for: a pipeline folder itself, and for an LDM
    run folder, its final/ or one of its checkpoints, the run's pipeline/ when written. None where there is none,
    or it cannot be read (loading the weights reports what is wrong)."""
    if not source:
        return None
    src = Path(source)
    run = _init_run(src)
    if run is not None and (run / "pipeline" / "pipeline.json").is_file():
        src = run / "pipeline"
    if not (src / "pipeline.json").is_file():
        return None
    try:
        spec = read_json(src / "pipeline.json")
    except (OSError, CheckpointError):
        return None
    return (src, spec) if isinstance(spec, dict) else None


def pipeline_defaults(source: str) -> dict | None:
    """The generation defaults a fine-tune from `source` (train.init_from) keeps: those of the pipeline it stands for
    (`init_pipeline`); for an LDM run that wrote no pipeline/ (yet), those of the run it started from, and so on up
    the chain of fine-tunes. None where the chain starts from no pipeline: the run's validation settings then."""
    seen = set()
    while source and source not in seen:
        seen.add(source)
        found = init_pipeline(source)
        if found is not None:
            defaults = found[1].get("defaults")
            return dict(defaults) if isinstance(defaults, dict) and defaults else None
        run = _init_run(Path(source))
        try:
            source = read_json(run / CONFIG_NAME)["train"]["init_from"] if run is not None else ""
        except (OSError, CheckpointError, KeyError, TypeError):
            return None
        source = source if isinstance(source, str) else ""
    return None


def warn_other_conditioning(source: str, frozen: Frozen) -> None:
    """Warn when an init_from pipeline folder's UNet (or an LDM run's, or one of its checkpoints') was trained with
    another CLAP or another VAE latent space (encoder or scale_factor) than the run's components: it starts from
    predictions made for other inputs.
    Meant sometimes (moving a UNet to a new CLAP), so a warning, where `tta export pipeline --average` refuses."""
    import torch

    from tta.checkpoint import load_state_dict

    if not source:
        return
    src, run = Path(source), _init_run(Path(source))
    found = init_pipeline(source)   # an LDM run folder's pipeline/ when written, else its components
    if found is not None:
        src, spec = found
        try:
            parts = {k: str(v) for k, v in spec["components"].items()}
        except (KeyError, TypeError, AttributeError):
            return   # not a folder this check can read: loading its weights reports what is wrong
        clap_dir, vae_dir = src / parts.get("text_encoder", "text_encoder"), src / parts.get("vae", "vae")
    elif run is not None and (run / CONFIG_NAME).is_file():
        try:
            components = read_json(run / CONFIG_NAME)["components"]
            clap_dir, vae_dir = Path(components["clap"]), Path(components["vae"])
        except (OSError, CheckpointError, KeyError, TypeError):
            return
    else:
        return
    if clap_dir.is_dir() and (clap_dir / "final").is_dir():   # components given as run folders
        clap_dir = clap_dir / "final"
    if vae_dir.is_dir() and (vae_dir / "final").is_dir():
        vae_dir = vae_dir / "final"
    if (clap_dir / CONFIG_NAME).is_file():
        from tta.clap import load_clap

        theirs = getattr(load_clap(clap_dir), "identity", None)
        ours = getattr(frozen.clap, "identity", None)
        if theirs and ours and theirs != ours:
            log.warning("train.init_from %s: its UNet was trained with CLAP %s, this run conditions on %s "
                        "(components.clap)", src, theirs, ours)
    vae_file = vae_dir / "model.safetensors"
    if vae_file.is_file():
        theirs = {k: v for k, v in load_state_dict(vae_file).items() if _latent_space_key(k)}
        ours = {k: v.detach().cpu() for k, v in frozen.vae.state_dict().items() if _latent_space_key(k)}
        same = theirs.keys() == ours.keys() and all(
            theirs[k].shape == ours[k].shape and torch.allclose(theirs[k].float(), ours[k].float(), atol=1e-3, rtol=1e-3)
            for k in theirs)
        if not same:
            log.warning("train.init_from %s: its UNet was trained on another VAE latent space (encoder or "
                        "scale_factor) than components.vae's", src)


def _latent_space_key(key: str) -> bool:
    """A MelVAE weight that shapes its latents: the encoder, quant_conv and scale_factor (not the decoder)."""
    return key == "scale_factor" or key.startswith("net.encoder.") or key.startswith("net.quant_conv.")


def check_component_fit(m, vae, clap_dim: int) -> None:
    """Refuse, naming every mismatch at once, a UNet config `m` that does not fit its frozen VAE (a MelVAE) and
    CLAP (embedding width `clap_dim`)."""
    problems = []
    if m.latent_channels != vae.config.latent_channels:
        problems.append(f"model.latent_channels={m.latent_channels} differs from the VAE's "
                        f"latent_channels={vae.config.latent_channels}")
    if m.class_embed_dim != clap_dim:
        problems.append(f"model.class_embed_dim={m.class_embed_dim} differs from the CLAP embedding width {clap_dim}")
    freq = vae.config.mel.n_mels // vae.downsample_factor
    if freq % m.downsample_factor:
        problems.append(f"the VAE's latent frequency size {freq} is not a multiple of the UNet's downsampling "
                        f"factor {m.downsample_factor} (fewer block_out_channels levels?)")
    if problems:
        raise ValueError("; ".join(problems))


def padded_mel(wav: torch.Tensor, vae, unet_factor: int) -> torch.Tensor:
    """wav (B, T) -> log-mel (B, n_mels, frames) padded with silence so the latent length is a multiple of
    `unet_factor` (the same padding the pipeline uses at generation time)."""
    mel = log_mel(wav, vae.config.mel).float()
    step = vae.downsample_factor * unet_factor
    pad = (-mel.shape[-1]) % step
    return F.pad(mel, (0, pad), value=math.log(vae.config.mel.log_floor)) if pad else mel


# ------------------------------------------------------------------------------------- pre-encoding


class CachedLatents(torch.utils.data.Dataset):
    """Pre-encoded training items: {"mean", "std": (C, T', F'), "audio_emb", "text_emb": (D,)}.

    With `crop` (latent frames), items are crops of that length: at a random start drawn from the item
    seed (`ds[(index, seed)]`, within the clip's non-padded "frames") or at 0 (`ds[index]`). A cache of every
    caption ("text_embs" (N, C, D) with "captions" (N,) counts) gives each item one of its clip's captions,
    drawn from the item seed (the first without one)."""

    def __init__(self, tensors: dict, crop: int | None = None):
        self.t = tensors
        self.crop = crop

    def __len__(self) -> int:
        return self.t["mean"].shape[0]

    def __getitem__(self, key) -> dict:
        index, seed = (key if isinstance(key, tuple) else (key, None))
        item = {k: v[index] for k, v in self.t.items() if k not in ("frames", "text_embs", "captions")}
        if "text_embs" in self.t:
            count = int(self.t["captions"][index])
            pick = int(np.random.default_rng((int(seed), 1)).integers(count)) if seed is not None else 0
            item["text_emb"] = self.t["text_embs"][index, pick]
        if self.crop is not None and self.crop < item["mean"].shape[1]:
            valid = int(self.t["frames"][index]) if "frames" in self.t else item["mean"].shape[1]
            room = max(min(valid, item["mean"].shape[1]) - self.crop, 0)
            start = int(np.random.default_rng(int(seed)).integers(0, room + 1)) if seed is not None else 0
            item["mean"] = item["mean"][:, start:start + self.crop]
            item["std"] = item["std"][:, start:start + self.crop]
        return {**item, "index": index}


def latent_cache_path(config: RunConfig, dataset, frozen: Frozen, cache_dir: Path) -> Path:
    """The cache file `precompute` writes: named by the data and the identity of the components that encode."""
    data = to_dict(config.data)
    for k in ("balance", "balance_labels", "key_weights", "repeat_below", "repeat_gap", "repeat_categories",
              "repeat_gap_by_key", "speed_by_key", "repeat_skip_words", "num_workers", "valid_split", "cache_dir",
              "max_unreadable"):
        data.pop(k, None)   # how training items are drawn or loaded, not what is encoded
    if config.precompute_seconds:   # what is encoded: whole clips up to precompute_seconds (crops come later)
        data["segment_seconds"] = config.precompute_seconds
    for k in ("manifest", "extra_manifests"):
        data.pop(k, None)   # the rows encoded count, not the files that list them (a held-out caption edit)
    h = hashlib.sha256(json.dumps(data, sort_keys=True).encode())
    for row in dataset.rows:   # what is encoded: every training row (id, captions, length, labels, ...)
        h.update(json.dumps({**row.to_json(), "path": ""}, sort_keys=True).encode())
    for path in dataset.paths:   # the audio itself: a clip re-rendered under an unchanged manifest re-encodes
        st = os.stat(path)
        h.update(f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update((component_dir(config.components.vae, "vae") / WEIGHTS_NAME).read_bytes())
    h.update(json.dumps(to_dict(frozen.vae.config.mel), sort_keys=True).encode())   # the mel the VAE encodes
    h.update(f"captions={config.precompute_captions}".encode())
    h.update(frozen.clap.identity.encode())
    h.update(str(config.model.downsample_factor).encode())
    h.update(f"segment={dataset.segment_samples}".encode())
    return cache_dir / f"latents-{h.hexdigest()[:16]}.pt"


def wait_for_cache(path: Path, poll_seconds: float = 2.0) -> None:
    """Block until the main process has written `path` (atomically). A filesystem wait, not a collective
    barrier: encoding a large corpus outlasts a process group's timeout, and if the main process fails the
    launcher stops this one."""
    waited = 0.0
    while not path.is_file():
        time.sleep(poll_seconds)
        waited += poll_seconds
        if waited % 300 < poll_seconds:
            log.info("waiting for the main process to pre-encode the training clips into %s (%.0f min)", path,
                     waited / 60)


def _replaced(path: Path, damaged: os.stat_result, poll_seconds: float = 2.0) -> dict:
    """The cache at `path` once the main process has written a new one over the `damaged` file it found."""
    while True:
        time.sleep(poll_seconds)
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if (st.st_ino, st.st_mtime_ns, st.st_size) != (damaged.st_ino, damaged.st_mtime_ns, damaged.st_size):
            try:
                return load_torch_file(path)
            except CheckpointError:
                damaged = st


@torch.no_grad()
def precompute(config: RunConfig, dataset, frozen: Frozen, cache_dir: Path, progress: bool, *,
               encodes: bool = True) -> CachedLatents:
    """Encode every clip of `dataset` (deterministic crop) once; cached by data + component identity. A process
    that is not its machine's main one (`encodes` false) never encodes: it reads what the main one wrote."""
    from tqdm.auto import tqdm

    path = latent_cache_path(config, dataset, frozen, cache_dir)
    crop = None
    if config.precompute_seconds:
        num = round(config.data.segment_seconds * frozen.vae.config.mel.sample_rate)
        crop = latent_frames(num, frozen.vae, config.model.downsample_factor)
    cached = None
    if path.is_file():
        damaged = path.stat()
        try:
            cached = load_torch_file(path)
        except CheckpointError as e:   # cut short (a full disk, a kill while an older tta wrote it): encode again
            if not encodes:   # the main process finds the same damage and writes the file again
                cached = _replaced(path, damaged)
            else:
                log.warning("%s; encoding the clips again", e)
                path.unlink(missing_ok=True)
    if cached is not None:
        # encoding iterates a DataLoader through tqdm, which takes two draws from the global torch RNG (measured;
        # tests/test_ldm.py checks it): take them here too, so a run that finds its cache builds the same UNet
        # from the same seed as the run that encoded it
        for _ in range(2):
            torch.empty((), dtype=torch.int64).random_()
        return CachedLatents(cached, crop)
    vae = frozen.vae
    every = config.precompute_captions == "all"
    out: dict[str, list] = {"mean": [], "std": [], "audio_emb": [], "frames": [],
                            **({"text_embs": [], "captions": []} if every else {"text_emb": []})}
    most = max((len(r.captions) for r in dataset.rows), default=1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, shuffle=False)
    for batch in tqdm(loader, desc="pre-encode", disable=not progress, leave=False):
        wav = batch["wav"]
        post = vae.encode(padded_mel(wav.to(vae.scale_factor.device), vae, config.model.downsample_factor))
        out["mean"].append((post.mean * vae.scale_factor).float().cpu())
        out["std"].append((post.std * vae.scale_factor).float().cpu())
        out["audio_emb"].append(frozen.clap.embed_audio(wav.numpy(), vae.config.mel.sample_rate))
        if every:   # each clip's captions, padded to the most any clip has (the count says how many are real)
            caps = [dataset.rows[int(i)].captions for i in batch["index"]]
            emb = frozen.clap.embed_text([c for cs in caps for c in cs])
            rows, start = [], 0
            for cs in caps:
                part = emb[start:start + len(cs)]
                rows.append(torch.cat([part, part[:1].expand(most - len(cs), -1)]) if len(cs) < most else part)
                start += len(cs)
            out["text_embs"].append(torch.stack(rows))
            out["captions"].append(torch.tensor([len(cs) for cs in caps]))
        else:
            out["text_emb"].append(frozen.clap.embed_text(list(batch["caption"])))
        sr = vae.config.mel.sample_rate
        out["frames"].append(torch.tensor([-(-vae.config.mel.num_frames(round(float(s) * sr)) // vae.downsample_factor)
                                           for s in batch["seconds"]]))
    tensors = {k: torch.cat(v) for k, v in out.items()}
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_train_state(path, tensors)
    others = [f for f in cache_dir.glob("latents-*.pt") if f != path]
    if others and not config.cache_dir:   # the run's own cache: its earlier encodings will not be read again
        for f in others:
            f.unlink(missing_ok=True)
        log.info("%s: removed %s of earlier settings", cache_dir, counted(len(others), "latent cache"))
    elif others:   # a shared cache_dir: other runs may still read them
        log.info("%s also holds %s (%.0f MB); delete those no run needs to free the space",
                 cache_dir, counted(len(others), "other latent cache"), sum(f.stat().st_size for f in others) / 1e6)
    return CachedLatents(tensors, crop)


def latent_frames(num_samples: int, vae, unet_factor: int) -> int:
    """Latent length T' of a clip of `num_samples` after `padded_mel` (a multiple of unet_factor)."""
    frames = vae.config.mel.num_frames(num_samples)
    step = vae.downsample_factor * unet_factor
    return -(-frames // step) * step // vae.downsample_factor


# ------------------------------------------------------------------------------------------- loss


def condition(config: RunConfig, audio_emb, text_emb, null_emb: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(B, D) conditioning with mix choice and CFG dropout; draws from the global (resumable) RNG."""
    if config.condition == "audio":
        cond = audio_emb()
    elif config.condition == "text":
        cond = text_emb()
    else:
        use_text = (torch.rand(batch_size) < config.text_probability).view(-1, 1)
        cond = torch.where(use_text, text_emb(), audio_emb())
    drop = (torch.rand(batch_size) < config.cfg_dropout).view(-1, 1)
    return torch.where(drop, null_emb.view(1, -1).to(cond), cond)


def batch_latents_and_cond(config: RunConfig, batch: dict, frozen: Frozen, device):
    """(latents (B, C, T', F'), condition (B, D), embed) of a batch; embed("audio" | "text") returns the
    batch's CLAP embeddings (B, D), computed at most once (the retrieval query reuses them)."""
    sr = frozen.vae.config.mel.sample_rate
    if "mean" in batch:
        mean, std = batch["mean"].to(device), batch["std"].to(device)
        z = mean if config.latent_sampling == "mean" else mean + std * torch.randn(mean.shape).to(device)
        found = {"audio": batch["audio_emb"], "text": batch["text_emb"]}
    else:
        wav = batch["wav"]
        vae = frozen.vae
        with torch.no_grad():
            post = vae.encode(padded_mel(wav, vae, config.model.downsample_factor))
            z = post.mean if config.latent_sampling == "mean" else post.mean + post.std * torch.randn(
                post.mean.shape).to(post.mean)
            z = (z * vae.scale_factor).float()
        found = {}

    def embed(kind: str) -> torch.Tensor:
        if kind not in found:
            found[kind] = (frozen.clap.embed_audio(batch["wav"].float().cpu().numpy(), sr) if kind == "audio"
                           else frozen.clap.embed_text(list(batch["caption"])))
        return found[kind]

    cond = condition(config, lambda: embed("audio"), lambda: embed("text"), frozen.null_emb, z.shape[0])
    return z, cond.to(device), embed


def diffusion_loss(unet, config: RunConfig, z: torch.Tensor, cond: torch.Tensor, alphas_cumprod,
                   context: torch.Tensor | None = None) -> torch.Tensor:
    noise = torch.randn(z.shape).to(z)
    t = torch.randint(0, config.diffusion.num_train_timesteps, (z.shape[0],)).to(z.device)
    noisy, target = denoise_loss_target(config.diffusion.scheduler_config(), z, noise, t, alphas_cumprod)
    pred = unet(noisy, t, cond, context).float()
    if not config.snr_gamma:
        return F.mse_loss(pred, target)
    per_item = F.mse_loss(pred, target.float(), reduction="none").flatten(1).mean(1)
    weights = min_snr_weights(alphas_cumprod.to(z.device)[t].double(), config.snr_gamma,
                              config.diffusion.prediction_type)
    return (per_item * weights.to(per_item)).mean()


def min_snr_weights(alpha_bar: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-item loss weights of min-SNR-γ, SNR(t) = ᾱ_t / (1 - ᾱ_t): min(SNR, γ) / SNR for ε-prediction,
    min(SNR, γ) / (SNR + 1) for v-prediction (both equal min(SNR, γ) weighting of the x_0 error)."""
    snr = alpha_bar / (1 - alpha_bar)
    clipped = snr.clamp(max=gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr


# ---------------------------------------------------------------------------------------- train


def freeze_except(unet: torch.nn.Module, patterns) -> int:
    """Leave only the parameters whose names match one of the fnmatch `patterns` trainable (`trainable`);
    returns how many values train. RunError when a pattern matches no parameter. Each GroupNorm that trains
    gets `contiguous_frozen_input` as a forward pre-hook."""
    from fnmatch import fnmatchcase

    names = [n for n, _ in unet.named_parameters()]
    for pattern in patterns:
        if not any(fnmatchcase(n, pattern) for n in names):
            raise RunError(f"trainable: {pattern!r} matches no UNet parameter (names look like {names[0]!r}, "
                           f"{names[-1]!r})")
    count = 0
    for name, p in unet.named_parameters():
        p.requires_grad_(any(fnmatchcase(name, pattern) for pattern in patterns))
        count += p.numel() if p.requires_grad else 0
    for module in unet.modules():
        if isinstance(module, torch.nn.GroupNorm) and any(p.requires_grad for p in module.parameters()):
            module.register_forward_pre_hook(contiguous_frozen_input)
    return count


def contiguous_frozen_input(module: torch.nn.Module, args: tuple):
    """A GroupNorm's input that needs no gradient (everything before the norm is frozen), made contiguous
    when it is not. torch's CPU GroupNorm backward crashes the process (SIGSEGV, no Python error) on a
    channels-last input that needs no gradient under a weight or bias that does, and latents encoded on the
    fly come out of the VAE channels-last (`trainable=["net.down_blocks.*"]` crashed at its first step).
    Only that case computes otherwise: an input that is contiguous or needs a gradient passes as it is, and
    torch makes any other one contiguous in the layout it suggests (channels-last: the crash), so every run
    that did not crash trains to the same weights as before."""
    x = args[0]
    if torch.is_grad_enabled() and not x.requires_grad and not x.is_contiguous():
        return (x.contiguous(), *args[1:])
    return None


def check_start(config: RunConfig, training_rows: Callable[[], None]) -> None:
    """Refuse what `train` refuses of a new run before its first step, beyond what every trainer checks
    (tta.training.check_restart): `check_inputs`, then the frozen components as the run loads them
    (`load_frozen`, on the CPU: the UNet must fit the VAE and CLAP, the vocoder's mel be the VAE's), the training
    split's rows (`training_rows()`, where `train` reads them: of two faults, the one a new run names) and the
    datastore against the components (`training_store`). `tta train ldm --resume` calls it before it clears a
    run stopped before its first checkpoint to start it again, so that a refused restart leaves it as it was.
    (Loading draws from the global random streams, which the run seeds afterwards.)"""
    store = check_inputs(config)
    frozen = load_frozen(config, torch.device("cpu"))
    training_rows()
    if store is not None:
        training_store(store, frozen, config.retrieval)


def training_store(store, frozen: Frozen, r: RetrievalConfig):
    """The loaded datastore `store` as a retrieval run reads it, checked against the run's CLAP, its neighbour
    count (one more: a clip is not its own neighbour) and, when the features read them, its VAE's latents."""
    from tta.ldm.retrieval_context import feature_names, open_store

    uses_latent = "latent" in feature_names(r.features)    # neighbours' latents of the run's own VAE
    return open_store(store, frozen.clap, r.neighbours, exclude_self=True,
                      latent_vae=frozen.vae.identity if uses_latent else "")


def check_inputs(config: RunConfig):
    """Refuse component folders that are none (no config.json) or not set, a CLAP that is not there, a missing,
    empty or corrupted datastore (one without latents where the features read them) and a `trainable` pattern
    that matches no UNet parameter. Returns the loaded Datastore (None without retrieval)."""
    component_dir(config.components.vae, "vae")
    if config.components.vocoder or config.validation.prompts:
        component_dir(config.components.vocoder, "vocoder")
    if not config.components.clap or not Path(config.components.clap).exists():
        raise ValueError(f"components.clap={config.components.clap!r}: CLAP model not found; "
                         "set it with --set components.clap=PATH")
    r = config.retrieval
    store = None
    if r.enabled:
        from tta.ldm.retrieval_context import feature_names
        from tta.retrieval import Datastore

        store = Datastore.load(r.datastore)
        if "latent" in feature_names(r.features) and store.latent_info is None:
            store.check_latents("")   # raises: the store holds no latents (its VAE is checked once loaded)
    if config.trainable:
        freeze_except(LDMUNet(config.model), config.trainable)
    return store


def train(config: RunConfig, out: str | os.PathLike, *, resume: bool = False, progress: bool = True) -> Path:
    """Train (or resume) a run in `out`; returns the final/ component folder (RUN/pipeline/ is written too)."""
    from tta.data.dataset import AudioDataset

    config = check_run_config(config, RunConfig)
    store = check_inputs(config)   # before the run folder is created, so a typo leaves nothing behind
    r = config.retrieval
    run = TrainingRun(out, config, config.train, resume=resume, progress=progress)
    frozen = load_frozen(config, run.device)
    if not resume:   # (it builds the source's CLAP with load_clap, which leaves every random stream as it was)
        warn_other_conditioning(config.train.init_from, frozen)
    sr = frozen.vae.config.mel.sample_rate
    caption_choice = "first" if config.precompute else "random"
    data = config.data
    if config.precompute and config.precompute_seconds:
        from dataclasses import replace

        data = replace(data, segment_seconds=config.precompute_seconds)
    train_set = AudioDataset.from_config(data, config.data.train_split, sr,
                                         random_crop=not config.precompute, caption_choice=caption_choice)
    row_ids = [row.id for row in train_set.rows]
    train_rows, train_paths = list(train_set.rows), list(train_set.paths)   # retrieval: what to exclude
    keys = train_set.balance_keys(config.data.balance_labels)   # data.balance; CachedLatents keeps the order
    names = train_set.weight_names()    # data.key_weights
    check_keyed_fields(config.data, names)   # before any pre-encoding, not after it
    run.check_audio(train_set)   # before any pre-encoding too
    if config.precompute:
        cache = Path(config.cache_dir) if config.cache_dir else run.out / "cache"
        # one process per machine encodes; the others wait for its cache file, then load it
        if not run.accelerator.is_local_main_process:
            wait_for_cache(latent_cache_path(config, train_set, frozen, cache))
        train_set = precompute(config, train_set, frozen, cache, progress and run.is_main,
                               encodes=run.accelerator.is_local_main_process)
    unet = LDMUNet(config.model)
    ctx = ctx_ema = None
    if store is not None:
        from tta.ldm.retrieval_context import RetrievalContext, context_config, training_exclusions

        store = training_store(store, frozen, r)
        exclusions = training_exclusions(store, train_rows, train_paths, r, frozen.clap.sample_rate)
        if r.attention == "decoupled":   # the branch projections live in the context encoder
            from tta.ldm.retrieval_context import attach_decoupled, attention_layers

            ctx = RetrievalContext(context_config(r, frozen.clap.embed_dim, r.context_dim or config.model.class_embed_dim,
                                                  attention_layers(unet), store.latent_info))
            attach_decoupled(unet, ctx.config)
        else:
            ctx = RetrievalContext(context_config(r, frozen.clap.embed_dim, config.model.context_dim,
                                                  latent=store.latent_info))
    if config.trainable:
        count = freeze_except(unet, config.trainable)
        log.info("trainable: %d of the UNet's %d values train", count, sum(p.numel() for p in unet.parameters()))
    params = [p for p in unet.parameters() if p.requires_grad]
    if ctx is not None:   # the context encoder in its own group, at retrieval.learning_rate_scale x the rate
        params = [{"params": params}, {"params": [p for p in ctx.parameters() if p.requires_grad],
                                       "lr": config.train.learning_rate * r.learning_rate_scale}]
    optimizer = make_optimizer(params, config.train)
    scheduler = make_warmup_scheduler(optimizer, config.train)
    if ctx is None:
        unet, optimizer = run.prepare(unet, optimizer)
        run.track(unet=unet, optimizer=optimizer, lr=scheduler)
    else:
        unet, ctx, optimizer = run.prepare(unet, ctx, optimizer)
        run.track(unet=unet, retrieval=ctx, optimizer=optimizer, lr=scheduler)
        ctx_ema = run.make_ema("retrieval", ctx)
    ema = run.make_ema("unet", unet)
    run.init_hooks["unet"] = identity_new_blocks   # init_from a UNet with fewer transformer_layers: grow it
    run.restore()
    noise_schedule = make_scheduler("ddpm", config.diffusion.scheduler_config())
    alphas_cumprod = noise_schedule.alphas_cumprod
    unet.train()
    trained = unet if ctx is None else torch.nn.ModuleDict({"unet": unet, "retrieval": ctx})  # grad clipping
    query = "audio" if r.modality == "audio_to_audio" else "text"

    def do_validate() -> None:
        model = ema.averaged(run.unwrap(unet)) if ema is not None else run.unwrap(unet)
        retrieval = None if ctx is None else (ctx_ema.averaged(run.unwrap(ctx)) if ctx_ema is not None
                                              else run.unwrap(ctx)).eval()
        validate(model.eval(), frozen, config, run.out / "samples" / f"step_{run.step}", run=run,
                 retrieval=retrieval, store=store)
        unet.train()

    if (run.missed_validation(config.train.validate_every, at_end=False) and config.validation.prompts
            and run.is_main):
        do_validate()   # stopped between a checkpoint and its validation: validate it now
    for batch in run.batches(train_set, keys=keys, names=names):
        with run.accumulate(*[m for m in (unet, ctx) if m is not None]):
            z, cond, embed = batch_latents_and_cond(config, batch, frozen, run.device)
            context = None
            if ctx is not None:
                from tta.ldm.retrieval_context import training_context

                rows = [int(i) for i in batch["index"]]
                drop = None
                if r.joint_dropout:   # text and context dropped together (guided mode's unconditional input)
                    drop = torch.rand(len(rows)) < r.joint_dropout
                    cond = torch.where(drop.view(-1, 1).to(cond.device), frozen.null_emb.view(1, -1).to(cond), cond)
                context = training_context(ctx, store, r, [row_ids[i] for i in rows], embed(query), run.device,
                                           exclusions.of(rows), drop)
            loss = diffusion_loss(unet, config, z, cond, alphas_cumprod, context)
            run.backward(loss)
            run.clip_grad(trained)
            optimizer.step()
            if run.optimizer_stepped:     # one LR step per optimizer step, not per micro-batch or skipped step
                scheduler.step()
            optimizer.zero_grad()
        run.end_step(loss=loss.item())
        if run.should(config.train.validate_every) and config.validation.prompts and run.is_main:
            do_validate()
    final = run.finish(unet, "unet")
    retrieval = None
    if ctx is not None:  # the context encoder: final/retrieval/ (EMA weights when EMA is on)
        from tta.checkpoint import save_component

        retrieval = ctx_ema.averaged(run.unwrap(ctx)) if ctx_ema is not None else run.unwrap(ctx)
        if run.is_main:
            save_component(final / "retrieval", retrieval)
    if run.is_main and frozen.vocoder is not None:
        from tta.checkpoint import load_component as load
        from tta.ldm.folder import write_pipeline

        v = config.validation
        defaults = {"sampler": v.sampler, "steps": v.steps, "guidance": v.guidance, "seconds": v.seconds,
                    "candidates": 1}
        inherited = pipeline_defaults(config.train.init_from)
        if inherited:   # a fine-tune of a pipeline, or of a run, generates as it did (the embedded default: APG, ...)
            defaults = inherited
        write_pipeline(run.out / "pipeline", unet=load(final, LDMUNet), scheduler=make_scheduler(
            defaults.get("sampler", v.sampler), config.diffusion.scheduler_config()), vae=frozen.vae,
            vocoder=frozen.vocoder, text_encoder=frozen.clap, defaults=defaults, retrieval=retrieval)
    return final


@torch.no_grad()
def validate(unet: LDMUNet, frozen: Frozen, config: RunConfig, folder: Path, *, run: TrainingRun,
             retrieval=None, store=None) -> list[float]:
    """Generate the validation prompts; write wav + spectrogram PNG; log the CLAP scores. A retrieval
    model (`retrieval` context encoder + `store`) conditions each prompt on its k nearest entries."""
    from tta.audio import save_audio

    v = config.validation
    vae, mel_cfg = frozen.vae, frozen.vae.config.mel
    num_samples = int(round(v.seconds * mel_cfg.sample_rate))
    frames = math.ceil(num_samples / mel_cfg.hop_length)
    f, m = vae.downsample_factor, unet.downsample_factor
    shape = (config.model.latent_channels, math.ceil(math.ceil(frames / f) / m) * m, mel_cfg.n_mels // f)
    text = frozen.clap.embed_text(list(v.prompts))
    scores = []
    contexts = None
    if retrieval is not None:
        from tta.ldm.retrieval_context import prompt_context

        contexts, _ = prompt_context(retrieval, store, text, config.retrieval.neighbours)
    folder.mkdir(parents=True, exist_ok=True)
    for i, prompt in enumerate(v.prompts):
        noise = draw_noise(shape, [v.seed + i])
        latents = denoise(unet, make_scheduler(v.sampler, config.diffusion.scheduler_config()), noise,
                          text[i:i + 1], frozen.null_emb[None], steps=v.steps, guidance=v.guidance,
                          context=None if retrieval is None else contexts[i:i + 1],
                          generator=torch.Generator().manual_seed(v.seed + i))
        mel = vae.latents_to_mel(latents)
        wav = frozen.vocoder(mel.float())[0, :num_samples].float().cpu()
        name = f"{i:02d}_{re.sub(r'[^a-z0-9]+', '_', prompt.lower()).strip('_')[:40]}"
        save_audio(folder / f"{name}.wav", wav.numpy(), mel_cfg.sample_rate)
        save_mel_png(folder / f"{name}.png", mel[0, :, :frames].float().cpu(), title=f"{prompt} ({folder.name})")
        audio_emb = frozen.clap.embed_audio(wav.numpy(), mel_cfg.sample_rate)
        scores.append(float((audio_emb[0] * text[i]).sum()))
    run.log_metrics(split="valid", clap_score=float(np.mean(scores)), clap_scores=[round(s, 5) for s in scores],
                    clap_model=frozen.clap.identity)
    return scores


def save_mel_png(path: Path, mel: torch.Tensor, title: str = "") -> Path:
    """A (n_mels, frames) log-mel as a PNG (low frequencies at the bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.imshow(mel.numpy(), origin="lower", aspect="auto", cmap="magma")
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("frame")
    ax.set_ylabel("mel bin")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:   # a full disk names the plot and leaves no partial file
            fig.savefig(tmp, dpi=80)
    finally:
        plt.close(fig)
    return path
