"""Every training config shipped under configs/ loads strictly into its run config (no unknown or mistyped
key), so a Makefile stage never fails on its config after hours of the stages before it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tta.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def run_config(kind: str):
    if kind == "vae":
        from vae.train import RunConfig
    elif kind == "vocoder":
        from vocoder.train import RunConfig
    elif kind == "postnet":
        from vocoder.postnet_train import RunConfig
    elif kind == "vocos":
        from vocoder.vocos_train import RunConfig
    elif kind == "clap":
        from tta.clap.train import RunConfig
    else:
        from tta.ldm.train import RunConfig
    return RunConfig


@pytest.mark.parametrize("path", sorted(p for kind in ("vae", "vocoder", "vocos", "postnet", "clap", "ldm")
                                        for p in (CONFIGS / kind).glob("*.json")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_config_loads(path):
    config = load_config(run_config(path.parent.name), path)
    assert config.train.max_steps > 0
