"""The starter corpus: real Debian sound effects + FluidSynth music + synthetic speech + mixtures.

    build_starter(out, StarterOptions(...), progress=True) -> BuildResult

Steps: list candidates of every requested source (downloading and unpacking Debian packages into the
cache), order them by a seeded hash, render/decode them (optionally in worker processes; results come
back in candidate order), trim, cut to <= 10.24 s, drop silence and exact duplicates (sha1 of the 16-bit
samples written), write 16 kHz mono wavs to OUT/audio/KIND/ID.wav, drop held-out clips that nearly
duplicate a training clip (version 6, `tta.data.duplicates`), then build mixtures from the kept clips the
same way. Writes OUT/manifest.jsonl, OUT/ATTRIBUTION.md, OUT/recipe.json and the packages'
copyright files under OUT/licences/. The same options give the same manifest bytes.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import multiprocessing
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tta.audio import AudioError, load_audio, save_audio
from tta.config import check_numbers, counted
from tta.data.manifest import ManifestRow, write_manifest
from tta.data.recipes import music, packages, rules, speech
from tta.data.recipes.clips import (
    CLIP_SECONDS,
    MIN_VALID_GROUPS,
    SAMPLE_RATE,
    Candidate,
    Clip,
    clip_id,
    order_key,
    segment,
    split_of,
)
from tta.data.recipes.mixtures import mixture_candidates, render_mix
from tta.data.recipes.report import debian_version

log = logging.getLogger(__name__)

SOURCES = ("sfx", "music", "speech", "mix")
KIND_ORDER = {k: i for i, k in enumerate(SOURCES)}
MAX_SEGMENTS = {"ambience": 3, "music": 3, "event": 2, "speech": 1}


class RecipeError(ValueError):
    """Missing tools or bad options for a recipe; the message says what to install or change."""


@dataclass(frozen=True)
class StarterOptions:
    sources: tuple[str, ...] = SOURCES
    max_clips: int | None = None              # per source (sfx, music, speech, mix); None = all
    seed: int = 0
    cache: str = ""                            # "" = OUT/.cache
    packages: tuple[str, ...] | None = None    # Debian packages to use (default: all small ones)
    large: bool = False                        # also 0ad-data (1.3 GB) and supertuxkart-data (0.6 GB)
    mixtures: int = 1500                       # number of mixtures drawn (before dedupe/silence)
    max_scores: int | None = None              # per music21 score set
    espeak_per_sentence: int = 4
    workers: int = 1
    file_roots: tuple[tuple[str, str], ...] = ()   # (package, folder) pairs used instead of downloading (tests)
    version: int = rules.RECIPE_VERSION        # recipe version: 1 rebuilds the first corpus exactly

    def __post_init__(self) -> None:
        check_numbers(self, error=RecipeError)
        if self.version not in range(1, rules.RECIPE_VERSION + 1):
            raise RecipeError(f"--recipe-version={self.version}: choose 1..{rules.RECIPE_VERSION}")
        bad = [s for s in self.sources if s not in SOURCES]
        if bad or not self.sources:
            raise RecipeError(f"--sources: unknown {bad or 'empty'}; choose from {','.join(SOURCES)}")
        if self.max_clips is not None and self.max_clips < 1:
            raise RecipeError(f"--max-clips={self.max_clips} must be >= 1")
        if self.workers < 1:
            raise RecipeError(f"--workers={self.workers} must be >= 1")
        if self.mixtures < 0:
            raise RecipeError(f"--mixtures={self.mixtures} must be >= 0")
        if self.max_scores is not None and self.max_scores < 1:
            raise RecipeError(f"--max-scores={self.max_scores} must be >= 1")
        if set(self.sources) == {"mix"}:
            raise RecipeError("--sources mix needs sfx, music or speech beside it: mixtures are made of their clips")
        for name in self.packages or ():
            packages.check_allowed(name)
        for name, _ in self.file_roots:
            packages.check_allowed(name)


@dataclass
class BuildResult:
    rows: list[ManifestRow]
    counts: Counter = field(default_factory=Counter)        # dropped_silent, dropped_duplicate, failed, ...
    tools: dict = field(default_factory=dict)
    package_versions: dict = field(default_factory=dict)
    copyrights: dict = field(default_factory=dict)          # package -> relative path of its copyright copy
    skipped: list = field(default_factory=list)             # optional speech engines/voices not installed


def missing_tools(sources: tuple[str, ...]) -> list[str]:
    """One line per missing program/package that a requested source needs (empty list = all there)."""
    missing = []
    if "sfx" in sources:
        for tool in ("apt-get", "dpkg"):
            if shutil.which(tool) is None:
                missing.append(f"{tool} (needed to download and unpack the Debian sound packages)")
    if "music" in sources:
        reason = music.fluidsynth_status()
        if reason:
            missing.append(reason)
        if importlib.util.find_spec("music21") is None:
            missing.append("music21 (PyPI; pip install 'tta[recipes]')")
    if "speech" in sources:
        status = speech.speech_status()
        if status["espeak-ng"]:
            missing.append(status["espeak-ng"])
    return missing


# ------------------------------------------------------------------------------------------ candidates


def sfx_candidates(options: StarterOptions, cache: Path, out: Path, result: BuildResult,
                   *, progress: bool) -> list[Candidate]:
    """Files of the Debian packages that a caption rule matches (unmatched files are never used)."""
    roots = dict(options.file_roots)
    if roots:
        chosen = [packages.DebianSource(name, "see package copyright") for name in roots]
        known = {p.package: p for p in packages.SFX_PACKAGES}
        chosen = [known.get(p.package, p) for p in chosen]
    else:
        chosen = packages.select_packages(list(options.packages) if options.packages else None,
                                          large=options.large, version=options.version)
    out_licences = out / "licences"
    candidates = []
    for source in chosen:
        packages.check_allowed(source.package)
        tree = Path(roots[source.package]) if source.package in roots else packages.fetch_package(source.package,
                                                                                                  cache)
        result.package_versions[source.package] = packages.package_version(tree)
        text = packages.copyright_text(tree, source.package)
        if text is not None:
            out_licences.mkdir(parents=True, exist_ok=True)
            (out_licences / f"{source.package}.copyright").write_text(text, encoding="utf-8")
            result.copyrights[source.package] = f"licences/{source.package}.copyright"
        files = packages.list_audio_files(tree, source)
        matched = 0
        for rel, path in files:
            rule = rules.match(source.package, rel, options.version)
            if rule is None:
                continue
            matched += 1
            candidates.append(Candidate(
                key=f"sfx/{source.package}/{rel}", kind="sfx", captions=rule.captions, label=rule.label,
                role=rule.role, source=f"debian:{source.package}:{rel}", licence=source.licence,
                spec=("file", str(path), MAX_SEGMENTS[rule.role] * CLIP_SECONDS + 5.0),
                max_segments=MAX_SEGMENTS[rule.role], labels=(rule.label,)))
        result.counts[f"files_seen:{source.package}"] = len(files)
        result.counts[f"files_matched:{source.package}"] = matched
        log.info("%s: %s, %d matched a caption rule", source.package, counted(len(files), "audio file"), matched)
    if options.version >= 2:
        candidates = keep_rare_in_train(candidates)
    return candidates


def keep_rare_in_train(candidates: list[Candidate]) -> list[Candidate]:
    """Force labels with fewer than MIN_VALID_GROUPS recordings into train: a hash split would otherwise
    hold out the only recording of a class (version 1 held out the only dog bark)."""
    groups: dict[str, set[str]] = {}
    for c in candidates:
        groups.setdefault(c.label, set()).add(c.split_group)
    rare = {label for label, g in groups.items() if len(g) < MIN_VALID_GROUPS}
    return [dataclasses.replace(c, split="train") if c.label in rare and not c.split else c for c in candidates]


def festival_and_piper_candidates(seed: int, out: Path, result: BuildResult) -> list[Candidate]:
    """(Recipe version 4) Festival's installed festvox voices and the Piper voice; what is missing is skipped
    with a warning naming the package. Copies the voice packages' copyright files to OUT/licences."""
    status = speech.speech_status()
    found: list[Candidate] = []
    voices = ()
    if status["festival"] is None:
        voices = tuple(v for v in speech.FESTIVAL_VOICES if speech.festival_voice_installed(v))
        absent = [v.package for v in speech.FESTIVAL_VOICES if v not in voices]
        if absent:
            log.warning("Festival voices not installed, skipped: %s (Debian packages)", ", ".join(absent))
            result.skipped += [f"Festival voice (Debian {package})" for package in absent]
        found += speech.festival_candidates(seed, voices)
    else:
        log.warning("%s: Festival voices skipped", status["festival"])
        result.skipped.append(status["festival"])
    used = ("festival",) + tuple(v.package for v in voices) if voices else ()
    for package in used:                  # installed packages: their tree is the system's own
        text = packages.copyright_text(Path("/"), package)
        if text is not None:
            (out / "licences").mkdir(parents=True, exist_ok=True)
            (out / "licences" / f"{package}.copyright").write_text(text, encoding="utf-8")
            result.copyrights[package] = f"licences/{package}.copyright"
        if package != "festival":         # the voices' versions name their rows in ATTRIBUTION.md
            result.package_versions[package] = debian_version(package) or ""
    if status["piper"] is None:
        found += speech.piper_candidates()
        (out / "licences").mkdir(parents=True, exist_ok=True)
        card = speech.piper_model_card()
        (out / "licences" / f"{speech.PIPER_PACKAGE}.MODEL_CARD").write_text(card, encoding="utf-8")
        result.copyrights[speech.PIPER_PACKAGE] = f"licences/{speech.PIPER_PACKAGE}.MODEL_CARD"
    else:
        log.warning("%s: the Piper voice skipped", status["piper"])
        result.skipped.append(status["piper"])
    return found


def list_candidates(kind: str, options: StarterOptions, cache: Path, out: Path, result: BuildResult,
                    *, progress: bool) -> list[Candidate]:
    if kind == "sfx":
        found = sfx_candidates(options, cache, out, result, progress=progress)
    elif kind == "music":
        found = (music.instrument_candidates(options.seed) + music.drum_candidates(options.seed)
                 + music.score_candidates(options.seed, cache / "music21", max_scores=options.max_scores,
                                          progress=progress, workers=options.workers,
                                          install_independent=options.version >= 5))
    elif kind == "speech":
        found = speech.espeak_candidates(options.seed, per_sentence=options.espeak_per_sentence)
        if speech.speech_status()["flite"] is None:
            found += speech.flite_candidates(options.seed)
        else:
            log.warning("flite not found: English flite voices skipped (Debian package flite)")
            result.skipped.append(speech.speech_status()["flite"])
        if options.version >= 4:
            found += festival_and_piper_candidates(options.seed, out, result)
    else:
        raise RecipeError(f"unknown source {kind!r}")
    # Seeded order: --max-clips then takes a varied subset rather than the first package or program.
    return sorted(found, key=lambda c: order_key(c.key, options.seed))


# ------------------------------------------------------------------------------------------- rendering


def render(spec: tuple):
    """(T,) float32 at 16 kHz for any candidate spec."""
    kind = spec[0]
    if kind == "file":   # ("file", path, max_seconds): long tracks are only decoded as far as they are used
        wav, _ = load_audio(spec[1], SAMPLE_RATE, max_seconds=spec[2])
        return wav
    if kind == "fluidsynth":
        return music.render_fluidsynth(*spec[1:])
    if kind in ("espeak", "flite", "festival", "piper"):
        return speech.render_speech(spec)
    if kind == "mix":
        return render_mix(spec)
    raise ValueError(f"unknown render spec {kind!r}")


def _process(candidate: Candidate) -> tuple[list[Clip], str]:
    try:
        return segment(render(candidate.spec), candidate), ""
    except (AudioError, RuntimeError, OSError, ValueError) as e:
        return [], f"{candidate.key}: {e}"


def process_all(candidates: list[Candidate], *, workers: int, desc: str, progress: bool):
    """Yield (candidate, clips, error) in candidate order, whatever the number of workers."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(candidates), desc=desc, unit="item", disable=not progress)
    try:
        if workers > 1 and len(candidates) > 1:
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(workers) as pool:
                for candidate, (clips, error) in zip(candidates, pool.imap(_process, candidates, chunksize=4)):
                    bar.update()
                    yield candidate, clips, error
        else:
            for candidate in candidates:
                clips, error = _process(candidate)
                bar.update()
                yield candidate, clips, error
    finally:
        bar.close()


def keep_clips(candidates, out: Path, options: StarterOptions, seen: set[str], result: BuildResult,
               *, desc: str, progress: bool) -> list[tuple[ManifestRow, str]]:
    """Render, dedupe, write; returns (row, role) for every kept clip, in candidate order."""
    kept: list[tuple[ManifestRow, str]] = []
    # FluidSynth renders depend slightly on what the same synth rendered before (see music.render_fluidsynth):
    # they run in this process in candidate order; files, speech and mixtures go to the workers.
    in_process = any(c.spec[0] == "fluidsynth" for c in candidates)
    workers = 1 if in_process else options.workers
    for candidate, clips, error in process_all(candidates, workers=workers, desc=desc, progress=progress):
        if error:
            result.counts["failed"] += 1
            log.warning("skipped %s", error)
            continue
        if not clips:
            result.counts["dropped_silent_or_short"] += 1
        for clip in clips:
            if options.max_clips is not None and len(kept) >= options.max_clips:
                break
            digest = clip.digest
            if digest in seen:
                result.counts["dropped_duplicate"] += 1
                continue
            seen.add(digest)
            row_id = clip_id(candidate, clip.segment)
            path = out / "audio" / candidate.kind / f"{row_id}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_audio(path, clip.wav(), SAMPLE_RATE)
            where = f"@{clip.segment * 10.24:.2f}s" if candidate.max_segments > 1 else ""
            kept.append((ManifestRow(
                id=row_id, path=str(path.resolve()), captions=candidate.captions, seconds=round(clip.seconds, 4),
                sample_rate=SAMPLE_RATE, split=candidate.split or split_of(candidate.split_group),
                source=candidate.source + where, licence=candidate.licence, labels=candidate.labels,
                category=candidate.role), candidate.role))
        if options.max_clips is not None and len(kept) >= options.max_clips:
            break
    return kept


# ----------------------------------------------------------------------------------------------- build


def build_starter(out: str | Path, options: StarterOptions = StarterOptions(), *,
                  progress: bool = True) -> BuildResult:
    """Build the corpus into `out` (see the module docstring). Raises RecipeError naming missing tools, unknown
    packages or an empty result; a folder this call made is then removed, all but its download cache (a crash or
    Ctrl-C keeps what was rendered, for the re-run)."""
    out = Path(out)
    missing = missing_tools(tuple(s for s in options.sources if not (s == "sfx" and options.file_roots)))
    if missing:
        raise RecipeError("missing for the requested sources: " + "; ".join(missing)
                          + " -- install them (apt-get install fluidsynth fluid-soundfont-gm libfluidsynth3 "
                            "espeak-ng flite; pip install 'tta[recipes]') or drop the source with --sources")
    check_output_folder(out)
    cache = Path(options.cache) if options.cache else out / ".cache"
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _build(out, options, cache, progress)
    except RecipeError:   # a folder this run made keeps nothing but its download cache
        if created:
            for entry in out.iterdir():
                if entry.resolve() != cache.resolve():
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            if not any(out.iterdir()):
                out.rmdir()
        raise


def _build(out: Path, options: StarterOptions, cache: Path, progress: bool) -> BuildResult:
    from tta.data.recipes.report import write_attribution, write_recipe_json

    # a rebuild rewrites clips in place: an earlier manifest would describe audio this run replaces, so a build
    # stopped part-way must leave none (the new one is written, atomically, at the end)
    (out / "manifest.jsonl").unlink(missing_ok=True)
    result = BuildResult(rows=[])
    seen: set[str] = set()
    kept: list[tuple[ManifestRow, str]] = []
    for kind in ("sfx", "music", "speech"):
        if kind not in options.sources:
            continue
        candidates = list_candidates(kind, options, cache, out, result, progress=progress)
        result.counts[f"candidates:{kind}"] = len(candidates)
        kept += keep_clips(candidates, out, options, seen, result, desc=f"{kind} clips", progress=progress)
    if options.version >= 6:
        kept = _drop_held_out_twins(kept, result, progress)
    if "mix" in options.sources:
        rows = [row for row, _ in kept]
        roles = {row.id: role for row, role in kept}
        candidates = mixture_candidates(rows, roles, options.mixtures, options.seed, options.version)
        candidates = sorted(candidates, key=lambda c: order_key(c.key, options.seed))
        result.counts["candidates:mix"] = len(candidates)
        kept += keep_clips(candidates, out, options, seen, result, desc="mixtures", progress=progress)
    rows = sorted((row for row, _ in kept), key=lambda r: (KIND_ORDER[r.id.split("-", 1)[0]], r.id))
    if not rows:
        raise RecipeError(f"no clips were kept for --sources {','.join(options.sources)} (candidates: "
                          + ", ".join(f"{k.split(':')[1]} {v}" for k, v in result.counts.items()
                                      if k.startswith("candidates:")) + "); nothing written")
    result.rows = rows
    _keep_renderer_licences(out, rows, result)
    _remove_stale_audio(out, rows)
    write_manifest(out / "manifest.jsonl", rows)
    write_attribution(out / "ATTRIBUTION.md", result)
    write_recipe_json(out / "recipe.json", result, options)
    return result


def _drop_held_out_twins(kept: list[tuple[ManifestRow, str]], result: BuildResult,
                         progress: bool) -> list[tuple[ManifestRow, str]]:
    """Drop the held-out clips whose audio nearly duplicates a training clip (before mixtures are built, so no
    held-out mixture is made from one); their wavs go with the stale audio."""
    from tta.audio import load_audio
    from tta.data.duplicates import find_near_duplicates, fingerprint, held_out_member

    prints = [fingerprint(*load_audio(row.path)) for row, _ in kept]
    splits = [row.split for row, _ in kept]
    leaked = {held_out_member(pair, splits) for pair in find_near_duplicates(prints, progress=progress)} - {None}
    result.counts["dropped_held_out_twin"] = len(leaked)
    if leaked:
        log.info("dropped %s nearly duplicating a training clip", counted(len(leaked), "held-out clip"))
    return [item for i, item in enumerate(kept) if i not in leaked]


def _keep_renderer_licences(out: Path, rows: list[ManifestRow], result: BuildResult) -> None:
    """Copy the licence texts of the renderers' inputs next to ATTRIBUTION.md: the Debian copyright files of
    the SoundFont and the speech engines, and music21's licence with its corpus's (an MIT or BSD notice must
    travel with what is made from the work)."""
    import importlib.metadata

    from tta.data.recipes.report import RENDERER_PACKAGES

    used = {r.source.split(":", 1)[0] for r in rows}
    for renderer, package in sorted(RENDERER_PACKAGES.items()):
        if renderer not in used or package in result.copyrights:
            continue
        if package == "music21":
            try:
                files = importlib.metadata.distribution("music21").files or []
            except importlib.metadata.PackageNotFoundError:
                continue
            parts = [f.locate() for f in files if str(f).endswith(("dist-info/licenses/LICENSE", "dist-info/LICENSE",
                                                                   "music21/corpus/license.txt"))]
            text = "\n\n".join(Path(p).read_text(encoding="utf-8", errors="replace") for p in sorted(map(str, parts))
                                if Path(p).is_file()) or None
        else:
            text = packages.copyright_text(Path("/"), package)
        if text is None:
            log.warning("%s: no licence text found for %s rows; ATTRIBUTION.md lists them without one", package,
                        renderer)
            continue
        name = f"{package}.copyright" if package != "music21" else "music21.LICENSE"
        (out / "licences").mkdir(parents=True, exist_ok=True)
        (out / "licences" / name).write_text(text, encoding="utf-8")
        result.copyrights[package] = f"licences/{name}"


def _remove_stale_audio(out: Path, rows: list[ManifestRow]) -> None:
    """Delete the clips earlier runs with other options left: wavs the recipe names itself (OUT/audio/<kind>/
    <kind>-*.wav) that this run's manifest does not list. Any other file there is left alone."""
    wanted = {Path(r.path).resolve() for r in rows}
    for kind in SOURCES:
        folder = out / "audio" / kind
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob(f"{kind}-*.wav")):
            if path.resolve() not in wanted:
                path.unlink()


def check_output_folder(out: Path) -> None:
    """Refuse an OUT that holds a manifest.jsonl no recipe run wrote (no recipe.json beside it): the build would
    replace it."""
    if (out / "manifest.jsonl").exists() and not (out / "recipe.json").is_file():
        raise RecipeError(f"{out}: holds a manifest.jsonl that no recipe run wrote (no recipe.json); the build "
                          "would replace it: choose another --out")
