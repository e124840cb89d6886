"""The one CLAP interface every backend implements (own `TTAClap`, LAION via transformers' ClapModel).

    emb = embedder.embed_text(["a dog barks", ""])        # (B, D) float32, L2-normalised
    emb = embedder.embed_audio(wav, sample_rate=44_100)    # wav (T,), (B, T) or a list of (T_i,) arrays
    embedder.identity                                       # "backend:checkpoint-hash", names every number

Conventions shared by all backends:

- The empty caption "" is allowed and is the *unconditional* embedding (the LDM's classifier-free guidance
  uses CLAP("") as its null condition, not zeros). It goes through the text tower like any caption.
- Captions longer than the tower's token limit are truncated, with a warning naming the caption.
- An empty caption list, a bare string instead of a list, audio shorter than one analysis window
  (`min_samples` at the backend's rate), non-finite samples or a non-positive sample rate raise ValueError.
- Audio at any rate is resampled (soxr) to the backend's `sample_rate` inside.
- Results are torch float32 tensors on the CPU, computed in float32 under a caller's torch.autocast too (the
  identity names the numbers, and a cache keeps them). With a cache folder, embeddings are read from / written to
  an `EmbeddingCache` keyed by content hash + `identity`; a hit returns bit-identical values.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch

from tta.audio import AudioError, check_sample_rate, resample
from tta.clap.cache import EmbeddingCache, audio_key, text_key
from tta.config import check_number, shortened
from tta.device import without_caller_autocast

log = logging.getLogger(__name__)


class ClapEmbedder:
    """Base class: input checks, batching, progress and caching around two backend hooks.

    Subclasses set `identity`, `sample_rate`, `min_samples`, `embed_dim` and implement
    `_text_batch(list[str]) -> (b, D)` and `_audio_batch(np.ndarray (b, T) at sample_rate) -> (b, D)`.
    """

    identity: str = ""
    sample_rate: int = 16_000
    min_samples: int = 1024      # one analysis window at `sample_rate`
    embed_dim: int = 512

    def __init__(self, *, batch_size: int = 32, cache_dir: str | os.PathLike | None = None):
        # a str failed here on Python's "'<=' not supported", a float such as 2.5 only at the first embed_*, in range()
        batch_size = check_number(batch_size, int, "batch_size")
        if batch_size <= 0:
            raise ValueError(f"batch_size={batch_size} must be > 0")
        self.batch_size = batch_size
        self._cache_dir = cache_dir
        self._cache: EmbeddingCache | None = None

    # ---------------------------------------------------------------------------------- cache

    @property
    def cache(self) -> EmbeddingCache | None:
        if self._cache_dir is not None and self._cache is None:
            self._cache = EmbeddingCache(self._cache_dir, self.identity)
        return self._cache

    def to(self, device) -> ClapEmbedder:
        """Run the model on `device` (the embeddings still come back as CPU tensors); a device this machine lacks is a
        ValueError (tta.device.torch_device)."""
        from tta.device import torch_device

        self.device = torch_device(device)
        self.model.to(self.device)
        return self

    def set_cache(self, cache_dir: str | os.PathLike | None) -> None:
        self._cache_dir, self._cache = cache_dir, None

    # ----------------------------------------------------------------------------------- text

    @without_caller_autocast
    def embed_text(self, captions: Sequence[str], progress: bool = False) -> torch.Tensor:
        """(B, D) L2-normalised text embeddings of `captions` ("" = the unconditional embedding)."""
        if isinstance(captions, str):
            raise ValueError("embed_text expects a list of captions, got a single str (wrap it in a list)")  # noqa: TRY004
        captions = list(captions)
        if not captions:
            raise ValueError("embed_text got an empty caption list")
        for i, c in enumerate(captions):
            if not isinstance(c, str):
                raise ValueError(f"caption {i} is a {type(c).__name__}, expected str")  # noqa: TRY004
        cache = self.cache
        keys = [text_key(self.identity, c) for c in captions] if cache else [None] * len(captions)
        out: list[np.ndarray | None] = [cache.get(k) if cache else None for k in keys]
        todo = [i for i, v in enumerate(out) if v is None]
        bar = _bar(len(todo), "CLAP text", progress)
        for start in range(0, len(todo), self.batch_size):
            idx = todo[start:start + self.batch_size]
            emb = self._finish(self._text_batch([captions[i] for i in idx]))
            for j, i in enumerate(idx):
                out[i] = emb[j]
                if cache:
                    cache.put(keys[i], emb[j])
            bar.update(len(idx))
        bar.close()
        return torch.from_numpy(np.stack(out))

    # ---------------------------------------------------------------------------------- audio

    @without_caller_autocast
    def embed_audio(self, wav, sample_rate: int, progress: bool = False) -> torch.Tensor:
        """(B, D) L2-normalised audio embeddings.

        wav: (T,) or (B, T) float tensor/ndarray, or a list of (T_i,) clips of different lengths, at
        `sample_rate` Hz (resampled to `self.sample_rate` inside).
        """
        self._refuse_audio()   # before the cache: an embedding cached under this identity is no answer either
        sample_rate = check_sample_rate(sample_rate, "embed_audio sample_rate")   # 48000.0 keys the cache as 48000
        clips = self._check_audio(wav, sample_rate)
        cache = self.cache
        keys = [audio_key(self.identity, c, sample_rate) for c in clips] if cache else [None] * len(clips)
        out: list[np.ndarray | None] = [cache.get(k) if cache else None for k in keys]
        todo = [i for i, v in enumerate(out) if v is None]
        ready = {i: resample(clips[i], sample_rate, self.sample_rate) for i in todo}
        groups: dict[int, list[int]] = {}
        for i in todo:  # batch equal lengths together
            groups.setdefault(ready[i].shape[0], []).append(i)
        bar = _bar(len(todo), "CLAP audio", progress)
        for idx_all in groups.values():
            for start in range(0, len(idx_all), self.batch_size):
                idx = idx_all[start:start + self.batch_size]
                emb = self._finish(self._audio_batch(np.stack([ready[i] for i in idx])))
                for j, i in enumerate(idx):
                    out[i] = emb[j]
                    if cache:
                        cache.put(keys[i], emb[j])
                bar.update(len(idx))
        bar.close()
        return torch.from_numpy(np.stack(out))

    def _check_audio(self, wav, sample_rate: int) -> list[np.ndarray]:
        if isinstance(wav, (list, tuple)):
            clips = [_as_numpy(w) for w in wav]
            if any(c.ndim != 1 for c in clips):
                raise AudioError("embed_audio: a list of clips must hold 1-D (T,) arrays")
        else:
            arr = _as_numpy(wav)
            if arr.ndim == 1:
                arr = arr[None]
            if arr.ndim != 2:
                raise AudioError(f"embed_audio expects wav of shape (T,) or (B, T), got {arr.shape}")
            clips = list(arr)
        if not clips:
            raise AudioError("embed_audio got no audio (batch of 0 clips)")
        need = int(np.ceil(self.min_samples * sample_rate / self.sample_rate))
        for i, c in enumerate(clips):
            if c.shape[0] < need:
                raise AudioError(f"clip {i} has {c.shape[0]} samples at {sample_rate} Hz: shorter than one "
                                 f"frame of {self.min_samples} samples at {self.sample_rate} Hz "
                                 f"(needs >= {need} at {sample_rate} Hz)")
            if not np.isfinite(c).all():
                raise AudioError(f"clip {i} contains non-finite samples (NaN or inf)")
        return [np.ascontiguousarray(c, dtype=np.float32) for c in clips]

    # ---------------------------------------------------------------------------------- hooks

    def _refuse_audio(self) -> None:
        """Raise where this embedder cannot embed audio at all (a LAION-CLAP loaded text_only); embed_audio
        calls it before anything else."""

    def _text_batch(self, captions: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def _audio_batch(self, wav: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def _finish(emb: torch.Tensor) -> np.ndarray:
        emb = torch.nn.functional.normalize(emb.detach().float().cpu(), dim=-1)
        return emb.numpy().astype(np.float32)


def _as_numpy(wav) -> np.ndarray:
    if isinstance(wav, torch.Tensor):
        if not torch.is_floating_point(wav):
            raise AudioError(f"embed_audio expects float audio, got dtype {wav.dtype}")
        return wav.detach().float().cpu().numpy()
    arr = np.asarray(wav)
    if not np.issubdtype(arr.dtype, np.floating):
        raise AudioError(f"embed_audio expects float audio, got dtype {arr.dtype}")
    return arr.astype(np.float32, copy=False)


def warn_truncated(captions: list[str], lengths: list[int], limit: int) -> None:
    """Log a warning for every caption whose token count exceeds the tower's `limit`."""
    for c, n in zip(captions, lengths):
        if n > limit:
            log.warning("caption %r has %d tokens; truncated to the text tower's limit of %d", shortened(c), n, limit)


def _bar(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not progress or total == 0, dynamic_ncols=True)
