"""`tta eval --prompts` and `tta clap score --prompts` score a `tta generate --takes N` folder against the prompts
file that made it: its generation.json pairs each take with its row (tta.data.prompts.match_audio and
position_order, the one pairing of both); rows that pair by position pair in the run's order."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy.stats import t as student_t

from tests.test_generate import run
from tests.test_ldm_fixtures import one_thread, tiny_pipeline  # noqa: F401 (autouse)
from tta.audio import save_audio
from tta.cli import main


def generate(capsys, prompts, out, *extra) -> None:
    code, _, err = run(capsys, "--prompts", prompts, "--model", tiny_pipeline(), "--seconds", 0.5, "--steps", 2,
                       "--seed", 3, *extra, "--out-dir", out)
    assert code == 0, err


def clap() -> str:
    return str(tiny_pipeline() / "text_encoder")


def evaluate(capsys, gen, prompts, out, *metrics, printed: list | None = None) -> tuple[int, str, dict]:
    """exit code, stderr and {name: (prompt, id, take, clap score)} of items.csv; `printed` gets stdout's lines."""
    extra = ["--metrics", "fad,clap", "--clap", clap()] if "clap" in metrics else []
    code = main(["-q", "eval", "--generated", str(gen), "--reference", str(gen), "--embedder", "mfcc", "--prompts",
                 str(prompts), "--out", str(out), "--cache-dir", str(out.parent / "cache"), *extra])
    stdout, err = capsys.readouterr()
    if printed is not None:
        printed += stdout.splitlines()
    if code != 0:
        return code, err, {}
    with open(out / "items.csv", newline="") as f:
        return code, err, {r["name"]: (r["prompt"], r["id"], r.get("take"), r["clap_score"]) for r in csv.DictReader(f)}


def clap_score(capsys, audio, prompts, out) -> tuple[int, str, dict]:
    """exit code, stderr and {file name: (prompt, take, score)} of the result."""
    code = main(["-q", "clap", "score", "--clap", clap(), "--audio", str(audio), "--prompts", str(prompts),
                 "--out", str(out)])
    err = capsys.readouterr().err
    if code != 0:
        return code, err, {}
    items = json.loads(out.read_text())["per_item"]
    return code, err, {i["file"].rsplit("/", 1)[-1]: (i["prompt"], i.get("take"), i["score"]) for i in items}


def test_a_named_rows_takes_pair_with_it_in_eval_and_clap_score_alike(tmp_path, capsys):
    """An id row's and a file row's takes (door_1, door_2; rain_1, rain_2) had no prompt ('no prompt for 4
    generated file(s), e.g. door_1, door_2, rain_1'; clap score: "id 'door' pairs with no audio file"). Each
    take now pairs with its row, items.csv one row per file with its take; both score each file the same."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "door", "prompt": "a door creaks"}\n{"file": "sfx/rain.wav", "prompt": "rain"}\n')
    gen = tmp_path / "gen"
    generate(capsys, prompts, gen, "--takes", 2)
    code, err, items = evaluate(capsys, gen, prompts, tmp_path / "e", "clap")
    assert code == 0, err
    assert {n: i[:3] for n, i in items.items()} == {
        "door_1": ("a door creaks", "door", "1"), "door_2": ("a door creaks", "door", "2"),
        "rain_1": ("rain", "", "1"), "rain_2": ("rain", "", "2")}
    code, err, scored = clap_score(capsys, gen, prompts, tmp_path / "c.json")
    assert code == 0, err
    assert {n: s[:2] for n, s in scored.items()} == {
        "door_1.wav": ("a door creaks", 1), "door_2.wav": ("a door creaks", 2), "rain_1.wav": ("rain", 1),
        "rain_2.wav": ("rain", 2)}
    assert {n: float(i[3]) for n, i in items.items()} == {n[:-4]: s[2] for n, s in scored.items()}

    (gen / "generation.json").unlink()   # no record: one file per row, as before
    code, err, _ = evaluate(capsys, gen, prompts, tmp_path / "e2")
    assert code == 1 and "no prompt for 4 generated file(s), e.g. door_1, door_2, rain_1" in err
    code, err, _ = clap_score(capsys, gen, prompts, tmp_path / "c2.json")
    assert code == 1 and "sfx/rain.wav: file not found" in err   # door is left out, rain's file read as named


def test_an_unnamed_prompts_takes_pair_by_position_with_a_txt_of_each_prompt_once(tmp_path, capsys):
    """A .txt of 2 prompts against their 4 takes was refused for its count; the record pairs rows 0 and 1 with
    000, 001 and 002, 003. A .txt of another count is still refused."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a door creaks\nheavy rain\n")
    gen = tmp_path / "gen"
    generate(capsys, prompts, gen, "--takes", 2)
    code, err, items = evaluate(capsys, gen, prompts, tmp_path / "e")
    assert code == 0, err
    assert {n: i[:3] for n, i in items.items()} == {
        "000_a_door_creaks": ("a door creaks", "", "1"), "001_a_door_creaks": ("a door creaks", "", "2"),
        "002_heavy_rain": ("heavy rain", "", "1"), "003_heavy_rain": ("heavy rain", "", "2")}
    code, err, scored = clap_score(capsys, gen, prompts, tmp_path / "c.json")
    assert code == 0, err
    assert {n: s[:2] for n, s in scored.items()} == {
        "000_a_door_creaks.wav": ("a door creaks", 1), "001_a_door_creaks.wav": ("a door creaks", 2),
        "002_heavy_rain.wav": ("heavy rain", 1), "003_heavy_rain.wav": ("heavy rain", 2)}
    prompts.write_text("a door creaks\nheavy rain\nwind\n")
    code, err, _ = evaluate(capsys, gen, prompts, tmp_path / "e2")
    assert code == 1 and "3 rows pair by position with the 2 prompts of the run" in err
    assert not (tmp_path / "e2" / "eval.json").exists()


def test_a_txt_pairs_with_a_runs_named_files_in_the_runs_order(tmp_path, capsys):
    """A .txt against the files of ids zeta, alpha paired by sorted name: alpha took zeta's prompt without a
    word. The run's record gives their order."""
    rows = tmp_path / "p.jsonl"
    rows.write_text('{"id": "zeta", "prompt": "a door creaks"}\n{"id": "alpha", "prompt": "heavy rain"}\n')
    gen = tmp_path / "gen"
    generate(capsys, rows, gen)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a door creaks\nheavy rain\n")
    code, err, items = evaluate(capsys, gen, prompts, tmp_path / "e")
    assert code == 0, err
    assert {n: i[0] for n, i in items.items()} == {"zeta": "a door creaks", "alpha": "heavy rain"}
    code, err, scored = clap_score(capsys, gen, prompts, tmp_path / "c.json")
    assert code == 0, err
    assert {n: s[0] for n, s in scored.items()} == {"zeta.wav": "a door creaks", "alpha.wav": "heavy rain"}


def test_a_txt_is_refused_for_files_whose_numbers_sort_otherwise_than_their_names(tmp_path, capsys):
    """clip_1 .. clip_10 sorted by name put clip_10 second: it took the second row's prompt without a word."""
    gen = tmp_path / "gen"
    rng = np.random.default_rng(0)
    for i in range(1, 11):
        save_audio(gen / f"clip_{i}.wav", rng.uniform(-0.5, 0.5, 16000).astype(np.float32), 16000)
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"sound number {i}\n" for i in range(1, 11)))
    code, err, _ = evaluate(capsys, gen, prompts, tmp_path / "e")
    assert code == 1 and "'clip_10' sorts before 'clip_2'" in err and "Traceback" not in err
    assert not (tmp_path / "e" / "eval.json").exists()
    code, err, _ = clap_score(capsys, gen, prompts, tmp_path / "c.json")
    assert code == 1 and "'clip_10' sorts before 'clip_2'" in err and not (tmp_path / "c.json").exists()
    for i in range(1, 11):   # names in one order pair as before
        (gen / f"clip_{i}.wav").rename(gen / f"clip_{chr(96 + i)}.wav")
    code, err, items = evaluate(capsys, gen, prompts, tmp_path / "e")
    assert code == 0, err
    assert items["clip_j"][0] == "sound number 10"


def test_a_txt_pairs_in_one_order_in_eval_and_clap_score(tmp_path, capsys):
    """clap score sorted the files by name with their suffix, eval without: 'rain-2.wav' sorts before 'rain.wav'
    ('-' before '.'), 'rain' before 'rain-2', so the two gave the rows in opposite orders. Both sort the names
    without suffix now (x before 'x 2' too)."""
    gen = tmp_path / "gen"
    rng = np.random.default_rng(0)
    for name in ("rain", "rain-2", "x", "x 2"):
        save_audio(gen / f"{name}.wav", rng.uniform(-0.5, 0.5, 16000).astype(np.float32), 16000)
    prompts = tmp_path / "p.txt"
    prompts.write_text("light rain\nheavy rain\nwind\nthunder\n")
    code, err, items = evaluate(capsys, gen, prompts, tmp_path / "e", "clap")
    assert code == 0, err
    want = {"rain": "light rain", "rain-2": "heavy rain", "x": "wind", "x 2": "thunder"}
    assert {n: i[0] for n, i in items.items()} == want
    code, err, scored = clap_score(capsys, gen, prompts, tmp_path / "c.json")
    assert code == 0, err
    assert {n: s[0] for n, s in scored.items()} == {f"{n}.wav": p for n, p in want.items()}
    assert {n: float(i[3]) for n, i in items.items()} == {n[:-4]: s[2] for n, s in scored.items()}


def test_the_takes_of_rows_whose_files_are_numbered_pair_with_them(tmp_path, capsys, caplog):
    """A file field's 001_door.wav names its takes 001_door_1, 001_door_2, their id their name as an unnamed
    prompt's take's: read as an unnamed take (row 1 // 2), 001_door_1 failed the row number check and the whole
    record was dropped without a word ('no prompt for 4 generated file(s)'). A record that is not its run's
    takes is still ignored, with a warning naming it."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"file": "001_door.wav", "prompt": "a door creaks"}\n'
                       '{"file": "002_rain.wav", "prompt": "heavy rain"}\n')
    gen = tmp_path / "gen"
    generate(capsys, prompts, gen, "--takes", 2)
    code, err, items = evaluate(capsys, gen, prompts, tmp_path / "e", "clap")
    assert code == 0, err
    assert {n: (i[0], i[2]) for n, i in items.items()} == {
        "001_door_1": ("a door creaks", "1"), "001_door_2": ("a door creaks", "2"),
        "002_rain_1": ("heavy rain", "1"), "002_rain_2": ("heavy rain", "2")}
    code, err, scored = clap_score(capsys, gen, prompts, tmp_path / "c.json")
    assert code == 0, err
    assert {n: float(i[3]) for n, i in items.items()} == {n[:-4]: s[2] for n, s in scored.items()}
    assert {n: s[:2] for n, s in scored.items()} == {
        "001_door_1.wav": ("a door creaks", 1), "001_door_2.wav": ("a door creaks", 2),
        "002_rain_1.wav": ("heavy rain", 1), "002_rain_2.wav": ("heavy rain", 2)}

    record = json.loads((gen / "generation.json").read_text())
    record["outputs"][0]["take"] = 2   # 001_door_1 is no take 2
    (gen / "generation.json").write_text(json.dumps(record))
    caplog.clear()
    code, err, _ = evaluate(capsys, gen, prompts, tmp_path / "e2")
    assert code == 1 and "no prompt for 4 generated file(s)" in err
    assert f"{gen / 'generation.json'}: output '001_door_1.wav' is take 2 of a --takes 2 run" in caplog.text
    assert caplog.text.count("the record is ignored") == 1
    code, err, _ = clap_score(capsys, gen, prompts, tmp_path / "c2.json")
    assert code == 1 and caplog.text.count("the record is ignored") == 2


def test_a_takes_run_stopped_after_its_first_take_is_one_in_eval_and_clap_score(tmp_path, capsys):
    """eval told a --takes run by its record's settings.takes, clap score by a take > 1 among its outputs: a run
    stopped before any second take gave items.csv take 1 and clap score none. One helper (takes_run) now."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a door creaks\nheavy rain\n")
    gen = tmp_path / "gen"
    generate(capsys, prompts, gen, "--takes", 2)
    record = json.loads((gen / "generation.json").read_text())
    for output in record["outputs"][1::2]:   # each prompt's second take: as if never written
        (gen / output["file"]).unlink()
    record["outputs"], record["complete"] = record["outputs"][::2], False
    (gen / "generation.json").write_text(json.dumps(record))
    code, err, items = evaluate(capsys, gen, prompts, tmp_path / "e")
    assert code == 0, err
    assert {n: i[:3] for n, i in items.items()} == {"000_a_door_creaks": ("a door creaks", "", "1"),
                                                     "002_heavy_rain": ("heavy rain", "", "1")}
    code, err, scored = clap_score(capsys, gen, prompts, tmp_path / "c.json")
    assert code == 0, err
    assert {n: s[:2] for n, s in scored.items()} == {"000_a_door_creaks.wav": ("a door creaks", 1),
                                                     "002_heavy_rain.wav": ("heavy rain", 1)}


def test_a_takes_runs_clap_score_compares_with_a_run_of_one_take_of_the_same_prompts(tmp_path, capsys):
    """eval.json's prompt set counted each take's prompt, so tta report called a --takes 2 run and a run of one
    take of the same prompts file "not comparable: different prompts"; a row's takes now count it once. tta eval
    prints a --takes run's CLAP interval with the prompts as the draws, as tta report computes and writes it."""
    from tta.clap.interval import clap_half_width
    from eval.report import load_runs, sample_note

    prompts = tmp_path / "p.csv"
    prompts.write_text("id,prompt\ndoor,a door creaks\nrain,heavy rain\n")
    sets = []
    for name, takes in (("one", 1), ("two", 2), ("three", 3)):
        generate(capsys, prompts, tmp_path / name, "--takes", takes)
        printed: list[str] = []
        code, err, _ = evaluate(capsys, tmp_path / name, prompts, tmp_path / f"e-{name}", "clap", printed=printed)
        assert code == 0, err
        clap_proto = json.loads((tmp_path / f"e-{name}" / "eval.json").read_text())["protocol"]["clap"]
        sets.append(clap_proto["prompt_set_sha256"])
        run = load_runs([tmp_path / f"e-{name}"])[0]
        half = clap_half_width(run.rows)
        over = " with the prompts as the draws" if takes > 1 else ""
        assert sample_note(run, "clap_score").endswith(f"95% CI ±{half:.2g}{over}")
        assert printed[1].startswith("clap_score\t") and printed[1].endswith(f"\t95% CI ±{half:.2g}{over}"), printed
        assert clap_proto["clap_score_ci95_draws"] == 2   # the prompts, not the files
        assert clap_proto["clap_score_ci95_unit"] == ("prompts" if takes > 1 else "files")
        # tta clap score prints and records the same interval (it printed the score bare)
        assert main(["-q", "clap", "score", "--clap", clap(), "--audio", str(tmp_path / name), "--prompts",
                     str(prompts), "--out", str(tmp_path / f"c-{name}.json")]) == 0
        assert f" clips (95% CI ±{half:.2g}{over}; raw cosine; model " in capsys.readouterr().out
        score = json.loads((tmp_path / f"c-{name}.json").read_text())
        assert score["clap_score_ci95"] == clap_proto["clap_score_ci95"]
        assert (score["clap_score_ci95_draws"], score["clap_score_ci95_unit"]) == (2, clap_proto["clap_score_ci95_unit"])
    assert sets[0] == sets[1] == sets[2]
    assert main(["-q", "report", *(str(tmp_path / f"e-{n}") for n in ("one", "two")), "--out",
                 str(tmp_path / "r.md")]) == 0
    row = next(line for line in (tmp_path / "r.md").read_text().splitlines() if line.startswith("| CLAP score"))
    assert "not comparable" not in row and "**" in row   # ranked: the better run's value is marked

    other = tmp_path / "q.csv"   # another prompt is still another set
    other.write_text("id,prompt\ndoor,a door creaks\nrain,light rain\n")
    generate(capsys, other, tmp_path / "other", "--takes", 2)
    code, err, _ = evaluate(capsys, tmp_path / "other", other, tmp_path / "e-other", "clap")
    assert code == 0, err
    assert json.loads((tmp_path / "e-other" / "eval.json").read_text())["protocol"]["clap"]["prompt_set_sha256"] \
        != sets[1]


def test_the_clap_interval_of_a_run_of_unequal_takes_is_about_its_score(tmp_path, capsys):
    """With different numbers of takes per prompt (a run stopped part-way), the CLAP score (the mean over the
    files) is not the mean of the prompts' means, yet its interval was the score ± 1.96 sd / sqrt(k) of those
    means: centred on one statistic, as wide as another's. It is the score's own now, prompts drawn at random
    with their takes (the standard error of a mean over clusters, times Student's t for 3 prompts), the same
    where tta eval prints and records it, tta clap score does and tta report writes it."""
    from eval.report import load_runs, sample_note

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in
                               (("door", "a door creaks"), ("rain", "heavy rain"), ("wind", "wind howls"))))
    gen = tmp_path / "gen"
    generate(capsys, prompts, gen, "--takes", 3)
    record = json.loads((gen / "generation.json").read_text())
    gone = {"rain_2.wav", "rain_3.wav", "wind_3.wav"}   # takes 3, 1 and 2
    for name in gone:
        (gen / name).unlink()
    record["outputs"], record["complete"] = [o for o in record["outputs"] if o["file"] not in gone], False
    (gen / "generation.json").write_text(json.dumps(record))
    printed: list[str] = []
    code, err, items = evaluate(capsys, gen, prompts, tmp_path / "e", "clap", printed=printed)
    assert code == 0, err
    body = json.loads((tmp_path / "e" / "eval.json").read_text())
    score, clap_proto = body["metrics"]["clap_score"], body["protocol"]["clap"]
    by_prompt: dict[str, list[float]] = {}
    for name, (_, _, _, value) in items.items():
        by_prompt.setdefault(name.split("_")[0], []).append(float(value))
    assert sorted(map(len, by_prompt.values())) == [1, 2, 3]
    assert score == np.mean([v for vs in by_prompt.values() for v in vs])
    # each prompt's summed residuals from the score: its cluster total's deviation
    totals = [sum(v - score for v in vs) for vs in by_prompt.values()]
    half = student_t.ppf(0.975, 2) * np.sqrt(3 / 2 * np.sum(np.square(totals))) / 6   # Student's t, 2 df
    low, high = clap_proto["clap_score_ci95"]
    assert (low + high) / 2 == pytest.approx(score, abs=1e-12)
    assert (high - low) / 2 == pytest.approx(half, abs=1e-12)
    words = f"95% CI ±{half:.2g} with the prompts as the draws"
    assert printed[1] == f"clap_score\t{score:.6g}\t{words}", printed
    assert sample_note(load_runs([tmp_path / "e"])[0], "clap_score") == f"n 3 prompts, 6 takes, {words}"
    assert main(["-q", "clap", "score", "--clap", clap(), "--audio", str(gen), "--prompts", str(prompts),
                 "--out", str(tmp_path / "c.json")]) == 0
    assert f" clips ({words}; raw cosine; model " in capsys.readouterr().out
    recorded = json.loads((tmp_path / "c.json").read_text())["clap_score_ci95"]
    assert recorded == pytest.approx([low, high], abs=1e-12)


def test_the_clap_interval_of_unequal_takes_by_hand():
    """Three takes of one prompt (0.1, 0.3, 0.5) and one of another (0.9): the score is 0.45, the prompts'
    means 0.3 and 0.9. The interval was 0.45 ± 0.588 (1.96 sd of the means / sqrt(2)), its width the mean of
    the means'; the score's standard error over the two prompts is sqrt(2 (3^2 0.15^2 + 0.45^2)) / 4 = 0.225
    (± 2.86: Student's t with 1 degree of freedom, 12.71 standard errors; 1.96 of them, ± 0.441, before)."""
    from tta.clap.interval import clap_interval

    rows = [{"name": f"a_{t}", "prompt": "a", "clap_score": v, "take": t, "row": 0}
            for t, v in ((1, 0.1), (2, 0.3), (3, 0.5))] + [{"name": "b_1", "prompt": "b", "clap_score": 0.9,
                                                             "take": 1, "row": 1}]
    got = clap_interval(0.45, rows)
    half = student_t.ppf(0.975, 1) * 0.225
    assert got["clap_score_ci95"] == pytest.approx([0.45 - half, 0.45 + half], abs=1e-12)
    assert (got["clap_score_ci95_draws"], got["clap_score_ci95_unit"]) == (2, "prompts")
    assert (got["clap_score_ci95_distribution"], got["clap_score_ci95_df"]) == ("t", 1)
