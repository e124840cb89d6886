"""`tta eval`: embed two folders (or a folder and reference statistics), compute the asked metrics, and
write `eval.json` (every number with its protocol) and `items.csv` (one row per generated file).

Metrics: `fad` (Fréchet distance of the chosen embedder's embeddings, all of them pooled: frames for
mfcc/vggish/aisfx as fadtk and the FAD paper do, one per clip for panns/clap/laion-clap; the protocol
says which), `fd` (Fréchet distance of PANNs Cnn14 clip embeddings), `kl` (PANNs, paired by file name;
needs > 99 % of both sets paired, as audioldm_eval), `is` (PANNs logits), `clap` (CLAP score; needs
--prompts and --clap). Unreadable files are skipped, reported by name and counted; two files whose
names differ only in the suffix (x.wav, x.flac) are refused; nothing is dropped silently.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import logging
import os
import platform
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eval.cache import EmbeddingCache, content_hash
from eval.embedders import CLAP_KINDS, Embedder, get_embedder
from eval.fad import FrechetDistanceMetric, FrechetStats, StatsError, fad_infinity
from eval.outputs import write_outputs
from eval.prompts import PromptRow, read_prompts
from tta.audio import AUDIO_SUFFIXES, SILENCE_DB, audio_entries
from tta.clap.interval import clap_interval
from tta.config import check_number, option_name, shortened
from tta.data.prompts import RecordedOutput, match_audio, recorded_outputs, takes_run
from tta import UsageError

log = logging.getLogger(__name__)

METRICS = ("fad", "fd", "kl", "is", "clap")


class EvalError(ValueError):
    """Inputs that cannot be evaluated; the message names the folder/file/option and what was expected."""


class EvalUsageError(EvalError, UsageError):
    """Options that do not go together: a flag combination, so `tta eval` exits 2."""


class ClapUsageError(EvalUsageError):
    """--metrics clap without what it needs: a flag combination, so `tta eval` exits 2."""


@dataclass(frozen=True)
class EvalOptions:
    generated: Path
    reference: Path  # a folder of audio, or a `.npz` of reference statistics (fad only)
    out: Path
    metrics: tuple[str, ...] = ("fad",)
    embedder: str = "mfcc"
    embedder_weights: str | None = None  # local weights for vggish / panns / aisfx (refused for the others)
    panns_weights: str | None = None  # for fd / kl / is when the embedder is not panns
    clap_model: str | None = None
    clap_tokenizer: str | None = None  # local RoBERTa tokenizer folder for an original LAION .pt
    prompts: Path | None = None
    cache_dir: Path | None = None  # default: $TTA_CACHE_DIR/eval or ~/.cache/tta/eval
    fad_inf: bool = False
    batch_size: int = 32
    progress: bool = True
    flags: bool = False   # errors name an option as `tta eval`'s flag typed (--embedder-weights), not as the field

    def __post_init__(self) -> None:
        for name in ("generated", "reference", "out", "prompts", "cache_dir"):   # str paths from Python callers
            value = getattr(self, name, None)
            if isinstance(value, str):
                object.__setattr__(self, name, Path(value))
        if isinstance(self.metrics, str):   # each character would be a metric: "unknown ['f', 'a', 'd']"
            raise EvalError(f"metrics={self.metrics!r}: expected a tuple of metric names, e.g. ('fad', 'clap'), got "
                            "a single str")
        bad = [m for m in self.metrics if m not in METRICS]
        if bad or not self.metrics:
            raise EvalError(f"--metrics: unknown {bad or 'empty list'}; valid metrics: {', '.join(METRICS)}")
        object.__setattr__(self, "batch_size", check_number(self.batch_size, int, "batch_size", EvalError))
        if self.batch_size < 1:
            raise EvalError(f"batch_size={self.batch_size!r} must be an integer >= 1")
        named = functools.partial(option_name, flags=self.flags)
        check_embedder_weights(self.embedder, self.embedder_weights, embedder_field=named("embedder"),
                               weights_field=named("embedder_weights"),
                               clap_field=named("clap_model", flag="--clap"),
                               error=EvalUsageError)


@dataclass
class EmbeddedSet:
    """Per-file results for one folder: keys are file paths relative to the folder, without suffix."""

    folder: Path
    files: dict[str, Path] = field(default_factory=dict)
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)  # (frames, D)
    logits: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    sample_rates: Counter = field(default_factory=Counter)  # original rates of the readable files
    skipped: list[dict] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)  # content hash per file (embedded sets only)

    def in_file_order(self) -> list[str]:
        """The embedded keys in the folder's file order, whichever came from the cache: pooled in another order the
        statistics, and the FAD, differ in their last digits between a warm, a cold and a partly warm cache."""
        return [k for k in self.files if k in self.embeddings]

    def protocol(self) -> dict:
        out = {"folder": str(self.folder.resolve()), "files_found": len(self.files) + len(self.skipped),
               "files_used": len(self.files), "files_skipped": len(self.skipped), "skipped": self.skipped,
               "original_sample_rates": {str(k): v for k, v in sorted(self.sample_rates.items())}}
        if self.skipped:   # shown beside the scores (tta report), which describe the readable files alone
            first, reason = self.skipped[0]["file"], self.skipped[0]["reason"]
            first = reason if reason.startswith(f"{first}: ") else f"{first}: {reason}"   # an AudioError names it
            out["warning"] = (f"{len(self.skipped)} of {out['files_found']} files in {self.folder} could not be "
                              f"scored and are left out (first: {first})")
        if self.digests:  # what the files hold, wherever the folder is: runs on the same audio share it
            lines = "\n".join(f"{k}:{self.digests[k]}" for k in sorted(self.digests))
            out["content_sha256"] = hashlib.sha256(lines.encode()).hexdigest()[:16]
        return out


def list_audio(folder: Path, what: str) -> list[Path]:
    if not folder.exists():
        raise EvalError(f"{what} {folder}: folder not found")
    if not folder.is_dir():
        raise EvalError(f"{what} {folder}: expected a folder of audio files")
    files = audio_entries(folder)   # a dead link is reported, not left out
    if not files:
        raise EvalError(f"{what} {folder}: no audio files (looked for {', '.join(AUDIO_SUFFIXES)})")
    seen: dict[str, Path] = {}
    for path in files:  # results are keyed by name without suffix: x.wav and x.flac would collide
        key = _key(folder, path)
        if key in seen:
            raise EvalError(f"{what} {folder}: {seen[key].relative_to(folder)} and {path.relative_to(folder)} have "
                            f"the same name without suffix ({key}); results are keyed by name, keep only one of them")
        seen[key] = path
    return files


def _key(folder: Path, path: Path) -> str:
    return path.relative_to(folder).with_suffix("").as_posix()


def default_cache_dir() -> Path | None:
    """$TTA_CACHE_DIR/eval, else ~/.cache/tta/eval; None (no cache) for a user without a home folder."""
    root = os.environ.get("TTA_CACHE_DIR")
    if root:
        return Path(root) / "eval"
    home = os.path.expanduser("~")
    if home.startswith("~"):
        log.warning("no home folder: the embedding cache is off (--cache-dir or $TTA_CACHE_DIR names one)")
        return None
    return Path(home) / ".cache" / "tta" / "eval"


def scan_folder(folder: Path, what: str) -> EmbeddedSet:
    """List the readable audio files of a folder (header check only) without embedding them."""
    from tta.audio import AudioError, audio_info

    result = EmbeddedSet(folder=folder)
    for path in list_audio(folder, what):
        try:
            info = audio_info(path)
        except AudioError as e:
            result.skipped.append({"file": str(path), "reason": str(e)})
            continue
        key = _key(folder, path)
        result.files[key], result.seconds[key] = path, info.seconds
        result.sample_rates[info.sample_rate] += 1
    if not result.files:
        raise EvalError(f"{what} {folder}: none of the audio files could be read")
    return result


# the words are the rule's identity: an eval.json or a reference's statistics that record other words read float
# and 24-bit files otherwise (the words before "nearest step" put a sample on the step below, as libsndfile
# writes a float into a 16-bit WAV; save_audio writes the nearest)
AUDIO_READ = ("mono (channels averaged), rounded to the nearest step of the 16-bit PCM grid, then resampled to the "
              "embedder's rate: a mono float or 24-bit file scores as its 16-bit copy (fadtk reads every file as "
              "16-bit)")


def on_pcm16_grid(info) -> bool:
    """Whether a file's decoded mono samples already lie on the 16-bit grid (reading it at 16 bits changes
    nothing): mono 8- or 16-bit PCM."""
    return info.channels == 1 and info.subtype in ("PCM_16", "PCM_S8", "PCM_U8")


def embed_folder(folder: Path, embedder: Embedder, cache: EmbeddingCache | None, *, what: str,
                 want_logits: bool = False, batch_size: int = 32, progress: bool = True) -> EmbeddedSet:
    """Load, resample and embed every audio file under `folder` (cached by content hash + embedder)."""
    from tqdm.auto import tqdm

    from tta.audio import AudioError, audio_info, load_audio, raise_resource_error

    folder = Path(folder)
    result = EmbeddedSet(folder=folder)
    files = list_audio(folder, what)
    rates: dict[str, int] = {}
    bar = tqdm(total=len(files), disable=not progress, desc=f"{what} [{embedder.name}]", unit="file")
    for start in range(0, len(files), batch_size):
        todo: list[tuple[str, str, np.ndarray]] = []
        for path in files[start:start + batch_size]:
            key = _key(folder, path)
            try:
                info = audio_info(path)
                digest = content_hash(path)
                # read at 16-bit resolution (AUDIO_READ); entries of files that changes are keyed apart from the
                # embeddings of the same bytes read at full resolution, or rounded down to the grid ("-pcm16"),
                # by earlier versions
                entry = digest if on_pcm16_grid(info) else f"{digest}-pcm16-nearest"
                emb = cache.get(entry) if cache else None
                logit = cache.get(entry, "logits") if cache and want_logits else None
                if emb is None or (want_logits and logit is None):
                    wav, _ = load_audio(path, sample_rate=embedder.sample_rate, pcm16=True)
                    todo.append((key, entry, wav))
            except (AudioError, OSError) as e:   # (hashing: the file gone or not readable to this user)
                raise_resource_error(e, path)   # out of file descriptors or memory: the machine's, not the file's
                log.warning("skipping unreadable file: %s", e)
                result.skipped.append({"file": str(path), "reason": str(e)})
                continue
            result.files[key] = path
            result.digests[key] = digest
            result.seconds[key] = info.seconds
            result.sample_rates[info.sample_rate] += 1
            rates[key] = info.sample_rate
            if emb is not None and (not want_logits or logit is not None):
                result.embeddings[key] = emb
                if want_logits:
                    result.logits[key] = logit
        if todo:
            todo, embs, logits, failed = _embed_todo(embedder, todo, want_logits)
            for key, reason in failed.items():  # reported like an unreadable file, by name
                path = result.files.pop(key)
                result.digests.pop(key)
                rate = rates.pop(key)
                result.sample_rates[rate] -= 1
                if not result.sample_rates[rate]:
                    del result.sample_rates[rate]
                result.seconds.pop(key)
                log.warning("skipping %s: %s", path, reason)
                result.skipped.append({"file": str(path), "reason": reason})
            for (key, entry, _), emb, logit in zip(todo, embs, logits):
                result.embeddings[key] = emb
                if cache:
                    cache.put(entry, emb)
                if want_logits:
                    result.logits[key] = logit
                    if cache:
                        cache.put(entry, logit, "logits")
        bar.update(len(files[start:start + batch_size]))
    bar.close()
    if not result.files:
        raise EvalError(f"{what} {folder}: none of the {len(files)} audio files could be read "
                        f"(first: {result.skipped[0]['reason']})")
    return result


def _embed_todo(embedder: Embedder, todo: list, want_logits: bool):
    """Embed a batch of loaded clips -> (clips embedded, embeddings, logits, {key: reason} of failed clips).

    When the batch fails on a clip the embedder cannot take (too short for its front end, ...), the clips
    are embedded one by one and the failing ones are returned, so that one bad clip does not stop the run."""
    from tta.audio import AudioError

    def run(items):
        wavs = [w for _, _, w in items]
        return embedder.embed_batch(wavs), embedder.logits(wavs) if want_logits else [None] * len(items)

    try:
        return (todo, *run(todo), {})
    except AudioError as e:
        if len(todo) == 1:
            return [], [], [], {todo[0][0]: str(e)}
    kept, embs, logits, failed = [], [], [], {}
    for item in todo:
        try:
            (emb,), (logit,) = run([item])
        except AudioError as e:
            failed[item[0]] = str(e)
            continue
        kept.append(item)
        embs.append(emb)
        logits.append(logit)
    return kept, embs, logits, failed


def _frames(s: EmbeddedSet, keys=None) -> np.ndarray:
    return np.concatenate([s.embeddings[k] for k in (keys if keys is not None else s.in_file_order())])


def fad_value(gen: EmbeddedSet, ref: FrechetStats, dim: int, keys=None) -> dict:
    metric = FrechetDistanceMetric(dim)
    metric.set_reference(ref)
    for k in (keys if keys is not None else gen.in_file_order()):
        metric.update(gen.embeddings[k], generated=True)
    n = int(metric.gen_n.item())
    if n < 2:
        return {"value": None, "frames": n, "note": "fewer than 2 embeddings"}
    return {"value": float(metric.compute()), "frames": n, "files": len(keys if keys is not None else gen.embeddings)}


def few_frames_warning(what: str, n: int, dim: int, warnings: list | None = None) -> str | None:
    """Log (and collect) a warning when a Fréchet set has fewer than MIN_FRAMES_PER_DIM x D embeddings (the
    per-category rule, eval.breakdown): below D the covariance is singular, below 5 x D the small-sample bias
    still moves the distance more than differences between sets of other sizes."""
    from eval.breakdown import MIN_FRAMES_PER_DIM

    if n >= MIN_FRAMES_PER_DIM * dim:
        return None
    if n < dim:
        msg = (f"{what}: {n} embeddings for {dim} dimensions; the covariance is singular and the Fréchet "
               "distance is dominated by the small-sample bias (use more audio)")
    else:
        msg = (f"{what}: {n} embeddings, fewer than {MIN_FRAMES_PER_DIM} x D = {MIN_FRAMES_PER_DIM * dim}; the "
               "distance is biased upward by the small set: compare only sets of similar size (use more audio)")
    log.warning(msg)
    if warnings is not None:
        warnings.append(msg)
    return msg


def band_warning(what: str, gen: EmbeddedSet, ref: EmbeddedSet, embedder: Embedder, warnings: list) -> str | None:
    """Log (and collect) a warning when the embedder hears a band in one set that the other set's files lack: files
    at a rate under the embedder's hold nothing above half their rate, so 16 kHz generated audio against a 44.1 kHz
    reference, embedded at 44.1 kHz, scores the missing 8-22 kHz band as a difference (the same audio, once at
    16 kHz: FAD 253 where another draw of it at 44.1 kHz gave 8)."""
    heard = [sorted({min(r, embedder.sample_rate) for r in s.sample_rates}) for s in (gen, ref)]
    if heard[0] == heard[1]:
        return None
    msg = (f"{what}: the {embedder.name} embedder hears up to {embedder.sample_rate / 2000:g} kHz, and the generated "
           f"files are at {_rates(gen)} but the reference files at {_rates(ref)}: the band one set lacks counts as a "
           "difference; resample both to one rate to compare what was generated")
    log.warning(msg)
    warnings.append(msg)
    return msg


def _rates(s: EmbeddedSet) -> str:
    return "/".join(f"{r / 1000:g}" for r in sorted(s.sample_rates)) + " kHz"


def run_eval(opts: EvalOptions) -> dict:
    """Evaluate and write `opts.out/eval.json` + `items.csv`; returns the eval.json content."""
    metrics = tuple(dict.fromkeys(opts.metrics))
    ref_is_stats = opts.reference.suffix == ".npz"
    if ref_is_stats and set(metrics) - {"fad", "clap"}:
        raise EvalError(f"--reference {opts.reference} is a statistics file; it serves fad only, "
                        f"{'/'.join(sorted(set(metrics) - {'fad', 'clap'}))} need a reference folder")
    if "clap" in metrics and (opts.prompts is None or not opts.clap_model):   # bad usage (exit 2); an EvalError too
        raise ClapUsageError("--metrics clap needs --prompts FILE (prompt per generated file) and --clap CLAP "
                             f"({CLAP_KINDS})")
    if "fad" in metrics and opts.embedder in ("clap", "laion-clap") and not opts.clap_model:   # as bad a usage
        raise ClapUsageError(f"--embedder {opts.embedder} needs --clap CLAP ({CLAP_KINDS})")
    cache_root = opts.cache_dir or default_cache_dir()
    unwritable: set[Path] = set()   # shared by this run's caches: a folder it cannot write is warned about once
    result: dict = {"metrics": {}, "protocol": {}, "breakdown": {}}
    items: dict[str, dict] = {}
    stats_out: dict[str, FrechetStats] = {}  # written with eval.json at the end: a failed run writes nothing

    embedder = None
    gen = ref_set = pgen = None
    ref_stats: FrechetStats | None = None
    if "fad" in metrics:
        embedder = fad_embedder(opts)
        cache = EmbeddingCache(cache_root, embedder.identity, unwritable=unwritable) if cache_root else None
        gen = embed_folder(opts.generated, embedder, cache, what="generated", batch_size=opts.batch_size,
                           progress=opts.progress)
        if ref_is_stats:
            ref_stats = FrechetStats.load(opts.reference, expected_embedder=embedder.identity)
            ref_protocol = {"stats_file": str(opts.reference.resolve()), "frames": ref_stats.n,
                            "files_used": ref_stats.num_files, "sample_rate": ref_stats.sample_rate,
                            "audio_read": ref_stats.audio_read or None}
        else:
            ref_set = embed_folder(opts.reference, embedder, cache, what="reference", batch_size=opts.batch_size,
                                   progress=opts.progress)
            try:
                ref_stats = FrechetStats.from_embeddings(_frames(ref_set), embedder=embedder.identity,
                                                         sample_rate=embedder.sample_rate,
                                                         num_files=len(ref_set.embeddings), audio_read=AUDIO_READ)
            except StatsError as e:
                raise EvalError(f"reference {opts.reference}: {e}") from None
            stats_out["reference_stats.npz"] = ref_stats
            ref_protocol = ref_set.protocol()
        fad = fad_value(gen, ref_stats, embedder.dim)
        if fad["value"] is None:
            raise EvalError(f"generated {opts.generated}: fewer than 2 {embedder.name} embeddings; FAD needs more audio")
        warnings: list[str] = []
        for what, n in (("FAD generated", fad["frames"]), ("FAD reference", ref_stats.n)):
            few_frames_warning(what, n, embedder.dim, warnings)
        if ref_set is not None:
            band_warning("FAD", gen, ref_set, embedder, warnings)
        elif ref_stats.audio_read != AUDIO_READ:   # the generated files are read as AUDIO_READ says; were these?
            how = ("record no reading rule (tta read float and 24-bit files at full resolution before it read them on "
                   "the 16-bit grid)" if not ref_stats.audio_read else f"were read otherwise ({ref_stats.audio_read})")
            warnings.append(f"FAD reference: the statistics {opts.reference} {how}: reference files that were not "
                            "16-bit PCM scored otherwise than the generated files are; recompute them from the folder")
            log.warning(warnings[-1])
        fad_inf = None
        if opts.fad_inf:
            try:
                fad_inf = fad_infinity(_frames(gen), ref_stats, progress=opts.progress,
                                       clip_frames=[int(gen.embeddings[k].shape[0]) for k in gen.in_file_order()])
            except StatsError as e:
                raise EvalError(f"--fad-inf: generated {opts.generated}: {e}") from None
        stats_out["generated_stats.npz"] = FrechetStats.from_embeddings(
            _frames(gen), embedder=embedder.identity, sample_rate=embedder.sample_rate, num_files=len(gen.embeddings),
            audio_read=AUDIO_READ)
        result["metrics"]["fad"] = fad["value"]
        if fad_inf is not None:
            result["metrics"]["fad_inf"] = fad_inf["fad_inf"]
        result["protocol"]["fad"] = {"embedder": embedder.protocol(), "pooling": embedder.pooling,
                                     "covariance": "unbiased (n-1), float64", "generated": gen.protocol(),
                                     "generated_frames": fad["frames"], "reference": ref_protocol,
                                     "reference_frames": ref_stats.n, "reference_stats_sha256": ref_stats.fingerprint(),
                                     "resampled_to": embedder.sample_rate, "paired": False,
                                     "fad_inf": fad_inf, "warnings": warnings}
        for key in gen.files:
            items.setdefault(key, {})["frames"] = int(gen.embeddings[key].shape[0])

    panns_metrics = [m for m in metrics if m in ("fd", "kl", "is")]
    if panns_metrics:
        weights = opts.embedder_weights if opts.embedder == "panns" else opts.panns_weights
        try:
            panns = get_embedder("panns", **({"weights": weights} if weights else {}))
        except ValueError as e:
            raise EvalError(f"--metrics {','.join(panns_metrics)} need PANNs Cnn14_16k weights: pass --panns-weights "
                            f"PATH or set $TTA_PANNS_WEIGHTS ({e})") from None
        pcache = EmbeddingCache(cache_root, panns.identity, unwritable=unwritable) if cache_root else None
        pgen = embed_folder(opts.generated, panns, pcache, what="generated", want_logits=True,
                            batch_size=opts.batch_size, progress=opts.progress)
        pref = None if set(panns_metrics) == {"is"} else embed_folder(
            opts.reference, panns, pcache, what="reference", want_logits=True, batch_size=opts.batch_size,
            progress=opts.progress)
        from eval.kl import inception_score, kl_divergence

        proto = {"embedder": panns.protocol(), "generated": pgen.protocol()}
        if pref is not None:
            proto["reference"] = pref.protocol()
        if "fd" in metrics:
            gen_frames, ref_frames = _frames(pgen), _frames(pref)
            fd_stats = {}
            for what, folder, x in (("generated", opts.generated, gen_frames), ("reference", opts.reference,
                                                                                  ref_frames)):
                try:   # one clip is one PANNs embedding: no covariance (the message named neither set)
                    fd_stats[what] = FrechetStats.from_embeddings(x)
                except StatsError as e:
                    raise EvalError(f"--metrics fd: {what} {folder}: {e} (PANNs gives one per file)") from None
            proto["fd"] = {"pooling": panns.pooling, "warnings": [
                w for what, x in (("FD generated", gen_frames), ("FD reference", ref_frames))
                if (w := few_frames_warning(what, x.shape[0], panns.dim))]}
            band_warning("FD", pgen, pref, panns, proto["fd"]["warnings"])
            result["metrics"]["fd"] = fd_stats["generated"].distance(fd_stats["reference"])
        if "kl" in metrics:
            try:
                kl = kl_divergence(pgen.logits, pref.logits)
            except ValueError as e:
                raise EvalError(f"--metrics kl: {e}") from None
            result["metrics"].update(kl_softmax=kl["kl_softmax"], kl_sigmoid=kl["kl_sigmoid"])
            proto["kl"] = {"paired": True, "pairs": kl["pairs"], "direction": "KL(reference || generated)",
                           "unpaired_generated": kl["unpaired_generated"],
                           "unpaired_reference": kl["unpaired_reference"],
                           "pairing": "by file name; > 99 % of each set must be paired (audioldm_eval)"}
            for key, (s, g) in kl["per_item"].items():
                items.setdefault(key, {}).update(kl_softmax=s, kl_sigmoid=g)
        if "is" in metrics:
            try:
                score = inception_score(np.stack([pgen.logits[k] for k in sorted(pgen.logits)]))
            except ValueError as e:
                raise EvalError(f"--metrics is: generated {opts.generated}: {e}") from None
            result["metrics"].update(is_mean=score["is_mean"], is_std=score["is_std"])
            proto["is"] = {"splits": score["splits"], "files": len(pgen.logits), "shuffle_seed": score["seed"],
                           "split_rule": "rows sorted by name, shuffled with numpy RandomState(seed).permutation, "
                                         "split by slices [i*N//splits:(i+1)*N//splits] (audioldm_eval)"}
            if "warning" in score:
                proto["is"]["warning"] = score["warning"]
        result["protocol"]["panns"] = proto
        gen = gen or pgen

    gen = gen or scan_folder(opts.generated, "generated")
    record, damaged = _read_generation_record(opts.generated)   # read once: the checks below agree on one record
    if damaged:
        msg = (f"generated {opts.generated}: its generation.json {damaged}: whether files of another run are mixed "
               "in, or the run stopped part-way, cannot be told from it")
        log.warning(msg)
        result["protocol"]["generated_record_damaged"] = {"file": str(opts.generated / "generation.json"),
                                                          "warning": msg}
    unlisted = _not_in_generation_record(opts.generated, gen, record)
    if unlisted:
        msg = (f"generated {opts.generated}: {len(unlisted)} audio files are not in its generation.json (e.g. "
               f"{unlisted[0]}): files of another run may be mixed into this evaluation")
        log.warning(msg)
        result["protocol"]["generated_not_in_record"] = {"files": unlisted, "warning": msg}
    unfinished = _unfinished_generation(record)
    if unfinished is not None:
        written, planned = unfinished
        msg = (f"generated {opts.generated}: its generation.json says the run stopped part-way ({written} of "
               f"{planned} outputs written): the scores describe the prompts it reached")
        log.warning(msg)
        result["protocol"]["generated_incomplete"] = {"written": written, "planned": planned, "warning": msg}
    prompts: dict[str, PromptRow] = {}
    # a --takes run's files pair with their row, each with its take
    recorded = recorded_outputs(record, str(opts.generated / "generation.json"))
    if opts.prompts is not None:
        names = sorted(gen.files)
        rows = read_prompts(opts.prompts, names, recorded)
        prompts = _match_prompts(rows, names, opts.prompts, recorded)
        unpaired = _prompts_without_audio(rows, prompts, gen)
        if unpaired:   # a prompt whose output is missing: the scores describe the others (tta clap score names them)
            msg = (f"{opts.prompts}: {len(unpaired)} of {len(rows)} rows pair with no audio file in {opts.generated} "
                   f"(e.g. {unpaired[0]}): the scores describe the {len(rows) - len(unpaired)} prompts that have one")
            log.warning(msg)
            result["protocol"]["prompts_without_audio"] = {"rows": unpaired, "warning": msg}
    if "clap" in metrics:
        _clap_metric(opts, gen, prompts, result, items, record)
    silent = _silent_files(gen, EmbeddingCache(cache_root, PEAK_CACHE, unwritable=unwritable) if cache_root else None)
    if silent:
        msg = (f"generated {opts.generated}: {len(silent)} of {len(gen.files)} files are silent (peak, DC removed, "
               f"below {SILENCE_DB:g} dBFS; e.g. {silent[0]}): a generator that failed on them is scored as if "
               "it had not")
        log.warning(msg)
        result["protocol"]["generated_silent"] = {"files": silent, "warning": msg}

    takes = takes_run(recorded)
    for key, row in prompts.items():
        items.setdefault(key, {}).update(prompt=row.prompt, category=row.category, id=row.id)
    for scored in (pgen, gen):   # a file one embedder skipped may hold the other's values (KL of a clip too short
        for key in scored.files if scored else ():   # for the FAD's): its row names its file all the same
            items.setdefault(key, {}).update(file=str(scored.files[key].resolve()),
                                             seconds=round(scored.seconds[key], 4),
                                             sha256=scored.digests.get(key) or content_hash(scored.files[key]))
            if takes and key in recorded:   # which of its row's takes the file is
                items[key].update(take=recorded[key].take, row=recorded[key].row)
    if "clap" in result["protocol"]:   # once the items hold their takes
        result["protocol"]["clap"].update(clap_interval(result["metrics"]["clap_score"],   # as tta report has it
                                                        [{"name": name, **items[name]} for name in sorted(items)]))
    if any(r.category for r in prompts.values()):
        from eval.breakdown import category_breakdown

        result["breakdown"] = category_breakdown(gen, prompts, items, ref_stats)
    result["protocol"]["common"] = _common_protocol(opts, metrics, gen)
    write_outputs(opts.out, result, items, stats_out)
    for name in ("reference_stats.npz", "generated_stats.npz"):  # no stats of an earlier run beside this eval.json
        if name not in stats_out:
            (opts.out / name).unlink(missing_ok=True)
    return result


def _read_generation_record(folder: Path) -> tuple[dict, str | None]:
    """(record, None) for a sound generation.json, ({}, None) where there is none, ({}, why) for one that is not
    JSON or whose fields eval reads (outputs[].file, complete, planned_outputs, settings.candidates,
    clap_score_model) are not what `tta generate` (or `tta experiment retrieval`, whose outputs named no file
    before they were named by id_file_name) writes."""
    import json

    path = folder / "generation.json"
    if not path.is_file():
        return {}, None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        return {}, f"cannot be read ({e.strerror if isinstance(e, OSError) else e.reason})"
    except json.JSONDecodeError as e:
        return {}, f"is not valid JSON ({e.msg} at line {e.lineno})"
    if not isinstance(record, dict):
        return {}, f"is a JSON {type(record).__name__}, not an object"
    outputs = record.get("outputs")
    if "outputs" not in record:
        return {}, "has no outputs list"
    if not isinstance(outputs, list):
        return {}, f"outputs is {_shown(outputs)}, not a list"
    # an output with no "file" at all is of a record that names no files (an older `tta experiment retrieval`'s):
    # the files-of-another-run check has nothing to go on, the others stand; a "file" of another type is damage
    for i, output in enumerate(outputs):
        if not isinstance(output, dict) or ("file" in output and not isinstance(output["file"], str)):
            return {}, (f"outputs[{i}] is {_shown(output)}, not an object" if not isinstance(output, dict)
                        else f"outputs[{i}].file is {_shown(output['file'])}, not a file name")
    settings = record.get("settings", {})
    checks = (("complete", record.get("complete", True), bool, "true or false"),
              ("planned_outputs", record.get("planned_outputs", 0), int, "a count"),
              ("settings", settings, dict, "an object"),
              ("settings.candidates", settings.get("candidates", 1) if isinstance(settings, dict) else 1, int,
               "a count"),
              ("clap_score_model", record.get("clap_score_model") or "", str, "a string"))
    for name, value, kind, what in checks:
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return {}, f"{name} is {_shown(value)}, not {what}"
    return record, None


def _shown(value) -> str:
    import json

    return shortened(json.dumps(value), 40)


def _not_in_generation_record(folder: Path, gen: EmbeddedSet, record: dict) -> list[str]:
    """Audio files of a `tta generate --out-dir` folder that its generation.json `record` does not list (sorted,
    relative); [] when the folder has no record."""
    try:
        listed = {o["file"] for o in record["outputs"]}
    except (KeyError, TypeError):
        return []
    return sorted(str(p.relative_to(folder)) for p in gen.files.values() if p.parent == folder and p.name not in listed)


PEAK_CACHE = "peak-dc-removed@v1"   # the cache's entries of each file's peak, by content hash


def _silent_files(gen: EmbeddedSet, cache: EmbeddingCache | None = None) -> list[str]:
    """The generated files (relative, sorted) that hold silence or a DC offset alone, read as AUDIO_READ reads them
    (at their own rate: a peak needs no resampling). Peaks are cached by content hash where the set has one."""
    from tta.audio import AudioError, dc_removed_peak, load_audio

    floor = 10 ** (SILENCE_DB / 20)
    found = []
    for key in sorted(gen.files):
        digest = gen.digests.get(key)
        peak = cache.get(digest, "peak") if cache is not None and digest else None
        if peak is None:
            try:
                wav, _ = load_audio(gen.files[key], pcm16=True)
            except AudioError:
                continue   # reported where it was skipped
            peak = np.array(dc_removed_peak(wav))
            if cache is not None and digest:
                cache.put(digest, peak, "peak")
        if float(peak) < floor:
            found.append(str(gen.files[key].relative_to(gen.folder)))
    return found


def _unfinished_generation(record: dict) -> tuple[int, int] | None:
    """(outputs written, outputs planned) when a generated folder's generation.json `record` is of a `tta generate`
    run that stopped part-way (`complete` false), else None."""
    if record.get("complete", True) is not False:
        return None
    try:
        return len(record.get("outputs", [])), int(record.get("planned_outputs", 0))
    except (TypeError, ValueError):
        return None


def _picked_by(record: dict, identity: str | None) -> int:
    """The candidates per prompt of a `tta generate` folder whose clips were kept by the CLAP `identity` (its
    generation.json `record`'s clap_score_model), or 0 (no record, one candidate, or another CLAP)."""
    try:
        candidates = int(record["settings"]["candidates"])
    except (KeyError, TypeError, ValueError):
        return 0
    model = record.get("clap_score_model")
    return candidates if identity and model == identity and candidates > 1 else 0


def check_embedder_weights(embedder: str, weights, *, embedder_field: str, weights_field: str, clap_field: str,
                           error: type[ValueError] = UsageError) -> None:
    """Refuses (with `error`, naming the fields) a weights file for an embedder that takes none: mfcc has no
    network, and tta's clap and laion-clap embedders are the CLAP model named by `clap_field` (they ignored the
    file). EvalOptions (`tta eval`'s --embedder-weights, a Python caller's embedder_weights) and the retrieval
    experiment's EvalSettings (eval.embedder_weights) check here, as they are made."""
    if weights and embedder in ("mfcc", "clap", "laion-clap"):
        raise error(f"{weights_field} is for aisfx, vggish and panns; {embedder_field} {embedder!r} takes none "
                    f"(a CLAP comes with {clap_field})")


def fad_embedder(opts: EvalOptions, *, clap=None) -> Embedder:
    """The FAD embedder `opts` names, with its options (an EmbedderError for an unknown name, weights it cannot
    find or options it does not take): what a caller checks before work that the eval comes after. `clap`: the CLAP
    of opts.clap_model (and opts.clap_tokenizer), already loaded by the caller; tta's clap and laion-clap embedders,
    which take nothing but that model, wrap it instead of loading it a second time."""
    from eval.embedders import EMBEDDERS, clap_embedder, make_clap, make_laion_clap

    if clap is not None and EMBEDDERS.get(opts.embedder) in (make_clap, make_laion_clap):
        return clap_embedder(clap, name=opts.embedder, checkpoint=str(opts.clap_model))
    return get_embedder(opts.embedder, **_embedder_options(opts))


def _embedder_options(opts: EvalOptions) -> dict:
    if opts.embedder in ("clap", "laion-clap"):
        return {"model": opts.clap_model, "tokenizer": opts.clap_tokenizer}
    return {"weights": opts.embedder_weights} if opts.embedder_weights else {}


def _match_prompts(rows: dict[str, PromptRow], names: list[str], path: Path,
                   recorded: dict[str, RecordedOutput] | None = None) -> dict[str, PromptRow]:
    # an id names the file tta writes for it (id_file_name: 'a/b' -> 'a%2Fb'), else a file at that path ('a/b.wav');
    # a named row's takes the generated folder's generation.json lists (door_1, door_2) pair with it
    found = match_audio({k: r.id for k, r in rows.items()}, names, recorded)
    out = {n: None if k is None else rows[k] for n, k in found.items()}
    missing = [n for n, r in out.items() if r is None]
    if missing:
        raise EvalError(f"{path}: no prompt for {len(missing)} generated file(s), e.g. {', '.join(missing[:3])}")
    return out  # type: ignore[return-value]


def _prompts_without_audio(rows: dict[str, PromptRow], prompts: dict[str, PromptRow], gen: EmbeddedSet) -> list[str]:
    """The prompt rows (by their file key, or id where they name none) that pair with no generated file: neither a
    scored one nor one skipped as unreadable (reported as such)."""
    used = {id(r) for r in prompts.values()}
    skipped = {_key(gen.folder, Path(s["file"])) for s in gen.skipped}
    return [r.id or k for k, r in rows.items() if id(r) not in used and k not in skipped]


def _clap_metric(opts: EvalOptions, gen, prompts, result, items, record: dict) -> None:
    from eval.clap_score import clap_score
    from eval.embedders import clap_embedder, load_clap_model
    from tta.audio import load_audio

    model = load_clap_model(opts.clap_model, backend="tta", tokenizer=opts.clap_tokenizer)
    emb = clap_embedder(model, name="clap", checkpoint=str(opts.clap_model))
    window = getattr(model, "min_samples", 0) / getattr(model, "sample_rate", emb.sample_rate)   # seconds
    short = sorted(k for k in gen.files if gen.seconds[k] < window + 1 / emb.sample_rate)   # + resampling slack
    for k in short:   # too short for one CLAP analysis window: named and left out, as unreadable files are
        log.warning("clap score: skipping %s: %.4f s, shorter than the CLAP's analysis window (%.4f s)",
                    gen.files[k], gen.seconds[k], window)
    keys = sorted(k for k in gen.files if k not in short)
    if not keys:
        raise EvalError(f"generated {opts.generated}: every file is shorter than the CLAP's analysis window "
                        f"({window:.4f} s)")
    wavs = _LazyClips([gen.files[k] for k in keys], emb.sample_rate,   # read batch by batch, as AUDIO_READ says
                      functools.partial(load_audio, pcm16=True))
    score = clap_score(model, [prompts[k].prompt for k in keys], wavs, emb.sample_rate, batch_size=opts.batch_size,
                       progress=opts.progress)
    result["metrics"]["clap_score"] = score["clap_score"]
    pairs = "\n".join(f"{k}\t{prompts[k].prompt}" for k in keys)   # which prompt scored which file
    # the prompts alone, each row once: what makes runs comparable (a --takes run's takes of a row pair with that one
    # row, and score its prompt as often as each other row's: the set of a run of one take each)
    prompt_set = "\n".join(sorted({id(prompts[k]): prompts[k].prompt for k in keys}.values()))
    result["protocol"]["clap"] = {"model": emb.protocol(), "generated": gen.protocol(),
                                  "scale": "raw cosine in [-1, 1]", "num_items": score["num_items"],
                                  "prompts_sha256": hashlib.sha256(pairs.encode()).hexdigest()[:16],
                                  "prompt_set_sha256": hashlib.sha256(prompt_set.encode()).hexdigest()[:16],
                                  "skipped": [{"file": str(gen.files[k]), "reason": "shorter than one analysis "
                                               "window"} for k in short]}
    picked = _picked_by(record, getattr(model, "identity", None))
    if picked:
        msg = (f"the generated clips were each kept from {picked} candidates by this same CLAP (generation.json): "
               "its score of them is flattered; score with another CLAP, or compare with one-candidate runs")
        log.warning(msg)
        result["protocol"]["clap"]["warning"] = msg
    for k, v in zip(keys, score["per_item"]):
        items.setdefault(k, {})["clap_score"] = v


class _LazyClips:
    """The clips of `paths` at `sample_rate`, read when a slice of them is taken: a CLAP score over thousands
    of 10 s clips at 48 kHz holds one batch in memory, not all of them (4 875 AudioCaps clips: ~9 GB)."""

    def __init__(self, paths: list[Path], sample_rate: int, load):
        self.paths, self.sample_rate, self.load = paths, sample_rate, load

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self.load(p, sample_rate=self.sample_rate)[0] for p in self.paths[index]]
        return self.load(self.paths[index], sample_rate=self.sample_rate)[0]


def _common_protocol(opts: EvalOptions, metrics, gen) -> dict:
    import torch

    from tta import __version__ as tta_version

    return {"tta_version": tta_version, "torch_version": torch.__version__, "numpy_version": np.__version__,
            "python": platform.python_version(), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "metrics": list(metrics), "generated": str(opts.generated.resolve()),
            "reference": str(opts.reference.resolve()), "prompts": str(opts.prompts.resolve()) if opts.prompts else None,
            "audio_read": AUDIO_READ, "generated_files": len(gen.files) if gen else 0,
            "skipped_files": len(gen.skipped) if gen else 0}
