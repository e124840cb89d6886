"""`tta export diffusers`, the positive path: a tiny pipeline on a LAION-CLAP text encoder becomes a folder that
diffusers' own AudioLDMPipeline.from_pretrained loads, and that pipeline, run on the prompt text through the
exported tokenizer and text encoder, gives the same waveform as tta's pipeline for the same initial latents."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
import torch

from tests.test_ldm_fixtures import one_thread, tiny_model_config, tiny_run_config  # noqa: F401 (autouse)
from tta.cli import main


@pytest.fixture(scope="module")
def laion_pipeline(tmp_path_factory):
    """A tta pipeline folder of tiny random parts whose text encoder is a transformers (LAION) CLAP."""
    pytest.importorskip("diffusers")
    from transformers import ClapModel

    from tests.test_clap_laion import PROJ, tiny_config
    from tta.clap import load_clap
    from tta.clap.towers import minilm_folder
    from tta.ldm.model import LDMUNet
    from tta.pipeline import PipelineDefaults, TTAPipeline
    from vae.model import MelVAE, VAEConfig
    from vocoder.model import HiFiGAN, HiFiGANConfig

    root = tmp_path_factory.mktemp("laion-pipe")
    torch.manual_seed(0)
    clap_dir = root / "clap"
    ClapModel(tiny_config()).save_pretrained(str(clap_dir))
    from transformers import AutoTokenizer

    # a real local WordPiece vocabulary stands in for RoBERTa's (the tokenizer is saved with the model)
    AutoTokenizer.from_pretrained(str(minilm_folder()), local_files_only=True).save_pretrained(str(clap_dir))
    clap = load_clap(clap_dir)
    vae = MelVAE(tiny_model_config(VAEConfig, "vae")).eval()
    vae.set_scale_factor(0.81)
    vocoder = HiFiGAN(dataclasses.replace(tiny_model_config(HiFiGANConfig, "vocoder"), resblock="1",
                                          resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1, 3, 5),),
                                          weight_norm=False)).eval()
    unet = LDMUNet(dataclasses.replace(tiny_run_config().model, class_embed_dim=PROJ)).eval()
    pipe = TTAPipeline(unet, vae, vocoder, clap, tiny_run_config().diffusion.scheduler_config(),
                       PipelineDefaults(sampler="ddim", steps=3, guidance=2.5, seconds=0.32))
    return pipe.save_pretrained(root / "tta")


def test_exported_folder_loads_in_diffusers_and_matches(laion_pipeline, tmp_path, capsys):
    import diffusers

    from tta.pipeline import TTAPipeline

    out = tmp_path / "audioldm"
    code = main(["-q", "export", "diffusers", str(laion_pipeline), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "AudioLDMPipeline"
    assert {"unet", "vae", "vocoder", "scheduler", "text_encoder", "tokenizer"} <= set(index)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = diffusers.AudioLDMPipeline.from_pretrained(str(out), local_files_only=True)
    theirs.set_progress_bar_config(disable=True)
    ours = TTAPipeline.from_pretrained(laion_pipeline)
    assert type(theirs.scheduler).__name__ == "DDIMScheduler"
    assert float(theirs.vae.config.scaling_factor) == pytest.approx(0.81)

    # the text path: diffusers tokenizes and encodes the prompt itself; the embedding equals tta's CLAP one
    ids = theirs.tokenizer(["a dog barks"], return_tensors="pt")
    with torch.no_grad():
        text = theirs.text_encoder(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).text_embeds
    torch.testing.assert_close(torch.nn.functional.normalize(text, dim=-1), ours.clap.embed_text(["a dog barks"]),
                               atol=1e-5, rtol=0)

    seconds, steps, guidance = 0.32, 3, 2.5
    num_samples = int(seconds * 16_000)
    noise = torch.randn((1, *ours.latent_shape(num_samples)), generator=torch.Generator().manual_seed(0))
    cond, uncond = ours.clap.embed_text(["a dog barks"]), ours.clap.embed_text([""])
    mine = ours.sample(noise, cond, uncond, num_samples, steps=steps, guidance=guidance, sampler="ddim")[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = theirs("a dog barks", latents=noise.clone(), num_inference_steps=steps, guidance_scale=guidance,
                     audio_length_in_s=seconds, output_type="pt").audios[0]
    assert ref.shape == mine.shape == (num_samples,)
    assert float(ref.abs().max()) > 1e-4                          # not a trivially silent comparison
    torch.testing.assert_close(mine, ref.float(), atol=1e-4, rtol=0)

    # diffusers' default call (no audio_length_in_s) takes its length from the UNet's sample_size: the
    # pipeline's default seconds in latent frames
    assert theirs.unet.config.sample_size == ours.latent_shape(num_samples)[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default = theirs("a dog barks", num_inference_steps=2, output_type="pt").audios[0]
    assert default.shape == (num_samples,) and bool(torch.isfinite(default).all())


def test_export_into_an_existing_folder_is_refused(laion_pipeline, tmp_path, capsys):
    out = tmp_path / "audioldm"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = main(["-q", "export", "diffusers", str(laion_pipeline), "--out", str(out)])
    assert code == 1 and str(out) in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_export_and_import_show_no_bar_of_transformers_and_leave_its_bars_as_they_were(laion_pipeline, tmp_path,
                                                                                       capsys):
    """Without -q, `tta export diffusers` drew transformers' own "Loading weights" bar (the CLAP) and "Writing model
    shards" bar (text_encoder/), and `tta import diffusers` the same two (--clap, the pipeline's CLAP): tta's bars
    are the command's. They are off while a command runs, and afterwards as the caller had them (-q left them off
    for good in a process that goes on)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as hf_logging

    libraries = (hf_logging, diffusers_logging)
    was = [library.is_progress_bar_enabled() for library in libraries]
    try:
        for library in libraries:
            library.enable_progress_bar()
        capsys.readouterr()
        assert main(["export", "diffusers", str(laion_pipeline), "--out", str(tmp_path / "d")]) == 0
        assert main(["import", "diffusers", str(tmp_path / "d"), "--clap", str(laion_pipeline.parent / "clap"),
                     "--out", str(tmp_path / "back")]) == 0
        err = capsys.readouterr().err
        assert "Loading weights" not in err and "Writing model shards" not in err and "it/s" not in err, repr(err)
        assert all(library.is_progress_bar_enabled() for library in libraries)
        assert main(["-q", "export", "diffusers", str(laion_pipeline), "--out", str(tmp_path / "q")]) == 0
        assert all(library.is_progress_bar_enabled() for library in libraries)
        hf_logging.disable_progress_bar()   # the caller's own choice is left as it is too
        assert main(["export", "diffusers", str(laion_pipeline), "--out", str(tmp_path / "off")]) == 0
        assert not hf_logging.is_progress_bar_enabled() and diffusers_logging.is_progress_bar_enabled()
    finally:
        for library, enabled in zip(libraries, was):
            (library.enable_progress_bar if enabled else library.disable_progress_bar)()


def test_the_vaes_own_framing_survives_a_diffusers_round_trip(laion_pipeline, tmp_path, capsys):
    """A pipeline whose VAE frames mels otherwise than its vocoder (allowed: the vocoder reads mels alike) came
    back from export + import with the vocoder's framing on its VAE: edits encoded input half a hop off."""
    from tta.pipeline import TTAPipeline

    pipe = TTAPipeline.from_pretrained(laion_pipeline)
    other = "tacotron" if pipe.vae.config.mel.framing != "tacotron" else "hifigan"
    pipe.vae.config = dataclasses.replace(pipe.vae.config, mel=dataclasses.replace(pipe.vae.config.mel,
                                                                                 framing=other))
    mixed = pipe.save_pretrained(tmp_path / "mixed")
    assert main(["-q", "export", "diffusers", str(mixed), "--out", str(tmp_path / "d")]) == 0
    assert main(["-q", "import", "diffusers", str(tmp_path / "d"), "--clap", str(laion_pipeline.parent / "clap"),
                 "--out", str(tmp_path / "back")]) == 0, capsys.readouterr().err
    back = TTAPipeline.from_pretrained(tmp_path / "back")
    assert back.vae.config.mel.framing == other
    assert back.vocoder.config.mel.framing == pipe.vocoder.config.mel.framing != other

    # a folder an earlier tta exported recorded the VAE's mel as "tta_mel": it imports as it did
    vae_config = tmp_path / "d" / "vae" / "config.json"
    body = json.loads(vae_config.read_text())
    body["tta_mel"] = body.pop("_tta_mel")
    vae_config.write_text(json.dumps(body))
    assert main(["-q", "import", "diffusers", str(tmp_path / "d"), "--clap", str(laion_pipeline.parent / "clap"),
                 "--out", str(tmp_path / "old")]) == 0, capsys.readouterr().err
    old = TTAPipeline.from_pretrained(tmp_path / "old")
    assert old.vae.config.mel.framing == other and old.vocoder.config.mel.framing != other


def test_diffusers_loads_an_export_without_a_warning_about_its_config(laion_pipeline, tmp_path, capsys):
    """The export recorded the VAE's mel as "tta_mel" in vae/config.json, and every AudioLDMPipeline.from_pretrained
    of the folder logged "The config attributes {'tta_mel': ...} were passed to AutoencoderKL, but are not expected
    and will be ignored": the record is a private ("_") key now, which diffusers skips."""
    import logging

    import diffusers

    out = tmp_path / "d"
    assert main(["-q", "export", "diffusers", str(laion_pipeline), "--out", str(out)]) == 0, capsys.readouterr().err
    body = json.loads((out / "vae" / "config.json").read_text())
    assert "tta_mel" not in body and set(body["_tta_mel"]) >= {"sample_rate", "n_mels", "hop_length", "framing"}

    class Records(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    records, logger = Records(), logging.getLogger("diffusers")
    level = logger.level
    logger.addHandler(records)
    logger.setLevel(logging.WARNING)   # tta's CLI quiets diffusers; its own default level is WARNING
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            diffusers.AudioLDMPipeline.from_pretrained(str(out), local_files_only=True)
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    assert not [m for m in records.messages if "not expected" in m], records.messages


def test_import_names_a_scheduler_config_field_of_the_wrong_type(laion_pipeline, tmp_path, capsys):
    """diffusers took "num_train_timesteps": "1000" and the import failed on torch.linspace's many-line error
    ("linspace() received an invalid combination of arguments ..."), naming no file."""
    import json

    assert main(["-q", "export", "diffusers", str(laion_pipeline), "--out", str(tmp_path / "d")]) == 0
    path = tmp_path / "d" / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "num_train_timesteps": "1000"}))
    capsys.readouterr()
    assert main(["-q", "import", "diffusers", str(tmp_path / "d"), "--clap", str(laion_pipeline.parent / "clap"),
                 "--out", str(tmp_path / "back")]) == 1
    assert capsys.readouterr().err == (f"tta: error: {path}: config key 'scheduler.num_train_timesteps': expected "
                                       "int, got string '1000'\n")
    assert not (tmp_path / "back").exists()


def test_a_resblock_2_hifigan_is_refused_before_anything_is_written(laion_pipeline, tmp_path, capsys):
    """configs/vocoder/default.json and tiny.json train resblock '2', which SpeechT5HifiGan lacks: the refusal
    came after the UNet and VAE were written, named the deleted temporary folder and left the output's parent
    behind."""
    from tests.test_ldm_fixtures import tiny_model_config
    from tta.pipeline import TTAPipeline
    from vocoder.model import HiFiGAN, HiFiGANConfig

    pipe = TTAPipeline.from_pretrained(laion_pipeline)
    pipe.vocoder = HiFiGAN(dataclasses.replace(tiny_model_config(HiFiGANConfig, "vocoder"), resblock="2",
                                               resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1, 3),),
                                               mel=pipe.vocoder.config.mel)).eval()
    folder = pipe.save_pretrained(tmp_path / "rb2")
    code = main(["-q", "export", "diffusers", str(folder), "--out", str(tmp_path / "new" / "d")])
    err = capsys.readouterr().err
    assert code == 1 and f"{folder}/vocoder: a HiFi-GAN with resblock type '2'" in err, err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("part", ["unet", "vae", "vocoder"])
def test_import_refuses_a_part_holding_nan_naming_the_file_and_key(laion_pipeline, tmp_path, capsys, part):
    """Every tensor of one part set to NaN imported with rc 0; `tta generate` then failed on "clip 0 contains
    non-finite samples (NaN or inf)", naming neither the weights nor the part."""
    from safetensors.torch import load_file, save_file

    assert main(["-q", "export", "diffusers", str(laion_pipeline), "--out", str(tmp_path / "d")]) == 0
    weights = next((tmp_path / "d" / part).glob("*.safetensors"))
    state = load_file(str(weights))
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(weights), metadata={"format": "pt"})
    capsys.readouterr()
    out = tmp_path / "back"
    assert main(["-q", "import", "diffusers", str(tmp_path / "d"), "--clap", str(laion_pipeline.parent / "clap"),
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err
    n = sum(v.is_floating_point() for v in state.values())
    assert err.startswith(f"tta: error: {weights}: {n} of its {n} weight tensors hold NaN or inf values (first: "
                          f"{next(k for k, v in state.items() if v.is_floating_point())}); ") and err.count("\n") == 1
    assert not out.exists()


def test_import_takes_back_the_defaults_the_export_recorded_and_the_length_as_diffusers_does(laion_pipeline,
                                                                                              tmp_path, capsys,
                                                                                              caplog):
    """`tta import diffusers` of a folder `tta export diffusers` wrote set 200 steps and 10 s, whatever the exported
    pipeline's defaults were; the default length, recorded in unet/config.json's sample_size, was not read back."""
    import diffusers

    from tta.pipeline import TTAPipeline

    pipe = TTAPipeline.from_pretrained(laion_pipeline)
    pipe.defaults = dataclasses.replace(pipe.defaults, sampler="dpmsolver++", steps=7, guidance=3.5, seconds=0.3,
                                        candidates=2, eta=0.5, precision="auto")
    source = pipe.save_pretrained(tmp_path / "source")
    assert main(["-q", "export", "diffusers", str(source), "--out", str(tmp_path / "d")]) == 0
    clap = str(laion_pipeline.parent / "clap")
    assert main(["-q", "import", "diffusers", str(tmp_path / "d"), "--clap", clap, "--out", str(tmp_path / "back")]) == 0
    # every default comes back, the length too (0.3 s, not the 0.32 s its 16 latent frames make)
    assert TTAPipeline.from_pretrained(tmp_path / "back").defaults == pipe.defaults

    # a folder tta did not write (no record): AudioLDM's steps and guidance, and AudioLDMPipeline's default length,
    # sample_size latent frames x the VAE's downsampling x the vocoder's hop
    index = tmp_path / "d" / "model_index.json"
    body = json.loads(index.read_text())
    del body["_tta_defaults"]
    index.write_text(json.dumps(body))
    unet_config = tmp_path / "d" / "unet" / "config.json"
    body = json.loads(unet_config.read_text())
    unet_config.write_text(json.dumps({**body, "sample_size": 20}))
    assert main(["-q", "import", "diffusers", str(tmp_path / "d"), "--clap", clap, "--out", str(tmp_path / "b2")]) == 0
    d = TTAPipeline.from_pretrained(tmp_path / "b2").defaults
    assert (d.sampler, d.steps, d.guidance, d.candidates) == ("dpmsolver++", 200, 2.5, 1)
    assert d.seconds == 20 * 2 * 160 / 16_000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = diffusers.AudioLDMPipeline.from_pretrained(str(tmp_path / "d"), local_files_only=True)
        theirs.set_progress_bar_config(disable=True)
        default = theirs("a dog barks", num_inference_steps=1, output_type="pt").audios[0]
    assert default.shape == (round(d.seconds * 16_000),)

    # a sample_size that gives no length, and a damaged record, are named with the file and the field
    capsys.readouterr()
    unet_config.write_text(json.dumps({**body, "sample_size": "20"}))
    assert main(["-q", "import", "diffusers", str(tmp_path / "d"), "--clap", clap, "--out", str(tmp_path / "b3")]) == 1
    assert capsys.readouterr().err == (f"tta: error: {unet_config}: sample_size='20'; expected a whole number of "
                                       "latent frames >= 1 (AudioLDMPipeline's default length) or null\n")
    unet_config.write_text(json.dumps(body))
    index.write_text(json.dumps({**json.loads(index.read_text()), "_tta_defaults": {"steps": 0}}))
    assert main(["-q", "import", "diffusers", str(tmp_path / "d"), "--clap", clap, "--out", str(tmp_path / "b3")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tta: error: {index}: ") and "steps=0 must be an integer >= 1" in err and \
        err.count("\n") == 1, err
    assert not (tmp_path / "b3").exists()
    # a length beyond what tta generates per clip is its longest, said with the file and the field
    from tta.interop import _default_seconds
    from tta.pipeline import MAX_SECONDS

    with caplog.at_level("WARNING"):
        assert _default_seconds(pipe, 10**6, None, where=unet_config) == MAX_SECONDS
    assert f"{unet_config}: sample_size=1000000 makes a default length of 20000 s" in caplog.text
