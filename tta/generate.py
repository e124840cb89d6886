"""`tta generate`: prompts -> audio files + a generation.json recording everything that produced them.

Every argument, the output paths, the model folder and any edit input are checked before the model is
loaded, so a typo costs nothing. Outputs are written atomically as they are finished.

Output naming: `-o FILE` (one prompt) writes FILE and `<FILE stem>.generation.json` beside it; otherwise each
prompt goes to `<out-dir>/<name>.<format>` (the base name of a prompts file row's file field without its audio
suffix, else its id as `tta.data.prompts.id_file_name` writes it, else `NNN_<slug>`; --format: one of
tta.audio.SAVE_FORMATS, wav, flac or ogg, recorded in the record's settings, which a --resume continues in)
and the record to `<out-dir>/generation.json`. `--takes N` is the run with each prompt written N times in a
row (row r takes seed SEED + r): a row named by its file or id names its takes `<name>_1` .. `<name>_N`, an
unnamed one `NNN_<slug>` by row as repeated rows are. `--resume` keeps the outputs an earlier run of the same
batch wrote into the out-dir (its record lists them with their sha256) and generates the rest
(tta.generate_resume). `--edit KIND` edits each --prompts row's own input audio, its `input` field
(tta.generate_edits).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import re
import sys
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tta import UsageError
from tta.data.prompts import id_file_name, id_name_problem, name_problem, slug

log = logging.getLogger(__name__)

DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "default"
QUIET_GAIN = 0.1   # an output turned down more than this to fit full scale is reported (a broken sample)
EDIT_HEADROOM = 0.9   # an edit's input louder than this x the peak is turned down to it, to leave room beside it
RECORD_EVERY = 10.0   # seconds between rewrites of generation.json while a batch run goes on
MAX_TAKES = 10_000    # --takes: each take is a file (a typo such as 10**9 would plan that many rows in memory)


class GenerateError(ValueError):
    """A bad `tta generate` argument or input (one line, exit 1)."""


@dataclass(frozen=True)
class Job:
    id: str        # the row's id as written (its file name is id_file_name's), else the output's name
    prompt: str
    path: Path
    input: str | None = None   # with --edit: the row's input field as written (the audio it edits)
    where: str = ""            # "prompts file:line" of a prompts file's row, for messages
    take: int = 1              # with --takes N: which of its row's N takes (1..N)
    file: str | None = None    # a prompts file row's file field as written (its output's name, without suffix)
    unread: tuple[str, ...] = ()   # a prompts file row's fields tta generate does not read (warn_unread_fields)


# ----------------------------------------------------------------------------------------- prompts


def read_prompts_file(path: Path, *, editing: bool = False) -> list[tuple[str | None, str, str | None]]:
    """(output name or None, prompt, id or None) of each row of a prompt file (tta.data.prompts: .txt, .csv or
    .jsonl). A row names its output as `tta eval --prompts` pairs it: by its file column (file/path/audio/name;
    the base name without an audio suffix) when it has one, else by its id as `id_file_name` writes it (an id
    with '/' or ':' is escaped); None for neither. Warns of the fields tta generate does not read
    (warn_unread_fields; `editing`: the run has --edit, which reads the rows' input field)."""
    read = prompt_rows(path)
    warn_unread_fields(path, [row for _, row in read], editing=editing)
    return [pair for pair, _ in read]


def prompt_rows(path: Path) -> list[tuple[tuple[str | None, str, str | None], object]]:
    """read_prompts_file's (name, prompt, id) of each row beside the row itself (tta.data.prompts.PromptRow: its
    input field, line and the fields tta generate does not read)."""
    from tta.data.prompts import file_key, read_prompt_file

    rows = read_prompt_file(path)
    # a path's base name: tta eval pairs a generated file by it too
    return [((Path(file_key(row.file)).name if row.file is not None else
              None if row.id is None else id_file_name(row.id), row.prompt, row.id), row) for row in rows]


def warn_unread_fields(path: Path, rows: list, *, editing: bool) -> None:
    """Warn once of the fields of prompts file `path` that tta generate does not read: a "seed" or "seconds" column
    would otherwise be ignored without a word, as would an input column without --edit (`editing`). `rows`: its
    rows (PromptRow), or the Jobs made of them (each carries its row's unread field names and input). tta generate
    calls it once the run is sure to run (a refused run prints only its error), as warn_other_audio is."""
    unread = sorted({name for row in rows for name in row.unread} | (
        set() if editing or all(row.input is None for row in rows) else {"input"}))
    if unread:
        log.warning("%s: tta generate does not read its field%s %s; a row gives a prompt, and a file name or id "
                    "(seeds, lengths and settings come from the command line%s)", path,
                    "" if len(unread) == 1 else "s", ", ".join(unread),
                    "; an input is read with --edit KIND, which edits each row's input" if "input" in unread else "")


def plan_jobs(args: argparse.Namespace) -> list[Job]:
    pairs: list[tuple[str | None, str, str | None]] = [(None, p, None) for p in args.prompts]
    rows = [None] * len(pairs)   # the prompts file's row of each pair (its input and line), None for a PROMPT
    if args.prompts_file is not None:
        read = prompt_rows(args.prompts_file)
        pairs += [pair for pair, _ in read]
        rows += [row for _, row in read]
    if not pairs:
        raise UsageError("no prompts: give PROMPT arguments or --prompts FILE")
    if args.output is not None and args.out_dir is not None:
        raise UsageError("give either -o FILE or --out-dir DIR, not both")
    if args.output is not None and getattr(args, "resume", False):
        raise UsageError("--resume continues a --out-dir batch; -o FILE writes one clip: run it again without "
                         "--resume")
    takes = getattr(args, "takes", 1)
    given_format = getattr(args, "format", None)
    if args.output is not None and given_format is not None and args.output.suffix.lower() != f".{given_format}":
        raise UsageError(f"-o {args.output} and --format {given_format} disagree: with -o FILE the file's suffix is "
                         f"the format; leave --format out, or write to a .{given_format} file")
    if args.output is not None:
        if len(pairs) != 1:
            raise UsageError(f"-o FILE takes exactly one prompt, got {len(pairs)}; use --out-dir DIR")
        if takes != 1:   # as a prompt given N times: -o writes one clip and the record beside it
            raise UsageError(f"-o FILE writes one clip, --takes {takes} writes {takes}; use --out-dir DIR (each take "
                             "is a file there)")
        check_writable_file(args.output)
        record = record_path_of(args.output, single=True)
        check_output_path(record)
        return [Job(pairs[0][2] or pairs[0][0] or slug(pairs[0][1]), pairs[0][1], args.output, *row_fields(rows[0]),
                    unread=() if rows[0] is None else rows[0].unread)]
    out_dir = args.out_dir if args.out_dir is not None else Path(".")
    check_writable_dir(out_dir)
    fmt = batch_format(args, out_dir)
    jobs = []
    where = f"{args.prompts_file}: " if args.prompts_file is not None else ""   # ids come from that file
    # --takes N: each prompt N times in a row, row r (of the rows so written) taking seed SEED + r
    pairs = [(pair, take) for pair in pairs for take in range(1, takes + 1)]
    rows = [row for row in rows for _ in range(takes)]
    width = max(3, len(str(len(pairs) - 1)))  # names sort in prompt order, also past 1000 prompts
    seen: dict[str, str] = {}   # case-folded NFC name -> name: one file on macOS and Windows file systems
    for i, ((given, prompt, id_), take) in enumerate(pairs):
        name = given if given is not None else f"{i:0{width}d}_{slug(prompt)}"   # tta eval pairs by it
        problem = None if id_ is not None and given == id_file_name(id_) else name_problem(name)
        if problem:   # a file field's base name is used as written (tta eval pairs it so); an id is escaped
            raise GenerateError(f"{where}output name {name!r} (a row's file field) cannot be a file name: it "
                                f"{problem}; rename it there, or leave the field out to name the output by the "
                                "row's id")
        suffix = f"_{take}" if takes > 1 and given is not None else ""   # a named row's takes: door_1, door_2
        name += suffix
        too_long = id_name_problem(id_, f"{suffix}.{fmt}") if id_ is not None and given == id_file_name(id_) else None
        if too_long:   # named here: check_output_path's message would name only the escaped file
            raise GenerateError(f"{where}{too_long}")
        folded = unicodedata.normalize("NFC", name).casefold()
        if folded in seen:
            how = "twice" if seen[folded] == name else f"twice, as {seen[folded]!r} and {name!r} (one file where " \
                                                        f"case does not count)"
            raise GenerateError(f"{where}output name {name!r} (a row's file field, as its base name, or its id"
                                f"{', with its take number' if suffix else ''}) appears {how}; each row's output "
                                "needs its own name")
        seen[folded] = name
        jobs.append(Job(id_ if id_ is not None else name, prompt, out_dir / f"{name}.{fmt}", *row_fields(rows[i]),
                        take=take, file=None if rows[i] is None else rows[i].file,
                        unread=() if rows[i] is None else rows[i].unread))
        check_output_path(jobs[-1].path)
    check_output_path(record_path_of(out_dir, single=False))
    return jobs


def batch_format(args: argparse.Namespace, out_dir: Path) -> str:
    """The format of a batch's files: --format; without it a --resume's is the one the out-dir's generation.json
    records (read again and checked by read_earlier_run once the folder is locked), any other run's wav."""
    given = getattr(args, "format", None)
    if given is not None or not getattr(args, "resume", False):
        return given or "wav"
    from tta.generate_resume import recorded_format

    return recorded_format(record_path_of(out_dir, single=False)) or "wav"


def warn_other_suffixes(jobs: list[Job], takes: int, given: str | None, resumed: bool) -> None:
    """Warn once of the prompts file's rows whose file field ends in another audio suffix than the batch's format
    (door.flac in a wav batch): the output is written in the batch's format, under the field's name without
    its suffix (the key tta eval pairs it by), as a row's other fields do not decide the output either (a warning
    names those). Refusing would stop a batch driven by a reference set's prompts file (its .wav names) in FLAC.
    Called once the run is sure to run (a refused run prints only its error), as warn_other_audio is. The
    warning says where the format came from: --format `given`, else the earlier run's record a --resume
    (`resumed`) continues, else the default."""
    from tta.data.prompts import audio_suffix, file_key

    fmt = jobs[0].path.suffix[1:]
    other = [job for job in jobs if job.take == 1 and job.file is not None
             and audio_suffix(job.file) not in ("", f".{fmt}")]   # the suffix file_key drops, not the batch's
    if other:
        name = Path(file_key(other[0].file)).name + ("_N" if takes > 1 else "")
        more = len(other) - 1
        how = f"--format {fmt}" if given is not None else \
            f"{fmt}, the earlier run's, which --resume continues in" if resumed else f"{fmt}, the default"
        log.warning("%s: file field %r is written as %s.%s%s, in the batch's format (%s); tta eval pairs an output by "
                    "its name without suffix", other[0].where, str(other[0].file).strip(), name, fmt,
                    f" (and {more} more row{'' if more == 1 else 's'} with another audio suffix)" if more else "", how)


def warn_other_audio(jobs: list[Job], *, budget: int = 20_000) -> None:
    """Warn of audio in the --out-dir that this batch does not write: it would sit beside the batch's outputs, e.g.
    in one `tta eval`, which scores every audio file it reads, in sub-folders too (tta.audio.audio_entries: an
    .mp3 or .aiff too, not a hidden file or folder; a batch writes its outputs into the folder itself, and its
    record and lock are not audio). Called once the run is sure to run (a refused run prints only its error). The
    walk looks at `budget` entries at most (the default --out-dir is the current folder, which may be a home
    folder: a full walk of 140 000 files took 8 s here), and the warning then says "at least"."""
    from tta.audio import is_audio_entry, walk_entries

    out_dir = jobs[0].path.parent
    if not out_dir.is_dir():
        return
    planned = {j.path for j in jobs}
    others, cut = [], False
    for seen, path in enumerate(walk_entries(out_dir)):
        if seen == budget:   # one more entry than the budget looks at: the walk is cut short
            cut = True
            break
        if path not in planned and is_audio_entry(path):
            others.append(path)
    if others:
        from tta.config import counted

        log.warning("%s already holds %s%s this run does not write (e.g. %s); generation.json will list only this "
                    "run's, and `tta eval` scores every audio file under a folder, sub-folders too", out_dir,
                    "at least " if cut else "", counted(len(others), "audio file"),
                    min(others).relative_to(out_dir).as_posix())


def row_fields(row) -> tuple[str | None, str]:
    """A Job's input and where from a prompts file's row (None: a PROMPT argument)."""
    return (None, "") if row is None else (row.input, row.where)


def warn_replaced_record(output: Path) -> None:
    """Warn when `-o FILE`'s record (<stem>.generation.json) describes another output of its stem that is still
    there (x.flac and x.ogg share x.generation.json): this run's record replaces it. Called once the run is sure
    to run (a refused run prints only its error), as warn_other_audio is."""
    record = record_path_of(output, single=True)
    other = _recorded_other(record, output)
    if other is not None:
        log.warning("%s will replace the record of %s, which is still there (a record is named after its "
                    "output's stem); write to another stem to keep both", record, other)


def _recorded_other(record: Path, output: Path) -> Path | None:
    """The output an existing single-file record describes when it is another file that still exists, else None."""
    try:
        files = [o.get("file") for o in json.loads(record.read_text(encoding="utf-8")).get("outputs", [])]
    except (OSError, ValueError, AttributeError, TypeError):   # not a record this check can read: it is replaced
        return None
    other = next((output.with_name(f) for f in files
                  if isinstance(f, str) and f and "/" not in f and f != output.name), None)
    return other if other is not None and other.is_file() else None


def record_path_of(output: Path, *, single: bool) -> Path:
    """Where the generation record goes: beside `-o FILE` as `<stem>.generation.json`, else `<out-dir>/generation.json`."""
    return output.with_name(output.stem + ".generation.json") if single else output / "generation.json"


def check_output_path(path: Path) -> None:
    """Refuse, before the model loads, an output path that cannot be written (tta.checkpoint.check_output_path)."""
    from tta.checkpoint import CheckpointError
    from tta.checkpoint import check_output_path as check

    try:
        check(path, "an output file")
    except CheckpointError as e:
        raise GenerateError(str(e)) from None


def check_writable_file(path: Path) -> None:
    from tta.audio import SAVE_FORMATS, save_format_names

    if path.suffix.lower() not in SAVE_FORMATS:
        raise GenerateError(f"{path}: output must end in {save_format_names()}")
    if path.is_dir():
        raise GenerateError(f"{path}: is a directory; use --out-dir for a folder")
    # a missing folder is made by the first write (its lock's), as --out-dir and the other commands' --out are, and
    # removed again when the run writes nothing
    parent = path.parent if str(path.parent) else Path(".")
    existing = next(a for a in (parent, *parent.parents) if a.exists())
    if not existing.is_dir():
        raise GenerateError(f"{path}: cannot be written there ({existing} is a file, not a folder)")
    if existing != parent and not os.access(existing, os.W_OK):
        raise GenerateError(f"{path}: cannot create its folder {parent} ({existing} is not writable)")
    if not os.access(existing, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise GenerateError(f"{path}: output path is not writable")


def check_writable_dir(path: Path) -> None:
    """Refuse an --out-dir that cannot be written; a missing one is made by the first write, so a run that
    fails before it (a bad prompt id, a missing model) leaves no empty folder."""
    if path.exists() and not path.is_dir():
        raise GenerateError(f"{path}: --out-dir exists and is not a folder")
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise GenerateError(f"{path}: cannot create the output folder ({existing} is not a folder)")
    if not os.access(existing, os.W_OK):
        raise GenerateError(f"{path}: output folder is not writable" if existing == path.absolute()
                            else f"{path}: cannot create the output folder ({existing} is not writable)")


def kept_part(edit: dict, raw, sample_rate: int):
    """The part of an edit's output that is the input's own audio (pipeline outside="original"): the input
    outside an inpainted gap (and its crossfades), or below a super-resolution's cutoff; None for other edits."""
    import numpy as np

    if edit.get("outside") != "original" or edit["kind"] not in ("inpaint", "super_resolution"):
        return None
    raw = np.asarray(raw, np.float32)
    if edit["kind"] == "inpaint":
        from tta.pipeline import inpaint_weight

        return (1 - inpaint_weight(len(raw), edit["start"], edit["end"], sample_rate)) * raw
    import torch

    from tta.pipeline import band_splice

    x = torch.from_numpy(raw)
    return band_splice(x, torch.zeros_like(x), edit["cutoff_hz"], sample_rate).numpy()


def fit_generated(wav, kept, peak: float = 0.99):
    """(wav, gain, generated_gain) for an edit whose output is `kept` (the input's own audio) plus a generated
    part: a generated part too loud for the file is turned down alone (generated_gain), so the kept audio stays
    the input's; only an input that is itself over `peak` turns the whole clip down (gain), as fit_full_scale."""
    import numpy as np

    n = len(wav)
    kept = np.asarray(kept, np.float32)[:n]
    generated = wav - kept
    # an input within EDIT_HEADROOM of the peak (or over it) turns the whole clip down first, to that headroom:
    # the generated part gets the room left beside the input, and a full-scale input left it none (the gap or the
    # regenerated band came out silent)
    top = float(np.max(np.abs(kept))) if n else 0.0
    whole = 1.0 if top <= EDIT_HEADROOM * peak else EDIT_HEADROOM * peak / top
    kept, generated = kept * whole, generated * whole
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(np.abs(generated) > 0, (peak - np.sign(generated) * kept) / np.abs(generated), np.inf)
    gain = float(np.clip(np.min(room) if n else 1.0, 0.0, 1.0))
    gain = gain if gain == 1.0 else gain * (1 - 1e-5)   # float rounding stays under the peak
    out, extra = fit_full_scale(kept + gain * generated, peak)
    return out, whole * extra, gain


def fit_full_scale(wav, peak: float = 0.99):
    """(wav scaled down so its peak is at most `peak`, the gain applied): a wav file clips at 1.0, so a
    louder generation is turned down as a whole instead of being distorted. Quieter ones are untouched."""
    import numpy as np

    top = float(np.max(np.abs(wav))) if len(wav) else 0.0
    gain = 1.0 if top <= peak else peak / top
    return (wav * gain if gain != 1.0 else wav), gain


def fit_output(wav, kept):
    """(wav as the file gets it, gain, extra record fields): fit_generated for an edit that keeps its input's
    audio (`kept`, kept_part), fit_full_scale for any other output."""
    if kept is not None:
        wav, gain, generated_gain = fit_generated(wav, kept)
        return wav, gain, {"generated_gain": generated_gain}
    wav, gain = fit_full_scale(wav)
    return wav, gain, {}


def warn_turned_down(name: str, gain: float, extra: dict) -> None:
    """Warn of an output (file `name`) turned down by more than QUIET_GAIN to fit its file, as fit_output
    returned it (a broken sample), or of an edit whose generated part was."""
    if extra.get("generated_gain", 1.0) < QUIET_GAIN:
        log.warning("%s: what the edit generated came out too loud for the file and was turned down alone "
                    "(generated_gain %.2g)", name, extra["generated_gain"])
    if gain < QUIET_GAIN:
        log.warning("%s came out %.0fx over full scale and was turned down to fit (gain %.2g): too few sampler "
                    "steps for this sampler?", name, 1 / gain, gain)


def rank_written(pipe, out, k: int, prompt: str, kept) -> tuple[tuple, list[float], int]:
    """((wav, gain, extra) as fit_output writes it, the candidates' CLAP scores, the index kept) for prompt k of
    the pipeline's Generation `out` (made with return_candidates): candidates are ranked on the audio the file
    would hold. The pipeline scored them before the file's gain; where a candidate is turned down, every
    candidate of the prompt is scored again as fitted (an edit's heard at the level the model heard its input:
    the written audio less the input's DC as the file holds it, turned down with the whole clip by `gain`, over
    the input's level), so the ranking and scores of outputs no candidate of which is turned down stay the
    pipeline's."""
    import numpy as np

    fitted = [fit_output(w, kept) for w in out.candidate_wavs[k]]
    scores = list(out.candidate_scores[k])
    if any(gain != 1.0 or extra.get("generated_gain", 1.0) != 1.0 for _, gain, extra in fitted):
        heard = [(w - np.float32(gain * out.input_offset)) / np.float32(out.input_level) for w, gain, _ in fitted]
        scores = pipe.clap_scores([prompt] * len(heard), heard, out.rank_span)
    best = int(np.argmax(scores))
    return fitted[best], scores, best


# ----------------------------------------------------------------------------------------- checks


def model_folder(args: argparse.Namespace) -> tuple[Path, dict]:
    """The model folder (--model, else the embedded default) and its pipeline.json, read once and checked: the
    checks before loading take it from here."""
    from tta.pipeline import REQUIRED, read_pipeline_json

    if args.model is None:
        if not (DEFAULT_MODEL / "pipeline.json").is_file():
            raise GenerateError(f"the embedded default model is missing from this install ({DEFAULT_MODEL / 'pipeline.json'}"
                                " not found); reinstall tta or pass --model DIR (a tta pipeline folder)")
        folder = DEFAULT_MODEL
    else:
        folder = args.model
    spec = read_pipeline_json(folder)
    for name in REQUIRED:
        if not (folder / spec["components"][name]).is_dir():
            raise GenerateError(f"{folder}: component {name!r} is missing (no {spec['components'][name]}/ folder)")
    return folder, spec


def check_against_model(args: argparse.Namespace, folder: Path, spec: dict, edit: dict | None = None) -> None:
    """What only the model's configs can check, before any weights load: --steps against the timesteps its UNet
    was trained on, --seconds and an edit's input against its mel frame, --cutoff against its mel band, --strength
    against its sampler steps, --datastore against a model without retrieval. `spec`: the folder's pipeline.json
    (model_folder)."""
    from tta.checkpoint import CheckpointError, read_json
    from tta.ldm.folder import SCHEDULER_FILE

    if getattr(args, "datastore", None) is not None and "retrieval" not in spec["components"]:
        # the pipeline refused it once the model had loaded, naming no model
        raise GenerateError(f"{folder}: this model was not trained with retrieval (no retrieval/ component); "
                            "generate without --datastore")
    if args.steps is not None:   # it failed after the model had loaded, on the same line as the progress bar
        config = folder / spec["components"]["scheduler"] / SCHEDULER_FILE
        try:
            trained = read_json(config).get("num_train_timesteps")
        except (OSError, CheckpointError, AttributeError):
            trained = None   # loading the scheduler names what is wrong with it
        if type(trained) is int and args.steps > trained:
            raise GenerateError(f"--steps {args.steps} exceeds the {trained} timesteps this model was trained on")
    if args.seconds is None and edit is None:
        return
    vae = model_vae_config(folder, spec)
    mel = vae.mel
    hop, rate = mel.hop_length, mel.sample_rate
    if args.seconds is not None and round(args.seconds * rate) < hop:
        raise GenerateError(f"--seconds {args.seconds} is shorter than one mel frame of this model ({hop / rate:g} s)")
    if edit is not None and "cutoff_hz" in edit:
        low, high = mel.f_min, mel.f_max
        if not low < edit["cutoff_hz"] < high:
            raise GenerateError(f"--cutoff {edit['cutoff_hz']:g} must lie inside this model's mel band ({low:g}, "
                                f"{high:g}) Hz")
        from tta.pipeline import latent_row_tops

        lowest = float(latent_row_tops(mel, vae.downsample_factor).min())
        if edit["cutoff_hz"] < lowest:
            raise GenerateError(f"--cutoff {edit['cutoff_hz']:g} keeps none of this model's latent frequency rows "
                                f"(the lowest reaches {lowest:.0f} Hz); raise it to at least that")
    if edit is not None and "start" in edit and round((edit["end"] - edit["start"]) * rate) < hop:
        raise GenerateError(f"--mask {edit['start']:g}:{edit['end']:g} is shorter than one mel frame of this model "
                            f"({hop / rate:g} s): there is nothing to regenerate")
    if edit is not None and edit["input"] is not None:   # with --edit each row's (tta.generate_edits)
        check_input_against_model(edit, mel)
    if edit is not None and "strength" in edit:
        from tta.ldm.sampling import check_part_way, check_strength_leaves_a_step
        from tta.pipeline import PipelineDefaults

        defaults = spec.get("defaults", {})
        sampler = args.sampler or defaults.get("sampler", PipelineDefaults.sampler)
        try:
            check_part_way(sampler, edit["strength"])
        except ValueError as e:
            where = f"--sampler {sampler}" if args.sampler else f"--strength {edit['strength']} with this model's " \
                                                                f"sampler ({sampler})"
            raise GenerateError(f"{where}: {e}") from None
        steps = args.steps or int(defaults.get("steps", PipelineDefaults.steps))
        try:
            if steps:
                check_strength_leaves_a_step(steps, edit["strength"], more_steps="more --steps",
                                             where=f"--strength {edit['strength']} at {steps} sampler steps")
        except ValueError as e:
            raise GenerateError(str(e)) from None


def check_input_against_model(edit: dict, mel) -> None:
    """What the model's mel frame (`mel`: its VAE's MelConfig) says of an edit's input: at least one mel frame long,
    and, for a super-resolution, able to hold the frequencies up to --cutoff."""
    hop, rate = mel.hop_length, mel.sample_rate
    if "cutoff_hz" in edit:
        top = edit["input_sample_rate"] / 2
        if edit["cutoff_hz"] > top:   # the band between would be kept as the silence the file holds there
            raise GenerateError(f"--cutoff {edit['cutoff_hz']:g} Hz is above the highest frequency {edit['input']} can "
                                f"hold ({edit['input_sample_rate']} Hz sampling: {top:g} Hz); the band between would "
                                f"stay silent: give --cutoff {top:g} or lower")
    if round(edit["input_seconds"] * rate) < hop:
        raise GenerateError(f"{edit['input']}: {edit['input_seconds']:g} s of audio, shorter than one mel frame of "
                            f"this model ({hop / rate:g} s)")


def model_vae_config(folder: Path, spec: dict):
    """The model's VAEConfig (its mel frame and downsampling), read as loading the VAE reads it, without weights."""
    from tta.checkpoint import CONFIG_NAME, CheckpointError, read_component_config
    from tta.config import ConfigError, from_dict
    from vae.model import VAEConfig

    vae_dir = folder / spec["components"]["vae"]
    try:   # errors as loading the VAE gives them
        return from_dict(VAEConfig, read_component_config(vae_dir)["config"])
    except CheckpointError as e:
        raise GenerateError(f"{folder}: component 'vae' cannot be loaded: {e}") from None
    except ConfigError as e:
        raise GenerateError(f"{folder}: component 'vae' cannot be loaded: {vae_dir / CONFIG_NAME}: {e}") from None


def component_hashes(folder: Path, spec: dict | None = None) -> dict:
    """sha256 (first 16 hex digits) of each component folder's files (weights and configs, e.g. the VAE's
    scale_factor), by component name, and of pipeline.json (its generation defaults): which model made the audio,
    whatever the folder's path (a wheel's site-packages, a copy). A CLAP's separately installed text tower (the
    MiniLM files a tta CLAP names by its own sha256 in its config) is covered through that config. `spec`: the
    folder's pipeline.json as model_folder read it (else it is read here)."""
    from tta.checkpoint import files_sha256
    from tta.pipeline import PIPELINE_FILE, read_pipeline_json

    out = {}
    parts = [("pipeline.json", [folder / PIPELINE_FILE])]
    parts += [(name, sorted(f for f in (folder / sub).rglob("*") if f.is_file()))
              for name, sub in sorted((spec or read_pipeline_json(folder))["components"].items())]
    for name, files in parts:   # each file's sha256 (remembered while it is unchanged), by its place in the folder
        if files:
            out[name] = files_sha256(files, folder)
    return out


def check_flag_values(args: argparse.Namespace) -> None:
    """The ranges of tta generate's flags that need no model (and the sampler's name): a GenerateError naming the
    flag. (It was called check_numbers, as tta.config's check of a config dataclass's number types is.)"""
    from tta.ldm.sampling import check_sampler
    from tta.pipeline import MAX_SECONDS, MAX_SEED, valid_window

    if args.seconds is not None and (not math.isfinite(args.seconds) or args.seconds <= 0):
        raise GenerateError(f"--seconds {args.seconds} must be a positive number")
    if args.seconds is not None and args.seconds > MAX_SECONDS:
        raise GenerateError(f"--seconds {args.seconds} exceeds the maximum of {MAX_SECONDS:g} s")
    window = getattr(args, "window", None)
    if window is not None and not valid_window(window):
        raise GenerateError(f"--window {window} must be between 0 and {MAX_SECONDS:g} seconds")
    if args.steps is not None and args.steps < 1:
        raise GenerateError(f"--steps {args.steps} must be >= 1")
    if args.guidance is not None and (not math.isfinite(args.guidance) or args.guidance < 0):
        raise GenerateError(f"--guidance {args.guidance} must be a finite number >= 0")
    if args.candidates is not None and args.candidates < 1:
        raise GenerateError(f"--candidates {args.candidates} must be >= 1")
    if args.batch_size < 1:
        raise GenerateError(f"--batch-size {args.batch_size} must be >= 1")
    takes = getattr(args, "takes", 1)
    if not (type(takes) is int and 1 <= takes <= MAX_TAKES):   # a whole number: argparse's type=int, as --candidates
        raise GenerateError(f"--takes {takes!r} must be a whole number from 1 to {MAX_TAKES} (the files written "
                            "per prompt)")
    if not 0 <= args.seed < MAX_SEED:
        raise GenerateError(f"--seed {args.seed} must be in [0, 2**62)")
    if args.eta is not None and not (math.isfinite(args.eta) and 0 <= args.eta <= 1):
        raise GenerateError(f"--eta {args.eta} must be in [0, 1]")
    if args.sampler is not None:
        try:
            check_sampler(args.sampler)
        except ValueError as e:
            raise GenerateError(f"--sampler: {e}") from None


def parse_mask(text: str | None) -> tuple[float, float]:
    if text is None:
        raise UsageError("--inpaint needs --mask START:END (seconds to regenerate)")
    m = re.fullmatch(r"\s*([0-9.]+)\s*:\s*([0-9.]+)\s*", text)
    try:
        start, end = (float(m.group(1)), float(m.group(2))) if m else (math.nan, math.nan)
    except ValueError:
        start = end = math.nan
    if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
        raise GenerateError(f"--mask {text!r} must be START:END seconds with 0 <= START < END")
    return start, end


EDIT_KINDS = {"init-audio": "audio_to_audio", "inpaint": "inpaint", "super-resolution": "super_resolution"}   # --edit


def plan_edit(args: argparse.Namespace) -> dict | None:
    """The edit asked for (kind, input path, parameters), checked; None for plain text-to-audio. With --edit
    (each row of --prompts edits its own input: tta.generate_edits) the settings the rows share, with "input"
    None: each output's record holds its input's part."""
    given = [(k, p) for k, p in (("audio_to_audio", args.init_audio), ("inpaint", args.inpaint),
                                 ("super_resolution", args.super_resolution)) if p is not None]
    per_row = getattr(args, "edit", None)
    strength = getattr(args, "strength", None)
    outside = getattr(args, "outside", None)
    if not given and per_row is None:
        needs = [need for flag, need in ((args.mask, "--mask needs --inpaint WAV"),
                                         (args.cutoff, "--cutoff needs --super-resolution WAV"),
                                         (strength, "--strength needs --init-audio WAV"),
                                         (outside, "--outside needs --inpaint or --super-resolution"))
                 if flag is not None]
        if needs:
            raise UsageError("; ".join(needs))
        return None
    if len(given) > 1:
        raise UsageError("give only one of --init-audio, --inpaint, --super-resolution")
    if per_row is not None:
        from tta.generate_edits import plan_row_edit

        return plan_row_edit(args, EDIT_KINDS[per_row], given)
    kind, path = given[0]
    info = edit_input_info(path)
    check_edit_flags(args, kind)
    # what the edit read, to redo it: the file's content and format (it is heard as 16 kHz mono)
    return {"kind": kind, **input_record(path, str(path), info), **edit_settings(args, kind, path, info)}


def edit_input_info(path: Path):
    """The AudioInfo of an edit's input, refused (GenerateError) when its header does not read or it holds no
    sample."""
    from tta.audio import AudioError, audio_info

    try:
        info = audio_info(path)
    except AudioError as e:
        raise GenerateError(f"unreadable input audio: {e}") from None
    if info.num_samples == 0:
        raise GenerateError(f"unreadable input audio: {path}: contains 0 samples")
    return info


def check_edit_flags(args: argparse.Namespace, kind: str) -> None:
    """The flags an edit of `kind` excludes (UsageError)."""
    if args.seconds is not None:
        raise UsageError("--seconds does not apply to edits: the input audio sets the length")
    if getattr(args, "window", None) is not None:
        raise UsageError("--window does not apply to edits: the input audio sets the length")
    if getattr(args, "strength", None) is not None and kind != "audio_to_audio":
        raise UsageError("--strength applies to --init-audio only")
    if getattr(args, "outside", None) is not None and kind == "audio_to_audio":
        raise UsageError("--outside applies to --inpaint and --super-resolution only")


def input_record(path: Path, given: str, info) -> dict:
    """What an edit records of its input (`given`: its path as written), refused when it is too long."""
    from tta.checkpoint import file_sha256
    from tta.pipeline import MAX_SECONDS

    if info.seconds > MAX_SECONDS:
        raise GenerateError(f"{path}: {info.seconds:.1f} s of audio; an edit takes at most {MAX_SECONDS:g} s "
                            "(cut the input)")
    return {"input": given, "input_seconds": round(info.seconds, 4), "input_sha256": file_sha256(path),
            "input_sample_rate": info.sample_rate, "input_channels": info.channels}


def edit_settings(args: argparse.Namespace, kind: str, path: Path | None = None, info=None) -> dict:
    """An edit's settings from the flags (--strength; --mask and --outside; --cutoff and --outside), checked;
    with `info` (its input's AudioInfo) an inpainting's end is checked against the input and kept inside it."""
    strength, outside = getattr(args, "strength", None), getattr(args, "outside", None)
    if kind == "audio_to_audio":
        strength = 0.5 if strength is None else strength
        if not (math.isfinite(strength) and 0 < strength <= 1):
            raise GenerateError(f"--strength {strength} must be in (0, 1]")
        return {"strength": strength}
    if kind == "inpaint":
        start, end = parse_mask(args.mask)
        if info is not None:
            end = mask_end_in(end, path, info)
        return {"start": start, "end": end, "outside": outside or "original"}
    if args.cutoff is None:
        raise UsageError("--super-resolution needs --cutoff HZ (the highest frequency the input holds)")
    if not math.isfinite(args.cutoff) or args.cutoff <= 0:
        raise GenerateError(f"--cutoff {args.cutoff} must be a frequency > 0 Hz")
    return {"cutoff_hz": args.cutoff, "outside": outside or "original"}


def mask_end_in(end: float, path: Path, info) -> float:
    """--mask's end, refused past the end of the input and kept within its length."""
    if end > info.seconds + 1 / info.sample_rate:   # the length as printed may round up by part of a sample
        raise GenerateError(f"--mask end {end} s is past the end of {path} ({info.num_samples} samples at "
                            f"{info.sample_rate} Hz: {info.seconds:.6g} s)")
    return min(end, info.seconds)


def read_edit_input(edit: dict, path: Path | None = None):
    """(wav (T,) float32 mono, sample_rate) of an edit's input (`path`, else the edit's input as given), decoded
    whole before the model loads: a file whose header reads but whose audio does not decode (a cut FLAC: "flac
    decoder lost sync"; NaN samples) was found only once the model had loaded. The run keeps it (resampled to the
    model's rate then), so it is decoded once."""
    from tta.audio import AudioError, load_audio

    try:
        return load_audio(edit["input"] if path is None else path)
    except AudioError as e:
        raise GenerateError(f"unreadable input audio: {e}") from None


def pick_device(name: str) -> str:
    from tta.device import pick_device as pick

    try:
        return pick(name)
    except ValueError as e:
        raise GenerateError(str(e)) from None


# ------------------------------------------------------------------------------------------- main


@contextlib.contextmanager
def lock_out_dir(folder: Path) -> Iterator[None]:
    """Hold the lock of a batch's out-dir while the batch runs (tta.training.run_lock; its file goes when it is
    released): two runs into one folder at once (two --resume, or a run and a --resume) generated the same rows
    twice and wrote one record in turn; the second is refused, naming the process that holds it. A folder made
    for the lock is removed again when the run wrote nothing into it, as a run that fails before its first
    output leaves no folder. A `-o FILE` run writing into the folder meanwhile (output_lock_name's lock held) is
    refused too: the batch's clean-up of a killed run's temporary files could take that run's file."""
    from tta.training import lock_holder

    with _lock_in(folder, doing="generating", flag="--out-dir"):
        for name in output_locks(folder):   # after taking the folder's: a -o run starting now is refused by it
            holder = lock_holder(folder / name)
            if holder is not None:
                raise GenerateError(f"{folder}: another tta generate{f' (process {holder})' if holder else ''} is "
                                    f"writing a file in this folder with -o (its lock {name}); wait for it, or "
                                    "choose another --out-dir")
        yield


def output_lock_name(output: Path) -> str:
    """The lock file of `-o FILE`, beside it: `.<stem>.generation.json.lock`, named after the record, which the
    outputs of one stem share (x.wav, x.flac); `.tta.<hash>.lock` where that name would be too long. The
    names of a folder's -o locks are output_locks' (the two are one naming rule)."""
    from tta.checkpoint import _name_max

    record = record_path_of(output, single=True).name
    name = f".{record}.lock"
    if len(os.fsencode(name)) <= _name_max(output.parent if output.parent.is_dir() else Path(".")):
        return name
    import hashlib

    return f".tta.{hashlib.sha256(os.fsencode(record)).hexdigest()[:16]}.lock"


def output_locks(folder: Path) -> list[str]:
    """The names in `folder` that output_lock_name makes (of any output there), sorted: the `-o FILE` locks a
    batch into the folder checks. An unreadable folder has none."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(n for n in names if n.startswith(".") and n.endswith(".generation.json.lock")
                  or re.fullmatch(r"\.tta\.[0-9a-f]{16}\.lock", n))


@contextlib.contextmanager
def lock_output(output: Path) -> Iterator[None]:
    """Hold the lock of `-o FILE` while it is written, as lock_out_dir holds a batch's folder: two runs into one
    file at once both wrote it and its record (the record of one beside the audio of the other). The unit is the
    record's stem, so `-o x.flac` beside a running `-o x.wav` (one x.generation.json) is refused too."""
    record = record_path_of(output, single=True)
    from tta.training import RUN_LOCK, lock_holder

    with _lock_in(output.parent, doing="writing", flag="-o", name=output_lock_name(output), subject=output,
                  place=f"this output or its record {record.name}"):
        # a batch generating in the folder (lock_out_dir) may be writing this very file; after taking this lock, so
        # that a batch starting now is refused by it
        holder = lock_holder(output.parent / RUN_LOCK)
        if holder is not None:
            raise GenerateError(f"{output.parent}: another run{f' (process {holder})' if holder else ''} holds this "
                                f"folder's lock {RUN_LOCK} (a --out-dir batch generating there, or tta train); wait "
                                f"for it, or write {output.name} into another folder")
        yield


@contextlib.contextmanager
def _lock_in(folder: Path, **lock) -> Iterator[None]:
    from tta.checkpoint import _missing_top, _remove_made
    from tta.training import run_lock

    made = _missing_top(folder.absolute())
    try:
        with contextlib.ExitStack() as held:
            try:   # one process, whatever RANK its environment holds (run_lock's main-process rule is training's)
                held.enter_context(run_lock(folder, command="tta generate", remove=True, main_only=False, **lock))
            except OSError as e:
                raise _cannot_lock(folder, lock.get("subject"), e) from None
            yield
    finally:
        _remove_made(folder.absolute(), made)


def _cannot_lock(folder: Path, output: Path | None, e: OSError) -> GenerateError:
    """The error for a lock that cannot be taken in `folder` (the folder, or the lock file in it, cannot be made),
    named by what the user gave: `-o /proc/x.wav` failed on "/proc/.x.generation.json.lock: No such file or
    directory", the hidden lock file's name, and `--out-dir /proc/y` on the folder's bare "No such file or
    directory"."""
    reason = e.strerror or str(e)
    if folder.is_dir():
        where = f"cannot create a file in {folder}" if output is not None else "cannot create a file in this folder"
    else:
        where = f"cannot create its folder {folder}" if output is not None else "cannot create the output folder"
    return GenerateError(f"{folder if output is None else output}: {where} ({reason})")


def open_datastore(args: argparse.Namespace):
    """The --datastore (loaded, memory-mapped) or None; checked before the model loads."""
    store, k = getattr(args, "datastore", None), getattr(args, "neighbours", None)
    if k is not None and store is None:
        raise UsageError(f"--neighbours {k} needs --datastore DIR (a `tta index build` folder)")
    guidance = getattr(args, "context_guidance", None)
    if guidance is not None and store is None:   # without neighbours both branches see the null context: no effect
        raise UsageError(f"--context-guidance {guidance} needs --datastore DIR (it decides which guidance branch "
                         "sees the neighbours)")
    if k is not None and k < 1:
        raise GenerateError(f"--neighbours {k} must be >= 1")
    if store is None:
        return None
    from tta.retrieval import Datastore

    loaded = Datastore.load(store)
    if k is not None and k > loaded.count:
        raise GenerateError(f"--neighbours {k} is larger than the datastore {store} ({loaded.count} entries)")
    return loaded


def main(args: argparse.Namespace) -> int:
    import gc

    t0 = time.time()
    # no garbage collection while torch, diffusers and the model load (it walked their objects 8 times, ~1 s of a
    # 10 s clip's 8 s command on 2 cores); one collection after loading frees what loading left in cycles, and the
    # generation loop collects as usual. The collector's state is the caller's again afterwards.
    enabled = gc.isenabled()
    gc.disable()
    try:
        with contextlib.ExitStack() as held:   # the --out-dir's lock (lock_out_dir), once _main's checks pass
            return _main(args, t0, enabled, held)
    finally:
        if enabled:
            gc.enable()


def _main(args: argparse.Namespace, t0: float, gc_enabled: bool, held: contextlib.ExitStack) -> int:
    import gc

    check_flag_values(args)
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise GenerateError(f"--threads {threads} must be >= 1")
    jobs = plan_jobs(args)
    given_format = getattr(args, "format", None)   # the warning of other suffixes says where the format came from
    args.format = jobs[0].path.suffix.lower()[1:]   # -o FILE's, or the batch's (batch_format): settings.format
    from tta.pipeline import MAX_SEED

    if args.seed + len(jobs) - 1 >= MAX_SEED:   # row i takes seed + i
        raise GenerateError(f"--seed {args.seed} with {len(jobs)} prompts: row i takes seed + i, which must stay below "
                            "2**62")
    edit = plan_edit(args)
    if edit is not None and edit["input"] is not None:   # `-o clip.wav --inpaint clip.wav` replaced the input with
        source = Path(edit["input"]).resolve()           # the edit, and no record can redo it
        for job in jobs:
            if job.path.resolve() == source:
                raise GenerateError(f"{job.path}: is the edit's input audio; write the output to another file")
    folder, spec = model_folder(args)
    check_against_model(args, folder, spec, edit)
    rows = None   # with --edit: each row's input, checked (tta.generate_edits)
    if edit is not None and edit["input"] is None:
        from tta.generate_edits import plan_rows

        rows = plan_rows(args, jobs, edit, model_vae_config(folder, spec).mel,
                         lambda line: print(line, file=sys.stderr))   # a bad row's line, as outputs' paths are printed
    # after the cheaper checks: it reads the file
    decoded = read_edit_input(edit) if edit is not None and rows is None else None
    store = open_datastore(args)
    device = pick_device(args.device)
    progress = not getattr(args, "quiet", False)
    # before the earlier record is read: another run may be rewriting it
    held.enter_context(lock_out_dir(jobs[0].path.parent) if args.output is None else lock_output(args.output))
    earlier = None
    if getattr(args, "resume", False):
        from tta.generate_resume import read_earlier_run

        earlier = read_earlier_run(args, jobs, folder, spec, rows)

    from tta.pipeline import TTAPipeline

    if threads is not None:
        import torch

        # main() called from Python (a script, a notebook): the caller's thread count again when the command ends,
        # not --threads for good
        held.callback(torch.set_num_threads, torch.get_num_threads())
        torch.set_num_threads(threads)
    pipe = TTAPipeline.from_pretrained(folder, device=device)
    gc.collect()   # e.g. the loaded UNet state dict, held by a cycle of import frames (31 MB for the default)
    if gc_enabled:
        gc.enable()
    if args.sampler is None:
        args.sampler = pipe.defaults.sampler
    negative = args.negative
    if negative and (pipe.defaults.guidance if args.guidance is None else args.guidance) <= 1:
        log.warning("--negative has no effect at guidance <= 1 (there is no unconditional branch to steer)")
        negative = ""   # said once here, not again by the pipeline for every batch
    # every candidate's wav comes back: the one kept is the best as the file will hold it (rank_written)
    common = dict(steps=args.steps, guidance=args.guidance, negative=negative, candidates=args.candidates,
                  guidance_rule=getattr(args, "guidance_rule", None), precision=getattr(args, "precision", None),
                  context_guidance=getattr(args, "context_guidance", None), sampler=args.sampler, eta=args.eta,
                  batch_size=args.batch_size, progress=progress and len(jobs) == 1, return_candidates=True)
    if store is not None:
        common.update(datastore=store, neighbours=getattr(args, "neighbours", None))
    wav_in = kept = None
    if decoded is not None:
        wav_in, kept = prepare_input(edit, decoded, pipe)
        decoded = None   # its copy at the file's rate (a 2-minute 192 kHz input: 92 MB) is not used again
    records: dict[int, dict] = {}   # row index -> its output's record
    record_path = record_path_of(args.output if args.output is not None else jobs[0].path.parent,
                                 single=args.output is not None)
    if getattr(args, "resume", False) and earlier is not None:
        from tta.generate_resume import resume_batch

        records = resume_batch(earlier, args, jobs, record_header(args, folder, pipe, device, edit, store),
                               record_path, edit)
    # a killed run's temporary files of this batch's outputs and record, once this run is sure to run (it writes
    # those files again, or keeps them); the out-dir's lock, or -o FILE's, stops another run writing them meanwhile
    from tta.generate_resume import remove_leftovers

    if args.prompts_file is not None:
        warn_unread_fields(args.prompts_file, jobs, editing=getattr(args, "edit", None) is not None)
    if args.output is None:
        warn_other_suffixes(jobs, getattr(args, "takes", 1), given_format, earlier is not None)
        warn_other_audio(jobs)
    else:
        warn_replaced_record(args.output)
    remove_leftovers(jobs, record_path, folder_locked=args.output is None)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), initial=len(records), desc="tta generate", unit="clip",
               disable=not progress or len(jobs) == 1)
    if progress_note(len(records), rows):
        bar.set_postfix_str(progress_note(len(records), rows))
    from tta.checkpoint import terminate_as_exit

    try:
        with terminate_as_exit():   # SIGTERM (kill, timeout, a scheduler's cancel) stops it as Ctrl-C does
            run_jobs(args, jobs, edit, pipe, common, wav_in, kept, records, record_path, bar, folder, device, t0,
                     rows)
    except BaseException:   # stopped part-way (Ctrl-C included): the record lists every file written
        bar.close()
        if records:
            write_record(record_path, args, folder, pipe, device, edit, records, time.time() - t0, planned=len(jobs),
                         store=store)
        raise
    bar.close()
    write_record(record_path, args, folder, pipe, device, edit, records, time.time() - t0, planned=len(jobs),
                 store=store)
    for i, job in enumerate(jobs):
        if rows is None or i in records:   # --edit: a bad row wrote nothing
            print(job.path)
    if rows is not None and rows.bad:
        rows.refuse_left_out(len(jobs) // getattr(args, "takes", 1))   # the prompts file's rows, not takes
    return 0


def progress_note(kept: int, rows=None) -> str:
    """The bar's note: outputs `kept` by --resume (counted as done, as the bar starts there) and, with --edit
    (`rows`, RowEdits), the bad rows left out so far, as rows (not counted: the bar counts outputs written; with
    --takes N a bad row leaves N out)."""
    bad = rows.bad_rows() if rows is not None else 0
    return ", ".join([f"{kept} kept"] * bool(kept) + [f"{bad} bad row{'' if bad == 1 else 's'}"] * bool(bad))


def prepare_input(edit: dict, decoded, pipe):
    """(wav_in, kept) of an edit's input `decoded` (wav, sample_rate as read_edit_input read it): the input at the
    model's rate, and the part of the output that is the input's own audio (kept_part). Records its level as the
    pipeline hears it in `edit`, and warns of an input silent as heard."""
    from tta.audio import SILENCE_DB, dc_removed_peak, resample
    from tta.pipeline import edit_input

    # the pipeline hears it normalised (DC removed, peak 0.5) as the training audio was, and scales its
    # outputs back, so the part an edit keeps comes out at the input's level
    wav_in = resample(*decoded, pipe.sample_rate)   # as load_audio(input, pipe.sample_rate) reads it
    if edit["input_sample_rate"] != pipe.sample_rate or edit["input_channels"] != 1:
        log.info("%s: %d Hz, %d channel(s); the edit hears it, and writes it, as %d Hz mono", edit["input"],
                 edit["input_sample_rate"], edit["input_channels"], pipe.sample_rate)
    edit["input_level"] = round(edit_input(wav_in)[1], 6)
    if dc_removed_peak(wav_in) < 10 ** (SILENCE_DB / 20):   # channels that cancel too
        how = f"its {edit['input_channels']} channels averaged" if edit["input_channels"] > 1 else "DC removed"
        log.warning("%s: silent as the edit hears it (%d Hz mono, %s: peak below %g dBFS): there is nothing "
                    "for it to keep or follow", edit["input"], pipe.sample_rate, how, SILENCE_DB)
    return wav_in, kept_part(edit, wav_in, pipe.sample_rate)


def run_jobs(args, jobs, edit, pipe, common, wav_in, kept, records, record_path, bar, folder, device, t0,
             rows=None) -> None:
    """Generate and write every job in batches, appending each output's record to `records`. `rows` (--edit,
    tta.generate_edits.RowEdits): each row edits its own input, one row at a time; a row found bad is left out."""
    from tta.audio import save_audio
    from tta.checkpoint import file_sha256

    last_record = 0.0
    resumed = bool(records)   # the earlier record describes the files kept; it is rewritten, not removed
    kept_outputs = len(records)
    for start in range(0, len(jobs), args.batch_size):
        chunk = jobs[start:start + args.batch_size]
        if all(start + k in records for k in range(len(chunk))):   # kept whole by --resume (kept_outputs)
            continue
        shared, row = edit, None
        if rows is not None:   # --edit: this row's own input (a batch is one row)
            row = rows.load(start, pipe)
            if row is None:   # a bad row, reported: shown beside the count of outputs written, not in it
                bar.set_postfix_str(progress_note(kept_outputs, rows))
                continue
            edit, wav_in, kept = row
        prompts = [j.prompt for j in chunk]
        seed = args.seed + start     # prompt i always gets seed + i, whatever the chunking
        # messages name the prompt as its file does, and -o's by the file the user named (its id is a slug of the
        # prompt: an empty prompt's was "unconditional", which the user never typed)
        ids = [str(j.path) if args.output is not None else j.id for j in chunk]
        if edit is None:
            out = pipe(prompts, seconds=args.seconds, seed=seed, window=getattr(args, "window", None), prompt_ids=ids,
                       **common)
        elif edit["kind"] == "audio_to_audio":
            out = pipe.audio_to_audio(wav_in, prompts, strength=edit["strength"], seed=seed, prompt_ids=ids, **common)
        elif edit["kind"] == "inpaint":
            out = pipe.inpaint(wav_in, prompts, start=edit["start"], end=edit["end"], outside=edit["outside"],
                               seed=seed, prompt_ids=ids, **common)
        else:
            out = pipe.super_resolve(wav_in, prompts, cutoff_hz=edit["cutoff_hz"], outside=edit["outside"],
                                     seed=seed, prompt_ids=ids, **common)
        if out.sampled is not None:   # an inpainting: the whole clip, or a window of a long one
            edit["sampled_seconds"] = [round(x, 6) for x in out.sampled]
        if not resumed and not records:   # the first batch written (with --edit row 0 may be a bad row): an
            # earlier run's record would describe the files this run replaces
            record_path.unlink(missing_ok=True)
        for k, job in enumerate(chunk):
            (wav, gain, extra), scores, best = rank_written(pipe, out, k, job.prompt, kept)
            warn_turned_down(job.path.name, gain, extra)
            save_audio(job.path, wav, out.sample_rate)
            # the file's sha256: a --resume keeps a file only while it holds these bytes
            records[start + k] = {"id": job.id, "prompt": job.prompt, "file": job.path.name,
                                  "sha256": file_sha256(job.path), "take": job.take, "seeds": out.seeds[k],
                                  "gain": round(gain, 6), **{key: round(v, 6) for key, v in extra.items()},
                                  "clap_score": round(scores[best], 6),
                                  "candidate_clap_scores": [round(s, 6) for s in scores], "kept_candidate": best,
                                  "seconds": round(len(wav) / out.sample_rate, 6)}
            if out.neighbours is not None:
                records[start + k]["neighbours"] = out.neighbours[k]
            if row is not None:   # what a one-input run records of its input in the record's edit
                records[start + k]["edit"] = {key: v for key, v in edit.items() if key not in shared or shared[key] != v}
        edit = shared
        bar.update(len(chunk))
        # the files written so far stay described if the run stops; at most every RECORD_EVERY seconds, so a
        # long prompt list does not rewrite a growing record after every clip
        if start + len(chunk) < len(jobs) and time.time() - last_record >= RECORD_EVERY:
            write_record(record_path, args, folder, pipe, device, edit, records, time.time() - t0,
                         planned=len(jobs), store=common.get("datastore"))
            last_record = time.time()


def retrieval_record(args, pipe, loaded=None) -> dict | None:
    """The retrieval settings of a run (None for a plain model). `loaded`: the Datastore the run opened, whose
    datastore.json (what it was built from and how: a store rebuilt under the same path differs there) is recorded
    as it was read then, not as the folder holds it when a record is written."""
    r = getattr(pipe, "retrieval", None)
    if r is None:
        return None
    store = getattr(args, "datastore", None)
    k = getattr(args, "neighbours", None)
    info = None if loaded is None else loaded.info
    return {"datastore": None if store is None else str(Path(store).resolve()), "datastore_info": info,
            "neighbours": (k or r.config.neighbours) if store is not None else 0,
            "index": r.config.index, "features": r.config.features, "trained_modality": r.config.modality,
            "trained_neighbours": r.config.neighbours,
            "context_guidance": (getattr(args, "context_guidance", None) or pipe.defaults.context_guidance)
            if store is not None else None}


def write_record(path: Path, args, folder: Path, pipe, device: str, edit, records: dict, seconds: float, *,
                 planned: int, store=None) -> None:
    """Write the generation record: `records` is each written output's record by its row's index; `complete` is
    false while fewer than `planned` outputs are written (a run stopped part-way leaves the record of what it did
    write). A run that --resume continued lists the earlier runs (`earlier_runs`: command, cwd, tta version,
    libsndfile and wall seconds of each, oldest first); `command`, `libsndfile` and `wall_seconds` are this run's."""
    from tta.checkpoint import atomic_write_text

    body = {**record_header(args, folder, pipe, device, edit, store), "complete": len(records) == planned,
            "planned_outputs": planned, "outputs": [records[i] for i in sorted(records)],
            "wall_seconds": round(seconds, 3)}
    if getattr(args, "earlier_runs", None):
        body["earlier_runs"] = args.earlier_runs
    atomic_write_text(path, json.dumps(body, indent=2) + "\n")


def record_header(args, folder: Path, pipe, device: str, edit, store=None) -> dict:
    """What a generation record says of the run as a whole (versions, command, model, settings, edit), the part
    before its outputs."""
    import diffusers
    import soundfile
    import torch

    from tta import __version__
    from tta.audio import PCM_ROUNDING
    from tta.config import to_dict
    from tta.ldm.sampling import resolve_precision

    d = pipe.defaults
    return {
        "tta_version": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
        # a FLAC's or Ogg's bytes are its encoders' (the same command writes the same bytes under the same one)
        "libsndfile": soundfile.__libsndfile_version__,
        "python": platform.python_version(), "command": sys.argv,
        "model": str(Path(folder).resolve()), "model_files_sha256": dict(component_hashes(Path(folder).resolve())),
        "cwd": os.getcwd(),
        "model_defaults": to_dict(d),
        "settings": {"seconds": args.seconds if args.seconds is not None else (
                         edit.get("input_seconds") if edit else d.seconds),
                     "steps": args.steps or d.steps,
                     "guidance": d.guidance if args.guidance is None else args.guidance,
                     "guidance_rule": getattr(args, "guidance_rule", None) or d.guidance_rule,
                     "precision": resolve_precision(getattr(args, "precision", None) or d.precision, device),
                     "negative": args.negative if (d.guidance if args.guidance is None else args.guidance) > 1
                     else None, "candidates": args.candidates or d.candidates,
                     "window": None if edit else (d.window if getattr(args, "window", None) is None
                                                  else args.window),
                     "seed": args.seed, "sampler": args.sampler, "eta": d.eta if args.eta is None else args.eta,
                     "batch_size": args.batch_size, "takes": getattr(args, "takes", 1),
                     "format": getattr(args, "format", None) or "wav",
                     "device": device, "threads": torch.get_num_threads(), "sample_rate": pipe.sample_rate,
                     "noise": "per prompt i, candidate j: CPU torch.Generator seeded seed + i + 1000003 * j"},
        "clap_score_model": getattr(pipe.clap, "identity", ""),
        "pcm_rounding": PCM_ROUNDING,   # how a WAV's 16-bit samples were rounded: --resume keeps only this rule's
        "retrieval": retrieval_record(args, pipe, store),
        "edit": edit,
    }
