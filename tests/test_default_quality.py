"""bench/default_quality.py end to end on the tiny pipeline (2 DDIM steps, mfcc FAD, 3 held-out items)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file

from tests import signals
from tests.test_ldm_fixtures import SR, bench_module, one_thread, tiny_components, tiny_pipeline  # noqa: F401 (autouse)
from tta.audio import save_audio
from tta.data.manifest import ManifestRow, read_manifest, resolve_path, write_manifest


def load_bench():
    return bench_module("default_quality")


def corpus(folder: Path) -> Path:
    """The tiny training clips (0.5 s, split train) plus 4 held-out clips of 1.5 s; held-out "a tone sound"
    repeats a training caption word for word, so its nearest-caption copy must be the training "tone"."""
    source = tiny_components()["manifest"]
    train = [dataclasses.replace(r, path=str(resolve_path(r, source))) for r in read_manifest(source)]
    held = {"tone": ("a tone sound", signals.tone(440, 1.5)),
            "sweep": ("a rising sweep", signals.chirp(300, 3000, 1.5)),
            "hiss": ("a hiss", signals.noise(1.5, seed=7)), "tick": ("a ticking clock", signals.clicks(1.5))}
    rows = list(train)
    for name, (caption, wav) in held.items():
        save_audio(folder / "audio" / f"{name}.wav", wav, SR)
        captions = (caption,) if name == "tone" else (caption, f"{caption}, close")
        rows.append(ManifestRow(id=f"valid-{name}", path=f"audio/{name}.wav", captions=captions, seconds=1.5,
                                sample_rate=SR, split="valid"))
    return write_manifest(folder / "manifest.jsonl", rows)


def test_pick_items_is_seeded_and_independent_of_row_order():
    bench = load_bench()
    rows = [ManifestRow(id=f"r{i:02d}", path="x.wav", captions=(f"c{i}", f"d{i}"), seconds=1.0, sample_rate=SR,
                        split="valid") for i in range(20)]
    a = bench.pick_items(rows, 5, seed=3)
    assert [(r.id, c) for r, c in a] == [(r.id, c) for r, c in bench.pick_items(rows[::-1], 5, seed=3)]
    assert all(c in r.captions for r, c in a) and len({r.id for r, _ in a}) == 5
    assert [r.id for r, _ in a] != [r.id for r, _ in bench.pick_items(rows, 5, seed=4)]
    with pytest.raises(ValueError, match="asks for more"):
        bench.pick_items(rows, 21, seed=0)


def test_bench_end_to_end_on_the_tiny_pipeline(tmp_path):
    bench = load_bench()
    manifest = corpus(tmp_path / "corpus")
    results = tmp_path / "results.jsonl"
    out = tmp_path / "out"
    s = bench.main(["--model", str(tiny_pipeline()), "--manifest", str(manifest), "--items", "4", "--steps", "2",
                    "--seconds", "1.5", "--embedder", "mfcc", "--threads", "1", "--cost-runs", "1",
                    "--out", str(out), "--results", str(results), "--quiet"])

    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(s))
    record = json.loads(results.read_text().splitlines()[-1])
    assert record["fad"] == s["fad"] and record["clap"] == s["clap"] and "per_item" not in record
    assert len(record["loadavg_before"]) == 3 and record["versions"]["torch"]

    c, f, k = s["clap"], s["fad"], s["cost"]
    numbers = [c["gen"], c["real"], c["copy"], f["gen"], f["copy"], k["rtf"], k["rtf_first"], k["peak_rss_mib"],
               k["model_size_mb"], k["in_process_rtf"]]
    assert all(math.isfinite(x) for x in numbers)
    assert all(-1 <= x <= 1 for x in (c["gen"], c["real"], c["copy"]))
    assert c["ratio_gen_real"] == pytest.approx(c["gen"] / c["real"])
    assert f["gen"] >= 0 and f["copy"] >= 0 and f["ratio_gen_copy"] == pytest.approx(f["gen"] / f["copy"])
    assert f["embedder"] == "mfcc@v1"                  # mfcc windows: 2 per 1.5 s clip, 1 per 0.5 s copy
    assert f["frames"]["real"] == f["frames"]["gen"] == 8 and f["frames"]["copy"] == 4
    # no training clip is as long as a held-out one here: every copy is the nearest shorter clip, and counted
    assert s["settings"]["copies_shorter_than_real"] == 4 and s["settings"]["copy_length"] == "match"
    assert k["rtf"] > 0 and k["rtf"] <= k["rtf_first"] and k["audio_seconds"] == pytest.approx(1.5)
    assert 50 < k["peak_rss_mib"] < 16_000 and k["torch_threads"] == 1
    assert 0 < k["model_size_mb"] < 40
    goals = s["goals_met"]
    assert goals["fad_below_copy"] == (f["gen"] < f["copy"]) and goals["rtf"] == (k["rtf"] <= 0.5)
    assert goals["clap_ratio"] == (c["real"] > 0 and c["ratio_gen_real"] >= 0.9)
    # the goal is 1.5 GB = 1.5e9 bytes (about 1430.5 MiB), not 1.5 GiB
    assert s["settings"]["goals"]["peak_rss_max_bytes"] == 1.5e9
    assert s["settings"]["goals"]["peak_rss_max_mib"] == pytest.approx(1430.5, abs=0.05)
    assert goals["peak_rss"] == (k["peak_rss_mib"] * 2**20 <= 1.5e9) and goals["model_size"] is True
    assert k["in_process_s_per_held_out_audio_s"] == k["in_process_rtf"] > 0
    m = record["machine"]                            # bench.record.machine_info(), old keys kept
    assert {"cpu_model", "cpu_flags", "kernel", "tta", "git_commit", "node", "platform", "processor",
            "cpu_count"} <= set(m) and m["cpu_count"] >= 1

    # the decoder's ceiling: real and copied clips resynthesised by the pipeline's own parts, same FAD and CLAP
    cf, cc = s["ceiling"]["fad"], s["ceiling"]["clap"]
    assert json.dumps(record["ceiling"]) == json.dumps(s["ceiling"]) and s["settings"]["ceiling"] is True
    assert all(math.isfinite(cf[k]) and cf[k] >= 0 for k in ("vocoder_real", "decoder_real", "decoder_copy"))
    assert all(-1 <= cc[k] <= 1 for k in ("vocoder_real", "decoder_real", "decoder_copy"))
    assert cf["ratio_gen_decoder_copy"] == pytest.approx(f["gen"] / cf["decoder_copy"])
    assert cf["decoder_real"] > 0                    # the tiny VAE + Griffin-Lim do not give the real clips back
    if cc["decoder_real"] > 0:                       # an untrained tiny CLAP can score the real clips below 0
        assert cc["ratio_gen_decoder_real"] == pytest.approx(c["gen"] / cc["decoder_real"])
    else:
        assert math.isnan(cc["ratio_gen_decoder_real"])

    items = s["per_item"]
    assert len(items) == 4 and sum(i["clap_gen"] for i in items) / 4 == pytest.approx(c["gen"])
    train_ids = {r.id for r in read_manifest(manifest) if r.split == "train"}
    assert all(i["copy_id"] in train_ids for i in items)
    tone = next(i for i in items if i["id"] == "valid-tone")
    assert tone["caption"] == "a tone sound"         # the exact training caption: its own row is nearest
    assert tone["copy_id"] == "tone" and tone["caption_cosine"] == pytest.approx(1.0, abs=1e-5)
    for i in items:                                  # gen and real are the same length, copies never longer
        gen, real, copy, dec = (sf.info(str(out / d / f"{i['id']}.wav")) for d in ("gen", "real", "copy", "decoded"))
        assert gen.frames == real.frames == dec.frames == round(i["seconds"] * SR) == 24_000
        assert copy.frames <= gen.frames
        assert gen.samplerate == SR


def test_best_of_candidates_reports_the_per_draw_score(tmp_path):
    """With --candidates 2 the kept clip is the better of two by the pipeline's CLAP, which is also the scorer:
    the bench flags that and reports the mean over both draws, which cannot exceed the kept clips' score, and
    the FAD of the first draws alone, which is what --candidates 1 gives."""
    bench = load_bench()
    manifest = corpus(tmp_path / "corpus")
    s = bench.main(["--model", str(tiny_pipeline()), "--manifest", str(manifest), "--items", "2", "--steps", "2",
                    "--seconds", "1.5", "--embedder", "mfcc", "--threads", "1", "--cost-runs", "1",
                    "--candidates", "2", "--out", str(tmp_path / "out"), "--results", str(tmp_path / "r.jsonl"),
                    "--quiet"])
    c = s["clap"]
    assert s["settings"]["candidates"] == 2 and c["ranked_by_this_clap"] is True
    assert -1 <= c["gen_per_draw"] <= c["gen"] + 1e-5
    assert c["ratio_per_draw_real"] == pytest.approx(c["gen_per_draw"] / c["real"])
    f = s["fad"]
    assert f["ratio_first_draw_copy"] == pytest.approx(f["gen_first_draw"] / f["copy"])
    one = bench.main(["--model", str(tiny_pipeline()), "--manifest", str(manifest), "--items", "2", "--steps", "2",
                      "--seconds", "1.5", "--embedder", "mfcc", "--threads", "1", "--cost-runs", "1",
                      "--candidates", "1", "--out", str(tmp_path / "one"), "--results", str(tmp_path / "r.jsonl"),
                      "--quiet"])
    assert f["gen_first_draw"] == pytest.approx(one["fad"]["gen"], rel=1e-3)
    assert "gen_per_draw" not in one["clap"] and "gen_first_draw" not in one["fad"]

    # scored by another CLAP (the pipeline's with one tensor perturbed): not the ranking one, but one draw's
    # score is still reported, and the FAD of the first draws does not depend on the CLAP
    other = tmp_path / "other_clap"
    shutil.copytree(tiny_pipeline() / "text_encoder", other)
    tensors = load_file(other / "model.safetensors")
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
    tensors[name] = tensors[name] + 0.5 * torch.randn_like(tensors[name])
    save_file(tensors, other / "model.safetensors")
    o = bench.main(["--model", str(tiny_pipeline()), "--manifest", str(manifest), "--items", "2", "--steps", "2",
                    "--seconds", "1.5", "--embedder", "mfcc", "--threads", "1", "--cost-runs", "1",
                    "--candidates", "2", "--clap", str(other), "--out", str(tmp_path / "o"),
                    "--results", str(tmp_path / "r.jsonl"), "--quiet"])
    assert o["settings"]["clap"] != s["settings"]["clap"] and o["clap"]["ranked_by_this_clap"] is False
    assert -1 <= o["clap"]["gen_per_draw"] <= 1 and o["clap"]["gen_per_draw"] != pytest.approx(c["gen_per_draw"])
    assert o["fad"]["gen_first_draw"] == pytest.approx(f["gen_first_draw"], rel=1e-6)
    with pytest.raises(SystemExit):
        bench.main(["--manifest", str(manifest), "--candidates", "0"])


def test_the_copy_is_the_nearest_caption_long_enough_and_never_the_item_itself():
    """The copy baseline stands in for a held-out clip of n seconds: the nearest-caption training clip at least
    n long (a shorter nearest one is passed over and counted), never the held-out row itself (--split train),
    and, when no clip is long enough, the nearest one, counted as shorter."""
    import numpy as np

    bench = load_bench()

    class WordClap:                                   # captions embed as bags of their words
        vocab = ["dog", "barks", "rain", "roof", "loud", "far"]

        def embed_text(self, captions, progress=False):
            return np.asarray([[c.split().count(w) + 1e-3 for w in self.vocab] for c in captions])

    def row(id_, caption, seconds, split="train"):
        return ManifestRow(id=id_, path=f"{id_}.wav", captions=(caption,), seconds=seconds, sample_rate=SR,
                           split=split)

    train = [row("short-dog", "dog barks", 1.0), row("long-dog", "dog barks loud", 6.0),
             row("rain", "rain roof", 10.0)]
    copies, passed, shorter = bench.nearest_training(WordClap(), ["dog barks"], train, progress=False,
                                                     min_seconds=[5.0])
    assert [r.id for r, _, _ in copies] == ["long-dog"] and (passed, shorter) == (1, 0)
    copies, passed, shorter = bench.nearest_training(WordClap(), ["dog barks"], train, progress=False)
    assert [r.id for r, _, _ in copies] == ["short-dog"] and (passed, shorter) == (0, 0)
    copies, passed, shorter = bench.nearest_training(WordClap(), ["dog barks"], train, progress=False,
                                                     min_seconds=[12.0])
    assert [r.id for r, _, _ in copies] == ["short-dog"] and (passed, shorter) == (0, 1)
    copies, passed, _ = bench.nearest_training(WordClap(), ["dog barks"], train, progress=False,
                                               exclude=[{"short-dog", "short-dog.wav"}])
    assert [r.id for r, _, _ in copies] == ["long-dog"] and passed == 1


def test_generations_are_written_and_scored_as_tta_generate_writes_them(tmp_path, capsys):
    """The bench wrote and scored each generation as the pipeline returned it: a clip over full scale was clipped
    in gen/ (the Griffin-Lim tiny model comes out 4-5x over) and candidates were ranked before any gain, so its
    files and CLAP scores were not what `tta generate` writes for the same caption, seed and settings. The record
    says the generations are fitted as tta generate's (settings.output_fit)."""
    import numpy as np

    from tta.cli import main as cli

    bench = load_bench()
    manifest = corpus(tmp_path / "corpus")
    loud = tmp_path / "gl"
    assert cli(["-q", "export", "pipeline", str(tiny_pipeline()), "--out", str(loud), "--vocoder", "griffin-lim:4",
                "--default", "candidates=3"]) == 0
    s = bench.main(["--model", str(loud), "--manifest", str(manifest), "--items", "2", "--steps", "2",
                    "--seconds", "1.5", "--embedder", "mfcc", "--threads", "1", "--cost-runs", "1", "--no-ceiling",
                    "--seed", "5", "--out", str(tmp_path / "out"), "--results", str(tmp_path / "r.jsonl"), "--quiet"])
    assert s["settings"]["output_fit"] == "generate" and s["settings"]["candidates"] == 3
    assert json.loads((tmp_path / "r.jsonl").read_text())["settings"]["output_fit"] == "generate"
    for i, item in enumerate(s["per_item"]):   # item i is drawn with seed --seed + i, as tta generate's prompt i
        assert cli(["-q", "generate", item["caption"], "--model", str(loud), "--seconds", "1.5", "--steps", "2",
                    "--seed", str(5 + i), "-o", str(tmp_path / f"{i}.wav")]) == 0
        mine = json.loads((tmp_path / f"{i}.generation.json").read_text())["outputs"][0]
        assert mine["gain"] < 0.5 and item["gain"] == pytest.approx(mine["gain"], abs=1e-6)
        assert (tmp_path / "out" / "gen" / f"{item['id']}.wav").read_bytes() == (tmp_path / f"{i}.wav").read_bytes()
        # the bench's own CLAP is the pipeline's here: it scores the kept clip as tta generate recorded it
        assert item["clap_gen"] == pytest.approx(mine["clap_score"], abs=2e-6)
        assert mine["clap_score"] == max(mine["candidate_clap_scores"])
    capsys.readouterr()
    assert np.isfinite(s["clap"]["gen_per_draw"]) and s["clap"]["gen_per_draw"] <= s["clap"]["gen"] + 1e-5
