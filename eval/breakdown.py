"""Per-category and head/tail breakdowns of an evaluation (when the prompt file carries categories).

Per category: file count, FAD of that category's generated frames against the whole reference (the
reference is not split: its files need not carry categories) with its frame count, mean CLAP score and
mean KL of its items. Head/tail: categories sorted by file count; the head is the smallest set of most
frequent categories that holds at least half of the files, the tail the rest (the long-tail view of the
AudioCaps/Clotho papers). FAD is biased upward by ~1/N, so a small category scores worse for its size
alone: sets with fewer than MIN_FRAMES_PER_DIM x D frames carry a "warning"; one of fewer than 2 frames has no
FAD, and its warning says so (eval.report.NO_FAD_NOTE).
"""

from __future__ import annotations

import numpy as np

from eval.fad import FrechetDistanceMetric, FrechetStats
from tta.config import counted

MIN_FRAMES_PER_DIM = 5  # below 5 x D frames the 1/N bias of FAD dominates differences between sets


def _fad(gen, keys: list[str], ref: FrechetStats | None) -> dict:
    if ref is None or not gen.embeddings:
        return {"fad": None}
    frames = [gen.embeddings[k] for k in keys if k in gen.embeddings]
    n, dim = sum(f.shape[0] for f in frames), ref.mu.shape[0]
    out: dict = {"fad": None, "fad_frames": n}
    if n < 2:   # it warned "FAD on 1 frames, ...: biased upward by its small size" of a FAD it did not compute
        from eval.report import NO_FAD_NOTE

        out["warning"] = f"{counted(n, 'generated frame')}: {NO_FAD_NOTE}"
        return out
    if n < MIN_FRAMES_PER_DIM * dim:
        out["warning"] = (f"FAD on {counted(n, 'frame')}, fewer than {MIN_FRAMES_PER_DIM} x D = {MIN_FRAMES_PER_DIM * dim}: "
                          "biased upward by its small size; compare only sets of similar frame counts")
    metric = FrechetDistanceMetric(dim)
    metric.set_reference(ref)
    for f in frames:
        metric.update(f, generated=True)
    out["fad"] = float(metric.compute())
    return out


def _summary(gen, keys: list[str], items: dict, ref: FrechetStats | None) -> dict:
    out: dict = {"files": len(keys), **_fad(gen, keys, ref)}
    for name in ("clap_score", "kl_softmax", "kl_sigmoid"):
        values = [items[k][name] for k in keys if name in items.get(k, {})]
        out[name] = float(np.mean(values)) if values else None
    return out


def category_breakdown(gen, prompts: dict, items: dict, ref: FrechetStats | None) -> dict:
    groups: dict[str, list[str]] = {}
    for key in sorted(gen.files):
        row = prompts.get(key)
        groups.setdefault(row.category if row and row.category else "(none)", []).append(key)
    order = sorted(groups, key=lambda c: (-len(groups[c]), c))
    total = sum(len(v) for v in groups.values())
    head, count = [], 0
    for c in order:
        if count * 2 >= total:
            break
        head.append(c)
        count += len(groups[c])
    tail = [c for c in order if c not in head]
    result = {"categories": {c: _summary(gen, groups[c], items, ref) for c in order},
              "head": {"categories": head, **_summary(gen, [k for c in head for k in groups[c]], items, ref)},
              "tail": {"categories": tail, **_summary(gen, [k for c in tail for k in groups[c]], items, ref)},
              "fad_note": "per-category FAD: that category's generated frames (fad_frames) vs the whole reference; "
                          "FAD grows as the frame count falls, so categories of different sizes are not comparable"}
    return result
