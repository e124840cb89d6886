"""Near-duplicate clips (tta.data.duplicates, `tta data check --near-duplicates`): copies at another gain, rate or
crop are found, look-alikes (same spectrum, other fluctuations; same rhythm, other timbre) are not."""

from __future__ import annotations

import numpy as np
import pytest

from tests.signals import chirp, noise, tone
from tta.audio import resample
from tta.data.duplicates import FRAME_RATE, compare, fingerprint, find_near_duplicates

SR = 16_000


def _events(seconds: float, seed: int) -> np.ndarray:
    """A sound that moves: a chirp under noise bursts at random times."""
    rng = np.random.default_rng(seed)
    wav = 0.3 * chirp(200, 3000, seconds)
    for start in rng.uniform(0, seconds - 0.2, size=int(3 * seconds)):
        i = int(start * SR)
        wav[i: i + 1600] += noise(0.1, amplitude=0.5, seed=int(start * 1000))
    return wav.astype(np.float32)


def _rhythm(freq: float) -> np.ndarray:
    """One rhythm (notes at fixed times) played on a tone of `freq`."""
    wav = np.zeros(3 * SR, np.float32)
    for start in (0.0, 0.4, 0.7, 1.5, 1.9, 2.4):
        i = int(start * SR)
        note = tone(freq, 0.25) * np.exp(-np.arange(4000) / 1200)
        wav[i: i + 4000] += note.astype(np.float32)
    return wav


def _rain(seed: int) -> np.ndarray:
    """Steady low-passed noise: a spectrum with a shape, and nothing but random fluctuation in time."""
    return np.convolve(noise(3.0, seed=seed), np.ones(6) / 6, mode="same").astype(np.float32)


@pytest.fixture(scope="module")
def clips():
    base = _events(3.0, seed=0)
    return {
        "base": (base, SR),
        "quieter": (0.25 * base + noise(3.0, amplitude=1e-4, seed=9), SR),     # gain change, a little noise
        "other_rate": (resample(base, SR, 22_050), 22_050),                     # stored at another rate
        "crop": (base[int(0.8 * SR): int(2.8 * SR)], SR),                       # cut from the base
        "rain_1": (_rain(1), SR),                                               # same spectrum, own motion
        "rain_2": (_rain(2), SR),
        "rhythm_low": (_rhythm(300), SR),                                       # same rhythm, other pitch
        "rhythm_high": (_rhythm(2500), SR),
        "other": (_events(3.0, seed=5), SR),                                    # same kind, other events
    }


def test_copies_are_found_and_look_alikes_are_not(clips):
    names = list(clips)
    prints = [fingerprint(*clips[n]) for n in names]
    assert prints[0].shape[:2] == (2, 64) and abs(prints[0].shape[2] - 3 * FRAME_RATE) <= 1
    found = {(names[p.a], names[p.b]) for p in find_near_duplicates(prints)}
    copies = {("base", "quieter"), ("base", "other_rate"), ("base", "crop"), ("quieter", "other_rate"),
              ("quieter", "crop"), ("other_rate", "crop")}
    assert found == copies


def test_a_crop_is_placed_where_it_was_cut(clips):
    image, motion, offset, cover = compare(fingerprint(*clips["base"]), fingerprint(*clips["crop"]))
    assert offset == pytest.approx(0.8) and cover == 1.0 and image > 0.99 and motion > 0.95   # 0.8 s in, all covered
    image, motion, offset, cover = compare(fingerprint(*clips["crop"]), fingerprint(*clips["base"]))
    assert offset == pytest.approx(-0.8) and cover == 1.0


def test_look_alikes_fail_on_the_right_count(clips):
    image, motion, _, _ = compare(fingerprint(*clips["rain_1"]), fingerprint(*clips["rain_2"]))
    assert image > 0.5 and motion < 0.5          # one spectrum, unrelated fluctuations
    image, motion, _, _ = compare(fingerprint(*clips["rhythm_low"]), fingerprint(*clips["rhythm_high"]))
    assert image < 0.9                           # one rhythm, other spectra


def test_tiny_inputs():
    assert find_near_duplicates([]) == [] and find_near_duplicates([fingerprint(tone(440, 1.0), SR)]) == []
    short = fingerprint(tone(440, 0.02), SR)     # shorter than one fingerprint frame: still one frame
    assert short.shape == (2, 64, 1)
    assert find_near_duplicates([short, short.copy()]) == []     # under 0.3 s of sound: never judged
    silent = fingerprint(np.zeros(SR, np.float32), SR)            # digital silence matches nothing
    assert find_near_duplicates([silent, silent.copy()]) == []


def test_check_near_duplicates_marks_leaks_and_lists_twins(tmp_path, capsys, clips):
    """`tta data check --near-duplicates`: a valid clip that copies a train clip is a leak (a bad row, dropped by
    --drop-bad, exit 1); two copies inside train are listed and kept."""
    import soundfile as sf

    from tta.cli import main
    from tta.data.manifest import ManifestRow, read_manifest, write_manifest

    rows = []
    for name, split in (("base", "train"), ("quieter", "valid"), ("other_rate", "train"), ("rain_1", "valid"),
                        ("rain_2", "train"), ("other", "valid")):
        wav, sr = clips[name]
        sf.write(tmp_path / f"{name}.wav", wav, sr)
        rows.append(ManifestRow(id=name, path=f"{name}.wav", captions=(name,), seconds=len(wav) / sr,
                                sample_rate=sr, split=split))
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    assert main(["-q", "data", "check", str(manifest)]) == 0                   # without the flag: all good
    capsys.readouterr()
    code = main(["-q", "data", "check", str(manifest), "--near-duplicates", "--drop-bad", str(tmp_path / "c.jsonl")])
    out = capsys.readouterr().out
    assert code == 1
    leaks = [line for line in out.splitlines() if line.startswith("leak\t")]
    assert len(leaks) == 2 and all(line.startswith("leak\tquieter\t") for line in leaks)   # twin of 2 train rows
    assert any(line.split() == ["leak", "1"] for line in out.splitlines())     # one leaked row in the counts
    assert "near-duplicate\tbase\tother_rate: image" in out
    assert "1 near-duplicate pair within a split (kept), 1 leaked row (a held-out row with a twin in" in out
    assert [r.id for r in read_manifest(tmp_path / "c.jsonl")] == ["base", "other_rate", "rain_1", "rain_2", "other"]


def test_check_against_another_manifest_finds_copies_of_its_clips(tmp_path, capsys, clips):
    """--against TRAIN: an evaluation set's rows that copy a training clip are leaks, whatever their split."""
    import soundfile as sf

    from tta.cli import main
    from tta.data.manifest import ManifestRow, read_manifest, write_manifest

    def manifest(name, members):
        rows = []
        for member in members:
            wav, sr = clips[member]
            sf.write(tmp_path / f"{name}-{member}.wav", wav, sr)
            rows.append(ManifestRow(id=member, path=f"{name}-{member}.wav", captions=(member,),
                                    seconds=len(wav) / sr, sample_rate=sr, split="test"))
        return write_manifest(tmp_path / f"{name}.jsonl", rows)

    train = manifest("train", ["base", "rain_1", "rhythm_low"])
    evaluation = manifest("eval", ["crop", "rain_2", "rhythm_high", "other"])
    code = main(["-q", "data", "check", str(evaluation), "--near-duplicates", "--against", str(train),
                 "--drop-bad", str(tmp_path / "clean.jsonl")])
    out = capsys.readouterr().out
    assert code == 1 and [line.split("\t")[1] for line in out.splitlines() if line.startswith("leak\t")] == ["crop"]
    assert "near-duplicate of base (test) in" in out
    assert [r.id for r in read_manifest(tmp_path / "clean.jsonl")] == ["rain_2", "rhythm_high", "other"]
    assert main(["-q", "data", "check", str(evaluation), "--against", str(train)]) == 2   # bad usage
    assert "--against needs --near-duplicates" in capsys.readouterr().err
    assert main(["-q", "data", "check", str(evaluation), "--near-duplicates", "--against", str(evaluation)]) == 1
    assert "the manifest being checked" in capsys.readouterr().err


def test_off_grid_crops_lossy_copies_are_found_and_padding_makes_no_twins(clips, tmp_path):
    """A crop 50 ms off the fingerprint's 100 ms grid and an Ogg Vorbis copy still match; two unrelated short
    sounds padded with digital silence to the same length do not (the silence is trimmed)."""
    import soundfile as sf

    base, _ = clips["base"]
    off_grid = fingerprint(base[int(0.85 * SR): int(2.85 * SR)], SR)
    image, motion, offset, cover = compare(fingerprint(base, SR), off_grid)
    assert image >= 0.97 and motion >= 0.95 and cover == 1.0 and offset == pytest.approx(0.85, abs=0.03)
    sf.write(tmp_path / "base.ogg", base, SR, format="OGG")
    lossy, sr = sf.read(tmp_path / "base.ogg", dtype="float32")
    image, motion, _, _ = compare(fingerprint(base, SR), fingerprint(lossy, sr))
    assert image >= 0.97 and motion >= 0.95

    def padded(wav):
        out = np.zeros(3 * SR, np.float32)
        out[: len(wav)] = wav
        return out

    a, b = padded(_rain(1)[: int(0.6 * SR)]), padded(chirp(300, 900, 0.6))
    assert find_near_duplicates([fingerprint(a, SR), fingerprint(b, SR)]) == []
