"""`tta data import` / `tta data check` through tta.cli.main: exit codes, one-line errors, files written or not."""

from __future__ import annotations

import io
import json
import tarfile
import zlib

import pytest
import soundfile as sf

from tests.signals import tone
from tests.test_data_check import make_bad_manifest
from tta.cli import main
from tta.data.manifest import read_manifest


def _wav(path, seconds=0.5, sr=16_000):
    """A tone whose pitch depends on the file name: importers merge files with the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(300 + zlib.crc32(path.name.encode()) % 100_000 / 50, seconds, sr), sr)


def _run(capsys, *argv):
    code = main(["-q", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def _assert_one_line_error(err, *fragments):
    lines = [l for l in err.splitlines() if l.startswith("tta: error:")]
    assert len(lines) == 1, err
    assert all(f in lines[0] for f in fragments), lines[0]


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "corpus"
    for name, caption in [("a", "a dog barks"), ("b", "rain falls"), ("c", None)]:
        _wav(root / f"{name}.wav")
        if caption:
            (root / f"{name}.txt").write_text(caption)
    return root


def test_import_folder_writes_manifest_and_reports_bad_items(capsys, tmp_path, folder):
    out = tmp_path / "m.jsonl"
    code, stdout, err = _run(capsys, "data", "import", "folder", folder, "--out", out, "--source", "synthetic",
                             "--licence", "CC0", "--valid-fraction", "0.5")
    assert code == 0
    rows = read_manifest(out)
    assert sorted(r.id for r in rows) == ["a", "b"]
    assert {r.source for r in rows} == {"synthetic"} and {r.licence for r in rows} == {"CC0"}
    bad = err.strip().splitlines()
    assert len(bad) == 1 and "c.wav" in bad[0] and "no caption" in bad[0]
    # a count takes its noun's number ("1 bad items skipped" was said)
    assert stdout == f"{out}: 2 rows (train 2; 0.00 h), 1 bad item skipped\n"
    (folder / "b.txt").unlink()
    code, stdout, _ = _run(capsys, "data", "import", "folder", folder, "--out", out)
    assert code == 0 and stdout == f"{out}: 1 row (train 1; 0.00 h), 2 bad items skipped\n"
    code, stdout, _ = _run(capsys, "data", "check", out, "--drop-bad", tmp_path / "clean.jsonl")
    assert code == 0 and stdout.splitlines() == [f"{out}: 1 row, 1 good, 0 bad",
                                                 f"{tmp_path / 'clean.jsonl'}: 1 good row written"]


def test_import_with_no_good_rows_fails_and_writes_nothing(capsys, tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "x.wav").write_text("text, not audio")
    (root / "x.txt").write_text("caption")
    (root / "y.wav").write_bytes(b"")
    (root / "y.txt").write_text("caption")
    out = tmp_path / "m.jsonl"
    code, _, err = _run(capsys, "data", "import", "folder", root, "--out", out)
    assert code == 1 and not out.exists()
    assert not list(tmp_path.glob(".m.jsonl*"))
    _assert_one_line_error(err, "no usable rows", "2 bad items", "not written")
    assert len([l for l in err.splitlines() if l.startswith("tta: bad item:")]) == 2


@pytest.mark.parametrize("argv, fragments", [
    (["folder", "{tmp}/nope", "--out", "{tmp}/m.jsonl"], ["nope", "audio folder not found"]),
    (["audiocaps", "{tmp}/c.csv", "--out", "{tmp}/m.jsonl"], ["needs --root"]),
    (["tango", "{tmp}/none.jsonl", "--out", "{tmp}/m.jsonl"], ["none.jsonl", "Tango JSONL not found"]),
    (["audioldm", "{tmp}/d.json", "--out", "{tmp}/m.jsonl", "--captions", "{tmp}/c.csv"], ["--captions"]),
    (["folder", "{tmp}", "--out", "{tmp}/m.jsonl", "--valid-fraction", "2"],
     ["--valid-fraction 2.0, expected a number in [0, 1)"]),
    (["folder", "{tmp}", "--out", "{tmp}/m.jsonl", "--root", "{tmp}"], ["--root is only for"]),
])
def test_import_user_errors_are_one_line(capsys, tmp_path, argv, fragments):
    """Exit 1 for bad input, 2 for a flag the import kind does not take (bad usage)."""
    argv = [a.format(tmp=tmp_path) for a in argv]
    code, _, err = _run(capsys, "data", "import", *argv)
    assert code == (2 if "only for" in err or "needs --root" in err else 1), err
    _assert_one_line_error(err, *fragments)
    assert not (tmp_path / "m.jsonl").exists()


def test_import_names_the_option_a_user_typed_not_the_python_field(capsys, folder, tmp_path):
    """tta data import --id-prefix ../x said "id_prefix='../x' has a part '..' ..." and --valid-fraction nan
    "valid_fraction=nan must be a finite number": ImportOptions' field names, no word the user typed. The
    Python API keeps naming its fields."""
    from tta.data.importers import ImportOptions

    out = tmp_path / "m.jsonl"
    for flag, value, words in (("--id-prefix", "../x", "--id-prefix '../x' has a part '..' that is empty"),
                               ("--id-prefix", "a//b", "--id-prefix 'a//b' has a part '' that is empty"),
                               ("--valid-fraction", "nan", "--valid-fraction nan, expected a number in [0,"),
                               ("--valid-fraction", "-0.5", "--valid-fraction -0.5, expected a number in")):
        code, _, err = _run(capsys, "data", "import", "folder", folder, "--out", out, f"{flag}={value}")
        assert code == 1 and not out.exists()
        _assert_one_line_error(err, words)
        assert "id_prefix" not in err and "valid_fraction" not in err
    with pytest.raises(ValueError, match=r"^id_prefix='\.\./x' has a part '\.\.' that is empty"):
        ImportOptions(id_prefix="../x")
    with pytest.raises(ValueError, match=r"^valid_fraction=-0.5, expected a number in \[0, 1\)$"):
        ImportOptions(valid_fraction=-0.5)


def test_import_warnings_name_the_option_a_user_typed_not_the_python_field(capsys, caplog, tmp_path):
    """`tta data import ... --valid-fraction 0.05` warned "valid_fraction 0.05 put none of 1 rows in 'valid'"
    (and "... put all ... in 'valid'"), the field's name where the user typed --valid-fraction; the warning of a
    source whose file name names a split said --valid-fraction to Python callers. The command's warnings name
    the option, the Python API's its field."""
    from tta.data.importers import ImportOptions, held_out, import_audiocaps, import_folder

    # one clip, that the hash of its id keeps in 'train' at 0.05 and holds out at 0.95
    name = next(f"c{i}" for i in range(200) if not held_out(f"c{i}", 0.05) and held_out(f"c{i}", 0.95))
    _wav(tmp_path / "one" / f"{name}.wav")
    (tmp_path / "one" / f"{name}.txt").write_text("a dog barks")
    _wav(tmp_path / "audio" / "abcdefghijk_30.wav")
    (tmp_path / "val.csv").write_text("audiocap_id,youtube_id,start_time,caption\n1,abcdefghijk,30,A man speaks\n")
    said = ["--valid-fraction 0.05 put none of 1 row in 'valid'", "--valid-fraction 0.95 put all 1 row that names no split",
            "so rows that name no split go to 'valid' and --valid-fraction holds none of them out"]
    with caplog.at_level("WARNING", logger="tta.data.importers"):
        for fraction in ("0.05", "0.95"):
            assert _run(capsys, "data", "import", "folder", tmp_path / "one", "--out", tmp_path / "m.jsonl",
                        "--valid-fraction", fraction)[0] == 0
        assert _run(capsys, "data", "import", "audiocaps", tmp_path / "val.csv", "--root", tmp_path / "audio",
                    "--out", tmp_path / "m.jsonl", "--valid-fraction", "0.5")[0] == 0
    assert all(words in caplog.text for words in said) and "valid_fraction" not in caplog.text, caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="tta.data.importers"):
        for fraction in (0.05, 0.95):
            import_folder(tmp_path / "one", options=ImportOptions(valid_fraction=fraction, progress=False))
        import_audiocaps(tmp_path / "val.csv", root=tmp_path / "audio",
                         options=ImportOptions(valid_fraction=0.5, progress=False))
    assert all(words.replace("--valid-fraction", "valid_fraction") in caplog.text for words in said), caplog.text
    assert "--valid-fraction" not in caplog.text


def test_bad_usage_exits_2(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["data", "import", "soundcloud", str(tmp_path), "--out", str(tmp_path / "m.jsonl")])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["data", "check"])
    assert e.value.code == 2
    capsys.readouterr()


def _one_clip_shard(path):
    """A WebDataset shard of one beep with its caption."""
    buf = io.BytesIO()
    sf.write(buf, tone(500, 0.3), 16_000, format="WAV")
    with tarfile.open(path, "w") as tar:
        for name, data in [("s1.wav", buf.getvalue()), ("s1.json", json.dumps({"text": "a beep"}).encode())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_import_webdataset_default_audio_dir(capsys, tmp_path):
    _one_clip_shard(tmp_path / "shard.tar")
    out = tmp_path / "wds.jsonl"
    code, _, _ = _run(capsys, "data", "import", "webdataset", tmp_path / "shard.tar", "--out", out)
    assert code == 0
    [row] = read_manifest(out)
    assert row.captions == ("a beep",) and row.path == "wds_audio/s1.wav"
    assert (tmp_path / "wds_audio" / "s1.wav").is_file()
    # a folder as --out is refused before anything is extracted (it left an orphaned <out>_audio folder)
    (tmp_path / "folder_out").mkdir()
    code, _, err = _run(capsys, "data", "import", "webdataset", tmp_path / "shard.tar", "--out", tmp_path / "folder_out")
    assert code == 1 and "--out is a folder; expected the path of a file to write" in err
    assert not (tmp_path / "folder_out_audio").exists()


def test_a_webdataset_import_runs_again_over_its_own_audio_and_never_over_other_files(capsys, tmp_path):
    """A re-run to the same --out was refused ("wds_audio: audio folder ... already exists and is not empty")
    where every other import writes --out over: it gives the same manifest and audio bytes; a folder that
    holds a file the import does not extract is refused and left as it is."""
    beeps = [io.BytesIO(), io.BytesIO()]
    for buf, hz in zip(beeps, (700, 900)):
        sf.write(buf, tone(hz, 0.2), 16_000, format="WAV")
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        for name, data in [("s1.wav", beeps[0].getvalue()), ("s1.json", json.dumps({"text": "a beep"}).encode()),
                           ("sub/s2.wav", beeps[1].getvalue()), ("sub/s2.txt", b"a higher beep"),
                           ("bad.wav", b"not audio"), ("bad.txt", b"no sound")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    argv = ("data", "import", "webdataset", tmp_path / "shard.tar", "--out", tmp_path / "wds.jsonl")
    audio = tmp_path / "wds_audio"

    def written():
        files = {f.relative_to(audio).as_posix(): f.read_bytes() for f in audio.rglob("*") if f.is_file()}
        return (tmp_path / "wds.jsonl").read_bytes(), files

    assert _run(capsys, *argv)[0] == 0
    first = written()
    assert sorted(first[1]) == ["s1.wav", "sub/s2.wav"]
    assert _run(capsys, *argv)[0] == 0
    assert written() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard.tar", "wds.jsonl", "wds_audio"]   # no staging
    for extra, named in ((audio / "notes.txt", "holds notes.txt,"), (audio / "sub" / "old" / "x.wav", "holds sub/old/,")):
        extra.parent.mkdir(exist_ok=True)
        extra.write_text("mine")
        code, _, err = _run(capsys, *argv)
        assert code == 1
        _assert_one_line_error(err, str(audio), named, "does not extract")
        assert extra.read_text() == "mine" and written()[0] == first[0]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["shard.tar", "wds.jsonl", "wds_audio"]
        extra.unlink()

def test_import_tango_and_audioldm(capsys, tmp_path):
    _wav(tmp_path / "w" / "one.wav")
    (tmp_path / "train.jsonl").write_text(json.dumps({"location": "w/one.wav", "captions": "a tone"}) + "\n")
    (tmp_path / "test.json").write_text(json.dumps({"data": [{"wav": "w/one.wav", "caption": "a tone"}]}))
    assert _run(capsys, "data", "import", "tango", tmp_path / "train.jsonl", "--out", tmp_path / "t.jsonl")[0] == 0
    assert _run(capsys, "data", "import", "audioldm", tmp_path / "test.json", "--out", tmp_path / "a.jsonl")[0] == 0
    assert [r.split for r in read_manifest(tmp_path / "t.jsonl")] == ["train"]
    assert [r.split for r in read_manifest(tmp_path / "a.jsonl")] == ["test"]


def test_check_good_manifest_exits_0(capsys, tmp_path, folder):
    out = tmp_path / "m.jsonl"
    _run(capsys, "data", "import", "folder", folder, "--out", out)
    code, stdout, _ = _run(capsys, "data", "check", out)
    assert code == 0 and "2 rows, 2 good, 0 bad" in stdout


def test_check_bad_manifest_exits_1_and_drop_bad_writes_clean(capsys, tmp_path):
    path, expected = make_bad_manifest(tmp_path)
    clean = tmp_path / "clean.jsonl"
    code, stdout, err = _run(capsys, "data", "check", path, "--drop-bad", clean, "--min-seconds", "0.1")
    assert code == 1 and err == ""
    problem_lines = [l for l in stdout.splitlines() if "\t" in l]
    assert len(problem_lines) == len(expected) + 3
    for rid, reason in expected.items():
        assert sum(l.startswith(f"{reason}\t{rid}\t") for l in problem_lines) == 1
    assert any(l.split() == ["empty", "2"] for l in stdout.splitlines())  # the per-reason count table
    assert "13 rows, 4 good, 12 bad" in stdout
    assert sorted(r.id for r in read_manifest(clean)) == ["good", "good6ch", "good8k", "good96k"]
    assert _run(capsys, "data", "check", clean)[0] == 0
    # a bad line names its place once ("manifest\tm.jsonl:14\tm.jsonl:14: broken JSON ..." said it twice)
    lines = [l.split("\t") for l in problem_lines if l.startswith("manifest\t")]
    assert [where for _, where, _ in lines] == [f"{path}:{n}" for n in (14, 15, 16)]
    assert lines[0][2].startswith("broken JSON (") and all(str(path) not in detail for _, _, detail in lines), lines


def test_check_missing_manifest_is_one_line_error(capsys, tmp_path):
    code, _, err = _run(capsys, "data", "check", tmp_path / "none.jsonl")
    assert code == 1
    _assert_one_line_error(err, "none.jsonl", "manifest not found")


def test_a_manifest_that_is_a_folder_is_named_as_one(capsys, tmp_path, repo_root):
    """A folder given as the manifest (the corpus folder, say) was reported as 'manifest not found'."""
    (tmp_path / "snd").mkdir()
    (tmp_path / "m.jsonl").write_text("")
    expected = f"{tmp_path / 'snd'}: is a folder, expected a manifest file (.jsonl)"
    assert _run(capsys, "data", "check", tmp_path / "snd") == (1, "", f"tta: error: {expected}\n")
    assert _run(capsys, "data", "check", tmp_path / "m.jsonl", "--near-duplicates", "--against",
                tmp_path / "snd") == (1, "", f"tta: error: --against {expected}\n")
    code, _, err = _run(capsys, "train", "vae", "--config", repo_root / "configs/vae/tiny.json", "--out",
                        tmp_path / "run", "--set", f"data.manifest={json.dumps(str(tmp_path / 'snd'))}")
    assert code == 1 and err == f"tta: error: {expected}\n" and not (tmp_path / "run").exists()


def test_check_refuses_an_empty_or_binary_manifest_and_non_finite_thresholds(capsys, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    code, stdout, err = _run(capsys, "data", "check", tmp_path / "empty.jsonl")
    assert code == 1 and "0 rows" in stdout and "no rows" in err
    (tmp_path / "utf16.jsonl").write_bytes('{"id": "a"}\n'.encode("utf-16"))
    code, _, err = _run(capsys, "data", "check", tmp_path / "utf16.jsonl")
    assert code == 1
    _assert_one_line_error(err, "utf16.jsonl", "not a UTF-8 text file")
    for flag, value in (("--min-seconds", "nan"), ("--min-seconds", "-5"), ("--silence-db", "nan")):
        code, _, err = _run(capsys, "data", "check", tmp_path / "empty.jsonl", flag, value)
        assert code == 1
        _assert_one_line_error(err, flag)


def test_check_takes_what_check_manifest_takes_and_names_the_option(capsys, tmp_path):
    """tta data check kept a second set of limit checks of its own: --silence-db=-inf, which turns the silence
    check off in check_manifest, was refused ("--silence-db -inf: expected a finite level in dBFS <= 0")."""
    manifest, _ = make_bad_manifest(tmp_path)
    code, stdout, _ = _run(capsys, "data", "check", manifest)
    assert code == 1 and "silent\tsilent\t" in stdout
    code, stdout, err = _run(capsys, "data", "check", manifest, "--silence-db=-inf")
    assert code == 1 and err == "" and "silent\t" not in stdout and "too-short\tshort\t" in stdout
    for flag, value, words in (("--silence-db", "nan", "--silence-db nan: expected a level in dBFS <= 0 (-inf"),
                               ("--silence-db", "inf", "--silence-db inf: expected a level in dBFS <= 0"),
                               ("--min-seconds", "-inf", "--min-seconds -inf: expected a finite number of")):
        code, _, err = _run(capsys, "data", "check", manifest, f"{flag}={value}")
        assert code == 1
        _assert_one_line_error(err, words)


def test_webdataset_audio_folder_gets_the_umask_mode_and_goes_when_the_manifest_fails(capsys, tmp_path, monkeypatch):
    import os
    import stat

    _one_clip_shard(tmp_path / "shard.tar")
    old = os.umask(0o022)
    try:
        assert _run(capsys, "data", "import", "webdataset", tmp_path / "shard.tar", "--out", tmp_path / "a.jsonl")[0] == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a_audio").stat().st_mode) == 0o755      # not mkdtemp's private 0o700

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    import tta.data.manifest as manifest

    monkeypatch.setattr(manifest, "write_manifest", interrupted)
    code, _, _ = _run(capsys, "data", "import", "webdataset", tmp_path / "shard.tar", "--out", tmp_path / "b.jsonl")
    assert code == 130 and not (tmp_path / "b_audio").exists() and not (tmp_path / "b.jsonl").exists()


def test_output_paths_are_checked_before_the_work(capsys, tmp_path, monkeypatch):
    """data check --drop-bad, clap score --out and eval --out are refused up front (they decoded or embedded
    everything first, then failed on the path)."""
    import tta.data.check as check

    monkeypatch.setattr(check, "check_manifest", lambda *a, **k: pytest.fail("checked before refusing the path"))
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    code, _, err = _run(capsys, "data", "check", tmp_path / "m.jsonl", "--drop-bad", tmp_path / "folder")
    assert code == 1 and "--drop-bad is a folder" in err
    code, _, err = _run(capsys, "clap", "score", "--clap", tmp_path / "none", "--audio", tmp_path,
                        "--out", tmp_path / "file" / "out.json")
    assert code == 1 and "file is a file, not a folder" in err
    code, _, err = _run(capsys, "eval", "--generated", tmp_path, "--reference", tmp_path, "--out", tmp_path / "file")
    assert code == 1 and "--out is a file; expected the path of a folder" in err


def test_a_command_stopped_with_sigterm_removes_its_temporary_files(capsys, tmp_path, monkeypatch):
    """SIGTERM (kill, timeout, a scheduler) skipped every clean-up outside `tta train`: a WebDataset import left
    its hidden staging folder of extracted audio (90 MB for 800 samples), one more per stopped run."""
    import os
    import signal

    import tta.data.webdataset as wds

    _one_clip_shard(tmp_path / "shard.tar")
    real = wds._read_shard

    def terminated(*a, **kw):
        real(*a, **kw)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(wds, "_read_shard", terminated)
    code = main(["-q", "data", "import", "webdataset", str(tmp_path / "shard.tar"), "--out", str(tmp_path / "w.jsonl")])
    assert code == 143 and capsys.readouterr().err == "tta: terminated\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard.tar"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_data_check_flags_default_to_the_library_levels():
    """--silence-db's default was a literal -60.0 beside tta.audio.SILENCE_DB (the CLI stays clear of tta.audio so
    that --help is fast): a change of the one would not have reached the other."""
    import inspect

    from tta.audio import SILENCE_DB
    from tta.cli import build_parser
    from tta.data.check import check_manifest

    args = build_parser().parse_args(["data", "check", "m.jsonl"])
    library = inspect.signature(check_manifest).parameters
    assert args.silence_db == SILENCE_DB == library["silence_db"].default
    assert args.min_seconds == library["min_seconds"].default
    check = next(a for a in build_parser()._actions if a.dest == "command").choices["data"]
    text = next(a for a in check._actions if a.dest == "data_command").choices["check"].format_help()
    assert f"(default {SILENCE_DB:g})" in " ".join(text.split())


def test_the_count_table_lines_its_counts_up_under_its_heading(capsys, tmp_path):
    """With only reasons shorter than the heading ('leak', 'empty') the counts stood left of 'count':
    'reason  count' over 'empty  1'."""
    _wav(tmp_path / "a.wav")
    (tmp_path / "b.wav").write_bytes(b"")
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"id": i, "path": f"{i}.wav", "captions": ["x"],
                                                          "seconds": 0.5, "sample_rate": 16_000}) + "\n"
                                              for i in ("a", "b")))
    code, stdout, _ = _run(capsys, "data", "check", tmp_path / "m.jsonl")
    lines = stdout.splitlines()
    heading = next(i for i, line in enumerate(lines) if line.startswith("reason"))
    assert code == 1 and lines[heading + 1].split() == ["empty", "1"]
    assert lines[heading].index("count") == lines[heading + 1].index("1")
