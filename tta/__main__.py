"""`python -m tta`: the `tta` command."""

import os
import sys


def _drop_current_folder() -> None:
    """`python -m` puts the current folder first on sys.path, where the `tta` console script does not: a folder
    that holds its own `eval/`, `vae/` or `vocoder/` package would shadow tta's top-level packages of those
    names, imported after this. The entry goes unless the current folder is where tta itself lives (the
    repository root, tta's siblings there are the ones meant); with -P (safe_path) Python added none."""
    if getattr(sys.flags, "safe_path", False) or not sys.path:
        return
    home = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        if not os.path.samefile(sys.path[0] or os.curdir, os.curdir) or os.path.samefile(os.curdir, home):
            return
    except OSError:  # the current folder or the first entry is gone: nothing to compare
        return
    del sys.path[0]


_drop_current_folder()

from tta.cli import main  # noqa: E402  (after the current folder left sys.path)

sys.exit(main())
