"""Component folders, training state and foreign checkpoints.

A component folder is `config.json` = {"class": "<module>.<Class>", "format_version": 1, "config": {...}}
plus `model.safetensors`. Training state for `--resume` (optimizer, RNG, data position, step) is a
separate `train_state.pt`, read back with `torch.load(weights_only=True)`. Every write is atomic: files
go to a temporary name in the same folder and are renamed into place, folders are assembled under a
temporary name and renamed, so a kill never leaves a half-written file or folder that loads.
Foreign `.ckpt/.pt/.pth/.bin` files are only ever read with `weights_only=True`. Weights holding NaN or inf,
own or foreign, are refused where they are read (`check_finite`), naming the file and the first bad key.
Loaders build their model inside `keep_global_rng`, so loading leaves the caller's global random generators as
they were; training runs load their frozen parts inside `loads_draw`, drawing as every load once did.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, NoReturn

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TRAIN_STATE_NAME = "train_state.pt"
# a retrieval datastore's record of the embeddings its first load found finite (tta.retrieval.datastore): no part
# of what the store holds, so a run's digest of its inputs leaves it out (tta.training.input_digests)
FINITE_NAME = "finite.json"
PIPELINE_FILE = "pipeline.json"   # a pipeline folder's spec (tta.ldm.folder writes it; tta.clap reads it)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the folder/file and what was expected."""


# ------------------------------------------------------------------------------------ atomic writes


def _default_mode(folder: bool) -> int:
    """The mode open() / mkdir() would give a new file / folder under the process umask (tempfile's are 0600
    / 0700, which would make every atomically written output private to its owner)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


class Terminated(SystemExit):
    """SIGTERM, raised by `terminate_as_exit` as SystemExit(143): `tta` ends it with one line, as Ctrl-C."""


@contextlib.contextmanager
def terminate_as_exit() -> Iterator[None]:
    """Within it, SIGTERM raises Terminated (a SystemExit(143)) instead of ending the process at once, so
    `finally` blocks run: torchrun and accelerate stop the other processes of a training run with SIGTERM when one
    fails (a run stopped that way left its folder, blocking the corrected rerun), and `kill`, `timeout`, a batch
    scheduler's cancel or `docker stop` send it to a `tta generate` batch, which then still writes the record of
    the files it wrote.

    A SIGTERM that arrives while a finaliser runs (an object's __del__, e.g. a progress bar's as the command
    ends) raises there, where Python prints 'Exception ignored in ...' with a traceback and goes on: the
    command then ended with status 0. Such a Terminated is not printed, and the block that goes on to its end
    raises it as it leaves."""
    import sys

    received: list[int] = []

    def stop(signum, frame):
        received.append(signum)
        raise Terminated(128 + signum)

    previous_hook = sys.unraisablehook

    def unraisable(info):
        if not isinstance(info.exc_value, Terminated):
            previous_hook(info)

    sys.unraisablehook = unraisable
    try:
        with sigterm_handler(stop):
            yield
    finally:
        sys.unraisablehook = previous_hook
    if received:
        raise Terminated(128 + received[0])


@contextlib.contextmanager
def sigterm_handler(handler) -> Iterator[None]:
    """Within it, SIGTERM goes to `handler` (a function or signal.SIG_DFL); the handler before is put back after.
    Left as it is outside the main thread (where Python cannot set one) and where SIGTERM is ignored (a parent's
    `trap '' TERM` stays in force)."""
    import signal
    import threading

    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or previous is signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:   # None: a handler set outside Python, which cannot be put back
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _temp_prefix(path: Path) -> str:
    """The prefix of a temporary file or folder written beside `path`: `.NAME.` (so a leftover tells what it was
    for), or `.tta.` for a name so long that the temporary one (30 bytes more at most) would pass the file
    system's limit on names."""
    room = _name_max(path.parent if path.parent.is_dir() else Path("."))
    return f".{path.name}." if len(os.fsencode(path.name)) + 30 <= room else ".tta."


def _name_max(folder: Path) -> int:
    """The longest file name, in bytes, that the file system of `folder` takes (255 where it does not say)."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on error removed (with the
    folders made for it). A failed write is an OSError naming `path` (see `_write_error`)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; expected the path of a file to write")
    made = _missing_top(path.parent)
    try:   # errors name the file asked for, not the hidden temporary one beside it
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp" + path.suffix, dir=path.parent)
    except OSError as e:
        _remove_made(path.parent, made)
        raise _cannot_write(path, e) from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        try:
            yield tmp
            if tmp.exists():
                os.chmod(tmp, _default_mode(folder=tmp.is_dir()))
            os.replace(tmp, path)
        except Exception as e:
            _raise_write_error(e, tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
        if not path.exists():
            _remove_made(path.parent, made)


@contextlib.contextmanager
def atomic_files(folder: str | os.PathLike, names) -> Iterator[dict[str, Path]]:
    """{name: temporary path beside folder/name}: when the block succeeds each is renamed onto folder/name, when it
    fails none is, so an error while they are written never leaves them half replaced (the renames
    themselves run one after another). Write each through its own atomic write
    (`atomic_write_text(tmp[name], ...)`): a failure then names the file it was writing."""
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(atomic_path(Path(folder) / name)) for name in names}


_TEMP_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")   # tempfile's 8 random characters


def leftover_temps(paths, *, shared: bool = True) -> list[Path]:
    """The temporary files that atomic writes of `paths` left beside them when a kill no clean-up survives
    (SIGKILL, the out-of-memory killer, a power cut) stopped them before their rename: files named exactly as
    atomic_path names them (`_temp_prefix`, 8 random characters, ".tmp" and the path's suffix), so no file named
    otherwise is ever among them. Names too long to repeat share the prefix `.tta.`: such a leftover may be any
    of them, and is among them only with `shared` (a caller that holds the whole folder)."""
    wanted: dict[Path, set[tuple[str, str]]] = {}   # folder -> (prefix, ".tmp" + suffix) of each path
    for path in map(Path, paths):
        prefix = _temp_prefix(path)
        if shared or prefix != ".tta.":
            wanted.setdefault(path.parent, set()).add((prefix, ".tmp" + path.suffix))
    found = []
    for folder, names in wanted.items():
        if not folder.is_dir():
            continue
        tails = {tail for _, tail in names}
        for entry in os.scandir(folder):
            for tail in tails:
                head = entry.name[:-len(tail)] if entry.name.endswith(tail) else ""
                if len(head) > 8 and set(head[-8:]) <= _TEMP_CHARACTERS and (head[:-8], tail) in names \
                        and entry.is_file(follow_symlinks=False):
                    found.append(folder / entry.name)
    return sorted(found)


def _cannot_write(path: Path, e: OSError) -> CheckpointError:
    """The error for a temporary file or folder that cannot be made beside `path` (named, not the temporary)."""
    blocker = next((a for a in path.parents if a.exists()), None)
    if blocker is not None and not blocker.is_dir():
        return CheckpointError(f"{path}: cannot write there ({blocker} is a file, not a folder)")
    return CheckpointError(f"{path}: cannot write there ({e.strerror or e})")


# what writers that drop the reason say when the file system is full: torch.save ("[enforce fail at
# inline_container.cc] unexpected pos ..." or "PytorchStreamWriter failed writing file ...: file write failed"),
# faiss.write_index ("... failed: write error in PATH"); libsndfile's are told by their type ("System error.")
_LOST_REASON = re.compile(r"unexpected pos|PytorchStreamWriter failed|file write failed|write error in ")


def _raise_write_error(e: Exception, tmp: Path, path: Path) -> NoReturn:
    """Raise `e` as `_write_error` reads it (a full disk named by `path`), or as it is."""
    error = _write_error(e, tmp, path)
    if error is None:
        raise e
    raise error from e


def _write_error(e: Exception, tmp: Path, path: Path) -> OSError | None:
    """`e`, raised while writing the temporary `tmp`, as an OSError about `path`, the file or folder asked for; None
    when it is no failure to write. A write that fails names no file ("[Errno 28] No space left on device") or the
    hidden temporary one, and some writers drop the reason: libsndfile says "System error.", torch.save "unexpected
    pos 142272 vs 142164", safetensors "I/O error: ... (os error 28)"; on a full file system it is the space."""
    import errno as errnos

    if isinstance(e, OSError):
        if e.errno is None:
            return None
        if e.filename is not None:   # about the temporary file or a file in the temporary folder
            inside = os.path.abspath(os.fsdecode(e.filename)).startswith(os.path.abspath(tmp))
        else:                        # a write's error names no file; another (a pipe's, a socket's) is left alone
            inside = e.errno in (errnos.ENOSPC, errnos.EDQUOT, errnos.EFBIG, errnos.EROFS, errnos.EIO)
        return OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) if inside else None
    if isinstance(e, (ValueError, TypeError, AttributeError, KeyError, IndexError, NameError)):
        return None   # tta's own errors (CheckpointError, AudioError, ...) and programming errors stay as they are
    code = re.search(r"\(os error (\d+)\)", str(e))
    if code:
        return OSError(int(code[1]), os.strerror(int(code[1])), str(path))
    if not (type(e).__module__ == "soundfile" or _LOST_REASON.search(str(e))):
        return None   # a computation in the block failed (a CLAP, FAISS, pickling): its own error, disk full or not
    try:
        st = os.statvfs(tmp.parent)
    except (OSError, AttributeError):
        return None
    if st.f_bavail * st.f_frsize < 1 << 20:
        return OSError(errnos.ENOSPC, os.strerror(errnos.ENOSPC), str(path))
    return None


def _missing_top(folder: Path) -> Path | None:
    """The top-most of `folder` and its parents that does not exist yet (None when `folder` exists)."""
    top = None
    for a in (folder, *folder.parents):
        if a.exists():
            break
        top = a
    return top


def _remove_made(folder: Path, top: Path | None) -> None:
    """Remove the empty folders from `folder` up to `top`, those a failed write made for its file."""
    if top is None:
        return
    for a in (folder, *folder.parents):
        try:
            a.rmdir()
        except OSError:
            return
        if a == top:
            return


def output_path(text: str) -> Path:
    """argparse `type=` of a flag naming something to write (`--out`, `-o`, `--out-dir`, ...): an empty value is
    refused, as Path("") is the current folder (`--out ""` from an unset shell variable wrote there)."""
    if not text:
        import argparse

        raise argparse.ArgumentTypeError("an empty path; expected the path to write (. for the current folder)")
    return Path(text)


def check_output_path(path: str | os.PathLike, flag: str, *, folder: bool = False) -> None:
    """Refuse, before any work, an output `path` (a file, or a folder with `folder`) that cannot be written:
    a folder where a file goes (or the reverse), a file where a parent folder goes, or an unwritable place."""
    path = Path(path)
    deepest = Path(".")
    for a in reversed(path.parents):   # from the root down, as far as the folders exist
        if len(os.fsencode(a.name)) > 255 or not a.is_dir():
            break
        deepest = a
    limit = _name_max(deepest)
    too_long = next((part for part in path.parts if len(os.fsencode(part)) > limit), None)
    if too_long is not None:   # before anything asks the file system about it (that fails with a traceback)
        raise CheckpointError(f"{path}: {flag} has a name of {len(os.fsencode(too_long))} bytes; the file system "
                              f"takes at most {limit}")
    if path.exists() and path.is_dir() != folder:
        raise CheckpointError(f"{path}: {flag} is {'a file' if folder else 'a folder'}; expected the path of a "
                              f"{'folder' if folder else 'file'} to write")
    if folder and path.is_dir():   # what is written goes inside it: its parent may be another user's folder
        if not os.access(path, os.W_OK | os.X_OK):
            raise CheckpointError(f"{path}: {flag} is a folder that is not writable")
        return
    existing = next((a for a in path.parents if a.exists()), None)
    if existing is not None and not existing.is_dir():
        raise CheckpointError(f"{path}: {flag} cannot be written there ({existing} is a file, not a folder)")
    if existing is not None and not os.access(existing, os.W_OK):
        raise CheckpointError(f"{path}: {flag} cannot be written there ({existing} is not writable)")
    if not folder and path.is_file() and not os.access(path, os.W_OK):
        raise CheckpointError(f"{path}: {flag} exists and is not writable")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` (a folder) as a whole."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path}: exists and is not a folder; choose another output path")
    made = _missing_top(path.parent)
    try:   # as atomic_path: the folder asked for is named, and the folders made for it go
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    except OSError as e:
        _remove_made(path.parent, made)
        raise _cannot_write(path, e) from None
    try:
        try:
            yield tmp
            os.chmod(tmp, _default_mode(folder=True))
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                if old.exists():
                    shutil.rmtree(old)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old)
            else:
                os.replace(tmp, path)
        except Exception as e:
            _raise_write_error(e, tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
        if not path.exists():
            _remove_made(path.parent, made)


# ------------------------------------------------------------------------------- component folders


def class_path(obj_or_cls: Any) -> str:
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return f"{cls.__module__}.{cls.__qualname__}"


def write_component_config(folder: str | os.PathLike, class_name: str, config: Any) -> Path:
    from tta.config import to_dict

    body = {"class": class_name, "format_version": FORMAT_VERSION, "config": to_dict(config)}
    return atomic_write_text(Path(folder) / CONFIG_NAME, json.dumps(body, indent=2) + "\n")


def save_safetensors(state: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write `state` as a safetensors file whose bytes depend only on its tensors and metadata.

    safetensors orders the header's `__metadata__` as a hash map does, which changes from process to process,
    so the same weights written twice could differ byte for byte (and a folder's fingerprint with them).
    Here the header is rewritten with the metadata's keys sorted: the same length, so no offset moves.
    """
    from safetensors.torch import save

    data = save(state, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n], object_pairs_hook=dict)
    if "__metadata__" in header:
        header = {"__metadata__": dict(sorted(header.pop("__metadata__").items())), **header}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) <= n:                      # safetensors pads its header with spaces to n
        data = data[:8] + text + b" " * (n - len(text)) + data[8 + n:]
    path = Path(path)
    path.write_bytes(data)
    return path


def save_component(folder: str | os.PathLike, model: Any, config: Any | None = None, *,
                   class_name: str | None = None, dtype=None) -> Path:
    """Write `model` (an nn.Module with a `.config` dataclass, or pass `config`) as a component folder.

    dtype: optionally store floating tensors in another dtype (e.g. torch.float16 for release weights).
    """
    config = config if config is not None else getattr(model, "config")
    class_name = class_name or class_path(model)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    state = _untie(state)
    with atomic_dir(folder) as tmp:
        save_safetensors(state, tmp / WEIGHTS_NAME, metadata={"format": "pt", "class": class_name})
        write_component_config(tmp, class_name, config)
    return Path(folder)


def read_component_config(folder: str | os.PathLike, expected_class: str | None = None) -> dict:
    """Parse `folder/config.json`; check the class when `expected_class` is given."""
    folder = Path(folder)
    cfg_path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: component folder not found")
    if not cfg_path.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG_NAME} (not a tta component folder)")
    body = read_json(cfg_path)
    if not isinstance(body, dict) or not {"class", "format_version", "config"} <= set(body):
        raise CheckpointError(f"{cfg_path}: expected keys class, format_version, config")
    if type(body["format_version"]) is not int or body["format_version"] != FORMAT_VERSION:   # true == 1 in Python
        raise CheckpointError(f"{cfg_path}: format_version {body['format_version']!r} is not supported "
                              f"(this tta reads {FORMAT_VERSION})")
    if not isinstance(body["class"], str):   # it is imported by name (import_class)
        raise CheckpointError(f"{cfg_path}: class is {body['class']!r}; expected a string naming a tta class")
    if not isinstance(body["config"], dict):
        raise CheckpointError(f"{cfg_path}: config: expected an object, got {type(body['config']).__name__}")
    if expected_class is not None and body["class"] != expected_class:
        raise CheckpointError(f"{folder}: holds a {body['class']}, expected a {expected_class}")
    return body


def read_json(path: str | os.PathLike, error: type[Exception] = CheckpointError) -> Any:
    """A JSON file's content (a component's config.json, pipeline.json, a foreign folder's configs); a file that is
    not UTF-8 JSON is an `error` naming it and the line."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"{path}: not a UTF-8 text file ({e.reason}); expected JSON") from None
    except json.JSONDecodeError as e:
        raise error(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file's bytes, remembered while its size and modification time stay the same (a file
    replaced at the same path is hashed again)."""
    st = os.stat(path)
    return _file_sha256(os.path.abspath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def complete_checkpoints(folder: Path) -> list[Path]:
    """The complete step_N checkpoints (with their train state) under `folder`, oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir()
             if p.is_dir() and re.fullmatch(r"step_\d+", p.name) and (p / TRAIN_STATE_NAME).is_file()]
    return sorted(found, key=step_of)


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.split("_")[1])


def unfinished_run(folder: Path) -> str | None:
    """Why a folder given as a component is a training run that has not finished (no final/: still training, or
    stopped), naming a checkpoint component that can stand in; None for anything else."""
    if (folder / "final").is_dir() or not (folder / "checkpoints").is_dir() or not (folder / CONFIG_NAME).is_file():
        return None
    ckpts = complete_checkpoints(folder / "checkpoints")
    parts = sorted(p for p in ckpts[-1].iterdir() if (p / CONFIG_NAME).is_file()
                   and "discriminator" not in p.name) if ckpts else []
    return "a training run that has not finished (no final/)" + (
        f"; pass a checkpoint's component, e.g. {parts[0]}" if parts else "")


def files_sha256(files, root: str | os.PathLike) -> str:
    """sha256 (first 16 hex digits) of files by their place under `root`: each file's path relative to it and its
    own sha256 (file_sha256), one line each, in the order given."""
    import hashlib

    listing = "".join(f"{Path(f).relative_to(root).as_posix()}\t{file_sha256(f)}\n" for f in files)
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


def weights_hash(state: dict, *, float16: bool = False) -> str:
    """Short content hash of a state dict (names, sizes, dtypes, bytes): the identity of a model's weights.
    `float16` rounds floating tensors to float16 first, so a model and its float16 export hash alike."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for k, v in sorted(state.items()):
        t = v.detach().cpu().contiguous().reshape(-1)
        if float16 and t.is_floating_point():
            t = t.half()
        h.update(f"{k}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def load_state_dict(path: str | os.PathLike) -> dict:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        state = load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from None
    check_finite(state, str(path))
    return state


def check_finite(state: Any, where: str, *, prefix: str = "") -> None:
    """Refuse weights holding NaN or inf: a CheckpointError naming `where` (the file), how many tensors are bad
    and the first one's key (`prefix` + its key in `state`, as the file spells it). Such weights load without
    a word and make NaN audio, found only at the end of a generation with no word of the file or the part.
    Anything in `state` that is no floating-point tensor is left alone (and a `state` that is no dict, for the
    caller's own error). The test is one sum per tensor (a NaN or inf makes it NaN or inf; a finite sum that
    overflows is told apart by the exact test). bench/check_finite.py's two records (bench/results.jsonl; 302 M
    float32 parameters, one thread of a 2-core machine under load average 5.5 and 2.4): the check alone took 0.16
    and 0.12 s, it added 0.15 and 0.09 s to a 0.29 and 0.19 s safetensors load, and a 2.3 and 1.5 s torch load
    varied more than that (each with the check was the faster)."""
    import torch

    if not isinstance(state, dict):
        return
    floats = [(k, v) for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    bad = [k for k, v in floats if not _finite(v)]
    if bad:
        raise CheckpointError(f"{where}: {len(bad)} of its {len(floats)} weight tensors hold NaN or inf values "
                              f"(first: {prefix}{bad[0]}); the weights are damaged (a training run that diverged, "
                              "a half-precision copy that overflowed, a broken file) and would make NaN audio")


def _finite(value) -> bool:
    """Whether a floating-point tensor holds no NaN or inf (exact; one sum when it does not)."""
    import torch

    if value.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        value = value.float()        # float8 storage has no sum on the CPU; its values all fit float32
    return bool(torch.isfinite(value.sum())) or bool(torch.isfinite(value).all())


def find_component(path: str | os.PathLike, pipeline_part: str) -> Path | None:
    """The component folder that `path` names: itself, a training run's final/, or a pipeline folder's
    `pipeline_part`/ (e.g. "vae"); None when none of them holds a config.json."""
    path = Path(path)
    for folder in (path / "final", path / pipeline_part, path):
        if (folder / CONFIG_NAME).is_file():
            return folder
    return None


def load_component(folder: str | os.PathLike, cls: type | None = None, *, device="cpu", strict: bool = True):
    """Load a component folder into a fresh model.

    With `cls` the folder must hold exactly that class; without it the class named in config.json is
    imported (it must live in one of tta's own packages). The model class must define `config_class`
    (the config dataclass) and be constructible as `cls(config)`. Returns the model in eval mode.
    """
    from tta.config import ConfigError, from_dict

    body = read_component_config(folder, class_path(cls) if cls is not None else None)
    if cls is None:
        cls = import_class(body["class"])
    try:
        config = from_dict(cls.config_class, body["config"])
    except ConfigError as e:
        raise CheckpointError(f"{Path(folder) / CONFIG_NAME}: {e}") from None
    with keep_global_rng():   # (the initial weights drawn are replaced by the stored ones)
        model = cls(config)
    state = load_state_dict(Path(folder) / WEIGHTS_NAME)
    load_into(model, state, where=str(folder), strict=strict)
    return model.to(device).eval()


def weights_mismatch(*, missing=(), unexpected=(), shapes=(),
                     words: tuple[str, str, str] = ("missing", "unexpected", "with other shapes"),
                     shapes_listed: int = 3, shapes_first: bool = False) -> str:
    """What a file's weights and the model they are loaded into do not share, for an error naming the file: the
    "; "-joined "N <words> (first: ...)" of each list that is not empty, in the order missing, unexpected, shapes
    (shapes first with `shapes_first`), listing at most 5 keys (", ") or `shapes_listed` shapes ("; "; each
    "key: (3, 4) vs (3, 5)" or as the caller writes it). `words`: what each count says, "{s}" where its noun
    takes the plural ("model weight{s} missing": 1 model weight missing, 2 model weights missing). "" when all
    three are empty."""
    parts = [(missing, words[0], 5, ", "), (unexpected, words[1], 5, ", "), (shapes, words[2], shapes_listed, "; ")]
    if shapes_first:
        parts.insert(0, parts.pop())
    return "; ".join(f"{len(items)} {what.format(s='' if len(items) == 1 else 's')} "
                     f"(first: {sep.join(list(items)[:listed])})" for items, what, listed, sep in parts if items)


def load_into(model: Any, state: dict, *, where: str, strict: bool = True) -> None:
    """load_state_dict with an error that lists the first missing/unexpected/mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if shapes or (strict and (missing or unexpected)):
        raise CheckpointError(f"{where}: weights do not match {type(model).__name__}: "
                              + weights_mismatch(missing=missing, unexpected=unexpected, shapes=shapes))
    own_dtypes = {k: v.dtype for k, v in own.items()}
    state = {k: (v.to(own_dtypes[k]) if k in own_dtypes and v.is_floating_point() else v) for k, v in state.items()}
    model.load_state_dict(state, strict=strict)


TTA_PACKAGES = ("tta", "vae", "vocoder", "eval")


def import_class(name: str) -> type:
    """Import a class by dotted path, restricted to tta's own packages (config.json is data, not code)."""
    module_name, _, attr = name.rpartition(".")
    if not module_name or module_name.split(".")[0] not in TTA_PACKAGES:
        raise CheckpointError(f"class {name!r} is not a tta class (expected one of the packages "
                              f"{', '.join(TTA_PACKAGES)})")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        raise CheckpointError(f"class {name!r} does not exist in this version of tta") from None


def _untie(state: dict) -> dict:
    """safetensors refuses shared storage: clone tensors that alias another tensor."""
    seen: dict = {}
    out = {}
    for k, v in state.items():
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)) if v.numel() else None
        if ptr is not None and ptr in seen:
            v = v.clone()
        elif ptr is not None:
            seen[ptr] = k
        out[k] = v
    return out


# ------------------------------------------------------------------------- global random generators


def rng_state(*, cuda: bool = True) -> dict:
    """Every global random stream (torch's CPU and, with `cuda`, CUDA generators, numpy's, Python's);
    `cuda=False` leaves CUDA alone where only CPU streams can move (reading the CUDA state starts CUDA on
    every GPU)."""
    import random

    import numpy as np
    import torch

    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_gauss": random.getstate()[2],
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])}}
    if cuda and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_gauss"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_LOADS_DRAW = contextvars.ContextVar("tta_loads_draw", default=False)


@contextlib.contextmanager
def keep_global_rng() -> Iterator[None]:
    """Within it a model may be built, drawing initial weights that stored ones then replace; after it torch's
    CPU generator, numpy's and Python's are as they were, so a script's random numbers do not depend on
    whether it loaded a model. Every loader of stored weights builds its model inside one. CUDA's generators
    are neither read nor put back: models are built on the CPU, and reading them would start CUDA on every GPU
    of the machine. Inside `loads_draw()` it does nothing."""
    if _LOADS_DRAW.get():
        yield
        return
    streams = rng_state(cuda=False)
    try:
        yield
    finally:
        set_rng_state(streams)


@contextlib.contextmanager
def loads_draw() -> Iterator[None]:
    """Within it, loading a model draws its discarded initial weights from the global random generators, as
    every load did before loaders kept them (`keep_global_rng`). A training run loads its frozen parts this
    way (an LDM run's VAE, CLAP and vocoder, a vocoder's init_from) between seeding and building what it
    trains: that model's initial weights and the run's noise depend on those draws, and so does every recorded
    run's reproduction (the model card's from its recorded seeds)."""
    token = _LOADS_DRAW.set(True)
    try:
        yield
    finally:
        _LOADS_DRAW.reset(token)


def set_library_bars(library_logging: Any, on: bool) -> None:
    """transformers' or diffusers' own progress bars ("Loading weights", "Writing model shards", "Loading pipeline
    components") on or off (`library_logging`: its `utils.logging` module), and nothing else. transformers'
    disable_progress_bar() and enable_progress_bar() also switch huggingface_hub's bars for the whole process and
    drop its per-group settings: a caller who had turned the hub's bars off (all, or a group such as
    "huggingface_hub.http_get") found them on after a tta command or a CLAP's text tower had loaded, and with
    HF_HUB_DISABLE_PROGRESS_BARS=0 each switch warned "Cannot disable progress bars". Both libraries draw their
    bars only while this one flag of theirs (what is_progress_bar_enabled() reads) is on; tta loads from local
    folders, so the hub draws none. A release without that flag (a private name, which setting would create
    and nothing read) is switched by its enable_progress_bar()/disable_progress_bar(), and the hub's bars are put
    back as they were (its per-group states, the switch's warning under HF_HUB_DISABLE_PROGRESS_BARS=0
    silenced)."""
    if hasattr(library_logging, "_tqdm_active"):
        library_logging._tqdm_active = on
        return
    import importlib
    import warnings

    try:
        states = importlib.import_module("huggingface_hub.utils.tqdm").progress_bar_states
    except (ImportError, AttributeError):   # a hub without per-group states: nothing of it to put back
        states = None
    kept = None if states is None else dict(states)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (library_logging.enable_progress_bar if on else library_logging.disable_progress_bar)()
    if kept is not None:
        states.clear()
        states.update(kept)


# ------------------------------------------------------------------------------ train state / foreign


def save_train_state(path: str | os.PathLike, state: dict) -> Path:
    """torch.save a resume state (tensors, numbers, strings, lists, dicts only) atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(state, str(tmp))
    return Path(path)


def load_train_state(path: str | os.PathLike) -> dict:
    return load_torch_file(path)


_NUMPY_DTYPES = ("Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "Float16",
                 "Float32", "Float64", "LongDouble", "Complex64", "Complex128", "Byte", "UByte", "Short", "UShort",
                 "Int", "UInt", "Long", "ULong", "LongLong", "ULongLong")


def _numpy_scalar_globals() -> list:
    """What a pickled NumPy number needs (its reconstructor and dtype classes), allowed in a weights-only load.

    Training code often leaves NumPy numbers in a checkpoint, e.g. LAION-CLAP's cosine schedule writes
    np.float64 learning rates into the optimizer state its released `.pt` files carry. These rebuild plain
    numbers; object arrays and every other class stay refused."""
    import numpy as np

    multiarray = getattr(getattr(np, "_core", None), "multiarray", None) or np.core.multiarray
    found = [(multiarray.scalar, "numpy.core.multiarray.scalar"), (multiarray.scalar, "numpy._core.multiarray.scalar"),
             np.dtype]
    dtypes = getattr(np, "dtypes", None)
    found += [getattr(dtypes, f"{n}DType") for n in _NUMPY_DTYPES if hasattr(dtypes, f"{n}DType")]
    return found


def load_torch_file(path: str | os.PathLike) -> Any:
    """Read a .ckpt/.pt/.pth/.bin with weights_only=True (no arbitrary unpickling; NumPy numbers are allowed),
    with a clear error naming what the file pickles that a weights-only load refuses."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes)")
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()), warnings.catch_warnings():
            # (a plain pickle's protocol is warned about before the load fails and names the file anyway)
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        other = _other_content(path)
        if other is not None:
            if other == "safetensors":   # a safetensors file under a torch file's name: its tensors
                return load_state_dict(path)
            raise CheckpointError(f"{path}: {other}") from None
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
        reason = text.splitlines()[0] if text else type(e).__name__
        # torch's own advice (re-run with weights_only=False, "will likely succeed") is wrong for a file that is
        # no pickle at all and unsafe for one that is: what its unpickler found is the reason
        found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        if found:
            reason = found[1].strip()
            unsafe = re.match(r"Unsupported global: GLOBAL (\S+)", reason)
            reason = (f"it pickles Python objects a weights-only load does not rebuild: {unsafe[1]}" if unsafe else
                      f"not a torch checkpoint: its bytes are no pickle of tensors ({reason})")
        try:
            blocked = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:
            blocked = []
        if blocked:
            reason = (f"it pickles Python objects a weights-only load does not rebuild: {', '.join(blocked[:5])}"
                      f"{' ...' if len(blocked) > 5 else ''}; re-save the tensors, e.g. torch.save(state_dict)")
        raise CheckpointError(f"{path}: cannot be read as a weights-only torch checkpoint ({reason[:300]})") from None


TORCH_FILE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")


def _other_content(path: Path) -> str | None:
    """What a file that torch.load could not read holds instead, told from its bytes: "safetensors", or why it
    is no checkpoint (a Git LFS pointer, a zip archive of other files or one cut short, a web page); None when
    it looks like neither."""
    import zipfile

    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"version https://git-lfs.github.com/spec/"):
        return ("a Git LFS pointer file, not the weights (a clone without git-lfs): fetch the file itself "
                "(git lfs pull)")
    size = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
    if head[8:9] == b"{" and 8 + size <= path.stat().st_size:
        return "safetensors"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return "a zip archive cut short or damaged (an interrupted download or copy?): fetch it again"
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return None                                      # torch's own layout: torch's reason stands
        inner = [n for n in names if n.lower().endswith(TORCH_FILE_SUFFIXES)]
        return (f"a zip archive of {len(names)} other file(s) ({', '.join(names[:3])}), not a torch checkpoint"
                + (f": unzip it and pass {inner[0]}" if inner else ""))
    if head.lstrip()[:1] == b"<":
        return "a web page or XML file, not weights (a download that saved a login or error page?)"
    return None


# ------------------------------------------------------------------ foreign folders (diffusers, transformers)

DIFFUSERS_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
TRANSFORMERS_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")


def read_foreign_folder(folder: str | os.PathLike, weight_names: tuple[str, ...], *,
                        what: str) -> tuple[dict, dict, Path]:
    """(config.json as a dict, state dict, weights path) of a diffusers/transformers model folder.

    The first of `weight_names` present is read: safetensors directly, `.bin` with weights_only=True.
    Errors name the folder and `what` it was expected to be.
    """
    folder = Path(folder)
    cfg_path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: folder not found (expected {what})")
    if not cfg_path.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG_NAME} (not {what})")
    config = read_json(cfg_path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object, got {type(config).__name__} (not {what})")
    weights = next((folder / n for n in weight_names if (folder / n).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{folder}: none of {', '.join(weight_names)} found (expected {what})")
    if weights.suffix == ".safetensors":
        state = load_state_dict(weights)        # (checked for NaN / inf there)
    else:
        state = load_torch_file(weights)
        check_finite(state, str(weights))
    if config.get("quantization_config") is not None:
        state = dequantize_int8(state, config["quantization_config"], where=str(cfg_path))
    return config, state, weights


# ----------------------------------------------------------------------- 8-bit storage (quanto layout)
#
# `tta export pipeline --dtype int8` stores every nn.Linear weight of a diffusers UNet as int8 with one
# float32 scale per output row (symmetric: scale = max|row| / 127, value = round(w / scale)), in the layout
# diffusers' optimum-quanto backend writes for weight-only int8 (`QuantoConfig(weights_dtype="int8")`):
#   <module>.weight._data   int8 (out, in)        <module>.weight._scale  float32 (out, 1)
#   <module>.input_scale / <module>.output_scale  float32 scalars 1.0 (no activation quantization)
# and `"quantization_config": {"quant_method": "quanto", "weights_dtype": "int8", ...}` in config.json. So
# diffusers with optimum-quanto installed opens the folder as a quantized model, and tta reads it without
# optimum-quanto: `read_foreign_folder` widens the weights to float32 on load.

QUANTO_INT8 = {"quant_method": "quanto", "weights_dtype": "int8", "modules_to_not_convert": None}
_DATA, _SCALE = ".weight._data", ".weight._scale"


def quantize_int8(state: dict, modules: set[str] | list[str]) -> dict:
    """`state` with the `.weight` of each module in `modules` (names as in the state dict, e.g. the
    nn.Linear layers of a UNet) replaced by its int8 storage in the quanto layout above."""
    import torch

    out = dict(state)
    for name in sorted(modules):
        w = out.pop(f"{name}.weight").float()
        scale = w.abs().amax(dim=tuple(range(1, w.ndim)), keepdim=True).clamp_min(1e-12) / 127.0
        out[name + _DATA] = torch.clamp(torch.round(w / scale), -128, 127).to(torch.int8)
        out[name + _SCALE] = scale.to(torch.float32)
        out[f"{name}.input_scale"] = torch.ones((), dtype=torch.float32)
        out[f"{name}.output_scale"] = torch.ones((), dtype=torch.float32)
    return out


def dequantize_int8(state: dict, qconfig: Any, *, where: str) -> dict:
    """The float32 state dict of a folder stored with `quantize_int8` (quanto weight-only int8); any other
    quantization is refused with an error naming `where` (the config.json)."""
    import torch

    if not isinstance(qconfig, dict) or qconfig.get("quant_method") != "quanto" \
            or qconfig.get("weights_dtype") != "int8":
        raise CheckpointError(f"{where}: quantization_config {qconfig!r} is not supported; tta reads "
                              "weight-only int8 in optimum-quanto's layout (quant_method 'quanto', "
                              "weights_dtype 'int8', as `tta export pipeline --dtype int8` writes)")
    out = dict(state)
    for key in [k for k in state if k.endswith(_DATA)]:
        name = key[:-len(_DATA)]
        data, scale = out.pop(key), out.pop(name + _SCALE, None)
        if data.dtype != torch.int8 or scale is None:
            raise CheckpointError(f"{where}: {key} is {data.dtype} with {'a' if scale is not None else 'no'} "
                                  f"{name + _SCALE}; expected int8 data with a float scale per output row")
        out[f"{name}.weight"] = data.float() * scale.float()
        out.pop(f"{name}.input_scale", None)
        out.pop(f"{name}.output_scale", None)
    return out
