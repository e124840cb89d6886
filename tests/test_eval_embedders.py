"""Embedder registry: MFCC floor, VGGish / PANNs built from state dicts with the reference key names,
the aisfx network against the package's own class, and the errors for missing or unknown things."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval.embedders import EmbedderError, available_embedders, get_embedder
from tests.signals import chirp, noise, tone
from tests.test_checkpoint import assert_leaves_global_rng

# harritaylor/torchvggish: features = make_layers() Sequential (conv indices 0,3,6,8,11,13), embeddings 0,2,4
VGGISH_KEYS = {
    "features.0.weight": (64, 1, 3, 3), "features.0.bias": (64,),
    "features.3.weight": (128, 64, 3, 3), "features.3.bias": (128,),
    "features.6.weight": (256, 128, 3, 3), "features.6.bias": (256,),
    "features.8.weight": (256, 256, 3, 3), "features.8.bias": (256,),
    "features.11.weight": (512, 256, 3, 3), "features.11.bias": (512,),
    "features.13.weight": (512, 512, 3, 3), "features.13.bias": (512,),
    "embeddings.0.weight": (4096, 12288), "embeddings.0.bias": (4096,),
    "embeddings.2.weight": (4096, 4096), "embeddings.2.bias": (4096,),
    "embeddings.4.weight": (128, 4096), "embeddings.4.bias": (128,),
    "pproc.pca_matrix": (128, 128), "pproc.pca_means": (128, 1),
}


def _bn(prefix: str, n: int) -> dict:
    return {f"{prefix}.weight": (n,), f"{prefix}.bias": (n,), f"{prefix}.running_mean": (n,),
            f"{prefix}.running_var": (n,), f"{prefix}.num_batches_tracked": ()}


def _panns_keys() -> dict:
    """qiuqiangkong/audioset_tagging_cnn Cnn14_16k (torchlibrosa front end, window 512, 64 mels)."""
    keys = {"spectrogram_extractor.stft.conv_real.weight": (257, 1, 512),
            "spectrogram_extractor.stft.conv_imag.weight": (257, 1, 512),
            "logmel_extractor.melW": (257, 64), **_bn("bn0", 64)}
    widths = (1, 64, 128, 256, 512, 1024, 2048)
    for i in range(6):
        p = f"conv_block{i + 1}"
        keys.update({f"{p}.conv1.weight": (widths[i + 1], widths[i], 3, 3),
                     f"{p}.conv2.weight": (widths[i + 1], widths[i + 1], 3, 3),
                     **_bn(f"{p}.bn1", widths[i + 1]), **_bn(f"{p}.bn2", widths[i + 1])})
    keys.update({"fc1.weight": (2048, 2048), "fc1.bias": (2048,), "fc_audioset.weight": (527, 2048),
                 "fc_audioset.bias": (527,)})
    return keys


def _random_state(keys: dict, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in keys.items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(0)
        elif k.endswith("running_var"):
            state[k] = torch.rand(shape, generator=g) + 0.5
        else:
            state[k] = torch.randn(shape, generator=g) * (0.05 if len(shape) > 1 else 0.1)
    return state


def test_mfcc_embedder_shapes_and_determinism():
    emb = get_embedder("mfcc")
    assert (emb.dim, emb.sample_rate, emb.identity) == (40, 16_000, "mfcc@v1")
    a = emb.embed(tone(440, 2.0), 16_000)
    assert a.shape == (3, 40) and a.dtype == np.float64  # 200 frames: windows of 100 at hop 50
    np.testing.assert_array_equal(a, emb.embed(tone(440, 2.0), 16_000))
    # resampling: the same tone given at 22.05 kHz embeds close to the 16 kHz one, unlike a chirp
    b = emb.embed(tone(440, 2.0, sample_rate=22_050), 22_050)
    c = emb.embed(chirp(100, 4000, 2.0), 16_000)
    assert np.abs(a - b).mean() < 0.2 * np.abs(a - c).mean()
    # batched == one by one, also for clips of different lengths
    clips = [tone(300, 1.0), noise(1.5), tone(500, 1.0)]
    batched = emb.embed_batch(clips)
    for clip, got in zip(clips, batched):
        np.testing.assert_allclose(got, emb.embed_batch([clip])[0], rtol=1e-5, atol=1e-5)
    # a clip shorter than one window still gives one frame
    assert emb.embed(tone(440, 0.3), 16_000).shape == (1, 40)


def test_unknown_embedder_lists_valid_ones():
    with pytest.raises(EmbedderError, match="valid embedders: .*aisfx.*mfcc.*panns.*vggish"):
        get_embedder("openl3")
    assert {"mfcc", "aisfx", "vggish", "panns", "clap", "laion-clap"} <= set(available_embedders())


@pytest.mark.parametrize("name,env", [("vggish", "TTA_VGGISH_WEIGHTS"), ("panns", "TTA_PANNS_WEIGHTS")])
def test_missing_weights_name_the_file_and_where(name, env, tmp_path, monkeypatch):
    monkeypatch.delenv(env, raising=False)
    with pytest.raises(EmbedderError, match=f"{env}"):
        get_embedder(name)
    with pytest.raises(EmbedderError, match=r"nothere\.pth: .*not found"):
        get_embedder(name, weights=str(tmp_path / "nothere.pth"))


def test_networks_have_the_reference_key_layout():
    """Every reference key exists with its shape and nothing else does (checked on the meta device: instant)."""
    from eval.networks import Cnn14_16k, VGGish

    with torch.device("meta"):
        vgg, cnn = VGGish(), Cnn14_16k()
    assert {k: tuple(v.shape) for k, v in vgg.state_dict().items()} == {
        k: v for k, v in VGGISH_KEYS.items() if not k.startswith("pproc.")}
    assert {k: tuple(v.shape) for k, v in cnn.state_dict().items()} == _panns_keys()


def test_vggish_patches():
    from eval.frontends import vggish_examples

    assert vggish_examples(tone(440, 2.0)).shape == (2, 1, 96, 64)  # 0.96 s patches, no partial patch
    assert vggish_examples(tone(440, 0.5)).shape == (1, 1, 96, 64)  # short clips give one padded patch


def _panns_front_end_state() -> dict:
    import librosa

    n_fft = 512
    window = librosa.filters.get_window("hann", n_fft, fftbins=True)
    dft = np.exp(-2j * np.pi * np.outer(np.arange(n_fft), np.arange(n_fft // 2 + 1)) / n_fft)
    mel = librosa.filters.mel(sr=16_000, n_fft=n_fft, n_mels=64, fmin=50, fmax=8000)
    return {"spectrogram_extractor.stft.conv_real.weight": torch.tensor((dft.real * window[:, None]).T[:, None, :],
                                                                          dtype=torch.float32),
            "spectrogram_extractor.stft.conv_imag.weight": torch.tensor((dft.imag * window[:, None]).T[:, None, :],
                                                                          dtype=torch.float32),
            "logmel_extractor.melW": torch.tensor(mel.T, dtype=torch.float32)}


def test_panns_front_end_equals_librosa():
    """With the kernels the real checkpoint carries (window x DFT, librosa mel 50-8000 Hz), the conv STFT
    front end equals librosa's centred, reflect-padded power mel spectrogram in dB."""
    import librosa

    from eval.networks import _LogmelFilterBank, _Spectrogram

    state = _panns_front_end_state()
    spec, logmel = _Spectrogram(512, 160), _LogmelFilterBank(257, 64)
    spec.stft.conv_real.weight.data = state["spectrogram_extractor.stft.conv_real.weight"]
    spec.stft.conv_imag.weight.data = state["spectrogram_extractor.stft.conv_imag.weight"]
    logmel.melW.data = state["logmel_extractor.melW"]
    wav = noise(1.0, amplitude=0.2)
    with torch.no_grad():
        ours = logmel(spec(torch.from_numpy(wav)[None]))[0, 0].numpy()
    power = np.abs(librosa.stft(wav, n_fft=512, hop_length=160, window="hann", center=True, pad_mode="reflect")) ** 2
    expected = 10 * np.log10(np.maximum(state["logmel_extractor.melW"].numpy().T @ power, 1e-10)).T
    np.testing.assert_allclose(ours, expected, atol=2e-3)


@pytest.mark.slow
def test_vggish_loads_reference_state_dict(tmp_path):
    path = tmp_path / "vggish-10086976.pth"
    torch.save(_random_state(VGGISH_KEYS), path)
    emb = assert_leaves_global_rng(lambda: get_embedder("vggish", weights=str(path)))
    out = emb.embed(tone(440, 2.0), 16_000)  # 2 s -> 2 patches of 0.96 s
    assert out.shape == (2, 128) and np.isfinite(out).all()
    assert emb.identity.startswith("vggish@sha256:")
    state = _random_state(VGGISH_KEYS)
    del state["features.13.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="features.13.weight"):
        get_embedder("vggish", weights=str(tmp_path / "broken.pth"))


@pytest.mark.slow
def test_panns_loads_reference_checkpoint(tmp_path):
    state = {**_random_state(_panns_keys()), **_panns_front_end_state()}
    path = tmp_path / "Cnn14_16k_mAP=0.438.pth"
    torch.save({"model": state, "iteration": 0}, path)  # the released files wrap the state dict
    emb = assert_leaves_global_rng(lambda: get_embedder("panns", weights=str(path)))
    assert emb.embed(noise(1.0, amplitude=0.2), 16_000).shape == (1, 2048)
    assert [z.shape for z in emb.logits([noise(1.0), tone(1000, 1.2)])] == [(527,), (527,)]
    # clips are prepared as audioldm_eval's WaveDataset does: the mean removed, zero-padded to 2 s (32 000 samples)
    clip = (noise(0.7, amplitude=0.2) + 0.3).astype(np.float32)
    padded = np.zeros(32_000, np.float32)
    padded[:clip.size] = clip - clip.mean()
    np.testing.assert_array_equal(emb.prepare(clip), padded)
    np.testing.assert_allclose(emb.logits([clip])[0], emb.logits([padded])[0], rtol=1e-5, atol=1e-5)
    assert emb.identity.endswith("+ae") and "mean removed, zero-padded to 2 s" in emb.pooling
    del state["fc1.bias"]
    torch.save({"model": state}, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="fc1.bias"):
        get_embedder("panns", weights=str(tmp_path / "broken.pth"))


def test_aisfx_network_matches_package_class():
    pytest.importorskip("aisfx")
    from aisfx.models.cnn2d import EmbeddingNet

    emb = assert_leaves_global_rng(lambda: get_embedder("aisfx"))
    assert (emb.dim, emb.sample_rate) == (512, 44_100) and emb.identity.startswith("aisfx@sha256:")
    from eval.embedders import load_aisfx_state

    state, datasets = load_aisfx_state(emb.checkpoint_path)
    assert len(datasets) == 9
    ref = EmbeddingNet("max", 3, 1, 64)
    ref.load_state_dict({k.removeprefix("embedding_net."): v for k, v in state.items() if k.startswith("embedding_net.")})
    ref.eval()
    blocks = torch.rand(2, 100, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        np.testing.assert_allclose(emb.net(blocks).numpy(), ref(blocks).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_aisfx_embeds_audio():
    emb = get_embedder("aisfx")
    out = emb.embed(noise(5.0, sample_rate=44_100), 44_100)
    assert out.shape == (3, 512) and np.isfinite(out).all()


def test_pooling_is_recorded_as_each_embedder_makes_its_embeddings():
    """FAD's protocol says frames or one embedding per clip (and LAION-CLAP's 10 s crop / repeat-pad rule)."""
    from eval.embedders import PannsEmbedder, clap_embedder

    mfcc = get_embedder("mfcc")
    assert mfcc.pooling.startswith("frames: one 40-d embedding every 0.5 s") and mfcc.protocol()["pooling"] == mfcc.pooling
    panns = PannsEmbedder(name="panns", dim=2048, sample_rate=16_000, hop_seconds=0.0)
    assert panns.pooling.startswith("one embedding per clip: Cnn14's clip-level pooling")

    class TtaClap:
        sample_rate, embed_dim = 16_000, 8

    class LaionClap(TtaClap):
        sample_rate, crop_seed, fusion = 48_000, 0, False

    assert clap_embedder(TtaClap(), name="clap").pooling.startswith("one embedding per clip (the whole clip")
    laion = clap_embedder(LaionClap(), name="laion-clap").pooling
    assert laion.startswith("one embedding per clip: LAION's 10 s rule") and "repeated whole and zero-padded" in laion
    fused = LaionClap()
    fused.fusion = True
    assert "feature fusion" in clap_embedder(fused, name="laion-clap").pooling


def test_weights_identity_follows_a_file_replaced_at_the_same_path(tmp_path):
    """The weights hash names the embedder in caches and stats files; weights overwritten at the same path
    (a notebook re-running an evaluation after retraining) get the new hash, not the remembered one."""
    import os

    from eval.embedders import file_sha256

    path = tmp_path / "w.pth"
    path.write_bytes(b"first weights")
    first = file_sha256(str(path))
    assert file_sha256(str(path)) == first
    path.write_bytes(b"other weights!")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a later write, whatever the clock
    second = file_sha256(str(path))
    assert second != first and second == __import__("hashlib").sha256(b"other weights!").hexdigest()


def test_embed_names_a_sample_rate_that_is_not_a_positive_integer():
    """Embedder.embed(wav, "16000") took the str through int(), 16000.7 was cut down to 16000 and 0 failed in soxr
    ("Sample rate should be over 0")."""
    emb = get_embedder("mfcc")
    wav = tone(440, 1.0)
    for rate, match in (("16000", r"mfcc: sample_rate='16000': expected a positive integer \(Hz\)"),
                        (16000.7, r"mfcc: sample_rate=16000.7: expected a positive integer \(Hz\)"),
                        (0, r"mfcc: sample_rate=0: expected a positive integer \(Hz\)")):
        with pytest.raises(ValueError, match=match):
            emb.embed(wav, rate)
    assert np.array_equal(emb.embed(wav, np.int64(16_000)), emb.embed(wav, 16_000))


@pytest.mark.parametrize("name, wrap", [("vggish", False), ("panns", True)])
def test_weights_holding_nan_are_refused_naming_the_file_and_key(tmp_path, name, wrap):
    """A VGGish or PANNs file holding NaN loaded without a word: NaN embeddings, a NaN FAD naming nothing."""
    from tta.checkpoint import CheckpointError

    state = {"features.0.weight": torch.zeros(2, 1, 3, 3), "fc_audioset.weight": torch.zeros(527, 4),
             "fc1.bias": torch.tensor([0.0, float("nan")])}
    path = tmp_path / f"{name}.pth"
    torch.save({"model": state} if wrap else state, path)
    with pytest.raises(CheckpointError, match=rf"^{path}: 1 of its 3 weight tensors hold NaN or inf values "
                                              r"\(first: fc1.bias\)"):
        get_embedder(name, weights=str(path))


def test_mfcc_settings_other_than_the_default_are_in_its_identity(tmp_path):
    """An MFCC embedder with other settings was 'mfcc@v1' too: a cache served it the default's 40-d embeddings
    (and a statistics file of the default passed its embedder check). The default keeps 'mfcc@v1'."""
    from eval.cache import EmbeddingCache
    from eval.embedders import MfccEmbedder
    from eval.run import embed_folder
    from tta.audio import save_audio

    for i in range(2):
        save_audio(tmp_path / "gen" / f"c{i}.wav", tone(300 + 200 * i, 3.0), 16_000)
    default = get_embedder("mfcc")
    other = MfccEmbedder(name="mfcc", dim=26, sample_rate=16_000, hop_seconds=0.25, n_mfcc=13, window_frames=50,
                         hop_frames=25)
    assert default.identity == "mfcc@v1" and other.identity != default.identity
    embed_folder(tmp_path / "gen", default, EmbeddingCache(tmp_path / "cache", default.identity), what="generated",
                 progress=False)
    cache = EmbeddingCache(tmp_path / "cache", other.identity)
    got = embed_folder(tmp_path / "gen", other, cache, what="generated", progress=False)
    assert cache.hits == 0 and got.embeddings["c0"].shape[1] == 26


def test_a_float_files_embeddings_read_by_the_earlier_16_bit_rule_are_not_served_again(tmp_path):
    """A float file's cached embedding was keyed "<sha256>-pcm16", read with its samples put on the 16-bit step
    below; they are read on the nearest step now, and that entry would have been served for them."""
    import soundfile as sf

    from eval.cache import EmbeddingCache, content_hash
    from eval.run import embed_folder

    (tmp_path / "gen").mkdir()
    sf.write(tmp_path / "gen" / "c0.wav", tone(300, 3.0) * 0.3, 16_000, subtype="FLOAT")
    mfcc = get_embedder("mfcc")
    fresh = embed_folder(tmp_path / "gen", mfcc, None, what="generated", progress=False).embeddings["c0"]
    cache = EmbeddingCache(tmp_path / "cache", mfcc.identity)
    cache.put(f"{content_hash(tmp_path / 'gen' / 'c0.wav')}-pcm16", np.zeros_like(fresh))   # an earlier version's
    got = embed_folder(tmp_path / "gen", mfcc, cache, what="generated", progress=False).embeddings["c0"]
    assert cache.hits == 0
    np.testing.assert_array_equal(got, fresh)


def test_running_out_of_file_descriptors_stops_an_eval_instead_of_leaving_the_files_out(tmp_path, monkeypatch,
                                                                                         caplog):
    """Out of file descriptors, embed_folder warned "skipping unreadable file" for each clip and left it out of the
    report (or said none could be read), blaming the files: the OSError naming the file now stops it, as a
    training run stops. A file that does not decode is still left out with its warning."""
    import errno

    import soundfile as sf

    import eval.run
    from eval.run import embed_folder, list_audio
    from tests.test_audio_bad_input import out_of_file_descriptors

    (tmp_path / "gen").mkdir()
    for i in range(2):
        sf.write(tmp_path / "gen" / f"c{i}.wav", tone(300 + 200 * i, 3.0), 16_000)
    (tmp_path / "gen" / "d.wav").write_text("not audio")
    mfcc = get_embedder("mfcc")
    got = embed_folder(tmp_path / "gen", mfcc, None, what="generated", progress=False)
    assert sorted(got.embeddings) == ["c0", "c1"]
    assert [s["file"] for s in got.skipped] == [str(tmp_path / "gen" / "d.wav")]
    files = list_audio(tmp_path / "gen", "generated")   # listed first: the walk needs a descriptor too
    monkeypatch.setattr(eval.run, "list_audio", lambda folder, what: files)
    caplog.clear()
    with out_of_file_descriptors(), pytest.raises(OSError) as caught:
        embed_folder(tmp_path / "gen", mfcc, None, what="generated", progress=False)
    assert (caught.value.errno, caught.value.filename) == (errno.EMFILE, str(tmp_path / "gen" / "c0.wav"))
    assert "unreadable" not in caplog.text
