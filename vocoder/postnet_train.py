"""`tta train postnet`: fit `PostnetGriffinLim`'s magnitude post-net on random segments of a manifest.

Each step: wav segment (B, T) -> `tta.audio.log_mel` -> post-net log magnitude, compared with the true
STFT magnitude of the same segment (the STFT that `log_mel` is built on) by `magnitude_loss`: L1 of log
magnitudes plus spectral convergence. Griffin-Lim itself is not in the loss; it only runs at validation.

With `vae` set (a MelVAE component, run or pipeline folder in the same mel space), the first
round(vae_fraction x B) mels of every batch are replaced by the VAE's reconstruction of them (posterior
mode) before the post-net sees them, while the target stays the clean magnitude. The post-net then learns
to undo part of the VAE decoder's smoothing too, as HiFi-GAN is fine-tuned on a text-to-speech model's
mels (Kong et al. 2020, sec. 4.4). The VAE is loaded by its component config (no training of it).

With `adversarial` > 0, from optimizer step `disc_start` on, a patch discriminator on log-magnitude
spectrograms (`SpectrogramDiscriminator`) is trained against the post-net (least-squares GAN, as HiFi-GAN
and the VAE's PatchGAN), and the post-net gets `adversarial` x its generator loss plus `feature_matching`
x the L1 between the discriminator's features of real and predicted magnitudes. The regression losses
alone predict the mean of the detail a mel band hides, a smooth magnitude; the discriminator asks for
detail that looks real. It sees the magnitude, not the waveform, and one random window of
`discriminator.crop_frames` frames per batch, so it stays cheap on a CPU (Griffin-Lim still finds the phase).

Every `train.validate_every` steps (and after the last) the first `valid_items` held-out clips are
inverted: log-magnitude L1 and spectral convergence of the post-net and of the plain NNLS inversion it
starts from (`nnls_` metrics), and with a VAE the same from the VAE's reconstruction (`vae_`, `vae_nnls_`),
go to metrics.jsonl (split "valid"); a few Griffin-Lim wavs + spectrogram PNGs go to RUN/samples/step_N/.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn import functional as F

from tta.audio import log_mel
from tta.data.manifest import DataConfig
from tta.training import TrainConfig, TrainingRun, check_run_config, make_optimizer, make_warmup_scheduler
from vocoder.postnet import PostnetGriffinLim, PostnetGriffinLimConfig, magnitude_loss
from vocoder.train import _safe, held_out_set, load_frozen_vae, log_valid, through_vae, write_sample
# what `train` refuses before its first step (its frozen `vae`, its held-out split): the vocoder's, same fields
from vocoder.train import check_start as check_start

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpectrogramDiscriminatorConfig:
    channels: tuple[int, ...] = (16, 32, 64, 64)     # one 2-D conv per entry, stride 2 in frequency and time
    kernel_size: int = 5
    leaky_relu_slope: float = 0.2
    crop_frames: int = 64      # one random window of this many frames per batch (0 = the whole segment)

    def __post_init__(self) -> None:
        if not self.channels or min(self.channels) <= 0:
            raise ValueError(f"discriminator.channels={list(self.channels)} must be positive widths")
        if self.kernel_size <= 0 or self.kernel_size % 2 == 0:
            raise ValueError(f"discriminator.kernel_size={self.kernel_size} must be a positive odd number")
        if self.crop_frames < 0:
            raise ValueError(f"discriminator.crop_frames={self.crop_frames} must be >= 0")


class SpectrogramDiscriminator(torch.nn.Module):
    """(B, bins, frames) log magnitude -> (patch logits (B, 1, f', t'), features of every layer)."""

    config_class = SpectrogramDiscriminatorConfig

    def __init__(self, config: SpectrogramDiscriminatorConfig):
        super().__init__()
        self.config = config
        k = config.kernel_size
        widths = (1, *config.channels)
        self.convs = torch.nn.ModuleList(
            torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv2d(a, b, k, stride=2, padding=k // 2))
            for a, b in itertools.pairwise(widths))
        self.out = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv2d(widths[-1], 1, 3, padding=1))

    def forward(self, log_mag: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = log_mag.unsqueeze(1)
        features = []
        for conv in self.convs:
            h = F.leaky_relu(conv(h), self.config.leaky_relu_slope)
            features.append(h)
        return self.out(h), features


@dataclass(frozen=True)
class RunConfig:
    model: PostnetGriffinLimConfig = field(default_factory=PostnetGriffinLimConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(segment_seconds=2.56))  # 256 mel frames
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        learning_rate=1e-3, weight_decay=0.01, grad_clip=1.0, batch_size=16, lr_schedule="cosine"))
    spectral_convergence: float = 1.0  # weight of the spectral-convergence term beside the log-magnitude L1
    vae: str = ""                      # MelVAE component, run or pipeline folder whose reconstructions are
                                       # mixed into the inputs ("" = clean mels only)
    vae_fraction: float = 0.5          # share of each batch fed through the VAE first (with `vae`)
    adversarial: float = 0.0           # weight of the discriminator's generator loss (0 = no discriminator)
    feature_matching: float = 0.0      # weight of the discriminator feature-matching L1 (with adversarial)
    disc_start: int = 0                # optimizer step at which the discriminator starts
    discriminator: SpectrogramDiscriminatorConfig = field(default_factory=SpectrogramDiscriminatorConfig)
    valid_items: int = 16              # held-out clips inverted at each validation (0 = no validation)
    valid_seconds: float = 4.0         # at most this much of each held-out clip (from its start)
    sample_items: int = 2              # of those, how many get a Griffin-Lim wav + PNG in samples/step_N/

    def __post_init__(self) -> None:
        if not 0 <= self.vae_fraction <= 1:
            raise ValueError(f"vae_fraction={self.vae_fraction} must be in [0, 1]")
        for name in ("spectral_convergence", "adversarial", "feature_matching", "disc_start"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if self.adversarial and self.train.gradient_accumulation_steps != 1:
            raise ValueError("train.gradient_accumulation_steps must be 1 with the discriminator "
                             "(adversarial > 0)")
        if self.valid_items < 0 or not 0 <= self.sample_items <= self.valid_items:
            raise ValueError(f"need valid_items >= 0 and 0 <= sample_items <= valid_items, got "
                             f"{self.valid_items} and {self.sample_items}")
        if self.valid_seconds <= 0:
            raise ValueError(f"valid_seconds={self.valid_seconds} must be > 0")
        mel = self.model.mel
        if round(self.data.segment_seconds * mel.sample_rate) < mel.n_fft:
            raise ValueError(f"data.segment_seconds={self.data.segment_seconds} is shorter than one STFT "
                             f"frame (mel.n_fft = {mel.n_fft} samples)")


def targets(model: PostnetGriffinLim, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-mel, true linear STFT magnitude) of wav (B, T), frame-aligned: (B, n_mels, F), (B, bins, F)."""
    mel = log_mel(wav, model.config.mel).float()
    mag = model._stft(wav.float()).abs()[..., : mel.shape[-1]]
    return mel, mag


def train(config: RunConfig, out: str | os.PathLike, *, resume: bool = False, progress: bool = True) -> Path:
    """Train (or resume) a post-net run in `out`; returns the final/ component folder."""
    from tta.data.dataset import AudioDataset

    config = check_run_config(config, RunConfig)
    mel_cfg = config.model.mel
    vae = load_frozen_vae(config.vae, mel_cfg) if config.vae else None      # before the run folder exists
    train_set = AudioDataset.from_config(config.data, config.data.train_split, mel_cfg.sample_rate,
                                         random_crop=True)
    run = TrainingRun(out, config, config.train, resume=resume, progress=progress)
    valid_set = None
    if config.valid_items:
        valid_set = held_out_set(config.data, mel_cfg.sample_rate, config.valid_seconds)
    run.check_audio(train_set, valid_set)

    model = PostnetGriffinLim(config.model)
    optimizer = make_optimizer(model.parameters(), config.train)
    scheduler = make_warmup_scheduler(optimizer, config.train)
    model, optimizer = run.prepare(model, optimizer)
    tracked = {"model": model, "optimizer": optimizer, "scheduler": scheduler}
    disc = None
    if config.adversarial:
        disc = SpectrogramDiscriminator(config.discriminator)
        opt_d = make_optimizer(disc.parameters(), config.train)
        sched_d = make_warmup_scheduler(opt_d, config.train)
        disc, opt_d = run.prepare(disc, opt_d)
        tracked.update(discriminator=disc, optimizer_d=opt_d, scheduler_d=sched_d)
    run.track(**tracked)
    ema = run.make_ema("model", model)
    run.init_subfolders.update(model="vocoder", discriminator=None)   # --init-from a pipeline: its vocoder/
    run.restore()
    if vae is not None:
        vae.to(run.device)
    model.train()

    hop = mel_cfg.hop_length

    def do_validate() -> None:
        # the weights final/ will hold: the EMA's when there is one
        scored = ema.averaged(run.unwrap(model)) if ema is not None and run.is_main else model
        validate(run, scored, valid_set, config, vae)

    if run.missed_validation(config.train.validate_every) and valid_set is not None:
        do_validate()   # stopped between a checkpoint and its validation
    for batch in run.batches(train_set):
        wav = batch["wav"]
        wav = wav[:, : wav.shape[-1] // hop * hop]
        mel, target = targets(run.unwrap(model), wav)
        through = 0
        if vae is not None:
            through = round(config.vae_fraction * mel.shape[0])
            if through:
                mel = torch.cat([through_vae(vae, mel[:through]), mel[through:]])
        logged = {}
        with run.accumulate(model):
            log_mag = run.unwrap(model).log_magnitude(mel)
            loss, parts = magnitude_loss(log_mag, target, config.model.floor, config.spectral_convergence)
            if disc is not None and run.step >= config.disc_start:
                floor = math.log(config.model.floor)
                real, fake = torch.log(target.clamp_min(config.model.floor)), log_mag.clamp_min(floor)
                crop = config.discriminator.crop_frames
                if 0 < crop < real.shape[-1]:       # one window for the batch, from the step's RNG stream
                    start = int(torch.randint(0, real.shape[-1] - crop + 1, ()))
                    real, fake = real[..., start: start + crop], fake[..., start: start + crop]
                real_logits, _ = disc(real)
                fake_logits, _ = disc(fake.detach())
                loss_d = ((real_logits - 1) ** 2).mean() + (fake_logits ** 2).mean()
                opt_d.zero_grad(set_to_none=True)
                run.backward(loss_d)
                run.clip_grad(disc)
                opt_d.step()
                if run.optimizer_stepped:
                    sched_d.step()
                with torch.no_grad():    # the real side's features under the updated discriminator
                    _, real_features = disc(real)
                fake_logits, fake_features = disc(fake)
                adv = ((fake_logits - 1) ** 2).mean()
                fm = sum((a - b).abs().mean()
                         for a, b in zip(real_features, fake_features)) / len(fake_features)
                loss = loss + config.adversarial * adv + config.feature_matching * fm
                logged = {"loss_d": loss_d.item(), "adv": adv.item(), "fm": fm.item()}
            optimizer.zero_grad(set_to_none=True)
            run.backward(loss)
            run.average_grads(run.unwrap(model))   # called unwrapped (log_magnitude), so DDP does not average them
            run.clip_grad(model)
            optimizer.step()
            if run.optimizer_stepped:     # one LR step per optimizer step, not per micro-batch or skipped step
                scheduler.step()
        run.end_step(loss=loss.item(), log_l1=parts["log_l1"].item(), sc=parts["sc"].item(), **logged)
        last = run.step == config.train.max_steps
        if valid_set is not None and (run.should(config.train.validate_every) or last):
            do_validate()

    final_source = ema.averaged(run.unwrap(model)) if ema is not None else run.unwrap(model)
    return run.finish(final_source)


@torch.no_grad()
def validate(run: TrainingRun, model: torch.nn.Module, valid_set, config: RunConfig,
             vae: torch.nn.Module | None = None) -> dict:
    """Invert up to `valid_items` held-out clips; log mean magnitude errors (post-net, NNLS, via the VAE)."""
    run.accelerator.wait_for_everyone()
    if not run.is_main:
        return {}
    net = run.unwrap(model)
    net.eval()
    mel_cfg = config.model.mel
    hop, floor = mel_cfg.hop_length, config.model.floor
    folder = run.out / "samples" / f"step_{run.step}"
    totals: dict[str, float] = {}
    count = 0
    for k, item in enumerate(run.evaluation_items(valid_set, config.valid_items)):   # unreadable ones skipped
        n = min(int(item["seconds"] * mel_cfg.sample_rate), item["wav"].shape[0]) // hop * hop
        if n < mel_cfg.n_fft:
            log.warning("validation clip %s is shorter than %d samples; skipped", item["id"], mel_cfg.n_fft)
            continue
        wav = item["wav"][None, :n].to(run.device)
        mel, target = targets(net, wav)
        rows = {"": net.log_magnitude(mel), "nnls_": torch.log(net.nnls_magnitude(mel).clamp_min(floor))}
        if vae is not None:
            rebuilt = through_vae(vae, mel)
            rows["vae_"] = net.log_magnitude(rebuilt)
            rows["vae_nnls_"] = torch.log(net.nnls_magnitude(rebuilt).clamp_min(floor))
        for prefix, log_mag in rows.items():
            _, parts = magnitude_loss(log_mag, target, floor)
            for name, value in parts.items():
                totals[prefix + name] = totals.get(prefix + name, 0.0) + float(value)
        if k < config.sample_items:
            write_sample(folder, f"{k}_{_safe(item['id'])}", wav[0], net(mel)[0], mel_cfg)
        count += 1
    net.train()
    return log_valid(run, totals, count)
