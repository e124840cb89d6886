"""Audio I/O and the one mel front end of tta.

The mel contract is AudioLDM's 16 kHz / 64-bin front end (Liu et al. 2023): periodic Hann STFT with n_fft
1024, hop 160, magnitude (not power), librosa's Slaney mel matrix (0-8 kHz, area-normalised), natural log of
clamp(mel, 1e-5). The framing is HiFi-GAN's (jik876 `mel_spectrogram`) by default: the waveform is
reflect-padded by (n_fft - hop) / 2 = 432 samples on each side and framed with center=False, so 163 840
samples give 1024 frames and frame k is centred on sample 160 k + 80. `MelConfig.framing = "tacotron"` frames
as AudioLDM's own `TacotronSTFT` does: a reflect pad of n_fft / 2 and frame k centred on sample 160 k, keeping
the first T // hop frames as AudioLDM keeps 1024 of 1025. The two give the same values half a hop (5 ms) apart
and the same number of frames. The AudioLDM importers set "tacotron", so audio an imported AudioLDM VAE encodes
(audio-to-audio, inpainting) is framed as AudioLDM's own inference frames it (`audioldm.audio.tools.
wav_to_fbank`, for its style transfer and inpainting); AudioLDM's later public training code frames as HiFi-GAN
does, so which framing the released VAEs saw is not documented. A vocoder only reads mels, so a VAE and a
vocoder of different framings still fit together (`check_same_mel` ignores the field).
Every component (VAE, vocoder, CLAP audio tower) carries a `MelConfig` and calls `log_mel`; there is no
second mel implementation anywhere in the project.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import logging
import math
import os
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf

from tta.config import check_number, check_numbers, counted, is_real, shortened

log = logging.getLogger(__name__)

MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 192_000
FRAMINGS = ("hifigan", "tacotron")
# errors of the machine, not of a file being read: out of memory, out of file descriptors (the process's or the
# system's). Reading stops with them as they are; an AudioError would have a run skip the file, `tta data check
# --drop-bad` drop it and `tta eval` leave it out
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})
_SFE_SYSTEM = 2   # libsndfile's "System error": a system call failed, and libsndfile keeps no errno


class AudioError(ValueError):
    """An audio file or buffer that cannot be used; the message names the file and what was expected."""


def check_sample_rate(value, what: str, error: type[Exception] = ValueError, *, also: str = "") -> int:
    """`value` as a sample rate in Hz (an int), or `error` naming `what`: a positive integer by the rule of a
    config's int (`check_number`: numpy's included, an integral float such as 16000.0 taken; a str, a bool or a
    fraction refused), at most MAX_SAMPLE_RATE, the most a file tta reads may have (2**40 reached libsndfile as
    "integer does not fit 'int'", and load_audio resampled to it until memory ran out). `also` ends the message
    with what else the caller takes (", or None for the file's own")."""
    try:
        rate = check_number(value, int, what)
    except ValueError:
        rate = 0
    if rate > MAX_SAMPLE_RATE:
        raise error(f"{what}={shortened(repr(value))}: expected at most {MAX_SAMPLE_RATE} Hz{also}")
    if rate <= 0:
        raise error(f"{what}={shortened(repr(value))}: expected a positive integer (Hz){also}")
    return rate


@dataclass(frozen=True)
class MelConfig:
    sample_rate: int = 16_000
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 160
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float = 8_000.0
    log_floor: float = 1e-5  # clamp(mel, min=log_floor) before the natural log
    framing: str = "hifigan"  # "hifigan": frame k centred on sample hop k + hop / 2; "tacotron": on hop k

    def __post_init__(self) -> None:
        check_numbers(self, "mel")   # a config built in Python: "16000" failed on "'<=' not supported"
        if not MIN_SAMPLE_RATE <= self.sample_rate <= MAX_SAMPLE_RATE:
            raise ValueError(f"mel.sample_rate={self.sample_rate} must be in [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}]")
        if self.win_length > self.n_fft:
            raise ValueError(f"mel.win_length={self.win_length} must be <= mel.n_fft={self.n_fft}")
        if not 0 < self.hop_length <= self.win_length:
            raise ValueError(f"mel.hop_length={self.hop_length} must be in (0, win_length={self.win_length}]")
        if self.framing not in FRAMINGS:
            raise ValueError(f"mel.framing={self.framing!r} must be one of {', '.join(map(repr, FRAMINGS))}")
        if self.framing == "tacotron" and self.n_fft % 2:
            raise ValueError(f"mel.n_fft={self.n_fft} must be even with framing 'tacotron' (a pad of n_fft / 2)")
        if self.framing == "hifigan" and (self.n_fft - self.hop_length) % 2:
            raise ValueError(f"mel.n_fft - mel.hop_length = {self.n_fft - self.hop_length} must be even "
                             "(it is split into equal reflect pads)")
        if self.n_mels <= 0:
            raise ValueError(f"mel.n_mels={self.n_mels} must be positive")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(f"mel band [{self.f_min}, {self.f_max}] Hz must satisfy "
                             f"0 <= f_min < f_max <= sample_rate/2 = {self.sample_rate / 2}")
        if self.log_floor <= 0:
            raise ValueError(f"mel.log_floor={self.log_floor} must be > 0")

    @property
    def pad(self) -> int:
        """Reflect padding on each side of the waveform, in samples."""
        if self.framing == "tacotron":
            return self.n_fft // 2
        return (self.n_fft - self.hop_length) // 2

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length

    def num_frames(self, num_samples: int) -> int:
        """Frames `log_mel` returns for `num_samples` samples (num_samples // hop_length in both framings)."""
        frames = (num_samples + 2 * self.pad - self.n_fft) // self.hop_length + 1
        return frames - 1 if self.framing == "tacotron" else frames   # AudioLDM drops the frame past the end

    def num_samples(self, num_frames: int) -> int:
        """Samples a vocoder produces from `num_frames` frames (hop_length per frame)."""
        return num_frames * self.hop_length

    def diff(self, other: "MelConfig", *, framing: bool = True) -> list[str]:
        """Names of the fields where two mel configs disagree, as 'field: a != b' (`framing=False`: only the
        fields that make a different mel space, leaving out the half-hop framing)."""
        out = []
        for name in self.__dataclass_fields__:
            if name == "framing" and not framing:
                continue
            a, b = getattr(self, name), getattr(other, name)
            if a != b:
                out.append(f"{name}: {a} != {b}")
        return out


AUDIOLDM_MEL = MelConfig(framing="tacotron")
"""AudioLDM's own mel front end (TacotronSTFT framing): what the AudioLDM and diffusers importers assume."""


def recorded_mel(record, key: str = "tta_mel") -> MelConfig:
    """The mel config a tta export recorded as `key` (`tta_mel` in a diffusers folder's vocoder/ config.json,
    `_tta_mel` in its vae/ one, `tta_mel` there from earlier exports), or a ConfigError naming the field: a type,
    an unknown field or a missing one. Every export wrote every field but `framing`, which came later (missing:
    "hifigan", the framing tta used then)."""
    from tta.config import ConfigError, from_dict

    if not isinstance(record, dict):
        raise ConfigError(f"{key} is {record!r}; expected an object (the recorded mel config)")
    missing = [name for name in MelConfig.__dataclass_fields__ if name != "framing" and name not in record]
    if missing:
        raise ConfigError(f"{key} has no {', '.join(missing)} (a recorded mel config names every field)")
    return from_dict(MelConfig, record, where=key)


def check_same_mel(a: MelConfig, b: MelConfig, what_a: str, what_b: str) -> None:
    """Raise a ValueError naming the differing fields when two components live in different mel spaces. The
    framing is not compared: it moves frames by half a hop, which a vocoder reading the mel does not see."""
    diffs = a.diff(b, framing=False)
    if diffs:
        raise ValueError(f"mel config of {what_a} differs from {what_b}: " + "; ".join(diffs))


# the audio files tta reads by suffix (folders of clips to import, score or evaluate); libsndfile decodes them
AUDIO_SUFFIXES = (".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".w64",
                  ".caf")


def is_audio_entry(path: Path) -> bool:
    """Whether an entry of a folder of clips is one to read: an audio suffix, not hidden (a write's temporary file,
    macOS's ._ resource forks), and a file, or a symbolic link that leads to none (its target gone, or links in a
    loop), which the reader then reports by name: a listing of files alone left such a clip out without a word."""
    return (path.suffix.lower() in AUDIO_SUFFIXES and not path.name.startswith(".")
            and (path.is_file() or (path.is_symlink() and not path.exists())))


def walk_entries(folder: Path) -> Iterator[Path]:
    """Every file-like entry under `folder` (files, and links that are not to a folder), a folder's own entries
    before its sub-folders', each sorted by name. Hidden folders (.git, .venv, a tool's cache) are not entered,
    as hidden files are not read: a clip folder does not keep its clips there, and a checkout's .venv holds the
    test audio of installed packages. Symbolic links to folders are not followed."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            yield Path(root) / name


def audio_entries(folder: Path) -> list[Path]:
    """The clips of a folder as `tta eval` scores them: every is_audio_entry under it, sub-folders too (not hidden
    ones: walk_entries), sorted by path. One listing for the commands that read a folder of clips (tta generate's
    warning of the audio a batch's out-dir holds that it does not write walks the same entries, but stops early:
    tta.generate.warn_other_audio)."""
    return sorted(p for p in walk_entries(Path(folder)) if is_audio_entry(p))

# --------------------------------------------------------------------------------------------- mel


def import_librosa():
    """librosa (a heavy import: numba), imported so that it works for a user who cannot write beside it.

    librosa compiles its numba functions with `cache=True`, and numba refuses the import ("cannot cache function
    ...: no locator available") when it can write neither beside librosa's files nor in ~/.cache/numba: an
    install read-only to its user, run by a service account or a container user whose home folder is not
    writable. librosa also asks for the home folder at import, which fails for a user with none. Then numba's
    cache (and that question) go to a temporary folder of this process, removed at exit; NUMBA_CACHE_DIR, when
    set, is numba's own choice and is left alone."""
    if not os.environ.get("NUMBA_CACHE_DIR"):
        _give_numba_a_cache()
    import librosa

    return librosa


@functools.lru_cache(maxsize=None)   # once per process
def _give_numba_a_cache() -> None:
    import importlib.util
    import tempfile

    spec = importlib.util.find_spec("librosa")
    if spec is None or not spec.submodule_search_locations:
        return   # not installed: the import names it
    package = Path(list(spec.submodule_search_locations)[0])
    beside = {p.parent / "__pycache__" for p in package.rglob("*.py")}   # numba's cache beside each module
    home = os.path.expanduser("~")
    no_home = home.startswith("~") and not os.environ.get("XDG_CACHE_HOME")
    user_wide = None if no_home else Path(os.environ.get("XDG_CACHE_HOME") or Path(home, ".cache")) / "numba"
    if not no_home and (all(map(_writable_folder, beside)) or _writable_folder(user_wide)):
        return
    try:
        folder = tempfile.mkdtemp(prefix="tta-numba-")
    except OSError as e:
        raise RuntimeError(f"librosa's numba needs a folder for its cache: {package} and "
                           f"{user_wide or 'the home folder'} are not writable and there is no temporary folder "
                           f"({e.strerror or e}); set NUMBA_CACHE_DIR to a writable folder") from None
    import atexit
    import shutil

    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["NUMBA_CACHE_DIR"] = folder
    if "numba" in sys.modules:   # imported already: its config has read the environment
        sys.modules["numba"].config.CACHE_DIR = folder
    if no_home:
        os.environ["XDG_CACHE_HOME"] = folder
    log.info("numba (librosa) has no writable cache folder (%s); it caches in %s for this process only (set "
             "NUMBA_CACHE_DIR to keep its cache)", "no home folder" if no_home else f"{package}, {user_wide}",
             folder)


def _writable_folder(folder: Path) -> bool:
    """Whether `folder` can be made and written, tried as numba tries its cache folders."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return False
    return True


@functools.lru_cache(maxsize=16)
def _mel_basis_np(config: MelConfig) -> np.ndarray:
    librosa = import_librosa()   # deferred until the first mel is computed

    return librosa.filters.mel(sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels,
                               fmin=config.f_min, fmax=config.f_max, htk=False, norm="slaney").astype(np.float32)


def mel_basis(config: MelConfig):
    """(n_mels, n_fft // 2 + 1) float32 torch tensor: librosa's Slaney mel matrix for `config`."""
    import torch

    return torch.from_numpy(_mel_basis_np(config))


_basis_cache: dict = {}


def _cached_tensors(config: MelConfig, device, dtype):
    import torch

    key = (config, str(device), dtype)
    if key not in _basis_cache:
        # made as ordinary tensors even when first asked for under torch.inference_mode (an evaluation): cached
        # inference tensors broke a later training step in the same process ("cannot be saved for backward")
        with torch.inference_mode(False):
            window = torch.hann_window(config.win_length, periodic=True, dtype=dtype, device=device)
            basis = mel_basis(config).to(device=device, dtype=dtype)
        _basis_cache[key] = (window, basis)
    return _basis_cache[key]


def log_mel(wav, config: MelConfig = MelConfig(), *, precision: str = "float64"):
    """Log-mel spectrogram of the mel contract.

    wav: (T,) or (B, T) float audio at `config.sample_rate` (torch tensor or numpy array), any device.
    Returns (B, n_mels, frames) float32 tensor (float64 for float64 input) on the same device,
    frames = config.num_frames(T).

    precision: dtype of the STFT and mel product. float64 (default) keeps low-energy bins exact beside
    loud ones (a float32 STFT of a pure tone is off by up to ~5e-3 in log-mel far from the tone, measured);
    it costs ~2x the time of float32, still ~1% of real time on 2 CPU cores. Pass "float32" for speed.
    """
    import torch

    if precision not in ("float32", "float64"):
        raise ValueError(f"log_mel precision={precision!r}: expected 'float32' or 'float64'")
    x = torch.as_tensor(wav)
    if not torch.is_floating_point(x):
        raise AudioError(f"log_mel expects float audio, got dtype {x.dtype}")
    out_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(getattr(torch, precision))
    if x.ndim == 1:
        x = x.unsqueeze(0)
    if x.ndim != 2:
        raise AudioError(f"log_mel expects wav of shape (T,) or (B, T), got {tuple(x.shape)}")
    if x.shape[-1] <= config.pad or config.num_frames(x.shape[-1]) <= 0:
        raise AudioError(f"audio of {x.shape[-1]} samples is too short for a mel frame (needs more than "
                         f"{max(config.pad, config.hop_length - 1)} samples at {config.sample_rate} Hz)")
    if not bool(torch.isfinite(x).all()):
        raise AudioError("log_mel got non-finite samples (NaN or inf)")
    window, basis = _cached_tensors(config, x.device, x.dtype)
    magnitude = contract_stft(x, window, config).abs()  # (B, n_fft//2+1, frames)
    mel = torch.matmul(basis, magnitude)
    return torch.log(torch.clamp(mel, min=config.log_floor)).to(out_dtype)


def contract_stft(wav, window, config: MelConfig):
    """The mel contract's STFT: (B, T) real -> (B, n_fft // 2 + 1, config.num_frames(T)) complex, framed as
    `config.framing` says (reflect pad of `config.pad`, center=False; "tacotron" drops the frame past the end).
    `window` is the periodic Hann window of win_length samples, on wav's device and dtype."""
    import torch

    x = torch.nn.functional.pad(wav.unsqueeze(1), (config.pad, config.pad), mode="reflect").squeeze(1)
    spec = torch.stft(x, n_fft=config.n_fft, hop_length=config.hop_length, win_length=config.win_length,
                      window=window, center=False, return_complex=True)
    return spec[..., : config.num_frames(wav.shape[-1])]


# ------------------------------------------------------------------------------------------- wav IO


def float_audio(wav, what: str = "audio") -> np.ndarray:
    """`wav` (numpy array, torch tensor or list) as a float32 numpy array; integer samples (int16 PCM as
    scipy.io.wavfile or soundfile's dtype="int16" give them) are an AudioError: read as floats they would be
    about 30 000 times too loud."""
    if hasattr(wav, "detach"):
        wav = wav.detach().cpu().numpy()
    arr = np.asarray(wav)
    if arr.dtype.kind != "f" and arr.size:
        raise AudioError(f"{what}: expected float samples in [-1, 1], got dtype {arr.dtype} (divide integer PCM "
                         "by 32768, or read the file with tta.audio.load_audio)")
    return np.asarray(arr, dtype=np.float32)


SILENCE_DB = -60.0   # a clip whose peak, its DC removed, lies below this is silent (tta data check's default level)


def dc_removed_peak(wav: np.ndarray) -> float:
    """The largest |sample| once the clip's mean (DC) is removed: 0 for digital silence and for a constant offset."""
    return float(np.max(np.abs(wav - wav.mean(dtype=np.float64)))) if wav.size else 0.0


def normalize_wav(wav: np.ndarray, peak: float = 0.5) -> np.ndarray:
    """Remove DC and scale to |max| = `peak` (AudioLDM's loader). Digital silence is returned unchanged."""
    wav = wav - wav.mean()
    top = float(np.max(np.abs(wav))) if wav.size else 0.0
    if top > 0:
        wav = wav * (peak / top)
    return wav.astype(np.float32)


def resample(wav: np.ndarray, orig_sr: float, target_sr: float) -> np.ndarray:
    """Resample (T,) or (T, C) float audio with soxr (VHQ); non-integer rates change speed (varispeed)."""
    if orig_sr == target_sr:
        return wav
    import soxr

    return soxr.resample(wav, orig_sr, target_sr, quality="VHQ").astype(np.float32)


@dataclass(frozen=True)
class AudioInfo:
    path: str
    sample_rate: int
    channels: int
    num_samples: int
    format: str
    subtype: str

    @property
    def seconds(self) -> float:
        return self.num_samples / self.sample_rate


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Header facts of an audio file, with the same checks as `load_audio` for missing/empty/undecodable files
    and unsupported sample rates (what passes here loads)."""
    path = _check_path(path)
    try:
        with open_sound_file(path) as f:
            info = AudioInfo(str(path), int(f.samplerate), int(f.channels), int(f.frames), f.format, f.subtype)
            extra_info = f.extra_info
    except Exception as e:  # libsndfile raises RuntimeError/LibsndfileError with its own text
        raise_resource_error(e, path)
        raise AudioError(f"{path}: not a readable audio file ({_sf_reason(e)})") from None
    if not MIN_SAMPLE_RATE <= info.sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"{path}: sample rate {info.sample_rate} Hz is outside the supported "
                         f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz")
    _check_truncated(path, extra_info)
    return info


def load_audio(path: str | os.PathLike, sample_rate: int | None = None, *, normalize: bool = False,
               start_seconds: float = 0.0, max_seconds: float | None = None,
               pcm16: bool = False) -> tuple[np.ndarray, int]:
    """Read anything libsndfile reads, mix to mono, optionally resample / normalise.

    `pcm16` puts the mono samples on the 16-bit PCM grid (k / 32768, clipped) before resampling, so a float or
    24-bit file scores as its 16-bit copy does (a no-op for a mono 16-bit file): fadtk reads every file as 16-bit,
    and the log-mel front ends hear the difference between digital silence and 16-bit rounding noise.

    Returns (wav (T,) float32, sample_rate). Raises AudioError naming the file for missing, empty,
    undecodable, truncated, zero-length or non-finite audio, for sample rates outside 8-192 kHz and for a header
    that declares more samples than the machine's memory holds; the machine's errors (out of memory, named
    MemoryError, or out of file descriptors: `raise_resource_error`) as they are.
    """
    if not (is_real(start_seconds) and start_seconds >= 0):
        raise ValueError(f"load_audio start_seconds={start_seconds!r}: expected a finite number >= 0")
    if max_seconds is not None and not (is_real(max_seconds) and max_seconds > 0):
        raise ValueError(f"load_audio max_seconds={max_seconds!r}: expected a finite number > 0, or None for the "
                         "whole file")
    if sample_rate is not None:
        sample_rate = check_sample_rate(sample_rate, "load_audio sample_rate", also=", or None for the file's own")
    path = _check_path(path)
    reading = None
    try:
        with open_sound_file(path) as f:
            sr = int(f.samplerate)
            if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
                raise AudioError(f"{path}: sample rate {sr} Hz is outside the supported "
                                 f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz")
            _check_truncated(path, f.extra_info)
            start = int(round(start_seconds * sr))
            if start:
                try:
                    f.seek(min(start, max(f.frames, 0)))
                except MemoryError:   # the machine's: named once, below
                    raise
                except Exception as e:  # a FLAC cut short behind a sound header: "Internal psf_fseek() failed"
                    raise_resource_error(e, path)
                    raise AudioError(f"{path}: not a readable audio file (cannot seek to sample {start} of the "
                                     f"{f.frames} its header declares: cut short or damaged; "
                                     f"{_sf_reason(e)})") from None
            frames = -1 if max_seconds is None else int(round(max_seconds * sr))
            expected = max(f.frames - min(start, f.frames), 0)
            expected = expected if frames < 0 else min(frames, expected)
            reading = (expected, int(f.channels), sr)   # soundfile's array: `expected` frames of float32
            data = f.read(frames=frames, dtype="float32", always_2d=True)
            # Compressed streams (mp3, ...) that end early decode short without an error; the header's
            # length is an estimate for some of them, so only a clear shortfall counts as truncation.
            if expected - data.shape[0] > max(4096, expected // 20):
                raise AudioError(f"{path}: truncated file (header declares {expected} samples from the "
                                 f"read position, only {data.shape[0]} could be decoded)")
    except AudioError:
        raise
    except Exception as e:
        raise_resource_error(e, path, reading)
        raise AudioError(f"{path}: not a readable audio file ({_sf_reason(e)})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: contains 0 samples")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: contains non-finite samples (NaN or inf)")
    wav = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    wav = np.ascontiguousarray(wav, dtype=np.float32)
    if pcm16:   # the nearest 16-bit value, as save_audio writes a PCM_16 file (pcm_samples); grid samples stay put
        wav = (pcm_samples(wav, 16) / 32768.0).astype(np.float32)
    if sample_rate is not None and sample_rate != sr:
        wav = resample(wav, sr, sample_rate)
        sr = sample_rate
    if normalize:
        wav = normalize_wav(wav)
    return wav, sr


# libsndfile turns a float sample into the integer below it for WAV's integer subtypes (floor(x * 32768) at 16
# bits, at 24 and 8 bits too; FLAC and 32-bit WAV round): half a step too low on average, a DC offset and
# truncation distortion in quiet passages. save_audio rounds these itself and hands libsndfile the integers.
PCM_BITS = {"PCM_U8": 8, "PCM_S8": 8, "PCM_16": 16, "PCM_24": 24}
# the rule's name in records of files save_audio wrote (tta generate's generation.json): a record without it is
# of a tta that wrote WAV's integer samples on the step below
PCM_ROUNDING = "nearest"
# the files save_audio writes, by suffix: libsndfile's format for each (the one list of `tta generate`'s -o FILE
# suffixes and --format names)
SAVE_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}


def is_save_format(name) -> bool:
    """Whether `name` names a format save_audio writes (SAVE_FORMATS, by suffix) as `tta generate --format` and a
    generation.json's settings.format write it: "flac" is one, ".flac", "FLAC" and a non-string none."""
    return isinstance(name, str) and f".{name}" in SAVE_FORMATS


def save_format_names(dot: str = ".") -> str:
    """SAVE_FORMATS for a message: ".wav, .flac or .ogg" (`dot=""`: "wav, flac or ogg")."""
    names = [dot + suffix[1:] for suffix in SAVE_FORMATS]
    return ", ".join(names[:-1]) + " or " + names[-1]


def pcm_samples(wav, bits: int) -> np.ndarray:
    """float samples (k / 2**(bits - 1) full scale) -> the nearest `bits`-bit integers (float64, clipped to
    the integer range; a sample halfway between two goes to the even one)."""
    top = 2.0 ** (bits - 1)
    return np.clip(np.rint(np.asarray(wav, np.float64) * top), -top, top - 1)


def save_audio(path: str | os.PathLike, wav, sample_rate: int, subtype: str = "PCM_16") -> Path:
    """Write (T,) mono audio atomically (temp file + rename): a kill never leaves a half-written file.

    The format follows the suffix (SAVE_FORMATS: wav, flac, ogg); samples are clipped to [-1, 1] and, for an
    integer subtype (PCM_16 by default), rounded to the nearest step (PCM_BITS). An .ogg file holds Vorbis, or
    Opus with subtype "OPUS" (at 8, 12, 16, 24 or 48 kHz; a subtype in any case), under a stream serial number
    drawn from its content (fixed_ogg_serial): the same audio gives the same bytes (a FLAC's or Ogg's with the
    same libsndfile, as they are its encoders': libFLAC's, libvorbis's).
    """
    from tta.checkpoint import atomic_path, atomic_write_bytes

    sample_rate = check_sample_rate(sample_rate, f"{path}: sample_rate", AudioError)
    subtype = subtype.upper()   # libsndfile takes any case: "opus" wrote Vorbis, "pcm_16" rounded down
    arr = float_audio(wav, str(path))
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise AudioError(f"{path}: save_audio expects mono (T,) audio, got shape {arr.shape}")
    if arr.size == 0:
        raise AudioError(f"{path}: refusing to write 0 samples")
    if not np.isfinite(arr).all():
        raise AudioError(f"{path}: refusing to write non-finite samples")
    path = Path(path)
    fmt = SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise AudioError(f"{path}: unsupported output suffix {path.suffix!r} (expected {save_format_names()})")
    if fmt == "OGG":
        subtype = "OPUS" if subtype == "OPUS" else "VORBIS"
        if subtype == "OPUS" and sample_rate not in OPUS_SAMPLE_RATES:
            raise AudioError(f"{path}: Opus takes a sample rate of 8, 12, 16, 24 or 48 kHz, got {sample_rate} "
                             "Hz")
    data = np.clip(arr, -1.0, 1.0)
    bits = PCM_BITS.get(subtype)
    if bits is not None:   # int32 samples, the value in the top bits: libsndfile drops the low ones exactly
        data = (pcm_samples(data, bits).astype(np.int64) << (32 - bits)).astype(np.int32)
    if fmt == "OGG":   # encoded in memory: its serial number is replaced before the file is written
        atomic_write_bytes(path, fixed_ogg_serial(_encoded_ogg(data, sample_rate, subtype), str(path)))
        return path
    with atomic_path(path) as tmp:
        sf.write(os.fsencode(tmp), data, sample_rate, subtype=subtype, format=fmt)
    return path


# Ogg (RFC 3533): a file is a run of pages, each "OggS", version, flags, granule position (8 bytes), the
# stream's serial number (4), page sequence number (4), CRC (4), segment count and table, then the body.
# libsndfile draws the serial number at random: two writes of the same audio differed in those 4 bytes and
# each page's CRC.
OPUS_SAMPLE_RATES = (8_000, 12_000, 16_000, 24_000, 48_000)
_OGG_HEADER = 27   # bytes of a page header before its segment table


# threading.stack_size is the process's setting, not the calling thread's: a thread that any other thread starts
# while a save has it set gets as big a stack too (address space; its pages are touched only as it uses them).
# The window is short, one Thread.start. The lock covers saves alone: two at once would set the size and put it
# back across each other, so one encoder could start with the default stack (too small for a long clip) or the
# big size could stay set for good.
_OGG_STACK_LOCK = threading.Lock()


def _encoded_ogg(data: np.ndarray, sample_rate: int, subtype: str) -> bytes:
    """libsndfile's Ogg file of the (T,) samples `data`, encoded in a thread whose stack has room for them:
    libvorbis copies the samples of its first write onto the stack (`alloca` in _preextrapolate_helper), so
    one write of more than about 2M samples (131 s at 16 kHz, 44 s at 48 kHz) overflowed an 8 MiB stack and
    the process died of a segmentation fault. Writing in parts would avoid it but change the encoding."""
    encoded, failed = io.BytesIO(), []

    def encode() -> None:
        try:
            sf.write(encoded, data, sample_rate, subtype=subtype, format="OGG")
        except BaseException as e:   # noqa: BLE001 -- raised again in the calling thread
            failed.append(e)

    room = -(-(4 * len(data) + (16 << 20)) // (1 << 20)) << 20   # float32 samples and 16 MiB, in whole MiB
    with _OGG_STACK_LOCK:   # one save at a time sets the size and puts it back (see above)
        before = threading.stack_size(room)
        try:
            thread = threading.Thread(target=encode, name="tta-ogg-encoder")
            thread.start()
        finally:
            threading.stack_size(before)
    thread.join()
    if failed:
        raise failed[0]
    return encoded.getvalue()


def _ogg_crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1) & 0xFFFFFFFF
        table.append(crc)
    return tuple(table)


_OGG_CRC_TABLE = _ogg_crc_table()


def ogg_crc(data: bytes) -> int:
    """Ogg's page checksum: CRC-32 with polynomial 0x04C11DB7, not reflected, initial value 0, no final xor
    (over a page whose CRC field holds zeros)."""
    crc, table = 0, _OGG_CRC_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[(crc >> 24) ^ byte]
    return crc


def ogg_pages(data: bytes, what: str) -> list[tuple[int, int]]:
    """(start, end) of each page of the Ogg stream `data`; an AudioError naming `what` where it is not whole
    pages."""
    pages, start = [], 0
    while start < len(data):
        if data[start:start + 4] != b"OggS":
            raise AudioError(f"{what}: not an Ogg page at byte {start}")
        count = data[start + 26] if start + 26 < len(data) else 256   # segments; 256: the header is cut short
        table = data[start + _OGG_HEADER:start + _OGG_HEADER + count]
        end = start + _OGG_HEADER + len(table) + sum(table)
        if len(table) < count or end > len(data):
            raise AudioError(f"{what}: the Ogg page at byte {start} runs past the end ({len(data)} bytes)")
        pages.append((start, end))
        start = end
    return pages


def fixed_ogg_serial(data: bytes, what: str) -> bytes:
    """The single-stream Ogg file `data` with its stream serial number replaced by one drawn from its content
    (the first 4 bytes of the sha256 of its pages with serial numbers and CRCs zeroed) and every page's CRC
    computed again: libsndfile's encoders give the same pages for the same audio, so this gives the same bytes.
    `what` names the file in an AudioError."""
    out = bytearray(data)
    pages = ogg_pages(data, what)
    streams = len({data[a + 14:a + 18] for a, _ in pages})
    if streams != 1:
        raise AudioError(f"{what}: expected one Ogg stream, got {streams}")
    for a, _ in pages:
        out[a + 14:a + 26] = bytes(4) + data[a + 18:a + 22] + bytes(4)
    serial = hashlib.sha256(out).digest()[:4]
    for a, b in pages:
        out[a + 14:a + 18] = serial
        out[a + 22:a + 26] = ogg_crc(memoryview(out)[a:b]).to_bytes(4, "little")
    return bytes(out)


def _check_path(path) -> Path:
    path = Path(path)
    if not path.exists():
        if path.is_symlink():   # "file not found" stays in the message: tta data check's reason `missing`
            raise AudioError(f"{path}: file not found (a symbolic link to {os.readlink(path)}, which is missing or "
                             "leads back to the link)")
        raise AudioError(f"{path}: file not found")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, expected an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    return path


_WAV_DATA_LOG = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def _check_truncated(path: Path, extra_info: str) -> None:
    """libsndfile silently shortens a WAV whose data chunk runs past the end of the file; its log says so."""
    m = _WAV_DATA_LOG.search(extra_info or "")
    if m:
        declared, present = int(m.group(1)), int(m.group(2))
        if declared > present and declared not in (0, 0xFFFFFFFF):  # 0 / 0xFFFFFFFF: streaming writers
            raise AudioError(f"{path}: truncated file (header declares {declared} data bytes, "
                             f"only {present} are present)")


@contextlib.contextmanager
def open_sound_file(path: Path) -> Iterator[sf.SoundFile]:
    """`path` open in soundfile (by its name as bytes: a name that is not UTF-8 is a name too). libsndfile says
    only "System error" when it cannot open a file: `path` is then opened once more, by Python, to learn why. Out
    of file descriptors or memory (RESOURCE_ERRNOS), an OSError naming it is raised, the machine's fault; when
    it opens (descriptors freed in between: the first failure was transient), soundfile reads from that open
    file, and what fails then is the file's. Any other error opening it is raised as it is."""
    try:
        f = sf.SoundFile(os.fsencode(path))
    except Exception as e:
        if not (isinstance(e, RuntimeError) and getattr(e, "code", None) == _SFE_SYSTEM):
            raise
        try:
            opened = open(path, "rb")
        except OSError as reopen:
            if reopen.errno in RESOURCE_ERRNOS:
                raise OSError(reopen.errno, reopen.strerror, str(path)) from None
            raise e from None   # (permissions: the file's)
    else:
        with f:
            yield f
        return
    with opened, sf.SoundFile(opened) as f:
        yield f


def raise_resource_error(error: Exception, path: Path,
                         reading: tuple[int, int, int] | None = None) -> None:
    """Raise `error`, met reading `path` (opened with `open_sound_file`), when it is the machine's fault, not the
    file's: a MemoryError (with its message naming `path`), or an OSError of RESOURCE_ERRNOS (too many open
    files, out of memory), which callers must not take for a bad file. Else nothing: the caller's AudioError
    says the file is bad.

    `reading` is (frames, channels, sample rate) of the float32 array being read, as the header declares them:
    a MemoryError on an array larger than the machine's physical memory is the file's (a damaged header that
    declares days of audio: soundfile sizes its array from it and numpy cannot allocate it on any machine), an
    AudioError saying what the header declares."""
    if isinstance(error, MemoryError):
        memory = physical_memory()
        if reading is not None and memory is not None and reading[0] * reading[1] * 4 > memory:
            frames, channels, sample_rate = reading
            raise AudioError(f"{path}: not a readable audio file (its header declares {frames} samples "
                             f"({frames / sample_rate:.0f} seconds at {sample_rate} Hz) of "
                             f"{counted(channels, 'channel')} to read: {frames * channels * 4 / 2**30:.1f} GiB as "
                             f"float32, more than this machine's {memory / 2**30:.1f} GiB of memory; damaged)"
                             ) from None
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MemoryError(f"{path}: out of memory reading it ({reason})") from error
    if isinstance(error, OSError) and error.errno in RESOURCE_ERRNOS:
        raise error


def physical_memory() -> int | None:
    """This machine's physical memory in bytes (os.sysconf's SC_PHYS_PAGES x SC_PAGE_SIZE); None where it does
    not say."""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):   # no os.sysconf (Windows), or no such name here
        return None
    return pages * page_size if pages > 0 and page_size > 0 else None


def _sf_reason(e: Exception) -> str:
    """libsndfile's reason, without soundfile's "Error opening <the path as Python bytes>: " before it (the
    message names the file already)."""
    reason = getattr(e, "error_string", None)
    if isinstance(reason, str) and reason.strip():
        return reason.strip().rstrip(".")
    text = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    return text.replace("Error opening", "cannot open").strip()


def seconds_to_samples(seconds: float, sample_rate: int) -> int:
    return int(math.floor(seconds * sample_rate + 0.5))
