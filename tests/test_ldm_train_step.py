"""bench/ldm_train_step.py on the tiny pipeline: each precision timed in every round, the grown UNet counted,
one JSON line appended; a folder that is not a pipeline is refused in one line."""

from __future__ import annotations

import json

import pytest

from tests.test_ldm_fixtures import bench_module, one_thread, tiny_pipeline  # noqa: F401 (autouse)


def load_bench():
    return bench_module("ldm_train_step")


def test_both_precisions_are_timed_and_recorded(tmp_path, capsys):
    results = tmp_path / "results.jsonl"
    common = ["--model", str(tiny_pipeline()), "--batch", "2", "--seconds", "0.32", "--rounds", "2",
              "--steps-per-round", "1", "--threads", "1", "--results", str(results)]
    summary = load_bench().main(common)
    rows = summary["precisions"]
    assert [r["precision"] for r in rows] == ["float32", "bfloat16"]
    assert all(len(r["step_s"]) == 2 and r["step_s_median"] > 0 for r in rows) and rows[0]["ratio_to_first"] == 1.0
    grown = load_bench().main([*common, "--transformer-layers", "2", "--precision", "bfloat16"])
    assert grown["settings"]["transformer_layers"] == 2
    assert grown["settings"]["parameters"] > summary["settings"]["parameters"]
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    assert [x["bench"] for x in lines] == ["ldm_train_step"] * 2 and lines[0]["versions"]["torch"]
    assert "1.00x float32" in capsys.readouterr().out


def test_a_folder_that_is_not_a_pipeline_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        load_bench().main(["--model", str(tmp_path), "--results", str(tmp_path / "r.jsonl")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "no pipeline.json" in err and not (tmp_path / "r.jsonl").exists()


def test_the_timing_order_rotates_round_by_round(tmp_path, monkeypatch):
    import torch

    order, real = [], torch.autocast

    def spy(*a, **kw):
        order.append("bfloat16" if kw.get("enabled") else "float32")
        return real(*a, **kw)

    monkeypatch.setattr(torch, "autocast", spy)
    load_bench().main(["--model", str(tiny_pipeline()), "--batch", "1", "--seconds", "0.32", "--rounds", "3",
                       "--steps-per-round", "1", "--threads", "1", "--results", str(tmp_path / "r.jsonl")])
    assert order[-6:] == ["float32", "bfloat16", "bfloat16", "float32", "float32", "bfloat16"]
