"""`tta export pipeline`: a half-precision copy of a pipeline folder with new defaults (how the embedded
default model is packed) loads back and generates what the float32 original generates, up to rounding."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open

from tests.test_ldm_fixtures import one_thread, tiny_pipeline  # noqa: F401  (fixture)
from tta.cli import main


def folder_bytes(folder):
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors") if p.parent.name != "text_encoder")


def test_compact_copy_is_smaller_loads_and_generates_close_to_the_original(tmp_path):
    from tta.pipeline import TTAPipeline

    src = tiny_pipeline()
    out = tmp_path / "packed"
    rc = main(["-q", "export", "pipeline", str(src), "--out", str(out), "--default", "steps=3",
               "--default", "sampler=dpmsolver++", "--default", "precision=auto"])
    assert rc == 0
    spec = json.loads((out / "pipeline.json").read_text())
    assert spec["defaults"]["steps"] == 3 and spec["defaults"]["sampler"] == "dpmsolver++"
    assert spec["defaults"]["precision"] == "auto"
    assert folder_bytes(out) < 0.6 * folder_bytes(src)
    # the CLAP is copied exactly: its identity keys datastores and embedding caches
    clap = "text_encoder/model.safetensors"
    import torch
    from safetensors.torch import load_file

    assert all(torch.equal(a, b) for a, b in zip(load_file(str(src / clap)).values(), load_file(str(out / clap)).values()))
    with safe_open(str(out / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    assert "F16" in dtypes and "F32" in dtypes      # big tensors halved, small ones (norms, biases) kept
    a = TTAPipeline.from_pretrained(src)
    b = TTAPipeline.from_pretrained(out)
    assert next(b.unet.parameters()).dtype == next(a.unet.parameters()).dtype
    assert a.clap.identity == b.clap.identity
    kw = {"seconds": 0.32, "steps": 2, "sampler": "ddim", "seed": 0}
    wa, wb = a(["a tone sound"], **kw).wavs[0], b(["a tone sound"], **kw).wavs[0]
    assert wa.shape == wb.shape and np.isfinite(wb).all()
    assert np.abs(wa - wb).max() < 0.05 * max(np.abs(wa).max(), 1e-3)


def test_the_default_flags_help_lists_every_key_it_takes(tmp_path, capsys):
    """--help listed the --default keys written out beside PipelineDefaults, and left `eta` out although it is
    taken; the list, tta.ldm.folder.DEFAULT_KEYS (light: the parser imports it), is checked against the fields."""
    from dataclasses import fields

    from tta.ldm.folder import DEFAULT_KEYS
    from tta.pipeline import PipelineDefaults

    assert list(DEFAULT_KEYS) == [f.name for f in fields(PipelineDefaults)]

    with pytest.raises(SystemExit):
        main(["export", "pipeline", "--help"])
    keys = [f.name for f in fields(PipelineDefaults)]
    assert f"({', '.join(keys)}); repeatable" in " ".join(capsys.readouterr().out.split())
    assert "eta" in keys
    assert main(["-q", "export", "pipeline", str(tiny_pipeline()), "--out", str(tmp_path / "p"), "--default",
                 "eta=0.5"]) == 0
    assert json.loads((tmp_path / "p" / "pipeline.json").read_text())["defaults"]["eta"] == 0.5


@pytest.mark.parametrize("args, needle", [(["--default", "nope=1"], "nope"),
                                          (["--default", "sampler=wat"], "wat"),
                                          (["--default", "steps"], "KEY=VALUE"),
                                          (["--default", "precision=half"], "precision"),
                                          (["--default", "steps=0"], "defaults.steps=0"),
                                          (["--default", "candidates=0"], "defaults.candidates=0"),
                                          (["--default", "guidance=NaN"], "guidance"),
                                          (["--default", "seconds=-1"], "defaults.seconds=-1"),
                                          (["--default", "seconds=0.001"], "--default seconds=0.001 is shorter than one "
                                                                           "mel frame (0.01 s)"),
                                          # was "--default window=0.001: seconds=0.001 is shorter ..."
                                          (["--default", "window=0.001"], "--default window=0.001 is shorter than one "
                                                                          "mel frame (0.01 s)"),
                                          (["--dtype", "int4"], "int4")])
def test_bad_export_options_are_one_line_errors(tmp_path, capsys, args, needle):
    out = tmp_path / "packed"
    rc = main(["export", "pipeline", str(tiny_pipeline()), "--out", str(out), *args])
    err = capsys.readouterr().err
    assert rc == 1 and needle in err and "Traceback" not in err and not out.exists()


def test_int8_keeps_the_unet_linears_in_8_bits_in_quantos_layout_and_generates_close(tmp_path):
    import torch
    from safetensors.torch import load_file

    from tta.pipeline import TTAPipeline

    src = tiny_pipeline()
    half, eight = tmp_path / "half", tmp_path / "eight"
    assert main(["-q", "export", "pipeline", str(src), "--out", str(half)]) == 0
    assert main(["-q", "export", "pipeline", str(src), "--out", str(eight), "--dtype", "int8"]) == 0
    config = json.loads((eight / "unet" / "config.json").read_text())
    assert config["quantization_config"] == {"quant_method": "quanto", "weights_dtype": "int8",
                                             "modules_to_not_convert": None}
    stored = load_file(str(eight / "unet" / "diffusion_pytorch_model.safetensors"))
    a = TTAPipeline.from_pretrained(src)
    linears = [n for n, m in a.unet.net.named_modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(stored[f"{n}.weight._data"].dtype == torch.int8 for n in linears)
    assert all(f"{n}.weight" not in stored for n in linears)
    assert all(stored[f"{n}.weight._scale"].dtype == torch.float32 for n in linears)
    # one scale per output row, and the row's largest weight is stored as +-127
    n = linears[0]
    w = a.unet.net.get_submodule(n).weight
    data, scale = stored[f"{n}.weight._data"], stored[f"{n}.weight._scale"]
    assert scale.shape == (w.shape[0], 1)
    assert torch.equal(data.abs().amax(dim=1), torch.full((w.shape[0],), 127, dtype=torch.int8))
    assert (data.float() * scale - w).abs().max() <= scale.max() / 2 + 1e-6
    assert folder_bytes(eight / "unet") < 0.9 * folder_bytes(half / "unet")   # (the tiny UNet is mostly conv)
    b = TTAPipeline.from_pretrained(eight)
    assert next(b.unet.parameters()).dtype == torch.float32
    kw = {"seconds": 0.32, "steps": 2, "sampler": "ddim", "seed": 0}
    wa, wb = a(["a tone sound"], **kw).wavs[0], b(["a tone sound"], **kw).wavs[0]
    assert wa.shape == wb.shape and np.isfinite(wb).all()
    assert np.abs(wa - wb).max() < 0.1 * max(np.abs(wa).max(), 1e-3)
    # a copy of the 8-bit folder is stored plainly again (float16), and other quantizations are refused
    assert main(["-q", "export", "pipeline", str(eight), "--out", str(tmp_path / "again")]) == 0
    assert "quantization_config" not in json.loads((tmp_path / "again" / "unet" / "config.json").read_text())


def test_an_unsupported_quantization_is_a_one_line_error(tmp_path, capsys):
    import shutil

    bad = tmp_path / "bnb"
    shutil.copytree(tiny_pipeline(), bad)
    config = json.loads((bad / "unet" / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    (bad / "unet" / "config.json").write_text(json.dumps(config))
    rc = main(["generate", "a tone sound", "--model", str(bad), "-o", str(tmp_path / "x.wav"),
               "--seconds", "0.32", "--steps", "2"])
    err = capsys.readouterr().err
    assert rc != 0 and "unet/config.json" in err and "bitsandbytes" in err and "Traceback" not in err
    assert not (tmp_path / "x.wav").exists()


def test_diffusers_with_optimum_quanto_opens_the_int8_unet(tmp_path):
    pytest.importorskip("optimum.quanto")
    import torch
    from diffusers import UNet2DConditionModel

    from tta.pipeline import TTAPipeline

    out = tmp_path / "eight"
    assert main(["-q", "export", "pipeline", str(tiny_pipeline()), "--out", str(out), "--dtype", "int8"]) == 0
    theirs = UNet2DConditionModel.from_pretrained(str(out / "unet"), torch_dtype=torch.float32)
    mine = TTAPipeline.from_pretrained(out).unet
    x, t = torch.randn(1, mine.config.latent_channels, 16, 8), torch.tensor([500])
    cond = torch.randn(1, mine.config.class_embed_dim)
    with torch.no_grad():
        want = mine(x, t, cond)
        got = theirs(x, t, encoder_hidden_states=None, class_labels=cond).sample
    assert torch.allclose(got, want, atol=1e-4)


def test_vocoder_replacement_is_used_and_a_mismatched_one_refused(tmp_path, capsys):
    from dataclasses import replace

    import torch

    from tests.test_ldm_fixtures import tiny_model_config
    from tta.checkpoint import save_component
    from tta.pipeline import TTAPipeline
    from vocoder.model import HiFiGAN, HiFiGANConfig

    cfg = tiny_model_config(HiFiGANConfig, "vocoder")
    torch.manual_seed(123)
    save_component(tmp_path / "voc" / "final", HiFiGAN(cfg))              # a vocoder run folder
    out = tmp_path / "packed"
    assert main(["-q", "export", "pipeline", str(tiny_pipeline()), "--out", str(out), "--dtype", "float32",
                 "--vocoder", str(tmp_path / "voc")]) == 0
    packed = TTAPipeline.from_pretrained(out)
    torch.manual_seed(123)
    mine = HiFiGAN(cfg)
    assert all(torch.equal(a, b) for a, b in zip(packed.vocoder.state_dict().values(), mine.state_dict().values()))
    other = replace(cfg, mel=replace(cfg.mel, f_max=4000.0))
    save_component(tmp_path / "bad", HiFiGAN(other))
    rc = main(["export", "pipeline", str(tiny_pipeline()), "--out", str(tmp_path / "x"), "--vocoder",
               str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert rc == 1 and "--vocoder" in err and "f_max" in err and not (tmp_path / "x").exists()
    # a folder of another component (the VAE): the vocoder classes were listed twice in the one line
    rc = main(["export", "pipeline", str(tiny_pipeline()), "--out", str(tmp_path / "x"), "--vocoder",
               str(tiny_pipeline() / "vae")])
    err = capsys.readouterr().err
    assert rc == 1 and "holds a vae.model.MelVAE; expected a vocoder" in err and err.count("HiFiGAN") == 1, err
    assert err.rstrip().endswith("(or griffin-lim[:ITERS])") and not (tmp_path / "x").exists()


def test_a_griffin_lim_vocoder_can_replace_the_hifigan(tmp_path, capsys):
    from tta.pipeline import TTAPipeline
    from vocoder.griffinlim import GriffinLim

    out = tmp_path / "gl"
    assert main(["-q", "export", "pipeline", str(tiny_pipeline()), "--out", str(out), "--vocoder", "griffin-lim:4"]) == 0
    assert json.loads((out / "vocoder" / "config.json").read_text())["class"] == "vocoder.griffinlim.GriffinLim"
    pipe = TTAPipeline.from_pretrained(out)
    assert isinstance(pipe.vocoder, GriffinLim) and pipe.vocoder.config.n_iter == 4
    wav = pipe(["a tone sound"], seconds=0.32, steps=2, sampler="ddim", seed=0).wavs[0]
    assert wav.shape == (5120,) and np.isfinite(wav).all()
    # diffusers' AudioLDMPipeline has no Griffin-Lim: that export is refused in one line
    rc = main(["export", "diffusers", str(out), "--out", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert rc == 1 and "GriffinLim" in err and "Traceback" not in err
    rc = main(["export", "pipeline", str(tiny_pipeline()), "--out", str(tmp_path / "x"), "--vocoder", "griffin-lim:x"])
    assert rc == 1 and "griffin-lim:ITERS" in capsys.readouterr().err


def test_vae_replacement_takes_a_decoder_fine_tune_and_refuses_a_new_encoder(tmp_path, capsys):
    import torch

    from tta.checkpoint import save_component
    from tta.pipeline import TTAPipeline

    src = tiny_pipeline()
    vae = TTAPipeline.from_pretrained(src).vae
    with torch.no_grad():                                   # what a decoder fine-tune changes
        vae.net.decoder.conv_out.weight.add_(0.01)
    save_component(tmp_path / "dec" / "final", vae)          # a run folder
    out = tmp_path / "packed"
    assert main(["-q", "export", "pipeline", str(src), "--out", str(out), "--dtype", "float32",
                 "--vae", str(tmp_path / "dec")]) == 0
    packed = TTAPipeline.from_pretrained(out).vae
    assert torch.equal(packed.net.decoder.conv_out.weight, vae.net.decoder.conv_out.weight)
    assert float(packed.scale_factor) == float(vae.scale_factor)

    with torch.no_grad():
        vae.net.encoder.conv_in.weight.mul_(1.5)
    save_component(tmp_path / "enc", vae)
    rc = main(["export", "pipeline", str(src), "--out", str(tmp_path / "x"), "--vae", str(tmp_path / "enc")])
    err = capsys.readouterr().err
    assert rc == 1 and "--vae" in err and "encoder differs" in err and "freeze_encoder" in err
    assert "Traceback" not in err and not (tmp_path / "x").exists()
    rc = main(["export", "pipeline", str(src), "--out", str(tmp_path / "y"), "--vae", str(tmp_path / "nothing")])
    err = capsys.readouterr().err
    assert rc == 1 and "--vae" in err and not (tmp_path / "y").exists()


def test_average_makes_the_mean_or_a_weighted_mix_of_one_model_and_refuses_another_model(tmp_path, capsys):
    import torch

    from tta.pipeline import TTAPipeline

    src = tiny_pipeline()
    pipe = TTAPipeline.from_pretrained(src)
    base = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    steps = []
    for i, where in enumerate(("b", "run/pipeline")):      # a pipeline folder and an LDM run folder
        torch.manual_seed(i)
        with torch.no_grad():
            step = {k: torch.randn_like(v) * 0.01 for k, v in base.items() if v.is_floating_point()}
            pipe.unet.load_state_dict({k: v + step[k] if k in step else v for k, v in base.items()})
        pipe.save_pretrained(tmp_path / where)
        steps.append(step)
    out = tmp_path / "soup"
    assert main(["-q", "export", "pipeline", str(src), "--out", str(out), "--dtype", "float32",
                 "--average", str(tmp_path / "b"), "--average", str(tmp_path / "run")]) == 0
    soup = TTAPipeline.from_pretrained(out).unet.state_dict()
    k = next(k for k, v in base.items() if v.is_floating_point() and v.numel() > 16)
    want = base[k] + (steps[0][k] + steps[1][k]) / 3
    assert torch.allclose(soup[k], want, atol=1e-6) and not torch.allclose(soup[k], base[k], atol=1e-4)
    # weighted: 30 % of the way to b and 20 % to the run, the pipeline keeps the other half
    assert main(["-q", "export", "pipeline", str(src), "--out", str(tmp_path / "mix"), "--dtype", "float32",
                 "--average", f"{tmp_path / 'b'}:0.3", "--average", f"{tmp_path / 'run'}:0.2"]) == 0
    mix = TTAPipeline.from_pretrained(tmp_path / "mix").unet.state_dict()
    assert torch.allclose(mix[k], base[k] + 0.3 * steps[0][k] + 0.2 * steps[1][k], atol=1e-6)
    # a negative rest extrapolates past the folder: 1.5 x b - 0.5 x the pipeline
    assert main(["-q", "export", "pipeline", str(src), "--out", str(tmp_path / "far"), "--dtype", "float32",
                 "--average", f"{tmp_path / 'b'}:1.5"]) == 0
    far = TTAPipeline.from_pretrained(tmp_path / "far").unet.state_dict()
    assert torch.allclose(far[k], base[k] + 1.5 * steps[0][k], atol=1e-6)
    rc = main(["export", "pipeline", str(src), "--out", str(tmp_path / "half"),
               "--average", f"{tmp_path / 'b'}:0.3", "--average", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 1 and "every folder a weight" in err and not (tmp_path / "half").exists()
    # another CLAP: its UNet answers other embeddings, so it is not averaged in
    other = TTAPipeline.from_pretrained(src)
    with torch.no_grad():
        next(iter(other.clap.model.parameters())).add_(0.5)
    other.save_pretrained(tmp_path / "c")
    rc = main(["export", "pipeline", str(src), "--out", str(tmp_path / "x"), "--average", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert rc == 1 and "--average" in err and "CLAP" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
    rc = main(["export", "pipeline", str(src), "--out", str(tmp_path / "y"), "--average", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert rc == 1 and "--average" in err and not (tmp_path / "y").exists()


def test_average_refuses_a_unet_of_another_target_or_latent_space(tmp_path, capsys):
    """Averaging needs one model: a UNet trained to predict v instead of the noise, or on another VAE's
    latents, answers another question, and its weights mixed in made a silently meaningless model."""
    import json as _json

    import torch

    from tta.pipeline import TTAPipeline

    src = tiny_pipeline()
    v_pred = TTAPipeline.from_pretrained(src).save_pretrained(tmp_path / "v")
    sched = next((v_pred / "scheduler").glob("*.json"))
    body = _json.loads(sched.read_text())
    body["prediction_type"] = "v_prediction"
    sched.write_text(_json.dumps(body))
    other_vae = TTAPipeline.from_pretrained(src)
    with torch.no_grad():
        for name, param in other_vae.vae.named_parameters():
            if name.startswith("net.encoder."):
                param.mul_(-3)
    other_vae.save_pretrained(tmp_path / "vae")
    for folder, words in ((tmp_path / "v", "prediction type"), (tmp_path / "vae", "another latent space")):
        rc = main(["export", "pipeline", str(src), "--out", str(tmp_path / "x"), "--average", str(folder)])
        err = capsys.readouterr().err
        assert rc == 1 and words in err and err.count("\n") == 1, err
        assert not (tmp_path / "x").exists()


def test_a_weight_beyond_float16_is_kept_in_float32_not_stored_as_inf(tmp_path, caplog):
    import torch
    from safetensors.torch import load_file

    from tta.pipeline import TTAPipeline

    pipe = TTAPipeline.from_pretrained(tiny_pipeline())
    name, param = next((n, p) for n, p in pipe.unet.named_parameters() if p.numel() >= 1024)
    with torch.no_grad():
        param.view(-1)[0] = 7e4
    big = pipe.save_pretrained(tmp_path / "big")
    with caplog.at_level("WARNING"):
        assert main(["-q", "export", "pipeline", str(big), "--out", str(tmp_path / "half")]) == 0
    assert any("overflow float16" in r.message for r in caplog.records)
    stored = load_file(str(next((tmp_path / "half" / "unet").glob("*.safetensors"))))
    assert all(torch.isfinite(v.float()).all() for v in stored.values())
    assert float(TTAPipeline.from_pretrained(tmp_path / "half").unet.state_dict()[name].view(-1)[0]) == 7e4


def test_the_model_card_attribution_and_licences_go_with_the_weights(tmp_path, caplog):
    """`tta export pipeline tta/assets/default --dtype int8` (as the card suggests) wrote the components only: the
    CC-BY-SA attribution that must ship with the weights was lost without a word."""
    import shutil

    src = tmp_path / "src"
    shutil.copytree(tiny_pipeline(), src)
    (src / "README.md").write_text("# card\n")
    (src / "licences").mkdir()
    (src / "licences" / "pkg.copyright").write_text("CC-BY-SA-3.0\n")
    shutil.copytree(src, src / "old-export")           # an earlier export and generated audio kept in the folder
    (src / "generated").mkdir()
    (src / "generated" / "x.wav").write_bytes(b"RIFF")
    assert main(["-q", "export", "pipeline", str(src), "--out", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "README.md").read_text() == "# card\n"
    assert (tmp_path / "a" / "licences" / "pkg.copyright").is_file()
    assert not (tmp_path / "a" / "old-export").exists() and not (tmp_path / "a" / "generated").exists()
    with caplog.at_level("WARNING", logger="tta.interop"):
        assert main(["-q", "export", "pipeline", str(src), "--out", str(tmp_path / "b"), "--average",
                     str(src)]) == 0
    assert any("copied README.md, licences" in r.message and "--average changed" in r.message
               for r in caplog.records)


def test_a_damaged_half_precision_copy_is_refused_naming_the_file_and_key(tmp_path, capsys):
    """A pipeline folder whose float16 weights held inf (a copy damaged after export) loaded without a word: `tta
    generate` failed after sampling on "latents ... contain non-finite values", naming neither file nor part."""
    import torch
    from safetensors.torch import load_file, save_file

    out = tmp_path / "packed"
    assert main(["-q", "export", "pipeline", str(tiny_pipeline()), "--out", str(out)]) == 0
    weights = out / "vae" / "model.safetensors"
    state = load_file(str(weights))
    key = next(k for k, v in state.items() if v.dtype == torch.float16)
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("inf")
    save_file(state, str(weights), metadata={"format": "pt"})
    capsys.readouterr()
    wav = tmp_path / "x.wav"
    assert main(["generate", "a bell", "--model", str(out), "-o", str(wav), "--seconds", "0.1", "--steps", "2"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{weights}: 1 of its {len(state)} weight tensors hold NaN or inf values (first: {key})" in err, err
    assert not wav.exists()
