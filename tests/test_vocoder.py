"""HiFi-GAN generator, discriminators, losses and the Griffin-Lim baseline (real classes, tiny configs)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from tests.signals import chirp, noise
from tta.audio import MelConfig, log_mel
from tta.checkpoint import load_component, save_component
from tta.config import ConfigError, from_dict, load_config, to_dict
from vocoder.discriminators import DiscriminatorConfig, HiFiGANDiscriminator
from vocoder.griffinlim import GriffinLim, GriffinLimConfig
from vocoder.losses import discriminator_loss, generator_adversarial_loss, multi_resolution_stft_distance
from vocoder.model import HiFiGAN, HiFiGANConfig, VocoderInputError
from vocoder.train import RunConfig


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny tensors: a second thread only adds stalls on a shared machine
    yield


@pytest.fixture
def tiny(repo_root) -> RunConfig:
    return load_config(RunConfig, repo_root / "configs/vocoder/tiny.json")


def test_configs_load_and_build_real_models(repo_root):
    for name in ("tiny", "default", "audioldm-16k"):
        cfg = load_config(RunConfig, repo_root / f"configs/vocoder/{name}.json")
        assert math.prod(cfg.model.upsample_rates) == cfg.model.mel.hop_length == 160
        assert cfg.train.adam_betas == (0.8, 0.99)
        assert (cfg.loss.feature_matching, cfg.loss.mel) == (2.0, 45.0)
        assert cfg.discriminator.periods == (2, 3, 5, 7, 11)
    ref = load_config(RunConfig, repo_root / "configs/vocoder/audioldm-16k.json").model
    assert (ref.upsample_rates, ref.upsample_kernel_sizes, ref.upsample_initial_channel) == \
        ((5, 4, 2, 2, 2), (16, 16, 8, 4, 4), 1024)
    assert ref.resblock_kernel_sizes == (3, 7, 11) and ref.resblock_dilation_sizes == ((1, 3, 5),) * 3


def test_forward_shape_is_frames_times_hop(tiny):
    model = HiFiGAN(tiny.model).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 64, 7)).shape == (2, 7 * 160)
        assert model(torch.randn(64, 3)).shape == (1, 3 * 160)  # un-batched mel


def test_audioldm_config_trims_the_extra_samples_of_odd_kernels(repo_root):
    # kernel 16 / rate 5 makes the reference stack return 160 * frames + 32 samples; the contract is exact
    cfg = load_config(RunConfig, repo_root / "configs/vocoder/audioldm-16k.json").model
    model = HiFiGAN(dataclasses.replace(cfg, upsample_initial_channel=64)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 64, 4)).shape == (1, 640)


def test_n_mels_comes_from_the_mel_config(tiny):
    cfg = dataclasses.replace(tiny.model, mel=dataclasses.replace(tiny.model.mel, n_mels=80))
    model = HiFiGAN(cfg)
    assert model.conv_pre.in_channels == 80
    assert model(torch.randn(1, 80, 2)).shape == (1, 320)
    with pytest.raises(VocoderInputError, match="80 mel bins.*64 bins"):
        model(torch.randn(1, 64, 2))


def test_upsample_product_must_equal_hop(tiny):
    with pytest.raises(ValueError, match=r"prod\(upsample_rates\)=256.*hop_length=160"):
        dataclasses.replace(tiny.model, upsample_rates=(16, 16))
    data = to_dict(tiny.model)
    data["mel"]["hop_length"] = 256
    with pytest.raises(ConfigError, match="hop_length=256"):
        from_dict(HiFiGANConfig, data)


def test_bad_mels_are_refused(tiny):
    model = HiFiGAN(tiny.model)
    bad = torch.zeros(1, 64, 4)
    bad[0, 3, 2] = float("nan")
    with pytest.raises(VocoderInputError, match="non-finite"):
        model(bad)
    with pytest.raises(VocoderInputError, match="at least one frame"):
        model(torch.zeros(1, 64, 0))
    with pytest.raises(VocoderInputError, match="shape"):
        model(torch.zeros(64))
    other = dataclasses.replace(tiny.model.mel, hop_length=256)
    with pytest.raises(VocoderInputError, match="hop_length: 160 != 256.*vocoder: MelConfig.*input: MelConfig"):
        model.vocode(torch.zeros(1, 64, 4), other)
    gl = GriffinLim(GriffinLimConfig(tiny.model.mel, n_iter=1))
    with pytest.raises(VocoderInputError, match="non-finite"):
        gl(bad)
    with pytest.raises(VocoderInputError, match="at least one frame"):
        gl(torch.zeros(1, 64, 0))


def test_remove_weight_norm_keeps_the_output(tiny):
    model = HiFiGAN(tiny.model).eval()
    assert model.config.weight_norm and any("original1" in k for k in model.state_dict())
    mel = torch.randn(2, 64, 6)
    with torch.no_grad():
        before = model(mel)
        plain = model.inference_copy()
        assert model.config.weight_norm  # the source is left as it was
        assert torch.allclose(plain(mel), before, atol=1e-6)
        model.remove_weight_norm()
        assert not model.config.weight_norm
        assert not any("parametrizations" in k for k in model.state_dict())
        assert torch.allclose(model(mel), before, atol=1e-6)
        model.apply_weight_norm()
        assert torch.allclose(model(mel), before, atol=1e-6)


@pytest.mark.parametrize("weight_norm", [True, False])
def test_save_load_gives_identical_output(tmp_path, tiny, weight_norm):
    model = HiFiGAN(tiny.model)
    if not weight_norm:
        model.remove_weight_norm()
    save_component(tmp_path / "voc", model)
    loaded = load_component(tmp_path / "voc", HiFiGAN)
    assert loaded.config == model.config
    mel = torch.randn(1, 64, 5)
    with torch.no_grad():
        assert torch.equal(loaded(mel), model.eval()(mel))


def test_discriminators_give_one_output_per_period_and_scale(tiny):
    disc = HiFiGANDiscriminator(tiny.discriminator)
    logits, fmaps = disc(torch.randn(2, 1603))  # length not divisible by any period
    assert len(logits) == len(fmaps) == 5 + 3
    assert all(x.shape[0] == 2 and x.ndim == 2 for x in logits)
    assert len(fmaps[0]) == len(tiny.discriminator.mpd_channels) + 1 and len(fmaps[-1]) == 8
    with pytest.raises(ValueError, match="msd_groups"):
        DiscriminatorConfig(msd_groups=(1, 3, 16, 16, 16, 16, 1))


def test_lsgan_losses_are_zero_at_their_optimum():
    ones, zeros = [torch.ones(2, 5)], [torch.zeros(2, 5)]
    assert discriminator_loss(ones, zeros) == 0
    assert discriminator_loss(zeros, ones) == 2
    assert generator_adversarial_loss(ones) == 0


def test_stft_distance_is_zero_for_identical_audio_and_grows_with_noise():
    wav = torch.from_numpy(chirp(100, 4000, 0.5))[None]
    res = ((512, 128, 512), (1024, 256, 1024))
    assert multi_resolution_stft_distance(wav, wav, res) < 1e-6
    small = multi_resolution_stft_distance(wav + 0.01 * torch.from_numpy(noise(0.5))[None], wav, res)
    large = multi_resolution_stft_distance(wav + 0.1 * torch.from_numpy(noise(0.5))[None], wav, res)
    assert 0 < small < large


def test_griffin_lim_has_the_vocoder_interface_and_iterations_help():
    mel_cfg = MelConfig()
    wav = torch.from_numpy(chirp(200, 3000, 0.5))[None]  # 8000 samples = 50 hops
    mel = log_mel(wav, mel_cfg)
    inconsistency = {}
    for n_iter in (0, 16):
        gl = GriffinLim(GriffinLimConfig(mel_cfg, n_iter=n_iter))
        out = gl(mel)
        assert out.shape == (1, mel.shape[-1] * mel_cfg.hop_length)
        # what Griffin-Lim minimises: the distance between the target magnitude and that of its output
        target = gl.magnitude(mel)
        inconsistency[n_iter] = float(torch.linalg.norm(gl._stft(out).abs() - target) / torch.linalg.norm(target))
    assert inconsistency[16] < 0.7 * inconsistency[0], inconsistency


def test_griffin_lim_nnls_magnitude_fits_the_mel_better_than_the_pseudo_inverse():
    mel_cfg = MelConfig()
    mel = log_mel(torch.from_numpy(chirp(200, 3000, 0.5) + noise(0.5, amplitude=0.02))[None], mel_cfg)
    err = {}
    for nnls_iter in (0, 30):
        gl = GriffinLim(GriffinLimConfig(mel_cfg, n_iter=0, nnls_iter=nnls_iter))
        mag = gl.magnitude(mel)
        assert (mag >= 0).all()
        err[nnls_iter] = float(torch.linalg.norm(gl.basis @ mag - torch.exp(mel)))
    assert err[30] < 0.9 * err[0], err


@pytest.mark.parametrize("framing", ["hifigan", "tacotron"])
def test_griffin_lim_inverse_stft_is_exact(framing):
    gl = GriffinLim(GriffinLimConfig(MelConfig(framing=framing), n_iter=0))
    wav = torch.from_numpy(noise(0.4, seed=3))[None]
    assert gl._stft(wav).shape[-1] == MelConfig().num_frames(wav.shape[-1])
    assert torch.allclose(gl._istft(gl._stft(wav)), wav, atol=1e-5)
