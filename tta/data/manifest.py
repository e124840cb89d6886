"""The JSONL manifest: one audio clip per line, the contract every dataset, importer and recipe shares.

A row: {"id", "path", "captions": [...], "seconds", "sample_rate", "split", "source", "licence",
"labels": [...], "category"}. `path` is stored relative to the manifest's folder when the file lies under
it, absolute otherwise; `resolve_path` turns it back into a usable path.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from tta.checkpoint import atomic_path
from tta.config import check_number, check_numbers

SPLITS = ("train", "valid", "test")


class ManifestError(ValueError):
    """A manifest file or row that does not fit the schema; the message names file, line and field."""


class EmptySplitError(ManifestError):
    """The manifests hold no row of the split asked for (a trainer goes on without an empty validation split)."""


@dataclass(frozen=True)
class ManifestRow:
    id: str
    path: str
    captions: tuple[str, ...]
    seconds: float
    sample_rate: int
    split: str = "train"
    source: str = ""
    licence: str = ""
    labels: tuple[str, ...] = ()
    category: str | None = None
    # the folder a relative `path` is relative to: read_manifest sets it (the manifest's folder) and
    # write_manifest uses it, so rows read from one manifest stay valid written into another folder; not stored
    base: str | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.id:
            raise ManifestError("field 'id' is empty")
        if not self.path:
            raise ManifestError(f"row {self.id!r}: field 'path' is empty")
        # all(map(...)) rather than a generator: a manifest read builds 200 000 rows
        if not self.captions or not (all(map(str.__instancecheck__, self.captions))
                                     and all(map(str.strip, self.captions))):
            raise ManifestError(f"row {self.id!r}: field 'captions' needs at least one non-empty caption")
        if self.split not in SPLITS:
            raise ManifestError(f"row {self.id!r}: field 'split' is {self.split!r}, expected one of {SPLITS}")
        for name, kind in (("seconds", float), ("sample_rate", int)):   # a row built in Python: "16000" failed on
            value = getattr(self, name)                                  # "'<=' not supported"; numpy numbers
            try:                                                         # become Python's (rows write as JSON)
                number = check_number(value, kind, name)
            except ValueError:
                raise ManifestError(f"row {self.id!r}: field {name!r} is {value!r}, expected "
                                    f"{'an integer' if kind is int else 'a finite number'}") from None
            if number is not value:
                object.__setattr__(self, name, number)
        if not self.seconds >= 0:
            raise ManifestError(f"row {self.id!r}: field 'seconds' is {self.seconds}, expected >= 0")
        if self.sample_rate <= 0:
            raise ManifestError(f"row {self.id!r}: field 'sample_rate' is {self.sample_rate}, expected > 0")

    def to_json(self) -> dict:
        # the fields in their order, without dataclasses.asdict's deep copy (a third of write_manifest's time)
        d = {name: getattr(self, name) for name in _FIELDS}
        d["captions"] = list(self.captions)
        d["labels"] = list(self.labels)
        if d["category"] is None:
            del d["category"]
        return d


_FIELDS = tuple(f.name for f in dataclasses.fields(ManifestRow) if f.name != "base")   # base is the reader's
_KNOWN = frozenset(_FIELDS)


_REQUIRED = ("id", "path", "captions", "seconds", "sample_rate")
# sample_rate is ManifestRow's to check, by a config's int rule (check_number): a line's 16000.0 (a pandas
# float column) was refused as "has type float, expected int" where ManifestRow(..., 16000.0) and a config take it
_TYPES = {"id": str, "path": str, "seconds": (int, float), "split": str, "source": str, "licence": str,
          "category": (str, type(None))}
_PLAIN_TYPES = {name: set(tp) if isinstance(tp, tuple) else {tp} for name, tp in _TYPES.items()}   # no isinstance


def row_from_json(obj: object, *, where: str, base: str | None = None) -> ManifestRow:
    """Validate one decoded JSON object into a ManifestRow (a lone "caption" string is accepted); `base` is the
    folder its relative path is relative to (ManifestRow.base)."""
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    obj = dict(obj)
    if "caption" in obj and "captions" not in obj:
        obj["captions"] = [obj.pop("caption")]
    unknown = obj.keys() - _KNOWN
    if unknown:
        raise ManifestError(f"{where}: unknown field {min(unknown)!r}; valid fields: {', '.join(sorted(_KNOWN))}")
    for name in _REQUIRED:
        if name not in obj:
            raise ManifestError(f"{where}: missing field {name!r}")
    for name, tp in _TYPES.items():
        if name in obj and type(obj[name]) not in _PLAIN_TYPES[name] and (
                not isinstance(obj[name], tp) or isinstance(obj[name], bool)):
            raise ManifestError(f"{where}: field {name!r} has type {type(obj[name]).__name__}, "
                                f"expected {getattr(tp, '__name__', 'number' if name == 'seconds' else 'string or null')}")
    for name in ("captions", "labels"):
        if name in obj:
            value = obj[name]
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(map(str.__instancecheck__, value)):
                raise ManifestError(f"{where}: field {name!r} must be a list of strings")
            obj[name] = tuple(value)
    try:
        obj["seconds"] = float(obj["seconds"])
    except OverflowError:   # an int beyond float range: "int too large to convert to float", no file or line
        raise ManifestError(f"{where}: field 'seconds' is too large, expected a finite number") from None
    try:
        return ManifestRow(**obj, base=base)
    except ManifestError as e:
        raise ManifestError(f"{where}: {e}") from None


def read_manifest(path: str | os.PathLike, *, errors: list[str] | None = None,
                  lines: dict[str, int] | None = None) -> list[ManifestRow]:
    """Read a JSONL manifest.

    Strict by default: the first bad line raises ManifestError naming file and line. Pass a list as
    `errors` to collect one message per bad line (bad JSON, missing caption, duplicate id, ...) and keep
    the good rows. Pass an empty dict as `lines` to get each row's line (id -> line number, from 1), for a
    later message that names a row's line without reading the file again.
    """
    path = Path(path)
    if path.is_dir():   # "manifest not found" sent the user looking for a path that is there
        raise ManifestError(f"{path}: is a folder, expected a manifest file (.jsonl)")
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    rows: list[ManifestRow] = []
    seen: dict[str, int] = {} if lines is None else lines   # each row's line
    if seen:
        raise ValueError("read_manifest(lines=...) takes an empty dict")
    folder = str(path.resolve().parent)
    try:
        with open(path, encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    try:   # without its line ending: a line cut short was "at column 1" (of the next line)
                        obj = json.loads(line.rstrip("\r\n"))
                    except json.JSONDecodeError as e:
                        raise ManifestError(f"{where}: broken JSON ({e.msg} at column {e.colno})") from None
                    except ValueError:   # json's own: "Exceeds the limit (4300 digits) for integer string conversion"
                        raise ManifestError(f"{where}: a number with more than {sys.get_int_max_str_digits()} "
                                            "digits") from None
                    row = row_from_json(obj, where=where, base=folder)
                    if row.id in seen:
                        raise ManifestError(f"{where}: duplicate id {row.id!r} (first on line {seen[row.id]})")
                    seen[row.id] = lineno
                    rows.append(row)
                except ManifestError as e:
                    if errors is None:
                        raise
                    errors.append(str(e))
    except UnicodeDecodeError as e:   # a binary or UTF-16 file given as a manifest
        raise ManifestError(f"{path}: not a UTF-8 text file ({e.reason}); "
                            "a manifest is JSON lines") from None
    return rows


def write_manifest(path: str | os.PathLike, rows: Iterable[ManifestRow | dict]) -> Path:
    """Write rows as JSONL atomically; paths under the manifest's folder are stored relative to it. A row read
    from another manifest (its relative path is relative to that one's folder, `row.base`) keeps pointing at its
    audio. A row may also be given as a dict of its fields (`ManifestRow.to_json`, a manifest line), checked as a
    line read from a manifest is; its relative path is then relative to this manifest's folder, as on a line."""
    path = Path(path)
    base = absolute_path(path.parent)
    ids: set[str] = set()
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            if isinstance(row, dict):   # failed on "'dict' object has no attribute 'id'"
                row = row_from_json(row, where=f"{path}: row {i}")
            elif not isinstance(row, ManifestRow):
                raise ManifestError(f"{path}: row {i} is a {type(row).__name__}, expected a ManifestRow or a dict "
                                    "of its fields")
            if row.id in ids:
                raise ManifestError(f"{path}: duplicate id {row.id!r}")
            ids.add(row.id)
            d = row.to_json()
            source = row.path if Path(row.path).is_absolute() or not row.base else str(Path(row.base) / row.path)
            d["path"] = relative_path(source, base)
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    return path


def absolute_path(path: str | os.PathLike) -> Path:
    """`path` made absolute as the folders show it (a linked sub-folder keeps its name, so a manifest can store
    audio under it relative to its own folder), or with every link resolved when it holds a '..': after a link
    '..' leads elsewhere than the path written without it, and a path through a folder that goes away breaks."""
    p = Path(path).absolute()
    return p if ".." not in p.parts else p.resolve()


def relative_path(p: str, base: Path) -> str:
    """`p` relative to the folder `base` when it lies under it, else `p`. Under it as the folders show it first (a
    sub-folder that is a link to another disk stays a relative path, valid again when the link is re-pointed),
    then with every link resolved."""
    ap = Path(p)
    if not ap.is_absolute():
        return p
    tries = [lambda: (ap.resolve(), base.resolve())]   # resolved only when needed: a write's two realpaths a row
    if ".." not in ap.parts:   # a '..' after a link leads elsewhere than the same path written without it
        tries.insert(0, lambda: (ap, base))
    for pair in tries:
        candidate, folder = pair()
        try:
            return str(candidate.relative_to(folder))
        except ValueError:
            pass
    return str(ap)


def resolve_path(row: ManifestRow | str, manifest_path: str | os.PathLike) -> Path:
    """Absolute path of a row's audio, or of a path as a row stores it (relative paths are relative to the
    manifest's folder)."""
    p = Path(row if isinstance(row, str) else row.path)
    return p if p.is_absolute() else Path(manifest_path).resolve().parent / p


def split_rows(rows: list[ManifestRow], split: str) -> list[ManifestRow]:
    if split not in SPLITS:
        raise ManifestError(f"unknown split {split!r}; expected one of {SPLITS}")
    return [r for r in rows if r.split == split]


@dataclass(frozen=True)
class DataConfig:
    """Where training data comes from and how clips are cut; nested in every training config."""

    manifest: str = ""                 # JSONL manifest path ("" = must be set with --set data.manifest=...)
    train_split: str = "train"
    valid_split: str = "valid"
    segment_seconds: float = 10.24     # crop/pad length; 10.24 s = 1024 mel frames at 16 kHz / hop 160
    normalize: bool = True             # DC removal + peak 0.5 (AudioLDM's loader)
    cache_dir: str = ""                # optional folder for resampled-audio cache ("" = no cache)
    num_workers: int = 0
    extra_manifests: tuple[str, ...] = field(default_factory=tuple)
    balance: float = 0.0               # label-balanced sampling: item weight count(key)^-balance, key = first
                                       # label, else category; 0 = uniform, 1 = every key equally likely
    balance_labels: str = "first"      # "first": the key above; "all": the sum of count(label)^-balance over
                                       # all of an item's labels (AudioLDM's and PSLA's AudioSet sampling)
    key_weights: dict[str, float] = field(default_factory=dict)  # extra draw weight per first label or
                                       # category, e.g. {"dog": 4, "ambience": 2}: those items are drawn that
                                       # many times as often as balance alone gives (both apply if both match)
    repeat_below: float = 0.0          # training items only: a clip with less real audio than this many
                                       # seconds is repeated, with random gaps, to fill the segment (0 = off:
                                       # the rest of the segment stays silence)
    repeat_gap: tuple[float, float] = (0.2, 1.0)    # gap range between repeats, seconds (uniform)
    repeat_gap_by_key: dict[str, tuple[float, float]] = field(default_factory=dict)  # a gap range per
                                       # first label or category (as key_weights; the label wins when both are
                                       # listed) instead of repeat_gap, e.g. {"event": [1.0, 3.0]}: barks a
                                       # second or more apart while ambiences keep short breaks
    repeat_categories: tuple[str, ...] = ()         # only rows of these categories repeat (empty = all)
    speed_by_key: dict[str, tuple[float, float]] = field(default_factory=dict)  # training items only: a
                                       # varispeed range per first label or category (as key_weights), e.g.
                                       # {"dog": [0.8, 1.25]}: each item of such a row is played r times as
                                       # fast (pitch and tempo together, r log-uniform in the range) before it
                                       # is repeated: a bigger or smaller dog from the same few recordings
    repeat_skip_words: tuple[str, ...] = ("once", "single")  # an item whose caption has one of these words
                                                             # (whole word, any case) is never repeated
    max_unreadable: float = 0.01       # during a run (not the LDM's pre-encoding): a file that fails to
                                       # decode when read (a FLAC or MP3 cut short behind a whole header, NaN
                                       # or inf samples, a file gone or emptied since the start: all of which
                                       # stopped the run before this field) is skipped with a warning and
                                       # another row drawn in its place (uniformly: data.balance and
                                       # data.key_weights do not weigh it; validation and the VAE's
                                       # scale_factor take the next row), until more files have failed than
                                       # this fraction of the split's rows (rounded down; at most 0.5: half of
                                       # them), or than 3 if that is more (on fewer than 7 rows, fewer than
                                       # half of them: 2 of 6): then the run stops. 0 = the first such file
                                       # stops the run

    def __post_init__(self) -> None:
        check_numbers(self, "data")
        if not 0 <= self.balance < float("inf"):
            raise ValueError(f"data.balance={self.balance} must be a finite number >= 0")
        if self.balance_labels not in ("first", "all"):
            raise ValueError(f"data.balance_labels={self.balance_labels!r} must be 'first' or 'all'")
        for k, w in self.key_weights.items():
            if not 0 < w < float("inf"):
                raise ValueError(f"data.key_weights[{k!r}]={w} must be a finite number > 0")
        if self.segment_seconds <= 0:
            raise ValueError(f"data.segment_seconds={self.segment_seconds} must be > 0")
        if not 0 <= self.repeat_below < float("inf"):
            raise ValueError(f"data.repeat_below={self.repeat_below} must be a finite number of seconds >= 0")
        lo, hi = self.repeat_gap
        if not 0 <= lo <= hi < float("inf"):
            raise ValueError(f"data.repeat_gap={list(self.repeat_gap)} must be [min, max] seconds, "
                             "0 <= min <= max")
        for k, (lo, hi) in self.repeat_gap_by_key.items():
            if not 0 <= lo <= hi < float("inf"):
                raise ValueError(f"data.repeat_gap_by_key[{k!r}]={[lo, hi]} must be [min, max] seconds, "
                                 "0 <= min <= max")
        for k, (lo, hi) in self.speed_by_key.items():
            if not 0 < lo <= hi < float("inf"):
                raise ValueError(f"data.speed_by_key[{k!r}]={[lo, hi]} must be [min, max] speed factors, "
                                 "0 < min <= max")
        if not 0 <= self.max_unreadable <= 0.5:
            raise ValueError(f"data.max_unreadable={self.max_unreadable} must be a fraction of the training rows "
                             "in [0, 0.5]")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers={self.num_workers} must be >= 0")
        for s in (self.train_split, self.valid_split):
            if s not in SPLITS:
                raise ValueError(f"data split {s!r} must be one of {SPLITS}")
