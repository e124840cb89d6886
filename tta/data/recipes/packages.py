"""Debian data packages as a sound source: the allow/deny lists, `apt-get download` + `dpkg -x`, audio file discovery.

Nothing is installed: each package's .deb is downloaded into a cache folder and unpacked there with
`dpkg -x`, so no root is needed (only `apt-get update` may be, once, when the package lists are stale).
The reserved packages are kept for independent evaluation of the project; `check_allowed` refuses them
before anything touches the network or the disk.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tta.data.recipes.rules import RECIPE_VERSION

log = logging.getLogger(__name__)

# Kept for independent evaluation: never downloaded, opened or used for tuning. A test pins this list.
RESERVED_PACKAGES = frozenset({
    "tuxpaint-stamps-default", "gcompris-qt-data", "openttd-opensfx", "sound-theme-freedesktop",
    "sound-icons", "lugaru-data",
})

AUDIO_SUFFIXES = (".ogg", ".wav", ".flac", ".oga", ".mp3", ".opus")


class PackageError(ValueError):
    """A package that may not be used, cannot be downloaded or unpacked; the message names it."""


@dataclass(frozen=True)
class DebianSource:
    package: str
    licence: str          # short form for the manifest; the package's full copyright file is copied too
    large: bool = False   # only with --large (hundreds of MB to download)
    archive: str = ""     # a zip inside the package that holds the audio (0 A.D.)
    since: int = 1        # first recipe version that uses the package


SFX_PACKAGES: tuple[DebianSource, ...] = (
    DebianSource("minetest-data", "CC-BY-SA-3.0 / CC0-1.0"),
    DebianSource("lomiri-sounds", "CC-BY-SA-3.0 / CC-BY-3.0"),
    DebianSource("freeciv-data", "GPL-2+"),
    DebianSource("extremetuxracer-data", "GPL-2+"),
    DebianSource("lincity-ng-data", "GPL-2+"),
    DebianSource("hedgewars-data", "GPL-2 / CC-BY-SA-3.0"),
    DebianSource("wesnoth-1.16-data", "GPL-2+"),
    DebianSource("supertux-data", "GPL-3+ / CC-BY-SA"),
    DebianSource("megaglest-data", "CC-BY-SA-3.0"),
    DebianSource("widelands-data", "GPL-2+ / CC-BY-SA"),
    DebianSource("supertuxkart-data", "CC-BY-SA / CC-BY / GPL", large=True),
    DebianSource("0ad-data", "CC-BY-SA-3.0", large=True,
                 archive="usr/share/games/0ad/mods/public/public.zip"),
    DebianSource("qabcs-data", "GPL-3+", since=2),
    DebianSource("etw-data", "GPL-2+", since=2),
    DebianSource("scorched3d-data", "GPL-2+", since=2),
    DebianSource("trophy-data", "GPL-2", since=2),
    DebianSource("mate-media-common", "GPL-2+", since=2),
    DebianSource("xemacs21-basesupport", "GPL-2+", since=2),
    DebianSource("wx3.2-examples", "wxWindows", since=2),
    DebianSource("scratch", "CC-BY-SA-3.0 (Media/*)", since=3),
)


def check_allowed(package: str) -> None:
    """Raise PackageError for a reserved package (the evaluation hold-out). Called before every download."""
    if package.strip().lower() in RESERVED_PACKAGES:
        raise PackageError(f"package {package!r} is reserved for independent evaluation and must never be "
                           f"used for training data")


def select_packages(names: list[str] | None, *, large: bool,
                    version: int = RECIPE_VERSION) -> list[DebianSource]:
    """The packages of recipe `version` to use: all small ones (and the large with `large`), or exactly `names`."""
    by_name = {p.package: p for p in SFX_PACKAGES if p.since <= version}
    if names is None:
        return [p for p in by_name.values() if large or not p.large]
    out = []
    for name in names:
        check_allowed(name)
        if name not in by_name:
            raise PackageError(f"package {name!r} has no caption rules; known: {', '.join(sorted(by_name))}")
        out.append(by_name[name])
    return out


def fetch_package(package: str, cache: Path) -> Path:
    """Download the package's .deb into `cache`/debs (once) and unpack it into `cache`/trees/PACKAGE.

    Returns the unpacked tree. A tree is only published (renamed into place) once fully unpacked.
    """
    check_allowed(package)
    tree = cache / "trees" / package
    if (tree / ".complete").is_file():
        return tree
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    deb = _find_deb(debs, package)
    if deb is None:
        if shutil.which("apt-get") is None:
            raise PackageError(f"{package}: apt-get not found; put {package}_*.deb into {debs} by hand")
        log.info("downloading %s with apt-get download", package)
        proc = subprocess.run(["apt-get", "download", package], cwd=debs, capture_output=True, text=True, check=False)
        deb = _find_deb(debs, package)
        if proc.returncode != 0 or deb is None:
            reason = (proc.stderr.strip().splitlines() or ["no .deb written"])[-1]
            raise PackageError(f"{package}: apt-get download failed ({reason}); run `apt-get update` "
                               f"(as root) and retry")
    if shutil.which("dpkg") is None:
        raise PackageError(f"{package}: dpkg not found (needed to unpack {deb.name})")
    partial = tree.with_name(package + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    log.info("unpacking %s", deb.name)
    proc = subprocess.run(["dpkg", "-x", str(deb), str(partial)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PackageError(f"{package}: dpkg -x {deb.name} failed: {proc.stderr.strip()[-300:]}")
    (partial / ".deb").write_text(deb.name + "\n")
    shutil.rmtree(tree, ignore_errors=True)
    os.replace(partial, tree)
    (tree / ".complete").write_text("ok\n")
    return tree


def _find_deb(debs: Path, package: str) -> Path | None:
    found = sorted(debs.glob(f"{package}_*.deb"))
    return found[-1] if found else None


def package_version(tree: Path) -> str:
    """The version in the unpacked .deb's file name (PACKAGE_VERSION_ARCH.deb), or '' when unknown."""
    marker = tree / ".deb"
    if not marker.is_file():
        return ""
    parts = marker.read_text().strip().split("_")
    return parts[1].replace("%3a", ":") if len(parts) >= 3 else ""


def copyright_text(tree: Path, package: str) -> str | None:
    path = tree / "usr" / "share" / "doc" / package / "copyright"
    return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None


def list_audio_files(tree: Path, source: DebianSource) -> list[tuple[str, Path]]:
    """(relative posix path, real path) of every audio file in an unpacked tree, sorted by the relative path.

    For a package whose audio sits inside a zip (0 A.D.'s public.zip) the zip's audio members are
    extracted once next to it and listed with paths relative to the zip (`audio/...`).
    """
    if source.archive:
        root = _extract_archive_audio(tree / source.archive)
    else:
        root = tree
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            if name.lower().endswith(AUDIO_SUFFIXES):
                path = Path(dirpath) / name
                out.append((path.relative_to(root).as_posix(), path))
    return sorted(out)


def _extract_archive_audio(archive: Path) -> Path:
    if not archive.is_file():
        raise PackageError(f"{archive}: expected archive not found in the unpacked package")
    root = archive.with_name(archive.name + ".audio")
    if (root / ".complete").is_file():
        return root
    with zipfile.ZipFile(archive) as z:
        for member in sorted(z.namelist()):
            if member.lower().endswith(AUDIO_SUFFIXES) and not member.startswith("/") and ".." not in member:
                z.extract(member, root)
    (root / ".complete").write_text("ok\n")
    return root
