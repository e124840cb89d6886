"""Registry of audio embedders for FAD / FD / KL / IS. Every embedder is loaded from local files only.

Protocol (`Embedder`): `name`, `dim`, `sample_rate` (Hz it consumes), `hop_seconds` (time between
embedding frames), `identity` (name + checkpoint hash: every reported number carries it) and
`embed(wav, sample_rate) -> (frames, dim)` float64 numpy; `embed_batch(wavs)` embeds several clips that are
already at `sample_rate` (batched where the network allows). Building an embedder leaves the caller's global
random generators as they were (tta.checkpoint.keep_global_rng; CLAP through tta.clap.load_clap): the
initial weights a network draws are replaced by the stored ones.

| name | weights | sample rate | frames |
|---|---|---|---|
| mfcc | none (the floor; what the tests use) | 16 kHz | mean+std of 20 MFCCs per 1 s window, hop 0.5 s |
| aisfx | shipped inside the `aisfx` PyPI package | 44.1 kHz | 512-d per 2.32 s block, hop 1.16 s |
| vggish | local torchvggish `.pth` (`weights=` / $TTA_VGGISH_WEIGHTS) | 16 kHz | 128-d per 0.96 s |
| panns | local PANNs `Cnn14_16k*.pth` (`weights=` / $TTA_PANNS_WEIGHTS) | 16 kHz | one 2048-d per clip (+527 logits) |
| clap, laion-clap | a tta CLAP folder / LAION checkpoint (`model=`), via `tta.clap` (imported lazily) | model's | one per clip |
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tta.checkpoint import file_sha256

log = logging.getLogger(__name__)


class EmbedderError(ValueError):
    """An embedder that cannot be built (unknown name, missing or mismatched weights)."""


@dataclass
class Embedder:
    """Base class: subclasses set the fields and implement `_embed_batch`."""

    name: str
    dim: int
    sample_rate: int
    hop_seconds: float
    checkpoint_sha256: str = ""  # "" for weight-free embedders
    checkpoint_path: str = ""
    options: dict = field(default_factory=dict)
    has_logits: bool = False

    @property
    def identity(self) -> str:
        """What a cache key and a stats file must agree on: name + checkpoint hash (or front-end version)."""
        return f"{self.name}@sha256:{self.checkpoint_sha256[:16]}" if self.checkpoint_sha256 else f"{self.name}@v1"

    @property
    def pooling(self) -> str:
        """How a clip becomes embeddings (recorded with every FAD): frames, or one embedding per clip."""
        return (f"frames: one {self.dim}-d embedding every {self.hop_seconds:.3g} s; the frames of all files are "
                "pooled into one Gaussian")

    def protocol(self) -> dict:
        return {"embedder": self.name, "identity": self.identity, "dim": self.dim, "sample_rate": self.sample_rate,
                "hop_seconds": self.hop_seconds, "checkpoint": self.checkpoint_path or None,
                "checkpoint_sha256": self.checkpoint_sha256 or None, **self.options, "pooling": self.pooling}

    def embed(self, wav, sample_rate: int) -> np.ndarray:
        """wav (T,) mono float at `sample_rate` Hz -> (frames, dim) float64; resampled when needed."""
        from tta.audio import AudioError, check_sample_rate, float_audio, resample

        # a str rate was taken through int() ("16000"), a fractional one cut down (16000.7 -> 16000), 0 failed in soxr
        sample_rate = check_sample_rate(sample_rate, f"{self.name}: sample_rate")
        x = float_audio(wav, self.name)
        if x.ndim != 1 or x.size == 0:
            raise AudioError(f"{self.name}: expected mono audio of shape (T,), got {x.shape}")
        if not np.isfinite(x).all():
            raise AudioError(f"{self.name}: audio contains NaN or inf")
        return self.embed_batch([resample(x, sample_rate, self.sample_rate)])[0]

    def embed_batch(self, wavs: list[np.ndarray]) -> list[np.ndarray]:
        """Clips (T_i,) already at `self.sample_rate` -> list of (frames_i, dim) float64."""
        import torch

        with torch.inference_mode():
            out = self._embed_batch(wavs)
        return [np.asarray(o, dtype=np.float64).reshape(-1, self.dim) for o in out]

    def logits(self, wavs: list[np.ndarray]) -> list[np.ndarray]:
        raise EmbedderError(f"embedder {self.name!r} has no classifier logits (KL/IS need 'panns')")

    def _embed_batch(self, wavs: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError


def _same_length_groups(wavs: list[np.ndarray]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i, w in enumerate(wavs):
        groups.setdefault(int(w.shape[0]), []).append(i)
    return groups


# ------------------------------------------------------------------------------------------- MFCC


@dataclass
class MfccEmbedder(Embedder):
    n_mfcc: int = 20
    window_frames: int = 100  # 1 s at hop 160 / 16 kHz
    hop_frames: int = 50

    @property
    def identity(self) -> str:
        """"mfcc@v1" for make_mfcc's settings (the key of existing caches and statistics); other settings are named
        in it, so that their embeddings never share a cache entry or a statistics file with the default's."""
        settings = (self.n_mfcc, self.window_frames, self.hop_frames, self.sample_rate)
        if settings == (20, 100, 50, 16_000):
            return super().identity
        return f"{super().identity}-n{self.n_mfcc}-w{self.window_frames}-h{self.hop_frames}-sr{self.sample_rate}"

    def _embed_batch(self, wavs):
        import torch

        from eval.frontends import mfcc_window_stats

        out: list = [None] * len(wavs)
        for idx in _same_length_groups(wavs).values():  # equal lengths stack into one batched mel call
            batch = torch.from_numpy(np.stack([wavs[i] for i in idx]))
            for i, stats in zip(idx, mfcc_window_stats(batch, n_mfcc=self.n_mfcc, window_frames=self.window_frames,
                                                       hop_frames=self.hop_frames)):
                out[i] = stats
        return out


def make_mfcc(**options) -> Embedder:
    _no_options("mfcc", options)
    return MfccEmbedder(name="mfcc", dim=40, sample_rate=16_000, hop_seconds=0.5)


# ------------------------------------------------------------------------------------------ aisfx


@dataclass
class _NetEmbedder(Embedder):
    net: object = None
    batch_size: int = 32


class AisfxEmbedder(_NetEmbedder):
    def _embed_batch(self, wavs):
        import torch

        from eval.frontends import AISFX_N_FFT, aisfx_blocks
        from tta.audio import AudioError

        for w in wavs:   # skipped and named, as the other embedders skip a clip their front end cannot frame
            if w.shape[0] < AISFX_N_FFT:
                raise AudioError(f"aisfx: {w.shape[0]} samples at {self.sample_rate} Hz, shorter than one STFT "
                                 f"window ({AISFX_N_FFT})")
        blocks = [aisfx_blocks(w) for w in wavs]
        flat = torch.from_numpy(np.concatenate(blocks))
        emb = torch.cat([self.net(flat[i:i + self.batch_size]) for i in range(0, len(flat), self.batch_size)])
        return list(torch.split(emb.double(), [len(b) for b in blocks]))


def aisfx_checkpoint_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("aisfx")
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderError("embedder 'aisfx' needs the aisfx package (pip install --no-deps aisfx==0.1.2); "
                            "it ships the checkpoint aisfx/models/checkpoint.pth")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "checkpoint.pth"


def load_aisfx_state(path: str | os.PathLike) -> tuple[dict, dict]:
    """Read aisfx's (state_dict, dataset dict) checkpoint with weights_only=True and only the numpy
    globals it needs allow-listed (scalar and dtype objects inside the dataset dict)."""
    import torch
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:
        from numpy.core.multiarray import scalar

    dtypes = {type(np.dtype(t)) for t in ("int64", "int32", "float64", "float32")}
    allowed = [(scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtypes]
    path = Path(path)
    if not path.is_file():
        raise EmbedderError(f"{path}: aisfx checkpoint not found (expected inside the aisfx package)")
    try:
        with torch.serialization.safe_globals(allowed):
            state, datasets = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, ValueError, EOFError) as e:
        raise EmbedderError(f"{path}: cannot be read as the aisfx checkpoint ({str(e).splitlines()[0][:200]})") from None
    return state, datasets


def make_aisfx(weights: str | os.PathLike | None = None, **options) -> Embedder:
    from eval.networks import AisfxNet
    from tta.checkpoint import keep_global_rng, load_into

    _no_options("aisfx", options)
    path = Path(weights) if weights else aisfx_checkpoint_path()
    state, _datasets = load_aisfx_state(path)
    # the fc.* heads are the per-dataset classifiers of cross-dataset training; the embedding is before them
    with keep_global_rng():   # (the initial weights drawn are replaced by the stored ones)
        net = AisfxNet()
        load_into(net, {k: v for k, v in state.items() if k.startswith("embedding_net.")}, where=str(path))
    return AisfxEmbedder(name="aisfx", dim=512, sample_rate=44_100, hop_seconds=50 * 1024 / 44_100,
                         checkpoint_sha256=file_sha256(str(path)), checkpoint_path=str(path), net=net.eval(),
                         options={"frontend": "librosa (package's librosa path), blocks 100 frames hop 50"})


# ----------------------------------------------------------------------------------- VGGish, PANNs


def _weights_path(kind: str, weights, env: str, expected: str) -> Path:
    value = weights or os.environ.get(env)
    if not value:
        raise EmbedderError(f"embedder {kind!r} needs a local weights file: pass weights=PATH (--embedder-weights) "
                            f"or set ${env} to {expected}; nothing is downloaded")
    path = Path(value).expanduser()
    if not path.is_file():
        raise EmbedderError(f"{path}: {kind} weights file not found (expected {expected}; from --embedder-weights "
                            f"or ${env})")
    return path


class VggishEmbedder(_NetEmbedder):
    def _embed_batch(self, wavs):
        import torch

        from eval.frontends import vggish_examples

        patches = [vggish_examples(w) for w in wavs]
        flat = torch.from_numpy(np.concatenate(patches))
        emb = torch.cat([self.net(flat[i:i + self.batch_size]) for i in range(0, len(flat), self.batch_size)])
        return list(torch.split(emb.double(), [len(p) for p in patches]))


def make_vggish(weights: str | os.PathLike | None = None, **options) -> Embedder:
    from eval.networks import VGGish
    from tta.checkpoint import check_finite, keep_global_rng, load_into, load_torch_file

    _no_options("vggish", options)
    path = _weights_path("vggish", weights, "TTA_VGGISH_WEIGHTS", "the torchvggish vggish-10086976.pth")
    state = load_torch_file(path)
    if not isinstance(state, dict):
        raise EmbedderError(f"{path}: expected a state dict, got {type(state).__name__}")
    check_finite(state, str(path))   # NaN weights give NaN embeddings and a NaN FAD, naming nothing
    # PCA/quantisation parameters (pproc.*) belong to the AudioSet release format, not to FAD embeddings
    pca = sorted(k for k in state if k.startswith("pproc."))
    if pca and pca != ["pproc.pca_matrix", "pproc.pca_means"]:
        raise EmbedderError(f"{path}: unexpected post-processing keys {pca}")
    with keep_global_rng():   # (the initial weights drawn are replaced by the stored ones)
        net = VGGish()
        load_into(net, {k: v for k, v in state.items() if not k.startswith("pproc.")}, where=str(path))
    return VggishEmbedder(name="vggish", dim=128, sample_rate=16_000, hop_seconds=0.96,
                          checkpoint_sha256=file_sha256(str(path)), checkpoint_path=str(path), net=net.eval(),
                          options={"layer": "embeddings before the last ReLU, no PCA"})


PANNS_MIN_SAMPLES = 32_000   # audioldm_eval's WaveDataset pads shorter clips with zeros to 2 s at 16 kHz


class PannsEmbedder(_NetEmbedder):
    """One 2048-d embedding per clip (clip-level pooling inside Cnn14) and 527 AudioSet logits, on clips prepared
    as audioldm_eval prepares them for its Cnn14 (FD, KL, IS): the mean removed, zero-padded to 2 s. (It takes
    a multi-channel file's first channel; tta averages the channels, as everywhere.)"""

    @property
    def identity(self) -> str:
        # "+ae": the audioldm_eval preparation (since 2026-12-07; before it, no mean removal and 1 s of padding)
        return f"{super().identity}+ae"

    @property
    def pooling(self) -> str:
        return ("one embedding per clip: Cnn14's clip-level pooling over the whole clip (mean removed, zero-padded "
                "to 2 s, as audioldm_eval); the clips are pooled into one Gaussian")

    @staticmethod
    def prepare(wav: np.ndarray) -> np.ndarray:
        return _min_length((wav - wav.mean()).astype(np.float32), PANNS_MIN_SAMPLES)

    def _run(self, wavs):
        import torch

        embs, logits = [], []
        for _, idx in sorted(_same_length_groups(wavs).items()):
            batch = torch.from_numpy(np.stack([wavs[i] for i in idx]))
            for j in range(0, len(idx), self.batch_size):
                e, z = self.net(batch[j:j + self.batch_size])
                embs += list(zip(idx[j:j + self.batch_size], e.double()))
                logits += list(zip(idx[j:j + self.batch_size], z.double()))
        return [e for _, e in sorted(embs, key=lambda t: t[0])], [z for _, z in sorted(logits, key=lambda t: t[0])]

    def _embed_batch(self, wavs):
        return [e[None] for e in self._run([self.prepare(w) for w in wavs])[0]]

    def logits(self, wavs):
        import torch

        with torch.inference_mode():
            return [z.numpy() for z in self._run([self.prepare(w) for w in wavs])[1]]


def _min_length(wav: np.ndarray, n: int) -> np.ndarray:
    return wav if wav.shape[0] >= n else np.pad(wav, (0, n - wav.shape[0]))


def make_panns(weights: str | os.PathLike | None = None, **options) -> Embedder:
    from eval.networks import Cnn14_16k
    from tta.checkpoint import check_finite, keep_global_rng, load_into, load_torch_file

    _no_options("panns", options)
    path = _weights_path("panns", weights, "TTA_PANNS_WEIGHTS", "the PANNs Cnn14_16k_mAP=0.438.pth")
    state = load_torch_file(path)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # the released files wrap the state dict as {"model": ...}
    if not isinstance(state, dict) or "fc_audioset.weight" not in state:
        raise EmbedderError(f"{path}: not a PANNs Cnn14 state dict (no fc_audioset.weight)")
    check_finite(state, str(path))
    with keep_global_rng():   # (the initial weights drawn are replaced by the stored ones)
        net = Cnn14_16k(classes_num=int(state["fc_audioset.weight"].shape[0]))
        load_into(net, state, where=str(path))
    return PannsEmbedder(name="panns", dim=2048, sample_rate=16_000, hop_seconds=0.0, has_logits=True,
                         checkpoint_sha256=file_sha256(str(path)), checkpoint_path=str(path), net=net.eval(),
                         options={"model": "Cnn14_16k"})


# -------------------------------------------------------------------------------------------- CLAP


class ClapEmbedder(Embedder):
    """Any object with `embed_audio(wav (B, T), sample_rate) -> (B, D)` (tta.clap's interface)."""

    model: object = None
    model_identity: str = ""

    @property
    def pooling(self) -> str:
        if hasattr(self.model, "crop_seed"):  # tta.clap.laion: LAION's audio preparation
            if getattr(self.model, "fusion", False):
                how = "LAION feature fusion over the whole clip (global + local mels; fixed seed)"
            else:
                how = (f"LAION's 10 s rule: clips longer than 10 s are cropped to one random 10 s window (fixed seed "
                       f"{self.model.crop_seed}), shorter ones repeated whole and zero-padded to 10 s")
            return (f"one embedding per clip: {how}; the clips are pooled into one Gaussian (fadtk's clap-laion FAD "
                    "embeds 10 s windows every 1 s instead: its numbers are not these)")
        return ("one embedding per clip (the whole clip through the CLAP audio tower); the clips are pooled into one "
                "Gaussian")

    @property
    def identity(self) -> str:
        # tta.clap models name themselves ("backend:checkpoint-hash"); that name is the cache/stats key
        return f"{self.name}@{self.model_identity}" if self.model_identity else Embedder.identity.fget(self)

    def _embed_batch(self, wavs):
        out = []
        for w in wavs:
            e = self.model.embed_audio(w[None], self.sample_rate)
            out.append(np.asarray(e.detach().cpu().numpy() if hasattr(e, "detach") else e, np.float64))
        return out


def clap_embedder(model, *, name: str, checkpoint: str = "") -> Embedder:
    """Wrap a loaded CLAP model (tta.clap interface) as an embedder; its sample rate is the model's."""
    sample_rate = int(getattr(model, "sample_rate", 48_000))
    dim = getattr(model, "embed_dim", None) or getattr(model, "embedding_dim", None)
    if dim is None:  # ask the model: one second of quiet noise (silence may not normalise)
        probe = np.random.default_rng(0).standard_normal((1, sample_rate)).astype(np.float32) * 0.01
        dim = np.asarray(_to_numpy(model.embed_audio(probe, sample_rate))).shape[-1]
    path = Path(checkpoint) if checkpoint else None
    digest = file_sha256(str(path)) if path and path.is_file() else ""
    emb = ClapEmbedder(name=name, dim=int(dim), sample_rate=sample_rate, hop_seconds=0.0,
                       checkpoint_sha256=digest, checkpoint_path=str(checkpoint))
    emb.model = model
    emb.model_identity = str(getattr(model, "identity", "") or "")
    return emb


def _to_numpy(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else x


def _tta_clap_loader(model, **kwargs):
    """tta.clap is imported here, lazily, so eval works in builds without it."""
    try:
        from tta import clap
    except ModuleNotFoundError as e:
        raise EmbedderError(f"CLAP needs the tta.clap package, which is not in this build ({e})") from None
    loader = getattr(clap, "load_clap", None)
    if loader is None:
        raise EmbedderError("tta.clap provides no load_clap(path) in this build; CLAP metrics are unavailable")
    return loader(model, **kwargs)


# what --clap (a Python caller's model) may name: every kind of CLAP tta.clap.load_clap loads, as `tta clap --help`
# names them
CLAP_KINDS = "a tta CLAP folder or run folder, a transformers CLAP folder, or a LAION .pt"

# backend name -> loader(path) returning an object with embed_text / embed_audio (tta.clap's interface);
# "laion" goes through the same tta.clap entry point, which tells LAION checkpoints from tta folders
CLAP_LOADERS: dict[str, Callable] = {"tta": _tta_clap_loader, "laion": _tta_clap_loader}


def load_clap_model(model: str | os.PathLike | None, *, backend: str = "tta", **kwargs):
    """Load a CLAP model from local files through the registered loader of `backend`."""
    if not model:
        raise EmbedderError(f"CLAP ({backend}) needs a model: pass --clap CLAP ({CLAP_KINDS})")
    if backend not in CLAP_LOADERS:
        raise EmbedderError(f"unknown CLAP backend {backend!r}; valid: {', '.join(sorted(CLAP_LOADERS))}")
    return CLAP_LOADERS[backend](model, **{k: v for k, v in kwargs.items() if v is not None})


def make_clap(model: str | os.PathLike | None = None, tokenizer: str | None = None, **options) -> Embedder:
    _no_options("clap", options)
    return clap_embedder(load_clap_model(model, backend="tta", tokenizer=tokenizer), name="clap",
                         checkpoint=str(model))


def make_laion_clap(model: str | os.PathLike | None = None, tokenizer: str | None = None, **options) -> Embedder:
    _no_options("laion-clap", options)
    return clap_embedder(load_clap_model(model, backend="laion", tokenizer=tokenizer), name="laion-clap",
                         checkpoint=str(model))


# ---------------------------------------------------------------------------------------- registry

EMBEDDERS: dict[str, Callable[..., Embedder]] = {
    "mfcc": make_mfcc,
    "aisfx": make_aisfx,
    "vggish": make_vggish,
    "panns": make_panns,
    "clap": make_clap,
    "laion-clap": make_laion_clap,
}


def register_embedder(name: str, factory: Callable[..., Embedder]) -> None:
    """Add an embedder factory (keyword options -> Embedder) under `name`."""
    EMBEDDERS[name] = factory


def available_embedders() -> list[str]:
    return sorted(EMBEDDERS)


def get_embedder(name: str, **options) -> Embedder:
    """Build embedder `name`; options (weights=, model=) are passed to its factory, None values dropped."""
    if name not in EMBEDDERS:
        raise EmbedderError(f"unknown embedder {name!r}; valid embedders: {', '.join(available_embedders())}")
    return EMBEDDERS[name](**{k: v for k, v in options.items() if v is not None})


def _no_options(name: str, options: dict) -> None:
    if options:
        raise EmbedderError(f"embedder {name!r} takes no option(s) {sorted(options)}")
