"""`tta train KIND --resume` on a run stopped before its first checkpoint starts it again from step 0 once what
the restart would be refused on is checked: each trainer's own refusals too (the VAE's freeze_encoder, the
LDM's components, `trainable` and the fit of its UNet, vocoder and datastore to them, a vocoder's frozen VAE),
which ran only after the stopped run was cleared, so a restart they refused left its folder without the
config.json that `--config RUN/config.json` names."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

from tests.test_ldm_fixtures import ROOT, one_thread, tiny_components  # noqa: F401 (one_thread: autouse)
from tests.test_training import _vae_manifest


def _stopped_run(kind: str, out: Path, sets: list[str]) -> None:
    """What a run killed before its first checkpoint leaves in `out` (config.json, data.json): its TrainingRun
    set up, nothing trained."""
    from tta.cli import TRAINERS
    from tta.config import apply_overrides, load_config
    from tta.training import TrainingRun

    module = importlib.import_module(TRAINERS[kind])
    config = apply_overrides(load_config(module.RunConfig, ROOT / "configs" / kind / "tiny.json"), sets)
    TrainingRun(out, config, config.train, progress=False)
    assert (out / "config.json").is_file() and not (out / "checkpoints").exists()


def _ldm_sets() -> list[str]:
    c = tiny_components()
    return [f"data.manifest={json.dumps(str(c['manifest']))}",
            *(f"components.{name}={json.dumps(str(c[name]))}" for name in ("vae", "vocoder", "clap"))]


def _case(name: str, tmp_path: Path) -> tuple[str, list[str], dict, str]:
    """(kind, the stopped run's --set, the edit of its config.json, what the refusal says)."""
    empty = tmp_path / "empty"     # a folder with no component in it
    empty.mkdir(exist_ok=True)
    manifest = [f"data.manifest={json.dumps(str(_vae_manifest(tmp_path)))}"]
    if name == "vae-freeze-encoder-without-init-from":
        return "vae", manifest, {"freeze_encoder": True}, "freeze_encoder=true fine-tunes the decoder"
    if name == "vae-freeze-encoder-from-a-run-without-final":
        source = tmp_path / "source"   # a run still training: a checkpoint, no final/
        (source / "checkpoints" / "step_1").mkdir(parents=True)
        return "vae", manifest, {"freeze_encoder": True, "train": {"init_from": str(source)}}, "has no final/"
    if name == "ldm-vae-folder-without-a-component":
        return "ldm", _ldm_sets(), {"components": {"vae": str(empty)}}, "components.vae=" \
            f"{empty}: not a component folder (no config.json)"
    if name == "ldm-no-clap":
        return "ldm", _ldm_sets(), {"components": {"clap": ""}}, "components.clap='': CLAP model not found"
    if name == "ldm-trainable-matching-nothing":
        return "ldm", _ldm_sets(), {"trainable": ["nothing.*"]}, "trainable: 'nothing.*' matches no UNet parameter"
    if name == "ldm-unet-not-fitting-the-vae":
        return "ldm", _ldm_sets(), {"model": {"latent_channels": 8}}, \
            "model.latent_channels=8 differs from the VAE's latent_channels=4"
    if name == "ldm-vocoder-in-another-mel-space":
        from dataclasses import replace

        from tests.test_ldm_fixtures import tiny_model_config
        from tta.checkpoint import save_component
        from vocoder.model import HiFiGAN, HiFiGANConfig

        config = tiny_model_config(HiFiGANConfig, "vocoder")
        save_component(tmp_path / "vocoder", HiFiGAN(replace(config, mel=replace(config.mel, n_mels=80))))
        return "ldm", _ldm_sets(), {"components": {"vocoder": str(tmp_path / "vocoder")}}, \
            "mel config of components.vae differs from components.vocoder"
    if name == "ldm-more-neighbours-than-the-datastore-holds":
        from tta.clap import load_clap
        from tta.retrieval import DatastoreConfig, build_datastore

        c = tiny_components()
        build_datastore(c["manifest"], load_clap(c["clap"]), tmp_path / "store", DatastoreConfig(split="train"),
                        progress=False)   # 6 clips
        sets = [*_ldm_sets(), f"retrieval.datastore={json.dumps(str(tmp_path / 'store'))}", "retrieval.neighbours=2"]
        return "ldm", sets, {"retrieval": {"neighbours": 6}}, "k=6 neighbours (+1: the query clip itself is " \
            "excluded in training) but the datastore holds only 6 entries"
    kind, _, what = name.partition("-")
    if what == "held-out-audio-file-missing":
        (tmp_path / "clicks.wav").unlink()   # the manifest's one valid row
        return kind, manifest, {}, "1 of split 'valid''s audio files are missing (rows clicks)"
    if what == "held-out-audio-file-unreadable":   # there, but no audio: its header is read, not the constructor's
        (tmp_path / "clicks.wav").write_text("not a wav\n")
        return kind, manifest, {}, "1 of split 'valid''s 1 audio files cannot be read (row clicks at"
    if what == "key-weights-and-repeat-gap-by-key-naming-no-item":   # refused in one order, a new run's too
        return kind, manifest, {"data": {"key_weights": {"nothing": 2.0}, "repeat_gap_by_key": {"gap": [1.0, 1.0]}}}, \
            "data.key_weights: no training item has the key 'nothing'"
    if what.endswith("-naming-no-item"):   # what TrainingRun.batches (and the LDM before it) refuses
        field = what.removesuffix("-naming-no-item").replace("-", "_")
        sets = _ldm_sets() if kind == "ldm" else manifest
        return kind, sets, {"data": {field: {"nothing": 2.0 if field == "key_weights" else [1.0, 1.0]}}}, \
            f"data.{field}: no training item has the key 'nothing'"
    if what == "vae-folder-without-a-component":
        return kind, manifest, {"vae": str(empty)}, f"vae={empty}: not a VAE component, run or pipeline folder"
    if what == "vae-holding-a-vocoder":
        vocoder = tiny_components()["vocoder"]
        return kind, manifest, {"vae": str(vocoder)}, f"vae={vocoder}: holds a HiFiGAN, not a mel VAE"
    raise AssertionError(name)


def _edited(saved: dict, edit: dict) -> dict:
    return {k: _edited(saved[k], v) if isinstance(v, dict) else v for k, v in edit.items()} | \
        {k: v for k, v in saved.items() if k not in edit}


@pytest.mark.parametrize("name", ["vae-freeze-encoder-without-init-from", "vae-freeze-encoder-from-a-run-without-final",
                                  "ldm-vae-folder-without-a-component", "ldm-no-clap",
                                  "ldm-trainable-matching-nothing", "ldm-unet-not-fitting-the-vae",
                                  "ldm-vocoder-in-another-mel-space", "ldm-more-neighbours-than-the-datastore-holds",
                                  "vocoder-vae-folder-without-a-component",
                                  "vocoder-vae-holding-a-vocoder", "vocos-vae-folder-without-a-component",
                                  "postnet-vae-folder-without-a-component", "vae-key-weights-naming-no-item",
                                  "clap-repeat-gap-by-key-naming-no-item", "ldm-speed-by-key-naming-no-item",
                                  "vae-key-weights-and-repeat-gap-by-key-naming-no-item",
                                  "vae-held-out-audio-file-missing", "vocoder-held-out-audio-file-missing",
                                  "postnet-held-out-audio-file-missing", "clap-held-out-audio-file-missing",
                                  "vae-held-out-audio-file-unreadable", "vocoder-held-out-audio-file-unreadable",
                                  "clap-held-out-audio-file-unreadable"])
def test_a_restart_a_trainer_refuses_leaves_the_stopped_run_as_it_was(tmp_path, capsys, name):
    """The config.json of a run killed before its first checkpoint edited to what the trainer refuses before
    its first step, then `tta train KIND --config RUN/config.json --out RUN --resume`: refused in the one line
    a new run with that config gets, and the stopped run's files are all still there (before, they were
    cleared and the refusal came after)."""
    from tta.cli import main

    kind, sets, edit, said = _case(name, tmp_path)
    run = tmp_path / "run"
    _stopped_run(kind, run, sets)
    config = _edited(json.loads((run / "config.json").read_text()), edit)
    (run / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (tmp_path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    held = {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"}
    capsys.readouterr()
    rc = main(["-q", "train", kind, "--config", str(tmp_path / "config.json"), "--out", str(tmp_path / "new")])
    fresh = capsys.readouterr().err
    assert rc == 1 and said in fresh and fresh.count("\n") == 1, fresh
    assert not (tmp_path / "new").exists()
    rc = main(["-q", "train", kind, "--config", str(run / "config.json"), "--out", str(run), "--resume"])
    assert rc == 1
    assert capsys.readouterr().err == fresh
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"} == held


def test_a_restart_without_a_held_out_split_trains_without_validation_and_says_so_once(tmp_path, capsys, caplog):
    """An empty held-out split is no refusal: the restart's check of the held-out rows lets the run say it."""
    from tta.cli import main
    from tta.data.manifest import read_manifest, write_manifest

    manifest = _vae_manifest(tmp_path)
    write_manifest(manifest, [row for row in read_manifest(manifest) if row.split == "train"])
    run = tmp_path / "run"
    _stopped_run("vae", run, [f"data.manifest={json.dumps(str(manifest))}", "train.max_steps=1"])
    with caplog.at_level("WARNING"):
        rc = main(["-q", "train", "vae", "--config", str(run / "config.json"), "--out", str(run), "--resume"])
    assert rc == 0, capsys.readouterr().err
    assert [r.getMessage() for r in caplog.records if "no validation" in r.getMessage()] == [
        f"no validation: {manifest}: split 'valid' has no rows (set valid_items=0 to train without it)"]
    assert (run / "final" / "model.safetensors").is_file()


def test_an_ldm_restart_trains_the_run_an_uninterrupted_one_trains(tmp_path):
    """The LDM's check before a restart loads its components, datastore and a UNet for `trainable`, drawing from
    the global random streams; the run seeds them after, so a retrieval run stopped before its first checkpoint
    and started again with --resume ends with the very weights (UNet, context encoder) of one never stopped."""
    from safetensors.torch import load_file

    from tta.clap import load_clap
    from tta.cli import main
    from tta.retrieval import DatastoreConfig, build_datastore

    c = tiny_components()
    build_datastore(c["manifest"], load_clap(c["clap"]), tmp_path / "store", DatastoreConfig(split="train"),
                    progress=False)
    run = tmp_path / "run"
    _stopped_run("ldm", run, [*_ldm_sets(), f"retrieval.datastore={json.dumps(str(tmp_path / 'store'))}",
                              "retrieval.neighbours=2", 'trainable=["*"]', "validation.prompts=[]"])
    for out, resume in ((run, ["--resume"]), (tmp_path / "uninterrupted", [])):
        assert main(["-q", "train", "ldm", "--config", str(run / "config.json"), "--out", str(out), *resume]) == 0

    def weights(out: Path) -> dict:
        return {str(p.relative_to(out)): load_file(p) for p in sorted((out / "final").rglob("*.safetensors"))}

    restarted, uninterrupted = weights(run), weights(tmp_path / "uninterrupted")
    assert list(restarted) == ["final/model.safetensors", "final/retrieval/model.safetensors"]
    assert list(uninterrupted) == list(restarted)
    for name, tensors in restarted.items():
        assert tensors.keys() == uninterrupted[name].keys()
        assert all(torch.equal(t, uninterrupted[name][k]) for k, t in tensors.items()), name


@pytest.mark.parametrize("name", ["ldm-more-neighbours-than-the-datastore-holds", "vae-held-out-audio-file-missing",
                                  "vae-freeze-encoder-without-init-from", "vocoder-vae-folder-without-a-component"])
def test_a_restart_wrong_in_two_ways_names_the_fault_a_new_run_names(tmp_path, capsys, name):
    """A trainer's refusal (`_case`) and a training file gone: the restart checks the training rows where the
    trainer's `train` reads them, so it names the training file where a new run does (before the datastore's
    fit to the components, before the held-out split) and the trainer's fault where a new run does (a frozen
    encoder without init_from, a frozen VAE folder, refused before any row is read)."""
    import shutil

    from tta.cli import main

    kind, sets, edit, said = _case(name, tmp_path)
    if kind == "ldm":   # a copy of the shared corpus, so that one of its files can go
        shutil.copytree(tiny_components()["audio"], tmp_path / "audio")
        shutil.copy(tiny_components()["manifest"], tmp_path / "manifest.jsonl")
        sets = [*sets, f"data.manifest={json.dumps(str(tmp_path / 'manifest.jsonl'))}"]
    run = tmp_path / "run"
    _stopped_run(kind, run, sets)
    (tmp_path / ("audio/tone.wav" if kind == "ldm" else "tone.wav")).unlink()   # a training row's file
    config = _edited(json.loads((run / "config.json").read_text()), edit)
    (run / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    capsys.readouterr()
    assert main(["-q", "train", kind, "--config", str(run / "config.json"), "--out", str(tmp_path / "new")]) == 1
    fresh = capsys.readouterr().err
    first = "freeze_encoder=true" in said or "not a VAE component" in said
    assert (said if first else "1 of split 'train''s audio files are missing (rows tone)") in fresh, fresh
    assert main(["-q", "train", kind, "--config", str(run / "config.json"), "--out", str(run), "--resume"]) == 1
    assert capsys.readouterr().err == fresh
    assert (run / "config.json").is_file()
