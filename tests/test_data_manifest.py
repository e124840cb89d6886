

def test_rows_read_from_one_manifest_stay_valid_written_into_another_folder(tmp_path):
    """A read-filter-write script: relative paths are relative to the manifest they were read from, so the
    written subset in another folder must point at the same audio files."""
    from tta.data.manifest import ManifestRow, read_manifest, resolve_path, write_manifest

    (tmp_path / "corpus" / "audio").mkdir(parents=True)
    (tmp_path / "corpus" / "audio" / "a.wav").write_bytes(b"x")
    source = write_manifest(tmp_path / "corpus" / "m.jsonl", [
        ManifestRow(id="a", path=str(tmp_path / "corpus" / "audio" / "a.wav"), captions=("x",), seconds=1.0,
                    sample_rate=16_000)])
    assert '"path": "audio/a.wav"' in source.read_text()
    rows = read_manifest(source)
    subset = write_manifest(tmp_path / "subsets" / "s.jsonl", rows)
    again = read_manifest(subset)
    assert resolve_path(again[0], subset) == (tmp_path / "corpus" / "audio" / "a.wav").resolve()
    assert again[0] == rows[0].__class__(**{**rows[0].__dict__, "path": again[0].path})   # base is not compared
    assert "base" not in subset.read_text()


def test_a_row_built_in_python_names_a_str_where_a_number_belongs():
    """ManifestRow(..., seconds="1.0") failed on "'>=' not supported between instances of 'str' and 'int'"; a
    numpy number was kept and the manifest failed to write ("Object of type float32 is not JSON serializable")."""
    import json

    import numpy as np
    import pytest

    from tta.data.manifest import ManifestError, ManifestRow

    with pytest.raises(ManifestError, match="row 'a': field 'seconds' is '1.0', expected a finite number"):
        ManifestRow("a", "a.wav", ("x",), "1.0", 16_000)
    with pytest.raises(ManifestError, match="row 'a': field 'sample_rate' is '16000', expected an integer"):
        ManifestRow("a", "a.wav", ("x",), 1.0, "16000")
    with pytest.raises(ManifestError, match="row 'a': field 'seconds' is inf, expected a finite number"):
        ManifestRow("a", "a.wav", ("x",), float("inf"), 16_000)
    row = ManifestRow("a", "a.wav", ("x",), np.float32(1.5), np.int64(16_000))
    assert json.dumps(row.to_json()) and row.seconds == 1.5 and type(row.sample_rate) is int
    kept = ManifestRow("a", "a.wav", ("x",), 2, 16_000).to_json()["seconds"]
    assert kept == 2 and type(kept) is int   # kept as given


def test_write_manifest_takes_rows_as_dicts_checked_as_manifest_lines(tmp_path):
    """write_manifest(p, [r.to_json() for r in rows]) failed on "'dict' object has no attribute 'id'"."""
    import pytest

    from tta.data.manifest import ManifestError, ManifestRow, read_manifest, write_manifest

    rows = [ManifestRow("a", "audio/a.wav", ("a dog",), 1.0, 16_000),
            ManifestRow("b", "audio/b.wav", ("rain", "rain on a roof"), 2.5, 44_100, split="valid", labels=("rain",))]
    as_rows = write_manifest(tmp_path / "rows.jsonl", rows).read_text()
    assert write_manifest(tmp_path / "dicts.jsonl", [r.to_json() for r in rows]).read_text() == as_rows
    assert read_manifest(tmp_path / "dicts.jsonl") == rows
    bad = tmp_path / "bad.jsonl"
    with pytest.raises(ManifestError, match=rf"{bad}: row 1: unknown field 'caption_text'"):
        write_manifest(bad, [rows[0].to_json(), {**rows[1].to_json(), "caption_text": "x"}])
    with pytest.raises(ManifestError, match=rf"{bad}: row 1: missing field 'sample_rate'"):
        write_manifest(bad, [rows[0], {k: v for k, v in rows[1].to_json().items() if k != "sample_rate"}])
    with pytest.raises(ManifestError, match=rf"{bad}: row 0 is a tuple, expected a ManifestRow or a dict"):
        write_manifest(bad, [("a", "audio/a.wav")])
    assert not bad.exists()


def test_a_manifest_read_builds_and_checks_each_row_once(tmp_path, monkeypatch):
    """read_manifest built every row twice (the row, then dataclasses.replace to set its base), so every check ran
    twice: a third of a 200 000-row read (bench/manifest.py)."""
    from tta.data.manifest import ManifestRow, read_manifest, write_manifest

    path = write_manifest(tmp_path / "m.jsonl", [ManifestRow(str(i), f"audio/{i}.wav", ("a dog",), 1.0, 16_000)
                                                 for i in range(3)])
    checks = []
    real = ManifestRow.__post_init__
    monkeypatch.setattr(ManifestRow, "__post_init__", lambda self: (checks.append(self.id), real(self))[1])
    rows = read_manifest(path)
    assert checks == ["0", "1", "2"]
    assert all(r.base == str(tmp_path.resolve()) for r in rows)


def test_write_manifest_resolves_links_only_for_a_path_not_under_the_folder_as_written(tmp_path, monkeypatch):
    """write_manifest resolved every row's path and the folder (two realpath walks a row, most of a 200 000-row
    write) before trying the path as written; a path under the folder only through a link is still stored
    relative."""
    import os
    from pathlib import Path

    from tta.data.manifest import ManifestRow, read_manifest, write_manifest

    (tmp_path / "real" / "audio").mkdir(parents=True)
    os.symlink(tmp_path / "real", tmp_path / "link")
    rows = [ManifestRow(str(i), f"audio/{i}.wav", ("a dog",), 1.0, 16_000) for i in range(3)]
    source = read_manifest(write_manifest(tmp_path / "real" / "m.jsonl", rows))
    resolved = []
    real = Path.resolve
    monkeypatch.setattr(Path, "resolve", lambda self, *a, **k: (resolved.append(self), real(self, *a, **k))[1])
    again = write_manifest(tmp_path / "real" / "again.jsonl", source)
    audio = lambda: [p.name for p in resolved if p.suffix == ".wav"]   # noqa: E731 (the write resolves its file)
    assert audio() == [] and read_manifest(again) == rows
    linked = write_manifest(tmp_path / "link" / "linked.jsonl",
                            [ManifestRow("x", str(tmp_path / "real" / "audio" / "x.wav"), ("rain",), 1.0, 16_000)])
    assert '"path": "audio/x.wav"' in linked.read_text() and audio() == ["x.wav"]


def test_a_number_too_large_is_a_bad_line_naming_file_and_line(tmp_path):
    """A seconds integer beyond float range stopped the read on "int too large to convert to float" and one of
    more than 4300 digits on Python's "Exceeds the limit ... use sys.set_int_max_str_digits()", neither naming
    the file or line, and `tta data check` gave up instead of reporting the line and going on."""
    import pytest

    from tta.data.manifest import ManifestError, read_manifest

    good = '{"id": "ok", "path": "a.wav", "captions": ["x"], "seconds": 1, "sample_rate": 16000}'
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join([good.replace('"ok"', '"a"').replace(": 1,", ": 1" + "0" * 400 + ","),
                               good.replace('"ok"', '"b"').replace(": 1,", ": 1" + "0" * 5000 + ","), good]) + "\n")
    with pytest.raises(ManifestError, match=rf"^{path}:1: field 'seconds' is too large, expected a finite number$"):
        read_manifest(path)
    errors = []
    assert [r.id for r in read_manifest(path, errors=errors)] == ["ok"]
    assert errors[1] == f"{path}:2: a number with more than 4300 digits"


def test_a_lines_sample_rate_is_an_integer_by_the_rule_of_a_row_built_in_python(tmp_path):
    """A line's "sample_rate": 16000.0 (a manifest a pandas float column wrote) was refused as "field
    'sample_rate' has type float, expected int", and so was a dict given to write_manifest, while
    ManifestRow(..., 16000.0), a config's int and load_audio take an integral float; a bad one names the
    row."""
    import json

    import pytest

    from tta.data.manifest import ManifestError, read_manifest, write_manifest

    line = {"id": "a", "path": "a.wav", "captions": ["x"], "seconds": 1.0, "sample_rate": 16_000.0}
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(line) + "\n")
    assert [(r.sample_rate, type(r.sample_rate)) for r in read_manifest(path)] == [(16_000, int)]
    written = write_manifest(tmp_path / "w.jsonl", [line])
    assert '"sample_rate": 16000,' in written.read_text()   # an int, as read
    for bad in (16_000.5, "16000", True, None, [16_000]):
        path.write_text(json.dumps({**line, "sample_rate": bad}) + "\n")
        with pytest.raises(ManifestError) as e:
            read_manifest(path)
        assert str(e.value) == f"{path}:1: row 'a': field 'sample_rate' is {bad!r}, expected an integer"
    path.write_text(json.dumps({**line, "sample_rate": 0}) + "\n")
    with pytest.raises(ManifestError, match=rf"^{path}:1: row 'a': field 'sample_rate' is 0, expected > 0$"):
        read_manifest(path)


def test_a_line_cut_short_names_its_own_column_whatever_ends_it(tmp_path):
    """A line cut short (the usual broken line: an editor or a killed writer) was reported "at column 1": json
    read its line ending and gave the column of the line after it, where the same line last in the file, with no
    ending, named the column where it broke. (The manifest is read as text, whose newline translation makes a
    \r\n ending a \n before the reader sees it: the Tango reader, which reads bytes, is tested with both.)"""
    from tta.data.manifest import read_manifest

    cut = '{"id": "b", "path": "b.wav",'
    good = '{"id": "a", "path": "a.wav", "captions": ["x"], "seconds": 1, "sample_rate": 16000}'
    for ending, name in (("\n", "lf"), ("", "last")):
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes((good + "\n" + cut + ending).encode())
        errors = []
        assert [r.id for r in read_manifest(path, errors=errors)] == ["a"]
        assert errors == [f"{path}:2: broken JSON (Expecting property name enclosed in double quotes at column "
                          f"{len(cut) + 1})"], name
