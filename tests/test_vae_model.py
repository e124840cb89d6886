"""MelVAE: shapes for any length, bad input, overfitting one batch, save/load, scale factor."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tests.signals import chirp, clicks, noise, tone
from tta.audio import MelConfig, log_mel
from tta.checkpoint import CheckpointError, save_component
from tta.config import load_config
from vae.losses import VAELoss
from vae.model import MelVAE, compute_scale_factor, load_vae
from vae.train import RunConfig


@pytest.fixture(scope="module")
def tiny():
    from pathlib import Path

    return load_config(RunConfig, Path(__file__).resolve().parents[1] / "configs/vae/tiny.json")


def _mels(seconds: float = 0.64) -> torch.Tensor:
    wav = [
        tone(440, seconds),
        chirp(200, 6000, seconds),
        noise(seconds, seed=3),
        clicks(seconds, every_seconds=0.1),
    ]
    return log_mel(torch.from_numpy(np.stack(wav)))


@pytest.mark.parametrize("frames", [1, 7, 64, 65])
def test_any_length_round_trips_to_the_same_shape(tiny, frames):
    model = MelVAE(tiny.model).eval()
    mel = torch.randn(2, 64, frames) - 5
    posterior = model.encode(mel)
    assert tuple(posterior.mean.shape[1:]) == model.latent_shape(frames)
    rec, _ = model(mel, sample=False)
    assert rec.shape == mel.shape and torch.isfinite(rec).all()
    z = model.mel_to_latents(mel)
    assert torch.allclose(model.latents_to_mel(z, frames), rec, atol=1e-5)


def test_bad_input_names_shape_and_values(tiny):
    model = MelVAE(tiny.model)
    with pytest.raises(ValueError, match=r"n_mels=64.*\(2, 80, 10\)"):
        model.encode(torch.zeros(2, 80, 10))
    with pytest.raises(ValueError, match=r"\(64, 10\)"):
        model.encode(torch.zeros(64, 10))
    mel = torch.zeros(1, 64, 10)
    mel[0, 3, 4] = float("nan")
    with pytest.raises(ValueError, match=r"1 non-finite values \(NaN\)"):
        model.encode(mel)
    with pytest.raises(ValueError, match="latents of shape"):
        model.decode(torch.zeros(1, 3, 5, 32))


def test_config_invariants():
    from vae.model import VAEConfig

    with pytest.raises(ValueError, match="norm_num_groups"):
        VAEConfig(block_out_channels=(8, 12), norm_num_groups=8)
    with pytest.raises(ValueError, match="n_mels=62"):
        VAEConfig(mel=MelConfig(n_mels=62), block_out_channels=(8, 16, 32), norm_num_groups=8)


def test_tiny_vae_overfits_one_batch(tiny):
    # 16 frames of two deterministic signals keep this fast. AudioLDM's kl_weight (1000 on the per-element
    # mean KL) is balanced against a per-clip *sum* of 1024 frames x 64 bins; scale it to this clip size.
    torch.manual_seed(0)
    model = MelVAE(tiny.model)
    mel = log_mel(
        torch.from_numpy(
            np.stack([tone(440, 0.16) + tone(3000, 0.16, amplitude=0.1), chirp(200, 6000, 0.16)])
        )
    )
    assert mel.shape == (2, 64, 16)
    criterion = VAELoss(dataclasses.replace(tiny.loss, kl_weight=1000.0 * 16 / 1024))
    image = model.mel_to_image(mel, pad=False)
    opt = torch.optim.Adam(list(model.parameters()) + [criterion.logvar], lr=1e-2)

    def l1() -> float:
        with torch.no_grad():
            return float((model(mel, sample=False)[0] - mel).abs().mean())

    start = end = l1()
    for step in range(150):
        rec, posterior = model(mel)
        loss, _ = criterion.generator_loss(image, model.mel_to_image(rec, pad=False), posterior, step=0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 9:
            end = l1()
            if end * 10 <= start:
                break
    assert end * 10 <= start, f"mel L1 fell only from {start:.3f} to {end:.3f} in 150 steps"


def test_save_load_identical_and_scale_factor(tiny, tmp_path):
    model = MelVAE(tiny.model).eval()
    mel = _mels()
    scale = compute_scale_factor(model, [mel[:2], mel[2:]])
    z = model.encode(mel).sample(generator=torch.Generator().manual_seed(0))
    assert scale == pytest.approx(1 / float(z.detach().std()), rel=0.05)
    model.set_scale_factor(scale)
    save_component(tmp_path / "vae", model)
    loaded = load_vae(tmp_path / "vae", mel=MelConfig())
    assert loaded.config == model.config and float(loaded.scale_factor) == pytest.approx(scale)
    assert torch.equal(loaded.mel_to_latents(mel), model.mel_to_latents(mel))
    assert torch.equal(loaded(mel, sample=False)[0], model(mel, sample=False)[0])


def test_load_refuses_other_class_and_other_mel(tiny, tmp_path):
    save_component(tmp_path / "loss", VAELoss(tiny.loss))
    with pytest.raises(CheckpointError, match=r"vae\.losses\.VAELoss.*vae\.model\.MelVAE"):
        load_vae(tmp_path / "loss")
    save_component(tmp_path / "vae", MelVAE(tiny.model))
    other = dataclasses.replace(MelConfig(), f_max=7600.0)
    with pytest.raises(ValueError, match=r"f_max: 8000.0 != 7600.0"):
        load_vae(tmp_path / "vae", mel=other)
