"""`tta generate --resume`: finish a `--prompts ... --out-dir` batch that stopped part-way.

Before the model loads, `read_earlier_run` reads the out-dir's generation.json and checks its model (by its files'
sha256), --seed and the rows it wrote against this run's; once the model has loaded, `resume_batch` checks the
rest of the record (`check_same_run`), picks the outputs to keep (`kept_outputs`: the files that still hold the
bytes it records, whole batches only) and says what ran before (`earlier_runs`), and `remove_leftovers` removes
the temporary files a killed run left (a plain --out-dir run calls it too). tta.generate writes the rest.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from tta.generate import GenerateError, Job, component_hashes, record_path_of

log = logging.getLogger("tta.generate")   # tta generate's messages, under its name as before they moved here

# what a resumed run's record must share with the earlier one (the model by its files' sha256, not its path; an
# edit's input by its sha256; a datastore by its datastore.json); the rest (command, paths, tta and python
# versions, wall time) may differ
RESUME_CHECKED = ("torch", "diffusers", "model_files_sha256", "model_defaults", "settings", "clap_score_model",
                  "retrieval", "edit")
RESUME_ADVICE = "run it as the earlier run did (its command is in the record), or without --resume to generate every " \
                "row again"


def _refused(path: Path, difference: str, advice: str = RESUME_ADVICE) -> GenerateError:
    return GenerateError(f"{path}: cannot resume another run (first difference at {difference}); {advice}")


def read_earlier_run(args: argparse.Namespace, jobs: list[Job], folder: Path, spec: dict,
                     row_edits=None) -> dict | None:
    """For --resume, before the model loads: the earlier run's generation.json in the --out-dir, its model (by
    its files' sha256; `spec`: the model folder's pipeline.json), --seed and the rows it wrote checked against
    this run's (with --edit, `row_edits`: tta.generate_edits.RowEdits, each row's input by its sha256 too); None when
    there is none (a plain run). A GenerateError names the first difference."""
    from tta.audio import is_save_format, save_format_names
    from tta.config import shortened

    path = record_path_of(jobs[0].path.parent, single=False)
    if not path.is_file():
        log.info("%s: nothing to resume (no %s): generating every row", path.parent, path.name)
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        why = None if isinstance(record, dict) else "not a JSON object"
    except (OSError, ValueError) as e:
        record, why = None, f"{type(e).__name__}: {e}"
    if why is None:
        outputs = record.get("outputs")
        if not isinstance(record.get("settings"), dict) or not isinstance(record.get("model_files_sha256"), dict):
            why = "no settings or model_files_sha256"
        elif not isinstance(outputs, list) or not all(
                isinstance(o, dict) and all(isinstance(o.get(k), str) for k in ("file", "id", "prompt"))
                and isinstance(o.get("seeds"), list) and o["seeds"] and type(o["seeds"][0]) is int for o in outputs):
            why = "its outputs are not a list of objects with file, id, prompt and seeds"
        elif not (isinstance(record.get("earlier_runs", []), list)
                  and all(isinstance(r, dict) for r in record.get("earlier_runs", []))):
            why = "its earlier_runs is not a list of objects"
        elif not is_save_format(record["settings"].get("format", "wav")):
            why = f"its settings.format is {json.dumps(record['settings']['format'])}, not {save_format_names('')}"
    if why is not None:
        raise GenerateError(f"{path}: not a tta generate record that --resume can read ({why}); move it away, or run "
                            "without --resume to generate every row again")
    then_format, now_format = record["settings"].get("format", "wav"), jobs[0].path.suffix[1:]
    if then_format != now_format:   # a record without the field is of a tta whose batches wrote wav
        raise GenerateError(f"{path}: cannot resume: the earlier run wrote {then_format} files and this one writes "
                            f"{now_format} (--format {now_format}); run it with --format {then_format}, or without "
                            f"--format (--resume continues in the recorded format), or write the {now_format} files "
                            "to a new --out-dir")
    now = component_hashes(Path(folder).resolve(), spec)
    for name in sorted(set(now) | set(record["model_files_sha256"])):
        then = record["model_files_sha256"].get(name)
        if then != now.get(name):
            raise _refused(path, f"'model_files_sha256.{name}': {then!r} saved, {now.get(name)!r} now")
    if record["settings"].get("seed") != args.seed:
        raise _refused(path, f"'settings.seed': {record['settings'].get('seed')!r} saved, {args.seed!r} now")
    where = args.prompts_file if args.prompts_file is not None else "the prompts given"
    then_takes, now_takes = record["settings"].get("takes", 1), getattr(args, "takes", 1)
    advice = takes_advice(then_takes, now_takes, len(jobs) // now_takes)
    rows = {job.path.name: (i, job) for i, job in enumerate(jobs)}
    for o in record["outputs"]:
        if o["file"] not in rows:
            renamed = renamed_take(o, rows, then_takes, now_takes)
            if renamed is not None:
                ext = now_format
                raise GenerateError(f"{path}: cannot resume: the earlier run wrote {o['file']} (id {o['id']!r}), which "
                                    f"no row of {where} names now: a row named by its file or id writes NAME.{ext} "
                                    f"with --takes 1 and NAME_1.{ext} .. NAME_N.{ext} with more, so with --takes "
                                    f"{now_takes} its row writes {renamed}; run it with --takes {then_takes} as the "
                                    "earlier run did, write the takes to a new --out-dir, or run without --resume to "
                                    "generate every row again")
            raise GenerateError(f"{path}: cannot resume: the earlier run wrote {o['file']} (id {o['id']!r}), which no "
                                f"row of {where} names now; {advice}")
        i, job = rows[o["file"]]
        for what, then, given in (("id", o["id"], job.id), ("prompt", o["prompt"], job.prompt)):
            if then != given:
                raise GenerateError(f"{path}: cannot resume: {o['file']} was generated for the {what} "
                                    f"{shortened(repr(then))}, and {where} gives {shortened(repr(given))} now; "
                                    f"{advice}")
        if o["seeds"][0] != args.seed + i:   # row i takes seed + i: a row added or removed before it moved it
            raise GenerateError(f"{path}: cannot resume: {o['file']} was generated as row {o['seeds'][0] - args.seed} "
                                f"(seed {o['seeds'][0]}), and it is row {i} of {where} now; {advice}")
        if row_edits is not None:
            from tta.generate_edits import check_row_input

            check_row_input(path, o, i, job, row_edits, advice)
    return record


def recorded_format(path: Path) -> str | None:
    """The format of the outputs the batch record at `path` lists (settings.format; a record without it is of a
    tta whose batches wrote wav), None where there is none or it says none of save_audio's formats
    (read_earlier_run names what is wrong with it)."""
    from tta.audio import is_save_format

    try:
        fmt = json.loads(path.read_text(encoding="utf-8"))["settings"].get("format", "wav")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return fmt if is_save_format(fmt) else None


def takes_advice(then, now, prompts: int) -> str:
    """What a refused --resume advises: with --takes changed (`then` the earlier run's, an older record's 1) the
    cause too. The rows decide, as for any batch: more takes of one prompt are rows added at the end, and
    resume; of several prompts (`prompts`: this run's) they move every later prompt's takes to other rows and
    seeds; fewer takes of one prompt leave the earlier run's last takes no row. (A named row's file, renamed
    when --takes passes 1, is renamed_take's.)"""
    if then == now or prompts == 1 and now > then:   # not the cause
        return RESUME_ADVICE
    if prompts == 1:
        cause = (f"the earlier run wrote --takes {then} of its prompt and this one --takes {now}: its takes "
                 f"{now + 1} to {then} are no rows of this run")
    else:
        cause = (f"the earlier run wrote --takes {then} of each prompt and this one --takes {now}: each prompt's "
                 "takes are consecutive rows, so the takes of every prompt after the first move to other rows and "
                 "seeds")
    return f"{cause}; run it with --takes {then} as the earlier run did, or without --resume to generate every row again"


def renamed_take(output: dict, rows: dict, then, now) -> str | None:
    """The file this run (--takes `now`) writes for the earlier run's (--takes `then`) `output` of a named row
    when --takes passed 1 (door.wav and door_1.wav, the same row's prompt), else None. `rows`: this run's rows
    by file name, (index, Job)."""
    import re

    stem, dot, suffix = output["file"].rpartition(".")
    if not dot or then == now or 1 not in (then, now):
        return None
    if then == 1:
        name = f"{stem}_1.{suffix}"
    else:
        match = re.fullmatch(r"(.+)_[0-9]+", stem)
        name = f"{match[1]}.{suffix}" if match else None
    return name if name in rows and rows[name][1].prompt == output["prompt"] else None


def check_same_run(record: dict, header: dict, path: Path) -> None:
    """Refuse to resume when the earlier `record` ran other settings, model defaults, CLAP, retrieval, edit or
    torch than this run's record `header` says, naming the first difference (as `tta train --resume` does)."""
    from tta.training import _first_diff

    def checked(d: dict) -> dict:
        out = {k: d.get(k) for k in RESUME_CHECKED}
        if isinstance(out["settings"], dict):   # --takes: read_earlier_run's row checks decide (more takes of one
            # prompt are rows added at the end); the format is read_earlier_run's (a record without it is of wav)
            out["settings"] = {k: v for k, v in out["settings"].items() if k not in ("takes", "format")}
        if isinstance(out["edit"], dict):   # the input by its sha256, wherever it is now; the seconds sampled
            # follow from the rest and are recorded only once a batch has run
            out["edit"] = {k: v for k, v in out["edit"].items() if k not in ("input", "sampled_seconds")}
        if isinstance(out["retrieval"], dict):   # the datastore by its datastore.json (what it was built from and
            # how), wherever it is now, as the model is by its files and an edit's input by its sha256
            out["retrieval"] = {k: v for k, v in out["retrieval"].items() if k != "datastore"}
        return out

    then, now = checked(record), json.loads(json.dumps(checked(header)))   # as JSON holds them: lists, not tuples
    if then != now:
        difference = _first_diff(then, now)
        for flag in ("threads", "device"):   # picked by the machine where the flag is left out: the earlier run's
            # command, run here, picks another
            if difference.startswith(f"'settings.{flag}'"):
                raise _refused(path, difference, f"pass --{flag} {then['settings'][flag]} as the earlier run ran (the "
                                                 "output's bytes depend on it), or run without --resume to generate "
                                                 "every row again")
        raise _refused(path, difference)


def kept_outputs(record: dict, jobs: list[Job], batch_size: int) -> dict[int, dict]:
    """The earlier run's outputs --resume keeps, by row index (their records as it wrote them): a file kept holds
    the bytes its record's sha256 says, and a batch of --batch-size rows is kept only whole: its rows come out as
    they did only generated together (the earlier run's last batch, before rows were added after it, is generated
    again with them). A WAV of a record without `pcm_rounding` is not kept: a tta before it put each 16-bit
    sample on the step below, and this run writes the nearest (tta.audio.PCM_ROUNDING); it also ranked
    candidates on the audio before the file's gain, where this one ranks them as the file holds them
    (tta.generate.rank_written: every tta that records pcm_rounding does). Such a record is of a tta whose
    batches wrote only WAVs, so none of its outputs is kept (records of a tta before --resume, which named no
    sha256, among them). The rest are named in a warning and generated again. Any format's file (--format) is
    kept by its sha256: save_audio writes the same bytes for the same samples (Ogg's serial number included), with
    the same libsndfile for a FLAC or Ogg (its encoders'); the sha256 is of the very file the earlier run wrote,
    so another libsndfile since changes none of the files kept, only those this run writes anew."""
    from tta.audio import PCM_ROUNDING
    from tta.checkpoint import file_sha256

    rows = {job.path.name: i for i, job in enumerate(jobs)}
    kept: dict[int, dict] = {}
    missing, changed, rounded = [], [], []
    for o in record["outputs"]:
        i = rows[o["file"]]
        path = jobs[i].path
        if not path.is_file():
            missing.append(o["file"])
            continue
        if record.get("pcm_rounding") != PCM_ROUNDING:   # a tta before it wrote only WAV batches
            rounded.append(o["file"])
            continue
        if file_sha256(path) != o.get("sha256"):   # every record with pcm_rounding names its outputs' sha256
            changed.append(o["file"])
            continue
        kept[i] = o
    folder = jobs[0].path.parent
    if missing:
        log.warning("%s: %d output%s the earlier record lists %s missing (e.g. %s): generating %s again", folder,
                    len(missing), "" if len(missing) == 1 else "s", "is" if len(missing) == 1 else "are", missing[0],
                    "it" if len(missing) == 1 else "them")
    if changed:
        log.warning("%s: %d output%s the earlier record lists no longer hold%s what it says (e.g. %s; replaced or "
                    "changed since): generating %s again", folder, len(changed), "" if len(changed) == 1 else "s",
                    "s" if len(changed) == 1 else "", changed[0], "it" if len(changed) == 1 else "them")
    if rounded:
        log.warning("%s: %d output%s the earlier record lists %s written by a tta that put each 16-bit sample on the "
                    "step below (e.g. %s): generating %s again, with each sample on the nearest step as this run "
                    "writes the rest", folder, len(rounded), "" if len(rounded) == 1 else "s",
                    "was" if len(rounded) == 1 else "were", rounded[0], "it" if len(rounded) == 1 else "them")
    regrouped = []
    for start in range(0, len(jobs), batch_size):   # a batch's rows are generated together: whole or not at all
        chunk = range(start, min(start + batch_size, len(jobs)))
        if any(i not in kept for i in chunk):
            regrouped += [jobs[i].path.name for i in chunk if kept.pop(i, None) is not None]
    if regrouped:
        log.info("%s: %d kept output%s generated again with the rest of %s batch of --batch-size %d (e.g. %s): a "
                 "batch's rows come out as they did only generated together", folder, len(regrouped),
                 "" if len(regrouped) == 1 else "s", "its" if len(regrouped) == 1 else "their", batch_size,
                 regrouped[0])
    return kept


def resume_batch(earlier: dict, args: argparse.Namespace, jobs: list[Job], header: dict, record_path: Path,
                 edit: dict | None) -> dict[int, dict]:
    """Once the model has loaded: check the earlier run's `record` against this run's record `header`
    (check_same_run) and return the outputs kept (kept_outputs), by row index. An edit takes the seconds the
    earlier run sampled; a run that keeps outputs lists the runs before it in `args.earlier_runs`."""
    check_same_run(earlier, header, record_path)
    records = kept_outputs(earlier, jobs, args.batch_size)
    if edit is not None and "sampled_seconds" in earlier["edit"]:   # check_same_run: the same edit
        # recorded once a batch has run: a resume that keeps every output runs none
        edit["sampled_seconds"] = earlier["edit"]["sampled_seconds"]
    if records:   # the record this run writes describes the earlier runs' outputs too: say what they ran
        args.earlier_runs = earlier_runs(earlier)
    log.info("%s: resuming: %d of %d outputs kept, %d to generate", record_path.parent, len(records), len(jobs),
             len(jobs) - len(records))
    return records


def earlier_runs(earlier: dict) -> list[dict]:
    """The runs before this one, oldest first: those the earlier record lists, then the earlier run itself
    (command, cwd, tta version, libsndfile and wall seconds of each: the files a run wrote in FLAC or Ogg are its
    libsndfile's encoders' bytes, and the record's own `libsndfile` is this run's; None where a record named
    none)."""
    return [*earlier.get("earlier_runs", []),
            {k: earlier.get(k) for k in ("command", "cwd", "tta_version", "libsndfile", "wall_seconds")}]


def remove_leftovers(jobs: list[Job], record_path: Path, *, folder_locked: bool = True) -> None:
    """Remove the temporary files a run of this batch left when it was killed while writing an output or the
    record (SIGKILL, the out-of-memory killer: no clean-up runs): only those named as tta's atomic writer names
    the temporary files of this batch's outputs and generation.json (tta.checkpoint.leftover_temps), never
    another file of the folder. A --resume, a plain --out-dir run and a -o FILE run call it (a plain run writes
    those files again), once the model has loaded and the folder (-o: the file, tta.generate.lock_output) is
    locked. A -o run (not `folder_locked`: other -o runs may write beside it) leaves the `.tta.` files of names
    too long to repeat, which may be another file's."""
    from tta.checkpoint import leftover_temps

    left = leftover_temps([*(job.path for job in jobs), record_path], shared=folder_locked)
    for path in left:
        try:
            path.unlink(missing_ok=True)
        except OSError as e:
            log.warning("%s: cannot remove this temporary file a stopped run left (%s)", path, e.strerror or e)
    if left:
        log.info("%s: removed %d temporary file%s a stopped run left (e.g. %s)", record_path.parent, len(left),
                 "" if len(left) == 1 else "s", left[0].name)
