"""`tta train vae`: train the mel-VAE on a manifest (AudioLDM's first stage).

Each step: wav batch -> `tta.audio.log_mel` -> MelVAE reconstruction -> autoencoder update (L1 + transient
term + KL, plus the adaptive-weighted PatchGAN term from `loss.disc_start`) -> discriminator update (hinge,
only once it is on). Both optimizers, the LR scheduler, the loss module (learned logvar + discriminator) and
the optional EMA are tracked by `TrainingRun`, so `--resume` continues bit-exactly. Every
`train.validate_every` steps (and after the last) the held-out split is reconstructed from the posterior
mode: mel L1, log-spectral distance and mel SNR go to metrics.jsonl (split "valid") and input-vs-
reconstruction spectrograms to RUN/samples/step_N/. At the end `scale_factor` (1 / std of latents) is
measured on training clips with the released weights and stored in final/.

`freeze_encoder` fine-tunes the decoder of a trained VAE (`train.init_from`) and leaves its encoder and
scale_factor as they were: the latent space a diffusion model was trained on stays valid, so a better decoder
can be swapped into a pipeline without retraining the UNet (Stable Diffusion's "ft-MSE" VAE is the same idea).
A run's checkpoints are written before its scale_factor is measured, so from a run folder (or one of its
checkpoints) the scale_factor comes from the run's final/, which must hold the same encoder.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Iterable

import torch

from tta.audio import log_mel
from tta.checkpoint import TRAIN_STATE_NAME, WEIGHTS_NAME, atomic_path, load_state_dict
from tta.data.manifest import DataConfig, EmptySplitError
from tta.training import TrainConfig, TrainingRun, check_run_config, make_optimizer, make_warmup_scheduler
from vae.losses import LossConfig, VAELoss
from vae.metrics import ReconstructionMetrics
from vae.model import MelVAE, VAEConfig, compute_scale_factor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    model: VAEConfig = field(default_factory=VAEConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    valid_items: int = 16  # held-out clips reconstructed at each validation (0 = skip validation)
    sample_images: int = 2  # input-vs-reconstruction PNGs written per validation
    scale_items: int = 64  # training clips used to measure scale_factor at the end
    freeze_encoder: bool = False  # train the decoder only; keeps init_from's encoder and scale_factor
    # what runs begun before a field existed did (read on --resume when their config.json lacks it)
    legacy_defaults: ClassVar[dict] = {"loss.learn_logvar": True}

    def __post_init__(self) -> None:
        if self.valid_items < 0 or self.sample_images < 0:
            raise ValueError("valid_items and sample_images must be >= 0")
        if self.scale_items < 1:
            raise ValueError(f"scale_items={self.scale_items} must be >= 1")
        if self.loss.disc_start < self.train.max_steps and self.loss.disc_factor > 0:   # the PatchGAN will run
            from vae.losses import patchgan_min_size

            need = patchgan_min_size(self.loss.disc_num_layers)
            mel = self.model.mel
            frames = mel.num_frames(round(self.data.segment_seconds * mel.sample_rate))
            if min(frames, mel.n_mels) < need:
                raise ValueError(f"data.segment_seconds={self.data.segment_seconds} gives {frames} mel frames and "
                                 f"model.mel.n_mels is {mel.n_mels}; the discriminator of loss.disc_num_layers="
                                 f"{self.loss.disc_num_layers} needs at least {need} of each")


def train(config: RunConfig, out: str | os.PathLike, *, resume: bool = False, progress: bool = True) -> Path:
    """Train (or resume) a run in `out`; returns the final/ component folder."""
    from tta.data.dataset import AudioDataset

    config = check_run_config(config, RunConfig)
    mel_cfg = config.model.mel
    measured = frozen_encoder_source(config, resume=resume)
    train_set = AudioDataset.from_config(
        config.data, config.data.train_split, mel_cfg.sample_rate, random_crop=True
    )
    valid_set = None
    if config.valid_items:
        try:
            valid_set = held_out_clips(config)
        except EmptySplitError as e:   # an empty held-out split: train anyway, say so (valid_items=0 says nothing)
            log.warning("no validation: %s (set valid_items=0 to train without it)", e)
    run = TrainingRun(out, config, config.train, resume=resume, progress=progress)
    run.check_audio(train_set, valid_set)
    vae = MelVAE(config.model)
    if config.freeze_encoder:
        for part in (vae.net.encoder, vae.net.quant_conv):
            if part is not None:
                part.requires_grad_(False)
    criterion = VAELoss(config.loss)
    trainable = [p for p in vae.parameters() if p.requires_grad]
    criterion.logvar.requires_grad_(config.loss.learn_logvar)   # upstream keeps it fixed (learn_logvar false)
    opt_ae = make_optimizer(trainable + ([criterion.logvar] if config.loss.learn_logvar else []), config.train)
    opt_d = make_optimizer(criterion.discriminator.parameters(), config.train)
    sched = make_warmup_scheduler(opt_ae, config.train)
    vae, criterion, opt_ae, opt_d = run.prepare(vae, criterion, opt_ae, opt_d)
    run.track(vae=vae, loss=criterion, optimizer_ae=opt_ae, optimizer_disc=opt_d, scheduler_ae=sched)
    ema = run.make_ema("vae", vae)
    run.restore()

    def do_validate() -> None:
        model = ema.averaged(run.unwrap(vae)) if ema is not None else run.unwrap(vae)
        validate(model, valid_set, config, run.out / "samples" / f"step_{run.step}", run=run)

    if measured is not None:
        run.unwrap(vae).set_scale_factor(kept_scale_factor(measured, run.unwrap(vae), config.train.init_from))
        if ema is not None:
            ema.reset(run.unwrap(vae))      # still step 0: restart the average with the kept scale
    kept_scale = float(run.unwrap(vae).scale_factor)    # freeze_encoder: a buffer training never changes
    disc = run.unwrap(criterion).discriminator
    if run.missed_validation(config.train.validate_every) and valid_set is not None and run.is_main:
        do_validate()   # stopped between a checkpoint and its validation: validate it now

    for batch in run.batches(train_set):
        mel = log_mel(batch["wav"], mel_cfg)
        image = run.unwrap(vae).mel_to_image(mel, pad=False)
        with run.accumulate(vae, criterion):
            rec, posterior = vae(mel)
            rec_image = run.unwrap(vae).mel_to_image(rec, pad=False)
            disc.requires_grad_(False)  # the generator pass must not leave gradients in D
            ae_loss, scalars = run.unwrap(criterion).generator_loss(
                image, rec_image, posterior, step=run.step, last_layer=run.unwrap(vae).last_layer()
            )
            disc.requires_grad_(True)
            run.backward(ae_loss)
            # the loss module is called unwrapped, so DDP does not average its gradients (logvar, D): do it here
            run.average_grads(run.unwrap(criterion).logvar)
            run.clip_grad(vae)
            opt_ae.step()
            opt_ae.zero_grad()
            if run.optimizer_stepped:
                sched.step()
            if run.unwrap(criterion).disc_active(run.step):
                d_loss, d_scalars = run.unwrap(criterion).discriminator_loss(image, rec_image, step=run.step)
                run.backward(d_loss)
                run.average_grads(disc)
                run.clip_grad(criterion)
                opt_d.step()
                opt_d.zero_grad()
                scalars.update(d_scalars)
        if not run.end_step(loss=scalars.pop("ae_loss"), **scalars):
            continue
        last = run.step == config.train.max_steps
        if valid_set is not None and run.is_main and (run.should(config.train.validate_every) or last):
            do_validate()

    release = ema.averaged(run.unwrap(vae)) if ema is not None else run.unwrap(vae)
    if run.is_main and config.freeze_encoder:
        scale = kept_scale    # same encoder, same latents: the diffusion model's scale stays
        release.set_scale_factor(scale)
        run.log_metrics(split="final", scale_factor=scale)
        log.info("scale_factor = %.6g (kept: the encoder was frozen)", scale)
    elif run.is_main:
        scale_set = AudioDataset.from_config(
            config.data, config.data.train_split, mel_cfg.sample_rate, random_crop=False
        )
        # the first scale_items training rows whose files can be read (a file cut short within its first
        # segment, or gone since the start, is skipped as when drawn: run.evaluation_items)
        clips: list[str] = []

        def mels():
            for mel, ids in _mels(run.evaluation_items(scale_set, config.scale_items), config, run.device):
                clips.extend(ids)
                yield mel

        scale = compute_scale_factor(release, mels(), seed=config.train.seed, progress=progress)
        release.set_scale_factor(scale)
        run.log_metrics(split="final", scale_factor=scale)
        log.info("scale_factor = %.6g (1 / std of latents over %d training clips)", scale, len(clips))
    return run.finish(release)


def check_start(config: RunConfig, training_rows: Callable[[], None]) -> None:
    """Refuse what `train` refuses of a new run before its first step, beyond what every trainer checks
    (tta.training.check_restart): freeze_encoder's start (`frozen_encoder_source`), the training split's rows
    (`training_rows()`, where `train` reads them: of two faults, the one a new run names) and, with validation,
    the held-out split's rows and audio files. `tta train vae --resume` calls it before it clears a run stopped
    before its first checkpoint to start it again, so that a refused restart leaves it as it was."""
    frozen_encoder_source(config, resume=False)
    training_rows()
    if config.valid_items:
        from tta.data.dataset import check_held_out

        check_held_out(lambda: held_out_clips(config))


def held_out_clips(config: RunConfig):
    """The held-out split validation reconstructs (EmptySplitError when it has no rows)."""
    from tta.data.dataset import AudioDataset

    return AudioDataset.from_config(config.data, config.data.valid_split, config.model.mel.sample_rate,
                                    random_crop=False)


def frozen_encoder_source(config: RunConfig, *, resume: bool) -> Path | None:
    """freeze_encoder's start: refused without train.init_from on a new run; the final/ weights file whose
    measured scale_factor it keeps when init_from is a run or one of its checkpoints (`measured_scale_source`),
    else None (and on a resume, which restores what the run kept)."""
    if config.freeze_encoder and not (config.train.init_from or resume):
        raise ValueError("freeze_encoder=true fine-tunes the decoder of a trained VAE: set train.init_from "
                         "(--init-from RUN, component or pipeline folder)")
    if config.freeze_encoder and not resume:
        return measured_scale_source(config.train.init_from)
    return None


def measured_scale_source(source: str) -> Path | None:
    """For a frozen-encoder fine-tune from `source`: the final/ weights file of the run it names (a run folder or
    one of its checkpoints, which are written before the run measures scale_factor at its end), None for a
    component or pipeline folder, which stores the measured value. A run without final/ is refused."""
    src = Path(source)
    if (src / TRAIN_STATE_NAME).is_file():          # RUN/checkpoints/step_N
        run_dir = src.parent.parent
    elif (src / "checkpoints").is_dir() or (src / "final").is_dir():
        run_dir = src
    else:
        return None
    final = run_dir / "final" / WEIGHTS_NAME
    if not final.is_file():
        raise ValueError(f"freeze_encoder=true keeps the scale_factor of train.init_from={source}, but {run_dir} has "
                         "no final/ (a run measures it when it finishes): finish that run, or start from a component "
                         "or pipeline folder")
    return final


def kept_scale_factor(final: Path, vae: MelVAE, source: str) -> float:
    """The scale_factor stored in a run's `final` weights, for `vae` loaded from that run: its encoder must be
    final/'s (else the scale was measured for another encoder)."""
    state = load_state_dict(final)
    own = vae.state_dict()
    encoder = [k for k in own if k.startswith(("net.encoder.", "net.quant_conv."))]
    if any(k not in state or not torch.equal(state[k].to(own[k].dtype), own[k]) for k in encoder):
        raise ValueError(f"freeze_encoder=true: the encoder of train.init_from={source} is not the one in "
                         f"{final.parent} (another step's), whose measured scale_factor it would keep; start from "
                         f"{final.parent}")
    return float(state["scale_factor"])


def _mels(items: Iterable[dict], config: RunConfig, device):
    """Deterministic (B, n_mels, frames) log-mels of evaluation `items` (a dataset's `ds[index]`), in
    train.batch_size chunks, and their ids."""
    items = iter(items)
    while chunk := list(itertools.islice(items, config.train.batch_size)):
        wav = torch.stack([it["wav"] for it in chunk]).to(device)
        yield log_mel(wav, config.model.mel), [it["id"] for it in chunk]


@torch.no_grad()
def validate(
    model: MelVAE, dataset, config: RunConfig, sample_dir: Path, *, run: TrainingRun | None = None
) -> dict:
    """Reconstruct `config.valid_items` held-out clips (posterior mode); log metrics and write PNGs. During a
    `run`, a clip whose file fails to decode is skipped for the next (`TrainingRun.evaluation_items`)."""
    was_training = model.training
    model.eval()
    metrics = ReconstructionMetrics()
    images_left = config.sample_images
    device = model.scale_factor.device
    try:
        items = run.evaluation_items(dataset, config.valid_items) if run is not None else \
            (dataset[i] for i in range(min(config.valid_items, len(dataset))))
        for mel, ids in _mels(items, config, device):
            rec, _ = model(mel, sample=False)
            metrics.update(mel, rec)
            for i in range(min(images_left, mel.shape[0])):
                save_spectrogram_png(
                    sample_dir / f"{_safe_name(ids[i])}.png",
                    mel[i],
                    rec[i],
                    title=f"{ids[i]} ({sample_dir.name})",
                )
            images_left -= min(images_left, mel.shape[0])
    finally:
        model.train(was_training)
    values = metrics.compute()
    if run is not None:
        run.log_metrics(split="valid", **values)
    log.info("valid %s", " ".join(f"{k}={v:.4g}" for k, v in values.items()))
    return values


def _safe_name(clip_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", clip_id)[:120] or "clip"


def save_spectrogram_png(path: Path, mel: torch.Tensor, rec: torch.Tensor, title: str = "") -> Path:
    """Input and reconstruction log-mels (n_mels, frames) one above the other, same colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = mel.detach().float().cpu().numpy(), rec.detach().float().cpu().numpy()
    lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    fig, axes = plt.subplots(2, 1, figsize=(8, 4.5), sharex=True)
    for ax, data, name in ((axes[0], a, "input"), (axes[1], b, "reconstruction")):
        im = ax.imshow(
            data, origin="lower", aspect="auto", vmin=lo, vmax=hi, cmap="magma", interpolation="nearest"
        )
        ax.set_ylabel(f"{name}\nmel bin")
    axes[1].set_xlabel("frame")
    fig.colorbar(im, ax=axes, label="ln mel")
    if title:
        fig.suptitle(title)
    try:
        with atomic_path(path) as tmp:   # makes the folder; a full disk names the plot and leaves no partial file
            fig.savefig(tmp, dpi=80)
    finally:
        plt.close(fig)
    return path
