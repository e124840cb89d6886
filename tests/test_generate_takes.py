"""`tta generate --takes N`: N files of each prompt, exactly the run with each prompt written N times in a row
(row r takes seed SEED + r), named, recorded and resumed as that run's rows are."""

from __future__ import annotations

import json

import pytest

from tests import signals
from tests.test_generate import run
from tests.test_generate_resume import calls  # noqa: F401 (fixture)
from tests.test_ldm_fixtures import one_thread, tiny_pipeline  # noqa: F401 (autouse)
from tta.audio import save_audio


def base(*extra) -> list:
    return ["--model", tiny_pipeline(), "--seconds", 0.2, "--steps", 2, "--seed", 5, "--candidates", 2, *extra]


def wavs(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.wav"))}


def record(folder) -> dict:
    return json.loads((folder / "generation.json").read_text())


def test_takes_are_the_run_with_each_prompt_written_n_times_in_a_row(tmp_path, capsys):
    """The same files, bytes and seeds as the repeated prompts (batches of 2 cut across the prompts' takes), and
    each take keeps the best of its own candidates."""
    code, out, err = run(capsys, "a door creaks", "rain", "--takes", 3, "--batch-size", 2, *base(),
                         "--out-dir", tmp_path / "takes")
    assert code == 0, err
    code, _, err = run(capsys, *["a door creaks"] * 3, *["rain"] * 3, "--batch-size", 2, *base(),
                       "--out-dir", tmp_path / "repeated")
    assert code == 0, err
    names = ["000_a_door_creaks.wav", "001_a_door_creaks.wav", "002_a_door_creaks.wav", "003_rain.wav",
             "004_rain.wav", "005_rain.wav"]
    assert list(wavs(tmp_path / "takes")) == names and out.split() == [str(tmp_path / "takes" / n) for n in names]
    assert wavs(tmp_path / "takes") == wavs(tmp_path / "repeated")
    assert len(set(wavs(tmp_path / "takes").values())) == 6   # six takes, not one file six times
    takes, repeated = record(tmp_path / "takes"), record(tmp_path / "repeated")
    assert takes["settings"]["takes"] == 3 and repeated["settings"]["takes"] == 1
    assert [o["take"] for o in takes["outputs"]] == [1, 2, 3, 1, 2, 3]
    assert [o["seeds"] for o in takes["outputs"]] == [[5 + r, 5 + r + 1_000_003] for r in range(6)]
    drop = ("take",)
    assert [{k: v for k, v in o.items() if k not in drop} for o in takes["outputs"]] == \
        [{k: v for k, v in o.items() if k not in drop} for o in repeated["outputs"]]
    assert takes["complete"] and takes["planned_outputs"] == 6


def test_a_named_rows_takes_are_name_1_to_name_n(tmp_path, capsys):
    """A row named by its id or file field names its takes <name>_<k>; the bytes are the repeated rows'; each
    output's record keeps the row's id and its take."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "door", "prompt": "a door creaks"}\n{"file": "sfx/rain.wav", "prompt": "rain"}\n')
    code, out, err = run(capsys, "--prompts", prompts, "--takes", 2, *base(), "--out-dir", tmp_path / "named")
    assert code == 0, err
    assert list(wavs(tmp_path / "named")) == ["door_1.wav", "door_2.wav", "rain_1.wav", "rain_2.wav"]
    code, _, err = run(capsys, *["a door creaks"] * 2, *["rain"] * 2, *base(), "--out-dir", tmp_path / "repeated")
    assert code == 0, err
    assert list(wavs(tmp_path / "named").values()) == list(wavs(tmp_path / "repeated").values())
    outputs = record(tmp_path / "named")["outputs"]
    assert [(o["id"], o["take"], o["seeds"][0]) for o in outputs] == [("door", 1, 5), ("door", 2, 6),
                                                                      ("rain_1", 1, 7), ("rain_2", 2, 8)]
    # --takes 1 names the rows as ever
    code, _, err = run(capsys, "--prompts", prompts, *base(), "--out-dir", tmp_path / "one")
    assert code == 0, err
    assert list(wavs(tmp_path / "one")) == ["door.wav", "rain.wav"]


def test_a_take_name_that_is_another_rows_name_is_refused_before_the_model_loads(tmp_path, capsys):
    """An unnamed row's second take (row 1: 001_a_1) and a named row's first (001_a + _1) would be one file."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a 1"}\n{"id": "001_a", "prompt": "another"}\n')
    code, _, err = run(capsys, "--prompts", prompts, "--takes", 2, "--model", tmp_path / "no-model",
                       "--out-dir", tmp_path / "out")
    assert code == 1 and err.count("\n") == 1
    assert "output name '001_a_1' (a row's file field, as its base name, or its id, with its take number) appears " \
           "twice" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["0", "-1", str(10 ** 9)])
def test_a_takes_value_out_of_range_is_one_line_before_the_model_loads(tmp_path, capsys, value):
    code, out, err = run(capsys, "a door", "--takes", value, "--model", tmp_path / "no-model",
                         "--out-dir", tmp_path / "out")
    assert (code, out) == (1, "")
    assert err == f"tta: error: --takes {value} must be a whole number from 1 to 10000 (the files written per " \
                  "prompt)\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["2.5", "three"])
def test_a_takes_value_that_is_no_whole_number_is_bad_usage_as_for_candidates(tmp_path, capsys, value):
    """One rule for tta generate's whole-number flags: argparse reads them (it read --takes with a regex of its
    own, so --takes 2.5 exited 1 where --candidates 2.5 exits 2)."""
    for flag in ("--takes", "--candidates"):
        with pytest.raises(SystemExit) as stop:
            run(capsys, "a door", flag, value, "--model", tmp_path / "no-model", "--out-dir", tmp_path / "out")
        assert stop.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == \
            f"tta generate: error: argument {flag}: invalid int value: '{value}'"
    assert not (tmp_path / "out").exists()


def test_takes_with_one_output_file_are_refused_and_one_take_is_allowed(tmp_path, capsys):
    code, _, err = run(capsys, "a door", "--takes", 2, *base(), "-o", tmp_path / "x.wav")
    assert code == 2 and err == "tta: error: -o FILE writes one clip, --takes 2 writes 2; use --out-dir DIR (each " \
                                "take is a file there)\n"
    assert list(tmp_path.iterdir()) == []
    code, _, err = run(capsys, "a door", "--takes", 1, *base(), "-o", tmp_path / "x.wav")
    assert code == 0, err
    assert (tmp_path / "x.wav").is_file()


def test_more_takes_of_one_prompt_resume_as_rows_added_at_the_end(tmp_path, capsys, calls):  # noqa: F811
    """The earlier takes are kept (not generated again) and the folder ends as one --takes 4 run writes it."""
    code, _, err = run(capsys, "a door", "--takes", 4, *base(), "--out-dir", tmp_path / "whole")
    assert code == 0, err
    assert run(capsys, "a door", "--takes", 2, *base(), "--out-dir", tmp_path / "more")[0] == 0
    calls.clear()
    code, _, err = run(capsys, "a door", "--takes", 4, *base(), "--out-dir", tmp_path / "more", "--resume")
    assert code == 0, err
    assert calls == [["a door"], ["a door"]]   # takes 3 and 4 only
    assert wavs(tmp_path / "more") == wavs(tmp_path / "whole") and len(wavs(tmp_path / "whole")) == 4
    resumed, whole = record(tmp_path / "more"), record(tmp_path / "whole")
    assert resumed["settings"] == whole["settings"] and resumed["outputs"] == whole["outputs"]
    assert resumed["complete"] and len(resumed["earlier_runs"]) == 1


def test_a_changed_takes_of_several_prompts_is_another_batch_and_is_refused(tmp_path, capsys, calls):  # noqa: F811
    """Refused before the model loads (nothing generated, the folder as it was), naming the takes change."""
    assert run(capsys, "a door", "rain", "--takes", 2, *base(), "--out-dir", tmp_path / "out")[0] == 0
    before = wavs(tmp_path / "out"), (tmp_path / "out" / "generation.json").read_bytes()
    calls.clear()
    code, _, err = run(capsys, "a door", "rain", "--takes", 3, *base(), "--out-dir", tmp_path / "out", "--resume")
    assert code == 1 and calls == [] and err.count("\n") == 1
    assert "cannot resume: the earlier run wrote 002_rain.wav (id '002_rain'), which no row of the prompts given " \
           "names now; the earlier run wrote --takes 2 of each prompt and this one --takes 3: each prompt's takes " \
           "are consecutive rows, so the takes of every prompt after the first move to other rows and seeds; run it " \
           "with --takes 2 as the earlier run did, or without --resume to generate every row again" in err
    assert (wavs(tmp_path / "out"), (tmp_path / "out" / "generation.json").read_bytes()) == before
    # the same --takes resumes (a finished batch: nothing to generate)
    assert run(capsys, "a door", "rain", "--takes", 2, *base(), "--out-dir", tmp_path / "out", "--resume")[0] == 0
    assert calls == [] and wavs(tmp_path / "out") == before[0]


def test_a_named_rows_takes_resume_from_two_takes_and_not_from_its_one_file(tmp_path, capsys, calls,  # noqa: F811
                                                                             caplog):
    """A named row's one file (door.wav, --takes 1) is not its first take (door_1.wav): more takes of it are
    refused naming that rename (it named the takes of every prompt after the first moving), before the model
    loads, with no warning first (it warned that the folder holds door.wav, which the run does not write); from
    --takes 2 up they resume as an unnamed prompt's do."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "door", "prompt": "a creaking door"}\n')
    assert run(capsys, "--prompts", prompts, *base(), "--out-dir", tmp_path / "one")[0] == 0
    before = wavs(tmp_path / "one"), (tmp_path / "one" / "generation.json").read_bytes()
    calls.clear()
    with caplog.at_level("WARNING", logger="tta.generate"):
        code, _, err = run(capsys, "--prompts", prompts, "--takes", 3, *base(), "--out-dir", tmp_path / "one",
                           "--resume")
    assert code == 1 and calls == [] and caplog.records == []
    assert err.splitlines()[-1] == f"tta: error: {tmp_path / 'one' / 'generation.json'}: cannot resume: the earlier " \
        f"run wrote door.wav (id 'door'), which no row of {prompts} names now: a row named by its file or id writes " \
        "NAME.wav with --takes 1 and NAME_1.wav .. NAME_N.wav with more, so with --takes 3 its row writes " \
        "door_1.wav; run it with --takes 1 as the earlier run did, write the takes to a new --out-dir, or run " \
        "without --resume to generate every row again"
    assert (wavs(tmp_path / "one"), (tmp_path / "one" / "generation.json").read_bytes()) == before
    # back from takes to --takes 1: door_1.wav is no row's either
    assert run(capsys, "--prompts", prompts, "--takes", 2, *base(), "--out-dir", tmp_path / "two")[0] == 0
    code, _, err = run(capsys, "--prompts", prompts, *base(), "--out-dir", tmp_path / "two", "--resume")
    assert code == 1 and "wrote door_1.wav (id 'door'), which no row" in err and "its row writes door.wav; run it " \
        "with --takes 2 as" in err
    calls.clear()
    code, _, err = run(capsys, "--prompts", prompts, "--takes", 3, *base(), "--out-dir", tmp_path / "two", "--resume")
    assert code == 0, err
    assert calls == [["a creaking door"]]   # door_3 only
    assert list(wavs(tmp_path / "two")) == ["door_1.wav", "door_2.wav", "door_3.wav"]


def test_fewer_takes_of_one_prompt_are_refused_naming_the_takes_left_without_a_row(tmp_path, capsys, calls):  # noqa: F811
    assert run(capsys, "a door", "--takes", 4, *base(), "--out-dir", tmp_path / "out")[0] == 0
    calls.clear()
    code, _, err = run(capsys, "a door", "--takes", 2, *base(), "--out-dir", tmp_path / "out", "--resume")
    assert code == 1 and calls == []
    assert err.splitlines()[-1].endswith("cannot resume: the earlier run wrote 002_a_door.wav (id '002_a_door'), "
                                         "which no row of the prompts given names now; the earlier run wrote --takes "
                                         "4 of its prompt and this one --takes 2: its takes 3 to 4 are no rows of "
                                         "this run; run it with --takes 4 as the earlier run did, or without "
                                         "--resume to generate every row again")


def test_an_edit_batch_edits_each_rows_input_n_times_and_names_a_bad_row_once(tmp_path, capsys):
    """--edit with --takes: a row's takes are its input edited with seeds SEED + r, as the rows written N times
    in a row give them; a bad row is reported once and counted as one row."""
    (tmp_path / "clips").mkdir()
    save_audio(tmp_path / "clips" / "a.wav", signals.chirp(200, 2000, 0.3), 16_000)
    (tmp_path / "rows.csv").write_text("id,prompt,input\nbird,a bird,clips/a.wav\nnone,no input,clips/gone.wav\n")
    edit = ["--edit", "init-audio", "--model", tiny_pipeline(), "--steps", 2, "--seed", 5]
    code, out, err = run(capsys, "--prompts", tmp_path / "rows.csv", "--takes", 2, *edit, "--out-dir", tmp_path / "t")
    assert code == 1 and err.count("tta: bad row: ") == 1 and "rows.csv:3: " in err
    assert err.splitlines()[-1].startswith("tta: error: 1 of 2 rows of ")
    assert out.split() == [str(tmp_path / "t" / n) for n in ("bird_1.wav", "bird_2.wav")]
    (tmp_path / "repeated.csv").write_text("prompt,input\na bird,clips/a.wav\na bird,clips/a.wav\n")
    code, _, err = run(capsys, "--prompts", tmp_path / "repeated.csv", *edit, "--out-dir", tmp_path / "r")
    assert code == 0, err
    assert list(wavs(tmp_path / "t").values()) == list(wavs(tmp_path / "r").values())
    assert [o["seeds"] for o in record(tmp_path / "t")["outputs"]] == [[5], [6]]
    assert not record(tmp_path / "t")["complete"] and record(tmp_path / "t")["planned_outputs"] == 4


def test_a_bad_rows_takes_count_as_one_row_in_the_refusal_and_on_the_bar(tmp_path, capsys):
    """With --takes 3 a bad row was "3 bad rows" when no row was usable, and "3 bad" on the bar."""
    import re

    from tta.cli import main

    (tmp_path / "clips").mkdir()
    save_audio(tmp_path / "clips" / "a.wav", signals.chirp(200, 2000, 0.3), 16_000)
    (tmp_path / "bad.csv").write_text("id,prompt,input\nnone,no input,clips/gone.wav\n")
    edit = ["--edit", "init-audio", "--model", tiny_pipeline(), "--steps", 2, "--seed", 5]
    code, _, err = run(capsys, "--prompts", tmp_path / "bad.csv", "--takes", 3, *edit, "--out-dir", tmp_path / "b")
    assert code == 1 and err.splitlines()[-1] == f"tta: error: {tmp_path / 'bad.csv'}: no row has a usable input " \
                                                 "(1 bad row, reported above); nothing generated"
    (tmp_path / "rows.csv").write_text("id,prompt,input\nbird,a bird,clips/a.wav\nnone,no input,clips/gone.wav\n")
    assert main(["generate", "--prompts", str(tmp_path / "rows.csv"), "--takes", "3", *map(str, edit), "--out-dir",
                 str(tmp_path / "t")]) == 1
    bars = [b for b in re.split(r"[\r\n]+", capsys.readouterr().err) if b.startswith("tta generate:")]
    assert "3/6" in bars[-1] and "1 bad row" in bars[-1] and not any("bad rows" in b for b in bars), bars


def test_help_says_what_a_changed_takes_resumes(capsys):
    """The README said which --takes changes --resume continues and which it refuses; --help did not."""
    from tta.cli import main

    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--resume adds takes of an unnamed prompt, and of a named row from --takes 2 up; fewer takes, or a " \
           "changed --takes of several prompts, are refused" in text
