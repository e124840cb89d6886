"""Per-category and head/tail breakdowns of an evaluation (when the prompt file carries categories).

Per category: file count, FAD of that category's generated frames against the whole reference (the
reference is not split: its files need not carry categories), mean CLAP score and mean KL of its items.
Head/tail: categories sorted by file count; the head is the smallest set of most frequent categories that
holds at least half of the files, the tail the rest (the long-tail view of the AudioCaps/Clotho papers).
"""

from __future__ import annotations

import numpy as np

from eval.fad import FrechetDistanceMetric, FrechetStats


def _fad(gen, keys: list[str], ref: FrechetStats | None) -> float | None:
    if ref is None or not gen.embeddings:
        return None
    frames = [gen.embeddings[k] for k in keys if k in gen.embeddings]
    if sum(f.shape[0] for f in frames) < 2:
        return None
    metric = FrechetDistanceMetric(ref.mu.shape[0])
    metric.set_reference(ref)
    for f in frames:
        metric.update(f, generated=True)
    return float(metric.compute())


def _summary(gen, keys: list[str], items: dict, ref: FrechetStats | None) -> dict:
    out: dict = {"files": len(keys), "fad": _fad(gen, keys, ref)}
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
              "fad_note": "per-category FAD: that category's generated frames vs the whole reference"}
    return result
