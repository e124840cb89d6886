"""The on-disk layout of a pipeline folder (written here, read by `tta.pipeline.TTAPipeline`).

    pipeline.json    {"class", "format_version": 1, "components": {name: sub-folder}, "defaults": {...}}
    unet/            diffusers' own UNet2DConditionModel files
    scheduler/       diffusers' scheduler_config.json (the training noise schedule + prediction type)
    vae/ vocoder/ text_encoder/   tta component folders (config.json + model.safetensors)
    retrieval/       optional: the retrieval context encoder of a Re-AudioLDM model (tta component)
    README.md ...    optional notes on the weights (model card, attribution, licences/): `find_notes`

It lives in tta.ldm so a training run can write a ready-to-use pipeline beside its final/ weights.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from tta.checkpoint import PIPELINE_FILE, atomic_dir, atomic_write_text, save_component

PIPELINE_CLASS = "tta.pipeline.TTAPipeline"
FORMAT_VERSION = 1
REQUIRED = ("unet", "scheduler", "vae", "vocoder", "text_encoder")
SCHEDULER_FILE = "scheduler_config.json"
# the keys of pipeline.json's "defaults", tta.pipeline.PipelineDefaults' fields (tests check they agree): here so
# `tta export pipeline --help` can list them without importing torch
DEFAULT_KEYS = ("sampler", "steps", "guidance", "seconds", "candidates", "window", "guidance_rule", "precision",
                "context_guidance", "eta")
VOCODER_CLASSES = ("vocoder.model.HiFiGAN", "vocoder.griffinlim.GriffinLim", "vocoder.postnet.PostnetGriffinLim",
                   "vocoder.vocos.Vocos")


def vocoder_class(folder: str | os.PathLike) -> type:
    """The class of the vocoder component in `folder`: HiFi-GAN, Vocos, Griffin-Lim, or Griffin-Lim with a
    learned magnitude post-net. A ValueError (CheckpointError) names the folder when it holds none of them."""
    from tta.checkpoint import CheckpointError, import_class, read_component_config

    name = read_component_config(folder)["class"]
    if name not in VOCODER_CLASSES:
        raise CheckpointError(f"{folder}: holds a {name}; expected a vocoder ({', '.join(VOCODER_CLASSES)})")
    return import_class(name)


def is_note(path: Path) -> bool:
    """A file or folder of notes that describe a pipeline's weights: a Markdown or text file (model card,
    attribution, lab notebook), a licence file, or a licences/ folder."""
    if path.name.startswith("."):
        return False
    if path.is_dir():
        return path.name.lower() in ("licences", "licenses")
    return path.suffix.lower() in (".md", ".txt") or path.name.upper().startswith(("LICEN", "COPYING", "NOTICE"))


def find_notes(folder: str | os.PathLike, components: Iterable[str]) -> list[Path]:
    """The notes at the top of pipeline folder `folder` that go with its weights wherever they are written (its
    model card, its training data's attribution and licences, which those licences require to travel with it),
    sorted; nothing else (the `components`' sub-folders, an earlier export or generated audio kept there)."""
    skip = set(components) | {PIPELINE_FILE}
    return sorted(p for p in Path(folder).iterdir() if p.name not in skip and is_note(p))


def write_pipeline(folder: str | os.PathLike, *, unet, scheduler, vae, vocoder, text_encoder,
                   defaults: dict, retrieval=None, notes: Iterable[str | os.PathLike] = ()) -> Path:
    """Write a pipeline folder atomically. unet: LDMUNet; scheduler: a diffusers scheduler (its config is
    the noise schedule); vae / vocoder: tta modules with a `.config` dataclass; text_encoder: a CLAP
    embedder (tta.clap), saved by `save_text_encoder`; retrieval: an optional RetrievalContext; notes: files and
    folders copied in beside the components (`find_notes` of the folder the weights came from)."""
    with atomic_dir(folder) as tmp:
        unet.save_diffusers(tmp / "unet")
        scheduler.save_pretrained(str(tmp / "scheduler"))
        save_component(tmp / "vae", vae)
        save_component(tmp / "vocoder", vocoder)
        save_text_encoder(text_encoder, tmp / "text_encoder")
        names = list(REQUIRED)
        if retrieval is not None:
            save_component(tmp / "retrieval", retrieval)
            names.append("retrieval")
        body = {"class": PIPELINE_CLASS, "format_version": FORMAT_VERSION,
                "components": {n: n for n in names}, "defaults": defaults}
        atomic_write_text(tmp / PIPELINE_FILE, json.dumps(body, indent=2) + "\n")
        for note in map(Path, notes):
            if note.is_dir():
                shutil.copytree(note, tmp / note.name)
            else:
                shutil.copy2(note, tmp / note.name)
    return Path(folder)


def save_text_encoder(embedder, folder: Path) -> None:
    """Write a CLAP embedder so `tta.clap.load_clap(folder)` reads it back and embeds as it does: a tta component
    for the own CLAP, or for LAION-CLAP a transformers CLAP folder with its tokenizer files and its audio front
    end (preprocessor_config.json: another mel range, hop or window embeds audio otherwise)."""
    model = embedder.model
    from tta.checkpoint import TTA_PACKAGES

    if type(model).__module__.split(".")[0] in TTA_PACKAGES:   # (a transformers model also has .config)
        save_component(folder, model)
        return
    if not hasattr(model, "save_pretrained"):
        raise ValueError(f"text encoder {type(embedder).__name__} cannot be written into a pipeline folder")
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer = getattr(embedder, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    features = getattr(embedder, "features", None)
    if features is not None:
        features.save_pretrained(str(folder))
