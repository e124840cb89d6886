"""bench/pipeline_speed.py on the tiny pipeline and its 8-bit copy: every model timed in every round, ratios
against the first, one JSON line appended; a folder that is not a pipeline is refused in one line."""

from __future__ import annotations

import json

import pytest

from tests.test_ldm_fixtures import bench_module, one_thread, tiny_pipeline  # noqa: F401 (autouse)
from tta.cli import main as tta_main


def load_bench():
    return bench_module("pipeline_speed")


def test_pipelines_are_timed_alternately_and_recorded(tmp_path, capsys):
    src, eight = tmp_path / "half", tmp_path / "eight"
    for out, dtype in ((src, "float16"), (eight, "int8")):
        assert tta_main(["-q", "export", "pipeline", str(tiny_pipeline()), "--out", str(out), "--dtype", dtype,
                         "--default", "steps=2", "--default", "sampler=ddim", "--default", "candidates=1"]) == 0
    results = tmp_path / "results.jsonl"
    summary = load_bench().main(["--model", str(eight), "--model", str(src), "--rounds", "2", "--seconds", "0.32",
                                 "--threads", "1", "--results", str(results)])
    rows = summary["models"]
    assert [r["model"] for r in rows] == [str(eight), str(src)]
    assert all(len(r["generate_s"]) == 2 and all(t > 0 for t in r["generate_s"]) for r in rows)
    assert rows[0]["ratio_to_first"] == 1.0 and rows[1]["ratio_to_first"] > 0
    assert rows[0]["defaults"]["steps"] == 2 and rows[0]["size_mb"] < rows[1]["size_mb"]
    line = json.loads(results.read_text().splitlines()[-1])
    assert line["bench"] == "pipeline_speed" and line["versions"]["torch"] and line["settings"]["rounds"] == 2
    assert line["settings"]["discarded_first_load_s"] > 0                 # first-call setup kept out of load_s
    assert {"cpu_model", "cpu_flags", "kernel", "git_commit", "tta", "processor"} <= set(line["machine"])
    assert "1.00x the first model" in capsys.readouterr().out


def test_every_model_is_timed_under_every_precision_given(tmp_path):
    summary = load_bench().main(["--model", str(tiny_pipeline()), "--precision", "float32", "--precision", "bfloat16",
                                 "--rounds", "1", "--seconds", "0.16", "--threads", "1",
                                 "--results", str(tmp_path / "r.jsonl")])
    assert [r["precision"] for r in summary["models"]] == ["float32", "bfloat16"]
    assert summary["settings"]["precisions"] == ["float32", "bfloat16"]
    assert isinstance(summary["settings"]["native_bfloat16"], bool)


def test_the_timing_order_rotates_round_by_round(tmp_path, monkeypatch):
    """No peer always runs in another's wake: round r starts from entry r mod n (as bench.record does)."""
    from tta.pipeline import TTAPipeline

    order, real = [], TTAPipeline.__call__

    def spy(self, *a, **kw):
        order.append(kw.get("precision"))
        return real(self, *a, **kw)

    monkeypatch.setattr(TTAPipeline, "__call__", spy)
    load_bench().main(["--model", str(tiny_pipeline()), "--precision", "float32", "--precision", "bfloat16",
                       "--rounds", "3", "--seconds", "0.16", "--threads", "1", "--results", str(tmp_path / "r.jsonl")])
    timed = order[-6:]      # after one warm-up call each
    assert timed == ["float32", "bfloat16", "bfloat16", "float32", "float32", "bfloat16"]


def test_a_folder_that_is_not_a_pipeline_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        load_bench().main(["--model", str(tmp_path), "--results", str(tmp_path / "r.jsonl")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "no pipeline.json" in err and "Traceback" not in err
    assert not (tmp_path / "r.jsonl").exists()
