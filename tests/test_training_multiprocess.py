"""Training on several processes (what `accelerate launch` does on several GPUs), run for real on the CPU: two
processes under torchrun with the gloo backend train the tiny VAE with its discriminator, the tiny CLAP
with the batch gathered over both, and the tiny LDM on latents encoded once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.signals import chirp, noise, tone
from tta.audio import save_audio
from tta.data.manifest import ManifestRow, write_manifest

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _two_processes(tmp_path, script: str, captions: list[str]) -> tuple[dict, dict]:
    """Run tests/SCRIPT on two processes over a manifest of len(captions) short clips; the two dumps."""
    rows = []
    waves = [tone(440, 1.0), chirp(100, 7000, 1.0), noise(1.0, seed=1), tone(150, 1.0), chirp(3000, 200, 1.0),
             noise(1.0, seed=2)]
    for i, caption in enumerate(captions):
        path = save_audio(tmp_path / f"c{i}.wav", np.clip(waves[i % len(waves)], -1, 1), 16_000)
        rows.append(ManifestRow(id=f"c{i}", path=str(path), captions=(caption,), seconds=1.0,
                                sample_rate=16_000, split="train"))
    manifest = write_manifest(tmp_path / "manifest.jsonl", rows)
    return _torchrun(tmp_path, script, manifest)


def _torchrun(tmp_path, script: str, source: Path) -> tuple[dict, dict]:
    """tests/SCRIPT SOURCE RUN DUMP on two processes; the two processes' dumps."""
    dump = tmp_path / "dump"
    dump.mkdir()
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "netguard"), str(ROOT)])}   # offline; logs in tmp
    done = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(ROOT / "tests" / script),
                           str(source), str(tmp_path / "run"), str(dump)],
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = (torch.load(dump / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    shutil.rmtree(dump)
    return a, b


@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun is not installed beside this python")
def test_two_processes_keep_one_model_and_draw_their_own_noise(tmp_path):
    a, b = _two_processes(tmp_path, "multiprocess_vae.py", [f"clip {i}" for i in range(4)])
    assert a["processes"] == b["processes"] == 2
    # one model: the VAE (through DDP) and the loss module's own weights, which the trainer calls unwrapped
    # (the discriminator, logvar), are equal on both processes; BatchNorm running statistics are per process
    for part in ("vae", "loss"):
        for key, value in a["weights"][part].items():
            if key.endswith(("running_mean", "running_var", "num_batches_tracked", "scale_factor")):
                continue
            assert torch.equal(value, b["weights"][part][key]), f"{part}.{key} differs between the processes"
    assert not torch.equal(a["rng"], b["rng"])          # each process draws its own noise
    state = torch.load(tmp_path / "run" / "checkpoints" / "step_2" / "train_state.pt", weights_only=False)
    assert len(state["rng_ranks"]) == 2                  # and a resume gives each its stream back


@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun is not installed beside this python")
def test_clap_negatives_are_the_whole_batch_over_the_processes(tmp_path):
    # six clips, two processes, three per batch: "a tone" is on both processes in most batches
    a, b = _two_processes(tmp_path, "multiprocess_clap.py",
                          ["a tone", "a chirp", "noise", "a tone", "a falling chirp", "noise again"])
    for rec in (a["record"], b["record"]):
        assert [r["clips"] for r in rec] == [6, 6, 6]                  # both processes' clips, every step
        for r in rec:                                                  # the loss of one process on all clips
            assert r["got"] == pytest.approx(r["expected"], rel=1e-5, abs=1e-6)
    assert any(r["texts"] < r["clips"] for r in a["record"])          # a caption shared across processes
    assert a["record"] == b["record"]                                  # one loss on both
    for key, value in a["weights"].items():      # BatchNorm statistics: DDP sends the main process's
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(value, b["weights"][key]), f"{key} differs between the processes"


@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun is not installed beside this python")
def test_ldm_precompute_encodes_once_for_all_processes(tmp_path):
    from tests.test_ldm_fixtures import tiny_run_config
    from tta.config import save_config

    config = tiny_run_config(**{"precompute": True, "train.checkpoint_every": 2, "validation.prompts": []})
    save_config(config, tmp_path / "ldm.json")
    a, b = _torchrun(tmp_path, "multiprocess_ldm.py", tmp_path / "ldm.json")
    assert len(a["wrote"]) == 1 and b["wrote"] == []     # the main process encoded, the other read its cache
    for key, value in a["weights"].items():
        assert torch.equal(value, b["weights"][key]), f"{key} differs between the processes"


@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun is not installed beside this python")
def test_a_second_run_on_two_processes_refused_by_the_lock_stops_at_once(tmp_path):
    """The main process, refused by run_lock, stopped before it joined the processes' group; the other one waited
    for it inside torch's C++ rendezvous, where SIGTERM (made a SystemExit) cannot act, until torchrun's SIGKILL
    30 s later ("Unable to shutdown process ... via 15, forcefully exiting via 9")."""
    import time

    from tests.test_training import _vae_manifest
    from tta.training import run_lock

    manifest = _vae_manifest(tmp_path)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "netguard"), str(ROOT)])}
    with run_lock(tmp_path / "run"):      # the first run, training there
        start = time.monotonic()
        done = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "tta", "-q", "train", "vae",
                               "--config", str(ROOT / "configs" / "vae" / "tiny.json"), "--out", str(tmp_path / "run"),
                               "--set", f"data.manifest={manifest}", "--set", "valid_items=0"],
                              env=env, capture_output=True, text=True, timeout=240)
        seconds = time.monotonic() - start
    assert done.returncode != 0
    assert "is training in this folder; wait for it, or choose another --out" in done.stderr, done.stderr[-3000:]
    assert "forcefully exiting" not in done.stderr, f"{seconds:.0f} s: {done.stderr[-3000:]}"
    assert os.listdir(tmp_path / "run") == [".lock"]      # the running one's folder as it was


@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun is not installed beside this python")
def test_unreadable_rows_are_checked_once_and_stop_every_process_at_once(tmp_path):
    """The main process reads the headers of the run's audio files, once for the run, and the other process
    stops with its answer (one stopped alone would leave the other waiting in its next collective call)."""
    from tests.test_training_unreadable import _manifest

    manifest = _manifest(tmp_path, {"junk.wav": b"not audio\n" * 40})
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "netguard"), str(ROOT)])}
    done = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "tta", "-v", "train", "vae",
                           "--config", str(ROOT / "configs" / "vae" / "tiny.json"), "--out", str(tmp_path / "run"),
                           "--set", f"data.manifest={manifest}", "--set", "train.max_steps=20"],
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode != 0
    refusal = f"{manifest}: 1 of split 'train''s 4 audio files cannot be read (row junk at {manifest}:5: "
    assert done.stderr.count(f"tta.training.RunError: {refusal}") == 2, done.stderr[-3000:]   # both processes
    assert done.stderr.count("read the headers of 4 audio files of split 'train'") == 1      # checked once
    assert "forcefully exiting" not in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "run").exists()


def _train_vae_on_two_processes(tmp_path, manifest: str, out: Path, *sets: str) -> str:
    """`tta -q train vae` of the tiny VAE on two processes; its stderr."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "netguard"), str(ROOT)])}
    args = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "tta", "-q", "train", "vae", "--config",
            str(ROOT / "configs" / "vae" / "tiny.json"), "--out", str(out), "--set", f"data.manifest={manifest}"]
    for s in sets:
        args += ["--set", s] if s != "--resume" else [s]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def _unreadable_records(run: Path) -> list[tuple]:
    """(step, row, process, processes) of each row metrics.jsonl lists as unreadable."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["row"], r.get("process"), r.get("processes")) for r in rows if "unreadable" in r]


@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun is not installed beside this python")
def test_files_cut_short_are_skipped_by_each_process_and_listed_for_each_by_the_main_one(tmp_path):
    """Each process warns of the unreadable rows it draws and skips them; metrics.jsonl, which the main process
    writes, lists every process's, naming the process (with train.seed=2 only the second process draws a.flac)."""
    from tests.test_training_unreadable import _manifest

    manifest = _manifest(tmp_path, {"a.flac": None, "b.flac": None})
    stderr = _train_vae_on_two_processes(tmp_path, manifest, tmp_path / "run", "train.max_steps=4", "train.seed=2",
                                         "valid_items=0", "data.max_unreadable=0.5")
    skipped = ": skipped, another row drawn in its place"
    assert stderr.count(f"(row a at {manifest}:5){skipped}") == 1, stderr[-3000:]   # the second process
    assert stderr.count(f"(row b at {manifest}:6){skipped}") == 2, stderr[-3000:]   # both
    assert sorted(r[1:] for r in _unreadable_records(tmp_path / "run")) == [("a", 1, 2), ("b", 0, 2), ("b", 1, 2)]


@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun is not installed beside this python")
def test_a_resume_on_two_processes_counts_and_warns_as_the_uninterrupted_run(tmp_path, capsys, caplog):
    """On a resume only the main process recalled the rows metrics.jsonl lists, and every process's: it counted
    rows it never drew ("2 training files could not be decoded before step 1"), while the other one, starting
    from none, warned again of the rows it had found and counted them anew ("1 of the 2 unreadable files" where
    the uninterrupted run said "2 of the 2"). Each process recalls the rows it found itself; resumed on another
    number of processes, each recalls every row the run found."""
    from tests.test_training_unreadable import _manifest, _train

    manifest = _manifest(tmp_path, {"a.flac": None, "b.flac": None})
    sets = ["train.max_steps=4", "train.seed=2", "valid_items=0", "data.max_unreadable=0.5",
            "train.checkpoint_every=1", "train.keep_checkpoints=0"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    stderr = _train_vae_on_two_processes(tmp_path, manifest, full, *sets)
    found = _unreadable_records(full)
    assert found == [(1, "b", 0, 2), (1, "a", 1, 2), (2, "b", 1, 2)], found   # (train.seed=2)
    warned = [line for line in stderr.splitlines() if "skipped, another row drawn in its place" in line]
    later = [line for line in warned if "(row b " in line and "(2 of the 2 " in line]   # process 1 at step 2
    assert len(warned) == 3 and len(later) == 1, warned

    def stopped_after_step_1() -> None:
        shutil.rmtree(cut, ignore_errors=True)
        shutil.copytree(full, cut)
        for step in range(2, 5):
            shutil.rmtree(cut / "checkpoints" / f"step_{step}")
        shutil.rmtree(cut / "final")

    stopped_after_step_1()
    stderr = _train_vae_on_two_processes(tmp_path, manifest, cut, *sets, "--resume")
    said = [line.split("tta.training: ")[1] for line in stderr.splitlines() if "WARNING tta.training" in line]
    assert sorted(said) == sorted([f"{cut}: 1 training file could not be decoded by process {p} of 2 before step 1 "
                                   "(listed in metrics.jsonl); skipped as before (2 allowed by "
                                   "data.max_unreadable=0.5)" for p in (0, 1)] + [later[0].split("tta.training: ")[1]]), \
        said   # (the two processes' lines come in either order)
    assert _unreadable_records(cut) == found

    stopped_after_step_1()   # resumed on one process: the rows every process found before step 1 are its own
    rc, err, said = _train(capsys, caplog, "vae", cut, f"data.manifest={manifest}", *sets, extra=["--resume"])
    assert rc == 0, err
    assert said == [f"{cut}: resumed on 1 processes, started on 2: the global batch changes with them",
                    f"{cut}: 2 training files could not be decoded before step 1 (listed in metrics.jsonl); skipped "
                    "as before (2 allowed by data.max_unreadable=0.5)"], said
    assert _unreadable_records(cut) == found[:2]
