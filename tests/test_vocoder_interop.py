"""HiFi-GAN interop: transformers SpeechT5HifiGan parity (both directions), jik876 and AudioLDM checkpoints.

The reference model is transformers' own SpeechT5HifiGan built from a tiny SpeechT5HifiGanConfig (no
download); its random weights are written in each foreign layout with the exact reference key names, and
the waveform of our loaded generator must match the reference's to 1e-5.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings

import pytest
import torch

from tta.audio import MelConfig
from tta.checkpoint import CheckpointError
from vocoder.interop import (
    export_speecht5,
    load_audioldm_ckpt,
    load_jik876,
    load_speecht5_folder,
    load_vocoder,
)
from vocoder.model import HiFiGAN, HiFiGANConfig

transformers = pytest.importorskip("transformers")

TINY = {"upsample_rates": [10, 16], "upsample_kernel_sizes": [20, 32], "upsample_initial_channel": 16,
        "resblock_kernel_sizes": [3, 5], "resblock_dilation_sizes": [[1, 3, 5], [1, 2, 3]]}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


def reference_model(normalize_before: bool = False, **overrides):
    """transformers.SpeechT5HifiGan with random, non-trivial weights (and mean/scale when normalising)."""
    torch.manual_seed(1)
    cfg = transformers.SpeechT5HifiGanConfig(model_in_dim=64, sampling_rate=16000, normalize_before=normalize_before,
                                             **{**TINY, **overrides})
    model = transformers.SpeechT5HifiGan(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.15)
        if normalize_before:
            model.mean.normal_(-4.0, 1.0)
            model.scale.uniform_(0.5, 2.0)
    return model


def tiny_config() -> HiFiGANConfig:
    return HiFiGANConfig(upsample_rates=(10, 16), upsample_kernel_sizes=(20, 32), upsample_initial_channel=16,
                         resblock_kernel_sizes=(3, 5), resblock_dilation_sizes=((1, 3, 5), (1, 2, 3)))


def assert_parity(ours: HiFiGAN, ref) -> None:
    mel = torch.randn(2, 64, 9) - 3.0
    with torch.no_grad():
        a = ours.eval()(mel)
        b = ref(mel.transpose(1, 2))
    assert a.shape == (2, 9 * 160)
    assert b[:, : a.shape[1]].std() > 1e-2  # a parity check on a silent output would prove nothing
    assert (a - b[:, : a.shape[1]]).abs().max().item() <= 1e-5


def plain_reference_state(ref) -> dict:
    """The reference weights under jik876/AudioLDM names (`ups.i` instead of `upsampler.i`, no mean/scale)."""
    return {k.replace("upsampler.", "ups.", 1): v.clone() for k, v in ref.state_dict().items()
            if k not in ("mean", "scale")}


@pytest.mark.parametrize("normalize_before", [False, True])
def test_speecht5_folder_loads_with_parity(tmp_path, normalize_before):
    ref = reference_model(normalize_before)
    ref.save_pretrained(tmp_path / "vocoder")
    ours = load_speecht5_folder(tmp_path / "vocoder")
    assert ours.config.normalize_before is normalize_before and not ours.config.weight_norm
    # 16 kHz / 64 bins / hop 160, framed as AudioLDM's TacotronSTFT: a foreign folder does not say otherwise
    assert ours.config.mel == MelConfig(framing="tacotron")
    assert_parity(ours, ref)


def test_export_speecht5_is_loadable_by_transformers_with_parity(tmp_path):
    torch.manual_seed(2)
    ours = HiFiGAN(dataclasses.replace(tiny_config(), weight_norm=False))
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0.0, 0.15)
    ours.apply_weight_norm()  # the training form, as a run's checkpoint holds it
    export_speecht5(ours, tmp_path / "export")
    assert ours.config.weight_norm  # exporting leaves the (training-form) source untouched
    ref = transformers.SpeechT5HifiGan.from_pretrained(tmp_path / "export").eval()
    assert_parity(ours, ref)
    back = load_speecht5_folder(tmp_path / "export")
    assert back.config == ours.inference_copy().config
    with pytest.raises(CheckpointError, match="resblock"):
        export_speecht5(HiFiGAN(HiFiGANConfig(upsample_rates=(10, 16), upsample_kernel_sizes=(20, 32),
                                              upsample_initial_channel=16, resblock="2",
                                              resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1, 2),))),
                        tmp_path / "v3")


def jik876_state(ref) -> dict:
    """Reference weights as a jik876 generator state dict: torch's classic weight_norm gives weight_g/weight_v."""
    model = reference_model()
    model.load_state_dict(ref.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
                torch.nn.utils.weight_norm(m)
    return {k.replace("upsampler.", "ups.", 1): v for k, v in model.state_dict().items() if k not in ("mean", "scale")}


def write_jik876(folder, state) -> None:
    folder.mkdir()
    torch.save({"generator": state}, folder / "g_00000010")
    h = {"resblock": "1", "num_gpus": 0, "batch_size": 16, "learning_rate": 0.0002, "adam_b1": 0.8, "adam_b2": 0.99,
         "lr_decay": 0.999, "seed": 1234, **TINY, "segment_size": 8192, "num_mels": 64, "num_freq": 1025,
         "n_fft": 1024, "hop_size": 160, "win_size": 1024, "sampling_rate": 16000, "fmin": 0, "fmax": 8000,
         "fmax_for_loss": None, "num_workers": 4}
    (folder / "config.json").write_text(json.dumps(h))


def test_jik876_generator_checkpoint_loads_with_parity(tmp_path):
    ref = reference_model()
    state = jik876_state(ref)
    for key in ("conv_pre.weight_g", "conv_pre.weight_v", "conv_pre.bias", "ups.1.weight_v",
                "resblocks.3.convs1.2.weight_g", "resblocks.0.convs2.0.bias", "conv_post.weight_g"):
        assert key in state
    write_jik876(tmp_path / "cp_hifigan", state)
    ours = load_jik876(tmp_path / "cp_hifigan" / "g_00000010")
    assert not ours.config.weight_norm and ours.config.mel == MelConfig()
    assert_parity(ours, ref)
    # for fine-tuning: keep the weight-norm parameterisation, same function
    training_form = load_jik876(tmp_path / "cp_hifigan" / "g_00000010", weight_norm=True)
    assert training_form.config.weight_norm
    g = training_form.conv_pre.parametrizations.weight.original0
    assert torch.equal(g, state["conv_pre.weight_g"])
    assert_parity(training_form, ref)


def test_jik876_layout_mismatches_are_errors(tmp_path):
    state = jik876_state(reference_model())
    extra = dict(state, **{"resblocks.0.convs1.0.extra": torch.zeros(1)})
    write_jik876(tmp_path / "extra", extra)
    with pytest.raises(CheckpointError, match="unexpected.*resblocks.0.convs1.0.extra"):
        load_jik876(tmp_path / "extra" / "g_00000010")
    missing = {k: v for k, v in state.items() if k != "conv_post.bias"}
    write_jik876(tmp_path / "missing", missing)
    with pytest.raises(CheckpointError, match="missing.*conv_post.bias"):
        load_jik876(tmp_path / "missing" / "g_00000010")
    (tmp_path / "noconfig").mkdir()
    torch.save({"generator": state}, tmp_path / "noconfig" / "g_1")
    with pytest.raises(CheckpointError, match="config.json"):
        load_jik876(tmp_path / "noconfig" / "g_1")


def test_audioldm_ckpt_vocoder_loads_with_parity(tmp_path):
    ref = reference_model()
    state = {f"first_stage_model.vocoder.{k}": v for k, v in plain_reference_state(ref).items()}
    assert "first_stage_model.vocoder.ups.0.weight" in state
    assert "first_stage_model.vocoder.resblocks.0.convs1.0.weight" in state
    state["first_stage_model.encoder.conv_in.weight"] = torch.zeros(2)   # other components are left alone
    state["model.diffusion_model.time_embed.0.weight"] = torch.zeros(2)
    torch.save({"state_dict": state, "global_step": 3}, tmp_path / "audioldm.ckpt")
    ours = load_audioldm_ckpt(tmp_path / "audioldm.ckpt", tiny_config())
    assert_parity(ours, ref)
    state["first_stage_model.vocoder.conv_post.unknown"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match="unexpected.*conv_post.unknown"):
        load_audioldm_ckpt(tmp_path / "bad.ckpt", tiny_config())
    torch.save({"state_dict": {"model.x": torch.zeros(1)}}, tmp_path / "novocoder.ckpt")
    with pytest.raises(CheckpointError, match="first_stage_model.vocoder"):
        load_audioldm_ckpt(tmp_path / "novocoder.ckpt")


def test_audioldm_16k_config_matches_the_reference_layout(repo_root):
    """Our audioldm-16k generator has exactly the parameter names and shapes of the reference at full size."""
    from tta.config import load_config
    from vocoder.train import RunConfig

    cfg = load_config(RunConfig, repo_root / "configs/vocoder/audioldm-16k.json").model
    with torch.device("meta"):
        ref = transformers.SpeechT5HifiGan(transformers.SpeechT5HifiGanConfig(
            model_in_dim=64, sampling_rate=16000, upsample_rates=[5, 4, 2, 2, 2],
            upsample_kernel_sizes=[16, 16, 8, 4, 4], upsample_initial_channel=1024, normalize_before=False))
        ours = HiFiGAN(dataclasses.replace(cfg, weight_norm=False))
    want = {k: tuple(v.shape) for k, v in plain_reference_state(ref).items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert got == want


def test_load_vocoder_recognises_each_format_by_content(tmp_path):
    from tta.checkpoint import save_component

    ref = reference_model()
    ref.save_pretrained(tmp_path / "speecht5")
    assert_parity(load_vocoder(tmp_path / "speecht5"), ref)
    write_jik876(tmp_path / "jik", jik876_state(ref))
    assert_parity(load_vocoder(tmp_path / "jik" / "g_00000010"), ref)
    save_component(tmp_path / "ours", load_speecht5_folder(tmp_path / "speecht5"))
    trained_form = load_vocoder(tmp_path / "ours", weight_norm=True)
    assert trained_form.config.weight_norm
    assert_parity(trained_form, ref)
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a vocoder checkpoint"):
        load_vocoder(tmp_path / "other.pt")


def test_a_jik876_config_listing_more_dilations_than_its_resblock_uses_loads_as_there():
    """jik876's ResBlock2 builds two convolutions (dilations [0] and [1]) and ResBlock1 three, whatever the list
    holds; a V3-style config listing three dilations loaded in jik876 and was refused here (27 missing keys)."""
    from vocoder.interop import config_from_jik876

    h = {**TINY, "num_mels": 64, "n_fft": 1024, "hop_size": 160, "win_size": 1024, "sampling_rate": 16000,
         "fmin": 0, "fmax": 8000}
    two = config_from_jik876({**h, "resblock": "2", "resblock_dilation_sizes": [[1, 2, 3], [2, 6, 9]]}, where="x")
    assert two.resblock_dilation_sizes == ((1, 2), (2, 6))
    three = config_from_jik876({**h, "resblock": "1", "resblock_dilation_sizes": [[1, 3, 5, 7], [1, 3, 5]]},
                               where="x")
    assert three.resblock_dilation_sizes == ((1, 3, 5), (1, 3, 5))


@pytest.mark.parametrize("text, message", [("[1]", "config.json: expected keys class, format_version, config"),
                                           ("nope", "config.json: invalid JSON")])
def test_load_vocoder_names_a_damaged_config(tmp_path, text, message):
    """A config.json holding a list failed on "'list' object has no attribute 'get'" (`tta train vocoder
    --init-from`), and one that is not JSON on the decoder's words alone, naming no file."""
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(CheckpointError) as e:
        load_vocoder(tmp_path)
    assert str(e.value).startswith(f"{tmp_path / 'config.json'}: ") and message in str(e.value), e.value


@pytest.mark.parametrize("change, message", [
    (b"\xff\xfe{}", "config.json: not a UTF-8 text file"),
    (b"[16000]", "config.json: expected a JSON object of HiFi-GAN hyper-parameters, got list"),
    ({"upsample_rates": "10,16"}, "config.json: config key 'upsample_rates': expected a list (list of int), got string"),
    ({"resblock": 3}, "config.json: config key 'resblock': expected one of ['1', '2'], got 3"),
    ({"resblock": True}, "config.json: config key 'resblock': expected one of ['1', '2'], got True"),
    ({"sampling_rate": None}, "config.json: missing required config key 'sampling_rate' (int)"),
])
def test_a_damaged_jik876_config_names_the_file_and_field(tmp_path, change, message):
    """A jik876 config.json that is not UTF-8 failed on the codec's words alone, naming no file; a list on "list
    indices must be integers", a field of the wrong type on "can't multiply sequence by non-int"."""
    folder = tmp_path / "run"
    write_jik876(folder, jik876_state(reference_model()))
    path = folder / "config.json"
    if isinstance(change, bytes):
        path.write_bytes(change)
    else:
        h = {**json.loads(path.read_text()), **change}
        path.write_text(json.dumps({k: v for k, v in h.items() if v is not None}))
    with pytest.raises(CheckpointError) as e:
        load_vocoder(folder / "g_00000010")
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value), e.value


def test_vocoder_weights_holding_nan_are_refused_naming_the_checkpoint_and_key(tmp_path):
    """A jik876 generator or an AudioLDM .ckpt's vocoder holding NaN loaded without a word and made NaN audio."""
    state = jik876_state(reference_model())
    state["ups.1.weight_v"] = torch.full_like(state["ups.1.weight_v"], float("nan"))
    write_jik876(tmp_path / "jik", state)
    path = tmp_path / "jik" / "g_00000010"
    with pytest.raises(CheckpointError) as e:
        load_vocoder(path)
    assert str(e.value).startswith(f"{path}: 1 of its {len(state)} weight tensors hold NaN or inf values (first: "
                                   "ups.1.weight_v)"), e.value
    plain = plain_reference_state(reference_model())
    plain["conv_post.bias"] = torch.full_like(plain["conv_post.bias"], -float("inf"))
    torch.save({"state_dict": {f"first_stage_model.vocoder.{k}": v for k, v in plain.items()}},
               tmp_path / "audioldm.ckpt")
    with pytest.raises(CheckpointError, match=r"audioldm.ckpt: 1 of its \d+ weight tensors hold NaN or inf values "
                                              r"\(first: first_stage_model.vocoder.conv_post.bias\)"):
        load_audioldm_ckpt(tmp_path / "audioldm.ckpt", tiny_config())


@pytest.mark.parametrize("resblock", ["2", 2, 1])
def test_a_jik876_resblock_number_loads_as_jik876_builds_it(tmp_path, caplog, resblock):
    """jik876 builds ResBlock1 for the string '1' only (`h.resblock == '1'`): the numbers 2 and 1 both build its
    ResBlock2. An int resblock 2 loaded before the config's fields were typed and was then refused ("expected
    one of ['1', '2'], got 2"); an int 1 was refused too, where jik876 trains ResBlock2 weights for it."""
    torch.manual_seed(3)
    config = dataclasses.replace(tiny_config(), resblock="2", resblock_dilation_sizes=((1, 2), (2, 6)),
                                 weight_norm=False)
    ours = HiFiGAN(config).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0.0, 0.15)
    folder = tmp_path / "run"
    write_jik876(folder, ours.state_dict())
    h = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**h, "resblock": resblock,
                                                    "resblock_dilation_sizes": [[1, 2], [2, 6]]}))
    with caplog.at_level(logging.WARNING, logger="vocoder.interop"):
        loaded = load_vocoder(folder / "g_00000010")
    assert loaded.config.resblock == "2"
    mel = torch.randn(1, 64, 5) - 3.0
    with torch.no_grad():
        assert torch.equal(loaded(mel), ours(mel))
    warned = [r.getMessage() for r in caplog.records if "resblock is the number 1" in r.getMessage()]
    assert len(warned) == (resblock == 1), caplog.text
    assert resblock != 1 or warned[0].startswith(f"{folder / 'config.json'}: "), warned


def test_loading_a_vocoder_leaves_the_global_random_generators_as_they_were(tmp_path):
    """Every vocoder loader built the HiFiGAN, drawing initial weights (replaced by the stored ones) from
    torch's global generator, so a script's torch.rand after loading a vocoder gave other numbers than without
    it."""
    from tests.test_checkpoint import assert_leaves_global_rng
    from tta.checkpoint import save_component

    ref = reference_model()
    ref.save_pretrained(tmp_path / "speecht5")
    write_jik876(tmp_path / "jik", jik876_state(ref))
    state = {f"first_stage_model.vocoder.{k}": v for k, v in plain_reference_state(ref).items()}
    torch.save({"state_dict": state}, tmp_path / "audioldm.ckpt")
    save_component(tmp_path / "ours", load_speecht5_folder(tmp_path / "speecht5"))
    loads = [lambda: load_speecht5_folder(tmp_path / "speecht5"), lambda: load_jik876(tmp_path / "jik" / "g_00000010"),
             lambda: load_audioldm_ckpt(tmp_path / "audioldm.ckpt", tiny_config()),
             lambda: load_vocoder(tmp_path / "ours", weight_norm=True), lambda: load_vocoder(tmp_path / "speecht5"),
             lambda: load_vocoder(tmp_path / "jik" / "g_00000010")]
    for load in loads:
        assert_parity(assert_leaves_global_rng(load), ref)
