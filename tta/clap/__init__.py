"""CLAP: text and audio embeddings in one joint space (own `TTAClap`, or LAION-CLAP via transformers).

Light to import: the heavy modules load inside `load_clap`. Every backend is a `ClapEmbedder`
(tta.clap.encoder) with `embed_text(list[str]) -> (B, D)`, `embed_audio(wav, sample_rate) -> (B, D)`
(L2-normalised), an `identity` string naming backend and checkpoint, and an optional embedding cache.
The empty caption "" is allowed: it is the unconditional embedding (the LDM's null condition).

    from tta.clap import load_clap
    clap = load_clap("runs/clap/final")                       # own component folder (or its run folder)
    clap = load_clap("630k-audioset-best.pt", tokenizer="roberta-base/")   # original LAION checkpoint
    clap = load_clap("clap-htsat-unfused/")                   # transformers CLAP folder
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["backend_of", "load_clap", "open_clap"]

_TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def backend_of(path: str | os.PathLike) -> str:
    """"tta" (own component or run folder), "laion-pt" (original .pt) or "laion-hf" (transformers folder)."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() in _TORCH_SUFFIXES:
            return "laion-pt"
        raise ValueError(f"{path}: unknown CLAP checkpoint file (expected a LAION {'/'.join(_TORCH_SUFFIXES)})")
    if not path.is_dir():
        raise ValueError(f"{path}: CLAP model not found")
    cfg = path / "config.json"
    if (path / "final" / "config.json").is_file():  # a run folder: its release artifact is final/
        return "tta"
    from tta.checkpoint import PIPELINE_FILE, unfinished_run

    why = unfinished_run(path)
    if why:
        raise ValueError(f"{path}: {why}")
    if not cfg.is_file():
        hint = f"; a pipeline folder's CLAP is its {path / 'text_encoder'}" if (path / PIPELINE_FILE).is_file() else ""
        raise ValueError(f"{path}: not a CLAP model folder (no config.json){hint}")
    from tta.checkpoint import read_json

    body = read_json(cfg, ValueError)
    if isinstance(body, dict) and "class" in body and "format_version" in body:
        return "tta"
    if isinstance(body, dict) and body.get("model_type") == "clap":
        return "laion-hf"
    raise ValueError(f"{cfg}: neither a tta CLAP component nor a transformers CLAP config")


def load_clap(path: str | os.PathLike, *, tokenizer: str | os.PathLike | None = None, device: str = "cpu",
              batch_size: int = 32, cache_dir: str | os.PathLike | None = None, text_only: bool = False):
    """A ready `ClapEmbedder` for a CLAP checkpoint on disk (never downloads anything), on `device` (checked before
    anything loads: tta.device.torch_device). The global random generators are left as they were, as
    TTAPipeline.from_pretrained leaves them: building the model draws initial weights that the stored ones replace
    (on the CPU: CUDA's generators are not touched). A LAION-CLAP that cannot embed audio through its front end
    is refused: a preprocessor_config.json that is no LAION front end or would crop at random (another sample
    rate or truncation, a short window, a field of the wrong type: tta.clap.laion.check_front_end, a
    ValueError), or an audio tower that cannot take its front end's mels (front_end_refusal, a CheckpointError).
    A preprocessor_config.json transformers cannot build its feature extractor from is refused likewise (a
    ValueError, "not a ClapFeatureExtractor configuration"): frequency bounds out of order, and some fields of
    the wrong type, which fail there before check_front_end sees them (feature_size "64" or 64.0,
    fft_window_size 1024.0). Unless `text_only`: for captions alone (e.g. to condition on them), it loads, and
    every audio embedding (a cached one too) is refused instead, with the error loading raises without it (the
    same type and words); a preprocessor_config.json that cannot be read then leaves the identity as it is
    without one (its captions embed alike, and it embeds no audio)."""
    from tta.checkpoint import keep_global_rng

    with keep_global_rng():
        return _open_clap(path, tokenizer=tokenizer, device=device, batch_size=batch_size, cache_dir=cache_dir,
                          text_only=text_only)


def open_clap(path: str | os.PathLike, *, tokenizer: str | os.PathLike | None = None, device: str = "cpu",
              batch_size: int = 32, cache_dir: str | os.PathLike | None = None, text_only: bool = False):
    """load_clap, drawing the model's initial weights from the global random generators: an LDM training run loads
    its CLAP this way between seeding and building its UNet, whose initial weights (and every run's reproduction)
    depend on those draws (tta.checkpoint.loads_draw)."""
    from tta.checkpoint import loads_draw

    with loads_draw():
        return _open_clap(path, tokenizer=tokenizer, device=device, batch_size=batch_size, cache_dir=cache_dir,
                          text_only=text_only)


def _open_clap(path: str | os.PathLike, *, tokenizer: str | os.PathLike | None, device: str, batch_size: int,
               cache_dir: str | os.PathLike | None, text_only: bool = False):
    from tta.device import torch_device

    torch_device(device)
    kind = backend_of(path)
    if kind == "tta":
        from tta.clap.model import TTAClapEmbedder

        if tokenizer is not None:
            raise ValueError(f"{path}: a tta CLAP carries its own tokenizer; a tokenizer folder (--tokenizer) "
                             "is for LAION .pt checkpoints")
        return TTAClapEmbedder.from_folder(path, device=device, batch_size=batch_size, cache_dir=cache_dir)
    from tta.clap.laion import LaionClapEmbedder

    return LaionClapEmbedder.from_path(path, tokenizer, device=device, batch_size=batch_size, cache_dir=cache_dir,
                                       text_only=text_only)
