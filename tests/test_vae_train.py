"""`tta train vae` end to end on a tiny manifest of synthetic wavs: files written, metrics, resume refusal."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.signals import chirp, clicks, noise, tone
from tta.audio import save_audio
from tta.cli import main
from tta.data.manifest import ManifestRow, write_manifest


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae_data")
    signals = {
        "tone": tone(440, 1.0),
        "chirp": chirp(100, 7000, 1.0),
        "noise": noise(1.0, seed=1),
        "clicks": clicks(1.0),
        "mix": tone(880, 1.0) + noise(1.0, amplitude=0.05, seed=2),
        "low": tone(150, 1.0),
    }
    rows = []
    for i, (name, wav) in enumerate(signals.items()):
        path = save_audio(root / f"{name}.wav", np.clip(wav, -1, 1), 16_000)
        rows.append(
            ManifestRow(
                id=name,
                path=str(path),
                captions=(f"a {name}",),
                seconds=1.0,
                sample_rate=16_000,
                split="valid" if i >= 4 else "train",
            )
        )
    return write_manifest(root / "manifest.jsonl", rows)


def _train(repo_root, out, manifest, *extra):
    return main(
        [
            "-q",
            "train",
            "vae",
            "--config",
            str(repo_root / "configs/vae/tiny.json"),
            "--out",
            str(out),
            "--set",
            f"data.manifest={manifest}",
            *extra,
        ]
    )


def test_cli_two_steps_writes_final_metrics_and_pngs(repo_root, tmp_path, manifest, capsys):
    from tta.checkpoint import load_component
    from vae.model import MelVAE

    out = tmp_path / "run"
    assert _train(repo_root, out, manifest) == 0
    assert (out / "final" / "config.json").is_file() and (out / "final" / "model.safetensors").is_file()
    assert (out / "checkpoints" / "step_2" / "train_state.pt").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2]
    assert "d_loss" in train_rows[1] and "d_loss" not in train_rows[0]  # tiny: discriminator from step 1
    valid = [r for r in rows if r["split"] == "valid"]
    assert len(valid) == 1 and valid[0]["step"] == 2
    assert all(np.isfinite(valid[0][k]) for k in ("mel_l1", "lsd_db", "snr_db"))
    pngs = sorted((out / "samples" / "step_2").glob("*.png"))
    assert [p.name for p in pngs] == ["mix.png"] and pngs[0].read_bytes()[:4] == b"\x89PNG"
    final = next(r for r in rows if r["split"] == "final")
    vae = load_component(out / "final", MelVAE)
    assert float(vae.scale_factor) == pytest.approx(final["scale_factor"]) and final["scale_factor"] != 1.0
    assert vae.config.scale_factor == pytest.approx(final["scale_factor"])
    mel = torch.randn(1, 64, 30) - 6
    assert vae(mel, sample=False)[0].shape == mel.shape


def test_cli_resume_with_a_different_config_is_refused(repo_root, tmp_path, manifest, capsys):
    out = tmp_path / "run"
    assert _train(repo_root, out, manifest, "--set", "train.max_steps=1", "--set", "valid_items=0") == 0
    capsys.readouterr()
    code = _train(
        repo_root,
        out,
        manifest,
        "--set",
        "train.max_steps=1",
        "--set",
        "valid_items=0",
        "--set",
        "loss.kl_weight=1.0",
        "--resume",
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "cannot resume with a different config" in err and "loss.kl_weight" in err


def test_resume_continues_bit_exactly(repo_root, tmp_path, manifest):
    """Both optimizers, the scheduler, the loss module (logvar + discriminator) and RNG are restored."""
    from safetensors.torch import load_file

    common = [
        "--set",
        "valid_items=0",
        "--set",
        "train.checkpoint_every=1",
        "--set",
        "train.keep_checkpoints=0",
        "--set",
        "train.max_steps=3",
    ]  # the discriminator (on from step 1) has optimizer state at step 2
    assert _train(repo_root, tmp_path / "full", manifest, *common) == 0
    cut = tmp_path / "cut"
    assert _train(repo_root, cut, manifest, *common) == 0
    import shutil

    shutil.rmtree(cut / "checkpoints" / "step_3")  # as if killed after the checkpoint of step 2
    shutil.rmtree(cut / "final")
    assert _train(repo_root, cut, manifest, *common, "--resume") == 0
    a = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    b = load_file(str(cut / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    d_a = load_file(str(tmp_path / "full" / "checkpoints" / "step_3" / "loss" / "model.safetensors"))
    d_b = load_file(str(cut / "checkpoints" / "step_3" / "loss" / "model.safetensors"))
    assert all(torch.equal(d_a[k], d_b[k]) for k in d_a)


def test_freeze_encoder_fine_tunes_the_decoder_and_keeps_the_latent_space(repo_root, tmp_path, manifest, capsys):
    """A decoder fine-tune from a trained VAE: encoder and scale_factor untouched, decoder changed."""
    from safetensors.torch import load_file

    base = tmp_path / "base"
    assert _train(repo_root, base, manifest, "--set", "valid_items=0") == 0
    ft = tmp_path / "ft"
    assert _train(repo_root, ft, manifest, "--set", "valid_items=0", "--set", "freeze_encoder=true",
                  "--set", "train.max_steps=3", "--init-from", str(base / "final")) == 0
    a = load_file(str(base / "final" / "model.safetensors"))
    b = load_file(str(ft / "final" / "model.safetensors"))
    frozen = [k for k in a if k.startswith(("net.encoder.", "net.quant_conv."))]
    decoder = [k for k in a if k.startswith("net.decoder.")]
    assert frozen and decoder
    assert all(torch.equal(a[k], b[k]) for k in frozen)
    assert any(not torch.equal(a[k], b[k]) for k in decoder)
    assert torch.equal(a["scale_factor"], b["scale_factor"]) and float(b["scale_factor"]) != 1.0
    assert json.loads((ft / "final" / "config.json").read_text())["config"]["scale_factor"] == pytest.approx(
        float(a["scale_factor"]))

    capsys.readouterr()
    assert _train(repo_root, tmp_path / "bad", manifest, "--set", "freeze_encoder=true") != 0
    err = capsys.readouterr().err
    assert "freeze_encoder" in err and "init_from" in err and "Traceback" not in err
    assert not (tmp_path / "bad" / "final").exists()


@pytest.mark.parametrize("learn", [False, True])
def test_the_output_log_variance_is_fixed_unless_asked_as_upstream_trains_it(repo_root, tmp_path, manifest, learn):
    """AudioLDM's and LDM's optimizers leave the loss's logvar out, so kl_weight keeps its meaning; tta trained
    it always. Now it stays at logvar_init unless loss.learn_logvar is true (tta's own VAE configs set it)."""
    from tta.checkpoint import load_state_dict

    out = tmp_path / f"run-{learn}"
    assert _train(repo_root, out, manifest, "--set", "train.max_steps=3", "--set", "train.checkpoint_every=3",
                  "--set", f"loss.learn_logvar={json.dumps(learn)}", "--set", "loss.logvar_init=0.5",
                  "--set", "train.learning_rate=0.01") == 0
    state = load_state_dict(out / "checkpoints" / "step_3" / "loss" / "model.safetensors")
    assert (float(state["logvar"]) != 0.5) == learn


def test_segments_too_short_for_the_discriminator_are_refused_up_front(repo_root, tmp_path, manifest, capsys):
    code = _train(repo_root, tmp_path / "run", manifest, "--set", "data.segment_seconds=0.2", "--set",
                  "loss.disc_num_layers=3", "--set", "loss.disc_start=1")
    err = capsys.readouterr().err
    assert code == 1 and "needs at least 24 of each" in err and "data.segment_seconds=0.2" in err
    assert not (tmp_path / "run").exists()


def test_a_manifest_with_no_held_out_rows_trains_without_validation_and_says_so(repo_root, tmp_path, manifest,
                                                                                 caplog):
    """vae (and vocoder) stopped with "split 'valid' has no rows" where clap trained on with a warning; nothing
    said that valid_items=0 would do."""
    from tta.data.manifest import DataConfig, read_manifest, write_manifest
    from vocoder.train import held_out_set

    rows = [r for r in read_manifest(manifest) if r.split == "train"]
    train_only = write_manifest(tmp_path / "train-only.jsonl", rows)
    with caplog.at_level("WARNING"):
        assert _train(repo_root, tmp_path / "run", train_only, "--set", "train.max_steps=1") == 0
        assert held_out_set(DataConfig(manifest=str(train_only)), 16_000, 1.0) is None
    assert caplog.text.count("no validation:") == 2 and "valid_items=0" in caplog.text
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in rows if r["split"] == "valid"]


def test_train_takes_a_dict_config_as_its_json_file_reads(repo_root, tmp_path, manifest):
    """vae.train.train(dict, out) failed on "'dict' object has no attribute 'model'"."""
    from tta.config import from_dict, load_config
    from vae.train import RunConfig, train

    data = json.loads((repo_root / "configs/vae/tiny.json").read_text())
    data["data"]["manifest"] = str(manifest)
    data["train"]["max_steps"] = 1
    data["valid_items"] = 0
    final = train(data, tmp_path / "run", progress=False)
    assert (final / "model.safetensors").is_file()
    assert load_config(RunConfig, tmp_path / "run" / "config.json") == from_dict(RunConfig, data)
