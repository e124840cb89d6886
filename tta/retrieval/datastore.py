"""A CLAP datastore: every clip of a manifest as an audio and a text embedding in two FAISS indexes.

Folder layout (written atomically by `build_datastore`):

    datastore.json   format version, CLAP identity, dim, count, index type, manifest path, config
    audio.index      FAISS index over the clips' CLAP audio embeddings (inner product = cosine)
    text.index       FAISS index over the CLAP text embeddings of each clip's first caption
    audio_emb.npy    (N, D) float32, L2-normalised; row i is meta line i
    text_emb.npy     (N, D) float32
    meta.jsonl       {"id", "captions", "path", "audio_sha256", "source"} per entry, in index order ("source" is
                     the manifest row's provenance: stores built before it was recorded lack it)
    latent.npy       optional (built with a VAE): (N, L, C * F') float16, each clip's VAE latents (posterior
                     mean x scale_factor) average-pooled over time to L tokens; datastore.json's "latent"
                     names the VAE (its identity), L and the token width. Retrieval models with the "latent"
                     feature (Re-AudioLDM's acoustic neighbour features) read them; other uses ignore them.
    finite.json      written by `Datastore.load`: the embedding files it found finite, each by its size,
                     mtime_ns and ctime_ns (a file since changed, copied or replaced is checked again)

`Datastore.load(folder)` memory-maps the arrays (and the indexes where FAISS supports it), so a store of
millions of entries costs little resident memory; it reads each embedding file once, in chunks, to refuse a row
holding NaN or inf (`first_non_finite_row`), the first time it opens the file: finite.json keeps the verdict, so
loading an unchanged store does not read its embeddings again (a 1 M-entry store holds 4 GB of them). `query` searches one modality and can leave out given
ids, audio files, audio hashes and clips related to the query's (the query's own clip during training, its
duplicates, other crops of its source file and mixtures built from it), still returning k hits.

Related clips (`Relation`, `relations_of_rows`): a manifest `source` ending in "@<seconds>s" is a crop of a
file, and the source without that suffix is its file group ("debian:pkg:x.ogg@10.24s" -> "debian:pkg:x.ogg");
a source without it ("fluidsynth:...:program 0", "espeak-ng:en+m1") names a setting many different clips share,
not a group. A source "mix:ID1+ID2" or "mix:ID+reverb room" is a mixture of the clips ID1, ID2 (parts holding a
space are effects, not ids). Two clips are related when they are the same audio file, crops of one file, or
one is a mixture built from the other (or from a crop of the other's file), in either direction.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from tta.checkpoint import FINITE_NAME, CheckpointError, read_json
from tta.config import check_numbers, shortened

log = logging.getLogger(__name__)

FORMAT_VERSION = 2   # 2: clips embedded at the level config.normalize says (1: the file's own; still read)
READABLE_VERSIONS = (1, 2)
INFO_NAME = "datastore.json"
META_NAME = "meta.jsonl"
META_KEYS = ("id", "captions", "path", "audio_sha256")   # every meta.jsonl line ("source": newer stores only)
MODALITIES = ("audio", "text")
PQ_POINTS_PER_CENTROID = 39   # FAISS warns (and k-means is poor) below 39 training points per centroid
_CROP = re.compile(r"(?P<file>.+)@\d+(?:\.\d+)?s")


class DatastoreError(ValueError):
    """A datastore folder that is missing, corrupted, empty or built with another CLAP."""


@dataclass(frozen=True)
class DatastoreConfig:
    """How a datastore is built and searched.

    index: "flat" (exact inner product; right up to ~10^5 entries), "ivf" (inverted file over `nlist`
    k-means cells, `nprobe` cells visited per query) or "ivfpq" (IVF with product-quantised vectors:
    `m` sub-quantisers of `nbits` bits each; for millions of entries).
    nlist: IVF cells; 0 = automatic, about 4 * sqrt(N) (at most N / 39 so k-means has enough points).
    max_seconds: embed at most the first this many seconds of each clip (0 = the whole clip).
    split: manifest split to index (None = every row).
    latent_tokens: with a VAE, the time tokens each clip's latents are pooled to.
    normalize: embed each clip (and take its latents) as the training loader sees it, DC removed and scaled to
    peak 0.5 (AudioLDM's loader, `tta.audio.normalize_wav`), so a quiet recording sits where its training
    crops do; audio queries are normalised alike. False: the file's own level (stores built before this
    setting existed read as False). The stored audio hash is of the file's own samples either way.
    """

    index: Literal["flat", "ivf", "ivfpq"] = "flat"
    nlist: int = 0
    m: int = 16
    nbits: int = 8
    nprobe: int = 16
    batch_size: int = 32
    max_seconds: float = 10.0
    split: str | None = None
    latent_tokens: int = 8
    normalize: bool = True

    def __post_init__(self) -> None:
        check_numbers(self)
        if self.index not in ("flat", "ivf", "ivfpq"):
            raise ValueError(f"index={self.index!r} must be 'flat', 'ivf' or 'ivfpq'")
        for key in ("m", "nbits", "nprobe", "batch_size", "latent_tokens"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key}={getattr(self, key)} must be > 0")
        if self.nlist < 0:
            raise ValueError(f"nlist={self.nlist} must be >= 0 (0 = automatic)")
        if not math.isfinite(self.max_seconds) or self.max_seconds < 0:
            raise ValueError(f"max_seconds={self.max_seconds} must be a finite number >= 0 (0 = whole clip)")


def auto_nlist(count: int) -> int:
    """IVF cells for `count` entries: ~4 sqrt(N), capped so each cell gets >= 39 training points."""
    return max(1, min(round(4 * math.sqrt(count)), count // 39))


def make_index(config: DatastoreConfig, dim: int, count: int, *, warn: bool = True):
    """An untrained FAISS index (inner-product metric) for `count` vectors of `dim` floats; `warn`: log, in tta's
    words, an IVF with too few entries per cell (FAISS's own warning is silenced either way)."""
    import faiss

    if config.index == "flat":
        return faiss.IndexFlatIP(dim)
    nlist = config.nlist or auto_nlist(count)
    if nlist > count:
        raise ValueError(f"nlist={nlist} IVF cells need at least as many entries; the store has {count} "
                         "(use index 'flat' for small stores)")
    if config.index == "ivf":
        key = f"IVF{nlist},Flat"
    else:
        if dim % config.m:
            raise ValueError(f"m={config.m} PQ sub-quantisers must divide the embedding dim {dim}")
        if count < PQ_POINTS_PER_CENTROID * 2 ** config.nbits:
            raise ValueError(f"ivfpq with nbits={config.nbits} needs >= {PQ_POINTS_PER_CENTROID * 2 ** config.nbits} "
                             f"entries to train its PQ codebooks ({PQ_POINTS_PER_CENTROID} per centroid); the store "
                             f"has {count} (use --index ivf, or a smaller --nbits)")
        key = f"IVF{nlist},PQ{config.m}x{config.nbits}"
    index = faiss.index_factory(dim, key, faiss.METRIC_INNER_PRODUCT)  # owns its coarse quantizer
    ivf = faiss.extract_index_ivf(index)
    ivf.nprobe = min(config.nprobe, nlist)
    if count < PQ_POINTS_PER_CENTROID * nlist:
        if warn:   # FAISS would print its own clustering warning at every training
            log.warning("%s index: %d entries for %d IVF cells (fewer than %d per cell): k-means is poor%s; a "
                        "flat index is exact, and fast at this size", config.index, count, nlist,
                        PQ_POINTS_PER_CENTROID, ", and one cell searches everything" if nlist == 1 else "")
        ivf.cp.min_points_per_centroid = 1
    return index


def fill_index(index, emb: np.ndarray, *, chunk: int = 65_536, train_max: int = 262_144, seed: int = 0):
    """Train `index` (if needed) on up to `train_max` rows of `emb` (N, D) and add all rows in chunks."""
    if not index.is_trained:
        n = emb.shape[0]
        rows = np.sort(np.random.default_rng(seed).choice(n, train_max, replace=False)) if n > train_max \
            else slice(None)
        index.train(np.ascontiguousarray(emb[rows], dtype=np.float32))
    for start in range(0, emb.shape[0], chunk):
        index.add(np.ascontiguousarray(emb[start:start + chunk], dtype=np.float32))
    return index


def audio_hash(wav: np.ndarray) -> str:
    """sha256 of decoded float32 samples: equal for byte-different files holding the same audio."""
    return hashlib.sha256(np.ascontiguousarray(wav, dtype=np.float32).tobytes()).hexdigest()


def clip_hashes(paths: Sequence[str | os.PathLike], sample_rate: int, max_seconds: float) -> list[str | None]:
    """`audio_hash` of each audio file as `build_datastore` hashes its entries (decoded at the CLAP's
    `sample_rate`, cut at the store's `max_seconds`, 0 = whole clip), so that a copy of an entry under
    another id and file is recognised; None for a file that cannot be read."""
    from tta.audio import AudioError, load_audio

    out: list[str | None] = []
    for path in paths:
        try:
            out.append(audio_hash(load_audio(path, sample_rate, max_seconds=max_seconds or None)[0]))
        except AudioError:
            out.append(None)
    return out


def source_group(source: str) -> str | None:
    """The file group of a manifest `source`: the source without its trailing "@<seconds>s" crop offset; None
    when it has none (see the module docstring: such a source is no group)."""
    m = _CROP.fullmatch(source or "")
    return m["file"] if m else None


def mixture_parts(source: str) -> tuple[str, ...]:
    """The clip ids a mixture `source` ("mix:ID1+ID2", "mix:ID+reverb room") is built from; () for others."""
    if not (source or "").startswith("mix:"):
        return ()
    return tuple(p for p in source[4:].split("+") if p and not any(c.isspace() for c in p))


def clip_path(path: str, manifest: str | os.PathLike) -> str:
    """A manifest row's audio path as one comparable string: resolved against the manifest's folder, with
    symbolic links followed (so a re-imported manifest naming the same files compares equal)."""
    from tta.data.manifest import resolve_path

    return os.path.realpath(resolve_path(path, manifest))


@dataclass(frozen=True)
class Relation:
    """What ties a clip to others: `own` keys (its resolved audio file, its file group, its id) and `parts`
    keys (the same keys of each clip it is a mixture of). Clips A and B are related when A's own keys meet B's
    own or parts keys, or B's own keys meet A's parts keys (two mixtures that only share a part are not)."""

    own: frozenset[str]
    parts: frozenset[str] = frozenset()


def relation(row_id: str, path: str | None, source: str | None, part=None) -> Relation:
    """The Relation of a clip; `part(id)` gives (resolved path, source) of a clip a mixture names, or None
    when unknown (then only its id is a key)."""
    def keys(i: str, p: str | None, src: str | None) -> set[str]:
        out = {f"id:{i}"}
        if p:
            out.add(f"path:{p}")
        group = source_group(src or "")
        if group:
            out.add(f"group:{group}")
        return out

    parts: set[str] = set()
    for pid in mixture_parts(source or ""):
        found = part(pid) if part is not None else None
        parts |= keys(pid, *found) if found else {f"id:{pid}"}
    return Relation(frozenset(keys(row_id, path, source)), frozenset(parts))


def relations_of_rows(rows, paths: Sequence[str], others=None) -> list[Relation]:
    """Relations of manifest `rows` (ManifestRows) whose audio files are `paths` (`clip_path` strings); the
    parts a mixture names are looked up in `others` = (rows, paths) (default: these rows)."""
    look_rows, look_paths = others if others is not None else (rows, paths)
    by_id = {r.id: (p, r.source) for r, p in zip(look_rows, look_paths)}
    return [relation(r.id, p, r.source, by_id.get) for r, p in zip(rows, paths)]


def build_datastore(manifest: str | os.PathLike, clap, out_dir: str | os.PathLike,
                    config: DatastoreConfig = DatastoreConfig(), *, progress: bool = True, vae=None) -> Path:
    """Embed every clip of `manifest` with `clap` (a tta.clap ClapEmbedder) and write a datastore folder.

    Streams the manifest in `config.batch_size` batches: each clip is read at the CLAP's sample rate (at
    most `config.max_seconds`), embedded, and written into memory-mapped arrays; the FAISS indexes are
    built from those afterwards. With `vae` (a MelVAE) each clip's pooled latents are stored too
    (latent.npy, see the module docstring). A row whose audio is missing, unreadable or refused by the
    CLAP is skipped with a warning (the store holds the others); none usable is an error. Returns `out_dir`.
    """
    import faiss
    from tqdm import tqdm

    from tta.audio import AudioError, load_audio, log_mel, normalize_wav
    from tta.checkpoint import atomic_dir, atomic_write_text
    from tta.config import to_dict
    from tta.data.manifest import read_manifest, resolve_path

    manifest = Path(manifest)
    rows = read_manifest(manifest)
    if config.split is not None:
        rows = [r for r in rows if r.split == config.split]
    if not rows:
        where = f" split {config.split!r}" if config.split is not None else ""
        raise DatastoreError(f"{manifest}{where}: no rows to index (an empty datastore is useless)")
    dim, n = int(clap.embed_dim), len(rows)
    make_index(config, dim, n)  # fail on bad index settings before minutes of embedding
    max_seconds = config.max_seconds or None
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        audio_emb = _new_array(tmp / "audio_emb.npy", np.float32, (n, dim))
        text_emb = _new_array(tmp / "text_emb.npy", np.float32, (n, dim))
        latent, latent_info = None, None
        if vae is not None:
            import torch

            mel_cfg, tokens = vae.config.mel, config.latent_tokens
            width = vae.config.latent_channels * (mel_cfg.n_mels // vae.downsample_factor)
            latent = _new_array(tmp / "latent.npy", np.float16, (n, tokens, width))
            latent_info = {"vae_identity": vae.identity, "tokens": tokens, "dim": width,
                           "sample_rate": mel_cfg.sample_rate}
        level = normalize_wav if config.normalize else (lambda w: w)   # as the training loader reads clips
        bar = tqdm(total=n, desc="datastore", unit="clip", disable=not progress)
        kept = 0  # rows written so far: bad rows leave no gap
        with open(tmp / META_NAME, "w") as meta:
            for start in range(0, n, config.batch_size):
                batch, wavs = [], []
                for r in rows[start:start + config.batch_size]:
                    try:
                        wavs.append(load_audio(resolve_path(r, manifest), clap.sample_rate,
                                               max_seconds=max_seconds)[0])
                        batch.append(r)
                    except AudioError as e:
                        log.warning("%s: skipping row %s: %s", manifest, r.id, e)
                bar.update(min(config.batch_size, n - start))
                if not batch:
                    continue
                batch, wavs, emb = _embed_rows(clap, batch, wavs, manifest, level)
                if not batch:
                    continue
                end = kept + len(batch)
                audio_emb[kept:end] = emb
                text_emb[kept:end] = clap.embed_text([r.captions[0] for r in batch]).numpy()
                if latent is not None:
                    same = mel_cfg.sample_rate == clap.sample_rate
                    for j, r in enumerate(batch):
                        w = level(wavs[j] if same else load_audio(resolve_path(r, manifest), mel_cfg.sample_rate,
                                                                  max_seconds=max_seconds)[0])
                        mel = log_mel(torch.as_tensor(np.asarray(w, dtype=np.float32))[None], mel_cfg)
                        latent[kept + j] = vae.latent_summary(mel.to(vae.scale_factor.device), tokens).cpu().numpy()
                meta.writelines(json.dumps({"id": r.id, "captions": list(r.captions), "path": r.path,
                                           "audio_sha256": audio_hash(w), "source": r.source}) + "\n"
                                for r, w in zip(batch, wavs))
                kept = end
        bar.close()
        if kept == 0:
            raise DatastoreError(f"{manifest}: none of the {n} rows has usable audio (each is named above)")
        if kept < n:
            log.warning("%s: skipped %d of %d rows with bad audio; the datastore holds %d", manifest, n - kept,
                        n, kept)
            audio_emb = _shrink(tmp / "audio_emb.npy", audio_emb, kept)
            text_emb = _shrink(tmp / "text_emb.npy", text_emb, kept)
            latent = None if latent is None else _shrink(tmp / "latent.npy", latent, kept)
            n = kept
        for name, emb in (("audio", audio_emb), ("text", text_emb)):
            emb.flush()
            index = fill_index(make_index(config, dim, n, warn=False), emb)   # warned before embedding
            faiss.write_index(index, str(tmp / f"{name}.index"))
        if latent is not None:
            latent.flush()
        del audio_emb, text_emb, latent
        info = {"format_version": FORMAT_VERSION, "clap_identity": clap.identity, "dim": dim, "count": n,
                "index": config.index, "manifest": str(manifest.resolve()),
                "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(), "config": to_dict(config)}
        if latent_info is not None:
            info["latent"] = latent_info
        atomic_write_text(tmp / INFO_NAME, json.dumps(info, indent=2) + "\n")
    log.info("datastore %s: %d entries, dim %d, %s index, CLAP %s%s", out_dir, n, dim, config.index, clap.identity,
             f", latents of VAE {latent_info['vae_identity']}" if latent_info else "")
    return out_dir


def _embed_rows(clap, batch: list, wavs: list, manifest: Path, level) -> tuple[list, list, np.ndarray]:
    """CLAP audio embeddings of a batch, each clip through `level` first (returned as read); if the CLAP refuses
    the batch, clip by clip, skipping those it refuses. A CLAP that cannot embed at all (a CheckpointError: a
    config.json whose audio tower fails on any clip) stops the build; it had every row skipped as a bad clip."""
    from tta.data.manifest import resolve_path

    try:
        return batch, wavs, clap.embed_audio([level(w) for w in wavs], clap.sample_rate).numpy()
    except CheckpointError:
        raise
    except ValueError:  # the embedder only knows batch positions: find the clip(s) by embedding one at a time
        pass
    rows, kept, emb = [], [], []
    for r, w in zip(batch, wavs):
        try:
            emb.append(clap.embed_audio([level(w)], clap.sample_rate).numpy()[0])
        except CheckpointError:
            raise
        except ValueError as e:
            log.warning("%s: skipping row %s: %s: refused by the CLAP (%s)", manifest, r.id,
                        resolve_path(r, manifest), e)
            continue
        rows.append(r)
        kept.append(w)
    return rows, kept, np.stack(emb) if emb else np.zeros((0, int(clap.embed_dim)), np.float32)


def _new_array(path: Path, dtype, shape: tuple[int, ...]) -> np.memmap:
    """A new .npy file mapped into memory, its blocks reserved on disk first: a map of a file that the file system
    has no room for ends the process with SIGBUS ("Bus error") when it is written, where the reservation fails with
    ENOSPC, an error that names the store (and leaves no temporary folder)."""
    arr = np.lib.format.open_memmap(path, "w+", dtype, shape)
    if hasattr(os, "posix_fallocate"):   # not on macOS or Windows
        with open(path, "r+b") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):   # else: cannot reserve there
                    raise
    return arr


def _shrink(path: Path, arr: np.ndarray, rows: int, chunk: int = 65_536) -> np.ndarray:
    """Rewrite the .npy memmap `arr` at `path` holding only its first `rows` rows; returns the new memmap."""
    part = path.with_name(path.name + ".part")
    small = _new_array(part, arr.dtype, (rows, *arr.shape[1:]))
    for start in range(0, rows, chunk):
        small[start:start + chunk] = arr[start:min(start + chunk, rows)]
    small.flush()
    del small, arr
    os.replace(part, path)
    return np.lib.format.open_memmap(path, "r+")


@dataclass
class Neighbours:
    """Top-k hits per query: ids/captions (B lists of k), scores (B, k) inner products, indices (B, k) rows."""

    ids: list[list[str]]
    scores: np.ndarray
    indices: np.ndarray
    captions: list[list[str]]


class Datastore:
    """A loaded datastore folder (see the module docstring). Build with `build_datastore`."""

    def __init__(self, folder: Path, info: dict, indexes: dict, emb: dict, meta: list[dict]):
        self.folder, self.info, self.indexes, self.emb, self.meta = folder, info, indexes, emb, meta
        self.identity: str = info["clap_identity"]
        self.latent_info: dict | None = info.get("latent")
        self.dim: int = int(info["dim"])
        self.count: int = int(info["count"])
        self.ids = [m["id"] for m in meta]
        self.row_of = {m["id"]: i for i, m in enumerate(meta)}
        self.rows_of_hash: dict[str, list[int]] = {}
        for i, m in enumerate(meta):
            self.rows_of_hash.setdefault(m["audio_sha256"], []).append(i)
        self.has_sources: bool = all("source" in m for m in meta)   # stores built before sources were recorded
        self._paths: list[str] | None = None
        self._rows_of_path: dict[str, list[int]] | None = None
        self._related: tuple[dict[str, set[int]], dict[str, set[int]]] | None = None
        self._warned_sources = False

    @property
    def max_seconds(self) -> float:
        """How much of each clip was embedded and hashed (DatastoreConfig.max_seconds; 0 = whole clip)."""
        return float(self.info.get("config", {}).get("max_seconds", 0) or 0)

    @property
    def normalize(self) -> bool:
        """Whether clips were embedded normalised (DatastoreConfig.normalize; False for stores built before it, of
        format version 1: an older tta refuses version 2 rather than query a normalised store with raw audio)."""
        return bool(self.info.get("config", {}).get("normalize", False))

    @property
    def manifest(self) -> str:
        """The manifest the store was built from (datastore.json)."""
        return str(self.info.get("manifest", ""))

    @property
    def paths(self) -> list[str]:
        """Each entry's audio file, resolved against the store's manifest (`clip_path`); computed once."""
        if self._paths is None:
            self._paths = [clip_path(m["path"], self.manifest) for m in self.meta]
        return self._paths

    @property
    def rows_of_path(self) -> dict[str, list[int]]:
        if self._rows_of_path is None:
            self._rows_of_path = {}
            for i, p in enumerate(self.paths):
                self._rows_of_path.setdefault(p, []).append(i)
        return self._rows_of_path

    def relations(self) -> list[Relation]:
        """Each entry's Relation (mixture parts looked up among the store's own entries). Without recorded
        sources only paths and ids are known: no file groups, and mixtures are not recognised as such."""
        def part(pid: str):
            r = self.row_of.get(pid)
            return None if r is None else (self.paths[r], self.meta[r].get("source"))

        return [relation(m["id"], p, m.get("source"), part) for m, p in zip(self.meta, self.paths)]

    def related_rows(self, rel: Relation) -> set[int]:
        """Rows of the entries related to a clip with Relation `rel` (see `Relation`), the clip itself included."""
        if self._related is None:
            own: dict[str, set[int]] = {}
            parts: dict[str, set[int]] = {}
            for i, r in enumerate(self.relations()):
                for key in r.own:
                    own.setdefault(key, set()).add(i)
                for key in r.parts:
                    parts.setdefault(key, set()).add(i)
            self._related = own, parts
        own, parts = self._related
        rows: set[int] = set()
        for key in rel.own:
            rows |= own.get(key, set()) | parts.get(key, set())
        for key in rel.parts:
            rows |= own.get(key, set())
        return rows

    def warn_without_sources(self) -> None:
        """Warn once that this store records no sources: related clips are left out only as exact duplicates."""
        if not self._warned_sources:
            self._warned_sources = True
            log.warning("%s: built before sources were recorded in %s, so other crops of a clip's file and "
                        "mixtures built from it cannot be recognised; leaving out exact duplicates instead "
                        "(rebuild the store to exclude related clips)", self.folder, META_NAME)

    @classmethod
    def load(cls, folder: str | os.PathLike, *, mmap: bool = True) -> Datastore:
        """Open a datastore folder; `mmap` maps the embeddings (and indexes, where FAISS can) from disk."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():   # e.g. the manifest, or a file of the store
            inside = (folder.parent / INFO_NAME).is_file()
            raise DatastoreError(f"{folder}: is a file, not a datastore folder " + (
                f"(the datastore is its folder {folder.parent})" if inside else "(tta index build --out writes one)"))
        if not folder.is_dir():
            raise DatastoreError(f"{folder}: datastore folder not found")
        info_path = folder / INFO_NAME
        if not info_path.is_file():
            raise DatastoreError(f"{folder}: not a datastore (no {INFO_NAME})")
        info = read_json(info_path, DatastoreError)
        if not isinstance(info, dict):
            raise DatastoreError(f"{info_path}: expected a JSON object")
        version = info.get("format_version")
        if type(version) is not int or version not in READABLE_VERSIONS:
            raise DatastoreError(f"{info_path}: format_version {version!r} is not one this tta reads "
                                 f"({', '.join(map(str, READABLE_VERSIONS))})")
        for key, kind in (("clap_identity", str), ("dim", int), ("count", int)):
            if not isinstance(info.get(key), kind) or isinstance(info.get(key), bool):
                raise DatastoreError(f"{info_path}: {key!r} is {'missing' if key not in info else repr(info[key])}, "
                                     f"expected {'a string' if kind is str else 'an integer'}")
        if int(info.get("count", 0)) <= 0:
            raise DatastoreError(f"{folder}: the datastore is empty (count {info.get('count')})")
        count, dim = int(info["count"]), int(info["dim"])
        meta = _read_meta(folder / META_NAME, count)
        indexes, emb = {}, {}
        finite = _read_finite(folder / FINITE_NAME)
        found = dict(finite)
        for name in MODALITIES:
            indexes[name] = _read_index(folder / f"{name}.index", count, dim, mmap)
            path = folder / f"{name}_emb.npy"
            try:
                emb[name] = np.load(path, mmap_mode="r" if mmap else None)
            except (OSError, ValueError) as e:
                raise DatastoreError(f"{path}: unreadable embeddings ({e})") from None
            if emb[name].shape != (count, dim):
                raise DatastoreError(f"{path}: shape {emb[name].shape}, expected ({count}, {dim})")
            stamp = _file_stamp(path)
            if finite.get(path.name) == stamp:   # checked before, and not changed since
                continue
            bad = first_non_finite_row(emb[name])   # a NaN row scores NaN; the index still answers without it
            if bad is not None:
                raise DatastoreError(f"{path}: row {bad} (entry {meta[bad]['id']!r}) holds NaN or inf; rebuild the "
                                     "datastore")
            if _file_stamp(path) == stamp:   # (not written to while it was read)
                found[path.name] = stamp
        if info.get("latent") is not None:
            path, lat = folder / "latent.npy", info["latent"]
            try:
                emb["latent"] = np.load(path, mmap_mode="r" if mmap else None)
            except (OSError, ValueError) as e:
                raise DatastoreError(f"{path}: unreadable latents ({e})") from None
            want = (count, int(lat.get("tokens", 0)), int(lat.get("dim", 0)))
            if emb["latent"].shape != want:
                raise DatastoreError(f"{path}: shape {emb['latent'].shape}, expected {want}")
        if found != finite:
            _write_finite(folder / FINITE_NAME, found)
        return cls(folder, info, indexes, emb, meta)

    # ----------------------------------------------------------------------------------------- query

    def check_clap(self, clap, *, probe: int = 4) -> None:
        """Refuse a CLAP other than the one the store was built with (their embeddings do not compare).

        A tta CLAP's identity hashes its tensors, so a re-saved copy keeps it. A LAION CLAP's identity
        hashes its checkpoint file, so the same weights in another format (the transformers folder of a
        pipeline's text_encoder/) carry another one: then the stored text embeddings of the first `probe`
        entries are recomputed with `clap`, and the store is accepted only if they match (max abs
        difference <= 1e-3 on unit vectors; a different CLAP differs by orders of magnitude more) and so do the
        audio embeddings of the first two entries whose audio files can be read (`_audio_agrees`).
        """
        if clap.identity == self.identity:
            return
        if probe > 0 and int(getattr(clap, "embed_dim", -1)) == self.dim:
            n = min(probe, self.count)
            mine = np.asarray(clap.embed_text([self.meta[i]["captions"][0] for i in range(n)]), dtype=np.float32)
            if float(np.abs(mine - np.asarray(self.emb["text"][:n])).max()) <= 1e-3 and self._audio_agrees(clap):
                log.info("%s: CLAP %s reproduces the stored embeddings of CLAP %s: same model", self.folder,
                         clap.identity, self.identity)
                return
        raise DatastoreError(f"{self.folder}: built with CLAP {self.identity}, but the given CLAP is "
                             f"{clap.identity}; rebuild the datastore with this CLAP")

    def _audio_agrees(self, clap, probe: int = 2) -> bool:
        """Whether `clap` reproduces the stored audio embeddings of the first `probe` entries whose audio can be
        read (a CLAP whose audio tower alone changed has the same text embeddings); True when none can be read.
        The tolerance (1e-2 on unit vectors) allows for batch padding; another audio tower is far beyond it. Out of
        file descriptors or memory, the error is raised: the file is not the one at fault."""
        from tta.audio import AudioError, load_audio, raise_resource_error

        checked = 0
        for i in range(self.count):
            if checked == probe:
                break
            try:
                wav = load_audio(self.paths[i], clap.sample_rate, max_seconds=self.max_seconds or None,
                                 normalize=self.normalize)[0]
            except (AudioError, OSError) as e:
                raise_resource_error(e, self.paths[i])   # out of file descriptors or memory: not the file's
                continue
            mine = np.asarray(clap.embed_audio(wav[None], clap.sample_rate), dtype=np.float32)[0]
            if float(np.abs(mine - np.asarray(self.emb["audio"][i])).max()) > 1e-2:
                return False
            checked += 1
        return True

    def query(self, emb, k: int, modality: Literal["audio", "text"] = "audio", *,
              exclude_ids: Sequence[str | Iterable[str] | None] | None = None,
              exclude_hashes: Sequence[str | Iterable[str] | None] | None = None,
              exclude_paths: Sequence[str | Iterable[str] | None] | None = None,
              exclude_related: Sequence[Relation | None] | None = None,
              exclude_duplicates: bool = False, names: Sequence[str] | None = None) -> Neighbours:
        """Top-k entries of the `modality` index by inner product with each query embedding, best first.

        emb: (B, D) or (D,) CLAP embeddings (text or audio: one joint space), L2-normalised.
        exclude_ids / exclude_hashes / exclude_paths: per query, an id / audio sha256 / resolved audio path
        (`clip_path`; or a collection of them, or None) whose entries must not be returned. exclude_related: per
        query a Relation (or None): entries related to that clip are not returned either (a store without
        recorded sources warns once and leaves out exact duplicates instead). With `exclude_duplicates`, an
        excluded id or path also excludes every entry with the same audio hash. Over-fetches so that k hits are
        still returned. IVF indexes are searched for a shortlist of max(10 k, 64) (approximate, PQ codes most
        of all), which is re-ranked by the exact inner product. names: how an error names each query (its prompt,
        its audio file; default "query <position>").
        """
        if exclude_related is not None and not self.has_sources:
            self.warn_without_sources()
            exclude_duplicates = True
        if modality not in MODALITIES:
            raise ValueError(f"modality={modality!r} must be 'audio' or 'text'")
        q = np.asarray(emb.detach().cpu().numpy() if hasattr(emb, "detach") else emb, dtype=np.float32)
        q = q[None] if q.ndim == 1 else q
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query embeddings must be (B, {self.dim}), got {tuple(q.shape)}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k={k!r} must be a positive int")
        if k > self.count:
            raise ValueError(f"k={k} is larger than the datastore ({self.count} entries in {self.folder})")
        if exclude_related is not None and len(exclude_related) != len(q):
            raise ValueError(f"exclude_related has {len(exclude_related)} entries for {len(q)} queries")
        if names is not None and (isinstance(names, str) or len(names) != len(q)):
            raise ValueError(f"names must hold one name per query ({len(q)}), got {names!r}")
        names = [f"query {i}" for i in range(len(q))] if names is None else list(names)
        excluded = [self._excluded(i, len(q), exclude_ids, exclude_hashes, exclude_duplicates, exclude_paths,
                                   None if exclude_related is None else exclude_related[i])
                    for i in range(len(q))]
        for i, ex in enumerate(excluded):
            if self.count - len(ex) < k:
                raise ValueError(f"{names[i]}: only {self.count - len(ex)} of the {self.count} entries remain after "
                                 f"exclusion, k={k} requested")
        index = self.indexes[modality]
        approximate = self.info.get("index", "flat") != "flat"
        shortlist = max(10 * k, 64) if approximate else k
        fetch = min(self.count, shortlist + max(len(ex) for ex in excluded))
        _, rows = index.search(np.ascontiguousarray(q), fetch)
        out = np.zeros((len(q), k), dtype=np.int64)
        for i, ex in enumerate(excluded):
            keep = [r for r in rows[i] if r >= 0 and r not in ex]
            if len(keep) < k:  # an approximate index visited too few cells: exact search for this query
                order = np.argsort(-(self.emb[modality] @ q[i]), kind="stable")
                keep = [r for r in order if r not in ex]
            elif approximate:  # the index's order (PQ distances) is not the exact one: re-rank the shortlist
                exact = self.embeddings(np.asarray(keep), modality) @ q[i]
                keep = [keep[j] for j in np.argsort(-exact, kind="stable")]
            out[i] = keep[:k]
        scores = np.einsum("bkd,bd->bk", self.embeddings(out, modality), q)  # exact, even for PQ
        return Neighbours(ids=[[self.ids[r] for r in row] for row in out], scores=scores.astype(np.float32),
                          indices=out, captions=[[self.meta[r]["captions"][0] for r in row] for row in out])

    def excluded_rows(self, *, exclude_id: str | None = None, exclude_hash: str | None = None,
                      exclude_path: str | None = None, related: Relation | None = None,
                      duplicates: bool = False) -> set[int]:
        """The rows one query with these exclusions (as `query` takes them) leaves out."""
        return self._excluded(0, 1, [exclude_id], [exclude_hash], duplicates, [exclude_path], related)

    def _excluded(self, i: int, batch: int, exclude_ids, exclude_hashes, duplicates: bool, exclude_paths=None,
                  related: Relation | None = None) -> set[int]:
        rows: set[int] = set()
        for ids in _per_query(exclude_ids, i, batch, "exclude_ids"):
            if ids in self.row_of:
                r = self.row_of[ids]
                rows.update(self.rows_of_hash[self.meta[r]["audio_sha256"]] if duplicates else (r,))
        for p in _per_query(exclude_paths, i, batch, "exclude_paths"):
            for r in self.rows_of_path.get(p, ()):
                rows.update(self.rows_of_hash[self.meta[r]["audio_sha256"]] if duplicates else (r,))
        for h in _per_query(exclude_hashes, i, batch, "exclude_hashes"):
            rows.update(self.rows_of_hash.get(h, ()))
        if related is not None:
            related_rows = self.related_rows(related)
            rows |= related_rows
            if duplicates:
                for r in related_rows:
                    rows.update(self.rows_of_hash[self.meta[r]["audio_sha256"]])
        return rows

    def query_text(self, clap, prompts: Sequence[str], k: int, modality: Literal["audio", "text"] = "audio",
                   **exclude) -> Neighbours:
        """Neighbours of text prompts (text->audio by default, text->text with modality="text"); an error names a
        query by its prompt (shortened) unless `names` is given."""
        if isinstance(prompts, str):   # list() would make each character a query
            raise ValueError("query_text expects a list of prompts, got a single str (wrap it in a list)")  # noqa: TRY004
        self.check_clap(clap)
        exclude.setdefault("names", [f"query {shortened(repr(p))}" for p in prompts])
        return self.query(clap.embed_text(list(prompts)), k, modality, **exclude)

    def query_audio(self, clap, wav, sample_rate: int, k: int, modality: Literal["audio", "text"] = "audio",
                    **exclude) -> Neighbours:
        """Neighbours of audio clips: wav (T,), (B, T) or a list of (T_i,) at `sample_rate` Hz, each brought to the
        level the store's clips were embedded at first (`normalize`)."""
        self.check_clap(clap)
        if self.normalize:
            from tta.audio import float_audio, normalize_wav   # integer samples: an AudioError, as the CLAP's gives

            clips = list(wav) if isinstance(wav, (list, tuple)) else list(np.atleast_2d(float_audio(wav, "query audio")))
            wav = [normalize_wav(float_audio(c, "query audio")) for c in clips]
        return self.query(clap.embed_audio(wav, sample_rate), k, modality, **exclude)

    def embeddings(self, indices: np.ndarray, modality: Literal["audio", "text"]) -> np.ndarray:
        """Stored embeddings of entries `indices` (any shape) -> (*indices.shape, D) float32."""
        idx = np.asarray(indices)
        return np.asarray(self.emb[modality][idx.reshape(-1)]).reshape(*idx.shape, self.dim)

    def check_latents(self, vae_identity: str) -> None:
        """Refuse a store without stored latents, or with latents of another VAE than `vae_identity`."""
        if self.latent_info is None:
            raise DatastoreError(f"{self.folder}: holds no VAE latents; rebuild it with `tta index build ... "
                                 "--vae DIR` (the model uses its neighbours' latents)")
        if self.latent_info["vae_identity"] != vae_identity:
            raise DatastoreError(f"{self.folder}: its latents are of VAE {self.latent_info['vae_identity']}, the "
                                 f"model's is {vae_identity}; rebuild it with --vae set to the model's VAE")

    def latents(self, indices: np.ndarray) -> np.ndarray:
        """Stored pooled latents of entries `indices` (any shape) -> (*indices.shape, L, C * F') float32."""
        if "latent" not in self.emb:
            raise DatastoreError(f"{self.folder}: holds no VAE latents (built without --vae)")
        idx = np.asarray(indices)
        lat = self.emb["latent"]
        return np.asarray(lat[idx.reshape(-1)], dtype=np.float32).reshape(*idx.shape, *lat.shape[1:])

    def summary(self) -> dict:
        """datastore.json plus the live index sizes (for `tta index info`); the config always says `normalize` (a
        version 1 store, built before the setting, embedded raw levels)."""
        return {**self.info, "config": {**self.info.get("config", {}), "normalize": self.normalize},
                "folder": str(self.folder), "ntotal": {name: int(ix.ntotal) for name, ix in self.indexes.items()}}


def first_non_finite_row(arr: np.ndarray, chunk: int = 16_384) -> int | None:
    """The first row of the (N, D) array `arr` holding a NaN or inf, or None; reads a memory-mapped array in
    chunks of `chunk` rows, so it holds one chunk in memory at a time. One pass over the file: about 40 ms for
    100 000 x 512 float32 (205 MB) in the page cache, or the time to read the file from a cold disk."""
    for start in range(0, arr.shape[0], chunk):
        finite = np.isfinite(np.asarray(arr[start:start + chunk])).all(axis=1)
        if not finite.all():
            return start + int(np.argmin(finite))
    return None


def _file_stamp(path: Path) -> list[int]:
    """What tells a file's content changed without reading it: size, mtime_ns and ctime_ns (which a copy or a
    replacement that keeps the mtime still changes)."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _read_finite(path: Path) -> dict[str, list[int]]:
    """finite.json's {file name: `_file_stamp`} of the embedding files found finite; {} when it is missing or
    unreadable (a cache: the files are checked again)."""
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    files = body.get("files") if isinstance(body, dict) else None
    return {k: v for k, v in files.items() if isinstance(v, list)} if isinstance(files, dict) else {}


def _write_finite(path: Path, files: dict[str, list[int]]) -> None:
    """Record the embedding files found finite, atomically; a store that cannot be written (read-only, shared)
    is checked at every load instead."""
    from tta.checkpoint import atomic_write_text

    try:
        atomic_write_text(path, json.dumps({"files": files}, indent=2, sort_keys=True) + "\n")
    except (OSError, CheckpointError) as e:
        log.debug("%s: not recorded (%s); the embeddings are checked again at the next load", path, e)


def _per_query(values, i: int, batch: int, what: str) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        raise ValueError(f"{what} must hold one entry per query (a list of length {batch}), got a string")  # noqa: TRY004
    if len(values) != batch:
        raise ValueError(f"{what} has {len(values)} entries for {batch} queries")
    v = values[i]
    return [] if v is None else [v] if isinstance(v, str) else list(v)


def _read_meta(path: Path, count: int) -> list[dict]:
    if not path.is_file():
        raise DatastoreError(f"{path}: missing")
    meta = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            m = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatastoreError(f"{path} line {n}: invalid JSON ({e.msg})") from None
        if not isinstance(m, dict):
            raise DatastoreError(f"{path} line {n}: expected a JSON object")
        missing = [k for k in META_KEYS if k not in m]
        if missing or not isinstance(m["captions"], list) or not m["captions"]:
            raise DatastoreError(f"{path} line {n}: " + (f"missing {', '.join(map(repr, missing))}" if missing
                                                         else '"captions" must be a non-empty list'))
        meta.append(m)
    if len(meta) != count:
        raise DatastoreError(f"{path}: {len(meta)} entries, datastore.json says {count}")
    return meta


def _read_index(path: Path, count: int, dim: int, mmap: bool):
    import faiss

    if not path.is_file():
        raise DatastoreError(f"{path}: index file missing")
    index = None
    if mmap:
        try:
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError:
            index = None  # this index type cannot be mapped (or the file is bad: the plain read says which)
    if index is None:
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1] if str(e).strip() else "unreadable"
            raise DatastoreError(f"{path}: corrupted or unreadable FAISS index ({first[:160]})") from None
    if index.ntotal != count or index.d != dim:
        raise DatastoreError(f"{path}: index holds {index.ntotal} x {index.d}, expected {count} x {dim}")
    return index
