"""CLAP score: cosine similarity between each prompt's CLAP text embedding and its audio's CLAP audio
embedding (Wu et al. 2023 / the AudioLDM 2 and Tango papers report it). Reported raw, in [-1, 1], not
x100; the mean over items plus every per-prompt value. The model is anything with tta.clap's interface:
`embed_text(list[str]) -> (B, D)` and `embed_audio(wav (B, T), sample_rate) -> (B, D)`.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def _rows(x, what: str) -> np.ndarray:
    arr = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{what}: expected (B, D) embeddings, got {arr.shape}")
    norm = np.linalg.norm(arr, axis=1, keepdims=True)
    if (norm == 0).any() or not np.isfinite(arr).all():
        raise ValueError(f"{what}: zero or non-finite embedding")
    return arr / norm


def cosine_scores(text_emb, audio_emb) -> np.ndarray:
    """Row-paired (B, D) text and audio embeddings -> (B,) cosine similarities (re-normalised here)."""
    t, a = _rows(text_emb, "text embeddings"), _rows(audio_emb, "audio embeddings")
    if t.shape != a.shape:
        raise ValueError(f"text {t.shape} and audio {a.shape} embeddings must pair row by row")
    return (t * a).sum(axis=1)


def clap_score(model, prompts: list[str], wavs: list[np.ndarray], sample_rate: int, *, batch_size: int = 32,
               progress: bool = False) -> dict:
    """Prompts and their clips (T_i,) at `sample_rate` -> {"clap_score", "per_item" (list), "count"}."""
    from tqdm.auto import tqdm

    if isinstance(prompts, str):   # sliced, a str gives characters for prompts
        raise ValueError("clap_score expects a list of prompts, got a single str (wrap it in a list)")  # noqa: TRY004
    if len(prompts) != len(wavs) or not prompts:
        raise ValueError(f"CLAP score needs one prompt per clip and at least one, got {len(prompts)} prompts "
                         f"and {len(wavs)} clips")
    scores: list[float] = []
    for start in tqdm(range(0, len(prompts), batch_size), disable=not progress, desc="CLAP score", unit="batch"):
        text = model.embed_text(list(prompts[start:start + batch_size]))
        audio = np.concatenate([np.asarray(_np(model.embed_audio(np.asarray(w, np.float32)[None], sample_rate)))
                                for w in wavs[start:start + batch_size]])
        scores += cosine_scores(text, audio).tolist()
    return {"clap_score": float(np.mean(scores)), "per_item": scores, "count": len(scores)}


def _np(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else x
