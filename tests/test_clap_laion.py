"""LAION-CLAP loading: original `.pt` layout -> transformers ClapModel, tokenizer checks, LAION audio prep."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from tests.signals import chirp, noise
from tta.checkpoint import CheckpointError
from tta.clap.cache import audio_key
from tta.clap.laion import (
    MAX_SAMPLES,
    LaionClapEmbedder,
    convert_laion_state_dict,
    laion_prepare,
    load_laion_checkpoint,
    load_roberta_tokenizer,
)

EMBED, DEPTHS, HEADS, WINDOW, MELS, SPEC = 8, (2, 1, 1, 1), (1, 1, 2, 2), 8, 64, 256
TEXT_H, TEXT_LAYERS, VOCAB, POS, PROJ = 32, 2, 30522, 80, 16


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is faster than two spin-waiting ones on a shared CPU."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_config(fusion: bool = False):
    from transformers import ClapConfig

    return ClapConfig(
        text_config={"vocab_size": VOCAB, "hidden_size": TEXT_H, "num_hidden_layers": TEXT_LAYERS, "num_attention_heads": 2,
                         "intermediate_size": 64, "max_position_embeddings": POS, "type_vocab_size": 1, "projection_dim": PROJ},
        audio_config={"patch_embeds_hidden_size": EMBED, "depths": list(DEPTHS), "num_attention_heads": list(HEADS),
                          "window_size": WINDOW, "spec_size": SPEC, "num_mel_bins": MELS, "hidden_size": EMBED * 8,
                          "projection_dim": PROJ, "enable_fusion": False},
        projection_dim=PROJ)


def conversion_config(tiny, *, vocab_size: int, hidden_size: int):
    """A one-layer text tower of `hidden_size` with tiny_config's audio sizes, the rest as transformers' conversion
    leaves it."""
    from transformers import ClapConfig

    return ClapConfig(text_config={"vocab_size": vocab_size, "hidden_size": hidden_size, "num_hidden_layers": 1,
                                   "intermediate_size": 64, "max_position_embeddings": POS},
                      audio_config={k: getattr(tiny.audio_config, k) for k in (
                          "patch_embeds_hidden_size", "depths", "num_attention_heads", "hidden_size")},
                      projection_dim=PROJ)


def _relative_position_index(w: int) -> torch.Tensor:
    """Swin's pairwise relative-position index for a w x w window, (w*w, w*w)."""
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)
    return rel[:, :, 0] * (2 * w - 1) + rel[:, :, 1]


def laion_layout(seed: int = 0, fusion: bool = False) -> dict:
    """A state dict named and shaped as LAION-CLAP's HTSAT + RoBERTa model (its own module names:
    htsat.py HTSAT_Swin_Transformer, model.py CLAP with MLP projections and MLPLayers transforms)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def put(name, *shape):
        sd[name] = torch.randn(*shape, generator=g) * 0.05

    a = "audio_branch."
    put(a + "spectrogram_extractor.stft.conv_real.weight", 513, 1, 1024)
    put(a + "spectrogram_extractor.stft.conv_imag.weight", 513, 1, 1024)
    put(a + "logmel_extractor.melW", 513, MELS)
    for n in ("weight", "bias", "running_mean"):
        put(a + f"bn0.{n}", MELS)
    sd[a + "bn0.running_var"] = torch.rand(MELS, generator=g) + 0.5
    sd[a + "bn0.num_batches_tracked"] = torch.tensor(7)
    put(a + "patch_embed.proj.weight", EMBED, 1, 4, 4)
    put(a + "patch_embed.proj.bias", EMBED)
    put(a + "patch_embed.norm.weight", EMBED)
    put(a + "patch_embed.norm.bias", EMBED)
    if fusion:  # feature-fusion checkpoints: a local mel conv and a 2-D attentional feature-fusion block
        put(a + "patch_embed.mel_conv2d.weight", EMBED, 1, 4, 12)
        put(a + "patch_embed.mel_conv2d.bias", EMBED)
        inter = EMBED // 4
        for branch, convs, norms in (("local_att", (0, 3), (1, 4)), ("global_att", (1, 4), (2, 5))):
            for n, (c_in, c_out) in zip(convs, ((EMBED, inter), (inter, EMBED))):
                put(a + f"patch_embed.fusion_model.{branch}.{n}.weight", c_out, c_in, 1, 1)
                put(a + f"patch_embed.fusion_model.{branch}.{n}.bias", c_out)
            for n, c in zip(norms, (inter, EMBED)):
                for stat in ("weight", "bias", "running_mean"):
                    put(a + f"patch_embed.fusion_model.{branch}.{n}.{stat}", c)
                sd[a + f"patch_embed.fusion_model.{branch}.{n}.running_var"] = torch.ones(c)
                sd[a + f"patch_embed.fusion_model.{branch}.{n}.num_batches_tracked"] = torch.tensor(3)
    res = SPEC // 4
    for i, (depth, heads) in enumerate(zip(DEPTHS, HEADS)):
        d = EMBED * 2 ** i
        for j in range(depth):
            b = a + f"layers.{i}.blocks.{j}."
            for norm in ("norm1", "norm2"):
                put(b + f"{norm}.weight", d)
                put(b + f"{norm}.bias", d)
            put(b + "attn.relative_position_bias_table", (2 * WINDOW - 1) ** 2, heads)
            sd[b + "attn.relative_position_index"] = _relative_position_index(WINDOW)
            put(b + "attn.qkv.weight", 3 * d, d)
            put(b + "attn.qkv.bias", 3 * d)
            put(b + "attn.proj.weight", d, d)
            put(b + "attn.proj.bias", d)
            put(b + "mlp.fc1.weight", 4 * d, d)
            put(b + "mlp.fc1.bias", 4 * d)
            put(b + "mlp.fc2.weight", d, 4 * d)
            put(b + "mlp.fc2.bias", d)
            if j % 2 == 1 and res > WINDOW:  # shifted windows carry a mask buffer
                n_windows = (res // WINDOW) ** 2
                sd[b + "attn_mask"] = torch.zeros(n_windows, WINDOW * WINDOW, WINDOW * WINDOW)
        if i < len(DEPTHS) - 1:
            put(a + f"layers.{i}.downsample.reduction.weight", 2 * d, 4 * d)
            put(a + f"layers.{i}.downsample.norm.weight", 4 * d)
            put(a + f"layers.{i}.downsample.norm.bias", 4 * d)
        res //= 2
    feats = EMBED * 8
    put(a + "norm.weight", feats)
    put(a + "norm.bias", feats)
    put(a + "tscam_conv.weight", 527, feats, 2, 3)
    put(a + "tscam_conv.bias", 527)
    put(a + "head.weight", 527, 527)
    put(a + "head.bias", 527)
    t = "text_branch."
    put(t + "embeddings.word_embeddings.weight", VOCAB, TEXT_H)
    put(t + "embeddings.position_embeddings.weight", POS, TEXT_H)
    put(t + "embeddings.token_type_embeddings.weight", 1, TEXT_H)
    put(t + "embeddings.LayerNorm.weight", TEXT_H)
    put(t + "embeddings.LayerNorm.bias", TEXT_H)
    sd[t + "embeddings.position_ids"] = torch.arange(POS)[None]
    for k in range(TEXT_LAYERS):
        L = t + f"encoder.layer.{k}."
        for name, o, i_ in (("attention.self.query", TEXT_H, TEXT_H), ("attention.self.key", TEXT_H, TEXT_H),
                            ("attention.self.value", TEXT_H, TEXT_H), ("attention.output.dense", TEXT_H, TEXT_H),
                            ("intermediate.dense", 64, TEXT_H), ("output.dense", TEXT_H, 64)):
            put(L + f"{name}.weight", o, i_)
            put(L + f"{name}.bias", o)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            put(L + f"{ln}.weight", TEXT_H)
            put(L + f"{ln}.bias", TEXT_H)
    put(t + "pooler.dense.weight", TEXT_H, TEXT_H)
    put(t + "pooler.dense.bias", TEXT_H)
    for side, width in (("text", TEXT_H), ("audio", feats)):
        put(f"{side}_projection.0.weight", PROJ, width)
        put(f"{side}_projection.0.bias", PROJ)
        put(f"{side}_projection.2.weight", PROJ, PROJ)
        put(f"{side}_projection.2.bias", PROJ)
        for n in (0, 3):
            put(f"{side}_transform.sequential.{n}.weight", PROJ, PROJ)
            put(f"{side}_transform.sequential.{n}.bias", PROJ)
    sd["logit_scale_a"] = torch.tensor(3.0)
    sd["logit_scale_t"] = torch.tensor(2.5)
    return {f"module.{k}": v for k, v in sd.items()}


@pytest.fixture(scope="module")
def laion_pt(tmp_path_factory):
    path = tmp_path_factory.mktemp("laion") / "630k-tiny.pt"
    torch.save({"epoch": 45, "state_dict": laion_layout()}, path)
    return path


@pytest.fixture(scope="module")
def tokenizer_dir():
    from tta.clap.towers import minilm_folder

    return minilm_folder()   # a real local WordPiece vocabulary (30522 tokens) stands in for RoBERTa's


def test_laion_pt_loads_with_every_key_consumed(laion_pt):
    src = {k[len("module."):]: v for k, v in torch.load(laion_pt, weights_only=True)["state_dict"].items()}
    model = load_laion_checkpoint(laion_pt, tiny_config())
    sd = model.state_dict()
    enc = "audio_model.audio_encoder."
    q, k, _v = src["audio_branch.layers.2.blocks.0.attn.qkv.weight"].chunk(3)
    assert torch.equal(sd[enc + "layers.2.blocks.0.attention.self.query.weight"], q)
    assert torch.equal(sd[enc + "layers.2.blocks.0.attention.self.key.weight"], k)
    assert torch.equal(sd[enc + "layers.2.blocks.0.attention.self.value.bias"],
                       src["audio_branch.layers.2.blocks.0.attn.qkv.bias"].chunk(3)[2])
    pairs = {enc + "layers.0.blocks.1.attention.output.dense.weight": "audio_branch.layers.0.blocks.1.attn.proj.weight",
             enc + "layers.0.blocks.1.layernorm_after.bias": "audio_branch.layers.0.blocks.1.norm2.bias",
             enc + "layers.1.blocks.0.intermediate.dense.weight": "audio_branch.layers.1.blocks.0.mlp.fc1.weight",
             enc + "layers.1.blocks.0.output.dense.weight": "audio_branch.layers.1.blocks.0.mlp.fc2.weight",
             enc + "batch_norm.running_var": "audio_branch.bn0.running_var",
             enc + "layers.0.downsample.reduction.weight": "audio_branch.layers.0.downsample.reduction.weight",
             "audio_projection.linear2.weight": "audio_projection.2.weight",
             "text_projection.linear1.bias": "text_projection.0.bias",
             "text_model.encoder.layer.1.output.dense.weight": "text_branch.encoder.layer.1.output.dense.weight",
             "logit_scale_a": "logit_scale_a", "logit_scale_t": "logit_scale_t"}
    for hf, laion in pairs.items():
        assert torch.equal(sd[hf], src[laion]), hf
    # every weight tensor of the model came from the file (only deterministic buffers may be the model's own)
    converted, origin = convert_laion_state_dict(src)
    own_only = set(sd) - set(converted)
    assert own_only == {"text_model.embeddings.position_ids", "text_model.embeddings.token_type_ids"}
    assert set(converted) <= set(sd)
    dropped = set(src) - set(origin.values())
    assert dropped and all(k.startswith(("audio_branch.spectrogram_extractor", "audio_branch.logmel_extractor",
                                         "audio_branch.tscam_conv", "audio_branch.head", "text_transform",
                                         "audio_transform", "text_branch.embeddings.position_ids"))
                           or k.endswith(".attn_mask") for k in dropped)
    assert any(k.endswith(".attn_mask") for k in dropped)


def test_fusion_checkpoint_keys_load(tmp_path):
    path = tmp_path / "fusion.pt"
    sd = laion_layout(fusion=True)
    torch.save({"state_dict": sd}, path)
    model = load_laion_checkpoint(path)          # fusion is detected from the weights
    assert model.config.audio_config.enable_fusion
    fused = model.state_dict()
    enc = "audio_model.audio_encoder.patch_embed."
    assert torch.equal(fused[enc + "mel_conv2d.weight"], sd["module.audio_branch.patch_embed.mel_conv2d.weight"])
    assert torch.equal(fused[enc + "fusion_model.global_att.4.weight"],
                       sd["module.audio_branch.patch_embed.fusion_model.global_att.4.weight"])
    with pytest.raises(CheckpointError, match="unexpected keys"):   # fusion weights into an unfused model
        load_laion_checkpoint(path, tiny_config())


@pytest.mark.parametrize("fusion", [False, True])
def test_a_long_clips_embedding_does_not_depend_on_its_batch(tokenizer_dir, fusion):
    """A clip over 10 s is cropped (or fused from chunks) at random from crop_seed: one generator shared by a
    batch gave each position its own crop, so scores moved with --batch-size and file order."""
    from transformers import AutoTokenizer, ClapModel

    config = tiny_config()
    config.audio_config.enable_fusion = fusion
    torch.manual_seed(0)
    clap = LaionClapEmbedder(ClapModel(config).eval(), AutoTokenizer.from_pretrained(str(tokenizer_dir)),
                             identity="long")
    a, b = chirp(200, 4000, 12.0, 48_000), chirp(3000, 300, 12.0, 48_000)
    alone = clap.embed_audio(b, 48_000)[0]
    assert torch.allclose(clap.embed_audio([a, b], 48_000)[1], alone, atol=1e-5)
    assert torch.allclose(clap.embed_audio([b, a], 48_000)[0], alone, atol=1e-5)


def test_fusion_embeddings_of_short_clips_do_not_depend_on_their_batch(tmp_path, tokenizer_dir):
    """transformers' feature extractor marks a random clip "longer" when no clip exceeds 10 s (LAION does so
    only while training); at inference LAION fuses only the clips that are longer. A clip's embedding is the
    same alone, first or second in a batch, and equals the unfused path LAION takes at inference."""
    from transformers import AutoTokenizer

    from transformers import ClapModel

    config = tiny_config()
    config.audio_config.enable_fusion = True
    torch.manual_seed(0)
    model = ClapModel(config).eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():   # make the fusion branch matter
        for name, param in model.named_parameters():
            if "fusion_model" in name or "mel_conv2d" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    clap = LaionClapEmbedder(model, AutoTokenizer.from_pretrained(str(tokenizer_dir)), identity="fused")
    a, b = chirp(200, 4000, 4.0, 48_000), chirp(3000, 300, 4.0, 48_000)
    alone = clap.embed_audio(a, 48_000)[0]
    assert torch.allclose(clap.embed_audio([a, b], 48_000)[0], alone, atol=1e-5)
    assert torch.allclose(clap.embed_audio([b, a], 48_000)[1], alone, atol=1e-5)
    clip = (np.clip(a, -1, 1) * 32767.0).astype(np.int16).astype(np.float32) / 32767.0
    feats = clap.features([clip], sampling_rate=48_000, return_tensors="pt")
    with torch.no_grad():
        unfused = clap.model.get_audio_features(input_features=feats["input_features"],
                                                is_longer=torch.zeros(1, 1, dtype=torch.bool))
    unfused = getattr(unfused, "pooler_output", unfused)[0]
    assert torch.allclose(alone, unfused / unfused.norm(), atol=1e-5)


def test_config_is_inferred_from_the_weights(laion_pt):
    model = load_laion_checkpoint(laion_pt)   # no config given
    cfg = model.config
    assert cfg.audio_config.depths == list(DEPTHS) and cfg.audio_config.num_attention_heads == list(HEADS)
    assert cfg.audio_config.window_size == WINDOW and cfg.projection_dim == PROJ
    assert cfg.text_config.num_hidden_layers == TEXT_LAYERS and cfg.text_config.vocab_size == VOCAB
    assert cfg.text_config.layer_norm_eps == 1e-5       # RoBERTa's, which LAION's text branch is built from


def test_the_clap_inside_an_audioldm_ckpt_loads(laion_pt, tokenizer_dir, tmp_path):
    """An AudioLDM .ckpt keeps the CLAP it was trained with under cond_stage_model.model.* (LAION's layout
    without `module.`), beside the UNet and VAE; it loads as the same model as the stand-alone .pt."""
    sd = {f"cond_stage_model.model.{k[len('module.'):]}": v for k, v in laion_layout().items()}
    sd["model.diffusion_model.out.2.weight"] = torch.zeros(4, 8, 3, 3)    # other parts of the checkpoint
    sd["scale_factor"] = torch.tensor(0.5)
    ckpt = tmp_path / "audioldm.ckpt"
    torch.save({"state_dict": sd}, ckpt)
    want = load_laion_checkpoint(laion_pt).state_dict()
    got = load_laion_checkpoint(ckpt).state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    loaded = torch.load(ckpt, weights_only=True)
    clap = LaionClapEmbedder.from_path(ckpt, tokenizer_dir, loaded=loaded)
    plain = LaionClapEmbedder.from_path(laion_pt, tokenizer_dir)
    torch.testing.assert_close(clap.embed_text(["a dog barks"]), plain.embed_text(["a dog barks"]))


@pytest.mark.parametrize("change, expect", [
    ("drop", "missing from the file (first: audio_model.audio_encoder.layers.1.blocks.0.attention.self.query.weight"),
    ("extra", "model: 1 unexpected key (first: module.audio_branch.layers.9.blocks.0.attn.qkv.weight)"),
    ("shape", "other shapes (first: module.text_projection.2.weight"),
])
def test_mismatched_keys_are_listed(tmp_path, change, expect):
    sd = laion_layout()
    if change == "drop":
        del sd["module.audio_branch.layers.1.blocks.0.attn.qkv.weight"]
    elif change == "extra":
        sd["module.audio_branch.layers.9.blocks.0.attn.qkv.weight"] = torch.zeros(3, 1)
    else:
        sd["module.text_projection.2.weight"] = torch.zeros(PROJ + 1, PROJ)
    path = tmp_path / "bad.pt"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError) as err:
        load_laion_checkpoint(path, tiny_config())
    assert expect in str(err.value)


def test_a_bert_text_branch_is_refused_by_name(tmp_path):
    """LAION-CLAP can train a BERT text branch (2 token types, no position offset); read as RoBERTa it would
    embed every caption wrongly without an error."""
    sd = laion_layout()
    key = next(k for k in sd if k.endswith("embeddings.token_type_embeddings.weight"))
    sd[key] = torch.zeros(2, sd[key].shape[1])
    path = tmp_path / "bert.pt"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError, match=r"bert.pt: its text branch is BERT-like \(2 token types\)"):
        load_laion_checkpoint(path)


def test_a_tensor_the_config_is_read_from_names_the_file(tmp_path):
    sd = laion_layout()
    del sd["module.text_projection.0.weight"]
    path = tmp_path / "damaged.pt"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError, match=r"damaged.pt: cannot infer the CLAP config: no 'text_projection"):
        load_laion_checkpoint(path)


def test_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="LAION-CLAP checkpoint"):
        load_laion_checkpoint(path, tiny_config())


def test_tokenizer_must_be_a_real_vocabulary(tmp_path):
    from transformers import BertTokenizer

    with pytest.raises(ValueError, match="not found"):
        load_roberta_tokenizer(tmp_path / "nope")
    small = tmp_path / "small"
    small.mkdir()
    (small / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\nb" + "\n")
    BertTokenizer(str(small / "vocab.txt")).save_pretrained(str(small))
    with pytest.raises(ValueError, match="only 7 tokens"):
        load_roberta_tokenizer(small)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError):
        load_roberta_tokenizer(empty)


def test_laion_audio_preparation():
    rng = np.random.default_rng(0)
    clip = noise(1.5, 48_000)
    out = laion_prepare(clip, rng)
    q = np.round(np.clip(clip, -1, 1) * 32767).astype(np.int16)   # int16 quantisation round trip
    n = clip.shape[0]
    assert out.shape == (MAX_SAMPLES,) and np.abs(out[:n] * 32767 - np.trunc(clip * 32767)).max() < 1e-2
    assert np.allclose(out[n:2 * n], out[:n]) and (out[6 * n:] == 0).all() and np.abs(q).max() > 0
    long = noise(12.0, 48_000, seed=3)
    qlong = np.trunc(np.clip(long, -1, 1) * 32767) / 32767
    cut = laion_prepare(long, np.random.default_rng(1))
    windows = np.lib.stride_tricks.sliding_window_view(qlong, 4)
    starts = np.flatnonzero((np.abs(windows - cut[:4]) < 1e-6).all(axis=1))
    assert cut.shape == (MAX_SAMPLES,) and len(starts) == 1 and starts[0] > 0      # a random crop ...
    assert np.allclose(cut, qlong[starts[0]:starts[0] + MAX_SAMPLES], atol=1e-6)   # ... of contiguous audio


def test_laion_embedder_and_transformers_folder_agree(laion_pt, tokenizer_dir, tmp_path):
    from tta.clap import backend_of, load_clap

    clap = LaionClapEmbedder.from_path(laion_pt, tokenizer_dir, config=tiny_config())
    assert clap.identity.startswith("laion-clap:") and clap.sample_rate == 48_000
    text = clap.embed_text(["a dog barks", ""])
    wav = chirp(200, 4000, 2.0, 16_000)
    audio = clap.embed_audio(wav, 16_000)
    assert text.shape == (2, PROJ) and audio.shape == (1, PROJ)
    assert torch.allclose(audio.norm(dim=-1), torch.ones(1), atol=1e-5)
    assert torch.equal(audio, clap.embed_audio(wav, 16_000))   # the crop seed makes it reproducible
    with pytest.raises(ValueError, match="shorter than one frame"):
        clap.embed_audio(np.zeros(100, np.float32), 16_000)
    folder = tmp_path / "hf"
    clap.model.save_pretrained(str(folder))
    clap.tokenizer.save_pretrained(str(folder))
    assert backend_of(folder) == "laion-hf" and backend_of(laion_pt) == "laion-pt"
    again = load_clap(folder)
    assert torch.allclose(again.embed_text(["a dog barks", ""]), text, atol=1e-5)
    assert torch.allclose(again.embed_audio(wav, 16_000), audio, atol=1e-5)
    with pytest.raises(ValueError, match="tokenizer"):
        load_clap(laion_pt)


def test_cli_score_with_a_laion_checkpoint(laion_pt, tokenizer_dir, tmp_path):
    from tta.audio import save_audio
    from tta.cli import main

    audio = tmp_path / "gen"
    for i, f in enumerate((300, 900)):
        save_audio(audio / f"{i}.wav", chirp(f, 2 * f, 1.0, 16_000), 16_000)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"file": f"{i}.wav", "prompt": p})
                                 for i, p in enumerate(["a whistle", "a higher whistle"])) + "\n")
    out = tmp_path / "s.json"
    # sizes are inferred from the weights here (text heads = hidden // 64)
    assert main(["-q", "clap", "score", "--clap", str(laion_pt), "--tokenizer", str(tokenizer_dir),
                 "--audio", str(audio), "--prompts", str(prompts), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["model"].startswith("laion-clap:") and res["num_items"] == 2
    # `tta eval` takes them as --clap and --tokenizer too (it had --clap-model and --clap-tokenizer alone,
    # which it still takes): both give the score `tta clap score` gave
    for flags in (["--clap", "--tokenizer"], ["--clap-model", "--clap-tokenizer"]):
        assert main(["-q", "eval", "--generated", str(audio), "--reference", str(audio), "--metrics", "clap",
                     "--prompts", str(prompts), flags[0], str(laion_pt), flags[1], str(tokenizer_dir),
                     "--out", str(tmp_path / flags[0]), "--cache-dir", str(tmp_path / "cache")]) == 0
        body = json.loads((tmp_path / flags[0] / "eval.json").read_text())
        assert body["metrics"]["clap_score"] == res["clap_score"]


def save_folder(folder, config, tokenizer_dir) -> None:
    """A transformers CLAP folder as the hub holds one: a ClapModel of `config` (at the global RNG's weights) and
    the test tokenizer, without a preprocessor_config.json."""
    from transformers import AutoTokenizer, ClapModel

    ClapModel(config).save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(str(folder))


def test_sharded_transformers_folders_get_their_own_identity(tmp_path, tokenizer_dir):
    """The identity names a CLAP in embedding caches and datastores: two different models saved in shards
    must not share one (it was "laion-clap:unknown" for every sharded folder)."""
    from transformers import AutoTokenizer, ClapModel

    from tta.clap import load_clap

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    identities = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        folder = tmp_path / f"sharded{seed}"
        ClapModel(tiny_config()).save_pretrained(str(folder), max_shard_size="100KB")
        tok.save_pretrained(str(folder))
        assert not (folder / "model.safetensors").exists() and list(folder.glob("model-*.safetensors"))
        identities.append(load_clap(folder).identity)
    assert identities[0] != identities[1] and "unknown" not in identities[0]


def test_a_laion_pt_identity_names_its_tokenizer(laion_pt, tokenizer_dir, tmp_path):
    """The identity keys embedding caches and datastores: the same .pt read with another tokenizer embeds
    captions otherwise, so it must not share one."""
    import shutil

    other = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, other)
    vocab = other / "vocab.txt"
    lines = vocab.read_text().splitlines()
    lines[2000], lines[2001] = lines[2001], lines[2000]      # another vocabulary of the same size
    vocab.write_text("\n".join(lines) + "\n")
    body = json.loads((other / "tokenizer.json").read_text())   # (the file the tokenizer is read from)
    ids = body["model"]["vocab"]
    ids[lines[2000]], ids[lines[2001]] = ids[lines[2001]], ids[lines[2000]]
    (other / "tokenizer.json").write_text(json.dumps(body))
    a = LaionClapEmbedder.from_path(laion_pt, tokenizer_dir, config=tiny_config())
    b = LaionClapEmbedder.from_path(laion_pt, other, config=tiny_config())
    caption = [f"a dog barks {lines[2000]}"]
    assert a.tokenizer(caption)["input_ids"] != b.tokenizer(caption)["input_ids"]
    assert not torch.equal(a.embed_text(caption), b.embed_text(caption))
    assert a.identity != b.identity
    assert a.identity == LaionClapEmbedder.from_path(laion_pt, tokenizer_dir, config=tiny_config()).identity


def test_a_laion_pt_identity_follows_its_tokenizers_content_and_its_old_datastores_still_load(
        laion_pt, tokenizer_dir, tmp_path, caplog):
    """A .pt's identity hashed its tokenizer's files, where a folder's '-tok' follows what the tokenizer makes of
    text: the .pt read with the original tokenizer folder and with its save_pretrained copy (other files, the same
    tokens) got two identities for one embedding, and two sets of caches. It follows the content too. A datastore
    built under the old identity still loads and answers queries: its stored embeddings are reproduced."""
    import hashlib
    import logging

    from transformers import AutoTokenizer

    from tests.clap_toy import make_corpus
    from tta.clap.laion import _file_hash, _tokenizer_hash
    from tta.retrieval.datastore import INFO_NAME, Datastore, build_datastore

    copy = tmp_path / "tok"
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(str(copy))
    assert _tokenizer_hash(copy) != _tokenizer_hash(tokenizer_dir)
    clap = LaionClapEmbedder.from_path(laion_pt, tokenizer_dir, config=tiny_config())
    assert LaionClapEmbedder.from_path(laion_pt, copy, config=tiny_config()).identity == clap.identity

    manifest = make_corpus(tmp_path / "corpus", per_kind_train=1, per_kind_valid=0)
    store = build_datastore(manifest, clap, tmp_path / "store", progress=False)
    old = "laion-clap:" + hashlib.sha256(f"{_file_hash(laion_pt)}:{_tokenizer_hash(tokenizer_dir)}".encode()
                                         ).hexdigest()[:16]     # the identity the old rule gave it
    assert old != clap.identity
    info = json.loads((store / INFO_NAME).read_text())
    (store / INFO_NAME).write_text(json.dumps({**info, "clap_identity": old}))
    with caplog.at_level(logging.INFO, logger="tta.retrieval.datastore"):
        hits = Datastore.load(store).query_text(clap, ["a dog barks"], 1)
    assert len(hits.ids[0]) == 1
    assert f"CLAP {clap.identity} reproduces the stored embeddings of CLAP {old}: same model" in caplog.text



def test_a_folders_identity_names_a_tokenizer_other_than_its_own(tmp_path, tokenizer_dir):
    """A transformers CLAP folder read with another tokenizer (two tokens swapped) embeds captions otherwise, yet
    kept the folder's identity: caches and datastores mixed the two. The folder's own tokenizer files, named or
    not, keep the weights-only identity."""
    import shutil

    from transformers import ClapModel

    from tta.clap import load_clap
    from tta.clap.laion import _file_hash, model_config_suffix

    torch.manual_seed(0)
    folder = tmp_path / "hf"
    save_folder(folder, tiny_config(), tokenizer_dir)
    other = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, other)
    (other / "tokenizer.json").unlink(missing_ok=True)      # the slow tokenizer reads vocab.txt
    vocab = other / "vocab.txt"
    lines = vocab.read_text().splitlines()
    lines[2000], lines[2001] = lines[2001], lines[2000]      # "to" and "was": another vocabulary of the same size
    vocab.write_text("\n".join(lines) + "\n")
    weights_only = "laion-clap:" + _file_hash(folder / "model.safetensors") + model_config_suffix(tiny_config())
    own, named, swapped = load_clap(folder), load_clap(folder, tokenizer=folder), load_clap(folder, tokenizer=other)
    assert own.identity == named.identity == weights_only
    assert swapped.identity.startswith(weights_only + "-tok") and swapped.identity != weights_only
    assert not torch.allclose(own.embed_text(["it was to"]), swapped.embed_text(["it was to"]), atol=1e-4)
    bare = tmp_path / "bare"                                   # no tokenizer files: each named one is its own
    ClapModel(tiny_config()).save_pretrained(str(bare))
    a, b = load_clap(bare, tokenizer=tokenizer_dir).identity, load_clap(bare, tokenizer=other).identity
    assert a != b and a == load_clap(bare, tokenizer=tokenizer_dir).identity


def test_a_folders_tokenizer_identity_follows_what_the_tokenizer_makes_of_text(tmp_path, tokenizer_dir):
    """The '-tok' part hashed the tokenizer's files: the original tokenizer folder and the save_pretrained copy of
    it in a CLAP folder (other files, the same tokens) made a folder read with the original '-tok55cc1d0c' though
    it embeds as the folder itself, and a folder without tokenizer files two identities for one embedding. The
    tokenizer's content decides: the same tokenizer, whatever its files, gives the same identity; one that pads on
    the other side (other caption embeddings in a batch) another."""
    import shutil

    from transformers import ClapModel

    from tta.clap import load_clap
    from tta.clap.laion import _file_hash, _tokenizer_hash, model_config_suffix

    torch.manual_seed(0)
    folder = tmp_path / "hf"
    save_folder(folder, tiny_config(), tokenizer_dir)
    assert _tokenizer_hash(folder) != _tokenizer_hash(tokenizer_dir)     # other files (vocab.txt, bytes)
    weights_only = "laion-clap:" + _file_hash(folder / "model.safetensors") + model_config_suffix(tiny_config())
    assert load_clap(folder, tokenizer=tokenizer_dir).identity == weights_only
    bare = tmp_path / "bare"                                   # no tokenizer files: the named one is in the identity
    ClapModel(tiny_config()).save_pretrained(str(bare))
    original, copy = load_clap(bare, tokenizer=tokenizer_dir), load_clap(bare, tokenizer=folder)
    assert original.identity == copy.identity and "-tok" in original.identity
    left = tmp_path / "left"
    left.mkdir()
    shutil.copy(folder / "tokenizer.json", left)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    (left / "tokenizer_config.json").write_text(json.dumps({**settings, "padding_side": "left"}))
    padded_left = load_clap(bare, tokenizer=left)
    captions = ["a dog", "a dog barks loudly at night"]
    assert not torch.allclose(padded_left.embed_text(captions), copy.embed_text(captions), atol=1e-3)
    assert padded_left.identity != copy.identity and "-tok" in padded_left.identity


def test_clap_weights_holding_nan_are_refused_naming_the_file_and_key(tmp_path, tokenizer_dir):
    """A LAION .pt, the CLAP inside an AudioLDM .ckpt or a transformers CLAP folder holding NaN loaded without a
    word: NaN text embeddings, NaN audio from every model conditioned on them, NaN CLAP scores."""
    from transformers import ClapModel

    from tta.clap import load_clap

    sd = laion_layout()
    tensors = sum(v.is_floating_point() for v in sd.values())
    sd["module.text_projection.2.bias"] = torch.full_like(sd["module.text_projection.2.bias"], float("nan"))
    torch.save({"epoch": 1, "state_dict": sd}, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError) as e:
        load_clap(tmp_path / "nan.pt", tokenizer=tokenizer_dir)
    assert str(e.value).startswith(f"{tmp_path / 'nan.pt'}: 1 of its {tensors} weight tensors hold NaN or inf "
                                   "values (first: module.text_projection.2.bias)"), e.value
    ckpt = {f"cond_stage_model.model.{k[len('module.'):]}": v for k, v in sd.items()}
    torch.save({"state_dict": ckpt}, tmp_path / "audioldm.ckpt")
    with pytest.raises(CheckpointError, match=r"audioldm.ckpt: 1 of its \d+ weight tensors hold NaN or inf values "
                                              r"\(first: cond_stage_model.model.text_projection.2.bias\)"):
        load_laion_checkpoint(tmp_path / "audioldm.ckpt")
    model = ClapModel(tiny_config())
    with torch.no_grad():
        model.text_projection.linear1.weight[0, 0] = float("inf")
    model.save_pretrained(str(tmp_path / "hf"))
    with pytest.raises(CheckpointError, match=r"hf/model.safetensors: 1 of its \d+ weight tensors hold NaN or inf "
                                              r"values \(first: text_projection.linear1.weight\)"):
        load_clap(tmp_path / "hf", tokenizer=tokenizer_dir)


@pytest.mark.parametrize("fusion", [False, True])
def test_a_folders_front_end_is_in_its_identity_unless_it_is_laions(tmp_path, tokenizer_dir, fusion):
    """The same weights read through another preprocessor_config.json (frequency_max 4000 instead of LAION's
    14000) embed audio otherwise, yet had the same identity: eval caches, embedding caches, datastores and
    reference statistics mixed them. A config equal to the official folders' front end (fields that change no
    embedding aside) keeps the weights-only identity that existing caches and datastores are keyed by."""
    import shutil

    from transformers import ClapFeatureExtractor

    from tta.clap import load_clap
    from tta.clap.laion import _file_hash, model_config_suffix

    config = tiny_config()
    config.audio_config.enable_fusion = fusion
    torch.manual_seed(0)
    base = tmp_path / "base"
    save_folder(base, config, tokenizer_dir)
    plain = load_clap(base).identity          # no preprocessor_config.json: LAION's front end
    assert plain == "laion-clap:" + _file_hash(base / "model.safetensors") + model_config_suffix(config)
    official = {"frequency_min": 50, "frequency_max": 14000, "padding": "repeatpad",
                "truncation": "fusion" if fusion else "rand_trunc"}
    wav = chirp(200, 4000, 2.0, 16_000)
    found = {}
    for name, change in (("official", {}), ("cosmetic", {"top_db": 80, "padding_value": 1.0,
                                                           "return_attention_mask": True}),
                         ("fmax", {"frequency_max": 4000}), ("fmin", {"frequency_min": 0}),
                         ("window", {"fft_window_size": 2048})):
        folder = tmp_path / name
        shutil.copytree(base, folder)
        ClapFeatureExtractor(**{**official, **change}).save_pretrained(str(folder))
        clap = load_clap(folder)
        found[name] = (clap.identity, clap.embed_audio(wav, 16_000))
    assert found["official"][0] == found["cosmetic"][0] == plain
    assert torch.equal(found["official"][1], found["cosmetic"][1])
    changed = [found[n][0] for n in ("fmax", "fmin", "window")]
    assert len(set(changed)) == 3 and all(i.startswith(plain + "-fe") for i in changed)
    assert not torch.allclose(found["fmax"][1], found["official"][1], atol=1e-4)
    again = tmp_path / "again"                  # the suffix is stable: a cache written once is found again
    shutil.copytree(tmp_path / "fmax", again)
    assert load_clap(again).identity == found["fmax"][0]


def test_a_clap_saved_into_a_pipeline_folder_embeds_as_the_folder_it_came_from(tmp_path, tokenizer_dir):
    """save_text_encoder (a pipeline's text_encoder/) wrote the weights and the tokenizer but not the folder's
    preprocessor_config.json, which the loader reads: the saved copy heard audio through LAION's default front
    end, not the folder's (frequency_max 4000 here), and embedded it otherwise under another identity."""
    from transformers import ClapFeatureExtractor

    from tta.clap import load_clap
    from tta.ldm.folder import save_text_encoder

    torch.manual_seed(0)
    source = tmp_path / "source"
    save_folder(source, tiny_config(), tokenizer_dir)
    ClapFeatureExtractor(frequency_min=50, frequency_max=4000, truncation="rand_trunc",
                         padding="repeatpad").save_pretrained(str(source))
    original = load_clap(source)
    save_text_encoder(original, tmp_path / "pipeline" / "text_encoder")
    copy = load_clap(tmp_path / "pipeline" / "text_encoder")
    wav = chirp(200, 4000, 2.0, 16_000)
    assert copy.identity == original.identity and "-fe" in original.identity
    assert torch.equal(copy.embed_audio(wav, 16_000), original.embed_audio(wav, 16_000))
    assert torch.equal(copy.embed_text(["a dog barks", ""]), original.embed_text(["a dog barks", ""]))


def test_the_official_config_values_are_transformers_defaults():
    """MODEL_CONFIG holds the official laion folders' values of the fields that change embeddings without changing
    shapes; transformers' conversion script leaves them at its ClapTextConfig / ClapAudioConfig defaults."""
    from transformers import ClapAudioConfig, ClapConfig, ClapTextConfig

    from tta.clap.laion import MODEL_CONFIG, model_config_suffix

    for part, cls in (("text_config", ClapTextConfig), ("audio_config", ClapAudioConfig)):
        defaults = cls()
        for name, value in MODEL_CONFIG[part].items():
            have = getattr(defaults, name)
            assert (tuple(have) if name == "patch_stride" else have) == value, (part, name)
    assert model_config_suffix(ClapConfig()) == ""


def test_the_identity_of_each_kind_of_clap_stays_what_caches_are_keyed_by(laion_pt, tokenizer_dir, tmp_path):
    """Embedding caches, datastores, latent caches and recorded results are keyed by a CLAP's identity: a change to
    how it is made must not move it for a model that embeds as before. One of each kind: the shipped tta CLAP (in
    bench/results.jsonl), a .pt with its tokenizer (with and without the config its weights give), a transformers
    folder (weights only, another tokenizer "-tok", an edited config "-cfg", another front end "-fe", the last
    loaded text_only too) and the text_encoder/ tta writes from a .pt."""
    import hashlib
    import shutil
    from pathlib import Path

    from transformers import ClapFeatureExtractor

    from tta.clap import load_clap
    from tta.clap.laion import _file_hash, _tokenizer_content_hash, infer_clap_config
    from tta.ldm.folder import save_text_encoder

    shipped = Path(__file__).resolve().parents[1] / "tta" / "assets" / "default" / "text_encoder"
    assert load_clap(shipped).identity == "tta-clap:aefee460f12a694b"

    tok = load_roberta_tokenizer(tokenizer_dir)
    pt = "laion-clap:" + hashlib.sha256(f"{_file_hash(laion_pt)}:{_tokenizer_content_hash(tok, tokenizer_dir)}"
                                        .encode()).hexdigest()[:16]
    assert load_clap(laion_pt, tokenizer=tokenizer_dir).identity == pt
    inferred = infer_clap_config(convert_laion_state_dict(torch.load(laion_pt)["state_dict"])[0])
    assert LaionClapEmbedder.from_path(laion_pt, tokenizer_dir, config=inferred).identity == pt

    torch.manual_seed(0)
    base = tmp_path / "base"
    save_folder(base, conversion_config(tiny_config(), vocab_size=VOCAB, hidden_size=48), tokenizer_dir)
    weights = "laion-clap:" + _file_hash(base / "model.safetensors")
    assert load_clap(base).identity == weights
    other = tmp_path / "tok"                                   # two tokens swapped
    shutil.copytree(tokenizer_dir, other)
    (other / "tokenizer.json").unlink(missing_ok=True)
    lines = (other / "vocab.txt").read_text().splitlines()
    lines[2000], lines[2001] = lines[2001], lines[2000]
    (other / "vocab.txt").write_text("\n".join(lines) + "\n")
    swapped = load_roberta_tokenizer(other)
    assert load_clap(base, tokenizer=other).identity == weights + "-tok" + _tokenizer_content_hash(swapped, other)[:8]
    act = tmp_path / "act"
    shutil.copytree(base, act)
    body = json.loads((act / "config.json").read_text())
    body["audio_config"]["hidden_act"] = "relu"
    (act / "config.json").write_text(json.dumps(body))
    assert load_clap(act).identity == weights + "-cfg3c1dae83"
    fmax = tmp_path / "fmax"
    shutil.copytree(base, fmax)
    ClapFeatureExtractor(frequency_min=50, frequency_max=4000, truncation="rand_trunc",
                         padding="repeatpad").save_pretrained(str(fmax))
    assert load_clap(fmax).identity == load_clap(fmax, text_only=True).identity == weights + "-fea4a872e8"

    written = tmp_path / "text_encoder"
    save_text_encoder(LaionClapEmbedder.from_path(laion_pt, tokenizer_dir), written)
    assert load_clap(written).identity == "laion-clap:" + _file_hash(written / "model.safetensors")


def test_a_folders_config_that_embeds_otherwise_is_in_its_identity(tmp_path, tokenizer_dir):
    """The same weights under a config.json with another text LayerNorm epsilon (RoBERTa's 1e-5, not the official
    folders' 1e-12), audio activation or patch stride embed otherwise, yet had the same identity: embedding
    caches, datastores and reference statistics mixed them. Official values (shape fields aside) keep the
    weights-only identity, and fields no embedding depends on change nothing."""
    import shutil

    from tta.clap import load_clap
    from tta.clap.laion import _file_hash

    tiny = tiny_config()      # sizes as small as tiny_config, the rest as transformers' conversion leaves it
    config = conversion_config(tiny, vocab_size=VOCAB, hidden_size=48)
    torch.manual_seed(0)
    base = tmp_path / "base"
    save_folder(base, config, tokenizer_dir)
    official = load_clap(base)
    assert official.identity == "laion-clap:" + _file_hash(base / "model.safetensors")
    wav, text = chirp(200, 4000, 2.0, 16_000), ["a dog barks loudly"]

    def edited(name, part, **change):
        folder = tmp_path / name
        shutil.copytree(base, folder)
        body = json.loads((folder / "config.json").read_text())
        (body[part] if part else body).update(change)
        (folder / "config.json").write_text(json.dumps(body))
        clap = load_clap(folder)
        return clap.identity, clap.embed_audio(wav, 16_000), clap.embed_text(text)

    cosmetic = edited("cosmetic", None, logit_scale_init_value=5.0)
    assert cosmetic[0] == official.identity
    assert torch.equal(cosmetic[1], official.embed_audio(wav, 16_000))
    assert torch.equal(edited("ids", "text_config", bos_token_id=5)[2], official.embed_text(text))
    eps = edited("eps", "text_config", layer_norm_eps=1e-5)
    act = edited("act", "audio_config", hidden_act="relu")
    stride = edited("stride", "audio_config", patch_stride=[2, 2])
    assert not torch.allclose(eps[2], official.embed_text(text), atol=1e-5)
    assert not torch.allclose(act[1], official.embed_audio(wav, 16_000), atol=1e-5)
    assert not torch.allclose(stride[1], official.embed_audio(wav, 16_000), atol=1e-5)
    changed = [eps[0], act[0], stride[0]]
    assert len(set(changed)) == 3 and all(i.startswith(official.identity + "-cfg") for i in changed)
    assert edited("again", "text_config", layer_norm_eps=1e-5)[0] == eps[0]     # stable: a cache is found again


def test_a_folder_tta_wrote_from_a_laion_pt_keeps_its_weights_only_identity(laion_pt, tokenizer_dir, tmp_path):
    """A .pt's config is inferred with LAION's text LayerNorm epsilon (1e-5) and 64-wide text heads, not the official
    folders' values: every folder tta wrote from a .pt or .ckpt (tta import, a pipeline's text_encoder/) got "-cfg"
    in its identity, and its latent caches, datastores and embedding caches were made again. Those values count as
    known; an edit of such a folder still changes the identity."""
    import shutil

    from tta.clap import load_clap
    from tta.clap.laion import _file_hash
    from tta.ldm.folder import save_text_encoder

    written = tmp_path / "text_encoder"
    save_text_encoder(LaionClapEmbedder.from_path(laion_pt, tokenizer_dir), written)
    body = json.loads((written / "config.json").read_text())
    assert body["text_config"]["layer_norm_eps"] == 1e-5 and body["text_config"]["num_attention_heads"] == 1
    assert load_clap(written).identity == "laion-clap:" + _file_hash(written / "model.safetensors")
    identities = []
    for name, change in (("eps", {"layer_norm_eps": 1e-6}), ("official-eps", {"layer_norm_eps": 1e-12}),
                         ("heads", {"num_attention_heads": 2}), ("act", {"hidden_act": "relu"})):
        folder = tmp_path / name
        shutil.copytree(written, folder)
        edited = json.loads((folder / "config.json").read_text())
        edited["text_config"].update(change)
        (folder / "config.json").write_text(json.dumps(edited))
        identities.append(load_clap(folder).identity)
    weights_only = "laion-clap:" + _file_hash(written / "model.safetensors")
    assert len(set(identities)) == 4 and all(i.startswith(weights_only + "-cfg") for i in identities)


def test_a_roberta_width_folder_edited_to_laions_text_epsilon_has_its_own_identity(tmp_path, tokenizer_dir):
    """At roberta-base's width (768, 12 heads: every official folder's) the values infer_clap_config writes for a
    .pt are the official ones but for the text LayerNorm epsilon (1e-5), so an official folder whose only edit is
    that epsilon counted as one tta wrote and kept the official identity, though its caption embeddings moved. It
    gets "-cfg"; the official folder keeps the weights-only identity, and so does the text_encoder/ of a pipeline
    tta writes from a .pt of that width (where tta writes such folders), read through a link too."""
    import dataclasses
    import shutil

    from transformers import BertTokenizer, ClapModel

    from tests.test_ldm_fixtures import tiny_model_config, tiny_run_config
    from tta.clap import load_clap
    from tta.clap.laion import _file_hash, infer_clap_config
    from tta.ldm.model import LDMUNet
    from tta.pipeline import PipelineDefaults, TTAPipeline
    from vae.model import MelVAE, VAEConfig
    from vocoder.model import HiFiGAN, HiFiGANConfig

    small = tmp_path / "tok"            # 1000 tokens: a 768-wide text tower stays small
    small.mkdir()
    (small / "vocab.txt").write_text("\n".join((tokenizer_dir / "vocab.txt").read_text().splitlines()[:1000]) + "\n")
    tok = BertTokenizer(str(small / "vocab.txt"))
    tiny = tiny_config()
    config = conversion_config(tiny, vocab_size=1000, hidden_size=768)
    torch.manual_seed(0)
    official = tmp_path / "official"
    model = ClapModel(config)
    model.save_pretrained(str(official))
    tok.save_pretrained(str(official))
    base = load_clap(official)
    assert base.identity == "laion-clap:" + _file_hash(official / "model.safetensors")
    edited = tmp_path / "eps"
    shutil.copytree(official, edited)
    body = json.loads((edited / "config.json").read_text())
    body["text_config"]["layer_norm_eps"] = 1e-5
    (edited / "config.json").write_text(json.dumps(body))
    eps = load_clap(edited)
    text = ["a dog barks loudly"]
    assert not torch.allclose(eps.embed_text(text), base.embed_text(text), atol=1e-5)
    assert eps.identity.startswith(base.identity + "-cfg")

    inferred = infer_clap_config(model.state_dict())          # as a .pt of these weights loads
    assert inferred.text_config.layer_norm_eps == 1e-5 and inferred.text_config.num_attention_heads == 12
    from_pt = ClapModel(inferred).eval()
    from_pt.load_state_dict(model.state_dict())
    clap = LaionClapEmbedder(from_pt, tok, identity="laion-clap:pt", config_source=str(tmp_path / "x.pt"))
    vocoder = HiFiGAN(dataclasses.replace(tiny_model_config(HiFiGANConfig, "vocoder"), weight_norm=False)).eval()
    unet = LDMUNet(dataclasses.replace(tiny_run_config().model, class_embed_dim=PROJ)).eval()
    pipe = TTAPipeline(unet, MelVAE(tiny_model_config(VAEConfig, "vae")).eval(), vocoder, clap,
                       tiny_run_config().diffusion.scheduler_config(), PipelineDefaults(steps=2))
    written = pipe.save_pretrained(tmp_path / "pipeline") / "text_encoder"
    assert json.loads((written / "config.json").read_text())["text_config"]["layer_norm_eps"] == 1e-5
    assert load_clap(written).identity == "laion-clap:" + _file_hash(written / "model.safetensors")
    assert TTAPipeline.from_pretrained(tmp_path / "pipeline").clap.identity == load_clap(written).identity

    # a link to the text_encoder/ is that folder (its path as given has no pipeline.json beside it: it got -cfg),
    # as is the text_encoder/ of a pipeline that links it; a copy taken out of its pipeline gets "-cfg"
    ours = load_clap(written).identity
    (tmp_path / "link").symlink_to(written.resolve(), target_is_directory=True)
    assert load_clap(tmp_path / "link").identity == ours
    shutil.copytree(written, tmp_path / "copy")
    assert load_clap(tmp_path / "copy").identity.startswith(ours + "-cfg")
    shutil.copytree(tmp_path / "pipeline", tmp_path / "linked")
    shutil.rmtree(tmp_path / "linked" / "text_encoder")
    (tmp_path / "linked" / "text_encoder").symlink_to((tmp_path / "copy").resolve(), target_is_directory=True)
    assert load_clap(tmp_path / "linked" / "text_encoder").identity == ours


def test_a_folder_whose_weights_do_not_fit_its_config_is_refused(tmp_path, tokenizer_dir):
    """A config.json building a model its weights do not fit loaded with only transformers' logged report: fusion
    switched on over unfused weights left the fusion layers at random, the patch LayerNorm or the qkv biases
    switched off dropped their weights, and the folder embedded otherwise under the same identity. It is refused,
    naming the folder, the count and the first keys (a weight shaped otherwise: its shapes in both; transformers
    stopped pointing to its report). Deterministic buffers and logit scales that another transformers version did
    not save are no misfit: such a folder loads and embeds as the full one."""
    import shutil

    from safetensors.torch import load_file, save_file

    from tta.clap import load_clap

    torch.manual_seed(0)
    base = tmp_path / "base"
    save_folder(base, tiny_config(), tokenizer_dir)
    full = load_clap(base)

    def edited(name, part, **change):
        folder = tmp_path / name
        shutil.copytree(base, folder)
        body = json.loads((folder / "config.json").read_text())
        body[part].update(change)
        (folder / "config.json").write_text(json.dumps(body))
        return folder

    enc = "audio_model.audio_encoder."
    refused = [(edited("fusion", "audio_config", enable_fusion=True),
                rf"\d+ model weights missing from the folder \(first: {enc}patch_embed\.fusion_model\."),
               (edited("norm", "audio_config", enable_patch_layer_norm=False),
                rf"2 weights the model does not use \(first: {enc}patch_embed\.norm\.bias, {enc}patch_embed"),
               (edited("qkv", "audio_config", qkv_bias=False),
                rf"15 weights the model does not use \(first: {enc}layers\.0\.blocks\.0\.attention\.self\."),
               # transformers stopped with only "For details look at the above report!", a report hidden unless -v
               (edited("mlp", "audio_config", mlp_ratio=2.0),
                rf"\d+ weights shaped otherwise than the model's \(first: {enc}layers\.0\.blocks\.0\.intermediate"
                rf"\.dense\.bias, \[{EMBED * 4}\] in the folder, \[{EMBED * 2}\] in the model\)")]
    one = tmp_path / "one"              # one weight missing: counted as one (it said "1 model weights")
    shutil.copytree(base, one)
    weights = load_file(one / "model.safetensors")
    del weights["text_projection.linear1.bias"]
    save_file(weights, one / "model.safetensors", metadata={"format": "pt"})
    refused.append((one, r"1 model weight missing from the folder \(first: text_projection\.linear1\.bias\)"))
    for folder, message in refused:
        with pytest.raises(CheckpointError, match=f"^{folder}: its weights do not fit the CLAP model its "
                                                  f"config.json describes: {message}.* \\(check config.json"):
            load_clap(folder)
    older = tmp_path / "older"          # saved without the rebuilt buffers and the logit scales
    shutil.copytree(base, older)
    weights = load_file(older / "model.safetensors")
    dropped = [k for k in weights if k.endswith(("position_ids", "token_type_ids", "relative_position_index"))
               or k.startswith("logit_scale")]
    assert len(dropped) > 4
    save_file({k: v for k, v in weights.items() if k not in dropped}, older / "model.safetensors",
              metadata={"format": "pt"})
    wav, text = chirp(200, 4000, 2.0, 16_000), ["a dog barks loudly"]
    clap = load_clap(older)
    rebuilt, saved = clap.model.state_dict(), full.model.state_dict()
    assert rebuilt.keys() == saved.keys() and all(torch.equal(rebuilt[k], saved[k]) for k in saved)
    # (equal weights; the kernels may round otherwise on tensors laid out otherwise in memory)
    assert torch.allclose(clap.embed_audio(wav, 16_000), full.embed_audio(wav, 16_000), atol=1e-6)
    assert torch.allclose(clap.embed_text(text), full.embed_text(text), atol=1e-6)


def test_a_folder_whose_audio_tower_cannot_embed_is_refused_naming_its_config(tmp_path, tokenizer_dir, caplog):
    """A config.json whose weights fit but whose audio tower cannot embed at all (flatten_patch_embeds false, a
    patch stride the mels do not fit) loads, and its first audio embedding failed with transformers' bare reason
    ("Given normalized_shape=[8], expected input ..."), naming neither the folder nor its config; a datastore
    skipped every row of such a config as a clip the CLAP refused. Both are one error naming the config.json,
    with transformers' reason; the text tower embeds as before. (A spec size the mels do not fit is refused at
    load: the next test.)"""
    import shutil

    from tests.clap_toy import make_corpus
    from tta.clap import load_clap
    from tta.retrieval.datastore import build_datastore

    torch.manual_seed(0)
    base = tmp_path / "base"
    save_folder(base, tiny_config(), tokenizer_dir)
    text = ["a dog barks loudly"]
    expected = load_clap(base).embed_text(text)
    manifest = make_corpus(tmp_path / "corpus", per_kind_train=1, per_kind_valid=0)
    for name, change, reason in (("flat", {"flatten_patch_embeds": False}, r"Given normalized_shape=\[8\]"),
                                 ("stride", {"patch_stride": [3, 3]}, "shape .* is invalid for input")):
        folder = tmp_path / name
        shutil.copytree(base, folder)
        body = json.loads((folder / "config.json").read_text())
        body["audio_config"].update(change)
        (folder / "config.json").write_text(json.dumps(body))
        clap = load_clap(folder)
        assert torch.allclose(clap.embed_text(text), expected, atol=1e-6)
        message = (f"^{folder / 'config.json'}: the CLAP audio tower its audio_config builds cannot embed audio "
                   rf"\(transformers: {reason}.*\); check audio_config against the config the weights were saved")
        with pytest.raises(CheckpointError, match=message):
            clap.embed_audio(chirp(200, 4000, 2.0, 16_000), 16_000)
        caplog.clear()
        with pytest.raises(CheckpointError, match=message):
            build_datastore(manifest, clap, tmp_path / f"store-{name}", progress=False)
        assert not (tmp_path / f"store-{name}").exists()
        assert not [r for r in caplog.records if "skipping" in r.getMessage()]


def test_an_audio_config_laions_mels_do_not_fit_is_refused_when_the_folder_loads(tmp_path, tokenizer_dir):
    """A folder without a preprocessor_config.json is read through LAION's front end (64-bin mels, 1001 frames),
    yet its audio_config was not checked against it: a spec size of 128 (256 frames) loaded and was refused only
    at the first audio, after any text-side work ('the wav size should be less than or equal to the swin input
    size'); one under the mel-bin count failed there with a bare ZeroDivisionError, and weights made for 32-bin
    mels with 'running_mean should contain 64 elements not 32'. Each is refused when the folder loads, as the
    first audio refused it, naming the config.json and the field; the 32-bin weights load and embed once their
    folder has the preprocessor_config.json they need."""
    import shutil

    from transformers import ClapFeatureExtractor

    from tta.clap import load_clap

    torch.manual_seed(0)
    base = tmp_path / "base"
    save_folder(base, tiny_config(), tokenizer_dir)
    narrow = tiny_config()
    narrow.audio_config.num_mel_bins = 32      # weights made for 32-bin mels: they fit this config
    save_folder(tmp_path / "mel32", narrow, tokenizer_dir)
    refused = [(tmp_path / "mel32", r"audio_config.num_mel_bins is 32; without a preprocessor_config.json, LAION's "
                                    r"front end makes 64-bin mels\); give the folder the preprocessor_config.json "
                                    r"its weights were trained with \(feature_size 32\)$")]
    for name, spec, reason in (("spec128", 128, r"audio_config.spec_size 128 takes at most 256 mel frames; without a "
                                                r"preprocessor_config.json, LAION's front end makes 1001, of 10 s at "
                                                r"hop 480"),
                               ("spec32", 32, r"audio_config.spec_size 32 is under its num_mel_bins 64: HTSAT folds "
                                              r"the frames into spec_size // num_mel_bins strips, here none")):
        folder = tmp_path / name
        shutil.copytree(base, folder)
        body = json.loads((folder / "config.json").read_text())
        body["audio_config"]["spec_size"] = spec
        (folder / "config.json").write_text(json.dumps(body))
        refused.append((folder, reason + r"\); check audio_config against the config the weights were saved with, "
                                         r"in particular spec_size$"))
    for folder, message in refused:
        with pytest.raises(CheckpointError, match=f"^{folder / 'config.json'}: the CLAP audio tower its "
                                                  rf"audio_config builds cannot embed audio \({message}"):
            load_clap(folder)
    ClapFeatureExtractor(feature_size=32, frequency_min=50, truncation="rand_trunc").save_pretrained(
        str(tmp_path / "mel32"))
    assert load_clap(tmp_path / "mel32").embed_audio(chirp(200, 4000, 2.0, 16_000), 16_000).shape == (1, PROJ)


def test_a_clap_whose_audio_tower_cannot_take_its_front_end_loads_text_only(tmp_path, tokenizer_dir, laion_pt):
    """Refusing such a folder at load (the test above) also refused its text-only use, which embedded captions as
    any other until then (AudioLDM's conditioning). Loaded `text_only`, its text tower embeds as the unedited
    folder's, and its first audio (a clip, a datastore build) is refused with the words of the refusal at load;
    a pipeline, which scores every output by its audio, refuses it before generating. A .pt read with a config=
    of that spec size and a model handed to LaionClapEmbedder itself (no config file) get the same check, which
    ran for a folder only: they loaded, and only their first audio was refused (with transformers' reason)."""
    import dataclasses
    import shutil

    from transformers import AutoTokenizer, ClapModel

    from tests.clap_toy import make_corpus
    from tests.test_ldm_fixtures import tiny_model_config, tiny_run_config
    from tta.clap import load_clap
    from tta.ldm.model import LDMUNet
    from tta.pipeline import PipelineDefaults, PipelineError, TTAPipeline
    from tta.retrieval.datastore import build_datastore
    from vae.model import MelVAE, VAEConfig
    from vocoder.model import HiFiGAN, HiFiGANConfig

    torch.manual_seed(0)
    base = tmp_path / "base"
    save_folder(base, tiny_config(), tokenizer_dir)
    folder = tmp_path / "spec128"
    shutil.copytree(base, folder)
    body = json.loads((folder / "config.json").read_text())
    body["audio_config"]["spec_size"] = 128
    (folder / "config.json").write_text(json.dumps(body))
    text, wav = ["a dog barks loudly"], chirp(200, 4000, 2.0, 16_000)
    laions = r"\(audio_config.spec_size 128 takes at most 256 mel frames; (without a preprocessor_config.json, )?" \
             r"LAION's front end makes 1001, of 10 s at hop 480\); "
    message = f"^{folder / 'config.json'}: the CLAP audio tower its audio_config builds cannot embed audio {laions}"
    with pytest.raises(CheckpointError, match=message):
        load_clap(folder)
    clap = load_clap(folder, text_only=True)
    assert torch.allclose(clap.embed_text(text), load_clap(base).embed_text(text), atol=1e-6)
    with pytest.raises(CheckpointError, match=message):
        clap.embed_audio(wav, 16_000)
    manifest = make_corpus(tmp_path / "corpus", per_kind_train=1, per_kind_valid=0)
    with pytest.raises(CheckpointError, match=message):
        build_datastore(manifest, clap, tmp_path / "store", progress=False)
    assert not (tmp_path / "store").exists()
    vae = MelVAE(tiny_model_config(VAEConfig, "vae")).eval()
    vocoder = HiFiGAN(tiny_model_config(HiFiGANConfig, "vocoder")).eval()
    unet = LDMUNet(dataclasses.replace(tiny_run_config().model, class_embed_dim=PROJ)).eval()
    with pytest.raises(PipelineError, match="text_encoder/ cannot embed audio, and the pipeline scores every output "
                                            f"by its audio embedding: {folder / 'config.json'}: "):
        TTAPipeline(unet, vae, vocoder, clap, tiny_run_config().diffusion.scheduler_config(), PipelineDefaults())

    config = tiny_config()
    config.audio_config.spec_size = 128
    with pytest.raises(CheckpointError, match=f"^{laion_pt}: the CLAP audio tower built for it cannot embed audio "
                                              f"{laions}its config is the one passed as config="):
        LaionClapEmbedder.from_path(laion_pt, tokenizer_dir, config=config)
    pt = LaionClapEmbedder.from_path(laion_pt, tokenizer_dir, config=config, text_only=True)
    assert pt.embed_text(text).shape == (1, PROJ)
    model = ClapModel(config)
    with pytest.raises(CheckpointError, match=f"^this CLAP's config: the CLAP audio tower its audio_config builds "
                                              f"cannot embed audio {laions}check audio_config"):
        LaionClapEmbedder(model, AutoTokenizer.from_pretrained(str(tokenizer_dir)), identity="laion-clap:x")


def test_a_text_only_clap_refuses_audio_its_cache_holds(tmp_path, laion_pt, tokenizer_dir):
    """embed_audio answered cache hits before the audio batch checked `audio_refusal`: a text_only CLAP whose
    cache held a clip under its identity (a shared cache, written by hand or by an older tta) returned that
    embedding, and refused only the clips not cached."""
    wav = chirp(200, 4000, 2.0, 16_000)
    config = tiny_config()
    config.audio_config.spec_size = 128
    clap = LaionClapEmbedder.from_path(laion_pt, tokenizer_dir, config=config, text_only=True,
                                       cache_dir=tmp_path / "cache")
    key = audio_key(clap.identity, wav, 16_000)
    clap.cache.put(key, np.full(PROJ, 0.25, dtype=np.float32))
    assert clap.cache.get(key) is not None
    with pytest.raises(CheckpointError, match=rf"^{laion_pt}: the CLAP audio tower built for it cannot embed audio "
                                              r"\(audio_config.spec_size 128 takes at most 256 mel frames"):
        clap.embed_audio(wav, 16_000)


def test_a_pt_whose_weights_take_other_mels_says_what_can_still_be_done(tmp_path, tokenizer_dir):
    """A .pt is read through LAION's 64-bin front end. One whose weights take 32-bin mels was refused at load
    with 'pass the feature_extractor its weights were trained with', which neither load_clap nor any flag can
    do. The refusal says where the 32 comes from (its weights) and what is left: its captions, loaded
    text_only, or a 32-bin front end through LaionClapEmbedder.from_path; both work."""
    from transformers import ClapFeatureExtractor

    from tta.clap import load_clap

    state = laion_layout()
    for key in [k for k in state if ".bn0." in k and not k.endswith("num_batches_tracked")]:
        state[key] = state[key][:32].clone()          # the batch norm over the mel bins: 32-bin weights
    path = tmp_path / "mel32.pt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match=rf"^{path}: the CLAP audio tower built for it cannot embed audio here "
                                              r"\(its weights take 32-bin mels, audio_config.num_mel_bins as read off "
                                              r"its weights; LAION's front end, which tta reads a .pt through, makes "
                                              r"64-bin mels\); from Python it can still be loaded for its captions "
                                              r"alone \(load_clap\(..., text_only=True\)\), or with a 32-bin front "
                                              r"end \(LaionClapEmbedder.from_path\(..., feature_extractor=...\)\)$"):
        load_clap(path, tokenizer=tokenizer_dir)
    assert load_clap(path, tokenizer=tokenizer_dir, text_only=True).embed_text(["a dog barks"]).shape == (1, PROJ)
    narrow = ClapFeatureExtractor(feature_size=32, frequency_min=50, truncation="rand_trunc")
    clap = LaionClapEmbedder.from_path(path, tokenizer_dir, feature_extractor=narrow)
    assert clap.embed_audio(chirp(200, 4000, 2.0, 16_000), 16_000).shape == (1, PROJ)


def test_a_first_audio_batchs_dtype_failure_is_raised_as_it_is_and_a_pts_names_its_config(laion_pt, tokenizer_dir):
    """Every failure of the first audio batch but a CUDA out-of-memory was reported as a config.json that cannot
    embed: a dtype mismatch too, and for a .pt the message said to check audio_config, which a .pt has none of.
    Only a failure worded about shapes or sizes is the config's; a .pt's message names the config it was built
    with."""
    wav = chirp(200, 4000, 2.0, 16_000)
    clap = LaionClapEmbedder.from_path(laion_pt, tokenizer_dir)
    clap.model.double()       # float32 mels into a float64 tower
    with pytest.raises(RuntimeError, match="dtype") as info:
        clap.embed_audio(wav, 16_000)
    assert not isinstance(info.value, CheckpointError)

    config = tiny_config()
    config.audio_config.patch_stride = [3, 3]
    clap = LaionClapEmbedder.from_path(laion_pt, tokenizer_dir, config=config)
    with pytest.raises(CheckpointError, match=f"^{laion_pt}: the CLAP audio tower built for it cannot embed audio "
                                              r"\(transformers: shape .* is invalid .*\); its config is the one "
                                              r"passed as config= .* check the config passed, e\.g\. "):
        clap.embed_audio(wav, 16_000)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status, limits RLIMIT_AS")
def test_running_out_of_memory_on_the_first_audio_batch_is_raised_as_it_is(laion_pt, tokenizer_dir):
    """On CPU an allocation failure is a plain RuntimeError ("DefaultCPUAllocator: can't allocate memory"), and on
    the first audio batch it was reported as a config.json whose audio tower cannot embed."""
    import resource

    clap = LaionClapEmbedder.from_path(laion_pt, tokenizer_dir)
    frames = clap.features.nb_max_samples // clap.features.hop_length + 1
    # as the extractor makes them, (B, 1, 1001, 64): 64 MiB, so that the tower's first tensor of that size is
    # over malloc's largest mmap threshold (32 MiB) and is mapped afresh, past the limit, whatever the heap holds
    mels = torch.zeros(256, 1, frames, MELS)
    used = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (used + (16 << 20), hard))
    try:
        with pytest.raises(RuntimeError, match="allocate") as info:
            clap._audio_features(mels, torch.zeros(256, 1, dtype=torch.bool))
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert not isinstance(info.value, CheckpointError)
    assert clap.embed_audio(chirp(200, 4000, 2.0, 16_000), 16_000).shape == (1, PROJ)   # embeds once memory is there


def test_an_extractor_given_with_a_laion_pt_is_in_its_identity(laion_pt, tokenizer_dir):
    """A LAION .pt has no preprocessor config (LAION's fixed front end); an extractor passed in through the
    Python API reads it otherwise and gets its own identity."""
    from transformers import ClapFeatureExtractor

    plain = LaionClapEmbedder.from_path(laion_pt, tokenizer_dir, config=tiny_config())
    laions = LaionClapEmbedder.from_path(laion_pt, tokenizer_dir, config=tiny_config(), feature_extractor=
                                         ClapFeatureExtractor(frequency_min=50, truncation="rand_trunc"))
    other = LaionClapEmbedder.from_path(laion_pt, tokenizer_dir, config=tiny_config(), feature_extractor=
                                        ClapFeatureExtractor(frequency_min=50, frequency_max=8000,
                                                             truncation="rand_trunc"))
    assert laions.identity == plain.identity and other.identity.startswith(plain.identity + "-fe")


def test_a_config_given_with_a_laion_pt_that_embeds_otherwise_is_in_its_identity(laion_pt, tokenizer_dir):
    """A .pt read with a config= kept the identity of its weights and tokenizer whatever the config: another text
    activation moved its caption embeddings by 4e-4 under the same identity, and an embedding cache made with one
    config was reused by the other. A config that embeds as the one read off the weights keeps that identity, and
    fields no embedding depends on change nothing; one that embeds otherwise gets "-cfg", the same each time."""
    from tta.clap.laion import infer_clap_config

    def config(part=None, **change):
        made = infer_clap_config(convert_laion_state_dict(torch.load(laion_pt)["state_dict"])[0])
        for name, value in change.items():
            setattr(getattr(made, part) if part else made, name, value)
        return made

    text = ["a dog barks loudly"]
    plain = LaionClapEmbedder.from_path(laion_pt, tokenizer_dir)
    cosmetic = LaionClapEmbedder.from_path(laion_pt, tokenizer_dir, config=config(logit_scale_init_value=5.0))
    assert cosmetic.identity == plain.identity
    assert torch.equal(cosmetic.embed_text(text), plain.embed_text(text))
    relu = LaionClapEmbedder.from_path(laion_pt, tokenizer_dir, config=config("text_config", hidden_act="relu"))
    assert not torch.allclose(relu.embed_text(text), plain.embed_text(text), atol=1e-4)
    heads = LaionClapEmbedder.from_path(laion_pt, tokenizer_dir, config=config("text_config", num_attention_heads=2))
    stride = LaionClapEmbedder.from_path(laion_pt, tokenizer_dir, config=config("audio_config", patch_stride=2),
                                         text_only=True)
    changed = [relu.identity, heads.identity, stride.identity,
               LaionClapEmbedder.from_path(laion_pt, tokenizer_dir, config=tiny_config()).identity]
    assert len(set(changed)) == 4 and all(i.startswith(plain.identity + "-cfg") for i in changed)
    again = LaionClapEmbedder.from_path(laion_pt, tokenizer_dir, config=config("text_config", hidden_act="relu"))
    assert again.identity == relu.identity          # stable: a cache written once is found again


@pytest.mark.parametrize("fusion", [False, True])
def test_a_preprocessor_config_the_model_cannot_take_is_refused_at_load(tmp_path, tokenizer_dir, fusion):
    """Such configs failed only at the first embedding, deep in transformers ('expected input[1, 4, 256,
    256] to have 1 channels', 'the wav size should be less than or equal to the swin input size', a
    sample-rate mismatch), or, with a window under 10 s and no fusion, cropped tta's 10 s clips with numpy's
    unseeded generator: each call another embedding, and a cache kept the first. They are refused when the
    folder loads, naming the file and the field (loaded text_only, its audio is refused with the same error);
    settings the model takes still load and embed the same each call. One transformers cannot build an
    extractor from was refused even text_only, though captions need no front end: loaded text_only, it embeds
    captions as the folder with LAION's front end, under its identity, and refuses audio as loading does."""
    import shutil

    from transformers import ClapFeatureExtractor

    from tta.clap import load_clap

    config = tiny_config()
    config.audio_config.enable_fusion = fusion
    torch.manual_seed(0)
    base = tmp_path / "base"
    save_folder(base, config, tokenizer_dir)
    official = ClapFeatureExtractor(frequency_min=50, truncation="fusion" if fusion else "rand_trunc")
    official.save_pretrained(str(base))

    def folder_with(name, **change):
        folder = tmp_path / name
        shutil.copytree(base, folder)
        path = folder / "preprocessor_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
        return folder

    def misfit(reason, fields):   # frames that do not fit: config.json or preprocessor_config.json may be wrong
        return (f"config.json: the CLAP audio tower its audio_config builds cannot embed audio \\({reason}\\); check "
                f"audio_config against the config the weights were saved with, in particular {fields}'s ")

    pre = "preprocessor_config.json"
    refused = [("rate", {"sampling_rate": 44_100}, rf"{pre}: sampling_rate is 44100; expected 48000"),
               # the weights fit config.json's num_mel_bins (loading refuses them otherwise): only the
               # preprocessor_config.json can be wrong, and it is named first
               ("mels", {"feature_size": 32}, rf"{pre}: feature_size is 32; expected the model's 64 mel bins "
                                              r"\(config.json audio_config.num_mel_bins, which its weights are shaped "
                                              r"by\)$"),
               ("hop", {"hop_length": 320}, misfit(r"audio_config.spec_size 256 takes at most 1024 mel frames; "
                                                   rf".*/hop/{pre} makes 1501, of 10 s at hop 320",
                                                   rf"spec_size \(and {pre}")),
               ("long", {"max_length_s": 20}, misfit(r"audio_config.spec_size 256 takes at most 1024 mel frames; "
                                                     rf".*/long/{pre} makes 2001, of 20 s at hop 480",
                                                     rf"spec_size \(and {pre}")),
               ("float", {"hop_length": 480.0}, rf"{pre}: hop_length is 480.0; expected a positive integer"),
               ("frac", {"max_length_s": 10.5}, rf"{pre}: max_length_s is 10.5; expected an integer"),
               ("bounds", {"frequency_min": 14_000, "frequency_max": 50},
                rf"{pre}: not a ClapFeatureExtractor configuration \(Require min_frequency"),
               # wrong types transformers fails on while it builds the extractor, before check_front_end
               ("bins", {"feature_size": 64.0}, rf"{pre}: not a ClapFeatureExtractor configuration \("),
               ("fft", {"fft_window_size": 1024.0}, rf"{pre}: not a ClapFeatureExtractor configuration \(")]
    if fusion:
        refused.append(("trunc", {"truncation": "crop"}, rf"{pre}: truncation is 'crop'; expected 'fusion'"))
    else:
        refused += [("trunc", {"truncation": "fusion"}, rf"{pre}: truncation is 'fusion'; expected 'rand_trunc'"),
                    ("short", {"max_length_s": 5}, rf"{pre}: max_length_s is 5; expected at least 10 .* at random")]
    wav = chirp(200, 4000, 12.0, 16_000)                    # longer than the window: crops and fusion chunks
    for name, change, message in refused:
        folder = folder_with(name, **change)
        with pytest.raises(ValueError, match=f"{name}/{message}") as at_load:
            load_clap(folder)
        # loaded text_only, the audio is refused with the error loading raised: check_front_end's were
        # ValueErrors at load and CheckpointErrors at the first audio
        clap = load_clap(folder, text_only=True)
        with pytest.raises(ValueError) as at_audio:
            clap.embed_audio(wav, 16_000)
        assert (type(at_audio.value), str(at_audio.value)) == (type(at_load.value), str(at_load.value)), name
        if name in ("bounds", "bins", "fft"):   # transformers cannot read it: no front end, and no "-fe"
            assert clap.identity == load_clap(base).identity
            assert torch.equal(clap.embed_text(["a dog barks"]), load_clap(base).embed_text(["a dog barks"]))
    taken = [("slower", {"hop_length": 960}), ("both", {"hop_length": 960, "max_length_s": 20})]
    if fusion:
        taken.append(("fused5", {"max_length_s": 5}))     # its crops come from tta's seeded draws
    for name, change in taken:
        clap = load_clap(folder_with(name, **change))
        assert clap.identity.startswith(load_clap(base).identity + "-fe")
        assert torch.equal(clap.embed_audio(wav, 16_000), clap.embed_audio(wav, 16_000))


def test_an_extractor_the_model_cannot_take_is_refused_through_the_api(laion_pt, tokenizer_dir):
    from transformers import ClapFeatureExtractor

    fused = ClapFeatureExtractor(frequency_min=50, truncation="fusion")   # for a model without fusion
    refused = r"^feature_extractor: truncation is 'fusion'; expected 'rand_trunc'"
    with pytest.raises(ValueError, match=refused):
        LaionClapEmbedder.from_path(laion_pt, tokenizer_dir, config=tiny_config(), feature_extractor=fused)
    narrow = ClapFeatureExtractor(feature_size=32, frequency_min=50, truncation="rand_trunc")
    with pytest.raises(ValueError, match=r"^feature_extractor: feature_size is 32; expected the model's 64 mel bins "
                                         r"\(audio_config.num_mel_bins, which its weights are shaped by\)$"):
        LaionClapEmbedder.from_path(laion_pt, tokenizer_dir, feature_extractor=narrow)
