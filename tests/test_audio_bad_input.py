"""tta.audio.load_audio / audio_info on the bad and unusual files of the issue's list.

Bad files must raise AudioError (a ValueError) whose one-line message names the file and the problem;
good files in any format / channel count / rate / sample type must load as mono float32 at the asked rate
with the right content (the dominant frequency of a test tone survives the trip).
"""

from __future__ import annotations

import contextlib
import errno
import os

import numpy as np
import pytest
import soundfile as sf

from tests.signals import tone
from tta.audio import AudioError, audio_info, load_audio, physical_memory
from tta.config import shortened

FREQ = 440.0


def _dominant_hz(wav: np.ndarray, sample_rate: int) -> float:
    spec = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return float(np.fft.rfftfreq(len(wav), 1 / sample_rate)[np.argmax(spec)])


def _write_truncated(path):
    sf.write(path, tone(FREQ, 1.0), 16_000)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _write_nonfinite(value):
    def write(path):
        x = tone(FREQ, 0.5)
        x[100] = value
        sf.write(path, x, 16_000, subtype="FLOAT")
    return write


BAD = {
    "missing.wav": (None, "file not found"),
    "zero_bytes.wav": (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    "text.wav": (lambda p: p.write_text("this is a text file, not audio\n" * 20), "not a readable audio file"),
    "truncated.wav": (_write_truncated, "truncated"),
    "nan.wav": (_write_nonfinite(np.nan), "non-finite"),
    "inf.wav": (_write_nonfinite(np.inf), "non-finite"),
    "no_samples.wav": (lambda p: sf.write(p, np.zeros((0, 1), np.float32), 16_000), "0 samples"),
    "folder.wav": (lambda p: p.mkdir(), "is a directory"),
    "dead_link.wav": (lambda p: os.symlink(p.parent / "gone.wav", p), "file not found (a symbolic link to"),
    "link_loop.wav": (lambda p: os.symlink(p.name, p), "file not found (a symbolic link to link_loop.wav"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_file_raises_one_line_error_naming_it(tmp_path, name):
    make, expected = BAD[name]
    path = tmp_path / name
    if make is not None:
        make(path)
    with pytest.raises(AudioError) as info:
        load_audio(path, 16_000)
    message = str(info.value)
    assert str(path) in message and expected in message
    assert "\n" not in message
    assert isinstance(info.value, ValueError)


def test_a_file_that_is_not_audio_is_named_once_with_libsndfiles_reason(tmp_path):
    """The reason repeated the path as a Python bytes literal: "x.wav: not a readable audio file (cannot open
    b'/.../x.wav': Format not recognised.)"."""
    path = tmp_path / "notes.ogg"
    path.write_text("not audio\n" * 20)
    for read in (audio_info, load_audio):
        with pytest.raises(AudioError) as info:
            read(path)
        assert str(info.value) == f"{path}: not a readable audio file (Format not recognised)"


def test_truncated_compressed_stream_is_an_error(tmp_path):
    # mp3 decodes a cut file without complaint; the length check must catch the shortfall.
    path = tmp_path / "cut.mp3"
    sf.write(path, tone(FREQ, 2.0), 16_000, format="MP3", subtype="MPEG_LAYER_III")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match="truncated|not a readable"):
        load_audio(path)


def test_a_flac_cut_short_behind_a_whole_header_says_so_where_a_read_seeks_past_the_cut(tmp_path):
    """audio_info passes it (the header says 2 s); a crop from the lost part failed on libsndfile's "Internal
    psf_fseek() failed" alone."""
    path = tmp_path / "cut.flac"
    sf.write(path, tone(FREQ, 2.0), 16_000)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 4])
    assert audio_info(path).num_samples == 32_000
    assert load_audio(path, start_seconds=0.1, max_seconds=0.1)[0].shape == (1600,)   # before the cut: read
    with pytest.raises(AudioError) as info:
        load_audio(path, start_seconds=1.5, max_seconds=0.1)
    assert str(info.value).startswith(f"{path}: not a readable audio file (cannot seek to sample 24000 of the 32000 "
                                      "its header declares: cut short or damaged; ")


@contextlib.contextmanager
def out_of_file_descriptors():
    """Every file descriptor this process may open taken (its limit lowered to a few more than it has open, then
    those opened), until the block ends. It gives the list of those taken: one closed (and removed) is free."""
    resource = pytest.importorskip("resource")
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("no /proc/self/fd to count the open file descriptors")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(len(os.listdir("/proc/self/fd")) + 16, soft), hard))
    held = []
    try:
        while True:
            try:
                held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as e:
                assert e.errno == errno.EMFILE, e
                break
        yield held
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def address_space_limited(headroom: int = 2**30):
    """This process's address space (RLIMIT_AS) limited to `headroom` bytes more than it has mapped, until the
    block ends: a larger array cannot be allocated, on a machine that overcommits memory too."""
    resource = pytest.importorskip("resource")
    if not os.path.isfile("/proc/self/statm"):
        pytest.skip("no /proc/self/statm to measure the address space")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = mapped + headroom if hard == resource.RLIM_INFINITY else min(mapped + headroom, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def write_declaring_flac(path, frames: int, channels: int = 1) -> None:
    """A 0.1 s FLAC at 16 kHz whose header (STREAMINFO's total samples, 36 bits) declares `frames` samples."""
    sf.write(path, np.zeros((1600, channels), dtype=np.float32), 16_000)
    data = bytearray(path.read_bytes())
    at = 8 + 13   # "fLaC", the block's 4-byte header, then STREAMINFO: its 14th byte's low 4 bits begin the count
    data[at] = (data[at] & 0xF0) | (frames >> 32)
    data[at + 1:at + 5] = (frames & 0xFFFFFFFF).to_bytes(4, "big")
    path.write_bytes(bytes(data))


def test_the_machines_errors_are_not_blamed_on_the_file(tmp_path, monkeypatch):
    """Out of file descriptors, audio_info and load_audio said "not a readable audio file (System error)" and
    out of memory "not a readable audio file (MemoryError)": an AudioError, the file's fault, so a training run
    skipped the file and `tta data check --drop-bad` dropped it. They stop as the OSError (naming the file) or
    MemoryError (its message naming the file) they are; a file that does not decode is still an AudioError."""
    path = tmp_path / "a.flac"
    sf.write(path, tone(FREQ, 1.0), 16_000)
    for read in (audio_info, load_audio):
        with out_of_file_descriptors(), pytest.raises(OSError) as caught:
            read(path)
        assert not isinstance(caught.value, AudioError)
        assert (caught.value.errno, caught.value.strerror, caught.value.filename) == (
            errno.EMFILE, os.strerror(errno.EMFILE), str(path))
    assert load_audio(path)[0].shape == (16_000,)   # the descriptors back: it reads

    def no_memory(*args, **kwargs):   # numpy's allocation of the samples failing
        raise MemoryError("Unable to allocate 7.63 GiB for an array with shape (2048000000, 1)")

    monkeypatch.setattr(sf.SoundFile, "read", no_memory)
    with pytest.raises(MemoryError) as caught:
        load_audio(path)
    assert str(caught.value) == (f"{path}: out of memory reading it (Unable to allocate 7.63 GiB for an array with "
                                 "shape (2048000000, 1))")
    (tmp_path / "b.flac").write_bytes(path.read_bytes()[:60])   # the header alone: still the file's fault
    monkeypatch.undo()
    with pytest.raises(AudioError, match="b.flac: not a readable audio file"):
        load_audio(tmp_path / "b.flac")


def test_descriptors_freed_before_the_second_open_read_the_file_instead_of_blaming_it(tmp_path, monkeypatch):
    """On libsndfile's bare "System error" (out of file descriptors) the file is opened once more to learn why;
    when descriptors were freed in between (another thread closed a file), that open succeeded and the file was
    blamed: "a.flac: not a readable audio file (System error)", an AudioError a training run skips the row on
    and `tta data check --drop-bad` drops it for. The file is read from that open file instead: a good one loads
    (as it does with the descriptors back), a text file is the file's fault for what libsndfile says of it."""
    import tta.audio

    path, text = tmp_path / "a.flac", tmp_path / "text.flac"
    sf.write(path, tone(FREQ, 1.0), 16_000)
    text.write_text("hello, not audio")
    expected, expected_info = load_audio(path)[0], audio_info(path)
    with pytest.raises(AudioError) as caught:
        load_audio(text)
    not_audio = str(caught.value)
    assert "System error" not in not_audio
    for read in (audio_info, load_audio):
        for name in (path, text):
            with out_of_file_descriptors() as held:
                opened = []

                def free_one_then_open(*args, **kwargs):   # a descriptor freed between the two opens
                    os.close(held.pop())
                    opened.append(args[0])
                    return open(*args, **kwargs)

                monkeypatch.setattr(tta.audio, "open", free_one_then_open, raising=False)
                if name == text:
                    with pytest.raises(AudioError) as caught:
                        read(name)
                    assert str(caught.value) == not_audio
                elif read is audio_info:
                    assert read(name) == expected_info
                else:
                    assert np.array_equal(read(name)[0], expected)
                monkeypatch.undo()
            assert opened == [name]   # libsndfile's open failed, the second succeeded


def test_a_header_declaring_more_samples_than_memory_holds_is_the_files_fault(tmp_path):
    """A FLAC whose header declares 2**36 - 1 samples (8 channels: 2 TiB as float32): soundfile sizes its array
    from the header, and numpy cannot allocate it on any machine. Since 05f32bc every MemoryError was the
    machine's, so `tta data check` stopped on "tta: error: Unable to allocate 2.00 TiB ..." naming no file (and
    --drop-bad could not drop it); it is an AudioError saying what the header declares. A header that declares
    less than the machine's memory, its array not allocated here (the address space limited), is the machine's:
    a MemoryError naming the file."""
    huge, large = tmp_path / "huge.flac", tmp_path / "large.flac"
    write_declaring_flac(huge, 2**36 - 1, channels=8)
    memory = physical_memory()
    if memory is None or memory >= (2**36 - 1) * 8 * 4:
        pytest.skip("this machine does not say its memory, or has more than 2 TiB")
    with address_space_limited(), pytest.raises(AudioError) as caught:
        load_audio(huge)
    assert str(caught.value) == (
        f"{huge}: not a readable audio file (its header declares 68719476735 samples (4294967 seconds at 16000 Hz) "
        f"of 8 channels to read: 2048.0 GiB as float32, more than this machine's {memory / 2**30:.1f} GiB of "
        "memory; damaged)")
    assert audio_info(huge).num_samples == 2**36 - 1   # the header alone is read
    with pytest.raises(AudioError, match="huge.flac: not a readable audio file .cannot seek"):
        load_audio(huge, start_seconds=1.0, max_seconds=0.5)   # a part: its array is small, the seek fails

    write_declaring_flac(large, 2**28)   # 1 GiB as float32
    with address_space_limited(2**28), pytest.raises(MemoryError) as caught:
        load_audio(large)
    assert str(caught.value).startswith(f"{large}: out of memory reading it (Unable to allocate 1.00 GiB")
    assert not isinstance(caught.value, AudioError)


def test_audio_info_sees_truncated_wav_and_text_file(tmp_path):
    cut, text = tmp_path / "cut.wav", tmp_path / "text.wav"
    _write_truncated(cut)
    text.write_text("hello")
    with pytest.raises(AudioError, match="truncated"):
        audio_info(cut)
    with pytest.raises(AudioError, match="not a readable audio file"):
        audio_info(text)


GOOD = {  # name: (sample_rate, channels, format, subtype)
    "six_channels.wav": (16_000, 6, "WAV", "PCM_16"),
    "rate_8k.wav": (8_000, 1, "WAV", "PCM_16"),
    "rate_96k.wav": (96_000, 1, "WAV", "PCM_16"),
    "pcm24.wav": (44_100, 2, "WAV", "PCM_24"),
    "int32.wav": (22_050, 1, "WAV", "PCM_32"),
    "float.wav": (16_000, 1, "WAV", "FLOAT"),
    "lossless.flac": (48_000, 2, "FLAC", "PCM_16"),
    "vorbis.ogg": (44_100, 1, "OGG", "VORBIS"),
    "opus.opus": (48_000, 1, "OGG", "OPUS"),
    "layer3.mp3": (44_100, 2, "MP3", "MPEG_LAYER_III"),
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_file_loads_mono_at_requested_rate(tmp_path, name):
    sr, channels, fmt, subtype = GOOD[name]
    seconds = 0.5
    x = tone(FREQ, seconds, sr, amplitude=0.4)
    data = np.stack([x * (0.5 + 0.1 * c) for c in range(channels)], axis=1)
    path = tmp_path / name
    sf.write(path, data, sr, format=fmt, subtype=subtype)

    info = audio_info(path)
    assert (info.sample_rate, info.channels) == (sr, channels)

    wav, out_sr = load_audio(path, 16_000)
    assert out_sr == 16_000 and wav.ndim == 1 and wav.dtype == np.float32
    # Lossy codecs add priming/padding samples: allow 60 ms.
    assert abs(len(wav) - seconds * 16_000) <= 0.06 * 16_000
    assert abs(_dominant_hz(wav, 16_000) - FREQ) < 5
    assert np.isfinite(wav).all() and 0.05 < np.max(np.abs(wav)) <= 1.0

    _native, native_sr = load_audio(path)
    assert native_sr == sr


def test_partial_read_equals_slice_of_full_read(tmp_path):
    path = tmp_path / "long.flac"
    sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, 48_000).astype(np.float32), 16_000)
    full, _ = load_audio(path)
    part, _ = load_audio(path, start_seconds=1.25, max_seconds=0.5)
    np.testing.assert_array_equal(part, full[20_000:28_000])


def test_normalize_removes_dc_and_sets_peak(tmp_path):
    path = tmp_path / "dc.wav"
    sf.write(path, tone(FREQ, 0.5, amplitude=0.2) + 0.3, 16_000, subtype="FLOAT")
    wav, _ = load_audio(path, normalize=True)
    assert abs(float(wav.mean())) < 1e-3
    assert np.max(np.abs(wav)) == pytest.approx(0.5, abs=1e-6)


def test_audio_info_refuses_the_sample_rates_load_audio_refuses(tmp_path):
    """What an importer probes with audio_info must load: a 4 kHz file was imported, then failed in training."""
    path = tmp_path / "lo.wav"
    sf.write(path, tone(300, 0.5, 4000), 4000)
    for read in (audio_info, load_audio):
        with pytest.raises(AudioError, match="sample rate 4000 Hz is outside the supported"):
            read(path)


def test_a_file_name_that_is_not_utf8_is_read_and_written(tmp_path):
    """soundfile encodes a str path strictly as UTF-8: a file named with a latin-1 byte (Python gives it a
    surrogate) was "not a readable audio file" to every command, and could not be written."""
    import os

    from tta.audio import save_audio

    path = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.wav")
    save_audio(path, tone(440, 0.1), 16_000)
    assert audio_info(path).num_samples == 1600
    wav, sr = load_audio(path)
    assert sr == 16_000 and wav.shape == (1600,)


def test_integer_pcm_arrays_are_refused_not_read_as_huge_floats(tmp_path):
    """save_audio and the FAD embedders cast int16 arrays to float and went on: a file with 84 % of its samples
    at full scale, an MFCC embedding off by up to 74."""
    from eval.embedders import get_embedder
    from tta.audio import save_audio

    pcm = (tone(440, 0.2) * 30_000).astype(np.int16)
    with pytest.raises(AudioError, match="expected float samples in \\[-1, 1\\], got dtype int16"):
        save_audio(tmp_path / "x.wav", pcm, 16_000)
    assert not (tmp_path / "x.wav").exists()
    with pytest.raises(AudioError, match="got dtype int16"):
        get_embedder("mfcc").embed(pcm, 16_000)


def test_load_and_save_arguments_are_checked_not_blamed_on_the_file(tmp_path):
    """start_seconds=-1 said the file was not readable (psf_fseek), max_seconds=-1 read the whole file, and a
    float or zero sample rate reached libsndfile."""
    from tta.audio import save_audio

    sf.write(tmp_path / "a.wav", tone(440, 0.2), 16_000)
    with pytest.raises(ValueError, match="start_seconds=-1"):
        load_audio(tmp_path / "a.wav", start_seconds=-1)
    with pytest.raises(ValueError, match="max_seconds=-1"):
        load_audio(tmp_path / "a.wav", max_seconds=-1)
    for rate in (48_000.5, 0):
        with pytest.raises(AudioError, match="expected a positive integer"):
            save_audio(tmp_path / "b.wav", tone(440, 0.2), rate)
    assert not (tmp_path / "b.wav").exists()


def test_one_sample_rate_rule_for_load_save_and_the_embedders(tmp_path):
    """save_audio refused 16000.0, which load_audio takes (a rate read back from a config may be a float), and
    the eval embedders and the CLAP named a bad rate in words of their own: one rule and one message now."""
    from eval.embedders import get_embedder
    from tests.test_ldm_fixtures import tiny_model_config
    from tta.audio import save_audio
    from tta.clap.model import ClapConfig, TTAClap, TTAClapEmbedder

    save_audio(tmp_path / "int.wav", tone(440, 0.2), 16_000)
    save_audio(tmp_path / "float.wav", tone(440, 0.2), 16_000.0)
    assert (tmp_path / "int.wav").read_bytes() == (tmp_path / "float.wav").read_bytes()
    clap = TTAClapEmbedder(TTAClap(tiny_model_config(ClapConfig, "clap")), cache_dir=tmp_path / "cache")
    wav = tone(440, 1.0)
    first = clap.embed_audio(wav, 16_000)
    np.testing.assert_array_equal(clap.embed_audio(wav, 16_000.0), first)
    assert clap.cache.hits == 1          # one rate, one cache key
    none = ", or None for the file's own"
    checks = ((lambda r: load_audio(tmp_path / "int.wav", r), ValueError, "load_audio sample_rate", none),
              (lambda r: save_audio(tmp_path / "b.wav", wav, r), AudioError, f"{tmp_path / 'b.wav'}: sample_rate", ""),
              (lambda r: get_embedder("mfcc").embed(wav, r), ValueError, "mfcc: sample_rate", ""),
              (lambda r: clap.embed_audio(wav, r), ValueError, "embed_audio sample_rate", ""))
    for call, error, what, also in checks:
        for rate in (16_000.5, 0, -16_000, "16000", True, float("nan")):
            with pytest.raises(error) as e:
                call(rate)
            assert str(e.value) == f"{what}={rate!r}: expected a positive integer (Hz){also}"
    assert not (tmp_path / "b.wav").exists()


def test_load_audio_checks_its_sample_rate_and_takes_numpy_numbers(tmp_path):
    """sample_rate=0 or -16000 failed in soxr ("Sample rate should be over 0"), "16000" on a str comparison,
    16000.5 came back as the returned rate (a float save_audio refuses); max_seconds=inf was blamed on the file
    ("not a readable audio file (cannot convert float infinity to integer)"), and np.float32(0.1) seconds were
    refused as if not a finite number >= 0."""
    sf.write(tmp_path / "a.wav", tone(440, 0.5), 22_050)
    for rate in (0, -16_000, "16000", 16_000.5, True):
        with pytest.raises(ValueError, match=rf"load_audio sample_rate={rate!r}: expected a positive integer"):
            load_audio(tmp_path / "a.wav", rate)
    with pytest.raises(ValueError, match="max_seconds=inf: expected a finite number > 0"):
        load_audio(tmp_path / "a.wav", max_seconds=float("inf"))
    wav, sr = load_audio(tmp_path / "a.wav", np.int64(16_000), start_seconds=np.float32(0.1),
                         max_seconds=np.float32(0.2))
    assert type(sr) is int and sr == 16_000 and wav.shape == (3200,)
    wav, sr = load_audio(tmp_path / "a.wav", 16_000.0, max_seconds=0.2)   # an integral float, as configs take it
    assert type(sr) is int and sr == 16_000 and wav.shape == (3200,)


def test_a_sample_rate_above_the_readable_range_is_refused_before_any_work(tmp_path):
    """save_audio(p, wav, 2**40) failed in libsndfile's wrapper with "integer 1099511627776 does not fit
    'int'" (an OverflowError naming no file), load_audio(p, 2**40) resampled until memory ran out, and 10**400
    was told it was no positive integer. A rate is an int by the rule of a config's ints, of at most 192 kHz."""
    from tta.audio import MAX_SAMPLE_RATE, save_audio

    wav = tone(440, 0.01)
    for rate in (2**40, np.int64(2**40), 10**400, MAX_SAMPLE_RATE + 1, 1e300):
        with pytest.raises(AudioError) as e:
            save_audio(tmp_path / "b.wav", wav, rate)
        shown = shortened(repr(rate))
        assert str(e.value) == f"{tmp_path / 'b.wav'}: sample_rate={shown}: expected at most 192000 Hz"
        with pytest.raises(ValueError, match=r"^load_audio sample_rate=\S+: expected at most 192000 Hz, or"):
            load_audio(tmp_path / "b.wav", rate)   # refused before the file is looked for
    assert not (tmp_path / "b.wav").exists()
    save_audio(tmp_path / "b.wav", wav, np.uint32(MAX_SAMPLE_RATE))   # the top of the range is in it
    assert sf.info(tmp_path / "b.wav").samplerate == MAX_SAMPLE_RATE
    assert load_audio(tmp_path / "b.wav", np.int64(MAX_SAMPLE_RATE))[1] == MAX_SAMPLE_RATE


def test_integer_files_hold_the_nearest_step_and_pcm16_reading_uses_that_grid(tmp_path):
    """libsndfile writes a float sample into an integer WAV as the integer below it (floor(x * 32768) at 16
    bits; 24 and 8 bits too): half a step low on average (a DC offset), and a sample a hair under 0 came out
    -1, so near-silence written as 16-bit turned into rounding noise. save_audio rounds to the nearest step, for
    FLAC too (which rounded already), and load_audio(pcm16=True) reads a float file on that grid."""
    from tta.audio import save_audio

    rng = np.random.default_rng(0)
    edges = [0.49 / 32768, -0.49 / 32768, 0.51 / 32768, -0.51 / 32768, -1e-7, 1e-7, 1.0, -1.0, 1.5, -1.5]
    wav = np.concatenate([rng.uniform(-1, 1, 20_000), edges]).astype(np.float32)
    for suffix, subtype, bits in ((".wav", "PCM_16", 16), (".flac", "PCM_16", 16), (".wav", "PCM_24", 24),
                                  (".flac", "PCM_24", 24), (".wav", "PCM_U8", 8)):
        path = save_audio(tmp_path / f"{subtype}{suffix}", wav, 16_000, subtype)
        got = sf.read(path, dtype="int32")[0].astype(np.int64) >> (32 - bits)
        top = 2 ** (bits - 1)
        scaled = np.clip(wav, -1, 1).astype(np.float64) * top
        np.testing.assert_array_equal(got, np.clip(np.rint(scaled), -top, top - 1), err_msg=path.name)
        assert abs(float(np.mean(got[:20_000] - scaled[:20_000]))) < 0.01, path.name   # floor: -0.5
    assert list(sf.read(tmp_path / "PCM_16.wav", dtype="int16")[0][-10:]) == [0, 0, 1, -1, 0, 0, 32767, -32768,
                                                                                32767, -32768]
    sf.write(tmp_path / "float.wav", wav, 16_000, subtype="FLOAT")   # scores as save_audio's 16-bit copy
    np.testing.assert_array_equal(load_audio(tmp_path / "float.wav", pcm16=True)[0],
                                  load_audio(tmp_path / "PCM_16.wav")[0])


def _ogg_crc_bit_by_bit(data: bytes) -> int:
    """Ogg's page CRC as RFC 3533 defines it, one bit at a time (polynomial 0x04C11DB7, not reflected, initial
    value 0, no final xor): a check of tta.audio's table-driven one."""
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1) & 0xFFFFFFFF
    return crc


def _ogg_page_fields(data: bytes) -> list[tuple[bytes, int, int]]:
    """(serial number, stored CRC, CRC of the page with its CRC field zeroed) of each page; asserts that the
    bytes are whole pages."""
    out, start = [], 0
    while start < len(data):
        assert data[start:start + 4] == b"OggS", start
        segments = data[start + 27:start + 27 + data[start + 26]]
        end = start + 27 + len(segments) + sum(segments)
        assert end <= len(data), start
        page = bytearray(data[start:end])
        stored = int.from_bytes(page[22:26], "little")
        page[22:26] = bytes(4)
        out.append((bytes(page[14:18]), stored, _ogg_crc_bit_by_bit(bytes(page))))
        start = end
    return out


@pytest.mark.parametrize("subtype", [s for s in ("VORBIS", "OPUS") if s in sf.available_subtypes("OGG")])
def test_an_ogg_file_holds_the_same_bytes_for_the_same_audio(tmp_path, subtype):
    """libsndfile draws an Ogg stream's serial number at random, so the same audio written twice gave two files
    (the serial in every page header, and so every page's CRC); save_audio draws it from the content. The
    samples decode as libsndfile's own file of them does, and every page's CRC is valid."""
    import io

    from tests.signals import noise
    from tta.audio import save_audio

    wav = tone(FREQ, 1.0) + noise(1.0, amplitude=0.05)
    a, b = (save_audio(tmp_path / name, wav, 16_000, subtype) for name in ("a.ogg", "b.ogg"))
    assert a.read_bytes() == b.read_bytes()
    assert audio_info(a).subtype == subtype
    plain = io.BytesIO()   # what save_audio wrote before: libsndfile's file as it comes, its serial random
    sf.write(plain, np.clip(wav, -1, 1), 16_000, format="OGG", subtype=subtype)
    libsndfile_pages = _ogg_page_fields(plain.getvalue())
    assert all(stored == crc for _, stored, crc in libsndfile_pages)   # as libsndfile computes them
    plain.seek(0)
    np.testing.assert_array_equal(sf.read(a, dtype="float32")[0], sf.read(plain, dtype="float32")[0])
    pages = _ogg_page_fields(a.read_bytes())
    assert len(pages) == len(libsndfile_pages) >= 3 and len({serial for serial, _, _ in pages}) == 1
    assert all(stored == crc for _, stored, crc in pages)
    other = save_audio(tmp_path / "other.ogg", wav[::-1].copy(), 16_000, subtype)   # its own serial
    assert _ogg_page_fields(other.read_bytes())[0][0] != pages[0][0]


def test_an_ogg_file_refuses_what_it_cannot_hold(tmp_path):
    """subtype "OPUS" writes Opus (it wrote Vorbis, ignoring it), at the rates Opus has: another is refused up
    front, naming the file, and nothing is written; bytes that are not whole Ogg pages are refused."""
    from tta.audio import fixed_ogg_serial, save_audio

    path = tmp_path / "x.ogg"
    with pytest.raises(AudioError, match=r"x\.ogg: Opus takes a sample rate of 8, 12, 16, 24 or 48 kHz, "
                                         r"got 44100 Hz$"):
        save_audio(path, tone(FREQ, 0.2, 44_100), 44_100, "OPUS")
    assert list(tmp_path.iterdir()) == []
    save_audio(path, tone(FREQ, 0.2), 16_000, "OPUS")
    data = path.read_bytes()
    with pytest.raises(AudioError, match=r"^y\.ogg: the Ogg page at byte 0 runs past the end \(20 bytes\)$"):
        fixed_ogg_serial(data[:20], "y.ogg")
    with pytest.raises(AudioError, match=r"^y\.ogg: the Ogg page at byte 0 runs past the end \(100 bytes\)$"):
        fixed_ogg_serial(data[:26] + bytes([255]) + data[27:100], "y.ogg")   # of 255 segments
    with pytest.raises(AudioError, match=r"^y\.ogg: not an Ogg page at byte 0$"):
        fixed_ogg_serial(b"RIFF" + data[4:], "y.ogg")


@pytest.mark.parametrize("name, subtype", [("x.ogg", "opus"), ("x.ogg", "Vorbis"), ("x.wav", "pcm_16"),
                                           ("x.flac", "pcm_24"), ("x.wav", "Pcm_U8"), ("x.wav", "float")])
def test_a_subtype_in_lower_case_writes_what_its_upper_case_name_does(tmp_path, name, subtype):
    """libsndfile takes a subtype in any case, and save_audio compared it as written: "opus" wrote Vorbis, and a
    WAV's "pcm_16" or "pcm_u8" left the rounding to libsndfile, the step below, where "PCM_16" rounds to the
    nearest."""
    from tta.audio import save_audio

    if subtype.upper() not in sf.available_subtypes():
        pytest.skip(f"this libsndfile has no {subtype.upper()}")
    wav = tone(FREQ, 0.5, amplitude=0.3) + 0.7 / 65536   # between two 16-bit steps, nearer the upper one
    lower = save_audio(tmp_path / "lower" / name, wav, 16_000, subtype)
    upper = save_audio(tmp_path / "upper" / name, wav, 16_000, subtype.upper())
    assert audio_info(lower).subtype == subtype.upper()
    assert lower.read_bytes() == upper.read_bytes()


def test_a_long_ogg_file_is_written_from_a_thread_whose_stack_is_smaller_than_its_samples(tmp_path, repo_root):
    """libvorbis copies the samples of a write onto the stack, and save_audio hands them over in one write: past
    about 2M samples (131 s at 16 kHz) an 8 MiB stack overflowed and the process died of a segmentation fault,
    leaving the temporary file. A caller's thread of 256 KiB and 16 s of audio (1 MiB of samples) stand in for
    that here; the file is written, with the bytes of the same call from the main thread."""
    import subprocess
    import sys

    from tests.signals import noise
    from tta.audio import save_audio

    code = ("import sys, threading\nfrom tests.signals import noise\nfrom tta.audio import save_audio\n"
            "threading.stack_size(256 << 10)\n"
            "thread = threading.Thread(target=save_audio, args=(sys.argv[1], noise(16.0), 16_000))\n"
            "thread.start()\nthread.join()\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "thread.ogg")], capture_output=True, text=True,
                         cwd=repo_root, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thread.ogg"]
    main = save_audio(tmp_path / "main.ogg", noise(16.0), 16_000)
    assert (tmp_path / "thread.ogg").read_bytes() == main.read_bytes()
