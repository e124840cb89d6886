"""`tta data check`: decode every row of a manifest and say which rows cannot be trained on, and why.

Reasons (a row can have several): `manifest` (a line that is not a valid row: broken JSON, no caption,
duplicate id, ...), `missing` (file not found), `empty` (0 bytes or 0 samples), `unreadable` (not audio,
truncated, unsupported sample rate), `non-finite` (NaN/inf samples), `silent` (peak below `silence_db`
dBFS), `too-short` (below `min_seconds`), `mismatch` (the decoded length or sample rate differs from what
the manifest row says), `leak` (with near-duplicate checking: a held-out row whose audio is a near-duplicate
of a row in another split, `tta.data.duplicates`; the train row is kept, the held-out one is bad; with
`against`, also any row that nearly duplicates a row of that other manifest, e.g. an evaluation set checked
against a training manifest). Near-duplicates within one split are listed but are not bad rows.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tta.audio import SILENCE_DB, AudioError, load_audio
from tta.config import check_number, counted, option_name
from tta.data.manifest import ManifestRow, read_manifest, resolve_path, write_manifest

log = logging.getLogger(__name__)

REASONS = ("manifest", "missing", "empty", "unreadable", "non-finite", "silent", "too-short", "mismatch", "leak")


@dataclass(frozen=True)
class Problem:
    where: str    # "MANIFEST:LINE" for a bad line, else the row id
    reason: str   # one of REASONS
    detail: str   # one line: what was found and what was expected


@dataclass
class CheckReport:
    manifest: Path
    num_rows: int = 0                                        # lines that parsed into rows
    good_rows: list[ManifestRow] = field(default_factory=list)  # with absolute paths
    problems: list[Problem] = field(default_factory=list)
    duplicates: list[tuple[str, str, str]] = field(default_factory=list)  # same-split near-duplicates: id, id, how

    @property
    def counts(self) -> dict[str, int]:
        """Bad items per reason (a row with two problems counts under both, a row with one reason twice once)."""
        c = Counter(reason for _, reason in {(p.where, p.reason) for p in self.problems})
        return {r: c[r] for r in REASONS if c[r]}

    @property
    def num_bad(self) -> int:
        """Rows (and unparsable lines) with at least one problem."""
        return len({p.where for p in self.problems})

    @property
    def ok(self) -> bool:
        return not self.problems


def classify_audio_error(message: str) -> str:
    """Reason for an AudioError raised by `tta.audio.load_audio` (its messages are the contract here)."""
    if "file not found" in message:
        return "missing"
    if "(0 bytes)" in message or "contains 0 samples" in message:
        return "empty"
    if "non-finite" in message:
        return "non-finite"
    return "unreadable"


def check_row(row: ManifestRow, path: Path, *, min_seconds: float, silence_db: float,
              seconds_tolerance: float, on_audio=None) -> list[Problem]:
    """Decode one row's audio (native rate, no normalisation) and list its problems; `on_audio(wav, sr)` sees
    the decoded audio."""
    try:
        wav, sr = load_audio(path)
    except AudioError as e:
        return [Problem(row.id, classify_audio_error(str(e)), str(e))]
    if on_audio is not None:
        on_audio(wav, sr)
    out = []
    seconds = wav.shape[0] / sr
    peak = float(np.max(np.abs(wav)))
    peak_db = 20 * np.log10(peak) if peak > 0 else -np.inf
    if peak_db < silence_db:
        out.append(Problem(row.id, "silent", f"{path}: peak {peak_db:.1f} dBFS is below {silence_db:g} dBFS"))
    if seconds < min_seconds:
        out.append(Problem(row.id, "too-short", f"{path}: {seconds:.3f} s is shorter than {min_seconds:g} s"))
    if abs(seconds - row.seconds) > seconds_tolerance:
        out.append(Problem(row.id, "mismatch", f"{path}: decodes to {seconds:.3f} s, the manifest says "
                                               f"{row.seconds:.3f} s"))
    elif sr != row.sample_rate:
        out.append(Problem(row.id, "mismatch", f"{path}: file is {sr} Hz, the manifest says {row.sample_rate} Hz"))
    return out


def check_limits(min_seconds, silence_db, seconds_tolerance, *, flags: bool = False) -> tuple[float, float, float]:
    """`check_manifest`'s limits as numbers in range, or a ValueError naming the bad one and what it takes:
    min_seconds a finite number >= 0, silence_db <= 0 dBFS, seconds_tolerance >= 0 (silence_db=-inf and
    seconds_tolerance=inf turn their checks off). A silence_db above 0 made every clip silent, a negative
    tolerance every row a mismatch, without a word. `flags`: the bad one is named as `tta data check`'s option
    (`--silence-db 3.0`), not as an argument (`silence_db=3.0`); the options take what the arguments take."""
    def limit(key: str, value, finite: bool, in_range, expected: str) -> float:
        try:   # given in Python, a str failed part-way on "'<' not supported" or numpy's "ufunc 'less' ..."
            number = check_number(value, float, key, finite=finite)
        except ValueError:   # a str, None, NaN, or an infinity where a finite number is needed
            number = None
        if number is None or not in_range(number):
            shown = option_name(key, flags, str(value) if flags else repr(value))
            raise ValueError(f"{shown}: expected {expected}")
        return number

    return (limit("min_seconds", min_seconds, True, lambda x: x >= 0, "a finite number of seconds >= 0"),
            limit("silence_db", silence_db, False, lambda x: x <= 0,
                  "a level in dBFS <= 0 (-inf: no clip is silent)"),
            limit("seconds_tolerance", seconds_tolerance, False, lambda x: x >= 0,
                  "a number of seconds >= 0 (inf: lengths are not compared)"))


def check_manifest(manifest: str | os.PathLike, *, min_seconds: float = 0.1, silence_db: float = SILENCE_DB,
                   seconds_tolerance: float = 0.1, near_duplicates: bool = False,
                   against: str | os.PathLike | None = None, progress: bool = True) -> CheckReport:
    """Check every line and every row of `manifest`; never stops at the first bad one. `near_duplicates` also
    compares the decoded clips with each other (`tta.data.duplicates`), and with the clips of the manifest
    `against` when given."""
    min_seconds, silence_db, seconds_tolerance = check_limits(min_seconds, silence_db, seconds_tolerance)
    manifest = Path(manifest)
    line_errors: list[str] = []
    rows = read_manifest(manifest, errors=line_errors)
    report = CheckReport(manifest, num_rows=len(rows))
    for message in line_errors:   # "<manifest>:<line>: ...": the path itself may hold ": "
        line = re.match(r"(\d+):", message[len(str(manifest)) + 1:]) if message.startswith(f"{manifest}:") else None
        where = f"{manifest}:{line.group(1)}" if line else message.split(": ", 1)[0]
        # the detail without the place, which `where` holds: `tta data check` printed "m.jsonl:22" twice
        detail = message[len(where) + 2:] if message.startswith(f"{where}: ") else message
        report.problems.append(Problem(where, "manifest", detail))
    prints: list = []
    for row in tqdm(rows, desc=f"check {manifest.name}", unit="file", disable=not progress):
        path = resolve_path(row, manifest)
        audio: list = []
        problems = check_row(row, path, min_seconds=min_seconds, silence_db=silence_db,
                             seconds_tolerance=seconds_tolerance,
                             on_audio=(lambda w, sr: audio.append((w, sr))) if near_duplicates else None)
        report.problems += problems
        if not problems:
            report.good_rows.append(replace(row, path=str(path)))
            if near_duplicates:
                from tta.data.duplicates import fingerprint

                prints.append(fingerprint(*audio[0]))
    if near_duplicates or against is not None:
        _near_duplicates(report, prints, progress, against)
    log.info("%s: %s, %d bad", manifest, counted(report.num_rows, "row"), report.num_bad)
    return report


def _how(pair, flip: bool = False) -> str:
    """The pair's scores; the offset is where the second clip's sound starts in the first's (flip: the other way)."""
    offset = -pair.offset_seconds if flip else pair.offset_seconds
    return (f"image {pair.image:.3f}, motion {pair.motion:.3f}, offset {offset:+.2f} s, "
            f"{100 * pair.cover:.0f} % of the shorter clip")


def _near_duplicates(report: CheckReport, prints: list, progress: bool, against=None) -> None:
    """Add the near-duplicates among the good rows: across splits a `leak` problem on the held-out row (which
    leaves the good rows), within a split an entry of report.duplicates; with `against` (a manifest), a `leak`
    on every row with a twin there."""
    from tta.data.duplicates import find_near_duplicates, fingerprint, held_out_member

    rows = report.good_rows
    leaked: set[int] = set()
    if against is not None:
        against = Path(against)
        others, other_rows, unreadable, bad_lines = [], [], 0, []
        for row in tqdm(read_manifest(against, errors=bad_lines), desc=f"read {against.name}", unit="file",
                        disable=not progress):
            try:
                others.append(fingerprint(*load_audio(resolve_path(row, against))))
                other_rows.append(row)
            except AudioError:
                unreadable += 1
        if unreadable or bad_lines:
            log.warning("%s: %s left out of the comparison (not readable or not decodable)", against,
                        counted(unreadable + len(bad_lines), "row"))
        for pair in find_near_duplicates(prints, others, progress=progress):
            twin = other_rows[pair.b]
            leaked.add(pair.a)
            report.problems.append(Problem(rows[pair.a].id, "leak", f"{rows[pair.a].path}: near-duplicate of "
                                           f"{twin.id} ({twin.split}) in {against}: {_how(pair)}"))
    splits = [r.split for r in rows]
    for pair in find_near_duplicates(prints, progress=progress):
        bad = held_out_member(pair, splits)
        if bad is None:
            report.duplicates.append((rows[pair.a].id, rows[pair.b].id, _how(pair)))
            continue
        twin = rows[pair.b] if bad == pair.a else rows[pair.a]
        how = _how(pair, flip=bad == pair.b)   # where the twin's sound starts in the held-out clip's terms
        leaked.add(bad)
        report.problems.append(Problem(rows[bad].id, "leak", f"{rows[bad].path}: ({rows[bad].split}) is a "
                                       f"near-duplicate of {twin.id} ({twin.split}): {how}"))
    report.good_rows = [r for i, r in enumerate(rows) if i not in leaked]


def write_clean(report: CheckReport, out: str | os.PathLike) -> Path:
    """Write the good rows of `report` as a new manifest (atomically; paths stay valid from its folder)."""
    if not report.good_rows:
        raise ValueError(f"{report.manifest}: no good rows; not writing an empty manifest to {out}")
    return write_manifest(out, report.good_rows)
