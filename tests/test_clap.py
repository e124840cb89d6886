"""tta's own CLAP: learning on a toy corpus, the shared embedding interface, cache, metrics, CLI."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from tests.clap_toy import KINDS, SR, make_corpus, render
from tests.signals import chirp, noise, tone
from tta.clap.metrics import ClapScore, retrieval_metrics, zero_shot_accuracy
from tta.clap.model import ClapConfig, TTAClap, TTAClapEmbedder, contrastive_loss
from tta.clap.train import (AugmentConfig, RunConfig, augment_captions, keyword_caption, merge_captions, param_groups,
                            train)
from tta.config import apply_overrides, load_config

STEPS = 30


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny towers are far too small for intra-op parallelism; one thread avoids spin-waiting on a
    shared CPU (measured ~10x faster per step under load)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clap_toy")
    return make_corpus(folder, labels=True)


@pytest.fixture(scope="module")
def trained(toy, tmp_path_factory):
    """A tiny CLAP trained by `tta.clap.train.train` on the toy corpus (shared by the tests below)."""
    torch.set_num_threads(1)
    cfg = load_config(RunConfig, "configs/clap/tiny.json")
    cfg = apply_overrides(cfg, [f"data.manifest={json.dumps(str(toy))}", f"train.max_steps={STEPS}",
                                f"train.checkpoint_every={STEPS}", f"train.validate_every={STEPS}",
                                "train.log_every=5", "augment.template_prob=0.0"])
    out = tmp_path_factory.mktemp("clap_run") / "run"
    final = train(cfg, out, progress=False)
    return out, final


def _rows(run, split):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


def test_tiny_clap_learns_toy_retrieval(trained, toy):
    run, final = trained
    assert (final / "model.safetensors").is_file() and (run / "checkpoints" / f"step_{STEPS}").is_dir()
    train_rows, valid = _rows(run, "train"), _rows(run, "valid")
    first, late = np.mean([r["loss"] for r in train_rows[:2]]), np.mean([r["loss"] for r in train_rows[-2:]])
    assert late < 0.6 * first, (first, late)
    last = valid[-1]
    assert last["num_audio"] == len(KINDS) and last["model"].startswith("tta-clap:")
    chance_r1 = 1 / len(KINDS)
    # held-out renders of eight sound kinds: far above chance (1/8) both ways
    assert last["t2a_R@1"] >= 5 * chance_r1, last
    assert last["a2t_R@1"] >= 4 * chance_r1, last
    assert last["t2a_mAP@10"] >= 0.7, last


def test_untrained_model_is_near_chance_on_same_data(toy):
    """The same validation with random weights: shows the learning test measures learning."""
    from tta.clap.train import validate
    from tta.data.dataset import AudioDataset

    cfg = load_config(RunConfig, "configs/clap/tiny.json")
    ds = AudioDataset(toy, "valid", SR, 0.5, random_crop=False, caption_choice="first")
    m = validate(TTAClap(cfg.model), ds, 8, 0, "cpu", model_name="untrained")
    assert m["t2a_R@1"] <= 0.5


def test_the_same_weights_through_another_front_end_are_another_identity(trained, tmp_path):
    """A CLAP's mel settings and text max_length are not in its weights: a copy with another hop length embeds
    differently and must not share caches or datastores with the original (it had the same identity)."""
    import shutil
    from pathlib import Path

    from tta.clap import load_clap

    run, _ = trained
    base = load_clap(run)
    weights = base.identity.split("-fe")[0]
    idents = {base.identity}
    for name, change in (("hop", ("mel", "hop_length", 320)), ("floor", ("mel", "log_floor", 1e-3))):
        folder = tmp_path / name
        shutil.copytree(run / "final", folder)
        config = json.loads((folder / "config.json").read_text())
        config["config"][change[0]][change[1]] = change[2]
        (folder / "config.json").write_text(json.dumps(config))
        idents.add(load_clap(folder).identity)
    assert len(idents) == 3 and all(i.startswith(weights + "-fe") for i in idents - {base.identity})
    # a default front end keeps the weights-only identity that existing stores and caches are keyed by
    shipped = Path(__file__).resolve().parents[1] / "tta" / "assets" / "default" / "text_encoder"
    assert "-fe" not in load_clap(shipped).identity


def test_embedder_interface_from_run_folder(trained):
    from tta.clap import load_clap

    run, _ = trained
    clap = load_clap(run)
    assert clap.identity.startswith("tta-clap:") and clap.sample_rate == 16_000
    text = clap.embed_text(["a low steady hum", "", "slow knocking"])
    rng = np.random.default_rng(1)
    audio = clap.embed_audio(np.stack([render("low", rng), render("knock", rng)]), SR)
    assert text.shape == (3, clap.embed_dim) and audio.shape == (2, clap.embed_dim)
    for e in (text, audio):
        assert torch.allclose(e.norm(dim=-1), torch.ones(len(e)), atol=1e-5)
    # "" is a real (unconditional) embedding, distinct from any caption
    assert torch.isfinite(text[1]).all() and (text[1] @ text[0]) < 0.999
    # variable-length list input; one clip alone equals the same clip inside a batch
    single = clap.embed_audio(render("low", np.random.default_rng(1)), SR)
    assert torch.allclose(single[0], audio[0], atol=1e-5)
    mixed = clap.embed_audio([render("low", rng), render("hiss", rng, seconds=0.8)], SR)
    assert mixed.shape == (2, clap.embed_dim)


def test_audio_is_resampled_inside(trained):
    from tta.clap import load_clap

    clap = load_clap(trained[0])
    a16 = clap.embed_audio(tone(440, 0.5, 16_000), 16_000)
    a48 = clap.embed_audio(tone(440, 0.5, 48_000), 48_000)
    assert float(a16[0] @ a48[0]) > 0.98


def test_cache_hit_returns_identical_embeddings(trained, tmp_path):
    from tta.clap import load_clap

    clap = load_clap(trained[0], cache_dir=tmp_path / "cache")
    wav = np.stack([render(k, np.random.default_rng(3)) for k in ("hiss", "tick")])
    caps = ["loud white noise hiss", "rapid ticking clicks"]
    t1, a1 = clap.embed_text(caps), clap.embed_audio(wav, SR)
    assert clap.cache.hits == 0 and clap.cache.misses == 4
    t2, a2 = clap.embed_text(caps), clap.embed_audio(wav, SR)
    assert clap.cache.hits == 4
    assert torch.equal(t1, t2) and torch.equal(a1, a2)
    # the cache is keyed by content: other audio misses
    clap.embed_audio(wav * 0.5, SR)
    assert clap.cache.misses == 6
    # and by model identity: another model never reads these entries
    other = TTAClapEmbedder(clap.model, identity="tta-clap:other", cache_dir=tmp_path / "cache")
    other.embed_text(caps)
    assert other.cache.hits == 0


def test_bad_inputs_raise_clear_errors(trained, caplog):
    from tta.clap import load_clap

    clap = load_clap(trained[0])
    with pytest.raises(ValueError, match="empty caption list"):
        clap.embed_text([])
    with pytest.raises(ValueError, match="single str"):
        clap.embed_text("a dog")
    with pytest.raises(ValueError, match="shorter than one frame"):
        clap.embed_audio(np.zeros(500, np.float32), SR)
    with pytest.raises(ValueError, match="non-finite"):
        clap.embed_audio(np.full(SR, np.nan, np.float32), SR)
    with pytest.raises(ValueError, match="float audio"):
        clap.embed_audio(np.zeros(SR, np.int16), SR)
    with pytest.raises(ValueError, match="sample_rate"):
        clap.embed_audio(np.zeros(SR, np.float32), 0)
    with caplog.at_level(logging.WARNING, logger="tta.clap"):
        long = clap.embed_text(["noise " * 200])
    assert long.shape[0] == 1 and "truncated" in caplog.text


def test_cli_score_and_retrieve(trained, toy, tmp_path, capsys):
    from tta.cli import main

    run, _ = trained
    out = tmp_path / "score.json"
    assert main(["-q", "clap", "score", "--clap", str(run), "--manifest", str(toy), "--split", "valid",
                 "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["num_items"] == len(KINDS) and len(res["per_item"]) == len(KINDS)
    assert res["model"].startswith("tta-clap:") and -1 <= res["clap_score"] <= 1
    assert res["clap_score"] == pytest.approx(np.mean([r["score"] for r in res["per_item"]]))
    assert "CLAP score" in capsys.readouterr().out

    # folder + .txt prompts, paired in sorted order; a count mismatch is a one-line error (exit 1)
    audio_dir = toy.parent / "audio"
    files = sorted(audio_dir.glob("*.wav"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(KINDS[f.stem.split("_")[1]] for f in files) + "\n")
    assert main(["-q", "clap", "score", "--clap", str(run), "--audio", str(audio_dir), "--prompts",
                 str(prompts), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["num_items"] == len(files)
    prompts.write_text("only one prompt\n")
    assert main(["-q", "clap", "score", "--clap", str(run), "--audio", str(audio_dir), "--prompts",
                 str(prompts)]) == 1
    assert "1 prompts but" in capsys.readouterr().err

    rout = tmp_path / "retrieve.json"
    assert main(["-q", "clap", "retrieve", "--clap", str(run), "--manifest", str(toy), "--split", "valid",
                 "--out", str(rout)]) == 0
    metrics = json.loads(rout.read_text())
    assert metrics["t2a_R@1"] >= 0.5 and metrics["model"].startswith("tta-clap:")
    assert main(["-q", "clap", "retrieve", "--clap", str(run), "--manifest", str(toy), "--split", "valid",
                 "--query", "a rising whistle sweep", "--top-k", "2", "--out", str(rout)]) == 0
    hits = json.loads(rout.read_text())["queries"][0]["hits"]
    assert len(hits) == 2 and "rise" in hits[0]["file"]


def test_cli_skips_unreadable_audio_and_goes_on(trained, toy, tmp_path, capsys, caplog):
    """A batch names each bad file and scores the rest; only a folder with no readable file is an error."""
    import shutil

    from tta.cli import main

    run, _ = trained
    audio_dir = tmp_path / "audio"
    shutil.copytree(toy.parent / "audio", audio_dir)
    good = sorted(audio_dir.glob("*.wav"))
    (audio_dir / "zz_text.wav").write_text("not audio")
    import soundfile as sf

    sf.write(audio_dir / "zz_short.wav", np.zeros(100, np.float32), SR)   # shorter than one analysis window
    (audio_dir / "zz_link.wav").symlink_to(tmp_path / "moved.wav")   # a dead link was left out without a word
    out = tmp_path / "r.json"
    assert main(["-q", "clap", "retrieve", "--clap", str(run), "--audio", str(audio_dir),
                 "--query", "a tone", "--top-k", "1000", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert len(res["queries"][0]["hits"]) == len(good) and len(res["skipped"]) == 3
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("zz_text.wav" in m for m in warned) and any("zz_short.wav: 100 samples" in m for m in warned)
    assert any("zz_link.wav: file not found (a symbolic link to" in m for m in warned)
    prompts = tmp_path / "p.txt"   # paired by position with the folder's files, the dead link included
    prompts.write_text("\n".join(["a tone"] * (len(good) + 3)) + "\n")
    assert main(["-q", "clap", "score", "--clap", str(run), "--audio", str(audio_dir),
                 "--prompts", str(prompts), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["num_items"] == len(good)
    for f in good:
        f.unlink()
    capsys.readouterr()
    assert main(["-q", "clap", "retrieve", "--clap", str(run), "--audio", str(audio_dir),
                 "--query", "x"]) == 1
    assert "none of the 3 audio files is readable and long enough" in capsys.readouterr().err


def test_cli_names_its_clap_as_index_and_import_do(trained, toy, tmp_path, capsys):
    """`tta clap score|retrieve` named the CLAP --model where `tta index` and `tta import` name it --clap:
    `--clap DIR` was refused ('the following arguments are required: --model'). --clap is its name, shown
    first in --help; --model, its older name, gives the same result."""
    from tta.cli import main

    run, _ = trained
    for action, extra in (("score", []), ("retrieve", ["--query", "a rising whistle sweep"])):
        results = []
        for flag in ("--clap", "--model"):
            out = tmp_path / f"{action}{flag}.json"
            assert main(["-q", "clap", action, flag, str(run), "--manifest", str(toy), "--split", "valid",
                         *extra, "--out", str(out)]) == 0
            results.append(json.loads(out.read_text()))
        assert results[0] == results[1] and results[0]["model"].startswith("tta-clap:")
        capsys.readouterr()
        with pytest.raises(SystemExit):
            main(["clap", action, "--help"])
        text = capsys.readouterr().out
        assert " --clap CLAP " in text.split("\n\n")[0] and "--clap CLAP, --model CLAP" in text


def test_retrieval_metrics_follow_their_definitions():
    eye = torch.eye(4)
    m = retrieval_metrics(eye, eye, [0, 1, 2, 3], model="x")
    assert all(m[f"{d}_{k}"] == 1.0 for d in ("t2a", "a2t") for k in ("R@1", "R@5", "R@10", "mAP@10"))
    # caption 0 ranks its audio second (audio 1 is closer), the others rank theirs first
    text = torch.nn.functional.normalize(torch.tensor([[0.6, 0.8, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), dim=-1)
    audio = torch.eye(3)
    m = retrieval_metrics(text, audio, [0, 1, 2])
    assert m["t2a_R@1"] == pytest.approx(2 / 3) and m["t2a_R@5"] == 1.0
    assert m["t2a_mAP@10"] == pytest.approx((1 / 2 + 1 + 1) / 3)
    # two captions for audio 0: audio->text AP averages precision at both relevant ranks
    m = retrieval_metrics(torch.eye(3)[[0, 0, 1]], torch.eye(3)[:2], [0, 0, 1])
    assert m["a2t_mAP@10"] == 1.0 and m["num_text"] == 3
    with pytest.raises(ValueError):
        retrieval_metrics(eye, eye, [0, 1, 2])
    z = zero_shot_accuracy(torch.eye(3), torch.eye(3), [0, 1, 1])
    assert z["top1"] == pytest.approx(2 / 3) and z["chance"] == pytest.approx(1 / 3)


def test_clap_score_metric_is_mean_cosine():
    a, b = torch.randn(6, 8), torch.randn(6, 8)
    metric = ClapScore()
    metric.update(a[:4], b[:4])
    metric.update(a[4:], b[4:])
    expected = torch.nn.functional.cosine_similarity(a, b, dim=-1).mean()
    assert float(metric.compute()) == pytest.approx(float(expected), abs=1e-6)


def test_contrastive_loss_merges_shared_captions():
    audio = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    assert contrastive_loss(audio, audio, torch.tensor(10.0)) < contrastive_loss(audio, audio.roll(1, 0),
                                                                                torch.tensor(10.0))
    captions, idx = merge_captions(["a", "b", "a", "c"])
    assert captions == ["a", "b", "c"] and idx.tolist() == [0, 1, 0, 2]
    # two clips of one caption that both match it perfectly: no false-negative penalty between them
    text = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    clips = text[[0, 0, 1]]
    loss = contrastive_loss(clips, text, torch.tensor(50.0), torch.tensor([0, 0, 1]))
    assert float(loss) < 0.4


def test_keyword_captions_come_from_labels():
    rng = np.random.default_rng(0)
    caps = {keyword_caption(("Dog", "Rain", "Thunder"), rng) for _ in range(50)}
    assert len(caps) > 10 and all(any(w in c for w in ("dog", "rain", "thunder")) for c in caps)

    class Row:
        labels = ("dog",)

    out = augment_captions(["orig"] * 100, [Row()] * 100, AugmentConfig(template_prob=0.5), rng)
    assert 20 < sum(c != "orig" for c in out) < 80 and all("dog" in c for c in out if c != "orig")


def test_loading_the_minilm_text_tower_hides_transformers_bars_and_leaves_huggingface_hubs_as_they_were(capfd):
    """Its BertModel load hides transformers' "Loading weights" bar, and that alone: transformers' own switches
    (5.x) turned huggingface_hub's bars on for the whole process afterwards, dropping a caller's per-group
    settings ("huggingface_hub.http_get" off)."""
    import importlib

    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    from tta.checkpoint import set_library_bars
    from tta.clap.towers import TextTower, TextTowerConfig

    hub_states = importlib.import_module("huggingface_hub.utils.tqdm").progress_bar_states
    was, bars = dict(hub_states), hf_logging.is_progress_bar_enabled()
    try:
        hf_logging.enable_progress_bar()
        hub_utils.disable_progress_bars("huggingface_hub.http_get")
        capfd.readouterr()
        TextTower(TextTowerConfig())
        assert "Loading weights" not in capfd.readouterr().err
        assert hub_utils.are_progress_bars_disabled("huggingface_hub.http_get")
        assert not hub_utils.are_progress_bars_disabled() and hf_logging.is_progress_bar_enabled()
    finally:
        set_library_bars(hf_logging, bars)
        hub_states.clear()
        hub_states.update(was)


def test_minilm_text_tower_is_referenced_not_copied(tmp_path):
    """The real sentence model: frozen weights stay in the package (hash recorded); tuned layers are saved."""
    from tta.checkpoint import load_component, read_component_config, save_component
    from tta.clap.towers import AudioTowerConfig, TextTowerConfig

    cfg = ClapConfig(audio=AudioTowerConfig(channels=(4,), hidden_dim=8), text=TextTowerConfig(tune_layers=1),
                     joint_dim=16)
    model = TTAClap(cfg)
    assert len(model.config.text.sha256) == 64
    keys = set(model.state_dict())
    assert any(k.startswith("text.bert.encoder.layer.5.") for k in keys)
    assert not any(k.startswith(("text.bert.encoder.layer.0.", "text.bert.embeddings.")) for k in keys)
    save_component(tmp_path / "clap", model)
    assert (tmp_path / "clap" / "model.safetensors").stat().st_size < 12_000_000   # MiniLM alone is ~90 MB
    assert read_component_config(tmp_path / "clap")["config"]["text"]["sha256"] == model.config.text.sha256
    loaded = load_component(tmp_path / "clap", TTAClap)
    caps = ["a dog barks in the rain", ""]
    with torch.no_grad():
        assert torch.allclose(model.eval().encode_text(caps), loaded.encode_text(caps), atol=1e-6)
    # pretrained sentence similarity survives the (random) projection's absence: raw tower features
    feats = loaded.text(["a dog barks", "a puppy is barking", "a jet engine roars"])
    sims = torch.nn.functional.cosine_similarity(feats[0:1], feats[1:], dim=-1)
    assert sims[0] > sims[1]
    bad = read_component_config(tmp_path / "clap")
    bad["config"]["text"]["sha256"] = "0" * 64
    (tmp_path / "clap" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="SHA-256"):
        load_component(tmp_path / "clap", TTAClap)


def test_tuned_text_layers_get_their_own_learning_rate():
    """text_lr_scale applies to the tuned transformer layers only; a frozen tower adds no group."""
    cfg = apply_overrides(load_config(RunConfig, "configs/clap/tiny.json"), ["text_lr_scale=0.1"])
    model = TTAClap(cfg.model)   # tiny: 2 random layers, both tuned
    groups = param_groups(model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    assert len(groups) == 2 and groups[1]["lr"] == pytest.approx(cfg.train.learning_rate * 0.1)
    assert groups[1]["params"] and all(names[id(p)].startswith("text.bert.encoder.layer.") for p in groups[1]["params"])
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())
    opt = torch.optim.AdamW(groups, lr=cfg.train.learning_rate)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([cfg.train.learning_rate, cfg.train.learning_rate * 0.1])
    frozen = apply_overrides(cfg, ["model.text.tune_layers=0"])
    assert len(param_groups(TTAClap(frozen.model), frozen)) == 1
    with pytest.raises(ValueError, match="text_lr_scale"):
        apply_overrides(cfg, ["text_lr_scale=0"])


def test_training_resumes_bit_exact(toy, tmp_path):
    """Kill after step 2 (simulated by removing what came later) and resume: same weights as straight."""
    import shutil

    from tta.checkpoint import load_state_dict

    cfg = apply_overrides(load_config(RunConfig, "configs/clap/tiny.json"),
                          [f"data.manifest={json.dumps(str(toy))}", "train.max_steps=4", "train.checkpoint_every=2",
                           "train.keep_checkpoints=0", "train.validate_every=100", "augment.template_prob=0.5"])
    straight = train(cfg, tmp_path / "a", progress=False)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step_4")
    shutil.rmtree(tmp_path / "b" / "final")
    resumed = train(cfg, tmp_path / "b", resume=True, progress=False)
    a, b = load_state_dict(straight / "model.safetensors"), load_state_dict(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in _rows(tmp_path / "a", "train")] == [r["loss"] for r in _rows(tmp_path / "b", "train")]


def test_the_logit_scale_parameter_is_kept_at_its_cap(toy, tmp_path):
    """Started above the cap (1 / 0.005 = 200 > 100), the parameter itself is clamped after each step, so it
    is not stranded where scale() has no gradient."""
    import math

    from tta.checkpoint import load_state_dict

    cfg = apply_overrides(load_config(RunConfig, "configs/clap/tiny.json"),
                          [f"data.manifest={json.dumps(str(toy))}", "train.max_steps=1",
                           "model.init_temperature=0.005", "model.max_logit_scale=100.0",
                           "augment.template_prob=0.0", "valid_max_items=4"])
    final = train(cfg, tmp_path / "run", progress=False)
    scale = float(load_state_dict(final / "model.safetensors")["logit_scale"])
    assert scale == pytest.approx(math.log(100.0), abs=1e-6)


def test_a_valid_split_with_missing_files_is_an_error_and_an_empty_one_a_warning(toy, tmp_path, caplog):
    """A held-out clip gone since the manifest was written made CLAP train without validation (a warning), where
    the VAE and vocoder trainers refuse; only an empty held-out split is a warning."""
    from tta.data.manifest import ManifestError

    rows = [json.loads(line) for line in toy.read_text().splitlines()]
    rows = [dict(r, path=str(toy.parent / r["path"])) for r in rows]   # the manifest is written elsewhere
    assert any(r["split"] == "valid" for r in rows)
    gone = dict(next(r for r in rows if r["split"] == "valid"), id="gone", path=str(tmp_path / "gone.wav"))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in [*rows, gone]))
    cfg = apply_overrides(load_config(RunConfig, "configs/clap/tiny.json"),
                          [f"data.manifest={json.dumps(str(manifest))}", "train.max_steps=1",
                           "augment.template_prob=0.0"])
    with pytest.raises(ManifestError, match=r"1 of split 'valid''s audio files are missing \(rows gone\)"):
        train(cfg, tmp_path / "a", progress=False)
    cfg = apply_overrides(cfg, ['data.valid_split="test"'])
    with caplog.at_level("WARNING"):
        assert (train(cfg, tmp_path / "b", progress=False) / "model.safetensors").is_file()
    assert "no validation" in caplog.text and "split 'test' has no rows" in caplog.text


def test_an_empty_cache_entry_is_recomputed(tmp_path):
    """An empty .npy (a crash before the data reached the disk) raised EOFError out of the cache."""
    import numpy as np

    from tta.clap.cache import EmbeddingCache

    cache = EmbeddingCache(tmp_path, "tta-clap:x")
    cache.put("k", np.ones(3, np.float32))
    next(tmp_path.rglob("*.npy")).write_bytes(b"")
    assert cache.get("k") is None


def test_clap_score_reads_a_float_file_as_tta_eval_does(trained, tmp_path):
    """`tta clap score` scored a float WAV's raw samples and `tta eval` its 16-bit copy: one file, two scores."""
    import soundfile as sf

    from tta.audio import save_audio
    from tta.cli import main

    run, _ = trained
    quiet = (noise(1.0, seed=3) * 1e-4).astype(np.float32)   # below 16-bit resolution in places
    wav = np.concatenate([quiet, chirp(200, 4000, 1.0)]).astype(np.float32)
    (tmp_path / "f").mkdir()
    (tmp_path / "i").mkdir()
    sf.write(tmp_path / "f" / "q.wav", wav, SR, subtype="FLOAT")
    save_audio(tmp_path / "i" / "q.wav", wav, SR)   # its 16-bit copy, as tta writes it
    scores = []
    for folder in ("f", "i"):
        (tmp_path / "p.txt").write_text("a rising chirp\n")
        assert main(["-q", "clap", "score", "--clap", str(run), "--audio", str(tmp_path / folder), "--prompts",
                     str(tmp_path / "p.txt"), "--out", str(tmp_path / f"{folder}.json")]) == 0
        scores.append(json.loads((tmp_path / f"{folder}.json").read_text())["clap_score"])
    assert scores[0] == scores[1]


def test_a_clap_run_that_has_not_finished_names_the_checkpoint_to_use(trained, tmp_path):
    """A run folder without final/ had its own config.json read as the model's: 'neither a tta CLAP component nor
    a transformers CLAP config'."""
    import shutil

    from tta.clap import load_clap

    run, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "final")
    with pytest.raises(ValueError, match=r"a training run that has not finished \(no final/\); pass a checkpoint's "
                                         r"component, e\.g\. .*checkpoints/step_\d+/model"):
        load_clap(copy)


def test_clap_scores_refuse_a_bare_string_for_the_prompts():
    """Both CLAP score functions listed a str into its characters: "ab" scored two clips against the prompts "a"
    and "b" without a word, and one prompt for one clip was refused as "11 prompts but 1 audio clips"."""
    from eval.clap_score import clap_score as eval_clap_score
    from tta.clap.metrics import clap_score

    torch.manual_seed(0)
    cfg = load_config(RunConfig, "configs/clap/tiny.json")
    clap = TTAClapEmbedder(TTAClap(cfg.model))
    wavs = [tone(440, 0.5), chirp(300, 3000, 0.5)]
    for score in (clap_score, eval_clap_score):
        with pytest.raises(ValueError, match="clap_score expects a list of prompts, got a single str"):
            score(clap, "ab", wavs, 16_000)
        with pytest.raises(ValueError, match="clap_score expects a list of prompts, got a single str"):
            score(clap, "a dog barks", wavs[:1], 16_000)
    assert len(clap_score(clap, ("a", "b"), np.stack(wavs), 16_000)["per_item"]) == 2
    assert eval_clap_score(clap, ["a", "b"], wavs, 16_000)["num_items"] == 2


def test_one_clap_score_serves_tta_eval_and_tta_clap_score():
    """Two implementations (eval.clap_score's counted "count", tta.clap.metrics' "num_items") scored the same clips
    a few 1e-8 apart; a batch_size given as "8" failed on "'str' object cannot be interpreted as an integer"."""
    from eval.clap_score import clap_score as eval_clap_score
    from tta.clap.metrics import clap_score

    assert eval_clap_score is clap_score
    torch.manual_seed(0)
    clap = TTAClapEmbedder(TTAClap(load_config(RunConfig, "configs/clap/tiny.json").model))
    wavs = [tone(440, 0.5), chirp(300, 3000, 0.7), noise(0.5)]
    out = clap_score(clap, ["a", "b", "c"], wavs, 16_000, batch_size=2)
    assert set(out) == {"clap_score", "per_item", "num_items", "model", "sample_rate", "scale"}
    assert out["num_items"] == 3 and out["model"] == clap.identity
    other = clap_score(clap, ["a", "b", "c"], [wavs[0], wavs[1], tone(880, 0.5)], 16_000, batch_size=2)
    assert other["per_item"][:2] == out["per_item"][:2]   # each clip is embedded alone, not with its neighbours
    for bad, match in (("8", "batch_size='8' must be an integer"), (0, "batch_size=0 must be >= 1")):
        with pytest.raises(ValueError, match=match):
            clap_score(clap, ["a"], wavs[:1], 16_000, batch_size=bad)


def test_a_device_this_machine_lacks_is_named_before_the_clap_loads(tmp_path):
    """load_clap(..., device="gpu") failed on torch's list of every device type (a RuntimeError) and "cuda" on a
    machine without it on "Torch not compiled with CUDA enabled" (an AssertionError), each once the model had
    loaded; clap.to(torch.bfloat16) failed on "device() received an invalid combination of arguments"."""
    from tta.checkpoint import save_component
    from tta.clap import load_clap

    torch.manual_seed(0)
    save_component(tmp_path / "clap", TTAClap(load_config(RunConfig, "configs/clap/tiny.json").model))
    with pytest.raises(ValueError, match="device='gpu': expected a torch device or its name"):
        load_clap(tmp_path / "clap", device="gpu")
    with pytest.raises(ValueError, match=r"device='cuda:99': (no CUDA device|this machine has)"):
        load_clap(tmp_path / "clap", device="cuda:99")
    clap = load_clap(tmp_path / "clap", device=torch.device("cpu"))
    with pytest.raises(ValueError, match="device=torch.bfloat16: expected a device, got a dtype"):
        clap.to(torch.bfloat16)
    with pytest.raises(ValueError, match="device='cuda:99'"):
        TTAClapEmbedder(clap.model, device="cuda:99")
    assert clap.to("cpu").device == torch.device("cpu") and clap.embed_text(["a"]).shape == (1, clap.embed_dim)


def test_loading_a_clap_leaves_the_global_random_generators_as_they_were(tmp_path):
    """load_clap drew the model's initial weights (replaced by the stored ones) from torch's global generator, so a
    script's torch.rand after loading the CLAP alone gave other numbers than without it (TTAPipeline.from_pretrained
    already kept them). An LDM training run still draws them (open_clap): its UNet is built after, from the seed."""
    import random

    from tta.checkpoint import save_component
    from tta.clap import load_clap, open_clap

    torch.manual_seed(0)
    save_component(tmp_path / "clap", TTAClap(load_config(RunConfig, "configs/clap/tiny.json").model))
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    clap = load_clap(tmp_path / "clap")
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
    torch.manual_seed(5)
    same = open_clap(tmp_path / "clap")
    assert not torch.equal(torch.rand(3), expected[0])
    assert torch.equal(same.embed_text(["a dog barks"]), clap.embed_text(["a dog barks"]))
    # the embedder's own loader (the tests' pipelines use it) kept them neither, through load_component
    from tests.test_checkpoint import assert_leaves_global_rng
    from tta.clap.model import TTAClapEmbedder

    assert_leaves_global_rng(lambda: TTAClapEmbedder.from_folder(tmp_path / "clap"))


def test_a_clap_batch_size_that_is_no_integer_is_named_when_the_clap_loads(tmp_path):
    """load_clap(..., batch_size=2.5) loaded and failed at the first embed_text on range()'s "'float' object cannot
    be interpreted as an integer", and batch_size="8" or None on "'<=' not supported between instances of ..."."""
    from tta.checkpoint import save_component
    from tta.clap import load_clap

    torch.manual_seed(0)
    save_component(tmp_path / "clap", TTAClap(load_config(RunConfig, "configs/clap/tiny.json").model))
    for bad in (2.5, "8", None, True):
        with pytest.raises(ValueError, match=f"batch_size={bad!r} must be an integer"):
            load_clap(tmp_path / "clap", batch_size=bad)
    with pytest.raises(ValueError, match="batch_size=0 must be > 0"):
        load_clap(tmp_path / "clap", batch_size=0)
    clap = load_clap(tmp_path / "clap", batch_size=np.int64(1))
    assert clap.batch_size == 1 and type(clap.batch_size) is int
    # one caption a batch against both in one: the same up to float rounding of batched sums
    assert torch.allclose(clap.embed_text(["a", "b"]), load_clap(tmp_path / "clap").embed_text(["a", "b"]), atol=1e-6)


def test_a_clap_score_of_no_pairs_is_an_error_not_zero():
    """ClapScore().compute() before any update returned 0.0 (with torchmetrics' warning only), which reads as a
    real, poor CLAP score."""
    metric = ClapScore()
    with pytest.raises(ValueError, match=r"ClapScore has no text-audio pairs .* update\(text_emb, audio_emb\)"):
        metric.compute()
    a = torch.randn(3, 8)
    metric.update(a, a)
    assert float(metric.compute()) == pytest.approx(1.0)


def test_a_callers_autocast_does_not_round_the_embeddings_or_reach_the_cache(tmp_path):
    """Under torch.autocast("cpu", dtype=torch.bfloat16) embed_text / embed_audio ran the towers in bfloat16 (the
    embedded model's text embedding moved by 4e-4, this tiny one's by 1e-3) under the float32 model's identity, and
    a cache folder kept those numbers for every later call without autocast. The embeddings are the same bytes
    inside and outside one, and the caller's autocast is on again after."""
    from tta.checkpoint import save_component
    from tta.clap import load_clap

    torch.manual_seed(0)
    save_component(tmp_path / "clap", TTAClap(load_config(RunConfig, "configs/clap/tiny.json").model))
    wav = tone(440.0, 1.0, 16_000)
    plain = load_clap(tmp_path / "clap")
    expected = plain.embed_text(["a dog barks"]), plain.embed_audio(wav, 16_000)
    cached = load_clap(tmp_path / "clap", cache_dir=tmp_path / "cache")
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", dtype=dtype):
            inside = plain.embed_text(["a dog barks"]), plain.embed_audio(wav, 16_000)
            assert torch.is_autocast_enabled("cpu")
        assert all(torch.equal(a, b) for a, b in zip(inside, expected)), dtype
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cached.embed_text(["a dog barks"]), cached.embed_audio(wav, 16_000)
    again = cached.embed_text(["a dog barks"]), cached.embed_audio(wav, 16_000)
    assert cached.cache.hits == 2 and all(torch.equal(a, b) for a, b in zip(again, expected))
