"""The mel contract against an independent float64 NumPy/SciPy implementation of AudioLDM's formula."""

import numpy as np
import pytest
import torch
from scipy.signal import get_window

from tests.signals import chirp, clicks, noise, tone
from tta.audio import AudioError, MelConfig, check_same_mel, log_mel

# --- independent reference: Slaney mel scale + area norm written out, periodic Hann, reflect pad, |rfft|


def _hz_to_mel(f):
    f = np.asarray(f, dtype=np.float64)
    logstep = np.log(6.4) / 27.0
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / logstep, f * 3.0 / 200.0)


def _mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    logstep = np.log(6.4) / 27.0
    return np.where(m >= 15.0, 1000.0 * np.exp(logstep * (m - 15.0)), m * 200.0 / 3.0)


def _slaney_matrix(sr, n_fft, n_mels, fmin, fmax):
    fft_hz = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    weights = np.zeros((n_mels, fft_hz.size))
    for i in range(n_mels):
        rising = -ramps[i] / widths[i]
        falling = ramps[i + 2] / widths[i + 1]
        weights[i] = np.maximum(0.0, np.minimum(rising, falling))
    return weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]


def reference_log_mel(x: np.ndarray, c: MelConfig) -> np.ndarray:
    x = np.pad(np.asarray(x, np.float64), c.pad, mode="reflect")
    n_frames = (x.size - c.n_fft) // c.hop_length + 1
    idx = np.arange(c.n_fft)[None, :] + c.hop_length * np.arange(n_frames)[:, None]
    window = np.zeros(c.n_fft)
    left = (c.n_fft - c.win_length) // 2
    window[left:left + c.win_length] = get_window("hann", c.win_length, fftbins=True)
    magnitude = np.abs(np.fft.rfft(x[idx] * window, axis=1)).T
    mel = _slaney_matrix(c.sample_rate, c.n_fft, c.n_mels, c.f_min, c.f_max) @ magnitude
    return np.log(np.maximum(mel, c.log_floor))


def reference_tacotron_log_mel(x: np.ndarray, c: MelConfig) -> np.ndarray:
    """AudioLDM's TacotronSTFT framing written out: frame k is centred on sample hop * k (reflect pad of
    n_fft / 2), for k < len(x) // hop (AudioLDM keeps 1024 frames of 10.24 s)."""
    half = c.n_fft // 2
    x = np.pad(np.asarray(x, np.float64), half, mode="reflect")
    centres = c.hop_length * np.arange((len(x) - 2 * half) // c.hop_length)
    idx = centres[:, None] + np.arange(c.n_fft)[None, :]        # padded index of centre - half + j
    window = get_window("hann", c.n_fft, fftbins=True)
    magnitude = np.abs(np.fft.rfft(x[idx] * window, axis=1)).T
    mel = _slaney_matrix(c.sample_rate, c.n_fft, c.n_mels, c.f_min, c.f_max) @ magnitude
    return np.log(np.maximum(mel, c.log_floor))


SIGNALS = {
    "uniform_noise": lambda: np.random.default_rng(1).uniform(-1, 1, 24_000).astype(np.float32),
    "gaussian_noise": lambda: noise(1.5, seed=3),
    "tone_440": lambda: tone(440, 1.5),
    "tone_6k_loud": lambda: tone(6000, 1.5, amplitude=0.95),
    "chirp": lambda: chirp(40, 7900, 1.5),
    "clicks": lambda: clicks(1.5),
    "quiet_tone": lambda: tone(1000, 1.5, amplitude=1e-3),
    "speechlike_mix": lambda: chirp(120, 2400, 1.5) + noise(1.5, amplitude=0.05, seed=4) + clicks(1.5, every_seconds=0.1),
}


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_log_mel_matches_float64_reference(name):
    c = MelConfig()
    x = SIGNALS[name]()
    ours = log_mel(torch.from_numpy(x), c)
    assert ours.shape == (1, c.n_mels, c.num_frames(x.size)) and ours.dtype == torch.float32
    ref = reference_log_mel(x, c)
    assert np.abs(ours[0].double().numpy() - ref).max() <= 1e-4


def test_reference_sizes_and_default_contract():
    c = MelConfig()
    assert (c.sample_rate, c.n_fft, c.win_length, c.hop_length, c.n_mels, c.f_min, c.f_max) == \
        (16_000, 1024, 1024, 160, 64, 0.0, 8000.0)
    assert c.pad == 432 and c.num_frames(163_840) == 1024
    mel = log_mel(torch.zeros(163_840) + 0.01, c)
    assert mel.shape == (1, 64, 1024)


@pytest.mark.parametrize("name", ["chirp", "clicks", "speechlike_mix"])
def test_tacotron_framing_matches_audioldm_reference(name):
    c = MelConfig(framing="tacotron")
    x = SIGNALS[name]()
    ours = log_mel(torch.from_numpy(x), c)
    ref = reference_tacotron_log_mel(x, c)
    assert ours.shape == (1, 64, ref.shape[1]) == (1, 64, MelConfig().num_frames(x.size))
    assert np.abs(ours[0].double().numpy() - ref).max() <= 1e-4
    assert c.pad == 512 and c.num_frames(163_840) == 1024     # AudioLDM's 10.24 s: 1024 frames


def test_the_two_framings_are_half_a_hop_apart():
    """HiFi-GAN's frame k is centred on sample hop k + hop/2, TacotronSTFT's on hop k: delaying the audio by
    hop/2 samples makes the first framing's values the second's (away from the reflect-padded ends)."""
    x = noise(1.0, seed=5)
    delayed = np.concatenate([np.zeros(MelConfig().hop_length // 2, np.float32), x])
    hifigan = log_mel(delayed, MelConfig())[0]
    tacotron = log_mel(x, MelConfig(framing="tacotron"))[0]
    inner = slice(8, hifigan.shape[1] - 8)
    assert torch.allclose(hifigan[:, inner], tacotron[:, inner], atol=1e-4)
    assert not torch.allclose(log_mel(x, MelConfig())[0][:, inner], tacotron[:, inner], atol=1e-2)


def test_batched_equals_per_item_and_numpy_input():
    c = MelConfig()
    batch = np.stack([noise(1.0, seed=s) for s in range(3)])
    together = log_mel(batch, c)
    for i in range(3):
        assert torch.equal(together[i], log_mel(torch.from_numpy(batch[i]), c)[0])


def test_other_configs_are_configs_not_forks():
    c = MelConfig(sample_rate=48_000, n_fft=2048, win_length=2048, hop_length=480, n_mels=256, f_max=24_000)
    x = chirp(100, 20_000, 0.5, sample_rate=48_000)
    ours = log_mel(x, c)[0].double().numpy()
    assert ours.shape == (256, c.num_frames(x.size))
    assert np.abs(ours - reference_log_mel(x, c)).max() <= 1e-4


def test_float32_precision_option_is_close():
    c = MelConfig()
    x = noise(1.0)
    assert torch.allclose(log_mel(x, c, precision="float32"), log_mel(x, c), atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    c = MelConfig()
    x = torch.from_numpy(chirp(40, 7900, 1.0))
    assert torch.allclose(log_mel(x.cuda(), c).cpu(), log_mel(x, c), atol=1e-5)


@pytest.mark.parametrize("bad, message", [
    (np.zeros(100, dtype=np.float32), "too short for a mel frame"),
    (np.array([np.nan] * 2000, dtype=np.float32), "non-finite"),
    (np.zeros((2, 2, 2000), dtype=np.float32), "shape"),
    (np.zeros(2000, dtype=np.int16), "float audio"),
])
def test_bad_audio_is_refused(bad, message):
    with pytest.raises(AudioError, match=message):
        log_mel(torch.from_numpy(bad), MelConfig())


def test_audio_longer_than_the_pad_but_shorter_than_a_hop_is_refused():
    c = MelConfig(n_fft=256, win_length=256, hop_length=200, framing="tacotron")     # pad 128 < hop 200
    with pytest.raises(AudioError, match="needs more than 199 samples"):
        log_mel(torch.from_numpy(noise(0.01)), c)                                   # 160 samples
    assert log_mel(torch.from_numpy(noise(0.0125)), c).shape == (1, 64, 1)          # 200 samples


@pytest.mark.parametrize("kwargs, key", [
    ({"hop_length": 2048}, "hop_length"), ({"f_max": 9000.0}, "f_max"), ({"win_length": 2048}, "win_length"),
    ({"sample_rate": 4000}, "sample_rate"), ({"n_mels": 0}, "n_mels"), ({"framing": "center"}, "framing"),
    ({"framing": "tacotron", "n_fft": 1023, "win_length": 1023}, "n_fft"),
])
def test_mel_config_invariants(kwargs, key):
    with pytest.raises(ValueError, match=key):
        MelConfig(**kwargs)


def test_mel_config_diff_names_fields():
    a, b = MelConfig(), MelConfig(n_mels=80)
    assert a.diff(b) == ["n_mels: 64 != 80"]
    # framing moves frames by half a hop, not into another mel space: components of either framing fit
    t = MelConfig(framing="tacotron")
    assert a.diff(t) == ["framing: hifigan != tacotron"] and a.diff(t, framing=False) == []
    check_same_mel(a, t, "vae", "vocoder")


def test_a_mel_first_computed_under_inference_mode_still_trains():
    """The cached window and mel basis were made inside the first caller's inference_mode (an evaluation): a
    training step in the same process then failed with 'Inference tensors cannot be saved for backward'."""
    import dataclasses

    import torch

    from tta.audio import MelConfig, log_mel

    config = dataclasses.replace(MelConfig(), n_mels=48)   # not cached by another test
    with torch.inference_mode():
        log_mel(torch.zeros(1, 4000), config, precision="float32")
    wav = torch.zeros(1, 4000, requires_grad=True)
    log_mel(wav, config, precision="float32").sum().backward()
    assert wav.grad is not None
