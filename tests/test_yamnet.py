"""eval/yamnet.py (YAMNet from its TFLite file) and bench/audioset_judge.py, the second judge of generations.

They use the real YAMNet file that `make venv` installs (or $TTA_YAMNET); without it they are skipped.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests import signals
from tests.test_ldm_fixtures import SR, bench_module


def yamnet_or_skip():
    from eval.yamnet import Yamnet, YamnetError

    try:
        return Yamnet()
    except YamnetError as e:
        pytest.skip(f"no YAMNet here ({e})")


def test_yamnet_names_a_tone_and_silence_at_any_rate_and_length():
    y = yamnet_or_skip()
    tone = signals.tone(440, 2.0)
    assert y.frame_scores(tone, SR).shape == (3, 521)               # 2 s: windows at 0, 0.4875, 0.975 s
    assert y.labels[int(y.clip_scores(tone, SR).argmax())] == "Sine wave"
    assert y.labels[int(y.clip_scores(np.zeros(SR, np.float32), SR).argmax())] == "Silence"
    short = y.frame_scores(tone[: SR // 4], SR)                      # padded to one window
    assert short.shape == (1, 521)
    tone44 = signals.tone(440, 1.0, sample_rate=44_100)
    assert y.labels[int(y.clip_scores(np.stack([tone44, tone44], axis=1), 44_100).argmax())] == "Sine wave"
    clicks = signals.clicks(2.0)
    assert np.allclose(y.clip_scores(clicks, SR, pool="mean"), y.frame_scores(clicks, SR).mean(axis=0))
    assert y.identity.startswith("yamnet-tflite:") and y.index("Bark") == y.labels.index("Bark")


def test_yamnet_errors_name_the_file(tmp_path, monkeypatch):
    from eval.yamnet import Yamnet, YamnetError, read_labels

    monkeypatch.delenv("TTA_YAMNET", raising=False)
    with pytest.raises(YamnetError, match="nowhere.tflite: YAMNet TFLite file not found"):
        Yamnet(tmp_path / "nowhere.tflite")
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a model")
    with pytest.raises(YamnetError, match="bad.tflite: no yamnet_label_list.txt inside"):
        read_labels(bad)
    y = yamnet_or_skip()
    with pytest.raises(YamnetError, match="'Unicorn' is not one of YAMNet's 521"):
        y.index("Unicorn")
    with pytest.raises(YamnetError, match="pool 'median'"):
        y.clip_scores(np.zeros(SR, np.float32), SR, pool="median")


def fake_run(folder, seeds, models, clips):
    """A bench/recognisable.py --out folder: summary.json and <i>-<model>/<label>-<seed>.wav for `clips`
    ({label: [wav per seed]}), with the aisfx judge's nearest labels recorded as `models` gives them."""
    from bench.recognisable import PROMPTS
    from tta.audio import save_audio

    prompt_of = {label: prompt for prompt, label in PROMPTS}
    entries = []
    for i, (name, nearest) in enumerate(models.items()):
        wav_dir = folder / f"{i}-{name}"
        wav_dir.mkdir(parents=True)
        per_prompt = []
        for label, wavs in clips.items():
            for seed, wav in zip(seeds, wavs):
                save_audio(wav_dir / f"{label}-{seed}.wav", wav, SR)
            per_prompt.append({"prompt": prompt_of[label], "label": label, "nearest": nearest[label]})
        entries.append({"model": f"somewhere/{name}", "fingerprint": f"fp-{name}", "defaults": {"steps": 20},
                        "seeds": seeds, "per_prompt": per_prompt})
    (folder / "summary.json").write_text(json.dumps({
        "bench": "recognisable", "settings": {"prompts": [list(p) for p in PROMPTS]}, "models": entries}))
    return folder


def test_audioset_judge_pools_runs_pairs_models_and_sets_the_judges_side_by_side(tmp_path):
    yamnet_or_skip()
    bench = bench_module("audioset_judge")
    tone, quiet, noise = signals.tone(440, 1.0), np.zeros(SR, np.float32), signals.noise(1.0, seed=1)
    clips = {"dog": [tone, noise], "rain": [noise, quiet], "elephant": [tone, tone]}
    models = {"a": {"dog": ["dog", "cow"], "rain": ["rain", "rain"], "elephant": ["cow", "cow"]},
              "b": {"dog": ["pig", "pig"], "rain": ["fire", "rain"], "elephant": ["elephant", "cow"]}}
    run1 = fake_run(tmp_path / "run1", [0, 1], models, clips)
    run2 = fake_run(tmp_path / "run2", [2, 3], models, clips)
    # run2 records its component configs' fingerprint, run1 (as before such fingerprints) does not: they pool
    summary2 = json.loads((run2 / "summary.json").read_text())
    for m in summary2["models"]:
        m["config_fingerprint"] = f"cfg-{m['model']}"
    (run2 / "summary.json").write_text(json.dumps(summary2))
    results = tmp_path / "results.jsonl"
    s = bench.main(["--run", str(run1), str(run2), "--out", str(tmp_path / "out"), "--results", str(results),
                    "--quiet"])
    assert "elephant" in s["settings"]["left_out"] and "elephant" not in s["settings"]["labels"]
    assert len(s["settings"]["labels"]) == 14 and s["chance"] == round(1 / 14, 4)
    assert [m["model"] for m in s["models"]] == ["somewhere/a", "somewhere/b"]
    for m in s["models"]:
        assert m["config_fingerprint"] == f"cfg-{m['model']}"
        assert m["generations"] == 8 and [r.rsplit("/", 1)[-1] for r in m["runs"]] == ["run1", "run2"]
        assert [p["label"] for p in m["per_prompt"]] == ["dog", "rain"]
        for p in m["per_prompt"]:
            assert p["seeds"] == [0, 1, 2, 3] and p["hit@1"] == sum(n == p["label"] for n in p["nearest"])
            a = m["agreement"][p["label"]]
            assert a["both"] + a["yamnet_only"] == p["hit@1"] and a["of"] == 4
        assert m["hit@1"] == round(sum(p["hit@1"] for p in m["per_prompt"]) / 8, 4)
        given = sum(b for _, b in m["precision"].values())
        assert given == sum(n in m["precision"] for p in m["per_prompt"] for n in p["nearest"])
    a, b = s["models"]
    assert a["agreement"]["rain"]["both"] + a["agreement"]["rain"]["aisfx_only"] == 4     # aisfx: rain 4 of 4
    assert a["aisfx_hit@1_same_clips"] == 0.75 and b["aisfx_hit@1_same_clips"] == 0.25
    # the same clips for both models, so YAMNet's verdicts and hit@1 are the same and the paired difference is 0
    assert b["hit@1"] == a["hit@1"] and b["hit@1_minus_first"] == 0.0
    assert json.loads(results.read_text().splitlines()[-1])["bench"] == "audioset_judge"
    assert (tmp_path / "out" / "summary.json").is_file()

    run3 = fake_run(tmp_path / "run3", [1, 5], models, clips)   # seed 1 again: judged twice, refused
    with pytest.raises(SystemExit, match="seed 1 was already judged in an earlier run"):
        bench.main(["--run", str(run1), str(run3), "--out", str(tmp_path / "out4"), "--results", str(results)])
    (run2 / "1-b" / "rain-3.wav").unlink()
    with pytest.raises(SystemExit, match="rain-3.wav: generation missing"):
        bench.main(["--run", str(run1), str(run2), "--out", str(tmp_path / "out2"), "--results", str(results)])
    (run1 / "summary.json").write_text(json.dumps({"bench": "recognisable-merged", "models": []}))
    with pytest.raises(SystemExit, match="run1/summary.json: not a summary of one bench/recognisable.py run"):
        bench.main(["--run", str(run1), "--out", str(tmp_path / "out3"), "--results", str(results)])


def test_audioset_judge_judges_the_real_clips_and_their_resynthesis(tmp_path):
    from tests.test_ldm_fixtures import tiny_pipeline
    from tests.test_recognisable import judge_corpus

    yamnet_or_skip()
    bench = bench_module("audioset_judge")
    manifest = judge_corpus(tmp_path / "corpus", bench_module("recognisable"))
    run = fake_run(tmp_path / "run", [0], {"a": {"dog": ["dog"]}}, {"dog": [signals.tone(440, 1.0)]})
    argv = ["--run", str(run), "--out", str(tmp_path / "out"), "--results", str(tmp_path / "r.jsonl"), "--quiet"]
    with pytest.raises(SystemExit, match="--ceiling needs --manifest"):
        bench.main(argv + ["--ceiling", str(tiny_pipeline())])
    s = bench.main(argv + ["--manifest", str(manifest), "--ceiling", str(tiny_pipeline())])
    # two real training clips per label and one more held-out for dog and rain; elephant has no AudioSet
    # class and the rendered clip is not a real recording
    assert s["real"]["clips"] == 2 * 14 + 2
    assert s["real"]["per_label"]["dog"]["of"] == 3 and "elephant" not in s["real"]["per_label"]
    assert sum(c["given"] for c in s["real"]["per_label"].values()) == s["real"]["clips"]
    (c,) = s["ceilings"]
    for part in ("vocoder", "vae"):
        assert sum(x["of"] for x in c[part]["per_label"].values()) == s["real"]["clips"]
        assert 0 <= c[part]["hit@1"] <= 1


def test_audioset_judge_does_not_pool_runs_written_otherwise(tmp_path):
    """A recognisable.py run recorded before settings.output_fit saved its generations clipped as the pipeline
    returned them; one since saves them as tta generate writes them. Pooled, a model's hit@1 and its paired
    difference mixed the two writings; now the second run is refused, naming the field."""
    yamnet_or_skip()
    bench = bench_module("audioset_judge")
    clips, models = {"dog": [signals.tone(440, 1.0), signals.noise(1.0, seed=1)]}, {"a": {"dog": ["dog", "cow"]}}
    old, new, newer = (fake_run(tmp_path / name, seeds, models, clips)
                       for name, seeds in (("old", [0, 1]), ("new", [2, 3]), ("newer", [4, 5])))
    for run in (new, newer):
        summary = json.loads((run / "summary.json").read_text())
        summary["settings"]["output_fit"] = "generate"
        (run / "summary.json").write_text(json.dumps(summary))
    argv = ["--out", str(tmp_path / "out"), "--results", str(tmp_path / "r.jsonl"), "--quiet", "--run"]
    with pytest.raises(SystemExit, match="new/summary.json: saved with settings.output_fit 'generate', not "
                                         "'pipeline' as .*old's"):
        bench.main(argv + [str(old), str(new)])
    s = bench.main(argv + [str(new), str(newer)])
    assert s["settings"]["output_fit"] == "generate" and s["models"][0]["per_prompt"][0]["seeds"] == [2, 3, 4, 5]
