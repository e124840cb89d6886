"""The `tta` command: exit codes, one-line errors, --version, -v tracebacks."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tta import __version__
from tta.cli import TRAINERS, main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"tta {__version__}"
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0 and "--resume" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [[], ["nonsense"], ["train", "vae"], ["train", "gan", "--config", "x", "--out", "y"]])
def test_bad_usage_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2


def test_user_error_is_one_line_exit_1(capsys, tmp_path):
    code, out, err = run_cli(capsys, "train", "vae", "--config", str(tmp_path / "missing.json"), "--out",
                             str(tmp_path / "run"))
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("tta: error: ") and "missing.json" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_an_error_mid_run_starts_its_own_line_after_the_progress_bar(capsys, tmp_path, repo_root):
    # a run stopped after its bar was drawn (an unreadable clip, a full disk, Ctrl-C): the error went on at the
    # end of the bar's line ("train run:   0%|  | 0/2 [00:00<?, ?it/s]tta: error: ...")
    import json

    from tests.signals import noise
    from tta.audio import save_audio

    rows = []
    for i in range(3):
        save_audio(tmp_path / f"c{i}.flac", noise(1.0, seed=i), 16_000)
        rows.append({"id": f"c{i}", "path": f"c{i}.flac", "captions": ["noise"], "seconds": 1.0,
                     "sample_rate": 16_000, "split": "train"})
    # a whole header, so the check of every file's header before the first step passes it, and frames that do
    # not decode (FLAC "lost sync"): found only when it is read, after the bar is drawn
    damaged = bytearray((tmp_path / "c1.flac").read_bytes())
    damaged[200:] = bytes(np.random.default_rng(1).integers(0, 256, len(damaged) - 200, dtype=np.uint8))
    (tmp_path / "c1.flac").write_bytes(bytes(damaged))
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = run_cli(capsys, "train", "vae", "--config", str(repo_root / "configs/vae/tiny.json"), "--out",
                           str(tmp_path / "run"), "--set", f"data.manifest={json.dumps(str(tmp_path / 'm.jsonl'))}",
                           "--set", "train.batch_size=3", "--set", "data.max_unreadable=0")   # 0: stop at it
    assert code == 1 and "train run:" in err and "c1.flac" in err, err
    assert err.endswith("\n") and err.splitlines()[-1].startswith("tta: error: "), err
    assert not (tmp_path / "run").exists()


def _noise_manifest(folder, n: int) -> str:
    """A manifest of n one-second noise clips (training split), as --set data.manifest=VALUE."""
    import json

    from tests.signals import noise
    from tta.audio import save_audio

    rows = []
    for i in range(n):
        save_audio(folder / f"c{i}.wav", noise(1.0, seed=i), 16_000)
        rows.append({"id": f"c{i}", "path": f"c{i}.wav", "captions": ["noise"], "seconds": 1.0,
                     "sample_rate": 16_000, "split": "train"})
    (folder / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"data.manifest={json.dumps(str(folder / 'm.jsonl'))}"


def test_a_log_record_written_while_a_bar_is_open_starts_its_own_line_in_a_log_file(tmp_path, repo_root):
    """`tta train ... 2>log`: the checkpoint record went on at the end of the bar's line ("...it/s]INFO
    tta.training: checkpoint ..."); the bar's line is ended, the record follows and the bar is written again,
    with no "\\r" or blanking spaces before the record."""
    import re

    data = _noise_manifest(tmp_path, 2)
    cmd = [sys.executable, "-m", "tta", "train", "vae", "--config", str(repo_root / "configs/vae/tiny.json"),
           "--set", data, "--set", "train.max_steps=2", "--set", "train.checkpoint_every=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([*cmd, "--out", str(tmp_path / "run")], capture_output=True, cwd=repo_root, env=env)
    err = out.stderr.decode()   # bytes: text mode would read each "\\r" as a newline
    assert out.returncode == 0, err
    records = re.findall(r"INFO tta\.training: checkpoint \S+step_\d", err)
    assert len(records) == 2, repr(err)
    for record in records:   # each on its own line, the bar's line ended before it and the bar drawn after it
        assert f"]\n{record}\n\rtrain run:" in err, repr(err)
    assert not re.search(r"[^\n](INFO|WARNING) ", err), repr(err)
    assert err.startswith("WARNING vae.train: no validation: ")   # before the bar: as it was


def test_transformers_records_start_their_own_line_beside_a_bar_and_show_only_with_verbose(tmp_path, repo_root):
    """transformers writes its records with a handler of its own, and at its import (inside a command) set its
    level back to warnings: "[transformers] Token indices sequence length is longer ..." (a caption past the
    tokenizer's 512) went on at the end of `tta generate`'s bar, also without -v, beside tta's own warning of the
    truncation. Its records now take tta's handler while a command runs: on their own line, under -v only."""
    import re

    from tests.test_ldm_fixtures import tiny_pipeline

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a dog barks\n" + "rain " * 600 + "\n")
    cmd = [sys.executable, "-m", "tta", "generate", "--prompts", str(prompts), "--model", str(tiny_pipeline()),
           "--seconds", "0.2", "--steps", "2", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for verbose in (["-v"], []):
        out = subprocess.run([*cmd, *verbose, "--out-dir", str(tmp_path / f"out{len(verbose)}")], capture_output=True,
                             cwd=repo_root, env=env)
        err = out.stderr.decode()   # bytes: text mode would read each "\r" as a newline
        assert out.returncode == 0, err
        assert "[transformers]" not in err and not re.search(r"[^\n](DEBUG|INFO|WARNING) ", err), repr(err)
        assert "]\nWARNING tta.clap.encoder: caption 'rain rain" in err, repr(err)   # beside the bar, as before
        record = "WARNING transformers.tokenization_utils_base: Token indices sequence length is longer"
        assert (f"]\n{record}" in err) == bool(verbose), repr(err)


def test_diffusers_records_take_tta_s_handler_and_show_only_with_verbose(tmp_path, repo_root):
    """diffusers, as transformers, writes its records with a handler of its own and at its import (inside a
    command) set its level back to warnings: `tta -q import diffusers` of a folder whose scheduler_config.json
    has a key DDIMScheduler does not take printed "The config attributes {'a_later_setting': 1} were passed to
    DDIMScheduler, but are not expected ..." under -q, in diffusers' own format."""
    import json

    from tests.test_ldm_fixtures import tiny_components
    from tests.test_pipeline_interop import write_diffusers_audioldm

    write_diffusers_audioldm(tmp_path / "d")
    path = tmp_path / "d" / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "a_later_setting": 1}))
    cmd = [sys.executable, "-m", "tta", "-q", "import", "diffusers", str(tmp_path / "d"), "--clap",
           str(tiny_components()["clap"])]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for verbose in (["-v"], []):
        out = subprocess.run([*cmd, *verbose, "--out", str(tmp_path / f"p{len(verbose)}")], capture_output=True,
                             cwd=repo_root, env=env)
        err = out.stderr.decode()
        assert out.returncode == 0, err
        record = ("WARNING diffusers.configuration_utils: The config attributes {'a_later_setting': 1} were passed "
                  "to DDIMScheduler, but are not expected")
        assert ("not expected" in err) == bool(verbose) and (record in err) == bool(verbose), repr(err)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux's CPU affinity")
def test_a_python_warning_raised_while_a_bar_is_open_starts_its_own_line(tmp_path, repo_root):
    """torch's DataLoader warns when it starts more workers than the CPUs the process may use, as the training
    bar is open: "train run:   0%|   | 0/2 [00:00<?, ?it/s]/.../dataloader.py:437: UserWarning: This DataLoader
    ...". Python's warnings are written as before, through the handler of tta's records while a command runs."""
    import re

    data = _noise_manifest(tmp_path, 2)
    cmd = [sys.executable, "-m", "tta", "train", "vae", "--config", str(repo_root / "configs/vae/tiny.json"),
           "--set", data, "--set", "train.max_steps=1", "--set", "data.num_workers=2", "--set", "valid_items=0"]
    cpu = min(os.sched_getaffinity(0))
    out = subprocess.run([*cmd, "--out", str(tmp_path / "run")], capture_output=True, cwd=repo_root,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    err = out.stderr.decode()
    assert out.returncode == 0, err
    warned = [line for line in err.split("\n") if "UserWarning: This DataLoader will create 2 worker" in line]
    assert len(warned) == 2, repr(err)   # as the loader is made, then as the bar is open and it starts its workers
    # what a line shows once the terminal has carried out its carriage returns (a closed bar clears its line
    # with "\r   \r" before the warning is written at its start)
    shown = [line.rsplit("\r", 1)[-1] for line in warned]
    assert all(re.match(r"/\S+/dataloader\.py:\d+: UserWarning", line) for line in shown), repr(err)
    assert f"?it/s]\n{warned[1]}\n  self.check_worker_number_rationality()\n\rtrain run:" in err, repr(err)
    assert not re.search(r"[^\n](DEBUG|INFO|WARNING) ", err), repr(err)


def test_a_command_leaves_transformers_logging_and_python_warnings_as_it_found_them(tmp_path, capsys):
    """The routing above lasts while the command runs: afterwards (main() called in a process that goes on)
    transformers and diffusers write with their own handlers again, and warnings are shown as before. The levels
    of the noisy libraries, transformers' and diffusers' verbosity among them, are as the caller set them too:
    they stayed at errors (the command's -q) for good."""
    import logging
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as hf_logging

    from tests.test_ldm_fixtures import tiny_pipeline
    from tta.cli import NOISY_LIBRARIES

    loggers = [logging.getLogger("transformers"), logging.getLogger("diffusers")]
    hf_logging.get_verbosity()   # set up, as each library sets its logger up on first use
    diffusers_logging.get_verbosity()
    levels = {name: logging.getLogger(name).level for name in NOISY_LIBRARIES}
    try:   # a caller's own levels: transformers' INFO, diffusers' DEBUG, urllib3's DEBUG, the others' as they are
        hf_logging.set_verbosity_info()
        diffusers_logging.set_verbosity_debug()
        logging.getLogger("urllib3").setLevel(logging.DEBUG)
        before = ([(list(logger.handlers), logger.propagate) for logger in loggers], warnings.showwarning,
                  {name: logging.getLogger(name).level for name in NOISY_LIBRARIES})
        # their own handlers (transformers also writes through the root's where the environment says CI=1/true)
        assert all(handlers for handlers, _ in before[0])
        code = main(["-q", "generate", "rain " * 600, "--model", str(tiny_pipeline()), "--seconds", "0.2", "--steps",
                     "2", "-o", str(tmp_path / "x.wav")])
        assert code == 0, capsys.readouterr().err
        assert ([(list(logger.handlers), logger.propagate) for logger in loggers], warnings.showwarning,
                {name: logging.getLogger(name).level for name in NOISY_LIBRARIES}) == before
        assert (hf_logging.get_verbosity(), diffusers_logging.get_verbosity()) == (logging.INFO, logging.DEBUG)
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def test_a_command_leaves_huggingface_hubs_progress_bars_as_it_found_them(tmp_path, capsys):
    """transformers' disable_progress_bar()/enable_progress_bar() (5.x) switch huggingface_hub's bars for the
    whole process too and drop its per-group settings: a caller who had turned the hub's bars off, all of them
    or one group's, found them all on after main(). The command hides transformers' own bars alone."""
    import importlib

    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    from tests.test_ldm_fixtures import tiny_pipeline

    hub_states = importlib.import_module("huggingface_hub.utils.tqdm").progress_bar_states
    was, bars = dict(hub_states), hf_logging.is_progress_bar_enabled()
    argv = ["-q", "generate", "a dog barks", "--model", str(tiny_pipeline()), "--seconds", "0.2", "--steps", "2",
            "--threads", "1", "-o", str(tmp_path / "x.wav")]
    try:
        hub_utils.enable_progress_bars()
        hub_utils.disable_progress_bars("huggingface_hub.http_get")   # one group's
        assert main(argv) == 0, capsys.readouterr().err
        assert hub_utils.are_progress_bars_disabled("huggingface_hub.http_get")
        assert not hub_utils.are_progress_bars_disabled() and not hub_utils.are_progress_bars_disabled("other")
        hub_utils.disable_progress_bars()   # all of them, transformers' own left on
        assert main(argv) == 0, capsys.readouterr().err
        assert hub_utils.are_progress_bars_disabled() and hf_logging.is_progress_bar_enabled() == bars
    finally:
        hub_states.clear()
        hub_states.update(was)


@pytest.mark.parametrize("library", ["transformers", "diffusers"])
def test_a_librarys_own_bars_are_switched_and_huggingface_hubs_left_as_they_were(library, capfd):
    """set_library_bars, which a command uses to hide transformers' and diffusers' bars while it runs: diffusers'
    ("Loading pipeline components") as transformers' ("Loading weights"), each
    library's bar drawn or not as it is switched, and huggingface_hub's bars (one group's off) as they were."""
    import importlib

    from huggingface_hub import utils as hub_utils

    from tta.checkpoint import set_library_bars

    hf_logging = importlib.import_module(f"{library}.utils.logging")
    hub_states = importlib.import_module("huggingface_hub.utils.tqdm").progress_bar_states
    was, bars = dict(hub_states), hf_logging.is_progress_bar_enabled()
    try:
        hub_utils.enable_progress_bars()
        hub_utils.disable_progress_bars("huggingface_hub.http_get")
        kept = dict(hub_states)
        for on in (False, True, False):
            set_library_bars(hf_logging, on)
            capfd.readouterr()
            for _ in hf_logging.tqdm(range(2), desc="Loading pipeline components"):
                pass
            assert ("Loading pipeline components" in capfd.readouterr().err) == on
            assert hf_logging.is_progress_bar_enabled() == on and dict(hub_states) == kept
    finally:
        set_library_bars(hf_logging, bars)
        hub_states.clear()
        hub_states.update(was)


def test_a_release_without_the_private_bar_flag_is_switched_by_its_public_functions():
    """set_library_bars set transformers' and diffusers' private `_tqdm_active`: a release that renamed it would
    have been left with its bars on (the attribute created, nothing reading it). Such a library is switched by
    its enable_progress_bar()/disable_progress_bar(), and huggingface_hub's bars, which transformers' (5.x)
    switch too, are put back as they were."""
    import importlib

    from huggingface_hub import utils as hub_utils

    from tta.checkpoint import set_library_bars

    class Release:   # a library's utils.logging as transformers 5 has it, its flag under another name
        def __init__(self):
            self.progress_bars = True

        def enable_progress_bar(self):
            self.progress_bars = True
            hub_utils.enable_progress_bars()

        def disable_progress_bar(self):
            self.progress_bars = False
            hub_utils.disable_progress_bars()

        def is_progress_bar_enabled(self):
            return self.progress_bars

    release = Release()
    hub_states = importlib.import_module("huggingface_hub.utils.tqdm").progress_bar_states
    was = dict(hub_states)
    try:
        hub_utils.enable_progress_bars()
        hub_utils.disable_progress_bars("huggingface_hub.http_get")
        kept = dict(hub_states)
        set_library_bars(release, False)
        assert not release.is_progress_bar_enabled() and dict(hub_states) == kept
        hub_utils.disable_progress_bars()
        kept = dict(hub_states)
        set_library_bars(release, True)
        assert release.is_progress_bar_enabled() and dict(hub_states) == kept
    finally:
        hub_states.clear()
        hub_states.update(was)


def test_a_library_the_command_imported_is_left_at_its_own_default_level(tmp_path, repo_root):
    """main() called from a script that has not imported transformers: the command imports it (the embedded
    model's text tower), which sets its logger to its default (warnings); afterwards it is there, as if the script
    had imported it, and a level the script set on another noisy library (urllib3's DEBUG) is as it set it."""
    from tests.test_ldm_fixtures import tiny_pipeline

    script = f"""
import logging, sys
from tta.cli import main
assert "transformers" not in sys.modules
logging.getLogger("urllib3").setLevel(logging.DEBUG)
code = main(["-q", "generate", "a dog barks", "--model", {str(tiny_pipeline())!r}, "--seconds", "0.2", "--steps", "2",
             "--threads", "1", "-o", {str(tmp_path / "x.wav")!r}])
from transformers.utils import logging as hf_logging
print(code, logging.getLogger("urllib3").level, logging.getLogger("transformers").level, hf_logging.get_verbosity())
"""
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=repo_root,
                         env={**env, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1].split() == ["0", "10", "30", "30"], out.stdout + out.stderr


def test_a_command_leaves_the_root_logger_of_a_script_as_it_found_it(tmp_path, repo_root):
    """main() called from a script whose logging is not set up: the command gave the root logger tta's handler
    and its own level for good, so that the script's own records at INFO (DEBUG after -v) were shown in tta's
    format, and a later main()'s -q or -v was not taken (logging.basicConfig does nothing once a handler is
    there). The root logger is as the script had it when each command ends."""
    script = f"""
import logging
from tta.cli import main
for argv in (["-v"], [], ["-q"]):
    try:
        main([*argv, "data", "check", {str(tmp_path / "missing.jsonl")!r}])
    except Exception:   # -v: the error is raised to the caller
        pass
    print(logging.root.level, len(logging.root.handlers))
logging.getLogger("mine").info("a script's own record")
logging.getLogger("mine").debug("a script's own record")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=repo_root,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n") == ["30 0"] * 3 + [""], out.stdout + out.stderr
    assert "manifest not found" in out.stderr and "a script's own record" not in out.stderr, out.stderr


def test_the_after_import_hook_acts_on_its_module_only_and_leaves_its_loader_as_it_was(tmp_path, monkeypatch):
    """The hook that routes transformers' and diffusers' logging replaced exec_module on the loader it found for
    good: a loader shared by several modules (a zipimporter loads every module of its archive's folder) called
    `then` for each module imported after it. It acts once, on its own module, and then the loader and
    sys.meta_path are as they were; removed before its module is imported, it leaves them as they were too."""
    import zipfile

    from tta.cli import _AfterImport

    archive = tmp_path / "lib.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in ("__init__", "target", "other", "late", "looked"):
            z.writestr(f"zpkg/{name}.py", f"NAME = {name!r}\n")
    monkeypatch.syspath_prepend(str(archive))
    for name in ("zpkg", "zpkg.target", "zpkg.other", "zpkg.late", "zpkg.looked"):   # gone again when the test ends
        monkeypatch.setitem(sys.modules, name, None)
        monkeypatch.delitem(sys.modules, name)
    seen = []
    hook = _AfterImport("zpkg.target", lambda module: seen.append(module.__name__))
    monkeypatch.setattr(sys, "meta_path", [hook, *sys.meta_path])
    import zpkg.target   # noqa: F401
    import zpkg.other

    assert seen == ["zpkg.target"] and hook not in sys.meta_path
    assert zpkg.other.__loader__ is sys.modules["zpkg.target"].__loader__   # one loader for both
    assert "exec_module" not in vars(zpkg.other.__loader__)   # the zipimporter's own method again
    late = _AfterImport("zpkg.late", lambda module: seen.append(module.__name__))
    sys.meta_path.insert(0, late)
    late.find_spec("zpkg.late")   # found, then the command ended before the module was imported
    late.remove()
    import zpkg.late   # noqa: F401

    assert seen == ["zpkg.target"] and late not in sys.meta_path and "exec_module" not in vars(zpkg.other.__loader__)
    # a lookup without an import (importlib.util.find_spec) took the hook out of sys.meta_path, so the import
    # that followed it ran without `then`
    import importlib.util

    looked = _AfterImport("zpkg.looked", lambda module: seen.append(module.__name__))
    sys.meta_path.insert(0, looked)
    assert importlib.util.find_spec("zpkg.looked") is not None
    import zpkg.looked   # noqa: F401

    assert seen == ["zpkg.target", "zpkg.looked"] and looked not in sys.meta_path
    assert "exec_module" not in vars(zpkg.other.__loader__)


def test_a_log_record_in_a_terminal_clears_the_bar_and_draws_it_again_below_it():
    """In a terminal tqdm blanks the bar's line, the record is written there and the bar is drawn again on the
    line below; with no bar open the record is written as it always was."""
    import logging
    import re

    from tqdm import tqdm

    from tta.cli import _BesideProgressBars

    master, replica = os.openpty()
    with open(replica, "w", encoding="utf-8") as terminal:
        assert terminal.isatty()
        handler = _BesideProgressBars(terminal)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        record = logging.LogRecord("tta.training", logging.INFO, __file__, 1, "checkpoint %s", ("run/step_1",), None)
        bar = tqdm(total=2, desc="train run", file=terminal, ncols=60, mininterval=0)
        bar.update(1)
        handler.handle(record)
        bar.close()
        handler.handle(record)
    shown = b""
    while True:   # what the terminal was sent, in the pieces the pseudo-terminal passes on, until it is closed
        try:
            piece = os.read(master, 1 << 16)
        except OSError:   # EIO: read to the end
            break
        if not piece:
            break
        shown += piece
    os.close(master)
    shown = shown.decode()
    assert re.search(r"\]\r +\rINFO tta\.training: checkpoint run/step_1\r\n\rtrain run:  50%", shown), repr(shown)
    assert shown.endswith("\r\nINFO tta.training: checkpoint run/step_1\r\n"), repr(shown)


def test_an_operating_system_error_names_the_users_path(capsys, tmp_path, monkeypatch):
    import tta.data.commands

    def fails(args):   # what an output path under a file gives, or a rename onto a folder
        if args.manifest.name == "mkdir":
            (tmp_path / "a_file").write_text("x")
            (tmp_path / "a_file" / "sub").mkdir(parents=True)
        os.replace(tmp_path / ".hidden.tmp", tmp_path / "mine.jsonl")

    monkeypatch.setattr(tta.data.commands, "cmd_check", fails)
    code, _, err = run_cli(capsys, "data", "check", "mkdir")
    assert code == 1 and err == f"tta: error: {tmp_path / 'a_file' / 'sub'}: Not a directory\n"
    code, _, err = run_cli(capsys, "data", "check", "replace")
    assert code == 1 and err == f"tta: error: {tmp_path / 'mine.jsonl'}: No such file or directory\n"


@pytest.mark.parametrize("stop, code, line", [("sigterm", 143, "tta: terminated"), ("ctrl-c", 130, "tta: interrupted")])
def test_a_stopped_command_says_so_in_one_line(stop, code, line, capsys, monkeypatch):
    """SIGTERM (kill, timeout, a scheduler's cancel), which every command takes as Ctrl-C, ended the process with
    143 and no word, where Ctrl-C prints `tta: interrupted`."""
    import signal

    import tta.data.commands

    def stopped(args):
        if stop == "ctrl-c":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the command")

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(tta.data.commands, "cmd_check", stopped)
    assert run_cli(capsys, "data", "check", "m.jsonl") == (code, "", line + "\n")
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_run_that_fails_before_it_starts_says_only_the_error(tmp_path, repo_root):
    """`tta train vae ... 2>log` with a manifest that is a folder (or missing) wrote "INFO tta.training: removed r4:
    the run failed before its first checkpoint" before the error line, for the folder (holding its lock file
    only) that the command itself had made; -v still tells. A folder that was there stays, as it was."""
    (tmp_path / "snd").mkdir()
    (tmp_path / "kept").mkdir()
    cmd = [sys.executable, "-m", "tta", "train", "vae", "--config", str(repo_root / "configs/vae/tiny.json"),
           "--set", 'data.manifest="snd"']
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(repo_root), *filter(None, [os.environ.get("PYTHONPATH")])])}
    error = "tta: error: snd: is a folder, expected a manifest file (.jsonl)\n"
    for out in ("r4", "kept"):
        done = subprocess.run([*cmd, "--out", out], capture_output=True, text=True, cwd=tmp_path, env=env)
        assert (done.returncode, done.stderr) == (1, error)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "snd"] and not any((tmp_path / "kept").iterdir())
    done = subprocess.run([cmd[0], *cmd[1:3], "-v", *cmd[3:], "--out", "r4"], capture_output=True, text=True,
                          cwd=tmp_path, env=env)
    assert done.returncode == 1 and "snd: is a folder" in done.stderr
    assert "DEBUG tta.training: removed r4: the run failed before its first checkpoint\n" in done.stderr
    assert not (tmp_path / "r4").exists()


def test_verbose_shows_the_traceback(tmp_path):
    cmd = [sys.executable, "-m", "tta", "-v", "train", "vae", "--config", str(tmp_path / "missing.json"),
           "--out", str(tmp_path / "run")]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 1 and "Traceback" in out.stderr


def test_quiet_and_verbose_are_taken_after_the_sub_command_too():
    """`tta generate "rain" -q` was "unrecognized arguments: -q"; the flags work at either place, and a sub-command
    without them keeps what the top level set."""
    from tta.cli import build_parser

    parser = build_parser()
    for argv, quiet, verbose in ((["-q", "generate", "x"], True, False), (["generate", "x", "-q"], True, False),
                                 (["generate", "x"], False, False), (["data", "check", "m.csv", "--verbose"], False, True),
                                 (["-q", "index", "info", "s", "-v"], True, True)):
        args = parser.parse_args(argv)
        assert (args.quiet, args.verbose) == (quiet, verbose), argv


def test_every_trainer_module_exposes_the_contract():
    import importlib
    import importlib.util

    for kind, name in TRAINERS.items():
        if importlib.util.find_spec(name.rsplit(".", 1)[0]) is None or importlib.util.find_spec(name) is None:
            continue  # component not in this build yet
        module = importlib.import_module(name)
        assert hasattr(module, "RunConfig") and callable(module.train) and callable(module.check_start), kind


def test_wrong_type_in_set_names_the_key(capsys, tmp_path, repo_root):
    import importlib.util

    configs = sorted((repo_root / "configs").glob("*/tiny.json"))
    kinds = [c.parent.name for c in configs if c.parent.name in TRAINERS
             and importlib.util.find_spec(TRAINERS[c.parent.name]) is not None]
    if not kinds:
        pytest.skip("no trainer in this build yet")
    kind = kinds[0]
    code, _, err = run_cli(capsys, "train", kind, "--config", str(repo_root / "configs" / kind / "tiny.json"),
                           "--out", str(tmp_path / "run"), "--set", "train.max_steps=many")
    assert code == 1 and "train.max_steps" in err and "expected int" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, "train", kind, "--config", str(repo_root / "configs" / kind / "tiny.json"),
                           "--out", str(tmp_path / "run"), "--set", "train.max_stepz=3")
    assert code == 1 and "unknown config key 'train.max_stepz'" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv", [["clap", "score", "--clap", "M", "--audio", "."],
                                  ["index", "query", "STORE", "--clap", "C", "--text", "x"]])
def test_every_device_flag_takes_the_same_choices_and_names_itself(argv, capsys):
    """clap and index commands took any --device string and failed inside torch with a message that named no
    flag; they share generate's choices and checks now."""
    import torch

    with pytest.raises(SystemExit) as e:
        main([*argv, "--device", "tpu"])
    assert e.value.code == 2 and "invalid choice: 'tpu'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["-q", *argv, "--device", "cuda"]) == 1
        err = capsys.readouterr().err
        assert err.strip() == "tta: error: --device cuda: no CUDA device is available"


@pytest.mark.parametrize("argv", [
    ["index", "build", "--manifest", "M", "--clap", "CLAP", "--out", "afile/store"],
    ["export", "pipeline", "MODEL", "--out", "afile/copy"],
    ["train", "vae", "--config", "VAECONFIG", "--out", "afile/run"],
    ["data", "import", "webdataset", "SHARDS", "--out", "m.jsonl", "--audio-dir", "afile/audio"],
])
def test_an_output_folder_under_a_file_is_named(tmp_path, capsys, argv):
    """These said "afile: File exists" (mkdir's errno text) instead of naming the flag and the file in the way."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "afile").write_text("x")
    (tmp_path / "SHARDS").mkdir()
    subs = {"M": tmp_path / "m.jsonl", "CLAP": root / "tta/assets/default/text_encoder", "MODEL": root / "tta/assets/default",
            "VAECONFIG": root / "configs/vae/tiny.json", "SHARDS": tmp_path / "SHARDS"}
    args = [str(subs[a]) if a in subs else str(tmp_path / a) if "/" in a or a.endswith(".jsonl") else a for a in argv]
    code = main(["-q", *args])
    err = capsys.readouterr().err
    flag = "--audio-dir" if "--audio-dir" in argv else "--out"
    assert code == 1 and f"{flag} cannot be written there" in err and "afile is a file" in err, err


OUTPUT_FLAGS = ("--out", "-o", "--out-dir", "--markdown", "--drop-bad", "--audio-dir", "--cache", "--cache-dir")


def _actions(parser, path=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, (*path, name))
        else:
            yield path, action


def test_every_output_flag_refuses_an_empty_path():
    """`--out ""` (an unset shell variable) was Path(""), the current folder: tta eval, generate --out-dir and a
    recipe wrote there, and a training run made the current folder its run folder."""
    from tta.checkpoint import output_path
    from tta.cli import build_parser

    flags = [(path, action) for path, action in _actions(build_parser())
             if set(action.option_strings) & set(OUTPUT_FLAGS)]
    assert len(flags) >= 15
    for path, action in flags:
        assert action.type is output_path, (" ".join(path), action.option_strings)


@pytest.mark.parametrize("argv", [
    ["eval", "--generated", "G", "--reference", "R", "--out", ""],
    ["generate", "x", "--out-dir", ""],
    ["generate", "x", "-o", ""],
    ["train", "vae", "--config", "C", "--out", ""],
    ["report", "R", "--out", ""],
    ["data", "check", "M", "--drop-bad", ""],
])
def test_an_empty_output_path_is_refused_before_any_work(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    flag = argv[argv.index("") - 1]
    assert e.value.code == 2 and f"argument {flag}" in err and "an empty path" in err, err
    assert list(tmp_path.iterdir()) == []


def test_python_m_tta_uses_its_own_top_level_packages_beside_a_users_of_the_same_names(tmp_path, repo_root):
    """`python -m tta` put the current folder first on sys.path: run from a folder holding its own `eval/`,
    `vae/` or `vocoder/` package, tta imported that one (`tta --help` builds the eval command's parser) and
    stopped with its error. tta here lives elsewhere, as an installed copy does (PYTHONPATH names the tree)."""
    for name in ("eval", "vae", "vocoder"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise RuntimeError('the user package {name} was imported')\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(repo_root)]))}
    out = subprocess.run([sys.executable, "-m", "tta", "--help"], capture_output=True, text=True, cwd=tmp_path,
                         env=env)
    assert out.returncode == 0 and "generate" in out.stdout, out.stderr
    # the trainers import vae and vocoder; the missing config is reported after the import, in one line
    out = subprocess.run([sys.executable, "-m", "tta", "train", "vocoder", "--config", "missing.json", "--out", "run"],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    assert (out.returncode, out.stderr) == (1, "tta: error: missing.json: config file not found\n"), out.stderr
    assert not (tmp_path / "run").exists()
    # run from where tta lives (the repository root) the current folder stays first and its siblings are the ones
    # imported, as before (run_module as `python -m` runs it, to see sys.path and eval afterwards)
    code = ("import os, runpy, sys\n"
            "sys.path[0] = os.getcwd(); sys.argv = ['tta', '--help']\n"
            "try:\n    runpy.run_module('tta', run_name='__main__', alter_sys=True)\n"
            "except SystemExit as e:\n    print(e.code, sys.path[0], sys.modules['eval'].__file__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo_root)
    assert out.stdout.split()[-3:] == ["0", str(repo_root), str(repo_root / "eval" / "__init__.py")], out.stderr


def _gone_reader_pipe() -> int:
    """The write end of a pipe whose reader has gone (as `| head` leaves it once head exits)."""
    r, w = os.pipe()
    os.close(r)
    return w


def test_a_command_whose_stdout_reader_goes_away_finishes_its_work(tmp_path, capsys, monkeypatch):
    """`tta data check m.jsonl --drop-bad clean.jsonl | head -1`: the first line after the reader went ended the
    command with "tta: error: [Errno 32] Broken pipe" and exit 1, before --drop-bad was written. What is
    written to stdout is now dropped, and the command ends as it would have (here 1: a bad row)."""
    import json

    _noise_manifest(tmp_path, 2)
    rows = (tmp_path / "m.jsonl").read_text() + json.dumps({"id": "gone", "path": "gone.wav", "captions": ["x"],
                                                             "seconds": 1.0, "sample_rate": 16_000}) + "\n"
    (tmp_path / "m.jsonl").write_text(rows)
    w = _gone_reader_pipe()
    with open(w, "w", buffering=1) as stdout:   # line-buffered: each line is written as it is printed
        monkeypatch.setattr(sys, "stdout", stdout)
        code = main(["-q", "data", "check", str(tmp_path / "m.jsonl"), "--drop-bad", str(tmp_path / "clean.jsonl")])
        assert (code, capsys.readouterr().err) == (1, "")
        assert sys.stdout is stdout   # as it was
        stdout.write("dropped\n")   # its descriptor now writes to the null device
    assert [json.loads(line)["id"] for line in (tmp_path / "clean.jsonl").read_text().splitlines()] == ["c0", "c1"]


@pytest.mark.parametrize("unbuffered", [False, True])
def test_a_process_whose_stdout_reader_goes_away_exits_0_without_a_word(tmp_path, repo_root, unbuffered):
    """`tta index info STORE | head -1` (or `tta generate ... | head -2`): with stdout's buffer held to the end,
    the interpreter's last flush printed "Exception ignored in: <_io.TextIOWrapper name='<stdout>' ...>
    BrokenPipeError" and the process exited 120; unbuffered (PYTHONUNBUFFERED=1) it printed "tta: error: [Errno
    32] Broken pipe" and exited 1, after the work was done."""
    _noise_manifest(tmp_path, 1)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    w = _gone_reader_pipe()
    try:
        out = subprocess.run([sys.executable, "-m", "tta", "-q", "data", "check", str(tmp_path / "m.jsonl")],
                             stdout=w, stderr=subprocess.PIPE, cwd=repo_root, env=env)
    finally:
        os.close(w)
    assert (out.returncode, out.stderr.decode()) == (0, "")


def test_a_broken_pipe_that_is_not_stdouts_is_an_error(capsys, monkeypatch):
    """Only stdout's reader going away is taken quietly: a pipe or socket of the command's own (a child process's,
    a library's) that breaks is an error as any other."""
    import tta.data.commands

    def writes_to_a_gone_reader(args):
        print("a line")
        w = _gone_reader_pipe()
        try:
            os.write(w, b"x")
        finally:
            os.close(w)

    monkeypatch.setattr(tta.data.commands, "cmd_check", writes_to_a_gone_reader)
    assert run_cli(capsys, "data", "check", "m.jsonl") == (1, "a line\n", "tta: error: [Errno 32] Broken pipe\n")


def test_every_option_says_what_it_does_in_help():
    """`tta eval --help` listed `--batch-size BATCH_SIZE` with no word on what it batches (and clap score,
    clap retrieve, index build the same; generate's --device, report's --title)."""
    import argparse

    from tta.cli import build_parser

    bare = [(" ".join(path), action.option_strings) for path, action in _actions(build_parser())
            if action.option_strings and not action.help and not isinstance(action, argparse._HelpAction)]
    assert bare == []


@pytest.mark.parametrize("command", ["score", "retrieve"])
def test_clap_commands_take_the_embedding_cache_flag_tta_eval_names(command, tmp_path):
    """`tta eval --cache-dir DIR` and `tta clap score --cache DIR` name one thing, an embedding cache: a user
    who passed eval's name to clap score got "unrecognized arguments"."""
    from tta.cli import build_parser

    argv = ["clap", command, "--model", "M", "--audio", "A"]
    for flag in ("--cache", "--cache-dir"):
        args = build_parser().parse_args([*argv, flag, str(tmp_path / "c")])
        assert args.cache == tmp_path / "c", flag
