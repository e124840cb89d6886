"""The suite is offline, and so is every Python process it starts (tests/netguard/sitecustomize.py)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import socket
for what, call in (("connect", lambda: socket.create_connection(("192.0.2.1", 443), timeout=5)),
                   ("lookup", lambda: socket.getaddrinfo("huggingface.co", 443)),
                   ("loopback", lambda: socket.getaddrinfo("localhost", 0))):
    try:
        call()
        print(what, "allowed")
    except OSError as e:
        print(what, "refused" if "refused in tta's tests" in str(e) else f"other: {e}")
"""


def test_a_child_process_is_refused_the_network_but_keeps_the_loopback():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60).stdout
    assert out.split("\n")[:3] == ["connect refused", "lookup refused", "loopback allowed"], out


def test_a_tokenizer_name_is_refused_as_a_missing_folder_before_the_hub():
    import pytest

    from tta.clap.towers import load_tokenizer

    with pytest.raises(ValueError, match="sentence-transformers/all-MiniLM-L6-v2: tokenizer folder not found"):
        load_tokenizer("sentence-transformers/all-MiniLM-L6-v2")


def test_music21_scores_are_parsed_without_leaving_pickles(tmp_path, monkeypatch):
    import pytest

    pytest.importorskip("music21")
    import tempfile

    from music21 import corpus

    from tta.data.recipes.music import _score_events

    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)   # music21 writes its pickles under tempfile's folder
    assert _score_events(str(corpus.getWork("bach/bwv66.6")), tmp_path / "cache")
    assert not list((tmp_path / "tmp").rglob("*.p.gz"))
