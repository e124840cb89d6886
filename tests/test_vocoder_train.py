"""HiFi-GAN training: the GAN step learns (overfitting one segment), and `tta train vocoder` writes a run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.signals import chirp, noise, tone
from tta.audio import log_mel, save_audio
from tta.checkpoint import load_component
from tta.cli import main
from tta.config import load_config
from tta.data.manifest import ManifestRow, write_manifest
from vocoder.discriminators import HiFiGANDiscriminator
from vocoder.losses import discriminator_loss, generator_loss
from vocoder.model import HiFiGAN
from vocoder.train import RunConfig


@pytest.fixture(autouse=True)
def _one_thread():
    # The tiny GAN's tensors are too small to gain from intra-op threads; on a shared machine a second
    # thread only adds synchronisation stalls (measured ~10x slower steps under load).
    torch.set_num_threads(1)
    yield


@pytest.fixture
def tiny(repo_root) -> RunConfig:
    return load_config(RunConfig, repo_root / "configs/vocoder/tiny.json")


def make_manifest(folder, sample_rate=16_000) -> str:
    clips = {"tone": tone(440, 0.6), "chirp": chirp(100, 3000, 0.7), "noise": noise(0.5, seed=1),
             "held": chirp(300, 1200, 0.6) + tone(880, 0.6, amplitude=0.2)}
    rows = []
    for name, wav in clips.items():
        save_audio(folder / f"{name}.wav", wav, sample_rate)
        rows.append(ManifestRow(id=name, path=f"{name}.wav", captions=(f"a {name}",), seconds=len(wav) / sample_rate,
                                sample_rate=sample_rate, split="valid" if name == "held" else "train"))
    return str(write_manifest(folder / "manifest.jsonl", rows))


def test_overfitting_one_segment_lowers_the_mel_loss(tiny):
    """Full GAN step (D update, then G update with adversarial + FM + mel terms) on one fixed segment."""
    torch.manual_seed(0)
    mel_cfg = tiny.model.mel
    wav = torch.from_numpy(chirp(200, 2000, 0.25))[None]          # (1, 4000): 25 hops of 160
    mel = log_mel(wav, mel_cfg)
    history = gan_steps(HiFiGAN(tiny.model).train(), tiny, wav, mel)
    first, last = np.mean(history[:3]), np.mean(history[-3:])
    assert last < 0.7 * first, history


def gan_steps(gen, run_config, wav, mel, steps: int = 20) -> list[float]:
    """`steps` full GAN steps of `gen` (any generator) against the run config's discriminators on one segment;
    returns the generator's mel L1 at each step."""
    disc = HiFiGANDiscriminator(run_config.discriminator).train()
    opt_g = torch.optim.AdamW(gen.parameters(), lr=2e-3, betas=(0.8, 0.99))
    opt_d = torch.optim.AdamW(disc.parameters(), lr=2e-4, betas=(0.8, 0.99))
    history = []
    for _ in range(steps):
        wav_hat = gen(mel)
        real, _ = disc(wav)
        fake, _ = disc(wav_hat.detach())
        loss_d = discriminator_loss(real, fake)
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        losses = generator_loss(disc, wav_hat, wav, run_config.model.mel, run_config.loss)
        opt_g.zero_grad()
        losses.total.backward()
        opt_g.step()
        assert torch.isfinite(losses.total) and torch.isfinite(loss_d)
        history.append(losses.mel_l1.item())
    return history


def test_cli_train_two_steps_writes_final_samples_and_metrics(tmp_path, repo_root):
    manifest = make_manifest(tmp_path)
    run = tmp_path / "run"
    rc = main(["-q", "train", "vocoder", "--config", str(repo_root / "configs/vocoder/tiny.json"), "--out", str(run),
               "--set", f"data.manifest={manifest}"])
    assert rc == 0
    model = load_component(run / "final", HiFiGAN)
    assert model.config.weight_norm is False
    assert not any("parametrizations" in k for k in model.state_dict())
    assert model(torch.zeros(1, 64, 5)).shape == (1, 800)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2]
    valid = [r for r in rows if r["split"] == "valid"]
    assert len(valid) == 1 and valid[0]["step"] == 2 and valid[0]["mel_l1"] > 0 and valid[0]["mrstft"] > 0
    samples = sorted(p.name for p in (run / "samples" / "step_2").iterdir())
    assert samples == ["0_held.png", "0_held.wav", "0_held_real.wav"]
    ckpt = run / "checkpoints" / "step_2"
    assert {p.name for p in ckpt.iterdir()} >= {"generator", "discriminator", "train_state.pt"}
    # the checkpointed generator still carries weight norm (it is the training form)
    assert load_component(ckpt / "generator", HiFiGAN).config.weight_norm is True


def test_resume_continues_bit_exactly(tmp_path, repo_root):
    manifest = make_manifest(tmp_path)
    common = ["-q", "train", "vocoder", "--config", str(repo_root / "configs/vocoder/tiny.json"),
              "--set", f"data.manifest={manifest}",
              "--set", "train.max_steps=3", "--set", "train.checkpoint_every=1", "--set", "train.keep_checkpoints=0",
              "--set", "valid_items=0", "--set", "sample_items=0"]
    assert main(common + ["--out", str(tmp_path / "a")]) == 0
    # simulate a run killed after step 2: drop the last checkpoint and the release folder, then resume
    b = tmp_path / "b"
    assert main(common + ["--out", str(b)]) == 0
    import shutil

    shutil.rmtree(b / "checkpoints" / "step_3")
    shutil.rmtree(b / "final")
    assert main(common + ["--out", str(b), "--resume"]) == 0
    wa = load_component(tmp_path / "a" / "final", HiFiGAN).state_dict()
    wb = load_component(b / "final", HiFiGAN).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_cli_reports_a_missing_manifest_as_one_line_error(tmp_path, capsys, repo_root):
    rc = main(["train", "vocoder", "--config", str(repo_root / "configs/vocoder/tiny.json"), "--out", str(tmp_path / "r"),
               "--set", f"data.manifest={tmp_path / 'nope.jsonl'}"])
    assert rc == 1
    assert "nope.jsonl" in capsys.readouterr().err


def test_run_config_rejects_segments_too_short_for_the_mel_loss(tiny):
    from dataclasses import replace

    with pytest.raises(ValueError, match="segment_seconds"):
        replace(tiny, data=replace(tiny.data, segment_seconds=0.05))


def test_generator_warmup_runs_without_the_discriminator_then_hands_over(tmp_path, repo_root):
    manifest = make_manifest(tmp_path)
    run = tmp_path / "run"
    rc = main(["-q", "train", "vocoder", "--config", str(repo_root / "configs/vocoder/tiny.json"), "--out", str(run),
               "--set", f"data.manifest={manifest}", "--set", "train.max_steps=3", "--set", "train.log_every=1",
               "--set", "disc_start=2", "--set", "valid_items=0", "--set", "sample_items=0"])
    assert rc == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("split", "train") == "train" and "loss_g" in r]
    assert [r["step"] for r in train] == [1, 2, 3]
    # steps 1-2: generator only (no discriminator loss logged), step 3: the adversarial objective
    assert "loss_d" not in train[0] and "loss_d" not in train[1] and train[0]["stft"] > 0
    assert "loss_d" in train[2] and "adv" in train[2]
    assert "stft" not in train[2]   # not computed with loss.stft 0: it was logged as 0.0, a perfect match


def test_the_discriminators_rate_decays_during_the_warm_up_without_torchs_ordering_warning(tmp_path, repo_root):
    """With disc_start > 0 the discriminators' LR schedule steps while they are off (the shipped runs trained so,
    and their resumes depend on it): they start at lr_decay ** disc_start x the rate here. Each such run printed
    torch's "Detected call of `lr_scheduler.step()` before `optimizer.step()`" warning, even under -q."""
    import warnings

    from tta.checkpoint import load_train_state

    manifest = make_manifest(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main(["-q", "train", "vocoder", "--config", str(repo_root / "configs/vocoder/tiny.json"), "--out",
                   str(tmp_path / "run"), "--set", f"data.manifest={manifest}", "--set", "train.max_steps=3",
                   "--set", "disc_start=2", "--set", "lr_decay=0.5", "--set", "lr_decay_every=1", "--set",
                   "train.checkpoint_every=1", "--set", "valid_items=0", "--set", "sample_items=0"])
    assert rc == 0
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)], [str(w.message) for w in caught]
    lr = 2e-4   # configs/vocoder/tiny.json
    for step in (2, 3):   # after steps 1-2 (generator only), and after the first discriminator step
        state = load_train_state(tmp_path / "run" / "checkpoints" / f"step_{step}" / "train_state.pt")
        rates = {name: state["optimizers"][name]["param_groups"][0]["lr"] for name in ("optimizer_g", "optimizer_d")}
        assert rates == {"optimizer_g": pytest.approx(lr * 0.5 ** step), "optimizer_d": pytest.approx(lr * 0.5 ** step)}


def test_run_config_rejects_a_negative_disc_start(tiny):
    from dataclasses import replace

    with pytest.raises(ValueError, match="disc_start"):
        replace(tiny, disc_start=-1)


def test_run_config_rejects_the_shared_cosine_schedule_and_names_an_unused_warm_up(tiny, caplog):
    from dataclasses import replace

    with pytest.raises(ValueError, match="lr_decay"):
        replace(tiny, train=replace(tiny.train, lr_schedule="cosine"))
    with caplog.at_level("WARNING", logger="vocoder.train"):   # accepted and ignored without a word before (a run
        replace(tiny, train=replace(tiny.train, warmup_steps=100))    # begun with them must still resume)
        replace(tiny, valid_seconds=0.1)
    assert "train.warmup_steps=100 is not used" in caplog.text and "valid_seconds=0.1 gives 1600 samples" in caplog.text


def test_validation_means_cover_the_clips_it_scored(tmp_path, repo_root):
    """A held-out clip too short to score was skipped but counted, halving the logged means."""
    manifest = make_manifest(tmp_path)
    rows = [json.loads(line) for line in open(manifest)]
    save_audio(tmp_path / "blip.wav", tone(440, 0.09), 16_000)
    blip = {**rows[0], "id": "a_blip", "path": "blip.wav", "seconds": 0.09, "split": "valid"}
    (tmp_path / "with_blip.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [blip, *rows]))
    logged = []
    for name, items in ((manifest, 1), (str(tmp_path / "with_blip.jsonl"), 2)):
        run = tmp_path / f"run{items}"
        assert main(["-q", "train", "vocoder", "--config", str(repo_root / "configs/vocoder/tiny.json"), "--out",
                     str(run), "--set", f"data.manifest={name}", "--set", "train.max_steps=1", "--set",
                     f"valid_items={items}", "--set", "sample_items=0"]) == 0
        logged.append([json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()
                       if json.loads(x)["split"] == "valid"][0])
    assert logged[1]["mel_l1"] == pytest.approx(logged[0]["mel_l1"])   # the one clip scored, not half of it


def test_exporting_a_run_that_has_not_finished_names_the_checkpoint_to_use(tmp_path, repo_root, capsys):
    """`--vocoder RUN` without final/ read the run's own config.json as a component: 'expected keys class, ...'."""
    import shutil

    from tests.test_ldm_fixtures import tiny_pipeline

    manifest = make_manifest(tmp_path)
    run = tmp_path / "run"
    assert main(["-q", "train", "vocoder", "--config", str(repo_root / "configs/vocoder/tiny.json"), "--out", str(run),
                 "--set", f"data.manifest={manifest}", "--set", "train.max_steps=1", "--set", "valid_items=0",
                 "--set", "sample_items=0"]) == 0
    shutil.rmtree(run / "final")
    capsys.readouterr()
    assert main(["-q", "export", "pipeline", str(tiny_pipeline()), "--out", str(tmp_path / "p"), "--vocoder",
                 str(run)]) == 1
    err = capsys.readouterr().err
    assert "a training run that has not finished (no final/)" in err and "step_1/generator" in err, err


def test_a_resume_refuses_a_changed_vae_and_records_threads_and_the_init_checkpoint(tmp_path, repo_root, capsys,
                                                                                      caplog):
    """data.json hashed the manifests only: a frozen component changed under the same path (here the vocoder's
    `vae`) resumed into another run without a word; the thread count, on which CPU bits depend, was not
    recorded; and `--init-from RUN` recorded the folder, which `--config RUN/config.json` later resolved to a newer
    checkpoint."""
    import shutil

    from tests.test_ldm_fixtures import tiny_components
    from tta.checkpoint import load_state_dict, save_safetensors

    manifest = make_manifest(tmp_path)
    vae = tmp_path / "vae"
    shutil.copytree(tiny_components()["vae"], vae)
    common = ["-q", "train", "vocoder", "--config", str(repo_root / "configs/vocoder/tiny.json"),
              "--set", f"data.manifest={manifest}", "--set", f"vae={vae}", "--set", "train.checkpoint_every=1",
              "--set", "valid_items=0", "--set", "sample_items=0"]
    run = tmp_path / "run"
    assert main([*common, "--out", str(run), "--set", "train.max_steps=1"]) == 0
    record = json.loads((run / "data.json").read_text())
    assert record["threads"] == torch.get_num_threads() and set(record["inputs_sha256"]) == {"vae"}
    weights = vae / "model.safetensors"
    state, original = load_state_dict(weights), weights.read_bytes()
    save_safetensors({k: v * 1.01 if v.is_floating_point() else v for k, v in state.items()}, weights)
    capsys.readouterr()
    assert main([*common, "--out", str(run), "--set", "train.max_steps=2", "--resume"]) == 1
    err = capsys.readouterr().err
    assert f"vae={str(vae)!r} has changed since the run started" in err, err
    weights.write_bytes(original)
    with caplog.at_level("WARNING", logger="tta.training"):
        torch.set_num_threads(2)
        try:
            assert main([*common, "--out", str(run), "--set", "train.max_steps=2", "--resume"]) == 0
        finally:
            torch.set_num_threads(1)
    assert any("resumed with 2 CPU threads, started with 1" in r.message for r in caplog.records)
    tuned = tmp_path / "tuned"
    assert main([*common, "--out", str(tuned), "--set", "train.max_steps=1", "--init-from", str(run)]) == 0
    saved = json.loads((tuned / "config.json").read_text())["train"]["init_from"]
    assert saved == str(run / "checkpoints" / "step_2")


def test_a_run_begun_by_an_earlier_tta_is_guarded_from_its_first_resume_on(tmp_path, repo_root):
    """data.json of an earlier tta holds no input hashes: a resume checked nothing and added nothing, so a
    rebuilt datastore or changed VAE went on unseen at every later resume too."""
    import shutil

    from tests.test_ldm_fixtures import tiny_components

    manifest = make_manifest(tmp_path)
    vae = tmp_path / "vae"
    shutil.copytree(tiny_components()["vae"], vae)
    common = ["-q", "train", "vocoder", "--config", str(repo_root / "configs/vocoder/tiny.json"),
              "--set", f"data.manifest={manifest}", "--set", f"vae={vae}", "--set", "train.checkpoint_every=1",
              "--set", "valid_items=0", "--set", "sample_items=0", "--out", str(tmp_path / "run")]
    assert main([*common, "--set", "train.max_steps=1"]) == 0
    record = tmp_path / "run" / "data.json"
    old = json.loads(record.read_text())
    record.write_text(json.dumps({k: old[k] for k in ("manifests_sha256", "num_processes")}))
    assert main([*common, "--set", "train.max_steps=2", "--resume"]) == 0
    assert set(json.loads(record.read_text())) >= {"inputs_sha256", "threads", "cwd"}
    (vae / "config.json").write_text((vae / "config.json").read_text() + " ")
    assert main([*common, "--set", "train.max_steps=3", "--resume"]) == 1


def test_a_damaged_data_json_stops_the_resume_it_guards(tmp_path, repo_root, capsys):
    """A data.json that was not JSON (or not the run's record) turned the manifest check off and was overwritten
    with the changed manifest's hash."""
    manifest = make_manifest(tmp_path)
    common = ["-q", "train", "vocoder", "--config", str(repo_root / "configs/vocoder/tiny.json"),
              "--set", f"data.manifest={manifest}", "--set", "train.checkpoint_every=1", "--set", "valid_items=0",
              "--set", "sample_items=0", "--out", str(tmp_path / "run")]
    assert main([*common, "--set", "train.max_steps=1"]) == 0
    (tmp_path / "run" / "data.json").write_text("garbage")
    capsys.readouterr()
    assert main([*common, "--set", "train.max_steps=2", "--resume"]) == 1
    assert "data.json: not the record this run wrote" in capsys.readouterr().err


def test_a_record_of_the_first_data_json_form_still_guards_the_resume(tmp_path, repo_root, capsys):
    """data.json first held {"manifest", "manifest_sha256"}: a resume of such a run checks that manifest (it was
    refused as a damaged record)."""
    import hashlib

    manifest = make_manifest(tmp_path)
    common = ["-q", "train", "vocoder", "--config", str(repo_root / "configs/vocoder/tiny.json"),
              "--set", f"data.manifest={manifest}", "--set", "train.checkpoint_every=1", "--set", "valid_items=0",
              "--set", "sample_items=0", "--out", str(tmp_path / "run")]
    assert main([*common, "--set", "train.max_steps=1"]) == 0
    digest = hashlib.sha256(open(manifest, "rb").read()).hexdigest()
    record = tmp_path / "run" / "data.json"
    record.write_text(json.dumps({"manifest": manifest, "manifest_sha256": digest}))
    assert main([*common, "--set", "train.max_steps=2", "--resume"]) == 0
    record.write_text(json.dumps({"manifest": manifest, "manifest_sha256": "0" * 64}))
    capsys.readouterr()
    assert main([*common, "--set", "train.max_steps=3", "--resume"]) == 1
    assert "has changed since the run started" in capsys.readouterr().err


def test_a_runs_init_from_loader_draws_as_building_the_generator_does(tiny):
    """Loaders keep the global random generators now, but a vocoder run's init_from loader still draws from
    the seeded streams exactly as building the generator does (inside tta.checkpoint.loads_draw), as the
    recorded runs' did: the random state after it, which the run's checkpoints record, stays theirs."""
    from tests.test_ldm_fixtures import tiny_components
    from tta.checkpoint import read_component_config
    from tta.config import from_dict
    from vocoder.model import HiFiGANConfig
    from vocoder.train import weight_norm_state

    folder = tiny_components()["vocoder"]
    generator = HiFiGAN(tiny.model)
    torch.manual_seed(5)
    HiFiGAN(from_dict(HiFiGANConfig, read_component_config(folder)["config"]))
    built = torch.rand(3)
    torch.manual_seed(5)
    state = weight_norm_state(folder, generator)
    assert torch.equal(torch.rand(3), built)
    assert state.keys() == generator.state_dict().keys()
