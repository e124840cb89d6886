"""Build and validate manifests: `tta data import`, `tta data check` (and `tta data recipe` when present).

This module is imported by `tta --help`: only argparse at top level, everything heavy inside functions.

`recipe` lives in `tta.data.recipes` (offline corpora). If that module exists it must expose
`add_recipe_parser(subparsers)`, which adds the `recipe` parser to the `tta data` sub-parsers and sets
`data_func=<callable(args) -> int>` as its default; `run` then dispatches to it like to the others.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path

from tta import UsageError
from tta.checkpoint import output_path

KINDS = ("folder", "audiocaps", "audioldm", "tango", "webdataset")


def add_parsers(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True
    _add_import(sub)
    _add_check(sub)
    _add_recipe(sub)


def run(args: argparse.Namespace) -> int:
    func = getattr(args, "data_func", None)
    if func is None:
        raise ValueError(f"tta data {args.data_command}: this action has no handler")
    return int(func(args) or 0)


# ------------------------------------------------------------------------------------------- import


def _add_import(sub) -> None:
    p = sub.add_parser(
        "import", help="make a manifest from a folder, AudioCaps CSV, AudioLDM JSON, Tango JSONL or WebDataset",
        description="Import a corpus into a JSONL manifest. Every file is probed; each bad item (missing, "
                    "unreadable, no caption, duplicate id) is reported on one line and skipped. Exit 0 when "
                    "at least one row was imported, else 1 (and no manifest is written).")
    p.add_argument("kind", choices=KINDS, metavar="KIND", help=f"source layout: {', '.join(KINDS)}")
    p.add_argument("source", type=Path, metavar="SOURCE",
                   help="folder (folder), CSV (audiocaps), JSON (audioldm), JSONL (tango), a shard (.tar, .tar.gz, "
                        ".tgz, ...) or a folder of them (webdataset)")
    p.add_argument("--out", required=True, type=output_path, metavar="MANIFEST", help="JSONL manifest to write")
    p.add_argument("--root", type=Path, help="folder the source's audio paths are relative to "
                   "(audiocaps: required; audioldm/tango: default the source file's folder)")
    p.add_argument("--captions", type=Path, metavar="CSV",
                   help="folder: captions CSV (file/path column + caption columns: caption, caption_1, ..., "
                        "captions, else text or prompt; optional id, split, "
                        "category, labels, licence, source, and group: rows of one group land in one split) "
                        "instead of sidecar .txt files (a.wav's captions in a.txt, one per line); a val/test "
                        "token in the CSV's name (Clotho's captions_validation.csv) holds its rows without a "
                        "split column out in that split, a train token (or Clotho's development) makes them "
                        "training rows, of which --valid-fraction holds a share out")
    p.add_argument("--audio-dir", type=output_path, help="webdataset: folder to extract audio into "
                   "(default: MANIFEST's name + '_audio' beside it); a re-run of the import writes over the "
                        "files an earlier run extracted there, and refuses a folder that holds any other file")
    p.add_argument("--split", choices=("train", "valid", "test"), help="put every row into this split")
    p.add_argument("--valid-fraction", type=float, default=0.0, metavar="F",
                   help="rows whose source names no split (a file named for training counts as naming none): "
                        "this share goes to 'valid' (hash of id; default 0)")
    p.add_argument("--source", dest="source_name", default="", metavar="NAME",
                   help="value of each row's 'source' field (e.g. the package or corpus name) where the source "
                        "names none (a 'source' CSV column or JSON field)")
    p.add_argument("--licence", default="", metavar="LICENCE",
                   help="value of each row's 'licence' field where the source names none (a 'licence' or 'license' "
                        "CSV column or JSON field, e.g. each Freesound clip's own)")
    p.add_argument("--id-prefix", default="", metavar="PREFIX",
                   help="put PREFIX before every row's id, e.g. 'clotho/', so that manifests of corpora with the "
                        "same file names can be trained together (data.extra_manifests); the split stays the one "
                        "the unprefixed id hashes to; '' (the default) is none. At most 64 characters: names "
                        "joined by '/', of printable characters other than '\\', not '.' or '..'. Files tta "
                        "writes for an id (tta generate, tta experiment retrieval) escape what a file name cannot "
                        "hold: 'clotho/a_dog' -> clotho%%2Fa_dog.wav, 'audioset:x' -> audioset%%3Ax.wav")
    p.set_defaults(data_func=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    from tta.data.importers import ImportOptions, check_import_options, import_source
    from tta.data.manifest import write_manifest

    for flag, value, kinds in (("--captions", args.captions, ("folder",)),
                               ("--root", args.root, ("audiocaps", "audioldm", "tango")),
                               ("--audio-dir", args.audio_dir, ("webdataset",))):
        if value is not None and args.kind not in kinds:
            raise UsageError(f"{flag} is only for {' / '.join(kinds)} imports, not {args.kind!r}")
    if args.kind == "audiocaps" and args.root is None:
        raise UsageError("audiocaps import needs --root (the folder holding the audio files)")
    from tta.checkpoint import check_output_path

    check_output_path(args.out, "--out")   # before any work: a WebDataset import would extract its audio first
    # before ImportOptions, whose check_numbers would refuse --valid-fraction nan or inf first, as the field
    # ("valid_fraction=nan must be a finite number"); this names the option the user typed
    check_import_options(args.split, args.valid_fraction, args.id_prefix, flags=True)
    options = ImportOptions(split=args.split, valid_fraction=args.valid_fraction, source=args.source_name,
                            licence=args.licence, id_prefix=args.id_prefix, progress=not args.quiet,
                            flags=True)   # its warnings too name the options typed, not the fields
    audio_dir = args.audio_dir
    if args.kind == "webdataset" and audio_dir is None:
        audio_dir = args.out.with_name(args.out.stem + "_audio")
    if audio_dir is not None:
        check_output_path(audio_dir, "--audio-dir", folder=True)
    made = audio_dir is not None and not audio_dir.exists()
    result = import_source(args.kind, args.source, root=args.root, captions_csv=args.captions,
                           audio_dir=audio_dir, options=options)
    from tta.config import counted

    for message in result.errors:
        print(f"tta: bad item: {message}", file=sys.stderr)
    if not result.rows:
        raise ValueError(f"{args.source}: no usable rows ({counted(len(result.errors), 'bad item')}); {args.out} not "
                         "written")
    try:
        write_manifest(args.out, result.rows)
    except BaseException:   # no manifest names the extracted audio: remove it, so the same command can run again
        if made and audio_dir.is_dir():
            import shutil

            shutil.rmtree(audio_dir)
        raise
    splits = {s: sum(r.split == s for r in result.rows) for s in ("train", "valid", "test")}
    hours = sum(r.seconds for r in result.rows) / 3600
    print(f"{args.out}: {counted(len(result.rows), 'row')} ({', '.join(f'{k} {v}' for k, v in splits.items() if v)}; "
          f"{hours:.2f} h), {counted(len(result.errors), 'bad item')} skipped")
    return 0


# -------------------------------------------------------------------------------------------- check


def _add_check(sub) -> None:
    p = sub.add_parser(
        "check", help="decode every row of a manifest and report bad ones",
        description="Decode every file of a manifest; report unreadable, empty, non-finite, silent, too-short "
                    "and mismatched rows with reasons and counts. With --near-duplicates, also compare the clips "
                    "with each other: a held-out row whose audio nearly duplicates a row of another split (same "
                    "recording at another gain, format or rate of 16 kHz or more, or cut from it) is a leak, a bad "
                    "row; "
                    "near-duplicates within one split are listed. Exit 1 if any row or line is bad.")
    p.add_argument("manifest", type=Path, metavar="MANIFEST")
    p.add_argument("--drop-bad", type=output_path, metavar="OUT",
                   help="write the good rows to OUT (a clean manifest)")
    # the defaults of check_manifest (silence: tta.audio.SILENCE_DB), written out so that --help stays light; a
    # test keeps them equal
    p.add_argument("--min-seconds", type=float, default=0.1, help="shorter clips are bad (default %(default)g)")
    p.add_argument("--silence-db", type=float, default=-60.0,
                   help="clips whose peak is below this many dBFS are silent (default %(default)g); "
                        "--silence-db=-inf: none is")
    p.add_argument("--near-duplicates", action="store_true",
                   help="also find near-duplicate clips (leaks across splits are bad rows; ~6 ms per clip)")
    p.add_argument("--against", type=Path, metavar="OTHER",
                   help="with --near-duplicates: a row that nearly duplicates a row of this manifest is a leak "
                        "too (e.g. an evaluation set checked against the training manifest)")
    p.set_defaults(data_func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    from tta.config import counted
    from tta.data.check import check_limits, check_manifest, write_clean

    check_limits(args.min_seconds, args.silence_db, seconds_tolerance=0.1, flags=True)   # before any decoding
    if args.against is not None and not args.near_duplicates:
        raise UsageError("--against needs --near-duplicates")
    if args.against is not None and args.against.is_dir():
        raise ValueError(f"--against {args.against}: is a folder, expected a manifest file (.jsonl)")
    if args.against is not None and not args.against.is_file():
        raise ValueError(f"--against {args.against}: manifest not found")
    if args.against is not None and args.against.resolve() == Path(args.manifest).resolve():
        raise ValueError(f"--against {args.against}: the manifest being checked; name another one")
    if args.drop_bad is not None:   # before minutes of decoding
        from tta.checkpoint import check_output_path

        check_output_path(args.drop_bad, "--drop-bad")
    report = check_manifest(args.manifest, min_seconds=args.min_seconds, silence_db=args.silence_db,
                            near_duplicates=args.near_duplicates, against=args.against, progress=not args.quiet)
    for problem in report.problems:
        print(f"{problem.reason}\t{problem.where}\t{problem.detail}")
    for a, b, how in report.duplicates:
        print(f"near-duplicate\t{a}\t{b}: {how}")
    if report.problems:
        width = max(len(r) for r in ["reason", *report.counts])   # "leak", "empty": shorter than the heading
        print("reason".ljust(width) + "  count")
        for reason, count in report.counts.items():
            print(f"{reason.ljust(width)}  {count}")
    print(f"{args.manifest}: {counted(report.num_rows, 'row')}, {len(report.good_rows)} good, {report.num_bad} bad")
    if args.near_duplicates:
        leaked = len({p.where for p in report.problems if p.reason == "leak"})
        where = "a held-out row with a twin in another split" + (f", or any row with one in {args.against}"
                                                                  if args.against else "")
        print(f"{args.manifest}: {counted(len(report.duplicates), 'near-duplicate pair')} within a split (kept), "
              f"{counted(leaked, 'leaked row')} ({where})")
    if report.num_rows == 0 and report.ok:
        print(f"tta: {args.manifest}: no rows (an empty manifest)", file=sys.stderr)
        return 1
    if args.drop_bad is not None:
        if report.good_rows:
            write_clean(report, args.drop_bad)
            print(f"{args.drop_bad}: {counted(len(report.good_rows), 'good row')} written")
        else:
            print(f"tta: no good rows; {args.drop_bad} not written", file=sys.stderr)
    return 0 if report.ok else 1


# ------------------------------------------------------------------------------------------- recipe


def _add_recipe(sub) -> None:
    """`tta data recipe ...` comes from tta.data.recipes when that module is part of this build."""
    try:
        found = importlib.util.find_spec("tta.data.recipes") is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        return
    add_recipe_parser = getattr(importlib.import_module("tta.data.recipes"), "add_recipe_parser", None)
    if add_recipe_parser is not None:  # absent while tta.data.recipes is only a namespace of modules
        add_recipe_parser(sub)
