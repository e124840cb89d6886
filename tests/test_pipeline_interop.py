"""`tta import diffusers` (diffusers AudioLDM folder -> tta pipeline) and `tta export diffusers`'s refusal for
pipelines on tta's own CLAP."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from tests.test_ldm_fixtures import (
    one_thread,  # noqa: F401 (autouse)
    tiny_components,
    tiny_model_config,
    tiny_pipeline,
    tiny_run_config,
)
from tta.cli import main


def write_diffusers_audioldm(folder):
    """A diffusers AudioLDM folder of tiny random parts, written with the parts' own writers."""
    import diffusers

    from tta.ldm.model import LDMUNet
    from vae.model import MelVAE, VAEConfig
    from vocoder.interop import export_speecht5
    from vocoder.model import HiFiGAN, HiFiGANConfig

    torch.manual_seed(0)
    unet = LDMUNet(tiny_run_config().model)
    unet.net.save_pretrained(str(folder / "unet"))
    vae = MelVAE(tiny_model_config(VAEConfig, "vae"))
    vae.set_scale_factor(0.5)
    vae.net.save_pretrained(str(folder / "vae"))
    voc = dataclasses.replace(tiny_model_config(HiFiGANConfig, "vocoder"), resblock="1", resblock_kernel_sizes=(3,),
                              resblock_dilation_sizes=((1, 3, 5),), weight_norm=False)
    export_speecht5(HiFiGAN(voc), folder / "vocoder")
    diffusers.DDIMScheduler(beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear", clip_sample=False,
                            set_alpha_to_one=False, steps_offset=1).save_pretrained(str(folder / "scheduler"))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "AudioLDMPipeline"}))
    return unet


def test_import_diffusers_folder_and_generate(tmp_path, capsys):
    from tta.pipeline import TTAPipeline

    unet = write_diffusers_audioldm(tmp_path / "d")
    out = tmp_path / "tta"
    code = main(["-q", "import", "diffusers", str(tmp_path / "d"), "--clap", str(tiny_components()["clap"]),
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    pipe = TTAPipeline.from_pretrained(out)
    assert pipe.defaults.sampler == "ddim" and pipe.scheduler_config["steps_offset"] == 1
    assert float(pipe.vae.scale_factor) == 0.5
    mine, ref = pipe.unet.state_dict(), unet.state_dict()
    assert all(torch.equal(mine[k], ref[k]) for k in ref)
    wav = pipe(["a bell"], seconds=0.1, steps=2).wavs[0]
    assert wav.shape == (1600,) and np.isfinite(wav).all()
    # a folder that tta exported keeps tta's framing (vocoder/config.json records the mel)
    assert pipe.mel.framing == "hifigan" and pipe.vocoder.config.mel.framing == "hifigan"
    # a second import into the same place is refused before any work
    assert main(["-q", "import", "diffusers", str(tmp_path / "d"), "--clap", "x", "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_import_of_a_foreign_folder_frames_mels_as_audioldm(tmp_path, capsys):
    """A folder converted from AudioLDM records no mel: the VAE frames audio as AudioLDM's TacotronSTFT, unless
    --mel-framing says otherwise; audio-to-audio then runs on that framing."""
    from tta.pipeline import TTAPipeline

    write_diffusers_audioldm(tmp_path / "d")
    cfg_path = tmp_path / "d" / "vocoder" / "config.json"
    body = json.loads(cfg_path.read_text())
    del body["tta_mel"]
    cfg_path.write_text(json.dumps(body))
    clap = str(tiny_components()["clap"])
    assert main(["-q", "import", "diffusers", str(tmp_path / "d"), "--clap", clap, "--out", str(tmp_path / "a")]) == 0
    pipe = TTAPipeline.from_pretrained(tmp_path / "a")
    assert pipe.mel.framing == "tacotron" and pipe.vocoder.config.mel.framing == "tacotron"
    wav = np.random.default_rng(0).uniform(-0.5, 0.5, 3200).astype(np.float32)
    out = pipe.audio_to_audio(wav, ["a bell"], strength=0.5, steps=2).wavs[0]
    assert out.shape == (3200,) and np.isfinite(out).all()
    out = pipe.audio_to_audio(wav[:400], ["a bell"], strength=0.5, steps=2).wavs[0]    # shorter than the pad
    assert out.shape == (400,) and np.isfinite(out).all()
    assert main(["-q", "import", "diffusers", str(tmp_path / "d"), "--clap", clap, "--mel-framing", "hifigan",
                 "--out", str(tmp_path / "b")]) == 0
    assert TTAPipeline.from_pretrained(tmp_path / "b").mel.framing == "hifigan"


def test_import_names_the_missing_part(tmp_path, capsys):
    import shutil

    write_diffusers_audioldm(tmp_path / "d")
    shutil.rmtree(tmp_path / "d" / "vocoder")
    code = main(["-q", "import", "diffusers", str(tmp_path / "d"), "--clap", str(tiny_components()["clap"]),
                 "--out", str(tmp_path / "o")])
    assert code == 1 and "part 'vocoder' is missing" in capsys.readouterr().err
    (tmp_path / "d" / "model_index.json").write_text("{'_class_name': 'AudioLDMPipeline'}")   # not JSON
    code = main(["-q", "import", "diffusers", str(tmp_path / "d"), "--clap", str(tiny_components()["clap"]),
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and "model_index.json: invalid JSON" in err and err.count("\n") == 1, err


def _set(body: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        body = body[key]
    if value is ...:
        del body[last]
    else:
        body[last] = value


@pytest.mark.parametrize("part, field, value, message", [
    ("vocoder", "tta_mel", [], "tta_mel is []; expected an object (the recorded mel config)"),
    ("vocoder", "tta_mel.n_mels", "64", "config key 'tta_mel.n_mels': expected int, got string '64'"),
    ("vocoder", "tta_mel.bogus", 1, "unknown config key 'tta_mel.bogus' for MelConfig"),
    ("vocoder", "tta_mel.hop_length", ..., "tta_mel has no hop_length (a recorded mel config names every field)"),
    ("vae", "tta_mel", [], "tta_mel is []; expected an object"),
    ("vae", "tta_mel.f_max", None, "config key 'tta_mel.f_max': expected float, got null"),
    ("vae", "tta_mel.framing", 3, "config key 'tta_mel.framing': expected str, got int 3"),
    ("vae", "_tta_mel.framing", 3, "config key '_tta_mel.framing': expected str, got int 3"),
    ("vae", "_tta_mel", [], "_tta_mel is []; expected an object"),
    ("vocoder", "upsample_rates", "ab", "config key 'upsample_rates': expected a list (list of int), got string"),
    ("vocoder", "resblock_dilation_sizes", [1], "config key 'resblock_dilation_sizes[0]': expected a list"),
    ("vocoder", "sampling_rate", ..., "missing required config key 'sampling_rate' (int)"),
    ("vae", "layers_per_block", [1], "config key 'layers_per_block': expected int, got list [1]"),
    ("vae", "scaling_factor", None, "config key 'scaling_factor': expected float, got null"),
    ("unet", "block_out_channels", "abc", "config key 'block_out_channels': expected a list (list of int)"),
])
def test_a_damaged_diffusers_folder_config_names_the_file_and_field(tmp_path, capsys, part, field, value, message):
    """These failed on Python's own words: "MelConfig.__init__() got an unexpected keyword argument 'bogus'",
    "'<=' not supported between instances of 'str' and 'int'", "can't multiply sequence by non-int of type 'str'",
    "float() argument must be a string or a real number, not 'NoneType'"; a vae/ tta_mel that was not an object was
    ignored, and a recorded mel without a field took tta's default for it."""
    write_diffusers_audioldm(tmp_path / "d")
    if part == "vae":   # as `tta export diffusers` writes it (earlier versions: "tta_mel"): the VAE's mel
        voc = json.loads((tmp_path / "d" / "vocoder" / "config.json").read_text())
        body = json.loads((tmp_path / "d" / "vae" / "config.json").read_text())
        key = field.split(".")[0]
        (tmp_path / "d" / "vae" / "config.json").write_text(json.dumps({**body, key: voc["tta_mel"]}))
    path = tmp_path / "d" / part / "config.json"
    body = json.loads(path.read_text())
    _set(body, field, value)
    path.write_text(json.dumps(body))
    code = main(["-q", "import", "diffusers", str(tmp_path / "d"), "--clap", str(tiny_components()["clap"]),
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith(f"tta: error: {path}: ") and message in err, err
    assert err.count("\n") == 1 and not (tmp_path / "o").exists()


def test_a_recorded_mel_without_its_framing_is_an_earlier_exports_hifigan():
    from tta.audio import MelConfig, recorded_mel

    record = dataclasses.asdict(MelConfig(n_mels=80, f_max=7000.0))
    del record["framing"]   # written before MelConfig had one
    assert recorded_mel(record) == MelConfig(n_mels=80, f_max=7000.0, framing="hifigan")


def test_export_refuses_own_clap_with_the_reason(tmp_path, capsys):
    code = main(["-q", "export", "diffusers", str(tiny_pipeline()), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 1 and "LAION-CLAP text encoder" in err and not (tmp_path / "x").exists()


def test_export_diffusers_help_says_what_a_pipeline_needs(capsys):
    """`tta export diffusers --help` showed the usage line and the flags alone: what the export needs (which the
    README says, and the refusal names) was found only by being refused."""
    with pytest.raises(SystemExit) as e:
        main(["export", "diffusers", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0 and 'needs a LAION-CLAP text encoder and a HiFi-GAN vocoder with resblock type "1"' in out


def test_import_audioldm_ckpt_prefers_ema_and_matches_the_reference_names(tmp_path, capsys):
    """A checkpoint in AudioLDM's own layout (built from tiny parts with the reference key names) imports
    into a pipeline whose UNet computes what the source UNet computes."""
    from tta.interop import import_audioldm_ckpt
    from tta.ldm.audioldm import reference_state_dict
    from tta.ldm.model import LDMUNet
    from tta.pipeline import TTAPipeline
    from vae.interop import reference_state_dict as vae_reference
    from vae.model import MelVAE, VAEConfig
    from vocoder.model import HiFiGAN, HiFiGANConfig

    torch.manual_seed(0)
    cfg = dataclasses.replace(tiny_run_config().model, head_channels=32)   # the reference's 32-channel heads
    ema_unet, raw_unet = LDMUNet(cfg).eval(), LDMUNet(cfg).eval()
    ref = reference_state_dict(ema_unet)
    # the reference layout of a 2-level, 1-res-block UNet with attention at downsample 2
    for key in ("film_emb.weight", "time_embed.2.bias", "input_blocks.1.0.in_layers.2.weight",
                "input_blocks.2.0.op.weight", "input_blocks.3.1.transformer_blocks.0.attn1.to_q.weight",
                "middle_block.1.proj_in.weight", "middle_block.2.emb_layers.1.weight",
                "output_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", "output_blocks.1.2.conv.weight",
                "output_blocks.3.0.skip_connection.weight", "out.2.weight"):
        assert key in ref, key
    state = {f"model.diffusion_model.{k}": v for k, v in reference_state_dict(raw_unet).items()}
    state.update({"model_ema." + f"diffusion_model.{k}".replace(".", ""): v for k, v in ref.items()})
    vae = MelVAE(tiny_model_config(VAEConfig, "vae"))
    state.update({f"first_stage_model.{k}": v for k, v in vae_reference(vae).items()})
    state["scale_factor"] = torch.tensor(0.6)
    voc_cfg = dataclasses.replace(tiny_model_config(HiFiGANConfig, "vocoder"), weight_norm=False)
    state.update({f"first_stage_model.vocoder.{k}": v for k, v in HiFiGAN(voc_cfg).state_dict().items()})
    torch.save({"state_dict": state}, tmp_path / "audioldm.ckpt")

    out = import_audioldm_ckpt(tmp_path / "audioldm.ckpt", tmp_path / "p", clap=tiny_components()["clap"],
                               vocoder_config=voc_cfg, vae_norm_groups=vae.config.norm_num_groups)
    pipe = TTAPipeline.from_pretrained(out)
    x, t, c = torch.randn(1, 4, 8, 32), torch.tensor([400]), torch.randn(1, 64)
    with torch.no_grad():
        torch.testing.assert_close(pipe.unet(x, t, c), ema_unet(x, t, c), atol=1e-5, rtol=1e-5)
    # AudioLDM's own text_to_audio: DDIM 200 steps at eta 1, guidance 2.5, best of 3 candidates
    d = pipe.defaults
    assert (d.sampler, d.steps, d.guidance, d.candidates, d.eta) == ("ddim", 200, 2.5, 3, 1.0)
    assert abs(float(pipe.vae.scale_factor) - 0.6) < 1e-6
    assert pipe(["a bell"], seconds=0.1, steps=2).wavs[0].shape == (1600,)
    # the reference's DDIM visits timesteps 1, 1 + c, ..., not 0, c, ...
    assert pipe.scheduler_config["steps_offset"] == 1
    # and its VAE was trained on TacotronSTFT frames (frame k centred on sample hop * k)
    assert pipe.mel.framing == "tacotron" and pipe.vocoder.config.mel.framing == "tacotron"
    out = import_audioldm_ckpt(tmp_path / "audioldm.ckpt", tmp_path / "h", clap=tiny_components()["clap"],
                               vocoder_config=voc_cfg, vae_norm_groups=vae.config.norm_num_groups,
                               mel_framing="hifigan")
    assert TTAPipeline.from_pretrained(out).mel.framing == "hifigan"

    # without --clap the CLAP inside the .ckpt is used; this one has none, which is a one-line refusal
    code = main(["-q", "import", "audioldm", str(tmp_path / "audioldm.ckpt"), "--out", str(tmp_path / "q")])
    err = capsys.readouterr().err
    assert code == 1 and "holds no CLAP (cond_stage_model.model.*)" in err and "Traceback" not in err
    assert not (tmp_path / "q").exists()

    def refused(state, name, *extra):
        torch.save({"state_dict": state}, tmp_path / name)
        code = main(["-q", "import", "audioldm", str(tmp_path / name), "--out", str(tmp_path / "bad"), *extra])
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1 and not (tmp_path / "bad").exists(), err
        return err

    # the CLAP inside a .ckpt needs its tokenizer: refused before the UNet, VAE and vocoder are built (a real file's
    # conversion takes minutes), in words that name the .ckpt, not "a LAION .pt"
    with_clap = {**state, "cond_stage_model.model.logit_scale_a": torch.zeros(())}
    err = refused(with_clap, "with-clap.ckpt")
    assert "the CLAP inside" in err and "needs its RoBERTa tokenizer folder (--tokenizer DIR)" in err, err
    # another model's file (a HiFi-GAN generator) is named for what it is, before any missing CLAP
    assert "not an AudioLDM checkpoint (no model.diffusion_model.* UNet weights" in refused(
        HiFiGAN(voc_cfg).state_dict(), "generator.pt")
    # an EMA copy with one tensor missing is a damaged file, not a run without EMA
    ema_key = next(k for k in state if k.startswith("model_ema."))
    assert "holds EMA weights (model_ema.*) for" in refused(
        {k: v for k, v in state.items() if k != ema_key}, "ema-hole.ckpt", "--clap", str(tiny_components()["clap"]))
    # a UNet without its first convolution names the missing tensor
    assert "not a complete AudioLDM UNet (no model.diffusion_model.input_blocks.0.0.weight)" in refused(
        {k: v for k, v in state.items() if not k.startswith("model_ema.")
         and k != "model.diffusion_model.input_blocks.0.0.weight"}, "no-conv-in.ckpt", "--clap",
        str(tiny_components()["clap"]))
    # weights holding NaN or inf are refused, named by their key in the file: the EMA copy the import uses (they
    # imported without a word, and every generation failed on "clip 0 contains non-finite samples")
    nan = {**state, ema_key: torch.full_like(state[ema_key], float("nan"))}
    unet_tensors = sum(k.startswith("model_ema.") for k in state)
    assert f"nan.ckpt: 1 of its {unet_tensors} weight tensors hold NaN or inf values (first: {ema_key})" in refused(
        nan, "nan.ckpt", "--clap", str(tiny_components()["clap"]))
    # the raw weights beside an EMA copy are not used, and are not looked at
    raw_key = next(k for k in state if k.startswith("model.diffusion_model."))
    torch.save({"state_dict": {**state, raw_key: torch.full_like(state[raw_key], float("inf"))}},
               tmp_path / "raw-inf.ckpt")
    out = import_audioldm_ckpt(tmp_path / "raw-inf.ckpt", tmp_path / "raw-inf", clap=tiny_components()["clap"],
                               vocoder_config=voc_cfg, vae_norm_groups=vae.config.norm_num_groups)
    assert all(bool(torch.isfinite(v).all()) for v in TTAPipeline.from_pretrained(out).unet.state_dict().values())


def test_audioldm_l_heads_are_64_channels_wide():
    """AudioLDM-L (base width 256) uses 64-channel attention heads, S and M 32; nothing in the weights tells
    them apart, so the import follows the reference's configuration unless a width is given."""
    from tta.ldm.audioldm import config_from_reference, load_reference_unet, reference_state_dict
    from tta.ldm.model import LDMUNet

    torch.manual_seed(0)
    base = tiny_run_config().model
    wide = LDMUNet(dataclasses.replace(base, block_out_channels=(256, 256), head_channels=64)).eval()
    narrow = LDMUNet(dataclasses.replace(base, block_out_channels=(64, 128), head_channels=32)).eval()
    assert config_from_reference(reference_state_dict(wide)).head_channels == 64
    assert config_from_reference(reference_state_dict(narrow)).head_channels == 32
    state = {f"model.diffusion_model.{k}": v for k, v in reference_state_dict(wide).items()}
    x, t, c = torch.randn(1, 4, 8, 32), torch.tensor([400]), torch.randn(1, 64)
    with torch.no_grad():
        want = wide(x, t, c)
        torch.testing.assert_close(load_reference_unet(state, where="L", prefer_ema=False)(x, t, c), want)
        other = load_reference_unet(state, where="L", prefer_ema=False, head_channels=32)
        assert other.config.head_channels == 32 and not torch.allclose(other(x, t, c), want, atol=1e-4)


def test_the_cli_offers_every_mel_framing():
    from tta import audio, interop

    assert interop.FRAMINGS == audio.FRAMINGS


def test_import_checks_the_clap_against_the_folders_text_encoder(tmp_path, capsys):
    """A diffusers AudioLDM folder carries the text tower its UNet was trained on (text_encoder/). `--clap`
    must be that CLAP: another LAION-CLAP of the same width, or tta's own CLAP, is refused, naming why."""
    from transformers import AutoTokenizer, ClapModel, ClapTextModelWithProjection

    import tests.test_clap_laion as laion
    from tta.clap.towers import minilm_folder

    write_diffusers_audioldm(tmp_path / "d")
    width = tiny_run_config().model.class_embed_dim
    cfg = laion.tiny_config()
    cfg.projection_dim = cfg.text_config.projection_dim = cfg.audio_config.projection_dim = width
    tok = AutoTokenizer.from_pretrained(str(minilm_folder()))
    claps = {}
    for seed in (1, 2):
        torch.manual_seed(seed)
        claps[seed] = ClapModel(cfg).eval()
        claps[seed].save_pretrained(str(tmp_path / f"clap{seed}"))
        tok.save_pretrained(str(tmp_path / f"clap{seed}"))
    text = ClapTextModelWithProjection(cfg.text_config)
    text.load_state_dict({**{f"text_model.{k}": v for k, v in claps[1].text_model.state_dict().items()},
                          **{f"text_projection.{k}": v for k, v in claps[1].text_projection.state_dict().items()}},
                         strict=False)
    text.save_pretrained(str(tmp_path / "d" / "text_encoder"))

    def imported(clap, out):
        capsys.readouterr()
        code = main(["-q", "import", "diffusers", str(tmp_path / "d"), "--clap", str(clap), "--out", str(out)])
        return code, capsys.readouterr().err

    code, err = imported(tmp_path / "clap2", tmp_path / "p2")
    assert code == 1 and "is not the CLAP this pipeline was trained with" in err and err.count("\n") == 1, err
    assert "token_type_ids" not in err and ".weight: --clap holds other values" in err, err   # a weight, not an index
    assert not (tmp_path / "p2").exists()
    code, err = imported(tiny_components()["clap"], tmp_path / "own")
    assert code == 1 and "tta's own CLAP" in err, err
    code, err = imported(tmp_path / "clap1", tmp_path / "p1")
    assert code == 0, err
    text.half().save_pretrained(str(tmp_path / "d" / "text_encoder"))   # a float16 copy of the same tower
    code, err = imported(tmp_path / "clap1", tmp_path / "p1-half")
    assert code == 0, err


def test_a_scheduler_tta_has_no_sampler_for_is_warned_about(tmp_path, capsys, caplog):
    """A folder whose scheduler/ is a diffusers class tta offers no sampler for (KDPM2DiscreteScheduler) was
    imported with DDIM as its default sampler without a word."""
    from tta.pipeline import TTAPipeline

    write_diffusers_audioldm(tmp_path / "d")
    path = tmp_path / "d" / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "_class_name": "KDPM2DiscreteScheduler"}))
    with caplog.at_level("WARNING"):
        code = main(["-q", "import", "diffusers", str(tmp_path / "d"), "--clap", str(tiny_components()["clap"]),
                     "--out", str(tmp_path / "p")])
    assert code == 0, capsys.readouterr().err
    assert f"{path}: tta has no sampler for KDPM2DiscreteScheduler; the pipeline's default sampler is ddim" in \
        caplog.text
    assert TTAPipeline.from_pretrained(tmp_path / "p").defaults.sampler == "ddim"


def test_importing_leaves_the_global_random_generators_as_they_were(tmp_path):
    """The imports built every part, drawing initial weights (replaced by the stored ones) from torch's global
    generator, so a script's torch.rand after an import (or after loading an AudioLDM UNet) gave other numbers
    than without it."""
    from tests.test_checkpoint import assert_leaves_global_rng
    from tta.interop import import_audioldm_ckpt, import_diffusers_audioldm
    from tta.ldm.audioldm import load_reference_unet, reference_state_dict
    from tta.ldm.model import LDMUNet
    from vae.interop import reference_state_dict as vae_reference
    from vae.model import MelVAE, VAEConfig
    from vocoder.model import HiFiGAN, HiFiGANConfig

    clap = tiny_components()["clap"]
    write_diffusers_audioldm(tmp_path / "d")
    assert_leaves_global_rng(lambda: import_diffusers_audioldm(tmp_path / "d", tmp_path / "from-diffusers", clap=clap))
    torch.manual_seed(0)
    unet = LDMUNet(dataclasses.replace(tiny_run_config().model, head_channels=32)).eval()
    state = {f"model.diffusion_model.{k}": v for k, v in reference_state_dict(unet).items()}
    vae = MelVAE(tiny_model_config(VAEConfig, "vae"))
    state.update({f"first_stage_model.{k}": v for k, v in vae_reference(vae).items()}, scale_factor=torch.tensor(0.6))
    voc_cfg = dataclasses.replace(tiny_model_config(HiFiGANConfig, "vocoder"), weight_norm=False)
    state.update({f"first_stage_model.vocoder.{k}": v for k, v in HiFiGAN(voc_cfg).state_dict().items()})
    torch.save({"state_dict": state}, tmp_path / "audioldm.ckpt")
    loaded = assert_leaves_global_rng(lambda: load_reference_unet(state, where="audioldm.ckpt"))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), unet.state_dict().values()))
    assert_leaves_global_rng(lambda: import_audioldm_ckpt(tmp_path / "audioldm.ckpt", tmp_path / "from-ckpt", clap=clap,
                                                          vocoder_config=voc_cfg,
                                                          vae_norm_groups=vae.config.norm_num_groups))
