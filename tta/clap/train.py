"""`tta train clap`: contrastive training of tta's own CLAP on a manifest.

Each batch: clips (random crops from `AudioDataset`) and one caption per clip — a random caption of the
row, or, with probability `augment.template_prob` when the row has labels, a caption made from its
keywords by a template ("the sound of dog and rain", as LAION-CLAP's keyword-to-caption augmentation
does for tag-only data). Identical captions in a batch are merged, so clips sharing a caption are
positives of it, not negatives. On several processes the negatives are the whole batch: the embeddings of
every process are gathered (with their gradients) and identical captions are merged across processes, as
LAION-CLAP and OpenCLIP gather theirs. Validation embeds the valid split (deterministic crops, every caption of
every row) and logs text->audio / audio->text R@1/5/10 and mAP@10 to metrics.jsonl (split "valid"), scoring the
EMA weights when train.ema_decay > 0 (what final/ holds).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from tta.clap.metrics import retrieval_metrics
from tta.clap.model import ClapConfig, TTAClap, contrastive_loss
from tta.data.manifest import DataConfig
from tta.training import TrainConfig, TrainingRun, check_run_config, make_optimizer, make_warmup_scheduler

log = logging.getLogger(__name__)

TEMPLATES = ("the sound of {}", "{} can be heard", "a recording of {}", "{}", "the sounds of {}",
             "someone recorded {}", "{} in the background", "audio of {}")


@dataclass(frozen=True)
class AugmentConfig:
    template_prob: float = 0.25     # chance a labelled row's caption is replaced by a keyword-template caption
    max_keywords: int = 3           # labels drawn (1..max) for one template caption

    def __post_init__(self) -> None:
        if not 0 <= self.template_prob <= 1:
            raise ValueError(f"augment.template_prob={self.template_prob} must be in [0, 1]")
        if self.max_keywords < 1:
            raise ValueError(f"augment.max_keywords={self.max_keywords} must be >= 1")


@dataclass(frozen=True)
class RunConfig:
    model: ClapConfig = field(default_factory=ClapConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    valid_max_items: int = 2000     # clips of the valid split used for the retrieval metrics (0 = all)
    text_lr_scale: float = 1.0      # LR multiplier for the tuned pretrained text layers (model.text.tune_layers)

    def __post_init__(self) -> None:
        if self.valid_max_items < 0:
            raise ValueError(f"valid_max_items={self.valid_max_items} must be >= 0")
        if self.text_lr_scale <= 0:
            raise ValueError(f"text_lr_scale={self.text_lr_scale} must be > 0")


def param_groups(model: TTAClap, config: RunConfig) -> list[dict]:
    """Trainable parameters; the pretrained text layers (text.bert.*) get train.learning_rate * text_lr_scale,
    since a pretrained layer tuned at the rate of the fresh parts forgets what it knew."""
    bert, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (bert if name.startswith("text.bert.") else rest).append(p)
    groups = [{"params": rest}]
    if bert:
        groups.append({"params": bert, "lr": config.train.learning_rate * config.text_lr_scale})
    return groups


def keyword_caption(labels: tuple[str, ...], rng: np.random.Generator, max_keywords: int = 3) -> str:
    """A caption from a clip's keywords: 1..max_keywords labels in random order through a random template."""
    n = int(rng.integers(1, min(max_keywords, len(labels)) + 1))
    picked = [labels[i].strip().lower() for i in rng.permutation(len(labels))[:n]]
    joined = picked[0] if n == 1 else ", ".join(picked[:-1]) + " and " + picked[-1]
    return TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(joined)


def augment_captions(captions: list[str], rows: list, augment: AugmentConfig, rng: np.random.Generator) -> list[str]:
    out = []
    for caption, row in zip(captions, rows):
        if row.labels and rng.random() < augment.template_prob:
            caption = keyword_caption(row.labels, rng, augment.max_keywords)
        out.append(caption)
    return out


def merge_captions(captions: list[str]) -> tuple[list[str], torch.Tensor]:
    """Unique captions (first-seen order) and each clip's index among them."""
    unique = list(dict.fromkeys(captions))
    where = {c: i for i, c in enumerate(unique)}
    return unique, torch.tensor([where[c] for c in captions], dtype=torch.long)


def gather_batch(audio_emb: torch.Tensor, text_emb: torch.Tensor, captions: list[str],
                 audio_to_text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole batch over every process (torch.distributed initialised): (audio (B_all, D), unique texts
    (U_all, D), each clip's text index (B_all,)). Gathered with autograd, so each process's loss reaches every
    process's embeddings; a caption on several processes is one text whose clips are all its positives."""
    import torch.distributed as dist
    from torch.distributed.nn.functional import all_gather

    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (list(captions), audio_to_text.tolist()))
    most_a = max(len(a2t) for _, a2t in parts)
    most_t = max(len(caps) for caps, _ in parts)

    def padded(x: torch.Tensor, n: int) -> torch.Tensor:     # all_gather needs one shape on every process
        return torch.cat([x, x.new_zeros(n - x.shape[0], x.shape[1])])

    audios = all_gather(padded(audio_emb, most_a))
    texts = all_gather(padded(text_emb, most_t))
    unique: dict[str, int] = {}
    audio_rows, text_rows, targets = [], [], []
    for rank, (caps, a2t) in enumerate(parts):
        audio_rows.append(audios[rank][:len(a2t)])
        index = []
        for j, caption in enumerate(caps):
            if caption not in unique:
                unique[caption] = len(unique)
                text_rows.append(texts[rank][j])
            index.append(unique[caption])
        targets += [index[i] for i in a2t]
    return (torch.cat(audio_rows), torch.stack(text_rows),
            torch.tensor(targets, dtype=torch.long, device=audio_emb.device))


@torch.no_grad()
def validate(model: TTAClap, dataset, batch_size: int, max_items: int, device, *, model_name: str,
             run: TrainingRun | None = None) -> dict:
    """Retrieval metrics of `model` on a deterministic dataset (every caption of every row; the first
    `max_items` rows, 0: all). During a `run`, a row whose file fails to decode is skipped for the next
    (`TrainingRun.evaluation_items`)."""
    was_training = model.training
    model.eval()
    count = None if max_items == 0 else max_items
    every = run.evaluation_items(dataset, count) if run is not None else \
        (dataset[i] for i in range(len(dataset) if count is None else min(len(dataset), count)))
    audio, texts, text_to_audio = [], [], []
    clips = 0
    while items := list(itertools.islice(every, batch_size)):
        audio.append(model.encode_audio(torch.stack([it["wav"] for it in items]).to(device)).cpu())
        for it in items:   # each caption's clip: its place among the clips read (a skipped row has none)
            caps = dataset.rows[it["index"]].captions
            texts += caps
            text_to_audio += [clips] * len(caps)
            clips += 1
    text_emb = torch.cat([model.encode_text(texts[i:i + batch_size]).cpu() for i in range(0, len(texts), batch_size)])
    model.train(was_training)
    return retrieval_metrics(text_emb, torch.cat(audio), text_to_audio, model=model_name)


def check_start(config: RunConfig, training_rows: Callable[[], None]) -> None:
    """Refuse what `train` refuses of a new run before its first step, beyond what every trainer checks
    (tta.training.check_restart): the training split's rows (`training_rows()`, first, as `train` reads them
    first) and then the held-out split's rows and audio files. `tta train clap --resume` calls it before it
    clears a run stopped before its first checkpoint to start it again, so that a refused restart leaves it as
    it was."""
    from tta.data.dataset import check_held_out

    training_rows()
    check_held_out(lambda: held_out_clips(config))


def held_out_clips(config: RunConfig):
    """The held-out split validation scores, its first caption (EmptySplitError when it has no rows)."""
    from tta.data.dataset import AudioDataset

    return AudioDataset.from_config(config.data, config.data.valid_split, config.model.mel.sample_rate,
                                    random_crop=False, caption_choice="first")


def train(config: RunConfig, out: str | os.PathLike, *, resume: bool = False, progress: bool = True) -> Path:
    """Train a TTAClap; returns the run's final/ component folder."""
    from tta.data.dataset import AudioDataset
    from tta.data.manifest import EmptySplitError

    config = check_run_config(config, RunConfig)
    run = TrainingRun(out, config, config.train, resume=resume, progress=progress)
    sr = config.model.mel.sample_rate
    train_ds = AudioDataset.from_config(config.data, config.data.train_split, sr, random_crop=True)
    try:
        valid_ds = held_out_clips(config)
    except EmptySplitError as e:   # an empty valid split: train anyway, say so (a split with missing files is
        log.warning("no validation: %s", e)   # an error, as for the other trainers)
        valid_ds = None
    run.check_audio(train_ds, valid_ds)
    model = TTAClap(config.model)
    opt = make_optimizer(param_groups(model, config), config.train)
    sched = make_warmup_scheduler(opt, config.train)
    model, opt = run.prepare(model, opt)
    run.track(model=model, optimizer=opt, scheduler=sched)
    run.init_subfolders["model"] = "text_encoder"   # init_from a pipeline folder: its CLAP
    ema = run.make_ema("model", model)
    run.restore()
    core: TTAClap = run.unwrap(model)
    model.train()
    last_valid = -1

    def do_validate() -> None:
        nonlocal last_valid
        if valid_ds is None or not run.is_main:
            return
        scored = ema.averaged(core) if ema is not None else core     # the weights final/ will hold
        metrics = validate(scored, valid_ds, config.train.batch_size, config.valid_max_items, run.device,
                           model_name=f"tta-clap:{Path(out).name}@step{run.step}", run=run)
        run.log_metrics(split="valid", **metrics)
        log.info("valid step %d: t2a R@5 %.3f (chance %.3f)", run.step, metrics["t2a_R@5"], metrics["t2a_R@5_chance"])
        last_valid = run.step

    if run.missed_validation(config.train.validate_every):
        do_validate()   # stopped between a checkpoint and its validation: validate it now
    for batch in run.batches(train_ds):
        # caption augmentation draws: each process its own (the same draws on every process repeated one pattern
        # N times in the global batch); one process keeps the stream the shipped CLAP runs were trained with
        nproc = run.accelerator.num_processes
        rng = np.random.default_rng([config.train.seed, run.micro_step]
                                    + ([run.accelerator.process_index] if nproc > 1 else []))
        rows = [train_ds.rows[int(i)] for i in batch["index"]]
        captions, audio_to_text = merge_captions(augment_captions(list(batch["caption"]), rows, config.augment, rng))
        with run.accumulate(model):
            audio_emb, text_emb = model(batch["wav"], captions)   # through the (possibly DDP) wrapper
            audio_to_text = audio_to_text.to(run.device)
            if run.accelerator.num_processes > 1:    # negatives from every process's clips
                audio_emb, text_emb, audio_to_text = gather_batch(audio_emb, text_emb, captions, audio_to_text)
            loss = contrastive_loss(audio_emb, text_emb, core.scale(), audio_to_text)
            run.backward(loss)
            run.clip_grad(model)
            opt.step()
            if run.optimizer_stepped:
                sched.step()
                # the cap applies to the parameter, as CLIP's clamp does: clamped only inside scale(), it has no
                # gradient above the cap and momentum could leave it there for good
                with torch.no_grad():
                    core.logit_scale.clamp_(max=math.log(config.model.max_logit_scale))
            opt.zero_grad()
        run.end_step(loss=loss.item(), logit_scale=float(core.scale().detach()))
        if run.should(config.train.validate_every):
            do_validate()
    if last_valid != run.step:
        do_validate()
    return run.finish(model, "model")
