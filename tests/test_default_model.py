"""The embedded default pipeline shipped in tta/assets/default/: complete, small, loads, and is what
`tta generate` uses when no --model is given."""

from __future__ import annotations

import json

import numpy as np
import soundfile as sf

from tests.test_ldm_fixtures import one_thread  # noqa: F401 (autouse)
from tta.cli import main
from tta.generate import DEFAULT_MODEL


def test_default_pipeline_is_complete_and_within_the_size_budget():
    spec = json.loads((DEFAULT_MODEL / "pipeline.json").read_text())
    for name in ("unet", "scheduler", "vae", "vocoder", "text_encoder"):
        assert (DEFAULT_MODEL / spec["components"][name]).is_dir(), name
    weights = sum(p.stat().st_size for p in DEFAULT_MODEL.rglob("*.safetensors"))
    assert weights <= 40e6, f"{weights / 1e6:.1f} MB of weights"
    for doc in ("README.md", "EXPERIMENTS.md", "ATTRIBUTION.md"):   # the model card, its lab notebook, sources
        assert (DEFAULT_MODEL / doc).is_file(), doc


def test_generate_without_a_model_flag_uses_the_default(tmp_path, capsys):
    out = tmp_path / "dog.wav"
    code = main(["-q", "generate", "a dog barks", "-o", str(out), "--seconds", "0.64", "--steps", "2"])
    assert code == 0, capsys.readouterr().err
    wav, sr = sf.read(str(out), dtype="float32")
    assert sr == 16_000 and wav.shape == (10_240,)
    assert np.isfinite(wav).all() and np.abs(wav).max() > 1e-4        # finite and not silent
    record = json.loads((tmp_path / "dog.generation.json").read_text())
    assert record["model"] == str(DEFAULT_MODEL) or record["model"].endswith("assets/default")
    # the default's precision is "auto": recorded as what it resolved to on this machine
    spec = json.loads((DEFAULT_MODEL / "pipeline.json").read_text())
    assert spec["defaults"]["precision"] == "auto" and record["settings"]["precision"] in ("float32", "bfloat16")
