"""bench/vocoder.py --fad-split on tiny held-out clips (mfcc FAD): where Griffin-Lim's FAD comes from."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from tests import signals
from tests.test_ldm_fixtures import ROOT, SR, bench_module, one_thread, tiny_components  # noqa: F401 (autouse)
from tta.audio import save_audio
from tta.data.manifest import ManifestRow, write_manifest


def load_bench():
    return bench_module("vocoder")


def make_clips(tmp_path):
    clips = {"sweep": signals.chirp(300, 3000, 1.5), "hiss": signals.noise(1.5, seed=7),
             "tick": signals.clicks(1.5), "tone": signals.tone(440, 1.5)}
    rows = []
    for name, wav in clips.items():
        save_audio(tmp_path / "audio" / f"{name}.wav", wav, SR)
        rows.append(ManifestRow(id=name, path=f"audio/{name}.wav", captions=(name,), seconds=1.5,
                                sample_rate=SR, split="valid"))
    return write_manifest(tmp_path / "manifest.jsonl", rows)


def fad_split_with_a_hifigan_run(tmp_path, *extra: str) -> list[dict]:
    """--fad-split (mfcc FAD) on the four tiny clips with the tiny HiFi-GAN as --run; results to tmp_path."""
    manifest = make_clips(tmp_path)
    run = tmp_path / "hifigan-run"
    shutil.copytree(tiny_components()["vocoder"], run / "final")
    return load_bench().main(["--fad-split", "--manifest", str(manifest), "--split", "valid", "--items", "4",
                              "--seconds", "1.5", "--gl-iters", "4", "--embedder", "mfcc", "--threads", "1",
                              "--run", str(run), "--quiet", "--results", str(tmp_path / "results.jsonl"), *extra])


def test_fad_split_separates_the_mel_and_the_phase_and_checks_itself(tmp_path):
    out = fad_split_with_a_hifigan_run(tmp_path)
    results = tmp_path / "results.jsonl"
    fad = {r["route"]: r["fad"] for r in out}
    assert list(fad)[:4] == ["mel -> griffin-lim-4 (nnls 50)", "true magnitude -> griffin-lim-4",
                             "mel magnitude (nnls 50) + true phase", "true magnitude + true phase (check)"]
    assert len(fad) == 5 and list(fad)[4].startswith("mel -> ") and list(fad)[4].endswith("hifigan-run/final")
    assert all(r["clips"] == 4 and r["embedder"] == "mfcc@v1" for r in out)
    assert all(math.isfinite(v) and v >= -1e-3 for v in fad.values())
    # the exact inverse STFT gives the clips back: its FAD is ~0, far below every real rebuild
    check = fad["true magnitude + true phase (check)"]
    assert abs(check) < 1e-2 and all(v > 100 * max(check, 1e-4) for k, v in fad.items() if "check" not in k)
    record = json.loads(results.read_text().splitlines()[-1])
    assert record["settings"]["mode"] == "fad-split" and record["results"] == out
    assert record["settings"]["run"].endswith("hifigan-run")


def test_fad_split_needs_a_manifest():
    with pytest.raises(SystemExit):
        load_bench().main(["--fad-split"])


def test_fad_split_scores_a_postnet_run_and_its_magnitude_alone(tmp_path):
    from dataclasses import replace

    from tta.checkpoint import save_component
    from tta.config import load_config
    from vocoder.postnet import PostnetGriffinLim
    from vocoder.postnet_train import RunConfig

    manifest = make_clips(tmp_path)
    run = tmp_path / "postnet-run"
    tiny = load_config(RunConfig, ROOT / "configs/postnet/tiny.json").model
    save_component(run / "final", PostnetGriffinLim(replace(tiny, n_iter=4, nnls_iter=50)))
    out = load_bench().main(["--fad-split", "--manifest", str(manifest), "--split", "valid", "--items", "4",
                             "--seconds", "1.5", "--gl-iters", "4", "--embedder", "mfcc", "--threads", "1",
                             "--run", str(run), "--quiet", "--results", str(tmp_path / "results.jsonl")])
    fad = {r["route"]: r["fad"] for r in out}
    names = list(fad)
    assert len(names) == 6 and names[4].endswith("postnet-run/final") and names[4].startswith("mel -> ")
    assert names[5].endswith("postnet-run/final magnitude + true phase")
    assert all(math.isfinite(v) and v >= -1e-3 for v in fad.values())
    # the true phase removes the phase search's share: the post-net's magnitude alone scores better than its
    # whole route (an untrained post-net raises these digital silences to its -110 dB floor, so it is not
    # compared with plain Griffin-Lim here; tests/test_postnet.py checks that at the magnitude level)
    assert fad[names[5]] < fad[names[4]]


def test_fad_split_with_a_vae_scores_the_routes_through_its_reconstruction(tmp_path):
    out = fad_split_with_a_hifigan_run(tmp_path, "--vae", str(tiny_components()["vae"]))
    results = tmp_path / "results.jsonl"
    fad = {r["route"]: r["fad"] for r in out}
    names = list(fad)
    assert len(names) == 7 and names[5] == "mel -> vae -> griffin-lim-4"
    assert names[6].startswith("mel -> vae -> ") and names[6].endswith("hifigan-run/final")
    assert all(math.isfinite(v) and v >= -1e-3 for v in fad.values())
    # the VAE's reconstruction is not the mel: both vocoders land somewhere else through it
    assert fad[names[5]] != fad[names[0]] and fad[names[6]] != fad[names[4]]
    assert json.loads(results.read_text().splitlines()[-1])["settings"]["vae"]
