"""A toy captioned corpus for the CLAP tests: eight kinds of synthetic sound, each with its own caption."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.signals import chirp, clicks, noise, tone
from tta.audio import save_audio
from tta.data.manifest import ManifestRow, write_manifest

SR = 16_000
SECONDS = 0.5

KINDS = {
    "low": "a low steady hum",
    "high": "a high pitched beep",
    "hiss": "loud white noise hiss",
    "rise": "a rising whistle sweep",
    "fall": "a falling whistle sweep",
    "tick": "rapid ticking clicks",
    "knock": "slow knocking",
    "rumble": "a deep rumble",
}


def render(kind: str, rng: np.random.Generator, seconds: float = SECONDS) -> np.ndarray:
    j = float(rng.uniform(0.85, 1.15))   # per-render jitter of the defining parameter
    if kind == "low":
        wav = tone(220 * j, seconds)
    elif kind == "high":
        wav = tone(3000 * j, seconds)
    elif kind == "hiss":
        wav = noise(seconds, seed=int(rng.integers(1 << 30)))
    elif kind == "rise":
        wav = chirp(300 * j, 3000 * j, seconds)
    elif kind == "fall":
        wav = chirp(3000 * j, 300 * j, seconds)
    elif kind == "tick":
        wav = clicks(seconds, every_seconds=0.03 * j)
    elif kind == "knock":
        wav = clicks(seconds, every_seconds=0.2 * j)
    else:
        brown = np.cumsum(noise(seconds, seed=int(rng.integers(1 << 30))))
        wav = (brown - brown.mean()) / (np.abs(brown).max() + 1e-6) * 0.5
    gain = float(rng.uniform(0.5, 1.0))
    return (wav * gain).astype(np.float32)


def make_corpus(folder: Path, per_kind_train: int = 6, per_kind_valid: int = 1, seed: int = 0,
                labels: bool = False) -> Path:
    """Write wavs + manifest.jsonl (train/valid splits) under `folder`; returns the manifest path."""
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in (("train", per_kind_train), ("valid", per_kind_valid)):
        for kind, caption in KINDS.items():
            for i in range(n):
                path = folder / "audio" / f"{split}_{kind}_{i}.wav"
                save_audio(path, render(kind, rng), SR)
                rows.append(ManifestRow(id=f"{split}-{kind}-{i}", path=str(path.relative_to(folder)),
                                        captions=(caption,), seconds=SECONDS, sample_rate=SR, split=split,
                                        source="synthetic", licence="CC0",
                                        labels=(kind, "synthetic") if labels else ()))
    manifest = folder / "manifest.jsonl"
    write_manifest(manifest, rows)
    return manifest
