"""Music from FluidSynth: GM instruments playing notes/scales/arpeggios/chords/melodies, drum kits, and
music21 corpus scores, each with a musical caption.

Rendering is in-process with pyfluidsynth (libfluidsynth) on the FluidR3_GM SoundFont at 16 kHz, dry
(FluidSynth's own reverb and chorus off; reverb is added later by the mixtures with a caption that says so).
A render spec is ("fluidsynth", sf2, programs, events, release_seconds): programs = ((channel, bank,
preset), ...), events = ((start_seconds, duration_seconds, channel, key, velocity), ...).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path

import numpy as np

from tta.checkpoint import atomic_write_text
from tta.data.recipes.clips import SAMPLE_RATE, Candidate
from tta.data.recipes.gm import DRUM_KITS, GM_DRUMS, GM_EFFECTS, GM_PROGRAMS, NOTE_NAMES, bare, indefinite

log = logging.getLogger(__name__)

SF2_PATH = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
SF2_LICENCE = "MIT (FluidR3_GM SoundFont, Debian fluid-soundfont-gm)"
SCORE_LICENCE = "music21 corpus (BSD-3-Clause; public-domain scores) rendered with FluidR3_GM (MIT)"
RELEASE_SECONDS = 0.6          # render this much after the last note-off; FluidR3's ~2 s tails are cut
DRUM_CHANNEL = 9

MAJOR = (0, 2, 4, 5, 7, 9, 11, 12)
MINOR = (0, 2, 3, 5, 7, 8, 10, 12)

# ------------------------------------------------------------------------------------------- rendering

_SYNTHS: dict[str, tuple] = {}
# FluidSynth applies events at 64-sample block starts: every render starts on the same phase of that grid.
# (Float output is used: the 16-bit output is dithered from a table indexed by a running counter.)
_ALIGN = 64 * 250


def _write_float(synth, num_frames: int) -> np.ndarray:
    """(num_frames, 2) float32 from fluid_synth_write_float (pyfluidsynth only wraps the dithered s16 call)."""
    import ctypes

    import fluidsynth

    fn = fluidsynth._fl.fluid_synth_write_float
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                   ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    buf = np.zeros((num_frames, 2), dtype=np.float32)
    if num_frames and fn(synth.synth, num_frames, buf.ctypes.data, 0, 2, buf.ctypes.data, 1, 2) != 0:
        raise RuntimeError("fluid_synth_write_float failed")
    return buf


def _synth(sf2: str):
    """One synth per process and SoundFont (loading FluidR3 takes ~0.2 s)."""
    if sf2 not in _SYNTHS:
        import fluidsynth

        synth = fluidsynth.Synth(gain=0.5, samplerate=float(SAMPLE_RATE), **{
            "synth.reverb.active": 0, "synth.chorus.active": 0})
        sfid = synth.sfload(sf2)
        if sfid < 0:
            raise RuntimeError(f"{sf2}: FluidSynth could not load the SoundFont")
        _SYNTHS[sf2] = (synth, sfid, [0])    # [0]: samples pulled so far (for block alignment)
    return _SYNTHS[sf2]


def render_fluidsynth(sf2: str, programs: tuple, events: tuple, release_seconds: float = RELEASE_SECONDS
                      ) -> np.ndarray:
    """Render note events to (T,) float32 mono at 16 kHz.

    Every render starts after a reset and a flush on the same phase of FluidSynth's block grid. FluidSynth
    still keeps a little state across renders (per-sample values set on first use, voice filter history:
    differences below -65 dBFS), so the builder renders all FluidSynth specs in one process, in the
    candidates' fixed order: the same options then give the same audio, whatever --workers says.
    """
    entry = _synth(sf2)
    synth, sfid = entry[0], entry[1]

    def pull(n: int) -> np.ndarray:
        entry[2][0] += n
        return _write_float(synth, n)

    synth.system_reset()
    pull(_ALIGN - entry[2][0] % _ALIGN)                  # flush, and realign to the block grid
    for channel, bank, preset in programs:
        synth.program_select(channel, sfid, bank, preset)
    timeline = []
    for start, duration, channel, key, velocity in events:
        timeline.append((round(start * SAMPLE_RATE), 1, channel, key, velocity))
        timeline.append((round((start + duration) * SAMPLE_RATE), 0, channel, key, 0))
    timeline.sort()
    chunks, now = [], 0
    for at, is_on, channel, key, velocity in timeline:
        if at > now:
            chunks.append(pull(at - now))
            now = at
        if is_on:
            synth.noteon(channel, key, velocity)
        else:
            synth.noteoff(channel, key)
    chunks.append(pull(int(release_seconds * SAMPLE_RATE)))
    for channel, _, _ in programs:
        synth.all_sounds_off(channel)
    wav = np.concatenate(chunks).mean(axis=1).astype(np.float32)
    tail = min(wav.size // 4, int(0.3 * SAMPLE_RATE))    # fade the cut release tail out
    if tail > 0:
        wav[-tail:] *= np.linspace(1.0, 0.0, tail, dtype=np.float32)
    return wav


def fluidsynth_status() -> str | None:
    """None when GM rendering can run here, else what is missing."""
    if not os.path.isfile(SF2_PATH):
        return f"{SF2_PATH} not found (Debian package fluid-soundfont-gm)"
    try:
        import fluidsynth  # noqa: F401
    except ImportError as e:
        return f"pyfluidsynth or libfluidsynth is missing ({e}; PyPI pyfluidsynth + Debian libfluidsynth3)"
    return None


# ---------------------------------------------------------------------------------------- candidates


def _candidate(key, captions, label, source, programs, events, *, group="", max_segments=1, labels=(),
               licence=SF2_LICENCE):
    return Candidate(key=key, kind="music", captions=tuple(captions), label=label, role="music",
                     source=source, licence=licence, spec=("fluidsynth", SF2_PATH, tuple(programs),
                                                              tuple(events), RELEASE_SECONDS),
                     group=group, max_segments=max_segments, labels=tuple(labels))


def instrument_candidates(seed: int) -> list[Candidate]:
    """Five phrase types x two variants for each of the 120 GM instruments, plus the 8 GM effect programs."""
    out = []
    for program, (name, low, high) in enumerate(GM_PROGRAMS):
        src = f"fluidsynth:FluidR3_GM.sf2:program {program}"
        rng = random.Random(f"{seed}:gm:{program}")
        for variant in range(2):
            tempo = rng.choice((72, 90, 108, 126))
            beat = 60.0 / tempo
            root = rng.randint(low, max(low, high - 12))
            root_name = NOTE_NAMES[root % 12]
            mode, steps = rng.choice((("major", MAJOR), ("minor", MINOR)))
            group = f"music/gm/p{program:03d}/{variant}"
            prog = ((0, 0, program),)
            base = f"music/gm/p{program:03d}-v{variant}"
            key = rng.randint(low + 2, high - 2)
            out.append(_candidate(f"{base}-note", [f"a single note played on {name}",
                                                   f"{name} playing one sustained {NOTE_NAMES[key % 12]} note"],
                                  "note", src, prog, [(0.0, rng.choice((1.0, 2.0, 3.0)), 0, key, 100)],
                                  group=group, labels=("instrument",)))
            if program < 112:          # pitched percussion (112-119): single strokes and melodies only
                notes = [root + s for s in steps]
                out.append(_candidate(
                    f"{base}-scale", [f"{name} playing an ascending {root_name} {mode} scale",
                                      f"{indefinite(root_name)} {root_name} {mode} scale on {name} at {tempo} BPM"],
                    "scale", src, prog, [(i * beat, beat * 0.9, 0, k, 96) for i, k in enumerate(notes)],
                    group=group, labels=("instrument",)))
                arp = [root + s for s in (steps[0], steps[2], steps[4], steps[7], steps[4], steps[2], steps[0])]
                out.append(_candidate(
                    f"{base}-arpeggio", [f"{name} playing {indefinite(root_name)} {root_name} {mode} arpeggio",
                                         f"a broken {mode} chord on {name}"],
                    "arpeggio", src, prog, [(i * beat / 2, beat / 2 * 0.95, 0, k, 92) for i, k in enumerate(arp)],
                    group=group, labels=("instrument",)))
                chord = [root + steps[0], root + steps[2], root + steps[4]]
                out.append(_candidate(
                    f"{base}-chord", [f"{indefinite(root_name)} {root_name} {mode} chord played on {name}",
                                      f"{name} strikes a {mode} chord"],
                    "chord", src, prog, [(0.0, 2.0, 0, k, 90) for k in chord]
                    + [(2.2, 1.5, 0, k + 5 - 12 * (k + 5 > high), 85) for k in chord],
                    group=group, labels=("instrument",)))
            melody, t = [], 0.0
            pitch = root + steps[rng.randint(0, 4)]
            for _ in range(rng.randint(8, 14)):
                d = beat * rng.choice((0.5, 1.0, 1.0, 1.5, 2.0))
                melody.append((t, d * 0.92, 0, pitch, rng.randint(80, 110)))
                t += d
                pitch = min(max(root + steps[rng.randint(0, 7)] + 12 * rng.choice((0, 0, 0, -1)), low), high)
            out.append(_candidate(f"{base}-melody", [f"a short melody played on {name}",
                                                     (f"{name} playing a {'slow' if tempo < 100 else 'lively'} "
                                                      f"melody in {root_name} {mode}")],
                                  "melody", src, prog, melody, group=group, labels=("instrument",)))
    for program, captions in GM_EFFECTS.items():
        for variant, key in enumerate((60, 72)):
            out.append(Candidate(key=f"music/gm/p{program:03d}-fx{variant}", kind="music", captions=captions,
                                 label=captions[0], role="event",
                                 source=f"fluidsynth:FluidR3_GM.sf2:program {program}", licence=SF2_LICENCE,
                                 spec=("fluidsynth", SF2_PATH, ((0, 0, program),), ((0.0, 3.0, 0, key, 110),),
                                       RELEASE_SECONDS), labels=("synth-effect",)))
    return out


_BEATS = {  # name -> (grid of (step, drum key), steps per bar, BPM choices, steps per beat)
    "rock": ([(0, 36), (8, 36), (4, 38), (12, 38)] + [(s, 42) for s in range(0, 16, 2)], 16, (96, 120), 4),
    "disco": ([(s, 36) for s in (0, 4, 8, 12)] + [(4, 38), (12, 38)] + [(s, 46) for s in (2, 6, 10, 14)], 16,
              (112, 124), 4),
    "hip hop": ([(0, 36), (7, 36), (10, 36), (4, 38), (12, 38)] + [(s, 42) for s in range(0, 16, 2)], 16, (84, 94), 4),
    "bossa nova": ([(0, 36), (6, 36), (8, 36), (14, 36)] + [(s, 37) for s in (0, 6, 12)] +
                   [(s, 42) for s in range(0, 16, 2)], 16, (120, 140), 4),
    "waltz": ([(0, 36), (4, 38), (8, 38)] + [(s, 51) for s in (0, 4, 8)], 12, (84, 108), 4),
    "shuffle": ([(0, 36), (6, 36), (3, 38), (9, 38)] + [(s, 51) for s in (0, 2, 3, 5, 6, 8, 9, 11)], 12, (90, 110), 3),
}


def drum_candidates(seed: int) -> list[Candidate]:
    """Every named GM drum on every FluidR3 kit, and six groove patterns per kit at two tempos."""
    out = []
    for preset, kit in DRUM_KITS.items():
        prog = ((DRUM_CHANNEL, 128, preset),)
        src = f"fluidsynth:FluidR3_GM.sf2:drum kit {preset}"
        for drum_key, drum in GM_DRUMS.items():
            out.append(_candidate(f"music/drums/k{preset:03d}-d{drum_key}",
                                  [f"{drum} hit", f"a single {bare(drum)} hit from {kit}"], "drum hit", src, prog, [(0.0, 0.5, DRUM_CHANNEL, drum_key, 110)],
                                  group=f"music/drums/k{preset:03d}/{drum_key}", labels=("drums",)))
        for name, (pattern, steps, tempos, per_beat) in _BEATS.items():
            for tempo in tempos:
                step = 60.0 / tempo / per_beat
                bars = max(2, int(8.0 / (step * steps)))
                events = [((b * steps + s % steps) * step, step, DRUM_CHANNEL, k, 100 if s % 4 == 0 else 80)
                          for b in range(bars) for s, k in pattern]
                out.append(_candidate(f"music/drums/k{preset:03d}-{name.replace(' ', '')}-{tempo}",
                                      [f"a {name} drum beat at {tempo} BPM", f"{kit} playing a {name} groove"],
                                      "drum beat", src, prog, events, group=f"music/drums/k{preset:03d}/{name}",
                                      labels=("drums",)))
    return out


# ----------------------------------------------------------------------------------------------- music21

# corpus name -> (how many scores at most, caption phrase, composer credit, instrument choices (programs))
SCORE_SETS = {
    "bach": (433, "a Bach chorale", "J. S. Bach", ((19, "a church organ"), (48, "a string ensemble"),
                                                    (52, "a choir"), (0, "a piano"), (61, "a brass section"))),
    "palestrina": (150, "a Renaissance choral piece by Palestrina", "Palestrina",
                   ((52, "a choir"), (19, "a church organ"), (74, "recorders"))),
    "monteverdi": (97, "a Monteverdi madrigal", "Monteverdi", ((52, "a choir"), (48, "a string ensemble"))),
    "trecento": (103, "a medieval Italian song", "an anonymous trecento composer",
                 ((74, "recorders"), (46, "a harp"), (21, "an accordion"))),
    "ryansMammoth": (200, "a traditional fiddle tune", "traditional", ((110, "a fiddle"), (73, "a flute"),
                                                                   (78, "a tin whistle"), (21, "an accordion"))),
}
SCORE_SECONDS = 12.0           # rendered per score (one clip of <= 10.24 s is kept)
_DANCES = ("reel", "jig", "hornpipe", "strathspey", "march", "waltz", "polka", "schottische", "clog", "quickstep",
           "fling", "air")


def corpus_name(path: str) -> str:
    """A score's path inside music21's corpus ("bach/bwv66.6.mxl"), wherever music21 is installed, even under a
    folder that is itself called corpus/."""
    path = str(path).replace("\\", "/")
    for marker in ("music21/corpus/", "corpus/"):
        if marker in path:
            return path.rsplit(marker, 1)[-1]
    return path


def order_scores(paths: list[str], seed: int, install_independent: bool = True) -> list[str]:
    """Score files in the seeded order a set keeps them in: by a hash of each path inside music21's corpus
    (the part after "corpus/"), or, for recipe versions 1-4, of the absolute path."""
    name_of = corpus_name if install_independent else (lambda p: p)
    return sorted(sorted(paths), key=lambda p: hashlib.sha1(f"{seed}:{name_of(p)}".encode()).hexdigest())


def score_candidates(seed: int, cache: Path, *, max_scores: int | None, progress: bool,
                     workers: int = 1, install_independent: bool = True) -> list[Candidate]:
    """The first <= 10.24 s of music21 corpus scores, each on one seed-chosen instrument.

    A set with more scores than it keeps is ordered by a seeded hash of each score's path inside the corpus
    (`install_independent`, recipe version 5); versions 1-4 hashed the absolute path, so they pick the same
    scores only where music21 is installed at the same place as when they were built.

    Scores are parsed once into note events (cached as JSON under `cache`): parsing is the slow part.
    """
    try:
        from music21 import corpus
    except ImportError:
        log.warning("music21 is not installed (pip install 'tta[recipes]'): no score renders")
        return []
    from tqdm.auto import tqdm

    paths = []
    for name, (limit, *_rest) in SCORE_SETS.items():
        found = order_scores([str(p) for p in corpus.getComposer(name)], seed, install_independent)
        limit = limit if max_scores is None else min(limit, max_scores)
        paths += [(name, p) for p in found[:limit]]
    cache.mkdir(parents=True, exist_ok=True)
    jobs = [(path, cache) for _, path in paths]
    if workers > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(workers) as pool:
            infos = list(tqdm(pool.imap(_score_events_job, jobs), total=len(jobs), desc="music21 scores",
                              disable=not progress, unit="score"))
    else:
        infos = [_score_events(*job) for job in tqdm(jobs, desc="music21 scores", disable=not progress,
                                                     unit="score")]
    out = []
    for (name, path), info in zip(paths, infos):
        if info is None:
            continue
        limit, phrase, composer, instruments = SCORE_SETS[name]
        rel = corpus_name(path)
        rng = random.Random(f"{seed}:{rel}")
        program, inst = rng.choice(instruments)
        tempo = info["tempo"] or rng.choice((66, 76, 88, 100))
        scale = info["tempo_basis"] / tempo if info["tempo"] else 60.0 / tempo
        events = [(s * scale, max(d * scale * 0.95, 0.05), 0, k, 90) for s, d, k in info["notes"]
                  if s * scale < SCORE_SECONDS]
        if not events:
            continue
        title = f" ({info['title']})" if info["title"] else ""
        if name == "ryansMammoth":   # Ryan's Mammoth Collection (1883): the file name ends with the dance
            dance = next((d for d in _DANCES if Path(path).stem.lower().endswith(d)), None)
            phrase = f"a traditional {dance} fiddle tune" if dance else phrase
        captions = (f"{phrase} played on {inst}", f"{phrase} in {info['key']}, played on {inst} at {tempo} BPM",
                    f"{inst} playing a piece by {composer}{title}")
        out.append(_candidate(f"music/score/{rel}", captions, "score", f"music21:{rel}", ((0, 0, program),),
                              events, labels=("score", name), licence=SCORE_LICENCE))
    return out


def _score_events_job(job: tuple[str, Path]) -> dict | None:
    return _score_events(*job)


def _score_events(path: str, cache: Path) -> dict | None:
    """{"notes": [(start_quarters, dur_quarters, key)], "key", "title", "tempo", "tempo_basis"} for a score."""
    digest = hashlib.sha1(path.encode()).hexdigest()[:16]
    cached = cache / f"{digest}.json"
    if cached.is_file():
        try:
            data = json.loads(cached.read_text())
            return data or None
        except (ValueError, OSError):   # a cache file cut short (an older, non-atomic write): parse again
            log.debug("%s: unreadable cache entry %s; parsing the score again", path, cached)
    from music21 import converter
    from music21 import tempo as m21tempo

    try:
        score = converter.parse(path, storePickle=False)   # tta keeps its own cache; no pickles left in TMPDIR
        if hasattr(score, "scores"):  # an opus of many tunes: take the first
            score = score.scores[0] if len(score.scores) else score
        flat = score.flatten()
        notes = []
        for n in flat.notes:
            for p in getattr(n, "pitches", ()):
                if 0 < p.midi < 128 and float(n.quarterLength) > 0:
                    notes.append((float(n.offset), float(n.quarterLength), int(p.midi)))
                if float(n.offset) > 64:
                    break
        marks = list(flat.getElementsByClass(m21tempo.MetronomeMark))
        bpm = float(marks[0].number) if marks and marks[0].number else None
        key = score.analyze("key")
        data = {"notes": sorted(notes), "key": f"{key.tonic.name.replace('-', ' flat').replace('#', ' sharp')} "
                                                f"{key.mode}",
                "title": (score.metadata.title or "") if score.metadata else "",
                "tempo": round(bpm) if bpm else None, "tempo_basis": 60.0}
    except Exception as e:  # noqa: BLE001 -- music21 raises many types; an unreadable score is skipped
        log.debug("music21 could not parse %s: %s", path, e)
        data = {}
    if data and not data["notes"]:
        data = {}
    atomic_write_text(cached, json.dumps(data))   # several workers share the cache; a kill leaves no half file
    return data or None
