"""data.balance: label-balanced training sampling (weights count(key)^-balance), deterministic and resumable."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from itertools import islice

import numpy as np
import pytest
import torch

from tests.signals import chirp, noise, tone
from tta.audio import save_audio
from tta.cli import main
from tta.data.manifest import DataConfig, ManifestRow, write_manifest
from tta.training import ResumableSampler, RunError, TrainConfig, TrainingRun, balance_weights


@dataclass(frozen=True)
class _Cfg:
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _stream(sampler, n):
    return list(islice(iter(sampler), n))


def test_weighted_sampler_is_deterministic_and_resumes_at_any_position():
    w = balance_weights(["a"] * 7 + ["b"] * 3 + ["c"], 1.0)
    full = _stream(ResumableSampler(11, seed=5, weights=w), 60)
    assert full == _stream(ResumableSampler(11, seed=5, weights=w), 60)
    for start in (1, 10, 11, 23, 37):
        assert _stream(ResumableSampler(11, seed=5, start=start, weights=w), 60 - start) == full[start:]
    shard1 = _stream(ResumableSampler(11, seed=5, rank=1, world_size=2, weights=w), 10)
    assert shard1 == full[1:21:2]
    assert full != _stream(ResumableSampler(11, seed=6, weights=w), 60)
    assert any(c > 1 for c in np.bincount([i for i, _ in full[:11]]))   # drawn with replacement


def test_weighted_draws_follow_the_weights():
    keys = ["common"] * 90 + ["rare"] * 10
    for balance, rare_share in ((1.0, 0.5), (0.5, 10 * 10**-0.5 / (90 * 90**-0.5 + 10 * 10**-0.5))):
        draws = [i for i, _ in _stream(ResumableSampler(100, seed=0, weights=balance_weights(keys, balance)), 20_000)]
        share = np.mean([keys[i] == "rare" for i in draws])
        assert share == pytest.approx(rare_share, abs=0.02)
        assert len(set(draws)) == 100     # every item is still seen


def test_key_weights_multiply_the_balanced_weights_and_shift_the_draws():
    keys = ["common"] * 90 + ["rare"] * 10
    assert balance_weights(keys, 0.0, {"rare": 4.0}).tolist() == [1.0] * 90 + [4.0] * 10
    w = balance_weights(keys, 1.0, {"rare": 3.0})
    assert torch.allclose(w, balance_weights(keys, 1.0) * torch.tensor([1.0] * 90 + [3.0] * 10, dtype=torch.float64))
    draws = [i for i, _ in _stream(ResumableSampler(100, seed=0, weights=w), 20_000)]
    assert np.mean([keys[i] == "rare" for i in draws]) == pytest.approx(0.75, abs=0.02)   # 3:1 per key


def test_key_weights_need_known_keys_and_positive_numbers(tmp_path):
    class Data:
        def __len__(self):
            return 3

        def balance_keys(self):
            return ["a", "a", "b"]

    run = TrainingRun(tmp_path / "r", _Cfg(data=DataConfig(key_weights={"b": 2.0})), TrainConfig(), progress=False)
    assert run._balance_weights(Data(), None).tolist() == [1.0, 1.0, 2.0]       # works without data.balance
    with pytest.raises(RunError, match="data.key_weights: no training item has the key 'dgo'"):
        TrainingRun(tmp_path / "s", _Cfg(data=DataConfig(key_weights={"dgo": 2.0})), TrainConfig(),
                    progress=False)._balance_weights(Data(), None)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=r"data.key_weights\['b'\]"):
            DataConfig(key_weights={"b": bad})


def test_balance_zero_keeps_the_unweighted_stream(tmp_path):
    old = _stream(ResumableSampler(9, seed=3), 40)
    assert _stream(ResumableSampler(9, seed=3, weights=None), 40) == old
    assert balance_weights(["a", "a", "b"], 0.0).tolist() == [1.0, 1.0, 1.0]

    class Data:
        def __len__(self):
            return 9

    run = TrainingRun(tmp_path / "r", _Cfg(), TrainConfig(), progress=False)
    assert run._balance_weights(Data(), None) is None        # data.balance=0: no keys needed
    with pytest.raises(RunError, match="data.balance=0.5.*no labels"):
        TrainingRun(tmp_path / "s", _Cfg(data=DataConfig(balance=0.5)), TrainConfig(), progress=False) \
            ._balance_weights(Data(), None)


def test_balance_must_be_non_negative_and_older_configs_load():
    from tta.config import ConfigError, from_dict, to_dict

    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="data.balance"):
            DataConfig(balance=bad)
    old = to_dict(DataConfig())
    del old["balance"]
    assert from_dict(DataConfig, old).balance == 0.0
    with pytest.raises((ConfigError, ValueError), match="balance"):
        from_dict(DataConfig, {**old, "balance": -1.0})


@pytest.fixture(scope="module")
def labelled_manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("balance_data")
    signals = [("tone", tone(440, 1.0), ("Tone",), None), ("tone2", tone(660, 1.0), ("Tone", "Music"), None),
               ("tone3", tone(880, 1.0), ("Tone",), None), ("chirp", chirp(100, 7000, 1.0), (), "sfx"),
               ("noise", noise(1.0, seed=1), (), None), ("v", tone(300, 1.0), (), None)]
    rows = []
    for i, (name, wav, labels, category) in enumerate(signals):
        path = save_audio(root / f"{name}.wav", np.clip(wav, -1, 1), 16_000)
        rows.append(ManifestRow(id=name, path=str(path), captions=(f"a {name}",), seconds=1.0, sample_rate=16_000,
                                split="valid" if i == 5 else "train", labels=labels, category=category))
    return write_manifest(root / "manifest.jsonl", rows)


def test_dataset_keys_are_first_label_then_category(labelled_manifest):
    from tta.data.dataset import AudioDataset

    ds = AudioDataset(labelled_manifest, "train", 16_000, 0.5)
    assert ds.balance_keys() == ["Tone", "Tone", "Tone", "sfx", ""]
    w = balance_weights(ds.balance_keys(), 1.0)
    assert torch.allclose(w, torch.tensor([1 / 3, 1 / 3, 1 / 3, 1, 1], dtype=torch.float64))
    assert ds.weight_names() == [("Tone",), ("Tone",), ("Tone",), ("sfx",), ()]
    w = balance_weights(ds.balance_keys(), 0.0, {"Tone": 2.0, "sfx": 3.0}, ds.weight_names())
    assert w.tolist() == [2.0, 2.0, 2.0, 3.0, 1.0]


def test_all_labels_balance_sums_each_labels_weight(labelled_manifest):
    """balance_labels "all": an item weighs the sum of count(label)^-balance over its labels (PSLA's AudioSet
    rule), so a mixture is drawn for its rare labels too, not for its generic first one."""
    from tta.data.dataset import AudioDataset

    ds = AudioDataset(labelled_manifest, "train", 16_000, 0.5)
    keys = ds.balance_keys("all")
    assert keys == [("Tone",), ("Tone", "Music"), ("Tone",), ("sfx",), ("",)]
    w = balance_weights(keys, 1.0)
    assert torch.allclose(w, torch.tensor([1 / 3, 1 / 3 + 1, 1 / 3, 1, 1], dtype=torch.float64))
    # the corpus case: mixtures' first label is "mixture", speech's "speech"; 40 mixtures hold dog or rain
    keys = [("mixture", "dog")] * 20 + [("mixture", "rain")] * 20 + [("dog",)] * 5 + [("rain",)] * 55
    first = balance_weights([k[0] for k in keys], 1.0)
    every = balance_weights(keys, 1.0)
    mixture_share = {name: float(w[:40].sum() / w.sum()) for name, w in (("first", first), ("all", every))}
    assert mixture_share["first"] == pytest.approx(1 / 3)          # "mixture" is one key of three
    assert mixture_share["all"] == pytest.approx((20 * (1 / 40 + 1 / 25) + 20 * (1 / 40 + 1 / 75)) / 3)  # 0.69
    # one label per item: the same weights as the first-label rule
    assert torch.equal(balance_weights([(k,) for k in "aab"], 0.5), balance_weights(list("aab"), 0.5))
    # key weights match the first label (or category) in either mode; without balance they alone weigh
    assert balance_weights(keys[:1] + keys[20:21] + keys[40:41], 0.0, {"dog": 2.0}).tolist() == [1.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="balance_labels"):
        DataConfig(balance_labels="most")


def test_key_weights_match_labels_and_categories_and_multiply():
    keys = ["dog", "rain", "rain", "piano"]
    names = [("dog", "event"), ("rain", "ambience"), ("rain", "ambience"), ("piano", "music")]
    w = balance_weights(keys, 0.0, {"dog": 4.0, "event": 2.0, "ambience": 3.0}, names)
    assert w.tolist() == [8.0, 3.0, 3.0, 1.0]


def test_tiny_vae_run_trains_with_balance(repo_root, tmp_path, labelled_manifest, caplog):
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="tta.training"):
        assert main(["-q", "train", "vae", "--config", str(repo_root / "configs/vae/tiny.json"), "--out", str(out),
                     "--set", f"data.manifest={labelled_manifest}", "--set", "data.balance=0.5"]) == 0
    assert json.loads((out / "config.json").read_text())["data"]["balance"] == 0.5
    assert (out / "final" / "model.safetensors").is_file()
    assert "data.balance=0.5: 3 keys over 5 items" in caplog.text


def test_ldm_on_precomputed_latents_balances_and_shares_the_latent_cache(tmp_path, caplog):
    from tests.test_ldm_fixtures import tiny_run_config
    from tta.ldm.train import train

    cache = tmp_path / "cache"
    sets = {"train.max_steps": 1, "validation.prompts": [], "components.vocoder": "", "precompute": True,
            "cache_dir": str(cache)}
    train(tiny_run_config(**sets), tmp_path / "plain", progress=False)
    with caplog.at_level(logging.INFO, logger="tta.training"):
        final = train(tiny_run_config(**sets, **{"data.balance": 1.0}), tmp_path / "balanced", progress=False)
    assert (final / "model.safetensors").is_file()
    assert "data.balance=1: 1 keys over 6 items" in caplog.text
    assert len(list(cache.glob("latents-*.pt"))) == 1     # data.balance is not part of the cache key
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tta.training"):
        train(tiny_run_config(**sets, **{"data.balance": 1.0, "data.balance_labels": "all"}), tmp_path / "all",
              progress=False)
    assert "data.balance=1: 1 keys over 6 items" in caplog.text
    assert len(list(cache.glob("latents-*.pt"))) == 1     # nor is data.balance_labels
    # the same VAE weights framing audio the other way encode other latents: a cache of their own
    import shutil

    from tests.test_ldm_fixtures import tiny_components

    vae = shutil.copytree(tiny_components()["vae"], tmp_path / "vae-tacotron")
    body = json.loads((vae / "config.json").read_text())
    body["config"]["mel"]["framing"] = "tacotron"
    (vae / "config.json").write_text(json.dumps(body))
    train(tiny_run_config(**sets, **{"components.vae": str(vae)}), tmp_path / "tacotron", progress=False)
    assert len(list(cache.glob("latents-*.pt"))) == 2


def test_ldm_run_applies_key_weights_by_category(tmp_path, labelled_manifest, caplog):
    from tests.test_ldm_fixtures import tiny_run_config
    from tta.ldm.train import train

    sets = {"train.max_steps": 1, "validation.prompts": [], "components.vocoder": "",
            "data.manifest": str(labelled_manifest), "data.key_weights": {"sfx": 3.0}}
    with caplog.at_level(logging.INFO, logger="tta.training"):
        final = train(tiny_run_config(**sets), tmp_path / "run", progress=False)
    assert (final / "model.safetensors").is_file()
    # 5 training items, one of category "sfx": weight 3 of 3 + 4 = 3/7 of the draws
    assert "data.key_weights: 'sfx' x3 -> 42.9% of draws (1 items)" in caplog.text


@pytest.mark.parametrize("field, value", [("data.key_weights", '{"dgo": 2}'),
                                          ("data.repeat_gap_by_key", '{"dgo": [1, 2]}'),
                                          ("data.speed_by_key", '{"dgo": [0.8, 1.25]}')])
def test_cli_names_an_unknown_key_in_one_line(repo_root, tmp_path, labelled_manifest, capsys, field, value):
    # any trainer: the keys are checked where training batches are drawn
    out = tmp_path / "run"
    rc = main(["train", "vae", "--config", str(repo_root / "configs/vae/tiny.json"), "--out", str(out),
               "--set", f"data.manifest={labelled_manifest}", "--set", f"{field}={value}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and "Traceback" not in "\n".join(err)
    assert any(f"{field}: no training item has the key 'dgo'" in line for line in err)
    assert not (out / "final").exists()


def test_ldm_rejects_an_unknown_key_weight_before_pre_encoding(tmp_path, labelled_manifest):
    from tests.test_ldm_fixtures import tiny_run_config
    from tta.ldm.train import train

    cache = tmp_path / "cache"
    sets = {"train.max_steps": 1, "validation.prompts": [], "components.vocoder": "", "precompute": True,
            "cache_dir": str(cache), "data.manifest": str(labelled_manifest), "data.key_weights": {"dgo": 2.0}}
    with pytest.raises(RunError, match="no training item has the key 'dgo'"):
        train(tiny_run_config(**sets), tmp_path / "run", progress=False)
    assert not list(cache.glob("latents-*.pt"))     # failed before encoding anything


def test_ldm_rejects_a_repeat_gap_for_an_unknown_key(tmp_path, labelled_manifest):
    from tests.test_ldm_fixtures import tiny_run_config
    from tta.ldm.train import train

    sets = {"train.max_steps": 1, "validation.prompts": [], "components.vocoder": "",
            "data.manifest": str(labelled_manifest), "data.repeat_gap_by_key": {"dgo": [1.0, 2.0]}}
    with pytest.raises(RunError, match="data.repeat_gap_by_key: no training item has the key 'dgo'"):
        train(tiny_run_config(**sets), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "final").exists()


def test_ldm_trains_on_the_fly_with_a_speed_range(tmp_path, labelled_manifest):
    from tests.test_ldm_fixtures import tiny_run_config
    from tta.ldm.train import train

    sets = {"train.max_steps": 2, "validation.prompts": [], "components.vocoder": "",
            "data.manifest": str(labelled_manifest), "data.key_weights": {"sfx": 1000.0},    # drawn: the chirp
            "data.speed_by_key": {"sfx": [0.8, 1.25], "Tone": [0.5, 0.5]}}
    final = train(tiny_run_config(**sets), tmp_path / "run", progress=False)
    assert (final / "model.safetensors").is_file()
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data"]["speed_by_key"] == {"sfx": [0.8, 1.25], "Tone": [0.5, 0.5]}
