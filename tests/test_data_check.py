"""tta.data.check on a manifest holding every kind of bad row the issue lists."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from tests.signals import noise, tone
from tta.data.check import check_manifest, write_clean
from tta.data.manifest import ManifestRow, read_manifest, write_manifest

SR = 16_000


def _row(rid, path, seconds, sr=SR):
    return ManifestRow(id=rid, path=str(path), captions=(f"caption of {rid}",), seconds=seconds, sample_rate=sr)


def make_bad_manifest(folder):
    """A manifest with 4 good rows, one bad row per audio reason, and 3 bad lines. Returns (path, expected)."""
    a = folder / "audio"
    a.mkdir(parents=True)
    sf.write(a / "good.wav", tone(440, 0.5), SR)
    sf.write(a / "good6ch.wav", np.tile(noise(0.5)[:, None], (1, 6)), SR)
    sf.write(a / "good96k.flac", tone(440, 0.5, 96_000), 96_000, format="FLAC", subtype="PCM_24")
    sf.write(a / "good8k.wav", tone(440, 0.5, 8_000), 8_000, subtype="PCM_32")
    (a / "zero.wav").write_bytes(b"")
    (a / "text.wav").write_text("plain text pretending to be audio")
    sf.write(a / "trunc.wav", tone(440, 1.0), SR)
    (a / "trunc.wav").write_bytes((a / "trunc.wav").read_bytes()[:16_000])
    nan = tone(440, 0.5)
    nan[10] = np.nan
    sf.write(a / "nan.wav", nan, SR, subtype="FLOAT")
    sf.write(a / "nosamples.wav", np.zeros((0, 1), np.float32), SR)
    sf.write(a / "silent.wav", np.zeros(SR // 2, np.float32), SR)
    sf.write(a / "short.wav", tone(440, 0.05), SR)
    sf.write(a / "mismatch.wav", tone(440, 0.5), SR)
    rows = [_row("good", a / "good.wav", 0.5), _row("good6ch", a / "good6ch.wav", 0.5),
            _row("good96k", a / "good96k.flac", 0.5, 96_000), _row("good8k", a / "good8k.wav", 0.5, 8_000),
            _row("missing", a / "missing.wav", 1.0), _row("zero", a / "zero.wav", 1.0),
            _row("text", a / "text.wav", 1.0), _row("trunc", a / "trunc.wav", 1.0),
            _row("nan", a / "nan.wav", 0.5), _row("nosamples", a / "nosamples.wav", 0.0),
            _row("silent", a / "silent.wav", 0.5), _row("short", a / "short.wav", 0.05),
            _row("mismatch", a / "mismatch.wav", 3.0)]
    path = write_manifest(folder / "m.jsonl", rows)
    good_line = json.loads(path.read_text().splitlines()[0])
    with open(path, "a") as f:
        f.write('{"id": "broken", "path": \n')                                     # broken JSON
        f.write(json.dumps({**good_line, "id": "nocap", "captions": []}) + "\n")  # no caption
        f.write(json.dumps({**good_line, "captions": ["again"]}) + "\n")          # duplicate id "good"
    expected = {"missing": "missing", "zero": "empty", "nosamples": "empty", "text": "unreadable",
                "trunc": "unreadable", "nan": "non-finite", "silent": "silent", "short": "too-short",
                "mismatch": "mismatch"}
    return path, expected


def test_check_reports_each_bad_row_with_its_reason(tmp_path):
    path, expected = make_bad_manifest(tmp_path)
    report = check_manifest(path, min_seconds=0.1, silence_db=-60, progress=False)
    by_row = {p.where: p for p in report.problems if p.reason != "manifest"}
    assert {k: p.reason for k, p in by_row.items()} == expected
    assert "0 bytes" in by_row["zero"].detail and "0 samples" in by_row["nosamples"].detail
    assert "truncated" in by_row["trunc"].detail and "3.000 s" in by_row["mismatch"].detail
    assert all("\n" not in p.detail for p in report.problems)
    lines = [p for p in report.problems if p.reason == "manifest"]
    assert len(lines) == 3
    assert any("broken JSON" in p.detail for p in lines)
    assert any("captions" in p.detail for p in lines)
    assert any("duplicate id 'good'" in p.detail for p in lines)
    assert report.counts == {"manifest": 3, "missing": 1, "empty": 2, "unreadable": 2, "non-finite": 1,
                             "silent": 1, "too-short": 1, "mismatch": 1}
    assert sorted(r.id for r in report.good_rows) == ["good", "good6ch", "good8k", "good96k"]
    assert report.num_rows == 13 and report.num_bad == 12 and not report.ok


def test_thresholds_move_rows_between_good_and_bad(tmp_path):
    path, _ = make_bad_manifest(tmp_path)
    loose = check_manifest(path, min_seconds=0.0, silence_db=-400, progress=False)
    assert "too-short" not in loose.counts and "silent" in loose.counts  # digital silence stays silent
    strict = check_manifest(path, min_seconds=0.6, progress=False)
    assert strict.counts["too-short"] > loose.counts.get("too-short", 0)


def test_write_clean_keeps_good_rows_with_valid_paths(tmp_path):
    path, _ = make_bad_manifest(tmp_path)
    report = check_manifest(path, progress=False)
    out = write_clean(report, tmp_path / "elsewhere" / "clean.jsonl")
    again = check_manifest(out, progress=False)
    assert again.ok and again.num_rows == 4
    assert [r.id for r in read_manifest(out)] == [r.id for r in report.good_rows]


def test_write_clean_refuses_an_empty_manifest(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "x", "path": "gone.wav", "captions": ["c"],
                                                  "seconds": 1.0, "sample_rate": SR}) + "\n")
    report = check_manifest(tmp_path / "m.jsonl", progress=False)
    assert report.counts == {"missing": 1}
    with pytest.raises(ValueError, match="no good rows"):
        write_clean(report, tmp_path / "clean.jsonl")
    assert not (tmp_path / "clean.jsonl").exists()


def test_bad_lines_are_located_by_line_even_when_the_folder_name_holds_a_colon(tmp_path):
    import json

    from tta.data.check import check_manifest

    folder = tmp_path / "set: v2"
    folder.mkdir()
    rows = ['{"id": "a", "path": "a.wav", "captions": ["x"], "seconds": 1.0, "sample_rate": 16000}', "{broken",
            json.dumps({"id": "c", "path": "c.wav", "captions": [""], "seconds": 1.0, "sample_rate": 16000})]
    (folder / "m.jsonl").write_text("\n".join(rows) + "\n")
    report = check_manifest(folder / "m.jsonl", progress=False)
    where = sorted(p.where for p in report.problems if p.reason == "manifest")
    assert where == [f"{folder / 'm.jsonl'}:2", f"{folder / 'm.jsonl'}:3"]


def test_thresholds_given_as_strings_are_named_before_any_row_is_read(tmp_path):
    """check_manifest(m, min_seconds="0.1") failed on "'<' not supported" and silence_db="-60" on numpy's
    "ufunc 'less' did not contain a loop with signature matching types", at the first row. A bad one is named
    with what it takes, as one out of range is (silence_db="-60" was told "must be a number (not NaN)")."""
    manifest, _ = make_bad_manifest(tmp_path)
    for kwargs, match in (({"min_seconds": "0.1"}, r"^min_seconds='0.1': expected a finite number of seconds"),
                          ({"silence_db": "-60"}, r"^silence_db='-60': expected a level in dBFS <= 0 \(-inf: no "),
                          ({"seconds_tolerance": None}, r"^seconds_tolerance=None: expected a number of seconds"),
                          ({"seconds_tolerance": float("nan")}, r"^seconds_tolerance=nan: expected a number"),
                          ({"silence_db": True}, r"^silence_db=True: expected a level in dBFS <= 0")):
        with pytest.raises(ValueError, match=match):
            check_manifest(manifest, progress=False, **kwargs)
    a = check_manifest(manifest, min_seconds=np.float32(0.1), silence_db=np.int64(-60), progress=False)
    b = check_manifest(manifest, progress=False)
    assert a.problems == b.problems and a.good_rows == b.good_rows


def test_an_infinite_threshold_turns_its_check_off(tmp_path):
    """silence_db=-inf (no clip is silent) and seconds_tolerance=inf (a row's seconds is not compared) turned
    those checks off, until the thresholds were checked as finite numbers and refused them."""
    manifest, _ = make_bad_manifest(tmp_path)
    every = check_manifest(manifest, progress=False)
    assert {"silent", "mismatch"} <= {p.reason for p in every.problems}
    for kwargs, off in (({"silence_db": -np.inf}, "silent"), ({"seconds_tolerance": np.float64("inf")}, "mismatch")):
        report = check_manifest(manifest, progress=False, **kwargs)
        assert report.problems == [p for p in every.problems if p.reason != off], kwargs


def test_out_of_range_limits_are_refused_in_python_as_on_the_command_line(tmp_path):
    """The range checks lived in `tta data check` only: check_manifest(m, silence_db=6) called every clip silent,
    seconds_tolerance=-1 every row a mismatch, min_seconds=-1 went through. Refused before any row is read."""
    manifest, _ = make_bad_manifest(tmp_path)
    for kwargs, match in (({"min_seconds": -1.0}, r"min_seconds=-1.0: expected a finite number of seconds >= 0"),
                          ({"silence_db": 6}, r"silence_db=6: expected a level in dBFS <= 0"),
                          ({"seconds_tolerance": -0.5}, r"seconds_tolerance=-0.5: expected a number of seconds >= 0")):
        with pytest.raises(ValueError, match=match):
            check_manifest(manifest, progress=False, **kwargs)
    # the limits of the range are in it, and the command line names its options as it did
    check_manifest(manifest, min_seconds=0, silence_db=0, seconds_tolerance=0, progress=False)
    from tta.data.check import check_limits

    with pytest.raises(ValueError, match=r"^--silence-db 3.0: expected a level in dBFS <= 0 \(-inf: no "):
        check_limits(0.1, 3.0, 0.1, flags=True)
