"""Prompt files for `tta eval`: which prompt (and category) belongs to which generated file.

The file is read by tta.data.prompts (the reader `tta generate` and `tta clap` share). CSV/JSONL rows name
their file by a file column (file/path/audio/name) or by `id` — matched against the audio file name
without its suffix, or its path relative to the folder without suffix; an id as `tta generate` names its file
(`tta.data.prompts.id_file_name`: 'clotho/a_dog' -> 'clotho%2Fa_dog'), else as a path — and may carry a
`category`. A `.txt` file is one prompt per line, and a CSV/JSONL file none of whose rows has a file or id field
one prompt per row: both are matched to the generated files by position, only if the counts agree; the files
are in the order of their leading number when all have one (`tta generate`'s `NNN_<slug>` names), else sorted
by name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from tta.data.prompts import PromptFileError, file_key, id_file_name, read_prompt_file

__all__ = ["PromptFileError", "PromptRow", "read_prompts"]


@dataclass(frozen=True)
class PromptRow:
    key: str  # file stem the row belongs to: its file field's, or its id's file name (id_file_name)
    prompt: str
    category: str | None = None
    id: str | None = None   # the row's id, as written


def _by_index(names: list[str]) -> list[str]:
    """Generated files in prompt order: by their leading number when all have one (`tta generate` names them
    `NNN_<slug>`, and a plain sort puts 1000_x before 100_x), else in sorted order."""
    index = [re.match(r"(\d+)_", Path(n).name) for n in names]
    if all(index):
        return [n for _, n in sorted(zip((int(m.group(1)) for m in index), names))]
    return sorted(names)


def read_prompts(path: str | os.PathLike, names: list[str] | None = None) -> dict[str, PromptRow]:
    """Prompt rows keyed by file key. `names` (sorted generated keys) is needed for .txt files."""
    path = Path(path)
    rows = read_prompt_file(path)
    by_position = path.suffix.lower() == ".txt" or all(r.file is None and r.id is None for r in rows)
    if by_position:   # `tta generate` names such rows' outputs NNN_<slug>, in file order
        if names is None or len(rows) != len(names):
            what = "a .txt prompt file" if path.suffix.lower() == ".txt" else "a prompt file without file or id fields"
            raise PromptFileError(f"{path}: {what} pairs by position and needs exactly one row per generated file "
                                  f"({len(rows)} rows, {0 if names is None else len(names)} files); give each row a "
                                  "file or id field otherwise")
        keyed = [PromptRow(n, r.prompt, r.category, r.id) for n, r in zip(_by_index(names), rows)]
    else:
        keyed = []
        for r in rows:
            if r.file is None and r.id is None:
                raise PromptFileError(f"{r.where}: each row needs a file/path/audio/name or id field")
            key = file_key(r.file) if r.file is not None else id_file_name(r.id)
            keyed.append(PromptRow(key, r.prompt, r.category, r.id))
    out: dict[str, PromptRow] = {}
    for r in keyed:
        if r.key in out:
            raise PromptFileError(f"{path}: file {r.key!r} appears twice")
        out[r.key] = r
    return out
