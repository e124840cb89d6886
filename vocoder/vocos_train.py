"""`tta train vocos`: train the Vocos-style vocoder (vocoder/vocos.py) with HiFi-GAN's recipe.

The loop, the discriminators (MPD + MSD), the losses (LSGAN + 2 x feature matching + 45 x mel L1), the
optimizers, learning-rate decays, validation and samples are `tta train vocoder`'s (vocoder/train.py); only
the generator differs: ConvNeXt blocks at the mel frame rate and an inverse STFT instead of HiFi-GAN's
upsampling stacks, so a step costs less on a CPU. final/ is a `vocoder.vocos.Vocos` component, loadable
wherever a vocoder is (`tta export pipeline ... --vocoder RUN`, `bench/vocoder.py --run RUN`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vocoder import train as hifigan_train
from vocoder.vocos import Vocos, VocosConfig


@dataclass(frozen=True)
class RunConfig(hifigan_train.RunConfig):
    model: VocosConfig = field(default_factory=VocosConfig)

    def build_generator(self) -> torch.nn.Module:
        return Vocos(self.model)


check_start = hifigan_train.check_start   # what `train` refuses before its first step: the vocoder's


def train(config: RunConfig, out: str | os.PathLike, *, resume: bool = False, progress: bool = True) -> Path:
    """Train (or resume) a Vocos run in `out`; returns the final/ component folder."""
    from tta.training import check_run_config

    return hifigan_train.train(check_run_config(config, RunConfig), out, resume=resume, progress=progress)
