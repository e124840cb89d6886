"""Strict JSON configs and --set overrides."""

import json
from dataclasses import dataclass, field
from typing import Literal

import pytest

from tta.audio import MelConfig
from tta.config import ConfigError, apply_overrides, counted, from_dict, load_config, save_config, to_dict


@dataclass(frozen=True)
class Inner:
    width: int = 4
    rates: tuple[int, ...] = (2, 2)


@dataclass(frozen=True)
class Outer:
    name: str
    mel: MelConfig = field(default_factory=MelConfig)
    inner: Inner = field(default_factory=Inner)
    lr: float = 1e-3
    mode: Literal["eps", "v"] = "eps"
    dropout: float | None = None
    flag: bool = False

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr} must be > 0")


def test_round_trip_writes_every_field(tmp_path):
    cfg = Outer(name="x", inner=Inner(width=8, rates=(5, 4)), dropout=0.1)
    path = save_config(cfg, tmp_path / "c.json")
    data = json.loads(path.read_text())
    assert data["mel"]["hop_length"] == 160 and data["inner"]["rates"] == [5, 4] and data["mode"] == "eps"
    assert load_config(Outer, path) == cfg


def test_unknown_key_names_key_and_valid_keys():
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, {"name": "x", "inner": {"widht": 3}})
    assert "inner.widht" in str(e.value) and "valid keys: rates, width" in str(e.value)


@pytest.mark.parametrize("data, fragment", [
    ({"name": 3}, "'name': expected str, got int"),
    ({"name": "x", "lr": "fast"}, "'lr': expected float, got string"),
    ({"name": "x", "flag": 1}, "'flag': expected bool, got int"),
    ({"name": "x", "inner": {"rates": [2, "a"]}}, "'inner.rates[1]': expected int"),
    ({"name": "x", "mode": "x0"}, "expected one of ['eps', 'v']"),
    ({"name": "x", "inner": 5}, "expected an object for Inner"),
    ({}, "missing required config key 'name'"),
    ({"name": "x", "mel": {"hop_length": 4096}}, "hop_length"),
    ({"name": "x", "lr": -1}, "lr=-1.0 must be > 0"),
])
def test_bad_values_name_the_key(data, fragment):
    with pytest.raises(ConfigError, match=None) as e:
        from_dict(Outer, data)
    assert fragment in str(e.value)


def test_int_accepted_for_float_and_null_for_optional():
    cfg = from_dict(Outer, {"name": "x", "lr": 1, "dropout": None})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.dropout is None


def test_overrides_apply_and_validate():
    cfg = Outer(name="x")
    out = apply_overrides(cfg, ["inner.width=16", "lr=0.5", "mode=v", "name=run one", "inner.rates=[5,4]",
                                "dropout=0.2", "flag=true"])
    assert (out.inner.width, out.lr, out.mode, out.name, out.inner.rates, out.dropout, out.flag) == \
        (16, 0.5, "v", "run one", (5, 4), 0.2, True)
    assert cfg.inner.width == 4  # frozen: the original is untouched


def test_an_object_for_a_section_sets_its_keys_and_keeps_the_others():
    """--set inner={"width": 16} reset every other key of the section to its default (a tiny config's
    train={"max_steps": 5} came back with the default batch size, rate and checkpoint interval)."""
    cfg = Outer(name="x", inner=Inner(width=8, rates=(5, 4)), mel=MelConfig(hop_length=320))
    out = apply_overrides(cfg, ['inner={"width": 16}', 'mel={"n_mels": 80}'])
    assert out.inner == Inner(width=16, rates=(5, 4)) and (out.mel.n_mels, out.mel.hop_length) == (80, 320)
    assert apply_overrides(cfg, ["inner={}"]).inner == cfg.inner
    with pytest.raises(ConfigError, match="inner.depth"):
        apply_overrides(cfg, ['inner={"depth": 3}'])


@pytest.mark.parametrize("override, fragment", [
    ("inner.width=wide", "'inner.width': expected int, got string 'wide'"),
    ("inner.depth=3", "unknown config key 'inner.depth'; valid keys under inner: rates, width"),
    ("lr.x=3", "unknown config key 'lr.x'"),
    ("lr", "expected KEY=VALUE"),
    ("mel.n_fft=100", "win_length"),
])
def test_bad_overrides(override, fragment):
    with pytest.raises(ConfigError) as e:
        apply_overrides(Outer(name="x"), [override])
    assert fragment in str(e.value)


def test_overrides_given_as_one_string_are_named_as_such():
    """A str was iterated as its characters: apply_overrides(cfg, "name=y") said "override 'n': expected
    KEY=VALUE", blaming a character."""
    with pytest.raises(ConfigError, match=r"overrides='name=y': expected a list of KEY=VALUE strings, got a single str"):
        apply_overrides(Outer(name="x"), "name=y")
    assert apply_overrides(Outer(name="x"), ("name=y",)).name == "y"


def test_bad_json_file_names_file_and_line(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"name": "x",\n "lr": }')
    with pytest.raises(ConfigError, match=r"bad.json: invalid JSON at line 2"):
        load_config(Outer, p)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Outer, tmp_path / "missing.json")
    (tmp_path / "audio.json").write_bytes(b"RIFF\x24\x80\x00\x00WAVEfmt ")     # a wav given as --config
    with pytest.raises(ConfigError, match=r"audio.json: not a UTF-8 text file"):
        load_config(Outer, tmp_path / "audio.json")


def test_to_dict_is_plain_json():
    json.dumps(to_dict(Outer(name="x")))


def test_configs_built_in_python_name_a_str_where_a_number_belongs_and_take_numpy_numbers():
    """MelConfig(sample_rate="16000"), DataConfig(num_workers="2"), ImportOptions(valid_fraction="0.1"),
    DatastoreConfig(nprobe="4") and StarterOptions(workers="2") failed on Python's "'<=' not supported between
    instances of 'str' and 'int'", naming no field; MelConfig(log_floor=nan) was taken; a numpy number was kept
    and the config failed to write as JSON ("Object of type int64 is not JSON serializable")."""
    import math

    import numpy as np

    from tta.data.importers import ImportOptions
    from tta.data.manifest import DataConfig
    from tta.data.recipes.starter import RecipeError, StarterOptions
    from tta.retrieval.datastore import DatastoreConfig

    for make, match in ((lambda: MelConfig(sample_rate="16000"), "mel.sample_rate='16000' must be an integer"),
                        (lambda: MelConfig(f_max="8000"), "mel.f_max='8000' must be a finite number"),
                        (lambda: MelConfig(hop_length=160.5), "mel.hop_length=160.5 must be an integer"),
                        (lambda: MelConfig(log_floor=math.nan), "mel.log_floor=nan must be a finite number"),
                        (lambda: MelConfig(n_mels=True), "mel.n_mels=True must be an integer"),
                        (lambda: DataConfig(num_workers="2"), "data.num_workers='2' must be an integer"),
                        (lambda: DataConfig(repeat_gap=("0.2", 1.0)), r"data.repeat_gap\[0\]='0.2' must be a finite"),
                        (lambda: DataConfig(key_weights={"dog": "4"}), r"data.key_weights\['dog'\]='4' must be"),
                        (lambda: ImportOptions(valid_fraction="0.1"), "valid_fraction='0.1' must be a finite number"),
                        (lambda: DatastoreConfig(nprobe="4"), "nprobe='4' must be an integer"),
                        (lambda: DatastoreConfig(max_seconds="5"), "max_seconds='5' must be a finite number")):
        with pytest.raises(ValueError, match=match):
            make()
    with pytest.raises(RecipeError, match="workers='2' must be an integer"):
        StarterOptions(workers="2")
    mel = MelConfig(sample_rate=np.int64(16_000), f_max=np.float32(8000.0), hop_length=160.0)
    assert mel == MelConfig() and type(mel.sample_rate) is int and type(mel.f_max) is float
    assert type(mel.hop_length) is int
    data = DataConfig(num_workers=np.int64(2), repeat_gap=(np.float32(0.5), 1), key_weights={"dog": np.int64(4)})
    assert json.loads(json.dumps(to_dict(data)))["key_weights"] == {"dog": 4.0}
    assert data.repeat_gap == (0.5, 1) and type(data.repeat_gap[0]) is float and data.num_workers == 2
    assert ImportOptions(valid_fraction=np.float64(0.25)).valid_fraction == 0.25
    assert DatastoreConfig(nprobe=np.int32(4), max_seconds=np.float64(5)).nprobe == 4
    assert StarterOptions(workers=np.int64(2)).workers == 2
    assert DataConfig(segment_seconds=10).segment_seconds == 10   # a Python int in a float field is kept as it is
    # bools: "false" (true to Python) or 0 is named; numpy's bool becomes Python's
    for bad in ("false", 0, None):
        with pytest.raises(ValueError, match=rf"data.normalize={bad!r} must be true or false"):
            DataConfig(normalize=bad)
    with pytest.raises(ValueError, match="normalize='no' must be true or false"):
        DatastoreConfig(normalize="no")
    assert type(DataConfig(normalize=np.bool_(False)).normalize) is bool


def test_a_long_value_is_shortened_one_way_in_every_message():
    """The cut to '...' was written five times (an id prefix, a resume's config difference, eval.json's and
    generation.json's fields, a long caption); the id prefix put its '...' after the closing quote."""
    from tta.config import shortened
    from tta.data.importers import ImportOptions

    assert shortened("x" * 60) == "x" * 60 and shortened("x" * 61) == "x" * 57 + "..."
    assert shortened("abcdef", 5) == "ab..." and len(shortened("y" * 500, 40)) == 40
    with pytest.raises(ValueError) as e:
        ImportOptions(id_prefix="ab" * 40)
    assert str(e.value).startswith(f"id_prefix={'ab' * 18 + 'a...'!r} is 80 characters long; ")


def test_a_foreign_configs_known_fields_are_picked_and_checked():
    """The diffusers / transformers readers (UNet, VAE, SpeechT5 vocoder, scheduler) each picked the fields they
    know by hand before from_dict: one helper, the same checks and messages."""
    from tta.config import from_known_fields
    from tta.ldm.sampling import DiffusionConfig

    foreign = {"_class_name": "DDIMScheduler", "clip_sample": False, "num_train_timesteps": 500.0, "beta_end": 0.02}
    assert from_known_fields(DiffusionConfig, foreign) == DiffusionConfig(num_train_timesteps=500, beta_end=0.02)
    with pytest.raises(ConfigError, match=r"config key 'scheduler.num_train_timesteps': expected int, got "
                                          r"string '1000'"):
        from_known_fields(DiffusionConfig, {**foreign, "num_train_timesteps": "1000"}, where="scheduler")


def test_counted_gives_the_noun_the_number_of_its_count():
    assert [counted(n, "bad item") for n in (0, 1, 2)] == ["0 bad items", "1 bad item", "2 bad items"]
    assert counted(1, "entry", "entries") == "1 entry" and counted(3, "entry", "entries") == "3 entries"
