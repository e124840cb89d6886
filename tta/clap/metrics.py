"""CLAP metrics: cross-modal retrieval (R@1/5/10, mAP@10, both directions), zero-shot classification and
the CLAP score. Every result dict carries "model": the embedder's identity, so no number travels without
the CLAP model and checkpoint that produced it.

Conventions (as LAION-CLAP's evaluation): text->audio has one relevant audio per caption, so its
mAP@10 is the mean reciprocal rank cut at 10; audio->text may have several relevant captions (e.g. five per
AudioCaps clip), and mAP@10 averages precision at each relevant rank <= 10 over min(#relevant, 10).
The CLAP score is the raw mean cosine similarity between each prompt and its audio (in [-1, 1]; not x100).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchmetrics

KS = (1, 5, 10)


def _ranks_of_relevant(sim: torch.Tensor, relevant: torch.Tensor, k: int) -> torch.Tensor:
    """sim (Q, N), relevant (Q, N) bool -> (Q, k) bool: whether the item at each of the top-k ranks is relevant."""
    k = min(k, sim.shape[1])
    top = sim.topk(k, dim=1).indices
    return relevant.gather(1, top)


def retrieval_metrics(text_emb: torch.Tensor, audio_emb: torch.Tensor, text_to_audio: Sequence[int] | torch.Tensor,
                      *, model: str = "") -> dict:
    """Retrieval both ways.

    text_emb (N_text, D), audio_emb (N_audio, D): L2-normalised. text_to_audio (N_text,): index of the
    audio each caption describes (several captions may point at one audio). Returns a dict with
    t2a_R@{1,5,10}, t2a_mAP@10, a2t_R@{1,5,10}, a2t_mAP@10, the counts and chance levels, and "model".
    """
    text_emb, audio_emb = text_emb.float(), audio_emb.float()
    target = torch.as_tensor(text_to_audio, dtype=torch.long)
    n_text, n_audio = text_emb.shape[0], audio_emb.shape[0]
    if target.shape != (n_text,):
        raise ValueError(f"text_to_audio has shape {tuple(target.shape)}, expected ({n_text},)")
    if n_text == 0 or n_audio == 0:
        raise ValueError("retrieval needs at least one caption and one audio clip")
    if target.min() < 0 or target.max() >= n_audio:
        raise ValueError(f"text_to_audio indices must be in [0, {n_audio})")
    sim = text_emb @ audio_emb.t()                                            # (N_text, N_audio)
    rel = torch.zeros(n_text, n_audio, dtype=torch.bool)
    rel[torch.arange(n_text), target] = True
    out: dict = {"model": model, "num_text": n_text, "num_audio": n_audio}
    for name, s, r in (("t2a", sim, rel), ("a2t", sim.t(), rel.t())):
        hits = _ranks_of_relevant(s, r, max(KS)).float()                      # (Q, <=10)
        for k in KS:
            out[f"{name}_R@{k}"] = float(hits[:, :k].any(dim=1).float().mean())
        n_rel = r.sum(dim=1).clamp(max=10).float()
        prec = hits.cumsum(1) / torch.arange(1, hits.shape[1] + 1)
        ap = (prec * hits).sum(1) / n_rel.clamp(min=1)
        out[f"{name}_mAP@10"] = float(ap[n_rel > 0].mean()) if bool((n_rel > 0).any()) else 0.0
    out["t2a_R@5_chance"] = min(5, n_audio) / n_audio
    return out


def zero_shot_accuracy(audio_emb: torch.Tensor, label_emb: torch.Tensor, targets: Sequence[int] | torch.Tensor,
                       *, model: str = "") -> dict:
    """Zero-shot classification: audio (N, D) vs one text embedding per label (L, D); targets (N,) label ids.

    Returns {"top1", "top5", "num_audio", "num_labels", "chance", "model"}.
    """
    targets = torch.as_tensor(targets, dtype=torch.long)
    if targets.shape != (audio_emb.shape[0],):
        raise ValueError(f"targets has shape {tuple(targets.shape)}, expected ({audio_emb.shape[0]},)")
    if label_emb.shape[0] == 0:
        raise ValueError("zero-shot classification needs at least one label")
    logits = audio_emb.float() @ label_emb.float().t()
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    return {"top1": float((top[:, 0] == targets).float().mean()),
            "top5": float((top == targets[:, None]).any(1).float().mean()),
            "num_audio": int(audio_emb.shape[0]), "num_labels": int(label_emb.shape[0]),
            "chance": 1.0 / label_emb.shape[0], "model": model}


def zero_shot_classify(embedder, wavs, sample_rate: int, labels: Sequence[str], targets,
                       template: str = "the sound of {}", progress: bool = False) -> dict:
    """Embed `labels` through `template` (LAION's prompt) and the clips, then `zero_shot_accuracy`."""
    label_emb = embedder.embed_text([template.format(label) for label in labels], progress=progress)
    audio_emb = embedder.embed_audio(wavs, sample_rate, progress=progress)
    return {**zero_shot_accuracy(audio_emb, label_emb, targets, model=embedder.identity), "template": template}


class ClapScore(torchmetrics.Metric):
    """Running mean cosine similarity between paired text and audio embeddings (summable state)."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, text_emb: torch.Tensor, audio_emb: torch.Tensor) -> None:
        if text_emb.shape != audio_emb.shape:
            raise ValueError(f"text {tuple(text_emb.shape)} and audio {tuple(audio_emb.shape)} embeddings "
                             "must pair up one to one")
        cos = torch.nn.functional.cosine_similarity(text_emb.float(), audio_emb.float(), dim=-1)
        self.total += cos.double().sum()
        self.count += cos.numel()

    def compute(self) -> torch.Tensor:
        if int(self.count) == 0:   # 0.0 (torchmetrics only warning) read as a real, if poor, score
            raise ValueError("ClapScore has no text-audio pairs to average: call update(text_emb, audio_emb) first")
        return self.total / self.count


def cosine_scores(text_emb, audio_emb) -> np.ndarray:
    """Row-paired (B, D) text and audio embeddings -> (B,) float64 cosine similarities (re-normalised here)."""
    t, a = _unit_rows(text_emb, "text embeddings"), _unit_rows(audio_emb, "audio embeddings")
    if t.shape != a.shape:
        raise ValueError(f"text {t.shape} and audio {a.shape} embeddings must pair row by row")
    return (t * a).sum(axis=1)


def clap_score(embedder, prompts: Sequence[str], wavs, sample_rate: int, *, batch_size: int = 32,
               progress: bool = False) -> dict:
    """CLAP score of clips against their prompts (`tta clap score` and `tta eval` alike): {"clap_score" (the mean),
    "per_item" (list), "num_items", "model" (the embedder's identity), "sample_rate" (the CLAP's), "scale"}.

    embedder: anything with tta.clap's interface, `embed_text(list[str]) -> (B, D)` and
    `embed_audio(wav (B, T), sample_rate) -> (B, D)`. wavs: one clip (T,) at `sample_rate` per prompt, as a list, a
    (B, T) array or a sequence whose slices are read when taken (tta eval's): `batch_size` prompts and their clips
    are held at a time, the prompts embedded together. Each clip is embedded alone, so its audio embedding does not
    depend on the clips beside it (equal-length clips batched together differed in their last digits).
    """
    from tqdm.auto import tqdm

    from tta.config import check_number

    if isinstance(prompts, str):   # list() would make each character a prompt
        raise ValueError("clap_score expects a list of prompts, got a single str (wrap it in a list)")  # noqa: TRY004
    prompts = list(prompts)
    if getattr(wavs, "ndim", None) == 1:   # one clip (T,)
        wavs = wavs[None]
    if len(prompts) != len(wavs) or not prompts:
        raise ValueError(f"CLAP score needs one prompt per clip and at least one, got {len(prompts)} prompts "
                         f"and {len(wavs)} clips")
    batch_size = check_number(batch_size, int, "clap_score batch_size")
    if batch_size < 1:
        raise ValueError(f"clap_score batch_size={batch_size} must be >= 1")
    scores: list[float] = []
    for start in tqdm(range(0, len(prompts), batch_size), disable=not progress, desc="CLAP score", unit="batch"):
        text = embedder.embed_text(prompts[start:start + batch_size])
        audio = np.concatenate([_numpy(embedder.embed_audio(np.asarray(w, np.float32)[None], sample_rate))
                                for w in wavs[start:start + batch_size]])
        scores += cosine_scores(_numpy(text), audio).tolist()
    return {"clap_score": float(np.mean(scores)), "per_item": scores, "num_items": len(scores),
            "model": str(getattr(embedder, "identity", "") or ""), "sample_rate": getattr(embedder, "sample_rate", None),
            "scale": "raw cosine (not x100)"}


def _unit_rows(x, what: str) -> np.ndarray:
    arr = np.asarray(_numpy(x), dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{what}: expected (B, D) embeddings, got {arr.shape}")
    norm = np.linalg.norm(arr, axis=1, keepdims=True)
    if (norm == 0).any() or not np.isfinite(arr).all():
        raise ValueError(f"{what}: zero or non-finite embedding")
    return arr / norm


def _numpy(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
