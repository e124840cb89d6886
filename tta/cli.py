"""The `tta` command: parse arguments, configure logging, dispatch. No logic lives here.

Exit codes: 0 ok; 1 a user-facing error printed as one line (the traceback only with -v); 2 bad usage;
130 Ctrl-C ("tta: interrupted") and 143 SIGTERM ("tta: terminated"), as a shell reports a process they ended. A
reader of stdout that goes away (`| head`) changes none of them: the command finishes, writing no more to stdout.
Heavy modules (torch, diffusers, ...) are imported inside each handler so `tta --help` stays instant.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Iterator

from tta import UsageError, __version__
from tta.checkpoint import output_path, set_library_bars

log = logging.getLogger("tta")

# libraries whose records a command shows under -v only (errors always): their levels while it runs
NOISY_LIBRARIES = ("accelerate", "diffusers", "transformers", "numba", "matplotlib", "urllib3", "filelock", "faiss")

# `tta train KIND` -> module exposing `RunConfig` (the run's config dataclass),
# `train(config, out, *, resume, progress) -> Path` (returns the final/ folder) and `check_start(config,
# training_rows)` (what its `train` refuses of a new run before the first step, beyond what every trainer
# checks, calling `training_rows()` where `train` reads the training split).
TRAINERS = {
    "vae": "vae.train",
    "vocoder": "vocoder.train",
    "postnet": "vocoder.postnet_train",
    "vocos": "vocoder.vocos_train",
    "clap": "tta.clap.train",
    "ldm": "tta.ldm.train",
}


# ---------------------------------------------------------------------------------------- handlers


def cmd_train(args: argparse.Namespace) -> int:
    from tta.config import apply_overrides, load_config

    try:
        module = importlib.import_module(TRAINERS[args.kind])
    except ModuleNotFoundError as e:
        if e.name and TRAINERS[args.kind].startswith(e.name):
            raise RuntimeError(f"tta train {args.kind}: this component is not part of this tta build yet") from None
        raise
    sets = list(args.set or [])
    if getattr(args, "datastore", None) is not None or getattr(args, "neighbours", None) is not None:
        if args.kind != "ldm":
            raise UsageError(f"--datastore/--neighbours apply to `tta train ldm` only, not {args.kind}")
        if args.datastore is None:
            raise UsageError(f"--neighbours {args.neighbours} needs --datastore DIR (a `tta index build` folder)")
        sets.append(f"retrieval.datastore={json.dumps(str(args.datastore))}")
        if args.neighbours is not None:
            sets.append(f"retrieval.neighbours={args.neighbours}")
    if getattr(args, "init_from", None) is not None:
        if args.resume:
            raise UsageError("--init-from starts a new run; it cannot be combined with --resume")
        if not args.init_from.exists():
            raise FileNotFoundError(f"--init-from {args.init_from}: no such run, checkpoint, component or pipeline folder")
        sets.append(f"train.init_from={json.dumps(str(args.init_from))}")
    config = apply_overrides(load_config(module.RunConfig, args.config), sets)
    if args.resume:
        config = _as_the_run_began(module.RunConfig, config, load_config(module.RunConfig, args.config), sets, args.out)
    from tta.checkpoint import check_output_path
    from tta.training import RUN_LOCK, check_run_paths, discard_on_failure, restart_unstarted, run_lock

    check_output_path(args.out, "--out", folder=True)
    check_run_paths(config, args.out, resume=args.resume)   # before a restart clears where the run was started
    # a fresh run that fails early leaves no folder (but a pre-encoded cache/), also when a launcher stops it with
    # SIGTERM (main() turns it into an exit for every command); a second command into a folder a run is training in
    # is refused (run_lock)
    if not args.resume:
        with discard_on_failure(args.out):
            final = module.train(config, args.out, progress=not args.quiet)
    else:
        # run_lock(create=False) locks a folder that is there, and makes none: a restart is of a folder a run left;
        # a lock file it makes (in a folder no run locked: an unrelated one, refused) goes with the lock
        with run_lock(args.out, create=False, remove=not (Path(args.out) / RUN_LOCK).exists()):
            # stopped before its first checkpoint: from step 0, once what it reads is checked
            restarted = restart_unstarted(args.out, config,
                                          check=lambda c: _check_start(module, c, progress=not args.quiet))
            resume = restarted is None
            config = restarted or config
            with discard_on_failure(args.out, resume=resume, lock=False):
                final = module.train(config, args.out, resume=resume, progress=not args.quiet)
    print(final)
    return 0


def _check_start(module, config, *, progress: bool) -> None:
    """What the trainer `module` refuses before its first step, beyond `tta.training.check_restart`: its own
    checks (`check_start`) and the training split's rows, which it checks where its `train` reads them, so that
    a restart wrong in two ways names the fault a new run names; for `tta train --resume` to refuse a restart
    that would fail on them before it clears the stopped run."""
    module.check_start(config, lambda: _check_training_rows(config, progress=progress))


def _check_training_rows(config, *, progress: bool) -> None:
    """A run's training split as every trainer reads and checks it before its first step (its manifests, rows,
    audio files there and their headers readable, and the keys data.key_weights, data.repeat_gap_by_key and
    data.speed_by_key name, which some item must have), for `tta train --resume` to refuse a restart that would
    fail on it before it clears the stopped run. Only headers are read, so the sample rate (the mel contract's)
    changes nothing."""
    from tta.audio import MelConfig
    from tta.data.dataset import AudioDataset
    from tta.training import check_keyed_fields

    rows = AudioDataset.from_config(config.data, config.data.train_split, MelConfig().sample_rate, random_crop=True)
    rows.check_audio(progress=progress)
    check_keyed_fields(config.data, rows.weight_names())


def _as_the_run_began(cls, config, base, sets, out: Path):
    """For --resume: a run begun before `--set SECTION={...}` merged into the section (it replaced it) resolves
    the same command as it did then, when that, and not today's reading, gives the config the run saved."""
    from tta.config import ConfigError, apply_overrides, from_dict, to_dict

    saved_path = Path(out) / "config.json"
    if not any("={" in s for s in sets) or not saved_path.is_file():
        return config
    try:
        saved = to_dict(from_dict(cls, json.loads(saved_path.read_text())))
        legacy = apply_overrides(base, sets, merge_sections=False)
    except (ConfigError, ValueError, TypeError, OSError):
        return config

    def as_saved(d: dict) -> dict:   # the differences a resume accepts anyway (TrainingRun: length, init_from)
        train = {**d.get("train", {}), **{k: saved.get("train", {}).get(k) for k in ("max_steps", "init_from")}}
        return {**d, "train": train}

    if as_saved(to_dict(config)) != saved and as_saved(to_dict(legacy)) == saved:
        log.info("%s: --set SECTION={...} read as it was when the run began (replacing the section)", out)
        return legacy
    return config


def cmd_generate(args: argparse.Namespace) -> int:
    try:
        generate = importlib.import_module("tta.generate")
    except ModuleNotFoundError as e:
        if e.name in ("tta.generate", "tta.pipeline"):
            raise RuntimeError("tta generate: the generation pipeline and the embedded default model are not "
                               "built yet in this version of tta (see the README's status)") from None
        raise
    return generate.main(args)


# Command groups that live beside the code they drive. Each module is light to import (argparse only at
# top level) and exposes `add_parsers(parser)` (fills in the subcommand's arguments or sub-subcommands)
# and `run(args) -> int`. A group whose module is not in this build is simply not offered.
COMMAND_MODULES = [
    ("data", "tta.data.commands", "build and validate manifests (import, check, recipe)"),
    ("clap", "tta.clap.commands", "CLAP embeddings: score prompts against audio, retrieve"),
    ("eval", "eval.commands", "FAD / FD / KL / IS / CLAP score of generated audio against a reference"),
    ("report", "eval.report_commands", "HTML/Markdown report from one or more eval results"),
    ("import", "tta.interop", "an AudioLDM .ckpt or a diffusers AudioLDM folder -> a tta pipeline folder"),
    ("export", "tta.interop", "a tta pipeline folder -> a diffusers AudioLDM folder, or a compact tta copy"),
    ("index", "tta.retrieval.commands", "retrieval datastore: build, query, info"),
    ("experiment", "tta.commands.experiment", "experiments: retrieval (Re-AudioLDM variants, long-tail report)"),
]


# ----------------------------------------------------------------------------------------- parsers


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a component (vae, vocoder, vocos, postnet, clap, ldm) on a manifest",
                       description="Train a component. The run folder gets config.json (fully resolved), "
                                   "data.json (the sha256 of the manifests and frozen components, checked on "
                                   "--resume), metrics.jsonl, checkpoints/step_N/ and final/.")
    p.add_argument("kind", choices=sorted(TRAINERS),
                   help="which component to train (vocoder: HiFi-GAN; vocos: a frame-rate vocoder with an inverse "
                        "STFT; postnet: a learned magnitude front-end for Griffin-Lim)")
    p.add_argument("--config", required=True, type=Path, help="run config JSON (e.g. configs/vae/tiny.json)")
    p.add_argument("--out", required=True, type=output_path, help="run folder")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.max_steps=100 (repeatable; JSON values)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--init-from", type=Path, metavar="RUN",
                   help="fine-tune: start this new run from another run's weights (a run folder, its "
                        "checkpoints/step_N, a component folder, or a pipeline folder such as "
                        "tta/assets/default; EMA weights when present); optimizer and step start fresh "
                        "(same as --set train.init_from=RUN)")
    p.add_argument("--datastore", type=Path, metavar="DIR",
                   help="ldm only: retrieval-augmented training (Re-AudioLDM) on a `tta index build` folder "
                        "(same as --set retrieval.datastore=DIR)")
    p.add_argument("--neighbours", type=int, metavar="K",
                   help="ldm only: neighbours per clip with --datastore (same as --set retrieval.neighbours=K)")
    p.set_defaults(func=cmd_train)


class _Once(argparse.Action):
    """Store a flag's value and refuse it given twice: an edit takes one input and one range, and argparse kept the
    last one without a word (`--init-audio a.wav --init-audio b.wav` edited b.wav alone)."""

    def __call__(self, parser, namespace, values, option_string=None):
        before = getattr(namespace, self.dest, None)
        if before is not None:
            parser.error(f"{option_string} given twice ({before}, {values}): an edit takes one input audio and one "
                         f"range; run tta generate once for each")
        setattr(namespace, self.dest, values)


def save_format(value: str) -> str:
    """--format: a format save_audio writes (tta.audio.SAVE_FORMATS), checked when the flag is parsed: tta.audio
    (numpy) is not imported to build the parser, so `tta --help` stays light."""
    from tta.audio import is_save_format, save_format_names

    if not is_save_format(value):
        raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from {save_format_names('')})")
    return value


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="turn prompts into audio files (wav, flac or ogg: -o FILE's suffix or --format)",
                       description="Generate audio from text prompts with a tta pipeline folder "
                                   "(default: the embedded model). Writes a generation.json beside the outputs "
                                   "(with -o x.wav: x.generation.json).")
    p.add_argument("prompts", nargs="*", metavar="PROMPT")
    p.add_argument("-o", "--output", type=output_path,
                   help="output file (one prompt; its suffix is the format: a --format name, e.g. x.flac)")
    p.add_argument("--out-dir", type=output_path, help="output folder (many prompts; default: the current folder)")
    p.add_argument("--format", type=save_format, metavar="FORMAT",
                   help="the format of a batch's files (in --out-dir or the current folder): wav (16-bit PCM; "
                        "the default), flac (the same 16-bit samples, lossless, about half the size) or ogg "
                        "(Vorbis, lossy); every output takes its suffix (a --prompts row's file field names the "
                        "output without its own), generation.json records it and --resume continues in it "
                        "(another --format is refused). With -o FILE it must agree with FILE's suffix")
    p.add_argument("--prompts", dest="prompts_file", type=Path,
                   help="txt (one prompt per line), CSV or JSONL file with a prompt column/key and an optional "
                        "file or id column, which names the output (as `tta eval --prompts` pairs it; an id a "
                        "file name cannot be is escaped: 'clotho/a_dog' -> clotho%%2Fa_dog.wav, or .flac with "
                        "--format flac)")
    p.add_argument("--resume", action="store_true",
                   help="with --out-dir (or the current folder): continue a batch that stopped part-way; keeps the "
                        "outputs its generation.json lists with the bytes it records and generates the rest, refusing "
                        "when the model, a setting or a row it wrote differs (rows added at the end are generated)")
    p.add_argument("--model", type=Path, help="pipeline folder (default: the embedded model)")
    p.add_argument("--seconds", type=float, help="length of each clip (default: the model's, usually 10)")
    p.add_argument("--steps", type=int, help="sampler steps (default: the model's)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (<= 1 disables it)")
    p.add_argument("--negative", default="", help="negative prompt (the unconditional branch's text)")
    p.add_argument("--guidance-rule", choices=["cfg", "apg"],
                   help="cfg: classifier-free guidance; apg: its push orthogonal to the conditional estimate only "
                        "(adaptive projected guidance; default: the model's)")
    p.add_argument("--precision", choices=["float32", "bfloat16", "auto"],
                   help="the UNet's arithmetic while sampling: bfloat16 runs it under autocast (faster on CPUs "
                        "with AVX512-BF16 or AMX and on most GPUs, slower where bfloat16 is emulated); auto picks "
                        "bfloat16 only where the hardware has it (default: the model's)")
    p.add_argument("--context-guidance", choices=["shared", "guided"],
                   help="retrieval models with --datastore: shared = both guidance branches see the neighbours; "
                        "guided = the unconditional branch sees the null context, so guidance also amplifies what "
                        "the neighbours change (default: the model's)")
    p.add_argument("--candidates", type=int, help="clips drawn per prompt; the best by the model's CLAP score is kept "
                   "(default: the model's; the embedded model draws 2)")
    p.add_argument("--takes", type=int, default=1, metavar="N",
                   help="files written per prompt (default 1): N takes of each prompt, each its own file, where "
                        "--candidates draws several clips behind each file and keeps one. The run is the one with "
                        "each prompt written N times in a row (row r takes seed SEED + r, the same bytes): a row "
                        "named by its file or id names its takes NAME_1 .. NAME_N, others are NNN_<slug> by row; "
                        "needs --out-dir (or the current folder), not -o. --resume adds takes of an unnamed prompt, "
                        "and of a named row from --takes 2 up; fewer takes, or a changed --takes of several "
                        "prompts, are refused")
    p.add_argument("--window", type=float, metavar="S",
                   help="sample at least S seconds and cut to --seconds (default: the model's window, 10.24 "
                        "for the embedded model, which was trained on 10.24 s clips; 0 = sample exactly --seconds)")
    p.add_argument("--seed", type=int, default=0,
                   help="prompt i of the run (in order; with --takes, each take is a row) takes seed SEED + i (default "
                        "0); for new variations of a batch of N rows, move --seed by N or more, else its rows repeat "
                        "earlier rows' noise")
    p.add_argument("--sampler", help="ddim, dpmsolver++, euler, euler_a, heun, lms, pndm or ddpm")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta (0 = deterministic; default: the model's, "
                   "usually 0)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="prompts generated together; each brings its candidates into the same pass (default 1)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="torch device (default auto: CUDA, then MPS, then the CPU)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch (default: torch's, one per core). On a busy machine 1 can be twice as "
                        "fast as 2; the output's bytes depend on it (recorded in generation.json)")
    p.add_argument("--init-audio", type=Path, action=_Once, metavar="WAV",
                   help="audio-to-audio / style transfer input")
    p.add_argument("--strength", type=float, default=None,
                   help="with --init-audio: how much to change (0, 1]; default 0.5")
    p.add_argument("--inpaint", type=Path, action=_Once, metavar="WAV",
                   help="audio to inpaint (with --mask START:END)")
    p.add_argument("--mask", action=_Once, metavar="START:END", help="with --inpaint: seconds to regenerate")
    p.add_argument("--outside", choices=["original", "decoded"],
                   help="with --inpaint or --super-resolution, what the output holds outside the regenerated part "
                        "(the gap; the band below --cutoff): the input's own audio (original, the default; 20 ms "
                        "crossfades at a gap's edges, a crossover just below the cutoff) or the whole clip as the VAE "
                        "and vocoder decode it (decoded, as AudioLDM: the kept part as the model renders it, e.g. "
                        "speech 2-5 dB quieter below 1 kHz with the embedded model, whose VAE round trip alone loses "
                        "2-4 dB there)")
    p.add_argument("--super-resolution", type=Path, action=_Once, metavar="WAV",
                   help="band-limited audio whose upper mel bands are regenerated (with --cutoff)")
    p.add_argument("--cutoff", type=float, metavar="HZ", help="with --super-resolution: highest kept frequency")
    p.add_argument("--edit", choices=["init-audio", "inpaint", "super-resolution"], metavar="KIND",
                   help="edit many clips in one run: each row of --prompts FILE (CSV/JSONL) edits the audio its input "
                        "field names (a path relative to FILE's folder), as --init-audio, --inpaint or "
                        "--super-resolution edits one (KIND: init-audio, inpaint or super-resolution; --strength, "
                        "--mask, --cutoff and --outside apply to every row). A row whose input is missing or bad is "
                        "reported and left out, the others are written, and the run exits 1; rows run one at a "
                        "time (no --batch-size), row i with seed SEED + i")
    p.add_argument("--datastore", type=Path, metavar="DIR",
                   help="retrieval models: condition each prompt on its nearest entries of this datastore "
                        "(built with the model's CLAP); without it they run on the null context")
    p.add_argument("--neighbours", type=int, metavar="K",
                   help="with --datastore: neighbours per prompt (default: the k the model was trained with)")
    p.set_defaults(func=cmd_generate)


def _add_modules(sub) -> None:
    import importlib.util

    for name, module_name, help_text in COMMAND_MODULES:
        try:
            found = importlib.util.find_spec(module_name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip().splitlines()[0])
        module.add_parsers(p)
        p.set_defaults(func=module.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tta", description="tta: offline-first text-to-audio toolkit "
                                     "(mel-VAE + CLAP-conditioned latent diffusion + HiFi-GAN).")
    parser.add_argument("--version", action="version", version=f"tta {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only; no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_generate(sub)
    _add_train(sub)
    _add_modules(sub)
    _numbers_as_values(parser)
    _logging_flags_anywhere(parser, top=True)
    return parser


def _logging_flags_anywhere(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """-v and -q in every sub-command too (`tta generate "rain" -q` was "unrecognized arguments: -q"): there they
    leave the value the top level set unless given (SUPPRESS), so `tta -q generate` still works."""
    if not top:
        parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                            help="debug logging and full tracebacks (as `tta -v`)")
        parser.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                            help="warnings and errors only; no progress bars (as `tta -q`)")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _logging_flags_anywhere(sub)


def _numbers_as_values(parser: argparse.ArgumentParser) -> None:
    """Take an argument that starts with "-" and a digit (`--mask -1:1`, `--cutoff -1e3`) as a value, in
    `parser` and its sub-commands, as argparse takes "-1" and "-0.5": it read the others as options, and the
    flag's own check, which names what it expects, never saw them ("expected one argument"). No tta option
    starts with a digit."""
    parser._negative_number_matcher = re.compile(r"-\.?\d.*", re.DOTALL)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _numbers_as_values(sub)


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    if argv is None:   # the process's own command line: it ends now, and the interpreter's last garbage collection
        import gc      # need not walk what the command loaded (~0.7 s after `tta generate`)

        gc.freeze()
    return code


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    handler = _BesideProgressBars()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root_level = logging.root.level
    logging.basicConfig(level=level, handlers=[handler])   # (where no handler is there: a caller's own is kept)
    from tta.checkpoint import Terminated, terminate_as_exit

    try:
        # SIGTERM (kill, timeout, a batch scheduler, docker stop) unwinds as an exception, so every command's
        # clean-up runs: temporary files and folders are removed and a stopped batch keeps its record
        with terminate_as_exit(), _others_beside_progress_bars(handler, verbose=args.verbose), _stdout_while_read():
            return int(args.func(args) or 0)
    except UsageError as e:   # one line, as for bad input, but exit 2 as argparse's own usage errors
        _end_progress_bars()
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"tta: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _end_progress_bars()
        print("tta: interrupted", file=sys.stderr)
        return 130
    except Terminated as e:   # SIGTERM, as Ctrl-C: the process ended without a word (128 + 15)
        _end_progress_bars()
        print("tta: terminated", file=sys.stderr)
        return e.code
    except Exception as e:  # the one place a user-facing error is turned into a line and an exit code
        _end_progress_bars()
        if args.verbose:
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, OSError) and e.filename is not None and e.strerror:   # not "[Errno 17] File exists: ..."
            # a rename names its source, often a hidden temporary file, first: the destination is the user's
            message = f"{e.filename2 if e.filename2 is not None else e.filename}: {e.strerror}"

        print(f"tta: error: {message}", file=sys.stderr)
        return 1
    finally:
        # main() called from Python (a script, a notebook): the root logger as it was, not at the command's level
        # with tta's handler for good (every later record of the caller's at INFO or, after -v, DEBUG shown in
        # tta's format, and a later main()'s -q or -v not taken, basicConfig doing nothing once it has a handler)
        if handler in logging.root.handlers:
            logging.root.removeHandler(handler)
            logging.root.setLevel(root_level)


class _BesideProgressBars(logging.StreamHandler):
    """The log's handler: a record written while a progress bar is open starts on its own line and leaves the bar
    whole. It went on at the end of the bar's line ("... 2.24it/s]INFO tta.training: checkpoint ..."), in a
    terminal and in a log file alike. In a terminal tqdm clears the bars, the record is written and the bars are
    drawn again below it; elsewhere (a file, a pipe) the bar's line is ended with a newline instead of being
    blanked ("\\r" and spaces), and the bar is written again after the record. With no bar open (no tqdm loaded,
    -q) a record is written as StreamHandler writes it. Python's warnings take the same path while a command
    runs (write_lines, _others_beside_progress_bars)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_lines(self.format(record))
        except RecursionError:
            raise
        except Exception:   # noqa: BLE001 -- as StreamHandler: logging reports it and the command goes on
            self.handleError(record)

    def write_lines(self, message: str) -> None:
        """Write `message` (one line or several, no newline at its end) and a newline beside the open bars."""
        tqdm = getattr(sys.modules.get("tqdm"), "tqdm", None)   # never imported here: `tta --help` stays light
        bars = [bar for bar in list(getattr(tqdm, "_instances", ())) if _draws_on(bar, self.stream)]
        if not bars:
            self.stream.write(message + self.terminator)
        elif _is_terminal(self.stream):
            tqdm.write(message, file=self.stream)
        else:
            with tqdm.get_lock():
                self.stream.write(f"\n{message}\n")
                for bar in bars:
                    bar.refresh(nolock=True)
        self.flush()


class _WarningsBesideProgressBars:
    """The file Python's warnings are written to while a command runs (as they are, to stderr): through the
    log's handler, so that a warning raised while a bar is open starts on its own line. One came at the end of
    the training bar's line ("train run:   0%|   | 0/2 [00:00<?, ?it/s]/.../dataloader.py:437: UserWarning:
    This DataLoader will create 3 worker processes ...")."""

    def __init__(self, handler: _BesideProgressBars):
        self.handler = handler

    def write(self, text: str) -> None:
        self.handler.acquire()
        try:
            self.handler.write_lines(text.rstrip("\n"))
        finally:
            self.handler.release()


@contextlib.contextmanager
def _others_beside_progress_bars(handler: _BesideProgressBars, *, verbose: bool) -> Iterator[None]:
    """While a command runs, Python's warnings and transformers' and diffusers' log records are written as tta's
    own records are, beside the open progress bars (`handler`), and the command's -q/-v decide which of their
    records show, as they decide for the other libraries': under -v their own verbosity (warnings), otherwise
    errors only. Each writes with a handler of its own, not through the root logger's, and at its import (inside
    a command) set its level to warnings again: "[transformers] Token indices sequence length is longer ..."
    came at the end of `tta generate`'s bar, without -v too, and `tta -q import diffusers` of a folder whose
    scheduler_config.json has a key its class does not take printed diffusers' "The config attributes {...} were
    passed to DDIMScheduler, but are not expected ...". Their handlers are left out, their records go to the root
    logger's handler (tta's), until the command ends, when they are as they were. So are the levels of all of
    NOISY_LIBRARIES (errors only without -v): main() called from Python (a notebook, a script) left them at
    errors for good, transformers' and diffusers' verbosity with them; a library first imported by the command
    is left at the level its own set-up gives, as if the caller had imported it. Their own progress bars are off
    while a command runs, -q or not, and as they were when it ends: tta's bars are the command's, and
    transformers drew a "Loading weights" bar per model it loaded and a "Writing model shards" bar per model it
    saved (`tta export diffusers`, `tta import diffusers|audioldm` of a LAION-CLAP, `tta generate` with one).
    huggingface_hub's bars are not touched (`set_library_bars`)."""
    import warnings

    show = warnings.showwarning   # as it is (a recorder in catch_warnings(record=True) keeps recording)

    def show_beside_bars(message, category, filename, lineno, file=None, line=None):
        show(message, category, filename, lineno, _WarningsBesideProgressBars(handler) if file is None else file,
             line)

    undo: list = []

    def route(hf_logging) -> None:   # transformers.utils.logging or diffusers.utils.logging: the same functions
        logger = logging.getLogger(hf_logging.__name__.split(".")[0])
        hf_logging.get_verbosity()   # the library sets its logger up on first use: its handler, level, propagate
        handlers, propagate, level = list(logger.handlers), logger.propagate, logger.level
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_default_handler()
        hf_logging.enable_propagation()
        set_library_bars(hf_logging, False)   # theirs alone: huggingface_hub's bars are the caller's
        if not verbose:
            logger.setLevel(logging.ERROR)

        def restore() -> None:
            logger.propagate = propagate
            logger.setLevel(level)
            set_library_bars(hf_logging, bars)
            for i, h in enumerate(handlers):   # where it was among them
                if h not in logger.handlers:
                    logger.handlers.insert(i, h)

        undo.append(restore)

    levels = {name: logging.getLogger(name).level for name in NOISY_LIBRARIES}
    warnings.showwarning = show_beside_bars
    hooks = [_AfterImport(f"{library}.utils.logging", route) for library in ("transformers", "diffusers")]
    for hook in hooks:
        if hook.name in sys.modules:
            route(sys.modules[hook.name])
        else:
            sys.meta_path.insert(0, hook)
    if not verbose:
        for name in NOISY_LIBRARIES:
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        warnings.showwarning = show
        for hook in hooks:
            hook.remove()
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for restore in undo:   # after: one the command imported takes the level its set-up gave it
            restore()


class _StdoutWhileRead:
    """sys.stdout while a command runs: once its reader has gone (`tta generate ... | head -2`, a pipe closed), what
    is written to it is dropped, and the command goes on to its end as it would have. It stopped at the next
    print with "tta: error: [Errno 32] Broken pipe" and exit 1 (from a batch whose files and record were all
    written), or, when the paths were still in stdout's buffer, the interpreter's last flush said "Exception
    ignored ... BrokenPipeError" and the process exited 120. Its file descriptor is pointed at the null device,
    so that last flush writes what is left there. A BrokenPipeError raised by another pipe or socket is an
    error as before."""

    def __init__(self, stream) -> None:
        self.stream, self.gone = stream, False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self.stream.write(text)
            except BrokenPipeError:
                self._went()
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if not self.gone:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._went()

    def _went(self) -> None:
        self.gone = True
        try:
            fd = self.stream.fileno()
        except (AttributeError, ValueError, OSError):   # no file descriptor (a stream in memory): dropped here only
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)

    def __getattr__(self, name: str):   # isatty, fileno, encoding, buffer, ...: the stream's own
        return getattr(self.stream, name)


@contextlib.contextmanager
def _stdout_while_read() -> Iterator[None]:
    """sys.stdout is a _StdoutWhileRead while the command runs, flushed as it ends: what its buffer holds then is
    written by then, not by the interpreter's last flush after main() returns."""
    if sys.stdout is None:   # started with stdout closed (`>&-`): print() writes nothing
        yield
        return
    before = sys.stdout
    stdout = sys.stdout = _StdoutWhileRead(before)
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError, ValueError):   # the command's own error is the one to report
            stdout.flush()
        raise
    else:
        stdout.flush()   # e.g. a full disk under `> file`: an error of the command's
    finally:
        if sys.stdout is stdout:
            sys.stdout = before


class _AfterImport:
    """A meta-path finder that calls `then(module)` once the module `name` is imported (and does not otherwise
    change how it is found or loaded). It leaves sys.meta_path when the module runs (a lookup alone, such as
    importlib.util.find_spec, does not end it: the import that follows finds the module again); the loader's
    exec_module, wrapped for the latest lookup, is its own again when the module runs, at the next lookup, or
    when `remove` is called (a loader may load several modules: a zipimporter loads every module of its
    archive's folder)."""

    def __init__(self, name: str, then) -> None:
        self.name, self.then = name, then
        self._unwrap = None   # puts the wrapped loader's exec_module back, while it is wrapped

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname != self.name:
            return None
        for finder in sys.meta_path:   # the spec the import system would find without this finder
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if self._unwrap is not None:   # an earlier lookup's loader, whose module did not run
            self._unwrap()
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module, then = loader.exec_module, self.then
        own = getattr(loader, "__dict__", {}).get("exec_module")   # one set on the loader itself, else its class's

        def unwrap() -> None:
            if own is None:
                del loader.exec_module
            else:
                loader.exec_module = own
            self._unwrap = None

        def exec_then(module) -> None:
            if getattr(module, "__name__", None) != fullname:   # another module of a shared loader
                exec_module(module)
                return
            self.remove()   # before it runs: what it imports through the same loader is loaded as usual
            exec_module(module)
            then(module)

        try:
            loader.exec_module = exec_then
        except (AttributeError, TypeError):   # a loader that takes no attributes: imported as it would be
            return spec
        self._unwrap = unwrap
        return spec

    def remove(self) -> None:
        """Leave sys.meta_path, and put back a loader's exec_module still wrapped (its module not yet run)."""
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        if self._unwrap is not None:
            self._unwrap()


def _draws_on(bar, stream) -> bool:
    """Whether an open progress bar is drawn where `stream` writes (tqdm's own rule: stdout and stderr share a
    terminal)."""
    if getattr(bar, "disable", True) or not hasattr(bar, "start_t"):
        return False
    if bar.fp == stream:
        return True
    return _is_terminal(stream) and all(f in (sys.stdout, sys.stderr) for f in (bar.fp, stream))


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):   # no isatty, or closed
        return False


def _end_progress_bars() -> None:
    """End the progress bars a stopped command left open (a training run's bar stays open until final/): the
    error line went on at the end of the bar's line ("... it/s, loss=1.2]tta: error: ...")."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        try:
            bar.close()
        except Exception:   # noqa: BLE001 -- a bar that cannot be drawn must not hide the error
            pass


if __name__ == "__main__":
    sys.exit(main())
