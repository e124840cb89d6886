"""Per-file embedding cache: `<cache>/<embedder identity>/<sha256 of the file bytes>[.<kind>].npy`.

Keyed by content (not path or mtime), so renamed or copied files hit and edited files miss; keyed by the
embedder identity (name + checkpoint hash), so embeddings of different models never mix. Writes are atomic
(temporary file + rename); an unreadable entry is treated as a miss and rewritten.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def content_hash(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class EmbeddingCache:
    """Cache of (frames, D) arrays per (file content, embedder identity, kind)."""

    def __init__(self, root: str | os.PathLike, identity: str, *, unwritable: set[Path] | None = None) -> None:
        """`unwritable`: the cache folders found unwritable so far, shared by the caches of one eval run (each
        warned about once a run); a later run tries again (the disk may have room by then)."""
        self.folder = Path(root) / re.sub(r"[^A-Za-z0-9_.@-]+", "_", identity)
        self.identity = identity
        self.unwritable = set() if unwritable is None else unwritable
        self.hits = 0
        self.misses = 0

    def _path(self, digest: str, kind: str) -> Path:
        return self.folder / (f"{digest}.npy" if kind == "embedding" else f"{digest}.{kind}.npy")

    def get(self, digest: str, kind: str = "embedding") -> np.ndarray | None:
        path = self._path(digest, kind)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            value = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:  # a damaged entry is a miss, never a crash
            log.warning("%s: unreadable cache entry (%s); recomputing", path, e)
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, digest: str, value: np.ndarray, kind: str = "embedding") -> None:
        """Keep `value`; a cache folder that cannot be written (read-only to this user, under a home folder that is
        not writable, on a full disk) is skipped with one warning: the values are computed all the same."""
        from tta.checkpoint import CheckpointError, atomic_path

        root = self.folder.parent
        if root in self.unwritable:
            return
        try:
            with atomic_path(self._path(digest, kind)) as tmp, open(tmp, "wb") as f:
                np.save(f, np.asarray(value), allow_pickle=False)
        except (OSError, CheckpointError) as e:
            self.unwritable.add(root)
            reason = f"{e.filename or root}: {e.strerror}" if isinstance(e, OSError) and e.strerror else str(e)
            log.warning("%s; going on without the embedding cache (--cache-dir or $TTA_CACHE_DIR names another "
                        "folder)", reason)
