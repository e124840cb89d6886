"""Shared builders for the LDM / pipeline / generate tests: real tta classes from configs/*/tiny.json with
random weights, a tiny synthetic corpus, and a tiny pipeline folder. Built once per test session."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from tests import signals
from tta.audio import save_audio
from tta.checkpoint import save_component
from tta.config import from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]
SR = 16_000


def bench_module(name: str):
    """bench/<name>.py loaded by path as a module (putting bench/ on sys.path would shadow the `vae` package
    with bench/vae.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_thread():
    """These tiny models run ~100x slower with 2 OpenMP threads when the other core is busy (measured on the
    shared 2-core machine: 1.9 s vs 0.015 s per forward), so this area runs single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model_config(cls, kind: str):
    return from_dict(cls, json.loads((ROOT / "configs" / kind / "tiny.json").read_text())["model"])


@functools.lru_cache(maxsize=1)
def workspace() -> Path:
    root = Path(tempfile.mkdtemp(prefix="tta-ldm-tests-"))
    atexit.register(shutil.rmtree, root, True)
    return root


@functools.lru_cache(maxsize=1)
def tiny_components() -> dict[str, Path]:
    """Component folders vae/, vocoder/, clap/ (random weights, tiny configs) and a manifest of 6 clips."""
    from tta.clap.model import ClapConfig, TTAClap
    from tta.data.manifest import ManifestRow, write_manifest
    from vae.model import MelVAE, VAEConfig
    from vocoder.model import HiFiGAN, HiFiGANConfig

    root = workspace() / "components"
    torch.manual_seed(0)
    save_component(root / "vae", MelVAE(tiny_model_config(VAEConfig, "vae")))
    save_component(root / "vocoder", HiFiGAN(tiny_model_config(HiFiGANConfig, "vocoder")))
    save_component(root / "clap", TTAClap(tiny_model_config(ClapConfig, "clap")))
    clips = {"tone": signals.tone(440, 0.5), "chirp": signals.chirp(200, 4000, 0.5),
             "noise": signals.noise(0.5, seed=1), "clicks": signals.clicks(0.5),
             "low": signals.tone(150, 0.5), "high": signals.tone(3000, 0.5)}
    rows = []
    for name, wav in clips.items():
        save_audio(root / "audio" / f"{name}.wav", wav, SR)
        rows.append(ManifestRow(id=name, path=str(root / "audio" / f"{name}.wav"), captions=(f"a {name} sound",),
                                seconds=0.5, sample_rate=SR, split="train"))
    write_manifest(root / "manifest.jsonl", rows)
    return {"vae": root / "vae", "vocoder": root / "vocoder", "clap": root / "clap",
            "manifest": root / "manifest.jsonl", "audio": root / "audio"}


def tiny_run_config(**overrides):
    """configs/ldm/tiny.json pointed at the tiny components."""
    from tta.config import apply_overrides
    from tta.ldm.train import RunConfig

    c = tiny_components()
    sets = [f"components.vae={json.dumps(str(c['vae']))}", f"components.vocoder={json.dumps(str(c['vocoder']))}",
            f"components.clap={json.dumps(str(c['clap']))}", f"data.manifest={json.dumps(str(c['manifest']))}"]
    sets += [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    return apply_overrides(load_config(RunConfig, ROOT / "configs" / "ldm" / "tiny.json"), sets)


@functools.lru_cache(maxsize=1)
def tiny_pipeline() -> Path:
    """A pipeline folder of tiny random components (UNet from configs/ldm/tiny.json), 2 DDIM steps by default."""
    from tta.checkpoint import load_component
    from tta.clap.model import TTAClapEmbedder
    from tta.ldm.model import LDMUNet
    from tta.pipeline import PipelineDefaults, TTAPipeline
    from vae.model import MelVAE
    from vocoder.model import HiFiGAN

    c = tiny_components()
    cfg = tiny_run_config()
    torch.manual_seed(1)
    unet = LDMUNet(cfg.model)
    pipe = TTAPipeline(unet, load_component(c["vae"], MelVAE), load_component(c["vocoder"], HiFiGAN),
                       TTAClapEmbedder.from_folder(c["clap"]), cfg.diffusion.scheduler_config(),
                       PipelineDefaults(sampler="ddim", steps=2, guidance=2.5, seconds=0.32, candidates=1))
    return pipe.save_pretrained(workspace() / "pipeline")


def copy_pipeline(dest: Path) -> Path:
    shutil.copytree(tiny_pipeline(), dest)
    return dest


def test_tiny_pipeline_folder_layout():
    folder = tiny_pipeline()
    spec = json.loads((folder / "pipeline.json").read_text())
    assert set(spec["components"]) == {"unet", "scheduler", "vae", "vocoder", "text_encoder"}
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (folder / "scheduler" / "scheduler_config.json").is_file()
    for name in ("vae", "vocoder", "text_encoder"):
        assert json.loads((folder / name / "config.json").read_text())["format_version"] == 1
