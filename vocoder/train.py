"""`tta train vocoder`: train HiFi-GAN on random segments of a manifest (Kong et al. 2020, sec. 2.4 / 4).

Each step: wav segment (B, T) -> `tta.audio.log_mel` -> generator -> wav_hat; one discriminator update
(LSGAN on MPD + MSD) then one generator update (adversarial + 2 x feature matching + 45 x mel L1). Both
AdamW optimizers (betas 0.8 / 0.99 in the configs) and their exponential LR decays (x `lr_decay` every
`lr_decay_every` steps, the paper's per-epoch decay expressed in steps) are tracked by `TrainingRun`, so
`--resume` continues where the last checkpoint stopped. Both decays count every optimizer step from 0: with
`disc_start` > 0 the discriminators' rate decays while they are off too, so they start at
`lr_decay ** (disc_start // lr_decay_every)` x the rate (0.99 x at configs/vocoder/default.json's 10 000 warm-up
steps); the shipped runs trained so, and their resumes depend on it. Every `train.validate_every` steps (and after the
last) held-out clips are vocoded from their mels: mel L1 and the multi-resolution STFT distance go to
metrics.jsonl (split "valid"), and a few generated wavs + real-vs-generated spectrogram PNGs to
RUN/samples/step_N/, scored with the EMA weights when train.ema_decay > 0 (what final/ holds). final/ is the
generator with weight norm removed (the inference form).

`train.init_from` fine-tunes a run (its checkpoint: generator and discriminators), or a vocoder component
folder (a run's final/, an imported AudioLDM or SpeechT5HifiGan folder) or a pipeline folder's vocoder/: these
hold the inference form, so weight norm is re-applied (the same function) and the discriminators start fresh.

With `vae` set (a MelVAE component, run or pipeline folder in the same mel space), the first
round(vae_fraction x B) mels of every batch are the VAE's reconstruction (posterior mode) of the real mel,
while the target stays the real wav: the generator learns to vocode the smoother mels a latent diffusion
pipeline hands it, as HiFi-GAN is fine-tuned on a text-to-speech model's mels (Kong et al. 2020, sec. 4.4).
Each item is then loaded `vae_context_seconds` longer on both sides, so that the VAE sees real audio around
the window; the generator and the discriminators see only the centred `data.segment_seconds`. Validation
also logs the mel L1 of the held-out clips vocoded from their VAE reconstruction (`vae_mel_l1`).
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from tta.audio import MelConfig, check_same_mel, log_mel, save_audio
from tta.checkpoint import CONFIG_NAME, atomic_path, find_component, load_component, loads_draw
from tta.data.manifest import DataConfig, EmptySplitError
from tta.training import TrainConfig, TrainingRun, check_run_config, make_optimizer
from vocoder.discriminators import DiscriminatorConfig, HiFiGANDiscriminator
from vocoder.losses import (
    LossConfig,
    discriminator_loss,
    generator_loss,
    mel_l1,
    multi_resolution_stft_distance,
    warmup_generator_loss,
)
from vocoder.model import HiFiGAN, HiFiGANConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    model: HiFiGANConfig = field(default_factory=HiFiGANConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(segment_seconds=0.512))  # 8192 samples at 16 kHz
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        learning_rate=2e-4, adam_betas=(0.8, 0.99), weight_decay=0.01, grad_clip=0.0, batch_size=16))
    loss: LossConfig = field(default_factory=LossConfig)
    lr_decay: float = 0.999        # multiplied into both learning rates every `lr_decay_every` steps
    lr_decay_every: int = 1000     # ~ one epoch of the paper's LJSpeech setup
    valid_items: int = 8           # held-out clips vocoded at each validation (0 = no validation)
    valid_seconds: float = 4.0     # at most this much of each held-out clip (from its start)
    sample_items: int = 2          # of those, how many get a wav + PNG in samples/step_N/
    # Optimizer step at which the discriminators start. Before it the generator alone is trained on mel L1 +
    # multi-resolution STFT (loss.stft), which is several times cheaper per step on a CPU (Parallel WaveGAN
    # pre-trains its generator the same way). 0 = adversarial from the first step (the paper's recipe). The
    # discriminators' learning rate decays from step 0 all the same (see the module docstring).
    disc_start: int = 0
    vae: str = ""                  # MelVAE component, run or pipeline folder whose reconstructions are mixed
                                   # into the generator's inputs ("" = real mels only)
    vae_fraction: float = 0.5      # share of each batch fed through the VAE first (with `vae`)
    vae_context_seconds: float = 0.256  # real audio the VAE sees on each side of the window (with `vae`)

    def __post_init__(self) -> None:
        if not 0 <= self.vae_fraction <= 1:
            raise ValueError(f"vae_fraction={self.vae_fraction} must be in [0, 1]")
        if self.vae_context_seconds < 0:
            raise ValueError(f"vae_context_seconds={self.vae_context_seconds} must be >= 0")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay={self.lr_decay} must be in (0, 1]")
        if self.lr_decay_every <= 0:
            raise ValueError(f"lr_decay_every={self.lr_decay_every} must be > 0")
        if self.valid_items < 0 or not 0 <= self.sample_items <= self.valid_items:
            raise ValueError(f"need valid_items >= 0 and 0 <= sample_items <= valid_items, got "
                             f"{self.valid_items} and {self.sample_items}")
        if self.disc_start < 0:
            raise ValueError(f"disc_start={self.disc_start} must be >= 0")
        if self.valid_seconds <= 0:
            raise ValueError(f"valid_seconds={self.valid_seconds} must be > 0")
        mel = self.model.mel
        if self.valid_items and round(self.valid_seconds * mel.sample_rate) < 2 * mel.n_fft:
            # said, not refused: a run begun with it still resumes
            log.warning("valid_seconds=%g gives %d samples; validation needs at least 2 * mel.n_fft = %d and will "
                        "score no clip", self.valid_seconds, round(self.valid_seconds * mel.sample_rate),
                        2 * mel.n_fft)
        segment = round(self.data.segment_seconds * mel.sample_rate)
        if segment < 2 * mel.n_fft:
            raise ValueError(f"data.segment_seconds={self.data.segment_seconds} gives {segment} samples; the mel loss "
                             f"needs at least 2 * mel.n_fft = {2 * mel.n_fft}")
        if self.train.gradient_accumulation_steps != 1:
            raise ValueError("train.gradient_accumulation_steps must be 1 for the two-optimizer GAN loop")
        if self.train.lr_schedule != "constant":
            raise ValueError(f"train.lr_schedule={self.train.lr_schedule!r}: the vocoder's learning rates follow "
                             "lr_decay / lr_decay_every; leave train.lr_schedule 'constant'")
        if self.train.warmup_steps:   # said, not refused: a run begun with it still resumes
            log.warning("train.warmup_steps=%d is not used by the vocoder trainers: their learning rates follow "
                        "lr_decay / lr_decay_every", self.train.warmup_steps)

    def build_generator(self) -> torch.nn.Module:
        """The generator to train, in its training form (weight norm on)."""
        return HiFiGAN(self.model).apply_weight_norm()


def decay_scheduler(optimizer: torch.optim.Optimizer, config: RunConfig):
    """lr = base * lr_decay ** (step // lr_decay_every), stepped once per optimizer step."""
    decay, every = config.lr_decay, config.lr_decay_every
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: decay ** (step // every))


def train(config: RunConfig, out: str | os.PathLike, *, resume: bool = False, progress: bool = True) -> Path:
    """Train (or resume) a vocoder run in `out`; returns the final/ component folder."""
    from tta.data.dataset import AudioDataset

    config = check_run_config(config, RunConfig)
    mel_cfg = config.model.mel
    hop = mel_cfg.hop_length
    vae = load_frozen_vae(config.vae, mel_cfg) if config.vae else None      # before the run folder exists
    context = round(config.vae_context_seconds * mel_cfg.sample_rate / hop) if vae is not None else 0  # frames
    data = config.data
    if context:     # load the window plus `context` frames of real audio on each side
        data = replace(data, segment_seconds=data.segment_seconds + 2 * context * hop / mel_cfg.sample_rate)
    train_set = AudioDataset.from_config(data, data.train_split, mel_cfg.sample_rate, random_crop=True)
    run = TrainingRun(out, config, config.train, resume=resume, progress=progress)
    valid_set = None
    if config.valid_items:
        valid_set = held_out_set(config.data, mel_cfg.sample_rate, config.valid_seconds)
    run.check_audio(train_set, valid_set)

    generator = config.build_generator()
    discriminator = HiFiGANDiscriminator(config.discriminator)
    opt_g = make_optimizer(generator.parameters(), config.train)
    opt_d = make_optimizer(discriminator.parameters(), config.train)
    sched_g, sched_d = decay_scheduler(opt_g, config), decay_scheduler(opt_d, config)
    generator, discriminator, opt_g, opt_d = run.prepare(generator, discriminator, opt_g, opt_d)
    run.track(generator=generator, discriminator=discriminator, optimizer_g=opt_g, optimizer_d=opt_d,
              scheduler_g=sched_g, scheduler_d=sched_d)
    ema = run.make_ema("generator", generator)
    # init_from an inference folder: a pipeline keeps the generator as vocoder/, no such folder keeps the
    # discriminators, and HiFi-GAN's component folders hold it with weight norm folded in
    run.init_subfolders.update(generator="vocoder", discriminator=None)
    if isinstance(run.unwrap(generator), HiFiGAN):
        run.init_loaders["generator"] = lambda folder: weight_norm_state(folder, run.unwrap(generator))
    run.restore()
    if vae is not None:
        vae.to(run.device)
    generator.train()
    discriminator.train()

    window = round(config.data.segment_seconds * mel_cfg.sample_rate) // hop        # frames trained on

    def do_validate() -> None:
        # the weights final/ will hold: the EMA's when there is one
        scored = ema.averaged(run.unwrap(generator)) if ema is not None and run.is_main else generator
        validate(run, scored, valid_set, config, vae)

    if run.missed_validation(config.train.validate_every) and valid_set is not None:
        do_validate()   # stopped between a checkpoint and its validation: validate it now
    for batch in run.batches(train_set):
        wav = batch["wav"]
        wav = wav[:, : wav.shape[-1] // hop * hop]                 # (B, T), T a multiple of hop
        if vae is None:
            mel = log_mel(wav, mel_cfg)                            # (B, n_mels, T / hop)
        else:
            mel, wav = vae_inputs(vae, wav, mel_cfg, config.vae_fraction, context, window)
        wav_hat = generator(mel)                                   # (B, T)

        adversarial = run.step >= config.disc_start                # before: generator-only warm-up
        logged = {}
        if adversarial:
            real_logits, _ = discriminator(wav)
            fake_logits, _ = discriminator(wav_hat.detach())
            loss_d = discriminator_loss(real_logits, fake_logits)
            opt_d.zero_grad(set_to_none=True)
            run.backward(loss_d)
            run.clip_grad(discriminator)
            opt_d.step()
            losses = generator_loss(discriminator, wav_hat, wav, mel_cfg, config.loss)
            logged = {"loss_d": loss_d.item(), "adv": losses.adversarial.item(), "fm": losses.feature_matching.item()}
        else:
            losses = warmup_generator_loss(wav_hat, wav, mel_cfg, config.loss, config.loss.stft_resolutions)
        opt_g.zero_grad(set_to_none=True)
        run.backward(losses.total)
        run.clip_grad(generator)
        opt_g.step()
        sched_g.step()
        if adversarial:
            sched_d.step()
        else:   # decays while the discriminators are off (the shipped runs' schedule); torch's warning that it
            # steps before its optimizer ever has (once per run, on every warm-up) changes nothing here
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
                sched_d.step()

        if not adversarial or config.loss.stft:   # logged where the loss computed it: 0.0 would read as a perfect match
            logged["stft"] = losses.stft.item()
        run.end_step(loss_g=losses.total.item(), **logged, mel_l1=losses.mel_l1.item())
        if valid_set is not None and (run.should(config.train.validate_every) or run.step == config.train.max_steps):
            do_validate()

    final_source = ema.averaged(run.unwrap(generator)) if ema is not None else run.unwrap(generator)
    return run.finish(final_source.inference_copy())


def weight_norm_state(folder: Path, generator: HiFiGAN) -> dict:
    """The state dict, in `generator`'s training form (weight norm on), of the HiFi-GAN in a component folder
    (a run's final/, a pipeline's vocoder/) or an imported SpeechT5HifiGan folder, which hold it with weight
    norm removed: weight norm is re-applied, g = ||w|| and v = w, so the function stays the same. Loaded as
    runs always loaded it (tta.checkpoint.loads_draw), drawing its discarded initial weights from the seeded
    global streams: the random state after it, which the run's checkpoints record, stays the recorded runs'."""
    from vocoder.interop import load_vocoder

    try:
        with loads_draw():
            source = load_vocoder(folder, weight_norm=generator.config.weight_norm)
    except ValueError as e:      # CheckpointError, ConfigError: a folder of something else
        raise ValueError(f"train.init_from: {folder} is not a HiFi-GAN vocoder folder ({e})") from None
    return source.state_dict()


def check_start(config: RunConfig, training_rows: Callable[[], None]) -> None:
    """Refuse what `train` refuses of a new run before its first step, beyond what every trainer checks
    (tta.training.check_restart): the frozen `vae` (loaded, as the run loads it), the training split's rows
    (`training_rows()`, where `train` reads them: of two faults, the one a new run names) and, with validation,
    the held-out split's rows and audio files. `tta train vocoder|vocos|postnet --resume` calls it before it
    clears a run stopped before its first checkpoint to start it again, so that a refused restart leaves it as
    it was."""
    if config.vae:
        load_frozen_vae(config.vae, config.model.mel)
    training_rows()
    if config.valid_items:
        from tta.data.dataset import check_held_out

        check_held_out(lambda: held_out_clips(config.data, config.model.mel.sample_rate, config.valid_seconds))


def load_frozen_vae(path: str, mel: MelConfig) -> torch.nn.Module:
    """The frozen VAE named by a run config's `vae`: a component folder, a run folder (its final/) or a
    pipeline folder (its vae/). Its mel config must be the model's."""
    folder = find_component(path, "vae")
    if folder is None:
        raise ValueError(f"vae={path}: not a VAE component, run or pipeline folder (no {CONFIG_NAME})")
    vae = load_component(folder)
    if not hasattr(vae, "encode") or not hasattr(vae, "config") or not hasattr(vae.config, "mel"):
        raise ValueError(f"vae={path}: holds a {type(vae).__name__}, not a mel VAE")
    check_same_mel(vae.config.mel, mel, f"vae={path}", "model.mel")
    return vae.requires_grad_(False).eval()


@torch.no_grad()
def through_vae(vae: torch.nn.Module, mel: torch.Tensor) -> torch.Tensor:
    """The VAE's reconstruction of `mel` from its posterior mode, same shape."""
    return vae(mel, sample=False)[0].to(mel.dtype)


def vae_inputs(vae: torch.nn.Module, wav: torch.Tensor, mel_cfg: MelConfig, fraction: float, context: int,
               window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mel, wav) of a batch for a generator trained on VAE reconstructions: wav (B, T) holds `window` frames
    plus `context` frames of audio on each side; the first round(fraction x B) log-mels are replaced by the
    VAE's reconstruction of them, then the centred window of both is cut out, frame-aligned:
    (B, n_mels, window) and (B, window x hop)."""
    hop = mel_cfg.hop_length
    mel = log_mel(wav, mel_cfg)
    through = round(fraction * mel.shape[0])
    if through:
        mel = torch.cat([through_vae(vae, mel[:through]), mel[through:]])
    return mel[..., context: context + window], wav[:, context * hop: (context + window) * hop]


def held_out_set(data: DataConfig, sample_rate: int, seconds: float):
    """The validation clips of a vocoder run (`held_out_clips`); None, said, for an empty held-out split."""
    try:
        return held_out_clips(data, sample_rate, seconds)
    except EmptySplitError as e:   # an empty held-out split: train anyway, say so (valid_items=0 says nothing)
        log.warning("no validation: %s (set valid_items=0 to train without it)", e)
        return None


def held_out_clips(data: DataConfig, sample_rate: int, seconds: float):
    """The first `seconds` of each held-out row, its first caption (EmptySplitError when there is none)."""
    from tta.data.dataset import AudioDataset

    return AudioDataset([data.manifest, *data.extra_manifests], data.valid_split, sample_rate, seconds,
                        normalize=data.normalize, random_crop=False, cache_dir=data.cache_dir or None,
                        caption_choice="first", max_unreadable=data.max_unreadable)


@torch.no_grad()
def validate(run: TrainingRun, generator: torch.nn.Module, valid_set, config: RunConfig,
             vae: torch.nn.Module | None = None) -> dict:
    """Vocode up to `valid_items` held-out clips; log mean mel L1 / MR-STFT distance (and, with a VAE, the
    mel L1 of the clips vocoded from its reconstruction); write samples."""
    run.accelerator.wait_for_everyone()
    if not run.is_main:
        return {}
    model = run.unwrap(generator)
    model.eval()
    mel_cfg = config.model.mel
    hop = mel_cfg.hop_length
    folder = run.out / "samples" / f"step_{run.step}"
    totals = {"mel_l1": 0.0, "mrstft": 0.0}
    if vae is not None:
        totals["vae_mel_l1"] = 0.0
    count = 0   # the clips scored: a clip too short to score is left out of the means, not counted as 0
    for k, item in enumerate(run.evaluation_items(valid_set, config.valid_items)):   # unreadable ones skipped
        n = min(int(item["seconds"] * mel_cfg.sample_rate), item["wav"].shape[0]) // hop * hop
        if n < 2 * mel_cfg.n_fft:
            log.warning("validation clip %s (%.3f s) is shorter than %d samples; skipped", item["id"],
                        float(item["seconds"]), 2 * mel_cfg.n_fft)
            continue
        count += 1
        wav = item["wav"][None, :n].to(run.device)
        wav_hat = model(log_mel(wav, mel_cfg))
        totals["mel_l1"] += float(mel_l1(wav_hat, wav, mel_cfg))
        totals["mrstft"] += float(multi_resolution_stft_distance(wav_hat, wav, config.loss.stft_resolutions))
        if vae is not None:
            totals["vae_mel_l1"] += float(mel_l1(model(through_vae(vae, log_mel(wav, mel_cfg))), wav, mel_cfg))
        if k < config.sample_items:
            write_sample(folder, f"{k}_{_safe(item['id'])}", wav[0], wav_hat[0], mel_cfg)
    model.train()
    return log_valid(run, totals, count)


def log_valid(run: TrainingRun, totals: dict[str, float], count: int) -> dict:
    """Log the means of validation sums over `count` clips (split "valid"); {} when no clip was usable."""
    if not count:
        return {}
    metrics = {k: v / count for k, v in totals.items()}
    run.log_metrics(split="valid", **metrics)
    log.info("step %d valid %s", run.step, metrics)
    return metrics


def write_sample(folder: Path, name: str, wav: torch.Tensor, wav_hat: torch.Tensor, mel_cfg: MelConfig) -> None:
    """folder/name.wav (generated), name_real.wav, and name.png: real vs generated log-mel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    save_audio(folder / f"{name}.wav", wav_hat.float().cpu(), mel_cfg.sample_rate)
    save_audio(folder / f"{name}_real.wav", wav.float().cpu(), mel_cfg.sample_rate)
    mels = log_mel(torch.stack([wav, wav_hat]).float().cpu(), mel_cfg).numpy()
    fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    lo, hi = float(mels.min()), float(mels.max())
    for ax, m, title in zip(axes, mels, ("real", "generated")):
        ax.imshow(m, origin="lower", aspect="auto", vmin=lo, vmax=hi, cmap="magma")
        ax.set_title(f"{name}: {title} log-mel")
        ax.set_ylabel("mel bin")
    axes[-1].set_xlabel(f"frame (hop {mel_cfg.hop_length} samples)")
    fig.tight_layout()
    try:
        with atomic_path(folder / f"{name}.png") as tmp:
            fig.savefig(tmp, dpi=80)
    finally:
        plt.close(fig)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60] or "clip"
