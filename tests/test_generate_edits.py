"""`tta generate --prompts FILE --edit KIND`: each row edits its own input (its `input` field), as a one-input run
of the row's seed writes it; a bad row is reported and left out, the others are written; --resume checks each
row's input by its sha256."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
import soundfile as sf

from tests import signals
from tests.test_generate import run
from tests.test_ldm_fixtures import ROOT, one_thread, tiny_pipeline  # noqa: F401 (autouse)
from tta.audio import save_audio


def clips(folder) -> None:
    """Three inputs of other lengths and formats under folder/clips/."""
    (folder / "clips").mkdir()
    save_audio(folder / "clips" / "a.wav", signals.chirp(200, 2000, 0.3), 16_000)
    save_audio(folder / "clips" / "b.wav", signals.tone(440, 0.4), 16_000)
    sf.write(folder / "clips" / "c.flac", np.stack([signals.noise(0.35, 22_050), signals.tone(300, 0.35, 22_050)], 1),
             22_050)


ROWS = ("id,prompt,input\n"
        "bird,a bird,clips/a.wav\n"
        "bell,\"a bell, ringing\",clips/b.wav\n"
        "rain,rain,clips/c.flac\n")


def base(tmp_path, *extra) -> list:
    return ["--model", tiny_pipeline(), "--steps", 2, "--seed", 5, *extra]


def wavs(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.wav"))}


def record(folder) -> dict:
    return json.loads((folder / "generation.json").read_text())


@pytest.mark.parametrize("edit", [["init-audio", "--strength", 0.6], ["inpaint", "--mask", "0.1:0.2"],
                                  ["super-resolution", "--cutoff", 3000]], ids=lambda e: e[0])
def test_an_edit_batch_writes_what_one_input_runs_of_each_rows_seed_write(tmp_path, capsys, edit):
    clips(tmp_path)
    (tmp_path / "rows.csv").write_text(ROWS)
    code, out, err = run(capsys, "--prompts", tmp_path / "rows.csv", "--edit", *edit, *base(tmp_path),
                         "--out-dir", tmp_path / "out")
    assert code == 0, err
    assert out.split() == [str(tmp_path / "out" / f"{n}.wav") for n in ("bird", "bell", "rain")]
    flag = "--" + edit[0]
    for i, (name, prompt, clip) in enumerate((("bird", "a bird", "a.wav"), ("bell", "a bell, ringing", "b.wav"),
                                              ("rain", "rain", "c.flac"))):
        one = tmp_path / f"one_{name}.wav"
        code, _, err = run(capsys, prompt, flag, tmp_path / "clips" / clip, *edit[1:], *base(tmp_path)[:-1], 5 + i,
                           "-o", one)
        assert code == 0, err
        assert (tmp_path / "out" / f"{name}.wav").read_bytes() == one.read_bytes(), name
        single = json.loads((tmp_path / f"one_{name}.generation.json").read_text())
        o = record(tmp_path / "out")["outputs"][i]
        # the record's edit and the output's make the one-input run's edit (the input as the row writes it)
        assert {**record(tmp_path / "out")["edit"], **o["edit"]} == {**single["edit"], "input": f"clips/{clip}"}
        assert o["edit"]["input_sha256"] == hashlib.sha256((tmp_path / "clips" / clip).read_bytes()).hexdigest()
        assert o["seeds"] == single["outputs"][0]["seeds"] == [5 + i]
    assert record(tmp_path / "out")["edit"]["input"] is None and record(tmp_path / "out")["complete"]


def test_a_bad_row_is_reported_and_the_others_are_written(tmp_path, capsys):
    clips(tmp_path)
    (tmp_path / "clips" / "text.wav").write_text("not audio")
    save_audio(tmp_path / "clips" / "short.wav", signals.tone(440, 0.15), 16_000)
    (tmp_path / "rows.jsonl").write_text(
        '{"id": "bird", "prompt": "a bird", "input": "clips/a.wav"}\n'
        '{"id": "none", "prompt": "no input"}\n'
        '{"id": "missing", "prompt": "x", "input": "clips/missing.wav"}\n'
        '{"id": "text", "prompt": "x", "input": "clips/text.wav"}\n'
        '{"id": "late", "prompt": "x", "input": "clips/a.wav"}\n'
        '{"id": "short", "prompt": "x", "input": "clips/short.wav"}\n'
        '{"id": "self", "prompt": "x", "input": "out/bird.wav"}\n')
    rows = tmp_path / "rows.jsonl"
    code, out, err = run(capsys, "--prompts", rows, "--edit", "inpaint", "--mask", "0.1:0.2", *base(tmp_path),
                         "--out-dir", tmp_path / "out")
    assert code == 1
    lines = err.splitlines()
    assert lines[0] == f"tta: bad row: {rows}:2: no input field (--edit edits each row's input audio); generate rows " \
                       "of text alone in a run without --edit"
    assert lines[1].startswith(f"tta: bad row: {rows}:3: unreadable input audio: ") and "missing.wav" in lines[1]
    assert lines[2].startswith(f"tta: bad row: {rows}:4: unreadable input audio: ") and "text.wav" in lines[2]
    assert lines[3].startswith(f"tta: bad row: {rows}:6: --mask end 0.2 s is past the end of "), lines[3]
    assert lines[4] == f"tta: bad row: {rows}:7: out/bird.wav: is the output of another row ({tmp_path}/out/bird.wav); " \
                       "write the outputs to another folder"
    assert lines[5] == f"tta: error: 5 of 7 rows of {rows} not generated (bad input, reported above as 'bad row'); " \
                       "fix them and run the same command with --resume to generate only those rows"
    assert len(lines) == 6
    assert out.split() == [str(tmp_path / "out" / n) for n in ("bird.wav", "late.wav")]
    assert sorted(wavs(tmp_path / "out")) == ["bird.wav", "late.wav"]   # nothing of the bad rows
    r = record(tmp_path / "out")
    assert [o["id"] for o in r["outputs"]] == ["bird", "late"] and [o["seeds"] for o in r["outputs"]] == [[5], [9]]
    assert not r["complete"] and r["planned_outputs"] == 7


def test_the_bar_counts_the_outputs_written_and_shows_bad_rows_beside_them(tmp_path, capsys):
    """The bar counted a bad row as done ("4/4" of a batch that wrote 2), where a plain batch's counts outputs."""
    from tta.cli import main

    clips(tmp_path)
    rows = tmp_path / "rows.csv"
    rows.write_text(ROWS.replace("clips/b.wav", "clips/missing.wav") + "none,no input,\n")
    args = ["generate", "--prompts", str(rows), "--edit", "init-audio", *map(str, base(tmp_path)), "--out-dir",
            str(tmp_path / "out")]
    capsys.readouterr()
    assert main(args) == 1
    bars = [b for b in re.split(r"[\r\n]+", capsys.readouterr().err) if b.startswith("tta generate:")]
    assert "2/4" in bars[-1] and "2 bad rows" in bars[-1] and not any("3/4" in b or "4/4" in b for b in bars), bars
    (tmp_path / "clips" / "b.wav").rename(tmp_path / "clips" / "missing.wav")
    assert main([*args, "--resume"]) == 1   # the row fixed since is generated, the one without input is still bad
    bars = [b for b in re.split(r"[\r\n]+", capsys.readouterr().err) if b.startswith("tta generate:")]
    assert "3/4" in bars[-1] and "2 kept, 1 bad row" in bars[-1] and not any("4/4" in b for b in bars), bars


def test_a_batch_with_no_usable_row_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    from tta.pipeline import TTAPipeline

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(TTAPipeline, "from_pretrained", no_load)
    (tmp_path / "rows.csv").write_text("prompt,input\na,missing.wav\n")
    code, _, err = run(capsys, "--prompts", tmp_path / "rows.csv", "--edit", "init-audio", *base(tmp_path),
                       "--out-dir", tmp_path / "out")
    assert code == 1 and err.splitlines()[-1] == f"tta: error: {tmp_path / 'rows.csv'}: no row has a usable input (1 " \
                                                 "bad row, reported above); nothing generated"
    (tmp_path / "rows.txt").write_text("a\nb\n")
    code, _, err = run(capsys, "--prompts", tmp_path / "rows.txt", "--edit", "init-audio", *base(tmp_path),
                       "--out-dir", tmp_path / "out")
    assert code == 1 and err.splitlines() == [f"tta: error: {tmp_path / 'rows.txt'}: no row has an input field (--edit "
                                              "edits each row's input audio: a path relative to the prompts file's "
                                              "folder); add an input column"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, message", [
    (["init-audio", "a prompt"], "--edit reads each row's input audio from the input field of a --prompts CSV/JSONL"),
    (["init-audio", "--batch-size", 2], "--batch-size 2: --edit generates its rows one at a time"),
    (["init-audio", "--init-audio", "x.wav"], "--edit edits each --prompts row's input; give it without --init-audio"),
    (["inpaint", "--mask", "0.1:0.2", "--strength", 0.5], "--strength applies to --init-audio only"),
    (["super-resolution"], "--super-resolution needs --cutoff HZ"),
    (["init-audio", "--seconds", 1], "--seconds does not apply to edits"),
])
def test_flags_an_edit_batch_excludes_are_bad_usage(tmp_path, capsys, extra, message):
    """The batch's settings are checked as the one-input flags' are."""
    (tmp_path / "rows.csv").write_text("prompt,input\na,a.wav\n")
    code, _, err = run(capsys, "--prompts", tmp_path / "rows.csv", "--edit", *extra, *base(tmp_path), "--out-dir",
                       tmp_path / "o")
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_an_input_column_without_edit_is_named_in_the_warning(tmp_path, capsys, caplog):
    from tta.generate import read_prompts_file

    (tmp_path / "rows.csv").write_text("prompt,input,seed\na,a.wav,3\n")
    assert read_prompts_file(tmp_path / "rows.csv") == [(None, "a", None)]
    assert "fields input, seed; a row gives a prompt" in caplog.text and "--edit KIND" in caplog.text
    caplog.clear()
    read_prompts_file(tmp_path / "rows.csv", editing=True)
    assert "field seed;" in caplog.text and "--edit" not in caplog.text
    (tmp_path / "rows.jsonl").write_text('{"prompt": "a", "input": 3}\n')
    from tta.data.prompts import PromptFileError

    with pytest.raises(PromptFileError, match=r"rows.jsonl:1: field 'input' is 3; expected a string"):
        read_prompts_file(tmp_path / "rows.jsonl")


def test_a_resume_refuses_a_row_whose_input_changed_and_generates_a_row_fixed_since(tmp_path, capsys):
    clips(tmp_path)
    rows = tmp_path / "rows.csv"
    rows.write_text(ROWS + "late,later,clips/d.wav\n")   # d.wav is missing at first
    argv = ["--prompts", rows, "--edit", "init-audio", *base(tmp_path), "--out-dir", tmp_path / "out"]
    code, _, err = run(capsys, *argv)
    assert code == 1 and f"tta: bad row: {rows}:5: unreadable input audio" in err
    first = wavs(tmp_path / "out")
    assert sorted(first) == ["bell.wav", "bird.wav", "rain.wav"] and not record(tmp_path / "out")["complete"]
    save_audio(tmp_path / "clips" / "d.wav", signals.clicks(0.3), 16_000)
    code, out, err = run(capsys, *argv, "--resume")
    assert code == 0, err
    after = wavs(tmp_path / "out")
    assert {k: after[k] for k in first} == first and record(tmp_path / "out")["complete"]
    whole = tmp_path / "whole"
    assert run(capsys, *argv[:-1], whole)[0] == 0 and wavs(whole) == after   # as one run writes them
    assert [o["seeds"] for o in record(tmp_path / "out")["outputs"]] == [[5], [6], [7], [8]]
    # an input whose bytes changed since its output was written: refused, naming the row; nothing is touched
    save_audio(tmp_path / "clips" / "b.wav", signals.tone(660, 0.4), 16_000)
    before = (tmp_path / "out" / "generation.json").read_bytes()
    code, _, err = run(capsys, *argv, "--resume")
    assert code == 1 and err.count("\n") == 1, err
    assert "cannot resume: bell.wav was generated from 'clips/b.wav' (sha256 " in err
    assert f"and {rows}:3 gives 'clips/b.wav', which holds other bytes now" in err
    assert wavs(tmp_path / "out") == after and (tmp_path / "out" / "generation.json").read_bytes() == before
    (tmp_path / "clips" / "b.wav").unlink()   # one that cannot be read now
    code, _, err = run(capsys, *argv, "--resume")
    assert code == 1 and f"and {rows}:3's input cannot be read now" in err.splitlines()[-1], err


def test_an_input_changed_after_the_check_is_a_bad_row_at_its_turn(tmp_path, capsys, monkeypatch):
    """Each input is decoded again at its turn: one rewritten while an earlier row ran is not edited from other
    bytes than its record's sha256 names."""
    from tta.pipeline import TTAPipeline

    real = TTAPipeline.audio_to_audio

    def then_rewrite(self, wav, prompts, **kwargs):   # the real edit, then another program rewrites b.wav
        out = real(self, wav, prompts, **kwargs)
        save_audio(tmp_path / "clips" / "b.wav", signals.tone(660, 0.4), 16_000)
        return out

    monkeypatch.setattr(TTAPipeline, "audio_to_audio", then_rewrite)
    clips(tmp_path)
    rows = tmp_path / "rows.csv"
    rows.write_text(ROWS)
    code, out, err = run(capsys, "--prompts", rows, "--edit", "init-audio", *base(tmp_path), "--out-dir",
                         tmp_path / "out")
    assert code == 1 and err.splitlines()[0] == f"tta: bad row: {rows}:3: clips/b.wav: changed since the batch " \
                                                "checked it (its sha256 differs); run the batch again with --resume " \
                                                "to generate this row", err
    assert sorted(wavs(tmp_path / "out")) == ["bird.wav", "rain.wav"] and "1 of 3 rows" in err.splitlines()[1]


def test_help_and_readme_describe_an_edit_batch(capsys):
    from tta.cli import main

    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--edit KIND" in text and "input field names (a path relative to FILE's folder)" in text
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "--edit inpaint" in readme and "`input` field" in readme


def test_a_bad_row_is_said_through_the_commands_printer_once_per_row(tmp_path, capsys):
    """RowEdits printed its line itself (no print in library code): the command passes the printer, and a row's
    other takes are not said again."""
    from tta.generate import Job
    from tta.generate_edits import RowEdits

    said: list[str] = []
    jobs = [Job("a", "a bird", tmp_path / f"a_{k}.wav", "gone.wav", "rows.csv:2", take=k) for k in (1, 2)]
    rows = RowEdits(said.append, jobs=jobs, prompts_file=tmp_path / "rows.csv")
    for i, job in enumerate(jobs):
        rows.report(i, job, "unreadable input audio: gone.wav")
    assert said == ["tta: bad row: rows.csv:2: unreadable input audio: gone.wav"]
    assert rows.bad_rows() == 1 and sorted(rows.bad) == [0, 1]
    assert capsys.readouterr() == ("", "")
