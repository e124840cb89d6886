"""`tta generate` end to end on a tiny pipeline folder, and its one-line errors for bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf

from tests import signals
from tests.test_ldm_fixtures import copy_pipeline, one_thread, tiny_pipeline  # noqa: F401 (autouse)
from tta.audio import save_audio
from tta.cli import main


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["-q", "generate", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_writes_16k_wavs_and_a_record_and_is_reproducible(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "dog", "prompt": "a dog barks"}\n{"id": "rain", "prompt": "rain on a roof"}\n')
    args = ["--prompts", prompts, "--model", tiny_pipeline(), "--seconds", 0.33, "--steps", 2, "--seed", 5]
    code, _, _ = run(capsys, *args, "--out-dir", tmp_path / "a", "--batch-size", 2)
    assert code == 0
    for name in ("dog", "rain"):
        info = sf.info(str(tmp_path / "a" / f"{name}.wav"))
        assert (info.samplerate, info.frames, info.channels) == (16_000, 5280, 1)
    record = json.loads((tmp_path / "a" / "generation.json").read_text())
    assert [o["id"] for o in record["outputs"]] == ["dog", "rain"]
    assert record["settings"]["seed"] == 5 and record["settings"]["steps"] == 2
    assert record["settings"]["sampler"] == "ddim" and record["outputs"][1]["seeds"] == [6]
    assert record["clap_score_model"].startswith("tta-clap:")
    assert record["settings"]["window"] == 0.0 and record["model_defaults"]["window"] == 0.0
    # same seed, other batching -> identical bytes
    assert run(capsys, *args, "--out-dir", tmp_path / "b")[0] == 0
    for name in ("dog", "rain"):
        assert (tmp_path / "a" / f"{name}.wav").read_bytes() == (tmp_path / "b" / f"{name}.wav").read_bytes()


def test_single_output_file_and_edit(tmp_path, capsys):
    save_audio(tmp_path / "in.wav", signals.chirp(200, 2000, 0.3), 16_000)
    out = tmp_path / "edit.wav"
    code, _, _ = run(capsys, "a bird", "--model", tiny_pipeline(), "--steps", 2, "-o", out,
                     "--inpaint", tmp_path / "in.wav", "--mask", "0.1:0.2")
    assert code == 0 and sf.info(str(out)).frames == 4800
    record = json.loads((tmp_path / "edit.generation.json").read_text())
    assert record["edit"]["kind"] == "inpaint" and record["edit"]["start"] == 0.1
    import torch

    assert record["settings"]["threads"] == torch.get_num_threads()   # the bytes depend on it
    assert record["edit"]["outside"] == "original"
    given, _ = sf.read(tmp_path / "in.wav", dtype="float32")
    got, _ = sf.read(out, dtype="float32")          # the input's own samples outside the gap and its crossfades
    kept = np.r_[0:1600 - 160, 3200 + 160:4800]
    np.testing.assert_allclose(got[kept], given[kept], atol=2 / 32768)          # its DC offset too
    code, _, _ = run(capsys, "a bird", "--model", tiny_pipeline(), "--steps", 2, "-o", tmp_path / "dec.wav",
                     "--inpaint", tmp_path / "in.wav", "--mask", "0.1:0.2", "--outside", "decoded")
    decoded, _ = sf.read(tmp_path / "dec.wav", dtype="float32")
    assert code == 0 and json.loads((tmp_path / "dec.generation.json").read_text())["edit"]["outside"] == "decoded"
    assert np.abs(decoded[kept] - given[kept]).max() > 0.01
    np.testing.assert_allclose(decoded[1600 + 160:3200 - 160] + given.mean(), got[1600 + 160:3200 - 160],
                               atol=2 / 32768)
    # --window: sampled longer, written at --seconds
    code, _, _ = run(capsys, "a bird", "--model", tiny_pipeline(), "--steps", 2, "-o", tmp_path / "w.wav",
                     "--seconds", 0.1, "--window", 0.3)
    assert code == 0 and sf.info(str(tmp_path / "w.wav")).frames == 1600
    assert json.loads((tmp_path / "w.generation.json").read_text())["settings"]["window"] == 0.3


@pytest.fixture(scope="module")
def broken_model(tmp_path_factory):
    import shutil

    folder = copy_pipeline(tmp_path_factory.mktemp("broken") / "p")
    shutil.rmtree(folder / "text_encoder")
    return folder


BAD = [
    (1, ["--seconds", "0"], "--seconds 0.0 must be a positive"),
    (1, ["--seconds", "1000"], "exceeds the maximum"),
    (1, ["--sampler", "fast"], "valid samplers: ddim, dpmsolver++"),
    (1, ["--guidance", "nan"], "--guidance nan"),
    (1, ["--steps", "0"], "--steps 0 must be >= 1"),
    (1, ["--steps", "100000"], "timesteps this model was trained on"),   # before the model loads (it was after)
    (1, ["-o", "/proc/nope/x.wav"], "/proc/nope/x.wav: cannot create its folder /proc/nope"),
    (2, ["-o", "/proc/nope/x.wav", "--resume"], "--resume continues a --out-dir batch; -o FILE writes one clip"),
    (1, ["--init-audio", "MISSING.wav"], "unreadable input audio"),
    (2, ["--inpaint", "IN.wav"], "--mask START:END"),
    (1, ["--inpaint", "IN.wav", "--mask", "2:1"], "--mask '2:1'"),
    # a value starting with "-" and a digit is the flag's, as "-1" is: argparse read these two as unknown options
    (1, ["--inpaint", "IN.wav", "--mask", "-1:1"], "--mask '-1:1' must be START:END seconds with 0 <= START"),
    (1, ["--super-resolution", "IN.wav", "--cutoff", "-1e3"], "--cutoff -1000.0 must be a frequency > 0 Hz"),
    (1, ["--window", "-1"], "--window -1.0 must be between 0"),
    (2, ["--inpaint", "IN.wav", "--mask", "0.1:0.2", "--window", "1"], "--window does not apply to edits"),
    (2, ["--strength", "0.7"], "--strength needs --init-audio"),
    (2, ["--inpaint", "IN.wav", "--mask", "0.1:0.2", "--strength", "0.7"], "--strength applies to --init-audio only"),
    (2, ["--init-audio", "IN.wav", "--outside", "decoded"], "--outside applies to --inpaint and --super-resolution"),
    (2, ["--outside", "original"], "--outside needs --inpaint or --super-resolution"),
    (2, ["--super-resolution", "IN.wav"], "--super-resolution needs --cutoff HZ"),
    (1, ["--super-resolution", "IN.wav", "--cutoff", "9000"], "--cutoff 9000 must lie inside this model's mel band"),
    (1, ["--super-resolution", "IN.wav", "--cutoff", "10"], "--cutoff 10 keeps none of this model's latent frequency"),
    (1, ["--inpaint", "IN.wav", "--mask", "0.1:0.10001"], "--mask 0.1:0.10001 is shorter than one mel frame"),
    (1, ["--init-audio", "IN.wav", "--strength", "0.01"], "--strength 0.01 at 2 sampler steps leaves no denoising "
                                                          "step (it needs strength above 0.25, or more --steps)"),
    (1, ["--init-audio", "IN.wav", "--strength", "7"], "--strength 7.0 must be in (0, 1]"),
    (1, ["--seed", "18446744073709551616"], "--seed 18446744073709551616 must be in [0, 2**62)"),
    (1, ["--seed", "-1"], "--seed -1 must be in"),
    (1, ["--threads", "0"], "--threads 0 must be >= 1"),
    (1, ["BROKEN"], "component 'text_encoder' is missing"),
    (1, ["NOMODEL"], "embedded default model is missing from this install"),
]


@pytest.mark.parametrize("exit_code, extra, message", BAD, ids=[m for _, _, m in BAD])
def test_bad_input_and_bad_usage_are_one_line(tmp_path, capsys, broken_model, exit_code, extra, message, monkeypatch):
    """Bad input exits 1; a flag that needs or excludes another is bad usage and exits 2 (DESIGN.md), one line too."""
    save_audio(tmp_path / "in.wav", signals.tone(440, 0.3), 16_000)
    model = ["--model", str(tiny_pipeline())]
    if extra == ["BROKEN"]:
        extra, model = [], ["--model", str(broken_model)]
    elif extra == ["NOMODEL"]:            # an install whose embedded model folder is gone
        import tta.generate

        monkeypatch.setattr(tta.generate, "DEFAULT_MODEL", tmp_path / "no-default")
        extra, model = [], []
    extra = [str(tmp_path / "in.wav") if a == "IN.wav" else str(tmp_path / a) if a == "MISSING.wav" else a
             for a in extra]
    if "-o" not in extra:
        extra += ["--out-dir", str(tmp_path / "out")]
    code, _, err = run(capsys, "a dog", *model, *extra)
    assert code == exit_code
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tta: error: ") and message in lines[0], err
    assert not (tmp_path / "out").exists()          # not even an empty --out-dir is left behind


@pytest.mark.parametrize("file, change, message", [
    ("vae/config.json", lambda b: b.update(config=[]), "vae/config.json: config: expected an object, got list"),
    ("vae/config.json", lambda b: b["config"].update(mel=[]),
     "vae/config.json: mel: expected an object for MelConfig"),
    ("vae/config.json", lambda b: b["config"]["mel"].update(n_mels="64"),
     "vae/config.json: config key 'mel.n_mels': expected int, got string '64'"),
    ("pipeline.json", lambda b: b["components"].update(vae=3),
     "pipeline.json: components.vae is 3; expected the name of its sub-folder"),
    ("pipeline.json", lambda b: b.update(format_version=True), "pipeline.json: expected format_version 1"),
])
def test_a_damaged_model_config_names_the_file_and_field(tmp_path, capsys, file, change, message):
    """With --seconds (read from the VAE's config before loading) these failed on "'list' object has no attribute
    'get'" or named no file ("config key 'n_mels': ..."); a components entry that was not a folder name on
    "unsupported operand type(s) for /: 'PosixPath' and 'int'"."""
    folder = copy_pipeline(tmp_path / "p")
    body = json.loads((folder / file).read_text())
    change(body)
    (folder / file).write_text(json.dumps(body))
    for seconds in ([], ["--seconds", "0.1"]):
        code, _, err = run(capsys, "a dog", "--model", folder, "--steps", 1, "-o", tmp_path / "x.wav", *seconds)
        assert code == 1 and err.startswith("tta: error: ") and f"{folder}/{message}" in err, err
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x.wav").exists()


@pytest.mark.parametrize("file", ["pipeline.json", "unet/config.json", "vae/config.json",
                                  "text_encoder/config.json"])
def test_a_model_config_that_is_not_text_is_named(tmp_path, capsys, file):
    """A config.json of binary bytes failed on "'utf-8' codec can't decode byte 0xff in position 0"."""
    folder = copy_pipeline(tmp_path / "p")
    (folder / file).write_bytes(b"\xff\xfe\x00 not json")
    code, _, err = run(capsys, "a dog", "--model", folder, "--steps", 1, "-o", tmp_path / "x.wav")
    assert code == 1 and f"{folder / file}: not a UTF-8 text file" in err and len(err.strip().splitlines()) == 1, err


def test_unwritable_output_paths_are_refused_before_loading(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, _, err = run(capsys, "a dog", "--model", tiny_pipeline(), "--out-dir", blocker / "sub")
    assert code == 1 and "cannot create the output folder" in err
    code, _, err = run(capsys, "a dog", "--model", tiny_pipeline(), "-o", blocker / "x.wav")
    assert code == 1 and f"({blocker} is a file, not a folder)" in err, err   # was: "output folder ... does not exist"
    code, _, err = run(capsys, "a dog", "--model", tiny_pipeline(), "-o", tmp_path / "x.mp3")
    assert code == 1 and "must end in .wav" in err
    code, _, err = run(capsys, "a", "b", "--model", tiny_pipeline(), "-o", tmp_path / "x.wav")
    assert code == 2 and "exactly one prompt" in err   # bad usage
    # a folder where one of the outputs or the record would go: refused before the model loads, nothing written
    (tmp_path / "batch" / "001_y.wav").mkdir(parents=True)
    code, _, err = run(capsys, "x", "y", "z", "--model", tmp_path / "no-model", "--out-dir", tmp_path / "batch")
    assert code == 1 and "001_y.wav: an output file is a folder" in err, err
    (tmp_path / "single.generation.json").mkdir()
    code, _, err = run(capsys, "x", "--model", tmp_path / "no-model", "-o", tmp_path / "single.wav")
    assert code == 1 and "single.generation.json: an output file is a folder" in err, err
    assert not [p for p in tmp_path.rglob("*.wav") if p.is_file()]


def test_o_makes_the_folders_of_its_file_as_out_dir_does(tmp_path, capsys):
    """`-o newdir/sub/x.wav` was refused ("output folder newdir/sub does not exist") where --out-dir, `tta data
    import --out`, eval, report and export make theirs; the record goes beside the file, and a run that fails
    before writing leaves no folder."""
    code, out, err = run(capsys, "a dog", "--model", tiny_pipeline(), "--seconds", 0.2, "--steps", 2,
                         "-o", tmp_path / "new" / "sub" / "x.wav")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "new" / "sub").iterdir()) == ["x.generation.json", "x.wav"]
    model = copy_pipeline(tmp_path / "model")
    (model / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    code, _, err = run(capsys, "a dog", "--model", model, "-o", tmp_path / "other" / "sub" / "x.wav")
    assert code == 1 and len(err.splitlines()) == 1, err
    assert not (tmp_path / "other").exists()
    if os.geteuid() != 0:   # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        code, _, err = run(capsys, "a dog", "--model", tiny_pipeline(), "-o", locked / "sub" / "x.wav")
        assert code == 1 and f"cannot create its folder {locked / 'sub'} ({locked} is not writable)" in err, err


@pytest.mark.skipif(not os.access("/proc", os.W_OK), reason="needs a /proc that passes the write check (root)")
def test_a_folder_that_takes_no_new_file_is_named_with_the_output_not_its_lock(tmp_path, capsys):
    """/proc passes the write check (root) and takes no new file: `-o /proc/x.wav` failed on
    "/proc/.x.generation.json.lock: No such file or directory", a hidden file the user never named."""
    code, _, err = run(capsys, "a dog", "--model", tiny_pipeline(), "-o", "/proc/x.wav")
    assert code == 1 and err == "tta: error: /proc/x.wav: cannot create a file in /proc (No such file or directory)\n"
    code, _, err = run(capsys, "a dog", "--model", tiny_pipeline(), "--out-dir", "/proc/y")
    assert code == 1 and err == "tta: error: /proc/y: cannot create the output folder (No such file or directory)\n"


def test_file_names_keep_any_script_and_an_unused_negative_prompt_is_not_recorded(tmp_path, capsys, caplog):
    from tta.generate import slug

    assert slug("A dog barks!") == "a_dog_barks" and slug("🐶 ワンワン") == "ワンワン"
    assert slug("🐶 !!") == "prompt" and slug("   ") == "unconditional"
    with caplog.at_level("WARNING", logger="tta.generate"):
        code, _, err = run(capsys, "a dog", "--model", tiny_pipeline(), "--seconds", 0.2, "--steps", 2,
                           "--guidance", 1, "--negative", "loud noise", "-o", tmp_path / "x.wav")
    assert code == 0, err
    assert any("--negative has no effect at guidance <= 1" in r.message for r in caplog.records)
    assert json.loads((tmp_path / "x.generation.json").read_text())["settings"]["negative"] is None


def test_audio_of_an_earlier_run_in_the_out_dir_is_warned_about(tmp_path, capsys, caplog):
    """Hidden files are not counted (a temporary file a killed run left, which `tta eval` does not score)."""
    args = ["--model", tiny_pipeline(), "--seconds", 0.2, "--steps", 2, "--out-dir", tmp_path]
    assert run(capsys, "a", "b", *args)[0] == 0
    (tmp_path / ".000_a.wav.x1y2.tmp.wav").write_bytes(b"")
    with caplog.at_level("WARNING", logger="tta.generate"):
        assert run(capsys, "c", *args)[0] == 0
    assert any("already holds 2 audio files this run does not write (e.g. 000_a.wav)" in r.message
               for r in caplog.records)
    # any file tta eval scores: an .mp3 or .aiff beside a batch's wav files was not named
    for folder, name in ((tmp_path / "mp3", "old.mp3"), (tmp_path / "aiff", "old.aiff")):
        folder.mkdir()
        sf.write(folder / name, signals.tone(440, 0.2), 16_000)
        caplog.clear()
        with caplog.at_level("WARNING", logger="tta.generate"):
            assert run(capsys, "c", *args[:-1], folder)[0] == 0
        assert f"already holds 1 audio file this run does not write (e.g. {name})" in caplog.text


def test_audio_in_a_sub_folder_of_the_out_dir_is_warned_about_as_tta_eval_would_score_it(tmp_path, capsys, caplog):
    """`tta eval` of a folder scores the clips of its sub-folders too (eval.run.list_audio): a batch warned only of
    the folder's own files, so a clip in DIR/sub/ entered a later eval of DIR without a word. The batch's own
    outputs and record (a rerun of it) and a hidden file are not warned of."""
    from eval.run import list_audio

    args = ["a", "b", "--model", tiny_pipeline(), "--seconds", 0.2, "--steps", 2, "--out-dir", tmp_path]
    assert run(capsys, *args)[0] == 0
    with caplog.at_level("WARNING", logger="tta.generate"):
        assert run(capsys, *args)[0] == 0
    assert "does not write" not in caplog.text
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    sf.write(tmp_path / "sub" / "deeper" / "old.flac", signals.tone(440, 0.2), 16_000)
    sf.write(tmp_path / "sub" / ".old.wav", signals.tone(440, 0.2), 16_000)
    caplog.clear()
    with caplog.at_level("WARNING", logger="tta.generate"):
        assert run(capsys, *args)[0] == 0
    assert "already holds 1 audio file this run does not write (e.g. sub/deeper/old.flac)" in caplog.text
    assert [p.relative_to(tmp_path).as_posix() for p in list_audio(tmp_path, "generated")] == \
        ["000_a.wav", "001_b.wav", "sub/deeper/old.flac"]


def test_the_out_dir_warning_stops_its_walk_and_says_at_least(tmp_path, caplog):
    """The default --out-dir is the current folder, maybe a home folder of 100 000s of files: the walk for the
    warning looks at a budget of entries and then says "at least", only where entries were left unread; hidden
    folders (a checkout's .venv, which holds installed packages' test audio) are not entered, as eval skips
    them."""
    from types import SimpleNamespace

    from eval.run import list_audio
    from tta.generate import warn_other_audio

    for i in range(6):
        (tmp_path / f"d{i}").mkdir()
        sf.write(tmp_path / f"d{i}" / "x.wav", signals.tone(440, 0.05), 16_000)
    (tmp_path / ".venv" / "lib").mkdir(parents=True)
    sf.write(tmp_path / ".venv" / "lib" / "test.wav", signals.tone(440, 0.05), 16_000)
    jobs = [SimpleNamespace(path=tmp_path / "000_a.wav")]

    def warned(**budget):
        caplog.clear()
        with caplog.at_level("WARNING", logger="tta.generate"):
            warn_other_audio(jobs, **budget)
        return caplog.text

    assert "already holds 6 audio files this run does not write (e.g. d0/x.wav)" in warned()
    assert "already holds 6 audio files" in warned(budget=6)     # all 6 read: none left, not "at least"
    assert "already holds at least 2 audio files this run does not write (e.g. d0/x.wav)" in warned(budget=2)
    assert len(list_audio(tmp_path, "generated")) == 6          # eval leaves .venv out too


def test_a_long_run_rewrites_its_record_at_most_every_few_seconds(tmp_path, capsys, monkeypatch):
    """Rewriting the growing record after every clip is quadratic in a long prompt list."""
    import tta.generate as generate

    calls, real = [], generate.write_record
    monkeypatch.setattr(generate, "write_record", lambda *a, **k: (calls.append(k["planned"]), real(*a, **k))[1])
    monkeypatch.setattr(generate, "RECORD_EVERY", 1e6)     # however slow this machine is today
    code, _, err = run(capsys, *"abcde", "--model", tiny_pipeline(), "--seconds", 0.2, "--steps", 2,
                       "--out-dir", tmp_path)
    assert code == 0, err
    assert len(calls) == 2      # after the first batch (none written yet) and at the end
    assert json.loads((tmp_path / "generation.json").read_text())["complete"]


def test_a_bad_prompt_id_names_the_prompts_file(tmp_path, capsys):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("id,prompt\n1,a dog\n1,a cat\n")
    code, _, err = run(capsys, "--prompts", prompts, "--model", tmp_path / "no-model", "--out-dir", tmp_path / "o")
    assert code == 1 and f"{prompts}: output name '1' (a row's file field, as its base name, or its id) appears twice" \
        in err, err
    # a file field's base name is the output's name as written (tta eval pairs by it): one a name cannot be is
    # refused, saying what to do; an id is escaped instead (test_ids_with_a_slash_or_colon_...)
    prompts.write_text("file,prompt\nsub/a:b.wav,a dog\n")
    code, _, err = run(capsys, "--prompts", prompts, "--model", tmp_path / "no-model", "--out-dir", tmp_path / "o")
    assert code == 1 and f"{prompts}: output name 'a:b' (a row's file field) cannot be a file name: it holds ':'" \
        in err and "leave the field out to name the output by the row's id" in err, err
    assert not (tmp_path / "o").exists()


def test_ids_with_a_slash_or_colon_name_their_files_and_the_record_keeps_the_ids(tmp_path, capsys):
    """Ids of a manifest imported with --id-prefix ('clotho/...', an older tta's 'audioset:...') were refused:
    'cannot be a file name: it holds '/''. `tta eval --prompts` with the same file pairs the outputs back."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "clotho/dog", "prompt": "a dog"}\n{"id": "audioset:dog", "prompt": "a dog barks"}\n'
                       '{"id": "dog", "prompt": "dog"}\n')
    out = tmp_path / "o"
    code, _, err = run(capsys, "--prompts", prompts, "--model", tiny_pipeline(), "--seconds", 0.2, "--steps", 2,
                       "--out-dir", out)
    assert code == 0, err
    assert sorted(p.name for p in out.glob("*.wav")) == ["audioset%3Adog.wav", "clotho%2Fdog.wav", "dog.wav"]
    record = json.loads((out / "generation.json").read_text())
    assert [(o["id"], o["file"]) for o in record["outputs"]] == [
        ("clotho/dog", "clotho%2Fdog.wav"), ("audioset:dog", "audioset%3Adog.wav"), ("dog", "dog.wav")]
    assert main(["-q", "eval", "--generated", str(out), "--reference", str(out), "--metrics", "fad", "--embedder",
                 "mfcc", "--prompts", str(prompts), "--out", str(tmp_path / "e"), "--cache-dir", str(tmp_path / "c")]) == 0
    import csv

    with open(tmp_path / "e" / "items.csv") as f:
        assert {r["name"]: (r["id"], r["prompt"]) for r in csv.DictReader(f)} == {
            "clotho%2Fdog": ("clotho/dog", "a dog"), "audioset%3Adog": ("audioset:dog", "a dog barks"),
            "dog": ("dog", "dog")}


def test_an_empty_prompt_is_named_by_its_file_in_the_warning(tmp_path, capsys, caplog):
    """-o x.wav warned "prompt unconditional is empty": the slug its file name would take, not what the user
    typed or named. A batch's prompt is named by its file stem, -o's by the file."""
    with caplog.at_level("WARNING", logger="tta.pipeline"):
        code, _, err = run(capsys, "a dog", "", "--model", tiny_pipeline(), "--seconds", 0.2, "--steps", 2,
                           "--out-dir", tmp_path)
        assert code == 0, err
        code, _, err = run(capsys, "", "--model", tiny_pipeline(), "--seconds", 0.2, "--steps", 2,
                           "-o", tmp_path / "x.wav")
        assert code == 0, err
    assert [r.message for r in caplog.records if "empty" in r.message] == [
        "001_unconditional: an empty prompt generates unconditionally",
        f"{tmp_path / 'x.wav'}: an empty prompt generates unconditionally"]


def test_a_run_stopped_part_way_leaves_a_record_of_what_it_wrote(tmp_path, capsys, monkeypatch):
    """Outputs are written as they are finished; the record is rewritten after each batch (complete: false
    until the last), so a run stopped part-way never leaves an earlier run's record describing its files."""
    from tta.pipeline import TTAPipeline

    out = tmp_path / "out"
    args = ["x", "y", "z", "--model", tiny_pipeline(), "--seconds", 0.2, "--steps", 2, "--out-dir", out]
    assert run(capsys, *args, "--seed", 0)[0] == 0
    first = json.loads((out / "generation.json").read_text())
    assert first["complete"] and first["planned_outputs"] == 3 and len(first["outputs"]) == 3
    calls = []
    real = TTAPipeline.__call__

    def stop_on_the_second_batch(self, *a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(TTAPipeline, "__call__", stop_on_the_second_batch)
    code, _, err = run(capsys, *args, "--seed", 7, "--seconds", 0.3)
    assert code == 130 and "interrupted" in err
    record = json.loads((out / "generation.json").read_text())
    assert not record["complete"] and record["settings"]["seed"] == 7 and record["settings"]["seconds"] == 0.3
    assert [o["file"] for o in record["outputs"]] == ["000_x.wav"]
    assert sf.info(str(out / "000_x.wav")).frames == 4800   # the new run's file, as the record says


def test_loud_generations_are_turned_down_not_clipped():
    import numpy as np

    from tta.generate import fit_full_scale

    loud = np.array([0.5, -3.0, 1.5], dtype=np.float32)
    wav, gain = fit_full_scale(loud)
    assert np.isclose(np.abs(wav).max(), 0.99) and np.allclose(wav / gain, loud)
    quiet = np.array([0.1, -0.2], dtype=np.float32)
    assert fit_full_scale(quiet)[1] == 1.0 and np.array_equal(fit_full_scale(quiet)[0], quiet)


def test_the_recorded_clap_scores_and_the_kept_candidate_are_those_of_the_audio_written(tmp_path, capsys,
                                                                                        monkeypatch):
    """generation.json's clap_score and candidate_clap_scores, and the best-of-N ranking, scored a clip before the
    gain that fits it in the file: with a Griffin-Lim vocoder the tiny model's clips come out 4-5x over full
    scale, and the record named candidate 2 kept (-0.029093) where the file, candidate 2 turned down, scored
    -0.029161 and candidate 1 as written scored best (-0.028985)."""
    from tta.generate import fit_full_scale
    from tta.pipeline import TTAPipeline

    loud = tmp_path / "gl"
    assert main(["-q", "export", "pipeline", str(tiny_pipeline()), "--out", str(loud),
                 "--vocoder", "griffin-lim:4"]) == 0
    rescored = []   # the prompts tta generate scored again (TTAPipeline.clap_scores, which still scores)
    real = TTAPipeline.clap_scores

    def counted(self, prompts, *a, **kw):
        rescored.append(prompts[0])
        return real(self, prompts, *a, **kw)

    monkeypatch.setattr(TTAPipeline, "clap_scores", counted)
    prompts = ["a tone sound", "a chirp sound"]
    code, _, err = run(capsys, *prompts, "--model", loud, "--seconds", 0.32, "--steps", 2, "--candidates", 3,
                       "--out-dir", tmp_path / "out")
    assert code == 0, err
    assert rescored == prompts
    record = json.loads((tmp_path / "out" / "generation.json").read_text())
    pipe = TTAPipeline.from_pretrained(loud)
    for k, output in enumerate(record["outputs"]):   # one prompt a batch, prompt k with seed k, as generate draws
        drawn = pipe([prompts[k]], seconds=0.32, steps=2, candidates=3, seed=k, return_candidates=True)
        fitted = [fit_full_scale(w) for w in drawn.candidate_wavs[0]]
        assert all(gain < 0.5 for _, gain in fitted)   # every candidate is turned down
        written = pipe.clap_scores([prompts[k]] * 3, [w for w, _ in fitted])
        assert output["candidate_clap_scores"] == pytest.approx(written, abs=2e-6)
        best = int(np.argmax(written))
        assert output["kept_candidate"] == best and output["clap_score"] == pytest.approx(written[best], abs=2e-6)
        assert output["gain"] == pytest.approx(fitted[best][1], rel=1e-5)
        got, _ = sf.read(tmp_path / "out" / output["file"], dtype="float32")
        np.testing.assert_allclose(got, fitted[best][0], atol=1 / 32768)
        assert pipe.clap_scores([prompts[k]], [got])[0] == pytest.approx(output["clap_score"], abs=2e-5)
    # no candidate turned down (the HiFi-GAN's tanh keeps the tiny model's clips under full scale): the pipeline's
    # own scores and ranking, not scored again
    rescored.clear()
    code, _, err = run(capsys, *prompts, "--model", tiny_pipeline(), "--seconds", 0.32, "--steps", 2,
                       "--candidates", 3, "--out-dir", tmp_path / "quiet")
    assert code == 0 and rescored == [], err
    record = json.loads((tmp_path / "quiet" / "generation.json").read_text())
    pipe = TTAPipeline.from_pretrained(tiny_pipeline())
    for k, output in enumerate(record["outputs"]):
        drawn = pipe([prompts[k]], seconds=0.32, steps=2, candidates=3, seed=k)
        assert output["gain"] == 1.0
        assert output["candidate_clap_scores"] == [round(s, 6) for s in drawn.candidate_scores[0]]
        assert output["kept_candidate"] == int(np.argmax(drawn.candidate_scores[0]))


@pytest.mark.parametrize("dc", [0.0, 0.35])
def test_an_edit_turned_down_for_its_file_ranks_its_candidates_as_written(tmp_path, capsys, dc):
    """An inpainting of a full-scale input is turned down whole to leave room for the gap: its candidates are
    scored again as written, at the level the model heard its input, on the gap and its surroundings. An input
    with a DC offset: the file holds it turned down with the whole clip, and the audio scored held the part of it
    the turn-down took off (the input's whole offset was subtracted)."""
    from tta.generate import fit_generated, kept_part
    from tta.pipeline import TTAPipeline, edit_input

    sr = 16_000
    raw = signals.chirp(200, 4000, 2.0)
    raw = ((0.999 - dc) * raw / np.abs(raw).max() + dc).astype(np.float32)
    save_audio(tmp_path / "in.wav", raw, sr)
    code, _, err = run(capsys, "a bell", "--model", tiny_pipeline(), "--steps", 2, "--candidates", 3,
                       "--inpaint", tmp_path / "in.wav", "--mask", "0.8:1.0", "-o", tmp_path / "out.wav")
    assert code == 0, err
    output = json.loads((tmp_path / "out.generation.json").read_text())["outputs"][0]
    assert output["gain"] < 0.95
    given, _ = sf.read(tmp_path / "in.wav", dtype="float32")
    pipe = TTAPipeline.from_pretrained(tiny_pipeline())
    drawn = pipe.inpaint(given, ["a bell"], start=0.8, end=1.0, steps=2, candidates=3, return_candidates=True)
    kept = kept_part({"kind": "inpaint", "outside": "original", "start": 0.8, "end": 1.0}, given, sr)
    fits = [fit_generated(w, kept) for w in drawn.candidate_wavs[0]]
    fitted = [w for w, _, _ in fits]
    assert all(generated_gain == 1.0 for _, _, generated_gain in fits)
    # what the model heard and made (its input, normalised by edit_input, outside the gap), turned down as the
    # file is: the candidate back at the model's scale (as the pipeline ranked it) times the file's gain
    heard = [gain * (w - np.float32(drawn.input_offset)) / np.float32(drawn.input_level)
             for w, (_, gain, _) in zip(drawn.candidate_wavs[0], fits)]
    outside = slice(0, 12_000)   # before the gap's crossfade: the input's own samples
    for h, (_, gain, _) in zip(heard, fits):
        np.testing.assert_allclose(h[outside], gain * edit_input(given)[0][outside], atol=1e-5)
    assert drawn.rank_span == (4800, 24_000)   # the gap [12 800, 16 000) with 0.5 s on each side
    written = pipe.clap_scores(["a bell"] * 3, heard, drawn.rank_span)
    assert output["candidate_clap_scores"] == pytest.approx(written, abs=2e-6)
    assert output["kept_candidate"] == int(np.argmax(written))
    got, _ = sf.read(tmp_path / "out.wav", dtype="float32")
    np.testing.assert_allclose(got, fitted[output["kept_candidate"]], atol=1 / 32768)


def test_guidance_rule_flag_is_used_and_recorded(tmp_path, capsys):
    args = ["a bell", "--model", tiny_pipeline(), "--seconds", 0.2, "--steps", 2, "--guidance", 3.0]
    assert run(capsys, *args, "-o", tmp_path / "cfg.wav")[0] == 0
    assert run(capsys, *args, "--guidance-rule", "apg", "-o", tmp_path / "apg.wav")[0] == 0
    record = json.loads((tmp_path / "apg.generation.json").read_text())
    assert record["settings"]["guidance_rule"] == "apg" and record["model_defaults"]["guidance_rule"] == "cfg"
    assert json.loads((tmp_path / "cfg.generation.json").read_text())["settings"]["guidance_rule"] == "cfg"


def test_precision_flag_is_used_and_recorded(tmp_path, capsys):
    args = ["a bell", "--model", tiny_pipeline(), "--seconds", 0.2, "--steps", 2, "--guidance", 3.0]
    assert run(capsys, *args, "--precision", "bfloat16", "-o", tmp_path / "low.wav")[0] == 0
    assert json.loads((tmp_path / "low.generation.json").read_text())["settings"]["precision"] == "bfloat16"
    assert run(capsys, *args, "-o", tmp_path / "full.wav")[0] == 0
    assert json.loads((tmp_path / "full.generation.json").read_text())["settings"]["precision"] == "float32"
    with pytest.raises(SystemExit) as e:                     # argparse: usage + one line, exit status 2
        run(capsys, *args, "--precision", "half", "-o", tmp_path / "bad.wav")
    assert e.value.code == 2 and "--precision" in capsys.readouterr().err and not (tmp_path / "bad.wav").exists()


def test_an_edit_comes_out_at_its_inputs_level(tmp_path, capsys):
    """Two inputs that differ only in level are normalised to the same model input; their outputs differ by
    the same factor (the recorded input_level), so what an edit keeps keeps its loudness."""
    outs = {}
    for level in (0.2, 0.8):
        save_audio(tmp_path / f"in{level}.wav", signals.tone(440, 0.32, amplitude=level), 16_000)
        out = tmp_path / f"out{level}.wav"
        code, _, err = run(capsys, "a tone", "--model", tiny_pipeline(), "--inpaint", tmp_path / f"in{level}.wav",
                           "--mask", "0.1:0.2", "-o", out, "--steps", 2)
        assert code == 0, err
        record = json.loads(out.with_name(out.stem + ".generation.json").read_text())
        assert record["edit"]["input_level"] == pytest.approx(level / 0.5, rel=1e-3)
        assert record["outputs"][0]["gain"] == 1.0          # not turned down: the ratio below is the level's
        outs[level], _ = sf.read(out)
    ratio = float((abs(outs[0.8]).max()) / abs(outs[0.2]).max())
    assert ratio == pytest.approx(4.0, rel=1e-3)


def test_an_inpainted_file_holds_the_inputs_own_16_bit_samples_outside_the_gap(tmp_path, capsys):
    """The kept parts went through the edit's level and back in float32 and came out a rounding step under the
    16-bit grid, which the file writer floors: a 16 kHz 16-bit recording got ~2 % of its kept samples one step
    lower."""
    from tta.pipeline import inpaint_weight

    sr = 16_000
    raw = 0.62 * signals.chirp(200, 4000, 0.64) + 0.2 * signals.noise(0.64, seed=3) + 0.013   # with a DC offset
    sf.write(tmp_path / "take.wav", raw, sr, subtype="PCM_16")
    take, _ = sf.read(tmp_path / "take.wav", dtype="int16")
    code, _, err = run(capsys, "a bell", "--model", tiny_pipeline(), "--steps", 2, "--inpaint", tmp_path / "take.wav",
                       "--mask", "0.2:0.4", "-o", tmp_path / "out.wav")
    assert code == 0, err
    out, rate = sf.read(tmp_path / "out.wav", dtype="int16")
    outside = inpaint_weight(len(take), 0.2, 0.4, sr) == 0
    assert rate == sr and len(out) == len(take) and outside.sum() > 0.6 * len(take)
    np.testing.assert_array_equal(out[outside], take[outside])
    assert not np.array_equal(out[~outside], take[~outside])


def test_a_loud_generated_part_is_turned_down_alone_and_the_kept_audio_stays_the_inputs():
    """fit_full_scale on the whole spliced clip turned the kept part down with a loud gap (gain 0.2: the kept
    samples came out at a fifth of the input's level)."""
    from tta.generate import fit_generated, kept_part
    from tta.pipeline import inpaint_weight

    sr, n = 16_000, 16_000
    t = np.arange(n)
    raw = (0.8 * np.sin(t * 0.05) + 0.05).astype(np.float32)                # the input, DC offset included
    edit = {"kind": "inpaint", "outside": "original", "start": 0.4, "end": 0.6}
    kept = kept_part(edit, raw, sr)
    w = inpaint_weight(n, 0.4, 0.6, sr)
    gap = (3.0 * np.sin(t * 0.3)).astype(np.float32)                         # a gap three times too loud
    wav, gain, generated_gain = fit_generated(kept + w * gap, kept)
    assert gain == 1.0 and 0 < generated_gain < 0.35 and np.abs(wav).max() <= 0.99 + 1e-6
    np.testing.assert_allclose(wav[w == 0], raw[w == 0], atol=1e-6)
    np.testing.assert_allclose(wav[w == 1], generated_gain * gap[w == 1], atol=1e-5)
    assert fit_generated(kept + w * 0.1 * gap, kept)[1:] == (1.0, 1.0)          # fits as it is
    wav, gain, generated_gain = fit_generated(1.3 * kept + w * gap, 1.3 * kept)   # the input is over full scale
    assert gain < 1.0 and np.abs(wav).max() <= 0.99 + 1e-6
    assert generated_gain > 0.2 and np.abs(wav[w == 1]).max() > 0.5     # the gap kept (it was dropped to silence)
    full = kept / np.abs(kept).max()                                      # an input peak-normalised to 0 dBFS
    wav, gain, generated_gain = fit_generated(full + w * 0.3 * gap, full)
    assert gain == pytest.approx(0.9 * 0.99) and generated_gain > 0.5 and np.abs(wav[w == 1]).max() > 0.3
    # super-resolution keeps the band below the cutoff: a 300 Hz tone stays, a 5 kHz one is the generated part's
    low, high = 0.3 * np.sin(2 * np.pi * 300 * t / sr), 0.3 * np.sin(2 * np.pi * 5000 * t / sr)
    kept = kept_part({"kind": "super_resolution", "outside": "original", "cutoff_hz": 2000.0},
                     (low + high).astype(np.float32), sr)
    np.testing.assert_allclose(kept[1000:-1000], low[1000:-1000], atol=2e-3)
    assert kept_part({"kind": "audio_to_audio"}, raw, sr) is None
    # a full-scale input under a band generated everywhere: the whole clip goes to 0.9 of full scale, and the
    # band keeps an audible level in the room that leaves (it was turned down to -44 dB)
    low_full = (low / np.abs(low).max()).astype(np.float32)
    wav, gain, generated_gain = fit_generated(low_full + high.astype(np.float32), low_full)
    assert gain == pytest.approx(0.9 * 0.99) and generated_gain > 0.25 and np.abs(wav).max() <= 0.99 + 1e-6


def test_a_stopped_run_records_every_file_it_wrote_and_a_broken_sample_is_reported(tmp_path, capsys, caplog,
                                                                                  monkeypatch):
    """The record was rewritten at most every 10 s, and not when the run stopped: after Ctrl-C it listed one of
    three written files. An output turned down by over 10x to fit full scale passed without a word."""
    from tta.pipeline import Generation, TTAPipeline

    calls = []

    def fake_call(self, prompts, seed=0, **kw):
        calls.append(prompts)
        if len(calls) == 3:
            raise KeyboardInterrupt
        loud = 40.0 if len(calls) == 2 else 0.5
        wavs = [np.full(1600, loud, np.float32) for _ in prompts]
        return Generation(wavs, 16_000, [0.1] * len(prompts), [[0.1]] * len(prompts),
                          [[seed + i] for i in range(len(prompts))], candidate_wavs=[[w] for w in wavs])

    monkeypatch.setattr(TTAPipeline, "__call__", fake_call)
    with caplog.at_level("WARNING", logger="tta.generate"):
        code, _, err = run(capsys, "a", "b", "c", "d", "--model", tiny_pipeline(), "--out-dir", tmp_path)
    record = json.loads((tmp_path / "generation.json").read_text())
    assert code == 130 and "interrupted" in err
    assert [o["file"] for o in record["outputs"]] == ["000_a.wav", "001_b.wav"] and not record["complete"]
    assert sorted(p.name for p in tmp_path.glob("*.wav")) == ["000_a.wav", "001_b.wav"]
    assert "001_b.wav came out 40x over full scale" in caplog.text and "000_a.wav" not in caplog.text
    assert set(record["model_files_sha256"]) == {"pipeline.json", "unet", "scheduler", "vae", "vocoder", "text_encoder"}
    assert all(len(h) == 16 for h in record["model_files_sha256"].values())


def test_a_prompt_rows_file_column_names_its_output_as_tta_eval_pairs_it(tmp_path, capsys):
    (tmp_path / "p.csv").write_text("file,caption\nclipA.wav,a dog barks\nclipB.flac,rain\n")
    code, _, err = run(capsys, "--prompts", tmp_path / "p.csv", "--model", tiny_pipeline(), "--seconds", 0.2,
                       "--steps", 1, "--out-dir", tmp_path / "g")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "g").glob("*.wav")) == ["clipA.wav", "clipB.wav"]
    from eval.prompts import read_prompts

    assert set(read_prompts(tmp_path / "p.csv")) == {"clipA", "clipB"}       # the keys tta eval pairs by
    # a path names its output by its base name (tta eval pairs a file by its base name too); two alike are refused
    (tmp_path / "q.csv").write_text("id,prompt,path\nd1,a dog,/data/test/Y0001.wav\nd2,rain,/data/test/Y0002.wav\n")
    code, _, err = run(capsys, "--prompts", tmp_path / "q.csv", "--model", tiny_pipeline(), "--seconds", 0.2,
                       "--steps", 1, "--out-dir", tmp_path / "q")
    assert code == 0 and sorted(p.name for p in (tmp_path / "q").glob("*.wav")) == ["Y0001.wav", "Y0002.wav"], err
    (tmp_path / "r.csv").write_text("file,caption\na/x.wav,a dog\nb/x.wav,rain\n")
    code, _, err = run(capsys, "--prompts", tmp_path / "r.csv", "--model", tiny_pipeline(), "--out-dir", tmp_path / "h")
    assert code == 1 and "output name 'x' (a row's file field, as its base name, or its id) appears twice" in err, err
    code, _, err = run(capsys, "x", "--model", tiny_pipeline(), "--seconds", 0.005, "--out-dir", tmp_path / "h")
    assert code == 1 and "--seconds 0.005 is shorter than one mel frame of this model (0.01 s)" in err
    assert not (tmp_path / "h").exists()


def test_an_edit_input_that_is_silent_as_heard_is_named_in_a_warning(tmp_path, capsys, caplog):
    """A stereo take whose channels cancel (one wired in antiphase) or a silent file was edited without a word: the
    edit heard silence, or the 16-bit rounding left of it normalised to the training audio's peak."""
    take = signals.chirp(300, 3000, 0.32)
    sf.write(tmp_path / "antiphase.wav", np.stack([take, -take], axis=1), 16_000)
    sf.write(tmp_path / "take.wav", np.stack([take, 0.5 * take], axis=1), 16_000)
    sf.write(tmp_path / "quiet.wav", 0.004 * take, 16_000)                     # -54 dBFS: quiet, not silent
    for name, how in (("antiphase", "16000 Hz mono, its 2 channels averaged: peak below -60 dBFS"), ("take", None),
                      ("quiet", None)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="tta.generate"):
            code, _, err = run(capsys, "a bell", "--model", tiny_pipeline(), "--steps", 2, "--init-audio",
                               tmp_path / f"{name}.wav", "-o", tmp_path / f"{name}-out.wav")
        assert code == 0 and (tmp_path / f"{name}-out.wav").is_file(), err
        silent = [r.message for r in caplog.records if "silent as the edit hears it" in r.message]
        assert silent == ([f"{tmp_path / 'antiphase.wav'}: silent as the edit hears it ({how}): there is nothing "
                           "for it to keep or follow"] if how else [])


def test_an_edit_input_with_no_or_one_sample_is_refused_before_the_model_loads(tmp_path, capsys):
    """A 1-sample or 0-sample input was found only after the model loaded (16 s here), and the 1-sample
    message named neither the file nor the flag."""
    sf.write(tmp_path / "one.wav", np.zeros(1, np.float32), 16_000)
    sf.write(tmp_path / "none.wav", np.zeros(0, np.float32), 16_000)
    for name, message in (("one.wav", "one.wav: 0.0001 s of audio, shorter than one mel frame"),
                          ("none.wav", "none.wav: contains 0 samples")):
        code, _, err = run(capsys, "x", "--model", tiny_pipeline(), "--init-audio", tmp_path / name,
                           "--out-dir", tmp_path / "o")
        assert code == 1 and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("flag", [["--init-audio"], ["--inpaint", "--mask", "0.1:0.2"],
                                  ["--super-resolution", "--cutoff", "3000"]], ids=lambda f: f[0])
def test_an_edit_input_that_does_not_decode_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch, flag):
    """A FLAC cut short (its header reads, its audio loses sync) or a float WAV holding NaN passed the header
    check and failed once the model had loaded (11 s for the embedded model), without the 'unreadable input
    audio:' the other input errors begin with."""
    from tta.pipeline import TTAPipeline

    rng = np.random.default_rng(0)
    sf.write(tmp_path / "whole.flac", 0.3 * rng.standard_normal(16_000), 16_000)
    (tmp_path / "cut.flac").write_bytes((tmp_path / "whole.flac").read_bytes()[:15_000])
    sf.write(tmp_path / "nan.wav", np.array([0.1, np.nan] * 2400, np.float32), 16_000, subtype="FLOAT")

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(TTAPipeline, "from_pretrained", no_load)
    for name, why in (("cut.flac", "not a readable audio file (Error : flac decoder lost sync)"),
                      ("nan.wav", "contains non-finite samples (NaN or inf)")):
        code, _, err = run(capsys, "x", "--model", tiny_pipeline(), flag[0], tmp_path / name, *flag[1:], "--out-dir",
                           tmp_path / "o")
        assert code == 1 and err.splitlines() == [f"tta: error: unreadable input audio: {tmp_path / name}: {why}"], err
        assert not (tmp_path / "o").exists()


def test_a_sampler_that_cannot_start_part_way_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """--init-audio with --strength below 1 and --sampler pndm (or a model whose default sampler is lms) was
    refused only once the model had loaded and the input was encoded (5 s for the embedded model)."""
    from tta.pipeline import TTAPipeline

    save_audio(tmp_path / "in.wav", signals.tone(440, 0.32), 16_000)
    model = copy_pipeline(tmp_path / "model")
    spec = json.loads((model / "pipeline.json").read_text())
    spec["defaults"]["sampler"] = "lms"
    (model / "pipeline.json").write_text(json.dumps(spec))

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(TTAPipeline, "from_pretrained", no_load)
    for extra, message in ((["--model", tiny_pipeline(), "--sampler", "pndm"], "--sampler pndm: the pndm sampler "
                            "cannot start part-way"),
                           (["--model", model], "--strength 0.5 with this model's sampler (lms): the lms sampler "
                            "cannot start part-way")):
        code, _, err = run(capsys, "a bell", "--init-audio", tmp_path / "in.wav", *extra, "-o", tmp_path / "o.wav")
        assert code == 1 and message in err and err.count("\n") == 1, err
        assert not (tmp_path / "o.wav").exists()
    monkeypatch.undo()   # strength 1 starts from noise: any sampler takes it
    code, _, err = run(capsys, "a bell", "--init-audio", tmp_path / "in.wav", "--model", model, "--strength", 1,
                       "-o", tmp_path / "o.wav")
    assert code == 0 and (tmp_path / "o.wav").is_file(), err


def test_an_edit_never_overwrites_its_input_and_records_what_it_read(tmp_path, capsys):
    """`-o clip.wav --inpaint clip.wav` replaced the 44.1 kHz original with the 16 kHz edit, and the record named
    the new file as its input."""
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.stack([signals.tone(440, 0.4, sample_rate=22_050)] * 2, axis=1), 22_050)
    before = clip.read_bytes()
    code, _, err = run(capsys, "a bell", "--model", tiny_pipeline(), "--inpaint", clip, "--mask", "0.1:0.2",
                       "-o", clip)
    assert code == 1 and "is the edit's input audio" in err and clip.read_bytes() == before
    code, _, err = run(capsys, "a bell", "--model", tiny_pipeline(), "--steps", 2, "--super-resolution", clip,
                       "--cutoff", 3000, "-o", tmp_path / "sr.wav")
    assert code == 0, err
    edit = json.loads((tmp_path / "sr.generation.json").read_text())["edit"]
    import hashlib

    assert edit["input_sha256"] == hashlib.sha256(before).hexdigest()
    assert (edit["input_sample_rate"], edit["input_channels"], edit["outside"]) == (22_050, 2, "original")


def test_a_training_run_folder_given_as_model_points_at_its_pipeline(tmp_path, capsys):
    import shutil

    run_folder = tmp_path / "runs" / "ldm"
    shutil.copytree(tiny_pipeline(), run_folder / "pipeline")
    code, _, err = run(capsys, "x", "--model", run_folder, "--out-dir", tmp_path / "o")
    assert code == 1 and f"its pipeline is {run_folder / 'pipeline'}" in err, err


def test_generate_leaves_the_callers_garbage_collector_as_it_found_it(tmp_path, capsys):
    """generate.main turned the collector on and froze every object of its caller, after any call."""
    import gc

    frozen = gc.get_freeze_count()
    gc.disable()
    try:
        code, _, _ = run(capsys, "x", "--model", tiny_pipeline(), "--seconds", 0.2, "--steps", 1, "--out-dir", tmp_path)
        assert code == 0 and not gc.isenabled() and gc.get_freeze_count() == frozen
    finally:
        gc.enable()
    code, _, _ = run(capsys, "x", "--model", tiny_pipeline(), "--threads", 0, "--out-dir", tmp_path)
    assert code == 1 and gc.isenabled() and gc.get_freeze_count() == frozen


def test_generate_leaves_the_callers_torch_thread_count_as_it_found_it(tmp_path, capsys):
    """main() from Python left torch at --threads N for good, after the command: the caller's later work ran on N
    threads. The run itself uses N (its record says so), and a run that fails after setting it puts it back too."""
    import torch

    torch.set_num_threads(2)   # the caller's (conftest sets 1 again before the next test)
    code, _, err = run(capsys, "x", "--model", tiny_pipeline(), "--seconds", 0.2, "--steps", 1, "--threads", 1,
                       "--out-dir", tmp_path / "a")
    assert code == 0, err
    assert json.loads((tmp_path / "a" / "generation.json").read_text())["settings"]["threads"] == 1
    assert torch.get_num_threads() == 2
    broken = copy_pipeline(tmp_path / "broken")   # a model whose weights fail to load, once the threads are set
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code, _, err = run(capsys, "x", "--model", broken, "--threads", 1, "--out-dir", tmp_path / "b")
    assert code == 1 and "unreadable safetensors file" in err and torch.get_num_threads() == 2


def test_bad_usage_exits_2_with_v_too_and_names_only_the_flags_given(tmp_path, capsys):
    from tta.cli import main

    code = main(["-v", "generate", "x", "--mask", "0:1", "-o", str(tmp_path / "o.wav")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1] == "tta: error: --mask needs --inpaint WAV"


def test_a_cutoff_above_what_the_input_file_can_hold_is_refused(tmp_path, capsys):
    """--super-resolution of an 8 kHz file with --cutoff 6000 kept 4-6 kHz as the silence the file holds there: a
    hole in the output's spectrum, without a word."""
    sf.write(tmp_path / "phone.wav", signals.chirp(200, 3500, 0.4, sample_rate=8_000), 8_000)
    code, _, err = run(capsys, "a voice", "--model", tiny_pipeline(), "--super-resolution",
                       tmp_path / "phone.wav", "--cutoff", 6000, "-o", tmp_path / "o.wav")
    assert code == 1 and err.count("\n") == 1 and (
        f"--cutoff 6000 Hz is above the highest frequency {tmp_path / 'phone.wav'} can hold (8000 Hz sampling: "
        "4000 Hz); the band between would stay silent: give --cutoff 4000 or lower") in err, err
    assert not (tmp_path / "o.wav").exists()
    code, _, err = run(capsys, "a voice", "--model", tiny_pipeline(), "--steps", 2, "--super-resolution",
                       tmp_path / "phone.wav", "--cutoff", 4000, "-o", tmp_path / "o.wav")
    assert code == 0 and sf.info(str(tmp_path / "o.wav")).samplerate == 16_000, err


def test_an_edit_input_or_range_given_twice_is_refused(tmp_path, capsys):
    """argparse kept the last of two --init-audio (or --mask) without a word: one output, of the second file."""
    from tta.cli import main

    for flag, first, second in (("--init-audio", "a.wav", "b.wav"), ("--inpaint", "a.wav", "b.wav"),
                                ("--super-resolution", "a.wav", "b.wav"), ("--mask", "0:1", "2:3")):
        with pytest.raises(SystemExit) as e:
            main(["generate", "x", flag, first, flag, second, "-o", str(tmp_path / "o.wav")])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.strip().splitlines()[-1] == (
            f"tta generate: error: {flag} given twice ({first}, {second}): an edit takes one input audio and one "
            "range; run tta generate once for each"), err
    assert not list(tmp_path.iterdir())


def test_a_batch_stopped_with_sigterm_records_every_file_it_wrote(tmp_path, capsys, monkeypatch):
    """kill, timeout, a scheduler's cancel and docker stop send SIGTERM, which ended the process at once: the
    record (rewritten at most every 10 s) listed only the first of six files written."""
    import os
    import signal

    from tta import generate
    from tta.pipeline import TTAPipeline

    calls, real = [], TTAPipeline.__call__

    def terminated_on_the_third_batch(self, *a, **kw):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *a, **kw)

    monkeypatch.setattr(TTAPipeline, "__call__", terminated_on_the_third_batch)
    monkeypatch.setattr(generate, "RECORD_EVERY", 1e6)
    code, _, err = run(capsys, "a", "b", "c", "d", "--model", tiny_pipeline(), "--seconds", 0.2, "--steps", 1,
                       "--out-dir", tmp_path)
    assert code == 143 and err == "tta: terminated\n"
    record = json.loads((tmp_path / "generation.json").read_text())
    assert not record["complete"] and [o["file"] for o in record["outputs"]] == ["000_a.wav", "001_b.wav"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_batch_names_and_seeds_are_checked_before_the_model_loads(tmp_path, capsys, caplog):
    """A name too long for the file system failed after earlier rows were written; a --seed whose last row passes
    2**62 failed part-way with a seed the user never gave; a valid name in a decomposed (macOS) spelling, in
    Devanagari or with spaces was refused; two names that differ only in case pass on Linux and are one file on
    macOS and Windows."""
    no_model = tmp_path / "no-model"
    prompts = tmp_path / "p.csv"
    prompts.write_text(f"id,prompt\nfirst,a dog\n{'a' * 300},a cat\n")
    code, _, err = run(capsys, "--prompts", prompts, "--model", no_model, "--out-dir", tmp_path / "o")
    assert code == 1 and f"{prompts}: id {'a' * 37 + '...'!r} names a file of 304 bytes" in err, err
    code, _, err = run(capsys, "a", "b", "--seed", 2**62 - 1, "--model", no_model, "--out-dir", tmp_path / "o")
    assert code == 1 and "--seed 4611686018427387903 with 2 prompts" in err, err
    prompts.write_text("id,prompt\nDog,a dog\ndog,a small dog\n")
    code, _, err = run(capsys, "--prompts", prompts, "--model", no_model, "--out-dir", tmp_path / "o")
    assert code == 1 and "appears twice, as 'Dog' and 'dog'" in err, err
    assert not (tmp_path / "o").exists()
    import unicodedata

    decomposed = unicodedata.normalize("NFD", "café")
    prompts.write_text(f"id,prompt\n{decomposed},a cafe\nकुत्ता,a dog\ndog bark 01,a dog barks\n")
    with caplog.at_level("WARNING", logger="tta.generate"):
        code, _, err = run(capsys, "--prompts", prompts, "--model", tiny_pipeline(), "--seconds", 0.2, "--steps", 1,
                           "--out-dir", tmp_path / "u")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "u").glob("*.wav")) == sorted(
        [f"{decomposed}.wav", "कुत्ता.wav", "dog bark 01.wav"])


def test_prompt_file_columns_generate_does_not_read_are_named(tmp_path, capsys, caplog):
    prompts = tmp_path / "p.csv"
    prompts.write_text("prompt,seed,seconds\na dog,7,2\n,,\n,,\n")   # and a spreadsheet's empty rows
    with caplog.at_level("WARNING", logger="tta.generate"):
        code, _, err = run(capsys, "--prompts", prompts, "--model", tiny_pipeline(), "--seconds", 0.2,
                           "--steps", 1, "--out-dir", tmp_path / "o")
    assert code == 0, err
    assert [p.name for p in (tmp_path / "o").glob("*.wav")] == ["000_a_dog.wav"]
    assert any("does not read its fields seconds, seed" in r.message for r in caplog.records)
    from eval.prompts import read_prompts

    assert {k: r.prompt for k, r in read_prompts(prompts, ["000_a_dog"]).items()} == {"000_a_dog": "a dog"}


def test_a_refused_run_prints_its_error_alone_not_the_warning_of_unread_fields_first(tmp_path, capsys, caplog):
    """The warning of a prompts file's fields tta generate does not read came as the file was read, before the
    refusals that follow (--format flac --resume into a wav batch, --steps past the model's timesteps): a refused
    run printed it and then its error. It comes once the run is sure to run, once, in a batch and with -o."""
    prompts = tmp_path / "p.csv"
    prompts.write_text("file,caption,seed\ndoor,a door slams,3\nrain,rain on a roof,4\n")
    args = ["--prompts", prompts, "--model", tiny_pipeline(), "--seconds", 0.2, "--steps", 1]

    def unread():
        return [r for r in caplog.records if "does not read its field seed;" in r.message]

    with caplog.at_level("WARNING", logger="tta.generate"):
        assert run(capsys, *args, "--out-dir", tmp_path / "b")[0] == 0
    assert len(unread()) == 1
    for more in (["--out-dir", tmp_path / "b", "--format", "flac", "--resume"], ["--out-dir", tmp_path / "c",
                                                                                "--steps", 5000]):
        caplog.clear()
        with caplog.at_level("WARNING", logger="tta.generate"):
            code, out, err = run(capsys, *args, *more)
        assert code == 1 and out == "" and caplog.records == [], caplog.text
        assert len(err.strip().splitlines()) == 1 and err.startswith("tta: error: "), err
    assert not (tmp_path / "c").exists()
    prompts.write_text("file,caption,seed\ndoor,a door slams,3\n")   # -o FILE: one row
    caplog.clear()
    with caplog.at_level("WARNING", logger="tta.generate"):
        code, _, err = run(capsys, *args, "-o", tmp_path / "x.wav", "--steps", 5000)
    assert code == 1 and caplog.records == [] and len(err.strip().splitlines()) == 1, err
    with caplog.at_level("WARNING", logger="tta.generate"):
        assert run(capsys, *args, "-o", tmp_path / "x.wav")[0] == 0
    assert len(unread()) == 1


def test_slugs_keep_marks_and_txt_prompts_end_at_newlines_only(tmp_path):
    import unicodedata

    from tta.data.prompts import read_prompt_file
    from tta.generate import slug

    assert slug("कुत्ता भौंकता है") == "कुत्ता_भौंकता_है"
    assert slug("☀️ sunny day") == "sunny_day" and slug("a heart ❤️") == "a_heart"   # no stray variation selector
    assert slug(unicodedata.normalize("NFD", "Crème brûlée")) == "crème_brûlée"
    (tmp_path / "p.txt").write_text("a dog\x0cbarks\nrain\u2028on a roof\r\nwind\n")
    assert [r.prompt for r in read_prompt_file(tmp_path / "p.txt")] == ["a dog\x0cbarks", "rain\u2028on a roof", "wind"]


def test_an_output_that_would_replace_another_files_record_is_warned_about(tmp_path, capsys, caplog):
    args = ["a dog", "--model", tiny_pipeline(), "--seconds", 0.2, "--steps", 1]
    assert run(capsys, *args, "-o", tmp_path / "x.flac")[0] == 0
    with caplog.at_level("WARNING", logger="tta.generate"):
        assert run(capsys, *args, "-o", tmp_path / "x.ogg")[0] == 0
    assert any("will replace the record of" in r.message and "x.flac" in r.message for r in caplog.records)
    # a damaged record there is replaced ("outputs": 5 failed on "'int' object is not iterable")
    (tmp_path / "y.generation.json").write_text('{"outputs": 5}')
    assert run(capsys, *args, "-o", tmp_path / "y.wav")[0] == 0
    assert json.loads((tmp_path / "y.generation.json").read_text())["outputs"][0]["file"] == "y.wav"


def test_a_refused_run_prints_its_error_alone_not_the_warning_of_a_replaced_record_first(tmp_path, capsys, caplog):
    """-o x.flac beside x.wav (x.generation.json records it) warned that its record will replace x.wav's while the
    jobs were planned, before the refusals that follow (a bad flag for the model, a missing model, a busy lock):
    a refused run printed it and then its error. It comes once the run is sure to run, once."""
    args = ["a dog", "--model", tiny_pipeline(), "--seconds", 0.2, "--steps", 1]
    assert run(capsys, *args, "-o", tmp_path / "x.wav")[0] == 0
    caplog.clear()
    refusals = [["--steps", 5000], ["--model", tmp_path / "no_model"], ["--strength", 0.3]]
    for more in refusals:
        with caplog.at_level("WARNING", logger="tta.generate"):
            code, out, err = run(capsys, *args, "-o", tmp_path / "x.flac", *more)
        assert code in (1, 2) and out == "" and caplog.records == [], (more, caplog.text)
        assert len(err.strip().splitlines()) == 1 and err.startswith("tta: error: "), err
    assert not (tmp_path / "x.flac").exists()
    with caplog.at_level("WARNING", logger="tta.generate"):
        assert run(capsys, *args, "-o", tmp_path / "x.flac")[0] == 0
    assert [r.message for r in caplog.records if "will replace the record of" in r.message] == [
        f"{tmp_path / 'x.generation.json'} will replace the record of {tmp_path / 'x.wav'}, which is still there (a "
        "record is named after its output's stem); write to another stem to keep both"]


def test_a_mask_ending_at_the_inputs_printed_length_is_taken(tmp_path, capsys):
    """551 samples at 11.025 kHz print as 0.050 s; --mask 0:0.05 ends a quarter sample past them and was refused
    as 'past the end of ... (0.050 s)'."""
    from tta.audio import save_audio

    clip = tmp_path / "short.wav"
    save_audio(clip, signals.tone(440, 551 / 11_025, 11_025), 11_025)
    code, _, err = run(capsys, "a beep", "--model", tiny_pipeline(), "--inpaint", clip, "--mask", "0:0.05",
                       "--steps", 1, "-o", tmp_path / "o.wav")
    assert code == 0, err
    record = json.loads((tmp_path / "o.generation.json").read_text())
    assert record["edit"]["end"] == pytest.approx(551 / 11_025)
    code, _, err = run(capsys, "a beep", "--model", tiny_pipeline(), "--inpaint", clip, "--mask", "0:0.06",
                       "--steps", 1, "-o", tmp_path / "p.wav")
    assert code == 1 and "(551 samples at 11025 Hz: 0.0499773 s)" in err, err


def test_the_flag_check_has_a_name_of_its_own():
    """tta.generate.check_numbers checked flag ranges while tta.config.check_numbers checks a config dataclass's
    number types: one name for two different rules."""
    import argparse

    import tta.generate
    from tta.generate import GenerateError, check_flag_values

    assert not hasattr(tta.generate, "check_numbers")
    flags = dict(seconds=None, window=None, steps=None, guidance=None, candidates=None, batch_size=1, seed=0,
                 eta=None, sampler=None)
    check_flag_values(argparse.Namespace(**flags))
    with pytest.raises(GenerateError, match=r"^--steps 0 must be >= 1$"):
        check_flag_values(argparse.Namespace(**{**flags, "steps": 0}))


def test_the_record_says_which_seconds_of_an_inpainted_clip_were_sampled(tmp_path, capsys, monkeypatch):
    """A clip longer than the model's window and the gap with INPAINT_CONTEXT on each side is sampled only in a
    window around the gap, and its generation.json did not say so: edit.sampled_seconds is that window now, and
    the whole clip for a shorter one."""
    import tta.pipeline

    monkeypatch.setattr(tta.pipeline, "INPAINT_CONTEXT", 0.3)
    save_audio(tmp_path / "in.wav", signals.chirp(300, 3000, 3.0) * 0.6, 16_000)
    for mask, sampled in (("1.5:1.7", [1.2, 2.0]), ("0.5:2.9", [0.0, 3.0])):
        out = tmp_path / f"out{mask}.wav"
        code, _, err = run(capsys, "a bird", "--model", tiny_pipeline(), "--inpaint", tmp_path / "in.wav",
                           "--mask", mask, "-o", out, "--steps", 2)
        assert code == 0, err
        record = json.loads(out.with_name(out.stem + ".generation.json").read_text())
        assert record["edit"]["sampled_seconds"] == sampled


def test_a_batch_whose_stdout_reader_goes_away_writes_every_file_and_its_record(tmp_path, capsys, monkeypatch):
    """`tta generate --prompts p.txt --out-dir D | head -2` wrote every clip and a complete record, then printed
    "tta: error: [Errno 32] Broken pipe" and exited 1 at the paths it prints last. The paths the reader
    did not take are dropped and the run ends as it would have."""
    import os
    import sys

    r, w = os.pipe()
    os.close(r)   # the reader has gone
    with open(w, "w", buffering=1) as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        code, _, err = run(capsys, "a", "b", "c", "--model", tiny_pipeline(), "--seconds", 0.2, "--steps", 1,
                           "--out-dir", tmp_path)
        assert (code, err) == (0, "")
    record = json.loads((tmp_path / "generation.json").read_text())
    assert record["complete"] and [o["file"] for o in record["outputs"]] == ["000_a.wav", "001_b.wav", "002_c.wav"]
