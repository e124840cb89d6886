"""Griffin-Lim with a learned magnitude post-net: an untrained one vocodes like `GriffinLim`, training fits
true magnitudes better than the NNLS inversion it starts from, `tta train postnet` writes a run (also from a
VAE's reconstructions), and a pipeline can carry it as its vocoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.signals import chirp, noise, tone
from tests.test_ldm_fixtures import one_thread, tiny_components, tiny_pipeline  # noqa: F401  (fixture)
from tests.test_vocoder_train import make_manifest
from tta.checkpoint import load_component
from tta.cli import main
from tta.config import load_config
from vocoder.griffinlim import GriffinLim, GriffinLimConfig
from vocoder.postnet import PostnetGriffinLim, PostnetGriffinLimConfig, magnitude_loss
from vocoder.postnet_train import RunConfig, targets


@pytest.fixture
def tiny(repo_root) -> RunConfig:
    return load_config(RunConfig, repo_root / "configs/postnet/tiny.json")


def test_an_untrained_postnet_vocodes_like_griffin_lim(tiny):
    torch.manual_seed(0)
    c = tiny.model
    wav = torch.from_numpy(chirp(200, 3000, 0.3) + noise(0.3, seed=2, amplitude=0.05))[None]
    net = PostnetGriffinLim(c).eval()
    gl = GriffinLim(GriffinLimConfig(mel=c.mel, n_iter=c.n_iter, momentum=c.momentum, nnls_iter=c.nnls_iter))
    mel, _ = targets(net, wav)
    a, b = net(mel), gl(mel)
    assert a.shape == b.shape == (1, mel.shape[-1] * c.mel.hop_length)
    # the magnitudes are equal wherever the NNLS solution is above the floor (1e-3, where a full-scale sine
    # peaks near 256) and held at the floor below it; the phase search then barely moves
    mine, base = net.magnitude(mel), gl.magnitude(mel)
    above = base >= c.floor
    assert torch.allclose(mine[above], base[above], rtol=1e-5)
    assert torch.allclose(mine[~above], torch.full_like(mine[~above], c.floor), rtol=1e-5)
    assert float((a - b).abs().max()) < 1e-2 * float(b.abs().max())
    assert float(net.vocode(mel, c.mel).sub(a).abs().max()) == 0.0


def test_magnitude_loss_is_zero_at_the_target_and_weights_loud_bins():
    target = torch.rand(2, 9, 7) + 0.1
    total, parts = magnitude_loss(torch.log(target), target, floor=1e-3)
    assert float(total) < 1e-6 and float(parts["sc"]) < 1e-6
    loud = target.clone()
    loud[:, 0] *= 100                                   # one loud bin row dominates the norm
    off = torch.log(loud).clone()
    off[:, 0] += 0.1
    _, parts = magnitude_loss(off, loud, floor=1e-3)
    assert float(parts["log_l1"]) == pytest.approx(0.1 / 9, rel=1e-4)
    assert float(parts["sc"]) > 0.09                   # ~ exp(0.1) - 1 of almost all the energy


def test_fitting_one_segment_beats_the_nnls_inversion(tiny):
    torch.manual_seed(0)
    c = tiny.model
    wav = tone(330, 0.4) + tone(1250, 0.4, amplitude=0.3) + noise(0.4, seed=3, amplitude=0.02)
    wav = torch.from_numpy(wav)[None]
    wav = wav[:, : wav.shape[-1] // 160 * 160]
    net = PostnetGriffinLim(c).train()
    mel, target = targets(net, wav)
    nnls, _ = magnitude_loss(torch.log(net.nnls_magnitude(mel).clamp_min(c.floor)), target, c.floor)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(60):
        loss, _ = magnitude_loss(net.log_magnitude(mel), target, c.floor)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * nnls.item()


def test_cli_trains_from_vae_reconstructions_and_the_run_exports_into_a_pipeline(tmp_path, capsys, repo_root):
    from tta.ldm.folder import vocoder_class
    from tta.pipeline import TTAPipeline

    manifest = make_manifest(tmp_path)
    vae = tiny_components()["vae"]
    run = tmp_path / "run"
    config = str(repo_root / "configs/postnet/tiny.json")
    rc = main(["-q", "train", "postnet", "--config", config, "--out", str(run),
               "--set", f"data.manifest={json.dumps(manifest)}", "--set", f"vae={json.dumps(str(vae))}"])
    assert rc == 0
    valid = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "valid"]
    expected = {"log_l1", "sc", "nnls_log_l1", "nnls_sc", "vae_log_l1", "vae_sc", "vae_nnls_sc"}
    assert valid and expected <= set(valid[-1])
    assert all(np.isfinite(v) for v in valid[-1].values() if isinstance(v, float))
    assert list((run / "samples" / "step_2").glob("*.png"))
    assert vocoder_class(run / "final") is PostnetGriffinLim
    model = load_component(run / "final", PostnetGriffinLim)
    assert model.config.channels == 16

    out = tmp_path / "packed"
    assert main(["-q", "export", "pipeline", str(tiny_pipeline()), "--out", str(out),
                 "--vocoder", str(run)]) == 0
    spec = json.loads((out / "vocoder" / "config.json").read_text())
    assert spec["class"] == "vocoder.postnet.PostnetGriffinLim"
    pipe = TTAPipeline.from_pretrained(out)
    assert isinstance(pipe.vocoder, PostnetGriffinLim)
    wav = pipe(["a tone sound"], seconds=0.32, steps=2, sampler="ddim", seed=0).wavs[0]
    assert wav.shape == (5120,) and np.isfinite(wav).all()

    # a folder that is no VAE: one line naming the key, exit 1, nothing written
    capsys.readouterr()
    rc = main(["train", "postnet", "--config", config, "--out", str(tmp_path / "bad"),
               "--set", f"data.manifest={json.dumps(manifest)}", "--set", f"vae={json.dumps(str(tmp_path))}"])
    err = capsys.readouterr().err
    assert rc == 1 and "vae=" in err and "Traceback" not in err and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("change, message", [({"kernel_size": 4}, "kernel_size"), ({"floor": 0.0}, "floor"),
                                             ({"channels": 0}, "channels")])
def test_bad_postnet_config_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        PostnetGriffinLimConfig(**change)


def test_adversarial_training_logs_its_losses_and_resumes_exactly(tmp_path, repo_root):
    from safetensors.torch import load_file

    manifest = make_manifest(tmp_path)
    args = ["-q", "train", "postnet", "--config", str(repo_root / "configs/postnet/tiny.json"),
            "--set", f"data.manifest={json.dumps(manifest)}", "--set", "adversarial=0.1",
            "--set", "feature_matching=0.2", "--set", "disc_start=1", "--set", "valid_items=0",
            "--set", "sample_items=0"]
    assert main([*args, "--out", str(tmp_path / "straight"), "--set", "train.max_steps=4"]) == 0
    assert main([*args, "--out", str(tmp_path / "split"), "--set", "train.max_steps=2"]) == 0
    assert main([*args, "--out", str(tmp_path / "split"), "--set", "train.max_steps=4", "--resume"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert "loss_d" not in rows[0] and all(k in rows[-1] for k in ("loss_d", "adv", "fm"))   # from step 1 on
    a = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    b = load_file(tmp_path / "split" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "split" / "checkpoints" / "step_4" / "discriminator").is_dir()


def test_validation_scores_the_ema_weights_and_a_pipeline_seeds_a_fine_tune(tmp_path, repo_root, monkeypatch):
    """The post-net validated its raw weights while final/ holds the EMA's (the other trainers score the EMA);
    and `--init-from` a pipeline folder, which the help offers, was refused (no weights for 'model' there)."""
    import vocoder.postnet_train as postnet_train

    manifest = make_manifest(tmp_path)
    seen = []
    real = postnet_train.validate
    monkeypatch.setattr(postnet_train, "validate",
                        lambda run, model, *a, **k: (seen.append(run.unwrap(model).state_dict()), real(run, model, *a, **k))[1])
    args = ["-q", "train", "postnet", "--config", str(repo_root / "configs/postnet/tiny.json"),
            "--set", f"data.manifest={json.dumps(manifest)}", "--set", "train.ema_decay=0.9"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    final = load_component(tmp_path / "run" / "final", PostnetGriffinLim).state_dict()
    assert seen and all(torch.equal(seen[-1][k], final[k]) for k in final)
    out = tmp_path / "packed"
    assert main(["-q", "export", "pipeline", str(tiny_pipeline()), "--out", str(out), "--vocoder",
                 str(tmp_path / "run")]) == 0
    assert main([*args, "--out", str(tmp_path / "tuned"), "--init-from", str(out), "--set", "train.max_steps=1"]) == 0
