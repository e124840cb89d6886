"""Prompt files for `tta eval`: which prompt (and category) belongs to which generated file.

The file is read by tta.data.prompts (the reader `tta generate` and `tta clap` share). CSV/JSONL rows name
their file by a file column (file/path/audio/name) or by `id` — matched against the audio file name
without its suffix, or its path relative to the folder without suffix; an id as `tta generate` names its file
(`tta.data.prompts.id_file_name`: 'clotho/a_dog' -> 'clotho%2Fa_dog'), else as a path — and may carry a
`category`. A `.txt` file is one prompt per line, and a CSV/JSONL file none of whose rows has a file or id field
one prompt per row: both are matched to the generated files by position (tta.data.prompts.position_order): in
the order of the run whose generation.json lists them all (a row's `--takes N` files pair with it), else one file
per row in the order of their leading number when all have one (`tta generate`'s `NNN_<slug>` names), else
sorted by name where no number in the names says otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tta.data.prompts import (PromptFileError, RecordedOutput, file_key, id_file_name, position_order,
                              read_prompt_file)

__all__ = ["PromptFileError", "PromptRow", "read_prompts"]


@dataclass(frozen=True)
class PromptRow:
    key: str  # file stem the row belongs to: its file field's, or its id's file name (id_file_name)
    prompt: str
    category: str | None = None
    id: str | None = None   # the row's id, as written


def read_prompts(path: str | os.PathLike, names: list[str] | None = None,
                 recorded: Mapping[str, RecordedOutput] | None = None) -> dict[str, PromptRow]:
    """Prompt rows keyed by file key. `names` (sorted generated keys) is needed for .txt files; `recorded` (the
    generated folder's `recorded_outputs`) pairs them in its run's order."""
    path = Path(path)
    rows = read_prompt_file(path)
    by_position = path.suffix.lower() == ".txt" or all(r.file is None and r.id is None for r in rows)
    if by_position:   # `tta generate` names such rows' outputs NNN_<slug>, in file order
        what = "a .txt prompt file" if path.suffix.lower() == ".txt" else "a prompt file without file or id fields"
        order = position_order(Path(f"{path} ({what})"), names or [], len(rows), recorded or {})
        keyed = [PromptRow(n, rows[i].prompt, rows[i].category, rows[i].id) for n, i in order]
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
