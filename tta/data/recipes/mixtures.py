"""Compositional mixtures of finished clips, deterministic for a seed.

- "overlay": an event (or speech) over an ambience ("a dog barks, with heavy rain in the background"),
  at a seed-chosen offset and event-to-background ratio of 0-12 dB.
- "room": a music, speech or event clip in a synthetic room (exponentially decaying noise impulse
  response with the room's RT60), e.g. "a melody played on a grand piano in a large hall".

Render spec: ("mix", "overlay", path_event, path_background, offset_fraction, snr_db) or
("mix", "room", path, room_name, seed_string). Mixtures of train clips are train rows; of valid clips, valid.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np

from tta.audio import load_audio
from tta.data.manifest import ManifestRow
from tta.data.recipes.clips import CLIP_SECONDS, SAMPLE_RATE, Candidate

# room -> (RT60 seconds, wet gain, caption suffixes)
ROOMS: dict[str, tuple[float, float, tuple[str, str]]] = {
    "small room": (0.35, 0.35, ("in a small room", "with the reverberation of a small room")),
    "large hall": (1.8, 0.55, ("in a large hall", "with a long hall reverb")),
    "cathedral": (4.0, 0.7, ("in a cathedral", "echoing in a huge stone church")),
}


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _seeded(*parts) -> random.Random:
    return random.Random(":".join(str(p) for p in parts))


def mixture_candidates(rows: list[ManifestRow], roles: dict[str, str], count: int, seed: int,
                       version: int = 6) -> list[Candidate]:
    """`count` mixtures (about 60 % overlays, 40 % rooms) from finished rows; rows are not mixtures. From recipe
    version 7 a mixture's labels are its parts' (and the room's), so label balancing and CLAP's keyword captions
    see a dog in a dog-and-rain mixture; earlier versions labelled every mixture ("mixture", "overlay" | room).

    rows: the kept clips (paths absolute); roles: row id -> "event" | "ambience" | "music" | "speech".
    Mixtures are built within a split (train from train, valid from valid) in proportion to its size.
    """
    out = []
    for split in ("train", "valid"):
        pool = sorted((r for r in rows if r.split == split), key=lambda r: r.id)
        if not pool:
            continue
        n = round(count * len(pool) / max(1, len(rows)))
        by_role = {role: [r for r in pool if roles.get(r.id) == role] for role in ("event", "ambience", "music",
                                                                                   "speech")}
        foreground = by_role["event"] + by_role["speech"]
        reverberant = [r for r in pool if roles.get(r.id) in ("music", "speech", "event")]
        rng = _seeded(seed, "mix", split)
        for i in range(n):
            if i % 5 < 3 and foreground and by_role["ambience"]:
                fg, bg = rng.choice(foreground), rng.choice(by_role["ambience"])
                if fg.id == bg.id:
                    continue
                snr = rng.uniform(0.0, 12.0)
                offset = rng.uniform(0.0, 0.6)
                a, b = _lower_first(fg.captions[0]), _lower_first(bg.captions[0])
                captions = (f"{a}, with {b} in the background", f"{b} and {a}", f"{a} while {b} can be heard")
                spec = ("mix", "overlay", fg.path, bg.path, round(offset, 4), round(snr, 2))
                key = f"mix/overlay/{fg.id}+{bg.id}"
                label = "overlay"
                parts = (*fg.labels, *bg.labels)
                licence = fg.licence if fg.licence == bg.licence else f"{fg.licence} + {bg.licence}"
                source = f"mix:{fg.id}+{bg.id}"
            elif reverberant:
                item = rng.choice(reverberant)
                room = rng.choice(sorted(ROOMS))
                a = item.captions[0]
                captions = tuple(f"{a} {suffix}" for suffix in ROOMS[room][2])
                spec = ("mix", "room", item.path, room, f"{seed}:{item.id}:{room}")
                key = f"mix/room/{item.id}+{room.replace(' ', '-')}"
                label = room
                parts = (*item.labels, room)
                licence = item.licence
                source = f"mix:{item.id}+reverb {room}"
            else:
                continue
            out.append(Candidate(key=key, kind="mix", captions=captions, label=label, role="mixture",
                                 source=source, licence=licence, spec=spec, split=split,
                                 labels=tuple(dict.fromkeys(parts)) if version >= 7 and parts
                                 else ("mixture", label)))
    unique = {c.key: c for c in out}           # the same pair drawn twice is one mixture
    return sorted(unique.values(), key=lambda c: c.key)


def room_impulse_response(rt60: float, seed: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(T,) exponentially decaying white noise with the given RT60, unit energy, deterministic in `seed`."""
    n = int(rt60 * sample_rate)
    rng = np.random.default_rng(int(hashlib.sha1(seed.encode()).hexdigest()[:8], 16))
    t = np.arange(n) / sample_rate
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)     # -60 dB at rt60
    ir[0] = 0.0
    return (ir / np.sqrt(np.sum(ir ** 2))).astype(np.float32)


def _rms(wav: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if wav.size else 0.0


def render_mix(spec: tuple) -> np.ndarray:
    """(T,) float32 at 16 kHz for a mixture spec; at most CLIP_SECONDS long, peak <= 0.9."""
    from scipy.signal import fftconvolve

    limit = int(CLIP_SECONDS * SAMPLE_RATE)
    if spec[1] == "overlay":
        _, _, fg_path, bg_path, offset_fraction, snr_db = spec
        fg, _ = load_audio(fg_path, SAMPLE_RATE)
        bg, _ = load_audio(bg_path, SAMPLE_RATE)
        fg, bg = fg[:limit], bg[:limit]
        start = int(offset_fraction * max(0, bg.size - fg.size))
        length = min(limit, max(bg.size, start + fg.size))
        out = np.zeros(length, dtype=np.float32)
        out[: bg.size] += bg[:length]
        # level the event against the background's RMS over the span it covers
        span = bg[start: start + fg.size]
        gain = (_rms(span) or _rms(bg) or 1e-3) * 10 ** (snr_db / 20) / max(_rms(fg), 1e-6)
        piece = fg[: length - start] * gain
        out[start: start + piece.size] += piece
    elif spec[1] == "room":
        _, _, path, room, seed = spec
        dry, _ = load_audio(path, SAMPLE_RATE)
        rt60, wet_gain, _ = ROOMS[room]
        wet = fftconvolve(dry, room_impulse_response(rt60, seed))[: limit]
        dry = np.pad(dry, (0, max(0, wet.size - dry.size)))[: wet.size]
        out = (dry + wet_gain * wet * (_rms(dry) / max(_rms(wet), 1e-9))).astype(np.float32)
    else:
        raise ValueError(f"unknown mixture kind {spec[1]!r}")
    peak = float(np.max(np.abs(out))) if out.size else 0.0
    return out * (0.9 / peak) if peak > 0.9 else out
