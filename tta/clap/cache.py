"""On-disk cache of CLAP embeddings, keyed by content hash + model identity.

One `.npy` file per embedding under `root/<identity slug>/<key[:2]>/<key>.npy`; the key is the SHA-256
of the model identity, the modality and the content (the caption's UTF-8 bytes, or the float32 samples,
shape and sample rate of the audio). A different checkpoint has a different identity, so it can never
read another model's entries. Writes are atomic (temp file + rename): a killed process leaves no entry
that loads half-written, and several processes may fill the same cache at once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def text_key(identity: str, caption: str) -> str:
    h = hashlib.sha256()
    h.update(f"{identity}\0text\0".encode())
    h.update(caption.encode("utf-8"))
    return h.hexdigest()


def audio_key(identity: str, wav: np.ndarray, sample_rate: int) -> str:
    """Key of one clip: (T,) float32 samples at `sample_rate` Hz."""
    arr = np.ascontiguousarray(wav, dtype=np.float32)
    h = hashlib.sha256()
    h.update(f"{identity}\0audio\0{sample_rate}\0{arr.shape}\0".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


class EmbeddingCache:
    """get/put (D,) float32 embeddings by key, for one model identity."""

    def __init__(self, root: str | os.PathLike, identity: str):
        if not identity:
            raise ValueError("EmbeddingCache needs a non-empty model identity")
        self.identity = identity
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", identity)[:80]
        self.root = Path(root) / slug
        self.hits = 0
        self.misses = 0

    def _file(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        path = self._file(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            value = np.load(path)
        except (ValueError, OSError, EOFError) as e:   # EOFError: an empty file a crash left
            log.warning("ignoring unreadable cache entry %s (%s)", path, e)
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, key: str, value: np.ndarray) -> None:
        path = self._file(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, np.ascontiguousarray(value, dtype=np.float32))
        os.replace(tmp, path)
