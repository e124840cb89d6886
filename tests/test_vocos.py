"""The Vocos-style vocoder: frame-aligned output, Griffin-Lim's magnitudes at the start, a GAN step that learns,
and `tta train vocos` writing a run whose final/ loads wherever a vocoder does."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.signals import chirp
from tests.test_ldm_fixtures import one_thread, tiny_components, tiny_pipeline  # noqa: F401  (autouse: 1 thread)
from tests.test_vocoder_train import gan_steps, make_manifest
from tta.audio import log_mel
from tta.checkpoint import load_component, save_component
from tta.cli import main
from tta.config import load_config
from tta.ldm.folder import vocoder_class
from vocoder.griffinlim import GriffinLim, GriffinLimConfig
from vocoder.model import VocoderInputError
from vocoder.train import load_frozen_vae, through_vae, vae_inputs
from vocoder.vocos import Vocos, VocosConfig
from vocoder.vocos_train import RunConfig


@pytest.fixture
def tiny(repo_root) -> RunConfig:
    return load_config(RunConfig, repo_root / "configs/vocos/tiny.json")


def test_output_is_frames_times_hop_and_finite(tiny):
    torch.manual_seed(0)
    model = Vocos(tiny.model).eval()
    wav = model(torch.randn(2, 64, 7) - 4)
    assert wav.shape == (2, 7 * 160) and torch.isfinite(wav).all()
    assert model(torch.randn(64, 1) - 4).shape == (1, 160)   # one frame, no batch axis


def test_untrained_magnitudes_are_the_nnls_inversion(tiny):
    """The magnitude correction starts at zero: training starts from Griffin-Lim's magnitudes."""
    torch.manual_seed(0)
    mel = log_mel(torch.from_numpy(chirp(200, 3000, 0.3))[None], tiny.model.mel)
    model = Vocos(tiny.model)
    gl = GriffinLim(GriffinLimConfig(mel=tiny.model.mel, nnls_iter=tiny.model.nnls_iter))
    with torch.no_grad():
        got = model.spectrum(mel).abs()
    want = gl.magnitude(mel).clamp_min(tiny.model.mel.log_floor)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    # without the base, the head predicts the whole log magnitude and starts elsewhere
    plain = Vocos(replace(tiny.model, magnitude_base=False))
    with torch.no_grad():
        assert not torch.allclose(plain.spectrum(mel).abs(), want, rtol=1e-2, atol=1e-3)


def test_true_spectrum_through_the_inverse_stft_gives_back_the_wav(tiny):
    """The output stage inverts the mel contract's own STFT framing exactly."""
    model = Vocos(tiny.model)
    wav = torch.from_numpy(chirp(300, 2500, 0.5))[None].float()
    n = wav.shape[-1] // 160 * 160
    wav = wav[:, :n]
    gl = GriffinLim(GriffinLimConfig(mel=tiny.model.mel))
    from vocoder.griffinlim import overlap_add_istft

    back = overlap_add_istft(gl._stft(wav), model.window, tiny.model.mel)
    torch.testing.assert_close(back, wav, rtol=0, atol=1e-4)


def test_griffin_lim_refinement_starts_from_the_network_phase(tiny):
    """griffin_lim_iter > 0 runs fast Griffin-Lim from the network's phase: the iterations make the waveform's
    spectrum consistent with the kept magnitude (the network's, or the mel's NNLS inversion)."""
    from vocoder.griffinlim import contract_stft, nnls_magnitude, overlap_add_istft

    torch.manual_seed(0)
    mel = log_mel(torch.from_numpy(chirp(200, 3000, 0.5))[None], tiny.model.mel)
    model = Vocos(tiny.model).eval()
    with torch.no_grad():   # a network whose phase and magnitude are far from consistent
        model.head.weight.normal_(0, 0.05)
        spec = model.spectrum(mel)
        plain = model(mel)
        one = Vocos(replace(tiny.model, griffin_lim_iter=1, griffin_lim_momentum=0.0))
        one.load_state_dict(model.state_dict())
        assert not torch.allclose(one(mel), plain, atol=1e-4)
        refined = Vocos(replace(tiny.model, griffin_lim_iter=8))
        refined.load_state_dict(model.state_dict())
        wav = refined(mel)
    assert wav.shape == plain.shape and torch.isfinite(wav).all()

    def inconsistency(w, mag):
        return float((contract_stft(w, model.window, tiny.model.mel).abs() - mag).norm() / mag.norm())

    assert inconsistency(wav, spec.abs()) < 0.8 * inconsistency(plain, spec.abs())
    nnls = Vocos(replace(tiny.model, griffin_lim_iter=8, output_magnitude="nnls"))
    nnls.load_state_dict(model.state_dict())
    with torch.no_grad():
        kept = nnls.refine(spec, mel).abs()
    want = nnls_magnitude(mel, model.basis, model.inverse_basis, tiny.model.nnls_iter)
    torch.testing.assert_close(kept, want, rtol=1e-4, atol=1e-5)
    # no iterations: the NNLS magnitude under the network's own phase
    phase_only = Vocos(replace(tiny.model, output_magnitude="nnls"))
    phase_only.load_state_dict(model.state_dict())
    with torch.no_grad():
        got = phase_only(mel)
    torch.testing.assert_close(got, overlap_add_istft(want * spec / spec.abs(), model.window, tiny.model.mel))
    assert not torch.allclose(got, plain, atol=1e-4)
    with pytest.raises(ValueError, match="output_magnitude='mel'"):
        VocosConfig(output_magnitude="mel")


def test_bad_mel_is_a_clear_error(tiny):
    model = Vocos(tiny.model)
    with pytest.raises(VocoderInputError, match="64 mel bins"):
        model(torch.zeros(1, 80, 4))
    with pytest.raises(VocoderInputError, match="non-finite"):
        model(torch.full((1, 64, 4), float("nan")))


def test_config_rejects_an_even_kernel():
    with pytest.raises(ValueError, match="kernel_size=4"):
        VocosConfig(kernel_size=4)


def test_gan_steps_on_one_segment_lower_the_mel_loss(tiny):
    torch.manual_seed(0)
    wav = torch.from_numpy(chirp(200, 2000, 0.25))[None].float()
    history = gan_steps(Vocos(tiny.model).train(), tiny, wav, log_mel(wav, tiny.model.mel))
    first, last = np.mean(history[:3]), np.mean(history[-3:])
    assert last < 0.8 * first, history


def test_cli_train_writes_a_vocos_component_that_loads_as_a_vocoder(tmp_path, repo_root):
    manifest = make_manifest(tmp_path)
    run = tmp_path / "run"
    rc = main(["-q", "train", "vocos", "--config", str(repo_root / "configs/vocos/tiny.json"), "--out", str(run),
               "--set", f"data.manifest={manifest}"])
    assert rc == 0
    assert vocoder_class(run / "final") is Vocos
    model = load_component(run / "final", Vocos)
    assert model(torch.zeros(1, 64, 5)).shape == (1, 800)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2]
    assert [r["step"] for r in rows if r["split"] == "valid"] == [2]
    assert (run / "samples" / "step_2" / "0_held.wav").is_file()
    # a float16 copy (how a pipeline stores it) vocodes the same mel within float16 rounding
    save_component(tmp_path / "half", model, dtype=torch.float16)
    half = load_component(tmp_path / "half", Vocos)
    mel = log_mel(torch.from_numpy(chirp(200, 3000, 0.3))[None].float(), model.config.mel)
    a, b = model.vocode(mel), half.vocode(mel)
    assert float((a - b).abs().max()) < 0.05 * float(a.abs().max()) + 1e-4


def test_a_vocos_run_packs_into_a_pipeline_that_generates(tmp_path, repo_root, capsys):
    from tta.pipeline import TTAPipeline

    manifest = make_manifest(tmp_path)
    run = tmp_path / "run"
    assert main(["-q", "train", "vocos", "--config", str(repo_root / "configs/vocos/tiny.json"), "--out", str(run),
                 "--set", f"data.manifest={manifest}", "--set", "valid_items=0", "--set", "sample_items=0"]) == 0
    out = tmp_path / "packed"
    assert main(["-q", "export", "pipeline", str(tiny_pipeline()), "--out", str(out), "--dtype", "float16",
                 "--vocoder", str(run)]) == 0
    assert json.loads((out / "vocoder" / "config.json").read_text())["class"] == "vocoder.vocos.Vocos"
    pipe = TTAPipeline.from_pretrained(out)
    assert isinstance(pipe.vocoder, Vocos)
    wav = pipe(["a tone sound"], seconds=0.32, steps=2, sampler="ddim", seed=0).wavs[0]
    assert wav.shape == (5120,) and np.isfinite(wav).all()
    # --vocoder-set: the same weights with Griffin-Lim refinement; weight shapes and the mel config cannot change
    hybrid = tmp_path / "hybrid"
    assert main(["-q", "export", "pipeline", str(out), "--out", str(hybrid), "--vocoder-set", "griffin_lim_iter=4",
                 "--vocoder-set", "output_magnitude=nnls"]) == 0
    pipe2 = TTAPipeline.from_pretrained(hybrid)
    assert (pipe2.vocoder.config.griffin_lim_iter, pipe2.vocoder.config.output_magnitude) == (4, "nnls")
    for name, value in pipe.vocoder.state_dict().items():
        torch.testing.assert_close(pipe2.vocoder.state_dict()[name], value)
    wav2 = pipe2(["a tone sound"], seconds=0.32, steps=2, sampler="ddim", seed=0).wavs[0]
    assert wav2.shape == (5120,) and np.isfinite(wav2).all() and not np.allclose(wav2, wav)
    for bad, message in (("dim=64", "weights were trained with it; settable: output_magnitude"),
                         ("nnls_iter=10", "weights were trained with it"), ("mel.n_mels=80", "mel config is the VAE's"),
                         ("griffin_lim_iters=4", "unknown config key"), ("griffin_lim_iter=-1", "must be >= 0")):
        assert main(["-q", "export", "pipeline", str(out), "--out", str(tmp_path / "bad"), "--vocoder-set", bad]) == 1
        assert not (tmp_path / "bad").exists()
        assert message in capsys.readouterr().err


def test_vae_inputs_cut_frame_aligned_windows_with_the_vae_on_the_first_items(tiny):
    """The VAE sees the context; the generator gets the centred window of mel and wav, aligned frame for frame."""
    mel_cfg = tiny.model.mel
    hop, context, window = mel_cfg.hop_length, 10, 24
    n = (window + 2 * context) * hop
    wav = torch.stack([torch.from_numpy(chirp(200, 3000, n / mel_cfg.sample_rate)).float()[:n],
                       torch.from_numpy(chirp(500, 1500, n / mel_cfg.sample_rate)).float()[:n]])
    vae = load_frozen_vae(str(tiny_components()["vae"]), mel_cfg)
    mel, cut = vae_inputs(vae, wav, mel_cfg, 0.5, context, window)
    assert mel.shape == (2, mel_cfg.n_mels, window) and cut.shape == (2, window * hop)
    full = log_mel(wav, mel_cfg)
    # the second item is the real mel of the window, and the window's own mel matches it away from the edges
    # (where the window's STFT pads instead of seeing the context)
    assert torch.equal(mel[1], full[1, :, context: context + window])
    edge = mel_cfg.n_fft // hop
    own = log_mel(cut, mel_cfg)
    assert torch.allclose(own[1, :, edge:-edge], mel[1, :, edge:-edge], atol=1e-3)
    # the first item is the VAE's reconstruction of the whole context, cut to the window
    rebuilt = through_vae(vae, full[:1])[0, :, context: context + window]
    assert torch.allclose(mel[0], rebuilt, atol=1e-5) and not torch.allclose(mel[0], full[0, :, context: context + window])


def test_cli_trains_vocos_on_vae_reconstructions(tmp_path, capsys, repo_root):
    manifest = make_manifest(tmp_path)
    vae = tiny_components()["vae"]
    run = tmp_path / "run"
    config = str(repo_root / "configs/vocos/tiny.json")
    rc = main(["-q", "train", "vocos", "--config", config, "--out", str(run), "--set", f"data.manifest={manifest}",
               "--set", f"vae={json.dumps(str(vae))}", "--set", "vae_fraction=1.0"])
    assert rc == 0
    valid = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "valid"]
    assert valid and {"mel_l1", "mrstft", "vae_mel_l1"} <= set(valid[-1])
    assert np.isfinite(valid[-1]["vae_mel_l1"]) and valid[-1]["vae_mel_l1"] != valid[-1]["mel_l1"]
    assert vocoder_class(run / "final") is Vocos

    # a folder that is no VAE: one line naming the key, exit 1, nothing written
    capsys.readouterr()
    rc = main(["train", "vocos", "--config", config, "--out", str(tmp_path / "bad"),
               "--set", f"data.manifest={manifest}", "--set", f"vae={json.dumps(str(tmp_path))}"])
    err = capsys.readouterr().err
    assert rc == 1 and "vae=" in err and "Traceback" not in err and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("change, message", [({"vae_fraction": 1.5}, "vae_fraction"),
                                             ({"vae_context_seconds": -0.1}, "vae_context_seconds")])
def test_run_config_rejects_bad_vae_settings(tiny, change, message):
    with pytest.raises(ValueError, match=message):
        replace(tiny, **change)
