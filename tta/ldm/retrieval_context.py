"""Retrieved neighbours as the UNet's cross-attention context (Re-AudioLDM, Yuan et al. 2024, §3).

For each clip (training) or prompt (generation) the k nearest datastore entries are looked up by CLAP
similarity; each neighbour contributes its CLAP *audio* embedding, its caption's CLAP *text* embedding
and/or its *latent* summary (the neighbour's VAE latents pooled over time to L tokens, stored in the
datastore when it is built with `--vae`: acoustic features, the role AudioMAE features play in
Re-AudioLDM). `RetrievalContext` maps them to context tokens beside the FiLM-style CLAP condition:

    token(r, f)    = LayerNorm(W_f e_{r,f} + type_f + rank_r)                 f in {audio, text}, r = 0..k-1
    token(r, l, j) = LayerNorm(W_l z_{r,j} + type_l + pos_j + rank_r)         latent token j = 0..L-1
    context        = [null, neighbour 0's tokens (audio, text, latent 0..L-1), neighbour 1's, ...]
                     (B, 1 + k * (F + L), context_dim), F = CLAP features used, L = 0 without "latent"

`rank_r` is a learned embedding of the neighbour's rank (0 = nearest), `type_f` of the feature type, `pos_j` of
the latent token's time position, and `null` a learned token that always leads the sequence. `features` names
them: "audio", "text", "latent", joined with "+" ("text+latent"); "both" = "audio+text", "all" = all three.

The null path: "no retrieval" is the context `[null]` (B, 1, context_dim). During training a clip's
context is replaced, with probability `retrieval.context_dropout`, by copies of the null token (as many as
the real sequence has, so a batch stays one tensor). Attention over n identical key/value pairs returns
exactly what attention over one of them returns, so a dropped training item and a generation without a
datastore see the same function of the null token: one model serves both. The UNet itself needs no
change: `LDMConfig.context_dim` turns on its cross-attention.

Decoupled attention (`retrieval.attention: "decoupled"`, for fine-tuning a trained text-only UNet): AudioLDM's
UNets (and tta's own without a context) run each transformer block's second attention layer as self-attention.
Turning on cross-attention replaces that layer's keys and values, so the trained UNet stops computing what it
learned (v0.9.1's noise prediction moves by 3-14 % of its norm at once; bench/retrieval_attention.py). Decoupled mode keeps the UNet as
it is and adds, IP-Adapter style (Ye et al. 2023), a second attention of the same queries over the context
tokens inside every such layer, summed before its output projection:

    attn2(h) = W_o [softmax(q k_h^T / sqrt(d)) v_h + softmax(q k_c^T / sqrt(d)) v_c] + b_o,   k_c, v_c = f(tokens)

The new key / value projections belong to the context encoder (`branches`: one per attention layer; the value
parts start at zero, so before training the UNet computes exactly what it did without retrieval), and the
encoder emits the projected keys and values of every layer as one wide context tensor (B, L, sum of 2 * inner
widths), which the UNet's `attach_decoupled` processors slice. The `unet/` folder is unchanged (diffusers'
own, `context_dim` null).

Storage: the module is a tta component of its own (config.json + model.safetensors) — `retrieval/` in a
pipeline folder beside the diffusers `unet/` (whose files stay diffusers' own), `final/retrieval/` and
`checkpoints/step_N/retrieval/` in a training run. Its config records the training k, modality and
features, so `tta generate --datastore DIR` needs no other setting. A pipeline folder without
`retrieval/` is a plain (non-retrieval) model and loads as before.

Which index is searched: text->audio and audio->audio search the clips' audio embeddings, text->text the
captions' text embeddings; at generation time the query is always the prompt's text embedding (CLAP has
one joint space, so a model trained audio->audio still retrieves from text).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

Modality = Literal["text_to_audio", "text_to_text", "audio_to_audio"]
Attention = Literal["replace", "decoupled"]
MODALITIES = ("text_to_audio", "text_to_text", "audio_to_audio")
FEATURE_NAMES = ("audio", "text", "latent")
ATTENTIONS = ("replace", "decoupled")


def feature_names(features: str) -> tuple[str, ...]:
    """The neighbour features a `features` setting names, in token order: "both" = audio + text, "all" = audio +
    text + latent, else names from FEATURE_NAMES joined with "+"."""
    alias = {"both": "audio+text", "all": "audio+text+latent"}
    names = alias.get(features, features).split("+") if isinstance(features, str) else []
    if not names or any(n not in FEATURE_NAMES for n in names) or len(set(names)) != len(names):
        raise ValueError(f"retrieval.features={features!r} must name neighbour features from "
                         f"{', '.join(FEATURE_NAMES)} joined with '+' (or 'both', 'all')")
    return tuple(n for n in FEATURE_NAMES if n in names)


@dataclass(frozen=True)
class RetrievalConfig:
    """`retrieval` section of an LDM run config. Retrieval is on when `datastore` is set.

    datastore: a `tta index build` folder (built with the run's CLAP). neighbours: k per clip (>= 1 when
    on). modality: how neighbours are found while training (query embedding -> searched index).
    features: which features of each neighbour become context tokens ("audio", "text", "latent" joined with
    "+", or "both" / "all"; "latent" needs a datastore built with the run's VAE, `--vae`). context_dropout:
    chance per clip that its context is replaced by the null context. joint_dropout: chance per clip that its
    text condition and its context are dropped together (the unconditional input of "guided" context guidance;
    0 = off, and then no extra random draw is made, so runs without it are unchanged). exclude_duplicates: also
    leave out entries with the same decoded audio as the clip (its own entry, by id and by audio file, is always
    left out). exclude_related: also leave out entries related to the clip: other crops of its source file and
    mixtures built from it or that it is built from (tta.retrieval.datastore.Relation; a store built before
    sources were recorded falls back to exact duplicates, with a warning). max_neighbours: size of
    the rank embedding (the largest k the model accepts at generation). context_dim: token width
    (0 = model.class_embed_dim); `model.context_dim` is set from it when null. attention: "replace" (the
    UNet's second attention layers attend to the context instead of themselves) or "decoupled" (they keep their
    self-attention and gain a zero-started attention over the context; for fine-tuning a trained text-only UNet,
    whose `model.context_dim` stays null). learning_rate_scale: the context encoder's learning rate as a multiple
    of train.learning_rate (same schedule; fresh parameters beside a UNet fine-tuned at a low rate need more).
    """

    datastore: str = ""
    neighbours: int = 0
    modality: Modality = "text_to_audio"
    features: str = "both"
    context_dropout: float = 0.1
    joint_dropout: float = 0.0
    exclude_duplicates: bool = True
    exclude_related: bool = True
    max_neighbours: int = 10
    context_dim: int = 0
    attention: Attention = "replace"
    learning_rate_scale: float = 1.0

    def __post_init__(self) -> None:
        if not (self.learning_rate_scale > 0 and math.isfinite(self.learning_rate_scale)):
            raise ValueError(f"retrieval.learning_rate_scale={self.learning_rate_scale} must be > 0")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"retrieval.attention={self.attention!r} must be one of {', '.join(ATTENTIONS)}")
        if self.modality not in MODALITIES:
            raise ValueError(f"retrieval.modality={self.modality!r} must be one of {', '.join(MODALITIES)}")
        feature_names(self.features)
        if self.neighbours < 0 or self.max_neighbours < 1 or self.context_dim < 0:
            raise ValueError(f"retrieval.neighbours={self.neighbours} must be >= 0, retrieval.max_neighbours="
                             f"{self.max_neighbours} >= 1 and retrieval.context_dim={self.context_dim} >= 0")
        if not 0 <= self.context_dropout < 1:
            raise ValueError(f"retrieval.context_dropout={self.context_dropout} must be in [0, 1)")
        if not 0 <= self.joint_dropout < 1:
            raise ValueError(f"retrieval.joint_dropout={self.joint_dropout} must be in [0, 1)")
        if self.neighbours and not self.datastore:
            raise ValueError(f"retrieval.neighbours={self.neighbours} needs a datastore "
                             "(--datastore DIR or retrieval.datastore)")
        if self.datastore and self.neighbours < 1:
            raise ValueError(f"retrieval.datastore={self.datastore} needs retrieval.neighbours >= 1 (--neighbours K)")
        if self.neighbours > self.max_neighbours:
            raise ValueError(f"retrieval.neighbours={self.neighbours} exceeds retrieval.max_neighbours="
                             f"{self.max_neighbours}")

    @property
    def enabled(self) -> bool:
        return bool(self.datastore)


@dataclass(frozen=True)
class RetrievalContextConfig:
    """The context encoder's own config (saved with its weights)."""

    embed_dim: int = 512           # CLAP embedding width D
    context_dim: int = 512         # token width = the UNet's cross-attention width
    max_neighbours: int = 10       # rank embeddings
    features: str = "both"
    modality: Modality = "text_to_audio"   # how the model was trained (decides the index searched)
    neighbours: int = 3            # k used in training: the default k at generation
    attention: Attention = "replace"
    branches: dict[str, int] = field(default_factory=dict)  # decoupled: attention layer -> inner width
    latent_tokens: int = 0         # "latent" feature: tokens per neighbour, their width, the VAE they come from
    latent_dim: int = 0
    latent_vae: str = ""

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES or self.attention not in ATTENTIONS:
            raise ValueError(f"modality={self.modality!r} / attention={self.attention!r} not supported")
        uses_latent = "latent" in feature_names(self.features)
        if uses_latent != (self.latent_tokens > 0 and self.latent_dim > 0 and bool(self.latent_vae)):
            raise ValueError(f"features={self.features!r}: latent_tokens, latent_dim and latent_vae must be set "
                             f"exactly when the latent feature is used (got {self.latent_tokens}, "
                             f"{self.latent_dim}, {self.latent_vae!r})")
        if (self.attention == "decoupled") != bool(self.branches) or any(d < 1 for d in self.branches.values()):
            raise ValueError("a decoupled context encoder needs its attention layers' widths (branches), "
                             f"and only it: attention={self.attention!r}, {len(self.branches)} branches")
        if min(self.embed_dim, self.context_dim, self.max_neighbours, self.neighbours) < 1:
            raise ValueError("embed_dim, context_dim, max_neighbours and neighbours must be >= 1")
        if self.neighbours > self.max_neighbours:
            raise ValueError(f"neighbours={self.neighbours} exceeds max_neighbours={self.max_neighbours}")

    @property
    def feature_names(self) -> tuple[str, ...]:
        return feature_names(self.features)

    @property
    def clap_features(self) -> tuple[str, ...]:
        return tuple(f for f in self.feature_names if f != "latent")

    @property
    def tokens_per_neighbour(self) -> int:
        return len(self.clap_features) + self.latent_tokens

    @property
    def width(self) -> int:
        """Width of the context tensor the encoder emits: the token width, or (decoupled) every layer's keys
        and values side by side."""
        return 2 * sum(self.branches.values()) if self.branches else self.context_dim

    @property
    def index(self) -> str:
        """The datastore index searched: "text" for text->text, else "audio"."""
        return "text" if self.modality == "text_to_text" else "audio"


class RetrievalContext(nn.Module):
    """Neighbour embeddings -> cross-attention context.

    forward(features {"audio"/"text": (B, k, D), "latent": (B, k, L, latent_dim)}, keep (B,) bool | None)
    -> (B, 1 + k * (F + L), width); items with keep False get the null context (copies of the null token).
    width is context_dim, or with decoupled attention the tokens' keys and values for every attention layer
    (`config.width`).
    """

    config_class = RetrievalContextConfig

    def __init__(self, config: RetrievalContextConfig):
        super().__init__()
        self.config = config
        c, names = config.context_dim, config.feature_names
        self.proj = nn.ModuleDict({f: nn.Linear(config.latent_dim if f == "latent" else config.embed_dim, c)
                                   for f in names})
        if config.latent_tokens:
            self.latent_position = nn.Parameter(torch.randn(config.latent_tokens, c) * 0.02)
        self.type_embedding = nn.Parameter(torch.randn(len(names), c) * 0.02)
        self.rank_embedding = nn.Parameter(torch.randn(config.max_neighbours, c) * 0.02)
        self.null_token = nn.Parameter(torch.randn(c) * 0.02)
        self.norm = nn.LayerNorm(c)
        self.branch = None
        if config.branches:   # decoupled: every layer's key and value projections in one matrix, values at zero
            self.branch = nn.Linear(c, config.width, bias=False)
            with torch.no_grad():
                for start, width in _slices(config.branches):
                    self.branch.weight[start + width:start + 2 * width].zero_()

    def _emit(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens if self.branch is None else self.branch(tokens)

    def null_context(self, batch_size: int) -> torch.Tensor:
        """(batch_size, 1, width): the context of "no retrieval"."""
        return self._emit(self.null_token.view(1, 1, -1)).expand(batch_size, 1, -1)

    def forward(self, features: dict[str, torch.Tensor], keep: torch.Tensor | None = None) -> torch.Tensor:
        names = self.config.feature_names
        missing = [f for f in names if f not in features]
        if missing:
            raise ValueError(f"RetrievalContext needs neighbour features {names}, missing {missing}")
        cfg = self.config
        for f in names:
            want = (cfg.latent_tokens, cfg.latent_dim) if f == "latent" else (cfg.embed_dim,)
            got = tuple(features[f].shape)
            if len(got) != 2 + len(want) or got[2:] != want or got[:2] != tuple(features[names[0]].shape[:2]):
                raise ValueError(f"neighbour feature {f!r} must be (B, k, {', '.join(map(str, want))}), got {got}")
        b, k = features[names[0]].shape[:2]
        if k > cfg.max_neighbours:
            raise ValueError(f"k={k} neighbours exceed this model's max_neighbours={cfg.max_neighbours}")
        dtype = self.null_token.dtype
        parts = []
        for i, f in enumerate(names):
            x = self.proj[f](features[f].to(dtype)) + self.type_embedding[i]
            parts.append(x + self.latent_position if f == "latent" else x.unsqueeze(2))   # (B, k, n_f, C)
        tokens = torch.cat(parts, dim=2)                                       # (B, k, F + L, C)
        tokens = self.norm(tokens + self.rank_embedding[:k].view(1, k, 1, -1))
        tokens = tokens.flatten(1, 2)                                          # (B, k * (F + L), C), rank-major
        if keep is not None:
            null = self.null_token.view(1, 1, -1).to(tokens)
            tokens = torch.where(keep.view(-1, 1, 1).to(tokens.device), tokens, null)
        return self._emit(torch.cat([self.null_token.view(1, 1, -1).expand(b, 1, -1).to(tokens), tokens], dim=1))


def context_config(retrieval: RetrievalConfig, embed_dim: int, context_dim: int,
                   branches: dict[str, int] | None = None, latent: dict | None = None) -> RetrievalContextConfig:
    """The encoder config of a run; `latent` is the datastore's latent record (needed with the "latent"
    feature: its token count and width become the encoder's)."""
    lat = {}
    if "latent" in feature_names(retrieval.features):
        if not latent:
            raise ValueError(f"retrieval.features={retrieval.features!r} uses neighbour latents, but datastore "
                             f"{retrieval.datastore} holds none; rebuild it with `tta index build ... --vae DIR`")
        lat = {"latent_tokens": int(latent["tokens"]), "latent_dim": int(latent["dim"]),
               "latent_vae": str(latent["vae_identity"])}
    return RetrievalContextConfig(embed_dim=embed_dim, context_dim=context_dim,
                                  max_neighbours=retrieval.max_neighbours, features=retrieval.features,
                                  modality=retrieval.modality, neighbours=retrieval.neighbours,
                                  attention=retrieval.attention, branches=dict(branches or {}), **lat)


def _slices(branches: dict[str, int]):
    """(start, inner width) of each layer's keys in the decoupled context; its values follow its keys."""
    start = 0
    for width in branches.values():
        yield start, width
        start += 2 * width


def attention_layers(unet) -> dict[str, int]:
    """The UNet's second attention layers (name -> inner width): where decoupled attention adds its branch."""
    from diffusers.models.attention import BasicTransformerBlock

    return {f"{name}.attn2": block.attn2.inner_dim for name, block in unet.net.named_modules()
            if isinstance(block, BasicTransformerBlock) and block.attn2 is not None}


class DecoupledAttention:
    """Attention processor of one second attention layer with a decoupled context branch (see the module
    docstring). A plain object, not a module: the UNet's state dict and its diffusers folder stay unchanged.
    Without a context (encoder_hidden_states None) it is exactly the layer's self-attention."""

    def __init__(self, start: int, width: int):
        self.start, self.width = start, width

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        import torch.nn.functional as F

        b, n, _ = hidden_states.shape
        heads = attn.heads
        split = lambda x: x.view(b, x.shape[1], heads, -1).transpose(1, 2)   # noqa: E731  (B, H, L, d)
        q = split(attn.to_q(hidden_states))
        out = F.scaled_dot_product_attention(q, split(attn.to_k(hidden_states)), split(attn.to_v(hidden_states)))
        if encoder_hidden_states is not None:
            kv = encoder_hidden_states[..., self.start:self.start + 2 * self.width].to(q.dtype)
            out = out + F.scaled_dot_product_attention(q, split(kv[..., :self.width]), split(kv[..., self.width:]))
        out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).reshape(b, n, -1)))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def attach_decoupled(unet, config: RetrievalContextConfig) -> None:
    """Give the UNet's second attention layers the decoupled context branch of a context encoder with this
    config (its `branches` must name exactly those layers and widths); afterwards `unet(..., context)` takes the
    encoder's wide context tensor."""
    layers = attention_layers(unet)
    if layers != dict(config.branches):
        raise ValueError(f"retrieval/ was trained for {len(config.branches)} attention layers that do not match "
                         f"this UNet's {len(layers)} (names or widths differ)")
    modules = dict(unet.net.named_modules())
    for (name, _), (start, width) in zip(layers.items(), _slices(layers)):
        attn = modules[name]
        if attn.spatial_norm is not None or attn.group_norm is not None or attn.norm_q is not None:
            raise ValueError(f"{name}: decoupled retrieval attention supports plain attention layers only")
        attn.set_processor(DecoupledAttention(start, width))
    unet.decoupled_width = config.width


def entries_needed(k: int, *, exclude_self: bool = False) -> int:
    """The datastore entries k neighbours need: one more where the query clip itself is left out (training)."""
    return k + 1 if exclude_self else k


def open_store(store, clap, k: int, *, exclude_self: bool = False, latent_vae: str = ""):
    """A Datastore (loaded from a folder path unless already one), checked against `clap` and `k`.

    exclude_self: the query clip is left out while training, so one more entry than k is needed.
    latent_vae: the model reads neighbour latents of this VAE (identity), which the store must hold.
    """
    from tta.retrieval.datastore import Datastore, DatastoreError

    if not hasattr(store, "query"):
        store = Datastore.load(store)
    store.check_clap(clap)
    if latent_vae:
        store.check_latents(latent_vae)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"neighbours={k!r} must be a positive int")
    if entries_needed(k, exclude_self=exclude_self) > store.count:
        extra = " (+1: the query clip itself is excluded in training)" if exclude_self else ""
        raise DatastoreError(f"{store.folder}: k={k} neighbours{extra} but the datastore holds only "
                             f"{store.count} entries")
    return store


def neighbour_features(store, rows: np.ndarray, names: tuple[str, ...], device) -> dict[str, torch.Tensor]:
    """Stored features of the neighbour rows (B, k) -> {"audio"/"text": (B, k, D), "latent": (B, k, L, W)}
    float32 tensors."""
    return {f: torch.from_numpy(store.latents(rows) if f == "latent" else store.embeddings(rows, f)).to(device)
            for f in names}


@dataclass
class TrainingExclusions:
    """Per training row (dataset order): its resolved audio file and, with `retrieval.exclude_related`, its
    Relation; `duplicates` forces exact-duplicate exclusion (the fallback of a store without sources)."""

    paths: list[str]
    relations: list | None = None
    duplicates: bool = False
    hashes: list | None = None   # decoded-audio hashes of the clips the store holds under another id and file

    def of(self, rows) -> dict:
        """Datastore.query exclusion arguments for the batch's dataset rows `rows`."""
        out: dict = {"exclude_paths": [self.paths[i] for i in rows]}
        if self.hashes is not None:
            out["exclude_hashes"] = [self.hashes[i] for i in rows]
        if self.relations is not None:
            out["exclude_related"] = [self.relations[i] for i in rows]
        if self.duplicates:
            out["exclude_duplicates"] = True
        return out


def training_exclusions(store, rows, paths, retrieval: RetrievalConfig, sample_rate: int) -> TrainingExclusions:
    """What training leaves out of each clip's neighbours besides its own id (manifest `rows` and their audio
    `paths`, the training dataset's): its audio file, its decoded audio (for clips the store holds under
    neither their id nor their file, a copy of the corpus: hashed at the CLAP's `sample_rate` as the store
    hashes its entries) and (exclude_related) its related clips. Logs how many training clips the store holds
    by id, by audio file and by audio only, warns when it holds some only under other ids or files (a renamed
    or re-imported manifest: exclusion by id alone would return the clip itself), and refuses, naming the
    clip, a store that leaves some clip fewer than k neighbours."""
    from tta.retrieval.datastore import DatastoreError, clip_hashes, relations_of_rows

    paths = [os.path.realpath(p) for p in paths]   # as the store resolves its own (clip_path)
    by_id = sum(r.id in store.row_of for r in rows)
    by_path = sum(p in store.rows_of_path for p in paths)
    renamed = sum(p in store.rows_of_path and r.id not in store.row_of for r, p in zip(rows, paths))
    unseen = [i for i, (r, p) in enumerate(zip(rows, paths)) if r.id not in store.row_of and p not in store.rows_of_path]
    hashes = None
    copies = 0
    if unseen:   # neither id nor file in the store: is the same audio there under other names?
        log.info("retrieval: hashing the audio of %d training clips the datastore does not hold by id or file",
                 len(unseen))
        hashes = [None] * len(rows)
        for i, h in zip(unseen, clip_hashes([paths[i] for i in unseen], sample_rate, store.max_seconds)):
            if h in store.rows_of_hash:
                hashes[i] = h
                copies += 1
        if not copies:
            hashes = None
    log.info("retrieval: datastore %s holds %d of the %d training clips by id, %d by audio file, %d by decoded "
             "audio only", store.folder, by_id, len(rows), by_path, copies)
    if renamed or copies:
        log.warning("retrieval: datastore %s holds %d training clips under other ids than the training manifest's "
                    "(%d by the same audio file, %d as copies of the audio; built from %s): they are excluded by "
                    "file and audio, but check that the store was built from this manifest", store.folder,
                    renamed + copies, renamed, copies, store.manifest or "an unknown manifest")
    relations, duplicates = None, False
    if retrieval.exclude_related:
        relations = relations_of_rows(rows, paths)
        if not store.has_sources:
            store.warn_without_sources()
            duplicates = True
    for i, (r, p) in enumerate(zip(rows, paths)):   # k neighbours must remain for every clip, checked now
        left = store.count - len(store.excluded_rows(
            exclude_id=r.id, exclude_path=p, exclude_hash=hashes[i] if hashes else None,
            related=relations[i] if relations else None, duplicates=duplicates or retrieval.exclude_duplicates))
        if left < retrieval.neighbours:
            raise DatastoreError(f"{store.folder}: training clip {r.id} ({p}) leaves only {left} datastore entries "
                                 f"once itself and its related clips are excluded, fewer than "
                                 f"neighbours={retrieval.neighbours}: use a larger store or fewer neighbours")
    return TrainingExclusions(paths, relations, duplicates, hashes)


def training_context(module, store, retrieval: RetrievalConfig, ids: list[str], query_emb: torch.Tensor,
                     device, exclude: dict | None = None, drop: torch.Tensor | None = None) -> torch.Tensor:
    """Context (B, 1 + k * (F + L), C) for a training batch: neighbours of each clip (its own entry and, with
    `exclude_duplicates`, entries with the same audio excluded; `exclude`: more Datastore.query exclusions,
    `TrainingExclusions.of`), dropped per clip with probability `context_dropout` (draws from the global,
    resumable torch RNG) and wherever `drop` (B,) is True (joint dropout). `module` is the RetrievalContext as
    prepared for training (possibly wrapped for distributed data parallel: it is called as given, so its
    gradients are synchronised)."""
    cfg = getattr(module, "module", module).config
    kwargs = {"exclude_duplicates": retrieval.exclude_duplicates, **(exclude or {})}
    hits = store.query(query_emb.float().cpu(), retrieval.neighbours, cfg.index, exclude_ids=[[i] for i in ids],
                       **kwargs)
    keep = torch.rand(len(ids)) >= retrieval.context_dropout
    if drop is not None:
        keep &= ~drop.cpu()
    return module(neighbour_features(store, hits.indices, cfg.feature_names, device), keep.to(device))


_warned_k: set[tuple[int, int]] = set()


@torch.no_grad()
def prompt_context(module: RetrievalContext, store, text_emb: torch.Tensor, k: int) -> tuple[torch.Tensor, list]:
    """Context (P, 1 + k * (F + L), C) for prompts' CLAP text embeddings (P, D), and per prompt its neighbours
    as [{"rank", "id", "caption", "score"}]."""
    cfg = module.config
    if k > cfg.max_neighbours:
        raise ValueError(f"neighbours={k} exceeds the model's max_neighbours={cfg.max_neighbours}")
    if k > cfg.neighbours and (cfg.neighbours, k) not in _warned_k:
        _warned_k.add((cfg.neighbours, k))
        log.warning("neighbours=%d is more than the k=%d this model was trained with: the rank embeddings of "
                    "neighbours %d..%d never received a gradient", k, cfg.neighbours, cfg.neighbours + 1, k)
    hits = store.query(text_emb.float().cpu(), k, cfg.index)
    device = module.null_token.device
    context = module(neighbour_features(store, hits.indices, cfg.feature_names, device))
    found = [[{"rank": r + 1, "id": i, "caption": c, "score": round(float(s), 6)}
              for r, (i, c, s) in enumerate(zip(ids, caps, sc))]
             for ids, caps, sc in zip(hits.ids, hits.captions, hits.scores)]
    return context, found
