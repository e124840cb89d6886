"""Prompt files: the one reader shared by `tta generate --prompts`, `tta eval --prompts` and `tta clap score`.

So the same file drives generation, evaluation and CLAP scoring:

- `.txt`: one prompt per line (blank lines skipped); rows carry no id or file.
- `.csv`: a header with a text column (`prompt`, `caption` or `text`) and optionally `id`, a file column
  (`file`, `path`, `audio` or `name`), `category` and `input` (the audio `tta generate --edit` edits for the row,
  relative to the prompts file's folder).
- `.jsonl` / `.json`: one object per line with the same fields. An empty string is a valid prompt
  (the unconditional one).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tta.config import shortened

log = logging.getLogger(__name__)

TEXT_FIELDS = ("prompt", "caption", "text")
FILE_FIELDS = ("file", "path", "audio", "name")


def file_key(value: str) -> str:
    """The key a row's file field names its audio by: the path as written, without its suffix where that is one
    of the audio suffixes `tta eval` reads (tta.audio.AUDIO_SUFFIXES; audio_suffix), as eval names its files: a
    door.aiff row pairs with door.aiff. `tta eval` pairs files by it; `tta generate` names its outputs by its
    base name."""
    p = Path(str(value).strip())
    return p.with_suffix("").as_posix() if audio_suffix(value) else p.as_posix()


def audio_suffix(value: str) -> str:
    """The audio suffix a row's file field ends in, in lower case ('.aiff' of door.AIFF), which file_key drops;
    '' for none (notes.v2, door)."""
    from tta.audio import AUDIO_SUFFIXES

    suffix = Path(str(value).strip()).suffix.lower()
    return suffix if suffix in AUDIO_SUFFIXES else ""


SUFFIXES = (".txt", ".csv", ".jsonl", ".json")


NAME_PUNCTUATION = "_.-+,()[]'&@# "   # besides letters, digits and marks, in an output name a prompts file gives


def word_char(ch: str) -> bool:
    """A letter, digit or combining mark of any script (a Devanagari vowel sign, the accent of a decomposed é)."""
    return unicodedata.category(ch)[0] in "LNM"


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a file name tta writes (`tta generate`'s output named by a prompts file's id), or None:
    it must hold letters, digits, marks and NAME_PUNCTUATION only (no path separator, no control character,
    nothing Windows refuses), not start or end with a space."""
    if name in (".", "..") or not name or name != name.strip():
        return "is empty, '.', '..', or starts or ends with a space"
    bad = next((ch for ch in name if not (word_char(ch) or ch in NAME_PUNCTUATION)), None)
    if bad is not None:
        return (f"holds {bad!r} (U+{ord(bad):04X}); a name takes letters, digits and "
                f"{' '.join(NAME_PUNCTUATION.strip())} and spaces")
    return None


def slug(text: str, limit: int = 40) -> str:
    """A file-name stem from a prompt: its letters, digits and marks (any script, NFC) joined by _;
    "unconditional" for an empty prompt and "prompt" for one with no letters or digits."""
    kept, prev = [], " "
    for ch in unicodedata.normalize("NFC", text.lower()):
        # a mark stays with the letter or digit it follows; after a dropped symbol (the variation selector of
        # an emoji) it would stand alone, invisible in the file name
        keep = word_char(ch) and (unicodedata.category(ch)[0] != "M" or prev != " ")
        kept.append(ch if keep else " ")
        prev = kept[-1]
    s = "_".join("".join(kept).split())
    return s[:limit].rstrip("_") or ("prompt" if text.strip() else "unconditional")


ID_ESCAPE = "%"   # not in NAME_PUNCTUATION: a name that holds it is an escaped id, never one kept as it is


def id_file_name(id_: str) -> str:
    """The file name (without suffix) tta writes an item's audio under, from its id (a manifest's or a prompts
    file's): the id itself when `name_problem` accepts it, else the id with each character a name cannot hold,
    a space at either end and a whole '.' or '..' written as %XX (its UTF-8 bytes in hex): 'clotho/a_dog' ->
    'clotho%2Fa_dog', 'audioset:x' -> 'audioset%3Ax'. The one rule of every writer (`tta generate`, the
    retrieval experiment) and of every reader that pairs files back to ids (`tta eval --prompts`, `tta clap
    score --prompts`: match_audio). Two ids never share a name: a kept id holds no '%', an escaped one does, and
    escapes a '%' of its own."""
    if not id_:
        raise ValueError("an empty id names no file")
    if name_problem(id_) is None:
        return id_

    def escape(ch: str) -> str:
        return "".join(f"{ID_ESCAPE}{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))

    if id_ in (".", ".."):
        return "".join(map(escape, id_))
    out = [ch if word_char(ch) or ch in NAME_PUNCTUATION else escape(ch) for ch in id_]
    for end in (0, -1):
        if out[end] == " ":
            out[end] = escape(" ")
    return "".join(out)


NAME_MAX_BYTES = 255   # the longest file name in bytes most file systems take (ext4, XFS, APFS, Btrfs)


def id_name_problem(id_: str, suffix: str = ".wav") -> str | None:
    """Why the file tta writes for `id_` (`id_file_name` + `suffix`) cannot be written, or None: its name passes
    NAME_MAX_BYTES (escaping writes a character a name cannot hold as 3 to 12 bytes, so an id well under the
    limit can pass it). Checked before any work: the write fails with the OS's "File name too long" otherwise."""
    name = id_file_name(id_) + suffix
    size = len(name.encode("utf-8", "surrogatepass"))
    if size <= NAME_MAX_BYTES:
        return None
    how = "" if name == id_ + suffix else ", escaped"
    return (f"id {shortened(id_, 40)!r} names a file of {size} bytes ({name[:20]}...{suffix}{how}); a file name "
            f"takes at most {NAME_MAX_BYTES} bytes: give it a shorter id")


def match_audio(keys: Mapping[str, str | None], names: Iterable[str],
                takes: Mapping[str, RecordedOutput] | None = None) -> dict[str, str | None]:
    """Pair audio files with prompt rows, the one rule of `tta eval --prompts` and `tta clap score --prompts`:
    for each name (a file's path under its folder without suffix, '/'-joined), the key of its row, or None.
    `keys` maps each row's key (its file field's `file_key`, else its id's `id_file_name`) to its id (None for
    none). A name pairs with the row of the same key; else with the id row whose id read as a path (`file_key`,
    as tta before id_file_name keyed it) is that name (a file at the id's own path, 'clotho/a_dog.wav'); else,
    when no other file has its base name, with the row whose key, or id read as a path, has that base name
    ('a_dog.wav' for 'clotho/a_dog'). A row with a file field pairs by that field only. `takes` (the folder's
    `recorded_outputs`): a named row's take that the record lists ('door_2') pairs as its row's one file
    ('door') would, so each of a row's takes pairs with it."""
    names = list(names)
    stands = {n: takes[n].row_name if takes and n in takes and takes[n].row_name else n for n in names}
    by_id = {file_key(i): k for k, i in keys.items() if i is not None and k == id_file_name(i)}   # id rows
    by_name = {Path(p).name: k for p, k in by_id.items()}
    by_name.update((Path(k).name, k) for k in keys)   # a row's own key before another row's id
    # a bare name stands for one file only (a/x and b/x need paths); a row's takes stand for one file together
    counts = Counter(Path(s).name for s in set(stands.values()))
    # a name that still ends in an audio suffix (door.aiff, of door.aiff.wav) pairs with the row of its key: `tta
    # generate` named a door.aiff row's output so when file_key dropped only .wav, .flac, .ogg and .mp3
    return {n: n if n in keys else s if s in keys else file_key(s) if file_key(s) in keys else by_id.get(s) or (
                by_name.get(Path(s).name) if counts[Path(s).name] == 1 else None)
            for n, s in stands.items()}


@dataclass(frozen=True)
class RecordedOutput:
    """An output a `tta generate` folder's generation.json lists: which row of its run it is, and which take."""
    row: int                # the row's position among the run's rows (a prompt and its --takes N files are one)
    take: int               # 1..N
    row_name: str | None    # a named row's take (door_2): the name its row's one file has (door); else None
    takes: int = 1          # the run's --takes N (settings.takes)


def takes_run(recorded: Mapping[str, RecordedOutput]) -> bool:
    """Whether `recorded` (`recorded_outputs`) is of a `tta generate --takes N` run with N > 1, whose files each
    name their take (also one stopped before any take but the first was written)."""
    return any(o.takes > 1 for o in recorded.values())


def recorded_outputs(record: Mapping, where: str = "generation.json") -> dict[str, RecordedOutput]:
    """The outputs a `tta generate` generation.json `record` lists, by file name without suffix (as
    `match_audio` names files), in the record's order (the run's rows'): with `--takes N` (settings.takes) a row
    is N outputs, an unnamed prompt's takes NNN_<slug of its prompt> (NNN the output's position in the run: row
    NNN // N) and a named row's <name>_1 .. <name>_N (its record's `take`; a file field's 001_door.wav names
    001_door_1, whose id is its name as an unnamed take's is). {} for a record that lists no such outputs (none,
    an output with no file name); one that lists outputs that are not its run's takes (a take that is no count,
    a name that is no take of its row, a name twice) is ignored with a warning naming `where`."""

    try:
        outputs, takes = record["outputs"], record.get("settings", {}).get("takes", 1)
    except (KeyError, AttributeError):
        return {}
    if type(takes) is not int or takes < 1 or not isinstance(outputs, list):
        return {}

    def ignored(why: str) -> dict:
        log.warning("%s: %s; the record is ignored and the files pair as any folder's", where, why)
        return {}

    found: dict[str, RecordedOutput] = {}
    rows: dict[object, int] = {}   # a row's identity -> its position
    for output in outputs:
        file = output.get("file") if isinstance(output, dict) else None
        if not isinstance(file, str):
            return {}
        take = output.get("take", 1)
        if type(take) is not int or not 1 <= take <= takes:
            return ignored(f"output {file!r} has take {json.dumps(take)}; expected a count of 1 to {takes} "
                           f"(settings.takes)")
        name = file_key(file)
        index = re.match(r"(\d+)_", name)
        prompt = output.get("prompt")   # an unnamed prompt's take: NNN_<slug of its prompt>, its id its name
        unnamed = output.get("id") == name and index and isinstance(prompt, str) and \
            name == f"{index.group(1)}_{slug(prompt)}"
        row_name = None
        if takes == 1:
            row = name
        elif unnamed:
            position = int(index.group(1))
            row = ("#", position // takes)
            if position % takes != take - 1:
                return ignored(f"output {file!r} is take {take} of a --takes {takes} run, and its number "
                               f"{position} is the position of a take {position % takes + 1}")
        elif name.endswith(f"_{take}"):
            row = row_name = name[:-len(f"_{take}")]
        else:
            return ignored(f"output {file!r} is take {take} of a --takes {takes} run, and its name is neither "
                           f"NAME_{take} nor NNN_<its prompt>")
        if name in found:
            return ignored(f"output {file!r} is listed twice")
        found[name] = RecordedOutput(rows.setdefault(row, len(rows)), take, row_name, takes)
    return found


def generation_outputs(folder: Path) -> dict[str, RecordedOutput]:
    """`recorded_outputs` of the generation.json of a `tta generate --out-dir` folder; {} where there is none or
    it cannot be read (the files then pair as any folder's)."""
    try:
        record = json.loads((Path(folder) / "generation.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return recorded_outputs(record, str(Path(folder) / "generation.json")) if isinstance(record, dict) else {}


def position_names(paths: Iterable[str]) -> dict[str, str]:
    """The names audio files pair by position under (`position_order`), each beside its path: the '/'-joined
    path under the folder without its suffix (as `tta eval` keys files), so 'rain.wav' sorts before 'rain-2.wav'
    in `tta clap score` as in `tta eval`; the paths themselves where two files share a name (x.wav, x.flac)."""
    paths = list(paths)
    names = {Path(n).with_suffix("").as_posix(): n for n in paths}
    return names if len(names) == len(paths) else {n: n for n in paths}


def position_order(path: Path, names: list[str], rows: int,
                   recorded: Mapping[str, RecordedOutput]) -> list[tuple[str, int]]:
    """Each file name (without suffix) beside the position of the prompts file row it pairs with, for rows that
    pair by position (a .txt; rows with no file or id field), `rows` rows; PromptFileError when they cannot.
    The files of a `tta generate` folder whose generation.json lists them all (`recorded`) pair in the run's
    row order, a row's --takes N files with it; else there must be one file per row, in the order of their
    leading number when all have one (`NNN_<slug>`), else sorted by name, when that order is the one of the
    numbers in the names too (clip_10 sorts before clip_2 and would take the third row without a word)."""
    if recorded and set(names) == set(recorded):
        count = len({recorded[n].row for n in names})
        if count != rows:
            raise PromptFileError(f"{path}: {rows} rows pair by position with the {count} prompts of the run whose "
                                  f"generation.json lists the {len(names)} generated files; give each row a file "
                                  "or id field otherwise")
        return sorted(((n, recorded[n].row) for n in names), key=lambda p: (p[1], recorded[p[0]].take))
    if len(names) != rows:
        raise PromptFileError(f"{path}: pairs by position and needs exactly one row per generated file ({rows} rows, "
                              f"{len(names)} files); give each row a file or id field otherwise")
    index = [re.match(r"(\d+)_", Path(n).name) for n in names]
    if all(index):
        return [(n, i) for i, (_, n) in enumerate(sorted(zip((int(m.group(1)) for m in index), names)))]
    ordered = sorted(names)
    natural = sorted(names, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])
    if ordered != natural:
        first = next(i for i, (a, b) in enumerate(zip(ordered, natural)) if a != b)
        raise PromptFileError(f"{path}: pairs its rows with the generated files by position, and their names give "
                              f"no one order ({ordered[first]!r} sorts before {natural[first]!r}, their numbers say "
                              "otherwise); give each row a file or id field, or name the files NNN_<name>")
    return [(n, i) for i, n in enumerate(ordered)]


class PromptFileError(ValueError):
    """A prompt file that cannot be read; the message names the file (and line) and what was expected."""


@dataclass(frozen=True)
class PromptRow:
    prompt: str
    id: str | None = None        # the row's `id` field
    file: str | None = None      # the row's file field (file/path/audio/name), as written
    category: str | None = None
    where: str = ""              # "path:line", for error messages
    input: str | None = None     # the row's `input` field as written: the audio `tta generate --edit` edits
    unread: tuple[str, ...] = ()   # the names of the row's other non-empty fields (e.g. a "seed" column)


def read_prompt_file(path: str | os.PathLike) -> list[PromptRow]:
    """Rows of a .txt / .csv / .jsonl prompt file, in file order. Raises PromptFileError on any bad row."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: prompts file not found")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise PromptFileError(f"{path}: unsupported prompts file type {suffix!r} (expected .txt, .csv or .jsonl)")
    try:
        text = path.read_text(encoding="utf-8-sig")   # a leading byte-order mark (Excel's "CSV UTF-8") is dropped
    except (OSError, UnicodeDecodeError) as e:
        raise PromptFileError(f"{path}: cannot read prompts file ({e})") from None
    if suffix == ".txt":
        # lines end at \n (and \r\n) only: a form feed or U+2028 inside a prompt does not make two prompts
        rows = [PromptRow(line.strip(), where=f"{path}:{n}")
                for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    elif suffix == ".csv":
        rows = _csv_rows(path, text)
    else:
        rows = _jsonl_rows(path, text)
    if not rows:
        raise PromptFileError(f"{path}: no prompts in the file")
    return rows


def _csv_rows(path: Path, text: str) -> list[PromptRow]:
    # a quoted prompt may span lines: csv reads the text itself, and names rows by physical line
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    records = []
    try:
        for record in reader:
            records.append((reader.line_num, record))
    except csv.Error as e:
        raise PromptFileError(csv_error(path, records[-1][0] if records else 1, e)) from None
    fields = [f.strip().lower() for f in (reader.fieldnames or [])]
    if not any(f in fields for f in TEXT_FIELDS):
        raise PromptFileError(f"{path}: CSV needs a {'/'.join(TEXT_FIELDS)} column; found {fields}")
    rows = []
    for n, record in records:
        problem = csv_row_problem(record, len(fields), f"{path}:{n}", "prompt")
        if problem:
            raise PromptFileError(problem)
        obj = {k.strip().lower(): (v or "").strip() for k, v in record.items() if k}
        if not any(obj.values()):   # a spreadsheet's empty rows (",,") at the end of an export, not prompts
            continue
        rows.append(_row(obj, f"{path}:{n}"))
    return rows


def csv_error(path, last_good_line: int, error: Exception) -> str:
    """One line for a csv.Error of a strict reader: where the bad row starts and what is likely wrong (a quote
    left open takes every line after it into one field; a stray character after a closing quote)."""
    hint = "; a quote that is opened and not closed?" if "end of data" in str(error) else ""
    return f"{path}:{last_good_line + 1}: not valid CSV ({error}{hint})"


def csv_row_problem(record: dict, columns: int, where: str, what: str) -> str | None:
    """Why a csv.DictReader row is malformed (more or fewer fields than its header's `columns`), or None. An
    unquoted comma in a `what` (a prompt, a caption) spills the rest of it into an extra field, which csv files
    under the key None: read as it is, the text would be cut short without a word."""
    extra, short = record.get(None), [k for k, v in record.items() if k is not None and v is None]
    if not extra and not short:
        return None
    got = columns + len(extra or []) - len(short)
    return (f"{where}: {got} field{'' if got == 1 else 's'}, the header has {columns}"
            + (f"; quote a {what} that contains commas" if extra else ""))


def _jsonl_rows(path: Path, text: str) -> list[PromptRow]:
    rows = []
    for n, line in enumerate(text.split("\n"), 1):   # JSON lines end at \n only: a U+2028 in a prompt is text
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptFileError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise PromptFileError(f"{where}: expected a JSON object per line")
        rows.append(_row(obj, where))
    return rows


def _row(obj: dict, where: str) -> PromptRow:
    text = next((obj[f] for f in TEXT_FIELDS if f in obj and obj[f] is not None), None)
    if not isinstance(text, str):
        raise PromptFileError(f"{where}: expected a string {'/'.join(TEXT_FIELDS)} field; got fields {sorted(obj)}")
    for f in FILE_FIELDS:   # a JSON number is no file name (3 named an output "3.wav"); null is no field, as a
        # CSV's empty cell and as null in the other fields (a table written by pandas has them)
        if obj.get(f) is not None and not isinstance(obj[f], str):
            raise PromptFileError(f"{where}: field {f!r} is {json.dumps(obj[f])}; expected a string (an audio "
                                  "file's name or path)")
    file = next((obj[f] for f in FILE_FIELDS if obj.get(f)), None)
    if obj.get("input") is not None and not isinstance(obj["input"], str):
        raise PromptFileError(f"{where}: field 'input' is {json.dumps(obj['input'])}; expected a string (the path of "
                              "the audio the row edits)")
    id_ = obj.get("id")
    if id_ is not None and (isinstance(id_, bool) or not isinstance(id_, (str, int))):
        raise PromptFileError(f"{where}: field 'id' is {json.dumps(id_)}; expected a string or an integer")
    category = obj.get("category")
    known = {*TEXT_FIELDS, *FILE_FIELDS, "id", "category", "input"}
    unread = tuple(k for k, v in obj.items() if k not in known and v not in (None, ""))
    return PromptRow(text, None if id_ in (None, "") else str(id_), file,
                     None if category in (None, "") else str(category), where, obj.get("input") or None, unread)
