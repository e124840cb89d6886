"""Prompt files for `tta eval`: which prompt (and category) belongs to which generated file.

Accepted: CSV with a header, or JSONL (one object per line). Each row names the file by `file` or `id`
(matched against the audio file name without its suffix, or its path relative to the folder without
suffix), gives the text as `prompt` (or `caption`/`text`), and optionally a `category`. A `.txt` file is
one prompt per line, matched to the sorted generated files by position only if the counts agree.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path


class PromptFileError(ValueError):
    pass


@dataclass(frozen=True)
class PromptRow:
    key: str  # file stem / id the row belongs to
    prompt: str
    category: str | None = None


_KEY_FIELDS = ("file", "id", "path", "name")
_TEXT_FIELDS = ("prompt", "caption", "text")


def _key(value: str) -> str:
    p = Path(str(value).strip())
    return p.with_suffix("").as_posix() if p.suffix.lower() in {".wav", ".flac", ".ogg", ".mp3"} else p.as_posix()


def _row(obj: dict, where: str) -> PromptRow:
    key = next((obj[f] for f in _KEY_FIELDS if obj.get(f) not in (None, "")), None)
    text = next((obj[f] for f in _TEXT_FIELDS if obj.get(f) is not None), None)
    if key is None or text is None:
        raise PromptFileError(f"{where}: each row needs one of {'/'.join(_KEY_FIELDS)} and one of "
                              f"{'/'.join(_TEXT_FIELDS)}; got fields {sorted(obj)}")
    category = obj.get("category")
    return PromptRow(_key(str(key)), str(text), None if category in (None, "") else str(category))


def read_prompts(path: str | os.PathLike, names: list[str] | None = None) -> dict[str, PromptRow]:
    """Prompt rows keyed by file key. `names` (sorted generated keys) is needed for .txt files."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: prompt file not found")
    suffix = path.suffix.lower()
    rows: list[PromptRow] = []
    try:
        if suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                for i, obj in enumerate(csv.DictReader(f), start=2):
                    rows.append(_row(obj, f"{path}:{i}"))
        elif suffix in (".jsonl", ".json"):
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if line.strip():
                    obj = json.loads(line)
                    if not isinstance(obj, dict):
                        raise PromptFileError(f"{path}:{i}: expected a JSON object per line")
                    rows.append(_row(obj, f"{path}:{i}"))
        elif suffix == ".txt":
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            if names is None or len(lines) != len(names):
                raise PromptFileError(f"{path}: a .txt prompt file pairs by position and needs exactly one line per "
                                      f"generated file ({len(lines)} lines, {0 if names is None else len(names)} files); "
                                      "use CSV/JSONL with a file column otherwise")
            rows = [PromptRow(n, t) for n, t in zip(names, lines)]
        else:
            raise PromptFileError(f"{path}: unsupported prompt file type {suffix!r} (expected .csv, .jsonl or .txt)")
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as e:
        raise PromptFileError(f"{path}: cannot be parsed ({e})") from None
    out: dict[str, PromptRow] = {}
    for r in rows:
        if r.key in out:
            raise PromptFileError(f"{path}: file {r.key!r} appears twice")
        out[r.key] = r
    if not out:
        raise PromptFileError(f"{path}: no prompts")
    return out
