"""bench/compare_weights.py: the reproduction check that says how close a rebuilt pipeline folder came."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.test_ldm_fixtures import bench_module, one_thread, tiny_pipeline  # noqa: F401 (autouse)


@pytest.fixture
def folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_pipeline(), a)
    shutil.copytree(a, b)
    return a, b


def unet_file(folder):
    (path,) = (folder / "unet").glob("*.safetensors")
    return path


def edit(path, change):
    tensors = load_file(str(path))
    name = sorted(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)[0]
    tensors[name] = change(tensors[name].clone())
    save_file(tensors, str(path))
    return name


def test_ordered_bits_count_representable_steps():
    bench = bench_module("compare_weights")
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        x = torch.tensor([-2.0, -1.0, -0.0, 0.0, 1.0], dtype=dtype)
        up = torch.nextafter(x, torch.full_like(x, float("inf")))
        assert (bench.ordered_bits(up) - bench.ordered_bits(x)).tolist() == [1, 1, 1, 1, 1]
        keys = bench.ordered_bits(x).tolist()
        assert keys == sorted(keys) and keys[2] == keys[3] == 0      # -0.0 and 0.0 are one value
    one = torch.tensor([1.0], dtype=torch.float16)
    assert int(bench.ordered_bits(torch.tensor([2.0], dtype=torch.float16)) - bench.ordered_bits(one)) == 1024


def test_verdicts_identical_close_and_different(folders, tmp_path):
    bench = bench_module("compare_weights")
    a, b = folders
    results = tmp_path / "results.jsonl"
    s = bench.main([str(a), str(b), "--results", str(results)])
    assert s["verdict"] == "identical" and s["differing_elements"] == 0 and s["elements"] > 0
    assert json.loads(results.read_text())["verdict"] == "identical"

    # one rounding step in one value: close, and the step is counted in its dtype
    name = edit(unet_file(b), lambda t: t.view(-1).index_put_(
        (torch.tensor([0]),), torch.nextafter(t.view(-1)[:1], torch.tensor([1e9], dtype=t.dtype))).view(t.shape))
    s = bench.main([str(a), str(b), "--no-record"])
    f = s["files"][unet_file(b).relative_to(b).as_posix()]
    assert s["verdict"] == "close" and s["differing_elements"] == 1 and f["first_differing"] == [name]
    assert [d["max_ulp"] for d in s["dtypes"].values()] == [1] and f["not_close"] == 0
    assert len(results.read_text().splitlines()) == 1                # --no-record appends nothing

    # a real change: different, and the exit status says so
    edit(unet_file(b), lambda t: t + 0.5)
    s = bench.main([str(a), str(b), "--no-record"])
    assert s["verdict"] == "different" and s["not_close"] > 0
    assert bench.main([str(a), str(b), "--no-record", "--rtol", "10"])["verdict"] == "close"


def test_configs_missing_files_and_layouts_are_named(folders, capsys):
    bench = bench_module("compare_weights")
    a, b = folders
    config = b / "unet" / "config.json"
    cfg = json.loads(config.read_text())
    key = sorted(cfg)[0]
    cfg[key] = "changed"
    config.write_text(json.dumps(cfg))
    (b / "vocoder" / "config.json").unlink()
    path = unet_file(b)
    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].half() if tensors[name].dtype != torch.float16 else tensors[name].float()
    save_file(tensors, str(path))

    s = bench.main([str(a), str(b), "--no-record"])
    out = capsys.readouterr().out
    assert s["verdict"] == "different"
    assert s["files"]["unet/config.json"] == {"equal": False, "first_difference": key}
    assert s["files"]["vocoder/config.json"] == {"missing_in": "B"}
    assert s["files"][path.relative_to(b).as_posix()]["layout"][0]["name"] == name
    assert f"unet/config.json: differs at {key}" in out and "vocoder/config.json: missing in B" in out


def test_bad_input_is_one_line(folders, tmp_path, capsys):
    bench = bench_module("compare_weights")
    a, b = folders
    with pytest.raises(SystemExit):
        bench.main([str(a), str(tmp_path / "nowhere")])
    assert "nowhere: not a folder" in capsys.readouterr().err
    unet_file(b).write_bytes(b"not safetensors")
    with pytest.raises(SystemExit, match="not a readable safetensors file"):
        bench.main([str(a), str(b), "--no-record"])
    with pytest.raises(SystemExit):
        bench.main([str(a), str(b), "--rtol", "-1"])
    assert "--rtol: expected a tolerance >= 0" in capsys.readouterr().err
