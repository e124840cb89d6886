"""Training-loop edge cases across the trainers: fine-tune sources (a VAE run's measured scale_factor, a vocoder
from an inference folder), a resume that shortens a run, validation of the EMA weights, and settings refused
up front (train.seed out of range, fp16 on the CPU) or kept for resume (fp16's loss scale)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from tests.test_ldm_fixtures import ROOT, one_thread  # noqa: F401 (one_thread: autouse)
from tests.test_training import TinyNet, TinyNetConfig, ToyRunConfig, run_toy
from tests.test_training import _tta_train as _cli
from tta.checkpoint import load_component, load_state_dict
from tta.config import apply_overrides, load_config, to_dict
from tta.training import RunError, TrainConfig, TrainingRun, make_optimizer




# ----------------------------------------------------- VAE decoder fine-tune from a run folder (finding 1)


def test_a_frozen_encoder_fine_tune_from_a_run_folder_keeps_the_measured_scale_factor(tmp_path, capsys):
    """A run's checkpoints are written before it measures scale_factor (they hold 1.0): from a run folder or
    its checkpoint, the fine-tune keeps the value in the run's final/, as `--init-from RUN/final` does."""
    from tests.test_training import _vae_manifest

    manifest = _vae_manifest(tmp_path)
    base = tmp_path / "base"
    assert _cli(capsys, "vae", base, f"data.manifest={manifest}", "valid_items=0")[0] == 0
    measured = float(load_state_dict(base / "final" / "model.safetensors")["scale_factor"])
    assert measured != 1.0
    assert float(load_state_dict(base / "checkpoints" / "step_2" / "vae" / "model.safetensors")["scale_factor"]) == 1.0
    for name, source in (("run", base), ("ckpt", base / "checkpoints" / "step_2")):
        rc, err = _cli(capsys, "vae", tmp_path / name, f"data.manifest={manifest}", "valid_items=0",
                       "freeze_encoder=true", "train.max_steps=1", extra=["--init-from", str(source)])
        assert rc == 0, err
        assert float(load_state_dict(tmp_path / name / "final" / "model.safetensors")["scale_factor"]) == measured
    # a run that never finished has no measured scale to keep: refused before a run folder is made
    shutil.copytree(base / "checkpoints", tmp_path / "unfinished" / "checkpoints")
    rc, err = _cli(capsys, "vae", tmp_path / "ft", f"data.manifest={manifest}", "freeze_encoder=true",
                   extra=["--init-from", str(tmp_path / "unfinished")])
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert "freeze_encoder" in err and "train.init_from" in err and "no final/" in err
    assert not (tmp_path / "ft").exists()


# ------------------------------------------------ vocoder fine-tune from an inference folder (finding 2)


def _speecht5_folder(folder):
    """A transformers SpeechT5HifiGan folder (what an imported AudioLDM holds) of a tiny HiFi-GAN with resblock
    type 1, the only one SpeechT5 has."""
    import dataclasses

    from tests.test_ldm_fixtures import tiny_model_config
    from vocoder.interop import export_speecht5
    from vocoder.model import HiFiGAN, HiFiGANConfig

    torch.manual_seed(3)
    config = dataclasses.replace(tiny_model_config(HiFiGANConfig, "vocoder"), resblock="1")
    return export_speecht5(HiFiGAN(config), folder)


@pytest.mark.parametrize("source", ["final", "pipeline", "speecht5"])
def test_a_vocoder_fine_tune_from_an_inference_folder_starts_from_the_same_function(tmp_path, monkeypatch,
                                                                                   caplog, source):
    """Component and pipeline folders hold HiFi-GAN with weight norm folded in; the trainer's generator gets
    it back (the same output at step 0) and the discriminators, which no such folder holds, start fresh."""
    import vocoder.train as vt
    from tests.test_ldm_fixtures import ROOT, tiny_pipeline
    from tests.test_vocoder_train import make_manifest
    from vocoder.interop import load_vocoder

    tiny = load_config(vt.RunConfig, ROOT / "configs" / "vocoder" / "tiny.json")
    sets = [f"data.manifest={json.dumps(make_manifest(tmp_path))}", "train.max_steps=1", "valid_items=0",
            "sample_items=0"]
    if source == "final":                 # a run's release folder
        folder = vocoder = vt.train(apply_overrides(tiny, sets), tmp_path / "base", progress=False)
    elif source == "pipeline":            # the generator is the pipeline's vocoder/
        folder = tiny_pipeline()
        vocoder = folder / "vocoder"
    else:
        folder = vocoder = _speecht5_folder(tmp_path / "speecht5")
        sets.append('model.resblock="1"')
    mel = torch.randn(1, 64, 12, generator=torch.Generator().manual_seed(0)) - 5
    with torch.no_grad():
        expected = load_vocoder(vocoder)(mel)

    seen = {}

    def no_batches(run, *args, **kwargs):          # stop at step 0, after restore(): look at the generator
        generator = run.unwrap(run._modules["generator"])
        seen["weight_norm"] = generator.config.weight_norm
        with torch.no_grad():
            seen["wav"] = generator.eval()(mel)
        return iter(())

    monkeypatch.setattr(TrainingRun, "batches", no_batches)
    cfg = apply_overrides(tiny, sets + [f"train.init_from={json.dumps(str(folder))}"])
    with caplog.at_level(logging.INFO, logger="tta.training"):
        vt.train(cfg, tmp_path / "ft", progress=False)
    assert seen["weight_norm"] is True
    torch.testing.assert_close(seen["wav"], expected, rtol=1e-5, atol=1e-6)
    assert "discriminator starts fresh" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "tta.training"]


def test_a_vocoder_fine_tune_from_a_runs_final_trains(tmp_path, capsys):
    from tests.test_vocoder_train import make_manifest

    manifest = make_manifest(tmp_path)
    sets = (f"data.manifest={manifest}", "train.max_steps=1", "valid_items=0", "sample_items=0")
    assert _cli(capsys, "vocoder", tmp_path / "base", *sets)[0] == 0
    rc, err = _cli(capsys, "vocoder", tmp_path / "ft", *sets, extra=["--init-from", str(tmp_path / "base" / "final")])
    assert rc == 0, err
    assert (tmp_path / "ft" / "final" / "model.safetensors").is_file()
    # not a vocoder: one line naming train.init_from
    disc = tmp_path / "ft" / "checkpoints" / "step_1" / "discriminator"
    rc, err = _cli(capsys, "vocoder", tmp_path / "ft2", *sets, extra=["--init-from", str(disc)])
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert f"train.init_from: {disc} is not a HiFi-GAN vocoder folder" in err


# --------------------------------------------------------- a resume that shortens the run (finding 3)


def test_a_resume_below_the_latest_checkpoint_stops_at_its_checkpoint_at_max_steps(tmp_path):
    weights = lambda folder: load_component(folder, TinyNet).state_dict()
    _, four = run_toy(tmp_path / "four", 4)
    run_toy(tmp_path / "cut", 8, stop_at=6)                   # killed after step 6; step_4 and step_6 kept
    run, cut = run_toy(tmp_path / "cut", 4, resume=True)      # then asked for a 4-step run
    assert run.step == 4
    assert all(torch.equal(weights(four)[k], weights(cut)[k]) for k in weights(four))
    assert [json.loads(r)["step"] for r in (tmp_path / "cut" / "metrics.jsonl").open()] == [1, 2, 3, 4]
    # no checkpoint at the new max_steps: refused, naming the setting and the steps there are
    run_toy(tmp_path / "odd", 8, stop_at=6)
    with pytest.raises(RunError, match=r"train.max_steps=5 is below the latest checkpoint's step 6 .*step_4, step_6"):
        run_toy(tmp_path / "odd", 5, resume=True)
    assert json.loads((tmp_path / "odd" / "config.json").read_text())["train"]["max_steps"] == 8


# ------------------------------------------------------- validation scores the EMA weights (finding 4)


def test_the_vocoder_validates_the_ema_weights_that_final_holds(tmp_path, monkeypatch):
    import vocoder.train as vt
    from tests.test_vocoder_train import make_manifest
    from vocoder.model import HiFiGAN

    scored = []
    validate = vt.validate

    def spy(run, generator, *args, **kwargs):
        scored.append(run.unwrap(generator).inference_copy().state_dict())
        return validate(run, generator, *args, **kwargs)

    monkeypatch.setattr(vt, "validate", spy)
    cfg = apply_overrides(load_config(vt.RunConfig, ROOT / "configs" / "vocoder" / "tiny.json"),
                          [f"data.manifest={json.dumps(make_manifest(tmp_path))}", "train.ema_decay=0.9",
                           "train.learning_rate=0.01"])
    final = load_component(vt.train(cfg, tmp_path / "run", progress=False), HiFiGAN).state_dict()
    assert len(scored) == 1
    assert all(torch.equal(scored[0][k], final[k]) for k in final)
    assert [json.loads(r)["step"] for r in (tmp_path / "run" / "metrics.jsonl").open()
            if json.loads(r)["split"] == "valid"] == [2]


def test_clap_validates_the_ema_weights_that_final_holds(tmp_path, monkeypatch):
    import tta.clap.train as ct
    from tests.clap_toy import make_corpus

    scored = []
    validate = ct.validate

    def spy(model, *args, **kwargs):
        scored.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return validate(model, *args, **kwargs)

    monkeypatch.setattr(ct, "validate", spy)
    manifest = make_corpus(tmp_path / "toy", per_kind_train=2, labels=True)
    cfg = apply_overrides(load_config(ct.RunConfig, ROOT / "configs" / "clap" / "tiny.json"),
                          [f"data.manifest={json.dumps(str(manifest))}", "train.ema_decay=0.9", "train.batch_size=8"])
    final = load_state_dict(ct.train(cfg, tmp_path / "run", progress=False) / "model.safetensors")
    assert len(scored) == 1
    trained = [k for k in final if k in scored[0] and final[k].is_floating_point()]
    assert trained and all(torch.equal(scored[0][k], final[k]) for k in trained)


# ------------------------------------------------------------------ settings refused up front (5, 6)


@pytest.mark.parametrize("seed", [-1, 2**32, 2**50])
def test_train_seed_out_of_range_is_refused_by_name(seed):
    with pytest.raises(ValueError, match=rf"train.seed={seed} must be in \[0, 2\*\*32\)"):
        TrainConfig(seed=seed)
    assert TrainConfig(seed=2**32 - 1).seed == 2**32 - 1


def test_tta_train_refuses_an_out_of_range_seed_before_making_a_run_folder(tmp_path, capsys):
    rc, err = _cli(capsys, "clap", tmp_path / "run", "data.manifest=unused.jsonl", "train.seed=-1")
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "train.seed=-1" in err
    assert not (tmp_path / "run").exists()


def test_fp16_on_the_cpu_is_refused_with_bf16_suggested(tmp_path, capsys):
    """accelerate makes no autocast and no loss scaler for fp16 on the CPU: the run would be float32."""
    with pytest.raises(ValueError, match=r"train.mixed_precision='fp16' needs a CUDA GPU.*'bf16'"):
        TrainConfig(mixed_precision="fp16", cpu=True)
    rc, err = _cli(capsys, "vae", tmp_path / "run", "data.manifest=unused.jsonl", 'train.mixed_precision="fp16"')
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "train.mixed_precision" in err and "bf16" in err
    assert not (tmp_path / "run").exists()
    if not torch.cuda.is_available():        # cpu: false on a machine without CUDA runs on the CPU too
        cfg = ToyRunConfig(train=TrainConfig(mixed_precision="fp16"))
        with pytest.raises(RunError, match=r"train.mixed_precision='fp16' needs a CUDA GPU.*'bf16'"):
            TrainingRun(tmp_path / "toy", cfg, cfg.train, progress=False)
        assert not (tmp_path / "toy").exists()
    assert TrainConfig(mixed_precision="bf16", cpu=True).mixed_precision == "bf16"    # bf16 runs on the CPU


# ---------------------------------------------------------------- fp16's loss scale survives resume (7)


def _scaled_run(out, *, resume):
    """A toy run whose accelerator carries a loss scaler (what fp16 on CUDA gets; a CPU GradScaler here)."""
    cfg = ToyRunConfig(train=TrainConfig(max_steps=4, batch_size=4, cpu=True))
    run = TrainingRun(out, cfg, cfg.train, resume=resume, progress=False)
    run.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    model = TinyNet(TinyNetConfig())
    opt = make_optimizer(model.parameters(), cfg.train)
    model, opt = run.prepare(model, opt)
    run.track(model=model, optimizer=opt)
    run.restore()
    return run


def test_the_loss_scale_is_checkpointed_and_restored(tmp_path):
    run = _scaled_run(tmp_path / "r", resume=False)
    scaler = run.accelerator.scaler
    scaler.scale(torch.ones(()))          # the scale tensor is made on first use
    scaler.update(37.0)                   # as if overflows had backed it off
    run.save_checkpoint()
    resumed = _scaled_run(tmp_path / "r", resume=True)
    assert resumed.accelerator.scaler.get_scale() == 37.0


# ----------------------------------------------------- a run begun before a field existed resumes as it began


@pytest.mark.parametrize("kind, key, config", [("vae", "loss.learn_logvar", "default.json"),
                                               ("ldm", "precompute_captions", "default.json")])
def test_a_run_from_before_a_field_resumes_with_the_behaviour_it_began_with(tmp_path, kind, key, config):
    """config.json of an older run lacks the field; read with the class default it differed from the shipped
    config (which states the old behaviour), and the resume was refused."""
    import importlib

    run_config = importlib.import_module("vae.train" if kind == "vae" else "tta.ldm.train").RunConfig
    cfg = load_config(run_config, ROOT / "configs" / kind / config)
    cfg = apply_overrides(cfg, ["train.cpu=true"])
    out = tmp_path / "run"
    out.mkdir()
    body = json.loads(json.dumps(to_dict(cfg)))
    *parents, name = key.split(".")
    node = body
    for part in parents:
        node = node[part]
    del node[name]                                  # as the older version wrote it
    (out / "config.json").write_text(json.dumps(body))
    TrainingRun(out, cfg, cfg.train, resume=True, progress=False)      # the shipped config: accepted
    other = apply_overrides(cfg, [f"{key}={json.dumps(False if kind == 'vae' else 'all')}"])
    with pytest.raises(RunError, match=f"first difference at '{key}'"):
        TrainingRun(out, other, other.train, resume=True, progress=False)


def test_a_clap_fine_tune_starts_from_a_pipeline_folders_text_encoder(tmp_path, monkeypatch):
    """`--init-from tta/assets/default` (a pipeline folder) failed for clap ("no weights for model there"): the
    CLAP trainer tracks `model`, and a pipeline keeps its CLAP as text_encoder/."""
    import tta.clap.train as ct
    from tests.test_ldm_fixtures import tiny_components, tiny_pipeline

    seen = {}

    def no_batches(run, *args, **kwargs):          # stop at step 0, after restore(): look at the model
        seen.update({k: v.detach().clone() for k, v in run.unwrap(run._modules["model"]).state_dict().items()})
        return iter(())

    monkeypatch.setattr(TrainingRun, "batches", no_batches)
    tiny = load_config(ct.RunConfig, ROOT / "configs" / "clap" / "tiny.json")
    cfg = apply_overrides(tiny, [f"data.manifest={json.dumps(str(tiny_components()['manifest']))}",
                                 f"train.init_from={json.dumps(str(tiny_pipeline()))}"])
    ct.train(cfg, tmp_path / "ft", progress=False)
    expected = load_state_dict(tiny_pipeline() / "text_encoder" / "model.safetensors")
    assert seen and set(expected) <= set(seen)
    assert all(torch.equal(seen[k], expected[k]) for k in expected)


def test_a_resume_refuses_a_manifest_whose_rows_changed(tmp_path, capsys):
    """--resume went on without a word after rows were added to the run's manifest (the same path): the resumed
    run trains on data neither the checkpoint's run nor a fresh one sees. The manifest's sha256 is recorded."""
    from tests.test_vocoder_train import make_manifest

    manifest = Path(make_manifest(tmp_path))
    sets = (f"data.manifest={manifest}", "train.max_steps=1", "valid_items=0", "sample_items=0")
    assert _cli(capsys, "vocoder", tmp_path / "run", *sets)[0] == 0
    record = json.loads((tmp_path / "run" / "data.json").read_text())
    assert [len(d) for d in record["manifests_sha256"].values()] == [64] and record["num_processes"] == 1
    assert _cli(capsys, "vocoder", tmp_path / "run", *sets, extra=["--resume"])[0] == 0    # unchanged: fine
    manifest.write_text(manifest.read_text() + manifest.read_text().splitlines()[0].replace('"id": "', '"id": "x') + "\n")
    rc, err = _cli(capsys, "vocoder", tmp_path / "run", *sets, extra=["--resume"])
    assert rc == 1 and "has changed since the run started" in err and err.count("\n") == 1, err
    # also when the resume extends the run (that branch returned before the check)
    longer = (*sets[:1], "train.max_steps=2", *sets[2:])
    rc, err = _cli(capsys, "vocoder", tmp_path / "run", *longer, extra=["--resume"])
    assert rc == 1 and "has changed since the run started" in err, err
    # and for data.extra_manifests, which the dataset reads too
    extra = tmp_path / "extra.jsonl"
    extra.write_text(manifest.read_text().splitlines()[0].replace('"id": "', '"id": "e') + "\n")
    with_extra = (*sets, f"data.extra_manifests={json.dumps([str(extra)])}")
    assert _cli(capsys, "vocoder", tmp_path / "run2", *with_extra)[0] == 0
    extra.write_text(extra.read_text() + extra.read_text().replace('"id": "e', '"id": "f'))
    rc, err = _cli(capsys, "vocoder", tmp_path / "run2", *with_extra, extra=["--resume"])
    assert rc == 1 and f"manifest {extra} has changed" in err, err
    assert _cli(capsys, "vocoder", tmp_path / "new", *sets)[0] == 0     # a fresh run records the new content


def test_a_run_begun_when_a_section_object_replaced_the_section_still_resumes(tmp_path, capsys):
    """`--set 'train={...}'` now sets only the keys it names; a run begun when it replaced the whole section was
    refused on --resume with the same command ("cannot resume with a different config")."""
    import vocoder.train as vt
    from tests.test_vocoder_train import make_manifest
    from tta.config import save_config

    manifest = make_manifest(tmp_path)
    sets = [f"data.manifest={manifest}", "valid_items=0", "sample_items=0",
            'train={"max_steps": 1, "batch_size": 2, "checkpoint_every": 1}']
    tiny = load_config(vt.RunConfig, ROOT / "configs" / "vocoder" / "tiny.json")
    began = apply_overrides(tiny, sets, merge_sections=False)           # what the run resolved then
    assert began != apply_overrides(tiny, sets)
    save_config(began, tmp_path / "began.json")
    assert _cli(capsys, "vocoder", tmp_path / "run", extra=["--config", str(tmp_path / "began.json")])[0] == 0
    rc, err = _cli(capsys, "vocoder", tmp_path / "run", *sets, extra=["--resume"])     # the run's own command
    assert rc == 0, err
    longer = [*sets[:-1], 'train={"max_steps": 2, "batch_size": 2, "checkpoint_every": 1}']   # and lengthened
    rc, err = _cli(capsys, "vocoder", tmp_path / "run", *longer, extra=["--resume"])
    assert rc == 0, err


def test_a_validation_lost_between_a_checkpoint_and_its_run_is_made_on_resume(tmp_path, capsys):
    """A run killed after writing a checkpoint and before validating it lost that validation for good (the
    checkpoint is written first); the resume now validates the checkpoint's weights before its next step."""
    from tests.test_vocoder_train import make_manifest

    manifest = make_manifest(tmp_path)
    sets = (f"data.manifest={manifest}", "train.max_steps=4", "train.checkpoint_every=2", "train.validate_every=2",
            "valid_items=1", "sample_items=0")
    run = tmp_path / "run"
    assert _cli(capsys, "vocoder", run, *sets)[0] == 0

    def valid_steps():
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [r["step"] for r in rows if r.get("split") == "valid"]

    assert valid_steps() == [2, 4]
    # as if killed right after checkpoints/step_2 was written: no validation row for it, nothing later
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows
                                               if r["step"] < 2 or (r["step"] == 2 and r.get("split") != "valid")))
    shutil.rmtree(run / "checkpoints" / "step_4")
    shutil.rmtree(run / "final")
    assert _cli(capsys, "vocoder", run, *sets, extra=["--resume"])[0] == 0
    assert valid_steps() == [2, 4]
