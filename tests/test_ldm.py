"""tta.ldm: the AudioLDM-style UNet, the noise-schedule maths, `tta train ldm` (trains, validates, resumes)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from tests.test_ldm_fixtures import ROOT, one_thread, tiny_pipeline, tiny_run_config  # noqa: F401 (autouse)
from tta.config import load_config
from tta.ldm.model import LDMConfig, LDMUNet


def tiny_unet(**changes) -> LDMUNet:
    from dataclasses import replace

    from tta.ldm.train import RunConfig

    torch.manual_seed(0)
    model = load_config(RunConfig, ROOT / "configs" / "ldm" / "tiny.json").model
    return LDMUNet(replace(model, **changes)).eval()


def test_audioldm_s_config_matches_the_reference_layout():
    from tta.ldm.train import RunConfig

    cfg = load_config(RunConfig, ROOT / "configs" / "ldm" / "audioldm-s.json").model
    kw = cfg.diffusers_kwargs()
    assert kw["block_out_channels"] == (128, 256, 384, 640)           # ch 128 x (1, 2, 3, 5)
    assert kw["layers_per_block"] == 2
    assert kw["down_block_types"] == ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3   # attention at ds 2/4/8
    assert kw["up_block_types"] == ("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",)
    assert kw["attention_head_dim"] == (4, 8, 12, 20)                 # heads of 32 channels
    assert kw["cross_attention_dim"] == kw["block_out_channels"]      # self-attention only (no context)
    assert (kw["class_embed_type"], kw["projection_class_embeddings_input_dim"], kw["class_embeddings_concat"]) \
        == ("simple_projection", 512, True)
    assert LDMConfig.from_diffusers(dict(kw, _class_name="UNet2DConditionModel")) == cfg
    # settings that change what the weights compute, not their shapes: loading them silently computed otherwise
    for field, value in (("freq_shift", 1), ("flip_sin_to_cos", False), ("norm_eps", 1e-2), ("act_fn", "mish"),
                         ("center_input_sample", True), ("time_embedding_act_fn", "gelu")):
        with pytest.raises(ValueError, match=f"unet config: {field}=.* is not supported"):
            LDMConfig.from_diffusers(dict(kw, **{field: value}))


@pytest.mark.parametrize("change, message", [
    ({"block_out_channels": "abc"}, "config key 'block_out_channels': expected a list (list of int), got string"),
    ({"layers_per_block": "2"}, "config key 'layers_per_block': expected int, got string '2'"),
    ({"down_block_types": [1, 2]}, "config key 'down_block_types[0]': expected str, got int 1"),
    ({"projection_class_embeddings_input_dim": None},
     "'projection_class_embeddings_input_dim': expected int, got null"),
    ({"attention_head_dim": 0}, "attention_head_dim=0 must be positive"),
    ({"block_out_channels": ...}, "missing required config key 'block_out_channels'"),   # ...: left out
    ({"cross_attention_dim": [8, 8]}, "cross_attention_dim=[8, 8] per block is not supported"),   # was "'<=' not"
])
def test_a_damaged_diffusers_unet_config_names_the_field(change, message):
    """These failed on Python's own words ("unsupported operand type(s) for //: 'str' and 'int'", "integer division
    or modulo by zero", "'int' object has no attribute 'startswith'")."""
    from tta.ldm.train import RunConfig

    kw = dict(load_config(RunConfig, ROOT / "configs" / "ldm" / "tiny.json").model.diffusers_kwargs(),
              _class_name="UNet2DConditionModel")
    kw = {k: v for k, v in {**kw, **change}.items() if v is not ...}
    with pytest.raises(ValueError) as e:
        LDMConfig.from_diffusers(kw, where="unet/config.json")
    assert str(e.value).startswith("unet/config.json: ") and message in str(e.value), e.value


def test_a_diffusers_unet_folder_whose_config_is_not_an_object_is_named(tmp_path):
    from tta.checkpoint import CheckpointError
    from tta.ldm.model import LDMUNet

    (tmp_path / "config.json").write_text("[]")
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"config.json: expected a JSON object, got list \(not a diffusers"):
        LDMUNet.load_diffusers(tmp_path)


def test_config_invariants_name_the_field():
    with pytest.raises(ValueError, match="attention_downsample"):
        LDMConfig(block_out_channels=(32, 64), attention_downsample=(4,), norm_num_groups=32)
    with pytest.raises(ValueError, match="head_channels"):
        LDMConfig(block_out_channels=(32, 96), head_channels=64)


def test_text_probability_outside_mix_is_refused_not_ignored():
    from tta.config import apply_overrides
    from tta.ldm.train import RunConfig

    base = load_config(RunConfig, ROOT / "configs" / "ldm" / "tiny.json")
    assert apply_overrides(base, ["condition=\"mix\"", "text_probability=1.0"]).text_probability == 1.0
    for condition in ("text", "audio"):
        with pytest.raises(ValueError, match="applies to condition \"mix\" only"):
            apply_overrides(base, [f"condition=\"{condition}\"", "text_probability=1.0"])


def test_unet_shapes_and_the_condition_matters():
    unet = tiny_unet()
    x = torch.randn(2, 4, 8, 32)
    t = torch.tensor([10, 900])
    cond = torch.nn.functional.normalize(torch.randn(2, 64), dim=-1)
    with torch.no_grad():
        y = unet(x, t, cond)
        y2 = unet(x, t, cond.flip(0))
    assert y.shape == x.shape
    assert not torch.allclose(y, y2)
    with pytest.raises(ValueError, match="multiples of 2"):
        unet(torch.randn(1, 4, 7, 32), t[:1], cond[:1])
    with pytest.raises(ValueError, match="cond"):
        unet(x, t, torch.randn(2, 3))


def test_diffusers_folder_round_trip(tmp_path):
    from diffusers import UNet2DConditionModel

    unet = tiny_unet()
    unet.save_diffusers(tmp_path / "unet")
    back = LDMUNet.load_diffusers(tmp_path / "unet")
    plain = UNet2DConditionModel.from_pretrained(str(tmp_path / "unet"))   # a diffusers user opens it as is
    x, t, c = torch.randn(1, 4, 8, 32), torch.tensor([500]), torch.randn(1, 64)
    with torch.no_grad():
        ref = unet(x, t, c)
        assert torch.equal(back(x, t, c), ref)
        torch.testing.assert_close(plain(x, t, encoder_hidden_states=None, class_labels=c).sample, ref,
                                   atol=1e-6, rtol=1e-6)
    assert back.config == unet.config


def test_context_slot_for_retrieval():
    unet = tiny_unet(context_dim=16)
    x, t, c = torch.randn(1, 4, 8, 32), torch.tensor([500]), torch.randn(1, 64)
    with torch.no_grad():
        a = unet(x, t, c, torch.randn(1, 3, 16))
        b = unet(x, t, c, torch.randn(1, 3, 16))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="context"):
        unet(x, t, c)


def test_v_prediction_target_inverts_to_x0():
    from tta.ldm.sampling import DiffusionConfig, denoise_loss_target, make_scheduler

    cfg = DiffusionConfig(prediction_type="v_prediction").scheduler_config()
    acp = make_scheduler("ddpm", cfg).alphas_cumprod
    x0, eps, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([0, 500, 999])
    noisy, v = denoise_loss_target(cfg, x0, eps, t, acp)
    a = acp[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(a.sqrt() * noisy - (1 - a).sqrt() * v, x0, atol=1e-5, rtol=1e-5)
    # AudioLDM's schedule: betas = linspace(sqrt(0.0015), sqrt(0.0195), 1000) ** 2
    betas = make_scheduler("ddpm", DiffusionConfig().scheduler_config()).betas
    torch.testing.assert_close(betas, torch.linspace(0.0015 ** 0.5, 0.0195 ** 0.5, 1000) ** 2)


def test_min_snr_weights_match_min_snr_gamma_x0_weighting():
    from tta.ldm.sampling import DiffusionConfig, make_scheduler
    from tta.ldm.train import RunConfig, diffusion_loss, min_snr_weights

    acp = make_scheduler("ddpm", DiffusionConfig().scheduler_config()).alphas_cumprod
    t = torch.tensor([0, 100, 500, 999])
    a = acp[t].double()
    snr = a / (1 - a)
    eps_w, v_w = min_snr_weights(a, 5.0, "epsilon"), min_snr_weights(a, 5.0, "v_prediction")
    # the x_0 error is the ε error / sqrt(SNR) and the v error / sqrt(SNR + 1): both give min(SNR, 5) there
    torch.testing.assert_close(eps_w * snr, snr.clamp(max=5.0))
    torch.testing.assert_close(v_w * (snr + 1), snr.clamp(max=5.0))
    assert float(eps_w[0]) < 0.02 and float(eps_w[-1]) == 1.0      # clean timesteps down-weighted, noisy kept

    cfg = load_config(RunConfig, ROOT / "configs" / "ldm" / "tiny.json")
    unet = LDMUNet(cfg.model).eval()
    z, cond = torch.randn(16, cfg.model.latent_channels, 16, 8), torch.randn(16, cfg.model.class_embed_dim)
    losses = {}
    for gamma in (0.0, 1e9, 5.0):
        torch.manual_seed(0)
        with torch.no_grad():
            losses[gamma] = float(diffusion_loss(unet, type(cfg)(**{**cfg.__dict__, "snr_gamma": gamma}), z,
                                                 cond, acp))
    assert losses[1e9] == pytest.approx(losses[0.0], rel=1e-5)    # γ above every SNR: the plain MSE
    torch.manual_seed(0)                                          # the same draws, weighted by hand
    noise, t = torch.randn(z.shape), torch.randint(0, 1000, (16,))
    a = acp[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        err = (unet(a.sqrt() * z + (1 - a).sqrt() * noise, t, cond) - noise).pow(2).flatten(1).mean(1)
    expected = (err * min_snr_weights(acp[t].double(), 5.0, "epsilon").float()).mean()
    assert losses[5.0] == pytest.approx(float(expected), rel=1e-5) and losses[5.0] < losses[0.0]
    with pytest.raises(ValueError, match="snr_gamma"):
        type(cfg)(**{**cfg.__dict__, "snr_gamma": -1.0})


def test_condition_dropout_uses_the_empty_caption_embedding():
    from tta.ldm.train import RunConfig, condition

    cfg = load_config(RunConfig, ROOT / "configs" / "ldm" / "tiny.json")
    cfg = type(cfg)(**{**cfg.__dict__, "cfg_dropout": 0.5})
    audio = torch.nn.functional.normalize(torch.randn(64, 8), dim=-1)
    null = torch.nn.functional.normalize(torch.randn(8), dim=-1)
    torch.manual_seed(0)
    out = condition(cfg, lambda: audio, lambda: audio, null, 64)
    dropped = (out == null).all(dim=1)
    kept = (out == audio).all(dim=1)
    assert bool((dropped | kept).all()) and 15 < int(dropped.sum()) < 49


def test_train_validates_writes_a_pipeline_and_resumes_bit_exactly(tmp_path):
    from tta.checkpoint import load_state_dict
    from tta.cli import main

    config = tiny_run_config()
    cfg_path = tmp_path / "ldm.json"
    from tta.config import save_config

    save_config(config, cfg_path)
    run = tmp_path / "run"
    assert main(["-q", "train", "ldm", "--config", str(cfg_path), "--out", str(run)]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    valid = [r for r in rows if r["split"] == "valid"]
    assert [r["step"] for r in train_rows] == [1, 2] and all(r["loss"] > 0 for r in train_rows)
    assert len(valid) == 1 and -1 <= valid[0]["clap_score"] <= 1 and valid[0]["clap_model"].startswith("tta-clap:")
    assert (run / "samples" / "step_2" / "00_a_tone.wav").is_file()
    assert (run / "samples" / "step_2" / "00_a_tone.png").stat().st_size > 0
    assert json.loads((run / "final" / "config.json").read_text())["class"] == "tta.ldm.model.LDMUNet"
    assert (run / "pipeline" / "pipeline.json").is_file()

    # resume: drop the last checkpoint and the outputs, continue from step 1 -> the same final weights
    again = tmp_path / "again"
    shutil.copytree(run, again)
    for p in ("checkpoints/step_2", "final", "pipeline", "samples"):
        shutil.rmtree(again / p)
    assert main(["-q", "train", "ldm", "--config", str(cfg_path), "--out", str(again), "--resume"]) == 0
    a = load_state_dict(run / "final" / "model.safetensors")
    b = load_state_dict(again / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a fresh run into the same folder is refused (no silent overwrite)
    assert main(["-q", "train", "ldm", "--config", str(cfg_path), "--out", str(run)]) == 1


def test_with_gradient_accumulation_the_rate_moves_once_per_optimizer_step(tmp_path):
    """Four optimizer steps of two micro-batches each: the warm-up advances four times, not eight."""
    from tta.ldm.train import train
    from tta.training import lr_factor

    config = tiny_run_config(**{"train.gradient_accumulation_steps": 2, "train.warmup_steps": 8,
                                "train.max_steps": 4, "train.log_every": 1, "train.checkpoint_every": 100,
                                "validation.prompts": []})
    train(config, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = [(r["step"], r["lr_lr"]) for r in rows if r["split"] == "train"]
    assert [s for s, _ in lrs] == [1, 2, 3, 4]
    for step, lr in lrs:
        assert lr == pytest.approx(config.train.learning_rate * lr_factor(step, config.train)), step


def test_precomputed_latents_train_and_are_cached(tmp_path):
    from tta.ldm.train import train

    cache = tmp_path / "cache"
    cfg = tiny_run_config(precompute=True, cache_dir=str(cache), **{
        "train.max_steps": 1, "validation.prompts": [], "components.vocoder": "", "condition": "mix"})
    final = train(cfg, tmp_path / "run", progress=False)
    files = list(cache.glob("latents-*.pt"))
    assert len(files) == 1 and (final / "model.safetensors").is_file()
    from tta.checkpoint import load_state_dict, load_torch_file

    cached = load_torch_file(files[0])
    assert cached["mean"].shape[0] == 6 and cached["audio_emb"].shape == (6, 64)
    assert torch.all(cached["std"] > 0)
    # a second run that finds the cache trains the same weights (the encoding run's DataLoader took a draw from
    # the global RNG before the UNet was built, so the two started from different weights)
    again = train(cfg, tmp_path / "run2", progress=False)
    a, b = load_state_dict(final / "model.safetensors"), load_state_dict(again / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a cache cut short is encoded again (it stopped the run), and the run trains the same weights
    files[0].write_bytes(files[0].read_bytes()[:200])
    third = train(cfg, tmp_path / "run3", progress=False)
    c = load_state_dict(third / "model.safetensors")
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert load_torch_file(files[0])["mean"].shape[0] == 6


def test_precompute_caches_every_caption_and_items_draw_one(tmp_path):
    """Pre-encoding kept only each clip's first caption, so 4 of AudioCaps' 5 were never trained on: every
    caption is cached ("all", the default) and each item draws one from its seed, as on-the-fly training does."""
    import dataclasses

    from tests.test_ldm_fixtures import tiny_components
    from tta.checkpoint import load_torch_file
    from tta.data.manifest import read_manifest, resolve_path, write_manifest
    from tta.ldm.train import CachedLatents, load_frozen, train

    source = tiny_components()["manifest"]
    rows = [dataclasses.replace(r, path=str(resolve_path(r, source)),
                                captions=tuple(f"{r.captions[0]} take {k}" for k in range(1 + i % 3)))
            for i, r in enumerate(read_manifest(source))]
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    cache = tmp_path / "cache"
    cfg = tiny_run_config(precompute=True, cache_dir=str(cache), condition="text", **{
        "data.manifest": str(manifest), "train.max_steps": 1, "validation.prompts": [], "components.vocoder": ""})
    train(cfg, tmp_path / "run", progress=False)
    cached = load_torch_file(next(cache.glob("latents-*.pt")))
    train_rows = [r for r in rows if r.split == "train"]
    assert cached["captions"].tolist() == [len(r.captions) for r in train_rows]
    clap = load_frozen(cfg, "cpu").clap
    ds = CachedLatents(cached)
    for i, r in enumerate(train_rows):
        want = clap.embed_text(list(r.captions))
        drawn = {int(torch.argmax(want @ ds[(i, seed)]["text_emb"])) for seed in range(30)}
        assert drawn == set(range(len(r.captions)))                     # every caption, none other
        assert torch.allclose(ds[i]["text_emb"], want[0], atol=1e-6)    # no seed: the first
    first = tiny_run_config(precompute=True, precompute_captions="first", cache_dir=str(cache), condition="text",
                            **{"data.manifest": str(manifest), "train.max_steps": 1, "validation.prompts": [],
                               "components.vocoder": ""})
    train(first, tmp_path / "run-first", progress=False)
    assert len(list(cache.glob("latents-*.pt"))) == 2                  # its own cache, the old layout
    old = [load_torch_file(f) for f in cache.glob("latents-*.pt") if "text_emb" in load_torch_file(f)]
    assert len(old) == 1 and old[0]["text_emb"].shape == (len(train_rows), 64)


def test_the_latent_cache_follows_the_audio_and_the_vaes_mel(tmp_path):
    """The cache was keyed by the manifest's bytes and the VAE's weights: a clip re-rendered in place, or a
    VAE folder whose mel settings changed, reused latents of other audio or another front end."""
    import copy
    import dataclasses
    import os
    from pathlib import Path

    from tta.data.dataset import AudioDataset
    from tta.data.manifest import read_manifest, resolve_path, write_manifest
    from tests.test_ldm_fixtures import tiny_components
    from tta.ldm.train import latent_cache_path, load_frozen

    source = tiny_components()["manifest"]
    rows = read_manifest(source)
    audio = tmp_path / "audio"
    audio.mkdir()
    moved = []
    for r in rows:
        shutil.copyfile(resolve_path(r, source), audio / Path(r.path).name)
        moved.append(dataclasses.replace(r, path=str(audio / Path(r.path).name)))
    manifest = write_manifest(tmp_path / "m.jsonl", moved)
    cfg = tiny_run_config(precompute=True, condition="text", **{"data.manifest": str(manifest)})
    frozen = load_frozen(cfg, "cpu")

    def key(frozen=frozen, cfg=cfg):
        ds = AudioDataset.from_config(cfg.data, "train", 16_000, random_crop=False, caption_choice="first")
        return latent_cache_path(cfg, ds, frozen, tmp_path / "cache").name

    before = key()
    assert key() == before
    # how many unreadable files training may skip is not what is encoded (the caches made before it stay good)
    assert key(cfg=dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_unreadable=0.2))) == before
    # a held-out row added, then its caption edited: the training rows are the same, so are their latents
    held = dataclasses.replace(moved[0], id="held-out", split="valid")
    write_manifest(tmp_path / "m.jsonl", [*moved, held])
    assert key() == before
    write_manifest(tmp_path / "m.jsonl", [*moved, dataclasses.replace(held, captions=("another caption",))])
    assert key() == before
    target = audio / Path(moved[0].path).name
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))     # the clip re-rendered in place
    after = key()
    assert after != before
    other = dataclasses.replace(frozen, vae=copy.deepcopy(frozen.vae))
    other.vae.config = dataclasses.replace(other.vae.config, mel=dataclasses.replace(other.vae.config.mel,
                                                                                      f_max=4000.0))
    assert key(other) != after


@pytest.mark.parametrize("shared", [False, True])
def test_a_runs_own_latent_cache_drops_encodings_it_no_longer_reads(tmp_path, shared):
    """Each change of data or components adds a latents-*.pt; the run's own cache folder keeps only the one in
    use, a shared cache_dir keeps them all (other runs may read them)."""
    from tta.data.dataset import AudioDataset
    from tta.ldm.train import load_frozen, precompute

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "latents-0123456789abcdef.pt").write_bytes(b"an encoding of earlier settings")
    cfg = tiny_run_config(precompute=True, condition="text", cache_dir=str(cache) if shared else "")
    data = AudioDataset.from_config(cfg.data, "train", 16_000, random_crop=False, caption_choice="first")
    precompute(cfg, data, load_frozen(cfg, "cpu"), cache, progress=False)
    assert (cache / "latents-0123456789abcdef.pt").exists() == shared
    assert len(list(cache.glob("latents-*.pt"))) == (2 if shared else 1)


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_a_latent_cache_dir_that_cannot_be_a_folder_is_refused_before_the_run(tmp_path, where):
    """With precompute, a cache_dir at a file (or under one) stopped the run with "cache: File exists" once every
    clip had been encoded, and left the run folder behind; it is refused, by name, before the run folder is made."""
    from tta.checkpoint import CheckpointError
    from tta.ldm.train import train

    (tmp_path / "file").write_text("not a folder\n")
    cache = tmp_path / "file" if where == "a file" else tmp_path / "file" / "cache"
    cfg = tiny_run_config(precompute=True, cache_dir=str(cache), condition="text",
                          **{"train.max_steps": 1, "validation.prompts": []})
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(cache))}: cache_dir (is a file|cannot be written there)"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists() and (tmp_path / "file").read_text() == "not a folder\n"


def test_precompute_longer_clips_then_train_on_random_latent_crops(tmp_path):
    from tta.ldm.train import precompute, train  # noqa: F401

    cache = tmp_path / "cache"
    cfg = tiny_run_config(precompute=True, precompute_seconds=0.64, cache_dir=str(cache), condition="text", **{
        "data.segment_seconds": 0.16, "train.max_steps": 2, "validation.prompts": [], "components.vocoder": ""})
    train(cfg, tmp_path / "run", progress=False)
    from tta.checkpoint import load_torch_file
    from tta.ldm.train import CachedLatents, latent_frames, load_frozen

    cached = load_torch_file(next(cache.glob("latents-*.pt")))
    vae = load_frozen(cfg, "cpu").vae
    full = latent_frames(round(0.64 * 16_000), vae, cfg.model.downsample_factor)
    crop = latent_frames(round(0.16 * 16_000), vae, cfg.model.downsample_factor)
    assert cached["mean"].shape[2] == full and crop < full
    # the 0.5 s clips fill fewer latent frames than the 0.64 s encoded; crops stay inside the real audio
    assert torch.all(cached["frames"] < full)
    ds = CachedLatents(cached, crop)
    starts = set()
    for seed in range(40):
        item = ds[(0, seed)]
        assert item["mean"].shape[1] == crop and item["std"].shape == item["mean"].shape
        hits = [s for s in range(full - crop + 1) if torch.equal(cached["mean"][0][:, s:s + crop], item["mean"])]
        assert hits and min(hits) + crop <= int(cached["frames"][0])
        starts.add(min(hits))
    assert len(starts) > 1                                       # crops move
    assert torch.equal(ds[(0, 7)]["mean"], ds[(0, 7)]["mean"])   # and are reproducible from the item seed
    assert torch.equal(ds[0]["mean"], cached["mean"][0][:, :crop])
    # the cached audio embedding is the whole clip's: it cannot condition a crop
    with pytest.raises(ValueError, match="cached CLAP audio embedding describes the whole clip"):
        tiny_run_config(precompute=True, precompute_seconds=0.64, condition="audio", **{"data.segment_seconds": 0.16})


def test_repeated_short_clips_train_on_the_fly_and_are_refused_with_precompute(tmp_path):
    from tta.ldm.train import train

    with pytest.raises(ValueError, match="data.repeat_below=0.4 needs precompute=false"):
        tiny_run_config(precompute=True, **{"data.repeat_below": 0.4})
    with pytest.raises(ValueError, match="data.speed_by_key needs precompute=false"):
        tiny_run_config(precompute=True, **{"data.speed_by_key": {"dog": [0.8, 1.25]}})
    cfg = tiny_run_config(**{"data.segment_seconds": 1.28, "data.repeat_below": 1.0,
                             "data.repeat_gap": [0.1, 0.2], "train.max_steps": 2, "validation.prompts": [],
                             "components.vocoder": ""})
    final = train(cfg, tmp_path / "run", progress=False)
    assert (final / "model.safetensors").is_file()
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data"]["repeat_below"] == 1.0 and saved["data"]["repeat_gap"] == [0.1, 0.2]


def test_loss_falls_when_overfitting_one_batch():
    from tta.ldm.sampling import DiffusionConfig, make_scheduler
    from tta.ldm.train import RunConfig, diffusion_loss

    for prediction in ("epsilon", "v_prediction"):
        unet = tiny_unet().train()
        cfg = RunConfig(model=unet.config, diffusion=DiffusionConfig(prediction_type=prediction))
        acp = make_scheduler("ddpm", cfg.diffusion.scheduler_config()).alphas_cumprod
        z, cond = torch.randn(2, 4, 4, 16), torch.randn(2, 64)
        opt = torch.optim.Adam(unet.parameters(), lr=2e-3)
        losses = []
        for _ in range(15):
            torch.manual_seed(0)     # the same t and noise every step: a fixed regression problem
            loss = diffusion_loss(unet, cfg, z, cond, acp)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < 0.5 * losses[0], (prediction, losses[0], losses[-1])


def test_init_from_a_smaller_unet_grows_it_without_changing_its_output(tmp_path):
    """--init-from a run with fewer transformer_layers: the new transformer blocks start as the identity, so the
    grown UNet predicts exactly what its source did; training then moves them (their zeroed layers get grads)."""
    from tta.checkpoint import load_component
    from tta.ldm.train import train

    base = train(tiny_run_config(**{"train.max_steps": 2, "train.validate_every": 1000}), tmp_path / "base",
                 progress=False)
    source = load_component(base, LDMUNet).eval()
    grown_cfg = {"train.init_from": str(tmp_path / "base"), "model.transformer_layers": 2,
                 "train.validate_every": 1000}
    start = load_component(train(tiny_run_config(**grown_cfg, **{"train.max_steps": 1, "train.learning_rate": 1e-12}),
                                 tmp_path / "grown0", progress=False), LDMUNet).eval()
    assert start.config.transformer_layers == 2
    new = [k for k in start.state_dict() if ".transformer_blocks.1." in k]
    assert new and all(k not in source.state_dict() for k in new)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, source.config.latent_channels, 16, 8, generator=g)
    cond = torch.randn(2, source.config.class_embed_dim, generator=g)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        assert torch.allclose(start(z, t, cond), source(z, t, cond), atol=1e-5)
    outs = [k for k in new if k.endswith(("to_out.0.weight", "net.2.weight"))]
    assert outs and all(start.state_dict()[k].abs().max() < 1e-9 for k in outs)   # zero (one step at lr 1e-12)
    tuned = load_component(train(tiny_run_config(**grown_cfg, **{"train.max_steps": 3, "train.learning_rate": 1e-3,
                                                                 "train.ema_decay": 0.0}),
                                 tmp_path / "grown", progress=False), LDMUNet)
    assert all(tuned.state_dict()[k].abs().max() > 1e-6 for k in outs)


def test_trainable_patterns_train_only_the_matching_parameters(tmp_path, capsys):
    """trainable: a fine-tune from a run moves only the parameters its patterns match; the rest keep the start's
    exact values. A pattern that matches nothing is a one-line error before any run folder is made."""
    from tta.checkpoint import load_component
    from tta.cli import main
    from tta.ldm.train import train

    base = train(tiny_run_config(**{"train.max_steps": 2, "train.validate_every": 1000}), tmp_path / "base",
                 progress=False)
    start = load_component(base, LDMUNet).state_dict()
    patterns = ["net.class_embedding.*", "*.time_emb_proj.*"]
    tuned = load_component(train(tiny_run_config(**{"train.init_from": str(tmp_path / "base"), "trainable": patterns,
                                                    "train.max_steps": 3, "train.learning_rate": 1e-3,
                                                    "train.ema_decay": 0.0, "train.validate_every": 1000}),
                                 tmp_path / "tuned", progress=False), LDMUNet).state_dict()
    moved = {k for k in start if not torch.equal(start[k], tuned[k])}
    assert moved and all(k.startswith("net.class_embedding.") or ".time_emb_proj." in k for k in moved)
    assert any(k.startswith("net.class_embedding.") for k in moved) and any(".time_emb_proj." in k for k in moved)
    c = tiny_run_config()
    rc = main(["train", "ldm", "--config", str(ROOT / "configs" / "ldm" / "tiny.json"), "--out", str(tmp_path / "bad"),
               "--set", f"components.vae={json.dumps(c.components.vae)}",
               "--set", f"components.vocoder={json.dumps(c.components.vocoder)}",
               "--set", f"components.clap={json.dumps(c.components.clap)}",
               "--set", f"data.manifest={json.dumps(c.data.manifest)}",
               "--set", 'trainable=["*.no_such_layer.*"]'])
    err = capsys.readouterr().err
    assert rc != 0 and "trainable" in err and "no_such_layer" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()


def test_training_only_the_down_blocks_does_not_crash_the_process(tmp_path):
    """trainable=["net.down_blocks.*"] on latents encoded on the fly: torch's CPU GroupNorm backward crashed
    the process (SIGSEGV, exit 139) at the first step, as the VAE's latents are channels-last and the first
    norm's input needs no gradient (conv_in is frozen) while its weight does. Run in a subprocess, so that a
    crash fails this test instead of ending pytest; only the down blocks move."""
    import os
    import subprocess
    import sys

    from tests.test_ldm_fixtures import tiny_model_config
    from tta.checkpoint import load_component
    from tta.clap.model import ClapConfig, TTAClap
    from tta.training import seed_everything
    from vae.model import MelVAE, VAEConfig
    from vocoder.model import HiFiGAN, HiFiGANConfig

    c = tiny_run_config()
    sets = {"components.vae": c.components.vae, "components.vocoder": c.components.vocoder,
            "components.clap": c.components.clap, "data.manifest": c.data.manifest, "validation.prompts": [],
            "train.max_steps": 1, "train.ema_decay": 0.0, "trainable": ["net.down_blocks.*"]}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    cmd = [sys.executable, "-m", "tta", "-q", "train", "ldm", "--config", str(ROOT / "configs/ldm/tiny.json"),
           "--out", str(tmp_path / "run"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    trained = load_component(tmp_path / "run" / "final", LDMUNet).state_dict()
    seed_everything(c.train.seed)   # the UNet's initial weights, built as the run builds them (see below)
    MelVAE(tiny_model_config(VAEConfig, "vae")), TTAClap(tiny_model_config(ClapConfig, "clap"))
    HiFiGAN(tiny_model_config(HiFiGANConfig, "vocoder"))
    initial = LDMUNet(c.model).state_dict()
    moved = {k for k in initial if not torch.equal(trained[k], initial[k])}
    assert moved and all(k.startswith("net.down_blocks.") for k in moved)


def test_component_paths_may_name_a_training_run_folder(tmp_path):
    from tta.ldm.train import component_dir

    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "config.json").write_text('{"model": {}, "train": {}}')          # the run's own config
    (run / "final" / "config.json").write_text('{"class": "x", "format_version": 1, "config": {}}')
    assert component_dir(str(run), "vae") == run / "final"
    assert component_dir(str(run / "final"), "vae") == run / "final"
    with pytest.raises(ValueError, match="components.vae=.*not a component folder"):
        component_dir(str(tmp_path / "nothing"), "vae")


def test_fine_tune_from_a_half_precision_pipeline_folder_with_a_griffin_lim_vocoder(tmp_path, caplog):
    """--init-from a pipeline folder (how the embedded default is fine-tuned): the UNet starts from its unet/
    (diffusers files, half-precision storage widened), and a Griffin-Lim vocoder serves the validation audio."""
    from tta.checkpoint import load_component
    from tta.cli import main
    from tta.ldm.train import train
    from vocoder.griffinlim import GriffinLim

    packed = tmp_path / "packed"
    assert main(["-q", "export", "pipeline", str(tiny_pipeline()), "--out", str(packed), "--vocoder", "griffin-lim:2"]) == 0
    assert isinstance(load_component(packed / "vocoder", GriffinLim), GriffinLim)
    source = LDMUNet.load_diffusers(packed / "unet")
    cfg = tiny_run_config(**{"train.max_steps": 1, "train.learning_rate": 1e-12,
                             "train.validate_every": 1, "train.init_from": str(packed),
                             "components.vocoder": str(packed / "vocoder")})
    with caplog.at_level("WARNING", logger="tta.ldm.train"):
        final = train(cfg, tmp_path / "ft", progress=False)
    assert "was trained with CLAP" not in caplog.text and "latent space" not in caplog.text   # its own, as float16
    tuned = load_component(final, LDMUNet)
    a, b = source.state_dict(), tuned.state_dict()
    assert a.keys() == b.keys()
    assert all(b[k].dtype == torch.float32 and torch.allclose(a[k].float(), b[k], atol=1e-6)
               for k in a if b[k].is_floating_point())
    from safetensors.torch import load_file

    stored = load_file(str(packed / "unet" / "diffusion_pytorch_model.safetensors"))
    assert any(v.dtype == torch.float16 for v in stored.values())      # the source really was half precision
    assert (tmp_path / "ft" / "samples" / "step_1").is_dir() and (tmp_path / "ft" / "pipeline" / "pipeline.json").is_file()
    # the fine-tune generates as the pipeline it started from did (it got the validation settings as defaults)
    assert json.loads((tmp_path / "ft" / "pipeline" / "pipeline.json").read_text())["defaults"] == \
        json.loads((packed / "pipeline.json").read_text())["defaults"]
    # a UNet trained with another CLAP or VAE latent space than the run's: said (it may be meant)
    from tests.test_ldm_fixtures import tiny_model_config
    from tta.checkpoint import save_component
    from tta.clap.model import ClapConfig, TTAClap
    from vae.model import MelVAE, VAEConfig

    torch.manual_seed(5)
    save_component(tmp_path / "clap2", TTAClap(tiny_model_config(ClapConfig, "clap")))
    save_component(tmp_path / "vae2", MelVAE(tiny_model_config(VAEConfig, "vae")))
    caplog.clear()
    with caplog.at_level("WARNING", logger="tta.ldm.train"):
        train(tiny_run_config(**{"train.max_steps": 1, "train.init_from": str(packed),
                                 "components.clap": str(tmp_path / "clap2"), "components.vae": str(tmp_path / "vae2"),
                                 "components.vocoder": str(packed / "vocoder")}), tmp_path / "ft3", progress=False)
    assert "its UNet was trained with CLAP" in caplog.text and "another VAE latent space" in caplog.text
    # the same from an LDM run folder or one of its checkpoints (said only for a pipeline folder before)
    for source in (tmp_path / "ft", tmp_path / "ft" / "checkpoints" / "step_1"):
        caplog.clear()
        with caplog.at_level("WARNING", logger="tta.ldm.train"):
            train(tiny_run_config(**{"train.max_steps": 1, "train.init_from": str(source),
                                     "components.clap": str(tmp_path / "clap2"),
                                     "components.vocoder": str(packed / "vocoder")}), tmp_path / f"ft-{source.name}",
                  progress=False)
        assert "its UNet was trained with CLAP" in caplog.text, source
    # a folder with no weights a UNet can take is a one-line error naming it
    (tmp_path / "bare" / "unet").mkdir(parents=True)
    (tmp_path / "bare" / "pipeline.json").write_text("{}")
    with pytest.raises(ValueError, match="init_from.*bare/unet holds no weights"):
        train(tiny_run_config(**{"train.max_steps": 1, "train.init_from": str(tmp_path / "bare")}), tmp_path / "ft2",
              progress=False)


def test_the_generation_defaults_follow_a_chain_of_fine_tunes(tmp_path):
    """A fine-tune of a pipeline writes RUN/pipeline with that pipeline's generation defaults; a fine-tune of that
    fine-tune got its own validation settings (another sampler, guidance, candidates) when started from RUN,
    RUN/final or a checkpoint (only RUN/pipeline was read), and so did one from a run that wrote no pipeline/."""
    from tta.ldm.train import pipeline_defaults, train

    source = shutil.copytree(tiny_pipeline(), tmp_path / "source")
    spec = json.loads((source / "pipeline.json").read_text())
    spec["defaults"] = {**spec["defaults"], "sampler": "dpmsolver++", "guidance": 4.0, "candidates": 2}
    (source / "pipeline.json").write_text(json.dumps(spec))
    one = {"train.max_steps": 1, "validation.prompts": []}
    train(tiny_run_config(**one, **{"train.init_from": str(source)}), tmp_path / "ft1", progress=False)
    assert json.loads((tmp_path / "ft1" / "pipeline" / "pipeline.json").read_text())["defaults"] == spec["defaults"]
    train(tiny_run_config(**one, **{"train.init_from": str(tmp_path / "ft1" / "final")}), tmp_path / "ft2",
          progress=False)
    assert json.loads((tmp_path / "ft2" / "pipeline" / "pipeline.json").read_text())["defaults"] == spec["defaults"]
    for start in ("ft2", "ft2/final", "ft2/pipeline", "ft2/checkpoints/step_1"):
        assert pipeline_defaults(str(tmp_path / start)) == spec["defaults"], start
    # a run that wrote no pipeline/ (stopped early, or no vocoder): the run it started from says, up the chain
    shutil.rmtree(tmp_path / "ft2" / "pipeline")
    shutil.rmtree(tmp_path / "ft1" / "pipeline")
    assert pipeline_defaults(str(tmp_path / "ft2" / "checkpoints" / "step_1")) == spec["defaults"]
    # a chain that starts from no pipeline: None (the run's validation settings), also for a loop in the records
    config = json.loads((tmp_path / "ft1" / "config.json").read_text())
    config["train"]["init_from"] = str(tmp_path / "ft2")
    (tmp_path / "ft1" / "config.json").write_text(json.dumps(config))
    assert pipeline_defaults(str(tmp_path / "ft2")) is None


def test_a_process_that_does_not_encode_waits_for_the_damaged_cache_to_be_written_again(tmp_path):
    """With several processes each found the damaged cache, encoded the corpus and wrote the shared file (N full
    encodings, and one could remove the file the main process had just written): the others now wait for it."""
    import threading

    from tta.checkpoint import save_train_state
    from tta.ldm.train import _replaced

    path = tmp_path / "latents-0.pt"
    path.write_bytes(b"cut short")
    damaged = path.stat()
    writer = threading.Timer(0.3, lambda: save_train_state(path, {"mean": torch.ones(2)}))
    writer.start()
    try:
        cached = _replaced(path, damaged, poll_seconds=0.05)
    finally:
        writer.join()
    assert torch.equal(cached["mean"], torch.ones(2))


def test_the_conditioning_check_leaves_the_random_streams_alone(tmp_path, monkeypatch):
    """The init_from check builds the source's CLAP, which drew from the global RNG: a fine-tune's noise and
    timesteps (and weights) depended on whether the source could still be read."""
    import tta.ldm.train as ldm_train
    from tta.checkpoint import load_state_dict
    from tta.cli import main

    packed = tmp_path / "packed"
    assert main(["-q", "export", "pipeline", str(tiny_pipeline()), "--out", str(packed), "--vocoder",
                 "griffin-lim:2"]) == 0
    cfg = tiny_run_config(**{"train.max_steps": 2, "train.init_from": str(packed), "validation.prompts": [],
                             "components.vocoder": str(packed / "vocoder")})
    checked = ldm_train.train(cfg, tmp_path / "checked", progress=False)
    monkeypatch.setattr(ldm_train, "warn_other_conditioning", lambda *a, **k: None)
    unchecked = ldm_train.train(cfg, tmp_path / "unchecked", progress=False)
    a, b = load_state_dict(checked / "model.safetensors"), load_state_dict(unchecked / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_loading_a_diffusers_unet_leaves_the_global_random_generators_as_they_were(tmp_path):
    """LDMUNet.load_diffusers built the UNet, drawing initial weights (replaced by the stored ones) from
    torch's global generator, so a script's torch.rand after loading one gave other numbers than without
    it."""
    from tests.test_checkpoint import assert_leaves_global_rng

    unet = tiny_unet()
    unet.save_diffusers(tmp_path / "unet")
    back = assert_leaves_global_rng(lambda: LDMUNet.load_diffusers(tmp_path / "unet"))
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), unet.state_dict().values()))


def test_an_ldm_run_builds_its_unet_after_drawing_as_its_frozen_parts_are_built(tmp_path):
    """Loaders keep the global random generators now, but an LDM run still loads its VAE, CLAP and vocoder
    drawing from the seeded streams (load_frozen, inside tta.checkpoint.loads_draw), as the runs that trained
    the shipped weights did: its UNet starts from the weights built after those three models, else no recorded
    run (the model card's reproduction from its seeds) would train to the same weights again. Only conv_out
    trains here, so the other tensors of final/ are the UNet's initial ones."""
    from tests.test_ldm_fixtures import tiny_components, tiny_model_config
    from tta.checkpoint import load_component
    from tta.clap.model import ClapConfig, TTAClap
    from tta.ldm.train import train
    from tta.training import seed_everything
    from vae.model import MelVAE, VAEConfig
    from vocoder.model import HiFiGAN, HiFiGANConfig

    tiny_components()
    cfg = tiny_run_config(**{"train.max_steps": 1, "train.ema_decay": 0.0, "trainable": ["net.conv_out.*"]})
    trained = load_component(train(cfg, tmp_path / "run", progress=False), LDMUNet).state_dict()
    seed_everything(cfg.train.seed)
    MelVAE(tiny_model_config(VAEConfig, "vae")), TTAClap(tiny_model_config(ClapConfig, "clap"))
    HiFiGAN(tiny_model_config(HiFiGANConfig, "vocoder"))
    initial = LDMUNet(cfg.model).state_dict()
    frozen = [k for k in initial if not k.startswith("net.conv_out.")]
    assert len(frozen) > 100 and all(torch.equal(trained[k], initial[k]) for k in frozen)
    assert not torch.equal(trained["net.conv_out.weight"], initial["net.conv_out.weight"])   # it did train
