"""`tta generate --format flac|ogg`: a batch's files in another format than wav, the same samples (FLAC), the
format recorded, and `tta eval` pairing them by name as it pairs wav files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf

from tests.test_generate import run
from tests.test_ldm_fixtures import one_thread, tiny_pipeline  # noqa: F401 (autouse)
from tta.cli import main


def test_a_flac_batch_holds_the_wav_batchs_samples_and_tta_eval_pairs_it_by_name(tmp_path, capsys, caplog):
    """A row's file field names its output without its audio suffix (rain.flac of a wav batch is rain.wav; one
    warning names the first such row and how many there are); --format flac writes the same 16-bit samples."""
    prompts = tmp_path / "p.csv"
    prompts.write_text("file,caption\ndoor.wav,a door slams\nrain.flac,rain on a roof\nwind.ogg,wind\n")
    args = ["--prompts", prompts, "--model", tiny_pipeline(), "--seconds", 0.2, "--steps", 2, "--seed", 3,
            "--batch-size", 2]
    with caplog.at_level("WARNING", logger="tta.generate"):
        assert run(capsys, *args, "--out-dir", tmp_path / "wav")[0] == 0
    assert f"{prompts}:3: file field 'rain.flac' is written as rain.wav (and 1 more row with another audio " \
           "suffix), in the batch's format (wav, the default); tta eval" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="tta.generate"):
        code, out, err = run(capsys, *args, "--out-dir", tmp_path / "flac", "--format", "flac")
    assert code == 0, err
    assert f"{prompts}:2: file field 'door.wav' is written as door.flac (and 1 more row with another audio " \
           "suffix), in the batch's format (--format flac); tta eval" in caplog.text
    names = ["door", "rain", "wind"]
    assert out.split() == [str(tmp_path / "flac" / f"{n}.flac") for n in names]
    assert sorted(p.name for p in (tmp_path / "flac").iterdir()) == ["door.flac", "generation.json", "rain.flac",
                                                                      "wind.flac"]
    for name in names:
        flac, wav = tmp_path / "flac" / f"{name}.flac", tmp_path / "wav" / f"{name}.wav"
        assert sf.info(str(flac)).format == "FLAC" and sf.info(str(flac)).subtype == "PCM_16"
        np.testing.assert_array_equal(sf.read(flac, dtype="int16")[0], sf.read(wav, dtype="int16")[0])
        assert flac.stat().st_size < wav.stat().st_size
    record = json.loads((tmp_path / "flac" / "generation.json").read_text())
    assert record["settings"]["format"] == "flac"
    assert json.loads((tmp_path / "wav" / "generation.json").read_text())["settings"]["format"] == "wav"
    import hashlib

    assert [(o["file"], o["sha256"]) for o in record["outputs"]] == [
        (f"{n}.flac", hashlib.sha256((tmp_path / "flac" / f"{n}.flac").read_bytes()).hexdigest()) for n in names]
    # tta eval pairs the flac files with the prompts file's rows by name (rain.flac's row with rain.flac,
    # door.wav's with door.flac), and their FAD against the wav batch is that of identical audio
    assert main(["-q", "eval", "--cache-dir", str(tmp_path / "cache"), "--generated", str(tmp_path / "flac"),
                 "--reference", str(tmp_path / "wav"), "--prompts", str(prompts), "--out", str(tmp_path / "e")]) == 0
    with open(tmp_path / "e" / "items.csv", newline="") as f:
        items = {row["name"]: row["prompt"] for row in csv.DictReader(f)}
    assert items == {"door": "a door slams", "rain": "rain on a roof", "wind": "wind"}
    assert abs(json.loads((tmp_path / "e" / "eval.json").read_text())["metrics"]["fad"]) < 1e-6


def test_an_ogg_batch_into_a_folder_of_wavs_is_warned_about_and_writes_vorbis(tmp_path, capsys, caplog):
    args = ["a", "b", "--model", tiny_pipeline(), "--seconds", 0.2, "--steps", 2, "--out-dir", tmp_path]
    assert run(capsys, *args)[0] == 0
    with caplog.at_level("WARNING", logger="tta.generate"):
        code, out, err = run(capsys, *args, "--format", "ogg")
    assert code == 0, err
    assert out.split() == [str(tmp_path / "000_a.ogg"), str(tmp_path / "001_b.ogg")]
    assert "already holds 2 audio files this run does not write (e.g. 000_a.wav)" in caplog.text
    assert sf.info(str(tmp_path / "000_a.ogg")).subtype == "VORBIS"
    assert sf.info(str(tmp_path / "000_a.ogg")).frames == sf.info(str(tmp_path / "000_a.wav")).frames
    assert json.loads((tmp_path / "generation.json").read_text())["settings"]["format"] == "ogg"


def test_a_format_that_disagrees_with_o_files_suffix_is_bad_usage(tmp_path, capsys):
    model = ["--model", tiny_pipeline(), "--seconds", 0.2, "--steps", 2]
    code, _, err = run(capsys, "a dog", *model, "-o", tmp_path / "x.wav", "--format", "flac")
    assert code == 2 and err.strip().splitlines() == [
        f"tta: error: -o {tmp_path / 'x.wav'} and --format flac disagree: with -o FILE the file's suffix is the "
        "format; leave --format out, or write to a .flac file"]
    assert list(tmp_path.iterdir()) == []
    code, out, err = run(capsys, "a dog", *model, "-o", tmp_path / "x.FLAC", "--format", "flac")
    assert code == 0 and out.split() == [str(tmp_path / "x.FLAC")], err
    assert sf.info(str(tmp_path / "x.FLAC")).format == "FLAC"
    assert json.loads((tmp_path / "x.generation.json").read_text())["settings"]["format"] == "flac"
    with pytest.raises(SystemExit) as e:   # argparse: usage + one line, exit status 2
        run(capsys, "a dog", *model, "--out-dir", tmp_path / "o", "--format", "mp3")
    assert e.value.code == 2 and "--format: invalid choice: 'mp3'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_formats_tta_generate_takes_are_save_audios(tmp_path, capsys, monkeypatch):
    """-o FILE's suffixes, --format's names and the formats a --resume reads from a record are save_audio's
    (tta.audio.SAVE_FORMATS), not lists of their own (three lists and a help's choices agreed by hand): a format
    save_audio gains is taken by all of them."""
    import tta.audio

    model = ["--model", tiny_pipeline(), "--seconds", 0.2, "--steps", 2]
    monkeypatch.setattr(tta.audio, "SAVE_FORMATS", {**tta.audio.SAVE_FORMATS, ".w64": "W64"})
    code, out, err = run(capsys, "a dog", *model, "-o", tmp_path / "x.w64")
    assert code == 0 and out.split() == [str(tmp_path / "x.w64")], err
    assert sf.info(str(tmp_path / "x.w64")).format == "W64"
    batch = tmp_path / "b"
    code, out, err = run(capsys, "a", "b", *model, "--out-dir", batch, "--format", "w64")
    assert code == 0 and out.split() == [str(batch / "000_a.w64"), str(batch / "001_b.w64")], err
    before = {p.name: p.read_bytes() for p in batch.iterdir()}
    code, out, err = run(capsys, "a", "b", "c", *model, "--out-dir", batch, "--resume")
    assert code == 0 and out.split()[-1] == str(batch / "002_c.w64"), err
    assert json.loads((batch / "generation.json").read_text())["settings"]["format"] == "w64"
    assert all((batch / name).read_bytes() == data for name, data in before.items() if name != "generation.json")
    code, _, err = run(capsys, "a dog", *model, "-o", tmp_path / "x.mp3")
    assert code == 1 and err.strip() == f"tta: error: {tmp_path / 'x.mp3'}: output must end in .wav, .flac, .ogg or .w64"
    monkeypatch.undo()
    with pytest.raises(SystemExit) as e:
        run(capsys, "a", *model, "--out-dir", tmp_path / "o", "--format", "w64")
    assert e.value.code == 2 and "--format: invalid choice: 'w64' (choose from wav, flac or ogg)" in \
        capsys.readouterr().err
    from tta.cli import build_parser

    generate = next(a for a in build_parser()._actions if a.dest == "command").choices["generate"]
    help_text = next(a for a in generate._actions if a.dest == "format").help
    assert all(suffix[1:] in help_text for suffix in tta.audio.SAVE_FORMATS)   # the help describes each


def test_one_predicate_says_which_format_names_save_audio_writes(monkeypatch):
    """--format's check (tta.cli) and --resume's reading of a record's settings.format (tta.generate_resume)
    each tested f".{name}" in SAVE_FORMATS: one predicate beside the list now, which follows it."""
    import tta.audio
    from tta.audio import is_save_format

    assert [is_save_format(x) for x in ("wav", "flac", "ogg")] == [True] * 3
    assert not any(is_save_format(x) for x in (".flac", "FLAC", "mp3", "", None, 3, ["flac"]))
    monkeypatch.setattr(tta.audio, "SAVE_FORMATS", {**tta.audio.SAVE_FORMATS, ".w64": "W64"})
    assert is_save_format("w64")


def test_a_refused_run_prints_its_error_alone_not_the_suffix_warning_first(tmp_path, capsys, caplog):
    """The warning of rows whose file field ends in another suffix than the batch's format came while the jobs
    were planned, before the refusals that follow (here --resume of a wav batch with --format flac): a refused
    run printed it and then its error. It comes once the run is sure to run, as the out-dir's other audio's."""
    prompts = tmp_path / "p.csv"
    prompts.write_text("file,caption\ndoor.wav,a door slams\nrain.wav,rain on a roof\n")
    args = ["--prompts", prompts, "--model", tiny_pipeline(), "--seconds", 0.2, "--steps", 2, "--out-dir",
            tmp_path / "b"]
    assert run(capsys, *args)[0] == 0
    with caplog.at_level("WARNING", logger="tta.generate"):
        code, out, err = run(capsys, *args, "--format", "flac", "--resume")
    assert code == 1 and out == "" and caplog.records == []
    assert err.strip().splitlines() == [
        f"tta: error: {tmp_path / 'b' / 'generation.json'}: cannot resume: the earlier run wrote wav files and this "
        "one writes flac (--format flac); run it with --format wav, or without --format (--resume continues in the "
        "recorded format), or write the flac files to a new --out-dir"]
    prompts.write_text("file,caption\ndoor.wav,a door slams\nrain.wav,rain on a roof\ndoor.flac,a door\n")
    with caplog.at_level("WARNING", logger="tta.generate"):   # refused once the rows are named
        code, _, err = run(capsys, *args, "--format", "flac")
    assert code == 1 and caplog.records == [] and len(err.strip().splitlines()) == 1
    assert "output name 'door' (a row's file field, as its base name, or its id) appears twice" in err


def test_the_suffix_warning_says_where_the_batchs_format_came_from(tmp_path, capsys, caplog):
    """It said "(--format wav)" of a run given no --format: the default's, or a --resume's read from the record."""
    prompts = tmp_path / "p.csv"
    prompts.write_text("file,caption\ndoor.wav,a door slams\n")
    args = ["--prompts", prompts, "--model", tiny_pipeline(), "--seconds", 0.2, "--steps", 2, "--out-dir",
            tmp_path / "b"]
    with caplog.at_level("WARNING", logger="tta.generate"):
        assert run(capsys, *args, "--format", "ogg")[0] == 0
    assert "'door.wav' is written as door.ogg, in the batch's format (--format ogg); tta eval" in caplog.text
    prompts.write_text("file,caption\ndoor.wav,a door slams\nrain.wav,rain\n")
    caplog.clear()
    with caplog.at_level("WARNING", logger="tta.generate"):
        code, out, err = run(capsys, *args, "--resume")
    assert code == 0 and out.split() == [str(tmp_path / "b" / "door.ogg"), str(tmp_path / "b" / "rain.ogg")], err
    assert "'door.wav' is written as door.ogg (and 1 more row with another audio suffix), in the batch's format " \
           "(ogg, the earlier run's, which --resume continues in); tta eval" in caplog.text


def test_the_help_and_the_readme_say_format_is_any_batchs_not_wav_only_or_out_dirs_only(capsys):
    """`tta --help` said generate turns prompts "into wav files", the README's synopsis nested --format in
    --out-dir (it also applies to the default out-dir, and to -o FILE whose suffix agrees), and --prompts' help
    named an id's file as a .wav only."""
    from pathlib import Path

    import tta.audio

    with pytest.raises(SystemExit):
        main(["--help"])
    assert "generate turn prompts into audio files (wav, flac or ogg: -o FILE's suffix or --format)" in \
        " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "the format of a batch's files (in --out-dir or the current folder): wav" in text
    assert "'clotho/a_dog' -> clotho%2Fa_dog.wav, or .flac with --format flac)" in text
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    names = "|".join(suffix[1:] for suffix in tta.audio.SAVE_FORMATS)
    assert f"tta generate PROMPT... [-o FILE | --out-dir DIR] [--format {names}] [--prompts FILE]" in readme
