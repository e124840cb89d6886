"""Importers on tiny fake corpora: rows, probed lengths, splits, and one message per bad item."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
import json
import re
import tarfile

import pytest
import soundfile as sf

from tests.signals import chirp, noise, tone
from tta.data.importers import (
    ImportOptions,
    SourceError,
    held_out,
    import_audiocaps,
    import_audioldm,
    import_folder,
    import_tango,
)
from tta.data.manifest import read_manifest, write_manifest
from tta.data.prompts import TEXT_FIELDS, read_prompt_file
from tta.data.webdataset import import_webdataset


def _wav(path, seconds=0.5, sr=16_000, **kw):
    """A tone whose pitch depends on the file's path below pytest's numbered base folder: importers merge files
    with the same bytes. Drawn from the whole path (crc32), the base's number moved it, and in one CI run 91.wav
    and 93.wav of one test were the same 1995.42 Hz tone, so the test failed once in many runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = re.sub(r"^.*?/pytest-\d+/", "", str(path))   # the same in every run
    pitch = 300 + int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100_000 / 50
    sf.write(path, tone(pitch, seconds, sr), sr, **kw)
    return path


def _by_id(result):
    return {r.id: r for r in result.rows}


def _one_error(result, *fragments):
    hits = [e for e in result.errors if all(f in e for f in fragments)]
    assert len(hits) == 1, (fragments, result.errors)
    assert "\n" not in hits[0]


def test_folder_with_sidecar_txt(tmp_path):
    root = tmp_path / "corpus"
    _wav(root / "birds" / "b1.wav", 0.5)
    (root / "birds" / "b1.txt").write_text("birds singing\n\n  a bird   chirps \n")
    _wav(root / "rain.flac", 1.25, 44_100, format="FLAC")
    (root / "rain.txt").write_text("rain on a roof")
    _wav(root / "nocap.wav")
    (root / "zero.wav").write_bytes(b"")
    (root / "zero.txt").write_text("nothing")
    (root / "text.wav").write_text("not audio at all")
    (root / "text.txt").write_text("a text file")
    _wav(root / "dup.wav")
    _wav(root / "dup.ogg", format="OGG", subtype="VORBIS")
    (root / "dup.txt").write_text("twice")

    result = import_folder(root, options=ImportOptions(source="test corpus", licence="CC0", progress=False))
    rows = _by_id(result)
    assert sorted(rows) == ["birds/b1", "dup", "rain"]
    assert rows["birds/b1"].captions == ("birds singing", "a bird chirps")
    assert rows["rain"].sample_rate == 44_100 and rows["rain"].seconds == pytest.approx(1.25)
    assert rows["rain"].source == "test corpus" and rows["rain"].licence == "CC0"
    assert all(r.split == "train" for r in result.rows)
    assert len(result.errors) == 4
    _one_error(result, "nocap.wav", "no caption")
    _one_error(result, "zero.wav", "0 bytes")
    _one_error(result, "text.wav", "not a readable audio file")
    _one_error(result, "duplicate id 'dup'")


def test_folder_with_captions_csv(tmp_path):
    root = tmp_path / "corpus"
    for name in ("a.wav", "b.wav", "c.wav", "unlisted.wav"):
        _wav(root / name)
    csv_path = tmp_path / "captions.csv"
    csv_path.write_text("file,caption_1,caption_2,split\n"
                        "a.wav,a dog barks,,test\n"
                        "b.wav,a car passes,an engine hums,\n"
                        "b.wav,a car passes,traffic noise,\n"
                        "missing.wav,ghost,,\n"
                        "c.wav,,,\n")
    result = import_folder(root, captions_csv=csv_path, options=ImportOptions(progress=False))
    rows = _by_id(result)
    assert sorted(rows) == ["a", "b"]
    assert rows["a"].split == "test" and rows["b"].split == "train"
    assert rows["b"].captions == ("a car passes", "an engine hums", "traffic noise")
    _one_error(result, "captions.csv:5", "missing.wav", "file not found")
    _one_error(result, "captions.csv:6", "c.wav", "no caption")
    _one_error(result, "unlisted.wav", "not listed")
    assert len(result.errors) == 3

    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("name,text\na.wav,x\n")
    with pytest.raises(SourceError, match="bad.csv: needs a file column"):
        import_folder(root, captions_csv=bad_csv, options=ImportOptions(progress=False))


def test_valid_fraction_is_deterministic_and_split_option_wins(tmp_path):
    root = tmp_path / "many"
    for i in range(40):
        _wav(root / f"clip{i:02d}.wav", 0.1)
        (root / f"clip{i:02d}.txt").write_text(f"clip {i}")
    opts = ImportOptions(valid_fraction=0.3, progress=False)
    first = {r.id: r.split for r in import_folder(root, options=opts).rows}
    second = {r.id: r.split for r in import_folder(root, options=opts).rows}
    assert first == second
    n_valid = sum(s == "valid" for s in first.values())
    assert 4 <= n_valid <= 20
    assert all((s == "valid") == held_out(i, 0.3) for i, s in first.items())
    # a `group` column holds out the pieces of one recording together (here: clips 0-19 and 20-39)
    csv_path = tmp_path / "groups.csv"
    csv_path.write_text("file,caption,group\n" + "".join(f"clip{i:02d}.wav,clip {i},rec{i // 20}\n"
                                                         for i in range(40)))
    grouped = import_folder(root, captions_csv=csv_path, options=opts).rows
    for g in ("rec0", "rec1"):
        assert {r.split for r in grouped if int(r.id[4:]) // 20 == int(g[3])} == \
            {"valid" if held_out(g, 0.3) else "train"}
    forced = import_folder(root, options=ImportOptions(split="test", valid_fraction=0.3, progress=False))
    assert {r.split for r in forced.rows} == {"test"}
    with pytest.raises(ValueError, match="valid_fraction"):
        ImportOptions(valid_fraction=1.5)


def test_a_valid_fraction_that_holds_out_nothing_is_reported(tmp_path, caplog):
    """30 rows at valid_fraction 0.2 gave a manifest with no 'valid' row and no word; the trainers then stopped."""
    root = tmp_path / "few"
    ids = [f"c{i}" for i in range(200) if not held_out(f"c{i}", 0.05)][:3]   # three ids the hash keeps in train
    for i in ids:
        _wav(root / f"{i}.wav", 0.1)
        (root / f"{i}.txt").write_text(f"clip {i}")
    with caplog.at_level("WARNING", logger="tta.data.importers"):
        rows = import_folder(root, options=ImportOptions(valid_fraction=0.05, progress=False)).rows
    assert {r.split for r in rows} == {"train"}
    assert "valid_fraction 0.05 put none of 3 rows in 'valid'" in caplog.text


def test_audiocaps_csv(tmp_path):
    root = tmp_path / "audio"
    _wav(root / "abcdefghijk_30.wav", 1.0)
    _wav(root / "Ylmnopqrstuv.flac", 0.5, format="FLAC")
    (tmp_path / "val.csv").write_text(
        "audiocap_id,youtube_id,start_time,caption\n"
        "1,abcdefghijk,30,A man speaks\n"
        "2,abcdefghijk,30,Someone talks loudly\n"
        "3,lmnopqrstuv,0,Water flows\n"
        "4,missingxxxx,10,Nothing here\n"
        "3,lmnopqrstuv,0,Duplicate id line\n"
        "5,lmnopqrstuv,abc,Bad time\n")
    result = import_audiocaps(tmp_path / "val.csv", root=root, options=ImportOptions(progress=False))
    rows = _by_id(result)
    assert sorted(rows) == ["abcdefghijk_30", "lmnopqrstuv_0"]
    assert rows["abcdefghijk_30"].captions == ("A man speaks", "Someone talks loudly")
    assert rows["abcdefghijk_30"].seconds == pytest.approx(1.0)
    assert {r.split for r in result.rows} == {"valid"}  # from the file name val.csv
    _one_error(result, "val.csv:5", "missingxxxx")
    _one_error(result, "val.csv:6", "duplicate audiocap_id '3'")
    _one_error(result, "val.csv:7", "start_time")
    (tmp_path / "wrong.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SourceError, match="expected AudioCaps columns"):
        import_audiocaps(tmp_path / "wrong.csv", root=root, options=ImportOptions(progress=False))


def test_audiocaps_segments_of_one_video_are_not_merged_and_are_held_out_together(tmp_path):
    root = tmp_path / "audio"
    _wav(root / "Yvid0000000_30.000_40.000.wav", 1.0)      # AudioSet's own file name
    _wav(root / "onlyid00000.wav", 1.0)                     # a file named by the video alone
    (tmp_path / "train.csv").write_text(
        "audiocap_id,youtube_id,start_time,caption\n"
        "1,vid0000000,30,A dog barks\n"
        "2,onlyid00000,10,A car passes\n"
        "3,onlyid00000,50,Rain falls\n")
    result = import_audiocaps(tmp_path / "train.csv", root=root, options=ImportOptions(progress=False))
    rows = _by_id(result)
    assert sorted(rows) == ["onlyid00000_10", "vid0000000_30"]
    assert rows["onlyid00000_10"].captions == ("A car passes",)
    _one_error(result, "train.csv:4", "resolves to")         # not merged into the other segment's row
    from tta.data.importers import held_out

    # clips of one video share a split: their split is decided by the video id, not by the clip id
    opts = ImportOptions(progress=False, valid_fraction=0.5)
    for i in range(20):
        (tmp_path / f"g{i}.csv").write_text("audiocap_id,youtube_id,start_time,caption\n"
                                           f"1,video{i:06d},0,x\n2,video{i:06d},10,y\n")
        _wav(root / f"video{i:06d}_0.wav", 0.2)
        _wav(root / f"video{i:06d}_10.wav", 0.2)
        got = import_audiocaps(tmp_path / f"g{i}.csv", root=root, options=opts)
        assert {r.split for r in got.rows} == {"valid" if held_out(f"video{i:06d}", 0.5) else "train"}


def test_audioldm_json(tmp_path):
    root = tmp_path / "data"
    _wav(root / "wav" / "x1.wav", 0.75)
    _wav(root / "wav" / "x2.wav", 0.25, 8_000)
    doc = {"data": [{"wav": "wav/x1.wav", "caption": "thunder rumbles", "labels": "/m/0ngt1,/m/06mb1"},
                    {"wav": "wav/x2.wav", "caption": "a bell rings"},
                    {"wav": "wav/x1.wav", "caption": "distant thunder"},
                    {"wav": "wav/gone.wav", "caption": "missing"},
                    {"caption": "no wav key"}]}
    json_path = tmp_path / "audiocaps_train_label.json"
    json_path.write_text(json.dumps(doc))
    result = import_audioldm(json_path, root=root, options=ImportOptions(progress=False))
    rows = _by_id(result)
    assert sorted(rows) == ["wav/x1", "wav/x2"]
    assert rows["wav/x1"].captions == ("thunder rumbles", "distant thunder")
    assert rows["wav/x1"].labels == ("/m/0ngt1", "/m/06mb1")
    assert rows["wav/x2"].sample_rate == 8_000
    assert {r.split for r in result.rows} == {"train"}
    _one_error(result, "data[3]", "gone.wav", "file not found")
    _one_error(result, "data[4]", '"wav"')
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(SourceError, match="broken.json: not valid JSON"):
        import_audioldm(tmp_path / "broken.json", options=ImportOptions(progress=False))
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(SourceError, match='expected {"data"'):
        import_audioldm(tmp_path / "list.json", options=ImportOptions(progress=False))


def test_text_in_another_encoding_is_named_not_mangled(tmp_path):
    """A latin-1 captions CSV stopped the import with Python's bare codec message, naming no file; a latin-1
    Tango line was imported with U+FFFD in its caption and no word."""
    folder = tmp_path / "audio"
    _wav(folder / "a.wav")
    _wav(folder / "b.wav")
    (tmp_path / "caps.csv").write_bytes("file,caption\na.wav,un caf\xe9 anim\xe9\n".encode("latin-1"))
    with pytest.raises(SourceError, match=r"caps.csv: not UTF-8 text \(invalid continuation byte at byte"):
        import_folder(folder, captions_csv=tmp_path / "caps.csv", options=ImportOptions(progress=False))
    (tmp_path / "t.jsonl").write_bytes('{"location": "audio/a.wav", "captions": "caf\xe9"}\n'.encode("latin-1")
                                      + b'{"location": "audio/b.wav", "captions": "rain"}\n')
    result = import_tango(tmp_path / "t.jsonl", options=ImportOptions(progress=False))
    assert [r.captions for r in result.rows] == [("rain",)]
    _one_error(result, "t.jsonl:1", "not UTF-8 text")



@pytest.mark.parametrize("name", TEXT_FIELDS)
def test_every_importer_takes_the_caption_names_a_prompts_file_takes(tmp_path, name):
    """A captions CSV with a `Text` or `prompt` column was refused ("needs ... a caption column"), though the
    prompts reader takes it; the JSON importers took `caption`/`captions` only (AudioLDM, Tango) or not
    `prompt` (WebDataset)."""
    _wav(tmp_path / "a.wav")
    _wav(tmp_path / "b.wav", 0.25)
    csv_path = tmp_path / "prompts.csv"
    csv_path.write_text(f"File,{name.title()}\na.wav,a dog barks\nb.wav,a door slams\n")
    assert [r.prompt for r in read_prompt_file(csv_path)] == ["a dog barks", "a door slams"]
    opts = ImportOptions(progress=False)
    rows = _by_id(import_folder(tmp_path, captions_csv=csv_path, options=opts))
    assert {k: r.captions for k, r in rows.items()} == {"a": ("a dog barks",), "b": ("a door slams",)}
    (tmp_path / "ldm.json").write_text(json.dumps({"data": [{"wav": "a.wav", name: "a dog barks"}]}))
    assert [r.captions for r in import_audioldm(tmp_path / "ldm.json", options=opts).rows] == [("a dog barks",)]
    (tmp_path / "tango.jsonl").write_text(json.dumps({"location": "a.wav", name: "a dog barks"}) + "\n")
    assert [r.captions for r in import_tango(tmp_path / "tango.jsonl", options=opts).rows] == [("a dog barks",)]
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        _add(tar, "k.wav", _audio_bytes())
        _add(tar, "k.json", json.dumps({name: "a chirp"}).encode())
    result = import_webdataset(tmp_path / "shard.tar", audio_dir=tmp_path / "x", options=opts)
    assert [r.captions for r in result.rows] == [("a chirp",)]


def test_a_captions_csv_takes_caption_columns_before_text_and_no_id_column(tmp_path):
    """Song Describer's CSV (caption_id, track_id, caption, ..., path) made each clip's caption id one of its
    captions ("17"): every column whose name began with `caption` was read as one."""
    _wav(tmp_path / "a.wav")
    _wav(tmp_path / "b.wav", 0.25)
    csv_path = tmp_path / "song_describer.csv"
    csv_path.write_text("caption_id,track_id,caption,text,path\n17,5,a guitar strums,guitar,a.wav\n"
                        "18,6,,a piano,b.wav\n")
    rows = _by_id(import_folder(tmp_path, captions_csv=csv_path, options=ImportOptions(progress=False)))
    assert rows["a"].captions == ("a guitar strums",)   # `text` is read where no caption column holds one
    assert rows["b"].captions == ("a piano",)

def test_tango_jsonl(tmp_path):
    _wav(tmp_path / "audio" / "t1.wav")
    sf.write(tmp_path / "audio" / "t2.flac", noise(0.3), 16_000)
    lines = [json.dumps({"dataset": "x", "location": "audio/t1.wav", "captions": "a cat meows"}),
             "{broken json",
             json.dumps({"location": "audio/t2.flac", "captions": ["wind", "gusts of wind"], "split": "val"}),
             json.dumps({"location": "audio/t3.wav", "captions": "gone"}),
             json.dumps({"location": "audio/t1.wav", "captions": ""})]
    path = tmp_path / "tango.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = import_tango(path, options=ImportOptions(progress=False))
    rows = _by_id(result)
    assert sorted(rows) == ["audio/t1", "audio/t2"]
    assert rows["audio/t2"].captions == ("wind", "gusts of wind") and rows["audio/t2"].split == "valid"
    _one_error(result, "tango.jsonl:2", "broken JSON")
    _one_error(result, "tango.jsonl:4", "t3.wav", "file not found")
    assert len(result.errors) == 2


def _add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _audio_bytes(fmt="WAV", subtype="PCM_16", seconds=0.5):
    buf = io.BytesIO()
    sf.write(buf, chirp(300, 3000, seconds), 16_000, format=fmt, subtype=subtype)
    return buf.getvalue()


def test_webdataset_shards(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "000000.tar", "w") as tar:
        _add(tar, "k1.wav", _audio_bytes())
        _add(tar, "k1.json", json.dumps({"caption": "a chirp rises", "split": "test"}).encode())
        _add(tar, "k2.flac", _audio_bytes("FLAC", seconds=1.0))
        _add(tar, "k2.txt", b"a long chirp\n")
        _add(tar, "k3.wav", _audio_bytes())
        _add(tar, "k4.json", b'{"caption": "no audio"}')
        _add(tar, "k5.wav", b"garbage bytes, not a wav file at all")
        _add(tar, "k5.txt", b"broken audio")
        _add(tar, "../evil.wav", _audio_bytes())
    with tarfile.open(shards / "000001.tar", "w") as tar:
        _add(tar, "k1.ogg", _audio_bytes("OGG", "VORBIS"))
        _add(tar, "k1.txt", b"same key again")
        _add(tar, "k6.mp3", _audio_bytes("MP3", "MPEG_LAYER_III"))
        _add(tar, "k6.json", json.dumps({"captions": ["an mp3 chirp", "a sweep"]}).encode())
    audio_dir = tmp_path / "extracted"
    result = import_webdataset(shards, audio_dir=audio_dir, options=ImportOptions(progress=False))
    rows = _by_id(result)
    assert sorted(rows) == ["k1", "k2", "k6"]
    assert rows["k1"].split == "test" and rows["k1"].captions == ("a chirp rises",)
    assert rows["k6"].captions == ("an mp3 chirp", "a sweep")
    assert rows["k2"].seconds == pytest.approx(1.0)
    for r in result.rows:  # rows point at the extracted files in their final place
        assert r.path.startswith(str(audio_dir.resolve())) and sf.info(r.path).frames > 0
    _one_error(result, "k3", "no caption")
    _one_error(result, "k4", "no audio member")
    _one_error(result, "k5", "not a readable audio file")
    _one_error(result, "000001.tar:k1", "duplicate id")
    _one_error(result, "unsafe path")
    assert len(result.errors) == 5
    assert not list(tmp_path.glob(".extracted.*"))  # no temp folder left
    assert sorted(f.name for f in audio_dir.rglob("*") if f.is_file()) == ["k1.wav", "k2.flac", "k6.mp3"]

    # The manifest round-trips and its relative paths resolve.
    manifest = write_manifest(tmp_path / "m.jsonl", result.rows)
    assert [r.id for r in read_manifest(manifest)] == [r.id for r in result.rows]

    # A re-run writes over its own files; a folder holding another file is refused before anything moves.
    again = import_webdataset(shards, audio_dir=audio_dir, options=ImportOptions(progress=False))
    assert again.rows == result.rows and again.errors == result.errors
    (audio_dir / "k2.txt").write_text("mine")
    with pytest.raises(SourceError, match="holds k2.txt, which this import does not extract"):
        import_webdataset(shards, audio_dir=audio_dir, options=ImportOptions(progress=False))
    assert sorted(f.name for f in audio_dir.rglob("*") if f.is_file()) == ["k1.wav", "k2.flac", "k2.txt", "k6.mp3"]


def test_webdataset_without_good_rows_leaves_no_folder(tmp_path):
    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        _add(tar, "a.wav", b"not audio")
        _add(tar, "a.txt", b"caption")
    result = import_webdataset(tmp_path / "bad.tar", audio_dir=tmp_path / "out", options=ImportOptions(progress=False))
    assert result.rows == [] and len(result.errors) == 1 and "a.wav" in result.errors[0]
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    (tmp_path / "notatar.tar").write_bytes(b"x" * 100)
    result = import_webdataset(tmp_path / "notatar.tar", audio_dir=tmp_path / "out2",
                               options=ImportOptions(progress=False))
    assert result.rows == [] and "not a readable tar shard" in result.errors[0]
    assert len(result.errors[0].splitlines()) == 1       # tarfile's own message spans several lines


def test_malformed_csv_rows_and_unknown_splits_are_bad_items(tmp_path):
    """An unquoted comma spills the rest of a caption into an extra field (the caption was silently cut short);
    a short row made the AudioCaps import crash; a split value naming no split made the row training data."""
    root = tmp_path / "audio"
    _wav(root / "abcdefghijk_30.wav", 1.0)
    _wav(root / "bcdefghijkl_0.wav", 1.0)
    _wav(root / "cdefghijklm_0.wav", 1.0)
    (tmp_path / "train.csv").write_text(
        "audiocap_id,youtube_id,start_time,caption\n"
        "1,abcdefghijk,30,a dog barks, then a cat meows\n"
        "2,bcdefghijkl\n"
        "3,cdefghijklm,0,\"rain, then thunder\"\n")
    result = import_audiocaps(tmp_path / "train.csv", root=root, options=ImportOptions(progress=False))
    assert sorted(_by_id(result)) == ["cdefghijklm_0"]
    assert _by_id(result)["cdefghijklm_0"].captions == ("rain, then thunder",)
    _one_error(result, "train.csv:2", "5 fields, the header has 4; quote a caption that contains commas")
    _one_error(result, "train.csv:3", "2 fields, the header has 4")

    folder = tmp_path / "folder"
    for name in ("a", "b", "c", "d"):
        _wav(folder / f"{name}.wav")
    (tmp_path / "caps.csv").write_text(
        'file,caption,split\n'
        'a.wav,"a caption\nover two lines",train\n'
        'b.wav,a dog barks, then a cat meows,train\n'
        'c.wav,rain,testing\n'
        'd.wav,wind,valid\n')
    result = import_folder(folder, captions_csv=tmp_path / "caps.csv", options=ImportOptions(progress=False))
    assert sorted(_by_id(result)) == ["a", "d"] and _by_id(result)["d"].split == "valid"
    _one_error(result, "caps.csv:4", "4 fields, the header has 3")       # physical line numbers
    _one_error(result, "caps.csv:5", "split 'testing' is not one of")
    # a quote left open took every later line into one caption: the import stops there, naming the line
    (tmp_path / "open.csv").write_text('file,caption\na.wav,"rain\nb.wav,wind\nc.wav,sea\n')
    with pytest.raises(SourceError, match=r"open.csv:2: not valid CSV \(unexpected end of data; a quote"):
        import_folder(folder, captions_csv=tmp_path / "open.csv", options=ImportOptions(progress=False))
    (tmp_path / "open.csv").write_text('audiocap_id,youtube_id,start_time,caption\n1,abcdefghijk,30,rain\n'
                                       '2,bcdefghijkl,0,"dog" barking\n')
    with pytest.raises(SourceError, match=r"open.csv:3: not valid CSV"):
        import_audiocaps(tmp_path / "open.csv", root=root, options=ImportOptions(progress=False))

    (tmp_path / "data.json").write_text(json.dumps({"data": [
        {"wav": "folder/a.wav", "caption": "x", "split": "holdout"}, {"wav": "folder/b.wav", "caption": "y"}]}))
    result = import_audioldm(tmp_path / "data.json", options=ImportOptions(progress=False))
    assert len(result.rows) == 1 and result.rows[0].path.endswith("b.wav")
    _one_error(result, "data[0]", "split 'holdout' is not one of")


def test_audiocaps_files_named_by_audiocap_id_merge_into_one_clip(tmp_path):
    """audiocaps-download saves each caption's copy of a clip as <audiocap_id>.wav: the five captions of a
    val/test clip become one row, not five rows (or four duplicate-id errors)."""
    root = tmp_path / "audio"
    for cap_id in ("91", "92", "93"):
        _wav(root / f"{cap_id}.wav", 1.0)
    (tmp_path / "test.csv").write_text(
        "audiocap_id,youtube_id,start_time,caption\n"
        "91,abcdefghijk,30,A man speaks\n"
        "92,abcdefghijk,30,Someone talks\n"
        "93,zzzzzzzzzzz,0,Water flows\n")
    result = import_audiocaps(tmp_path / "test.csv", root=root, options=ImportOptions(progress=False))
    rows = _by_id(result)
    assert sorted(rows) == ["abcdefghijk_30", "zzzzzzzzzzz_0"] and not result.errors
    assert rows["abcdefghijk_30"].captions == ("A man speaks", "Someone talks")


def test_sidecar_captions_must_be_utf8_and_lose_a_byte_order_mark(tmp_path):
    _wav(tmp_path / "a.wav")
    _wav(tmp_path / "b.wav")
    (tmp_path / "a.txt").write_bytes("\ufeffa dog barks\n".encode("utf-8"))
    (tmp_path / "b.txt").write_bytes("rain in a café\n".encode("cp1252"))
    result = import_folder(tmp_path, options=ImportOptions(progress=False))
    assert _by_id(result)["a"].captions == ("a dog barks",) and "b" not in _by_id(result)
    _one_error(result, "b.txt", "not UTF-8")


def test_webdataset_takes_the_first_caption_field_that_holds_one_and_refuses_unknown_splits(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "000000.tar", "w") as tar:
        _add(tar, "c.wav", _audio_bytes())
        _add(tar, "c.json", json.dumps({"captions": None, "caption": "cap c"}).encode())
        _add(tar, "t.wav", _audio_bytes())
        _add(tar, "t.json", json.dumps({"caption": "cap t", "split": "testing"}).encode())
    result = import_webdataset(shards, audio_dir=tmp_path / "x", options=ImportOptions(progress=False))
    assert sorted(_by_id(result)) == ["c"] and _by_id(result)["c"].captions == ("cap c",)
    _one_error(result, "t", "split 'testing' is not one of")


def test_folder_import_follows_symlinked_folders_and_keeps_the_names_under_the_root(tmp_path):
    """A corpus assembled from links: a linked sub-folder is walked (it was skipped without a word), and a file
    keeps its name under the root as its id (a linked file's id was its target's bare name, so cats/001 and
    birds/001 clashed); a link loop is walked once."""
    import os

    store = tmp_path / "store"
    _wav(store / "dogs" / "001.wav")
    _wav(store / "birds_real" / "001.wav")
    root = tmp_path / "corpus"
    _wav(root / "cats" / "001.wav")
    os.symlink(store / "dogs", root / "dogs")
    (root / "birds").mkdir()
    os.symlink(store / "birds_real" / "001.wav", root / "birds" / "001.wav")
    os.symlink(root, root / "cats" / "loop")
    for name in ("cats/001", "dogs/001", "birds/001"):
        (root / f"{name}.txt").write_text("a sound\n")
    result = import_folder(root, options=ImportOptions(progress=False))
    assert sorted(_by_id(result)) == ["birds/001", "cats/001", "dogs/001"], result.errors


def test_a_source_naming_a_link_loop_reports_that_row_and_imports_the_rest(tmp_path):
    """A captions CSV (or AudioLDM / Tango list) row naming a file that is a symbolic link loop stopped the whole
    import with "Symlink loop from ..." (pathlib's resolve() raises on a loop); it is one bad item."""
    import os

    root = tmp_path / "corpus"
    _wav(root / "a.wav")
    os.symlink("loop2.wav", root / "loop1.wav")
    os.symlink("loop1.wav", root / "loop2.wav")
    csv_path = tmp_path / "captions.csv"
    csv_path.write_text("file,caption\na.wav,a tone\nloop1.wav,a loop\n")
    result = import_folder(root, captions_csv=csv_path, options=ImportOptions(progress=False))
    assert sorted(_by_id(result)) == ["a"]
    _one_error(result, "captions.csv:3", "loop1.wav", "skipped")


def test_folder_import_reports_a_dead_link_beside_its_captions(tmp_path):
    """A clip that is a symbolic link to nothing (its target moved), with its captions beside it, was left out
    without a word ("0 bad items"); it is a bad item naming the link."""
    import os

    root = tmp_path / "corpus"
    _wav(root / "a.wav")
    os.symlink(tmp_path / "moved" / "b.wav", root / "b.wav")
    for name in ("a", "b"):
        (root / f"{name}.txt").write_text("a sound\n")
    result = import_folder(root, options=ImportOptions(progress=False))
    assert sorted(_by_id(result)) == ["a"]
    _one_error(result, "b.wav", "file not found (a symbolic link to", "skipped")
    assert len(result.errors) == 1



def test_a_webdataset_member_that_cannot_be_read_is_named(tmp_path):
    """Broken JSON said "shard.tar:a: unreadable member (Expecting property name ...)": never which of the key's
    members (a.json, a.txt, a.wav) it was."""
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        for key, member, data in [("a", "a.json", b'{"caption": "x",\n}'), ("b", "b.json", b'["a list"]'),
                                  ("c", "c.txt", "un café".encode("latin-1")), ("d", "sub/d.json", b"\xff{}"),
                                  ("e", "e.json", b'{"caption": "a chirp"}')]:
            _add(tar, member, data)
            _add(tar, member.rpartition(".")[0] + ".wav", _audio_bytes())
    result = import_webdataset(tmp_path / "shard.tar", audio_dir=tmp_path / "x", options=ImportOptions(progress=False))
    assert sorted(_by_id(result)) == ["e"] and len(result.errors) == 4
    _one_error(result, "shard.tar:a: member a.json is not valid JSON", "at line 2 column 1")
    _one_error(result, "shard.tar:b: unreadable member b.json (expected a JSON object, not list)")
    _one_error(result, "shard.tar:c: member c.txt is not UTF-8 text")
    _one_error(result, "shard.tar:sub/d: member sub/d.json is not UTF-8 text")

def test_a_webdataset_member_with_a_byte_order_mark_reads_like_a_sidecar_file(tmp_path):
    """A Windows editor's byte-order mark skipped a.json ("Unexpected UTF-8 BOM") and stayed in b.txt's caption
    ('\\ufeffa bell'), where the folder importer's sidecar files and the other importers drop it."""
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        for member, text, seconds in [("a.json", '\ufeff{"caption": "x"}', 0.5), ("b.txt", "\ufeffa bell\n", 0.75)]:
            _add(tar, member, text.encode("utf-8"))
            _add(tar, member.rpartition(".")[0] + ".wav", _audio_bytes(seconds=seconds))
    result = import_webdataset(tmp_path / "shard.tar", audio_dir=tmp_path / "x", options=ImportOptions(progress=False))
    rows = _by_id(result)
    assert result.errors == []
    assert rows["a"].captions == ("x",) and rows["b"].captions == ("a bell",)


def test_a_webdataset_shard_cut_short_keeps_the_samples_before_the_cut(tmp_path):
    """A shard truncated part-way lost every sample with "damaged tar shard; skipped", the whole ones too."""
    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "000000.tar", "w") as tar:
        for k in range(1, 5):
            _add(tar, f"k{k}.wav", _audio_bytes(seconds=0.5))
            _add(tar, f"k{k}.txt", f"sample {k}\n".encode())
    data = (shards / "000000.tar").read_bytes()
    (shards / "000000.tar").write_bytes(data[:len(data) // 2 + 100])   # cut inside sample 2 or 3
    result = import_webdataset(shards, audio_dir=tmp_path / "x", options=ImportOptions(progress=False))
    ids = sorted(_by_id(result))
    assert ids and ids == [f"k{k}" for k in range(1, len(ids) + 1)] and len(ids) < 4
    assert any("damaged tar shard after" in e for e in result.errors)
    for r in result.rows:
        assert sf.info(r.path).frames == 8000        # every kept sample is whole


def test_a_captions_csv_named_for_a_split_sets_the_split_of_a_folder_import(tmp_path):
    """Clotho's captions_validation.csv imported as a folder + --captions put every row in train (the AudioCaps,
    AudioLDM and Tango importers read the split from the file name; the folder importer did not), so evaluation
    clips became training data; Clotho's 'development' split is its training split."""
    _wav(tmp_path / "audio" / "a.wav")
    for name, split in (("clotho_captions_validation.csv", "valid"), ("clotho_captions_evaluation.csv", "test"),
                        ("clotho_captions_development.csv", "train")):
        (tmp_path / name).write_text("file_name,caption_1,caption_2\na.wav,a dog barks,a dog\n")
        result = import_folder(tmp_path / "audio", captions_csv=tmp_path / name,
                               options=ImportOptions(progress=False))
        assert [r.split for r in result.rows] == [split], name


def test_valid_fraction_splits_a_training_file_and_never_a_held_out_one(tmp_path, caplog):
    """A file named for training (train.csv, Clotho's development) is split by --valid-fraction as a file named
    for nothing is; a file named valid/test keeps its rows held out (never hashed into train), with a warning
    that names the word."""
    names = [f"c{i}" for i in range(40)]
    for n in names:
        _wav(tmp_path / "audio" / f"{n}.wav")
    body = "file,caption\n" + "".join(f"{n}.wav,a sound {n}\n" for n in names)
    for csv_name in ("plain.csv", "train_captions.csv"):
        (tmp_path / csv_name).write_text(body)
    options = ImportOptions(valid_fraction=0.2, progress=False)
    plain = import_folder(tmp_path / "audio", captions_csv=tmp_path / "plain.csv", options=options)
    train = import_folder(tmp_path / "audio", captions_csv=tmp_path / "train_captions.csv", options=options)
    assert [r.split for r in train.rows] == [r.split for r in plain.rows] and "valid" in {r.split for r in train.rows}
    (tmp_path / "test.csv").write_text(body)
    with caplog.at_level("WARNING", logger="tta.data.importers"):
        held = import_folder(tmp_path / "audio", captions_csv=tmp_path / "test.csv", options=options)
    assert {r.split for r in held.rows} == {"test"}
    assert any("its file name says 'test'" in r.message for r in caplog.records)


def test_paths_are_stored_without_dot_dot_and_hidden_folders_are_not_walked(tmp_path, monkeypatch):
    """`cd corpus/sub && tta data import folder ..` stored /.../corpus/sub/../a.wav, which broke when sub/ went
    away; a hidden folder (another import's staging folder) was walked."""
    import tta.data.importers as importers

    _wav(tmp_path / "corpus" / "a.wav")
    (tmp_path / "corpus" / "a.txt").write_text("a tone")
    _wav(tmp_path / "corpus" / ".x_audio.abc.tmp" / "b.wav")
    (tmp_path / "corpus" / ".x_audio.abc.tmp" / "b.txt").write_text("a tone")
    (tmp_path / "corpus" / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "corpus" / "sub")
    hashed = []
    monkeypatch.setattr(importers, "file_sha256", lambda p: hashed.append(p) or "x")
    result = import_folder(Path(".."), options=ImportOptions(progress=False))
    assert [r.path for r in result.rows] == [str(tmp_path / "corpus" / "a.wav")]
    assert hashed == []   # a file of a size no other file has cannot have another's bytes: not read in full


def test_files_with_the_same_bytes_become_one_row(tmp_path):
    """Identical copies under other names were separate rows, so the id hash could put one in train and its copy
    in valid (a leak no plain `tta data check` reports); the copy's captions join the kept row."""
    root = tmp_path / "corpus"
    data = (tone(440, 0.5) * 32767).astype("int16")
    for name, caption in (("a", "a dog barks"), ("b", "a barking dog"), ("c", "rain")):
        root.mkdir(exist_ok=True)
        sf.write(root / f"{name}.wav", data if name != "c" else data[::-1].copy(), 16_000)
        (root / f"{name}.txt").write_text(caption)
    result = import_folder(root, options=ImportOptions(valid_fraction=0.5, progress=False))
    rows = _by_id(result)
    assert sorted(rows) == ["a", "c"]
    assert rows["a"].captions == ("a dog barks", "a barking dog")
    _one_error(result, "b.wav", "the same bytes as", "'a'", "captions join that row")


def test_oga_wave_and_aifc_files_are_imported(tmp_path):
    """Debian's sound packages name Ogg audio .oga; .oga, .wave and .aifc files were passed over without a
    word."""
    root = tmp_path / "corpus"
    root.mkdir()
    sf.write(root / "bell.oga", tone(500, 0.5), 16_000, format="OGG", subtype="VORBIS")
    sf.write(root / "hiss.wave", tone(700, 0.5), 16_000, format="WAV")
    sf.write(root / "hum.aifc", tone(900, 0.5), 16_000, format="AIFF")
    for name in ("bell", "hiss", "hum"):
        (root / f"{name}.txt").write_text(f"a {name}")
    result = import_folder(root, options=ImportOptions(progress=False))
    assert sorted(_by_id(result)) == ["bell", "hiss", "hum"], result.errors


def test_a_manifest_of_audio_under_a_linked_sub_folder_stays_relative(tmp_path):
    """A project folder whose audio/ is a link to another disk got absolute paths to the link's target, so the
    manifest broke when the disk moved and the link was re-pointed."""
    import os

    disk = tmp_path / "disk"
    _wav(disk / "n.wav")
    (disk / "n.txt").write_text("noise")
    project = tmp_path / "project"
    project.mkdir()
    os.symlink(disk, project / "audio")
    result = import_folder(project / "audio", options=ImportOptions(progress=False))
    write_manifest(project / "m.jsonl", result.rows)
    assert json.loads((project / "m.jsonl").read_text())["path"] == "audio/n.wav"
    moved = tmp_path / "disk2"
    os.rename(disk, moved)
    os.remove(project / "audio")
    os.symlink(moved, project / "audio")
    assert read_manifest(project / "m.jsonl")[0].path == "audio/n.wav"


def test_id_prefix_keeps_two_corpora_apart_and_their_splits(tmp_path):
    _wav(tmp_path / "one" / "1.wav")
    (tmp_path / "one" / "1.txt").write_text("a bell")
    plain = import_folder(tmp_path / "one", options=ImportOptions(valid_fraction=0.5, progress=False))
    prefixed = import_folder(tmp_path / "one", options=ImportOptions(valid_fraction=0.5, id_prefix="one/",
                                                                     progress=False))
    assert [r.id for r in prefixed.rows] == ["one/1"]
    assert [r.split for r in prefixed.rows] == [r.split for r in plain.rows]


@pytest.mark.parametrize("prefix, problem", [
    (" ", "has a part ' ' that is empty, '.', '..', or starts or ends with a space"),
    ("a\tb/", "has a part 'a\\tb' that holds '\\t' (U+0009)"),
    ("x\x01", "holds '\\x01' (U+0001)"),
    ("../", "has a part '..' that is empty, '.', '..'"),
    ("/abs/", "has a part '' that is empty"),
    ("a//b", "has a part '' that is empty"),
    ("a\\b", "holds '\\\\' (U+005C)"),
    ("c\u2028d", "holds '\\u2028' (U+2028)"),
    ("x" * 65, "is 65 characters long"),
])
def test_an_id_prefix_that_cannot_make_ids_is_refused_with_the_rule(tmp_path, capsys, prefix, problem):
    """Every one of these was put before the ids as it was (a control character, a '../', 300 characters)."""
    from tta.cli import main
    from tta.config import shortened

    _wav(tmp_path / "one" / "1.wav")
    (tmp_path / "one" / "1.txt").write_text("a bell")
    code = main(["-q", "data", "import", "folder", str(tmp_path / "one"), "--out", str(tmp_path / "m.jsonl"),
                 "--id-prefix", prefix])
    err = capsys.readouterr().err
    assert err.startswith(f"tta: error: --id-prefix {shortened(prefix, 40)!r} ") and problem in err, err
    assert code == 1
    assert "an id prefix is at most 64 characters: names joined by '/'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m.jsonl").exists()


@pytest.mark.parametrize("prefix", ["", "clotho/", "esc50/v2-", "my corpus/", "fsd50k_", "audioset:", "a:b/c*"])
def test_ordinary_id_prefixes_are_taken(tmp_path, prefix):
    """'audioset:' (a manifest an older tta imported with it could not be imported again with it) is taken: the
    files tta writes for an id escape what a file name cannot hold (tta.data.prompts.id_file_name)."""
    _wav(tmp_path / "one" / "1.wav")
    (tmp_path / "one" / "1.txt").write_text("a bell")
    result = import_folder(tmp_path / "one", options=ImportOptions(id_prefix=prefix, progress=False))
    assert [r.id for r in result.rows] == [f"{prefix}1"]


def test_a_folder_file_without_a_sidecar_names_the_sidecar_it_looked_for(tmp_path):
    _wav(tmp_path / "a.wav")
    result = import_folder(tmp_path, options=ImportOptions(progress=False))
    _one_error(result, "a.wav", "no sidecar a.txt", "captions CSV")


def test_a_binary_file_given_as_tango_jsonl_is_one_error(tmp_path):
    """An audio file given by mistake gave one 'not UTF-8 text' bad item per newline byte in it (481 for 1.4 s)."""
    from tta.data.importers import SourceError

    _wav(tmp_path / "clip.wav")
    with pytest.raises(SourceError, match="clip.wav: binary data, not a Tango JSON lines file"):
        import_tango(tmp_path / "clip.wav", options=ImportOptions(progress=False))


def test_hidden_audio_files_are_not_imported(tmp_path):
    """A write's temporary file (.x.wav.abc123.tmp.wav) or macOS's ._x.wav beside the real one was imported."""
    _wav(tmp_path / "x.wav")
    (tmp_path / "x.txt").write_text("a tone")
    _wav(tmp_path / ".x.wav.abc123.tmp.wav")
    (tmp_path / ".x.wav.abc123.tmp.txt").write_text("a tone")
    assert sorted(_by_id(import_folder(tmp_path, options=ImportOptions(progress=False)))) == ["x"]


def test_paths_written_on_windows_find_their_files(tmp_path):
    """A captions CSV, an AudioLDM JSON or a Tango JSONL made on Windows names `sub\\a.wav`: each was 'file not
    found' beside the file sub/a.wav; a name that holds a backslash is still taken as written when it is there."""
    root = tmp_path / "corpus"
    _wav(root / "sub" / "a.wav")
    _wav(root / "b\\c.wav")   # a POSIX file name with a backslash in it
    opts = ImportOptions(progress=False)
    (tmp_path / "caps.csv").write_text("file,caption\r\nsub\\a.wav,rain\r\nb\\c.wav,wind\r\nsub\\gone.wav,x\r\n")
    result = import_folder(root, captions_csv=tmp_path / "caps.csv", options=opts)
    rows = _by_id(result)
    assert sorted(rows) == ["b\\c", "sub/a"] and rows["sub/a"].path == str(root / "sub" / "a.wav")
    _one_error(result, "caps.csv:4", "sub\\gone.wav: file not found")
    (tmp_path / "d.json").write_text(json.dumps({"data": [{"wav": "sub\\a.wav", "caption": "rain"}]}))
    assert [r.id for r in import_audioldm(tmp_path / "d.json", root=root, options=opts).rows] == ["sub/a"]
    (tmp_path / "t.jsonl").write_text(json.dumps({"location": "corpus\\sub\\a.wav", "captions": "rain"}) + "\n")
    assert [r.id for r in import_tango(tmp_path / "t.jsonl", options=opts).rows] == ["corpus/sub/a"]


def test_an_audioldm_json_with_a_byte_order_mark_is_read(tmp_path):
    """A dataset JSON saved by a Windows editor starts with a byte-order mark: the import stopped with 'not valid
    JSON (Unexpected UTF-8 BOM ...)', where CSVs and Tango files with one were read."""
    _wav(tmp_path / "a.wav")
    doc = json.dumps({"data": [{"wav": "a.wav", "caption": "rain on a roof"}]})
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + doc.encode("utf-8"))
    result = import_audioldm(tmp_path / "bom.json", options=ImportOptions(progress=False))
    assert [(r.id, r.captions) for r in result.rows] == [("a", ("rain on a roof",))] and not result.errors
    (tmp_path / "latin.json").write_bytes('{"data": [{"wav": "caf\xe9.wav"}]}'.encode("latin-1"))
    with pytest.raises(SourceError, match=r"latin.json: not UTF-8 text \(invalid continuation byte at byte 22\)"):
        import_audioldm(tmp_path / "latin.json", options=ImportOptions(progress=False))


def test_a_folder_of_shards_takes_tgz_shards_and_leaves_their_checksums_alone(tmp_path):
    """A folder of `.tgz` shards was 'no WebDataset .tar shards found'; a checksum beside a shard
    (`000000.tar.md5`) was opened as one and reported as 'not a readable tar shard'."""
    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "000000.tgz", "w:gz") as tar:
        _add(tar, "k1.flac", _audio_bytes("FLAC"))
        _add(tar, "k1.json", json.dumps({"caption": "a chirp rises"}).encode())
    with tarfile.open(shards / "000001.tar", "w") as tar:
        _add(tar, "k2.wav", _audio_bytes())
        _add(tar, "k2.txt", b"a chirp")
    (shards / "000001.tar.md5").write_text("0123456789abcdef0123456789abcdef  000001.tar\n")
    result = import_webdataset(shards, audio_dir=tmp_path / "audio", options=ImportOptions(progress=False))
    assert sorted(_by_id(result)) == ["k1", "k2"] and result.errors == []
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "000000.tar.sha256").write_text("00  000000.tar\n")
    with pytest.raises(SourceError, match=r"none: no WebDataset shards found \(expected .tar, .tar.gz, .tgz"):
        import_webdataset(tmp_path / "none", audio_dir=tmp_path / "audio2", options=ImportOptions(progress=False))


def test_a_valid_fraction_that_holds_out_every_row_is_reported(tmp_path, caplog):
    """Two rows at valid_fraction 0.5 could both go to 'valid': a manifest with no training row and no word."""
    root = tmp_path / "few"
    ids = [f"c{i}" for i in range(200) if held_out(f"c{i}", 0.5)][:2]   # two ids the hash holds out
    for i in ids:
        _wav(root / f"{i}.wav", 0.1)
        (root / f"{i}.txt").write_text(f"clip {i}")
    with caplog.at_level("WARNING", logger="tta.data.importers"):
        rows = import_folder(root, options=ImportOptions(valid_fraction=0.5, progress=False)).rows
    assert {r.split for r in rows} == {"valid"}
    assert "valid_fraction 0.5 put all 2 rows that name no split in 'valid' and none in 'train'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="tta.data.importers"):   # a forced split is what was asked for
        import_folder(root, options=ImportOptions(valid_fraction=0.5, split="valid", progress=False))
    assert "none in 'train'" not in caplog.text


def test_a_rows_own_licence_and_source_are_kept(tmp_path):
    """A captions CSV with each clip's licence (Freesound clips, Clotho's metadata) and JSON sources with a
    'license' field: the column was dropped without a word and every row took --licence (or none); the row's
    own licence and source are kept now, and the options fill the rows that name none."""
    root = tmp_path / "corpus"
    for name in ("a", "b"):
        _wav(root / f"{name}.wav")
    opts = ImportOptions(source="mine", licence="CC0", progress=False)
    (tmp_path / "caps.csv").write_text("file,caption,License,source\n"
                                       "a.wav,rain,  CC-BY 4.0 ,freesound\nb.wav,wind,,\n")
    rows = _by_id(import_folder(root, captions_csv=tmp_path / "caps.csv", options=opts))
    assert (rows["a"].licence, rows["a"].source) == ("CC-BY 4.0", "freesound")
    assert (rows["b"].licence, rows["b"].source) == ("CC0", "mine")
    (tmp_path / "d.json").write_text(json.dumps({"data": [{"wav": "a.wav", "caption": "rain", "license": "CC-BY"},
                                                          {"wav": "b.wav", "caption": "wind", "licence": None}]}))
    rows = _by_id(import_audioldm(tmp_path / "d.json", root=root, options=opts))
    assert (rows["a"].licence, rows["b"].licence) == ("CC-BY", "CC0")
    (tmp_path / "t.jsonl").write_text(json.dumps({"location": "a.wav", "captions": "rain", "licence": "CC-BY-NC"}))
    assert [r.licence for r in import_tango(tmp_path / "t.jsonl", root=root, options=opts).rows] == ["CC-BY-NC"]
    with tarfile.open(tmp_path / "000000.tar", "w") as tar:
        _add(tar, "k1.wav", _audio_bytes())
        _add(tar, "k1.json", json.dumps({"caption": "a chirp", "license": "CC-BY-SA", "source": "wds"}).encode())
        _add(tar, "k2.flac", _audio_bytes("FLAC"))
        _add(tar, "k2.txt", b"a chirp again")
    rows = _by_id(import_webdataset(tmp_path / "000000.tar", audio_dir=tmp_path / "x", options=opts))
    assert [(r.licence, r.source) for r in (rows["k1"], rows["k2"])] == [("CC-BY-SA", "wds"), ("CC0", "mine")]


@pytest.mark.parametrize("ending", ["\n", "\r\n"])
def test_tango_line_cut_short_names_its_own_column(tmp_path, ending):
    """As a manifest's: a Tango line cut short was "at column 1" (of the line after it) unless it was the last.
    The reader reads bytes (no newline translation), so a \r\n ending (a file written on Windows) reaches it too."""
    _wav(tmp_path / "a.wav")
    cut = '{"location": "a.wav", "captions": "x"'
    path = tmp_path / "tango.jsonl"
    path.write_bytes((json.dumps({"location": "a.wav", "captions": "y"}) + ending + cut + ending).encode())
    result = import_tango(path, options=ImportOptions(progress=False))
    _one_error(result, "tango.jsonl:2", f"broken JSON (Expecting ',' delimiter at column {len(cut) + 1})")


def test_folder_sidecar_without_caption_text_is_named(tmp_path):
    """A sidecar holding only blank lines was reported as "a.wav: no caption", as a missing one is not: the user
    went looking for an a.txt that is there."""
    _wav(tmp_path / "a.wav")
    (tmp_path / "a.txt").write_text("\n  \n")
    _wav(tmp_path / "b.wav")
    (tmp_path / "b.txt").write_text("a tone")
    result = import_folder(tmp_path, options=ImportOptions(progress=False))
    assert [r.id for r in result.rows] == ["b"]
    _one_error(result, "a.wav", "no caption (its sidecar a.txt is empty or holds only blank lines)")
