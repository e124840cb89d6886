"""A torch Dataset over one split of a manifest: read, resample, crop/pad to a segment, pick a caption.

Two ways to index it:

- `ds[index]` is deterministic (evaluation): the first `segment_seconds` of the clip (or the centre,
  with `deterministic_crop="centre"`) and the first caption.
- `ds[(index, item_seed)]` is the training form (`tta.training.ResumableSampler` yields these pairs): the
  crop offset and the caption are drawn from `numpy.random.default_rng(item_seed)`, so an item depends on
  nothing but its key — the same across workers, processes and resumed runs. With `max_unreadable` > 0, an
  item whose file fails to decode (a FLAC or MP3 cut short behind a whole header, found only when a crop
  reaches what it lost; a file gone since the run began) is another row's, drawn from the same key, and lists
  the row it skipped under "unreadable" (`tta.training.TrainingRun.batches` warns, records and counts them).
- `ds.first_items(count, on_unreadable)` is a pass over the first rows' evaluation items during a run
  (validation, the VAE's scale_factor): with `max_unreadable` > 0 a row whose file fails to decode is left out
  for the next one (`tta.training.TrainingRun.evaluation_items` warns, records and counts it).

Only the needed part of a file is decoded (soundfile seeks), resampled with soxr to `sample_rate`, then
(AudioLDM's loader) DC-removed and peak-normalised to 0.5, and zero-padded at the end to exactly
`segment_samples`. With `cache_dir`, each file is resampled once and kept as a `.npy` keyed by path,
mtime, size and sample rate; crops are then sliced from a memory map. For a file at another rate the two paths
give slightly different crops (a crop resampled alone starts with soxr's filter settling over its first ~10
samples, and its start is rounded to a native sample), so a run's weights depend on `cache_dir` as on any other
data setting.
"""

from __future__ import annotations

import array
import bisect
import hashlib
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from tta.audio import (RESOURCE_ERRNOS, AudioError, audio_info, check_sample_rate, load_audio, normalize_wav,
                       resample)
from tta.config import check_number
from tta.data.manifest import (DataConfig, EmptySplitError, ManifestError, ManifestRow, read_manifest, resolve_path,
                               split_rows)

log = logging.getLogger(__name__)

CaptionChoice = Literal["random", "first"]


def _number_pair(pair, what: str) -> tuple[float, float]:
    """(min, max) given in Python as two numbers (numpy's included), or a ValueError naming `what`."""
    try:
        lo, hi = pair
    except (TypeError, ValueError):
        raise ValueError(f"{what}={pair!r} must be a pair of numbers (min, max)") from None
    return float(check_number(lo, float, f"{what}[0]")), float(check_number(hi, float, f"{what}[1]"))


def unreadable_allowed(fraction: float, rows: int) -> int:
    """How many of a split's `rows` files may fail to decode before a run stops (`data.max_unreadable`): that
    fraction of them rounded down (the fraction as written: 0.29 of 100 rows is 29, where 0.29 * 100 is
    28.999999999999996; 0.5 of 6 rows is 3, half), or 3 if that is more, cut to fewer than half of them on fewer
    than 7 rows (2 of 6, 1 of 4, none of 2); none with `fraction` 0."""
    if fraction <= 0:
        return 0
    return max(math.floor(Fraction(str(float(fraction))) * rows), min(3, (rows - 1) // 2))


class AudioDataset(torch.utils.data.Dataset):
    """Clips of one manifest split as fixed-length segments.

    Items are dicts: {"wav": float32 tensor (segment_samples,), "caption": str, "id": str, "index": int,
    "seconds": float (length of real audio inside the segment; the rest is zero padding)}. The default
    collate turns a batch into {"wav": (B, T), "caption": [str], "id": [str], "index": (B,), "seconds": (B,)}.
    A training item that stands in for rows whose files failed to decode (`max_unreadable`) also has
    "unreadable": [(index, why), ...], which `TrainingRun.batches` takes out before the collate.
    """

    def __init__(self, manifest_path: str | os.PathLike | Sequence[str | os.PathLike], split: str,
                 sample_rate: int, segment_seconds: float, normalize: bool = True, random_crop: bool = True,
                 cache_dir: str | os.PathLike | None = None, caption_choice: CaptionChoice = "random",
                 deterministic_crop: Literal["start", "centre"] = "start", repeat_below: float = 0.0,
                 repeat_gap: tuple[float, float] = (0.2, 1.0), repeat_categories: Sequence[str] = (),
                 repeat_skip_words: Sequence[str] = ("once", "single"),
                 repeat_gap_by_key: dict[str, tuple[float, float]] | None = None,
                 speed_by_key: dict[str, tuple[float, float]] | None = None, max_unreadable: float = 0.0):
        # numbers given in Python: a str failed on "can't multiply sequence by non-int" (sample_rate), "'<=' not
        # supported" (segment_seconds) or was read with float() (repeat_below="0.5"); numpy numbers are numbers
        # and sample_rate is checked as load_audio checks it (10**400 failed on "int too large to convert to
        # float", 2**40 was taken)
        sample_rate = check_sample_rate(sample_rate, "sample_rate")
        segment_seconds = check_number(segment_seconds, float, "segment_seconds")
        if segment_seconds <= 0:
            raise ValueError(f"segment_seconds={segment_seconds} must be > 0")
        repeat_below = check_number(repeat_below, float, "repeat_below")
        repeat_gap = _number_pair(repeat_gap, "repeat_gap")
        repeat_gap_by_key = {str(k): _number_pair(v, f"repeat_gap_by_key[{k!r}]")
                             for k, v in (repeat_gap_by_key or {}).items()}
        speed_by_key = {str(k): _number_pair(v, f"speed_by_key[{k!r}]") for k, v in (speed_by_key or {}).items()}
        max_unreadable = check_number(max_unreadable, float, "max_unreadable")
        if not 0 <= max_unreadable <= 0.5:
            raise ValueError(f"max_unreadable={max_unreadable} must be a fraction of the rows in [0, 0.5]")
        if caption_choice not in ("random", "first"):
            raise ValueError(f"caption_choice={caption_choice!r}, expected 'random' or 'first'")
        if deterministic_crop not in ("start", "centre"):
            raise ValueError(f"deterministic_crop={deterministic_crop!r}, expected 'start' or 'centre'")
        paths = [manifest_path] if isinstance(manifest_path, (str, os.PathLike)) else list(manifest_path)
        if not paths:
            raise ValueError("AudioDataset needs at least one manifest")
        self.rows: list[ManifestRow] = []
        self.paths: list[Path] = []  # absolute audio path of each row
        # for check_audio's message, the manifest and line of each row: one Path per manifest, the rows of
        # manifest i ending at _manifest_ends[i], and a line number per row (4 bytes; a Path per row was 200 MB
        # per million rows, copied into every DataLoader worker)
        self._manifests = [Path(p) for p in paths]
        self._manifest_ends: list[int] = []
        self._lines = array.array("I")
        seen: dict[str, int] = {}   # the index in `paths` of the manifest each row id came from
        for i, mpath in enumerate(paths):
            lines: dict[str, int] = {}
            for row in split_rows(read_manifest(mpath, lines=lines), split):
                if row.id in seen:
                    raise ManifestError(f"{mpath}: id {row.id!r} is also in {self._manifests[seen[row.id]]}; ids "
                                        "must be unique across the manifests of one dataset")
                seen[row.id] = i
                self.rows.append(row)
                self.paths.append(resolve_path(row, mpath))
                self._lines.append(lines[row.id])
            self._manifest_ends.append(len(self.rows))
        self._manifest_names = names = ", ".join(str(p) for p in paths)
        if not self.rows:
            raise EmptySplitError(f"{names}: split {split!r} has no rows")
        # a file gone since the manifest was written stopped a run at its first draw (and every resume with it)
        missing = [row.id for row, path in zip(self.rows, self.paths) if not path.is_file()]
        if missing:
            raise ManifestError(f"{names}: {len(missing)} of split {split!r}'s audio files are missing (rows "
                                f"{', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); `tta data check "
                                "MANIFEST --drop-bad CLEAN.jsonl` writes a manifest without them")
        # an empty clip (a hand-written manifest's; import skips them) stopped a run at its draw, maybe hours in
        empty = [row.id for row in self.rows if row.seconds == 0]
        if empty:
            raise ManifestError(f"{names}: {len(empty)} of split {split!r}'s rows have 0 seconds of audio (rows "
                                f"{', '.join(empty[:3])}{', ...' if len(empty) > 3 else ''}); `tta data check "
                                "MANIFEST --drop-bad CLEAN.jsonl` writes a manifest without them")
        self.split = split
        self.sample_rate = sample_rate
        self.segment_seconds = float(segment_seconds)
        self.segment_samples = round(segment_seconds * sample_rate)
        self.normalize = normalize
        self.random_crop = random_crop
        self.caption_choice = caption_choice
        self.deterministic_crop = deterministic_crop
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.repeat_below = float(repeat_below)
        self.repeat_gap = repeat_gap
        self.repeat_gap_by_key = repeat_gap_by_key
        self.repeat_categories = frozenset(repeat_categories)
        self.speed_by_key = speed_by_key
        words = "|".join(re.escape(w) for w in repeat_skip_words)
        self.repeat_skip = re.compile(rf"\b({words})\b", re.IGNORECASE) if repeat_skip_words else None
        self.max_unreadable = float(max_unreadable)
        self.unreadable_allowed = unreadable_allowed(self.max_unreadable, len(self.rows))

    @classmethod
    def from_config(cls, data: DataConfig, split: str, sample_rate: int, random_crop: bool,
                    caption_choice: CaptionChoice = "random") -> AudioDataset:
        """The dataset a run's `DataConfig` describes (`data.manifest` plus `data.extra_manifests`)."""
        if not data.manifest:
            raise ValueError("data.manifest is empty; set it in the config or with --set data.manifest=PATH")
        return cls([data.manifest, *data.extra_manifests], split, sample_rate, data.segment_seconds,
                   normalize=data.normalize, random_crop=random_crop, cache_dir=data.cache_dir or None,
                   caption_choice=caption_choice, repeat_below=data.repeat_below, repeat_gap=data.repeat_gap,
                   repeat_categories=data.repeat_categories, repeat_skip_words=data.repeat_skip_words,
                   repeat_gap_by_key=data.repeat_gap_by_key, speed_by_key=data.speed_by_key,
                   max_unreadable=data.max_unreadable)

    def __len__(self) -> int:
        return len(self.rows)

    def balance_keys(self, labels: str = "first") -> list:
        """Each row's key for `data.balance`: its first label, else its category, else "" (`labels="first"`);
        with `labels="all"` a tuple of all its labels (or of that one name)."""
        if labels == "all":
            return [tuple(dict.fromkeys(r.labels)) if r.labels else (r.category or "",) for r in self.rows]
        return [r.labels[0] if r.labels else (r.category or "") for r in self.rows]

    @staticmethod
    def row_names(row: ManifestRow) -> tuple[str, ...]:
        """The names a row's `data.key_weights`, `data.repeat_gap_by_key` and `data.speed_by_key` entries
        match, in order of precedence: its first label, then its category."""
        names = [row.labels[0]] if row.labels else []
        if row.category and row.category not in names:
            names.append(row.category)
        return tuple(names)

    def _by_key(self, table: dict, row: ManifestRow):
        """A per-key setting (`data.*_by_key`) for the row: its first label's entry, else its category's, else
        None."""
        return next((table[name] for name in self.row_names(row) if name in table), None)

    def weight_names(self) -> list[tuple[str, ...]]:
        """Each row's names that `data.key_weights` can match: its first label and its category."""
        return [self.row_names(r) for r in self.rows]

    def unreadable_rows(self, *, progress: bool = False) -> list[tuple[int, str]]:
        """(index, why) of each row whose audio file cannot be opened as audio, from its header alone
        (`audio_info`: not audio, a WAV cut short, a sample rate out of range, no samples, gone or unreadable
        since the dataset was made): about a second for 7 000 files, where decoding them would take minutes. A
        compressed file (FLAC, MP3, Ogg) cut short behind a sound header passes; reading it fails, naming it,
        when a crop reaches the part it lost (a training item then stands in another row: `max_unreadable`)."""
        bad = []
        for index, path in enumerate(tqdm(self.paths, desc=f"check {self.split} audio", unit="file",
                                          disable=not progress, leave=False)):
            try:
                info = audio_info(path)
            except AudioError as e:
                bad.append((index, str(e)))
                continue
            except OSError as e:   # a folder on the way that cannot be searched (permissions)
                if e.errno in RESOURCE_ERRNOS:   # the machine's (too many open files), not the file's
                    raise
                bad.append((index, f"{path}: {e.strerror or e}"))
                continue
            if info.num_samples == 0:   # an Ogg cut short can say so; load_audio refuses it
                bad.append((index, f"{path}: contains 0 samples"))
        return bad

    def check_audio(self, *, progress: bool = False) -> None:
        """Refuse (ManifestError) a dataset with a row `unreadable_rows` finds, naming the first three (row id,
        manifest line, why) and how many there are: training would stop when such a row is first drawn, which on
        a large corpus can be hours in, and every resume with it."""
        start = time.monotonic()
        bad = self.unreadable_rows(progress=progress)
        log.debug("read the headers of %d audio files of split %r in %.2f s", len(self.rows), self.split,
                  time.monotonic() - start)
        if not bad:
            return
        raise self._bad_rows_error(bad, "cannot be read", "writes a manifest without them")

    def manifest_line(self, index: int) -> str:
        """"MANIFEST:LINE" of the row at `index`."""
        return f"{self._manifests[bisect.bisect_right(self._manifest_ends, index)]}:{self._lines[index]}"

    def row_place(self, index: int) -> str:
        """"row ID at MANIFEST:LINE" of the row at `index`."""
        return f"row {self.rows[index].id} at {self.manifest_line(index)}"

    def unreadable_error(self, failed: dict[int, str]) -> ManifestError:
        """The error that stops a run once more rows than `unreadable_allowed` failed to decode (`failed`:
        index -> why, in the order found), naming the first three: when a training item drew them, or validation
        or the VAE's scale pass read them (its words say "when read", true of each)."""
        return self._bad_rows_error(list(failed.items()), f"could not be decoded when read, more than the "
                                    f"{self.unreadable_allowed} data.max_unreadable={self.max_unreadable:g} allows",
                                    "decodes every file and writes a manifest without the bad ones")

    def _bad_rows_error(self, bad: Sequence[tuple[int, str]], what: str, remedy: str) -> ManifestError:
        """"MANIFESTS: N of split S's M audio files WHAT (row ID at MANIFEST:LINE: why; two more; ...); `tta data
        check MANIFEST --drop-bad CLEAN.jsonl` REMEDY": `bad` is (index, why) of each bad row, the first three
        named."""
        shown = [f"{self.row_place(index)}: {why}" for index, why in bad[:3]]
        return ManifestError(f"{self._manifest_names}: {len(bad)} of split {self.split!r}'s {len(self.rows)} audio "
                             f"files {what} ({'; '.join(shown)}{'; ...' if len(bad) > 3 else ''}); `tta data check "
                             f"MANIFEST --drop-bad CLEAN.jsonl` {remedy}")

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        if not isinstance(key, tuple) or not self.unreadable_allowed:
            return self._item(key)
        index, item_seed = key
        failed: dict[int, str] = {}
        rng = None
        while True:
            try:
                item = self._item((index, item_seed))
                break
            except (AudioError, OSError) as e:
                why = self._unreadable(e, int(index))
                if why is None:   # not the file's fault (a data.cache_dir that cannot be written): the run's
                    raise
                failed[int(index)] = why
                if len(failed) > self.unreadable_allowed:   # (the run counts every item's; this is one item's)
                    raise self.unreadable_error(failed) from None
            # another row, and a seed for its crop and caption, drawn from the item's own seed: the same item
            # in every worker, process and resumed run (uniformly: a data.balance weight is not looked at)
            if rng is None:
                rng = np.random.default_rng([int(item_seed), 1])
            while (index := int(rng.integers(len(self.rows)))) in failed:   # (fewer than half the rows failed)
                pass
            item_seed = int(rng.integers(2**63))
        if failed:
            item["unreadable"] = list(failed.items())
        return item

    def first_items(self, count: int | None = None,
                    on_unreadable: Callable[[int, str], None] | None = None) -> Iterator[dict]:
        """The evaluation items (`self[index]`, in row order) of the first `count` rows (None: every row) whose
        files can be read. With `on_unreadable` and `max_unreadable` > 0, a row whose file fails to decode (as for
        a training item: a file cut short or gone since the run began) is left out, `on_unreadable(index, why)`
        told of it (it raises to stop) and the next row taken; otherwise the error is raised."""
        taken = 0
        for index in range(len(self.rows)):
            if count is not None and taken >= count:
                return
            try:
                item = self._item(index)
            except (AudioError, OSError) as e:
                why = self._unreadable(e, index) if on_unreadable is not None and self.unreadable_allowed else None
                if why is None:
                    raise
                on_unreadable(index, why)
                continue
            taken += 1
            yield item

    def _unreadable(self, error: Exception, index: int) -> str | None:
        """Why the row at `index` cannot be read, when `error` (raised reading it) is about its audio file: an
        AudioError, or an OSError naming the file (gone, or cannot be opened, since the run began); else None
        (the machine's: out of memory or of file descriptors, which load_audio raises as they are; a cache_dir
        that cannot be written)."""
        path = self.paths[index]
        if isinstance(error, AudioError):
            return str(error)
        if isinstance(error, OSError) and error.errno not in RESOURCE_ERRNOS and error.filename is not None \
                and os.fsdecode(error.filename) == str(path):
            return f"{path}: {error.strerror or error}"
        return None

    def _item(self, key: int | tuple[int, int]) -> dict:
        if isinstance(key, tuple):
            index, item_seed = key
            rng = np.random.default_rng(int(item_seed))
        else:
            index, rng = key, None
        index = int(index)
        if not 0 <= index < len(self.rows):
            raise IndexError(f"index {index} out of range for {len(self.rows)} rows")
        row = self.rows[index]
        # Draw the offset first, then the caption, then (rows with a speed range only) the speed, always in
        # this order: an item stays reproducible, and rows without a speed range draw what they always drew.
        wav = self._read_segment(index, rng if self.random_crop else None)
        caption = row.captions[0]
        if rng is not None and self.caption_choice == "random" and len(row.captions) > 1:
            caption = row.captions[int(rng.integers(len(row.captions)))]
        speeds = self._speed_range(row) if rng is not None else None
        if speeds is not None:
            wav = self._change_speed(wav, speeds, rng)
        seconds = wav.shape[0] / self.sample_rate
        if self.normalize:
            wav = normalize_wav(wav)
        if wav.shape[0] < self.segment_samples:
            wav = np.pad(wav, (0, self.segment_samples - wav.shape[0]))
        if rng is not None and self._repeats(row, seconds, caption):
            gap = self._repeat_gap(row)
            wav, seconds = self._fill_with_repeats(wav, round(seconds * self.sample_rate), rng, gap)
        return {"wav": torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)), "caption": caption,
                "id": row.id, "index": index, "seconds": float(seconds)}

    # ----------------------------------------------------------------------------------- speed

    def _speed_range(self, row: ManifestRow) -> tuple[float, float] | None:
        """`speed_by_key`'s range for the row (None: its speed is left alone)."""
        return self._by_key(self.speed_by_key, row)

    def _change_speed(self, wav: np.ndarray, speeds: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
        """`wav` played r times as fast, r drawn log-uniformly from `speeds` (varispeed: pitch and tempo move
        together, as a tape played faster), cut to the segment. A sped-up long clip ends early; the rest of
        the segment is padded or repeated like a short clip's."""
        lo, hi = speeds
        r = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        if wav.shape[0] == 0 or r == 1.0:
            return wav
        return resample(wav, self.sample_rate * r, self.sample_rate)[:self.segment_samples]

    # ----------------------------------------------------------------------------------- repeats

    def _repeats(self, row: ManifestRow, seconds: float, caption: str) -> bool:
        """Whether a training item of `row` with `seconds` of real audio and this caption is repeated to fill
        the segment ("a dog barking once" is not)."""
        if not 0 < seconds < self.repeat_below:
            return False
        if self.repeat_categories and (row.category or "") not in self.repeat_categories:
            return False
        return self.repeat_skip is None or not self.repeat_skip.search(caption)

    def _repeat_gap(self, row: ManifestRow) -> tuple[float, float]:
        """`repeat_gap_by_key`'s range for the row, else `repeat_gap`."""
        return self._by_key(self.repeat_gap_by_key, row) or self.repeat_gap

    def _fill_with_repeats(self, wav: np.ndarray, length: int, rng: np.random.Generator,
                           gap: tuple[float, float]) -> tuple[np.ndarray, float]:
        """The clip's first `length` samples from the start, again and again after gaps drawn uniformly from
        `gap` (seconds), until the segment is full (the last copy may be cut). A one-shot event in a 10 s
        window is mostly silence; repeated, every item teaches the event as a 10 s clip of it would."""
        event = wav[:length]
        out = np.zeros(self.segment_samples, dtype=np.float32)
        lo, hi = gap
        pos = 0
        while pos < self.segment_samples:
            take = min(length, self.segment_samples - pos)
            out[pos:pos + take] = event[:take]
            pos += length + max(1, round(rng.uniform(lo, hi) * self.sample_rate))
        return out, self.segment_samples / self.sample_rate

    # ----------------------------------------------------------------------------------- reading

    def _offset(self, total: int, rng: np.random.Generator | None) -> int:
        """Start of the segment in target-rate samples for a clip of `total` target-rate samples."""
        room = total - self.segment_samples
        if room <= 0:
            return 0
        if rng is not None:
            return int(rng.integers(0, room + 1))
        return room // 2 if self.deterministic_crop == "centre" else 0

    def _read_segment(self, index: int, rng: np.random.Generator | None) -> np.ndarray:
        """(t,) float32 at self.sample_rate, t <= segment_samples (shorter only when the clip is)."""
        path = self.paths[index]
        if self.cache_dir is not None:
            full = self._cached(path)
            start = self._offset(full.shape[0], rng)
            return np.array(full[start:start + self.segment_samples], dtype=np.float32)
        info = audio_info(path)
        native_sr = info.sample_rate
        total = math.floor(info.num_samples * self.sample_rate / native_sr)
        start = self._offset(total, rng)
        if start == 0 and total <= self.segment_samples:
            wav, _ = load_audio(path, self.sample_rate)
        else:
            # Decode a little more than the segment (2 ms guard) so resampling never leaves it short.
            native_start = round(start * native_sr / self.sample_rate)
            native_len = math.ceil(self.segment_samples * native_sr / self.sample_rate) + native_sr // 500
            native_len = min(native_len, info.num_samples - native_start)
            wav, _ = load_audio(path, self.sample_rate, start_seconds=native_start / native_sr,
                                max_seconds=native_len / native_sr)
        return wav[:self.segment_samples]

    def _cached(self, path: Path) -> np.ndarray:
        """The whole file at self.sample_rate from the cache (memory-mapped), creating the entry if needed."""
        stat = path.stat()
        key = f"{path.resolve()}|{stat.st_mtime_ns}|{stat.st_size}|{self.sample_rate}"
        name = hashlib.sha1(key.encode()).hexdigest()
        cache_file = self.cache_dir / name[:2] / f"{name}.npy"
        if not cache_file.exists():
            wav, _ = load_audio(path, self.sample_rate)
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            # Unique temp name per process: several DataLoader workers may fill the same entry at once.
            tmp = cache_file.with_name(f".{name}.{os.getpid()}.tmp.npy")
            np.save(tmp, wav.astype(np.float32))
            os.replace(tmp, cache_file)
            log.debug("cached %s -> %s", path, cache_file)
        try:
            return np.load(cache_file, mmap_mode="r")
        except (ValueError, OSError, EOFError) as e:   # a damaged entry (a crash mid-write): resampled again
            log.warning("%s: unreadable cache entry for %s (%s); resampling it again", cache_file, path, e)
            wav, _ = load_audio(path, self.sample_rate)
            tmp = cache_file.with_name(f".{name}.{os.getpid()}.tmp.npy")
            np.save(tmp, wav.astype(np.float32))
            os.replace(tmp, cache_file)
            return np.load(cache_file, mmap_mode="r")


def check_held_out(clips: Callable[[], AudioDataset]) -> None:
    """Refuse (ManifestError) the held-out split `clips()` builds as a run reads it: a row's audio file missing
    (its constructor) or unreadable (`check_audio`). An empty split (EmptySplitError) passes: the run trains
    without validation and says so itself."""
    try:
        held_out = clips()
    except EmptySplitError:
        return
    held_out.check_audio()
