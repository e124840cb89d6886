"""tta installed read-only to its user, run without a writable home folder or cache, writing to a full disk.

Each case is the real command or function in a process of its own where the environment matters; the unwritable
places are made so that they stay unwritable for root too (a regular file where a folder is expected)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path


def _env(**changes) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "TTA_CACHE_DIR")}
    env.update(changes)
    return env


def test_librosa_imports_when_neither_its_folder_nor_home_takes_numbas_cache(tmp_path, repo_root):
    # a copy of librosa whose module folders cannot take numba's cache (as a read-only install) and a HOME that
    # is a file (no ~/.cache): numba refused the import ("no locator available"), so every mel failed
    site = tmp_path / "site"
    shutil.copytree(Path(importlib.util.find_spec("librosa").origin).parent, site / "librosa",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for folder in {p.parent for p in (site / "librosa").rglob("*.py")}:
        (folder / "__pycache__").write_text("not a folder")
    home = tmp_path / "home"
    home.write_text("not a folder")
    code = ("import os, librosa; from tta.audio import MelConfig, mel_basis; "
            "print(mel_basis(MelConfig()).shape); print(librosa.__file__); print(os.environ['NUMBA_CACHE_DIR'])")
    env = _env(HOME=str(home), PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    shape, where, cache = out.stdout.splitlines()
    assert shape == "torch.Size([64, 513])" and where.startswith(str(site))
    assert not Path(cache).exists()   # the process's temporary cache went with it
