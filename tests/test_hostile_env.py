"""tta installed read-only to its user, run without a writable home folder or cache, writing to a full disk.

Each case is the real command or function in a process of its own where the environment matters; the unwritable
places are made so that they stay unwritable for root too (a regular file where a folder is expected)."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _env(**changes) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "TTA_CACHE_DIR")}
    env.update(changes)
    return env


def test_librosa_imports_when_neither_its_folder_nor_home_takes_numbas_cache(tmp_path, repo_root):
    # a copy of librosa whose module folders cannot take numba's cache (as a read-only install) and a HOME that
    # is a file (no ~/.cache): numba refused the import ("no locator available"), so every mel failed
    site = tmp_path / "site"
    shutil.copytree(Path(importlib.util.find_spec("librosa").origin).parent, site / "librosa",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for folder in {p.parent for p in (site / "librosa").rglob("*.py")}:
        (folder / "__pycache__").write_text("not a folder")
    home = tmp_path / "home"
    home.write_text("not a folder")
    code = ("import os, librosa; from tta.audio import MelConfig, mel_basis; "
            "print(mel_basis(MelConfig()).shape); print(librosa.__file__); print(os.environ['NUMBA_CACHE_DIR'])")
    env = _env(HOME=str(home), PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    shape, where, cache = out.stdout.splitlines()
    assert shape == "torch.Size([64, 513])" and where.startswith(str(site))
    assert not Path(cache).exists()   # the process's temporary cache went with it


@pytest.fixture
def full_disk(tmp_path):
    """fill(free) -> a folder on a 512 KiB file system with about `free` bytes left: a tmpfs, so only where the
    tests may mount one (root); skipped elsewhere."""
    mnt = _small_tmpfs(tmp_path / "disk", "size=512k")

    def fill(free: int = 0) -> Path:
        filler = mnt / "filler"
        filler.unlink(missing_ok=True)
        st = os.statvfs(mnt)
        filler.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - free))
        return mnt

    yield fill
    subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.fixture
def one_inode_left(tmp_path):
    """A folder on a file system with room for one more file or folder (its inodes used up, as a disk full of
    small files has them); only where the tests may mount a tmpfs (root)."""
    mnt = _small_tmpfs(tmp_path / "disk", "size=512k,nr_inodes=16")
    n = 0
    while True:
        try:
            (mnt / f"filler{n}").touch()
        except OSError:
            break
        n += 1
    (mnt / f"filler{n - 1}").unlink()
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def _small_tmpfs(mnt: Path, options: str) -> Path:
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("needs a small file system: mounting a tmpfs needs root")
    return mnt


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("filler"))


def test_writes_to_a_full_disk_name_the_file_and_leave_nothing(full_disk):
    # a write's error named no file ("[Errno 28] No space left on device"), libsndfile said "System error.",
    # torch.save "[enforce fail at inline_container.cc] unexpected pos ..."; a file's new folder stayed behind
    import torch

    from tests.signals import tone
    from tta.audio import save_audio
    from tta.checkpoint import atomic_write_text, save_train_state

    disk = full_disk(8192)
    writes = {disk / "x.wav": lambda p: save_audio(p, tone(440.0, 5.0), 16_000),
              disk / "state.pt": lambda p: save_train_state(p, {"w": torch.zeros(100_000)}),
              disk / "new" / "deeper" / "a.json": lambda p: atomic_write_text(p, "x" * 100_000)}
    for path, write in writes.items():
        with pytest.raises(OSError) as e:
            write(path)
        assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(path))
        assert _left(disk) == []


def test_an_error_of_the_work_inside_a_write_on_a_nearly_full_disk_stays_itself(full_disk):
    # a write whose writer loses the reason is read as a full disk where little room is left; a computation
    # that failed inside the block (build_datastore's CLAP and FAISS work runs in one) was reported as
    # "No space left on device" too, its own error lost
    import torch

    from tta.checkpoint import atomic_dir, atomic_path

    disk = full_disk(200_000)
    with pytest.raises(RuntimeError, match="must match the size of tensor b"):
        with atomic_dir(disk / "new" / "store") as tmp:
            (tmp / "emb.npy").write_bytes(b"\0" * 1000)
            torch.zeros(2).add_(torch.zeros(3))
    assert _left(disk) == []
    with pytest.raises(RuntimeError, match="must match the size of tensor b"):
        with atomic_path(disk / "new" / "state.pt") as tmp:
            torch.save(torch.zeros(2).add_(torch.zeros(3)), tmp)
    assert _left(disk) == []


def test_a_folder_write_that_cannot_make_its_temporary_folder_names_the_folder_and_leaves_nothing(one_inode_left):
    # room for the new parent folder, not for the temporary folder inside it: the error named the hidden
    # temporary folder and the parent folder stayed behind
    from tta.checkpoint import CheckpointError, atomic_dir

    target = one_inode_left / "new" / "store"
    with pytest.raises(CheckpointError) as e:
        with atomic_dir(target):
            pass
    assert str(e.value) == f"{target}: cannot write there (No space left on device)"
    assert _left(one_inode_left) == []


def test_commands_on_a_full_disk_say_so_in_one_line_and_leave_nothing(full_disk, tmp_path, capsys):
    from tests.signals import noise, tone
    from tta.audio import save_audio
    from tta.cli import main

    for i in range(3):
        save_audio(tmp_path / "gen" / f"g{i}.wav", tone(300 + 100 * i, 1.0), 16_000)
        save_audio(tmp_path / "ref" / f"r{i}.wav", noise(1.0, seed=i), 16_000)
        (tmp_path / "ref" / f"r{i}.txt").write_text("noise\n")
    disk = full_disk(0)
    commands = [["data", "import", "folder", tmp_path / "ref", "--out", disk / "m.jsonl"],
                ["eval", "--generated", tmp_path / "gen", "--reference", tmp_path / "ref", "--out", disk / "ev",
                 "--cache-dir", tmp_path / "cache"]]
    for argv in commands:
        capsys.readouterr()
        assert main(["-q", *map(str, argv)]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"tta: error: {argv[argv.index('--out') + 1]}") and err.endswith(
            "No space left on device") and "\n" not in err
        assert _left(disk) == []


def noise_manifest(tmp_path):
    """TMP/m.jsonl: four one-second noise clips of TMP/clips imported by `tta data import folder`, one held out."""
    from tests.signals import noise
    from tta.audio import save_audio
    from tta.cli import main

    for i in range(4):
        save_audio(tmp_path / "clips" / f"c{i}.wav", noise(1.0, seed=i), 16_000)
        (tmp_path / "clips" / f"c{i}.txt").write_text("noise\n")
    manifest = tmp_path / "m.jsonl"
    assert main(["-q", "data", "import", "folder", str(tmp_path / "clips"), "--out", str(manifest),
                 "--valid-fraction", "0.25"]) == 0
    return manifest


def test_a_training_run_whose_checkpoint_finds_the_disk_full_says_so_and_leaves_nothing(full_disk, tmp_path,
                                                                                         repo_root, capsys):
    # torch.save's "[enforce fail at inline_container.cc:672] . unexpected pos 142272 vs 142164" was the message
    from tta.cli import main

    manifest = noise_manifest(tmp_path)
    disk = full_disk(200_000)   # room for the run's config, metrics and samples; not for its checkpoint
    capsys.readouterr()
    assert main(["-q", "train", "vae", "--config", str(repo_root / "configs/vae/tiny.json"), "--out",
                 str(disk / "run"), "--set", f"data.manifest={json.dumps(str(manifest))}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"tta: error: {disk / 'run' / 'checkpoints' / 'step_2'}: No space left on device"
    assert _left(disk) == []


def test_index_build_on_a_nearly_full_disk_is_an_error_not_a_bus_error(full_disk, tmp_path, repo_root):
    # the embeddings are written into memory maps of sparse files: with too little room the first row written
    # ended the process with SIGBUS ("Bus error", exit 135) and left the hidden temporary store behind
    import torch

    from tests.clap_toy import make_corpus
    from tta.checkpoint import save_component
    from tta.clap.model import TTAClap
    from tta.clap.train import RunConfig
    from tta.config import load_config
    from tta.data.manifest import read_manifest, write_manifest

    manifest = make_corpus(tmp_path / "corpus", per_kind_train=1, per_kind_valid=0)
    rows = read_manifest(manifest)   # 64 rows of the same few clips: arrays of several pages each
    write_manifest(manifest, [type(r)(**{**r.__dict__, "id": f"{r.id}-{i}"}) for i in range(64 // len(rows) + 1)
                              for r in rows])
    torch.manual_seed(0)
    clap = save_component(tmp_path / "clap", TTAClap(load_config(RunConfig, repo_root / "configs/clap/tiny.json").model))
    for free in (16_384, 20_480):
        disk = full_disk(free)
        out = subprocess.run([sys.executable, "-m", "tta", "-q", "index", "build", "--manifest", str(manifest),
                              "--clap", str(clap), "--out", str(disk / "store")], cwd=repo_root, capture_output=True,
                             text=True, env=_env(OMP_NUM_THREADS="1"))
        assert (out.returncode, out.stderr.strip()) == (1, f"tta: error: {disk / 'store'}: No space left on device"), free
        assert _left(disk) == []


def test_training_sample_plots_on_a_full_disk_name_the_file_and_leave_nothing(full_disk):
    # matplotlib's savefig wrote the PNG in place: a full disk left a partial file and "[Errno 28]" named none
    import torch

    from tta.ldm.train import save_mel_png
    from vae.train import save_spectrogram_png

    disk = full_disk(0)
    mel = torch.randn(64, 200)
    for name, write in (("ldm.png", lambda p: save_mel_png(p, mel, "x")),
                        ("vae.png", lambda p: save_spectrogram_png(p, mel, mel, "x"))):
        with pytest.raises(OSError, match="No space left on device") as caught:
            write(disk / "samples" / name)
        assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(disk / "samples" / name)
        assert _left(disk) == []


def test_train_out_is_an_existing_writable_folder_in_a_read_only_one_or_a_read_only_folder(tmp_path, repo_root,
                                                                                         capsys):
    # a folder of one's own inside a folder one cannot write (a scratch folder under a shared one) was refused
    # ("cannot be written there (PARENT is not writable)") though the run writes only inside it; a read-only
    # existing --out was refused by the run lock's "OUT/.lock: Permission denied" instead of the check
    from tta.cli import main

    manifest = noise_manifest(tmp_path)
    shared = _small_tmpfs(tmp_path / "shared", "size=64k")
    (shared / "mine").mkdir()
    (shared / "theirs").mkdir()
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(shared)], check=True)
        mine = shared / "mine"   # writable, in the read-only `shared`
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mine)], check=True)
        try:
            train = ["-q", "train", "vae", "--config", str(repo_root / "configs/vae/tiny.json"),
                     "--set", f"data.manifest={json.dumps(str(manifest))}", "--set", "train.max_steps=1",
                     "--set", "train.checkpoint_every=1", "--set", "valid_items=0", "--out"]
            capsys.readouterr()
            assert main([*train, str(mine)]) == 0, capsys.readouterr().err
            assert (mine / "final").is_dir()
            capsys.readouterr()
            assert main([*train, str(shared / "theirs")]) == 1
            assert capsys.readouterr().err.strip() == (f"tta: error: {shared / 'theirs'}: --out is a folder that "
                                                       "is not writable")
            assert main([*train, str(shared / "new")]) == 1
            assert capsys.readouterr().err.strip() == (f"tta: error: {shared / 'new'}: --out cannot be written "
                                                       f"there ({shared} is not writable)")
        finally:
            subprocess.run(["umount", "-l", str(mine)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(shared)], check=True)
