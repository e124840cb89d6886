"""The one prompt-file reader shared by generate, eval and clap."""

import pytest

from eval.prompts import read_prompts
from tta.data.prompts import PromptFileError, id_file_name, name_problem, read_prompt_file
from tta.generate import read_prompts_file


def test_csv_and_jsonl_give_the_same_rows(tmp_path):
    (tmp_path / "p.csv").write_text("id,prompt,category\ndog,a dog barks,animals\nrain,heavy rain,weather\n")
    (tmp_path / "p.jsonl").write_text('{"id": "dog", "prompt": "a dog barks", "category": "animals"}\n\n'
                                      '{"id": "rain", "caption": "heavy rain", "category": "weather"}\n')
    for name in ("p.csv", "p.jsonl"):
        rows = read_prompt_file(tmp_path / name)
        assert [(r.id, r.prompt, r.category) for r in rows] == [("dog", "a dog barks", "animals"),
                                                                 ("rain", "heavy rain", "weather")]


def test_one_file_drives_generate_and_eval(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"id": "dog", "prompt": "a dog barks", "category": "animals"}\n'
                    '{"id": "empty", "prompt": ""}\n')
    assert read_prompts_file(path) == [("dog", "a dog barks", "dog"), ("empty", "", "empty")]
    # `tta generate --out-dir` writes <id>.wav; eval matches rows to those file names by id
    by_key = read_prompts(path, ["dog", "empty"])
    assert by_key["dog"].prompt == "a dog barks" and by_key["dog"].category == "animals"


def test_an_id_names_one_file_of_its_own_and_a_valid_name_stays_as_it_is():
    """Ids of corpora imported with --id-prefix ('clotho/a_dog', an older tta's 'audioset:x') were refused by
    every writer; one rule now names their files, and leaves every name that was already valid unchanged."""
    for valid in ("dog", "0001_a_dog", "my corpus-1 (v2)", "Größe", "日本語", "a.b", "x+y"):
        assert id_file_name(valid) == valid
    assert id_file_name("clotho/a_dog") == "clotho%2Fa_dog" and id_file_name("audioset:x") == "audioset%3Ax"
    ids = ["a/b", "a:b", "a%2Fb", "a%3Ab", "a%b", "a_b", ".", "..", "%2E", " x", "x ", "%20x", "a\\b", "a*b",
           "c:/d", "c%3A%2Fd", "mix/overlay/a+b", "a\tb", "é/", "\ud800"]
    names = [id_file_name(i) for i in ids]
    assert len(set(names)) == len(ids), names   # injective: two ids never share a file
    for name in names:   # each is one file name: no separator, no '.'/'..', no space at an end, no control character
        assert name_problem(name.replace("%", "_")) is None, name
    with pytest.raises(ValueError, match="empty id"):
        id_file_name("")


def test_ids_with_a_slash_or_colon_drive_generate_and_eval(tmp_path):
    import argparse

    from tta.generate import plan_jobs

    path = tmp_path / "prompts.jsonl"
    path.write_text('{"id": "clotho/dog", "prompt": "a dog barks"}\n{"id": "audioset:dog", "prompt": "a dog"}\n'
                    '{"id": "dog", "prompt": "dog"}\n')
    jobs = plan_jobs(argparse.Namespace(prompts=[], prompts_file=path, output=None, out_dir=tmp_path / "gen"))
    assert [(j.id, j.path.name) for j in jobs] == [("clotho/dog", "clotho%2Fdog.wav"),
                                                  ("audioset:dog", "audioset%3Adog.wav"), ("dog", "dog.wav")]
    rows = read_prompts(path, sorted(j.path.stem for j in jobs))
    assert {k: (r.id, r.prompt) for k, r in rows.items()} == {
        "clotho%2Fdog": ("clotho/dog", "a dog barks"), "audioset%3Adog": ("audioset:dog", "a dog"),
        "dog": ("dog", "dog")}


def test_eval_pairs_an_id_row_as_before_ids_named_files_and_a_file_row_by_its_file_only(tmp_path):
    """Keying id rows by id_file_name lost two pairings tta eval --prompts made before: an id with a folder to
    the file of its base name ('clotho/a_dog' -> a_dog.wav, another generator's folder), an id with an audio
    suffix to that file ('dog.wav' -> dog.wav); and a row with a file field also took a file named by its id."""
    from eval.run import EvalError, _match_prompts

    def paired(path, names):
        return {n: r.prompt for n, r in _match_prompts(read_prompts(path, names), names, path).items()}

    ids = tmp_path / "ids.csv"
    ids.write_text("id,prompt\nclotho/a_dog,a dog barks\ndog.wav,a cat\n")
    for names in (["a_dog", "dog"], ["clotho/a_dog", "dog"], ["clotho%2Fa_dog", "dog.wav"]):
        assert paired(ids, names) == dict(zip(names, ("a dog barks", "a cat"))), names
    both = tmp_path / "both.csv"
    both.write_text("id,file,prompt\nr,rain.wav,rain falls\n")
    assert paired(both, ["rain"]) == {"rain": "rain falls"}
    for names in (["r"], ["r", "rain"]):
        with pytest.raises(EvalError, match="no prompt for 1 generated file"):
            paired(both, names)


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    # Excel's "CSV UTF-8" starts the file with U+FEFF
    (tmp_path / "p.csv").write_bytes("prompt,id\na dog barks,d1\n".encode("utf-8-sig"))
    assert [(r.id, r.prompt) for r in read_prompt_file(tmp_path / "p.csv")] == [("d1", "a dog barks")]


def test_txt_skips_blank_lines(tmp_path):
    (tmp_path / "p.txt").write_text("a dog barks\n\n  rain on a roof  \n")
    assert [r.prompt for r in read_prompt_file(tmp_path / "p.txt")] == ["a dog barks", "rain on a roof"]


@pytest.mark.parametrize("name, content, fragment", [
    ("p.jsonl", '{"prompt": "ok"}\n{"prompt": \n', "p.jsonl:2: invalid JSON"),
    ("p.jsonl", '["a list"]\n', "expected a JSON object"),
    ("p.jsonl", '{"id": "x"}\n', "p.jsonl:1: expected a string prompt/caption/text field"),
    ("p.csv", "id,label\n1,dog\n", "CSV needs a prompt/caption/text column"),
    ("p.csv", "id,prompt\nd0,rain\nd1,a dog barks, then a cat meows\n",
     "p.csv:3: 3 fields, the header has 2; quote a prompt that contains commas"),
    ("p.csv", "id,prompt,category\nd0,rain,weather\nd1\n", "p.csv:3: 1 field, the header has 3"),
    ("p.txt", "\n\n", "no prompts"),
    ("p.yaml", "prompt: x\n", "unsupported prompts file type '.yaml'"),
    ("p.jsonl", '{"prompt": "ok", "file": "a.wav"}\n{"prompt": "x", "file": 3}\n',
     "p.jsonl:2: field 'file' is 3; expected a string"),
    ("p.jsonl", '{"prompt": "x", "path": {"a": 1}, "id": "a"}\n',
     "p.jsonl:1: field 'path' is {\"a\": 1}; expected a string"),
    ("p.jsonl", '{"prompt": "x", "audio": ["a.wav"]}\n', "p.jsonl:1: field 'audio' is [\"a.wav\"]; expected a"),
    ("p.jsonl", '{"prompt": "x", "id": true}\n', "p.jsonl:1: field 'id' is true; expected a string or an integer"),
])
def test_bad_prompt_files_name_file_and_line(tmp_path, name, content, fragment):
    (tmp_path / name).write_text(content)
    with pytest.raises(PromptFileError) as e:
        read_prompt_file(tmp_path / name)
    assert fragment in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(PromptFileError, match="prompts file not found"):
        read_prompt_file(tmp_path / "nope.txt")


def test_txt_prompts_pair_with_generated_files_in_prompt_order_past_1000(tmp_path):
    """`tta generate --prompts P.txt` names its files by prompt index; `tta eval --prompts P.txt` pairs the
    lines with them by that index. With 1 005 prompts the names are zero-padded to four digits, and eval
    pairs by the leading number, so a plain sort (1000_x before 100_x) cannot shift the prompts."""
    import argparse

    from tta.generate import plan_jobs

    lines = [f"sound number {i}" for i in range(1005)]
    path = tmp_path / "p.txt"
    path.write_text("\n".join(lines) + "\n")
    args = argparse.Namespace(prompts=[], prompts_file=path, output=None, out_dir=tmp_path / "gen")
    jobs = plan_jobs(args)
    assert jobs[0].id == "0000_sound_number_0" and jobs[1004].id == "1004_sound_number_1004"
    names = sorted(j.id for j in jobs)
    assert names == [j.id for j in jobs]  # names sort in prompt order
    rows = read_prompts(path, names)
    assert all(rows[j.id].prompt == j.prompt for j in jobs)
    # files named by an older run (three-digit indices: 1000_x sorts before 100_x) pair by their number too
    old_names = [f"{i:03d}_{'_'.join(line.split())}" for i, line in enumerate(lines)]
    rows = read_prompts(path, sorted(old_names))
    assert rows["1000_sound_number_1000"].prompt == "sound number 1000"
    assert rows["100_sound_number_100"].prompt == "sound number 100"


def test_a_quoted_csv_prompt_may_span_lines_and_jsonl_keeps_line_separators(tmp_path):
    (tmp_path / "p.csv").write_text('id,prompt\nr,"rain\non a tin roof"\nbad,a, b\n')
    with pytest.raises(PromptFileError, match=r"p.csv:4: 3 fields"):    # the physical line of the bad row
        read_prompt_file(tmp_path / "p.csv")
    # a quote left open (or text after a closing quote) read every later row into one prompt, silently
    (tmp_path / "o.csv").write_text('id,prompt\nd1,"a dog barks\nr1,rain on a roof\nt1,thunder\n')
    with pytest.raises(PromptFileError, match=r"o.csv:2: not valid CSV \(unexpected end of data; a quote"):
        read_prompt_file(tmp_path / "o.csv")
    (tmp_path / "o.csv").write_text('id,prompt\nr1,rain\nd1,"quoted" word\n')
    with pytest.raises(PromptFileError, match=r"o.csv:3: not valid CSV"):
        read_prompt_file(tmp_path / "o.csv")
    (tmp_path / "q.csv").write_text('id,prompt\nr,"rain\non a tin roof"\n')
    assert [r.prompt for r in read_prompt_file(tmp_path / "q.csv")] == ["rain\non a tin roof"]
    (tmp_path / "p.jsonl").write_text('{"prompt": "a\u2028b"}\n', encoding="utf-8")
    assert [r.prompt for r in read_prompt_file(tmp_path / "p.jsonl")] == ["a\u2028b"]


def test_a_null_file_field_is_no_field_as_an_empty_csv_cell(tmp_path):
    """A JSON Lines table with an empty file column (pandas writes null there) reads as the same table in CSV
    does: the row falls back to its id. Null was refused ("field 'file' is null; expected a string") while null
    in the prompt, id and category fields stayed no value."""
    (tmp_path / "p.jsonl").write_text('{"id": "a", "prompt": "a dog barks", "file": null, "category": null}\n'
                                      '{"id": "b", "prompt": "rain", "file": "rain.wav"}\n')
    (tmp_path / "p.csv").write_text("id,prompt,file,category\na,a dog barks,,\nb,rain,rain.wav,\n")
    rows = [[(r.id, r.prompt, r.file, r.category) for r in read_prompt_file(tmp_path / name)]
            for name in ("p.jsonl", "p.csv")]
    assert rows[0] == rows[1] == [("a", "a dog barks", None, None), ("b", "rain", "rain.wav", None)]

@pytest.mark.parametrize("command", ["generate", "eval", "clap"])
def test_a_file_field_that_is_not_a_string_is_refused_by_every_command(tmp_path, capsys, command):
    """`{"prompt": "x", "file": 3}` named an output 3.wav (generate); now each command refuses the row, naming the
    line and the field, and writes nothing."""
    from tests.signals import tone
    from tests.test_ldm_fixtures import tiny_components, tiny_pipeline
    from tta.audio import save_audio
    from tta.cli import main

    for name in ("a", "b"):
        save_audio(tmp_path / "gen" / f"{name}.wav", tone(440, 0.5), 16_000)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a tone", "file": "a.wav"}\n{"prompt": "a beep", "file": 3}\n')
    out = tmp_path / "out"
    argv = {"generate": ["generate", "--prompts", str(prompts), "--model", str(tiny_pipeline()), "--steps", "1",
                         "--out-dir", str(out)],
            "eval": ["eval", "--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "gen"),
                     "--prompts", str(prompts), "--out", str(out)],
            "clap": ["clap", "score", "--clap", str(tiny_components()["clap"]), "--audio", str(tmp_path / "gen"),
                     "--prompts", str(prompts), "--out", str(out / "s.json")]}[command]
    assert main(["-q", *argv]) == 1
    err = capsys.readouterr().err
    assert err == f"tta: error: {prompts}:2: field 'file' is 3; expected a string (an audio file's name or path)\n"
    assert not out.exists()


def test_clap_score_pairs_id_rows_with_the_audio_as_tta_eval_does(tmp_path, capsys):
    """`tta clap score --prompts` refused a row with an id and no file field ("expected a file/path/audio/name
    field naming the audio"), so the prompts file `tta generate` named its outputs by (and `tta eval` paired them
    by) could not be scored; it now pairs such rows by eval's rule (tta.data.prompts.match_audio): the escaped
    id's file, else a file at the id's path. A row whose id pairs with no file is reported and the rest scored;
    a file field is read as before."""
    import json
    from pathlib import Path

    from eval.run import _match_prompts
    from tests.signals import chirp, noise, tone
    from tests.test_ldm_fixtures import tiny_components
    from tta.audio import save_audio
    from tta.cli import main

    gen = tmp_path / "gen"
    clips = {"clotho%2Fdog": tone(440, 0.5), "sub/cat": chirp(300, 3000, 0.5), "plain": noise(0.5),
             "rain": tone(880, 0.5)}
    for name, wav in clips.items():
        save_audio(gen / f"{name}.wav", wav, 16_000)
    by_id = tmp_path / "p.jsonl"
    by_id.write_text('{"id": "clotho/dog", "prompt": "a dog"}\n{"id": "sub/cat", "prompt": "a cat"}\n'
                     '{"id": "plain", "prompt": "noise"}\n{"id": "r", "file": "rain.wav", "prompt": "rain"}\n'
                     '{"id": "gone/x", "prompt": "lost"}\n')
    by_file = tmp_path / "f.jsonl"
    by_file.write_text("".join(json.dumps({"file": f"{n}.wav", "prompt": p}) + "\n"
                               for n, p in zip(clips, ("a dog", "a cat", "noise", "rain"))))
    model, scores = str(tiny_components()["clap"]), []
    for prompts in (by_id, by_file):
        out = tmp_path / f"{prompts.stem}.json"
        assert main(["-q", "clap", "score", "--clap", model, "--audio", str(gen), "--prompts", str(prompts),
                     "--out", str(out)]) == 0
        scores.append(json.loads(out.read_text()))
    pairs = [(Path(i["file"]).relative_to(gen).with_suffix("").as_posix(), i["prompt"]) for i in scores[0]["per_item"]]
    assert pairs == [("clotho%2Fdog", "a dog"), ("sub/cat", "a cat"), ("plain", "noise"), ("rain", "rain")]
    assert [i["score"] for i in scores[0]["per_item"]] == [i["score"] for i in scores[1]["per_item"]]
    # tta generate --format writes any of wav, flac and ogg: the message names the file it writes in each
    assert scores[0]["skipped"] == [f"{by_id}:5: id 'gone/x' pairs with no audio file in {gen} (tta generate "
                                    "names it gone%2Fx.wav, .flac or .ogg)"]
    names = sorted(clips)   # tta eval pairs the same file the same way
    assert {n: r.prompt for n, r in _match_prompts(read_prompts(by_id, names), names, by_id).items()} == dict(pairs)

    save_audio(gen / "plain.flac", noise(0.5), 16_000)   # two files for one id: refused, naming the row
    assert main(["-q", "clap", "score", "--clap", model, "--audio", str(gen), "--prompts", str(by_id)]) == 1
    assert capsys.readouterr().err == (f"tta: error: {by_id}:3: id 'plain' pairs with 2 audio files in {gen} "
                                       "(plain.flac, plain.wav); keep one\n")
    by_id.write_text('{"id": "gone/x", "prompt": "lost"}\n')
    assert main(["-q", "clap", "score", "--clap", model, "--audio", str(gen), "--prompts", str(by_id)]) == 1
    assert "no row pairs with an audio file" in capsys.readouterr().err
    # a file a file-field row names is not an id row's too (rain.wav was scored twice, with "rain" and "storm"),
    # and two rows of one key are refused, as tta eval refuses them (both were scored against rain.wav)
    (gen / "plain.flac").unlink()
    by_id.write_text('{"file": "rain.wav", "prompt": "rain"}\n{"id": "weather/rain", "prompt": "storm"}\n'
                     '{"id": "plain", "prompt": "noise"}\n')
    out = tmp_path / "mixed.json"
    assert main(["-q", "clap", "score", "--clap", model, "--audio", str(gen), "--prompts", str(by_id),
                 "--out", str(out)]) == 0
    assert [(Path(i["file"]).name, i["prompt"]) for i in json.loads(out.read_text())["per_item"]] == [
        ("rain.wav", "rain"), ("plain.wav", "noise")]
    by_id.write_text('{"id": "rain", "prompt": "a"}\n{"id": "rain", "prompt": "b"}\n')
    assert main(["-q", "clap", "score", "--clap", model, "--audio", str(gen), "--prompts", str(by_id)]) == 1
    assert capsys.readouterr().err == f"tta: error: {by_id}:2: file 'rain' appears twice\n"


def test_an_id_whose_file_name_passes_the_limit_is_refused_naming_the_id(tmp_path):
    """Escaping makes a character 3 to 12 bytes, so an id well under 255 characters named a file the file system
    refuses; the experiment failed with the OS's "File name too long" after building its store. Such an id is
    refused up front, by name; every name that could be written before still is."""
    import argparse

    from tta.data.prompts import id_name_problem
    from tta.generate import GenerateError, plan_jobs

    assert id_name_problem("a" * 251) is None and id_name_problem("é" * 125) is None   # 251 and 250 bytes + .wav
    assert id_name_problem("clotho/" + ":" * 80) is None                                # 9 + 240 + 4 bytes
    assert id_name_problem("a" * 252).startswith(f"id {'a' * 37 + '...'!r} names a file of 256 bytes (")
    problem = id_name_problem("clotho/" + ":" * 81)
    assert problem == ("id 'clotho/::::::::::::::::::::::::::::::...' names a file of 256 bytes (clotho%2F%3A%3A%3A%3"
                       "....wav, escaped); a file name takes at most 255 bytes: give it a shorter id")
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "ok", "prompt": "a bell"}\n{"id": "clotho/' + ":" * 81 + '", "prompt": "a dog"}\n')
    with pytest.raises(GenerateError) as e:
        plan_jobs(argparse.Namespace(prompts=[], prompts_file=path, output=None, out_dir=tmp_path / "gen"))
    assert str(e.value) == f"{path}: {problem}"


def test_a_file_field_loses_any_audio_suffix_tta_eval_reads_in_generate_and_eval_alike(tmp_path, caplog):
    """A row's key dropped .wav, .flac, .ogg and .mp3 only, while tta eval reads .aiff, .opus, ... and names each
    file without its suffix: a reference set's row door.aiff paired with no file ("no prompt for 1 generated
    file(s), e.g. door"), and tta generate wrote it as door.aiff.flac without a word. A folder an older tta
    generate wrote for such rows (door.aiff.wav, named door.aiff) still pairs with them."""
    import argparse

    from eval.run import _match_prompts
    from tta.generate import plan_jobs, warn_other_suffixes

    path = tmp_path / "p.csv"
    path.write_text("file,prompt\ndoor.aiff,a door slams\nbell.OPUS,a bell\nrain.wav,rain\nnotes.v2,a tone\n")
    jobs = plan_jobs(argparse.Namespace(prompts=[], prompts_file=path, output=None, out_dir=tmp_path / "gen",
                                        format="flac"))
    assert [j.path.name for j in jobs] == ["door.flac", "bell.flac", "rain.flac", "notes.v2.flac"]
    with caplog.at_level("WARNING", logger="tta.generate"):
        warn_other_suffixes(jobs, 1, "flac", False)
    assert f"{path}:2: file field 'door.aiff' is written as door.flac (and 2 more rows with another audio suffix)" \
        in caplog.text
    prompts = ["a door slams", "a bell", "rain", "a tone"]
    for names in (["door", "bell", "rain", "notes.v2"], ["door.aiff", "bell.OPUS", "rain", "notes.v2"]):
        paired = _match_prompts(read_prompts(path, names), names, path)
        assert {n: r.prompt for n, r in paired.items()} == dict(zip(names, prompts)), names


def test_the_row_suffix_warning_reads_file_keys_audio_suffix_rule(tmp_path, caplog):
    """tta generate's warning of a row whose file field has another audio suffix than the batch's repeated
    file_key's suffix rule; both read audio_suffix: the suffix file_key drops (any case, after the field's
    spaces), and the warning counts the rows whose such suffix is not the batch format's."""
    import argparse

    from tta.data.prompts import audio_suffix, file_key
    from tta.generate import plan_jobs, warn_other_suffixes

    fields = ["door.AIFF", " bell.opus ", "rain.flac", "wind.FLAC", "notes.v2", "dir/clip.Wav", "plain", ".wav"]
    assert [audio_suffix(f) for f in fields] == [".aiff", ".opus", ".flac", ".flac", "", ".wav", "", ""]
    for field in fields:
        suffix = audio_suffix(field)
        assert file_key(field) == (field.strip()[:-len(suffix)] if suffix else field.strip()), field
    path = tmp_path / "p.csv"
    path.write_text("file,prompt\n" + "".join(f"{f},a sound {i}\n" for i, f in enumerate(fields[:-1])))
    jobs = plan_jobs(argparse.Namespace(prompts=[], prompts_file=path, output=None, out_dir=tmp_path / "gen",
                                        format="flac"))
    assert [j.path.name for j in jobs] == ["door.flac", "bell.flac", "rain.flac", "wind.flac", "notes.v2.flac",
                                           "clip.flac", "plain.flac"]
    with caplog.at_level("WARNING", logger="tta.generate"):
        warn_other_suffixes(jobs, 1, "flac", False)
    assert f"{path}:2: file field 'door.AIFF' is written as door.flac (and 2 more rows with another audio suffix)" \
        in caplog.text
