"""`tta eval` end to end through tta.cli.main on small folders of synthetic audio, and its bad inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from eval.fad import FrechetStats
from tests.signals import chirp, noise, tone
from tta.audio import save_audio
from tta.cli import main


class ToyClap:
    """A stand-in CLAP backend (the CLAP model is not under test here): audio -> centred mean log-mel
    profile, "low"/"high" prompts -> falling/rising band weights. High tones agree with "high"."""

    sample_rate = 16_000

    def embed_text(self, texts):
        ramp = np.linspace(-1.0, 1.0, 64)
        rows = np.stack([ramp if "high" in t else -ramp for t in texts])
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def embed_audio(self, wav, sample_rate):
        from tta.audio import log_mel

        profile = log_mel(np.asarray(wav, np.float32)).mean(dim=-1).numpy()
        profile = profile - profile.mean(axis=1, keepdims=True)
        return profile / np.linalg.norm(profile, axis=1, keepdims=True)


@pytest.fixture
def folders(tmp_path):
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    rows = []
    for i in range(8):
        low = i % 2 == 0
        freq = 150 + 40 * i if low else 3000 + 200 * i
        save_audio(gen / f"clip{i}.wav", tone(freq, 2.0) + noise(2.0, amplitude=0.05, seed=i), 16_000)
        rows.append({"file": f"clip{i}.wav", "prompt": f"a {'low' if low else 'high'} tone",
                     "category": "hum" if i < 5 else "whistle"})
    for i in range(8):
        sr = 22_050 if i == 0 else 16_000  # mixed sample rates are resampled and recorded
        save_audio(ref / f"clip{i}.wav", chirp(200 + 50 * i, 3000, 2.0, sample_rate=sr), sr)
    (gen / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")  # unreadable: reported and skipped
    prompts = tmp_path / "prompts.csv"
    with open(prompts, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "prompt", "category"])
        w.writeheader()
        w.writerows(rows)
    return gen, ref, prompts


def _eval(tmp_path, *args):
    return main(["-q", "eval", "--cache-dir", str(tmp_path / "cache"), *map(str, args)])


def test_a_category_of_one_frame_is_warned_of_as_having_no_fad(tmp_path):
    """A category whose clips gave one frame (one clip of 0.32 s with mfcc) has no FAD, yet its warning read "FAD
    on 1 frames, fewer than 5 x D = 200: biased upward by its small size", of a FAD that was never computed."""
    from eval.report import FEW_FRAMES_NOTE, NO_FAD_NOTE

    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir()
    ref.mkdir()
    rows = []
    for i in range(3):
        save_audio(gen / f"c{i}.wav", tone(200 + 300 * i, 0.32) + noise(0.32, amplitude=0.05, seed=i), 16_000)
        rows.append({"file": f"c{i}.wav", "prompt": "a tone", "category": "solo" if i == 0 else "pair"})
    for i in range(4):
        save_audio(ref / f"r{i}.wav", chirp(200 + 50 * i, 3000, 0.32), 16_000)
    prompts = tmp_path / "prompts.csv"
    with open(prompts, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "prompt", "category"])
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "run"
    assert _eval(tmp_path, "--generated", gen, "--reference", ref, "--out", out, "--metrics", "fad",
                 "--prompts", prompts) == 0
    cats = json.loads((out / "eval.json").read_text())["breakdown"]["categories"]
    assert (cats["solo"]["fad"], cats["solo"]["fad_frames"]) == (None, 1)
    assert cats["solo"]["warning"] == f"1 generated frame: {NO_FAD_NOTE}"
    assert cats["pair"]["fad"] is not None and cats["pair"]["warning"].startswith("FAD on 2 frames, fewer than 5 x D")
    # the report's note on few frames speaks of a FAD: it is given for the categories that have one
    report = tmp_path / "report.html"
    assert main(["-q", "report", str(out), "--out", str(report)]) == 0
    assert FEW_FRAMES_NOTE in report.read_text()
    del cats["pair"]["warning"]
    body = json.loads((out / "eval.json").read_text())
    body["breakdown"]["categories"] = cats
    (out / "eval.json").write_text(json.dumps(body))
    assert main(["-q", "report", str(out), "--out", str(report)]) == 0
    page = report.read_text()
    assert FEW_FRAMES_NOTE not in page and f"† {NO_FAD_NOTE}" in page


def test_tta_eval_end_to_end(folders, tmp_path, monkeypatch):
    from eval import embedders

    monkeypatch.setitem(embedders.CLAP_LOADERS, "tta", lambda path: ToyClap())
    gen, ref, prompts = folders
    out = tmp_path / "run"
    assert _eval(tmp_path, "--generated", gen, "--reference", ref, "--out", out, "--metrics", "fad,clap",
                 "--prompts", prompts, "--clap", tmp_path / "toy-clap") == 0
    body = json.loads((out / "eval.json").read_text())
    assert body["metrics"]["fad"] > 1.0
    fad = body["protocol"]["fad"]
    assert fad["embedder"]["identity"] == "mfcc@v1" and fad["paired"] is False
    assert fad["pooling"].startswith("frames: one 40-d embedding every 0.5 s") and fad["fad_inf"] is None
    # 8 clips of 2 s give fewer MFCC frames than dimensions: the singular covariance is flagged
    assert fad["generated_frames"] < 40 and "embeddings for 40 dimensions" in fad["warnings"][0]
    assert fad["generated"]["files_used"] == 8 and fad["generated"]["files_skipped"] == 1
    assert fad["generated"]["skipped"][0]["file"].endswith("broken.wav")
    assert fad["reference"]["original_sample_rates"] == {"16000": 7, "22050": 1}
    assert body["protocol"]["common"]["skipped_files"] == 1 and body["protocol"]["common"]["torch_version"]
    assert body["protocol"]["clap"]["scale"].startswith("raw cosine")
    cats = body["breakdown"]["categories"]
    assert set(cats) == {"hum", "whistle"} and cats["hum"]["files"] == 5
    # per-category FAD carries its frame count, and a warning below 5 x D frames (FAD's 1/N bias)
    assert cats["hum"]["fad_frames"] + cats["whistle"]["fad_frames"] == fad["generated_frames"]
    assert "fewer than 5 x D = 200" in cats["whistle"]["warning"]
    assert body["breakdown"]["head"]["categories"] == ["hum"] and body["breakdown"]["tail"]["categories"] == ["whistle"]
    with open(out / "items.csv") as f:
        items = {r["name"]: r for r in csv.DictReader(f)}
    assert len(items) == 8 and "broken" not in items
    # every prompt matches its tone: the toy CLAP agrees with all of them
    assert all(float(r["clap_score"]) > 0.1 for r in items.values())
    assert body["metrics"]["clap_score"] == pytest.approx(np.mean([float(r["clap_score"]) for r in items.values()]))

    # the saved reference statistics reproduce the folder result; the cache serves the second run
    cached = sorted((tmp_path / "cache").rglob("*.npy"))
    assert len([p for p in cached if not p.name.endswith(".peak.npy")]) == 16
    assert len([p for p in cached if p.name.endswith(".peak.npy")]) == 8   # the silence check's, by content
    out2 = tmp_path / "run2"
    assert _eval(tmp_path, "--generated", gen, "--reference", out / "reference_stats.npz", "--out", out2) == 0
    body2 = json.loads((out2 / "eval.json").read_text())
    assert body2["metrics"]["fad"] == pytest.approx(body["metrics"]["fad"], rel=1e-9)
    # the folder and its saved statistics are the same reference to `tta report`
    assert body2["protocol"]["fad"]["reference_stats_sha256"] == fad["reference_stats_sha256"]
    assert sorted((tmp_path / "cache").rglob("*.npy")) == cached

    # FAD of a set against itself is ~0
    out3 = tmp_path / "self"
    assert _eval(tmp_path, "--generated", ref, "--reference", ref, "--out", out3) == 0
    assert json.loads((out3 / "eval.json").read_text())["metrics"]["fad"] < 1e-6


def test_tta_eval_bad_inputs(folders, tmp_path, capsys, monkeypatch):
    gen, ref, _ = folders
    empty = tmp_path / "empty"
    empty.mkdir()

    def error(*args) -> str:
        capsys.readouterr()
        assert _eval(tmp_path, *args) == 1
        return capsys.readouterr().err

    assert "no audio files" in error("--generated", empty, "--reference", ref, "--out", tmp_path / "o1")
    assert "valid embedders: aisfx" in error("--generated", gen, "--reference", ref, "--out", tmp_path / "o2",
                                             "--embedder", "openl3")
    other = FrechetStats.from_embeddings(np.random.default_rng(0).standard_normal((10, 40)),
                                         embedder="aisfx@sha256:0123456789abcdef", sample_rate=44_100)
    msg = error("--generated", gen, "--reference", other.save(tmp_path / "aisfx.npz"), "--out", tmp_path / "o3")
    assert "aisfx@sha256:0123456789abcdef" in msg and "mfcc@v1" in msg
    monkeypatch.delenv("TTA_PANNS_WEIGHTS", raising=False)
    assert "--panns-weights" in error("--generated", gen, "--reference", ref, "--out", tmp_path / "o4",
                                      "--metrics", "kl")
    assert "unknown" in error("--generated", gen, "--reference", ref, "--out", tmp_path / "o6", "--metrics", "fid")
    tiny = tmp_path / "tiny"
    save_audio(tiny / "a.wav", tone(440, 0.5), 16_000)  # one clip, one MFCC frame: no covariance
    assert "at least 2" in error("--generated", gen, "--reference", tiny, "--out", tmp_path / "o7")
    # x.wav and x.flac share the key "x": refused, naming both, instead of one silently replacing the other
    dup = tmp_path / "dup"
    save_audio(dup / "x.wav", tone(440, 1.0), 16_000)
    save_audio(dup / "x.flac", tone(880, 1.0), 16_000)
    save_audio(dup / "y.wav", tone(660, 1.0), 16_000)
    for args in (("--generated", dup, "--reference", ref), ("--generated", gen, "--reference", dup)):
        msg = error(*args, "--out", tmp_path / "o8")
        assert "x.flac and x.wav have the same name without suffix" in msg and len(msg.strip().splitlines()) == 1
    # FAD-inf needs 2 x max(500, 5 x D) generated frames; these folders have a few dozen
    msg = error("--generated", gen, "--reference", ref, "--out", tmp_path / "o9", "--fad-inf")
    assert "FAD-inf needs at least 1000 generated frames" in msg and len(msg.strip().splitlines()) == 1
    # it failed after both sets were embedded: nothing was written, not even the statistics
    assert not (tmp_path / "o9").exists()


def test_tta_eval_failed_rerun_keeps_the_earlier_result_whole(folders, tmp_path, monkeypatch):
    """A run that fails after embedding (here on --fad-inf) leaves an earlier run's eval.json and its
    statistics as they were: the folder never holds the reference statistics of one run beside the
    eval.json of another."""
    gen, ref, prompts = folders
    out = tmp_path / "run"
    assert _eval(tmp_path, "--generated", gen, "--reference", ref, "--out", out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"eval.json", "items.csv", "reference_stats.npz", "generated_stats.npz"} <= set(before)
    ref2 = tmp_path / "ref2"
    for i in range(6):
        save_audio(ref2 / f"n{i}.wav", noise(2.0, seed=100 + i), 16_000)
    assert _eval(tmp_path, "--generated", gen, "--reference", ref2, "--out", out, "--fad-inf") == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # a later run without fad does not leave the first run's statistics beside its own eval.json
    from eval import embedders

    monkeypatch.setitem(embedders.CLAP_LOADERS, "tta", lambda path: ToyClap())
    assert _eval(tmp_path, "--generated", gen, "--reference", ref2, "--out", out, "--metrics", "clap",
                 "--prompts", prompts, "--clap", tmp_path / "toy-clap") == 0
    assert "fad" not in json.loads((out / "eval.json").read_text())["metrics"]
    assert not (out / "reference_stats.npz").exists() and not (out / "generated_stats.npz").exists()


def test_tta_eval_clap_score_reads_the_clips_batch_by_batch(folders, tmp_path, monkeypatch):
    """The CLAP score holds one batch of clips in memory, not the whole folder (thousands of 10 s clips at
    48 kHz would be gigabytes): when the first batch is embedded, only that batch has been read."""
    import tta.audio
    from eval import embedders

    gen, ref, prompts = folders
    loads, seen = [], []
    real = tta.audio.load_audio
    monkeypatch.setattr(tta.audio, "load_audio", lambda *a, **k: (loads.append(1), real(*a, **k))[1])

    class Spy(ToyClap):
        def embed_audio(self, wav, sample_rate):
            seen.append(len(loads))
            return super().embed_audio(wav, sample_rate)

    monkeypatch.setitem(embedders.CLAP_LOADERS, "tta", lambda path: Spy())
    assert _eval(tmp_path, "--generated", gen, "--reference", ref, "--out", tmp_path / "run", "--metrics", "clap",
                 "--prompts", prompts, "--clap", tmp_path / "toy-clap", "--batch-size", "3") == 0
    assert seen[-8] <= 3 and seen[-1] == 8   # the last 8 calls embed the 8 clips, one by one (the silence check
    # reads them after the CLAP score)


def test_tta_eval_skips_a_clip_too_short_to_embed_and_names_it(folders, tmp_path):
    """A valid wav too short for the MFCC front end (320 samples; a mel frame needs 433) is skipped and
    reported by name, like an unreadable file, instead of stopping the whole run."""
    gen, ref, _ = folders
    save_audio(gen / "tiny.wav", tone(440, 0.02), 16_000)
    out = tmp_path / "run"
    assert _eval(tmp_path, "--generated", gen, "--reference", ref, "--out", out) == 0
    body = json.loads((out / "eval.json").read_text())
    proto = body["protocol"]["fad"]["generated"]
    assert proto["files_used"] == 8 and proto["files_skipped"] == 2
    tiny = [s for s in proto["skipped"] if s["file"].endswith("tiny.wav")]
    assert len(tiny) == 1 and "too short for a mel frame" in tiny[0]["reason"]
    assert proto["original_sample_rates"] == {"16000": 8}
    with open(out / "items.csv") as f:
        assert "tiny" not in {r["name"] for r in csv.DictReader(f)}


def test_tta_eval_names_a_dead_link_among_the_generated_files(folders, tmp_path):
    """A generated file that is a symbolic link to nothing (a moved target, a link loop) was left out of the
    listing without a word: files_found did not count it and no warning said the scores miss it."""
    gen, ref, _ = folders
    (gen / "moved.wav").symlink_to(tmp_path / "elsewhere" / "moved.wav")
    (gen / "loop.wav").symlink_to("loop.wav")
    out = tmp_path / "run"
    assert _eval(tmp_path, "--generated", gen, "--reference", ref, "--out", out) == 0
    proto = json.loads((out / "eval.json").read_text())["protocol"]["fad"]["generated"]
    assert proto["files_found"] == 11 and proto["files_used"] == 8 and proto["files_skipped"] == 3
    # the warning names the first file once (it read "first: X: X: not a readable audio file (...)")
    assert proto["warning"].count("broken.wav") == 1 and "broken.wav: not a readable audio file" in proto["warning"]
    dead = {Path(s["file"]).name: s["reason"] for s in proto["skipped"]}
    assert "file not found (a symbolic link to" in dead["moved.wav"] and "file not found" in dead["loop.wav"]


def test_tta_eval_records_the_fad_inf_fit(folders, tmp_path, monkeypatch, capsys):
    """The whole FAD-inf fit goes into eval.json (the subset floor is lowered so that small folders fit), and the
    printed summary gives FAD-inf's interval beside it, as tta report writes it (it printed the value bare)."""
    from eval import fad as fad_module

    monkeypatch.setattr(fad_module, "fad_inf_smallest_subset", lambda dim: 8)
    gen, ref, _ = folders
    out = tmp_path / "inf"
    capsys.readouterr()
    assert _eval(tmp_path, "--generated", gen, "--reference", ref, "--out", out, "--fad-inf") == 0
    printed = capsys.readouterr().out.splitlines()
    body = json.loads((out / "eval.json").read_text())
    fit = body["protocol"]["fad"]["fad_inf"]
    assert fit["fad_inf"] == body["metrics"]["fad_inf"] and fit["sizes"][0] == 8
    assert fit["sizes"][-1] == body["protocol"]["fad"]["generated_frames"] and len(fit["values"]) == len(fit["sizes"])
    assert {"slope", "r2", "seed"} <= set(fit) and fit["method"].startswith("Chung et al. 2020: nested subsets")
    # several draws of whole files per size, and the interval of the intercept beside it
    assert fit["draws"] == 10 and fit["unit"] == "clips" and fit["fad_inf_se"] > 0
    assert fit["fad_inf_ci95"][0] < fit["fad_inf"] < fit["fad_inf_ci95"][1]
    assert fit["fad_inf_se"] == pytest.approx(np.hypot(fit["se_from_draws"], fit["se_from_generated_set"]))
    low, high = fit["fad_inf_ci95"]
    assert printed[:2] == [f"fad\t{body['metrics']['fad']:.6g}",
                           f"fad_inf\t{fit['fad_inf']:.6g}\t95% CI ±{(high - low) / 2:.4g}"], printed


@pytest.mark.slow
def test_tta_eval_panns_metrics(folders, tmp_path):
    """fd / kl / is through the CLI with a PANNs checkpoint built to the reference key layout (random weights)."""
    import torch

    from tests.test_eval_embedders import _panns_front_end_state, _panns_keys, _random_state

    gen, ref, _ = folders
    for i in range(8, 12):  # IS refuses fewer files than its 10 splits: 12 pairs (and a warning, < 20)
        save_audio(gen / f"clip{i}.wav", tone(500 + 90 * i, 2.0), 16_000)
        save_audio(ref / f"clip{i}.wav", chirp(300, 2500, 2.0), 16_000)
    weights = tmp_path / "Cnn14_16k_mAP=0.438.pth"
    torch.save({"model": {**_random_state(_panns_keys()), **_panns_front_end_state()}}, weights)
    out = tmp_path / "panns"
    assert _eval(tmp_path, "--generated", gen, "--reference", ref, "--out", out, "--metrics", "fad,fd,kl,is",
                 "--panns-weights", weights) == 0
    body = json.loads((out / "eval.json").read_text())
    m = body["metrics"]
    assert {"fad", "fd", "kl_softmax", "kl_sigmoid", "is_mean", "is_std"} <= set(m)
    assert m["fd"] > 0 and m["is_mean"] >= 1.0 and np.isfinite(m["kl_softmax"])
    kl = body["protocol"]["panns"]["kl"]
    assert kl["pairs"] == 12 and kl["paired"] is True and kl["unpaired_generated"] == kl["unpaired_reference"] == 0
    assert body["protocol"]["panns"]["is"]["shuffle_seed"] == 2020 and "warning" in body["protocol"]["panns"]["is"]
    assert body["protocol"]["panns"]["fd"]["pooling"].startswith("one embedding per clip")
    with open(out / "items.csv") as f:
        assert all(r["kl_softmax"] != "" for r in csv.DictReader(f))


def test_tta_eval_clap_score_with_real_tta_clap(folders, tmp_path, capsys):
    """The lazy CLAP registry against the real tta.clap: an (untrained) tiny tta CLAP component folder. The
    printed summary gives the CLAP score's 95% interval as tta report computes and writes it for the same result
    (it printed the score bare), and eval.json records it."""
    clap_train = pytest.importorskip("tta.clap.train")
    from tta.checkpoint import save_component
    from tta.clap.model import TTAClap
    from tta.config import load_config

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = TTAClap(load_config(clap_train.RunConfig, "configs/clap/tiny.json").model)
    save_component(tmp_path / "clap", model)
    gen, ref, prompts = folders
    out = tmp_path / "clap_run"
    capsys.readouterr()
    assert _eval(tmp_path, "--generated", gen, "--reference", ref, "--out", out, "--metrics", "clap",
                 "--prompts", prompts, "--clap", tmp_path / "clap") == 0
    printed = capsys.readouterr().out.splitlines()
    body = json.loads((out / "eval.json").read_text())
    assert -1.0 <= body["metrics"]["clap_score"] <= 1.0
    assert body["protocol"]["clap"]["model"]["identity"].startswith("clap@tta-clap:")
    assert body["protocol"]["clap"]["num_items"] == 8
    from tta.clap.interval import clap_half_width
    from eval.report import load_runs, sample_note

    run = load_runs([out])[0]
    half = clap_half_width(run.rows)
    scores = [float(r["clap_score"]) for r in run.rows]   # Student's t with 7 degrees of freedom: 2.36 se, not 1.96
    assert half == pytest.approx(2.3646 * np.std(scores, ddof=1) / np.sqrt(8), rel=1e-4)
    assert half > 0 and sample_note(run, "clap_score") == f"n 8, 95% CI ±{half:.2g}"
    assert printed[0] == f"clap_score\t{body['metrics']['clap_score']:.6g}\t95% CI ±{half:.2g}", printed
    clap = body["protocol"]["clap"]
    assert clap["clap_score_ci95"] == [body["metrics"]["clap_score"] - half, body["metrics"]["clap_score"] + half]
    assert clap["clap_score_ci95_draws"] == 8 and clap["clap_score_ci95_unit"] == "files"
    assert clap["clap_score_ci95_distribution"] == "t" and clap["clap_score_ci95_df"] == 7
    # `tta clap score` on the same files and prompts gives each file the score `tta eval` gave it, under the same
    # key names: two implementations disagreed in the last digits (one embedded equal-length clips in batches and
    # took float32 cosines) and named the count "num_items" and "count"; it prints and records the score's
    # interval as tta eval does (it printed "CLAP score X over 8 clips" bare)
    assert main(["-q", "clap", "score", "--clap", str(tmp_path / "clap"), "--audio", str(gen), "--prompts",
                 str(prompts), "--out", str(tmp_path / "score.json")]) == 0
    assert f" over 8 clips (95% CI ±{half:.2g}; raw cosine; model " in capsys.readouterr().out
    score = json.loads((tmp_path / "score.json").read_text())
    keys = ("clap_score_ci95", "clap_score_ci95_draws", "clap_score_ci95_unit", "clap_score_ci95_distribution",
            "clap_score_ci95_df")
    assert {k: score[k] for k in keys} == {k: clap[k] for k in keys}
    with open(out / "items.csv") as f:
        by_file = {r["file"]: float(r["clap_score"]) for r in csv.DictReader(f)}
    assert score["num_items"] == 8 and len(by_file) == 8
    assert {Path(r["file"]).name: r["score"] for r in score["per_item"]} == {Path(k).name: v for k, v in by_file.items()}
    assert score["clap_score"] == body["metrics"]["clap_score"]
    # the CLAP is --clap, as `tta clap`, `tta index` and `tta import` name it (it was --clap-model, and
    # `--clap DIR` was 'ambiguous option: --clap could match --clap-model, --clap-tokenizer'); the older name
    # gives the same
    assert _eval(tmp_path, "--generated", gen, "--reference", ref, "--out", tmp_path / "old", "--metrics",
                 "clap", "--prompts", prompts, "--clap-model", tmp_path / "clap") == 0
    assert json.loads((tmp_path / "old" / "eval.json").read_text())["metrics"] == body["metrics"]
    assert (tmp_path / "old" / "items.csv").read_text() == (out / "items.csv").read_text()


def test_a_prompt_row_naming_a_bare_file_name_pairs_with_one_file_only(tmp_path):
    """A row for "x.wav" matches a generated file x in a subfolder only when no other subfolder has an x:
    a/x and b/x would otherwise silently share one prompt."""
    gen = tmp_path / "gen"
    for sub in ("a", "b"):
        save_audio(gen / sub / "x.wav", tone(440, 1.0), 16_000)
    save_audio(gen / "a" / "y.wav", tone(660, 1.0), 16_000)
    prompts = tmp_path / "p.csv"
    prompts.write_text("file,prompt\nx.wav,a tone\ny.wav,another tone\n")
    assert _eval(tmp_path, "--generated", gen, "--reference", gen, "--out", tmp_path / "o", "--prompts", prompts) == 1
    prompts.write_text("file,prompt\na/x.wav,a tone\nb/x.wav,a hum\ny.wav,another tone\n")
    assert _eval(tmp_path, "--generated", gen, "--reference", gen, "--out", tmp_path / "o", "--prompts", prompts) == 0
    with open(tmp_path / "o" / "items.csv") as f:
        assert {r["name"]: r["prompt"] for r in csv.DictReader(f)} == {"a/x": "a tone", "b/x": "a hum",
                                                                      "a/y": "another tone"}


def test_audio_a_generation_record_does_not_list_is_reported(folders, tmp_path):
    """A `tta generate --out-dir` folder reused by a later run holds the earlier run's files too: eval scores
    every file, so it says which ones the folder's generation.json does not list."""
    gen, ref, _ = folders
    (gen / "generation.json").write_text(json.dumps({"outputs": [{"file": f"clip{i}.wav"} for i in range(6)]}))
    out = tmp_path / "run"
    assert _eval(tmp_path, "--generated", gen, "--reference", ref, "--out", out) == 0
    note = json.loads((out / "eval.json").read_text())["protocol"]["generated_not_in_record"]
    assert note["files"] == ["clip6.wav", "clip7.wav"] and "another run" in note["warning"]
    # a run stopped part-way says so in its record; the scores describe the prompts it reached (not a word before)
    (gen / "generation.json").write_text(json.dumps({"complete": False, "planned_outputs": 12, "outputs": [
        {"file": f"clip{i}.wav"} for i in range(8)]}))
    assert _eval(tmp_path, "--generated", gen, "--reference", ref, "--out", tmp_path / "run2") == 0
    note = json.loads((tmp_path / "run2" / "eval.json").read_text())["protocol"]["generated_incomplete"]
    assert (note["written"], note["planned"]) == (8, 12) and "stopped part-way (8 of 12" in note["warning"]


@pytest.mark.parametrize("text, why", [
    ("{not json", "is not valid JSON (Expecting property name enclosed in double quotes at line 1)"),
    ("[1, 2]", "is a JSON list, not an object"),
    ('{"outputs": [{"file": 3}]}', "outputs[0].file is 3, not a file name"),
    ('{"outputs": [], "complete": "no"}', 'complete is "no", not true or false'),
    ('{"outputs": [], "settings": {"candidates": "2"}}', 'settings.candidates is "2", not a count'),
    ('{"complete": false}', "has no outputs list"),
])
def test_a_damaged_generation_record_is_a_protocol_warning_and_the_run_is_not_ranked(folders, tmp_path, text, why):
    """A generation.json that is not JSON or not what `tta generate` writes was read as no record at all: the
    checks it feeds (files of another run, a stopped run) were skipped without a word."""
    from eval.report import load_runs, render_markdown

    gen, ref, _ = folders
    (gen / "broken.wav").unlink()   # the sound run leaves no file out: only the damaged record keeps it unranked
    assert _eval(tmp_path, "--generated", gen, "--reference", ref, "--out", tmp_path / "sound") == 0
    (gen / "generation.json").write_text(text)
    assert _eval(tmp_path, "--generated", gen, "--reference", ref, "--out", tmp_path / "damaged") == 0
    proto = json.loads((tmp_path / "damaged" / "eval.json").read_text())["protocol"]
    note = proto["generated_record_damaged"]
    assert note["file"] == str(gen / "generation.json")
    assert note["warning"] == (f"generated {gen}: its generation.json {why}: whether files of another run are mixed "
                               "in, or the run stopped part-way, cannot be told from it")
    assert not [k for k in proto if k.startswith("generated_") and k != "generated_record_damaged"]
    md = render_markdown(load_runs([tmp_path / "sound", tmp_path / "damaged"]))
    fad_line = next(line for line in md.splitlines() if line.startswith("| FAD"))
    assert "not ranked: damaged left files out or holds files that may not be" in fad_line and "**" not in fad_line
    assert f"its generation.json {why}" in md


def test_a_float_wav_scores_as_its_16_bit_copy(tmp_path, monkeypatch):
    """Clips with digital silence scored differently written as float and as 16-bit WAV (CLAP score 0.769
    against 0.744 on the embedded model's generations): the log-mel front ends hear 16-bit rounding noise
    where float silence sits at the log floor. Every file is now read at 16-bit resolution, as fadtk does, on
    the grid save_audio writes (the nearest step; libsndfile's own float writer rounds down)."""
    import soundfile as sf

    from eval import embedders

    monkeypatch.setitem(embedders.CLAP_LOADERS, "tta", lambda path: ToyClap())
    rows = []
    for subtype in ("FLOAT", "PCM_16"):
        (tmp_path / subtype).mkdir()
        for i in range(6):
            wav = np.zeros(32_000, np.float32)
            wav[:12_000] = tone(300 + 500 * i, 0.75) * np.hanning(12_000)   # a tone, then digital silence
            if subtype == "PCM_16":
                save_audio(tmp_path / subtype / f"c{i}.wav", wav, 16_000)
            else:
                sf.write(tmp_path / subtype / f"c{i}.wav", wav, 16_000, subtype=subtype)
            if subtype == "FLOAT":
                rows.append(f"c{i}.wav,a {'low' if i < 3 else 'high'} tone")
    (tmp_path / "p.csv").write_text("file,prompt\n" + "\n".join(rows) + "\n")
    ref = tmp_path / "ref"
    for i in range(6):
        save_audio(ref / f"r{i}.wav", chirp(200 + 80 * i, 4000, 2.0) + noise(2.0, amplitude=0.01, seed=i), 16_000)
    metrics = {}
    for subtype in ("FLOAT", "PCM_16"):
        assert _eval(tmp_path, "--generated", tmp_path / subtype, "--reference", ref, "--out", tmp_path / f"e{subtype}",
                     "--metrics", "fad,clap", "--prompts", tmp_path / "p.csv", "--clap", tmp_path / "toy") == 0
        body = json.loads((tmp_path / f"e{subtype}" / "eval.json").read_text())
        metrics[subtype] = body["metrics"], body["protocol"]["common"].get("audio_read", "")
    assert metrics["FLOAT"][0]["clap_score"] == pytest.approx(metrics["PCM_16"][0]["clap_score"], abs=1e-6)
    assert metrics["FLOAT"][0]["fad"] == pytest.approx(metrics["PCM_16"][0]["fad"], rel=1e-6)
    assert "16-bit" in metrics["FLOAT"][1]


def test_clap_scores_of_renamed_files_compare_and_a_self_picked_set_is_flagged(folders, tmp_path, monkeypatch):
    """The same audio and prompts under other file names was "not comparable: different embedder/reference" for
    the CLAP score; clips kept from several candidates by the scoring CLAP itself scored above the real clips
    with no word."""
    import shutil

    from eval import embedders
    from eval.report import load_runs, render_markdown

    toy = ToyClap()
    toy.identity = "tta-clap:toy"
    monkeypatch.setitem(embedders.CLAP_LOADERS, "tta", lambda path: toy)
    gen, ref, prompts = folders
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    rows = list(csv.DictReader(open(prompts)))
    for r in rows:
        shutil.copy(gen / r["file"], renamed / f"x_{r['file']}")
    with open(tmp_path / "renamed.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "prompt"])
        w.writeheader()
        w.writerows({"file": f"x_{r['file']}", "prompt": r["prompt"]} for r in rows)
    (renamed / "generation.json").write_text(json.dumps({
        "settings": {"candidates": 2}, "clap_score_model": "tta-clap:toy",
        "outputs": [{"file": f"x_{r['file']}"} for r in rows]}))
    for name, folder, p in (("a", gen, prompts), ("b", renamed, tmp_path / "renamed.csv")):
        assert _eval(tmp_path, "--generated", folder, "--reference", ref, "--out", tmp_path / name, "--metrics",
                     "clap", "--prompts", p, "--clap", tmp_path / "toy-clap") == 0
    b = json.loads((tmp_path / "b" / "eval.json").read_text())
    assert "kept from 2 candidates by this same CLAP" in b["protocol"]["clap"]["warning"]
    assert "warning" not in json.loads((tmp_path / "a" / "eval.json").read_text())["protocol"]["clap"]
    md = render_markdown(load_runs([tmp_path / "a", tmp_path / "b"], None))
    row = next(line for line in md.splitlines() if line.startswith("| CLAP score"))
    assert "not comparable" not in row and "⚠" in row, row


def test_eval_reads_the_generation_record_once(folders, tmp_path, monkeypatch):
    """generation.json was read and checked four times in one run (damaged? files not listed? stopped part-way?
    picked by this CLAP?): each check is now of the one record read."""
    from eval import embedders

    toy = ToyClap()
    toy.identity = "tta-clap:toy"
    monkeypatch.setitem(embedders.CLAP_LOADERS, "tta", lambda path: toy)
    gen, ref, prompts = folders
    (gen / "generation.json").write_text(json.dumps({
        "complete": False, "planned_outputs": 12, "settings": {"candidates": 2}, "clap_score_model": "tta-clap:toy",
        "outputs": [{"file": f"clip{i}.wav"} for i in range(6)]}))
    reads = []
    real = Path.read_text

    def counting(self, *args, **kwargs):
        if self.name == "generation.json":
            reads.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counting)
    assert _eval(tmp_path, "--generated", gen, "--reference", ref, "--out", tmp_path / "run", "--metrics",
                 "fad,clap", "--prompts", prompts, "--clap", tmp_path / "toy-clap") == 0
    monkeypatch.undo()
    assert reads == [gen / "generation.json"]
    proto = json.loads((tmp_path / "run" / "eval.json").read_text())["protocol"]
    assert proto["generated_not_in_record"]["files"] == ["clip6.wav", "clip7.wav"]
    assert (proto["generated_incomplete"]["written"], proto["generated_incomplete"]["planned"]) == (6, 12)
    assert "kept from 2 candidates by this same CLAP" in proto["clap"]["warning"]


def test_a_clip_too_short_for_the_clap_is_named_and_left_out_of_the_clap_score(folders, tmp_path, monkeypatch):
    """One 60 ms clip stopped the whole CLAP score with "clip 0 has 1 samples", naming no file."""
    from eval import embedders

    toy = ToyClap()
    toy.min_samples = 1024
    monkeypatch.setitem(embedders.CLAP_LOADERS, "tta", lambda path: toy)
    gen, ref, prompts = folders
    save_audio(gen / "tiny.wav", tone(440, 0.01), 16_000)
    with open(prompts, "a", newline="") as f:
        f.write("tiny.wav,a high tone,whistle\n")
    assert _eval(tmp_path, "--generated", gen, "--reference", ref, "--out", tmp_path / "run", "--metrics", "clap",
                 "--prompts", prompts, "--clap", tmp_path / "toy-clap") == 0
    body = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert body["protocol"]["clap"]["num_items"] == 8
    assert [s["file"].endswith("tiny.wav") for s in body["protocol"]["clap"]["skipped"]] == [True]


def test_a_clap_score_without_its_prompts_or_model_is_bad_usage(folders, tmp_path, capsys):
    gen, ref, prompts = folders
    assert _eval(tmp_path, "--generated", gen, "--reference", ref, "--out", tmp_path / "e", "--metrics", "clap") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--metrics clap needs --prompts FILE" in err
    assert "--clap CLAP (a tta CLAP folder or run folder, a transformers CLAP folder, or a LAION .pt)" in err
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("embedder", ["clap", "laion-clap"])
def test_a_clap_embedder_without_its_clap_is_bad_usage_as_the_clap_score_is(folders, tmp_path, capsys, embedder):
    """`--embedder clap` with no --clap exited 1 ("CLAP (tta) needs a model: pass --clap DIR (a tta CLAP folder or
    a LAION checkpoint)"), where `--metrics clap` without it is bad usage (exit 2); neither named every CLAP that
    loads."""
    gen, ref, _ = folders
    assert _eval(tmp_path, "--generated", gen, "--reference", ref, "--out", tmp_path / "e", "--embedder", embedder) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--embedder {embedder} needs --clap CLAP (a tta CLAP folder or run folder, " \
        "a transformers CLAP folder, or a LAION .pt)" in err
    assert not (tmp_path / "e").exists() and not (tmp_path / "cache").exists()   # refused before any work


def test_eval_options_from_python_name_a_bare_string_or_a_bad_batch_size(folders, tmp_path):
    """EvalOptions(metrics="fad") was refused as "unknown ['f', 'a', 'd']" and batch_size="8" failed on Python's
    "'<' not supported between instances of 'str' and 'int'"."""
    from eval.run import EvalError, EvalOptions, run_eval

    gen, ref, _ = folders
    with pytest.raises(EvalError, match=r"metrics='fad': expected a tuple of metric names.*got a single str"):
        EvalOptions(generated=gen, reference=ref, out=tmp_path / "e", metrics="fad")
    for bad in ("8", 0, 2.5):
        with pytest.raises(EvalError, match=rf"batch_size={bad!r} must be an integer"):
            EvalOptions(generated=gen, reference=ref, out=tmp_path / "e", batch_size=bad)
    # an integral float is taken, as by the configs and clap_score
    assert EvalOptions(generated=gen, reference=ref, out=tmp_path / "e", batch_size=2.0).batch_size == 2
    opts = EvalOptions(generated=str(gen), reference=str(ref), out=str(tmp_path / "e"), metrics=["fad"],
                       batch_size=np.int64(4), cache_dir=tmp_path / "cache", progress=False)
    assert run_eval(opts)["metrics"]["fad"] >= 0


def test_eval_options_refuse_embedder_weights_for_an_embedder_that_takes_none(folders, tmp_path):
    """run_eval(EvalOptions(embedder="clap", embedder_weights=...)) ignored the file (the embedder is the CLAP of
    clap_model): only `tta eval` refused it, before it made its options. EvalOptions refuses it as it is made,
    naming its fields (`tta eval`, with flags, names its options and exits 2: test above)."""
    from eval.run import EvalError, EvalOptions
    from tta import UsageError

    gen, ref, _ = folders
    for embedder in ("clap", "laion-clap", "mfcc"):
        with pytest.raises(EvalError, match=rf"^embedder_weights is for aisfx, vggish and panns; embedder "
                                            rf"'{embedder}' takes none \(a CLAP comes with clap_model\)$") as info:
            EvalOptions(generated=gen, reference=ref, out=tmp_path / "e", embedder=embedder,
                        embedder_weights=str(tmp_path / "w.pt"), clap_model=str(tmp_path / "clap"))
        assert isinstance(info.value, UsageError)
    with pytest.raises(EvalError, match=r"^--embedder-weights is for .*; --embedder 'clap' takes none \(a CLAP "
                                        r"comes with --clap\)$"):
        EvalOptions(generated=gen, reference=ref, out=tmp_path / "e", embedder="clap", embedder_weights="w.pt",
                    flags=True)
    assert EvalOptions(generated=gen, reference=ref, out=tmp_path / "e", embedder="vggish",
                       embedder_weights="w.pt").embedder_weights == "w.pt"


def test_clap_scores_recorded_before_the_prompt_set_hash_still_compare():
    """A run recorded before prompt_set_sha256 and one after, same files and prompts, were "not comparable"."""
    from pathlib import Path

    from eval.report import Run, render_markdown

    def run(label, value, with_set):
        clap = {"model": {"identity": "clap@tta-clap:1"}, "prompts_sha256": "ab12",
                **({"prompt_set_sha256": "cd34"} if with_set else {})}
        return Run(label, {"metrics": {"clap_score": value}, "protocol": {"clap": clap}}, [], Path(label))

    row = next(line for line in render_markdown([run("old", 0.1, False), run("new", 0.2, True)]).splitlines()
               if line.startswith("| CLAP score"))
    assert "not comparable" not in row and "**0.2**" in row


def test_silent_and_dc_only_generated_files_are_named(folders, tmp_path):
    """An all-silent generated set scored FAD 2329 and a CLAP score without a word; tta data check calls the same
    files silent."""
    gen, ref, _ = folders
    save_audio(gen / "quiet.wav", np.zeros(16_000, np.float32), 16_000)
    save_audio(gen / "dc.wav", np.full(16_000, 0.25, np.float32), 16_000)
    assert _eval(tmp_path, "--generated", gen, "--reference", ref, "--out", tmp_path / "o") == 0
    note = json.loads((tmp_path / "o" / "eval.json").read_text())["protocol"]["generated_silent"]
    assert note["files"] == ["dc.wav", "quiet.wav"] and "2 of 10 files are silent" in note["warning"]


def test_aisfx_skips_a_clip_shorter_than_its_stft_window():
    """mfcc and clap skip such a clip, naming it; aisfx embedded it as a zero-padded block (and librosa warned)."""
    from eval.embedders import AisfxEmbedder
    from tta.audio import AudioError

    emb = AisfxEmbedder(name="aisfx", dim=512, sample_rate=44_100, hop_seconds=1.0, net=None)
    with pytest.raises(AudioError, match="aisfx: 10 samples at 44100 Hz, shorter than one STFT window"):
        emb.embed_batch([np.full(10, 0.1, np.float32)])


def test_a_partly_warm_cache_gives_the_fad_of_a_cold_one(folders, tmp_path):
    """Cached embeddings were pooled before the freshly computed ones of their batch: a partly warm cache gave
    another FAD in its last digits (246.27030153 against 246.27030340)."""
    gen, ref, _ = folders
    assert _eval(tmp_path, "--generated", gen, "--reference", ref, "--out", tmp_path / "a") == 0
    save_audio(gen / "clip0.wav", tone(777, 2.0) + noise(2.0, amplitude=0.05, seed=9), 16_000)
    assert _eval(tmp_path, "--generated", gen, "--reference", ref, "--out", tmp_path / "warm") == 0
    assert main(["-q", "eval", "--cache-dir", str(tmp_path / "cold"), "--generated", str(gen), "--reference",
                 str(ref), "--out", str(tmp_path / "fresh")]) == 0
    fad = [json.loads((tmp_path / r / "eval.json").read_text())["metrics"]["fad"] for r in ("warm", "fresh")]
    assert fad[0] == fad[1]


def test_flags_the_chosen_metrics_do_not_use_are_bad_usage(folders, tmp_path, capsys):
    """--fad-inf without the FAD, --tokenizer (or its older name --clap-tokenizer) with no CLAP and
    --embedder-weights for mfcc were ignored (exit 0) or an exit-1 error."""
    gen, ref, prompts = folders
    for extra, message in ((["--metrics", "clap", "--prompts", str(prompts), "--clap", "x", "--fad-inf"],
                            "--fad-inf extends the FAD"),
                           (["--tokenizer", str(tmp_path)], "--tokenizer is for a LAION CLAP .pt"),
                           (["--clap-tokenizer", str(tmp_path)], "--tokenizer is for a LAION CLAP .pt"),
                           (["--embedder-weights", str(tmp_path / "w.pth")], "--embedder-weights is for aisfx")):
        capsys.readouterr()
        assert _eval(tmp_path, "--generated", gen, "--reference", ref, "--out", tmp_path / "o", *extra) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_help_names_the_clap_and_its_tokenizer_as_the_other_commands_do(capsys):
    """`tta eval` named them --clap-model and --clap-tokenizer; `tta clap`, `tta index` and `tta import` name
    them --clap and --tokenizer. The new names come first; the older ones still work (the tests above)."""
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = capsys.readouterr().out
    assert "[--clap CLAP] [--tokenizer TOKENIZER]" in " ".join(text.split("\n\n")[0].split())
    assert "--clap CLAP, --clap-model CLAP" in text
    assert "--tokenizer TOKENIZER, --clap-tokenizer TOKENIZER" in text


def test_eval_goes_on_without_a_cache_it_cannot_write(folders, tmp_path, caplog):
    # the default cache is under the home folder; a user whose home is not writable got "cannot write there"
    # and no eval (a regular file where the folder should be stays unwritable for root too)
    gen, ref, _ = folders
    blocked = tmp_path / "home"
    blocked.write_text("not a folder")
    args = ["--generated", gen, "--reference", ref]
    assert main(["-q", "eval", "--cache-dir", str(blocked / "cache"), *map(str, args), "--out",
                 str(tmp_path / "uncached")]) == 0
    assert "going on without the embedding cache" in caplog.text and str(blocked / "cache") in caplog.text
    assert _eval(tmp_path, *args, "--out", tmp_path / "cached") == 0
    uncached, cached = (json.loads((tmp_path / n / "eval.json").read_text()) for n in ("uncached", "cached"))
    assert uncached["metrics"]["fad"] == cached["metrics"]["fad"]


def test_a_cache_found_unwritable_is_tried_again_by_the_next_eval_run(folders, tmp_path, caplog):
    """A cache folder that could not be written (a full disk) was skipped for the rest of the Python process:
    later evals in it never cached again, even once the folder could be written. Each run warns once."""
    gen, ref, _ = folders
    blocked = tmp_path / "home"
    blocked.write_text("not a folder")
    args = ["-q", "eval", "--cache-dir", str(blocked / "cache"), "--generated", str(gen), "--reference", str(ref)]
    assert main([*args, "--out", str(tmp_path / "first")]) == 0
    assert caplog.text.count("going on without the embedding cache") == 1
    blocked.unlink()                                  # room again
    assert main([*args, "--out", str(tmp_path / "second")]) == 0
    assert caplog.text.count("going on without the embedding cache") == 1
    assert len(list((blocked / "cache").rglob("*.npy"))) == 16 + 8      # embeddings of 8 + 8 files, 8 peaks


def test_a_retrieval_experiment_generation_record_is_not_called_damaged(folders, tmp_path):
    """`tta experiment retrieval` writes a generation.json whose outputs hold ids, buckets and neighbours but no
    file names; every variant's eval was marked generated_record_damaged ("outputs[0].file is null") and left
    unranked. It is a sound record: no warning, and its settings still feed the checks that read them."""
    gen, ref, _ = folders
    (gen / "broken.wav").unlink()
    outputs = [{"id": f"clip{i}", "prompt": "a tone", "bucket": "head", "clap_score": 0.1, "neighbours": []}
               for i in range(8)]
    (gen / "generation.json").write_text(json.dumps({"variant": {"name": "k1"}, "settings": {"candidates": 1},
                                                     "datastore": None, "outputs": outputs}))
    assert _eval(tmp_path, "--generated", gen, "--reference", ref, "--out", tmp_path / "exp") == 0
    proto = json.loads((tmp_path / "exp" / "eval.json").read_text())["protocol"]
    assert not [k for k in proto if k.startswith("generated_")]
    # a file name of another type is still damage
    outputs[3]["file"] = None
    (gen / "generation.json").write_text(json.dumps({"outputs": outputs}))
    assert _eval(tmp_path, "--generated", gen, "--reference", ref, "--out", tmp_path / "bad") == 0
    note = json.loads((tmp_path / "bad" / "eval.json").read_text())["protocol"]["generated_record_damaged"]
    assert "outputs[3].file is null, not a file name" in note["warning"]


def test_fd_on_a_folder_of_one_clip_names_the_folder(folders, tmp_path, capsys):
    """PANNs gives one embedding per file: a folder of one clip has no covariance, and the error says which
    folder (it said only 'need at least 2 embeddings to estimate a covariance, got 1')."""
    import torch

    from tests.test_eval_embedders import _panns_front_end_state, _panns_keys, _random_state

    gen, ref, _ = folders
    weights = tmp_path / "Cnn14_16k_mAP=0.438.pth"
    torch.save({"model": {**_random_state(_panns_keys()), **_panns_front_end_state()}}, weights)
    one = tmp_path / "one"
    save_audio(one / "clip0.wav", tone(440, 2.0), 16_000)
    for g, r, what, folder in ((one, ref, "generated", one), (gen, one, "reference", one)):
        capsys.readouterr()
        out = tmp_path / f"fd-{what}"
        assert _eval(tmp_path, "--generated", g, "--reference", r, "--out", out, "--metrics", "fd",
                     "--panns-weights", weights) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"tta: error: --metrics fd: {what} {folder}: need at least 2 embeddings")
        assert len(err.splitlines()) == 1 and not out.exists()


def test_prompt_rows_without_a_generated_file_are_named(folders, tmp_path, caplog):
    """A prompts row whose output is missing was left out without a word (tta clap score names such rows): the
    scores describe fewer prompts than the file holds. A row of a file skipped as unreadable is reported as
    such, not again."""
    gen, ref, prompts = folders
    with open(prompts, "a", newline="") as f:
        f.write("clip8.wav,a lost tone,hum\nbroken.wav,a broken tone,hum\n")
    out = tmp_path / "out"
    assert _eval(tmp_path, "--generated", gen, "--reference", ref, "--out", out, "--prompts", prompts) == 0
    body = json.loads((out / "eval.json").read_text())
    missing = body["protocol"]["prompts_without_audio"]
    assert missing["rows"] == ["clip8"]
    assert "1 of 10 rows pair with no audio file" in missing["warning"]
    assert missing["warning"] in caplog.text
    prompts.write_text("file,prompt\n" + "".join(f"clip{i}.wav,a tone\n" for i in range(8)))
    assert _eval(tmp_path, "--generated", gen, "--reference", ref, "--out", out, "--prompts", prompts) == 0
    assert "prompts_without_audio" not in json.loads((out / "eval.json").read_text())["protocol"]


def test_an_items_row_of_a_file_only_one_embedder_took_names_its_file(folders, tmp_path):
    """A clip too short for the FAD embedder (a tiny tta CLAP: one 1024-sample STFT window) is skipped there, but
    PANNs pads it and pairs it for KL: its items.csv row held the KL values and no file, seconds or sha256."""
    import torch

    clap_train = pytest.importorskip("tta.clap.train")
    from tests.test_eval_embedders import _panns_front_end_state, _panns_keys, _random_state
    from tta.checkpoint import save_component
    from tta.clap.model import TTAClap
    from tta.config import load_config

    torch.manual_seed(0)
    save_component(tmp_path / "clap", TTAClap(load_config(clap_train.RunConfig, "configs/clap/tiny.json").model))
    weights = tmp_path / "Cnn14_16k_mAP=0.438.pth"
    torch.save({"model": {**_random_state(_panns_keys()), **_panns_front_end_state()}}, weights)
    gen, ref, _ = folders
    (gen / "broken.wav").unlink()
    for folder in (gen, ref):
        save_audio(folder / "short.wav", tone(440, 0.03), 16_000)
    out = tmp_path / "out"
    assert _eval(tmp_path, "--generated", gen, "--reference", ref, "--out", out, "--metrics", "fad,kl",
                 "--embedder", "clap", "--clap", tmp_path / "clap", "--panns-weights", weights) == 0
    with open(out / "items.csv") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert rows["short"]["kl_softmax"] != "" and rows["short"]["frames"] == ""
    assert rows["short"]["file"] == str((gen / "short.wav").resolve()) and float(rows["short"]["seconds"]) == 0.03
    assert all(r["file"] and r["sha256"] for r in rows.values())


def test_sets_whose_rates_leave_a_band_the_embedder_hears_empty_are_warned_about(tmp_path):
    """Files below the embedder's rate hold nothing above half their rate; against a reference that does, FAD
    counts the missing band (a 16 kHz copy of 44.1 kHz audio under aisfx: FAD 253 where another draw at 44.1 kHz
    gave 8), and nothing said so. Rates the embedder resamples down to its own (22.05 vs 16 kHz for mfcc) are
    alike to it: no warning."""
    from tta.audio import resample

    rng = np.random.default_rng(0)
    for i in range(4):
        x = (tone(300 + 100 * i, 2.0, sample_rate=22_050) + rng.standard_normal(44_100) * 0.05).astype(np.float32)
        save_audio(tmp_path / "ref" / f"c{i}.wav", resample(x, 22_050, 16_000), 16_000)
        save_audio(tmp_path / "gen8k" / f"c{i}.wav", resample(x, 22_050, 8_000), 8_000)
        save_audio(tmp_path / "gen22k" / f"c{i}.wav", x, 22_050)
    out = tmp_path / "out"
    assert _eval(tmp_path, "--generated", tmp_path / "gen8k", "--reference", tmp_path / "ref", "--out", out) == 0
    warnings = json.loads((out / "eval.json").read_text())["protocol"]["fad"]["warnings"]
    band = [w for w in warnings if "hears up to 8 kHz" in w]
    assert len(band) == 1 and "generated files are at 8 kHz but the reference files at 16 kHz" in band[0]
    assert _eval(tmp_path, "--generated", tmp_path / "gen22k", "--reference", tmp_path / "ref", "--out", out) == 0
    warnings = json.loads((out / "eval.json").read_text())["protocol"]["fad"]["warnings"]
    assert not [w for w in warnings if "hears up to" in w]


def test_reference_statistics_record_how_their_audio_was_read(folders, tmp_path):
    """eval.json says how the generated files were read (protocol.common.audio_read) but, with --reference
    stats.npz, not how the reference was: statistics written before the 16-bit reading (or by other code) were
    compared without a word. Statistics now carry the rule; a file without it (or another) is warned about."""
    gen, ref, _ = folders
    first = tmp_path / "first"
    assert _eval(tmp_path, "--generated", gen, "--reference", ref, "--out", first) == 0
    again = tmp_path / "again"
    assert _eval(tmp_path, "--generated", gen, "--reference", first / "reference_stats.npz", "--out", again) == 0
    fad = json.loads((again / "eval.json").read_text())["protocol"]["fad"]
    common = json.loads((again / "eval.json").read_text())["protocol"]["common"]
    assert fad["reference"]["audio_read"] == common["audio_read"]
    assert not [w for w in fad["warnings"] if "reading rule" in w or "read otherwise" in w]
    old = FrechetStats.load(first / "reference_stats.npz")
    old.audio_read = ""   # as a tta before the rule wrote it
    old.save(tmp_path / "old.npz")
    assert _eval(tmp_path, "--generated", gen, "--reference", tmp_path / "old.npz", "--out", again) == 0
    fad = json.loads((again / "eval.json").read_text())["protocol"]["fad"]
    assert fad["reference"]["audio_read"] is None
    assert [w for w in fad["warnings"] if "old.npz record no reading rule" in w]
