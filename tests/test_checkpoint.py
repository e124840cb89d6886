"""Component folders, atomic writes and foreign checkpoints."""

import json
import os
import pickle

import pytest
import torch

from tests.test_training import TinyNet, TinyNetConfig
from tta.audio import MelConfig
from tta.checkpoint import CheckpointError, atomic_dir, atomic_path, load_component, load_torch_file, \
    read_component_config, save_component, save_safetensors


def test_save_load_identical_output(tmp_path):
    model = TinyNet(TinyNetConfig(channels=6)).eval()
    folder = save_component(tmp_path / "net", model)
    body = json.loads((folder / "config.json").read_text())
    assert body["class"] == "tests.test_training.TinyNet" and body["format_version"] == 1
    assert body["config"]["channels"] == 6 and (folder / "model.safetensors").is_file()
    loaded = load_component(folder, TinyNet)
    x = torch.randn(2, 4000) * 0.1
    assert torch.equal(model(x), loaded(x))


def test_the_same_weights_give_the_same_bytes(tmp_path):
    """safetensors writes its metadata in hash-map order, which varies between calls; a component's file must
    not (a folder's fingerprint, e.g. the judge's, is the hash of its bytes)."""
    model = TinyNet(TinyNetConfig(channels=6))
    files = {save_component(tmp_path / f"net{i}", model).joinpath("model.safetensors").read_bytes() for i in range(12)}
    assert len(files) == 1
    data = files.pop()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    assert list(header["__metadata__"]) == ["class", "format"] and header["__metadata__"]["format"] == "pt"
    state = {"b": torch.ones(2, dtype=torch.float16), "a": torch.arange(3.0)}
    save_safetensors(state, tmp_path / "x.safetensors", metadata={"z": "1", "a": "2", "m": "3"})
    from safetensors import safe_open
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as f:
        assert f.metadata() == {"z": "1", "a": "2", "m": "3"}
        assert torch.equal(f.get_tensor("a"), state["a"]) and torch.equal(f.get_tensor("b"), state["b"])


def test_fp16_storage_loads_into_float32(tmp_path):
    model = TinyNet(TinyNetConfig())
    folder = save_component(tmp_path / "net16", model, dtype=torch.float16)
    loaded = load_component(folder, TinyNet)
    assert loaded.net[0].weight.dtype == torch.float32
    assert torch.allclose(loaded.net[0].weight, model.net[0].weight, atol=1e-3)


def test_wrong_class_and_wrong_weights_are_named(tmp_path):
    folder = save_component(tmp_path / "net", TinyNet(TinyNetConfig()))
    with pytest.raises(CheckpointError, match="holds a tests.test_training.TinyNet, expected a torch.nn"):
        read_component_config(folder, "torch.nn.modules.linear.Linear")
    other = save_component(tmp_path / "other", TinyNet(TinyNetConfig(channels=5)))
    (folder / "model.safetensors").unlink()
    os.replace(other / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"other shapes \(first: net.0.weight: \(5, 64, 3\) vs \(8, 64, 3\)"):
        load_component(folder, TinyNet)


def test_config_class_outside_tta_is_refused(tmp_path):
    folder = save_component(tmp_path / "net", TinyNet(TinyNetConfig()))
    with pytest.raises(CheckpointError, match="not a tta class"):
        load_component(folder)  # class named in config.json lives in tests/, not in tta's packages


def test_missing_folder_and_config(tmp_path):
    with pytest.raises(CheckpointError, match="component folder not found"):
        load_component(tmp_path / "nope", TinyNet)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_component(tmp_path / "empty", TinyNet)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_leftover_temps_are_the_atomic_writers_own_names_only(tmp_path):
    """What a kill in the middle of atomic_path leaves (its temporary file, not yet renamed) is found for the path
    it was writing, a long name's (prefix .tta.) too; no file named otherwise is, nor a folder."""
    from tta.checkpoint import leftover_temps

    out, long = tmp_path / "a.wav", tmp_path / ("x" * 240 + ".wav")
    with atomic_path(out) as tmp, atomic_path(long) as tmp_long:
        tmp.write_bytes(b"half")
        for name in (".a.wav.notes.tmp.wav", ".a.wav.abcdefgh.tmp.flac", ".b.wav.abcdefgh.tmp.wav",
                     "a.wav.abcdefgh.tmp.wav", ".a.wav.ABCDEFGH.tmp.wav", ".a.wav.abcdefghi.tmp.wav"):
            (tmp_path / name).write_bytes(b"mine")
        (tmp_path / ".a.wav.abcdefgh.tmp.wav").mkdir()
        assert tmp_long.name.startswith(".tta.")
        assert leftover_temps([out, long, tmp_path / "nowhere" / "c.wav"]) == sorted([tmp, tmp_long])
        # not `shared` (a caller holding one file, not the folder): a .tta. file may be another long name's
        assert leftover_temps([out, long], shared=False) == [tmp]


def test_atomic_dir_keeps_old_folder_until_complete(tmp_path):
    folder = save_component(tmp_path / "net", TinyNet(TinyNetConfig(channels=4)))
    with pytest.raises(RuntimeError):
        with atomic_dir(folder) as tmp:
            (tmp / "config.json").write_text("{}")
            raise RuntimeError("killed")
    assert load_component(folder, TinyNet).config.channels == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net"]


def test_atomic_outputs_get_the_umask_modes_and_a_file_is_not_replaced_by_a_folder(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.json") as tmp:
            tmp.write_text("{}")
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "x").write_text("1")
    finally:
        os.umask(old)
    # readable by others, as open() and mkdir() would make them (tempfile's own modes are 0600 / 0700)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    (tmp_path / "f").write_text("mine")
    with pytest.raises(CheckpointError, match="exists and is not a folder"):
        with atomic_dir(tmp_path / "f"):
            raise AssertionError("not reached")
    assert (tmp_path / "f").read_text() == "mine" and not list(tmp_path.glob(".f*"))
    with pytest.raises(CheckpointError, match="is a folder"):
        with atomic_path(tmp_path / "d"):
            raise AssertionError("not reached")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_foreign_checkpoints_are_weights_only(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "scale_factor": torch.tensor(0.5)}, good)
    assert torch.equal(load_torch_file(good)["state_dict"]["w"], torch.ones(2))
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match="weights-only"):
        load_torch_file(evil)
    (tmp_path / "zero.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        load_torch_file(tmp_path / "zero.ckpt")


def test_a_file_that_is_no_torch_checkpoint_is_named_for_what_it_is(tmp_path, recwarn):
    """torch's message for a Git LFS pointer, a web page or a plain pickle said that re-running with
    weights_only=False "will likely succeed" (it would not, and it runs the file's code); a zip of other files
    and a cut-short checkpoint were a "miniz" or "hasRecord" error. Each is named for what it is, and a
    safetensors file under a .ckpt name loads as its tensors."""
    import zipfile

    from safetensors.torch import save_file

    def refused(path):
        with pytest.raises(CheckpointError) as e:
            load_torch_file(path)
        assert str(e.value).startswith(f"{path}: ") and "weights_only" not in str(e.value), e.value
        return str(e.value)

    lfs = tmp_path / "lfs.ckpt"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 2556439\n")
    assert "a Git LFS pointer file, not the weights" in refused(lfs)
    page = tmp_path / "page.ckpt"
    page.write_text("<!DOCTYPE html><html><body>Sign in</body></html>")
    assert "a web page" in refused(page)
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, good)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "a zip archive cut short or damaged" in refused(cut)
    with zipfile.ZipFile(tmp_path / "zipped.ckpt", "w") as z:
        z.write(good, "model.ckpt")
    assert refused(tmp_path / "zipped.ckpt").endswith("not a torch checkpoint: unzip it and pass model.ckpt")
    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    assert "not a torch checkpoint: its bytes are no pickle of tensors" in refused(plain)
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]   # no torch warning beside the error
    renamed = tmp_path / "weights.ckpt"
    save_file({"w": torch.ones(2)}, str(renamed))
    assert torch.equal(load_torch_file(renamed)["w"], torch.ones(2))


def test_numpy_numbers_in_a_checkpoint_load_and_other_objects_are_named(tmp_path):
    """LAION-CLAP's released .pt files carry their optimizer state, whose learning rates its cosine schedule
    computed as np.float64: weights-only loading takes NumPy numbers. Any other pickled class is still
    refused, and the error names it (without the terminal colour codes torch puts in its message)."""
    import argparse

    import numpy as np

    laion = tmp_path / "laion.pt"
    torch.save({"epoch": 45, "state_dict": {"w": torch.ones(2)},
                "optimizer": {"state": {}, "param_groups": [{"lr": np.float64(3e-5), "betas": (0.9, 0.99),
                                                            "step": np.int64(7), "params": [0]}]}}, laion)
    loaded = load_torch_file(laion)
    assert torch.equal(loaded["state_dict"]["w"], torch.ones(2))
    assert loaded["optimizer"]["param_groups"][0]["lr"] == 3e-5 and loaded["optimizer"]["param_groups"][0]["step"] == 7
    other = tmp_path / "args.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=1e-4)}, other)
    with pytest.raises(CheckpointError, match=r"pickles Python objects .*argparse.Namespace") as e:
        load_torch_file(other)
    assert "\x1b" not in str(e.value) and "\n" not in str(e.value)


def test_mel_config_nested_in_component(tmp_path):
    model = TinyNet(TinyNetConfig(mel=MelConfig(n_mels=32)))
    loaded = load_component(save_component(tmp_path / "n", model), TinyNet)
    assert loaded.config.mel == MelConfig(n_mels=32)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs a Linux /proc to refuse a file")
def test_a_folder_that_refuses_files_is_named_by_the_path_asked_for():
    """The temporary file is hidden beside the output: when it cannot be made, the error names the output."""
    from tta.checkpoint import atomic_write_text

    with pytest.raises(CheckpointError, match=r"^/proc/tta-out.wav: cannot write there") as e:
        atomic_write_text("/proc/tta-out.wav", "x")
    assert ".tmp" not in str(e.value)


def test_a_file_where_a_parent_folder_should_be_is_named(tmp_path):
    from tta.checkpoint import atomic_write_text

    (tmp_path / "blocker").write_text("x")
    with pytest.raises(CheckpointError, match=r"out.json: cannot write there \(.*blocker is a file, not a folder\)"):
        atomic_write_text(tmp_path / "blocker" / "sub" / "out.json", "{}")


def test_a_long_file_name_is_written_atomically_and_a_too_long_one_refused_up_front(tmp_path):
    """The temporary file beside the output is named after it and ~18 bytes longer, so a valid 244-byte name failed
    to write; a name over the file system's limit reached the file system and failed with a traceback."""
    from tta.checkpoint import CheckpointError, atomic_write_text, check_output_path

    name = "a" * 244 + ".wav"
    check_output_path(tmp_path / name, "--out")
    atomic_write_text(tmp_path / name, "x")
    assert [p.name for p in tmp_path.iterdir()] == [name]
    with pytest.raises(CheckpointError, match="has a name of 260 bytes; the file system takes at most 255"):
        check_output_path(tmp_path / ("b" * 256 + ".wav"), "--out")
    with pytest.raises(CheckpointError, match="has a name of 300 bytes"):
        check_output_path(tmp_path / ("c" * 300) / "x.wav", "--out")


@pytest.mark.parametrize("field, value, message", [
    ("class", 3, "class is 3; expected a string naming a tta class"),
    ("config", [], "config: expected an object, got list"),
    ("format_version", "1", "format_version '1' is not supported"),
    ("format_version", True, "format_version True is not supported"),   # true == 1 in Python
])
def test_a_damaged_component_config_names_the_field(tmp_path, field, value, message):
    """A class that is not a string failed on "'int' object has no attribute 'rpartition'" (`tta train vocoder`
    with such a vae), and format_version "1" read "format_version 1 is not supported (this tta reads 1)"."""
    folder = save_component(tmp_path / "vae", TinyNet(TinyNetConfig()))
    body = json.loads((folder / "config.json").read_text())
    body[field] = value
    (folder / "config.json").write_text(json.dumps(body))
    for cls in (None, TinyNet):
        with pytest.raises(CheckpointError) as e:
            load_component(folder, cls)
        assert str(e.value).startswith(f"{folder / 'config.json'}: {message}"), e.value


def test_weights_holding_nan_or_inf_are_refused_naming_the_file_and_the_first_key(tmp_path):
    """A component whose weights held NaN or inf loaded without a word and made NaN audio, found at the end of a
    generation as "clip 0 contains non-finite samples", naming neither the file nor the part."""
    from safetensors.torch import load_file, save_file

    from tta.checkpoint import TRANSFORMERS_WEIGHT_NAMES, check_finite, read_foreign_folder

    folder = save_component(tmp_path / "net", TinyNet(TinyNetConfig()), dtype=torch.float16)
    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    assert len(state) > 2
    key = sorted(state)[1]
    state[key] = state[key].clone()
    state[key].view(-1)[-1] = float("inf")          # one value of one tensor, as a float16 overflow leaves it
    save_file(state, str(weights))
    with pytest.raises(CheckpointError) as e:
        load_component(folder, TinyNet)
    assert str(e.value).startswith(f"{weights}: 1 of its {len(state)} weight tensors hold NaN or inf values "
                                   f"(first: {key}); the weights are damaged"), e.value
    # a foreign folder's torch .bin weights, the first bad key in the file's order and how many are bad
    other = tmp_path / "foreign"
    other.mkdir()
    (other / "config.json").write_text("{}")
    torch.save({"a.weight": torch.ones(3), "b.weight": torch.tensor([1.0, float("nan")]),
                "c.bias": torch.full((2,), -float("inf")), "steps": torch.tensor([7])}, other / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin: 2 of its 3 weight tensors hold NaN or inf values "
                                              r"\(first: b.weight\)"):
        read_foreign_folder(other, TRANSFORMERS_WEIGHT_NAMES, what="a model folder")
    # finite weights pass, also where a half-precision sum overflows (the exact test decides) or the storage has no
    # sum of its own (float8); integer tensors and other entries are not weights
    check_finite({"big": torch.full((10_000,), 60_000.0, dtype=torch.float16), "ids": torch.arange(4),
                  "fp8": torch.ones(3).to(torch.float8_e4m3fn), "note": "x", "empty": torch.zeros(0)}, "w")
    with pytest.raises(CheckpointError, match=r"^w: 1 of its 2 weight tensors .* \(first: x.fp8\)"):
        check_finite({"ok": torch.ones(2), "fp8": torch.tensor([1.0, float("nan")]).to(torch.float8_e5m2)}, "w",
                     prefix="x.")


def assert_leaves_global_rng(load, raises: type[Exception] | None = None):
    """Run `load()` (expecting it to raise `raises`, when given) and assert that torch's CPU generator,
    numpy's and Python's draw after it what they would have drawn without it; returns what it loaded."""
    import contextlib
    import random

    import numpy as np

    def draws():
        return torch.rand(3), np.random.rand(3), random.random()

    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    expected = draws()
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    loaded = None
    with pytest.raises(raises) if raises is not None else contextlib.nullcontext():
        loaded = load()
    got = draws()
    assert torch.equal(got[0], expected[0]), "torch's global generator moved"
    assert np.array_equal(got[1], expected[1]) and got[2] == expected[2], "numpy's or Python's generator moved"
    return loaded


def test_loading_a_component_leaves_the_global_random_generators_as_they_were(tmp_path):
    """load_component built the model, drawing initial weights (replaced by the stored ones) from torch's
    global generator, so a script's torch.rand after loading a component gave other numbers than without it
    (load_clap and TTAPipeline.from_pretrained already kept them); so did tta.training.load_final through it.
    A load that fails puts them back too."""
    from tta.training import load_final

    model = TinyNet(TinyNetConfig()).eval()
    folder = save_component(tmp_path / "run" / "final", model)
    loaded = assert_leaves_global_rng(lambda: load_component(folder, TinyNet))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert isinstance(assert_leaves_global_rng(lambda: load_final(tmp_path / "run", TinyNet)), TinyNet)
    other = save_component(tmp_path / "other", TinyNet(TinyNetConfig(channels=5)))
    (folder / "model.safetensors").unlink()
    os.replace(other / "model.safetensors", folder / "model.safetensors")
    assert_leaves_global_rng(lambda: load_component(folder, TinyNet), raises=CheckpointError)


def test_inside_loads_draw_a_load_draws_as_building_the_model_does(tmp_path):
    """Training runs load their frozen parts inside loads_draw() (an LDM run's VAE, CLAP and vocoder): the
    draws are those of building the model, as every load drew before loaders kept the generators, so the model
    built after them starts from the weights the recorded runs started from; a loader nested in another
    (open_clap's load_component) draws too. Outside it, loads keep the generators again."""
    from tta.checkpoint import keep_global_rng, loads_draw

    folder = save_component(tmp_path / "net", TinyNet(TinyNetConfig()))
    torch.manual_seed(5)
    TinyNet(TinyNetConfig())
    built_once = torch.rand(3)
    torch.manual_seed(5)
    TinyNet(TinyNetConfig()), TinyNet(TinyNetConfig())
    built_twice = torch.rand(3)
    torch.manual_seed(5)
    with loads_draw():
        load_component(folder, TinyNet)
    assert torch.equal(torch.rand(3), built_once)
    torch.manual_seed(5)
    with loads_draw(), keep_global_rng():
        load_component(folder, TinyNet)
        TinyNet(TinyNetConfig())
    assert torch.equal(torch.rand(3), built_twice)
    assert_leaves_global_rng(lambda: load_component(folder, TinyNet))
