

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
