"""tta's own CLAP: audio tower + text tower + projections into a 512-d joint space, trained with a
symmetric InfoNCE loss over in-batch negatives and a learnable temperature (CLIP, Radford et al. 2021;
CLAP, Elizalde et al. 2023 / Wu et al. 2023).

`TTAClap` is a component (config.json + model.safetensors via tta.checkpoint); `TTAClapEmbedder` wraps a
trained one in the shared `ClapEmbedder` interface.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tta.audio import MelConfig
from tta.clap.encoder import ClapEmbedder
from tta.clap.towers import AudioTower, AudioTowerConfig, TextTower, TextTowerConfig
from tta.device import torch_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClapConfig:
    mel: MelConfig = field(default_factory=MelConfig)      # the project's mel space (AudioLDM 16 kHz / 64)
    audio: AudioTowerConfig = field(default_factory=AudioTowerConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    joint_dim: int = 512                                   # width of the shared embedding space
    init_temperature: float = 0.07                         # logit_scale starts at log(1 / 0.07), as CLIP
    max_logit_scale: float = 100.0                         # exp(logit_scale) is clamped to this

    def __post_init__(self) -> None:
        if self.joint_dim <= 0:
            raise ValueError(f"joint_dim={self.joint_dim} must be > 0")
        if not 0 < self.init_temperature < 1:
            raise ValueError(f"init_temperature={self.init_temperature} must be in (0, 1)")
        if self.max_logit_scale <= 1:
            raise ValueError(f"max_logit_scale={self.max_logit_scale} must be > 1")


def projection(d_in: int, d_out: int) -> nn.Sequential:
    """LAION-CLAP's projection head: Linear -> ReLU -> Linear."""
    return nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU(), nn.Linear(d_out, d_out))


class TTAClap(nn.Module):
    config_class = ClapConfig

    def __init__(self, config: ClapConfig):
        super().__init__()
        self.audio = AudioTower(config.audio, config.mel)
        self.text = TextTower(config.text)
        if config.text.source == "minilm" and not config.text.sha256:
            config = replace(config, text=replace(config.text, sha256=self.text.sha256))
        self.config = config
        self.audio_projection = projection(config.audio.hidden_dim, config.joint_dim)
        self.text_projection = projection(self.text.hidden_size, config.joint_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.init_temperature)))

    # -- embeddings ---------------------------------------------------------------------------

    def encode_audio(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, T) at config.mel.sample_rate -> (B, joint_dim), L2-normalised."""
        return F.normalize(self.audio_projection(self.audio(wav)), dim=-1)

    def encode_text(self, captions: list[str], warn: bool = False) -> torch.Tensor:
        """captions -> (B, joint_dim), L2-normalised."""
        return F.normalize(self.text_projection(self.text(captions, warn=warn)), dim=-1)

    def forward(self, wav: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_audio(wav), self.encode_text(captions)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=self.config.max_logit_scale)

    # -- checkpoints: frozen pretrained text weights stay in their package --------------------

    def _frozen_keys(self) -> list[str]:
        return self.text.frozen_state_keys("text.")

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        out = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        for k in self._frozen_keys():
            out.pop(prefix + k, None)
        return out

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        full = dict(state_dict)
        own = super().state_dict()
        for k in self._frozen_keys():
            full.setdefault(k, own[k])
        self.text.clear_memo()
        return super().load_state_dict(full, strict=strict, assign=assign)


def contrastive_loss(audio_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
                     audio_to_text: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over in-batch negatives (mean of the audio->text and text->audio terms).

    audio_emb (B, D) and text_emb (U, D): L2-normalised; logit_scale: scalar (already exponentiated).
    audio_to_text (B,): index of each clip's caption among the U texts (default: the diagonal, U == B).
    Clips that share a caption (U < B) are all positives of that caption, never false negatives of it:
    its text->audio term is -log of the softmax mass on all its clips.
    """
    logits = logit_scale * audio_emb @ text_emb.t()                    # (B, U)
    if audio_to_text is None:
        audio_to_text = torch.arange(logits.shape[0], device=logits.device)
    a2t = F.cross_entropy(logits, audio_to_text)
    positive = audio_to_text[None, :] == torch.arange(text_emb.shape[0], device=logits.device)[:, None]  # (U, B)
    t_logits = logits.t()
    t2a = (torch.logsumexp(t_logits, dim=1)
           - torch.logsumexp(t_logits.masked_fill(~positive, float("-inf")), dim=1)).mean()
    return 0.5 * (a2t + t2a)


def state_identity(model: nn.Module) -> str:
    """Short content hash of a model's saved weights (names, shapes, bytes), and for a TTAClap whose mel front end
    or text max_length is not the default, a hash of those too ("-fe" + 8 hex digits): the same weights read
    through another front end embed differently, so they must not share caches or datastores. Default front ends
    keep the weights-only identity that existing stores and caches are keyed by."""
    import hashlib
    import json
    from dataclasses import asdict

    from tta.checkpoint import weights_hash

    identity = weights_hash(model.state_dict())
    config = getattr(model, "config", None)
    if isinstance(config, ClapConfig):
        front = {}
        if config.mel != MelConfig():
            front["mel"] = asdict(config.mel)
        if config.text.max_length != TextTowerConfig().max_length:
            front["text.max_length"] = config.text.max_length
        if front:
            identity += "-fe" + hashlib.sha256(json.dumps(front, sort_keys=True).encode()).hexdigest()[:8]
    return identity


class TTAClapEmbedder(ClapEmbedder):
    """The shared interface over a `TTAClap` (16 kHz; at least one STFT window of audio)."""

    def __init__(self, model: TTAClap, *, identity: str | None = None, device: str | torch.device = "cpu",
                 batch_size: int = 32, cache_dir: str | os.PathLike | None = None):
        super().__init__(batch_size=batch_size, cache_dir=cache_dir)
        self.device = torch_device(device)
        self.model = model.to(self.device).eval()
        self.sample_rate = model.config.mel.sample_rate
        self.min_samples = model.config.mel.n_fft
        self.embed_dim = model.config.joint_dim
        self.identity = identity or f"tta-clap:{state_identity(model)}"

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, **kwargs) -> TTAClapEmbedder:
        """Load a TTAClap component folder (or a run folder, whose final/ is used)."""
        from tta.checkpoint import CONFIG_NAME, load_component

        folder = Path(folder)
        if (folder / "final" / CONFIG_NAME).is_file():
            folder = folder / "final"
        model = load_component(folder, TTAClap)
        # identity from the loaded tensors, not the file bytes: safetensors files of equal weights may
        # differ (header order), and a pipeline's text_encoder/ copy must keep its CLAP's identity
        return cls(model, **kwargs)

    @torch.no_grad()
    def _text_batch(self, captions: list[str]) -> torch.Tensor:
        return self.model.encode_text(captions, warn=True)

    @torch.no_grad()
    def _audio_batch(self, wav: np.ndarray) -> torch.Tensor:
        return self.model.encode_audio(torch.from_numpy(wav).to(self.device))
