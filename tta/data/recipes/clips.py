"""From a candidate (a file or a render recipe) to finished 16 kHz mono clips: trim, cut, silence and dedupe.

A `Candidate` is everything needed to make its audio again (a picklable `spec`, dispatched by
`render`), plus its captions and provenance. `process` turns one candidate into up to
`max_segments` clips of at most `clip_seconds`; the builder hashes the int16 samples it will write and
keeps the first clip of every hash, in the candidates' fixed order, so the result does not depend on
how many workers rendered them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import numpy as np

SAMPLE_RATE = 16_000
CLIP_SECONDS = 10.24
MIN_SECONDS = 0.1                  # shorter (after trimming) is not a usable clip
SILENCE_PEAK = 10 ** (-50 / 20)    # peak below -50 dBFS: silence (digital silence has peak 0)
SILENCE_RMS_DB = -60.0             # or RMS below -60 dBFS over the whole clip
TRIM_DB = 50.0                     # leading/trailing audio this far below the clip's peak is trimmed
VALID_PERCENT = 7                  # share of the held-out validation split (hash of the group key)
MIN_VALID_GROUPS = 3               # (recipe v2) a label with fewer recordings than this stays in train


@dataclass(frozen=True)
class Candidate:
    key: str                        # unique and stable: "sfx/PACKAGE/relative/path.ogg", "music/gm/p000-scale-..."
    kind: str                       # "sfx" | "music" | "speech" | "mix"
    captions: tuple[str, ...]
    label: str
    role: str                       # "event" | "ambience" | "music" | "speech" | "mixture"
    source: str                     # provenance: "debian:PACKAGE:path", "fluidsynth:FluidR3_GM.sf2:...", ...
    licence: str
    spec: tuple                     # ("file", path) | ("fluidsynth", ...) | ("espeak", ...) | ("mix", ...)
    group: str = ""                 # split group (clips of one file/score stay in one split); "" = key
    max_segments: int = 1
    labels: tuple[str, ...] = field(default_factory=tuple)
    split: str = ""                 # forced split (mixtures inherit their parts'); "" = hash of split_group

    @property
    def split_group(self) -> str:
        return self.group or self.key


@dataclass(frozen=True)
class Clip:
    candidate: Candidate
    segment: int
    pcm: bytes                      # int16 little-endian, 16 kHz mono, k / 32767 full scale; its file holds wav()
    num_samples: int

    @property
    def seconds(self) -> float:
        return self.num_samples / SAMPLE_RATE

    @property
    def digest(self) -> str:
        return hashlib.sha1(self.pcm).hexdigest()

    def wav(self) -> np.ndarray:
        """The samples the recipe writes to the clip's file, on the 16-bit grid (file_pcm(pcm) / 32768, which
        save_audio writes as those integers)."""
        return (file_pcm(self.pcm) / 32768.0).astype(np.float32)


def file_pcm(pcm: bytes) -> np.ndarray:
    """The 16-bit values recipe versions 1-7 write for a clip's `pcm` (float64): floor(x * 32768) of x = pcm /
    32767 in float32, the value libsndfile's float writer put in a 16-bit WAV (soundfile 0.14, libsndfile 1.2.2),
    through which save_audio wrote until it took the nearest step: pcm's own value for pcm >= 0 (31 values above
    32735 one step up), one step below it for pcm < 0. So these versions rebuild their files byte for byte
    (a corpus's audio is what its weights trained on); writing pcm itself is for a later version."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / np.float32(32767.0)
    return np.clip(np.floor(x.astype(np.float64) * 32768.0), -32768, 32767)


def is_silent(wav: np.ndarray) -> bool:
    """True for digital silence, a peak below -50 dBFS or an RMS below -60 dBFS."""
    if wav.size == 0:
        return True
    peak = float(np.max(np.abs(wav)))
    if peak < SILENCE_PEAK:
        return True
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64))))
    return 20 * np.log10(max(rms, 1e-12)) < SILENCE_RMS_DB


def trim(wav: np.ndarray, sample_rate: int = SAMPLE_RATE, *, top_db: float = TRIM_DB,
         margin_seconds: float = 0.02) -> np.ndarray:
    """Cut leading/trailing audio more than `top_db` below the peak (10 ms frames), keeping a small margin."""
    if wav.size == 0:
        return wav
    frame = max(1, sample_rate // 100)
    n = wav.size // frame
    if n == 0:
        return wav
    env = np.abs(wav[: n * frame]).reshape(n, frame).max(axis=1)
    peak = env.max()
    if peak <= 0:
        return wav[:0]
    loud = np.nonzero(env >= peak * 10 ** (-top_db / 20))[0]
    margin = int(margin_seconds * sample_rate)
    start = max(0, loud[0] * frame - margin)
    end = min(wav.size, (loud[-1] + 1) * frame + margin)
    return wav[start:end]


def fade(wav: np.ndarray, seconds: float = 0.01, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Short linear fade in/out so that cut points do not click."""
    n = min(int(seconds * sample_rate), wav.size // 2)
    if n <= 0:
        return wav
    out = wav.copy()
    ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
    out[:n] *= ramp
    out[-n:] *= ramp[::-1]
    return out


def to_pcm(wav: np.ndarray) -> bytes:
    return (np.clip(wav, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def segment(wav: np.ndarray, candidate: Candidate, *, clip_seconds: float = CLIP_SECONDS) -> list[Clip]:
    """Trim, cut into <= clip_seconds pieces (at most candidate.max_segments), drop silent/short ones.

    wav: (T,) float32 at 16 kHz. A long file yields consecutive pieces from its start; a last piece
    shorter than a third of a clip is dropped unless it is the only one.
    """
    wav = trim(np.asarray(wav, dtype=np.float32))
    if wav.size < MIN_SECONDS * SAMPLE_RATE or is_silent(wav):
        return []
    peak = float(np.max(np.abs(wav)))
    if peak > 0.99:                 # keep levels, but never write a clipped file
        wav = wav * (0.99 / peak)
    length = round(clip_seconds * SAMPLE_RATE)
    clips = []
    for i in range(candidate.max_segments):
        piece = wav[i * length: (i + 1) * length]
        if piece.size < MIN_SECONDS * SAMPLE_RATE or (i > 0 and piece.size < length // 3):
            break
        piece = trim(piece) if i > 0 else piece
        if piece.size < MIN_SECONDS * SAMPLE_RATE or is_silent(piece):
            continue
        pcm = to_pcm(fade(piece))
        clips.append(Clip(candidate, i, pcm, len(pcm) // 2))
    return clips


def clip_id(candidate: Candidate, index: int) -> str:
    """A readable, unique, stable id: kind-slug-hash8[-sN]."""
    slug = re.sub(r"[^a-z0-9]+", "-", candidate.key.lower().rsplit("/", 1)[-1].rsplit(".", 1)[0]).strip("-")
    digest = hashlib.sha1(candidate.key.encode()).hexdigest()[:8]
    suffix = f"-s{index}" if candidate.max_segments > 1 else ""
    return f"{candidate.kind}-{slug[:40]}-{digest}{suffix}"


def split_of(group: str, valid_percent: int = VALID_PERCENT) -> str:
    """'valid' for ~valid_percent % of groups, else 'train'; a pure function of the group key (seed-free)."""
    h = int(hashlib.sha1(("split:" + group).encode()).hexdigest()[:8], 16)
    return "valid" if h % 100 < valid_percent else "train"


def order_key(key: str, seed: int) -> str:
    """Deterministic shuffled order of candidates for a seed (so --max-clips takes a varied subset)."""
    return hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()
