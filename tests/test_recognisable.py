"""bench/recognisable.py's judge: the k-nearest-neighbour vote, the silence trim and the resynthesis ceilings."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tests import signals
from tests.test_ldm_fixtures import SR, bench_module, one_thread, tiny_pipeline  # noqa: F401 (autouse)


def load_bench():
    return bench_module("recognisable")


def test_judge_counts_the_nearest_clip_and_a_strict_majority():
    bench = load_bench()
    refs = np.eye(4, dtype=np.float32)
    labels = ["dog", "dog", "cow", "cow"]
    query = np.array([1.0, 0.9, 0.0, 0.0], dtype=np.float32)
    assert bench.nearest(query, refs, labels, 2) == ["dog", "dog"]
    assert bench.judge(query, refs, labels, "dog", 2) == (True, True)
    assert bench.judge(query, refs, labels, "cow", 2) == (False, False)
    tie = np.array([1.0, 0.0, 0.9, 0.0], dtype=np.float32)        # dog then cow: a tie is no vote
    assert bench.judge(tie, refs, labels, "dog", 2) == (True, False)
    assert bench.rates([(True, True), (False, True)], 2) == {"hit@1": 0.5, "vote@2": 1.0}
    assert bench.nearest(refs[0], refs, labels, 2, exclude=0) == ["dog", "cow"]   # leave-one-out
    assert bench.judge(refs[0], refs, labels, "dog", 1, exclude=0) == (True, True)
    assert bench.judge(refs[2], refs, labels, "cow", 1, exclude=2) == (False, False)
    assert bench.per_label([(True, False), (False, False), (True, True)], ["dog", "cow", "dog"], 5) == {
        "cow": {"hit@1": 0, "vote@5": 0, "of": 1}, "dog": {"hit@1": 2, "vote@5": 1, "of": 2}}


def test_active_trims_silence_but_keeps_a_quarter_second():
    bench = load_bench()
    wav = np.zeros(SR * 2, dtype=np.float32)
    wav[SR // 2: SR // 2 + 100] = 0.5
    cut = bench.active(wav, SR)
    assert len(cut) == SR // 4 and cut[0] == 0.5


def test_resynthesis_ceilings_keep_length_and_stay_finite():
    from tta.pipeline import TTAPipeline

    bench = load_bench()
    pipe = TTAPipeline.from_pretrained(tiny_pipeline())
    wavs = [signals.tone(440, 0.5), signals.noise(0.3, seed=3)]
    vocoded, through_vae = bench.resynthesised(pipe, wavs)
    for src, a, b in zip(wavs, vocoded, through_vae):
        assert a.shape == b.shape == src.shape
        assert np.isfinite(a).all() and np.isfinite(b).all() and np.abs(a).max() > 0


def judge_corpus(folder, bench):
    """Two real (debian:) training clips per prompt label, a held-out one for two labels, and a rendered
    clip that must not become a judge's clip (only real recordings are)."""
    from tta.audio import save_audio
    from tta.data.manifest import ManifestRow, write_manifest

    rows = []
    for i, (_, label) in enumerate(bench.PROMPTS):
        for j, split in enumerate(("train", "train", "valid") if label in ("dog", "rain") else ("train", "train")):
            wav = signals.tone(200 + 90 * i + 7 * j, 0.6) if i % 2 else signals.noise(0.6, seed=10 * i + j)
            name = f"{label}-{j}"
            save_audio(folder / "audio" / f"{name}.wav", wav, SR)
            rows.append(ManifestRow(id=name, path=f"audio/{name}.wav", captions=(f"a {label}",), seconds=0.6,
                                    sample_rate=SR, split=split, source="debian:test-data", labels=(label,)))
    save_audio(folder / "audio" / "synth.wav", signals.chirp(300, 900, 0.6), SR)
    rows.append(ManifestRow(id="synth", path="audio/synth.wav", captions=("a dog",), seconds=0.6, sample_rate=SR,
                            source="fluidsynth", labels=("dog",)))
    return write_manifest(folder / "manifest.jsonl", rows)


def test_ceilings_only_run_writes_a_summary_and_reuses_the_reference_cache(tmp_path):
    pytest.importorskip("aisfx")
    bench = load_bench()
    manifest = judge_corpus(tmp_path / "corpus", bench)
    results, cache = tmp_path / "results.jsonl", tmp_path / "cache"
    argv = ["--model", str(tiny_pipeline()), "--manifest", str(manifest), "--seeds", "0", "--distractors", "0",
            "--threads", "1", "--cache-dir", str(cache), "--out", str(tmp_path / "out"), "--results", str(results),
            "--quiet"]
    s = bench.main(argv)

    assert s["settings"]["reference_clips"] == 2 * len(bench.PROMPTS)        # the rendered clip is left out
    assert s["real_held_out"]["clips"] == 2 and s["chance"] == round(1 / len(bench.PROMPTS), 4)
    (m,) = s["models"]
    assert m["hit@1"] is None and m["per_prompt"] == []                      # no generations with --seeds 0
    for part in ("vocoder", "vae+vocoder"):
        ceiling = m["held_out_resynthesised"][part]
        assert 0 <= ceiling["hit@1"] <= 1 and -1 <= ceiling["cosine"] <= 1
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == json.loads(json.dumps(s))
    (ref_cache,) = cache.glob("recognisable-refs-*.npy")
    assert np.load(ref_cache).shape[0] == 2 * len(bench.PROMPTS)
    assert "real_train_leave_one_out" not in s and "train_resynthesised" not in m
    again = bench.main(argv + ["--train-ceiling"])                           # the cached references are used
    assert again["real_held_out"] == s["real_held_out"] and len(results.read_text().splitlines()) == 2
    loo = again["real_train_leave_one_out"]
    assert loo["clips"] == 2 * len(bench.PROMPTS) and set(loo["per_label"]) == {label for _, label in bench.PROMPTS}
    assert sum(c["of"] for c in loo["per_label"].values()) == loo["clips"]
    for part in ("vocoder", "vae+vocoder"):
        ceiling = again["models"][0]["train_resynthesised"][part]
        assert ceiling["clips"] == loo["clips"] and 0 <= ceiling["hit@1"] <= 1 and -1 <= ceiling["cosine"] <= 1


def test_items_ceiling_judges_the_clips_as_a_training_config_draws_them(tmp_path):
    pytest.importorskip("aisfx")
    bench = load_bench()
    manifest = judge_corpus(tmp_path / "corpus", bench)
    config = tmp_path / "run" / "config.json"
    config.parent.mkdir()
    (tmp_path / "plain.json").write_text(json.dumps({"data": {"segment_seconds": 2.0}}))
    config.write_text(json.dumps({"train": {"max_steps": 1},
                                  "data": {"segment_seconds": 2.0, "repeat_below": 1.0, "repeat_gap": [0.1, 0.3]}}))
    argv = ["--model", str(tiny_pipeline()), "--manifest", str(manifest), "--seeds", "0", "--distractors", "0",
            "--threads", "1", "--out", str(tmp_path / "out"), "--results", str(tmp_path / "r.jsonl"), "--quiet"]
    s = bench.main(argv + ["--items-ceiling", str(config), "--item-draws", "1"])
    (items,) = s["training_items"]
    n = 2 * len(bench.PROMPTS)
    assert items["clips"] == n and items["draws"] == 1 and items["config"].endswith("run/config.json")
    assert set(items["per_label"]) == {label for _, label in bench.PROMPTS}
    assert sum(c["of"] for c in items["per_label"].values()) == n and 0 <= items["hit@1"] <= 1

    # the items are the clips repeated as the config says: a 0.6 s clip after 0.1-0.3 s gaps, three copies in 2 s
    data = bench.items_config(config, manifest)
    assert data.repeat_below == 1.0 and data.manifest == str(manifest)
    recorded = bench.item_wavs(bench.items_config(tmp_path / "plain.json", manifest), ["dog-0"], 1, SR)[0]
    drawn = bench.item_wavs(data, ["dog-0", "dog-0"], 2, SR)
    assert len(drawn) == 4 and all(w.shape == (2 * SR,) for w in drawn)
    clip = recorded[: round(0.6 * SR)]
    assert np.abs(recorded[round(0.6 * SR):]).max() == 0                    # no repeats: silence after the clip
    for w in drawn:
        np.testing.assert_array_equal(w[: len(clip)], clip)                  # the clip first, then a gap ...
        assert np.abs(w[len(clip): len(clip) + round(0.1 * SR)]).max() == 0
        assert np.abs(w[round(1.5 * SR):]).max() > 0                         # ... and more copies after it
    assert not np.array_equal(drawn[0], drawn[1])                           # each draw has its own gaps
    for bad, message in (({"model": {}}, "no `data` section"), ({"data": {"repeat_gap": [2, 1]}}, "repeat_gap")):
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(SystemExit, match=f"bad.json: .*{message}"):
            bench.main(argv + ["--items-ceiling", str(tmp_path / "bad.json")])


def one_seed_run(tmp_path):
    """The bench module and the arguments of a one-seed run on the test corpus (add --out and options)."""
    pytest.importorskip("aisfx")
    bench = load_bench()
    manifest = judge_corpus(tmp_path / "corpus", bench)
    return bench, ["--model", str(tiny_pipeline()), "--manifest", str(manifest), "--seeds", "1", "--distractors",
                   "0", "--threads", "1", "--cache-dir", str(tmp_path / "cache"), "--results",
                   str(tmp_path / "r.jsonl"), "--quiet"]


def test_generations_start_at_seed_start_and_a_second_run_adds_new_clips(tmp_path):
    bench, common = one_seed_run(tmp_path)
    first = bench.main(common + ["--out", str(tmp_path / "a")])
    second = bench.main(common + ["--out", str(tmp_path / "b"), "--seed-start", "3"])
    assert first["settings"]["seed_start"] == 0 and second["settings"]["seed_start"] == 3
    (folder_a,), (folder_b,) = [p for p in (tmp_path / "a").iterdir() if p.is_dir()], \
        [p for p in (tmp_path / "b").iterdir() if p.is_dir()]
    labels = [label for _, label in bench.PROMPTS]
    assert sorted(p.name for p in folder_a.glob("*.wav")) == sorted(f"{label}-0.wav" for label in labels)
    assert sorted(p.name for p in folder_b.glob("*.wav")) == sorted(f"{label}-3.wav" for label in labels)
    for run in (first, second):
        (m,) = run["models"]
        assert sum(p["of"] for p in m["per_prompt"]) == len(labels) and 0 <= m["hit@1"] <= 1
    from tta.audio import load_audio
    a, _ = load_audio(folder_a / "dog-0.wav")
    b, _ = load_audio(folder_b / "dog-3.wav")
    assert not np.array_equal(a, b)                                           # other seeds, other noise

    merged = bench.main(["--merge", str(tmp_path / "a" / "summary.json"), str(tmp_path / "b" / "summary.json"),
                         "--out", str(tmp_path / "m"), "--results", str(tmp_path / "r.jsonl")])
    (m,) = merged["models"]
    assert merged["bench"] == "recognisable-merged" and len(merged["sources"]) == 2
    assert [p["of"] for p in m["per_prompt"]] == [2] * len(labels)
    hits = sum(r["models"][0]["hit@1"] for r in (first, second)) / 2
    assert m["hit@1"] == pytest.approx(hits, abs=1e-4)
    assert m["hit@1_ci95"][0] <= m["hit@1"] <= m["hit@1_ci95"][1]
    assert json.loads((tmp_path / "m" / "summary.json").read_text())["models"][0]["hit@1"] == m["hit@1"]
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 3

    # best of 2 by the own CLAP, from the saved wavs: with 2 seeds, the hit of the higher-scored generation
    best = bench.main(["--merge", str(tmp_path / "a" / "summary.json"), str(tmp_path / "b" / "summary.json"),
                       "--best-of", "2", "--out", str(tmp_path / "m2"), "--results", str(tmp_path / "r.jsonl")])
    b = best["models"][0]["best_of"]["2"]
    from tta.pipeline import TTAPipeline
    clap = TTAPipeline.from_pretrained(tiny_pipeline()).clap
    kept = []
    for p in m["per_prompt"]:
        wavs = np.stack([load_audio(folder / f"{p['label']}-{s}.wav")[0] for folder, s in ((folder_a, 0), (folder_b, 3))])
        score = (np.asarray(clap.embed_audio(wavs, SR)) * np.asarray(clap.embed_text([p["prompt"]]))).sum(-1)
        kept.append(p["nearest"][int(np.argmax(score))] == p["label"])
    assert b["hit@1"] == pytest.approx(np.mean(kept), abs=1e-4)
    assert b["gain"] == pytest.approx(b["hit@1"] - m["hit@1"], abs=2e-4)
    assert b["gain_ci95"][0] <= b["gain_ci95"][1]
    with pytest.raises(SystemExit, match="fewer than 3"):
        bench.main(["--merge", str(tmp_path / "a" / "summary.json"), "--best-of", "3", "--out",
                    str(tmp_path / "m3"), "--results", str(tmp_path / "r.jsonl")])


def test_best_of_weights_match_counting_subsets():
    from itertools import combinations

    bench = load_bench()
    rng = np.random.default_rng(0)
    score, hit = rng.normal(size=7), rng.integers(0, 2, size=7).astype(float)
    for g in (2, 3, 7):
        w = bench.best_of_weights(7, g)
        assert w.sum() == pytest.approx(1.0) and np.all(np.diff(w) <= 0)
        brute = np.mean([hit[max(c, key=lambda i: score[i])] for c in combinations(range(7), g)])
        assert bench.best_of_hit(score, hit, g) == pytest.approx(brute)
    assert bench.best_of_weights(3, 2).tolist() == pytest.approx([2 / 3, 1 / 3, 0])
    for argv in (["--model", "x", "--manifest", "m.jsonl", "--best-of", "2"], ["--merge", "s.json", "--out", "o",
                                                                              "--best-of", "1"]):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)


def test_intervals_pair_the_models_on_resampled_seeds():
    bench = load_bench()

    def prompts(hits_per_prompt):
        return [{"label": f"l{i}", "nearest": [f"l{i}" if h else "other" for h in hs]}
                for i, hs in enumerate(hits_per_prompt)]

    a = prompts([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]])
    better = prompts([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]])              # a hit wherever a has one, and more
    ia, isame, ib, iother = bench.intervals([a, a, better, a[:2]], resamples=500)
    assert ia["hit@1_ci95"][0] <= 0.5 <= ia["hit@1_ci95"][1] and "hit@1_minus_first" not in ia
    assert isame["hit@1_minus_first"] == 0 and isame["hit@1_minus_first_ci95"] == [0, 0]   # paired: no noise
    assert ib["hit@1_minus_first"] == pytest.approx(5 / 12, abs=1e-4)
    assert ib["hit@1_minus_first_ci95"][0] > 0                                # never below a on the same seeds
    assert "hit@1_minus_first" not in iother and "hit@1_ci95" in iother      # other prompts: not paired
    _, other_seeds = bench.intervals([a, a], [[0, 1, 2, 3], [8, 9, 10, 11]], resamples=50)
    assert "hit@1_minus_first" not in other_seeds                             # other seeds: not paired
    ragged = [{"label": "l0", "nearest": ["l0"]}, {"label": "l1", "nearest": ["l1", "x"]}]
    assert bench.intervals([a, ragged, []], resamples=50)[1:] == [{}, {}]     # nothing to resample


def test_merge_rejects_what_is_not_a_summary(tmp_path):
    bench = load_bench()
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(SystemExit, match="not a summary"):
        bench.main(["--merge", str(bad), "--out", str(tmp_path / "o"), "--results", str(tmp_path / "r.jsonl")])
    with pytest.raises(SystemExit):
        bench.parse_args(["--merge", str(bad), "--model", "x"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--merge", str(bad)])                               # no --out
    run = {"bench": "recognisable", "settings": {"k": 5, "seeds": 2}, "chance": 0.1, "real_held_out": {},
           "models": [{"model": "m", "defaults": {}, "fingerprint": "aa",
                       "per_prompt": [{"prompt": "a dog barks", "label": "dog", "hit@1": 1, "vote@5": 1, "of": 2,
                                       "nearest": ["dog", "cow"]}]}]}
    first, again = tmp_path / "first.json", tmp_path / "again.json"
    first.write_text(json.dumps(run))
    again.write_text(json.dumps(run))
    argv = ["--out", str(tmp_path / "o"), "--results", str(tmp_path / "r.jsonl"), "--merge", str(first)]
    with pytest.raises(SystemExit, match="already judged on seed"):          # seeds 0-1 twice
        bench.main(argv + [str(again)])
    run["settings"]["seed_start"] = 2
    run["models"][0]["fingerprint"] = "bb"
    again.write_text(json.dumps(run))
    with pytest.raises(SystemExit, match="other weights"):                    # the folder's weights changed
        bench.main(argv + [str(again)])
    run["models"][0]["fingerprint"] = "aa"
    again.write_text(json.dumps(run))
    (m,) = bench.main(argv + [str(again)])["models"]
    assert m["seeds"] == [0, 1, 2, 3] and m["per_prompt"][0]["of"] == 4 and m["hit@1"] == 0.5
    copy = json.loads(json.dumps(run))                                        # a copy of the folder elsewhere
    copy["settings"]["seed_start"] = 4
    copy["models"][0]["model"] = "copy-of-m"
    copy["models"][0]["defaults"] = {"guidance_rule": "cfg"}                 # recorded since; unset before = cfg
    other = json.loads(json.dumps(copy))                                      # the same weights, other defaults
    other["settings"]["seed_start"] = 0
    other["models"][0]["model"], other["models"][0]["defaults"] = "m-best-of-2", {"candidates": 2}
    paths = [tmp_path / f"{n}.json" for n in ("copy", "other")]
    for path, r in zip(paths, (copy, other)):
        path.write_text(json.dumps(r))
    pooled, second = bench.main(argv + [str(again)] + [str(p) for p in paths])["models"]
    assert pooled["folders"] == ["m", "copy-of-m"] and pooled["seeds"] == [0, 1, 2, 3, 4, 5]
    assert second["folders"] == ["m-best-of-2"] and second["seeds"] == [0, 1]
    with pytest.raises(SystemExit, match="overwrite"):
        bench.main(["--out", str(tmp_path), "--results", str(tmp_path / "r.jsonl"), "--merge",
                    str(tmp_path / "summary.json")])
    with pytest.raises(SystemExit):
        bench.parse_args(["--model", "x", "--manifest", "m.jsonl", "--seed-start", "-1"])


JUDGE = {"manifest": "corpus/manifest.jsonl", "k": 5, "embedder": "aisfx@x", "trim_db": 40.0, "reference_clips": 30,
         "distractors": 0}


def recorded_run(fingerprint, defaults, nearest, *, start=0, model="base", model_fields=None, **settings):
    """A recognisable line of bench/results.jsonl as the bench writes it: one model judged by JUDGE (with
    `settings` over it) on "a dog barks", seeds start and start + 1, whose nearest labels are `nearest`."""
    return {"bench": "recognisable", "settings": {**JUDGE, "seeds": 2, "seed_start": start, **settings},
            "chance": 0.1, "real_held_out": {},
            "models": [{"model": model, "fingerprint": fingerprint, "defaults": defaults, "seeds": [start, start + 1],
                        **(model_fields or {}),
                        "per_prompt": [{"prompt": "a dog barks", "label": "dog", "of": 2, "nearest": nearest,
                                        "hit@1": nearest.count("dog"), "vote@5": nearest.count("dog")}]}]}


def test_baseline_pairs_with_the_recorded_runs_of_a_folder(tmp_path):
    """--baseline FOLDER takes FOLDER's runs from the results file (its weights and defaults, the same judge,
    the seeds the summaries hold), puts them first and pairs every other model with them on those seeds."""
    bench = load_bench()
    folder = tiny_pipeline()
    fp, defaults = bench.fingerprint(folder), bench.folder_defaults(folder)

    def run(start, nearest, *, model="base", fingerprint=fp, defaults=defaults, **settings):
        return recorded_run(fingerprint, defaults, nearest, start=start, model=model, output_fit="generate",
                            **settings)

    results = tmp_path / "results.jsonl"
    lines = [run(0, ["dog", "cow"]), run(0, ["dog", "dog"], defaults={**defaults, "candidates": 9}),
             {"bench": "recognisable-merged", "settings": {"k": 5}, "models": []}, "not json",
             run(2, ["cow", "cow"], reference_clips=31),                     # another judge: not this baseline
             run(2, ["cow", "dog"]), run(2, ["dog", "dog"])]                 # the earliest run of a seed counts
    results.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    later, earlier = tmp_path / "c2.json", tmp_path / "c0.json"
    later.write_text(json.dumps(run(2, ["dog", "dog"], model="cand", fingerprint="cc")))
    earlier.write_text(json.dumps(run(0, ["dog", "dog"], model="cand", fingerprint="cc")))
    argv = ["--baseline", str(folder), "--out", str(tmp_path / "o"), "--results", str(results)]

    base, cand = bench.main(argv + ["--merge", str(later), str(earlier)])["models"]   # runs in any order
    assert base["model"] == "base" and base["seeds"] == cand["seeds"] == [0, 1, 2, 3]
    assert base["per_prompt"][0]["nearest"] == ["dog", "cow", "cow", "dog"] and base["hit@1"] == 0.5
    assert cand["hit@1"] == 1.0 and cand["hit@1_minus_first"] == 0.5
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["sources"][:2] == [f"{bench.relative(results)}:1", f"{bench.relative(results)}:6"]
    (alone,) = bench.main(argv)["models"]                                    # every recorded seed
    assert alone["seeds"] == [0, 1, 2, 3] and "hit@1_minus_first" not in alone
    assert alone["per_prompt"][0]["nearest"] == ["dog", "cow", "cow", "dog"]  # not the other judge's seeds 2-3

    # a recorded run is merged in place as FILE:N (line N of the results file), with no copy of it elsewhere
    merged = bench.main(["--merge", f"{results}:6", str(earlier), "--out", str(tmp_path / "o3"),
                         "--results", str(tmp_path / "r.jsonl")])
    assert [m["model"] for m in merged["models"]] == ["base", "cand"]
    assert merged["sources"][0] == f"{bench.relative(results)}:6" and merged["models"][0]["seeds"] == [2, 3]
    with pytest.raises(SystemExit, match="not a line 99"):
        bench.main(["--merge", f"{results}:99", "--out", str(tmp_path / "o4"), "--results", str(tmp_path / "r.jsonl")])

    beyond = tmp_path / "c4.json"
    beyond.write_text(json.dumps(run(4, ["dog", "dog"], model="cand", fingerprint="cc")))
    with pytest.raises(SystemExit, match=r"no recorded run .* seed\(s\) \[4, 5\]"):
        bench.main(argv + ["--merge", str(earlier), str(beyond)])
    other_judge = tmp_path / "j.json"
    other_judge.write_text(json.dumps(run(0, ["dog", "dog"], model="cand", fingerprint="cc", reference_clips=29)))
    with pytest.raises(SystemExit, match="same judge"):
        bench.main(argv + ["--merge", str(other_judge)])
    with pytest.raises(SystemExit, match="not a pipeline folder"):
        bench.main(["--baseline", str(tmp_path), "--out", str(tmp_path / "o2"), "--results", str(results)])
    with pytest.raises(SystemExit):
        bench.parse_args(["--baseline", str(folder), "--model", "x", "--out", "o"])


def test_a_baseline_is_not_taken_from_runs_of_other_prompts_labels(tmp_path):
    """A recorded run that judged other prompts' labels (--labels) is another judge (judge_identity holds the
    labels), passed over as the baseline of summaries of every prompt, as another reference set is."""
    bench = load_bench()
    folder = tiny_pipeline()
    fp, defaults = bench.fingerprint(folder), bench.folder_defaults(folder)
    results = tmp_path / "results.jsonl"
    runs = [recorded_run(fp, defaults, ["dog", "dog"], output_fit="generate", labels=["dog"]),
            recorded_run(fp, defaults, ["cow", "dog"], output_fit="generate")]
    results.write_text("".join(json.dumps(r) + "\n" for r in runs))
    cand = tmp_path / "c0.json"
    cand.write_text(json.dumps(recorded_run("cc", defaults, ["dog", "dog"], model="cand",
                                            output_fit="generate")))
    base, _ = bench.main(["--baseline", str(folder), "--out", str(tmp_path / "o"), "--results", str(results),
                          "--merge", str(cand)])["models"]
    assert base["per_prompt"][0]["nearest"] == ["cow", "dog"]


def test_a_folder_with_the_same_weights_and_other_component_configs_is_another_model(tmp_path):
    """A copy of the baseline with another Griffin-Lim n_iter has the same weights' fingerprint: the components'
    config fingerprint keeps it apart, in --baseline and in --merge; records without one match any."""
    import shutil

    bench = load_bench()
    folder = tiny_pipeline()
    copy = tmp_path / "gl8"
    shutil.copytree(folder, copy)
    voc = copy / "vocoder" / "config.json"
    cfg = json.loads(voc.read_text())
    cfg.setdefault("config", {})["n_iter"] = 8
    voc.write_text(json.dumps(cfg))
    assert bench.fingerprint(copy) == bench.fingerprint(folder)
    assert bench.config_fingerprint(copy) != bench.config_fingerprint(folder)
    fp, defaults = bench.fingerprint(folder), bench.folder_defaults(folder)

    def run(nearest, model, **extra):
        return recorded_run(fp, defaults, nearest, model=model, model_fields=extra)

    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps(run(["dog", "cow"], "base")) + "\n")        # recorded before config prints
    cand = tmp_path / "cand.json"
    cand.write_text(json.dumps(run(["dog", "dog"], "gl8", config_fingerprint=bench.config_fingerprint(copy))))
    base, other = bench.main(["--baseline", str(folder), "--merge", str(cand), "--out", str(tmp_path / "o"),
                              "--results", str(results)])["models"]
    assert (base["model"], other["model"]) == ("base", "gl8") and other["hit@1_minus_first"] == 0.5
    # the same folder judged again with its config fingerprint: the record without one is taken to be it
    same = tmp_path / "same.json"
    same.write_text(json.dumps(run(["dog", "dog"], "base", config_fingerprint=bench.config_fingerprint(folder))))
    with pytest.raises(SystemExit, match="was already judged on seed"):
        bench.main(["--merge", str(cand), str(same), f"{results}:1", "--out", str(tmp_path / "o2"),
                    "--results", str(tmp_path / "r.jsonl")])


def test_labels_and_settings_judge_a_subset_with_other_generation_settings(tmp_path):
    bench, common = one_seed_run(tmp_path)
    sub = bench.main(common + ["--out", str(tmp_path / "sub"), "--labels", "rain,dog", "--setting", "steps=2",
                               "--setting", "candidates=2", "--guidance", "1.5"])
    (m,) = sub["models"]
    assert [p["label"] for p in m["per_prompt"]] == ["dog", "rain"]          # PROMPTS' order
    (folder,) = [p for p in (tmp_path / "sub").iterdir() if p.is_dir()]
    assert sorted(p.name for p in folder.glob("*.wav")) == ["dog-0.wav", "rain-0.wav"]
    assert sub["settings"]["labels"] == ["dog", "rain"]
    assert sub["settings"]["generation"] == {"steps": 2, "candidates": 2, "guidance": 1.5}
    assert m["defaults"]["steps"] == 2 and m["defaults"]["candidates"] == 2 and m["defaults"]["guidance"] == 1.5
    assert sub["settings"]["reference_clips"] == 2 * len(bench.PROMPTS)      # the references stay every label's
    assert sub["chance"] == pytest.approx(1 / len(bench.PROMPTS), abs=1e-4)  # 2 of 30 references per label

    # a run of the same subset on other seeds pools; a run of every prompt does not
    again = bench.main(common + ["--out", str(tmp_path / "again"), "--labels", "dog,rain", "--seed-start", "1",
                                 "--setting", "steps=2", "--setting", "candidates=2", "--guidance", "1.5"])
    merged = bench.main(["--merge", str(tmp_path / "sub" / "summary.json"), str(tmp_path / "again" / "summary.json"),
                         "--out", str(tmp_path / "m"), "--results", str(tmp_path / "r.jsonl")])
    assert merged["settings"]["labels"] == ["dog", "rain"] and merged["models"][0]["seeds"] == [0, 1]
    assert again["models"][0]["defaults"] == m["defaults"]
    full = bench.main(common + ["--out", str(tmp_path / "full"), "--seed-start", "5"])
    with pytest.raises(SystemExit, match=r"full/summary.json: judged with labels every prompt's, not "
                                         r"\['dog', 'rain'\] as .*sub/summary.json; merge runs of the same "
                                         "judge$"):
        bench.main(["--merge", str(tmp_path / "sub" / "summary.json"), str(tmp_path / "full" / "summary.json"),
                    "--out", str(tmp_path / "m2"), "--results", str(tmp_path / "r.jsonl")])
    assert full["settings"]["generation"] == {} and full["settings"]["labels"] is None

    assert bench.parse_args(["--model", "x", "--manifest", "m.jsonl", "--setting", "context_guidance=guided"]
                            ).setting == [("context_guidance", "guided")]
    for bad in (["--setting", "steps"], ["--setting", "colour=red"], ["--setting", "steps=two"],
                ["--setting", "candidates=0"], ["--setting", "sampler=magic"], ["--setting", "context_guidance=both"],
                ["--labels", "unicorn"], ["--labels", ","]):
        with pytest.raises(SystemExit):
            bench.parse_args(["--model", "x", "--manifest", "m.jsonl", *bad])


def test_generations_are_written_and_judged_as_tta_generate_writes_them(tmp_path):
    """The bench saved and judged each generation as the pipeline returned it: a clip over full scale was
    clipped by the WAV writer (the Griffin-Lim tiny model comes out 4-5x over) and candidates were ranked
    before any gain, so its files were not what `tta generate` writes for the same prompt, seed and settings.
    The record says the generations are fitted as tta generate's (settings.output_fit), with their gains."""
    from tta.cli import main as cli

    bench, common = one_seed_run(tmp_path)
    loud = tmp_path / "gl"
    assert cli(["-q", "export", "pipeline", str(tiny_pipeline()), "--out", str(loud), "--vocoder",
                "griffin-lim:4", "--default", "candidates=3"]) == 0
    common[common.index("--model") + 1] = str(loud)
    s = bench.main(common + ["--out", str(tmp_path / "out"), "--labels", "dog", "--seed-start", "2"])
    assert s["settings"]["output_fit"] == "generate"
    assert json.loads((tmp_path / "r.jsonl").read_text())["settings"]["output_fit"] == "generate"
    (m,) = s["models"]
    (p,) = m["per_prompt"]
    assert m["defaults"]["candidates"] == 3 and p["label"] == "dog"
    assert cli(["-q", "generate", p["prompt"], "--model", str(loud), "--seed", "2", "-o",
                str(tmp_path / "g.wav")]) == 0
    mine = json.loads((tmp_path / "g.generation.json").read_text())["outputs"][0]
    assert mine["gain"] < 0.5 and p["gains"] == [mine["gain"]]
    (folder,) = [f for f in (tmp_path / "out").iterdir() if f.is_dir()]
    assert (folder / "dog-2.wav").read_bytes() == (tmp_path / "g.wav").read_bytes()


def test_runs_judged_before_and_after_output_fit_are_neither_pooled_nor_paired(tmp_path):
    """Runs recorded without settings.output_fit judged the pipeline's clips (saved clipped); runs since judge
    them fitted as tta generate writes them. --baseline paired a new candidate with the old recorded runs and
    --merge pooled them, so a difference partly measured the writing. Now neither: each says which field."""
    bench = load_bench()
    folder = tiny_pipeline()
    fp, defaults = bench.fingerprint(folder), bench.folder_defaults(folder)

    def run(start, nearest, *, model="base", fingerprint=fp, **settings):
        return recorded_run(fingerprint, defaults, nearest, start=start, model=model, **settings)

    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps(run(0, ["dog", "cow"])) + "\n")            # recorded before output_fit
    cand = tmp_path / "cand.json"
    cand.write_text(json.dumps(run(0, ["dog", "dog"], model="cand", fingerprint="cc", output_fit="generate")))
    argv = ["--baseline", str(folder), "--out", str(tmp_path / "o"), "--results", str(results)]
    with pytest.raises(SystemExit, match=r"seed\(s\) \[0, 1\] were judged with settings.output_fit 'pipeline', "
                                         r"not 'generate' .* a baseline must be rerun with this bench"):
        bench.main(argv + ["--merge", str(cand)])
    # the baseline rerun with this bench is recorded later: the candidate is paired with it, not the old run
    with open(results, "a") as f:
        f.write(json.dumps(run(0, ["cow", "cow"], output_fit="generate")) + "\n")
    merged = bench.main(argv + ["--merge", str(cand)])
    base, other = merged["models"]
    assert base["per_prompt"][0]["nearest"] == ["cow", "cow"] and other["hit@1_minus_first"] == 1.0
    assert merged["sources"][0].endswith("results.jsonl:2") and merged["settings"]["output_fit"] == "generate"
    (alone,) = bench.main(argv)["models"]                                    # alone: as a run now writes
    assert alone["per_prompt"][0]["nearest"] == ["cow", "cow"]
    old_cand = tmp_path / "old.json"                                         # a candidate judged the old way
    old_cand.write_text(json.dumps(run(0, ["dog", "dog"], model="cand", fingerprint="cc")))
    results.write_text(json.dumps(run(0, ["cow", "cow"], output_fit="generate")) + "\n")
    with pytest.raises(SystemExit, match="'generate', not 'pipeline' .* rerun the summaries' models"):
        bench.main(argv + ["--merge", str(old_cand)])

    # --merge pools one model's runs on other seeds only when they were written alike
    later = tmp_path / "later.json"
    later.write_text(json.dumps(run(2, ["dog", "dog"], output_fit="generate")))
    old = tmp_path / "old-base.json"
    old.write_text(json.dumps(run(0, ["dog", "cow"])))
    merge = ["--out", str(tmp_path / "m"), "--results", str(tmp_path / "r.jsonl"), "--merge"]
    with pytest.raises(SystemExit, match=r"later.json: judged with settings.output_fit 'generate', not 'pipeline'"):
        bench.main(merge + [str(old), str(later)])
    with pytest.raises(SystemExit, match="output_fit 'pipeline', not 'generate'"):   # nor paired: other models
        bench.main(merge + [str(cand), str(old)])
    (m,) = bench.main(merge + [f"{results}:1", str(later)])["models"]       # both fitted: they pool
    assert m["seeds"] == [0, 1, 2, 3]
    (tmp_path / "m" / "summary.json").rename(tmp_path / "pooled.json")    # a merge of merges keeps its runs' field
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps(run(4, ["dog", "dog"], output_fit="generate")))
    assert bench.main(merge + [str(tmp_path / "pooled.json"), str(newer)])["models"][0]["seeds"] == [0, 1, 2, 3, 4, 5]
    with pytest.raises(SystemExit, match="output_fit 'generate', not 'pipeline'"):
        bench.main(merge + [str(old), str(tmp_path / "pooled.json")])
    mixed = json.loads((tmp_path / "pooled.json").read_text())             # pooled before runs were told apart
    mixed["settings"].pop("output_fit")
    mixed["settings"]["runs"][0].pop("output_fit")
    (tmp_path / "mixed.json").write_text(json.dumps(mixed))
    with pytest.raises(SystemExit, match="mixed.json: pools runs of settings.output_fit generate and pipeline"):
        bench.main(merge + [str(tmp_path / "mixed.json"), str(newer)])


def test_merge_refuses_runs_judged_against_other_references_or_by_another_judge(tmp_path):
    """--merge pooled runs judged against other reference clips (or by another embedder) into one figure, so a
    model's hit@1 mixed two measures; --baseline already kept its recorded runs to one judge. Now --merge
    refuses such runs in one line naming both summaries and what differs, with the check --baseline uses."""
    bench = load_bench()

    def run(start, nearest, model="m", fingerprint="aa", **settings):
        return recorded_run(fingerprint, {}, nearest, start=start, model=model, output_fit="generate", **settings)

    first, other = tmp_path / "first.json", tmp_path / "other.json"
    first.write_text(json.dumps(run(0, ["dog", "cow"])))
    merge = ["--out", str(tmp_path / "m"), "--results", str(tmp_path / "r.jsonl"), "--merge", str(first), str(other)]
    for differs, message in (({"reference_clips": 31}, "reference_clips 31, not 30"),
                             ({"distractors": 400}, "distractors 400, not 0"),
                             ({"embedder": "aisfx@y"}, "embedder 'aisfx@y', not 'aisfx@x'"),
                             ({"manifest": "other/manifest.jsonl"}, "manifest 'other/manifest.jsonl', not")):
        other.write_text(json.dumps(run(2, ["dog", "dog"], **differs)))
        with pytest.raises(SystemExit, match=rf"other.json: judged with {message}.* as .*first.json; merge runs "
                                             "of the same judge$"):   # it added "(references, embedder, k)" whatever differed
            bench.main(merge)
        assert not (tmp_path / "m" / "summary.json").exists()
        other.write_text(json.dumps(run(2, ["dog", "dog"], model="cand", fingerprint="cc", **differs)))
        with pytest.raises(SystemExit, match="judged with"):                # nor paired as two models
            bench.main(merge)
    # labels are the judge's too: runs of other labels and another embedder are told both, the labels not
    # first (a check of the labels alone came before the judge's and named only them)
    other.write_text(json.dumps(run(2, ["dog", "dog"], embedder="aisfx@y", labels=["dog"])))
    with pytest.raises(SystemExit, match=r"other.json: judged with embedder 'aisfx@y', not 'aisfx@x'; labels "
                                         r"\['dog'\], not every prompt's as .*first.json; merge runs of the "
                                         "same judge$"):
        bench.main(merge)
    # however many: a list of six labels or more read "other labels"; now both lists, and what each lacks
    first.write_text(json.dumps(run(0, ["dog", "cow"], labels=["dog", "rain"])))
    six = ["dog", "cow", "sheep", "pig", "horse", "chicken"]
    other.write_text(json.dumps(run(2, ["dog", "dog"], labels=six)))
    with pytest.raises(SystemExit, match=re.escape(f"other.json: judged with labels {six!r}, not ['dog', 'rain'] "
                                                   "(with cow, sheep, pig, horse, chicken; without rain) as ")):
        bench.main(merge)
    first.write_text(json.dumps(run(0, ["dog", "cow"])))   # every prompt's
    with pytest.raises(SystemExit, match=re.escape(f"labels {six!r}, not every prompt's (without wolf, elephant, "
                                                   "rain, footsteps, birds, explosion, thunder, fire, chopping) as ")):
        bench.main(merge)
    # the same manifest's hash where both recorded it (its path may differ), another hash otherwise
    first.write_text(json.dumps(run(0, ["dog", "cow"], manifest_sha256="a" * 64)))
    other.write_text(json.dumps(run(2, ["dog", "dog"], manifest="moved/manifest.jsonl", manifest_sha256="a" * 64)))
    assert bench.main(merge)["models"][0]["seeds"] == [0, 1, 2, 3]
    other.write_text(json.dumps(run(2, ["dog", "dog"], manifest_sha256="b" * 64)))
    with pytest.raises(SystemExit, match="judged with other manifest"):
        bench.main(merge)
    # a merge of merges: its runs' judges count, and a merge that pooled two judges is refused
    first.write_text(json.dumps(run(0, ["dog", "cow"])))
    other.write_text(json.dumps(run(2, ["dog", "dog"])))
    bench.main(merge)
    (tmp_path / "m" / "summary.json").rename(tmp_path / "pooled.json")
    third = tmp_path / "third.json"
    third.write_text(json.dumps(run(4, ["dog", "dog"], reference_clips=31)))
    with pytest.raises(SystemExit, match="third.json: judged with reference_clips 31, not 30 as .*pooled.json"):
        bench.main(merge[:-2] + [str(tmp_path / "pooled.json"), str(third)])
    # the message names what differs: it said "judged against other references" of another embedder too
    for differs, message in (({"reference_clips": 31}, "reference_clips 31, not 30"),
                             ({"embedder": "aisfx@y"}, "embedder 'aisfx@y', not 'aisfx@x'")):
        mixed = json.loads((tmp_path / "pooled.json").read_text())            # pooled before the check
        mixed["settings"]["runs"][1].update(differs)
        (tmp_path / "mixed.json").write_text(json.dumps(mixed))
        with pytest.raises(SystemExit, match=rf"mixed.json: pools runs of different judges \(one judged with "
                                             rf"{message} as its first run\); merge runs of the same judge$"):
            bench.main(merge[:-2] + [str(tmp_path / "mixed.json"), str(third)])

    # --baseline with summaries of two judges: refused, not paired with the first one's recorded runs
    folder = tiny_pipeline()
    fp, defaults = bench.fingerprint(folder), bench.folder_defaults(folder)
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(recorded_run(fp, defaults, ["dog", "cow"], start=s, output_fit="generate"))
                               + "\n" for s in (0, 2)))
    cand = [tmp_path / "c0.json", tmp_path / "c2.json"]
    cand[0].write_text(json.dumps(run(0, ["dog", "dog"], model="cand", fingerprint="cc")))
    cand[1].write_text(json.dumps(run(2, ["dog", "dog"], model="cand", fingerprint="cc", reference_clips=31)))
    with pytest.raises(SystemExit, match="c2.json: judged with reference_clips 31, not 30 as .*c0.json"):
        bench.main(["--baseline", str(folder), "--out", str(tmp_path / "b"), "--results", str(results),
                    "--merge", *map(str, cand)])


def test_baseline_alone_takes_the_runs_written_as_a_run_now_writes_them(tmp_path):
    """--baseline alone took the judge and output_fit of the folder's earliest recorded run, so where that was
    recorded before settings.output_fit it pooled the old runs (clips as the pipeline returned them) as the
    baseline of runs now written as tta generate writes them. Now it takes only runs of output_fit "generate"
    (the judge of the earliest of them), and says so in one line when the folder has none."""
    bench = load_bench()
    folder = tiny_pipeline()
    fp, defaults = bench.fingerprint(folder), bench.folder_defaults(folder)
    results = tmp_path / "results.jsonl"
    argv = ["--baseline", str(folder), "--out", str(tmp_path / "o"), "--results", str(results)]
    old = [recorded_run(fp, defaults, ["dog", "cow"], reference_clips=31),        # before output_fit, another judge
           recorded_run(fp, defaults, ["dog", "dog"], start=2)]
    results.write_text("".join(json.dumps(r) + "\n" for r in old))
    with pytest.raises(SystemExit, match=r"its runs in .*results.jsonl \(seed\(s\) \[0, 1, 2, 3\]\) were all judged "
                                         r"with settings.output_fit 'pipeline', none with 'generate' .* rerun with "
                                         r"this bench \(--model .* --seed-start 0\)"):
        bench.main(argv)
    assert not (tmp_path / "o" / "summary.json").exists()
    new = [recorded_run(fp, defaults, ["cow", "cow"], output_fit="generate"),
           recorded_run(fp, defaults, ["cow", "dog"], start=2, output_fit="generate", reference_clips=29)]
    with open(results, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in new))
    summary = bench.main(argv)
    (alone,) = summary["models"]                          # the fitted run on 0-1; 2-3's has another judge
    assert alone["seeds"] == [0, 1] and alone["per_prompt"][0]["nearest"] == ["cow", "cow"]
    assert summary["sources"] == [f"{bench.relative(results)}:3"] and summary["settings"]["output_fit"] == "generate"


def test_baseline_alone_names_the_seeds_it_leaves_out_for_their_output_fit(tmp_path, capsys):
    """--baseline alone dropped the seeds recorded only before settings.output_fit without a word: the summary
    rested on fewer seeds than the results file holds for the folder. It names them on stderr in one line (not
    with --quiet), with the rerun that would pool them; seeds also recorded as a run now writes them are kept."""
    bench = load_bench()
    folder = tiny_pipeline()
    fp, defaults = bench.fingerprint(folder), bench.folder_defaults(folder)
    results = tmp_path / "results.jsonl"
    argv = ["--baseline", str(folder), "--out", str(tmp_path / "o"), "--results", str(results)]
    lines = [recorded_run(fp, defaults, ["dog", "cow"]), recorded_run(fp, defaults, ["dog", "dog"], start=2),
             recorded_run(fp, defaults, ["dog", "dog"], start=6),                  # before output_fit: 0-3, 6-7
             recorded_run(fp, defaults, ["cow", "cow"], output_fit="generate")]   # as a run now writes: 0-1
    results.write_text("".join(json.dumps(r) + "\n" for r in lines))
    capsys.readouterr()
    (alone,) = bench.main(argv)["models"]
    assert alone["seeds"] == [0, 1]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"note: {folder}: seed(s) 2-3, 6-7 of its runs in {results} "
                                                   "left out of the baseline: judged with settings.output_fit "
                                                   "'pipeline', not 'generate' as this bench judges"), err
    assert err.rstrip().endswith(f"rerun them with this bench (--model {folder} --seed-start 2) to pool them")
    assert bench.main([*argv, "--quiet"])["models"][0]["seeds"] == [0, 1] and capsys.readouterr().err == ""
    results.write_text("".join(json.dumps(r) + "\n" for r in (lines[0], lines[3])))   # 0-1 taken as now: no note
    bench.main(argv)
    assert capsys.readouterr().err == ""
    assert bench.seed_spans([0, 1, 2, 5, 8, 9]) == "0-2, 5, 8-9"
