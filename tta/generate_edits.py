"""`tta generate --prompts FILE --edit KIND`: a batch whose rows each edit their own input audio.

KIND is init-audio, inpaint or super-resolution, as the one-input flags; the settings (--strength; --mask;
--cutoff; --outside) are the batch's. A row names its input in its `input` field, a path relative to the
prompts file's folder (as `tta eval --prompts` reads a row's file field); its output is named as any row's.
A row without one is a bad row, not a text-to-audio one: a cell left empty would otherwise give a clip of
another kind among the edits without a word.

Every row's input is checked as --init-audio's is (its header, its length against the model's mel frame and
--mask, --cutoff against its sample rate, decoded whole) before the model loads. A bad row is reported on one
line (`tta: bad row: FILE:LINE: ...`) and the others are generated; the run exits 1 at the end naming how
many were left out, and its record says it is not complete, so a `--resume` once they are fixed generates
them alone. Rows run one at a time (each has its own input and length; --batch-size above 1 is refused), so
row i comes out as the one-input run `--init-audio WAV --seed SEED+i` writes it, byte for byte. An input is
decoded again at its turn (a batch holding every input decoded would grow with it); one changed since it was
checked is a bad row then. With --takes N a row's N takes are N rows in a row (seeds SEED + r): its input is
checked once, and a bad row is reported once and counted as one row.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tta import UsageError
from tta.generate import (GenerateError, Job, check_edit_flags, check_input_against_model, edit_input_info,
                          edit_settings, input_record, mask_end_in, prepare_input, read_edit_input)


def plan_row_edit(args: argparse.Namespace, kind: str, given: list) -> dict:
    """The edit's settings the rows share (plan_edit with --edit), "input" None: each output's record holds the
    part of its own input."""
    if given:
        raise UsageError("--edit edits each --prompts row's input; give it without --init-audio, --inpaint or "
                         "--super-resolution")
    if args.prompts_file is None or args.prompts:
        raise UsageError("--edit reads each row's input audio from the input field of a --prompts CSV/JSONL file; "
                         "give the prompts there, not as PROMPT arguments")
    if args.batch_size != 1:
        raise UsageError(f"--batch-size {args.batch_size}: --edit generates its rows one at a time (each edits its "
                         "own input); leave --batch-size out")
    check_edit_flags(args, kind)
    return {"kind": kind, "input": None, **edit_settings(args, kind)}


@dataclass
class RowEdits:
    """The rows of an --edit batch: each good row's input file and edit (what a one-input run of it records), and
    one message per bad row, by row index. `say` shows a bad row's line to the user when it is found (the
    command's printer: tta.generate's main passes one that writes it to stderr)."""
    say: Callable[[str], None]
    paths: dict[int, Path] = field(default_factory=dict)
    edits: dict[int, dict] = field(default_factory=dict)
    bad: dict[int, str] = field(default_factory=dict)
    jobs: list[Job] = field(default_factory=list)
    prompts_file: Path | None = None

    def report(self, i: int, job: Job, message: str) -> None:
        said = f"{job.where}: {message}" in self.bad.values()   # with --takes N, the row's other takes: said once
        self.bad[i] = f"{job.where}: {message}"
        if not said:
            self.say(f"tta: bad row: {self.bad[i]}")

    def bad_rows(self) -> int:
        """How many rows are bad: with --takes N a bad row's N takes are one row."""
        return len({self.jobs[i].where for i in self.bad})

    def load(self, i: int, pipe) -> tuple[dict, object, object] | None:
        """(edit, wav_in, kept) of row i once the model has loaded (prepare_input), or None for a bad row: one
        found before (reported then) or now (its input changed since it was checked: reported here)."""
        from tta.checkpoint import file_sha256

        if i not in self.edits:
            return None
        edit, path = dict(self.edits[i]), self.paths[i]
        try:
            if file_sha256(path) != edit["input_sha256"]:
                raise GenerateError(f"{edit['input']}: changed since the batch checked it (its sha256 differs); "
                                    "run the batch again with --resume to generate this row")
            wav_in, kept = prepare_input(edit, read_edit_input(edit, path), pipe)
        except (GenerateError, OSError) as e:
            message = str(e) if isinstance(e, GenerateError) else f"{edit['input']}: {e.strerror or e}"
            self.report(i, self.jobs[i], message)
            return None
        return edit, wav_in, kept

    def refuse_left_out(self, rows: int) -> None:
        """End the run with exit 1 when a row was left out (its outputs written and recorded); `rows` counts
        the prompts file's rows (with --takes N, a row's N takes are one row)."""
        n = self.bad_rows()
        raise GenerateError(f"{n} of {rows} rows of {self.prompts_file} not generated (bad input, reported above as "
                            f"'bad row'); fix {'it' if n == 1 else 'them'} and run the same command with --resume to "
                            f"generate only {'that row' if n == 1 else 'those rows'}")


def plan_rows(args: argparse.Namespace, jobs: list[Job], edit: dict, mel, say: Callable[[str], None]) -> RowEdits:
    """Each row's input checked before the model loads (`edit`: the batch's settings; `mel`: the model's mel
    frame): a bad row is reported (`say`: RowEdits') and left out; no row with an input at all, or none left, is
    refused."""
    if not any(job.input is not None for job in jobs):
        raise GenerateError(f"{args.prompts_file}: no row has an input field (--edit edits each row's input audio: "
                            "a path relative to the prompts file's folder); add an input column")
    rows = RowEdits(say, jobs=jobs, prompts_file=args.prompts_file)
    base = args.prompts_file.parent
    outputs = {job.path.resolve(): job for job in jobs}
    first: dict[str, int] = {}   # a row's first job: with --takes N its other takes edit the same input
    for i, job in enumerate(jobs):
        j = first.setdefault(job.where, i)
        if j != i:   # checked and decoded once
            if j in rows.bad:
                rows.report(i, job, rows.bad[j].removeprefix(f"{job.where}: "))
            else:
                rows.paths[i], rows.edits[i] = rows.paths[j], dict(rows.edits[j])
            continue
        try:
            rows.paths[i], rows.edits[i] = plan_row(job, edit, mel, base, outputs)
        except GenerateError as e:
            rows.report(i, job, str(e))
    if not rows.edits:
        n = rows.bad_rows()
        raise GenerateError(f"{args.prompts_file}: no row has a usable input ({n} bad row{'' if n == 1 else 's'}, "
                            "reported above); nothing generated")
    return rows


def plan_row(job: Job, edit: dict, mel, base: Path, outputs: dict) -> tuple[Path, dict]:
    """(input file, edit) of one row: its input (relative to `base`, the prompts file's folder) checked and
    decoded whole (then dropped: it is decoded again at its turn), as plan_edit and read_edit_input check
    --init-audio's. `outputs`: the batch's output files, none of which may be the input."""
    if job.input is None:
        raise GenerateError("no input field (--edit edits each row's input audio); generate rows of text alone "
                            "in a run without --edit")
    path = Path(job.input)
    path = path if path.is_absolute() else base / path
    writer = outputs.get(path.resolve())
    if writer is not None:   # the batch would overwrite it, before this row reads it or after
        raise GenerateError(f"{job.input}: is the output of {'this' if writer is job else 'another'} row "
                            f"({writer.path}); write the outputs to another folder")
    info = edit_input_info(path)
    settings = {k: v for k, v in edit.items() if k not in ("kind", "input")}
    if "end" in settings:
        settings["end"] = mask_end_in(settings["end"], path, info)
    row = {"kind": edit["kind"], **input_record(path, job.input, info), **settings}   # a one-input run's order
    check_input_against_model(row, mel)
    read_edit_input(row, path)
    return path, row


def check_row_input(record_path: Path, output: dict, i: int, job: Job, rows: RowEdits, advice: str) -> None:
    """For --resume, before the model loads: refuse to keep an earlier output made from other bytes than row i's
    input holds now (or from an input that cannot be read now), naming the row."""
    then = output.get("edit")
    if not isinstance(then, dict):   # not an --edit batch's record: check_same_run names the difference
        return
    if i in rows.bad:
        raise GenerateError(f"{record_path}: cannot resume: {output['file']} was generated from "
                            f"{then.get('input')!r} (sha256 {str(then.get('input_sha256'))[:12]}...), and "
                            f"{job.where}'s input cannot be read now; {advice}")
    now = rows.edits[i]
    if then.get("input_sha256") != now["input_sha256"]:
        raise GenerateError(f"{record_path}: cannot resume: {output['file']} was generated from "
                            f"{then.get('input')!r} (sha256 {str(then.get('input_sha256'))[:12]}...), and {job.where} "
                            f"gives {now['input']!r}, which holds other bytes now (sha256 {now['input_sha256'][:12]}"
                            f"...); {advice}")
