"""Importers: turn the corpus layouts people have into manifest rows.

Kinds: a folder of audio with captions from a CSV or sidecar `.txt` files; an AudioCaps CSV; an AudioLDM
dataset JSON; a Tango JSONL; WebDataset tar shards (in `tta.data.webdataset`). Each returns an `ImportResult` (rows + one message per
bad item: missing file, unreadable audio, no caption, duplicate id) and keeps going past bad items. Every
file is probed with `tta.audio.audio_info` for its length and sample rate. A row keeps the split its source
names (a `split` column/field, or a `val`/`test` token in the file name); otherwise (a `train` token in the name
included: a training set of which a share is held out) a deterministic hash of its id puts `valid_fraction` of
the rows into "valid". Several source entries for one audio file
(AudioCaps' five captions per clip) become one row with several captions.
`Entry` + `Collector` are the shared machinery: an importer adds entries, the collector merges, checks
and probes them and builds the rows.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from tta.audio import AudioError, audio_info, is_audio_entry
from tta.checkpoint import file_sha256
from tta.config import check_numbers, counted, option_name, shortened
from tta.data.manifest import SPLITS, ManifestRow, absolute_path

log = logging.getLogger(__name__)

KINDS = ("folder", "audiocaps", "audioldm", "tango", "webdataset")
_SPLIT_NAMES = {"train": "train", "training": "train", "development": "train",   # Clotho's training split
                "val": "valid", "valid": "valid", "validation": "valid", "dev": "valid",
                "test": "test", "eval": "test", "evaluation": "test"}


class SourceError(ValueError):
    """The source as a whole cannot be imported (not found, wrong format); the message names it."""


ID_PREFIX_MAX = 64   # characters: an id with its prefix names files (generated audio, an experiment's copies)
ID_PREFIX_RULE = (f"an id prefix is at most {ID_PREFIX_MAX} characters: names joined by '/' (it may end with one), "
                  "each of printable characters other than '\\', not '.' or '..' and not starting or ending with a "
                  "space; a character a file name cannot hold (':') is escaped in the names of the files tta writes "
                  "for an id ('audioset:x' -> 'audioset%3Ax')")


def id_prefix_problem(prefix: str) -> str | None:
    """Why `prefix` cannot go before every row's id (ImportOptions.id_prefix), or None ("" is no prefix). The
    ids need not be file names (tta.data.prompts.id_file_name escapes what a name cannot hold), but a part that
    is empty, '.' or '..', a control character or a backslash is a path typed by mistake."""
    if not prefix:
        return None
    if len(prefix) > ID_PREFIX_MAX:
        return f"is {len(prefix)} characters long"
    parts = prefix.split("/")
    for part in parts[:-1] if prefix.endswith("/") else parts:
        if part in ("", ".", "..") or part != part.strip():
            return f"has a part {part!r} that is empty, '.', '..', or starts or ends with a space"
        bad = next((ch for ch in part if ch == "\\" or not ch.isprintable()), None)
        if bad is not None:
            return f"has a part {part!r} that holds {bad!r} (U+{ord(bad):04X})"
    return None


@dataclass(frozen=True)
class ImportOptions:
    split: str | None = None        # force every row into this split
    valid_fraction: float = 0.0     # held-out share (hash of id) for rows whose source names no split
    source: str = ""                # written to each row's `source`
    licence: str = ""               # written to each row's `licence`
    id_prefix: str = ""             # put before each row's id (two corpora with a `1.wav` each, trained together)
    progress: bool = True
    flags: bool = False             # warnings name an option as `tta data import`'s flag typed, not as the field

    def __post_init__(self) -> None:
        check_numbers(self)
        check_import_options(self.split, self.valid_fraction, self.id_prefix, flags=self.flags)


def check_import_options(split: str | None, valid_fraction: float, id_prefix: str, *,
                         flags: bool = False) -> None:
    """ImportOptions' checks of these fields: a ValueError naming the bad one as the field (`id_prefix='../'`)
    or, with `flags`, as `tta data import`'s option (`--id-prefix '../'`): the field's name was no word a user of
    the command typed."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"{option_name('split', flags, repr(split))}, expected one of {SPLITS}")
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"{option_name('valid_fraction', flags, str(valid_fraction))}, expected a number in [0, 1)")
    problem = id_prefix_problem(id_prefix)
    if problem:
        shown = option_name("id_prefix", flags, repr(shortened(id_prefix, 40)))
        raise ValueError(f"{shown} {problem}; {ID_PREFIX_RULE}")


@dataclass
class ImportResult:
    rows: list[ManifestRow] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class Entry:
    """One audio file as the source describes it, before probing."""

    id: str
    path: Path
    where: str                                   # "file:line" of its (first) source entry, for messages
    captions: list[str] = field(default_factory=list)
    split: str | None = None
    labels: tuple[str, ...] = ()
    category: str | None = None
    group: str | None = None      # entries of one recording (e.g. one YouTube video): held out together
    source: str | None = None     # the entry's own source / licence (a CSV column, a JSON field): before the
    licence: str | None = None    # ImportOptions' ones, which fill the rows that name none


# ------------------------------------------------------------------------------------------- shared


def split_from_name(name: str) -> str | None:
    """The split a source names (`val`, `validation`, `Train`, ...), or None."""
    return _SPLIT_NAMES.get(name.strip().lower()) if name else None


def row_split(value: str | None, where: str) -> str | None:
    """The split a row's split field names; None when the field is empty; SourceError for a value that names
    no split (a "holdout" or "testing" row must not silently become training data)."""
    if value is None or not str(value).strip():
        return None
    split = split_from_name(str(value))
    if split is None:
        raise SourceError(f"{where}: split {value!r} is not one of {', '.join(sorted(set(_SPLIT_NAMES)))}; skipped")
    return split


def csv_records(reader, path: Path):
    """The rows of a strict csv.DictReader; a row csv cannot parse (a quote left open swallows every line after
    it) ends the import with a SourceError naming its line, since no later row can be trusted."""
    last = 1
    try:
        for rec in reader:
            yield rec
            last = reader.line_num
    except csv.Error as e:
        from tta.data.prompts import csv_error

        raise SourceError(csv_error(path, last, e)) from None


def csv_row_problem(raw: dict, columns: int, where: str) -> str | None:
    """A malformed captions-CSV row as a bad item (tta.data.prompts.csv_row_problem), or None."""
    from tta.data.prompts import csv_row_problem as problem

    found = problem(raw, columns, where, "caption")
    return None if found is None else found + "; skipped"


def _split_from_filename(path: Path) -> str | None:
    """`audiocaps_train_label.json` -> train; a name with no or several split tokens -> None."""
    found = {_SPLIT_NAMES[t] for t in re.split(r"[^a-z]+", path.stem.lower()) if t in _SPLIT_NAMES}
    return found.pop() if len(found) == 1 else None


def held_out(row_id: str, fraction: float) -> bool:
    """Deterministic split by hash of the id: the same id lands in the same split on every machine."""
    h = int.from_bytes(hashlib.sha1(row_id.encode("utf-8")).digest()[:8], "big")
    return h / 2**64 < fraction


LICENCE_KEYS = ("licence", "license")   # a source entry's own licence, under either spelling


def own_text(item: dict, keys: tuple[str, ...]) -> str | None:
    """The text of the first of `keys` that an entry (a CSV row, a JSON object) fills, on one line, or None:
    a row's own licence or source."""
    for key in keys:
        value = item.get(key)
        if isinstance(value, str) and value.strip():
            return " ".join(value.split())
    return None


def clean_captions(values) -> list[str]:
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, (list, tuple)):
        return []
    return [" ".join(v.split()) for v in values if isinstance(v, str) and v.strip()]


# The names a caption's field (a JSON key, a CSV column) has in the formats, in the order they are tried: Tango's
# and WebDataset's `captions`, AudioLDM's and Clotho's `caption`, LAION-Audio-630K's `text`, and a prompts
# file's `prompt` (tta.data.prompts.TEXT_FIELDS: a prompts CSV or JSONL imports as captions). Not `description`
# (WavCaps' raw Freesound text beside its caption) or `labels` (AudioSet's classes).
CAPTION_FIELDS = ("captions", "caption", "text", "prompt")


def item_captions(item: dict) -> list[str]:
    """The captions of the first of CAPTION_FIELDS that a JSON object fills ({"captions": null, "caption": ...})."""
    return next((caps for caps in (clean_captions(item.get(k)) for k in CAPTION_FIELDS) if caps), [])


def caption_columns(fields: list[str]) -> list[list[str]]:
    """A captions CSV's caption columns (lower-case names), in groups tried in turn for each row: the columns
    named `caption`, `captions` or `caption` and a suffix (Clotho's caption_1 ... caption_5; not an id column
    such as Song Describer's caption_id), then `text`, then `prompt` (CAPTION_FIELDS)."""
    groups = [[h for h in fields if h.startswith("caption") and not re.search(r"(^|[^a-z])ids?$", h[7:])]]
    groups += [[h] for h in CAPTION_FIELDS if h in fields and not h.startswith("caption")]
    return [g for g in groups if g]


class Collector:
    """Gathers entries (merging several captions of one file), then probes and builds rows."""

    def __init__(self, options: ImportOptions, default_split: str | None = None):
        self.options = options
        self.default_split = default_split
        self.by_path: dict[Path, Entry] = {}
        self.by_id: dict[str, Entry] = {}
        self.errors: list[str] = []

    def add(self, entry: Entry) -> None:
        key = Path(os.path.realpath(entry.path))   # resolve() raised on a link loop, stopping the whole import
        old = self.by_path.get(key)
        if old is not None and old.id != entry.id:   # two different clips resolved to one file
            self.errors.append(f"{entry.where}: {entry.id!r} resolves to {entry.path}, the file of {old.id!r} "
                               f"({old.where}); skipped (name the audio of each clip apart)")
            return
        if old is not None:  # the same audio again: another caption for it
            old.captions += [c for c in entry.captions if c not in old.captions]
            return
        clash = self.by_id.get(entry.id)
        if clash is not None:
            self.errors.append(f"{entry.where}: duplicate id {entry.id!r} ({entry.path} and {clash.path}); "
                               "skipped")
            return
        self.by_path[key] = entry
        self.by_id[entry.id] = entry

    def error(self, message: str) -> None:
        self.errors.append(message)

    def result(self, desc: str) -> ImportResult:
        out = ImportResult(errors=self.errors)
        opts = self.options
        hashed = {"train": 0, "valid": 0}    # rows whose split the valid_fraction hash chose
        by_bytes: dict[str, int] = {}        # sha256 of a file's bytes -> index of its row
        sizes: dict[int, int] = {}           # only files of one size can hold the same bytes: only those are hashed
        for e in self.by_path.values():
            with contextlib.suppress(OSError):
                size = e.path.stat().st_size
                sizes[size] = sizes.get(size, 0) + 1
        named = self.default_split   # a train/val/test token in the source's file name
        if named == "train" and opts.valid_fraction > 0:
            named = None   # a training set, of which --valid-fraction holds a share out
        elif named is not None and opts.valid_fraction > 0 and opts.split is None:
            log.warning("%s: its file name says %r, so rows that name no split go to %r and %s holds none of them "
                        "out (rename the file, or give each row a split)", desc, named, named,
                        option_name("valid_fraction", opts.flags))
        for e in tqdm(list(self.by_path.values()), desc=desc, unit="file", disable=not opts.progress):
            # Messages name the source entry, then the file (once, when the entry is the file itself).
            prefix = "" if e.where == str(e.path) else f"{e.where}: "
            if not e.captions:
                out.errors.append(f"{prefix}{e.path}: no caption; skipped")
                continue
            try:
                info = audio_info(e.path)
            except AudioError as err:
                out.errors.append(f"{prefix}{err}; skipped")
                continue
            if info.num_samples == 0:
                out.errors.append(f"{prefix}{e.path}: contains 0 samples; skipped")
                continue
            split = opts.split or e.split or named
            by_hash = split is None
            if by_hash:
                split = "valid" if held_out(e.group or e.id, opts.valid_fraction) else "train"
            try:
                shared = sizes.get(e.path.stat().st_size, 0) > 1
            except OSError:
                shared = False
            digest = file_sha256(e.path) if shared else f"unique:{e.path}"
            if digest in by_bytes:   # a copy under another name: one row, or its twin could land in another split
                kept = out.rows[by_bytes[digest]]
                out.rows[by_bytes[digest]] = replace(
                    kept, captions=kept.captions + tuple(c for c in e.captions if c not in kept.captions))
                moved = "" if split == kept.split else f" (its split {split!r} is not kept: the row is {kept.split!r})"
                out.errors.append(f"{prefix}{e.path}: the same bytes as {kept.path} (id {kept.id!r}); its captions "
                                  f"join that row{moved}; skipped")
                continue
            by_bytes[digest] = len(out.rows)
            if by_hash:
                hashed[split] += 1
            # the path as the folder shows it (a symlinked sub-folder keeps its name, so the manifest can stay
            # relative to a folder of links); resolve() would store the links' targets
            out.rows.append(ManifestRow(id=opts.id_prefix + e.id, path=str(absolute_path(e.path)),
                                        captions=tuple(e.captions), seconds=round(info.seconds, 6),
                                        sample_rate=info.sample_rate, split=split, source=e.source or opts.source,
                                        licence=e.licence or opts.licence, labels=e.labels, category=e.category))
        log.info("%s: %s, %s", desc, counted(len(out.rows), "row"), counted(len(out.errors), "bad item"))
        if opts.valid_fraction > 0 and hashed["train"] and not hashed["valid"]:
            log.warning("%s: %s %g put none of %s in 'valid' (a hash of each id decides, so a small set can "
                        "get none): raise it, or name a split per row", desc,
                        option_name("valid_fraction", opts.flags), opts.valid_fraction, counted(hashed["train"], "row"))
        if hashed["valid"] and not hashed["train"]:
            log.warning("%s: %s %g put all %s that %s no split in 'valid' and none in 'train' (a hash of each id "
                        "decides, so a small set can get none): lower it, or name a split per row", desc,
                        option_name("valid_fraction", opts.flags), opts.valid_fraction, counted(hashed["valid"], "row"),
                        "names" if hashed["valid"] == 1 else "name")
        return out


def _read_utf8(path: Path) -> str:
    """A text file's content as UTF-8 (a byte-order mark dropped); another encoding is a SourceError naming the
    file and the byte, not Python's bare codec message."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise SourceError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise SourceError(f"{path}: {what} not found")
    return path


def _audio_files(folder: Path) -> list[Path]:
    """Audio files under `folder` (not hidden ones), following symlinked sub-folders (a corpus assembled from
    links) but never into a folder already walked (a link loop)."""
    found, seen = [], set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))   # hidden: e.g. another import's staging folder
        found += [Path(top) / f for f in files]
    return sorted(p for p in found if is_audio_entry(p))   # a dead link is reported, not left out


def source_path(root: Path, text: str) -> Path:
    """The file a source entry names under `root`. A list made on Windows names `sub\\a.wav`: where no file has
    that name (a backslash in a file name is rare here), the path with '/' for each backslash is the one meant;
    the message for a file that is not there names the path as written."""
    path = root / text
    if "\\" in text and os.sep == "/" and not os.path.lexists(path):
        slashed = root / text.replace("\\", "/")
        if os.path.lexists(slashed):
            return slashed
    return path


def _stem_id(path: Path, root: Path) -> str:
    """Id of a file under root: its relative path without suffix (posix separators), as the folder shows it
    (a symlinked file or folder keeps its name under root, not its target's)."""
    try:
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
    except ValueError:
        try:
            rel = Path(os.path.realpath(path)).relative_to(os.path.realpath(root))
        except ValueError:
            rel = Path(path.name)
    return PurePosixPath(rel.with_suffix("")).as_posix()


# ------------------------------------------------------------------------------------------- folder


_FILE_COLUMNS = ("file", "path", "filename", "file_name", "audio")


def import_folder(folder: str | os.PathLike, *, captions_csv: str | os.PathLike | None = None,
                  options: ImportOptions = ImportOptions()) -> ImportResult:
    """Audio files under `folder` (recursively) with captions from `captions_csv` or sidecar `.txt` files.

    CSV: a file column (`file`, `path`, `filename`, ...; relative to `folder`) and caption columns: `caption`,
    `captions` or Clotho's `caption_1` ... `caption_5`, else `text` or `prompt` (`caption_columns`); optional
    `id`, `split`, `category`, `labels` (`;`-separated), `licence` (or `license`), `source` and `group` columns
    (rows of one group, e.g. pieces of one recording, land in the same split of `valid_fraction`).
    Sidecar: `a.wav` takes its captions from `a.txt`, one per non-empty line.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceError(f"{folder}: audio folder not found")
    files = _audio_files(folder)
    if captions_csv is None:
        c = Collector(options)
        for p in files:
            txt = p.with_suffix(".txt")
            if not txt.is_file():
                c.error(f"{p}: no caption (no sidecar {txt.name} beside it, and no captions CSV given); skipped")
                continue
            try:   # UTF-8 (a byte-order mark is no caption text); another encoding is reported, not mangled
                caps = clean_captions(txt.read_text(encoding="utf-8-sig").splitlines())
            except UnicodeDecodeError as e:
                c.error(f"{txt}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8; skipped")
                continue
            if not caps:   # was "a.wav: no caption", which sent the user looking for a.txt that is there
                c.error(f"{p}: no caption (its sidecar {txt.name} is empty or holds only blank lines); skipped")
                continue
            c.add(Entry(_stem_id(p, folder), p, str(p), caps))
        return c.result(f"import {folder}")
    csv_path = _require_file(Path(captions_csv), "captions CSV")
    c = Collector(options, default_split=_split_from_filename(csv_path))   # Clotho: captions_validation.csv
    with io.StringIO(_read_utf8(csv_path), newline="") as f:
        reader = csv.DictReader(f, strict=True)
        fields = [h.strip().lower() for h in reader.fieldnames or []]
        file_col = next((h for h in _FILE_COLUMNS if h in fields), None)
        caption_cols = caption_columns(fields)
        if file_col is None or not caption_cols:
            raise SourceError(f"{csv_path}: needs a file column (one of {', '.join(_FILE_COLUMNS)}) and a "
                               f"caption column (caption, caption_1, ..., captions, text or prompt); found columns "
                               f"{fields}")
        listed: set[Path] = set()
        for raw in csv_records(reader, csv_path):
            where = f"{csv_path}:{reader.line_num}"    # the row's last physical line (quoted captions span lines)
            problem = csv_row_problem(raw, len(fields), where)
            if problem:
                c.error(problem)
                continue
            rec = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
            if not rec.get(file_col):
                c.error(f"{where}: empty {file_col!r} column; skipped")
                continue
            p = source_path(folder, rec[file_col])
            listed.add(Path(os.path.realpath(p)))
            try:
                split = row_split(rec.get("split"), where)
            except SourceError as e:
                c.error(str(e))
                continue
            caps = next((caps for caps in (clean_captions([rec.get(col, "") for col in group])
                                           for group in caption_cols) if caps), [])
            c.add(Entry(rec.get("id") or _stem_id(p, folder), p, where, caps, split=split,
                         labels=tuple(x.strip() for x in rec.get("labels", "").split(";") if x.strip()),
                         category=rec.get("category") or None, group=rec.get("group") or None,
                         source=own_text(rec, ("source",)), licence=own_text(rec, LICENCE_KEYS)))
    for p in files:
        if Path(os.path.realpath(p)) not in listed:
            c.error(f"{p}: not listed in {csv_path} (no caption); skipped")
    return c.result(f"import {folder}")


# ---------------------------------------------------------------------------------------- audiocaps


def import_audiocaps(csv_path: str | os.PathLike, *, root: str | os.PathLike,
                     options: ImportOptions = ImportOptions()) -> ImportResult:
    """AudioCaps CSV (audiocap_id, youtube_id, start_time, caption); audio under `root` named `YID_START.*`,
    `YID.*`, with AudioSet's `Y` prefix, or `AUDIOCAP_ID.*` (the audiocaps-download package's names, one copy per
    caption). Rows are per clip (the val/test sets give five captions)."""
    csv_path, root = _require_file(Path(csv_path), "AudioCaps CSV"), Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: AudioCaps audio root not found")
    index: dict[str, list[Path]] = {}
    for p in _audio_files(root):
        index.setdefault(p.stem, []).append(p)
    c = Collector(options, default_split=_split_from_filename(csv_path))
    seen_caps: dict[str, int] = {}
    with io.StringIO(_read_utf8(csv_path), newline="") as f:
        reader = csv.DictReader(f, strict=True)
        need = {"audiocap_id", "youtube_id", "start_time", "caption"}
        if not need <= set(reader.fieldnames or []):
            raise SourceError(f"{csv_path}: expected AudioCaps columns {sorted(need)}, "
                               f"found {reader.fieldnames}")
        columns = len(reader.fieldnames or [])
        for rec in csv_records(reader, csv_path):
            lineno = reader.line_num
            where = f"{csv_path}:{lineno}"
            problem = csv_row_problem(rec, columns, where)
            if problem:
                c.error(problem)
                continue
            cap_id, yid = rec["audiocap_id"].strip(), rec["youtube_id"].strip()
            try:
                start = int(float(rec["start_time"]))
            except ValueError:
                c.error(f"{where}: start_time {rec['start_time']!r} is not a number; skipped")
                continue
            if cap_id in seen_caps:
                c.error(f"{where}: duplicate audiocap_id {cap_id!r} (first on line {seen_caps[cap_id]}); skipped")
                continue
            seen_caps[cap_id] = lineno
            segment = f"{start}.000_{start + 10}.000"             # AudioSet's own names: Y<id>_30.000_40.000
            names = (f"{yid}_{start}", f"Y{yid}_{start}", f"{yid}_{start}.000", f"Y{yid}_{segment}",
                     f"{yid}_{segment}", yid, f"Y{yid}")
            found = next((index[n] for n in names if n in index), None)
            by_caption = found is None and cap_id in index     # audiocaps-download names files <audiocap_id>.*
            if by_caption:
                found = index[cap_id]
            if found is None:
                c.error(f"{where}: no audio for youtube_id {yid!r} start {start} under {root} "
                        f"(looked for {yid}_{start}.*, {yid}_{segment}.*, {yid}.* (also with a Y prefix) and "
                        f"{cap_id}.*); skipped")
                continue
            if len(found) > 1:
                c.error(f"{where}: several files could be youtube_id {yid!r} start {start}: "
                        f"{', '.join(str(p) for p in found[:3])}; skipped")
                continue
            clip_id = f"{yid}_{start}"
            if by_caption and clip_id in c.by_id:   # a val/test clip's other captions: copies of one clip's audio
                old = c.by_id[clip_id]
                old.captions += [x for x in clean_captions(rec["caption"]) if x not in old.captions]
                continue
            # clips of one video are held out together (--valid-fraction)
            c.add(Entry(clip_id, found[0], where, clean_captions(rec["caption"]), group=yid))
    return c.result(f"import {csv_path.name}")


# ------------------------------------------------------------------------------------ audioldm, tango


def import_audioldm(json_path: str | os.PathLike, *, root: str | os.PathLike | None = None,
                    options: ImportOptions = ImportOptions()) -> ImportResult:
    """AudioLDM dataset JSON `{"data": [{"wav": PATH, "caption": TEXT, "labels": "..."}, ...]}` (the caption
    under any of CAPTION_FIELDS); wav paths are relative to `root` (default: the JSON's folder)."""
    json_path = _require_file(Path(json_path), "AudioLDM dataset JSON")
    root = Path(root) if root else json_path.parent
    try:
        doc = json.loads(_read_utf8(json_path))   # a byte-order mark (a Windows editor's) is no JSON
    except json.JSONDecodeError as e:
        raise SourceError(f"{json_path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise SourceError(f'{json_path}: expected {{"data": [{{"wav": ..., "caption": ...}}, ...]}}')
    c = Collector(options, default_split=_split_from_filename(json_path))
    for i, item in enumerate(doc["data"]):
        where = f"{json_path}: data[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("wav"), str) or not item["wav"]:
            c.error(f'{where}: expected an object with a "wav" path; skipped')
            continue
        p = source_path(root, item["wav"])
        labels = item.get("labels", ())
        labels = tuple(x for x in labels.split(",") if x) if isinstance(labels, str) else \
            tuple(x for x in labels if isinstance(x, str)) if isinstance(labels, list) else ()
        caps = item_captions(item)
        try:
            split = row_split(item.get("split"), where)
        except SourceError as e:
            c.error(str(e))
            continue
        c.add(Entry(_stem_id(p, root), p, where, caps, split=split, labels=labels,
                    source=own_text(item, ("source",)), licence=own_text(item, LICENCE_KEYS)))
    return c.result(f"import {json_path.name}")


def import_tango(jsonl_path: str | os.PathLike, *, root: str | os.PathLike | None = None,
                 options: ImportOptions = ImportOptions()) -> ImportResult:
    """Tango JSONL: one `{"location": PATH, "captions": TEXT or [TEXT, ...]}` per line (the captions under any
    of CAPTION_FIELDS); locations are relative to `root` (default: the JSONL's folder). A broken line is
    reported and skipped."""
    jsonl_path = _require_file(Path(jsonl_path), "Tango JSONL")
    root = Path(root) if root else jsonl_path.parent
    c = Collector(options, default_split=_split_from_filename(jsonl_path))
    with open(jsonl_path, "rb") as f:
        if b"\0" in f.read(8192):   # an audio or archive file given by mistake: one message, not one per "line"
            raise SourceError(f"{jsonl_path}: binary data, not a Tango JSON lines file")
        f.seek(0)
        for lineno, raw in enumerate(f, 1):
            where = f"{jsonl_path}:{lineno}"
            try:   # line by line: a line in another encoding is a bad item, not mangled into U+FFFD
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")   # a byte-order mark is no text
            except UnicodeDecodeError as e:
                c.error(f"{where}: not UTF-8 text ({e.reason} at byte {e.start}); skipped")
                continue
            if not line.strip():
                continue
            try:   # without its line ending: a line cut short was "at column 1" (of the next line)
                item = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                c.error(f"{where}: broken JSON ({e.msg} at column {e.colno}); skipped")
                continue
            if not isinstance(item, dict) or not isinstance(item.get("location"), str) or not item["location"]:
                c.error(f'{where}: expected an object with a "location" path; skipped')
                continue
            p = source_path(root, item["location"])
            caps = item_captions(item)
            try:
                split = row_split(item.get("split"), where)
            except SourceError as e:
                c.error(str(e))
                continue
            c.add(Entry(_stem_id(p, root), p, where, caps, split=split, source=own_text(item, ("source",)),
                        licence=own_text(item, LICENCE_KEYS)))
    return c.result(f"import {jsonl_path.name}")


# ---------------------------------------------------------------------------------------- dispatch


def import_source(kind: str, source: str | os.PathLike, *, root: str | os.PathLike | None = None,
                  captions_csv: str | os.PathLike | None = None, audio_dir: str | os.PathLike | None = None,
                  options: ImportOptions = ImportOptions()) -> ImportResult:
    """Run the importer for `kind` (one of KINDS) on `source`."""
    if kind == "folder":
        return import_folder(source, captions_csv=captions_csv, options=options)
    if kind == "audiocaps":
        if root is None:
            raise SourceError("audiocaps import needs --root (the folder holding the audio files)")
        return import_audiocaps(source, root=root, options=options)
    if kind == "audioldm":
        return import_audioldm(source, root=root, options=options)
    if kind == "tango":
        return import_tango(source, root=root, options=options)
    if kind == "webdataset":
        if audio_dir is None:
            raise SourceError("webdataset import needs an audio folder to extract into")
        from tta.data.webdataset import import_webdataset

        return import_webdataset(source, audio_dir=audio_dir, options=options)
    raise SourceError(f"unknown import kind {kind!r}; expected one of {', '.join(KINDS)}")
