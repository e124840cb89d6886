"""AudioDataset: crops (random by item_seed, deterministic by index), padding, resampling, captions, cache."""

from __future__ import annotations

import errno
import itertools
import json
import re
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.signals import chirp, noise, tone
from tta.audio import AudioError
from tta.data.dataset import AudioDataset
from tta.data.manifest import DataConfig, EmptySplitError, ManifestError, ManifestRow, write_manifest

SR = 16_000


def _row(path, rid, seconds, sr, split="train", captions=("a sound",)):
    return ManifestRow(id=rid, path=str(path), captions=tuple(captions), seconds=seconds, sample_rate=sr,
                       split=split)


@pytest.fixture
def corpus(tmp_path):
    """A ramp (sample value = position) so crop offsets can be read back from the audio itself."""
    ramp = (np.arange(3 * SR, dtype=np.float32) / (3 * SR)) * 0.9 - 0.45   # 3 s, strictly increasing
    sf.write(tmp_path / "ramp.wav", ramp, SR, subtype="FLOAT")
    sf.write(tmp_path / "short.wav", tone(440, 0.25), SR)
    sf.write(tmp_path / "hi.wav", chirp(200, 6000, 2.0, 44_100), 44_100)
    sf.write(tmp_path / "val.wav", noise(1.0), SR)
    rows = [
        _row(tmp_path / "ramp.wav", "ramp", 3.0, SR, captions=("ramp one", "ramp two", "ramp three")),
        _row(tmp_path / "short.wav", "short", 0.25, SR),
        _row(tmp_path / "hi.wav", "hi", 2.0, 44_100),
        _row(tmp_path / "val.wav", "val", 1.0, SR, split="valid"),
    ]
    return write_manifest(tmp_path / "m.jsonl", rows), ramp


def _offset(wav: torch.Tensor, ramp: np.ndarray) -> int:
    return int(np.argmin(np.abs(ramp - float(wav[0]))))


def test_item_fields_and_default_collate(corpus):
    manifest, _ = corpus
    ds = AudioDataset(manifest, "train", SR, 1.0, normalize=False)
    assert len(ds) == 3
    item = ds[0]
    assert set(item) == {"wav", "caption", "id", "index", "seconds"}
    assert item["wav"].dtype == torch.float32 and item["wav"].shape == (SR,)
    assert (item["id"], item["index"], item["caption"]) == ("ramp", 0, "ramp one")
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    assert batch["wav"].shape == (3, SR) and batch["id"] == ["ramp", "short", "hi"]


def test_random_crop_is_reproducible_from_item_seed_and_varies(corpus):
    manifest, ramp = corpus
    ds = AudioDataset(manifest, "train", SR, 1.0, normalize=False)
    a, b = ds[(0, 1234)], ds[(0, 1234)]
    assert torch.equal(a["wav"], b["wav"]) and a["caption"] == b["caption"]
    offsets = {_offset(ds[(0, seed)]["wav"], ramp) for seed in range(12)}
    assert len(offsets) > 6 and all(0 <= o <= 2 * SR for o in offsets)
    captions = {ds[(0, seed)]["caption"] for seed in range(30)}
    assert captions == {"ramp one", "ramp two", "ramp three"}
    # The crop is the ramp's own samples from the drawn offset (seeked read == slice of the whole file).
    wav = ds[(0, 7)]["wav"].numpy()
    o = _offset(ds[(0, 7)]["wav"], ramp)
    np.testing.assert_allclose(wav, ramp[o:o + SR], atol=1e-6)


def test_deterministic_crops_and_first_caption(corpus):
    manifest, ramp = corpus
    start = AudioDataset(manifest, "train", SR, 1.0, normalize=False)
    assert _offset(start[0]["wav"], ramp) == 0 and start[0]["caption"] == "ramp one"
    assert torch.equal(start[0]["wav"], start[0]["wav"])
    centre = AudioDataset(manifest, "train", SR, 1.0, normalize=False, deterministic_crop="centre")
    assert _offset(centre[0]["wav"], ramp) == SR
    # random_crop=False: (index, seed) keys crop deterministically too; caption_choice="first" fixes captions.
    fixed = AudioDataset(manifest, "train", SR, 1.0, normalize=False, random_crop=False, caption_choice="first")
    assert all(_offset(fixed[(0, s)]["wav"], ramp) == 0 for s in range(5))
    assert {fixed[(0, s)]["caption"] for s in range(10)} == {"ramp one"}


def test_short_clip_is_zero_padded_and_reports_real_seconds(corpus):
    manifest, _ = corpus
    ds = AudioDataset(manifest, "train", SR, 1.0)
    item = ds[(1, 99)]
    wav = item["wav"]
    assert wav.shape == (SR,)
    assert item["seconds"] == pytest.approx(0.25)
    assert torch.all(wav[SR // 4:] == 0) and wav[: SR // 4].abs().max() > 0.1


def test_resampling_44k_to_16k_keeps_content(corpus):
    manifest, _ = corpus
    ds = AudioDataset(manifest, "train", SR, 2.0)
    item = ds[2]
    assert item["wav"].shape == (2 * SR,) and item["seconds"] == pytest.approx(2.0, abs=1e-3)
    reference = chirp(200, 6000, 2.0, SR)
    corr = np.corrcoef(item["wav"].numpy()[100:-100], reference[100:-100])[0, 1]
    assert corr > 0.99


def test_normalize_peak_half_and_dc_removed(corpus):
    manifest, _ = corpus
    item = AudioDataset(manifest, "train", SR, 1.0, normalize=True)[(0, 3)]
    assert float(item["wav"].abs().max()) == pytest.approx(0.5, abs=1e-5)
    assert abs(float(item["wav"].mean())) < 1e-4


def test_cache_gives_same_items_and_is_written(corpus, tmp_path):
    manifest, _ = corpus
    plain = AudioDataset(manifest, "train", SR, 1.0)
    cached = AudioDataset(manifest, "train", SR, 1.0, cache_dir=tmp_path / "cache")
    for key in [0, (0, 5), (1, 2)]:  # 16 kHz files: identical
        assert torch.equal(plain[key]["wav"], cached[key]["wav"])
    for key in [2, (2, 11)]:
        # 44.1 kHz: crop-then-resample vs resample-then-crop differ by edge effects and, for random
        # offsets, by the sub-sample rounding of the offset to a native sample (< 1/44100 s).
        a, b = plain[key]["wav"].numpy(), cached[key]["wav"].numpy()
        assert a.shape == b.shape and np.corrcoef(a, b)[0, 1] > 0.95
    files = list((tmp_path / "cache").rglob("*.npy"))
    assert len(files) == 3
    again = AudioDataset(manifest, "train", SR, 1.0, cache_dir=tmp_path / "cache")
    assert torch.equal(again[(0, 5)]["wav"], cached[(0, 5)]["wav"])
    # an entry a crash left empty or cut short is resampled again, not an error
    for damage in (b"", files[0].read_bytes()[:60]):
        for f in files:
            f.write_bytes(damage)
        fresh = AudioDataset(manifest, "train", SR, 1.0, cache_dir=tmp_path / "cache")
        assert all(torch.equal(fresh[k]["wav"], cached[k]["wav"]) for k in [0, (1, 2), (2, 11)])


def test_split_selection_from_config_and_errors(corpus, tmp_path):
    manifest, _ = corpus
    valid = AudioDataset.from_config(DataConfig(manifest=str(manifest), segment_seconds=0.5), "valid", SR, False)
    assert len(valid) == 1 and valid[0]["id"] == "val" and valid[0]["wav"].shape == (SR // 2,)
    with pytest.raises(EmptySplitError, match="'test' has no rows"):   # (a trainer goes on without it)
        AudioDataset(manifest, "test", SR, 1.0)
    assert issubclass(EmptySplitError, ManifestError)
    with pytest.raises(ValueError, match="data.manifest is empty"):
        AudioDataset.from_config(DataConfig(), "train", SR, True)
    with pytest.raises(IndexError):
        AudioDataset(manifest, "train", SR, 1.0)[3]
    # The same manifest twice: ids collide across manifests.
    with pytest.raises(ManifestError, match="ids must be unique"):
        AudioDataset([manifest, manifest], "train", SR, 1.0)


def test_dataloader_with_resumable_sampler_is_reproducible(corpus):
    from tta.training import ResumableSampler

    manifest, _ = corpus
    ds = AudioDataset(manifest, "train", SR, 0.5)

    def first_batches(n):
        loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=ResumableSampler(len(ds), seed=3))
        out = []
        for batch in loader:
            out.append(batch)
            if len(out) == n:
                return out

    a, b = first_batches(3), first_batches(3)
    for x, y in zip(a, b):
        assert torch.equal(x["wav"], y["wav"]) and x["caption"] == y["caption"]


@pytest.mark.parametrize("cache", [False, True], ids=["read", "cache_dir"])
def test_a_training_item_whose_file_is_gone_is_another_rows_drawn_from_its_seed(tmp_path, cache):
    """A file gone since the run began (its header was checked at the start) stopped training when drawn; with
    max_unreadable > 0 a training item of its row is another row's, drawn from the item's seed (the same every
    time), and names the row it skipped. An evaluation item (an index), and max_unreadable=0, raise as before;
    so does an item for which more rows fail than the dataset allows."""
    rows = []
    for i in range(7):
        sf.write(tmp_path / f"c{i}.wav", tone(200 + 100 * i, 1.0), SR)
        rows.append(_row(tmp_path / f"c{i}.wav", f"c{i}", 1.0, SR))
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    cache_dir = tmp_path / "cache" if cache else None
    ds = AudioDataset(manifest, "train", SR, 0.5, cache_dir=cache_dir, max_unreadable=0.01)
    strict = AudioDataset(manifest, "train", SR, 0.5, cache_dir=cache_dir)
    assert ds.unreadable_allowed == 3 and strict.unreadable_allowed == 0   # 3, fewer than half of 7
    before = ds[(2, 99)]
    (tmp_path / "c2.wav").unlink()
    item = ds[(2, 99)]
    why = f"{tmp_path / 'c2.wav'}: {'No such file or directory' if cache else 'file not found'}"
    assert item["unreadable"] == [(2, why)] and item["id"] != "c2" and item["index"] != 2
    again = ds[(2, 99)]
    assert (again["id"], again["caption"], again["unreadable"]) == (item["id"], item["caption"], item["unreadable"])
    assert torch.equal(again["wav"], item["wav"]) and not torch.equal(item["wav"], before["wav"])
    assert "unreadable" not in ds[(3, 99)]   # a readable row's item is as it was
    assert torch.equal(ds[(3, 99)]["wav"], strict[(3, 99)]["wav"])
    for key in (2, (2, 99)):
        with pytest.raises(OSError if cache else AudioError, match="c2.wav"):
            (ds if key == 2 else strict)[key]
    for i in range(7):
        (tmp_path / f"c{i}.wav").unlink(missing_ok=True)
    with pytest.raises(ManifestError, match=r"4 of split 'train''s 7 audio files could not be decoded when read, "
                                            r"more than the 3 data.max_unreadable=0.01 allows \(row c"):
        ds[(0, 5)]


@pytest.mark.parametrize("cache", [False, True], ids=["read", "cache_dir"])
def test_a_training_item_stops_on_the_machines_errors_instead_of_skipping_the_file(tmp_path, monkeypatch, cache):
    """Out of file descriptors or of memory, reading a file raised an AudioError ("not a readable audio file
    (System error)", "(MemoryError)"), so a training item with max_unreadable > 0 skipped the row as unreadable,
    drew others that failed the same way and stopped on "4 of split 'train''s 7 audio files could not be decoded
    when drawn"; the header check before a run listed every file as unreadable. They stop as the error they are,
    a MemoryError naming the file. A file whose header declares more samples than the machine's memory holds is
    the file's fault, skipped: since 05f32bc it stopped the run with data.cache_dir (which reads whole files) on
    numpy's "Unable to allocate 2.00 TiB", naming no file."""
    from tests.test_audio_bad_input import address_space_limited, out_of_file_descriptors, write_declaring_flac
    from tta.audio import physical_memory

    rows = []
    for i in range(7):
        sf.write(tmp_path / f"c{i}.flac", tone(200 + 100 * i, 1.0), SR)
        rows.append(_row(tmp_path / f"c{i}.flac", f"c{i}", 1.0, SR))
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    ds = AudioDataset(manifest, "train", SR, 0.5, cache_dir=tmp_path / "cache" if cache else None,
                      max_unreadable=0.01)
    expected = ds[(2, 99)]
    for check in (lambda: ds[(4, 99)], ds.check_audio):
        with out_of_file_descriptors(), pytest.raises(OSError) as caught:
            check()
        assert caught.value.errno == errno.EMFILE and not isinstance(caught.value, (AudioError, ManifestError))
    monkeypatch.setattr(sf.SoundFile, "read", lambda *args, **kwargs: np.empty(2**60, dtype=np.float32))
    with pytest.raises(MemoryError, match=f"^{re.escape(str(tmp_path / 'c4.flac'))}: out of memory reading it "):
        ds[(4, 99)]
    monkeypatch.undo()
    item = ds[(2, 99)]   # the machine's resources back: the row's own item
    assert "unreadable" not in item and torch.equal(item["wav"], expected["wav"])

    memory = physical_memory()
    if memory is None or memory >= (2**36 - 1) * 8 * 4:
        pytest.skip("this machine does not say its memory, or has more than 2 TiB")
    write_declaring_flac(tmp_path / "c4.flac", 2**36 - 1, channels=8)
    with address_space_limited():
        item = ds[(4, 99)]
    [(index, why)] = item["unreadable"]
    assert index == 4 and why.startswith(f"{tmp_path / 'c4.flac'}: not a readable audio file (")
    if cache:   # the whole file read: its array is what the header declares ("cannot seek" reading a part)
        assert "its header declares 68719476735 samples" in why and "more than this machine's" in why


def test_a_training_item_skips_a_file_that_decodes_to_nan_or_to_no_samples(tmp_path):
    """Not only a file cut short: one whose samples are NaN or inf (the header check does not decode), or one
    rewritten with no samples since the run began, is skipped as unreadable when drawn (with max_unreadable > 0,
    the default 0.01 of a run's config); with 0 it stops the run, as every such file did before."""
    rows = []
    for i in range(7):
        sf.write(tmp_path / f"c{i}.wav", tone(200 + 100 * i, 1.0), SR)
        rows.append(_row(tmp_path / f"c{i}.wav", f"c{i}", 1.0, SR))
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    ds = AudioDataset(manifest, "train", SR, 0.5, max_unreadable=DataConfig().max_unreadable)
    strict = AudioDataset(manifest, "train", SR, 0.5)
    sf.write(tmp_path / "c1.wav", np.full(SR, np.nan, dtype=np.float32), SR, subtype="FLOAT")
    sf.write(tmp_path / "c2.wav", np.zeros(0, dtype=np.float32), SR)
    for index, why in ((1, "contains non-finite samples (NaN or inf)"), (2, "contains 0 samples")):
        assert ds[(index, 5)]["unreadable"] == [(index, f"{tmp_path / f'c{index}.wav'}: {why}")]
        with pytest.raises(AudioError, match=re.escape(why)):
            strict[(index, 5)]


def test_the_two_errors_that_name_bad_rows_have_one_form(tmp_path):
    """The header check before a run and the stop once too many files failed to decode when read name the rows
    alike: how many of the split's, the first three with their manifest lines, then "; ..." for the rest."""
    rows = []
    for i in range(9):
        sf.write(tmp_path / f"c{i}.wav", tone(200 + 100 * i, 0.5), SR)
        rows.append(_row(tmp_path / f"c{i}.wav", f"c{i}", 0.5, SR))
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    ds = AudioDataset(manifest, "train", SR, 0.5, max_unreadable=0.01)
    for i in (1, 3, 4, 6):
        (tmp_path / f"c{i}.wav").unlink()
    with pytest.raises(ManifestError) as checked:
        ds.check_audio()
    drawn = str(ds.unreadable_error({i: f"{tmp_path / f'c{i}.wav'}: file not found" for i in (1, 3, 4, 6)}))
    shown = "; ".join(f"row c{i} at {manifest}:{i + 1}: {tmp_path / f'c{i}.wav'}: file not found" for i in (1, 3, 4))
    head = f"{manifest}: 4 of split 'train''s 9 audio files"
    assert str(checked.value) == (f"{head} cannot be read ({shown}; ...); `tta data check MANIFEST --drop-bad "
                                  "CLEAN.jsonl` writes a manifest without them")
    assert drawn == (f"{head} could not be decoded when read, more than the 3 data.max_unreadable=0.01 allows "
                     f"({shown}; ...); `tta data check MANIFEST --drop-bad CLEAN.jsonl` decodes every file and "
                     "writes a manifest without the bad ones")


def test_how_many_unreadable_files_a_run_may_skip():
    from tta.data.dataset import unreadable_allowed

    assert [unreadable_allowed(0.01, n) for n in (1, 2, 4, 6, 7, 300, 450, 10_000)] == [0, 0, 1, 2, 3, 3, 4, 100]
    assert unreadable_allowed(0, 10_000) == 0 and unreadable_allowed(0.5, 4) == 2
    assert unreadable_allowed(0.5, 6) == 3 and unreadable_allowed(0.5, 7) == 3   # half, at most
    # the fraction as written: floor(0.29 * 100) is 28 (0.29 * 100 == 28.999999999999996), floor(0.35 * 180) 62
    assert unreadable_allowed(0.29, 100) == 29 and unreadable_allowed(0.35, 180) == 63
    assert unreadable_allowed(np.float64(0.29), 100) == 29
    for value in (-0.1, 0.6):
        with pytest.raises(ValueError, match=f"data.max_unreadable={value} must be a fraction"):
            DataConfig(max_unreadable=value)
        with pytest.raises(ValueError, match=f"max_unreadable={value} must be a fraction"):
            AudioDataset("m.jsonl", "train", SR, 1.0, max_unreadable=value)


def test_bad_manifest_line_and_bad_audio_are_one_line_errors(tmp_path):
    good = {"id": "a", "path": "a.wav", "captions": ["x"], "seconds": 1.0, "sample_rate": SR}
    (tmp_path / "a.wav").write_text("not audio")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps(good) + "\n" + '{"id": "b", "path": "b.wav",\n')
    with pytest.raises(ManifestError, match=r"m.jsonl:2: broken JSON"):
        AudioDataset(manifest, "train", SR, 1.0)
    manifest.write_text(json.dumps(good) + "\n")
    ds = AudioDataset(manifest, "train", SR, 1.0)
    with pytest.raises(AudioError, match=r"a.wav: not a readable audio file"):
        ds[(0, 1)]


def _event_corpus(tmp_path):
    """A 0.25 s tone (category sfx), the same tone as speech, and a 2 s noise clip (sfx)."""
    sf.write(tmp_path / "bark.wav", tone(440, 0.25), SR)
    sf.write(tmp_path / "long.wav", noise(2.0), SR)
    rows = [
        ManifestRow(id="bark", path=str(tmp_path / "bark.wav"), captions=("a dog barks",), seconds=0.25,
                    sample_rate=SR, category="sfx"),
        ManifestRow(id="said", path=str(tmp_path / "bark.wav"), captions=("a man says bark",), seconds=0.25,
                    sample_rate=SR, category="speech"),
        ManifestRow(id="long", path=str(tmp_path / "long.wav"), captions=("noise",), seconds=2.0,
                    sample_rate=SR, category="sfx"),
    ]
    return write_manifest(tmp_path / "m.jsonl", rows)


def _runs(wav: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of the non-zero stretches of `wav`."""
    nz = np.concatenate([[0], (wav != 0).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(nz))
    return list(zip(edges[::2], edges[1::2]))


def test_short_training_clips_repeat_with_random_gaps_to_fill_the_segment(tmp_path):
    manifest = _event_corpus(tmp_path)
    data = DataConfig(manifest=str(manifest), segment_seconds=4.0, repeat_below=1.0, repeat_gap=(0.2, 0.6),
                      repeat_categories=("sfx",))
    ds = AudioDataset.from_config(data, "train", SR, random_crop=True)
    plain = AudioDataset(manifest, "train", SR, 4.0)
    event = plain[0]["wav"].numpy()[:SR // 4]
    item = ds[(0, 11)]
    wav = item["wav"].numpy()
    assert item["seconds"] == 4.0 and wav.shape == (4 * SR,)
    runs = _runs(wav)
    assert runs[0][0] == 0 and len(runs) >= 5       # 4 s of 0.25 s events with 0.2-0.6 s gaps: 5 to 9 copies
    for start, stop in runs[:-1]:                  # every whole copy is the clip itself
        np.testing.assert_array_equal(wav[start:start + SR // 4], event)
    gaps = [b[0] - a[0] - SR // 4 for a, b in itertools.pairwise(runs)]
    assert all(0.2 * SR - 2 <= g <= 0.6 * SR + 2 for g in gaps) and len(set(gaps)) > 1
    assert torch.equal(ds[(0, 11)]["wav"], item["wav"])                        # reproducible from the key
    assert not torch.equal(ds[(0, 12)]["wav"], item["wav"])                     # other seed, other gaps
    # Evaluation items, other categories and clips at least repeat_below long are left as they were.
    assert torch.equal(ds[0]["wav"], plain[0]["wav"]) and ds[0]["seconds"] == 0.25
    assert torch.equal(ds[(1, 11)]["wav"], plain[(1, 11)]["wav"]) and ds[(1, 11)]["seconds"] == 0.25
    assert torch.equal(ds[(2, 11)]["wav"], plain[(2, 11)]["wav"])
    # No category filter: the speech row repeats too.
    every = AudioDataset(manifest, "train", SR, 4.0, repeat_below=1.0)
    assert len(_runs(every[(1, 11)]["wav"].numpy())) >= 5


def _keyed_corpus(tmp_path, hz: float, seconds: float):
    """Three rows of one tone: "bark" (label dog, category sfx), "click" (category sfx), "said" (speech)."""
    sf.write(tmp_path / "bark.wav", tone(hz, seconds), SR)
    row = dict(path=str(tmp_path / "bark.wav"), captions=("a sound",), seconds=seconds, sample_rate=SR)
    return write_manifest(tmp_path / "m.jsonl", [
        ManifestRow(id="bark", labels=("dog",), category="sfx", **row),     # its label's entry wins
        ManifestRow(id="click", category="sfx", **row),                      # its category's entry
        ManifestRow(id="said", category="speech", **row)])                   # none


def test_a_label_or_category_can_have_its_own_repeat_gap(tmp_path):
    manifest = _keyed_corpus(tmp_path, 440, 0.25)
    data = DataConfig(manifest=str(manifest), segment_seconds=8.0, repeat_below=1.0, repeat_gap=(0.2, 0.6),
                      repeat_gap_by_key={"sfx": (1.0, 1.5), "dog": (2.0, 2.5)})
    ds = AudioDataset.from_config(data, "train", SR, random_crop=True)
    for index, (lo, hi) in enumerate(((2.0, 2.5), (1.0, 1.5), (0.2, 0.6))):
        for seed in range(4):
            runs = _runs(ds[(index, seed)]["wav"].numpy())
            gaps = [b[0] - a[0] - SR // 4 for a, b in itertools.pairwise(runs)]
            assert gaps and all(lo * SR - 2 <= g <= hi * SR + 2 for g in gaps), (index, gaps)


def _peak_hz(wav: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(wav.shape[0])))
    return float(np.argmax(spectrum)) * SR / wav.shape[0]


def test_a_speed_range_plays_its_rows_faster_or_slower(tmp_path):
    manifest = _keyed_corpus(tmp_path, 500, 0.5)
    base = DataConfig(manifest=str(manifest), segment_seconds=2.0)
    ds = AudioDataset.from_config(replace(base, speed_by_key={"dog": (2.0, 2.0), "sfx": (0.5, 0.5)}), "train",
                                  SR, random_crop=True)
    plain = AudioDataset.from_config(base, "train", SR, random_crop=True)
    for index, factor in ((0, 2.0), (1, 0.5)):
        item = ds[(index, 3)]
        assert item["seconds"] == pytest.approx(0.5 / factor, abs=2 / SR)       # tempo
        wav = item["wav"].numpy()[:round(item["seconds"] * SR)]
        assert _peak_hz(wav) == pytest.approx(500 * factor, abs=8)              # and pitch, together
        assert torch.equal(item["wav"], ds[(index, 3)]["wav"])                  # reproducible from the seed
        assert not torch.equal(item["wav"], plain[(index, 3)]["wav"])
    assert torch.equal(ds[(2, 3)]["wav"], plain[(2, 3)]["wav"])                 # a row without a range
    assert torch.equal(ds[0]["wav"], plain[0]["wav"])                           # evaluation items never change
    # a range draws a factor per item, log-uniformly inside it
    drawn = AudioDataset.from_config(replace(base, speed_by_key={"dog": (0.8, 1.25)}), "train", SR,
                                     random_crop=True)
    factors = [0.5 / drawn[(0, seed)]["seconds"] for seed in range(40)]
    assert 0.8 - 0.01 <= min(factors) < 0.9 and 1.25 + 0.01 >= max(factors) > 1.1
    assert 0.4 <= np.mean(np.array(factors) > 1.0) <= 0.6


def test_a_sped_up_short_clip_repeats_at_its_new_length(tmp_path):
    sf.write(tmp_path / "bark.wav", tone(500, 0.5), SR)
    rows = [ManifestRow(id="bark", path=str(tmp_path / "bark.wav"), captions=("a dog barks",), seconds=0.5,
                        sample_rate=SR, labels=("dog",), category="event")]
    data = DataConfig(manifest=str(write_manifest(tmp_path / "m.jsonl", rows)), segment_seconds=4.0,
                      repeat_below=1.0, repeat_gap=(0.5, 0.5), speed_by_key={"dog": (2.0, 2.0)})
    item = AudioDataset.from_config(data, "train", SR, random_crop=True)[(0, 1)]
    runs = _runs(item["wav"].numpy())
    assert [b - a for a, b in runs][:3] == pytest.approx([SR // 4] * 3, abs=4)   # 0.25 s copies
    assert [b[0] - a[0] for a, b in itertools.pairwise(runs)][:2] == pytest.approx([SR * 3 // 4] * 2, abs=4)


def test_a_caption_that_counts_one_event_is_not_repeated(tmp_path):
    sf.write(tmp_path / "bark.wav", tone(440, 0.25), SR)
    captions = ("a dog barks", "a dog barking Once", "a single dog bark", "one dog barks")
    rows = [ManifestRow(id="bark", path=str(tmp_path / "bark.wav"), seconds=0.25, sample_rate=SR,
                        category="event", captions=captions)]
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    ds = AudioDataset(manifest, "train", SR, 2.0, repeat_below=1.0)
    counted = {}
    for seed in range(40):
        item = ds[(0, seed)]
        counted.setdefault(item["caption"], set()).add(len(_runs(item["wav"].numpy())))
    assert min(counted["a dog barks"]) > 1                # 2 s of a 0.25 s event after 0.2-1 s gaps: 2 to 5 copies
    assert counted["a dog barking Once"] == counted["a single dog bark"] == {1}
    assert min(counted["one dog barks"]) > 1              # only the listed words: "once", "single"
    every = AudioDataset(manifest, "train", SR, 2.0, repeat_below=1.0, repeat_skip_words=())
    assert all(len(_runs(every[(0, seed)]["wav"].numpy())) > 1 for seed in range(10))


@pytest.mark.parametrize("field, value, message", [
    ("repeat_below", -1.0, "data.repeat_below=-1.0 must be a finite number of seconds"),
    ("repeat_gap", (0.5, 0.1), r"data.repeat_gap=\[0.5, 0.1\] must be \[min, max\] seconds"),
    ("repeat_gap_by_key", {"event": (-1.0, 2.0)},
     r"data.repeat_gap_by_key\['event'\]=\[-1.0, 2.0\] must be \[min, max\] seconds"),
    ("speed_by_key", {"dog": (0.0, 1.2)}, r"data.speed_by_key\['dog'\]=\[0.0, 1.2\] must be \[min, max\] speed"),
    ("speed_by_key", {"dog": (1.2, 0.8)}, r"data.speed_by_key\['dog'\]=\[1.2, 0.8\] must be \[min, max\] speed"),
])
def test_repeat_settings_are_checked(field, value, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**{field: value})


def test_audio_files_gone_since_the_manifest_was_written_are_named_up_front(corpus, tmp_path):
    """A deleted file stopped a training run at its first draw (step 5 of 20), and every --resume with it."""
    manifest, _ = corpus
    (tmp_path / "short.wav").unlink()
    with pytest.raises(ManifestError, match=r"1 of split 'train''s audio files are missing \(rows short\); "
                                            r"`tta data check MANIFEST --drop-bad") as e:
        AudioDataset(manifest, "train", SR, 1.0)
    assert not isinstance(e.value, EmptySplitError)   # (a trainer stops on it, as for a missing valid file)
    assert len(AudioDataset(manifest, "valid", SR, 1.0)) == 1     # the other split is whole


def test_empty_clips_are_named_up_front(corpus, tmp_path):
    """A row of 0 seconds (an empty file; a hand-written manifest's, import skips them) stopped a training run
    with "contains 0 samples" when it was first drawn, which on a large corpus can be hours in."""
    manifest, _ = corpus
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), SR)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows.append(dict(rows[1], id="empty", path="empty.wav", seconds=0.0))
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ManifestError, match=r"1 of split 'train''s rows have 0 seconds of audio \(rows empty\); "
                                            r"`tta data check MANIFEST --drop-bad"):
        AudioDataset(manifest, "train", SR, 1.0)
    assert len(AudioDataset(manifest, "valid", SR, 1.0)) == 1     # the other split is whole


def test_unreadable_audio_files_are_named_with_their_manifest_lines(corpus, tmp_path):
    """A row whose file is not audio or was cut short (its row says > 0 seconds) stopped a training run only when
    it was first drawn (step 27 of 40 on a 60-row manifest), maybe hours in. check_audio reads every header
    and names the first three bad rows with their manifest lines, and how many there are."""
    manifest, _ = corpus
    ds = AudioDataset(manifest, "train", SR, 1.0)
    assert ds.unreadable_rows() == [] and ds.check_audio() is None
    (tmp_path / "text.wav").write_text("not audio\n" * 50)
    sf.write(tmp_path / "cut.wav", tone(440, 1.0), SR)
    (tmp_path / "cut.wav").write_bytes((tmp_path / "cut.wav").read_bytes()[:3000])   # header says 1 s
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows[1:1] = [dict(rows[1], id="text", path="text.wav", seconds=1.0),
                 dict(rows[1], id="cut", path="cut.wav", seconds=1.0)]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = AudioDataset(manifest, "train", SR, 1.0)      # every file is there: the up-front checks pass
    assert [i for i, _ in ds.unreadable_rows()] == [1, 2]
    with pytest.raises(ManifestError) as e:
        ds.check_audio()
    message = str(e.value)
    assert message.startswith(f"{manifest}: 2 of split 'train''s 5 audio files cannot be read (row text at "
                              f"{manifest}:2: {tmp_path / 'text.wav'}: not a readable audio file (Format not "
                              f"recognised); row cut at {manifest}:3: {tmp_path / 'cut.wav'}: truncated file (header")
    assert message.endswith("); `tta data check MANIFEST --drop-bad CLEAN.jsonl` writes a manifest without them")
    assert "\n" not in message
    AudioDataset(manifest, "valid", SR, 1.0).check_audio()    # the other split is whole
    (tmp_path / "riff.wav").write_bytes(b"RIFF" + bytes(60))
    sf.write(tmp_path / "cut.ogg", tone(440, 1.0), SR, format="OGG", subtype="VORBIS")
    ogg = (tmp_path / "cut.ogg").read_bytes()
    (tmp_path / "cut.ogg").write_bytes(ogg[:len(ogg) * 4 // 5])    # its header then says 0 samples
    rows += [dict(rows[1], id="riff", path="riff.wav", seconds=1.0), dict(rows[1], id="ogg", path="cut.ogg")]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = AudioDataset(manifest, "train", SR, 1.0)
    assert ds.unreadable_rows()[3] == (6, f"{tmp_path / 'cut.ogg'}: contains 0 samples")
    with pytest.raises(ManifestError, match=r": 4 of split 'train''s 7 audio files cannot be read \(row text .*"
                                            r"; row riff at .*:7: .*; \.\.\.\); `tta data check"):
        ds.check_audio()


def test_unreadable_rows_of_several_manifests_name_the_lines_read_without_reading_them_again(corpus, tmp_path):
    """check_audio names each bad row's manifest and line as the dataset read them: it re-read and re-parsed the
    whole manifest for each row it named (and failed on FileNotFoundError when the manifest had gone since), and
    kept a Path per row for it (200 MB per million rows, copied into every DataLoader worker)."""
    manifest, _ = corpus
    (tmp_path / "text.wav").write_text("not audio\n" * 50)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    extra = tmp_path / "extra.jsonl"
    extra.write_text("\n" + json.dumps(dict(rows[3], id="v2", path="val.wav")) + "\n\n"    # blank lines count
                     + json.dumps(dict(rows[1], id="t\u00e9xt", path="text.wav", seconds=1.0)) + "\n")
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows[:2])
                        + json.dumps(dict(rows[1], id="bad", path="text.wav", seconds=1.0)) + "\n"
                        + "".join(json.dumps(r) + "\n" for r in rows[2:]))
    ds = AudioDataset([manifest, extra], "train", SR, 1.0)
    assert [ds.rows[i].id for i, _ in ds.unreadable_rows()] == ["bad", "t\u00e9xt"]
    manifest.unlink()
    extra.unlink()   # gone since the dataset was made: its rows' lines are still known
    with pytest.raises(ManifestError) as e:
        ds.check_audio()
    assert (f"(row bad at {manifest}:3: {tmp_path / 'text.wav'}: not a readable audio file (Format not "
            f"recognised); row t\u00e9xt at {extra}:4: {tmp_path / 'text.wav'}: not a readable") in str(e.value)
    assert str(e.value).startswith(f"{manifest}, {extra}: 2 of split 'train''s 5 audio files cannot be read")


def test_numbers_given_in_python_are_checked_and_numpy_numbers_taken(corpus):
    """AudioDataset(M, "train", "16000", 1.0) failed on "can't multiply sequence by non-int of type 'float'",
    segment_seconds="1.0" on "'<=' not supported", and repeat_below="0.5" was read with float(). The sample
    rate is checked as load_audio checks it: 10**400 failed on "int too large to convert to float", and 2**40
    was taken (each item then resampled until memory ran out)."""
    manifest, _ = corpus
    for args, kwargs, match in ((("16000", 1.0), {}, r"sample_rate='16000': expected a positive integer"),
                                ((SR, "1.0"), {}, "segment_seconds='1.0' must be a finite number"),
                                ((0, 1.0), {}, r"sample_rate=0: expected a positive integer \(Hz\)"),
                                ((10**400, 1.0), {}, r"sample_rate=1000\d+\.\.\.: expected at most 192000"),
                                ((2**40, 1.0), {}, "sample_rate=1099511627776: expected at most 192000 Hz"),
                                ((SR, 1.0), {"repeat_below": "0.5"}, "repeat_below='0.5' must be a finite number"),
                                ((SR, 1.0), {"repeat_gap": (0.2, "1")}, r"repeat_gap\[1\]='1' must be a finite"),
                                ((SR, 1.0), {"repeat_gap": 0.2}, r"repeat_gap=0.2 must be a pair of numbers"),
                                ((SR, 1.0), {"speed_by_key": {"dog": ("0.8", 1.2)}},
                                 r"speed_by_key\['dog'\]\[0\]='0.8' must be")):
        with pytest.raises(ValueError, match=match):
            AudioDataset(manifest, "train", *args, **kwargs)
    a = AudioDataset(manifest, "train", np.int64(SR), np.float32(1.0), normalize=False, random_crop=False)
    b = AudioDataset(manifest, "train", SR, 1.0, normalize=False, random_crop=False)
    assert a.segment_samples == b.segment_samples == SR and type(a.sample_rate) is int
    assert torch.equal(a[0]["wav"], b[0]["wav"])
