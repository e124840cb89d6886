"""Loading the mel-VAE from AudioLDM's original .ckpt layout and from diffusers AutoencoderKL folders.

The reference state dicts are built here from AudioLDM's Encoder/Decoder construction (haoheliu/AudioLDM,
variational_autoencoder/modules.py) at a small size: ch 32, ch_mult (1, 2, 2), 2 res blocks, z 4 —
GroupNorm keeps the reference's fixed 32 groups. The conversion is cross-checked against diffusers' own
LDM-VAE converter.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tta.audio import AUDIOLDM_MEL
from tta.checkpoint import CheckpointError
from vae.interop import (
    audioldm_state_dict,
    load_audioldm_ckpt,
    load_diffusers_vae,
    reference_state_dict,
    save_diffusers_vae,
    vae_from_audioldm_state,
)
from vae.model import MelVAE, VAEConfig

CH, CH_MULT, NUM_RES, Z = 32, (1, 2, 2), 2, 4


def _resnet(prefix: str, cin: int, cout: int) -> dict:
    shapes = {
        "norm1.weight": (cin,),
        "norm1.bias": (cin,),
        "conv1.weight": (cout, cin, 3, 3),
        "conv1.bias": (cout,),
        "norm2.weight": (cout,),
        "norm2.bias": (cout,),
        "conv2.weight": (cout, cout, 3, 3),
        "conv2.bias": (cout,),
    }
    if cin != cout:
        shapes.update({"nin_shortcut.weight": (cout, cin, 1, 1), "nin_shortcut.bias": (cout,)})
    return {f"{prefix}.{k}": v for k, v in shapes.items()}


def _attn(prefix: str, c: int) -> dict:
    out = {f"{prefix}.norm.weight": (c,), f"{prefix}.norm.bias": (c,)}
    for name in ("q", "k", "v", "proj_out"):
        out.update({f"{prefix}.{name}.weight": (c, c, 1, 1), f"{prefix}.{name}.bias": (c,)})
    return out


def reference_vae_shapes() -> dict:
    """Key -> shape of AudioLDM's first-stage AutoencoderKL (encoder, decoder, quant convs)."""
    s: dict = {"encoder.conv_in.weight": (CH, 1, 3, 3), "encoder.conv_in.bias": (CH,)}
    in_mult = (1,) + CH_MULT
    for i, mult in enumerate(CH_MULT):
        block_in = CH * in_mult[i]
        for j in range(NUM_RES):
            s.update(_resnet(f"encoder.down.{i}.block.{j}", block_in, CH * mult))
            block_in = CH * mult
        if i != len(CH_MULT) - 1:
            s.update(
                {
                    f"encoder.down.{i}.downsample.conv.weight": (block_in, block_in, 3, 3),
                    f"encoder.down.{i}.downsample.conv.bias": (block_in,),
                }
            )
    top = CH * CH_MULT[-1]
    for part in ("encoder", "decoder"):
        s.update(_resnet(f"{part}.mid.block_1", top, top))
        s.update(_attn(f"{part}.mid.attn_1", top))
        s.update(_resnet(f"{part}.mid.block_2", top, top))
    s.update(
        {
            "encoder.norm_out.weight": (top,),
            "encoder.norm_out.bias": (top,),
            "encoder.conv_out.weight": (2 * Z, top, 3, 3),
            "encoder.conv_out.bias": (2 * Z,),
            "decoder.conv_in.weight": (top, Z, 3, 3),
            "decoder.conv_in.bias": (top,),
        }
    )
    block_in = top
    for i in reversed(range(len(CH_MULT))):
        for j in range(NUM_RES + 1):
            s.update(_resnet(f"decoder.up.{i}.block.{j}", block_in, CH * CH_MULT[i]))
            block_in = CH * CH_MULT[i]
        if i != 0:
            s.update(
                {
                    f"decoder.up.{i}.upsample.conv.weight": (block_in, block_in, 3, 3),
                    f"decoder.up.{i}.upsample.conv.bias": (block_in,),
                }
            )
    s.update(
        {
            "decoder.norm_out.weight": (CH,),
            "decoder.norm_out.bias": (CH,),
            "decoder.conv_out.weight": (1, CH, 3, 3),
            "decoder.conv_out.bias": (1,),
            "quant_conv.weight": (2 * Z, 2 * Z, 1, 1),
            "quant_conv.bias": (2 * Z,),
            "post_quant_conv.weight": (Z, Z, 1, 1),
            "post_quant_conv.bias": (Z,),
        }
    )
    return s


def reference_vae_state(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * 0.05 for k, shape in reference_vae_shapes().items()}


def _audioldm_ckpt(path, vae_state: dict, scale: float = 0.9227) -> None:
    state = {f"first_stage_model.{k}": v for k, v in vae_state.items()}
    state.update(
        {
            "first_stage_model.vocoder.conv_pre.weight": torch.zeros(4, 64, 7),  # HiFi-GAN: ignored
            "first_stage_model.loss.logvar": torch.zeros(()),  # training loss: ignored
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 8, 3, 3),
            "cond_stage_model.model.logit_scale_a": torch.zeros(()),
            "scale_factor": torch.tensor(scale),
        }
    )
    torch.save({"state_dict": state, "global_step": 7}, path)


def test_audioldm_ckpt_every_key_consumed_and_matches_diffusers_converter(tmp_path):
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    ref = reference_vae_state()
    _audioldm_ckpt(tmp_path / "audioldm.ckpt", ref)
    model = load_audioldm_ckpt(tmp_path / "audioldm.ckpt")
    assert model.config == VAEConfig(
        mel=AUDIOLDM_MEL,   # AudioLDM's TacotronSTFT framing: audio is framed as the VAE was trained
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        latent_channels=4,
        scale_factor=float(torch.tensor(0.9227)),
    )
    assert float(model.scale_factor) == pytest.approx(0.9227)
    # every reference tensor comes back under its reference name, unchanged (nothing dropped or unset)
    back = reference_state_dict(model)
    assert sorted(back) == sorted(ref)
    for key, value in ref.items():
        assert torch.equal(back[key], value), key
    # and the mapping agrees with diffusers' own LDM -> diffusers conversion
    expected = convert_ldm_vae_checkpoint(
        {f"first_stage_model.{k}": v for k, v in ref.items()}, dict(model.net.config)
    )
    ours = model.net.state_dict()
    assert sorted(expected) == sorted(ours)
    for key, value in expected.items():
        assert torch.equal(ours[key], value.reshape(ours[key].shape)), key
    # export back to AudioLDM entries and re-import: same model
    again = vae_from_audioldm_state(audioldm_state_dict(model))
    assert again.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    mel = torch.randn(1, 64, 37) - 6
    z = model.mel_to_latents(mel)
    assert z.shape == (1, 4, 10, 16)
    assert model.latents_to_mel(z, 37).shape == mel.shape


def test_audioldm_ckpt_mismatch_lists_keys(tmp_path):
    ref = reference_vae_state()
    del ref["decoder.up.1.block.2.conv2.weight"]
    ref["encoder.down.0.block.0.temb_proj.weight"] = torch.zeros(32, 512)
    _audioldm_ckpt(tmp_path / "bad.ckpt", ref)
    with pytest.raises(CheckpointError) as err:
        load_audioldm_ckpt(tmp_path / "bad.ckpt")
    # (tta.checkpoint.weights_mismatch's report: a count of one says its noun in the singular)
    assert str(err.value) == (
        f"{tmp_path / 'bad.ckpt'}: VAE weights do not match: 1 reference key missing (first: "
        "decoder.up.1.block.2.conv2.weight); 1 key not used by (32, 64, 64) x 2 (first: "
        "encoder.down.0.block.0.temb_proj.weight)"
    )
    del ref["decoder.up.1.block.1.conv2.weight"]
    ref["encoder.down.0.block.1.temb_proj.weight"] = torch.zeros(32, 512)
    _audioldm_ckpt(tmp_path / "bad2.ckpt", ref)
    with pytest.raises(CheckpointError, match=r": 2 reference keys missing \(first: decoder\.up\.1\.block\.1\.conv2"
                       r"\.weight, decoder\.up\.1\.block\.2\.conv2\.weight\); 2 keys not used by \(32, 64, 64\) x 2 "):
        load_audioldm_ckpt(tmp_path / "bad2.ckpt")

    ref = reference_vae_state()
    ref["decoder.conv_in.weight"] = torch.zeros(64, 4, 5, 5)
    _audioldm_ckpt(tmp_path / "shape.ckpt", ref)
    with pytest.raises(
        CheckpointError, match=r"decoder\.conv_in\.weight: \(64, 4, 5, 5\) vs \(64, 4, 3, 3\)"
    ):
        load_audioldm_ckpt(tmp_path / "shape.ckpt")

    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}}, tmp_path / "unet.ckpt")
    with pytest.raises(CheckpointError, match="neither an AudioLDM checkpoint"):
        load_audioldm_ckpt(tmp_path / "unet.ckpt")
    state = {f"first_stage_model.{k}": v for k, v in reference_vae_state().items()}
    torch.save({"state_dict": state}, tmp_path / "noscale.ckpt")
    with pytest.raises(CheckpointError, match="scale_factor"):
        load_audioldm_ckpt(tmp_path / "noscale.ckpt")


def _diffusers_folder(tmp_path, *, old_names: bool = False):
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    net = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        scaling_factor=0.9227,
    ).eval()
    folder = tmp_path / ("old" if old_names else "vae")
    net.save_pretrained(str(folder), safe_serialization=not old_names)
    if old_names:  # the attention naming of diffusers releases that AudioLDM folders were first written with
        rename = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
        state = {}
        for k, v in net.state_dict().items():
            for new, old in rename.items():
                k = k.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
            state[k] = v
        torch.save(state, folder / "diffusion_pytorch_model.bin")
    return net, folder


@pytest.mark.parametrize("old_names", [False, True])
def test_diffusers_folder_loads_natively(tmp_path, old_names):
    net, folder = _diffusers_folder(tmp_path, old_names=old_names)
    model = load_diffusers_vae(folder)
    assert model.config.block_out_channels == (32, 64, 64) and float(model.scale_factor) == pytest.approx(
        0.9227
    )
    mel = torch.randn(2, 64, 24) - 6
    with torch.no_grad():
        expected = net.decode(net.encode(model.mel_to_image(mel)).latent_dist.mode()).sample
        got, _ = model(mel, sample=False)
    assert torch.allclose(got, model.image_to_mel(expected, 24), atol=1e-5)


def test_diffusers_round_trip_and_bad_config(tmp_path):
    _, folder = _diffusers_folder(tmp_path)
    model = load_diffusers_vae(folder)
    model.set_scale_factor(1.5)
    save_diffusers_vae(model, tmp_path / "export")
    again = load_diffusers_vae(tmp_path / "export")
    assert float(again.scale_factor) == 1.5
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    body = json.loads((folder / "config.json").read_text())
    body["in_channels"] = 3
    (folder / "config.json").write_text(json.dumps(body))
    with pytest.raises(CheckpointError, match=r"in_channels=3, expected 1"):
        load_diffusers_vae(folder)


def test_tta_model_weights_are_not_an_audioldm_ckpt(tmp_path):
    model = MelVAE(VAEConfig(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "ours.ckpt")
    with pytest.raises(CheckpointError, match="neither an AudioLDM checkpoint"):
        load_audioldm_ckpt(tmp_path / "ours.ckpt")


@pytest.mark.parametrize("scale, message", [
    (torch.tensor(float("nan")), "scale_factor=nan must be a positive finite number"),
    (torch.tensor([0.5, 0.6]), "its 'scale_factor' is a tensor of shape (2,) and dtype torch.float32; expected one "
                               "number"),
    ("0.5", "its 'scale_factor' is a str; expected one number"),
    (np.float32("nan"), "scale_factor=nan must be a positive finite number"),
    (np.bool_(True), "; expected one number (the latent scale)"),
    (True, "its 'scale_factor' is a bool; expected one number"),
])
def test_a_bad_scale_factor_names_the_checkpoint(tmp_path, scale, message):
    """A nan scale_factor failed on the config's words alone, naming no file; two values were read as the first
    one, and a string failed inside torch.as_tensor."""
    path = tmp_path / "bad-scale.ckpt"
    _audioldm_ckpt(path, reference_vae_state(), scale=0.5)
    obj = torch.load(path, weights_only=True)
    obj["state_dict"]["scale_factor"] = scale
    torch.save(obj, path)
    with pytest.raises(CheckpointError) as e:
        load_audioldm_ckpt(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value), e.value


@pytest.mark.parametrize("scale", [np.float32(0.5), np.float64(0.5), np.int64(2), torch.tensor(0.5), 0.5])
def test_a_numpy_or_tensor_scale_factor_loads(tmp_path, scale):
    """A NumPy scalar scale_factor loaded until the scale_factor check took Python ints and floats only ("its
    'scale_factor' is a float32; expected one number")."""
    path = tmp_path / "scale.ckpt"
    _audioldm_ckpt(path, reference_vae_state(), scale=0.5)
    obj = torch.load(path, weights_only=True)
    obj["state_dict"]["scale_factor"] = scale
    torch.save(obj, path)
    assert float(load_audioldm_ckpt(path).scale_factor) == float(scale)


def test_vae_weights_holding_nan_are_refused_naming_the_checkpoint_and_key(tmp_path):
    """A VAE whose weights held NaN imported without a word; every generation then failed on "HiFiGAN got a mel
    with non-finite values", naming neither the file nor the part."""
    ref = reference_vae_state()
    ref["decoder.conv_in.weight"] = torch.full_like(ref["decoder.conv_in.weight"], float("nan"))
    ref["encoder.conv_out.bias"][0] = float("inf")
    path = tmp_path / "nan.ckpt"
    _audioldm_ckpt(path, ref)
    with pytest.raises(CheckpointError) as e:
        load_audioldm_ckpt(path)
    assert str(e.value).startswith(f"{path}: 2 of its {len(ref)} weight tensors hold NaN or inf values (first: "
                                   "first_stage_model.encoder.conv_out.bias)"), e.value
    # a stand-alone VAE checkpoint names its keys without the prefix
    torch.save({"state_dict": ref}, tmp_path / "vae.ckpt")
    with pytest.raises(CheckpointError, match=r"vae.ckpt: 2 of its \d+ weight tensors .*\(first: "
                                              r"encoder.conv_out.bias\)"):
        load_audioldm_ckpt(tmp_path / "vae.ckpt")


def test_loading_a_vae_leaves_the_global_random_generators_as_they_were(tmp_path):
    """Every VAE loader built the MelVAE, drawing initial weights (replaced by the stored ones) from torch's
    global generator, so a script's torch.rand after loading a VAE gave other numbers than without it."""
    from tests.test_checkpoint import assert_leaves_global_rng
    from tta.checkpoint import save_component
    from vae.model import load_vae

    _audioldm_ckpt(tmp_path / "audioldm.ckpt", reference_vae_state())
    from_ckpt = assert_leaves_global_rng(lambda: load_audioldm_ckpt(tmp_path / "audioldm.ckpt"))
    save_diffusers_vae(from_ckpt, tmp_path / "diffusers")
    from_diffusers = assert_leaves_global_rng(lambda: load_diffusers_vae(tmp_path / "diffusers"))
    save_component(tmp_path / "component", from_ckpt)
    from_component = assert_leaves_global_rng(lambda: load_vae(tmp_path / "component"))
    want = from_ckpt.state_dict()
    for model in (from_diffusers, from_component):
        assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
