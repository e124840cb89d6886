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


def test_every_config_folder_travels_with_the_wheel():
    # a wheel installs configs/ as data files, one pyproject line per folder: a new folder must be listed there
    tomllib = pytest.importorskip("tomllib")   # Python 3.11+
    data = tomllib.loads((CONFIGS.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    listed = {target: patterns for target, patterns in data.items() if target.startswith("share/tta/configs/")}
    folders = sorted(p.name for p in CONFIGS.iterdir() if p.is_dir())
    assert sorted(t.rsplit("/", 1)[1] for t in listed) == folders
    for target, patterns in listed.items():
        covered = {f for pattern in patterns for f in CONFIGS.parent.glob(pattern)}
        assert covered == set((CONFIGS / target.rsplit("/", 1)[1]).iterdir()), target


def test_a_shipped_config_asked_for_outside_the_repository_names_where_it_is_installed(tmp_path, monkeypatch,
                                                                                         capsys):
    # an installed tta has no configs/ beside the user's work: `--config configs/vae/tiny.json` said only
    # "config file not found", and nothing said that the wheel carries them (to <prefix>/share/tta/configs)
    import shutil
    import sys

    from tta.cli import main

    prefix = tmp_path / "venv"
    shutil.copytree(CONFIGS, prefix / "share" / "tta" / "configs")
    monkeypatch.setattr(sys, "prefix", str(prefix))
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "train", "vae", "--config", "configs/vae/tiny.json", "--out", "run"]) == 1
    installed = prefix / "share" / "tta" / "configs" / "vae" / "tiny.json"
    assert capsys.readouterr().err.strip() == ("tta: error: configs/vae/tiny.json: config file not found here; tta's "
                                               f"shipped configs are installed in {installed.parents[1]}: --config "
                                               f"{installed}")
    assert not (tmp_path / "run").exists()
    assert main(["-q", "train", "vae", "--config", "configs/vae/nope.json", "--out", "run"]) == 1
    assert capsys.readouterr().err.strip() == "tta: error: configs/vae/nope.json: config file not found"


def test_a_shipped_config_asked_for_outside_a_source_checkout_names_the_checkouts_folder(tmp_path, monkeypatch,
                                                                                          capsys):
    # `make venv` installs tta editable, which puts no configs under <prefix>/share: run from the user's data
    # folder, `--config configs/vae/tiny.json` said only "config file not found"
    import tta.config
    from tta.cli import main

    monkeypatch.setattr(tta.config, "installed_configs", lambda: None)
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "train", "vae", "--config", "configs/vae/tiny.json", "--out", "run"]) == 1
    assert capsys.readouterr().err.strip() == ("tta: error: configs/vae/tiny.json: config file not found here; tta's "
                                               f"shipped configs are in its source checkout, {CONFIGS}: --config "
                                               f"{CONFIGS / 'vae' / 'tiny.json'}")
    assert not (tmp_path / "run").exists()
    assert main(["-q", "train", "vae", "--config", "configs/vae/nope.json", "--out", "run"]) == 1
    assert capsys.readouterr().err.strip() == "tta: error: configs/vae/nope.json: config file not found"
