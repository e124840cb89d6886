"""TTAPipeline on a tiny random pipeline folder: reproducible seeds, any duration, samplers, candidates,
edits (audio-to-audio, inpainting, super-resolution), component checks."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from tests import signals
from tests.test_ldm_fixtures import copy_pipeline, one_thread, tiny_pipeline  # noqa: F401 (autouse)
from tta.pipeline import Generation, PipelineError, TTAPipeline


@pytest.fixture(scope="module")
def pipe() -> TTAPipeline:
    return TTAPipeline.from_pretrained(tiny_pipeline())


def test_same_seed_same_audio_any_duration(pipe):
    a = pipe(["rain", "rain"], seconds=0.17, seed=3)        # prompt i draws its noise from seed + i
    b = pipe(["rain", "rain"], seconds=0.17, seed=3)
    assert [w.shape for w in a.wavs] == [(2720,), (2720,)]            # 0.17 s at 16 kHz, cropped after padding
    assert all(np.array_equal(x, y) for x, y in zip(a.wavs, b.wavs))
    assert not np.array_equal(a.wavs[0], a.wavs[1])
    assert all(np.isfinite(w).all() and np.abs(w).max() <= 1 for w in a.wavs)
    # an item's noise does not depend on its batch: prompt 1 of the pair == the same prompt alone with seed 4
    alone = pipe(["rain"], seconds=0.17, seed=4)
    np.testing.assert_allclose(alone.wavs[0], a.wavs[1], atol=1e-5)


def test_window_samples_the_longer_length_and_cuts_from_the_start(pipe):
    long = pipe(["rain"], seconds=0.3, seed=3)
    cut = pipe(["rain"], seconds=0.1, seed=3, window=0.3)
    assert cut.wavs[0].shape == (1600,)
    np.testing.assert_array_equal(cut.wavs[0], long.wavs[0][:1600])
    # the CLAP score (and candidate ranking) is of the clip that is returned
    again = float((pipe.clap.embed_audio(cut.wavs[0][None], 16_000) * pipe.clap.embed_text(["rain"])).sum())
    assert cut.scores[0] == pytest.approx(again, abs=1e-5)
    # a window shorter than the request changes nothing; the model's default applies when none is given
    np.testing.assert_array_equal(pipe(["rain"], seconds=0.3, seed=3, window=0.1).wavs[0], long.wavs[0])
    assert pipe.defaults.window == 0.0
    for bad in (-1.0, float("nan"), 1e4):
        with pytest.raises(PipelineError, match="window"):
            pipe(["rain"], seconds=0.1, window=bad)


def test_every_sampler_runs_and_bad_names_list_the_valid_ones(pipe):
    from tta.ldm.sampling import SAMPLERS

    outs = {s: pipe(["a bell"], seconds=0.1, steps=2, guidance=1.0, sampler=s).wavs[0] for s in SAMPLERS}
    assert all(w.shape == (1600,) and np.isfinite(w).all() for w in outs.values())
    assert not np.array_equal(outs["ddim"], outs["dpmsolver++"])
    with pytest.raises(ValueError, match="valid samplers: ddim, dpmsolver\\+\\+, euler"):
        pipe(["a bell"], sampler="dpm")


def test_stochastic_samplers_draw_each_items_noise_on_its_own(pipe, monkeypatch):
    """The noise euler_a / ddpm add at every step comes from one generator per item: an item's latents do
    not depend on the batch it is generated in (compared on latents; the tiny decoder hides small changes)."""
    import tta.pipeline as tp

    latents = []

    def recording(*args, **kwargs):
        out = real(*args, **kwargs)
        latents.append(out)
        return out

    real = tp.denoise
    monkeypatch.setattr(tp, "denoise", recording)
    for sampler in ("euler_a", "ddpm"):
        latents.clear()
        pipe(["a bell", "a bell"], seconds=0.1, steps=3, sampler=sampler, seed=5, batch_size=2, candidates=1)
        pipe(["a bell"], seconds=0.1, steps=3, sampler=sampler, seed=6, candidates=1)
        pipe(["a bell"], seconds=0.1, steps=3, sampler=sampler, seed=6, candidates=1)
        pair, alone, again = latents
        torch.testing.assert_close(alone[0], pair[1], atol=1e-3, rtol=1e-4)   # batched float sums
        torch.testing.assert_close(alone, again, atol=0, rtol=0)
        assert (pair[0] - pair[1]).abs().max() > 1e-3


def test_candidates_keep_the_best_clap_score(pipe):
    out = pipe(["a tone", "noise"], seconds=0.1, candidates=2, batch_size=4)
    for score, cands in zip(out.scores, out.candidate_scores):
        assert len(cands) == 2 and score == max(cands)
    assert out.seeds == [[0, 1_000_003], [1, 1_000_004]]
    assert out.candidate_wavs is None


def test_return_candidates_gives_every_draw_with_the_kept_one_among_them(pipe):
    out = pipe(["a tone", "noise"], seconds=0.1, candidates=2, return_candidates=True)
    assert [len(c) for c in out.candidate_wavs] == [2, 2]
    for kept, cands, scores in zip(out.wavs, out.candidate_wavs, out.candidate_scores):
        best = int(np.argmax(scores))
        np.testing.assert_array_equal(kept, cands[best])
        assert all(c.shape == kept.shape for c in cands)
    # candidate j of prompt i is what one draw from seed i + 1_000_003 j gives
    alone = pipe(["noise"], seconds=0.1, candidates=1, seed=1 + 1_000_003).wavs[0]
    np.testing.assert_allclose(out.candidate_wavs[1][1], alone, atol=1e-4)
    # clap_scores scores a wav as the ranking did (tta generate scores a candidate again once it is turned down)
    again = pipe.clap_scores(["a tone", "a tone", "noise", "noise"], [w for ws in out.candidate_wavs for w in ws])
    np.testing.assert_allclose(again, [s for ss in out.candidate_scores for s in ss], atol=1e-6)
    with pytest.raises(PipelineError, match="clap_scores: 1 prompts for 2 wavs"):
        pipe.clap_scores(["a tone"], out.candidate_wavs[0])


def test_a_prompts_candidates_share_one_forward_pass(pipe, monkeypatch):
    """batch_size counts prompts: with 2 candidates, batch_size 1 denoises 2 latents at a time, and the kept
    clips match those drawn one prompt and one candidate per pass (up to batched float sums)."""
    import tta.pipeline as tp

    sizes = []

    def recording(unet, scheduler, noise, *args, **kwargs):
        sizes.append(noise.shape[0])
        return real(unet, scheduler, noise, *args, **kwargs)

    real = tp.denoise
    monkeypatch.setattr(tp, "denoise", recording)
    out = pipe(["a tone", "noise", "a bell"], seconds=0.1, candidates=2, batch_size=1)
    assert sizes == [2, 2, 2]
    sizes.clear()
    pipe(["a tone", "noise", "a bell"], seconds=0.1, candidates=2, batch_size=2)
    assert sizes == [4, 2]
    for i, prompt in enumerate(["a tone", "noise", "a bell"]):
        for j in range(2):
            alone = pipe([prompt], seconds=0.1, candidates=1, seed=i + 1_000_003 * j).scores[0]
            assert out.candidate_scores[i][j] == pytest.approx(alone, abs=1e-4)


def test_bad_arguments_are_refused_before_compute(pipe):
    for kwargs, match in [({"seconds": 0}, "seconds"), ({"seconds": 1e4}, "maximum"), ({"steps": 0}, "steps"),
                          ({"guidance": float("nan")}, "guidance"), ({"candidates": 0}, "candidates")]:
        with pytest.raises(PipelineError, match=match):
            pipe(["x"], **kwargs)
    with pytest.raises(PipelineError, match="non-empty list"):
        pipe("a bare string")
    # a bad sampler name was a plain ValueError, not the PipelineError the README promises for every bad argument
    # (`except PipelineError` missed it), where a bad guidance_rule or precision already was one
    for kwargs, match in [({"sampler": "dpm"}, "unknown sampler 'dpm'; valid samplers: ddim, dpmsolver"),
                          ({"sampler": 3}, "unknown sampler 3"), ({"guidance_rule": "x"}, "guidance rule"),
                          ({"precision": "fp16"}, "unknown precision 'fp16'")]:
        with pytest.raises(PipelineError, match=match):
            pipe(["x"], **kwargs)


def test_empty_prompt_generates_unconditionally_with_a_warning(pipe, caplog):
    with caplog.at_level("WARNING", logger="tta.pipeline"):
        out = pipe([""], seconds=0.1)
    assert out.wavs[0].shape == (1600,)
    assert [r.message for r in caplog.records] == ["prompts[0]: an empty prompt generates unconditionally"]


def test_inpainting_keeps_the_latents_outside_the_gap(pipe):
    from tta.ldm.sampling import denoise, draw_noise, make_scheduler

    init = torch.randn(1, 4, 8, 32)
    keep = torch.ones(1, 1, 8, 1, dtype=torch.bool)
    keep[:, :, 3:5] = False
    cond = pipe.clap.embed_text(["a dog"])
    for sampler in ("ddim", "euler"):
        out = denoise(pipe.unet, make_scheduler(sampler, pipe.scheduler_config), draw_noise((4, 8, 32), [0]),
                      cond, pipe.clap.embed_text([""]), steps=2, guidance=2.0, init_latents=init, keep=keep)
        assert torch.equal(out[:, :, :3], init[:, :, :3]) and torch.equal(out[:, :, 5:], init[:, :, 5:])
        assert not torch.allclose(out[:, :, 3:5], init[:, :, 3:5])


def test_inpainting_keeps_the_inputs_own_samples_outside_the_gap(pipe):
    """outside="original" splices the generated gap into the input: the input's exact samples beyond the 20 ms
    crossfades, the decoded clip's exact samples inside the gap past them; "decoded" is the whole decoded clip."""
    from tta.pipeline import INPAINT_FADE, splice_weight

    wav = signals.chirp(300, 3000, 0.4).astype(np.float32)
    sr, half = pipe.sample_rate, round(INPAINT_FADE * pipe.sample_rate) // 2
    first, last = round(0.15 * sr), round(0.3 * sr)
    spliced = pipe.inpaint(wav, ["a bird"], start=0.15, end=0.3, steps=2, candidates=2, return_candidates=True)
    decoded = pipe.inpaint(wav, ["a bird"], start=0.15, end=0.3, steps=2, candidates=2, return_candidates=True,
                           outside="decoded")
    mean = float(wav.mean())   # the input's DC offset: kept with its samples, added to the generated gap too
    for got, whole in zip(spliced.candidate_wavs[0], decoded.candidate_wavs[0]):
        np.testing.assert_array_equal(got[:first - half], wav[:first - half])   # exactly: not a float step off
        np.testing.assert_array_equal(got[last + half:], wav[last + half:])
        np.testing.assert_allclose(got[first + half:last - half], whole[first + half:last - half] + mean, atol=1e-6)
        assert not np.allclose(whole[:first - half], wav[:first - half], atol=1e-3)   # the decoder's rendering
        edge = slice(first - half, first + half)
        w = splice_weight(len(wav), first, last, 2 * half)[edge]
        np.testing.assert_allclose(got[edge], w * (whole[edge] + mean) + (1 - w) * wav[edge], atol=1e-6)
    # candidates are ranked on what is returned, and the kept one is among them
    assert any(np.array_equal(spliced.wavs[0], c) for c in spliced.candidate_wavs[0])
    with pytest.raises(PipelineError, match="outside='kept'"):
        pipe.inpaint(wav, ["a bird"], start=0.15, end=0.3, outside="kept")


def test_splice_weights_ramp_only_at_edges_inside_the_clip():
    from tta.pipeline import splice_weight

    w = splice_weight(100, 30, 60, 10)
    assert (w[:25] == 0).all() and (w[35:55] == 1).all() and (w[65:] == 0).all()
    assert np.all(np.diff(w[25:35]) > 0) and np.all(np.diff(w[55:65]) < 0)
    np.testing.assert_allclose(w[29] + w[30], 1.0, atol=1e-6)     # symmetric about the edge
    assert (splice_weight(100, 0, 60, 10)[:55] == 1).all() and (splice_weight(100, 30, 100, 10)[35:] == 1).all()
    assert (splice_weight(100, 0, 100, 10) == 1).all()
    short = splice_weight(100, 50, 54, 10)                        # a gap shorter than the fade: shorter ramps
    assert (short[:48] == 0).all() and (short[56:] == 0).all() and short[51] > 0.5


def test_edits_run_on_audio(pipe):
    wav = signals.chirp(300, 3000, 0.2).astype(np.float32)
    weak = pipe.audio_to_audio(wav, ["a bird"], strength=0.5, steps=2)
    strong = pipe.audio_to_audio(wav, ["a bird"], strength=1.0, steps=2)
    assert weak.wavs[0].shape == (3200,) and not np.array_equal(weak.wavs[0], strong.wavs[0])
    assert pipe.inpaint(wav, ["a bird"], start=0.05, end=0.1, steps=2).wavs[0].shape == (3200,)
    assert pipe.super_resolve(wav, ["a bird"], cutoff_hz=4000, steps=2).wavs[0].shape == (3200,)
    with pytest.raises(PipelineError, match="inpaint range"):
        pipe.inpaint(wav, ["a bird"], start=0.1, end=0.9)
    with pytest.raises(ValueError, match="no denoising step"):
        pipe.audio_to_audio(wav, ["a bird"], strength=0.01, steps=4)


def test_resynthesise_gives_the_clip_back_through_the_vocoder_or_the_vae_and_vocoder(pipe):
    wav = signals.chirp(300, 3000, 0.3).astype(np.float32)
    n = len(wav)
    vocoded, decoded = pipe.resynthesise(wav, through="vocoder"), pipe.resynthesise(wav)
    assert vocoded.shape == decoded.shape == (n,) and vocoded.dtype == decoded.dtype == np.float32
    assert np.isfinite(vocoded).all() and np.isfinite(decoded).all() and not np.array_equal(vocoded, decoded)
    np.testing.assert_array_equal(decoded, pipe.decode(pipe.encode_audio(wav, n), n)[0].numpy())
    # the vocoder path skips the VAE: a mel made from the wav, vocoded, cut to the wav's length
    from tta.audio import log_mel

    mel = log_mel(torch.from_numpy(wav)[None], pipe.mel).float()
    with torch.no_grad():
        np.testing.assert_array_equal(vocoded, pipe.vocoder(mel)[0, :n].numpy())
    with pytest.raises(PipelineError, match="expected 'vae' or 'vocoder'"):
        pipe.resynthesise(wav, through="unet")


def test_save_load_round_trip_is_identical(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "copy")
    again = TTAPipeline.from_pretrained(tmp_path / "copy")
    a = pipe(["a drum"], seconds=0.1, seed=7).wavs[0]
    assert np.array_equal(a, again(["a drum"], seconds=0.1, seed=7).wavs[0])


def test_save_pretrained_carries_the_model_card_attribution_and_licences_of_its_folder(tmp_path):
    """TTAPipeline.from_pretrained(DEFAULT_MODEL).save_pretrained(d) wrote the components only: the model card,
    ATTRIBUTION.md, EXPERIMENTS.md and licences/ that `tta export pipeline` copies (and the training data's
    licences require with the weights) were left behind. A pipeline built in memory has no notes to carry."""
    from tta.generate import DEFAULT_MODEL
    from tta.ldm.folder import find_notes

    assert [p.name for p in find_notes(DEFAULT_MODEL, ["unet", "scheduler", "vae", "vocoder", "text_encoder"])] \
        == ["ATTRIBUTION.md", "EXPERIMENTS.md", "README.md", "licences"]
    src = copy_pipeline(tmp_path / "src")
    notes = {"README.md": "# card\n", "ATTRIBUTION.md": "CC-BY 4.0: x\n", "EXPERIMENTS.md": "run 1\n",
             "licences/pkg.copyright": "CC-BY-SA-3.0\n"}
    for name, text in notes.items():
        (src / name).parent.mkdir(exist_ok=True)
        (src / name).write_text(text)
    (src / "generated").mkdir()                 # what else is kept in the folder is no note on the weights
    (src / "generated" / "x.wav").write_bytes(b"RIFF")
    (src / "ref.wav").write_bytes(b"RIFF")
    loaded = TTAPipeline.from_pretrained(src)
    saved = loaded.save_pretrained(tmp_path / "dst")
    files = sorted(str(p.relative_to(saved)) for p in saved.rglob("*") if p.is_file())
    assert {n: (saved / n).read_text() for n in notes} == notes
    assert not any(f.startswith(("generated", "ref.wav")) for f in files)
    # saved again over its own folder, it keeps them; what it saved loads with them, and saves them on
    TTAPipeline.from_pretrained(saved).save_pretrained(saved)
    again = TTAPipeline.from_pretrained(saved).save_pretrained(tmp_path / "again")
    assert sorted(str(p.relative_to(again)) for p in again.rglob("*") if p.is_file()) == files
    assert {n: (again / n).read_text() for n in notes} == notes
    # built in memory: components only, and pipeline.json as it was
    built = TTAPipeline(loaded.unet, loaded.vae, loaded.vocoder, loaded.clap, loaded.scheduler_config,
                        loaded.defaults).save_pretrained(tmp_path / "built")
    assert sorted(p.name for p in built.iterdir()) == ["pipeline.json", "scheduler", "text_encoder", "unet", "vae",
                                                       "vocoder"]
    assert (built / "pipeline.json").read_bytes() == (saved / "pipeline.json").read_bytes()
    # a note gone since loading is named before anything is written
    (src / "ATTRIBUTION.md").unlink()
    with pytest.raises(PipelineError, match="ATTRIBUTION.md: a note on this pipeline's weights"):
        loaded.save_pretrained(tmp_path / "lost")
    assert not (tmp_path / "lost").exists()


def test_mismatched_or_missing_components_are_named(tmp_path):
    folder = copy_pipeline(tmp_path / "p")
    cfg_path = folder / "vocoder" / "config.json"
    body = json.loads(cfg_path.read_text())
    body["config"]["mel"]["f_max"] = 7000.0
    cfg_path.write_text(json.dumps(body))
    with pytest.raises(PipelineError, match="f_max"):
        TTAPipeline.from_pretrained(folder)
    import shutil

    shutil.rmtree(folder / "vocoder")
    with pytest.raises(PipelineError, match="'vocoder' is missing"):
        TTAPipeline.from_pretrained(folder)
    with pytest.raises(PipelineError, match="no pipeline.json"):
        TTAPipeline.from_pretrained(folder / "vae")


@pytest.mark.parametrize("change, fragment", [({"num_train_timesteps": "1000"}, "num_train_timesteps"),
                                              ({"beta_end": 0.0001}, "beta_start"),
                                              ({"prediction_type": "noise"}, "prediction_type"),
                                              (None, "Expecting value")])
def test_a_bad_scheduler_config_is_named(tmp_path, change, fragment):
    folder = copy_pipeline(tmp_path / "p")
    path = folder / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}) if change else "")
    with pytest.raises(PipelineError, match=fragment) as e:
        TTAPipeline.from_pretrained(folder)
    assert str(e.value).startswith(f"{path}: ")


def test_a_scheduler_config_given_in_python_is_checked_as_its_file_is(pipe):
    """A noise schedule built in Python ("1000" failed on "'<' not supported", a bool beta passed as a number) and
    a scheduler config handed to TTAPipeline (its "1000" failed in torch.linspace at the first call; beta_end=True
    sampled on a schedule that ends at 1) went unchecked: only from_pretrained's file was checked."""
    from tta.ldm.sampling import DiffusionConfig

    with pytest.raises(ValueError, match=r"^diffusion.num_train_timesteps='1000' must be an integer$"):
        DiffusionConfig(num_train_timesteps="1000")
    with pytest.raises(ValueError, match=r"^diffusion.beta_start=True must be a finite number$"):
        DiffusionConfig(beta_start=True)
    assert type(DiffusionConfig(beta_end=np.float32(0.02)).beta_end) is float
    parts = (pipe.unet, pipe.vae, pipe.vocoder, pipe.clap)
    for change, message in (({"num_train_timesteps": "1000"}, "'scheduler.num_train_timesteps': expected int, got "
                                                              "string '1000'"),
                            ({"beta_end": True}, "'scheduler.beta_end': expected float, got bool True")):
        with pytest.raises(PipelineError, match=f"^scheduler config: config key {re.escape(message)}$"):
            TTAPipeline(*parts, {**pipe.scheduler_config, **change}, pipe.defaults)
    TTAPipeline(*parts, {**pipe.scheduler_config, "clip_sample": False}, pipe.defaults)   # other keys: diffusers'


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_apg_keeps_only_the_push_orthogonal_to_the_conditional_estimate(prediction_type):
    """In x0 space: a difference along x0_cond is dropped (the conditional prediction comes back), and a
    difference orthogonal to it is plain classifier-free guidance."""
    from tta.ldm.sampling import guide

    g, a = torch.Generator().manual_seed(0), torch.tensor(0.3)
    x = torch.randn(2, 4, 8, 8, generator=g)
    x0_cond = torch.randn(2, 4, 8, 8, generator=g)
    other = torch.randn(2, 4, 8, 8, generator=g)
    unit = x0_cond.flatten(1) / x0_cond.flatten(1).norm(dim=1, keepdim=True)
    ortho = other.flatten(1) - (other.flatten(1) * unit).sum(1, keepdim=True) * unit

    def pred(x0):                      # the model output that means this x0 estimate at level a
        return (x - a.sqrt() * x0) / (1 - a).sqrt() if prediction_type == "epsilon" else \
            (a.sqrt() * x - x0) / (1 - a).sqrt()

    kw = {"x": x, "alpha_cumprod": a, "prediction_type": prediction_type}
    cond = pred(x0_cond)
    parallel = pred(0.4 * x0_cond)                                            # differs only along x0_cond
    torch.testing.assert_close(guide(parallel, cond, 5.0, "apg", **kw), cond, atol=1e-4, rtol=1e-4)
    orthogonal = pred(x0_cond - ortho.view_as(x0_cond))                       # differs only across it
    torch.testing.assert_close(guide(orthogonal, cond, 5.0, "apg", **kw), guide(orthogonal, cond, 5.0),
                               atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="valid guidance rules: cfg, apg"):
        guide(parallel, cond, 5.0, "cfg++", **kw)


def test_guidance_rule_is_a_default_and_a_call_argument(pipe):
    from tta.pipeline import PipelineDefaults

    cfg = pipe(["a bell"], seconds=0.1, steps=3, guidance=4.0, seed=2)
    apg = pipe(["a bell"], seconds=0.1, steps=3, guidance=4.0, seed=2, guidance_rule="apg")
    assert np.isfinite(apg.wavs[0]).all() and not np.array_equal(cfg.wavs[0], apg.wavs[0])
    same = pipe(["a bell"], seconds=0.1, steps=3, guidance=1.0, seed=2, guidance_rule="apg")   # no guidance
    np.testing.assert_array_equal(same.wavs[0], pipe(["a bell"], seconds=0.1, steps=3, guidance=1.0, seed=2).wavs[0])
    with pytest.raises(PipelineError, match="valid guidance rules"):
        pipe(["a bell"], seconds=0.1, guidance_rule="cfg++")
    with pytest.raises(ValueError, match="guidance_rule"):
        PipelineDefaults(guidance_rule="cfg++")
    assert PipelineDefaults().guidance_rule == "cfg"


def test_bfloat16_precision_rounds_only_the_unet_and_is_a_default_and_a_call_argument(pipe, monkeypatch):
    from tta.ldm import sampling
    from tta.pipeline import PipelineDefaults

    kw = dict(seconds=0.2, steps=4, guidance=3.0, seed=5, guidance_rule="apg", candidates=1)
    full = pipe(["a bell"], **kw).wavs[0]
    seen = []
    forward = pipe.unet.forward

    def spy(*args, **kwargs):
        out = forward(*args, **kwargs)
        seen.append((torch.is_autocast_enabled("cpu"), out.dtype))
        return out

    monkeypatch.setattr(pipe.unet, "forward", spy)
    low = pipe(["a bell"], precision="bfloat16", **kw).wavs[0]
    assert seen and all(on and dtype == torch.bfloat16 for on, dtype in seen)     # every UNet pass, in bfloat16
    seen.clear()
    assert np.array_equal(pipe(["a bell"], precision="float32", **kw).wavs[0], full)
    assert seen and not any(on for on, _ in seen)
    assert low.dtype == np.float32 and np.isfinite(low).all() and not np.array_equal(low, full)
    # bfloat16 keeps 8 bits of mantissa: the waveform moves, but the audio is the same sound
    assert np.corrcoef(low, full)[0, 1] > 0.9
    # "auto" is bfloat16 exactly where the hardware has it
    for native, expected in ((False, "float32"), (True, "bfloat16")):
        monkeypatch.setattr(sampling, "native_bfloat16", lambda device, native=native: native)
        assert sampling.resolve_precision("auto", "cpu") == expected
        seen.clear()
        pipe(["a bell"], precision="auto", **kw)
        assert all(on == native for on, _ in seen)
    with pytest.raises(PipelineError, match="valid precisions: float32, bfloat16, auto"):
        pipe(["a bell"], seconds=0.1, precision="float16")
    with pytest.raises(ValueError, match="defaults.precision"):
        PipelineDefaults(precision="int8")
    assert PipelineDefaults().precision == "float32"
    assert isinstance(sampling.native_bfloat16("cpu"), bool)


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "auto"])
def test_a_callers_autocast_leaves_the_pipelines_precision_as_it_is(pipe, precision):
    """Under torch.autocast("cpu", dtype=torch.bfloat16), pipe(["a dog barks"], precision="float32") gave another
    clip (the embedded model: max difference 1.67 against a peak of 1.78): the UNet kept float32, but the CLAP, the
    VAE and the vocoder ran in bfloat16, while generation.json would say float32. The pipeline's precision is what
    runs, whatever autocast the caller entered: the same bytes (and CLAP scores) inside and outside one, for the
    generation, the edits and the parts the pipeline runs; the caller's autocast is on again after the call."""
    wav = signals.tone(440.0, 0.2, 16_000)
    kw = dict(steps=2, seed=3, precision=precision)

    def run() -> dict[str, np.ndarray]:
        made = {"generate": pipe(["a dog barks", "rain"], seconds=0.2, guidance=3.0, **kw),
                "audio_to_audio": pipe.audio_to_audio(wav, ["rain"], strength=0.6, **kw),
                "inpaint": pipe.inpaint(wav, ["rain"], start=0.05, end=0.1, **kw),
                "super_resolve": pipe.super_resolve(wav, ["rain"], cutoff_hz=3000.0, outside="decoded", **kw)}
        out = {f"{k} {i}": w for k, g in made.items() for i, w in enumerate(g.wavs)}
        out.update({f"{k} scores": np.array(g.scores) for k, g in made.items()})
        latents = pipe.encode_audio(wav, len(wav))
        out.update({"encode_audio": latents.numpy(), "decode": pipe.decode(latents, len(wav)).numpy(),
                    "resynthesise": pipe.resynthesise(wav), "vocoder": pipe.resynthesise(wav, through="vocoder")})
        return out

    outside = run()
    for dtype in (torch.bfloat16, torch.float16) if precision == "float32" else (torch.bfloat16,):
        with torch.autocast("cpu", dtype=dtype):
            inside = run()
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == dtype
        assert [k for k in outside if not np.array_equal(outside[k], inside[k])] == [], dtype


def test_the_inpaint_gap_is_computed_in_whole_samples(pipe, monkeypatch):
    """A start on a latent boundary (k latent steps in) keeps latent k - 1, whatever float rounding of k * step."""
    per = pipe.vae.downsample_factor * pipe.mel.hop_length            # samples per latent step
    wav = signals.tone(440, 2.0)
    seen = {}
    monkeypatch.setattr(pipe, "_run", lambda prompts, n, keep, **kw: (seen.setdefault("keep", keep),
                                                                       Generation([], 16_000, []))[1])
    for k in range(1, 40):
        start = round(k * per / pipe.sample_rate, 6)
        pipe.inpaint(wav, ["x"], start=start, end=start + 0.05)
        gap = (~seen.pop("keep")).flatten().nonzero().flatten()
        assert int(gap[0]) == k, (k, start)


def test_part_way_starts_refuse_the_samplers_that_cannot_take_them(pipe, monkeypatch):
    """The refusal came from the sampler loop as a plain ValueError, after the input was encoded."""
    wav = signals.tone(440, 0.32)
    monkeypatch.setattr(pipe, "encode_audio", lambda *a: pytest.fail("the input was encoded"))
    for sampler in ("pndm", "lms"):
        with pytest.raises(PipelineError, match=f"the {sampler} sampler cannot start part-way"):
            pipe.audio_to_audio(wav, ["x"], strength=0.5, steps=4, sampler=sampler)
    monkeypatch.undo()
    assert pipe.audio_to_audio(wav, ["x"], strength=0.5, steps=4, sampler="ddim").wavs[0].shape == (5120,)


def test_a_strength_that_leaves_no_step_is_refused_before_the_input_is_encoded(pipe, monkeypatch):
    """It came from the sampler loop as a plain ValueError naming the command line's flags, after the input was
    encoded and the prompts embedded."""
    wav = signals.tone(440, 0.32)
    monkeypatch.setattr(pipe, "encode_audio", lambda *a: pytest.fail("the input was encoded"))
    with pytest.raises(PipelineError, match=r"^strength=0\.05 with steps=4 leaves no denoising step \(it needs "
                                            r"strength above 0\.125, or more steps\)$"):
        pipe.audio_to_audio(wav, ["x"], strength=0.05, steps=4)
    with pytest.raises(PipelineError, match="strength=0.2 with steps=2 leaves no denoising step"):
        pipe.audio_to_audio(wav, ["x"], strength=0.2)                      # the model's 2 steps
    monkeypatch.undo()
    assert pipe.audio_to_audio(wav, ["x"], strength=0.13, steps=4).wavs[0].shape == (5120,)   # one step of four


def test_a_strength_that_leaves_no_step_is_explained_alike_by_the_sampler_and_the_pipeline(pipe):
    """The check was written three times (the sampler loop, audio_to_audio, tta generate): the sampler's said
    '; raise strength or steps' where the others named the least strength that runs a step."""
    from tta.ldm.sampling import make_scheduler, set_steps

    scheduler = make_scheduler("ddim", pipe.scheduler_config)
    with pytest.raises(ValueError) as sampler:
        set_steps(scheduler, 4, 0.05, "cpu")
    with pytest.raises(PipelineError) as pipeline:
        pipe.audio_to_audio(signals.tone(440, 0.32), ["x"], strength=0.05, steps=4)
    assert str(sampler.value) == str(pipeline.value) == ("strength=0.05 with steps=4 leaves no denoising step (it "
                                                         "needs strength above 0.125, or more steps)")


def test_step_counts_a_sampler_cannot_take_are_refused_before_denoising():
    """DPM-Solver++'s linspace spacing puts two of 1 000 steps on one timestep of a 1 000-step schedule: a
    zero-length step that turned the latents into NaN half-way through; more steps than training timesteps
    mean nothing for any sampler."""
    from tta.ldm.sampling import DiffusionConfig, make_scheduler, set_steps

    cfg = DiffusionConfig().scheduler_config()
    with pytest.raises(ValueError, match="steps=1000 is too many for the dpmsolver.. sampler .*timesteps repeat"):
        set_steps(make_scheduler("dpmsolver++", cfg), 1000, 1.0, "cpu")
    assert len(set_steps(make_scheduler("dpmsolver++", cfg), 999, 1.0, "cpu")) == 999
    for sampler in ("ddim", "euler", "heun"):
        with pytest.raises(ValueError, match="steps=1001 exceeds the 1000 timesteps"):
            set_steps(make_scheduler(sampler, cfg), 1001, 1.0, "cpu")
    assert len(set_steps(make_scheduler("ddim", cfg), 1000, 1.0, "cpu")) == 1000


def test_a_zero_terminal_snr_schedule_is_followed_or_refused_and_a_late_start_is_warned(caplog):
    """rescale_betas_zero_snr is part of the schedule a model was trained on: it was dropped silently. DDIM's
    "leading" spacing on a step count that does not divide the schedule starts far from pure noise: warned."""
    from tta.ldm.sampling import DiffusionConfig, make_scheduler, set_steps

    cfg = {**DiffusionConfig().scheduler_config(), "rescale_betas_zero_snr": True}
    assert float(make_scheduler("ddim", cfg).alphas_cumprod[-1]) < 1e-6
    assert float(make_scheduler("ddim", DiffusionConfig().scheduler_config()).alphas_cumprod[-1]) > 1e-4
    with pytest.raises(ValueError, match="rescale_betas_zero_snr .* the heun sampler cannot follow"):
        make_scheduler("heun", cfg)
    with caplog.at_level("WARNING", logger="tta.ldm.sampling"):
        set_steps(make_scheduler("ddim", DiffusionConfig().scheduler_config()), 200, 1.0, "cpu")
        assert not caplog.records
        set_steps(make_scheduler("ddim", DiffusionConfig().scheduler_config()), 300, 1.0, "cpu")
    assert any("starts at timestep 897 of 1000" in r.message for r in caplog.records)


@pytest.mark.parametrize("framing", ["hifigan", "tacotron"])
def test_the_inpainted_gap_covers_the_latents_whose_frames_hold_the_range(framing, monkeypatch):
    """A click inside [start, end) must land in a regenerated latent step, under either mel framing (the gap
    was computed for HiFi-GAN framing, half a hop off for TacotronSTFT's, which AudioLDM imports use)."""
    import copy
    import dataclasses

    from tta.audio import log_mel

    p = copy.deepcopy(TTAPipeline.from_pretrained(tiny_pipeline()))
    p.vae.config = dataclasses.replace(p.vae.config, mel=dataclasses.replace(p.vae.config.mel, framing=framing))
    seen = {}
    monkeypatch.setattr(p, "_run", lambda prompts, n, keep=None, **kw: (seen.setdefault("keep", keep),
                                                                         Generation([], 16_000, []))[1])
    per, hop, sr = p.vae.downsample_factor * p.mel.hop_length, p.mel.hop_length, p.sample_rate
    for boundary in (3 * per, 5 * per):
        for s in (boundary - hop // 4, boundary - 3 * hop // 4):   # the last samples before a latent boundary
            seen.clear()
            p.inpaint(np.zeros(8 * per, np.float32), ["x"], start=(s - 10) / sr, end=(s + 1) / sr)
            gap = ~seen["keep"].view(-1)
            click = np.zeros(8 * per, np.float32)
            click[s] = 1.0
            frame = int(log_mel(torch.from_numpy(click)[None], p.mel)[0].sum(0).argmax())
            assert gap[frame // p.vae.downsample_factor], (framing, s, frame)


def test_a_clip_shorter_than_a_clap_window_is_still_ranked(pipe):
    out = pipe(["a click"], seconds=0.05, steps=2, candidates=2, seed=0)
    assert out.wavs[0].shape == (800,) and len(out.candidate_scores[0]) == 2


def test_edits_hear_their_input_normalised_and_answer_at_its_level(pipe):
    """The Python edits fed raw arrays to the model (the CLI normalised them): a quiet clip gave another edit
    from the API than from the CLI. Now the same clip at two levels gives the same edit at those levels, and
    integer PCM is refused instead of being read as samples 30 000 times too loud."""
    wav = (signals.chirp(300, 3000, 0.3) * 0.5).astype(np.float32)
    for edit in (lambda x: pipe.audio_to_audio(x, ["a bird"], strength=0.6, steps=2),
                 lambda x: pipe.inpaint(x, ["a bird"], start=0.1, end=0.2, steps=2),
                 lambda x: pipe.super_resolve(x, ["a bird"], cutoff_hz=3000, steps=2)):
        loud, quiet = edit(wav), edit(wav * 0.05)
        assert quiet.input_level == pytest.approx(loud.input_level * 0.05)
        np.testing.assert_allclose(quiet.wavs[0], loud.wavs[0] * 0.05, atol=1e-6)
    with pytest.raises(PipelineError, match="edit input: expected float samples.*int16"):
        pipe.audio_to_audio((wav * 32767).astype(np.int16), ["a bird"], steps=2)


def test_super_resolution_keeps_the_input_below_the_cutoff(pipe):
    """Only the latent rows below the cutoff were held; the decoder let the regenerated rows spill into the low
    band (a burst 10 dB over the input, low-band correlation with the input 0.01)."""
    import torch

    sr = pipe.sample_rate
    t = np.arange(int(0.5 * sr))
    wav = (0.4 * np.sin(2 * np.pi * 440 * t / sr)).astype(np.float32)             # all below the cutoff
    out = pipe.super_resolve(wav, ["a bird"], cutoff_hz=3000, steps=2).wavs[0]
    decoded = pipe.super_resolve(wav, ["a bird"], cutoff_hz=3000, steps=2, outside="decoded").wavs[0]

    def low(x):   # the band below 0.9 x cutoff
        spec = torch.stft(torch.from_numpy(x).double(), 1024, 256, window=torch.hann_window(1024, dtype=torch.float64),
                          return_complex=True)
        spec[int(0.9 * 3000 / (sr / 1024)):] = 0
        return torch.istft(spec, 1024, 256, window=torch.hann_window(1024, dtype=torch.float64), length=len(x)).numpy()

    inner = slice(1024, -1024)
    assert np.corrcoef(low(out)[inner], wav[inner])[0, 1] > 0.999
    assert np.corrcoef(low(decoded)[inner], wav[inner])[0, 1] < 0.99


def test_an_edit_shorter_than_the_window_is_sampled_at_the_window(monkeypatch):
    """A 0.3 s input was edited at its exact length (a UNet trained on 10 s clips renders that poorly), unlike
    text-to-audio, which samples at the window and cuts."""
    import copy
    import dataclasses

    p = copy.deepcopy(TTAPipeline.from_pretrained(tiny_pipeline()))
    p.defaults = dataclasses.replace(p.defaults, window=0.64)
    seen = {}
    real = p._run

    def spy(prompts, n, **kw):
        seen.update(n=n, cut=kw.get("cut"))
        return real(prompts, n, **kw)

    monkeypatch.setattr(p, "_run", spy)
    wav = signals.chirp(300, 3000, 0.2).astype(np.float32)
    out = p.inpaint(wav, ["x"], start=0.05, end=0.1, steps=2)
    assert seen == {"n": 10_240, "cut": 3200} and out.wavs[0].shape == (3200,)
    out = p.audio_to_audio(wav, ["x"], steps=2, strength=0.5)
    assert seen == {"n": 10_240, "cut": 3200} and out.wavs[0].shape == (3200,)


def test_the_python_api_takes_numpy_numbers_and_moves_the_clap_with_the_pipeline(pipe, caplog):
    """numpy scalars (a sweep over np.arange) were refused as "steps=2 must be an integer >= 1", a bad seed
    reached torch as a traceback, negative= at guidance <= 1 passed without a word, resynthesise through the
    vocoder came back shorter than it went in, and TTAPipeline.to left the CLAP where it was."""
    import copy

    a = pipe(["a bell"], seconds=np.float32(0.1), steps=np.int64(2), candidates=np.int64(1), seed=np.int64(3))
    b = pipe(["a bell"], seconds=0.1, steps=2, candidates=1, seed=3)
    assert np.array_equal(a.wavs[0], b.wavs[0])
    for bad, match in ((1.7, "seed=1.7 must be an integer"), (-1, "seed=-1"), (2**62, "seed=")):
        with pytest.raises(PipelineError, match=match):
            pipe(["a bell"], seconds=0.1, steps=2, seed=bad)
    with caplog.at_level("WARNING", logger="tta.pipeline"):
        pipe(["a bell"], seconds=0.1, steps=2, guidance=1.0, negative="hiss")
    assert "negative='hiss' has no effect at guidance <= 1" in caplog.text
    wav = signals.chirp(300, 3000, 1.428).astype(np.float32)         # 22 848 samples: not whole hops
    assert pipe.resynthesise(wav, through="vocoder").shape == wav.shape == pipe.resynthesise(wav).shape
    moved = copy.deepcopy(pipe).to("meta")
    assert next(moved.clap.model.parameters()).device.type == "meta"


def test_to_refuses_a_dtype_or_a_missing_device_before_moving_any_part(pipe):
    """pipe.to(torch.bfloat16) (diffusers' habit) cast the UNet, VAE and vocoder, then failed on the CLAP with
    torch's "device() received an invalid combination of arguments": the pipeline went on generating in bfloat16.
    A device name torch does not know, or one this machine lacks, failed inside torch (RuntimeError,
    AssertionError), from_pretrained only after loading every part."""
    before = pipe(["a bell"], seconds=0.1, steps=2, seed=3).wavs[0]
    with pytest.raises(PipelineError, match=r"device=torch.bfloat16: expected a device, got a dtype.*precision="):
        pipe.to(torch.bfloat16)
    assert {p.dtype for m in (pipe.unet, pipe.vae, pipe.vocoder) for p in m.parameters()} == {torch.float32}
    assert np.array_equal(pipe(["a bell"], seconds=0.1, steps=2, seed=3).wavs[0], before)
    with pytest.raises(PipelineError, match="device='gpu': expected a torch device or its name"):
        pipe.to("gpu")
    with pytest.raises(PipelineError, match=r"device='cuda:99': (no CUDA device|this machine has)"):
        pipe.to("cuda:99")
    with pytest.raises(PipelineError, match="device='gpu'"):
        TTAPipeline.from_pretrained(tiny_pipeline(), device="gpu")
    assert pipe.to(torch.device("cpu")) is pipe and pipe.device == torch.device("cpu")


def test_to_takes_a_dtype_beside_the_device_as_diffusers_does(pipe):
    """pipe.to("cpu", torch.bfloat16) and pipe.to("cpu", dtype=torch.float32), diffusers' calls, failed on Python's
    own TypeError ("takes 2 positional arguments but 3 were given", "unexpected keyword argument 'dtype'"), which
    said nothing of precision=; float32, the parts' dtype, is taken, another dtype named before any part moves."""
    before = pipe(["a bell"], seconds=0.1, steps=2, seed=3).wavs[0]
    for call in (lambda: pipe.to("cpu", torch.bfloat16), lambda: pipe.to("cpu", dtype=torch.float16)):
        with pytest.raises(PipelineError, match=r"dtype=torch.(bfloat16|float16): the pipeline's weights stay "
                                                r"float32.*precision= \(float32, bfloat16, auto\)"):
            call()
    with pytest.raises(PipelineError, match="dtype=torch.bfloat16"):
        pipe.to("meta", torch.bfloat16)
    assert pipe.device == torch.device("cpu")
    assert {p.dtype for m in (pipe.unet, pipe.vae, pipe.vocoder) for p in m.parameters()} == {torch.float32}
    assert pipe.to("cpu", torch.float32) is pipe and pipe.to(torch.device("cpu"), dtype=torch.float32) is pipe
    assert np.array_equal(pipe(["a bell"], seconds=0.1, steps=2, seed=3).wavs[0], before)


def test_loading_a_pipeline_leaves_the_global_random_generators_as_they_were():
    """Building the parts drew their initial weights (replaced by the stored ones) from torch's global generator,
    so a script's torch.rand after loading a model gave other numbers than without it."""
    import random

    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    TTAPipeline.from_pretrained(tiny_pipeline())
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_loading_a_pipeline_does_not_read_the_cuda_generators(monkeypatch):
    """Keeping the random streams must not start CUDA: torch.cuda.get_rng_state_all() makes a context on every GPU
    of the machine, for a pipeline built on the CPU whose loading draws from the CPU generator alone."""
    def started(*args, **kwargs):
        raise AssertionError("CUDA's generators were read")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", started)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", started)
    assert TTAPipeline.from_pretrained(tiny_pipeline()).device == torch.device("cpu")


def test_resynthesise_and_the_edits_refuse_audio_that_is_not_one_mono_clip(pipe):
    """resynthesise took a (2, T) array to numpy's "could not broadcast input array from shape (2,16000) into shape
    (2,)" and an empty one to the VAE's "MelVAE expects mel of shape (B, n_mels=64, frames), got (1, 64, 0)"; an
    empty edit input was refused as "seconds=0.0 must be a positive number", a length no one had given (and a
    long one as "seconds=121.0 exceeds the maximum of 120 s per clip")."""
    wav = signals.chirp(300, 3000, 0.2).astype(np.float32)
    for through in ("vae", "vocoder"):
        with pytest.raises(PipelineError, match=r"resynthesise: expected mono audio of shape \(T,\) with T > 0, "
                                                r"got \(2, 3200\)"):
            pipe.resynthesise(np.stack([wav, wav]), through=through)
        with pytest.raises(PipelineError, match=r"resynthesise: expected mono.*got \(0,\)"):
            pipe.resynthesise(np.zeros(0, np.float32), through=through)
        with pytest.raises(PipelineError, match="resynthesise: contains NaN or inf"):
            pipe.resynthesise(np.full(3200, np.nan, np.float32), through=through)
        with pytest.raises(PipelineError, match="resynthesise: expected float samples.*int16"):
            pipe.resynthesise((wav * 32767).astype(np.int16), through=through)
    with pytest.raises(PipelineError, match=r"edit input: expected mono.*got \(0,\)"):
        pipe.audio_to_audio(np.zeros(0, np.float32), ["x"], strength=0.5)
    # too long or too short was "seconds=121.0 exceeds the maximum of 120 s per clip": no seconds= was given.
    # One length rule (check_seconds) words both, naming the input for an edit and seconds= for a call
    with pytest.raises(PipelineError, match=r"^edit input: 121 s of audio exceeds the maximum of 120 s per clip$"):
        pipe.inpaint(np.zeros(121 * 16_000, np.float32), ["x"], start=1.0, end=2.0)
    with pytest.raises(PipelineError, match=r"^edit input: 0\.005 s of audio is shorter than one mel frame "
                                            r"\(0\.01 s\)$"):
        pipe.super_resolve(wav[:80], ["x"], cutoff_hz=3000.0)
    with pytest.raises(PipelineError, match=r"^seconds=121 exceeds the maximum of 120 s per clip$"):
        pipe(["x"], seconds=121)
    with pytest.raises(PipelineError, match=r"^seconds=0\.005 is shorter than one mel frame \(0\.01 s\)$"):
        pipe(["x"], seconds=0.005)
    assert pipe.resynthesise(torch.from_numpy(wav)).shape == wav.shape    # a tensor or a list is a clip too
    assert pipe.resynthesise(wav.tolist(), through="vocoder").shape == wav.shape


def test_call_arguments_of_the_wrong_type_are_named_before_compute(pipe):
    """negative=None failed in the CLAP as "caption 0 is a NoneType, expected str" (no word of negative=), a
    prompt_ids list shorter than the prompts raised IndexError at the first empty prompt (and was taken silently
    otherwise), and a strength, inpaint range or cutoff given as a string failed on Python's "'<' not supported
    between instances of 'int' and 'str'"."""
    wav = signals.chirp(300, 3000, 0.2).astype(np.float32)
    for negative in (["hiss"], 3):
        with pytest.raises(PipelineError, match=re.escape(f"negative={negative!r} must be a string")):
            pipe(["a bell"], seconds=0.1, negative=negative)
    # None is no negative prompt (diffusers' negative_prompt=None), as "" is
    none, empty = (pipe(["a bell"], seconds=0.1, steps=2, negative=n) for n in (None, ""))
    assert np.array_equal(none.wavs[0], empty.wavs[0])
    with pytest.raises(PipelineError, match=r"prompt_ids=\['x'\] must name each of the 2 prompts"):
        pipe(["a bell", ""], seconds=0.1, prompt_ids=["x"])
    with pytest.raises(PipelineError, match="prompt_ids='ab' must name each"):
        pipe(["a", "b"], seconds=0.1, prompt_ids="ab")
    with pytest.raises(PipelineError, match="prompt_ids=3 must name each"):   # was "object of type 'int' has no len()"
        pipe(["a"], seconds=0.1, prompt_ids=3)
    with pytest.raises(PipelineError, match=r"unknown sampler \['ddim'\]"):   # was "unhashable type: 'list'"
        pipe.audio_to_audio(wav, ["x"], strength=0.5, sampler=["ddim"])
    with pytest.raises(PipelineError, match=r"strength='0.5' must be a number in \(0, 1\]"):
        pipe.audio_to_audio(wav, ["x"], strength="0.5")
    with pytest.raises(PipelineError, match="inpaint range start='0.05', end=0.1: expected numbers of seconds"):
        pipe.inpaint(wav, ["x"], start="0.05", end=0.1)
    with pytest.raises(PipelineError, match=r"cutoff_hz='3000' must be a number inside the mel band \(0, 8000\)"):
        pipe.super_resolve(wav, ["x"], cutoff_hz="3000")
    with pytest.raises(PipelineError, match="window='1' must be in"):
        pipe(["x"], seconds=0.1, window="1")
    out = pipe(["a bell", "rain"], seconds=0.1, steps=2, prompt_ids=("b", "r"), negative="hiss",
               guidance=np.float32(2.0))
    assert len(out.wavs) == 2
    assert pipe.inpaint(wav, ["x"], start=np.float32(0.05), end=np.float64(0.1), steps=2).wavs[0].shape == wav.shape


def test_an_edit_names_itself_and_the_keyword_it_does_not_take(pipe):
    """pipe.audio_to_audio(wav, ["a"], seconds=1) failed on "TTAPipeline._run() got an unexpected keyword argument
    'seconds'", a private method and no reason; init_wav= or keep= on "multiple values for keyword argument", and
    strength= on inpaint / super_resolve was taken silently (the command line refuses --strength there)."""
    import inspect

    wav = signals.chirp(300, 3000, 0.2).astype(np.float32)
    edits = {"audio_to_audio": lambda **kw: pipe.audio_to_audio(wav, ["x"], steps=2, **kw),
             "inpaint": lambda **kw: pipe.inpaint(wav, ["x"], start=0.05, end=0.1, steps=2, **kw),
             "super_resolve": lambda **kw: pipe.super_resolve(wav, ["x"], cutoff_hz=3000, steps=2, **kw)}
    for name, edit in edits.items():
        with pytest.raises(TypeError, match=rf"TTAPipeline\.{name}\(\) takes no seconds=: an edit's length is its "
                                            r"input's"):
            edit(seconds=1)
        with pytest.raises(TypeError, match=rf"TTAPipeline\.{name}\(\) takes no window=: an edit's length"):
            edit(window=1.0)
        for private in ("init_wav", "keep", "cut", "finish", "context", "stepz"):
            with pytest.raises(TypeError, match=rf"TTAPipeline\.{name}\(\) got an unexpected keyword argument "
                                                rf"'{private}'; besides its own, an edit takes steps, guidance"):
                edit(**{private: None})
    for name in ("inpaint", "super_resolve"):
        with pytest.raises(TypeError, match=rf"TTAPipeline\.{name}\(\) takes no strength="):
            edits[name](strength=0.5)
    # an edit takes every generation setting of __call__ but its length
    from tta.pipeline import EDIT_SETTINGS

    call = set(inspect.signature(TTAPipeline.__call__).parameters) - {"self", "prompts", "seconds", "window"}
    assert set(EDIT_SETTINGS) == call
    out = edits["audio_to_audio"](seed=np.int64(3), candidates=2, return_candidates=True, guidance_rule="apg",
                                  precision="float32", progress=False, prompt_ids=["a"], negative="hiss", eta=0.0,
                                  sampler="ddim", batch_size=1, guidance=2.0, context_guidance="shared")
    assert len(out.candidate_wavs[0]) == 2


def test_sample_names_itself_for_a_keyword_it_does_not_take(pipe):
    """TTAPipeline.sample(..., bogus=1) raised "denoise() got an unexpected keyword argument 'bogus'", naming a
    function the caller never called."""
    num_samples = 1600
    noise = torch.randn((1, *pipe.latent_shape(num_samples)), generator=torch.Generator().manual_seed(0))
    cond = pipe.clap.embed_text(["a bell"])
    for name in ("bogus", "unet", "scheduler"):
        with pytest.raises(TypeError, match=rf"^TTAPipeline\.sample\(\) got an unexpected keyword argument '{name}'$"):
            pipe.sample(noise, cond, None, num_samples, steps=2, guidance=1.0, sampler="ddim", **{name: 1})
    wav = pipe.sample(noise, cond, None, num_samples, steps=2, guidance=1.0, sampler="ddim", progress=False,
                      guidance_rule="cfg")   # what denoise takes is passed on
    assert wav.shape == (1, num_samples)


@pytest.mark.parametrize("outside", ["original", "decoded"])
def test_inpainting_a_long_clip_samples_only_a_window_around_the_gap(pipe, monkeypatch, outside):
    """A 2 s gap in a 42.5 s clip was sampled with the whole clip's latents (117 s on 2 threads), though the
    latents outside the gap are the input's either way: only the gap with INPAINT_CONTEXT on each side is
    sampled now. "original" keeps the input's own samples outside the gap; "decoded" is the whole clip's latents,
    the gap's put in, as the VAE and vocoder render them."""
    import tta.pipeline

    monkeypatch.setattr(tta.pipeline, "INPAINT_CONTEXT", 0.3, raising=False)
    sr = pipe.sample_rate
    wav = (signals.chirp(300, 3000, 3.0) * 0.6 + 0.01).astype(np.float32)
    n, first, last = len(wav), round(1.5 * sr), round(1.7 * sr)
    frames = []
    forward = pipe.unet.forward
    monkeypatch.setattr(pipe.unet, "forward", lambda x, *args, **kw: frames.append(x.shape[2]) or forward(x, *args, **kw))
    out = pipe.inpaint(wav, ["a bird"], start=1.5, end=1.7, steps=2, candidates=2, return_candidates=True,
                       outside=outside)
    window = last - first + 2 * round(0.3 * sr)          # 0.8 s, as whole UNet-sized runs of latent steps
    assert set(frames) == {pipe.latent_shape(window)[1]} and frames[0] < pipe.latent_shape(n)[1] / 3
    a, b = pipe._inpaint_segment(n, n, first, last)
    assert 0 < a <= first - round(0.3 * sr) and last + round(0.3 * sr) <= b < n   # the window, inside the clip
    for got in out.candidate_wavs[0]:
        assert got.shape == (n,) and not np.allclose(got[first:last], wav[first:last], atol=1e-2)
        if outside == "original":
            kept = tta.pipeline.inpaint_weight(n, 1.5, 1.7, sr) == 0
            np.testing.assert_array_equal(got[kept], wav[kept])
        else:
            x, level, _ = tta.pipeline.edit_input(wav)
            whole = pipe.resynthesise(x) * np.float32(level)
            outside_window = np.r_[got[:a] - whole[:a], got[b:] - whole[b:]]   # the decoder hears the gap too
            assert np.abs(outside_window).max() < 0.01 * np.abs(whole).max()
    assert any(np.array_equal(out.wavs[0], c) for c in out.candidate_wavs[0])


@pytest.mark.parametrize("outside", ["original", "decoded"])
def test_inpainting_a_long_clip_to_its_end_regenerates_the_gap_to_its_last_sample(pipe, monkeypatch, outside):
    """A window at the end of a clip that is not a whole number of latent steps ended up to a step short of it
    (a multiple of the step from its start, inside the clip): a gap reaching the end kept its last 300 samples
    the input's. It ends with the clip now, its last step the clip's last, as when the whole clip is sampled."""
    import tta.pipeline

    monkeypatch.setattr(tta.pipeline, "INPAINT_CONTEXT", 0.3, raising=False)
    sr, per = pipe.sample_rate, pipe.vae.downsample_factor * pipe.mel.hop_length
    wav = (signals.chirp(300, 3000, 3.0) * 0.6 + 0.01).astype(np.float32)
    wav = np.concatenate([wav, wav[:300]])                   # 48300 samples: 150 latent steps and 300 samples
    n, first = len(wav), round(2.7 * sr)
    assert n % per == 300
    decoded = []
    decode = pipe.decode
    monkeypatch.setattr(pipe, "decode", lambda latents, k: decoded.append(latents) or decode(latents, k))
    got = pipe.inpaint(wav, ["a bird"], start=2.7, end=n / sr, steps=2, outside=outside).wavs[0]
    assert got.shape == (n,)
    a, b = pipe._inpaint_segment(n, n, first, n)
    if outside == "original":
        assert not np.allclose(got[-300:], wav[-300:], atol=1e-2)
    else:   # the clip's last latent step, which holds its last 300 samples, is the sampled one, not the input's
        x, _, _ = tta.pipeline.edit_input(wav)
        last = n // per
        whole = pipe.encode_audio(x, n)
        assert not torch.allclose(decoded[0][0, :, last], whole[0, :, last], atol=1e-3)
        assert torch.equal(decoded[0][0, :, :a // per], whole[0, :, :a // per])
    assert 0 < a and a % per == 0 and b == n


def test_a_pipeline_with_a_weight_normed_vocoder_pickles_and_copies(pipe):
    """pickle.dumps(pipe) (multiprocessing's spawn, a notebook's cache) failed deep in torch with "Serialization
    of parametrized modules is only supported through state_dict()" for a HiFi-GAN that keeps its weight norm (this
    tiny one, a checkpoint's), and a deep copy shared its parametrized classes with the original. Both give the
    same audio, leave the global random generators alone, and a copy's vocoder is its own."""
    import copy
    import pickle

    from torch.nn.utils import parametrize

    assert parametrize.is_parametrized(pipe.vocoder.conv_pre)
    before = pipe(["a bell"], seconds=0.1, steps=2, seed=3).wavs[0]
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    loaded = pickle.loads(pickle.dumps(pipe))
    copied = copy.deepcopy(pipe)
    assert torch.equal(torch.rand(3), expected)
    assert parametrize.is_parametrized(loaded.vocoder.conv_pre) and not loaded.vocoder.training
    for other in (loaded, copied):
        assert np.array_equal(other(["a bell"], seconds=0.1, steps=2, seed=3).wavs[0], before)
    copied.vocoder.remove_weight_norm()
    assert parametrize.is_parametrized(pipe.vocoder.conv_pre)
    assert np.array_equal(pipe(["a bell"], seconds=0.1, steps=2, seed=3).wavs[0], before)
