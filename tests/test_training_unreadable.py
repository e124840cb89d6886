"""Training rows whose audio cannot be read: every trainer refuses them before its first step (and on resume),
naming the rows, instead of stopping when the sampler first draws one; a read that fails in a DataLoader worker
names its file."""

from __future__ import annotations

import errno
import json
import os
import re

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


def _manifest(root, bad: dict[str, bytes | None] | None = None) -> str:
    """Three 1 s train clips and a held-out one, then a train row per `bad` entry (file name: its bytes, written
    as they are; None: a 10 s FLAC tone cut to its first tenth, whose header is whole)."""
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
            data = (root / name).read_bytes()[:(root / name).stat().st_size // 10]
        (root / name).write_bytes(data)
        rows.append(ManifestRow(id=name.split(".")[0], path=name, captions=("a sound",), seconds=seconds,
                                sample_rate=SR, split="train"))
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
    check passes it; read in a DataLoader worker (data.num_workers > 0), the error was "Caught AudioError in
    DataLoader worker process 0." and nothing else."""
    manifest = _manifest(tmp_path, {"cut.flac": None})
    out = tmp_path / "run"
    rc, err = _tta_train(capsys, "vae", out, f"data.manifest={manifest}", "valid_items=0", "train.max_steps=6",
                         "data.num_workers=1")
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"tta: error: {tmp_path / 'cut.flac'}: not a readable audio file ("), err
    assert "DataLoader" not in err and "Traceback" not in err
    assert not out.exists()


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
