"""FluidSynth, espeak-ng and flite renders of the starter recipe, at tiny size.

Each test runs only where its program/library exists (Debian libfluidsynth3 + fluid-soundfont-gm + PyPI
pyfluidsynth; espeak-ng; flite) and is skipped with the missing piece named otherwise.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from tta.data.recipes import music, speech
from tta.data.recipes.clips import SAMPLE_RATE, Candidate, is_silent, segment

_FLUID = music.fluidsynth_status()
needs_fluidsynth = pytest.mark.skipif(_FLUID is not None, reason=f"FluidSynth rendering unavailable: {_FLUID}")
_MUSIC21 = importlib.util.find_spec("music21") is not None
needs_music21 = pytest.mark.skipif(not _MUSIC21, reason="music21 is not installed (pip install 'tta[recipes]')")
_SPEECH = speech.speech_status()
needs_espeak = pytest.mark.skipif(_SPEECH["espeak-ng"] is not None, reason=str(_SPEECH["espeak-ng"]))
needs_flite = pytest.mark.skipif(_SPEECH["flite"] is not None, reason=str(_SPEECH["flite"]))


def _candidate(spec, key="t") -> Candidate:
    return Candidate(key=key, kind="music", captions=("x",), label="x", role="music", source="t", licence="t",
                     spec=spec)


@needs_fluidsynth
def test_gm_note_renders_and_out_of_range_note_is_dropped():
    piano = music.render_fluidsynth(music.SF2_PATH, ((0, 0, 0),), ((0.0, 0.5, 0, 60, 100),), 0.3)
    assert piano.dtype == np.float32 and piano.ndim == 1
    assert abs(piano.size - 0.8 * SAMPLE_RATE) < 200 and not is_silent(piano)
    assert np.abs(piano[-10:]).max() < 1e-3                                  # release tail faded out
    # FluidR3's Contrabass (program 43) has no sample at this key: the render is silent and never kept
    silent = music.render_fluidsynth(music.SF2_PATH, ((0, 0, 43),), ((0.0, 0.5, 0, 100, 100),), 0.3)
    assert is_silent(silent)
    assert segment(silent, _candidate(("fluidsynth",))) == []


@needs_fluidsynth
def test_gm_tables_stay_in_playable_range_and_render_identically():
    for name, low, high in music.GM_PROGRAMS:
        assert 0 <= low < high <= 127, name
    cands = music.instrument_candidates(0)
    assert len({c.key for c in cands}) == len(cands)
    assert any(c.captions[0].startswith("a grand piano playing an ascending") for c in cands)
    drums = music.drum_candidates(0)
    assert any(c.captions[0] == "a snare drum hit" for c in drums)
    picks = [cands[0], drums[0], cands[-1]]
    first = [music.render_fluidsynth(*c.spec[1:]) for c in picks]
    again = [music.render_fluidsynth(*c.spec[1:]) for c in picks]
    for a, b in zip(first, again):
        assert not is_silent(a) and np.allclose(a, b, atol=2e-3)


@needs_fluidsynth
@needs_music21
def test_music_source_builds_a_tiny_corpus(tmp_path):
    from tta.data.manifest import read_manifest
    from tta.data.recipes.starter import StarterOptions, build_starter

    options = StarterOptions(sources=("music",), max_clips=4, max_scores=1)
    build_starter(tmp_path / "a", options, progress=False)
    build_starter(tmp_path / "b", options, progress=False)
    rows = read_manifest(tmp_path / "a" / "manifest.jsonl")
    assert len(rows) == 4 and all(r.id.startswith("music-") and r.sample_rate == 16_000 for r in rows)
    assert (tmp_path / "a" / "manifest.jsonl").read_bytes() == (tmp_path / "b" / "manifest.jsonl").read_bytes()


@needs_espeak
def test_espeak_renders_a_language_variant():
    wav = speech.render_speech(("espeak", "fr+f3", 160, 50, "Bonjour."))
    assert wav.dtype == np.float32 and 0.2 * SAMPLE_RATE < wav.size < 3 * SAMPLE_RATE and not is_silent(wav)
    cands = speech.espeak_candidates(0, per_sentence=2)
    fr = [c for c in cands if c.spec[1].startswith("fr+")]
    assert fr and all("French" in c.captions[0] for c in fr)
    assert len({c.key for c in cands}) == len(cands)


@needs_flite
def test_flite_renders_a_voice():
    wav = speech.render_speech(("flite", "slt", "Good morning."))
    assert 0.2 * SAMPLE_RATE < wav.size < 3 * SAMPLE_RATE and not is_silent(wav)


@needs_espeak
def test_cli_builds_a_tiny_speech_corpus(tmp_path, capsys):
    from tta.cli import main
    from tta.data.manifest import read_manifest

    out = tmp_path / "corpus"
    code = main(["-q", "data", "recipe", "starter", "--out", str(out), "--sources", "speech", "--max-clips", "3"])
    assert code == 0
    rows = read_manifest(out / "manifest.jsonl")
    assert len(rows) == 3 and all(r.id.startswith("speech-") for r in rows)
    assert any(("speaking" in c or "says" in c) for r in rows for c in r.captions)
    assert "3 clips" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} >= {"manifest.jsonl", "ATTRIBUTION.md", "recipe.json", "audio"}
