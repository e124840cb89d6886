"""Parity with diffusers' AudioLDMPipeline (deprecated, still shipped in diffusers 0.42): the same tiny random
weights, prompt embeddings, initial latents and scheduler give the same waveform (<= 1e-4)."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from tests.test_ldm_fixtures import one_thread, tiny_model_config, tiny_run_config  # noqa: F401 (autouse)


@pytest.mark.parametrize("sampler, guidance", [("ddim", 2.5),
                                               pytest.param("dpmsolver++", 1.0, marks=pytest.mark.slow)])
def test_tta_pipeline_matches_diffusers_audioldm(tmp_path, sampler, guidance):
    diffusers = pytest.importorskip("diffusers")
    from transformers import ClapTextConfig, ClapTextModelWithProjection, SpeechT5HifiGan

    from tests.test_ldm_fixtures import tiny_components
    from tta.clap.model import TTAClapEmbedder
    from tta.ldm.model import LDMUNet
    from tta.pipeline import PipelineDefaults, TTAPipeline
    from vae.model import MelVAE, VAEConfig
    from vocoder.interop import export_speecht5
    from vocoder.model import HiFiGAN, HiFiGANConfig

    torch.manual_seed(0)
    vae = MelVAE(tiny_model_config(VAEConfig, "vae")).eval()
    vae.set_scale_factor(0.73)                                   # exercise the latent scaling on both sides
    voc_cfg = dataclasses.replace(tiny_model_config(HiFiGANConfig, "vocoder"), resblock="1",
                                  resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1, 3, 5),), weight_norm=False)
    vocoder = HiFiGAN(voc_cfg).eval()
    export_speecht5(vocoder, tmp_path / "speecht5")
    unet = LDMUNet(tiny_run_config().model).eval()
    clap = TTAClapEmbedder.from_folder(tiny_components()["clap"])
    ours = TTAPipeline(unet, vae, vocoder, clap, tiny_run_config().diffusion.scheduler_config(), PipelineDefaults())

    cond = clap.embed_text(["a dog barks"])
    uncond = clap.embed_text([""])
    seconds, steps = 0.32, 3
    num_samples = int(seconds * 16_000)
    noise = torch.randn((1, *ours.latent_shape(num_samples)), generator=torch.Generator().manual_seed(0))
    mine = ours.sample(noise, cond, uncond, num_samples, steps=steps, guidance=guidance, sampler=sampler)[0]

    from tta.ldm.sampling import make_scheduler

    text_encoder = ClapTextModelWithProjection(ClapTextConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
        projection_dim=64, max_position_embeddings=40)).eval()   # only its dtype is used: embeddings are given
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = diffusers.AudioLDMPipeline(
            vae=vae.net, text_encoder=text_encoder, tokenizer=None, unet=unet.net,
            scheduler=make_scheduler(sampler, ours.scheduler_config),
            vocoder=SpeechT5HifiGan.from_pretrained(str(tmp_path / "speecht5")).eval())
        theirs.set_progress_bar_config(disable=True)
        ref = theirs(prompt_embeds=cond, negative_prompt_embeds=uncond, latents=noise.clone(),
                     num_inference_steps=steps, guidance_scale=guidance, audio_length_in_s=seconds,
                     output_type="pt").audios[0]
    assert ref.shape == mine.shape == (num_samples,)
    assert float(ref.abs().max()) > 1e-4                          # not a trivially silent comparison
    torch.testing.assert_close(mine, ref.float(), atol=1e-4, rtol=0)
