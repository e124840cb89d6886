"""bench/vae.py quality mode scores each clip alone, not the loader's zero padding."""

from __future__ import annotations

import argparse
import shutil

import pytest
import torch

from tests import signals
from tests.test_ldm_fixtures import SR, bench_module, one_thread, tiny_components  # noqa: F401 (autouse)
from tta.audio import log_mel, save_audio
from tta.checkpoint import load_component
from tta.data.manifest import ManifestRow, write_manifest
from vae.metrics import ReconstructionMetrics
from vae.model import MelVAE


def test_quality_scores_each_clip_without_the_padding(tmp_path):
    bench = bench_module("vae")
    run = tmp_path / "run"
    shutil.copytree(tiny_components()["vae"], run / "final")
    clips = {"a": signals.chirp(300, 3000, 0.8), "b": signals.noise(1.3, seed=3)}
    rows = []
    for name, wav in clips.items():
        save_audio(tmp_path / f"{name}.wav", wav, SR)
        rows.append(ManifestRow(id=name, path=f"{name}.wav", captions=("x",), seconds=len(wav) / SR, sample_rate=SR,
                                split="valid"))
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    args = argparse.Namespace(run=run, manifest=manifest, split="valid", items=10, segment_seconds=2.56,
                              batch_size=4, peer_ckpt="", threads=1)
    out = bench.bench_quality(args)
    assert out["settings"]["items"] == 2 and out["settings"]["items_too_short"] == 0
    # by hand: each clip as the loader reads it, alone (its padding cut off), in whole VAE blocks
    from tta.data.dataset import AudioDataset

    vae = load_component(run / "final", MelVAE)
    ds = AudioDataset(manifest, "valid", SR, 2.56, random_crop=False)
    alone, padded = ReconstructionMetrics(), ReconstructionMetrics()
    for i in range(len(ds)):
        item = ds[i]
        assert item["wav"].shape[0] == round(2.56 * SR) and item["seconds"] < 2.0   # the loader pads to 2.56 s
        for metrics, wav in ((alone, item["wav"][:round(item["seconds"] * SR)]), (padded, item["wav"])):
            mel = log_mel(wav[None], vae.config.mel)
            mel = mel[..., :mel.shape[-1] // vae.downsample_factor * vae.downsample_factor]
            with torch.no_grad():
                metrics.update(mel, vae(mel, sample=False)[0])
    got = out["results"]["run"]["mel_l1"]
    assert got == pytest.approx(alone.compute()["mel_l1"], rel=1e-4)
    assert abs(got - padded.compute()["mel_l1"]) > 0.05      # what the padded segments would have scored
