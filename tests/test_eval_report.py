"""`tta report`: one self-contained HTML page (and Markdown) from two eval runs, checked statically and in
a real headless browser (Debian's chromium; skipped where /usr/bin/chromium is absent)."""

from __future__ import annotations

import csv
import html
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import t as student_t

from tests.signals import chirp, noise, tone
from tests.test_eval_cli import ToyClap
from tta.audio import save_audio
from tta.cli import main

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from eval import embedders

    root = tmp_path_factory.mktemp("report")
    gen, ref = root / "gen", root / "ref"
    with open(root / "prompts.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "prompt", "category"])
        for i in range(6):
            high = i % 2 == 1
            save_audio(gen / f"s{i}.wav", tone(3000 + 100 * i if high else 200 + 30 * i, 1.5)
                       + noise(1.5, amplitude=0.05, seed=i), 16_000)
            save_audio(ref / f"s{i}.wav", chirp(100 * (i + 1), 4000, 1.5), 16_000)
            # one prompt deliberately wrong, so best and worst differ
            w.writerow([f"s{i}", f"a {'high' if high != (i == 4) else 'low'} tone", "beep" if i < 4 else "hum"])
    saved = embedders.CLAP_LOADERS["tta"]
    embedders.CLAP_LOADERS["tta"] = lambda path: ToyClap()
    try:
        common = ["-q", "eval", "--generated", str(gen), "--prompts", str(root / "prompts.csv"),
                  "--cache-dir", str(root / "cache")]
        assert main([*common, "--reference", str(ref), "--out", str(root / "run_a"), "--metrics", "fad,clap",
                     "--clap", str(root / "toy")]) == 0
        assert main([*common, "--reference", str(gen), "--out", str(root / "run_b")]) == 0
    finally:
        embedders.CLAP_LOADERS["tta"] = saved
    assert main(["report", str(root / "run_a"), str(root / "run_b"), "--out", str(root / "report.html"),
                 "--markdown", str(root / "report.md")]) == 0
    return root


def test_report_is_self_contained(report):
    page = (report / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert '<table id="metrics">' in page and "run_a" in page and "run_b" in page
    assert page.count("<audio") >= 3 and "data:audio/wav;base64," in page
    assert "data:image/png;base64," in page  # charts and spectrograms
    # nothing is fetched from anywhere: every src/href is a data URI
    refs = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert refs and all(r.startswith("data:") for r in refs)
    assert "<link" not in page and "<script" not in page
    assert "by CLAP score" in page and "examples (this run has no CLAP score)" in page
    md = (report / "report.md").read_text()
    assert "| FAD ↓ `mfcc@v1`" in md and "CLAP score" in md and "worst `s4`" in md
    # run_b's reference is another folder than run_a's: its FAD of 0 is not "best", the row says why
    row = re.search(r"<tr><td class=\"name\">FAD ↓.*?</tr>", page).group(0)
    assert "not comparable: different reference" in row and 'class="best"' not in row
    assert "| FAD ↓ `mfcc@v1` (not comparable: different reference) |" in md
    # per-category FAD is shown with its frame count (and flagged: far fewer than 5 x D frames)
    assert '<table id="categories">' in page and "FAD frames" in page and "fewer than 5 x D frames" in page
    assert "Head and tail by file count" in page and '<table id="headtail">' in page
    # the protocol's small-sample warning on the overall FAD is shown by the value and listed (it was only in the
    # collapsed protocol dump)
    assert re.search(r"FAD ↓.*?<td[^>]*>[0-9.]+ ⚠", row) and "⚠ run_a (fad): FAD generated:" in page
    assert re.search(r"\| FAD ↓ .*\| [0-9.*]+ ⚠ \(n 6 files[^|]*\) \|", md) and "- ⚠ run_a (fad): FAD generated:" in md
    assert "| category | files | FAD | FAD frames |" in md and "⚠ beep: FAD on" in md


def test_each_value_says_how_many_items_it_rests_on_and_the_clap_scores_interval(report):
    """The metrics table gave a CLAP score of 6 prompts as a bare mean, with no n or spread, and bolded it as
    "best" against any other run, however small the difference."""
    import numpy as np

    with open(report / "run_a" / "items.csv", newline="") as f:
        scores = [float(r["clap_score"]) for r in csv.DictReader(f)]
    half = student_t.ppf(0.975, 5) * np.std(scores, ddof=1) / np.sqrt(len(scores))   # Student's t, 5 df
    assert len(scores) == 6 and half > 0
    note = f"n 6, 95% CI ±{half:.2g}"
    md = (report / "report.md").read_text()
    clap = next(line for line in md.splitlines() if line.startswith("| CLAP score"))
    assert f"({note})" in clap and clap.count("n 6") == 1, clap   # run_b has no CLAP score
    fad = next(line for line in md.splitlines() if line.startswith("| FAD"))
    assert fad.count("(n 6 files") == 2, fad
    page = (report / "report.html").read_text()
    row = re.search(r'<tr><td class="name">CLAP score.*?</tr>', page).group(0)
    assert f'<span class="muted">{html.escape(note)}</span>' in row


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_report_in_headless_browser(report, tmp_path):
    """The page loads with no console messages, the DOM has the metrics table and players; screenshot kept."""
    shot = report / "report.png"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--enable-logging=stderr", "--v=0", "--window-size=1200,2400", f"--screenshot={shot}", "--dump-dom",
           (report / "report.html").as_uri()]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    dom = proc.stdout
    assert '<table id="metrics">' in dom and dom.count("<audio") >= 3
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    # the same check catches a broken page: a console error in a copy of the report is reported
    broken = tmp_path / "broken.html"
    broken.write_text((report / "report.html").read_text().replace("</body>", "<script>notDefined()</script></body>"))
    cmd[-1] = broken.as_uri()
    cmd[cmd.index(f"--screenshot={shot}")] = f"--screenshot={tmp_path / 'b.png'}"
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    assert any(":CONSOLE" in line and "notDefined" in line for line in proc.stderr.splitlines())
    keep = Path(__import__("os").environ.get("TTA_REPORT_SCREENSHOT", ""))
    if keep.name:
        shutil.copy(shot, keep)


def test_report_refuses_other_file_types_and_extra_labels(report, tmp_path, capsys):
    runs = [str(report / "run_a"), str(report / "run_b")]
    for code, argv in ((1, ["--out", str(tmp_path / "r.pdf")]), (1, ["--markdown", str(tmp_path / "r.txt")]),
                       (2, ["--out", str(tmp_path / "r.html"), "--label", "a", "--label", "b", "--label", "c"]),
                       (2, [])):    # flags that do not fit each other (or none at all) are bad usage: exit 2
        assert main(["-q", "report", *runs, *argv]) == code
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("tta: error:"), err
    assert list(tmp_path.iterdir()) == []
    # a --markdown that cannot be written: refused before the HTML page is written (it was left behind)
    (tmp_path / "afile").write_text("x")
    assert main(["-q", "report", *runs, "--out", str(tmp_path / "r.html"), "--markdown",
                 str(tmp_path / "afile" / "r.md")]) == 1
    assert "--markdown cannot be written there" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def _run(label, fad, embedder, reference, clap=None, prompts=None, items=()):
    from eval.report import Run

    protocol = {"fad": {"embedder": {"identity": embedder}, "reference": {"folder": f"/data/{reference}"},
                        "reference_stats_sha256": reference}}
    metrics = {"fad": fad}
    if clap is not None:
        metrics["clap_score"] = clap
        protocol["clap"] = {"model": {"identity": "clap@tta-clap:0123"},
                            **({"prompts_sha256": prompts} if prompts else {})}
    return Run(label, {"metrics": metrics, "protocol": protocol}, list(items), Path(f"/runs/{label}"))


def test_clap_scores_on_other_prompts_are_not_compared():
    from eval.report import render_markdown

    md = render_markdown([_run("a", 1.0, "mfcc@v1", "ref1", clap=0.3, prompts="aaaa"),
                          _run("b", 1.0, "mfcc@v1", "ref1", clap=0.5, prompts="bbbb")])
    row = next(line for line in md.splitlines() if line.startswith("| CLAP score"))
    assert "not comparable" in row and "**" not in row
    same = render_markdown([_run("a", 1.0, "mfcc@v1", "ref1", clap=0.3, prompts="aaaa"),
                            _run("b", 1.0, "mfcc@v1", "ref1", clap=0.5, prompts="aaaa")])
    assert "**0.5**" in next(line for line in same.splitlines() if line.startswith("| CLAP score"))


def test_runs_read_or_evaluated_otherwise_are_not_ranked_silently():
    """An eval.json from before tta eval read files on the 16-bit grid (no audio_read) scores the same float
    files otherwise: ranked against a current one, it got a bold "best"; tta versions that differ get a note."""
    from eval.report import render_html, render_markdown
    from eval.run import AUDIO_READ

    def runs(read_a, version_b):
        a, b = _run("a", 2.0, "mfcc@v1", "ref1", clap=0.2), _run("b", 1.0, "mfcc@v1", "ref1", clap=0.3)
        a.body["protocol"]["common"] = {"tta_version": "0.1.0", **({"audio_read": read_a} if read_a else {})}
        b.body["protocol"]["common"] = {"tta_version": version_b, "audio_read": AUDIO_READ}
        return [a, b]

    md = render_markdown(runs(None, "0.1.0"))
    for metric in ("| FAD ↓", "| CLAP score ↑"):
        row = next(line for line in md.splitlines() if line.startswith(metric))
        assert "not comparable: different audio reading" in row and "**" not in row, row
    assert 'class="best"' not in render_html(runs(None, "0.1.0")) and "different tta versions" not in md
    same = runs(AUDIO_READ, "0.1.0")
    assert "| **1** |" in render_markdown(same) and "not comparable" not in render_markdown(same)
    later = render_markdown(runs(AUDIO_READ, "0.2.0"))
    assert "evaluated by different tta versions (a 0.1.0, b 0.2.0)" in later
    assert "evaluated by different tta versions (a 0.1.0, b 0.2.0)" in render_html(runs(AUDIO_READ, "0.2.0"))


def test_fads_of_different_numbers_of_generated_frames_are_not_ranked():
    """FAD falls as the generated set grows (its bias goes as 1/n): 8 clips against 5 got a bold "best". Counts
    within 1 % of each other rank (bench/fad_frames.py: 10 % fewer frames raised a close set's aisfx FAD by 7-14
    times one run's std): 10.0 s clips against 10.24 s ones (1000 and 1024 frames) no longer do."""
    from eval.report import render_markdown

    def row(frames_a, frames_b):
        a, b = _run("a", 1519.0, "mfcc@v1", "ref1"), _run("b", 1528.0, "mfcc@v1", "ref1")
        a.body["protocol"]["fad"]["generated_frames"] = frames_a
        b.body["protocol"]["fad"]["generated_frames"] = frames_b
        return next(line for line in render_markdown([a, b]).splitlines() if line.startswith("| FAD"))

    assert "not comparable: different numbers of generated frames (5 to 8, more than 1% apart)" in row(8, 5)
    assert "not comparable: different numbers of generated frames (1000 to 1024, more than 1% apart)" in row(1024, 1000)
    for frames in ((8, 5), (1000, 1011), (1011, 1000), (1000, 1024), (1000, 1100), (99, 100)):
        assert "**" not in row(*frames), row(*frames)
    for frames in ((8, 8), (1000, 1010), (1010, 1000)):
        assert "**1519**" in row(*frames) and "not comparable" not in row(*frames), row(*frames)


def _with_fad_inf(run, value, interval=None, method="Chung et al. 2020: nested subsets", frames=None):
    run.body["metrics"]["fad_inf"] = value
    run.body["protocol"]["fad"]["fad_inf"] = {"fad_inf": value, "method": method,
                                              **({"fad_inf_ci95": list(interval)} if interval else {})}
    if frames is not None:
        run.body["protocol"]["fad"]["generated_frames"] = frames
    return run


def test_fad_inf_shows_its_interval_and_compares_runs_that_fad_cannot():
    """FAD∞ was shown bare; its 95% interval (eval.json's protocol.fad.fad_inf.fad_inf_ci95) goes beside it as the
    CLAP score's does, and a result from before it was recorded shows none. Two runs whose FADs do not rank for
    their frame counts but which both have a FAD∞ (extrapolated to infinite frames, so ranked whatever the counts)
    are told that FAD∞ compares them; not where one has none or the FAD∞s were made otherwise."""
    from eval.report import render_html, render_markdown

    def md_row(runs, metric):
        return next(line for line in render_markdown(runs).splitlines() if line.startswith(f"| {metric}"))

    a = _with_fad_inf(_run("a", 1519.0, "mfcc@v1", "ref1"), 1500.0, (1480.0, 1520.0), frames=5000)
    b = _with_fad_inf(_run("b", 1528.0, "mfcc@v1", "ref1"), 1490.0, frames=6000)   # an older result: no interval
    inf = md_row([a, b], "FAD∞")
    assert "| 1500 (95% CI ±20) | **1490** |" in inf and "not comparable" not in inf, inf
    cell = re.search(r'<tr><td class="name">FAD∞.*?</tr>', render_html([a, b])).group(0)
    assert '<span class="muted">95% CI ±20</span>' in cell and cell.count("95% CI") == 1
    fad = md_row([a, b], "FAD ↓")
    assert ("not comparable: different numbers of generated frames (5000 to 6000, more than 1% apart), and FAD is "
            "biased upward as they fall; FAD∞, extrapolated to infinite frames, compares them") in fad and "**" not in fad

    plain = _run("c", 1528.0, "mfcc@v1", "ref1")
    plain.body["protocol"]["fad"]["generated_frames"] = 6000
    assert "FAD∞" not in md_row([a, plain], "FAD ↓")
    older = _with_fad_inf(_run("d", 1528.0, "mfcc@v1", "ref1"), 1490.0, method="Chung et al. 2020: subsets without "
                          "replacement, linear fit in 1/N", frames=6000)
    assert "FAD∞" not in md_row([a, older], "FAD ↓")
    assert "not comparable: different FAD∞ method (protocol.fad.fad_inf.method)" in md_row([a, older], "FAD∞")
    other = _with_fad_inf(_run("e", 1528.0, "mfcc@v1", "ref2"), 1490.0, frames=6000)
    assert "not comparable: different reference)" in md_row([a, other], "FAD∞")


def _written(folder, run):
    """`run` written as tta eval writes a result (eval.json and items.csv, by eval.outputs.write_outputs)."""
    from eval.outputs import write_outputs

    items = {r["name"]: {k: v for k, v in r.items() if k != "name"} for r in run.rows}
    write_outputs(folder, {"metrics": run.body["metrics"], "protocol": run.body["protocol"], "breakdown": {}}, items)
    return folder


def _reported(tmp_path, name, runs, metric):
    """`tta report` of `runs` written to result folders: (the metric's Markdown row, its HTML row, md, page)."""
    root = tmp_path / name
    folders = [str(_written(root / r.label, r)) for r in runs]
    assert main(["-q", "report", *folders, "--out", str(root / "r.html"), "--markdown", str(root / "r.md")]) == 0
    md, page = (root / "r.md").read_text(), (root / "r.html").read_text()
    row = next(line for line in md.splitlines() if line.startswith(f"| {metric}"))
    return row, re.search(rf'<tr><td class="name">{re.escape(metric)}.*?</tr>', page).group(0), md, page


MARK_NOTE = ("best, or not separable from the best at 95% (FAD∞: difference within 1.96 standard errors of "
             "the difference, each from its interval; other rows: the best value alone)")


def test_fad_inf_marks_every_run_the_data_cannot_tell_from_the_best(tmp_path):
    """The FAD∞ row bolded the single lowest value although the runs' 95% intervals overlapped (the data cannot
    tell them apart): a run whose difference from the best is within 1.96 standard errors of the difference is
    marked with it, one further (even if its interval overlaps another marked run's) is not. The plain FAD has
    no interval: its best alone, as before."""
    def runs():
        return (_with_fad_inf(_run("a", 1519.0, "mfcc@v1", "ref1"), 1500.0, (1480.0, 1520.0), frames=5000),
                _with_fad_inf(_run("b", 1528.0, "mfcc@v1", "ref1"), 1510.0, (1495.0, 1525.0), frames=5000),
                _with_fad_inf(_run("c", 1540.0, "mfcc@v1", "ref1"), 1535.0, (1521.0, 1549.0), frames=5000))

    a, b, c = runs()
    row, cells, md, page = _reported(tmp_path, "abc", [a, b, c], "FAD∞")
    assert "| **1500** (" in row and "| **1510** (" in row and "| 1535 (" in row, row
    assert cells.count('<td class="best">') == 2 and '<td class="">1535' in cells, cells
    fad = next(line for line in md.splitlines() if line.startswith("| FAD ↓"))
    assert fad.count("**") == 2 and "**1519**" in fad, fad
    assert f"**Bold**: {MARK_NOTE}." in md and html.escape(MARK_NOTE) in page
    a, _, c = runs()
    row, cells, *_ = _reported(tmp_path, "ac", [a, c], "FAD∞")
    assert "| **1500** (" in row and "| 1535 (" in row and cells.count('<td class="best">') == 1, row


def test_fad_inf_runs_whose_intervals_overlap_but_whose_difference_is_significant_are_told_apart():
    """Two runs were marked alike while their 95% intervals overlapped; two intervals of equal width overlap
    until the difference reaches 2.77 standard errors of it, so runs separable at 95% (1.96 to 2.77) were
    marked as if they were not. 10 ±1 against 11.8 ±1 is 2.49 standard errors apart: the best alone is
    marked; 11.3 (1.80) is not separable from it."""
    from eval.report import render_markdown

    def row(other):
        runs = [_with_fad_inf(_run("a", 11.0, "mfcc@v1", "ref1"), 10.0, (9.0, 11.0), frames=5000),
                _with_fad_inf(_run("b", 12.0, "mfcc@v1", "ref1"), other, (other - 1, other + 1), frames=5000)]
        return next(line for line in render_markdown(runs).splitlines() if line.startswith("| FAD∞"))

    assert "| **10** (95% CI ±1) | 11.8 (95% CI ±1) |" in row(11.8), row(11.8)
    assert "| **10** (95% CI ±1) | **11.3** (95% CI ±1) |" in row(11.3), row(11.3)


def _clap_run(label, scores, names=None, prompts=None):
    """A run with a CLAP score of these per-file scores (items.csv rows); its mean is the run's CLAP score."""
    names = names or [f"f{i}" for i in range(len(scores))]
    prompts = prompts or [f"prompt {i}" for i in range(len(scores))]
    items = [{"name": n, "prompt": p, "clap_score": repr(v), "file": f"/nowhere/{n}.wav"}
             for n, p, v in zip(names, prompts, scores)]
    run = _run(label, 1.0 + len(label), "mfcc@v1", "ref1", clap=float(np.mean(scores)), prompts="same",
               items=items)
    run.body["protocol"]["clap"]["prompt_set_sha256"] = "set"
    return run


def test_clap_score_marks_runs_the_paired_difference_or_the_intervals_do_not_separate(tmp_path):
    """The CLAP row bolded the single highest mean however wide the runs' intervals. Runs that scored the same
    prompts are compared by their paired difference (mean of the per-item differences ± t sd / sqrt(n), t
    Student's 95% quantile): here the intervals overlap (the prompts' scores spread widely) but every prompt
    scored 0.02 higher, so one run is marked; a difference that flips sign from prompt to prompt does not
    separate them. Items that do not pair (other file names, a prompt text twice) are compared by their
    intervals."""
    from eval.report import sample_note

    base = [0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40]
    a = _clap_run("a", base)
    b = _clap_run("b", [v + 0.02 + 0.001 * (i % 2) for i, v in enumerate(base)])
    half = [float(re.search(r"±([0-9.]+)", sample_note(r, "clap_score")).group(1)) for r in (a, b)]
    assert b.body["metrics"]["clap_score"] - half[1] < a.body["metrics"]["clap_score"] + half[0]   # they overlap
    row, cells, md, _ = _reported(tmp_path, "paired", [a, b], "CLAP score")
    assert row.count("**") == 2 and "| **0.2455** (" in row and cells.count('<td class="best">') == 1, row

    noisy = _clap_run("b", [v + (0.06 if i % 2 else -0.05) for i, v in enumerate(base)])
    row, cells, *_ = _reported(tmp_path, "noisy", [a, noisy], "CLAP score")
    assert row.count("**") == 4 and cells.count('<td class="best">') == 2, row

    twice = [f"prompt {i // 2}" for i in range(8)]   # no pairing: other names, and each text twice
    a = _clap_run("a", base, prompts=twice)
    near = _clap_run("b", [v + 0.02 for v in base], names=[f"g{i}" for i in range(8)], prompts=twice)
    row, *_ = _reported(tmp_path, "unpaired", [a, near], "CLAP score")
    assert row.count("**") == 4, row
    far = _clap_run("b", [v + 0.3 for v in base], names=[f"g{i}" for i in range(8)], prompts=twice)
    row, *_ = _reported(tmp_path, "apart", [a, far], "CLAP score")
    assert row.count("**") == 2 and "**0.525**" in row, row


def test_the_mark_note_names_only_the_rules_of_the_rows_shown():
    """The note under the table explained FAD∞'s intervals and the CLAP score's paired differences whenever a
    row was marked, in a report of FAD rows alone too (which mark their best value): it names the rules the
    marked rows followed and no other; a table that marks nothing has no note."""
    from eval.report import render_html, render_markdown

    def notes(runs):
        md = [line for line in render_markdown(runs).splitlines() if line.startswith("**Bold**")]
        page = re.findall(r'<p class="muted" id="mark-note">.*?</p>', render_html(runs))
        return md, page

    md, page = notes([_run("a", 116.2, "mfcc@v1", "ref1"), _run("b", 82.9, "mfcc@v1", "ref1")])
    assert md == ["**Bold**: the best value."] and len(page) == 1, (md, page)
    assert ": the best value.</p>" in page[0], page
    paired = "CLAP score: paired difference on the same prompts, its Student's t interval holding 0"
    md, page = notes([_clap_run("a", [0.1, 0.2, 0.3]), _clap_run("b", [0.2, 0.3, 0.4])])
    assert md == [f"**Bold**: best, or not separable from the best at 95% ({paired}; other rows: the best "
                  "value alone)."] and html.escape(paired) in page[0], (md, page)
    assert notes([_run("a", 116.2, "mfcc@v1", "ref1"), _run("b", 82.9, "mfcc@v1", "ref2")]) == ([], [])


def test_a_paired_clap_difference_over_few_prompts_takes_students_t():
    """The paired rule took 1.96 sd / sqrt(n) whatever n: three prompts each 0.01, 0.03 and 0.05 higher (mean
    0.03, 1.96 se 0.023) separated the runs, though with 2 degrees of freedom the 95% quantile is 4.30 (0.050):
    both are marked now. Ten prompts of the same spread do separate them (t 2.26)."""
    from eval.report import render_markdown

    def row(base, diffs):
        runs = [_clap_run("a", base), _clap_run("b", [v + d for v, d in zip(base, diffs)])]
        return next(line for line in render_markdown(runs).splitlines() if line.startswith("| CLAP score"))

    assert row([0.1, 0.3, 0.5], [0.01, 0.03, 0.05]).count("**") == 4
    many = row([0.1 * i for i in range(10)], [0.01, 0.03, 0.05] * 3 + [0.03])
    assert many.count("**") == 2 and "| **0.48** (" in many, many


def _takes_run(label, prompts):
    """A --takes run whose prompt i holds the takes scored `prompts[i]` (items.csv rows with take and row); its
    CLAP score is the mean over its files."""
    items = [{"name": f"p{row}_{t}", "prompt": f"prompt {row}", "clap_score": repr(v),
              "file": f"/nowhere/p{row}_{t}.wav", "take": str(t), "row": str(row)}
             for row, takes in enumerate(prompts) for t, v in enumerate(takes, 1)]
    run = _run(label, 1.0 + len(label), "mfcc@v1", "ref1", clap=float(np.mean([v for t in prompts for v in t])),
               prompts="same", items=items)
    run.body["protocol"]["clap"]["prompt_set_sha256"] = "set"
    return run


def test_a_paired_clap_difference_of_runs_of_unequal_takes_is_about_their_scores():
    """The row ranks the scores, each the mean over its run's files, which weighs a prompt by its takes; the
    paired rule took the mean of the prompts' unweighted differences. Here a's prompts each score 0.02 over b's,
    but a holds four takes of its weakest: b's score is the higher, and a was marked as separable from b, below
    it, by a difference of +0.021 the other way. The paired difference is the scores' now (-0.063, the prompts
    as clusters, as the interval's): not separable, both marked. And where a's extra takes are of prompts it
    scores higher, its score's lead (+0.037) was not separated by the unweighted differences (+0.01 ± 0.046)
    and is now. With equal takes the rule is the paired t test's, as before."""
    from eval.report import render_markdown
    from tta.clap.interval import paired_clap_difference

    def row(a, b):
        runs = [_takes_run("a", a), _takes_run("b", b)]
        return next(line for line in render_markdown(runs).splitlines() if line.startswith("| CLAP score"))

    base = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    a = [[v + 0.02 + 0.002 * (i % 2)] for i, v in enumerate(base)]
    a[0] = [base[0] + 0.02] * 4
    marked = row(a, [[v] for v in base])
    assert marked.count("**") == 4 and "| **0.2873** (" in marked and "| **0.35** (" in marked, marked
    a = [[0.35] * 5] * 3 + [[0.27 + d] for d in (0.0, 0.01, -0.01)]
    apart = row(a, [[0.3 + d] for d in (0.0, 0.005, -0.005, 0.0, 0.005, -0.005)])
    assert apart.count("**") == 2 and "| **0.3367** (" in apart, apart
    d = [0.03, 0.01, 0.02, 0.05]
    assert np.allclose(paired_clap_difference([([v + x] * 2, [v]) for v, x in zip(base, d)]),
                       (np.mean(d), np.std(d, ddof=1) / np.sqrt(4)))


def test_a_paired_clap_difference_of_fewer_than_two_draws_is_none_as_the_interval_is():
    """paired_clap_difference divided by k - 1: one draw raised ZeroDivisionError (no draws, a ValueError),
    while clap_half_width gives no interval below 2 draws. It gives None likewise, and a report of runs
    scoring one file each ranks their CLAP scores without a paired test."""
    from eval.report import _paired_difference, render_markdown
    from tta.clap.interval import clap_half_width, paired_clap_difference

    assert paired_clap_difference([([0.3, 0.32], [0.2])]) is None and paired_clap_difference([]) is None
    assert clap_half_width([{"name": "a", "prompt": "x", "clap_score": "0.3"}]) is None
    assert paired_clap_difference([([0.3], [0.2]), ([0.5], [0.3])]) == pytest.approx((0.15, 0.05))
    runs = [_takes_run("a", [[0.3, 0.32]]), _takes_run("b", [[0.2, 0.22]])]
    assert _paired_difference(*runs) is None
    row = next(line for line in render_markdown(runs).splitlines() if line.startswith("| CLAP score"))
    assert row.count("**") == 2 and "| **0.31** (" in row, row


def test_a_fad_inf_interval_of_a_hundred_or_more_is_written_as_the_value_is():
    """The half-width was formatted .2g: ±120 printed as ±1.2e+02 beside a FAD∞ of 1500."""
    from eval.report import render_markdown

    a = _with_fad_inf(_run("a", 1519.0, "mfcc@v1", "ref1"), 1500.0, (1380.0, 1620.0), frames=5000)
    row = next(line for line in render_markdown([a]).splitlines() if line.startswith("| FAD∞"))
    assert "| 1500 (95% CI ±120) |" in row, row


def test_a_fad_inf_interval_recorded_by_tta_eval_is_the_one_shown(report, tmp_path, monkeypatch):
    """End to end: tta eval --fad-inf (its subset floor lowered so that six short files fit) writes the interval,
    tta report shows its half-width beside FAD∞."""
    import json

    from eval import fad as fad_module

    monkeypatch.setattr(fad_module, "fad_inf_smallest_subset", lambda dim: 4)
    out = tmp_path / "inf"
    assert main(["-q", "eval", "--generated", str(report / "gen"), "--reference", str(report / "ref"), "--out",
                 str(out), "--cache-dir", str(report / "cache"), "--fad-inf"]) == 0
    low, high = json.loads((out / "eval.json").read_text())["protocol"]["fad"]["fad_inf"]["fad_inf_ci95"]
    assert main(["-q", "report", str(out), "--out", str(tmp_path / "r.md")]) == 0
    row = next(line for line in (tmp_path / "r.md").read_text().splitlines() if line.startswith("| FAD∞"))
    assert f", 95% CI ±{(high - low) / 2:.4g})" in row, row


def test_tta_eval_prints_the_intervals_as_the_report_writes_them(report, tmp_path, monkeypatch, capsys):
    """tta eval printed FAD∞'s and the CLAP score's intervals with a formatter of its own, a copy of the
    report's that could drift from it: both print with eval.report's (fad_inf_words, clap_words), so the third
    field of each line is what the report writes beside the value, from items.csv or, where it is gone, from
    eval.json."""
    from eval import embedders
    from eval import fad as fad_module

    monkeypatch.setattr(fad_module, "fad_inf_smallest_subset", lambda dim: 4)
    monkeypatch.setitem(embedders.CLAP_LOADERS, "tta", lambda path: ToyClap())
    out = tmp_path / "e"
    capsys.readouterr()
    assert main(["-q", "eval", "--generated", str(report / "gen"), "--reference", str(report / "ref"), "--out",
                 str(out), "--cache-dir", str(report / "cache"), "--fad-inf", "--metrics", "fad,clap",
                 "--prompts", str(report / "prompts.csv"), "--clap", str(report / "toy")]) == 0
    printed = dict(line.split("\t", 1) for line in capsys.readouterr().out.splitlines() if "\t" in line)
    words = {m: printed[m].split("\t")[1] for m in ("fad_inf", "clap_score")}
    assert words["fad_inf"].startswith("95% CI ±") and words["clap_score"].startswith("95% CI ±"), printed

    def rows():
        assert main(["-q", "report", str(out), "--out", str(tmp_path / "r.md")]) == 0
        lines = (tmp_path / "r.md").read_text().splitlines()
        return {m: next(line for line in lines if line.startswith(f"| {label}"))
                for m, label in (("fad_inf", "FAD∞"), ("clap_score", "CLAP score"))}

    for m, row in rows().items():
        assert f", {words[m]})" in row, (m, row)
    (out / "items.csv").unlink()
    assert f", {words['clap_score']})" in rows()["clap_score"]
    # an interval that is not finite (a hand-edited eval.json: Python's json reads Infinity) was none to tta
    # eval's copy and "95% CI ±inf" to the report's
    from eval.report import fad_inf_words, render_markdown

    odd = _with_fad_inf(_run("a", 1519.0, "mfcc@v1", "ref1"), 1500.0, (1480.0, float("inf")), frames=5000)
    assert fad_inf_words(odd.body) is None
    row = next(line for line in render_markdown([odd]).splitlines() if line.startswith("| FAD∞"))
    assert "95% CI" not in row, row


def test_the_clap_score_interval_of_a_takes_run_is_over_its_prompts():
    """items.csv is one row per file: a --takes 2 run's 3 prompts gave 'n 6' and an interval as if its 6 files
    were 6 independent draws. It counts the 3 prompts as the draws now (no take: one file per prompt, as before)."""
    from eval.report import render_markdown, sample_note

    scores = {"a": (0.1, 0.3), "b": (0.4, 0.4), "c": (0.5, 0.7)}

    def items(takes):
        return [{"name": f"{p}_{t}", "prompt": p, "clap_score": str(v), "file": f"/nowhere/{p}_{t}.wav",
                 "take": str(t) if takes else ""} for p, vs in scores.items() for t, v in enumerate(vs, 1)]

    run = _run("a", 1.0, "mfcc@v1", "ref1", clap=0.4, items=items(True))
    half = student_t.ppf(0.975, 2) * np.std([0.2, 0.4, 0.6], ddof=1) / np.sqrt(3)
    note = sample_note(run, "clap_score")
    assert note == f"n 3 prompts, 6 takes, 95% CI ±{half:.2g} with the prompts as the draws", note
    assert "n 3 prompts, 6 takes" in render_markdown([run])
    files = student_t.ppf(0.975, 5) * np.std([v for vs in scores.values() for v in vs], ddof=1) / np.sqrt(6)
    assert sample_note(_run("a", 1.0, "mfcc@v1", "ref1", clap=0.4, items=items(False)), "clap_score") == \
        f"n 6, 95% CI ±{files:.2g}"
    one = [i for i in items(True) if i["prompt"] == "a"]
    assert sample_note(_run("a", 1.0, "mfcc@v1", "ref1", clap=0.2, items=one), "clap_score") == \
        "n 1 prompts, 2 takes"


def test_markdown_cells_escape_bars_and_html():
    from eval.report import render_markdown

    items = [{"name": "x|y", "prompt": "a | b <b>x</b>", "clap_score": "0.4", "file": "/nowhere/x.wav"}]
    md = render_markdown([_run("x|y", 1.0, "mfcc@v1", "ref1", clap=0.4, items=items),
                          _run("z", 2.0, "mfcc@v1", "ref1")])
    header = next(line for line in md.splitlines() if line.startswith("| metric"))
    assert header == "| metric | x\\|y | z |"
    assert "<b>" not in md and "a \\| b &lt;b&gt;x&lt;/b&gt;" in md


def test_report_marks_best_only_between_comparable_runs():
    from eval.report import render_html, render_markdown

    def fad_row(page):
        return re.search(r'<tr><td class="name">FAD ↓.*?</tr>', page).group(0)

    same = [_run("a", 116.2, "mfcc@v1", "ref1", clap=0.2), _run("b", 82.9, "mfcc@v1", "ref1", clap=0.3)]
    row = fad_row(render_html(same))
    assert '<td class="best">82.9' in row and "mfcc@v1" in row and "not comparable" not in row
    md = render_markdown(same)
    assert "| FAD ↓ `mfcc@v1` | 116.2 | **82.9** |" in md and "| CLAP score ↑ `clap@tta-clap:0123` | 0.2 | **0.3** |" in md

    # the audit's case: mfcc and aisfx FADs in one row; each cell names its embedder, nothing is "best"
    mixed = [_run("a", 116.2, "mfcc@v1", "ref1"), _run("b", 82.89, "aisfx@sha256:1a2b", "ref1")]
    row = fad_row(render_html(mixed))
    assert 'class="best"' not in row and "not comparable: different embedder" in row
    assert "mfcc@v1" in row and "aisfx@sha256:1a2b" in row
    md = render_markdown(mixed)
    assert ("| FAD ↓ (not comparable: different embedder) | 116.2 `mfcc@v1` | 82.89 `aisfx@sha256:1a2b` |"
            in md)

    # same embedder, other reference statistics: not comparable either
    other_ref = [_run("a", 116.2, "mfcc@v1", "ref1"), _run("b", 82.9, "mfcc@v1", "ref2")]
    assert 'class="best"' not in fad_row(render_html(other_ref))
    assert "not comparable: different reference" in render_markdown(other_ref)


def test_an_items_csv_that_is_not_the_results_own_is_refused(report, tmp_path, capsys):
    """A cut-short items.csv (or one written by a later run stopped before its eval.json) was reported as if
    it were the result's: 1.5 item rows of 6, exit 0."""
    run = tmp_path / "run_a"
    shutil.copytree(report / "run_a", run)
    (run / "items.csv").write_bytes((run / "items.csv").read_bytes()[:200])
    code = main(["report", str(run), "--out", str(tmp_path / "r.html")])
    err = capsys.readouterr().err
    assert code == 1 and "items.csv: not the items.csv written with" in err and not (tmp_path / "r.html").exists()


def test_a_run_that_left_unreadable_files_out_is_warned_and_not_ranked(report, tmp_path, capsys):
    """A run whose FAD scored half its files (the rest unreadable) got the best mark with no warning."""
    import json

    from eval.report import render_markdown

    src = tmp_path / "gen"
    shutil.copytree(report / "gen", src)
    (src / "s5.wav").write_bytes(b"RIFF\0\0")   # cut short
    from tests.test_eval_cli import ToyClap  # noqa: F401 (the fixture's embedder is not needed: FAD only)

    assert main(["-q", "eval", "--generated", str(src), "--reference", str(report / "ref"), "--out",
                 str(tmp_path / "lossy"), "--cache-dir", str(report / "cache")]) == 0
    proto = json.loads((tmp_path / "lossy" / "eval.json").read_text())["protocol"]["fad"]["generated"]
    assert proto["files_skipped"] == 1 and "1 of 6 files" in proto["warning"] and "s5.wav" in proto["warning"]
    from eval.report import load_runs

    md = render_markdown(load_runs([report / "run_a", tmp_path / "lossy"]))
    fad_line = next(line for line in md.splitlines() if line.startswith("| FAD"))
    assert "not ranked: lossy left files out" in fad_line and "**" not in fad_line, fad_line
    assert "⚠" in md


def test_report_refuses_a_result_twice_another_version_and_a_damaged_body(report, tmp_path, capsys):
    import json

    def refused(*results):
        code = main(["-q", "report", *map(str, results), "--out", str(tmp_path / "r.html"), "--markdown",
                     str(tmp_path / "r.md")])
        err = capsys.readouterr().err
        assert code == 1 and len(err.strip().splitlines()) == 1 and not list(tmp_path.glob("r.*")), err
        return err

    assert "the same result as" in refused(report / "run_a", report / "run_a" / "eval.json")
    shutil.copytree(report / "run_a", tmp_path / "copy")
    assert "the same result as" in refused(report / "run_a", tmp_path / "copy")

    def edited(name, change):
        folder = tmp_path / name
        shutil.copytree(report / "run_a", folder)
        body = json.loads((folder / "eval.json").read_text())
        change(body)
        (folder / "eval.json").write_text(json.dumps(body))
        return folder

    assert "format version 2; this tta reads version 1" in refused(
        edited("v2", lambda b: b.update(format_version=2)))
    assert "metrics.fad is {'value': 3.0}, not a number" in refused(
        edited("nested", lambda b: b["metrics"].update(fad={"value": 3.0})))
    assert "breakdown.categories.beep must be an object with a 'files' count" in refused(
        edited("nofiles", lambda b: b["breakdown"]["categories"]["beep"].pop("files")))
    assert "'protocol' must be an object" in refused(edited("noproto", lambda b: b.update(protocol=None)))


@pytest.mark.parametrize("change, message", [
    (lambda b: b["protocol"]["fad"].update(embedder="mfcc"), "protocol.fad.embedder is 'mfcc', not an object"),
    (lambda b: b["protocol"].update(common=[]), "protocol.common is [], not an object"),
    (lambda b: b["protocol"]["clap"].update(model=3), "protocol.clap.model is 3, not an object"),
    (lambda b: b["protocol"]["fad"]["embedder"].update(identity=5),
     "protocol.fad.embedder.identity is 5, not a string"),
    (lambda b: b["breakdown"]["head"].pop("categories"), "breakdown.head.categories is None, not a list of"),
    (lambda b: b["breakdown"]["categories"]["beep"].update(warning=3),
     "breakdown.categories.beep.warning is 3, not a string"),
    (lambda b: b["breakdown"]["categories"]["beep"].update(fad="x"),
     "breakdown.categories.beep.fad is 'x', not a number"),
    (lambda b: b.update(items_csv=3), "items_csv is 3, not a string"),
    (lambda b: b["protocol"]["fad"].update(fad_inf={"fad_inf": 1.0, "fad_inf_ci95": [0.5, "x"]}),
     "protocol.fad.fad_inf.fad_inf_ci95 is [0.5, 'x'], not [low, high] (two numbers)"),
    (lambda b: b["protocol"]["clap"].update(clap_score_ci95=0.02),
     "protocol.clap.clap_score_ci95 is 0.02, not [low, high] (two numbers)"),
    (lambda b: b["protocol"]["clap"].update(clap_score_ci95_draws="8"),
     "protocol.clap.clap_score_ci95_draws is '8', not a count"),
    (lambda b: b["protocol"]["clap"].update(clap_score_ci95_unit=["files"]),
     "protocol.clap.clap_score_ci95_unit is ['files'], not a string"),
    (lambda b: b["protocol"]["clap"].update(clap_score_ci95_distribution="normal"),
     "protocol.clap.clap_score_ci95_distribution is 'normal', not 't'"),
    (lambda b: b["protocol"]["clap"].update(clap_score_ci95_df="5"),
     "protocol.clap.clap_score_ci95_df is '5', not the interval's degrees of freedom (a count, 1 or more)"),
    (lambda b: b["protocol"]["clap"].pop("clap_score_ci95_df"),
     "protocol.clap.clap_score_ci95_df is None, not the interval's degrees of freedom (a count, 1 or more)"),
    (lambda b: b["protocol"]["clap"].update(clap_score_ci95_df=1000),   # 6 draws
     "protocol.clap.clap_score_ci95_df is 1000, not clap_score_ci95_draws - 1 (5)"),
    (lambda b: b["protocol"]["clap"].update(clap_score_ci95_draws=1000),
     "protocol.clap.clap_score_ci95_df is 5, not clap_score_ci95_draws - 1 (999)"),
    (lambda b: b["protocol"]["clap"].pop("clap_score_ci95_draws"),   # no tta wrote an interval without them
     "protocol.clap.clap_score_ci95_draws is None, not the interval's draws (a count, 2 or more)"),
    (lambda b: [b["protocol"]["clap"].pop(k) for k in ("clap_score_ci95_draws", "clap_score_ci95_distribution",
                                                       "clap_score_ci95_df")],   # nor one from before t
     "protocol.clap.clap_score_ci95_draws is None, not the interval's draws (a count, 2 or more)"),
    (lambda b: b["protocol"]["clap"].update(clap_score_ci95_draws=1, clap_score_ci95_df=None),
     "protocol.clap.clap_score_ci95_draws is 1, not the interval's draws (a count, 2 or more)"),
])
def test_a_damaged_part_of_an_eval_json_is_named(report, tmp_path, capsys, change, message):
    """These failed on Python's own words ("'str' object has no attribute 'get'", "'categories'") or, for the
    Markdown page, were written as if whole."""
    import json

    folder = tmp_path / "damaged"
    shutil.copytree(report / "run_a", folder)
    body = json.loads((folder / "eval.json").read_text())
    change(body)
    (folder / "eval.json").write_text(json.dumps(body))
    for out in ("r.html", "r.md"):
        code = main(["-q", "report", str(report / "run_b"), str(folder), "--out", str(tmp_path / out)])
        err = capsys.readouterr().err
        assert code == 1 and err.startswith(f"tta: error: {folder / 'eval.json'}: {message}"), err
        assert len(err.splitlines()) == 1 and not (tmp_path / out).exists()



@pytest.mark.parametrize("flag", [False, True])
def test_an_eval_json_of_the_first_versions_with_fad_inf_as_a_flag_is_read(report, tmp_path, flag):
    """tta's first versions recorded protocol.fad.fad_inf as the --fad-inf flag (a bool), not FAD-inf's record;
    the shape check refused such a result ("protocol.fad.fad_inf is False, not an object")."""
    import json

    folder = tmp_path / "first"
    shutil.copytree(report / "run_a", folder)
    body = json.loads((folder / "eval.json").read_text())
    body["protocol"]["fad"]["fad_inf"] = flag
    (folder / "eval.json").write_text(json.dumps(body))
    for out in ("r.html", "r.md"):
        assert main(["-q", "report", str(report / "run_b"), str(folder), "--out", str(tmp_path / out)]) == 0
    assert "| FAD" in (tmp_path / "r.md").read_text()

def test_a_missing_items_csv_is_warned_about_and_said_in_the_report(report, tmp_path, caplog):
    """The report dropped its per-item sections without a word (and called the run one "with no CLAP score")."""
    folder = tmp_path / "no_items"
    shutil.copytree(report / "run_a", folder)
    (folder / "items.csv").unlink()
    with caplog.at_level("WARNING", logger="eval.outputs"):
        code = main(["-q", "report", str(report / "run_b"), str(folder), "--out", str(tmp_path / "r.html"),
                     "--markdown", str(tmp_path / "r.md")])
    assert code == 0
    assert f"{folder / 'items.csv'}: not found" in caplog.text and "no per-item sections" in caplog.text
    note = f"no per-item sections: {folder / 'items.csv'} (the result's items.csv) was not found"
    md, page = (tmp_path / "r.md").read_text(), (tmp_path / "r.html").read_text()
    assert note in md and "no_items: items examples" not in md and "no CLAP score" not in md.split("no_items")[-1]
    assert html.escape(note) in page and page.count("<audio") >= 1   # the other run keeps its items
    # the CLAP score's interval is the one eval.json records (it showed "n 6" alone, the interval computed from
    # items.csv only)
    with open(report / "run_a" / "items.csv", newline="") as f:
        scores = [float(r["clap_score"]) for r in csv.DictReader(f)]
    half = student_t.ppf(0.975, 5) * np.std(scores, ddof=1) / np.sqrt(len(scores))   # Student's t, 5 df
    clap = next(line for line in md.splitlines() if line.startswith("| CLAP score"))
    assert f"(n 6, 95% CI ±{half:.2g})" in clap, clap


def test_a_result_without_its_items_csv_ranks_and_shows_its_clap_score_by_the_recorded_interval():
    """Without items.csv a CLAP score had no interval: shown as "n 6" and ranked as a bare value (the better one
    marked alone however much the intervals overlapped). eval.json's protocol.clap.clap_score_ci95 gives it."""
    from eval.report import render_markdown, sample_note

    def run(label, score, half, unit="files", draws=6):
        r = _run(label, 1.0, "mfcc@v1", "ref1", clap=score)
        r.body["protocol"]["clap"].update(num_items=6, clap_score_ci95=[score - half, score + half],
                                          clap_score_ci95_draws=draws, clap_score_ci95_unit=unit)
        r.items_missing = r.folder / "items.csv"
        return r

    assert sample_note(run("a", 0.4, 0.05), "clap_score") == "n 6, 95% CI ±0.05"
    assert sample_note(run("a", 0.4, 0.05, "prompts", 3), "clap_score") == \
        "n 3 prompts, 6 takes, 95% CI ±0.05 with the prompts as the draws"
    old = run("a", 0.4, 0.05)
    for key in ("clap_score_ci95", "clap_score_ci95_draws", "clap_score_ci95_unit"):   # from before it was recorded
        del old.body["protocol"]["clap"][key]
    assert sample_note(old, "clap_score") == "n 6"
    for half, marked in ((0.1, "| **0.4** (n 6, 95% CI ±0.1) | **0.45** (n 6, 95% CI ±0.1) |"),
                         (0.01, "| 0.4 (n 6, 95% CI ±0.01) | **0.45** (n 6, 95% CI ±0.01) |")):
        md = render_markdown([run("a", 0.4, half), run("b", 0.45, half)])
        row = next(line for line in md.splitlines() if line.startswith("| CLAP score"))
        assert row.endswith(marked), row


def test_a_recorded_clap_interval_is_read_by_the_rule_it_was_made_by():
    """eval.json's CLAP interval is Student's t's now (protocol.clap.clap_score_ci95_distribution "t", with its
    degrees of freedom); one from before names no distribution and took 1.96 standard errors whatever the
    draws. Without items.csv the report ranks by the standard errors the recorded intervals give: an old
    record's half-width / 1.96 (here 0.4 and 0.45, each ± 0.05 over 3 files: within Welch's test's 2.78
    standard errors of the difference, both marked), a t record's / 4.30 (3 draws), so the same half-widths
    of t intervals are narrower standard errors, and the runs separate. Each shows its interval as recorded."""
    from eval.report import render_markdown, sample_note

    def run(label, score, new):
        r = _run(label, 1.0, "mfcc@v1", "ref1", clap=score)
        r.body["protocol"]["clap"].update(num_items=3, clap_score_ci95=[score - 0.05, score + 0.05],
                                          clap_score_ci95_draws=3, clap_score_ci95_unit="files",
                                          **({"clap_score_ci95_distribution": "t", "clap_score_ci95_df": 2}
                                             if new else {}))
        r.items_missing = r.folder / "items.csv"
        return r

    for new, marked in ((False, "| **0.4** (n 3, 95% CI ±0.05) | **0.45** (n 3, 95% CI ±0.05) |"),
                        (True, "| 0.4 (n 3, 95% CI ±0.05) | **0.45** (n 3, 95% CI ±0.05) |")):
        assert sample_note(run("a", 0.4, new), "clap_score") == "n 3, 95% CI ±0.05"
        md = render_markdown([run("a", 0.4, new), run("b", 0.45, new)])
        row = next(line for line in md.splitlines() if line.startswith("| CLAP score"))
        assert row.endswith(marked), (new, row)


def _recorded_clap_run(label, score, half, draws=3, t=True):
    """A run without its items.csv whose eval.json records a CLAP interval over `draws` files: score ± half,
    Student's t with draws - 1 degrees of freedom, or a record from before t (not `t`: no distribution or df,
    1.96 standard errors); no other metric, so that the note under the table is the CLAP score's alone."""
    r = _run(label, 1.0, "mfcc@v1", "ref1", clap=score)
    del r.body["metrics"]["fad"]
    r.body["protocol"]["clap"].update(num_items=draws, clap_score_ci95=[score - half, score + half],
                                      clap_score_ci95_draws=draws, clap_score_ci95_unit="files",
                                      **({"clap_score_ci95_distribution": "t", "clap_score_ci95_df": draws - 1}
                                         if t else {}))
    r.items_missing = r.folder / "items.csv"
    return r


def _clap_row_and_note(runs) -> tuple[str, str]:
    from eval.report import render_markdown

    md = render_markdown(runs).splitlines()
    return (next(line for line in md if line.startswith("| CLAP score")),
            next(line for line in md if line.startswith("**Bold**")))


def test_unpaired_clap_scores_of_t_intervals_are_compared_by_welchs_test():
    """Unpaired CLAP scores (no items.csv, or items that do not pair) were told apart beyond 1.96 standard
    errors of the difference whatever their draws: 0.40 and 0.44 over 3 files each, each ± 0.05 (t, 2 degrees
    of freedom: se 0.0116), are 0.04 apart, over 1.96 x 0.0164 = 0.032, and 0.44 was marked alone; Welch's
    test (Welch-Satterthwaite: 4 degrees of freedom) takes 2.78 x 0.0164 = 0.046: both are marked, and the
    note says by Welch's test. The same standard errors over many draws (df 1000: ±0.023) are separable.
    Items that do not pair (a prompt text twice, other file names) take it too, with draws - 1 each."""
    from scipy.stats import t as student_t

    row, note = _clap_row_and_note([_recorded_clap_run("a", 0.40, 0.05), _recorded_clap_run("b", 0.44, 0.05)])
    assert row.endswith("| **0.4** (n 3, 95% CI ±0.05) | **0.44** (n 3, 95% CI ±0.05) |"), row
    assert note == ("**Bold**: best, or not separable from the best at 95% (CLAP score: Welch's t interval "
                    "of the difference holding 0)."), note

    half = 0.05 / student_t.ppf(0.975, 2) * student_t.ppf(0.975, 1000)   # the same standard error, df 1000
    row, note = _clap_row_and_note([_recorded_clap_run("a", 0.40, half, 1001),
                                    _recorded_clap_run("b", 0.44, half, 1001)])
    assert row.endswith("| 0.4 (n 1001, 95% CI ±0.023) | **0.44** (n 1001, 95% CI ±0.023) |"), row
    assert "Welch's t interval" in note, note

    twice = ["prompt 0", "prompt 0", "prompt 1"]   # no pairing: se 0.0289 each, 0.0408 of the difference
    a = _clap_run("a", [0.35, 0.40, 0.45], prompts=twice)
    b = _clap_run("b", [0.44, 0.49, 0.54], names=["g0", "g1", "g2"], prompts=twice)   # 0.09 > 1.96 x 0.0408
    row, note = _clap_row_and_note([a, b])
    assert row.count("**") == 4 and "Welch's t interval" in note, (row, note)


def test_a_clap_interval_from_before_t_is_compared_by_welchs_test_with_its_draws_less_one():
    """A record from before t (no clap_score_ci95_distribution) took 1.96 standard errors whatever the draws,
    but its standard error was over its draws as a newer one's is: its degrees of freedom are the draws - 1,
    and a pair with it takes Welch's test too (it took 1.96 standard errors of the difference). 0.40 ± 0.02
    as recorded then (se 0.0102) against 0.44 ± 0.05 of t (se 0.0116), 3 draws each: 0.04 apart, over 1.96 x
    0.0155 = 0.030 (0.44 was marked alone), within Welch's 2.79 x 0.0155 = 0.043: both marked. Two old
    records of 3 draws each ± 0.025 (se 0.0128), 0.04 apart: over 1.96 x 0.018 = 0.035, within 2.78 x 0.018 =
    0.050. The same old records over 1001 draws separate. The note names Welch's test alone."""
    welch = ("**Bold**: best, or not separable from the best at 95% (CLAP score: Welch's t interval of the "
             "difference holding 0).")
    row, note = _clap_row_and_note([_recorded_clap_run("a", 0.40, 0.02, t=False),
                                    _recorded_clap_run("b", 0.44, 0.05)])
    assert row.endswith("| **0.4** (n 3, 95% CI ±0.02) | **0.44** (n 3, 95% CI ±0.05) |"), row
    assert note == welch, note

    row, note = _clap_row_and_note([_recorded_clap_run("a", 0.40, 0.025, t=False),
                                    _recorded_clap_run("b", 0.44, 0.025, t=False)])
    assert row.endswith("| **0.4** (n 3, 95% CI ±0.025) | **0.44** (n 3, 95% CI ±0.025) |"), row
    assert note == welch, note

    row, note = _clap_row_and_note([_recorded_clap_run("a", 0.40, 0.025, 1001, t=False),
                                    _recorded_clap_run("b", 0.44, 0.025, 1001, t=False)])
    assert row.endswith("| 0.4 (n 1001, 95% CI ±0.025) | **0.44** (n 1001, 95% CI ±0.025) |"), row
    assert note == welch, note

    row, note = _clap_row_and_note([_recorded_clap_run("a", 0.40, 0.02, t=False),
                                    _recorded_clap_run("b", 0.44, 0.05), _recorded_clap_run("c", 0.34, 0.05)])
    assert row.endswith("| **0.4** (n 3, 95% CI ±0.02) | **0.44** (n 3, 95% CI ±0.05) | 0.34 (n 3, 95% CI "
                        "±0.05) |"), row
    assert note == welch, note


def test_upper_case_md_writes_markdown_labels_stay_unique_and_changed_audio_is_not_played(report, tmp_path):
    from eval.report import load_runs

    assert main(["-q", "report", str(report / "run_a"), "--out", str(tmp_path / "UP.MD")]) == 0
    assert (tmp_path / "UP.MD").read_text().startswith("# ")
    assert [r.label for r in load_runs([report / "run_a", report / "run_b"], ["A", "A"])] == ["A", "A (2)"]
    import json

    shutil.copytree(report / "run_b", tmp_path / "run_c")   # a third result (a different FAD)
    body = json.loads((tmp_path / "run_c" / "eval.json").read_text())
    body["metrics"]["fad"] += 1
    (tmp_path / "run_c" / "eval.json").write_text(json.dumps(body))
    runs = load_runs([report / "run_a", report / "run_b", tmp_path / "run_c"], ["A", "A", "A (2)"])
    assert len({r.label for r in runs}) == 3   # "A", "A (3)", "A (2)": two "A (2)" columns before
    # audio written over since the eval is not played under the old scores
    gen = tmp_path / "gen"
    shutil.copytree(report / "gen", gen)
    run = tmp_path / "run_d"
    assert main(["-q", "eval", "--generated", str(gen), "--reference", str(report / "ref"), "--out", str(run),
                 "--cache-dir", str(report / "cache")]) == 0
    save_audio(gen / "s0.wav", noise(1.0, seed=9), 16_000)
    assert main(["-q", "report", str(run), "--out", str(tmp_path / "d.html")]) == 0
    page = (tmp_path / "d.html").read_text()
    assert "s0.wav has changed since the eval" in page


def test_runs_on_one_reference_with_two_embedders_differ_by_embedder_only():
    """The reference's statistics depend on the embedder, so the same reference folder read as 'different
    embedder and reference'."""
    from eval.report import render_markdown

    a, b = _run("a", 1.0, "mfcc@v1", "stats-mfcc"), _run("b", 2.0, "aisfx@x", "stats-aisfx")
    for run in (a, b):
        run.body["protocol"]["fad"]["reference"] = {"folder": "/data/ref", "content_sha256": "0123"}
    md = render_markdown([a, b])
    assert "not comparable: different embedder)" in md, md
    b.body["protocol"]["fad"]["reference"]["content_sha256"] = "4567"
    assert "not comparable: different embedder and reference)" in render_markdown([a, b])


def test_a_clap_score_that_left_files_out_is_not_ranked():
    """The CLAP row kept its best mark when a run's CLAP score left files out (its protocol has no FAD section)."""
    from eval.report import render_markdown

    a = _run("a", 1.0, "mfcc@v1", "ref1", clap=0.3, prompts="p")
    b = _run("b", 2.0, "mfcc@v1", "ref1", clap=0.4, prompts="p")
    b.body["protocol"]["clap"]["skipped"] = [{"file": "x.wav", "reason": "shorter than one analysis window"}]
    line = next(x for x in render_markdown([a, b]).splitlines() if x.startswith("| CLAP"))
    assert "not ranked: b left files out" in line and "**" not in line, line


def test_a_result_whose_prompt_holds_a_crlf_stays_readable(tmp_path, capsys):
    """items.csv's hash was checked against its \\r\\n-normalised bytes: a prompt with a \\r\\n of its own made
    `tta report` refuse the result `tta eval` had just written, with no way out."""
    import json

    gen = tmp_path / "gen"
    for i in range(3):
        save_audio(gen / f"c{i}.wav", tone(300 + 100 * i, 1.0), 16_000)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"file": f"c{i}.wav", "prompt": "two\r\nlines"}) + "\n"
                                              for i in range(3)))
    assert main(["-q", "eval", "--generated", str(gen), "--reference", str(gen), "--out", str(tmp_path / "e"),
                 "--prompts", str(tmp_path / "p.jsonl"), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert main(["-q", "report", str(tmp_path / "e"), "--out", str(tmp_path / "r.md")]) == 0, capsys.readouterr().err


def test_a_run_with_silent_generated_files_is_warned_and_not_ranked():
    """A run whose generated folder held silent files (or a stopped run's) got the best mark and no warning sign."""
    from eval.report import render_markdown

    a, b = _run("a", 1.0, "mfcc@v1", "ref1"), _run("b", 2.0, "mfcc@v1", "ref1")
    a.body["protocol"]["generated_silent"] = {"files": ["q.wav"], "warning": "1 of 10 files are silent"}
    line = next(x for x in render_markdown([a, b]).splitlines() if x.startswith("| FAD"))
    assert "not ranked: a" in line and "**" not in line and "⚠" in line, line


def test_categories_in_a_given_order_lead_the_charts_and_tables():
    """`tta experiment retrieval`'s report listed its buckets by file count ("mid, head"): its categories are the
    long-tail buckets, listed head, mid, tail in the charts, the HTML table and the Markdown."""
    from eval.report import category_names, render_html, render_markdown

    def cell(files):
        return {"files": files, "fad": 1.0, "fad_frames": 100, "clap_score": 0.1, "kl_softmax": None}

    a, b = _run("a", 1.0, "mfcc@v1", "ref1"), _run("b", 2.0, "mfcc@v1", "ref1")
    a.body["breakdown"] = {"categories": {"mid": cell(6), "head": cell(2)}}   # by file count, as eval writes
    b.body["breakdown"] = {"categories": {"mid": cell(4), "other": cell(3), "tail": cell(2), "head": cell(1)}}
    order = ("head", "mid", "tail")
    assert category_names([a, b]) == ["mid", "head", "other", "tail"]   # without an order: as the results list them
    assert category_names([a, b], order) == ["head", "mid", "tail", "other"]
    page = render_html([a, b], category_order=order)
    rows = re.findall(r'<td class="name">(\w)</td><td class="name">(\w+)</td>', page)
    assert rows == [("a", "head"), ("a", "mid"), ("b", "head"), ("b", "mid"), ("b", "tail"), ("b", "other")], rows
    md = render_markdown([a, b], category_order=order)
    assert re.findall(r"^\| (\w+) \| \d+ \|", md, re.M) == ["head", "mid", "head", "mid", "tail", "other"]


def test_a_category_too_small_for_a_fad_is_marked_and_said_why():
    """A category of one clip (one frame per clip, as mfcc embeds) has no FAD: the table showed "–" with only the
    few-frames warning on its frame count, which speaks of a FAD biased upward. The cell is marked and a note
    says why; a category whose FAD was not measured (no frame count) is not."""
    from eval.report import NO_FAD_NOTE, render_html, render_markdown

    a = _run("a", 1.0, "mfcc@v1", "ref1")
    a.body["breakdown"] = {"categories": {
        "dog": {"files": 3, "fad": 2.0, "fad_frames": 3, "clap_score": 0.1, "kl_softmax": None},
        "cat": {"files": 1, "fad": None, "fad_frames": 1, "clap_score": 0.2, "kl_softmax": None}}}
    page = render_html([a])
    assert re.search(r'<td class="name">cat</td><td>1</td><td title="[^"]+">–†</td>', page)
    assert f'<p class="note">† {NO_FAD_NOTE}</p>' in page
    md = render_markdown([a])
    assert "| cat | 1 | –† | 1 |" in md and f"- † {NO_FAD_NOTE}" in md and "| dog | 3 | 2 | 3 |" in md
    del a.body["breakdown"]["categories"]["cat"]["fad_frames"]
    assert "†" not in render_html([a]) and "†" not in render_markdown([a])


def test_report_says_what_scale_the_clap_score_is_on(report):
    """eval.json records the CLAP score as a raw cosine (protocol.clap.scale); the report showed the number alone,
    and papers print it raw or x100."""
    md = (report / "report.md").read_text()
    page = (report / "report.html").read_text()
    assert md.count("raw cosine in [-1, 1]") == 1 and "not x100" in md
    assert "raw cosine in [-1, 1]" in page and "not x100" in page
    from eval.report import clap_scale_note

    assert clap_scale_note([_run("a", 1.0, "mfcc@v1", "ref1")]) is None   # no CLAP score, no note


def test_a_report_of_runs_without_a_numeric_fad_renders():
    """A FAD eval.json stores as null (NaN or inf) left no frame counts to compare: the frames check took max() of
    an empty set and the report stopped on Python's 'max() arg is an empty sequence'."""
    from eval.report import render_html, render_markdown

    runs = [_run("a", None, "mfcc@v1", "ref1"), _run("b", None, "mfcc@v1", "ref1")]
    line = next(x for x in render_markdown(runs).splitlines() if x.startswith("| FAD"))
    assert "**" not in line
    assert "FAD" in render_html(runs)


def test_the_takes_of_two_rows_of_one_prompt_text_are_two_prompts_in_the_interval():
    """The interval of a --takes run grouped the takes by prompt text: two rows of one caption (a prompts file
    that repeats it under two ids) were one prompt, averaged together. items.csv's row column keeps them apart."""
    from eval.report import sample_note

    rows = [("a dog barks", 0, (0.1, 0.3)), ("a dog barks", 1, (0.5, 0.7)), ("rain", 2, (0.4, 0.4))]
    items = [{"name": f"r{row}_{t}", "prompt": p, "clap_score": str(v), "file": f"/nowhere/r{row}_{t}.wav",
              "take": str(t), "row": str(row)} for p, row, vs in rows for t, v in enumerate(vs, 1)]
    half = student_t.ppf(0.975, 2) * np.std([0.2, 0.6, 0.4], ddof=1) / np.sqrt(3)
    note = sample_note(_run("a", 1.0, "mfcc@v1", "ref1", clap=0.4, items=items), "clap_score")
    assert note == f"n 3 prompts, 6 takes, 95% CI ±{half:.2g} with the prompts as the draws", note


def test_the_players_audio_is_on_the_nearest_16_bit_step(tmp_path):
    """The page's player WAV was written by libsndfile from float samples, which puts each on the 16-bit step
    below (half a step low on average): it holds the nearest step, as tta.audio.save_audio writes."""
    import base64
    import io

    import soundfile as sf

    from eval.report import PLAYER_SAMPLE_RATE, spectrogram_and_audio
    from tta.audio import load_audio, pcm_samples

    path = tmp_path / "float.wav"
    sf.write(path, noise(1.0, amplitude=0.05), PLAYER_SAMPLE_RATE, subtype="FLOAT")
    _, uri = spectrogram_and_audio(path)
    played, _ = sf.read(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])), dtype="int16")
    wav, _ = load_audio(path, sample_rate=PLAYER_SAMPLE_RATE)
    np.testing.assert_array_equal(played, pcm_samples(wav, 16))
