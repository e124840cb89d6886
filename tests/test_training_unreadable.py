"""Training rows whose audio cannot be read: every trainer refuses them before its first step (and on resume),
naming the rows, instead of stopping when the sampler first draws one; a read that fails in a DataLoader worker
names its file."""

from __future__ import annotations

import errno
import io
import json
import logging
import logging.handlers
import os
import re
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.signals import chirp, noise, tone
from tests.test_ldm_fixtures import one_thread  # noqa: F401 (one_thread: autouse)
from tests.test_training import _tta_train
from tta.audio import save_audio
from tta.data.manifest import ManifestRow, write_manifest
from tta.training import worker_error

SR = 16_000


def _manifest(root, bad: dict[str, bytes | None] | None = None, *, split: str = "train", kept: int = 10) -> str:
    """Three 1 s train clips and a held-out one, then a `split` row per `bad` entry (file name: its bytes, written
    as they are; None: a 10 s FLAC tone cut to its first `kept`-th, whose header is whole)."""
    rows = []
    for i, (name, wav) in enumerate({"tone": tone(440, 1.0), "chirp": chirp(100, 7000, 1.0),
                                     "noise": noise(1.0, seed=1), "held": tone(150, 1.0)}.items()):
        save_audio(root / f"{name}.wav", np.clip(wav, -1, 1), SR)
        rows.append(ManifestRow(id=name, path=f"{name}.wav", captions=(f"a {name}",), seconds=1.0, sample_rate=SR,
                                split="valid" if name == "held" else "train"))
    for name, data in (bad or {}).items():
        seconds = 1.0
        if data is None:
            seconds = 10.0
            sf.write(root / name, tone(440, seconds), SR)
            data = (root / name).read_bytes()[:(root / name).stat().st_size // kept]
        (root / name).write_bytes(data)
        rows.append(ManifestRow(id=name.split(".")[0], path=name, captions=("a sound",), seconds=seconds,
                                sample_rate=SR, split=split))
    return str(write_manifest(root / "manifest.jsonl", rows))


def _sets(kind: str, manifest: str) -> list[str]:
    sets = [f"data.manifest={json.dumps(manifest)}", "train.max_steps=20"]
    if kind == "ldm":
        from tests.test_ldm_fixtures import tiny_components

        c = tiny_components()
        sets += [f"components.{name}={json.dumps(str(c[name]))}" for name in ("vae", "vocoder", "clap")]
        sets += ['validation.prompts=[]']
    return sets


@pytest.mark.parametrize("kind", ["vae", "vocoder", "postnet", "clap", "ldm"])
def test_every_trainer_refuses_unreadable_rows_before_its_first_step(tmp_path, capsys, kind):
    """A row whose file is not audio (its row says 1 s) stopped `tta train` only when the sampler drew it (step 27
    of 40 on a 60-row manifest); now every trainer names it, with its manifest line, before training."""
    manifest = _manifest(tmp_path, {"junk.wav": b"RIFF" + bytes(100)})
    out = tmp_path / "run"
    rc, err = _tta_train(capsys, kind, out, *_sets(kind, manifest))
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"tta: error: {manifest}: 1 of split 'train''s 4 audio files cannot be read (row junk at "
                          f"{manifest}:5: {tmp_path / 'junk.wav'}: not a readable audio file"), err
    assert "`tta data check MANIFEST --drop-bad CLEAN.jsonl`" in err and "--init-from" not in err
    assert not out.exists()


def test_a_resume_refuses_a_file_damaged_since_the_run_began_and_keeps_the_run(tmp_path, capsys):
    manifest = _manifest(tmp_path)
    out = tmp_path / "run"
    sets = [f"data.manifest={manifest}", "valid_items=0", "train.checkpoint_every=1"]
    assert _tta_train(capsys, "vae", out, *sets, "train.max_steps=1")[0] == 0
    (tmp_path / "chirp.wav").write_text("overwritten\n" * 40)
    rc, err = _tta_train(capsys, "vae", out, *sets, "train.max_steps=3", extra=["--resume"])
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    assert f"1 of split 'train''s 3 audio files cannot be read (row chirp at {manifest}:2: " in err
    assert err.strip().endswith("a resume goes on with the manifest the run began with: restore the files, or start "
                                "a new run from this one with --init-from")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_1"] and (out / "final").is_dir()


def test_a_file_cut_short_behind_a_whole_header_is_named_when_a_worker_reads_it(tmp_path, capsys):
    """A FLAC cut short keeps its header (its first tenth is there: crops from the rest fail), so the header
    check passes it; read in a DataLoader worker (data.num_workers > 0) with data.max_unreadable=0 (no file
    may fail), the error was "Caught AudioError in DataLoader worker process 0." and nothing else."""
    manifest = _manifest(tmp_path, {"cut.flac": None})
    out = tmp_path / "run"
    rc, err = _tta_train(capsys, "vae", out, f"data.manifest={manifest}", "valid_items=0", "train.max_steps=6",
                         "data.num_workers=1", "data.max_unreadable=0")
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"tta: error: {tmp_path / 'cut.flac'}: not a readable audio file ("), err
    assert "DataLoader" not in err and "Traceback" not in err
    assert not out.exists()


def _rows(run) -> list:
    """metrics.jsonl's rows without their times."""
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def _train(capsys, caplog, kind, out, *sets, extra=()) -> tuple[int, str, list[str]]:
    """`tta train` as _tta_train runs it; (exit code, stderr, the warnings tta.training logged)."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tta.training"):
        rc, err = _tta_train(capsys, kind, out, *sets, extra=extra)
    return rc, err, [r.getMessage() for r in caplog.records if r.name == "tta.training" and r.levelno >= logging.WARNING]


@pytest.mark.parametrize("kind", ["vae", "vocoder", "postnet", "clap", "ldm"])
def test_a_file_cut_short_behind_a_whole_header_is_skipped_with_one_warning(tmp_path, capsys, caplog, kind):
    """A FLAC cut short behind a whole header passes the header check and stopped every trainer when a crop
    reached what it lost ("cannot seek to sample 104715 of the 160000 its header declares"), maybe hours in;
    the row is skipped with one warning naming the file and its manifest line (however many times it is drawn,
    and from a DataLoader worker too), another row is drawn in its place and metrics.jsonl lists it."""
    manifest = _manifest(tmp_path, {"cut.flac": None})
    cut = tmp_path / "cut.flac"
    sets = _sets(kind, manifest)
    sets += {"vae": ["valid_items=0"], "vocoder": ["valid_items=0", "sample_items=0"],
             "postnet": ["valid_items=0", "sample_items=0"]}.get(kind, [])
    runs = {0: tmp_path / "run"}
    if kind == "vae":   # DataLoader workers read the items: the same run
        runs[2] = tmp_path / "workers"
    for workers, out in runs.items():
        rc, err, warned = _train(capsys, caplog, kind, out, *sets, f"data.num_workers={workers}")
        assert rc == 0, err
        assert len(warned) == 1 and warned[0].startswith(
            f"{cut}: not a readable audio file (cannot seek to sample "), warned
        assert warned[0].endswith(f"(row cut at {manifest}:5): skipped, another row drawn in its place (1 of the 1 "
                                  "unreadable files data.max_unreadable=0.01 allows; listed in metrics.jsonl)"), warned
        listed = [row for row in _rows(out) if "unreadable" in row]
        assert [(r["unreadable"], r["row"], r["at"]) for r in listed] == [(str(cut), "cut", f"{manifest}:5")]
        assert listed[0]["error"] == warned[0].split(" (row cut at ")[0]
    if kind == "vae":
        assert _rows(runs[0]) == _rows(runs[2])


def test_more_unreadable_files_than_data_max_unreadable_allows_stop_the_run_naming_them(tmp_path, capsys, caplog):
    """Three of six training files cut short: more than the 2 a corpus of six may lose (3, but fewer than half
    of the rows). The run stops, in one line naming the rows, once a third fails."""
    manifest = _manifest(tmp_path, {"a.flac": None, "b.flac": None, "c.flac": None})
    sets = [f"data.manifest={manifest}", "valid_items=0", "train.max_steps=12"]
    rc, err, warned = _train(capsys, caplog, "vae", tmp_path / "run", *sets, "data.num_workers=1")
    assert rc == 1 and len(err.strip().splitlines()) == 1 and len(warned) == 2, (err, warned)
    assert err.startswith(f"tta: error: {manifest}: 3 of split 'train''s 6 audio files could not be decoded when "
                          "read, more than the 2 data.max_unreadable=0.01 allows (row "), err
    assert err.count(": not a readable audio file (") == 3 and "Traceback" not in err
    assert err.endswith("`tta data check MANIFEST --drop-bad CLEAN.jsonl` decodes every file and writes a "
                        "manifest without the bad ones\n")
    # data.max_unreadable=0.5: three of six may fail
    rc, err, warned = _train(capsys, caplog, "vae", tmp_path / "half", *sets, "data.max_unreadable=0.5")
    assert rc == 0 and len(warned) == 3, (err, warned)


def test_too_many_unreadable_held_out_files_stop_validation_in_words_true_of_it(tmp_path, capsys, caplog):
    """Three of the four held-out files cut to a tenth of a second: validation (not a draw) reads them, leaves out
    two and stops on the third; the error said they "could not be decoded when drawn", as if training drew them."""
    manifest = _manifest(tmp_path, {"a.flac": None, "b.flac": None, "c.flac": None}, split="valid", kept=100)
    rc, err, warned = _train(capsys, caplog, "vae", tmp_path / "run", f"data.manifest={manifest}", "valid_items=4",
                             "train.max_steps=2", "train.validate_every=1", "data.max_unreadable=0.5")
    assert rc == 1 and len(err.strip().splitlines()) == 1 and len(warned) == 2, (err, warned)
    assert all("the next row taken in its place" in w for w in warned), warned
    assert err.startswith(f"tta: error: {manifest}: 3 of split 'valid''s 4 audio files could not be decoded when "
                          "read, more than the 2 data.max_unreadable=0.5 allows (row a at "), err


def test_a_resumed_run_draws_what_an_uninterrupted_one_draws_around_files_cut_short(tmp_path, capsys, caplog):
    """The item that stands in for an unreadable row is drawn from the item's seed: a run stopped after a
    checkpoint and resumed trains on the same items as one that was not (the same losses and weights), counts
    the row found before the checkpoint without warning of it again, and warns of the one found after it."""
    from safetensors.torch import load_file

    manifest = _manifest(tmp_path, {"a.flac": None, "b.flac": None})
    sets = [f"data.manifest={manifest}", "valid_items=0", "train.max_steps=8", "train.checkpoint_every=1",
            "train.keep_checkpoints=0", "data.max_unreadable=0.5", "train.seed=8"]
    runs = {"full": tmp_path / "full", "cut": tmp_path / "cut"}
    for out in runs.values():
        rc, err, warned = _train(capsys, caplog, "vae", out, *sets)
        assert rc == 0 and len(warned) == 2, (err, warned)
    found = [row["step"] for row in _rows(runs["full"]) if "unreadable" in row]
    assert found == [2, 3], found   # (train.seed=8 draws a.flac and b.flac apart)
    for step in range(3, 9):   # as if killed after the checkpoint of the step that found the first
        shutil.rmtree(runs["cut"] / "checkpoints" / f"step_{step}")
    shutil.rmtree(runs["cut"] / "final")
    rc, err, resumed = _train(capsys, caplog, "vae", runs["cut"], *sets, extra=["--resume"])
    assert rc == 0, err
    assert resumed == [f"{runs['cut']}: 1 training file could not be decoded before step 2 (listed in "
                       "metrics.jsonl); skipped as before (2 allowed by data.max_unreadable=0.5)",
                       warned[1]], resumed
    assert _rows(runs["cut"]) == _rows(runs["full"])
    a, b = (load_file(str(run / "final" / "model.safetensors")) for run in runs.values())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_vae_measures_scale_factor_over_the_first_training_rows_it_can_read(tmp_path, capsys, caplog):
    """After its last step the VAE reads its first scale_items training rows (their first segment) to measure
    scale_factor; a file cut short within its first segment (or gone since the start), skipped at every step,
    failed the run there: no final/, and a resume failed the same way. The pass skips it as the steps do and
    takes the next row in its place: of the rows tone, chirp, noise, cut and more, with scale_items=4, it
    measures over tone, chirp, noise and more (3 clips, were cut dropped)."""
    more = io.BytesIO()
    sf.write(more, tone(300, 1.0), SR, format="WAV")
    # cut: 0.2 s of 10 s, the first segment lost
    manifest = _manifest(tmp_path, {"cut.flac": None, "more.wav": more.getvalue()}, kept=50)
    cut = tmp_path / "cut.flac"
    out = tmp_path / "run"
    sets = [f"data.manifest={manifest}", "valid_items=0", "train.max_steps=2", "train.checkpoint_every=1",
            "data.max_unreadable=0.5", "scale_items=4"]
    caplog.set_level(logging.INFO, logger="vae.train")
    said = logging.handlers.BufferingHandler(100)
    logging.getLogger("vae.train").addHandler(said)
    try:
        rc, err, warned = _train(capsys, caplog, "vae", out, *sets)
    finally:
        logging.getLogger("vae.train").removeHandler(said)
    assert rc == 0, err
    assert (out / "final").is_dir()
    assert len(warned) == 1 and warned[0].startswith(f"{cut}: not a readable audio file (") and \
        f"(row cut at {manifest}:5): skipped, " in warned[0], warned
    assert [r["row"] for r in _rows(out) if "unreadable" in r] == ["cut"]
    assert [r.getMessage().split(" (")[1] for r in said.buffer if r.getMessage().startswith("scale_factor = ")] == \
        ["1 / std of latents over 4 training clips)"]
    scale = [r["scale_factor"] for r in _rows(out) if r.get("split") == "final"]
    shutil.rmtree(out / "final")   # as if stopped while measuring it: the resume measures it again, alike
    rc, err, resumed = _train(capsys, caplog, "vae", out, *sets, extra=["--resume"])
    assert rc == 0 and (out / "final").is_dir(), err
    assert [r["scale_factor"] for r in _rows(out) if r.get("split") == "final"] == scale * 2   # (a row each)
    assert len(resumed) == 1 and resumed[0].startswith(f"{out}: 1 training file could not be decoded before "), \
        resumed


@pytest.mark.parametrize("kind", ["vae", "vocoder", "postnet", "clap"])
def test_validation_skips_a_held_out_file_cut_short_for_the_next_row(tmp_path, capsys, caplog, kind):
    """Validation reads the first held-out rows (valid_items; clap: valid_max_items) from their start: a held-out
    file cut short behind a whole header stopped the run at the first validation ("not a readable audio file").
    It is skipped for the next row, warned about once over two validations, counted toward the held-out rows'
    data.max_unreadable (1 of 3 here) and listed in metrics.jsonl at the step that read it. Of the rows held,
    cut and held2, with 2 to score, both validations score held and held2 (held alone, were cut dropped)."""
    good = io.BytesIO()
    sf.write(good, tone(300, 1.0), SR, format="WAV")
    manifest = _manifest(tmp_path, {"cut.flac": None, "held2.wav": good.getvalue()}, split="valid", kept=50)
    out = tmp_path / "run"
    sets = _sets(kind, manifest)[:1] + ["train.max_steps=2", "train.validate_every=1"]
    sets += {"vae": ["valid_items=2", "sample_images=2"], "vocoder": ["valid_items=2", "sample_items=2"],
             "postnet": ["valid_items=2", "sample_items=2"], "clap": ["valid_max_items=2"]}[kind]
    rc, err, warned = _train(capsys, caplog, kind, out, *sets)
    assert rc == 0, err
    cut = tmp_path / "cut.flac"
    assert len(warned) == 1 and warned[0].startswith(f"{cut}: not a readable audio file ("), warned
    assert warned[0].endswith(f"(row cut at {manifest}:5): skipped, the next row taken in its place (1 of the 1 "
                              "unreadable files data.max_unreadable=0.01 allows; listed in metrics.jsonl)"), warned
    rows = _rows(out)
    assert [(r["step"], r["row"]) for r in rows if "unreadable" in r] == [(1, "cut")]
    assert [r["step"] for r in rows if r.get("split") == "valid"] == [1, 2]
    # the clips each validation scored: the clips clap retrieved among, the others' sample files
    if kind == "clap":
        assert [r["num_audio"] for r in rows if r.get("split") == "valid"] == [2, 2]
    else:
        expected = ["held", "held2"] if kind == "vae" else ["0_held", "0_held_real", "1_held2", "1_held2_real"]
        for step in (1, 2):
            assert sorted({f.stem for f in (out / "samples" / f"step_{step}").iterdir()}) == expected, step


def test_an_os_error_in_a_worker_names_its_file_as_in_the_main_process(tmp_path, capsys):
    """An OSError raised in a DataLoader worker came back rebuilt from its message alone, with no errno, strerror
    or file name, so `tta train` printed "[Errno 20] Not a directory: '.../cache/3f'" where the same error in the
    main process (data.num_workers=0) prints ".../cache/3f: Not a directory". Here data.cache_dir holds a file
    where each entry's folder goes (a data.cache_dir that is a file is refused before the run)."""
    manifest = _manifest(tmp_path)
    (tmp_path / "cache").mkdir()
    for i in range(256):
        (tmp_path / "cache" / f"{i:02x}").write_text("a file where an entry's folder should be\n")
    errs = []
    for workers in (0, 1):
        rc, err = _tta_train(capsys, "vae", tmp_path / f"run{workers}", f"data.manifest={manifest}", "valid_items=0",
                             "train.max_steps=2", f"data.cache_dir={tmp_path / 'cache'}",
                             f"data.num_workers={workers}")
        assert rc == 1 and len(err.strip().splitlines()) == 1, err
        errs.append(err)
    assert re.fullmatch(rf"tta: error: {re.escape(str(tmp_path / 'cache'))}/[0-9a-f]{{2}}: File exists\n",
                        errs[1]), errs
    assert errs[0].split("/")[:-1] == errs[1].split("/")[:-1]   # (the entry's folder is a hash of the file drawn)


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_a_cache_dir_that_cannot_be_a_folder_is_refused_before_the_run_folder(tmp_path, capsys, where):
    """data.cache_dir at a file, or under one, stopped `tta train` at step 0, once the run had begun, with
    ".../cache/3f: Not a directory", and train() called from Python left its run folder behind; it is refused, by
    name, before the run folder is made."""
    from tests.test_ldm_fixtures import ROOT
    from tta.checkpoint import CheckpointError
    from tta.config import apply_overrides, load_config
    from vae.train import RunConfig, train

    manifest = _manifest(tmp_path)
    (tmp_path / "file").write_text("not a folder\n")
    cache = tmp_path / "file" if where == "a file" else tmp_path / "file" / "cache"
    sets = [f"data.manifest={manifest}", "valid_items=0", "train.max_steps=2", f"data.cache_dir={cache}"]
    rc, err = _tta_train(capsys, "vae", tmp_path / "run", *sets)
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    expected = "is a file; expected the path of a folder to write" if where == "a file" else \
        f"cannot be written there ({tmp_path / 'file'} is a file, not a folder)"
    assert err == f"tta: error: {cache}: data.cache_dir {expected}\n"
    config = apply_overrides(load_config(RunConfig, ROOT / "configs" / "vae" / "tiny.json"), sets)
    with pytest.raises(CheckpointError, match="data.cache_dir"):
        train(config, tmp_path / "python", progress=False)
    assert not (tmp_path / "run").exists() and not (tmp_path / "python").exists()
    assert (tmp_path / "file").read_text() == "not a folder\n"


class _Raises(torch.utils.data.Dataset):
    """An item that raises `error` (in a DataLoader worker)."""

    def __init__(self, error: Exception):
        self.error = error

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int):
        raise self.error


@pytest.mark.parametrize("error", [FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "a b/it's.wav"),
                                   OSError(errno.EXDEV, os.strerror(errno.EXDEV), "a", None, "b\n"),
                                   PermissionError(errno.EACCES, os.strerror(errno.EACCES)),
                                   KeyError("x"), KeyError(("a", 1)), ValueError("one\ntwo")],
                         ids=lambda e: type(e).__name__)
def test_a_worker_error_is_rebuilt_as_the_worker_raised_it(error):
    """worker_error rebuilt torch's copy of a worker's error as type(e)(message): an OSError lost its errno,
    strerror and file names (the CLI names the file from them) and a KeyError's key came back quoted twice
    ("\\"'x'\\"")."""
    loader = iter(torch.utils.data.DataLoader(_Raises(error), num_workers=1))
    try:
        with pytest.raises(type(error)) as caught:
            next(loader)
    finally:
        loader._shutdown_workers()
    rebuilt = worker_error(caught.value)
    assert type(rebuilt) is type(error) and str(rebuilt) == str(error)
    if isinstance(error, OSError):
        assert (rebuilt.errno, rebuilt.strerror, rebuilt.filename, rebuilt.filename2) == (
            error.errno, error.strerror, error.filename, error.filename2)
    assert worker_error(error) is None   # raised in this process: not a copy
