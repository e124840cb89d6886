

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
    assert ManifestRow("a", "a.wav", ("x",), 2, 16_000).to_json()["seconds"] == 2   # kept as given


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
