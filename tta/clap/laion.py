"""LAION-CLAP (HTSAT + RoBERTa, Wu et al. 2023) through transformers' `ClapModel`, loaded from local files.

Two on-disk forms are read:

- a transformers CLAP folder (config.json with model_type "clap" + weights; `save_pretrained` output), whose
  weights must fit the model its config.json builds: one that leaves model weights missing, file weights
  unused or shaped otherwise than the model's is refused with the first keys (and shapes) (transformers would
  initialise or drop them with a logged report, or stop pointing to that report);
- an original LAION `.pt` (e.g. 630k-audioset-best.pt): {"state_dict": {"module.<key>": tensor}} in
  LAION's layout (or an AudioLDM `.ckpt`, whose `cond_stage_model.model.*` is the CLAP it was trained with,
  in the same layout) (`text_branch.*` RoBERTa, `audio_branch.*` HTSAT, `text_projection.{0,2}`,
  `audio_projection.{0,2}`, `logit_scale_{a,t}`), converted here to ClapModel's names. HTSAT attention
  keeps q, k and v in one `qkv` matrix (rows [q; k; v]); ClapModel has separate `query/key/value`.
  Tensors the embeddings never use are dropped by name: the torchlibrosa front end
  (`spectrogram_extractor`, `logmel_extractor`; the mel is computed by ClapFeatureExtractor instead), the
  AudioSet head (`tscam_conv`, `head`), the shifted-window `attn_mask` buffers (recomputed), the MLP-loss
  heads `text_transform` / `audio_transform`, and `text_branch.embeddings.position_ids`. Every other key
  must map onto the model, and every model weight must come from the file: otherwise the error lists the
  first missing and unexpected keys.

Audio is prepared as LAION does: mono at 48 kHz, a float32 -> int16 -> float32 round trip, then to
exactly 10 s — longer clips are randomly cropped ("rand_trunc"; the crop comes from a fixed seed so
embeddings are reproducible and cacheable), shorter ones are repeated whole and zero-padded ("repeatpad")
— then the 64-bin log-mel of transformers' ClapFeatureExtractor (LAION's 50 Hz - 14 kHz, hop 480).
Feature-fusion checkpoints (`enable_fusion`) use the extractor's "fusion" mode on the full clip. A
transformers folder's preprocessor_config.json replaces that extractor; where it differs from LAION's front
end in a field that changes embeddings, the identity gets "-fe" and a hash of those fields (official folders
keep the weights-only identity). One that is no such front end (another sample rate, "fusion" truncation
without feature fusion), that would crop at random (a window under 10 s without fusion: `check_front_end`) or
that transformers cannot build an extractor from (its identity part is then LAION's) is refused with a
ValueError, and a model whose audio tower cannot take the mels of its front end, LAION's
or a preprocessor_config.json's (another mel-bin count, more mel frames than its spec size holds), with a
CheckpointError (`front_end_refusal`), naming the file and the field, when it loads; unless it is loaded
`text_only` (for its captions alone, e.g. AudioLDM's conditioning): then either loads, its text tower embeds
as any other, and every audio embedding (a cached one too) is refused with the error loading raises without
it, of the same type and words. A config.json whose activations, LayerNorm epsilons, text head count, padding
id, patch stride or spec size differ from the official folders' adds "-cfg" and a hash of those fields to the
identity (`model_config_suffix`), unless they are the values tta infers for a .pt (a folder tta wrote from a
.pt or .ckpt keeps the weights-only identity it had; at roberta-base's width, where those values are the
official ones but for the text LayerNorm epsilon, only in a tta pipeline's text_encoder/). One that builds an
audio tower that cannot embed otherwise (e.g. `flatten_patch_embeds` false, a patch stride the mels do not
fit) loads, as its weights fit; its first audio embedding is refused naming the config.json (a probe
embedding when the folder loads would put a 10 s window through HTSAT: ~0.4 s on one CPU core for the
official size, a quarter of its load, paid by text-only uses such as AudioLDM's conditioning too). A .pt read
from Python with a `config=` whose values of those fields differ from the ones its weights give
(`infer_clap_config`, what it is read with by default) gets "-cfg" and a hash of the fields that differ
(`pt_config_suffix`).

The RoBERTa tokenizer must come from local files the user names; a tokenizer with a tiny vocabulary
(what transformers 5 builds offline when the files are missing) is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import torch

from tta.checkpoint import CheckpointError, check_finite, load_torch_file, weights_mismatch
from tta.clap.encoder import ClapEmbedder, warn_truncated
from tta.device import torch_device

log = logging.getLogger(__name__)

SAMPLE_RATE = 48_000
MAX_SAMPLES = 480_000          # 10 s at 48 kHz
TEXT_MAX_LENGTH = 77           # LAION tokenises RoBERTa input to 77 tokens
MIN_VOCAB = 1000
# LAION's front end (its training code and the official transformers folders' preprocessor_config.json, with
# truncation "fusion" for feature-fusion models, "rand_trunc" otherwise): the ClapFeatureExtractor fields that
# change an embedding. A folder's preprocessor_config.json that differs in any of them adds to the identity.
# Not here: top_db (stored, never applied by the extractor), padding_value, return_attention_mask,
# padding_side and the type names, which no embedding depends on.
FRONT_END = {"feature_size": 64, "sampling_rate": SAMPLE_RATE, "hop_length": 480, "fft_window_size": 1024,
             "max_length_s": 10, "frequency_min": 50, "frequency_max": 14_000, "padding": "repeatpad"}
# The config.json fields of a transformers CLAP folder that change an embedding without changing any weight's
# shape, at the values of transformers' ClapTextConfig / ClapAudioConfig defaults: the official laion folders'
# values (transformers' conversion script sets only the sizes it reads off LAION's weights, and enable_fusion).
# A folder that differs in any of them adds to the identity (`model_config_suffix`). Not here: the fields that
# shape weights (another value fails to load or leaves weights unused), dropout and initialisation, bos/eos ids
# and logit_scale_init_value (the logit scale is a weight, and no embedding uses it). The values
# `infer_clap_config` writes for a .pt (LAION_TEXT_LAYER_NORM_EPS, laion_text_heads) count as known as well
# (at roberta-base's width, in a tta pipeline's text_encoder/ only).
MODEL_CONFIG = {"text_config": {"hidden_act": "gelu", "layer_norm_eps": 1e-12, "num_attention_heads": 12,
                                "pad_token_id": 1, "projection_hidden_act": "relu"},
                "audio_config": {"hidden_act": "gelu", "layer_norm_eps": 1e-5, "patch_stride": (4, 4),
                                 "spec_size": 256, "projection_hidden_act": "relu"}}

# LAION builds its text tower from roberta-base: LayerNorm epsilon 1e-5 (ClapTextConfig's default, which the
# official folders keep, is 1e-12) and attention heads 64 wide (not visible in the weights).
LAION_TEXT_LAYER_NORM_EPS = 1e-5


def laion_text_heads(hidden_size: int) -> int:
    """The text attention heads of a LAION RoBERTa tower of `hidden_size` (12 for roberta-base's 768)."""
    return max(1, hidden_size // 64)


_DROP_PREFIXES = ("audio_branch.spectrogram_extractor.", "audio_branch.logmel_extractor.",
                  "audio_branch.tscam_conv.", "audio_branch.head.", "text_transform.", "audio_transform.")
_DROP_EXACT = ("text_branch.embeddings.position_ids",)
# Model tensors that are deterministic buffers, not weights: taken from the fresh model when absent.
_BUFFERS_OK_MISSING = (re.compile(r"text_model\.embeddings\.(position_ids|token_type_ids)$"),
                       re.compile(r".*\.relative_position_index$"))
# The logit scales: used by ClapModel's contrastive logits only, never by an embedding.
_LOGIT_SCALE = re.compile(r"logit_scale(_[at])?$")

# A first audio batch's failure that a config whose audio tower cannot embed makes (flatten_patch_embeds, patch
# stride, spec size: torch's and transformers' words about shapes and sizes), and what is never the config's
# (out of memory, a device or dtype mismatch), whatever its other words.
_SHAPE_FAILURE = re.compile(r"shape|size", re.IGNORECASE)
_NOT_CONFIG_FAILURE = re.compile(r"memory|alloc|device|dtype|scalar type", re.IGNORECASE)

_BLOCK = re.compile(r"^(audio_model\.audio_encoder\.layers\.\d+\.blocks\.\d+\.)(.*)$")
_BLOCK_RENAMES = (("norm1.", "layernorm_before."), ("norm2.", "layernorm_after."),
                  ("attn.proj.", "attention.output.dense."),
                  ("attn.relative_position_bias_table", "attention.self.relative_position_bias_table"),
                  ("attn.relative_position_index", "attention.self.relative_position_index"),
                  ("mlp.fc1.", "intermediate.dense."), ("mlp.fc2.", "output.dense."))


def _rebuilt_buffer(key: str) -> bool:
    """Whether a model key is one of the deterministic buffers a missing copy of is taken from the fresh model."""
    return any(p.match(key) for p in _BUFFERS_OK_MISSING)


def _dropped(key: str) -> bool:
    return key in _DROP_EXACT or key.startswith(_DROP_PREFIXES) or (
        key.startswith("audio_branch.layers.") and key.endswith(".attn_mask"))


def _rename(key: str) -> str:
    for old, new in (("text_branch.", "text_model."), ("audio_branch.", "audio_model.audio_encoder.")):
        if key.startswith(old):
            key = new + key[len(old):]
    m = re.match(r"^(text|audio)_projection\.(0|2)\.(weight|bias)$", key)
    if m:
        return f"{m[1]}_projection.linear{1 if m[2] == '0' else 2}.{m[3]}"
    if key.startswith("audio_model.audio_encoder.bn0."):
        return key.replace(".bn0.", ".batch_norm.", 1)
    b = _BLOCK.match(key)
    if b:
        rest = b[2]
        for old, new in _BLOCK_RENAMES:
            if rest.startswith(old):
                return b[1] + new + rest[len(old):]
    return key


def convert_laion_state_dict(state: dict) -> tuple[dict, dict]:
    """LAION-layout state dict -> (ClapModel state dict, {ClapModel key: LAION key it came from}).

    Strips DataParallel's `module.` prefix, drops the unused tensors listed in the module docstring,
    renames the rest and splits HTSAT's fused `attn.qkv` into `attention.self.{query,key,value}`.
    """
    out, origin = {}, {}
    for raw_key, value in state.items():
        key = raw_key.removeprefix("module.")
        if _dropped(key):
            continue
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"state_dict entry {raw_key!r} is a {type(value).__name__}, not a tensor")
        new = _rename(key)
        b = _BLOCK.match(new)
        if b and b[2].startswith("attn.qkv."):
            if value.shape[0] % 3:
                raise CheckpointError(f"{raw_key}: fused qkv of shape {tuple(value.shape)} is not 3 equal parts")
            suffix = b[2][len("attn.qkv."):]
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                k = f"{b[1]}attention.self.{name}.{suffix}"
                out[k], origin[k] = part.clone(), raw_key
            continue
        out[new], origin[new] = value, raw_key
    return out, origin


def infer_clap_config(state: dict):
    """A transformers ClapConfig matching a converted state dict (HTSAT + RoBERTa sizes read off shapes).

    Text attention heads are not visible in the weights: hidden_size // 64 (RoBERTa's head width) is used;
    the text tower's LayerNorm epsilon is RoBERTa's 1e-5 (LAION builds it from roberta-base), not
    ClapTextConfig's default 1e-12. A folder saved with this config keeps the weights-only identity
    (`model_config_suffix`; at roberta-base's width, as a tta pipeline's text_encoder/).
    """
    from transformers import ClapConfig

    def shape(k):
        if k not in state:
            raise CheckpointError(f"cannot infer the CLAP config: no {k!r} in the checkpoint")
        return tuple(state[k].shape)

    enc = "audio_model.audio_encoder."
    depths, heads, i = [], [], 0
    while f"{enc}layers.{i}.blocks.0.layernorm_before.weight" in state:
        n = 0
        while f"{enc}layers.{i}.blocks.{n}.layernorm_before.weight" in state:
            n += 1
        depths.append(n)
        heads.append(shape(f"{enc}layers.{i}.blocks.0.attention.self.relative_position_bias_table")[1])
        i += 1
    table = shape(f"{enc}layers.0.blocks.0.attention.self.relative_position_bias_table")[0]
    window = (round(table ** 0.5) + 1) // 2
    text_layers = len({k.split(".")[3] for k in state if k.startswith("text_model.encoder.layer.")})
    vocab, hidden = shape("text_model.embeddings.word_embeddings.weight")
    audio_cfg = {"patch_embeds_hidden_size": shape(f"{enc}patch_embed.proj.weight")[0], "depths": depths,
                     "num_attention_heads": heads, "window_size": window, "num_mel_bins": shape(f"{enc}batch_norm.weight")[0],
                     "hidden_size": shape("audio_projection.linear1.weight")[1],
                     "projection_dim": shape("audio_projection.linear1.weight")[0],
                     "enable_fusion": f"{enc}patch_embed.mel_conv2d.weight" in state}
    text_cfg = {"vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": text_layers,
                    "num_attention_heads": laion_text_heads(hidden),
                    "intermediate_size": shape("text_model.encoder.layer.0.intermediate.dense.weight")[0],
                    "max_position_embeddings": shape("text_model.embeddings.position_embeddings.weight")[0],
                    "type_vocab_size": shape("text_model.embeddings.token_type_embeddings.weight")[0],
                    "layer_norm_eps": LAION_TEXT_LAYER_NORM_EPS,
                    "projection_dim": shape("text_projection.linear1.weight")[0]}
    return ClapConfig(text_config=text_cfg, audio_config=audio_cfg,
                      projection_dim=shape("text_projection.linear1.weight")[0])


AUDIOLDM_CLAP_PREFIX = "cond_stage_model.model."


def load_laion_checkpoint(path: str | os.PathLike, config=None, *, loaded=None):
    """An original LAION-CLAP `.pt` (or the CLAP inside an AudioLDM `.ckpt`) as a transformers ClapModel (eval
    mode). `config`: a ClapConfig, or None to infer the sizes from the weights; `loaded`: the file's content
    when the caller has already read it."""
    from transformers import ClapModel

    raw = load_torch_file(path) if loaded is None else loaded
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: expected a LAION-CLAP checkpoint ({{'state_dict': {{...}}}}), "
                              f"got {type(raw).__name__}")
    prefix = ""
    if any(k.startswith(AUDIOLDM_CLAP_PREFIX) for k in state):
        state = {k[len(AUDIOLDM_CLAP_PREFIX):]: v for k, v in state.items() if k.startswith(AUDIOLDM_CLAP_PREFIX)}
        prefix = AUDIOLDM_CLAP_PREFIX
        log.info("%s: using the CLAP under %s*", path, AUDIOLDM_CLAP_PREFIX)
    check_finite(state, str(path), prefix=prefix)
    converted, origin = convert_laion_state_dict(state)
    types = converted.get("text_model.embeddings.token_type_embeddings.weight")
    if types is not None and types.shape[0] != 1:   # BERT has 2 token types; RoBERTa, LAION's default, 1
        raise CheckpointError(f"{path}: its text branch is BERT-like ({types.shape[0]} token types), and tta reads "
                              "LAION-CLAP's RoBERTa text branch only (tmodel 'roberta', every released checkpoint)")
    try:
        config = config if config is not None else infer_clap_config(converted)
    except CheckpointError as e:   # names the converted (transformers) key; the file is the user's handle
        raise CheckpointError(f"{path}: {e} (a damaged or non-HTSAT LAION-CLAP checkpoint)") from None
    model = ClapModel(config).eval()
    own = model.state_dict()
    missing = [k for k in own if k not in converted and not _rebuilt_buffer(k)]
    unexpected = list(dict.fromkeys(origin[k] for k in converted if k not in own))  # qkv: 3 parts, 1 key
    shapes = [f"{origin[k]}: {tuple(converted[k].shape)} vs {tuple(own[k].shape)}"
              for k in converted if k in own and tuple(converted[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        raise CheckpointError(f"{path}: LAION-CLAP weights do not match the CLAP model: " + weights_mismatch(
            missing=missing, unexpected=unexpected, shapes=shapes,
            words=("model weight{s} missing from the file", "unexpected key{s}", "with other shapes")))
    full = {k: converted.get(k, v) for k, v in own.items()}
    model.load_state_dict({k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in full.items()})
    return model


def _check_loading_info(path: Path, info: dict) -> None:
    """Refuses a transformers CLAP folder whose config.json builds a model its weights do not fit: transformers only
    logs a report, then initialises the weights the file lacks at random (e.g. `audio_config.enable_fusion` true on
    unfused weights) or drops those the model has no place for (`enable_patch_layer_norm` false, `qkv_bias` false),
    and the folder embeds otherwise under the same identity. Keys transformers itself expects to be absent or left
    over (the old `position_ids` buffers, a model's `_keys_to_ignore_on_load_*`) are not in `info`; deterministic
    buffers another transformers version did not save (`_BUFFERS_OK_MISSING`, rebuilt by transformers) and the logit
    scales (which no embedding uses) may be absent, or left over under another name. Weights shaped otherwise
    than the model's (e.g. `audio_config.mlp_ratio` edited) come as `mismatched_keys` (key, file's shape, model's
    shape), loaded with `ignore_mismatched_sizes`: without it transformers stops with only a pointer to the report
    it logged ("For details look at the above report!"), which tta's log hides unless -v."""
    missing = sorted(k for k in info.get("missing_keys") or () if not _LOGIT_SCALE.match(k) and not _rebuilt_buffer(k))
    unexpected = sorted(k for k in info.get("unexpected_keys") or () if not _LOGIT_SCALE.match(k))
    shapes = [f"{key}, {list(saved)} in the folder, {list(built)} in the model"
              for key, saved, built in sorted(info.get("mismatched_keys") or (), key=lambda m: m[0])]
    if not missing and not unexpected and not shapes:
        return
    report = weights_mismatch(missing=missing, unexpected=unexpected, shapes=shapes, shapes_listed=1,
                              shapes_first=True, words=("model weight{s} missing from the folder",
                                                        "weight{s} the model does not use",
                                                        "weight{s} shaped otherwise than the model's"))
    raise CheckpointError(f"{path}: its weights do not fit the CLAP model its config.json describes: "
                          + report + " (check config.json against the config the weights were saved "
                          "with, e.g. audio_config.enable_fusion, enable_patch_layer_norm, qkv_bias, mlp_ratio)")


def load_roberta_tokenizer(folder: str | os.PathLike):
    """A tokenizer from local files only; refuses a missing folder or a tiny (placeholder) vocabulary."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: tokenizer folder not found (give the RoBERTa tokenizer files of the CLAP model)")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError/ValueError/TypeError depending on what is missing
        raise ValueError(f"{folder}: cannot load a tokenizer from local files ({str(e).splitlines()[0][:200]})") from None
    if len(tok) < MIN_VOCAB:
        raise ValueError(f"{folder}: tokenizer has only {len(tok)} tokens; expected a real vocabulary (RoBERTa "
                         f"has 50265) — are vocab.json/merges.txt or tokenizer.json missing?")
    return tok


def laion_prepare(wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(T,) float at 48 kHz -> (480000,) float32: int16 round trip, then rand_trunc / repeatpad."""
    x = (np.clip(wav, -1.0, 1.0) * 32767.0).astype(np.int16).astype(np.float32) / 32767.0
    if x.shape[0] > MAX_SAMPLES:
        start = int(rng.integers(0, x.shape[0] - MAX_SAMPLES + 1))
        return x[start:start + MAX_SAMPLES]
    if x.shape[0] < MAX_SAMPLES:
        x = np.tile(x, MAX_SAMPLES // x.shape[0])
        x = np.pad(x, (0, MAX_SAMPLES - x.shape[0]))
    return x


TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "vocab.txt", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")


def _tokenizer_hash(folder: Path) -> str:
    """sha256 (16 hex) of the files of a tokenizer folder that define how text becomes tokens."""
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            h.update(f"{name}:{_file_hash(folder / name)}".encode())
    return h.hexdigest()[:16]


def _tokenizer_content_hash(tok, folder: Path) -> str:
    """sha256 (16 hex) of what tokenizer `tok` (read from `folder`) makes of a caption: its tokenizers pipeline
    (normaliser, pre-tokenizer, vocabulary and merges, post-processor, added tokens) and the sides it pads and
    truncates on. Not its decoder, nor the padding and truncation saved with it (tta sets both on every call),
    nor the file names and other settings its folder holds them in: the original files and a save_pretrained
    copy of them hash alike. A tokenizer without a tokenizers pipeline is hashed by its files."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return _tokenizer_hash(folder)
    body = json.loads(backend.to_str())
    for key in ("version", "padding", "truncation", "decoder"):
        body.pop(key, None)
    body["sides"] = [tok.padding_side, tok.truncation_side, tok.pad_token_id]
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _tokenizer_suffix(folder: Path, tokenizer: Path, tok) -> str:
    """A transformers CLAP folder's identity part for the tokenizer `tok` read from `tokenizer`: "" where it is
    the folder's own (its files, or another copy of the same tokenizer), else "-tok" and 8 hex digits of
    `_tokenizer_content_hash`. A folder without tokenizer files has none of its own: the tokenizer named makes
    its caption embeddings, so it is in the identity, and identical tokenizers give the same one."""
    if _tokenizer_hash(tokenizer) == _tokenizer_hash(folder):
        return ""
    named = _tokenizer_content_hash(tok, tokenizer)
    if any((folder / name).is_file() for name in TOKENIZER_FILES):
        try:
            if _tokenizer_content_hash(load_roberta_tokenizer(folder), folder) == named:
                return ""
        except ValueError:   # its own files do not make a tokenizer: the named one is another
            pass
    return f"-tok{named[:8]}"


def front_end_suffix(features, fusion: bool) -> str:
    """A feature extractor's part of the identity: "" for LAION's front end (`FRONT_END`), else "-fe" + 8 hex
    digits hashing the fields that differ from it. The same weights read through another mel range, hop or
    window embed otherwise, so they must not share embedding caches, datastores or reference statistics;
    official folders keep the weights-only identity their caches and datastores are keyed by."""
    official = {**FRONT_END, "truncation": "fusion" if fusion else "rand_trunc"}
    changed = {}
    for name, want in official.items():
        window = getattr(features, "nb_max_samples", MAX_SAMPLES)
        if name == "padding" and not fusion and window <= MAX_SAMPLES:
            continue   # unfused clips reach the extractor padded to the window already (laion_prepare)
        have = getattr(features, name, None)
        if have != want:
            number = isinstance(have, (int, float)) and not isinstance(have, bool)
            changed[name] = float(have) if number else have
    if not changed:
        return ""
    return "-fe" + hashlib.sha256(json.dumps(changed, sort_keys=True, default=str).encode()).hexdigest()[:8]


def model_config_suffix(config, *, in_pipeline: bool = False) -> str:
    """A transformers ClapConfig's part of the identity: "" where the fields of `MODEL_CONFIG` hold the official
    folders' values, else "-cfg" + 8 hex digits hashing those that differ. The same weights with another
    activation, LayerNorm epsilon, text head count, padding id, patch stride or spec size embed otherwise, so they
    must not share embedding caches, datastores or reference statistics; official folders keep the identity they
    had. So does a config whose fields are the official values but for those `infer_clap_config` writes for a .pt
    (text LayerNorm epsilon 1e-5, text heads 64 wide), all of them: a folder tta wrote from a .pt or an AudioLDM
    .ckpt (`tta import`, a pipeline's text_encoder/), whose caches and datastores are keyed by its weights alone;
    one of those edited otherwise gets the suffix. At roberta-base's width (768: 12 heads, the official count)
    the epsilon is the only such value, and an official folder whose text layer_norm_eps is edited to 1e-5 (its
    embeddings move) holds the same config: there it counts as tta's own only `in_pipeline`, for a folder that is
    a tta pipeline's text_encoder/ (`_in_tta_pipeline`), where tta writes every transformers CLAP folder it makes;
    elsewhere it gets the suffix. (A pipeline's text_encoder/ of that width edited to the official 1e-12 keeps the
    weights-only identity in turn: its config alone cannot tell that edit from an official folder's.)"""
    official = {f"{part}.{name}": want for part, fields in MODEL_CONFIG.items() for name, want in fields.items()}
    changed = {key: have for key, have in _embedding_fields(config).items() if have != official[key]}
    heads = laion_text_heads(config.text_config.hidden_size)
    inferred = {"text_config.layer_norm_eps": LAION_TEXT_LAYER_NORM_EPS}
    if heads != MODEL_CONFIG["text_config"]["num_attention_heads"]:
        inferred["text_config.num_attention_heads"] = float(heads)
    if not changed or (changed == inferred and (len(inferred) > 1 or in_pipeline)):
        return ""
    return _config_hash(changed)


def pt_config_suffix(config, weights_config) -> str:
    """A .pt's part of the identity for the ClapConfig `config` it is read with (`config=`): "" where the fields of
    `MODEL_CONFIG` hold the values of `weights_config`, the config `infer_clap_config` reads off its weights (what
    the .pt is read with by default), else "-cfg" + 8 hex digits hashing those that differ, as a folder's
    `model_config_suffix`: another activation, LayerNorm epsilon, text head count, padding id, patch stride or
    spec size embeds otherwise, so it must not share the caches of the .pt read as it is by default."""
    inferred = _embedding_fields(weights_config)
    changed = {key: have for key, have in _embedding_fields(config).items() if have != inferred[key]}
    return _config_hash(changed) if changed else ""


def _embedding_fields(config) -> dict:
    """The `MODEL_CONFIG` fields of a ClapConfig as {"part.name": value}: numbers as floats, a patch stride as a
    pair (an int means the same stride in both directions, as the model reads it)."""
    out = {}
    for part, fields in MODEL_CONFIG.items():
        for name in fields:
            have = getattr(getattr(config, part), name, None)
            if name == "patch_stride":
                have = (have, have) if isinstance(have, int) else tuple(have)
            number = isinstance(have, (int, float)) and not isinstance(have, bool)
            out[f"{part}.{name}"] = float(have) if number else have
    return out


def _config_hash(changed: dict) -> str:
    return "-cfg" + hashlib.sha256(json.dumps(changed, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _in_tta_pipeline(folder: Path) -> bool:
    """Whether `folder` is the text_encoder/ of a tta pipeline folder: the pipeline.json beside it names it,
    where the path leads as given or once its links are resolved (a link to a pipeline's text_encoder/, and a
    pipeline whose text_encoder/ is a link, are both). A text_encoder/ copied out of its pipeline is not, so
    at roberta-base's width its identity gets "-cfg" (`model_config_suffix`): a cache miss, never a mix. Its
    config.json cannot tell it apart: an official folder whose text layer_norm_eps is set to 1e-5 and saved by
    transformers (ClapConfig.from_pretrained, save_pretrained) holds the very bytes tta writes."""
    from tta.checkpoint import PIPELINE_FILE

    for place in dict.fromkeys((Path(os.path.abspath(folder)), Path(folder).resolve())):
        try:
            spec = json.loads((place.parent / PIPELINE_FILE).read_text(encoding="utf-8"))
            if spec["components"]["text_encoder"] == place.name:
                return True
        except (OSError, ValueError, TypeError, KeyError):   # none there, or not a pipeline's: not tta's
            continue
    return False


def check_front_end(features, audio_config, where: str) -> None:
    """Refuses a feature extractor that is no LAION front end, or would crop at random, naming `where` (the
    preprocessor_config.json) and the field: transformers fails only at the first embedding otherwise. Whether
    the model's audio tower takes its mels is `front_end_refusal`'s to say. Another mel range, window or hop
    that the model takes is no error (the identity tells them apart: `front_end_suffix`)."""
    fusion = bool(audio_config.enable_fusion)

    def refuse(name: str, expected: str):
        raise ValueError(f"{where}: {name} is {getattr(features, name, None)!r}; expected {expected}")

    for name in ("feature_size", "hop_length", "fft_window_size"):
        value = getattr(features, name, None)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            refuse(name, "a positive integer")
    if features.sampling_rate != SAMPLE_RATE:
        refuse("sampling_rate", f"{SAMPLE_RATE} (LAION-CLAP hears 48 kHz; tta resamples every clip to it)")
    if fusion and features.truncation not in ("fusion", "rand_trunc"):
        refuse("truncation", "'fusion' (LAION's for feature-fusion models) or 'rand_trunc'")
    if not fusion and features.truncation == "fusion":
        refuse("truncation", "'rand_trunc': 'fusion' makes 4-channel mels for feature-fusion models only, "
                             "and this model has none (config.json audio_config.enable_fusion)")
    seconds = getattr(features, "max_length_s", None)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
        refuse("max_length_s", "a positive number of seconds (10 in LAION's front end)")
    window = features.nb_max_samples
    if not fusion and window < MAX_SAMPLES:   # the crop would come from numpy's unseeded global generator
        refuse("max_length_s", "at least 10 for a model without feature fusion: tta hands it 10 s clips, "
                               "and a shorter window crops them at random (another embedding each call)")
    if not isinstance(window, int) and (fusion or window != MAX_SAMPLES):   # a float window breaks slicing
        refuse("max_length_s" if not isinstance(seconds, int) else "sampling_rate",
               "an integer (LAION's front end: max_length_s 10, sampling_rate 48000)")


def front_end_refusal(features, audio_config, *, config_source: str | None,
                      front_end_source: str | None = None) -> str | None:
    """The refusal of a model whose audio tower (`audio_config`) cannot take the mels `features` makes, naming
    where its config came from (`config_source`: a folder's config.json, a .pt, None through the Python
    API), else None. `front_end_source`: the preprocessor_config.json (or "feature_extractor") `features` came
    from, None for LAION's front end (`FRONT_END`: 64 bins, 1001 frames of 10 s at hop 480). HTSAT reads
    `num_mel_bins` bins and folds a clip's frames into a `spec_size` square, in spec_size // num_mel_bins
    strips of spec_size frames each; otherwise transformers fails at the first embedding (a batch norm of
    another width, 'the wav size should be less than or equal to the swin input size', or a division by zero
    where spec_size is under num_mel_bins). The weights are shaped by num_mel_bins (the batch norm; loading
    refuses weights that do not fit their config), so where the mel-bin counts differ, a front end given is
    the one to blame, named first; where the frames do not fit, the config or the front end may be wrong."""
    bins, spec, made = audio_config.num_mel_bins, audio_config.spec_size, features.feature_size
    folder = config_source is not None and config_source.endswith("config.json")
    front = front_end_source or f"{'without a preprocessor_config.json, ' if folder else ''}LAION's front end"
    theirs = f" (and {Path(front_end_source).name}'s {{}})" if front_end_source else ""
    if made != bins:   # the weights are shaped by num_mel_bins (the batch norm): theirs is another front end
        reason = f"audio_config.num_mel_bins is {bins}; {front} makes {made}-bin mels"
        if front_end_source:
            return (f"{front_end_source}: feature_size is {made}; expected the model's {bins} mel bins "
                    f"({'config.json ' if folder else ''}audio_config.num_mel_bins, which its weights are shaped by)")
        if config_source is not None and not folder:   # a .pt: LAION's front end, which no flag replaces
            return (f"{config_source}: the CLAP audio tower built for it cannot embed audio here (its weights take "
                    f"{bins}-bin mels, audio_config.num_mel_bins as read off its weights; LAION's front end, which "
                    f"tta reads a .pt through, makes {made}-bin mels); from Python it can still be loaded for its "
                    f"captions alone (load_clap(..., text_only=True)), or with a {bins}-bin front end "
                    "(LaionClapEmbedder.from_path(..., feature_extractor=...))")
        give = "give the folder the preprocessor_config.json" if folder else "pass the feature_extractor"
        return _config_cannot_embed(config_source, reason, check=f"{give} its weights were trained with "
                                                                 f"(feature_size {bins})")
    fields = "in particular spec_size" + theirs.format("hop_length and max_length_s")
    if spec < bins:
        return _config_cannot_embed(config_source, f"audio_config.spec_size {spec} is under its num_mel_bins "
                                    f"{bins}: HTSAT folds the frames into spec_size // num_mel_bins strips, here "
                                    "none", fields)
    frames = int(features.nb_max_samples) // features.hop_length + 1
    if frames > spec * (spec // bins):
        return _config_cannot_embed(config_source, f"audio_config.spec_size {spec} takes at most "
                                    f"{spec * (spec // bins)} mel frames; {front} makes {frames}, of "
                                    f"{features.max_length_s:g} s at hop {features.hop_length}", fields)
    return None


def _config_cannot_embed(config_source: str | None, reason: str, fields: str = "", *, check: str = "") -> str:
    """The refusal of a model whose audio tower cannot embed, at load or at its first audio, naming where its
    config came from (`config_source`: a folder's config.json, a .pt, None through the Python API): `reason`
    in parentheses, then to check the config's `fields` (or `check`, what to do instead)."""
    if config_source is None or config_source.endswith("config.json"):
        where = config_source or "this CLAP's config"
        return (f"{where}: the CLAP audio tower its audio_config builds cannot embed audio ({reason}); "
                + (check or f"check audio_config against the config the weights were saved with, {fields}"))
    # a .pt: its config is inferred from its weights, or passed in through the Python API
    return (f"{config_source}: the CLAP audio tower built for it cannot embed audio ({reason}); " + (check or (
            "its config is the one passed as config= or, without one, read off its weights as LAION's HTSAT "
            f"(spec_size 256, patch_stride 4): check the config passed, {fields}")))


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


class LaionClapEmbedder(ClapEmbedder):
    """The shared interface over a transformers ClapModel holding LAION-CLAP weights.

    `identity` names the weights (and tokenizer); a `feature_extractor` other than LAION's front end appends
    `front_end_suffix` to it. `config_source`: where the model's config came from (a folder's config.json, a
    .pt), named when its audio tower cannot embed; `front_end_source`: where `feature_extractor` came from (a
    folder's preprocessor_config.json), named when it is refused; `unreadable_front_end`: why the folder's
    preprocessor_config.json gave no extractor (transformers cannot build one from it), refused as a ValueError.
    A front end that is refused (`check_front_end` or unreadable, a ValueError) or that the audio tower cannot
    embed through (`front_end_refusal`, a CheckpointError) is refused here, unless `text_only`: then the text
    tower embeds as any other, and every audio embedding (a cached one too) is refused with the error loading
    raises without it, of the same type and words (`audio_refusal`). An unreadable front end leaves the
    identity as LAION's would: its captions embed alike, and it embeds no audio."""

    sample_rate = SAMPLE_RATE
    min_samples = 1024     # one STFT window at 48 kHz

    def __init__(self, model, tokenizer, *, identity: str, feature_extractor=None, crop_seed: int = 0,
                 device: str | torch.device = "cpu", batch_size: int = 16, cache_dir=None,
                 config_source: str | None = None, front_end_source: str | None = None,
                 unreadable_front_end: str | None = None, text_only: bool = False):
        from transformers import ClapFeatureExtractor

        super().__init__(batch_size=batch_size, cache_dir=cache_dir)
        if len(tokenizer) < MIN_VOCAB:
            raise ValueError(f"tokenizer has only {len(tokenizer)} tokens; expected a real RoBERTa vocabulary")
        if len(tokenizer) > model.config.text_config.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the text model only "
                             f"{model.config.text_config.vocab_size}: not this model's tokenizer")
        self.fusion = bool(model.config.audio_config.enable_fusion)
        self.features = feature_extractor or ClapFeatureExtractor(
            frequency_min=50, frequency_max=14_000, truncation="fusion" if self.fusion else "rand_trunc",
            padding="repeatpad")
        refusal, refused_as = None, CheckpointError
        if unreadable_front_end is not None:   # no extractor to check: refused as check_front_end refuses
            if not text_only:
                raise ValueError(unreadable_front_end)
            refusal, refused_as = unreadable_front_end, ValueError
        elif feature_extractor is not None:
            front_end_source = front_end_source or "feature_extractor"
            try:
                check_front_end(feature_extractor, model.config.audio_config, front_end_source)
            except ValueError as e:
                if not text_only:
                    raise
                refusal, refused_as = str(e), type(e)
        refusal = refusal or front_end_refusal(self.features, model.config.audio_config,
                                               config_source=config_source, front_end_source=front_end_source)
        if refusal and not text_only:
            raise CheckpointError(refusal)
        # why the audio tower cannot embed, for a model loaded text_only: every audio embedding is refused with
        # it, as the error loading raises without text_only (the same type and words)
        self.audio_refusal: str | None = refusal
        self._refused_as: type[ValueError] = refused_as
        self.device = torch_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.crop_seed = crop_seed
        self.identity = identity + front_end_suffix(self.features, self.fusion)
        self.embed_dim = model.config.projection_dim
        self.max_length = min(TEXT_MAX_LENGTH, model.config.text_config.max_position_embeddings - 2)
        self.config_source = config_source
        self._audio_embedded = False   # until the audio tower has embedded once (_audio_features)

    @classmethod
    def from_path(cls, path: str | os.PathLike, tokenizer: str | os.PathLike | None = None, *, config=None,
                  loaded=None, **kwargs) -> LaionClapEmbedder:
        """A LAION `.pt` file (needs `tokenizer`, in the identity by its content: `_tokenizer_content_hash`;
        `loaded`: its content, when already read; `config`: a ClapConfig to build the model of, which adds "-cfg"
        where it embeds otherwise than the one read off the weights: `pt_config_suffix`) or a transformers CLAP
        folder (tokenizer files inside it, or `tokenizer`: another tokenizer than the folder's own adds "-tok" and
        8 hex digits of its content's hash to the identity, `_tokenizer_suffix`; a config.json that embeds
        otherwise than the official folders' adds "-cfg": `model_config_suffix`)."""
        from transformers import ClapFeatureExtractor, ClapModel

        path = Path(path)
        if path.is_file():
            if tokenizer is None:
                raise ValueError(f"{path}: a LAION .pt needs the RoBERTa tokenizer folder (--tokenizer DIR)")
            model = load_laion_checkpoint(path, config, loaded=loaded)
            # the tokenizer comes from elsewhere: another one embeds captions otherwise, so it is in the identity,
            # by its content as a folder's '-tok' is (the same tokenizer in other files gives the same identity)
            tok = load_roberta_tokenizer(tokenizer)
            content = _tokenizer_content_hash(tok, Path(tokenizer))
            ident = hashlib.sha256(f"{_file_hash(path)}:{content}".encode()).hexdigest()[:16]
            if config is not None:   # another activation, epsilon, ... than its weights give embeds otherwise
                ident += pt_config_suffix(model.config, infer_clap_config(model.state_dict()))
            return cls(model, tok, identity=f"laion-clap:{ident}", config_source=str(path), **kwargs)
        if not (path / "config.json").is_file():
            raise ValueError(f"{path}: neither a LAION .pt file nor a transformers CLAP folder (no config.json)")
        try:
            model, info = ClapModel.from_pretrained(str(path), local_files_only=True, output_loading_info=True,
                                                    ignore_mismatched_sizes=True)   # refused below, with the shapes
        except Exception as e:  # noqa: BLE001 - any failure means "not a usable folder"
            raise CheckpointError(f"{path}: not a loadable transformers CLAP folder "
                                  f"({str(e).splitlines()[0][:200]})") from None
        _check_loading_info(path, info)
        weights = next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()), None)
        shards = sorted([*path.glob("model-*.safetensors"), *path.glob("pytorch_model-*.bin")])
        check_finite(model.state_dict(), str(weights or path))   # (transformers loads NaN without a word)
        if weights is not None:
            ident = f"laion-clap:{_file_hash(weights)}"
        else:   # sharded weights (or none found): every shard's hash, so two such models never share caches
            h = hashlib.sha256("".join(_file_hash(f) for f in shards or [path / "config.json"]).encode())
            ident = f"laion-clap:{h.hexdigest()[:16]}"
        ident += model_config_suffix(model.config, in_pipeline=_in_tta_pipeline(path))
        fe = unreadable = None
        if (path / "preprocessor_config.json").is_file():
            try:
                fe = ClapFeatureExtractor.from_pretrained(str(path), local_files_only=True)
            except Exception as e:  # noqa: BLE001 - transformers raises ValueError/TypeError/OSError by field
                unreadable = (f"{path / 'preprocessor_config.json'}: not a ClapFeatureExtractor configuration "
                              f"({str(e).splitlines()[0][:200]})")
                if not kwargs.get("text_only"):   # (text_only: its captions need no front end)
                    raise ValueError(unreadable) from None
        tok = load_roberta_tokenizer(tokenizer or path)
        if tokenizer is not None:
            # another tokenizer than the folder's own embeds captions otherwise (as with a .pt): in the identity;
            # the folder's own, or a copy of it, keeps the weights-only identity caches are keyed by
            ident += _tokenizer_suffix(path, Path(tokenizer), tok)
        return cls(model, tok, identity=ident, feature_extractor=fe, config_source=str(path / "config.json"),
                   front_end_source=None if fe is None else str(path / "preprocessor_config.json"),
                   unreadable_front_end=unreadable, **kwargs)

    @torch.no_grad()
    def _text_batch(self, captions: list[str]) -> torch.Tensor:
        warn_truncated(captions, [len(i) for i in self.tokenizer(captions)["input_ids"]], self.max_length)
        batch = self.tokenizer(captions, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        batch.pop("token_type_ids", None)
        return _pooled(self.model.get_text_features(input_ids=batch["input_ids"],
                                                    attention_mask=batch["attention_mask"]))

    def _refuse_audio(self) -> None:
        if self.audio_refusal:   # loaded text_only: refused as loading refuses it
            raise self._refused_as(self.audio_refusal)

    @torch.no_grad()
    def _audio_batch(self, wav: np.ndarray) -> torch.Tensor:
        # every clip draws its crop (or its fusion chunks) from crop_seed afresh: a clip longer than the window
        # embeds the same whatever batch it is in and wherever (a shared generator gave each position its own crop)
        if self.fusion:  # the extractor makes the fused global+local mels from the whole (quantised) clip
            clips = [(np.clip(w, -1, 1) * 32767.0).astype(np.int16).astype(np.float32) / 32767.0 for w in wav]
            state = np.random.get_state()
            parts = []
            try:
                for clip in clips:   # the extractor draws with numpy's global generator: reseeded per clip
                    np.random.seed(self.crop_seed)
                    parts.append(self.features([clip], sampling_rate=SAMPLE_RATE, return_tensors="pt"))
            finally:
                np.random.set_state(state)
            feats = {"input_features": torch.cat([f["input_features"] for f in parts])}
            # the extractor marks a random clip "longer" when none is (LAION does that only while training); at
            # inference LAION fuses exactly the clips longer than the window, so no clip depends on its batch
            limit = int(getattr(self.features, "nb_max_samples", 10 * SAMPLE_RATE))
            feats["is_longer"] = torch.tensor([[len(c) > limit] for c in clips])
        else:
            clips = [laion_prepare(w, np.random.default_rng(self.crop_seed)) for w in wav]
            feats = self.features(clips, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        return self._audio_features(feats["input_features"].to(self.device), feats["is_longer"].to(self.device))

    def _audio_features(self, features: torch.Tensor, is_longer: torch.Tensor) -> torch.Tensor:
        """The audio tower's embeddings of a batch of mels. A config.json whose audio tower cannot embed at all
        loads (its weights fit) and failed here with transformers' bare reason ("Given normalized_shape=[8],
        expected input with shape [*, 8], but got input of size[1, 8, 64, 64]" for `flatten_patch_embeds`
        false; a spec size or patch stride the mels do not fit): before the tower's first embedding, such a
        failure (one worded about shapes or sizes) is a CheckpointError naming the config. After it, a failure
        has another cause (the tower works whatever the batch), as have running out of memory (CPU or GPU) and a
        device or dtype mismatch at any batch, and is raised as it is."""
        try:
            out = _pooled(self.model.get_audio_features(input_features=features, is_longer=is_longer))
        except (RuntimeError, ValueError) as e:
            reason = str(e).strip()
            if (self._audio_embedded or isinstance(e, torch.cuda.OutOfMemoryError)
                    or not _SHAPE_FAILURE.search(reason) or _NOT_CONFIG_FAILURE.search(reason)):
                raise
            reason = f"transformers: {reason.splitlines()[0][:200]}"
            raise CheckpointError(_config_cannot_embed(self.config_source, reason, "e.g. flatten_patch_embeds, "
                                                       "patch_stride, spec_size")) from e
        self._audio_embedded = True
        return out


def _pooled(out) -> torch.Tensor:
    """transformers 5 returns a model output whose pooler_output is the projected embedding; 4.x a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output
