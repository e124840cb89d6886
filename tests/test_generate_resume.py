"""`tta generate --resume`: a batch stopped part-way is finished as one uninterrupted run would have written it,
and only a run of the same batch (model, settings, rows) is resumed."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from tests.test_generate import run
from tests.test_ldm_fixtures import copy_pipeline, one_thread, tiny_pipeline  # noqa: F401 (autouse)
from tta.audio import save_audio


class Calls(list):
    """The prompts of each batch the pipeline generated; a batch whose first prompt is in `stop_at` raises
    KeyboardInterrupt (Ctrl-C) instead."""

    def __init__(self):
        super().__init__()
        self.stop_at: set[str] = set()


@pytest.fixture
def calls(monkeypatch) -> Calls:
    from tta.pipeline import TTAPipeline

    real = TTAPipeline.__call__
    seen = Calls()

    def recorded(self, prompts, *a, **kw):
        if prompts[0] in seen.stop_at:
            raise KeyboardInterrupt
        seen.append(list(prompts))
        return real(self, prompts, *a, **kw)

    monkeypatch.setattr(TTAPipeline, "__call__", recorded)
    return seen


def batch(tmp_path, rows: str, *extra) -> tuple[list, object]:
    prompts = tmp_path / ("prompts.jsonl" if rows.startswith("{") else "prompts.txt")
    prompts.write_text(rows)
    return ["--prompts", prompts, "--model", tiny_pipeline(), "--seconds", 0.2, "--steps", 2, "--seed", 5,
            "--candidates", 2, *extra], prompts


def wavs(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.wav"))}


def record(folder) -> dict:
    return json.loads((folder / "generation.json").read_text())


def test_a_resumed_batch_writes_what_one_uninterrupted_run_writes(tmp_path, capsys, calls):
    """The interrupted run (--resume with nothing to resume is a plain run) is stopped on its second batch; the
    resumed run generates only the batches it did not write, and the folder then holds the same wav bytes and
    the same outputs' records as one run."""
    args, _ = batch(tmp_path, "a\nb\nc\nd\ne\n", "--batch-size", 2)
    assert run(capsys, *args, "--out-dir", tmp_path / "whole")[0] == 0
    whole = record(tmp_path / "whole")
    calls.clear()
    calls.stop_at.add("c")
    code, _, err = run(capsys, *args, "--out-dir", tmp_path / "part", "--resume")
    assert code == 130 and "interrupted" in err
    assert [o["file"] for o in record(tmp_path / "part")["outputs"]] == ["000_a.wav", "001_b.wav"]
    first = (tmp_path / "part" / "000_a.wav").stat().st_mtime_ns
    calls.clear()
    calls.stop_at.clear()
    code, out, err = run(capsys, *args, "--out-dir", tmp_path / "part", "--resume")
    assert code == 0, err
    assert calls == [["c", "d"], ["e"]]               # the first batch is kept, not generated again
    assert (tmp_path / "part" / "000_a.wav").stat().st_mtime_ns == first
    assert len(out.split()) == 5                      # every output is named, the kept ones too
    assert wavs(tmp_path / "part") == wavs(tmp_path / "whole") and len(wavs(tmp_path / "whole")) == 5
    resumed = record(tmp_path / "part")
    assert resumed["complete"] and resumed["planned_outputs"] == 5
    assert resumed["outputs"] == whole["outputs"] and resumed["settings"] == whole["settings"]
    assert all(len(o["sha256"]) == 64 for o in whole["outputs"])
    # the record says what ran before (its command and wall time were the last run's only)
    assert "earlier_runs" not in whole and len(resumed["earlier_runs"]) == 1
    assert set(resumed["earlier_runs"][0]) == {"command", "cwd", "tta_version", "libsndfile", "wall_seconds"}
    assert resumed["earlier_runs"][0]["wall_seconds"] > 0
    # a finished batch resumed again generates nothing and keeps its files
    calls.clear()
    assert run(capsys, *args, "--out-dir", tmp_path / "part", "--resume")[0] == 0
    assert calls == [] and wavs(tmp_path / "part") == wavs(tmp_path / "whole")
    again = record(tmp_path / "part")["earlier_runs"]
    assert len(again) == 2 and again[0] == resumed["earlier_runs"][0]
    assert again[1]["wall_seconds"] == resumed["wall_seconds"]


TWO_ROWS = "a\nb\n"
ID_ROW = '{"id": "b", "prompt": "b"}\n'


@pytest.mark.parametrize("rows, change, message", [
    (TWO_ROWS, ["--steps", 3], "cannot resume another run (first difference at 'settings.steps': 2 saved, 3 now)"),
    (TWO_ROWS, ["--guidance", 1.5], "first difference at 'settings.guidance': 2.5 saved, 1.5 now"),
    (TWO_ROWS, ["--batch-size", 2], "first difference at 'settings.batch_size': 1 saved, 2 now"),
    (TWO_ROWS, ["--seed", 6], "first difference at 'settings.seed': 5 saved, 6 now"),
    # --threads left out takes the machine's cores: the earlier command, run on another machine, cannot resume
    (TWO_ROWS, ["--threads", 2], "first difference at 'settings.threads': 1 saved, 2 now); pass --threads 1 as the "
                                 "earlier run ran (the output's bytes depend on it), or run without --resume"),
    (TWO_ROWS, ["MODEL"], "first difference at 'model_files_sha256.unet': "),
    (TWO_ROWS, ["ROWS", "a\nB\n"], "cannot resume: 001_b.wav was generated for the prompt 'b', and PROMPTS gives 'B' now"),
    (TWO_ROWS, ["ROWS", "a\n"], "cannot resume: the earlier run wrote 001_b.wav (id '001_b'), which no row of PROMPTS names"),
    (ID_ROW, ["ROWS", '{"id": "x", "prompt": "x"}\n' + ID_ROW],
     "cannot resume: b.wav was generated as row 0 (seed 5), and it is row 1 of PROMPTS now"),
    (TWO_ROWS, ["NOT JSON"], "generation.json: not a tta generate record that --resume can read (JSONDecodeError"),
    (TWO_ROWS, ["EARLIER RUNS"], "generation.json: not a tta generate record that --resume can read (its "
                                 "earlier_runs is not a list of objects)"),
], ids=["steps", "guidance", "batch-size", "seed", "threads", "model", "prompt", "row-removed", "row-moved", "not-json",
        "earlier-runs"])
def test_a_resume_of_another_batch_is_refused_naming_the_first_difference(tmp_path, capsys, calls, rows, change,
                                                                          message):
    """Refused before anything is generated or written (the model, the seed and the rows before the model loads);
    a prompts file whose rows moved (one added before them) would give them other seeds."""
    args, prompts = batch(tmp_path, rows)
    out = tmp_path / "out"
    assert run(capsys, *args, "--out-dir", out)[0] == 0
    before = wavs(out), (out / "generation.json").read_text()
    if change[0] == "MODEL":   # other weights under the same path
        model = copy_pipeline(tmp_path / "model")
        weights = model / "unet" / "diffusion_pytorch_model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 1
        weights.write_bytes(bytes(data))
        change = ["--model", model]
    elif change[0] == "ROWS":
        prompts.write_text(change[1])
        change = []
    elif change[0] == "NOT JSON":
        (out / "generation.json").write_text("{")
        before = before[0], "{"
        change = []
    elif change[0] == "EARLIER RUNS":   # a damaged record stopped the run on Python's "Value after * must be..."
        damaged = json.dumps({**record(out), "earlier_runs": 3})
        (out / "generation.json").write_text(damaged)
        before = before[0], damaged
        change = []
    calls.clear()
    code, _, err = run(capsys, *args, *change, "--out-dir", out, "--resume")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and message.replace("PROMPTS", str(prompts)) in lines[0], err
    assert calls == [] and (wavs(out), (out / "generation.json").read_text()) == before


def test_a_missing_or_changed_output_and_rows_added_at_the_end_are_generated(tmp_path, capsys, calls, caplog):
    """A file the record lists but that is gone, or holds other bytes, is generated again (a warning names it);
    rows added at the end are generated, and with --batch-size the earlier run's last batch, made without them,
    is generated again with them, as one run of the longer file batches them."""
    args, prompts = batch(tmp_path, "a\nb\nc\n", "--batch-size", 2)
    out = tmp_path / "out"
    assert run(capsys, *args, "--out-dir", out)[0] == 0
    (out / "000_a.wav").unlink()
    save_audio(out / "001_b.wav", [0.0] * 3200, 16_000)
    calls.clear()
    with caplog.at_level("WARNING", logger="tta.generate"):
        code, _, err = run(capsys, *args, "--out-dir", out, "--resume")
    assert code == 0, err
    assert calls == [["a", "b"]]
    assert "1 output the earlier record lists is missing (e.g. 000_a.wav): generating it again" in caplog.text
    assert "1 output the earlier record lists no longer holds what it says (e.g. 001_b.wav" in caplog.text
    prompts.write_text("a\nb\nc\nd\n")
    assert run(capsys, *args, "--out-dir", tmp_path / "whole")[0] == 0
    calls.clear()
    code, err = run_with_progress(capsys, *args, "--out-dir", out, "--resume")
    assert code == 0 and "2 kept" in err, err   # the bar shows how many outputs were kept
    assert calls == [["c", "d"]]
    assert wavs(out) == wavs(tmp_path / "whole") and record(out)["outputs"] == record(tmp_path / "whole")["outputs"]


def test_a_resume_removes_the_temporary_files_a_killed_run_left_and_no_other_file(tmp_path, capsys):
    """A run killed (SIGKILL) while writing an output or the record leaves the atomic writer's temporary file
    (.NAME.<8 random characters>.tmp.wav); --resume removes those of the batch's outputs and generation.json
    once it is sure to resume (a refused one removes nothing), with or without a record, and no other file."""
    args, _ = batch(tmp_path, "a\nb\nc\n")
    out = tmp_path / "out"
    assert run(capsys, *args, "--out-dir", out)[0] == 0
    (out / "002_c.wav").unlink()
    left = [".002_c.wav.k3j_9x0a.tmp.wav", ".000_a.wav.zz00zz00.tmp.wav", ".generation.json.ab_12cd3.tmp.json"]
    mine = [".002_c.wav.notes.tmp.wav", ".002_c.wav.k3j_9x0a.tmp.flac", ".x.wav.k3j_9x0a.tmp.wav",
            "002_c.wav.k3j_9x0a.tmp.wav"]
    for name in left + mine:
        (out / name).write_bytes(b"RIFF")
    code, _, err = run(capsys, *args, "--steps", 3, "--out-dir", out, "--resume")
    assert code == 1 and "cannot resume another run" in err and all((out / n).exists() for n in left + mine)
    code, _, err = run(capsys, *args, "--out-dir", out, "--resume")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(["000_a.wav", "001_b.wav", "002_c.wav", "generation.json",
                                                            *mine])
    (out / "generation.json").unlink()   # killed before its first record: --resume is a plain run, and tidies
    (out / left[0]).write_bytes(b"RIFF")
    assert run(capsys, *args, "--out-dir", out, "--resume")[0] == 0 and not (out / left[0]).exists()


def test_a_plain_batch_run_removes_the_temporary_files_of_the_outputs_it_writes(tmp_path, capsys):
    """A plain --out-dir run (no --resume) left a killed run's temporary files of the very outputs and record it
    writes again; it removes them as --resume does, once it is sure to run (a refused run removes nothing), and no
    other file. A -o FILE run, under its file's lock, removes its output's and its record's, and no other."""
    args, _ = batch(tmp_path, "a\nb\n")
    out = tmp_path / "out"
    out.mkdir()
    left = [".001_b.wav.k3j_9x0a.tmp.wav", ".generation.json.ab_12cd3.tmp.json"]
    mine = [".002_c.wav.k3j_9x0a.tmp.wav", ".001_b.wav.notes.tmp.wav", "001_b.wav.k3j_9x0a.tmp.wav"]
    for name in left + mine:
        (out / name).write_bytes(b"RIFF")
    code, _, err = run(capsys, *args, "--steps", 100_000, "--out-dir", out)
    assert code == 1 and "timesteps this model was trained on" in err and all((out / n).exists() for n in left + mine)
    code, _, err = run(capsys, *args, "--out-dir", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(["000_a.wav", "001_b.wav", "generation.json", *mine])
    left = [".one.wav.k3j_9x0a.tmp.wav", ".one.generation.json.ab_12cd3.tmp.json"]
    mine = [".two.wav.k3j_9x0a.tmp.wav", ".one.flac.k3j_9x0a.tmp.flac"]
    for name in left + mine:
        (tmp_path / name).write_bytes(b"RIFF")
    assert run(capsys, *args[2:], "a", "-o", tmp_path / "one.wav")[0] == 0
    assert not any((tmp_path / n).exists() for n in left) and all((tmp_path / n).exists() for n in mine)


def test_a_run_into_a_folder_a_batch_is_generating_in_is_refused(tmp_path, capsys, calls):
    """Two runs into one out-dir at once (two --resume, or a run and a --resume) both generated the rows left and
    wrote one record in turn. While a batch runs its folder is locked: another run into it is refused in one line
    naming the process, before it reads or writes anything; the lock file goes with the run that held it."""
    fcntl = pytest.importorskip("fcntl")

    args, _ = batch(tmp_path, "a\nb\n")
    out = tmp_path / "out"
    assert run(capsys, *args, "--out-dir", out)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["000_a.wav", "001_b.wav", "generation.json"]
    (out / "001_b.wav").unlink()
    before = wavs(out), (out / "generation.json").read_text()
    calls.clear()
    with open(out / ".lock", "a+") as held:   # a run generating there (as tta.training.run_lock holds it)
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("12345\n")
        held.flush()
        for extra in (["--resume"], []):
            code, _, err = run(capsys, *args, "--out-dir", out, *extra)
            assert code == 1 and err.splitlines() == [f"tta: error: {out}: another tta generate (process 12345) is "
                                                      "generating in this folder; wait for it, or choose another "
                                                      "--out-dir"], err
        assert calls == [] and (wavs(out), (out / "generation.json").read_text()) == before
        assert (out / ".lock").read_text() == "12345\n"   # the refused run left the holder's lock as it was
    code, _, err = run(capsys, *args, "--out-dir", out, "--resume")   # the other run is gone: its file is no lock
    assert code == 0 and calls == [["b"]], err
    assert sorted(p.name for p in out.iterdir()) == ["000_a.wav", "001_b.wav", "generation.json"]


def test_a_run_into_a_file_another_run_is_writing_is_refused(tmp_path, capsys, calls):
    """`-o FILE` took no lock: two runs into one file at once both wrote it and its record (one run's audio
    beside the other's record). The file is locked while it is written, with its record's stem (x.wav and x.flac
    share x.generation.json): another run into it is refused in one line naming the file and the process, before
    it writes anything. A lock file a killed run left (kill -9: no clean-up) is no lock: the next run takes it and
    removes it, as the out-dir's lock."""
    fcntl = pytest.importorskip("fcntl")

    args = [*batch(tmp_path, "")[0][2:], "a dog"]
    one = tmp_path / "one.wav"
    lock = tmp_path / ".one.generation.json.lock"
    with open(lock, "a+") as held:   # a run writing one.wav (as tta.training.run_lock holds it)
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("12345\n")
        held.flush()
        for output in (one, tmp_path / "one.flac"):
            code, out, err = run(capsys, *args, "-o", output)
            assert code == 1 and out == "" and err.splitlines() == [
                f"tta: error: {output}: another tta generate (process 12345) is writing this output or its record "
                "one.generation.json; wait for it, or choose another -o"], err
        assert calls == [] and sorted(p.name for p in tmp_path.iterdir()) == [lock.name, "prompts.txt"]
        assert lock.read_text() == "12345\n"   # the refused run left the holder's lock as it was
        assert run(capsys, *args, "-o", tmp_path / "two.wav")[0] == 0   # another stem: another lock
    code, out, err = run(capsys, *args, "-o", one)   # the holder is gone (killed): its file is no lock
    assert code == 0 and out.splitlines() == [str(one)] and calls == [["a dog"], ["a dog"]], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.generation.json", "one.wav", "prompts.txt",
                                                          "two.generation.json", "two.wav"]
    # a folder the lock made for a file that is never written goes again, as the out-dir's does
    model = copy_pipeline(tmp_path / "model")
    (model / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    code, _, err = run(capsys, *args, "--model", model, "-o", tmp_path / "new" / "sub" / "x.wav")
    assert code == 1 and len(err.splitlines()) == 1 and not (tmp_path / "new").exists(), err


def test_a_file_run_and_a_batch_into_one_folder_refuse_each_other(tmp_path, capsys, calls):
    """`-o D/000_a.wav` beside a batch generating in D held another lock than the batch's (its file's), so it ran
    and its clean-up removed `.000_a.wav.XXXXXXXX.tmp.wav`, which may be the batch's output half written. A -o run
    into a folder whose out-dir lock a live process holds is refused in one line naming the folder and the
    process, and so is a batch into a folder where a -o run is writing; a -o run removes no `.tta.` temporary
    file (a name too long to repeat: maybe another -o run's), only those of its own names."""
    fcntl = pytest.importorskip("fcntl")

    args, _ = batch(tmp_path, "a\nb\n")
    one = [*args[2:], "a"]
    out = tmp_path / "out"
    out.mkdir()
    temp = out / ".000_a.wav.k3j_9x0a.tmp.wav"   # the batch's output, being written
    temp.write_bytes(b"RIFF")
    with open(out / ".lock", "a+") as held:   # the batch generating there (as tta.training.run_lock holds it)
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("12345\n")
        held.flush()
        code, stdout, err = run(capsys, *one, "-o", out / "000_a.wav")
        assert code == 1 and stdout == "" and err.splitlines() == [
            f"tta: error: {out}: another run (process 12345) holds this folder's lock .lock (a --out-dir batch "
            "generating there, or tta train); wait for it, or write 000_a.wav into another folder"], err
    assert calls == [] and sorted(p.name for p in out.iterdir()) == [".000_a.wav.k3j_9x0a.tmp.wav", ".lock"]
    lock = out / ".one.generation.json.lock"
    with open(lock, "a+") as held:   # a -o run writing out/one.wav
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("12345\n")
        held.flush()
        code, _, err = run(capsys, *args, "--out-dir", out)
        assert code == 1 and err.splitlines() == [
            f"tta: error: {out}: another tta generate (process 12345) is writing a file in this folder with -o (its "
            "lock .one.generation.json.lock); wait for it, or choose another --out-dir"], err
        assert calls == [] and temp.exists() and not (out / "generation.json").exists()
        assert run(capsys, *one, "-o", out / "two.wav")[0] == 0   # -o runs beside each other: each its own file
    assert run(capsys, *args, "--out-dir", out)[0] == 0   # both holders gone (killed): their files lock nothing
    assert not temp.exists() and (out / "000_a.wav").exists()
    other = tmp_path / ".tta.k3j_9x0a.tmp.wav"   # another long name's -o run, writing
    other.write_bytes(b"RIFF")
    long = tmp_path / ("x" * 230 + ".wav")   # its temporary name: .tta.XXXXXXXX.tmp.wav
    code, _, err = run(capsys, *one, "-o", long)
    assert code == 0 and long.exists() and other.exists(), err


def test_a_run_with_rank_in_its_environment_still_locks_its_folder(tmp_path, capsys, calls, monkeypatch):
    """The out-dir lock followed training's main-process rule: a tta generate started with RANK=1 in its
    environment (a shell left from a distributed job) took no lock and generated beside the run holding it."""
    fcntl = pytest.importorskip("fcntl")

    args, _ = batch(tmp_path, "a\nb\n")
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("RANK", "1")
    calls.clear()
    with open(out / ".lock", "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("12345\n")
        held.flush()
        code, _, err = run(capsys, *args, "--out-dir", out)
        assert code == 1 and err.splitlines() == [f"tta: error: {out}: another tta generate (process 12345) is "
                                                  "generating in this folder; wait for it, or choose another "
                                                  "--out-dir"], err
    assert calls == [] and sorted(p.name for p in out.iterdir()) == [".lock"]
    assert run(capsys, *args, "--out-dir", out)[0] == 0 and calls == [["a"], ["b"]]
    assert not (out / ".lock").exists()   # the lock this run took (RANK=1) went with it


def test_a_run_that_fails_before_its_first_output_leaves_no_folder(tmp_path, capsys):
    """The out-dir's lock makes the folder; a run that fails later (weights that do not load) removes it again."""
    model = copy_pipeline(tmp_path / "model")
    (model / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    args, _ = batch(tmp_path, "a\n")
    code, _, err = run(capsys, *args, "--model", model, "--out-dir", tmp_path / "new" / "out")
    assert code == 1 and len(err.splitlines()) == 1, err
    assert not (tmp_path / "new").exists()


def run_with_progress(capsys, *argv) -> tuple[int, str]:
    from tta.cli import main

    code = main(["generate", *map(str, argv)])
    return code, capsys.readouterr().err


def test_a_batch_begun_by_a_tta_that_rounded_16_bit_samples_down_is_written_again(tmp_path, capsys, calls,
                                                                                      caplog):
    """A tta before the record's pcm_rounding wrote a WAV's 16-bit samples on the step below (libsndfile's float
    writer), this one on the nearest: keeping its files, a resumed batch held both rules, as no uninterrupted run
    writes it. Its WAVs are generated again, and the folder holds what one run writes."""
    import numpy as np
    import soundfile as sf

    args, prompts = batch(tmp_path, "a\nb\n")
    out = tmp_path / "out"
    assert run(capsys, *args, "--out-dir", out)[0] == 0
    older = record(out)
    older.pop("pcm_rounding", None)
    for o in older["outputs"]:   # the earlier tta's file of the same audio: a sample a hair under k on k - 1
        k, sr = sf.read(out / o["file"], dtype="int16")
        sf.write(out / o["file"], (k.astype(np.float32) - 0.25) / 32768, sr, subtype="PCM_16")
        assert np.array_equal(sf.read(out / o["file"], dtype="int16")[0], k - 1)
        o["sha256"] = hashlib.sha256((out / o["file"]).read_bytes()).hexdigest()
    (out / "generation.json").write_text(json.dumps(older))
    prompts.write_text("a\nb\nc\n")   # a row added at the end
    assert run(capsys, *args, "--out-dir", tmp_path / "whole")[0] == 0
    calls.clear()
    with caplog.at_level("WARNING", logger="tta.generate"):
        code, _, err = run(capsys, *args, "--out-dir", out, "--resume")
    assert code == 0, err
    assert calls == [["a"], ["b"], ["c"]] and wavs(out) == wavs(tmp_path / "whole")
    assert "2 outputs the earlier record lists were written by a tta that put each 16-bit sample on the step " \
           "below (e.g. 000_a.wav): generating them again" in caplog.text
    assert record(out)["pcm_rounding"] == "nearest"


def test_an_inpainting_batch_resumes(tmp_path, capsys):
    """The record's edit.sampled_seconds (written once a batch has run) is not a difference: an inpainting batch
    with an output missing was refused at 'edit' although it ran with the same flags."""
    import numpy as np

    clip = tmp_path / "in.wav"
    save_audio(clip, 0.3 * np.sin(np.linspace(0, 400 * np.pi, 8_000)).astype(np.float32), 16_000)
    (tmp_path / "prompts.txt").write_text("a\nb\n")
    args = ["--prompts", tmp_path / "prompts.txt", "--model", tiny_pipeline(), "--steps", 2, "--seed", 5,
            "--inpaint", clip, "--mask", "0.1:0.2"]
    out = tmp_path / "out"
    code, _, err = run(capsys, *args, "--out-dir", out)
    assert code == 0, err
    whole = wavs(out)
    assert record(out)["edit"]["sampled_seconds"]
    (out / "001_b.wav").unlink()
    code, _, err = run(capsys, *args, "--out-dir", out, "--resume")
    assert code == 0, err
    assert wavs(out) == whole and record(out)["complete"]
    # a resume that keeps every output runs no batch and still records the seconds sampled (it dropped them)
    edited = record(out)["edit"]
    code, _, err = run(capsys, *args, "--out-dir", out, "--resume")
    assert code == 0, err
    assert record(out)["edit"] == edited and wavs(out) == whole


def audio_files(folder, fmt: str) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.glob(f"*.{fmt}"))}


@pytest.mark.parametrize("fmt", ["flac", "ogg"])
def test_a_resumed_flac_or_ogg_batch_writes_what_one_uninterrupted_run_writes(tmp_path, capsys, calls, fmt):
    """--resume continues in the format generation.json records, without --format; it keeps an output by its
    sha256, as save_audio writes the same bytes for the same samples in every format. Another --format is
    refused in one line naming both, before the model loads."""
    args, _ = batch(tmp_path, "a\nb\nc\n")
    assert run(capsys, *args, "--format", fmt, "--out-dir", tmp_path / "whole")[0] == 0
    calls.clear()
    calls.stop_at.add("c")
    code, _, err = run(capsys, *args, "--format", fmt, "--out-dir", tmp_path / "part")
    assert code == 130 and "interrupted" in err
    assert [o["file"] for o in record(tmp_path / "part")["outputs"]] == [f"000_a.{fmt}", f"001_b.{fmt}"]
    calls.clear()
    calls.stop_at.clear()
    code, out, err = run(capsys, *args, "--out-dir", tmp_path / "part", "--resume")
    assert code == 0, err
    assert calls == [["c"]] and out.split()[-1] == str(tmp_path / "part" / f"002_c.{fmt}")
    whole = audio_files(tmp_path / "whole", fmt)
    assert audio_files(tmp_path / "part", fmt) == whole and len(whole) == 3 and wavs(tmp_path / "part") == {}
    resumed = record(tmp_path / "part")
    assert resumed["complete"] and resumed["settings"]["format"] == fmt
    assert resumed["outputs"] == record(tmp_path / "whole")["outputs"]
    before = (tmp_path / "part" / "generation.json").read_text()
    calls.clear()
    code, _, err = run(capsys, *args, "--out-dir", tmp_path / "part", "--resume", "--format", "wav")
    assert code == 1 and err.strip().splitlines() == [
        f"tta: error: {tmp_path / 'part' / 'generation.json'}: cannot resume: the earlier run wrote {fmt} files and "
        f"this one writes wav (--format wav); run it with --format {fmt}, or without --format (--resume continues "
        "in the recorded format), or write the wav files to a new --out-dir"]
    assert calls == [] and audio_files(tmp_path / "part", fmt) == whole and wavs(tmp_path / "part") == {}
    assert (tmp_path / "part" / "generation.json").read_text() == before


def test_a_record_without_a_format_is_of_wav_files(tmp_path, capsys, calls):
    """A tta before --format wrote wav batches and no settings.format: --resume keeps them as wav, and refuses
    --format flac there; a format the record names that is none of tta's makes it a record --resume cannot read."""
    args, prompts = batch(tmp_path, "a\nb\n")
    out = tmp_path / "out"
    assert run(capsys, *args, "--out-dir", out)[0] == 0
    older = record(out)
    del older["settings"]["format"]
    (out / "generation.json").write_text(json.dumps(older))
    before = wavs(out)
    calls.clear()
    code, _, err = run(capsys, *args, "--out-dir", out, "--resume", "--format", "flac")
    assert code == 1 and "cannot resume: the earlier run wrote wav files and this one writes flac (--format flac)" \
        in err and calls == [] and "format" not in record(out)["settings"]
    prompts.write_text("a\nb\nc\n")
    code, _, err = run(capsys, *args, "--out-dir", out, "--resume")
    assert code == 0, err
    assert calls == [["c"]] and {k: v for k, v in wavs(out).items() if k != "002_c.wav"} == before
    assert record(out)["settings"]["format"] == "wav" and record(out)["complete"]
    (out / "generation.json").write_text(json.dumps({**older, "settings": {**older["settings"], "format": "mp3"}}))
    code, _, err = run(capsys, *args, "--out-dir", out, "--resume")
    assert code == 1 and "generation.json: not a tta generate record that --resume can read (its settings.format " \
                         "is \"mp3\", not wav, flac or ogg)" in err, err


@pytest.mark.parametrize("fmt", ["flac", "ogg"])
def test_a_record_of_another_libsndfile_keeps_its_files_and_blames_no_library_for_a_changed_one(tmp_path, capsys,
                                                                                             caplog, calls, fmt):
    """The record names its libsndfile (a FLAC's or Ogg's bytes are its encoders'), but a kept file's sha256 is
    that of the very file the earlier run wrote, which another libsndfile since does not change: a finished
    batch is kept whole. A file changed since was said to be written anew because "the audio library changed"
    when the record named another libsndfile; it was its owner's change, and the warning says so. The resumed
    run's record names its own libsndfile and each earlier run's in earlier_runs: it named only the last run's,
    so files kept from a run under another libsndfile were put down to this one."""
    import soundfile

    now = soundfile.__libsndfile_version__
    args, _ = batch(tmp_path, "a\nb\n", "--format", fmt)
    out = tmp_path / "out"
    assert run(capsys, *args, "--out-dir", out)[0] == 0
    assert record(out)["libsndfile"] == now
    written = audio_files(out, fmt)
    (out / "generation.json").write_text(json.dumps({**record(out), "libsndfile": "1.0.9"}))
    calls.clear()
    with caplog.at_level("WARNING", logger="tta.generate"):
        assert run(capsys, *args, "--out-dir", out, "--resume")[0] == 0
    assert calls == [] and audio_files(out, fmt) == written and caplog.text == ""
    assert record(out)["libsndfile"] == now and [r["libsndfile"] for r in record(out)["earlier_runs"]] == ["1.0.9"]
    (out / "generation.json").write_text(json.dumps({**record(out), "libsndfile": "1.0.10"}))
    (out / f"000_a.{fmt}").write_bytes(b"not what it was")
    with caplog.at_level("WARNING", logger="tta.generate"):
        assert run(capsys, *args, "--out-dir", out, "--resume")[0] == 0
    assert f"1 output the earlier record lists no longer holds what it says (e.g. 000_a.{fmt}; replaced or changed " \
           "since)" in caplog.text and "libsndfile" not in caplog.text
    assert calls == [["a"]] and audio_files(out, fmt) == written
    # 000_a is this run's, 001_b the first run's, kept through the second
    assert record(out)["libsndfile"] == now
    assert [r["libsndfile"] for r in record(out)["earlier_runs"]] == ["1.0.9", "1.0.10"]


def test_a_folders_output_locks_are_the_names_output_lock_name_makes(tmp_path):
    """A batch finds the -o locks of its folder by their names; the naming (output_lock_name) and that listing
    (output_locks) sit together and agree: each output's lock, by its record's name or hashed where that is too
    long, is found, one for the outputs of one stem, and no other file (the batch's .lock, a temporary output,
    another long name's temporary file, a record) is."""
    from tta.generate import output_lock_name, output_locks

    outputs = [tmp_path / "x.wav", tmp_path / "x.flac", tmp_path / "a b.ogg", tmp_path / ("y" * 240 + ".wav")]
    names = {output_lock_name(o) for o in outputs}
    assert len(names) == 3 and ".x.generation.json.lock" in names
    assert any(re.fullmatch(r"\.tta\.[0-9a-f]{16}\.lock", n) for n in names)
    for name in (*names, ".lock", ".000_a.wav.k3j_9x0a.tmp.wav", ".tta.k3j_9x0a.tmp.wav", "x.generation.json",
                 "generation.json"):
        (tmp_path / name).write_text("")
    assert output_locks(tmp_path) == sorted(names)
    assert output_locks(tmp_path / "missing") == []
