"""WebDataset tar shards as a manifest: members `KEY.{wav,flac,ogg,opus,mp3}` + `KEY.json` or `KEY.txt`.

The audio is extracted (the manifest needs files to point at) into a staging folder beside `audio_dir`
and moved into place only when at least one row imports, so a failed import leaves nothing behind. A re-run
of an import extracts into the folder an earlier run filled: its files are replaced with this run's, and a
folder that holds anything this run does not write (a user's files, another import's audio) is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import replace
from pathlib import Path, PurePosixPath

from tta.data.importers import (
    LICENCE_KEYS,
    Collector,
    Entry,
    ImportOptions,
    ImportResult,
    SourceError,
    clean_captions,
    item_captions,
    own_text,
    row_split,
)
from tta.data.manifest import absolute_path

AUDIO_MEMBERS = ("wav", "flac", "ogg", "opus", "mp3")  # preference order when a key has several
# the shards of a folder; its other files (`shard-000000.tar.md5`, an index) are no shards
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def import_webdataset(shards: str | os.PathLike, *, audio_dir: str | os.PathLike,
                      options: ImportOptions | None = None) -> ImportResult:
    """WebDataset tar shards (a .tar file or a folder of them: its files named with SHARD_SUFFIXES): members
    `KEY.{wav,flac,ogg,opus,mp3}` with `KEY.json` (captions / caption / text / prompt, optional split) or
    `KEY.txt`. Audio is extracted under `audio_dir`, created only when at least one row imports; an existing
    one may hold only files this import writes (an earlier run's), which are replaced."""
    shards, audio_dir, options = Path(shards), Path(audio_dir), options or ImportOptions()
    tars = sorted(p for p in shards.iterdir() if p.name.lower().endswith(SHARD_SUFFIXES)) if shards.is_dir() \
        else [shards]
    if not tars or not tars[0].is_file():
        raise SourceError(f"{shards}: no WebDataset shards found (expected {', '.join(SHARD_SUFFIXES)} files)")
    if audio_dir.exists() and not audio_dir.is_dir():
        raise SourceError(f"{audio_dir}: audio folder for extracted files is a file")
    audio_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{audio_dir.name}.", suffix=".tmp", dir=audio_dir.parent))
    try:
        c = Collector(options)
        for tar in tars:
            _read_shard(tar, tmp, c)
        result = c.result(f"import {shards.name}")
        staged, final = str(absolute_path(tmp)), str(absolute_path(audio_dir))   # as the rows' paths are written
        # Messages name the member inside the shard, not the staging folder that is about to go.
        result.errors = [m.replace(staged + os.sep, "").replace(str(tmp) + os.sep, "") for m in result.errors]
        if result.rows:
            keep = {r.path for r in result.rows}
            for f in [f for f in tmp.rglob("*") if f.is_file() and str(absolute_path(f)) not in keep]:
                f.unlink()  # audio of skipped items is not left behind
            written = {f.relative_to(tmp) for f in tmp.rglob("*") if f.is_file()}
            if audio_dir.exists():
                _replace_earlier_run(audio_dir, tmp, written)
            else:
                from tta.checkpoint import _default_mode

                os.chmod(tmp, _default_mode(folder=True))   # mkdtemp made it private; a folder made here is not
                os.replace(tmp, audio_dir)
            result.rows = [replace(r, path=final + r.path[len(staged):]) for r in result.rows]
        return result
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _replace_earlier_run(audio_dir: Path, staged: Path, written: set[Path]) -> None:
    """Move the `written` files (paths relative to `staged`) into the existing `audio_dir`, over an earlier
    run's copies; a SourceError, before anything moves, when `audio_dir` holds anything else: a file or link
    this import does not write, a folder no written file goes in, or a linked folder (files would land in its
    target)."""
    parents = {d for f in written for d in f.parents}
    for top, dirs, files in os.walk(audio_dir):
        for name in sorted(dirs) + sorted(files):
            path = Path(top, name)
            rel = path.relative_to(audio_dir)
            real_dir = path.is_dir() and not path.is_symlink()
            if (rel in parents) if real_dir else (rel in written and not path.is_dir()):
                continue
            raise SourceError(f"{audio_dir}: the audio folder holds {rel.as_posix()}{'/' if path.is_dir() else ''}, "
                              "which this import does not extract (it writes over an earlier run's files only); "
                              "move it away, or extract into another folder")
    for rel in sorted(written):
        (audio_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged / rel, audio_dir / rel)


def _one_line(e: Exception) -> str:
    """An exception's message on one line (tarfile lists each compression it tried on a line of its own)."""
    return "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__


def _read_shard(tar_path: Path, out: Path, c: Collector) -> None:
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        tf = tarfile.open(tar_path)  # noqa: SIM115 -- closed by the `with tf` below
    except (tarfile.TarError, OSError) as e:
        c.error(f"{tar_path}: not a readable tar shard ({_one_line(e)}); skipped")
        return
    with tf:
        members = []
        try:   # member by member: a shard cut short keeps the samples before the cut
            while (m := tf.next()) is not None:
                members.append(m)
        except (tarfile.TarError, OSError, EOFError) as e:
            if not members:
                c.error(f"{tar_path}: damaged tar shard ({_one_line(e)}); skipped")
                return
            c.error(f"{tar_path}: damaged tar shard after {len(members)} members ({_one_line(e)}); the samples "
                    "before the damage are imported (a member cut short fails to read and is skipped)")
        for m in members:
            if not m.isfile():
                continue
            pp = PurePosixPath(m.name)
            if pp.is_absolute() or ".." in pp.parts:
                c.error(f"{tar_path}: member {m.name!r} has an unsafe path; skipped")
                continue
            stem, _, ext = pp.name.partition(".")  # WebDataset: the key ends at the first dot of the name
            groups.setdefault(str(pp.parent / stem), {})[ext.lower()] = m
        for key, parts in groups.items():
            where = f"{tar_path}:{key}"
            row_id = key.removeprefix("./")
            if row_id in c.by_id:
                c.error(f"{where}: duplicate id {row_id!r} (also in an earlier shard); skipped")
                continue
            audio_ext = next((e for e in AUDIO_MEMBERS if e in parts), None)
            if audio_ext is None:
                c.error(f"{where}: no audio member (.wav/.flac/.ogg/.opus/.mp3); skipped")
                continue
            caps, split, meta = [], None, {}
            member = None   # the one being read, named by a message: a key's json, txt and audio go together
            try:
                if "json" in parts:
                    member = parts["json"]
                    meta = json.loads(tf.extractfile(member).read().decode("utf-8-sig"))   # a BOM is no JSON
                    if not isinstance(meta, dict):
                        raise ValueError(f"expected a JSON object, not {type(meta).__name__}")
                    caps = item_captions(meta)
                    split = row_split(meta.get("split"), where)
                if not caps and "txt" in parts:
                    member = parts["txt"]
                    caps = clean_captions(tf.extractfile(member).read().decode("utf-8-sig").splitlines())
                member = parts[audio_ext]
                dest = out / f"{key}.{audio_ext}"
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tf.extractfile(member).read())
            except SourceError as e:      # a split value that names no split
                c.error(str(e))
                continue
            except json.JSONDecodeError as e:
                c.error(f"{where}: member {member.name} is not valid JSON ({e.msg} at line {e.lineno} column "
                        f"{e.colno}); skipped")
                continue
            except UnicodeDecodeError as e:
                c.error(f"{where}: member {member.name} is not UTF-8 text ({e.reason} at byte {e.start}); skipped")
                continue
            except (ValueError, tarfile.TarError, OSError, EOFError) as e:
                c.error(f"{where}: unreadable member {member.name} ({e}); skipped")
                continue
            c.add(Entry(row_id, dest, where, caps, split=split, source=own_text(meta, ("source",)),
                        licence=own_text(meta, LICENCE_KEYS)))
