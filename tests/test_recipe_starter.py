"""The starter recipe on fabricated package trees: caption rules, deny list, dedupe/silence, determinism, mixtures.

No apt, no network: Debian package trees are fabricated in tmp_path with tiny synthetic files named like
the real ones and handed to the builder through `StarterOptions.file_roots`.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.signals import chirp, clicks, noise, tone
from tta.data.manifest import read_manifest, resolve_path
from tta.data.recipes import packages, rules
from tta.data.recipes.clips import CLIP_SECONDS, SAMPLE_RATE, is_silent
from tta.data.recipes.starter import RecipeError, StarterOptions, build_starter

MT = "usr/share/games/minetest/games/minetest_game/mods"
WES = "usr/share/games/wesnoth/1.16/data/core/sounds"


def _write(path: Path, wav: np.ndarray, sr: int = 44_100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "OGG" if path.suffix == ".ogg" else "WAV"
    sf.write(str(path), wav, sr, format=fmt, subtype="VORBIS" if fmt == "OGG" else "PCM_16")


def _fake_trees(root: Path) -> dict[str, Path]:
    """Two fabricated packages: minetest-data (ogg, 44.1 kHz) and wesnoth-1.16-data (wav/ogg, 22.05 kHz)."""
    mt, wes = root / "minetest-data", root / "wesnoth-1.16-data"
    _write(mt / MT / "default/sounds/default_grass_footstep.1.ogg", clicks(0.6, 44_100, 0.2) * 0.8)
    _write(mt / MT / "default/sounds/default_gravel_footstep.2.ogg", noise(0.5, 44_100, 0.4, seed=1))
    _write(mt / MT / "default/sounds/default_break_glass.1.ogg", chirp(3000, 500, 0.7, 44_100))
    _write(mt / MT / "fire/sounds/fire_fire.1.ogg", noise(25.0, 44_100, 0.2, seed=2))     # long ambience: 3 cuts
    _write(mt / MT / "devtest/sounds/soundstuff_mono.ogg", tone(440, 0.5, 44_100))        # no rule: unused
    _write(mt / MT / "doors/sounds/doors_door_open.ogg", np.zeros(22_050, np.float32))     # digital silence
    _write(mt / MT / "doors/sounds/doors_door_close.ogg", tone(300, 1.0, 44_100, 10 ** (-75 / 20)))  # -75 dB
    _write(wes / WES / "ambient/birds1.ogg", chirp(2000, 4000, 6.0, 22_050, 0.3), 22_050)
    _write(wes / WES / "wolf-growl-1.ogg", noise(1.2, 22_050, 0.5, seed=3), 22_050)
    dup = tone(660, 0.8, 22_050)
    _write(wes / WES / "sounds/bell.wav", dup, 22_050)
    _write(wes / WES / "horn-signals/horn-2.wav", dup, 22_050)   # another rule, the same decoded audio
    _write(wes / WES / "gunshot.wav", clicks(0.4, 22_050, 0.5), 22_050)
    (mt / "usr/share/doc/minetest-data").mkdir(parents=True)
    (mt / "usr/share/doc/minetest-data/copyright").write_text("Format: test\nLicense: CC-BY-SA-3.0\n")
    return {"minetest-data": mt, "wesnoth-1.16-data": wes}


def _options(trees, **kw) -> StarterOptions:
    base = {"sources": ("sfx",), "file_roots": tuple((k, str(v)) for k, v in sorted(trees.items())), "mixtures": 12}
    base.update(kw)
    return StarterOptions(**base)


@pytest.fixture
def trees(tmp_path):
    return _fake_trees(tmp_path / "trees")


# ------------------------------------------------------------------------------------------ rules


def test_rule_table_is_well_formed():
    known = {p.package for p in packages.SFX_PACKAGES}
    assert {r.package for r in rules.RULES} <= known
    assert not {r.package for r in rules.RULES} & packages.RESERVED_PACKAGES
    for r in rules.RULES:
        assert r.role in ("event", "ambience", "music", "speech") or (not r.captions and r.role == "")
        assert all(c and c == c.strip() and not c.endswith(".") for c in r.captions)
        assert len(set(r.captions)) == len(r.captions)


@pytest.mark.parametrize("package, path, caption", [
    ("minetest-data", f"{MT}/default/sounds/default_gravel_footstep.3.ogg", "footsteps on gravel"),
    ("minetest-data", f"{MT}/default/sounds/default_wood_footstep.1.ogg", "footsteps on a wooden floor"),
    ("widelands-data", "usr/share/games/widelands/data/sound/animals/wolf_01.ogg", "a wolf howls"),
    ("supertux-data", "usr/share/games/supertux2/sounds/rain.wav", "heavy rain"),
    ("lincity-ng-data", "usr/share/games/lincity-ng/sounds/FireStation2.wav", "a fire engine siren"),
    ("lincity-ng-data", "usr/share/games/lincity-ng/sounds/Fire2.wav", "a large fire burning"),
    ("0ad-data", "audio/actor/singlesteps/fs_sand3.ogg", "footsteps on sand"),
    ("qabcs-data", "usr/share/qabcs/abcs/all/noises/dog.ogg", "a dog barks"),
    ("qabcs-data", "usr/share/qabcs/abcs/all/noises/grand_piano.ogg", "a piano playing"),
    ("scorched3d-data", "usr/share/games/scorched3d/data/globalmods/apoc/data/wav/misc/dog3.wav",
     "a dog barking repeatedly"),
    ("mate-media-common", "usr/share/sounds/mate/default/alerts/bark.ogg", "a dog barks"),
])
def test_rules_caption_real_file_names(package, path, caption):
    rule = rules.match(package, path)
    assert rule is not None and rule.captions[0] == caption and len(rule.captions) >= 2


@pytest.mark.parametrize("package, path", [
    ("0ad-data", "audio/actor/singlesteps/fs_rock1.ogg"),              # byte-identical to gravel: excluded
    ("minetest-data", f"{MT}/devtest/mods/soundstuff/sounds/soundstuff_mono.ogg"),   # no rule
    ("wesnoth-1.16-data", f"{WES}/magic-dark-big.ogg"),                 # a name that does not say the content
    ("widelands-data", "usr/share/games/widelands/data/sound/click.ogg"),   # UI sound
    ("supertux-data", f"{MT}/default/sounds/default_grass_footstep.1.ogg"),   # rules are per package
    ("qabcs-data", "usr/share/qabcs/abcs/en/sounds/words/dog.ogg"),      # the spoken word, not the noise
    ("qabcs-data", "usr/share/qabcs/abcs/all/noises/hot_dog.ogg"),
    ("qabcs-data", "usr/share/qabcs/abcs/all/noises/electric_guitar_x.ogg"),
    ("qabcs-data", "usr/share/qabcs/abcs/all/noises/cheburashka.ogg"),   # a character: sound unknown
])
def test_rules_exclude_or_ignore(package, path):
    assert rules.match(package, path) is None


def test_builder_uses_only_rule_matched_files(tmp_path, trees):
    result = build_starter(tmp_path / "out", _options(trees), progress=False)
    rows = read_manifest(tmp_path / "out" / "manifest.jsonl")
    assert rows and [(r.id, r.captions, r.seconds) for r in rows] == [(r.id, r.captions, r.seconds)
                                                                       for r in result.rows]
    sources = {r.source.split("@")[0] for r in rows}
    assert not any("soundstuff" in s for s in sources)
    by_first = {r.captions[0]: r for r in rows}
    assert "footsteps on grass" in by_first and "birds chirping in a forest" in by_first
    row = by_first["footsteps on grass"]
    assert row.licence == "CC-BY-SA-3.0 / CC0-1.0" and row.source.startswith("debian:minetest-data:usr/share/")
    assert row.category == "event" and row.sample_rate == SAMPLE_RATE
    for r in rows:
        info = sf.info(str(resolve_path(r, tmp_path / "out" / "manifest.jsonl")))
        assert info.samplerate == 16_000 and info.channels == 1
        assert r.seconds <= CLIP_SECONDS + 1e-6 and abs(info.frames / 16_000 - r.seconds) < 1e-3
    fire = [r for r in rows if r.captions[0] == "a fire crackling"]
    assert len(fire) == 3 and {r.split for r in fire} == {fire[0].split}   # 25 s -> 3 cuts, one split
    assert (tmp_path / "out" / "licences" / "minetest-data.copyright").is_file()
    attribution = (tmp_path / "out" / "ATTRIBUTION.md").read_text()
    assert "minetest-data" in attribution and "wesnoth-1.16-data" in attribution
    info = json.loads((tmp_path / "out" / "recipe.json").read_text())
    assert info["summary"]["clips"] == len(rows) and info["counts"]["files_matched:minetest-data"] == 6


# ---------------------------------------------------------------------------------------- deny list


RESERVED = {"tuxpaint-stamps-default", "gcompris-qt-data", "openttd-opensfx", "sound-theme-freedesktop",
            "sound-icons", "lugaru-data"}


def test_reserved_packages_are_denied_everywhere(tmp_path):
    assert packages.RESERVED_PACKAGES == RESERVED
    assert not {p.package for p in packages.SFX_PACKAGES} & RESERVED
    for name in sorted(RESERVED):
        with pytest.raises(packages.PackageError, match="reserved"):
            packages.check_allowed(name)
        with pytest.raises(packages.PackageError, match="reserved"):
            packages.check_allowed(name.upper())
        with pytest.raises(packages.PackageError, match="reserved"):
            packages.fetch_package(name, tmp_path / "cache")            # refused before apt or any disk write
        with pytest.raises(packages.PackageError, match="reserved"):
            packages.select_packages([name], large=True)
        with pytest.raises(packages.PackageError, match="reserved"):
            StarterOptions(packages=(name,))
        with pytest.raises(packages.PackageError, match="reserved"):
            StarterOptions(file_roots=((name, str(tmp_path)),))
    assert not (tmp_path / "cache").exists()


def test_allowed_package_passes_and_unknown_package_is_refused():
    packages.check_allowed("minetest-data")
    with pytest.raises(packages.PackageError, match="no caption rules"):
        packages.select_packages(["some-other-data"], large=False)


# --------------------------------------------------------------------------------- dedupe and silence


def test_duplicates_and_silence_are_dropped(tmp_path, trees):
    result = build_starter(tmp_path / "out", _options(trees), progress=False)
    rows = result.rows
    sources = " ".join(r.source for r in rows)
    assert "doors_door_open" not in sources and "doors_door_close" not in sources      # silent / -75 dB
    assert ("sounds/bell.wav" in sources) != ("horn-2.wav" in sources)                 # one of the two copies
    assert result.counts["dropped_duplicate"] >= 1 and result.counts["dropped_silent_or_short"] >= 2
    manifest = tmp_path / "out" / "manifest.jsonl"
    digests = set()
    for r in rows:
        wav, _ = sf.read(str(resolve_path(r, manifest)), dtype="int16")
        assert not is_silent(wav.astype(np.float32) / 32768)
        digests.add(wav.tobytes())
    assert len(digests) == len(rows)


def test_is_silent_thresholds():
    assert is_silent(np.zeros(1600, np.float32))
    assert is_silent(tone(440, 0.5, amplitude=10 ** (-70 / 20)))
    assert not is_silent(tone(440, 0.5, amplitude=0.1))


# ------------------------------------------------------------------------------------- determinism


def test_reruns_and_workers_give_identical_manifest_bytes(tmp_path, trees):
    build_starter(tmp_path / "a", _options(trees, sources=("sfx", "mix")), progress=False)
    build_starter(tmp_path / "b", _options(trees, sources=("sfx", "mix"), workers=2), progress=False)
    a = (tmp_path / "a" / "manifest.jsonl").read_bytes()
    assert a == (tmp_path / "b" / "manifest.jsonl").read_bytes()
    build_starter(tmp_path / "a", _options(trees, sources=("sfx", "mix")), progress=False)   # same folder again
    assert (tmp_path / "a" / "manifest.jsonl").read_bytes() == a
    for row in read_manifest(tmp_path / "a" / "manifest.jsonl"):
        pa = resolve_path(row, tmp_path / "a" / "manifest.jsonl")
        pb = resolve_path(row, tmp_path / "b" / "manifest.jsonl")
        assert pa.read_bytes() == pb.read_bytes()
    other = build_starter(tmp_path / "c", _options(trees, sources=("sfx", "mix"), seed=1), progress=False)
    assert {r.id for r in other.rows if r.id.startswith("sfx")} == {
        r.id for r in read_manifest(tmp_path / "a" / "manifest.jsonl") if r.id.startswith("sfx")}


def test_versions_1_to_7_write_their_clips_as_they_always_did(tmp_path):
    """The recipe wrote a clip's int16 `pcm` as the float pcm / 32767 through save_audio, which handed it to
    libsndfile: floor(x * 32768), one step below pcm for a negative sample. save_audio takes the nearest step
    since, and a rebuilt corpus got other audio bytes than the one the shipped weights trained on (same
    manifest). Versions 1-7 write libsndfile's values still; the hash pins a file the recipe wrote before."""
    import hashlib

    from tta.audio import load_audio
    from tta.data.recipes.clips import Candidate, segment

    source = tmp_path / "tree" / MT / "default/sounds/default_break_glass.1.wav"
    source.parent.mkdir(parents=True)
    wav = noise(1.5, SAMPLE_RATE, 0.3, seed=7) * np.geomspace(1.0, 1e-3, int(1.5 * SAMPLE_RATE))   # into quiet
    sf.write(source, wav.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
    candidate = Candidate(key="k", kind="sfx", captions=("x",), label="x", role="event", source="s", licence="l",
                          spec=(), max_segments=2)
    (clip,) = segment(load_audio(source, SAMPLE_RATE)[0], candidate)   # the samples the recipe cuts
    pcm = np.frombuffer(clip.pcm, "<i2")
    written = np.floor((pcm.astype(np.float32) / np.float32(32767)).astype(np.float64) * 32768)   # libsndfile's
    assert np.count_nonzero(written != pcm) > 1000 and written.min() >= -32768
    expected = tmp_path / "expected.wav"
    sf.write(expected, written.astype(np.int16), SAMPLE_RATE, subtype="PCM_16")
    for version in (1, 7):
        out = tmp_path / f"v{version}"
        options = StarterOptions(sources=("sfx",), file_roots=(("minetest-data", str(tmp_path / "tree")),),
                                 version=version)
        (row,) = build_starter(out, options, progress=False).rows
        got = Path(row.path).read_bytes()
        assert got == expected.read_bytes(), version
        assert hashlib.sha256(got).hexdigest() == "10c958687b3d3a9490b7a0a5f7d83a98502a23b66f4370a147d2ec05de0d678e"


def test_max_clips_takes_a_subset_and_removes_stale_files(tmp_path, trees):
    full = build_starter(tmp_path / "out", _options(trees), progress=False)
    small = build_starter(tmp_path / "out", _options(trees, max_clips=3), progress=False)
    assert len(small.rows) == 3 < len(full.rows)
    assert len(list((tmp_path / "out" / "audio").rglob("*.wav"))) == 3


def test_a_rebuild_stopped_part_way_leaves_no_manifest_of_the_audio_it_replaced(tmp_path, trees, monkeypatch):
    import tta.data.recipes.starter as starter

    out = tmp_path / "out"
    build_starter(out, _options(trees), progress=False)
    assert (out / "manifest.jsonl").is_file()

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(starter, "_remove_stale_audio", stop)   # after the clips, before the manifest
    with pytest.raises(KeyboardInterrupt):
        build_starter(out, _options(trees, seed=1), progress=False)
    assert not (out / "manifest.jsonl").exists()


def test_a_rebuild_deletes_only_the_recipes_own_clips(tmp_path, trees):
    """Stale clips are the recipe's own (OUT/audio/<kind>/<kind>-*.wav); a user's file in OUT is left alone,
    and an OUT holding a manifest.jsonl no recipe wrote is refused rather than overwritten."""
    import soundfile as sf

    from tta.data.recipes.starter import RecipeError

    out = tmp_path / "out"
    build_starter(out, _options(trees), progress=False)
    mine = [out / "audio" / "field" / "my_recording.wav", out / "audio" / "sfx" / "keep me.wav"]
    for path in mine:
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, [0.1] * 1600, 16_000)
    build_starter(out, _options(trees, max_clips=3), progress=False)
    assert all(p.is_file() for p in mine)
    assert len(list((out / "audio" / "sfx").glob("sfx-*.wav"))) == 3
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "manifest.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(RecipeError, match="manifest.jsonl that no recipe run wrote"):
        build_starter(theirs, _options(trees), progress=False)
    assert (theirs / "manifest.jsonl").read_text() == '{"id": "x"}\n'


def test_validation_split_is_hash_based_and_stable():
    from tta.data.recipes.clips import split_of

    groups = [f"sfx/pkg/file{i}.ogg" for i in range(2000)]
    splits = [split_of(g) for g in groups]
    share = splits.count("valid") / len(splits)
    assert 0.04 < share < 0.10
    assert splits == [split_of(g) for g in groups]


# ------------------------------------------------------------------------------------------ mixtures


def test_mixtures_combine_captions_and_inherit_splits(tmp_path, trees):
    result = build_starter(tmp_path / "out", _options(trees, sources=("sfx", "mix"), mixtures=20), progress=False)
    by_id = {r.id: r for r in result.rows}
    mixes = [r for r in result.rows if r.id.startswith("mix-")]
    assert mixes and all(r.category == "mixture" for r in mixes)
    overlays = [r for r in mixes if "in the background" in r.captions[0]]
    rooms = [r for r in mixes if r.captions[0].endswith(("in a small room", "in a large hall", "in a cathedral"))]
    assert overlays and rooms
    for r in mixes:
        parts = r.source.removeprefix("mix:").split("+")[0]
        assert parts in by_id and by_id[parts].split == r.split
        assert r.seconds <= CLIP_SECONDS + 1e-6
    for r in overlays:
        fg, bg = r.source.removeprefix("mix:").split("+")
        assert by_id[fg].captions[0][1:] in r.captions[0] and by_id[bg].captions[0][1:] in r.captions[0]


def test_room_reverb_adds_a_decaying_tail():
    from tta.data.recipes.mixtures import room_impulse_response

    ir = room_impulse_response(1.0, "x")
    assert ir.shape == (16_000,) and np.isclose(np.sum(ir ** 2), 1.0, atol=1e-4)
    early, late = np.sum(ir[:1600] ** 2), np.sum(ir[-1600:] ** 2)
    assert 10 * np.log10(early / late) > 40
    assert np.array_equal(ir, room_impulse_response(1.0, "x")) and not np.array_equal(ir, room_impulse_response(1.0, "y"))


def test_render_mix_overlay_levels(tmp_path):
    from tta.data.recipes.mixtures import render_mix

    bg, fg = tmp_path / "bg.wav", tmp_path / "fg.wav"
    sf.write(str(bg), noise(4.0, seed=5) * 0.1, 16_000)
    sf.write(str(fg), tone(1000, 0.5), 16_000)
    out = render_mix(("mix", "overlay", str(fg), str(bg), 0.5, 6.0))
    assert out.shape == (64_000,) and np.abs(out).max() <= 0.9 + 1e-6
    start = int(0.5 * (64_000 - 8_000))
    seg, rest = out[start:start + 8_000], out[:start]
    assert np.sqrt(np.mean(seg ** 2)) > 1.5 * np.sqrt(np.mean(rest ** 2))


# ----------------------------------------------------------------------------------- zip (0 A.D.)


def test_archive_audio_is_listed_and_fs_rock_excluded(tmp_path):
    tree = tmp_path / "0ad"
    archive = tree / "usr/share/games/0ad/mods/public/public.zip"
    archive.parent.mkdir(parents=True)
    tmp_wav = tmp_path / "x.ogg"
    _write(tmp_wav, noise(0.4, 44_100, seed=7))
    with zipfile.ZipFile(archive, "w") as z:
        z.write(tmp_wav, "audio/actor/singlesteps/fs_gravel1.ogg")
        z.write(tmp_wav, "audio/actor/singlesteps/fs_rock1.ogg")
        z.write(tmp_wav, "art/textures/readme.txt")
    source = next(p for p in packages.SFX_PACKAGES if p.package == "0ad-data")
    files = packages.list_audio_files(tree, source)
    assert [rel for rel, _ in files] == ["audio/actor/singlesteps/fs_gravel1.ogg",
                                         "audio/actor/singlesteps/fs_rock1.ogg"]
    assert [rules.match("0ad-data", rel) is not None for rel, _ in files] == [True, False]


# ------------------------------------------------------------------------------------------- errors


def test_bad_options_and_missing_tools(monkeypatch, tmp_path):
    with pytest.raises(RecipeError, match="unknown"):
        StarterOptions(sources=("sfx", "video"))
    with pytest.raises(RecipeError, match="max-clips"):
        StarterOptions(max_clips=0)
    with pytest.raises(RecipeError, match="--mixtures=-5 must be >= 0"):
        StarterOptions(mixtures=-5)
    with pytest.raises(RecipeError, match="--max-scores=0"):
        StarterOptions(max_scores=0)
    with pytest.raises(RecipeError, match="--sources mix needs sfx, music or speech"):   # it wrote an empty corpus
        StarterOptions(sources=("mix",))
    import tta.data.recipes.speech as speech_module

    monkeypatch.setattr(speech_module.shutil, "which", lambda name: None)
    with pytest.raises(RecipeError, match="espeak-ng"):
        build_starter(tmp_path / "out", StarterOptions(sources=("speech",)), progress=False)
    assert not (tmp_path / "out").exists()


def test_a_build_that_keeps_no_clip_is_an_error_and_leaves_no_folder(tmp_path, trees):
    """It wrote an empty manifest, recipe.json and ATTRIBUTION.md and exited 1 with no error line."""
    empty = tmp_path / "empty"
    (empty / "usr/share/doc/minetest-data").mkdir(parents=True)    # the package holds no sound at all
    (empty / "usr/share/doc/minetest-data/copyright").write_text("Format: test\nLicense: CC-BY-SA-3.0\n")
    options = StarterOptions(sources=("sfx",), packages=("minetest-data",), file_roots=(("minetest-data", str(empty)),))
    with pytest.raises(RecipeError, match="no clips were kept for --sources sfx .*nothing written"):
        build_starter(tmp_path / "out", options, progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_reports_a_bad_source_as_one_line(capsys, tmp_path):
    from tta.cli import main

    code = main(["data", "recipe", "starter", "--out", str(tmp_path / "o"), "--sources", "sfx,video"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("tta: error:") and "video" in err


# ----------------------------------------------------------------------------------- recipe versions


def test_version_1_skips_the_rules_and_packages_of_version_2():
    bark = "audio/voice/global/civ_dog_move.ogg"
    assert rules.match("0ad-data", bark, version=2).label == "dog"
    assert rules.match("0ad-data", bark, version=1) is None
    assert rules.match("0ad-data", "audio/voice/global/civ_dog_bark.ogg", version=1).label == "dog"
    v1 = {p.package for p in packages.select_packages(None, large=True, version=1)}
    v2 = {p.package for p in packages.select_packages(None, large=True, version=2)}
    assert "etw-data" in v2 - v1 and "0ad-data" in v1 and v1 < v2
    with pytest.raises(packages.PackageError, match="etw-data"):
        packages.select_packages(["etw-data"], large=False, version=1)
    with pytest.raises(RecipeError, match="--recipe-version=8"):
        StarterOptions(version=8)


def test_version_3_adds_scratch_recordings_only_by_name():
    sounds = "usr/share/scratch/Media/Sounds/"
    assert rules.match("scratch", sounds + "Animal/Dog1.wav").label == "dog"
    assert rules.match("scratch", sounds + "Animal/Dog1.wav", version=2) is None
    assert rules.match("scratch", sounds + "Animal/HorseGallop.wav").captions[0] == "a horse galloping"
    assert rules.match("scratch", sounds + "Animal/Horse.wav").captions[0] == "a horse neighs"
    assert rules.match("scratch", sounds + "Animal/Crickets.wav").role == "ambience"
    # names that do not say what sounds, and the MP3s, are left out
    for rel in ("Electronic/Zoop.wav", "Effects/Rattle.wav", "Animal/Cat.mp3", "Vocals/Singer1.wav"):
        assert rules.match("scratch", sounds + rel) is None
    v2 = {p.package for p in packages.select_packages(None, large=True, version=2)}
    v3 = {p.package for p in packages.select_packages(None, large=True, version=3)}
    assert v3 - v2 == {"scratch"}
    assert not v3 & packages.RESERVED_PACKAGES


def test_version_2_keeps_rare_labels_in_train(tmp_path, trees):
    """A label with fewer than three recordings never lands in the held-out split; version 1 hash-splits
    every recording (it held out the only dog bark)."""
    from tta.data.recipes.clips import Candidate, split_of
    from tta.data.recipes.starter import keep_rare_in_train

    def cand(label, name):
        return Candidate(key=f"sfx/p/{name}", kind="sfx", captions=("x",), label=label, role="event",
                         source="s", licence="l", spec=())

    # names whose hash split is "valid" exist among a few hundred; find one per label to make the test bite
    held_out = [f"f{i}.ogg" for i in range(400) if split_of(f"sfx/p/f{i}.ogg") == "valid"]
    rare = [cand("dog", held_out[0]), cand("dog", "g1.ogg")]
    common = [cand("rain", n) for n in held_out[1:3] + ["r1.ogg", "r2.ogg"]]
    out = keep_rare_in_train(rare + common)
    assert [c.split for c in out[:2]] == ["train", "train"]
    assert [c.split for c in out[2:]] == [""] * 4          # 4 recordings: the hash split decides
    v1 = build_starter(tmp_path / "v1", _options(trees, version=1), progress=False).rows
    v2 = build_starter(tmp_path / "v2", _options(trees), progress=False).rows
    assert [r.id for r in v1] == [r.id for r in v2]        # same clips; only splits of rare labels move
    assert all(r2.split == "train" or r1.split == r2.split for r1, r2 in zip(v1, v2))
    assert json.loads((tmp_path / "v1" / "recipe.json").read_text())["options"]["version"] == 1


def test_version_5_keeps_the_same_scores_wherever_music21_is_installed():
    from tta.data.recipes.music import order_scores

    rel = [f"palestrina/Agnus_{i:02d}.krn" for i in range(40)]
    venv = [f"/home/a/.venv/lib/python3.11/site-packages/music21/corpus/{p}" for p in rel]
    system = [f"/usr/lib/python3/dist-packages/music21/corpus/{p}" for p in rel]
    under = [f"/home/a/corpus/venv/lib/python3.11/site-packages/music21/corpus/{p}" for p in rel]
    keep = lambda paths, independent: [p.rsplit("corpus/")[-1] for p in order_scores(paths, 0, independent)][:10]
    assert keep(venv, True) == keep(system, True)          # version 5
    assert keep(under, True) == keep(system, True)         # even in a folder that is itself called corpus/
    assert keep(venv, False) != keep(system, False)        # versions 1-4 hashed the absolute path


def test_version_6_drops_held_out_twins_of_training_clips(tmp_path, trees):
    """A held-out clip that nearly duplicates a training clip (another gain, a little noise) is dropped before
    mixtures are built; the training twin and unrelated held-out clips stay."""
    from tta.audio import save_audio
    from tta.data.manifest import ManifestRow
    from tta.data.recipes.starter import BuildResult, _drop_held_out_twins

    rng = np.random.default_rng(0)
    moving = chirp(200, 3000, 3.0, SAMPLE_RATE, 0.3) * (rng.random(3 * SAMPLE_RATE) < 0.999)
    moving[::4000] += 0.4                                       # clicks at fixed times: a sound that moves
    clips = {"a": ("train", moving), "a-copy": ("valid", 0.5 * moving + noise(3.0, SAMPLE_RATE, 1e-4, seed=4)),
             "b": ("valid", clicks(3.0, SAMPLE_RATE, 0.3) * 0.3), "c": ("train", noise(3.0, SAMPLE_RATE, seed=5))}
    kept = []
    for name, (split, wav) in clips.items():
        path = save_audio(tmp_path / f"{name}.wav", np.clip(wav, -1, 1).astype(np.float32), SAMPLE_RATE)
        kept.append((ManifestRow(id=name, path=str(path), captions=(name,), seconds=3.0, sample_rate=SAMPLE_RATE,
                                 split=split), "event"))
    result = BuildResult(rows=[])
    assert [row.id for row, _ in _drop_held_out_twins(kept, result, progress=False)] == ["a", "b", "c"]
    assert result.counts["dropped_held_out_twin"] == 1
    # on the fabricated packages nothing is twinned: version 6 keeps what version 5 keeps
    v5 = build_starter(tmp_path / "v5", _options(trees, version=5), progress=False)
    v6 = build_starter(tmp_path / "v6", _options(trees), progress=False)
    assert [r.id for r in v5.rows] == [r.id for r in v6.rows] and v6.counts["dropped_held_out_twin"] == 0



def test_a_score_cache_entry_cut_short_is_parsed_again(tmp_path):
    """The music21 parse cache is written atomically; an entry an older version left half written is not fatal."""
    pytest.importorskip("music21")
    import hashlib

    from music21 import corpus

    from tta.data.recipes.music import _score_events

    path = str(corpus.getWork("bach/bwv66.6"))
    broken = tmp_path / f"{hashlib.sha1(path.encode()).hexdigest()[:16]}.json"
    broken.write_text('{"notes": [[0.0, 1.0, 6')
    data = _score_events(path, tmp_path)
    assert data and data["notes"] and json.loads(broken.read_text()) == json.loads(json.dumps(data))


HW = "usr/share/games/hedgewars/Data/Sounds"


@pytest.mark.parametrize("package, path, v6, v7", [
    ("hedgewars-data", f"{HW}/voices/Russian_pl/Boring.ogg", "a cartoon character speaking Russian",
     "a cartoon character speaking Polish"),              # the Russian character's pack for the Polish locale
    ("hedgewars-data", f"{HW}/voices/Default/Ow2.ogg", "a cartoon character shouts a short phrase in English",
     "a man grunts in pain"),
    ("hedgewars-data", f"{HW}/voices/Russian_pl/Laugh.ogg", "a cartoon character speaking Russian", "a man laughs"),
    ("hedgewars-data", f"{HW}/voices/Pirate/Laugh.ogg", "a man talks like a pirate", "a man laughs"),
    ("hedgewars-data", f"{HW}/voices/Robot/Ow1.ogg", "a robotic voice says a short phrase",
     "a robotic voice says a short phrase"),              # the robot's grunts are synthetic: unchanged
    ("hedgewars-data", f"{HW}/hammer.ogg", "a hammer striking", "a hammer striking"),
    ("hedgewars-data", f"{HW}/pickhammer.ogg", "a hammer striking", "a jackhammer drilling"),
    ("hedgewars-data", f"{HW}/drillgun.ogg", "rapid machine gun fire", "a drill rocket whirring"),
    ("supertux-data", "usr/share/games/supertux2/sounds/turnkey.ogg", "a door opening", "a key turning in a lock"),
    ("lincity-ng-data", "usr/share/games/lincity-ng/sounds/Raze2.wav", "construction work",
     "a building being demolished"),
    ("lincity-ng-data", "usr/share/games/lincity-ng/sounds/WindMillHTech1.wav", "a mill turning", None),
    ("megaglest-data", "usr/share/games/megaglest/data/tilesets/desert2/sounds/day.ogg",
     "birds singing in the daytime", None),
])
def test_version_7_corrects_reviewed_captions_and_older_versions_keep_theirs(package, path, v6, v7):
    old, new = rules.match(package, path, version=6), rules.match(package, path, version=7)
    assert old is not None and old.captions[0] == v6
    assert (new.captions[0] if new else None) == v7


def test_version_7_mixtures_carry_their_parts_labels():
    from tta.data.manifest import ManifestRow
    from tta.data.recipes.mixtures import mixture_candidates

    def row(id_, label):
        return ManifestRow(id=id_, path=f"/x/{id_}.wav", captions=(f"a {label}",), seconds=2.0, sample_rate=16_000,
                           split="train", labels=(label,))

    rows = [row("sfx-dog", "dog"), row("sfx-rain", "rain"), row("sfx-bell", "bell")]
    roles = {"sfx-dog": "event", "sfx-rain": "ambience", "sfx-bell": "event"}
    v6 = mixture_candidates(rows, roles, 20, seed=0, version=6)
    v7 = mixture_candidates(rows, roles, 20, seed=0, version=7)
    assert [c.key for c in v6] == [c.key for c in v7]          # the same mixtures, other labels
    assert all(c.labels[0] == "mixture" for c in v6)
    overlay = next(c for c in v7 if c.key.startswith("mix/overlay/sfx-dog+"))
    assert overlay.labels == ("dog", "rain")
    room = next(c for c in v7 if c.key.startswith("mix/room/"))
    assert room.labels[-1] == room.label and room.labels[0] in {"dog", "rain", "bell"}
