"""Shared training-loop machinery: accelerate setup, run folder, EMA, checkpoints, bit-exact resume.

A run folder holds `config.json` (the fully resolved run config), `data.json` (the training manifests' sha256
and the frozen components' and datastore's, which a resume checks, the process and thread counts and the working
directory its relative paths start from), `metrics.jsonl` (one JSON object per logged step, and one per
audio file skipped as unreadable when a training item drew it or a pass such as validation read it:
`AudioDataset`'s data.max_unreadable),
`checkpoints/step_N/` (one component folder per tracked module + `train_state.pt`) and `final/` (the release
artifact). The same loop runs as one CPU process or under `accelerate launch` on
many GPUs. A fresh run that fails before its first checkpoint (a bad init_from, component or data row found
after start-up, Ctrl-C, SIGTERM) leaves no folder behind, or only its pre-encoded cache/, when run inside
`discard_on_failure`, as `tta train` does.

Resume is bit-exact on CPU because everything random is either restored or derived from the step:
model/optimizer/scheduler/EMA state, torch/numpy/python RNG states, and the data order, which comes from
`ResumableSampler` — a deterministic stream of (index, item_seed) pairs that can start at any position.

On several processes every one builds the same models (one seed), then each but the main one gets its own
random stream for noise, timesteps and dropout (the main one keeps the one-process stream), and checkpoints
keep every process's stream. LR schedulers step once per optimizer step; logged scalars are means over the
step's micro-batches and the processes; `average_grads` averages what a trainer calls outside DDP's wrapper.

Usage inside a component's train.py:

    run = TrainingRun(out, cfg, cfg.train, resume=resume, progress=progress)
    model = ...; opt = ...
    model, opt = run.prepare(model, opt)
    run.track(model=model, optimizer=opt)          # what checkpoints hold (name -> object)
    run.restore()                                   # no-op for a fresh run
    if run.missed_validation(cfg.train.validate_every): ...validate...   # stopped before validating a checkpoint
    for batch in run.batches(dataset, collate_fn):  # stops at train.max_steps
        with run.accumulate(model):
            loss = ...; run.backward(loss); run.clip_grad(model); opt.step(); opt.zero_grad()
        run.end_step(loss=loss.item())              # logs, EMA, checkpoint cadence
        if run.should(cfg.train.validate_every): ...validate...
    run.finish(model)                               # writes final/ (EMA weights when EMA is on)
"""

from __future__ import annotations

import ast
import contextlib
import copy
import errno
import json
import logging
import math
import os
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, TypeVar

import numpy as np
import torch
from torch import nn

from tta.checkpoint import (CONFIG_NAME, DIFFUSERS_WEIGHT_NAMES, FINITE_NAME, TRAIN_STATE_NAME, WEIGHTS_NAME,
                            atomic_dir, atomic_write_text, load_component, load_into, load_state_dict, load_train_state,
                            read_foreign_folder, save_component, save_train_state)
from tta.checkpoint import (check_output_path, complete_checkpoints, file_sha256, rng_state, set_rng_state,
                            sigterm_handler, step_of)
from tta.config import ConfigError, check_numbers, counted, from_dict, save_config, shortened, to_dict

log = logging.getLogger(__name__)

DATA_RECORD = "data.json"   # in a run folder: what the run trained with besides its config, when it started


class RunError(ValueError):
    """A run folder that cannot be started or resumed as asked."""


C = TypeVar("C")


def check_run_config(config: Any, cls: type[C]) -> C:
    """A trainer's `config` as its RunConfig `cls`: an instance (of a subclass too) as it is, or a dict of its fields
    read as strictly as a JSON file is (tta.config.from_dict: an unknown key or a wrong type is a ConfigError naming
    it). Anything else is a ConfigError saying what is expected, before the run folder is made."""
    if isinstance(config, cls):
        return config
    if isinstance(config, dict):   # failed on "'dict' object has no attribute 'model'"
        return from_dict(cls, config)
    hint = (f"; read a config file with tta.config.load_config({cls.__qualname__}, PATH)"
            if isinstance(config, (str, os.PathLike)) else "")
    raise ConfigError(f"config: expected a {cls.__module__}.{cls.__qualname__} or a dict of its fields, got "
                      f"{type(config).__module__}.{type(config).__qualname__}{hint}")


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    max_steps: int = 10_000
    batch_size: int = 8
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    weight_decay_1d: bool = True             # decay 1-D and scalar tensors too (biases, norm gains, CLAP's logit
                                             # scale); false exempts them, as LAION-CLAP, CLIP and nanoGPT do
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0                   # max global grad norm; 0 disables clipping
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine"] = "constant"   # after warm-up: constant, or a cosine decay
    min_lr_ratio: float = 0.1                # cosine: the LR at max_steps, as a fraction of learning_rate
    gradient_accumulation_steps: int = 1
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"   # fp16 needs a CUDA GPU (loss scaling); bf16 runs anywhere
    ema_decay: float = 0.0                   # 0 disables EMA; AudioLDM's LDM uses 0.9999
    log_every: int = 10
    validate_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 3                # older step_N folders are deleted; 0 keeps all
    cpu: bool = False                        # force CPU even when an accelerator is present
    init_from: str = ""                      # fine-tune: start a fresh run from another run's weights
                                             # (RUN, RUN/checkpoints/step_N or a component folder)

    def __post_init__(self) -> None:
        try:
            self._check_values()
        except TypeError:   # a config built in Python with "100" where a number goes: named by field
            check_numbers(self, "train")
            raise
        check_numbers(self, "train")   # numpy numbers become Python's (JSON writes them); bools must be bools

    def _check_values(self) -> None:
        if not 0 <= self.seed < 2**32:     # numpy's and the sampler's seeds are 32-bit
            raise ValueError(f"train.seed={self.seed} must be in [0, 2**32)")
        if self.mixed_precision == "fp16" and self.cpu:
            raise ValueError("train.mixed_precision='fp16' needs a CUDA GPU, but train.cpu is true: use 'bf16' "
                             "(or 'no') on the CPU")
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "log_every",
                     "validate_every", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name}={getattr(self, name)} must be > 0")
        # the float settings: NaN fails every comparison, so each test is written to be False for NaN
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"train.ema_decay={self.ema_decay} must be in [0, 1)")
        if not 0 < self.learning_rate < math.inf:
            raise ValueError(f"train.learning_rate={self.learning_rate} must be a finite number > 0")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"train.weight_decay={self.weight_decay} must be a finite number >= 0")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"train.adam_betas={list(self.adam_betas)} must be two numbers in [0, 1)")
        if not 0 <= self.grad_clip < math.inf:
            raise ValueError(f"train.grad_clip={self.grad_clip} must be a finite number >= 0 "
                             "(0 disables clipping)")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"train.lr_schedule={self.lr_schedule!r} must be 'constant' or 'cosine'")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"train.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if self.warmup_steps < 0 or self.keep_checkpoints < 0:
            raise ValueError("train.warmup_steps and train.keep_checkpoints must be >= 0")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(params, train: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over `params` (tensors or param-group dicts). With train.weight_decay_1d false, every group is
    split in two: tensors of 2 or more dimensions keep the decay, the rest (biases, norm gains, scalars) get
    none; the groups' other settings (a group's own lr) carry over."""
    if not train.weight_decay_1d and train.weight_decay > 0:
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        split = []
        for group in groups:
            given = group["params"]
            tensors = [given] if isinstance(given, torch.Tensor) else list(given)
            settings = {k: v for k, v in group.items() if k != "params"}
            decayed = [p for p in tensors if p.ndim >= 2]
            exempt = [p for p in tensors if p.ndim < 2]
            split += [{**settings, "params": decayed}, {**settings, "params": exempt, "weight_decay": 0.0}]
        params = [g for g in split if g["params"]]
    return torch.optim.AdamW(params, lr=train.learning_rate, betas=train.adam_betas,
                             weight_decay=train.weight_decay)


def lr_factor(step: int, train: TrainConfig) -> float:
    """LR multiplier after `step` optimizer steps: linear warm-up over train.warmup_steps, then constant, or
    (lr_schedule "cosine") half a cosine from 1 down to min_lr_ratio at max_steps."""
    warm = train.warmup_steps
    if step < warm:
        return (step + 1) / warm
    if train.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warm) / max(1, train.max_steps - warm))
    return train.min_lr_ratio + (1 - train.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_warmup_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig):
    """The LR schedule of `lr_factor` (warm-up, then constant or cosine), applied to every parameter group."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, train))


# ------------------------------------------------------------------------------------------- data


class ResumableSampler(torch.utils.data.Sampler):
    """Endless deterministic stream of (index, item_seed) pairs over `num_items` items.

    Epoch e is a permutation drawn from seed + e, or with `weights` (one per item) `num_items` indices
    drawn with replacement in proportion to them; item_seed is derived from (seed, position) so random
    crops/augmentations are reproducible without any worker RNG state. `start` is the position (in
    samples, counted over all processes) to begin at; with several processes each takes every
    `world_size`-th item from `rank`.
    """

    def __init__(self, num_items: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, weights: torch.Tensor | None = None):
        if num_items <= 0:
            raise RunError("the training split is empty: no items to sample")
        if weights is not None:
            weights = torch.as_tensor(weights, dtype=torch.float64)
            if weights.shape != (num_items,) or not bool((weights >= 0).all()) or not float(weights.sum()) > 0:
                raise RunError(f"sampler weights must be {num_items} non-negative numbers, not all zero")
        self.num_items, self.seed, self.start = num_items, seed, start
        self.rank, self.world_size, self.shuffle, self.weights = rank, world_size, shuffle, weights

    def _perm(self, epoch: int) -> list[int]:
        if self.weights is None and not self.shuffle:
            return list(range(self.num_items))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.weights is not None:
            return torch.multinomial(self.weights, self.num_items, replacement=True, generator=g).tolist()
        return torch.randperm(self.num_items, generator=g).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        pos = self.start
        epoch, offset = divmod(pos, self.num_items)
        perm = self._perm(epoch)
        while True:
            if pos % self.world_size == self.rank:
                item_seed = (self.seed * 2_654_435_761 + pos * 40_503 + 12_345) % 2**63
                yield perm[offset], item_seed
            pos += 1
            offset += 1
            if offset == self.num_items:
                epoch, offset = epoch + 1, 0
                perm = self._perm(epoch)


def balance_weights(keys: list, balance: float, key_weights: dict[str, float] | None = None,
                    names: list | None = None) -> torch.Tensor:
    """Per-item sampling weights (float64): count(key)^-balance, times key_weights[n] for each distinct name n
    of the item (`names[i]`, default just `keys[i]`) that key_weights lists. balance 1 makes every key equally
    likely; a key weight of 4 then makes that key's items 4x as likely as that. An item whose key is a tuple of
    labels (`data.balance_labels: "all"`) weighs the sum of count(label)^-balance over them, count being the
    number of items with that label (PSLA's and AudioLDM's rule for multi-label AudioSet)."""
    keys = [k if isinstance(k, tuple) else (k,) for k in keys]   # key_weights' default names: the first label
    counts: dict[str, int] = {}
    for k in keys:
        for label in k:
            counts[label] = counts.get(label, 0) + 1
    extra = key_weights or {}
    out = []
    for i, k in enumerate(keys):
        w = sum(counts[label] ** -float(balance) for label in k) if balance > 0 else 1.0
        for n in (set(names[i]) if names is not None else {k[0]}):
            w *= float(extra.get(n, 1.0))
        out.append(w)
    return torch.tensor(out, dtype=torch.float64)


def check_key_weights(key_weights: dict, names: list, field: str = "data.key_weights") -> None:
    """RunError when `field` (data.key_weights, data.repeat_gap_by_key, data.speed_by_key) names a key that
    none of the items' `names` has."""
    known = {n for ns in names for n in ns}
    unknown = sorted(set(key_weights) - known)
    if unknown:
        raise RunError(f"{field}: no training item has the key {unknown[0]!r} (a key is an item's "
                       "first label or its category)")


KEYED_FIELDS = ("key_weights", "repeat_gap_by_key", "speed_by_key")   # the data.* fields keyed by label


def check_keyed_fields(data, names: list) -> None:
    """`check_key_weights` of data.key_weights, data.repeat_gap_by_key and data.speed_by_key against the
    items' `names`, in that order: the one order every trainer and a restart's check of the rows refuse them in."""
    for field in KEYED_FIELDS:
        check_key_weights(getattr(data, field), names, f"data.{field}")


# -------------------------------------------------------------------------------------------- EMA


class EMA:
    """Exponential moving average of a module's floating parameters and buffers (with LDM's warm-up:
    decay_t = min(decay, (1 + t) / (10 + t)))."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.reset(model)

    def reset(self, model: nn.Module) -> None:
        """Start averaging afresh from `model`'s current weights."""
        self.num_updates = 0
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()
                       if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1 - d)

    def averaged(self, model: nn.Module) -> nn.Module:
        """A copy of `model` carrying the averaged weights."""
        out = copy.deepcopy(model)
        state = out.state_dict()
        for k, v in self.shadow.items():
            state[k].copy_(v.to(state[k].dtype))
        return out

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.num_updates = state["num_updates"]
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}


def check_precision(train: TrainConfig) -> None:
    """Refuse train.mixed_precision='fp16' where the run would be on the CPU: accelerate makes neither autocast nor
    a loss scaler for fp16 there, so the run would train in float32 while config.json says fp16."""
    if train.mixed_precision != "fp16":
        return
    from accelerate import PartialState

    if PartialState(cpu=train.cpu).device.type == "cpu":
        raise RunError("train.mixed_precision='fp16' needs a CUDA GPU and this run is on the CPU: use 'bf16' (or "
                       "'no') there")


def check_cache_dir(config: Any) -> None:
    """Refuse, before the run folder is made, a data.cache_dir that is a file or cannot be made (under a file, or
    in an unwritable folder): the first item read stopped the run at step 0 with ".../cache/3f: Not a directory".
    So too the LDM's latent `cache_dir` under `precompute` (a file there stopped the run once every clip was
    encoded, "File exists"). An existing folder passes even when it cannot be written: a filled cache is only
    read."""
    caches = [("data.cache_dir", getattr(getattr(config, "data", None), "cache_dir", ""))]
    if getattr(config, "precompute", False):
        caches.append(("cache_dir", getattr(config, "cache_dir", "")))
    for name, cache in caches:
        if cache and not Path(cache).is_dir():
            check_output_path(cache, name, folder=True)


# ----------------------------------------------------------------------------------------- the run


class TrainingRun:
    def __init__(self, out_dir: str | os.PathLike, config: Any, train: TrainConfig, *, resume: bool = False,
                 progress: bool = True):
        from accelerate import Accelerator

        with _killable_while_joining():   # the first of these joins the processes' group
            check_precision(train)
            self.accelerator = Accelerator(mixed_precision=train.mixed_precision, cpu=train.cpu,
                                           gradient_accumulation_steps=train.gradient_accumulation_steps)
        self.out = Path(out_dir)
        if not resume and train.init_from:
            config, train = _with_init_checkpoint(config, train)
        self.config = config
        self.train = train
        self.progress = progress
        self.step = 0               # optimizer steps done
        self.micro_step = 0         # batches consumed by this process
        self.data_position = 0      # samples consumed over all processes (sampler position)
        self._modules: dict[str, nn.Module] = {}
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self._schedulers: dict[str, Any] = {}
        self._emas: dict[str, EMA] = {}
        # init_from: per tracked module, called as hook(module, fresh_keys) after the load and before the EMA
        # restarts, so a model can initialise what the source lacks (e.g. a grown UNet's new blocks)
        self.init_hooks: dict[str, Callable[[nn.Module, list[str]], None]] = {}
        # init_from a component or pipeline folder (inference weights): per tracked module, the pipeline
        # sub-folder that holds it when it is not named like the module (None: no inference folder holds it, it
        # starts fresh, e.g. a GAN's discriminators), and a loader, folder -> state dict in the module's training
        # form, for a module whose component folders store another form (HiFi-GAN: weight norm removed)
        self.init_subfolders: dict[str, str | None] = {}
        self.init_loaders: dict[str, Callable[[Path], dict]] = {}
        self._bar = None
        self._resumed_at = 0   # the step restore() resumed at, until missed_validation() has looked at it
        self._pending: dict[str, list[float]] = {}    # scalars of this optimizer step's micro-batches
        self._last_logged: dict[str, float] = {}
        # rows whose files failed to decode when read during the run (`AudioDataset`'s data.max_unreadable): split
        # -> index -> why, as this process found them (each split counted apart: the training rows, the held-out
        # ones validation reads); the rows metrics.jsonl lists (main process), and the records another process
        # keeps for the main one until the next checkpoint gathers them
        self._unreadable: dict[str, dict[int, str]] = {}
        self._recorded_unreadable: set[tuple[int, str]] = set()   # (process, row id)
        self._unrecorded: list[dict] = []
        self._t0 = time.time()
        check_cache_dir(self.config)
        self._check_folder(resume)
        self.resume = resume
        seed_everything(train.seed)

    # -- folder ----------------------------------------------------------------------------------

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def checkpoints_dir(self) -> Path:
        return self.out / "checkpoints"

    def _check_folder(self, resume: bool) -> None:
        cfg_path = self.out / "config.json"
        resolved = to_dict(self.config)
        if resume:
            if not cfg_path.is_file():
                raise RunError(f"{self.out}: nothing to resume (no config.json); start without --resume")
            saved, resolved = resume_view(self.config, json.loads(cfg_path.read_text()))
            old_max = saved.get("train", {}).get("max_steps")
            new_max = resolved.get("train", {}).get("max_steps")
            if old_max != new_max and {**saved, "train": {**saved["train"], "max_steps": new_max}} == resolved:
                # Only the length differs: extending or shortening a run keeps its trajectory unless the LR
                # schedule is a cosine to max_steps, which would jump (stopping at a checkpoint already made
                # trains nothing more, so that is allowed too); otherwise allowed and recorded.
                ckpts = complete_checkpoints(self.checkpoints_dir)
                done = step_of(ckpts[-1]) if ckpts else 0
                if ckpts:
                    self._resume_checkpoint(ckpts)      # refused before config.json records the new length
                if resolved.get("train", {}).get("lr_schedule") == "cosine" and new_max > done:
                    raise RunError(f"{self.out}: train.max_steps cannot change on resume ({old_max} -> {new_max}): "
                                   "the cosine learning-rate schedule decays to max_steps and would jump; start "
                                   "a new run with --init-from instead")
                self._check_data(resume=True)
                log.info("%s: train.max_steps changed from %s to %s on resume", self.out, old_max, new_max)
                if self.is_main:
                    atomic_write_text(cfg_path, json.dumps(resolved, indent=2) + "\n")
                return
            if saved != resolved:
                raise RunError(f"{self.out}: cannot resume with a different config (first difference at "
                               f"{_first_diff(saved, resolved)}); start a new --out or resume with the saved config")
            self._check_data(resume=True)
            return
        held = cfg_path.exists() or self.checkpoints_dir.exists()
        # every process looks before the main one writes config.json: a slower one must not take the new file
        # for an old run
        self.accelerator.wait_for_everyone()
        if held:
            raise RunError(f"{self.out}: run folder already holds a run; pass --resume to continue it or "
                           "choose another --out")
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(self.config, cfg_path)
        self._check_data(resume=False)
        self.accelerator.wait_for_everyone()

    def _check_data(self, *, resume: bool) -> None:
        """Record the training manifests' sha256 (data.manifest and data.extra_manifests), the frozen inputs'
        (`input_digests`), the process and thread counts and the working directory in DATA_RECORD when the run
        starts (or first resumes), and refuse a resume once a manifest or input has changed: the same path with
        other rows (re-running `tta data check --drop-bad` into the same file does it), or another VAE or
        datastore, trains on what neither the checkpoint's run nor a new one would have. Another process count
        changes the global batch, another thread count the last bits of the arithmetic: said, not refused."""
        data = getattr(self.config, "data", None)
        paths = [getattr(data, "manifest", ""), *getattr(data, "extra_manifests", ())]
        paths = [str(p) for p in paths if p and Path(p).is_file()]
        if not paths:
            return
        digests = {p: file_sha256(p) for p in paths}
        inputs = input_digests(self.config)
        processes, threads = self.accelerator.num_processes, torch.get_num_threads()
        record = self.out / DATA_RECORD
        saved = None
        if resume and record.is_file():
            try:
                saved = json.loads(record.read_text())
            except (OSError, ValueError):
                saved = None
            if isinstance(saved, dict) and "manifests_sha256" not in saved and isinstance(saved.get("manifest"), str) \
                    and isinstance(saved.get("manifest_sha256"), str):   # the first record's form: one manifest
                saved = {**saved, "manifests_sha256": {saved["manifest"]: saved["manifest_sha256"]}}
            if not isinstance(saved, dict) or not isinstance(saved.get("manifests_sha256"), dict):
                raise RunError(f"{record}: not the record this run wrote (a JSON object with manifests_sha256); it "
                               "guards the resume against changed data: restore it, or start a new run from this "
                               "one with --init-from")
        elif resume and self.is_main:
            log.warning("%s: no %s (a run of a tta before it existed, or removed): the manifests and components "
                        "cannot be checked against the run's start; recorded from now on", self.out, DATA_RECORD)
        if isinstance(saved, dict) and isinstance(saved.get("manifests_sha256"), dict):
            changed = _first_change(saved["manifests_sha256"], digests)
            if changed:
                path, before, digest = changed
                raise RunError(f"{self.out}: manifest {path} has changed since the run started (sha256 "
                               f"{before[:12]}... -> {digest[:12]}...): resuming would go on with other rows; "
                               "restore the manifest, or start a new run from this one with --init-from")
            changed = _first_change(saved.get("inputs_sha256"), inputs)
            if changed:
                key, before, digest = changed
                raise RunError(f"{self.out}: {key}={getattr_path(self.config, key)!r} has changed since the run "
                               f"started (its files' sha256 {before} -> {digest}): resuming would go on with "
                               "another component; restore it, or start a new run from this one with --init-from")
            if saved.get("num_processes") not in (None, processes):
                log.warning("%s: resumed on %s processes, started on %s: the global batch changes with them",
                            self.out, processes, saved["num_processes"])
            if saved.get("threads") not in (None, threads) and self.device.type == "cpu":
                log.warning("%s: resumed with %s CPU threads, started with %s: the arithmetic's order changes with "
                            "them, so the weights will not equal an uninterrupted run's bit for bit", self.out,
                            threads, saved["threads"])
            if "inputs_sha256" not in saved and self.is_main:   # a run begun by an earlier tta: guarded from now on
                log.info("%s: data.json of an earlier tta; its frozen components and datastore are recorded now "
                         "(changes before this resume cannot be seen)", self.out)
                body = {**saved, "inputs_sha256": inputs, "threads": saved.get("threads", threads),
                        "cwd": saved.get("cwd", os.getcwd())}
                atomic_write_text(record, json.dumps(body, indent=1) + "\n")
            return
        if self.is_main:
            body = {"manifests_sha256": digests, "inputs_sha256": inputs, "num_processes": processes,
                    "threads": threads, "cwd": os.getcwd()}
            atomic_write_text(record, json.dumps(body, indent=1) + "\n")

    def check_audio(self, *datasets) -> None:
        """Refuse to train on datasets (None: skipped) with a row whose audio file cannot be read, before the
        first step and on every resume: each one's `check_audio()` (`AudioDataset`'s reads every file's header),
        which raises a ValueError naming the bad rows. Such a row stopped the run when it was first drawn, maybe
        hours in, and every resume with it. The main process checks, once for the run; the others wait for its
        answer and stop with it (a main process stopped alone left them waiting in the next collective call)."""
        message = ""
        error = None
        if self.is_main:
            for dataset in datasets:
                if dataset is None or not hasattr(dataset, "check_audio"):
                    continue
                try:
                    dataset.check_audio(progress=self.progress)
                except ValueError as e:
                    message, error = str(e), e
                    break
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            message = broadcast_object_list([message], from_process=0)[0]
        if not message:
            return
        if self.resume:   # a resume refuses another manifest
            message += ("; a resume goes on with the manifest the run began with: restore the files, or start a new "
                        "run from this one with --init-from")
        raise RunError(message) from error

    # -- objects -----------------------------------------------------------------------------------

    def prepare(self, *objects):
        return self.accelerator.prepare(*objects)

    def track(self, **objects: Any) -> None:
        """Register what checkpoints hold: modules, optimizers, LR schedulers and EMAs, by name."""
        for name, obj in objects.items():
            if isinstance(obj, EMA):
                self._emas[name] = obj
            elif isinstance(obj, nn.Module):
                self._modules[name] = obj
            elif isinstance(obj, torch.optim.Optimizer):
                self._optimizers[name] = obj
            elif hasattr(obj, "state_dict") and hasattr(obj, "get_last_lr"):
                self._schedulers[name] = obj
            else:
                raise TypeError(f"cannot track {name}={type(obj).__name__}")

    def make_ema(self, name: str, model: nn.Module) -> EMA | None:
        """An EMA of the module tracked as `name` when train.ema_decay > 0, else None."""
        if self.train.ema_decay <= 0:
            return None
        ema = EMA(self.unwrap(model), self.train.ema_decay)
        self._emas[name] = ema
        return ema

    def unwrap(self, model: nn.Module) -> nn.Module:
        return self.accelerator.unwrap_model(model)

    # -- loop --------------------------------------------------------------------------------------

    def batches(self, dataset, collate_fn: Callable | None = None, *, shuffle: bool = True,
                keys: list[str] | None = None, names: list | None = None) -> Iterator:
        """Yield training batches (on the run's device) until train.max_steps optimizer steps are done.

        With data.balance > 0 or data.key_weights, items are drawn with weight
        count(key)^-balance times key_weights of the item's names; `keys` (one per item) defaults to
        `dataset.balance_keys()`, `names` (the names key_weights can match, per item) to
        `dataset.weight_names()`, else the keys."""
        data = getattr(self.config, "data", None)
        if any(getattr(data, field, None) for field in KEYED_FIELDS) and hasattr(dataset, "weight_names"):
            check_keyed_fields(data, dataset.weight_names())   # every trainer's items can repeat or change speed
        allowed = getattr(dataset, "unreadable_allowed", 0)
        if allowed:   # its items may stand in for rows that failed to decode, and say which
            collate_fn = _SetAsideUnreadable(collate_fn)
            self._recall_unreadable(dataset)
        acc = self.accelerator
        sampler = ResumableSampler(len(dataset), self.train.seed, start=self.data_position,
                                   rank=acc.process_index, world_size=acc.num_processes, shuffle=shuffle,
                                   weights=self._balance_weights(dataset, keys, names))
        loader = torch.utils.data.DataLoader(dataset, batch_size=self.train.batch_size, sampler=sampler,
                                             collate_fn=collate_fn, num_workers=_workers(self.config),
                                             drop_last=False,
                                             # its own generator: creating the iterator must not draw from
                                             # the global RNG, or a resumed run would diverge
                                             generator=torch.Generator().manual_seed(self.train.seed))
        if self.progress and self.is_main and self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.train.max_steps, initial=self.step, desc=f"train {self.out.name}",
                             dynamic_ncols=True, smoothing=0.05)
        per_batch = self.train.batch_size * acc.num_processes
        try:
            for batch in loader:
                if self.step >= self.train.max_steps:
                    break
                if allowed:
                    found, batch = batch
                    self._skip_unreadable(dataset, found, self.step + 1)
                self.data_position += per_batch
                yield _to_device(batch, self.device)
                if self.step >= self.train.max_steps:
                    break
        except Exception as e:
            error = worker_error(e)
            if error is None:
                raise
            raise error from e

    def evaluation_items(self, dataset, count: int | None = None) -> Iterator:
        """dataset[index] of its first `count` rows (None: every row), in order, for a pass over them during the
        run: validation's held-out clips, the VAE's scale_factor over training clips. An AudioDataset with
        data.max_unreadable > 0 leaves out a row whose file fails to decode as a training item does (warned about
        once, counted toward the rows of its split the run may lose, listed in metrics.jsonl) and takes the next
        row in its place; otherwise such a file stops the run, as it did."""
        if not getattr(dataset, "unreadable_allowed", 0) or not hasattr(dataset, "first_items"):
            return (dataset[index] for index in range(len(dataset) if count is None else min(count, len(dataset))))
        self._recall_unreadable(dataset)
        return dataset.first_items(count, lambda index, why: self._skip_unreadable(dataset, [(index, why)],
                                                                                   self.step, drawn=False))

    def _skip_unreadable(self, dataset, found: list[tuple[int, str]], step: int, *, drawn: bool = True) -> None:
        """Warn about, record (metrics.jsonl, at `step`) and count the rows whose files failed to decode when read:
        when the batch's items drew them (each item stands in another row's, drawn from its seed; `drawn`), or in
        a pass over the first rows (`evaluation_items`: the next row is taken). Once each, however many
        DataLoader workers draw them. One more than the dataset allows (data.max_unreadable) stops the run. Each
        process counts the rows it draws; the main one records every process's, the others' at checkpoints, each
        record naming its process when there are several ("process", "processes": what a resume recalls)."""
        unreadable = self._unreadable.setdefault(dataset.split, {})
        for index, why in found:
            if index in unreadable:
                continue
            unreadable[index] = why
            if len(unreadable) > dataset.unreadable_allowed:
                raise dataset.unreadable_error(unreadable)
            log.warning("%s (%s): skipped, %s in its place (%d of the %d unreadable files data.max_unreadable=%g "
                        "allows; listed in metrics.jsonl)", why, dataset.row_place(index),
                        "another row drawn" if drawn else "the next row taken", len(unreadable),
                        dataset.unreadable_allowed, dataset.max_unreadable)
            record = {"step": step, "unreadable": str(dataset.paths[index]), "row": dataset.rows[index].id,
                      "at": dataset.manifest_line(index), "error": why}
            acc = self.accelerator
            if acc.num_processes > 1:
                record.update(process=acc.process_index, processes=acc.num_processes)
            if self.is_main:
                self._record_unreadable([record])
            else:
                self._unrecorded.append(record)

    def _record_unreadable(self, records: list[dict]) -> None:
        """Append to metrics.jsonl each record of a row it does not list yet for the same process (main
        process)."""
        for record in records:
            key = (record.get("process", 0), record["row"])
            if key not in self._recorded_unreadable:
                self._recorded_unreadable.add(key)
                self.log_metrics(**record)

    def _recall_unreadable(self, dataset) -> None:
        """On a resume, the rows of `dataset`'s split that metrics.jsonl lists as unreadable up to the resumed step,
        as this process found them: counted again, and not warned about again, as in the run that found them (on
        several processes each counts and warns of the rows it draws itself). Resumed on another number of
        processes, which deals the rows out anew, every process recalls every row the run found. A record
        without "process" and "processes" is taken for a one-process run's: of a run on one process, or of a
        tta before those fields (d5dbf32), which wrote none on several processes either: such a run resumed on
        several processes has every process recall every row, as on another number of processes. Once a
        split."""
        split = dataset.split
        if split in self._unreadable:
            return
        unreadable = self._unreadable[split] = {}
        path = self.out / "metrics.jsonl"
        if not self.step or not path.is_file():
            return
        acc = self.accelerator
        ids = {row.id: i for i, row in enumerate(dataset.rows)}
        for line in path.read_text().splitlines():
            try:   # (another process may be appending a line while this one reads)
                row = json.loads(line)
            except ValueError:
                continue
            if not isinstance(row, dict) or "unreadable" not in row or row.get("row") not in ids or \
                    not isinstance(row.get("step"), int) or row["step"] > self.step:
                continue   # (a later step's: the main process drops those from the file as it resumes)
            process, processes = row.get("process", 0), row.get("processes", 1)
            self._recorded_unreadable.add((process, row["row"]))
            if processes != acc.num_processes or process == acc.process_index:
                unreadable.setdefault(ids[row["row"]], str(row.get("error", "")))
        if unreadable:
            training = split == getattr(getattr(self.config, "data", None), "train_split", split)
            log.warning("%s: %s could not be decoded%s before step %d (listed in metrics.jsonl); skipped as before "
                        "(%d allowed by data.max_unreadable=%g)", self.out,
                        counted(len(unreadable), "training file") if training else
                        counted(len(unreadable), f"file of split {split!r}", f"files of split {split!r}"),
                        f" by process {acc.process_index} of {acc.num_processes}" if acc.num_processes > 1 else "",
                        self.step, dataset.unreadable_allowed, dataset.max_unreadable)

    def _balance_weights(self, dataset, keys: list[str] | None, names: list | None = None) -> torch.Tensor | None:
        data = getattr(self.config, "data", None)
        balance = float(getattr(data, "balance", 0.0))
        extra = dict(getattr(data, "key_weights", None) or {})
        if balance <= 0 and not extra:
            return None
        what = f"data.balance={balance}" if balance > 0 else "data.key_weights"
        if keys is None:
            if not hasattr(dataset, "balance_keys"):
                raise RunError(f"{what}: {type(dataset).__name__} has no labels to balance "
                               "(no balance_keys()); set data.balance=0 and data.key_weights={}")
            by_all = getattr(data, "balance_labels", "first") == "all"
            keys = dataset.balance_keys("all") if by_all else dataset.balance_keys()
        if len(keys) != len(dataset):
            raise RunError(f"{what}: {len(keys)} keys for {len(dataset)} training items")
        labelled = [k if isinstance(k, tuple) else (k,) for k in keys]   # data.balance_labels "all": tuples
        if names is None and extra:
            names = dataset.weight_names() if hasattr(dataset, "weight_names") else labelled
        if names is not None and len(names) != len(keys):
            raise RunError(f"{what}: {len(names)} name lists for {len(keys)} training items")
        check_key_weights(extra, names if names is not None else labelled)
        weights = balance_weights(list(keys), balance, extra, names)
        p = (weights / weights.sum()).tolist()
        count: dict[str, int] = {}
        share: dict[str, float] = {}     # the share of draws that carry the key
        for ks, w in zip(labelled, p):
            for k in ks:
                count[k] = count.get(k, 0) + 1
                share[k] = share.get(k, 0.0) + w
        rare, common = min(count, key=count.get), max(count, key=count.get)
        for k, w in sorted(extra.items()):
            hit = [i for i, ns in enumerate(names) if k in ns]
            log.info("data.key_weights: %r x%g -> %.3g%% of draws (%d items)", k, w, 100 * sum(p[i] for i in hit),
                     len(hit))
        log.info("data.balance=%g: %d keys over %d items; share of draws: rarest key %r (%d items) %.3g%%, most "
                 "common %r (%d items) %.3g%%", balance, len(count), len(keys), rare, count[rare],
                 100 * share[rare], common, count[common], 100 * share[common])
        return weights

    def accumulate(self, *models: nn.Module):
        return self.accelerator.accumulate(*models)

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    @property
    def optimizer_stepped(self) -> bool:
        """Whether the optimizer step just taken changed the weights: not between accumulation micro-batches, and
        not when float16's loss scaler skipped it for an overflow. LR schedulers step only then."""
        return self.accelerator.sync_gradients and not self.accelerator.optimizer_step_was_skipped

    def average_grads(self, *parts: nn.Module | torch.Tensor) -> None:
        """Average the gradients of modules / parameters over the processes, on optimizer steps. DDP averages
        only what runs through its wrapper's forward; a part called unwrapped (a loss module's own weights, a
        model's method) needs this. A no-op on one process."""
        acc = self.accelerator
        if acc.num_processes == 1 or not acc.sync_gradients:
            return
        import torch.distributed as dist

        for part in parts:
            for p in (part.parameters() if isinstance(part, nn.Module) else [part]):
                if not p.requires_grad:
                    continue
                if p.grad is None:       # every process must reduce the same tensors, in the same order
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(acc.num_processes)

    def clip_grad(self, model: nn.Module) -> float | None:
        """Clip the global grad norm to train.grad_clip on optimizer steps; returns the norm."""
        if self.train.grad_clip > 0 and self.accelerator.sync_gradients:
            return float(self.accelerator.clip_grad_norm_(model.parameters(), self.train.grad_clip))
        return None

    def end_step(self, **scalars: float) -> bool:
        """Close one batch. Returns True when it completed an optimizer step (then EMA, log, checkpoint).

        The scalars logged for a step are their means over its micro-batches and over the processes."""
        self.micro_step += 1
        for k, v in scalars.items():
            self._pending.setdefault(k, []).append(float(v))
        if self.micro_step % self.train.gradient_accumulation_steps:
            return False
        self.step += 1
        if not self.accelerator.optimizer_step_was_skipped:   # float16's scaler skipped it: nothing to average in
            for name, ema in self._emas.items():
                ema.update(self.unwrap(self._modules[name]))
        scalars = {k: sum(v) / len(v) for k, v in sorted(self._pending.items())}
        self._pending = {}
        if scalars and self.accelerator.num_processes > 1:
            mean = self.accelerator.reduce(torch.tensor(list(scalars.values()), dtype=torch.float64,
                                                        device=self.device), "mean")
            scalars = dict(zip(scalars, mean.tolist()))
        if self._bar is not None:
            self._bar.update(1)
            if scalars:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in scalars.items()}, refresh=False)
        if self.step % self.train.log_every == 0 or self.step == self.train.max_steps:
            lrs = {f"lr_{n}": s.get_last_lr()[0] for n, s in self._schedulers.items()}
            self.log_metrics(split="train", **scalars, **lrs)
        if self.step % self.train.checkpoint_every == 0 or self.step == self.train.max_steps:
            self.save_checkpoint()
        return True

    def should(self, every: int) -> bool:
        """True right after an optimizer step whose number is a multiple of `every`."""
        return every > 0 and self.step > 0 and self.step % every == 0 and \
            self.micro_step % self.train.gradient_accumulation_steps == 0

    def log_metrics(self, **values: Any) -> None:
        """Append {"step", "time", **values} to metrics.jsonl (main process only)."""
        if not self.is_main:
            return
        row = {"step": self.step, "seconds": round(time.time() - self._t0, 3), **values}
        path = self.out / "metrics.jsonl"
        try:
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:   # a full disk's error names no file
            raise OSError(e.errno, e.strerror, str(path)) if e.filename is None and e.errno else e from None

    # -- checkpoints -------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path | None:
        self.accelerator.wait_for_everyone()
        folder = self.checkpoints_dir / f"step_{self.step}"
        ranks = None
        if self.accelerator.num_processes > 1:   # each process draws its own noise: keep every stream
            from accelerate.utils import gather_object

            ranks = gather_object([rng_state()])
            records, self._unrecorded = gather_object(self._unrecorded), []   # the other processes' unreadable rows
            if self.is_main:
                self._record_unreadable(records)
        if not self.is_main:
            return None
        with atomic_dir(folder) as tmp:
            for name, module in self._modules.items():
                save_component(tmp / name, self.unwrap(module))
            state = {
                "step": self.step, "micro_step": self.micro_step, "data_position": self.data_position,
                "optimizers": {n: o.state_dict() for n, o in self._optimizers.items()},
                "schedulers": {n: s.state_dict() for n, s in self._schedulers.items()},
                "emas": {n: e.state_dict() for n, e in self._emas.items()},
                "rng": rng_state(),
            }
            if self.accelerator.scaler is not None:     # fp16 on CUDA: the loss scale it has found so far
                state["scaler"] = self.accelerator.scaler.state_dict()
            if ranks is not None:
                state["rng_ranks"] = ranks
            save_train_state(tmp / TRAIN_STATE_NAME, state)
        self._prune()
        log.info("checkpoint %s", folder)
        return folder

    def _prune(self) -> None:
        keep = self.train.keep_checkpoints
        if keep <= 0:
            return
        for old in self.list_checkpoints()[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    def list_checkpoints(self) -> list[Path]:
        return complete_checkpoints(self.checkpoints_dir)

    def restore(self) -> int:
        """On --resume, load the latest complete checkpoint (with a train.max_steps below its step, the one at
        max_steps) into everything tracked, fp16's loss scale included; returns the step.

        A fresh run with train.init_from starts from that run's weights instead (see `init_weights`)."""
        if not self.resume:
            if self.train.init_from:
                self.init_weights(self.train.init_from)
            self._seed_process()
            return 0
        ckpts = self.list_checkpoints()
        if not ckpts:   # (with one process `tta train --resume` starts such a run again before it gets here)
            raise RunError(f"{self.out}: no complete checkpoint under checkpoints/ to resume from (a run stopped "
                           "before its first checkpoint: `--resume` with one process starts it again; with several, "
                           "delete its config.json, data.json and metrics.jsonl, keeping cache/, and start it again)")
        folder = self._resume_checkpoint(ckpts)
        if folder != ckpts[-1]:
            log.info("%s: train.max_steps=%d is below the latest checkpoint (%s): resuming from %s", self.out,
                     self.train.max_steps, ckpts[-1].name, folder.name)
        state = load_train_state(folder / TRAIN_STATE_NAME)
        for name, module in self._modules.items():
            weights = folder / name / WEIGHTS_NAME
            load_into(self.unwrap(module), load_state_dict(weights), where=str(folder / name))
        for name, opt in self._optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        for name, sched in self._schedulers.items():
            sched.load_state_dict(state["schedulers"][name])
        for name, ema in self._emas.items():
            ema.load_state_dict(state["emas"][name])
        scaler = self.accelerator.scaler
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        elif scaler is not None:
            log.warning("%s holds no fp16 loss-scaler state (written by an older tta): the loss scale starts afresh",
                        folder)
        self.step, self.micro_step = state["step"], state["micro_step"]
        self.data_position = state["data_position"]
        ranks, index = state.get("rng_ranks"), self.accelerator.process_index
        if ranks is not None and len(ranks) == self.accelerator.num_processes:
            set_rng_state(ranks[index])
        else:      # one process before (or another number of them): the main stream, the others derived
            set_rng_state(state["rng"])
            self._seed_process()
        self._truncate_metrics()
        self._resumed_at = self.step
        log.info("resumed %s at step %d", self.out, self.step)
        if self._bar is not None:
            self._bar.n = self.step
        return self.step

    def missed_validation(self, every: int, *, at_end: bool = True) -> bool:
        """True once, right after a resume, when the checkpoint's step was due a validation (a multiple of
        `every`, or max_steps with `at_end`) and metrics.jsonl holds none for it: the run was stopped between
        writing the checkpoint and validating it. The trainer then validates before its next step. Every process
        calls it at the same point (it waits for them all), and all get the same answer."""
        step, self._resumed_at = self._resumed_at, 0
        if not step or not (every and step % every == 0 or at_end and step == self.train.max_steps):
            return False
        self.accelerator.wait_for_everyone()   # the main process has truncated metrics.jsonl by now
        try:
            rows = [json.loads(line) for line in (self.out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        except (OSError, ValueError):
            return False
        return not any(r.get("split") == "valid" and r.get("step") == step for r in rows)

    def _resume_checkpoint(self, ckpts: list[Path]) -> Path:
        """The checkpoint a resume continues from: the latest, or, when train.max_steps is below its step (a run
        shortened on resume), the one at max_steps; refused when none was kept there."""
        steps = [step_of(c) for c in ckpts]
        target = self.train.max_steps
        if steps[-1] <= target:
            return ckpts[-1]
        if target in steps:
            return ckpts[steps.index(target)]
        raise RunError(f"{self.out}: train.max_steps={target} is below the latest checkpoint's step {steps[-1]} "
                       f"and no checkpoint was kept at step {target} (checkpoints: "
                       f"{', '.join(f'step_{s}' for s in steps)}); set train.max_steps to one of those steps")

    def _seed_process(self) -> None:
        """Give every process but the main one its own random stream, once the models are built (their
        initialisation must agree): otherwise all processes draw the same noise, timesteps and dropout for
        different data. The main process keeps its stream, so a one-process run is unchanged."""
        index = self.accelerator.process_index
        if index > 0:
            seed_everything(int(np.random.SeedSequence([self.train.seed, index, self.step]).generate_state(1)[0]))

    def _truncate_metrics(self) -> None:
        """Drop the metrics rows of steps after the resumed checkpoint (they are trained again). A last line cut
        short (the run killed, or its disk full, while appending it) is dropped with a warning; a bad line
        before it is an error naming it."""
        path = self.out / "metrics.jsonl"
        if not self.is_main or not path.is_file():
            return
        lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
        keep = []
        for i, (n, line) in enumerate(lines):
            try:
                row = json.loads(line)
            except ValueError:
                if i == len(lines) - 1:
                    log.warning("%s:%d: a line cut short (the run was stopped while writing it); dropped", path, n)
                    break
                raise RunError(f"{path}:{n}: not a JSON metrics row; repair or remove the line to resume") from None
            if not isinstance(row, dict):
                raise RunError(f"{path}:{n}: not a JSON metrics row; repair or remove the line to resume")
            if row.get("step", 0) <= self.step:
                keep.append(line)
        atomic_write_text(path, "".join(line + "\n" for line in keep))

    def init_weights(self, source: str | os.PathLike) -> None:
        """Fine-tuning start: load weights from another run into the tracked modules of this fresh run.

        `source` is a run folder (its latest complete checkpoint, else final/), one checkpoints/step_N
        folder, a component folder (weights for the first tracked module; a diffusers model folder too),
        or a pipeline folder (its sub-folder named like each tracked module, e.g. unet/, or as `init_subfolders`
        says: fine-tune the embedded default or an imported AudioLDM); `init_loaders` turns a component folder
        into a module's training form. A module that has an EMA
        in the source gets the EMA weights. Optimizers, schedulers and the step start fresh; this run's
        EMAs restart from the loaded weights. Modules, and tensors the source lacks or shapes differently,
        keep their fresh initialisation, with a warning (e.g. a retrieval context encoder and the key/value
        projections of the cross-attention it feeds, added to a text-only LDM), unless `init_hooks` has a
        hook for that module, which is then given the module and the list of its fresh tensors' keys (a grown
        LDM's new transformer blocks start as the identity). A tensor only the source has, or more than half
        of a module's tensors fresh, is an error."""
        src = Path(source)
        if not src.exists():
            raise RunError(f"train.init_from={str(source)!r}: no such run, checkpoint, component or pipeline folder")
        src = init_source(src)
        weights: dict[str, dict] = {}
        if (src / TRAIN_STATE_NAME).is_file():      # a checkpoint: one sub-folder per tracked module
            emas = load_train_state(src / TRAIN_STATE_NAME).get("emas", {})
            for name in self._modules:
                if name in emas:
                    weights[name] = emas[name]["shadow"]
                elif (src / name / WEIGHTS_NAME).is_file():
                    weights[name] = load_state_dict(src / name / WEIGHTS_NAME)
        elif (src / "pipeline.json").is_file():   # a pipeline folder: one sub-folder per component
            for name, module in self._modules.items():
                sub = self.init_subfolders.get(name, name)
                if sub is not None and (src / sub).is_dir():
                    weights[name] = self._inference_weights(name, src / sub, module)
        elif (src / WEIGHTS_NAME).is_file() or _diffusers_weights(src) or \
                (next(iter(self._modules)) in self.init_loaders and (src / CONFIG_NAME).is_file()):
            name, module = next(iter(self._modules.items()))    # a component folder: the main module
            weights[name] = self._inference_weights(name, src, module)
        if not weights:
            raise RunError(f"train.init_from={str(source)!r}: no weights for {', '.join(self._modules)} there "
                           f"(expected a run folder, checkpoints/step_N, a component or a pipeline folder)")
        for name, module in self._modules.items():
            if name not in weights:
                if self.init_subfolders.get(name, name) is None and not (src / TRAIN_STATE_NAME).is_file():
                    log.info("init_from %s: %s starts fresh (an inference folder holds none)", src, name)
                else:
                    log.warning("init_from %s: no %s weights there; it keeps its fresh initialisation", src, name)
                continue
            module = self.unwrap(module)
            own = module.state_dict()
            src_w = weights[name]
            new = [k for k in own if k not in src_w]
            reshaped = [k for k in own if k in src_w and tuple(src_w[k].shape) != tuple(own[k].shape)]
            fresh = [k for k in new + reshaped if own[k].is_floating_point()]   # (EMA shadows: floats only)
            floats = [k for k in own if own[k].is_floating_point()]
            if len(fresh) > len(floats) // 2:
                raise RunError(f"train.init_from={str(source)!r}: {len(fresh)} of {len(floats)} {name} tensors are "
                               f"missing there or shaped differently (first: {', '.join(fresh[:3])}); "
                               "not a run of this model")
            if fresh:
                log.warning("init_from %s: %d %s tensors are new or reshaped in this model and keep the values it "
                            "was built with: a fresh initialisation, or a pretrained part it loads itself (a MiniLM "
                            "text tower's tuned layers)%s (first: %s)", src, len(fresh), name,
                            " unless its init hook sets them" if name in self.init_hooks else "", ", ".join(fresh[:3]))
            # e.g. a retrieval context: the context encoder is new, and the second attention layer of each
            # block attends to the context instead of to itself, so its key/value projections change width.
            # A tensor only the source has is an error (load_into names it).
            state = {**{k: own[k] for k in new + reshaped}, **{k: v for k, v in src_w.items() if k not in reshaped}}
            load_into(module, state, where=f"{src}/{name}")
            if fresh and name in self.init_hooks:
                self.init_hooks[name](module, fresh)
            if name in self._emas:
                self._emas[name].reset(module)
        log.info("initialised %s from %s", ", ".join(n for n in self._modules if n in weights), src)

    def _inference_weights(self, name: str, folder: Path, module: nn.Module) -> dict:
        """The state dict of the tracked module `name` from a component folder, in its training form."""
        loader = self.init_loaders.get(name)
        return loader(folder) if loader is not None else _folder_weights(folder, self.unwrap(module))

    def finish(self, model: nn.Module, name: str | None = None) -> Path:
        """Write final/ (EMA weights when an EMA of this model is tracked) and close the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.accelerator.wait_for_everyone()
        final = self.out / "final"
        module = self.unwrap(model)
        ema = self._emas.get(name or _name_of(self._modules, model))
        if ema is not None:
            module = ema.averaged(module)
        if self.is_main:
            save_component(final, module)
        return final


@contextlib.contextmanager
def discard_on_failure(out: str | os.PathLike, *, resume: bool = False, lock: bool = True) -> Iterator[None]:
    """Around one fresh training run in `out` (a trainer's `train(config, out)`; `tta train` uses it): when it
    fails before its first complete checkpoint, remove what it wrote there, so the corrected command can be
    run again as it is. A run folder is made before the trainer has loaded its components, weights and data,
    so a bad --init-from, component or manifest row, or a loss that turns non-finite, is found after the
    folder (and its config.json, metrics.jsonl, samples/) exists; left there it would only block the rerun
    ("already holds a run"), and --resume has no checkpoint to continue from.

    The folder itself (with the parents this call made) goes only when it did not exist before; in a folder
    that did, only the entries that were not there before go. A pre-encoded cache/ stays (with the folder and its
    lock file): the same command, run again, reads it. A resume (`resume=True`) and a run that has a
    complete checkpoint (it can be resumed) are left as they are. Only the main process removes anything. What
    it removed is logged at info level, or at debug level when the run had written no more than its lock file,
    config.json and data.json (it never started: the error says all there is). With `lock` (the default) the
    run holds `run_lock(out)` throughout; a command refused by it removes nothing."""
    out = Path(out)
    if resume:
        with run_lock(out) if lock else contextlib.nullcontext():
            yield
        return
    made = None                     # the top-most of out and its parents that this call may create
    for folder in (out, *out.parents):
        if folder.exists() or folder.is_symlink():
            break
        made = folder
    before = None if made is not None else set(os.listdir(out)) if out.is_dir() else None
    with run_lock(out) if lock else contextlib.nullcontext():   # a second command into the folder stops here
        try:
            yield
        except BaseException:
            if made is not None or before is not None:
                _discard_unstarted(out, made, before)
            raise


def resume_view(config, saved: dict) -> tuple[dict, dict]:
    """(saved, resolved): a run's saved config.json and `config` (the one it is resumed with) as a resume compares
    them. A field added since the run started takes the behaviour the run started with (`legacy_defaults`, e.g. a
    VAE run from before loss.learn_logvar learned its log-variance), or else this version's default (the saved
    config read through this version's class; one that no longer parses is compared as is). The weights come
    from the run's own checkpoint, and init_from only records where the run started: resuming without repeating
    it, or naming the run folder whose checkpoint it then resolved to (`tta train` records that), continues the
    same run."""
    saved, resolved = copy.deepcopy(saved), to_dict(config)
    for dotted, value in getattr(type(config), "legacy_defaults", {}).items():
        *parents, name = dotted.split(".")
        node = saved
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and name not in node:
            node[name] = value
    if is_dataclass(config):
        try:
            saved = to_dict(from_dict(type(config), saved))
        except (ConfigError, TypeError, ValueError):
            pass
    old_init = saved.get("train", {}).get("init_from") if isinstance(saved.get("train"), dict) else None
    new_init = resolved.get("train", {}).get("init_from")
    named = Path(new_init) if new_init else None   # init_from as given now (e.g. RUN); old_init is what was
    # recorded (RUN/checkpoints/step_N or RUN/final)
    if old_init and (not new_init or Path(old_init).parent in (named / "checkpoints", named)
                     or Path(old_init) == named):
        resolved["train"]["init_from"] = old_init
    return saved, resolved


def _with_init_checkpoint(config, train: TrainConfig):
    """(config, train) of a fresh run with a train.init_from naming a run folder: its checkpoint now (else its
    final/) in their place, so config.json records the weights the run starts from and `--config RUN/config.json`
    starts from the same ones (a later checkpoint of that run would be another start)."""
    from dataclasses import replace

    source = init_source(train.init_from)
    if source == Path(train.init_from) or not source.is_dir():
        return config, train
    log.info("train.init_from %s: its latest checkpoint (or final/), %s", train.init_from, source)
    resolved = replace(train, init_from=str(source))
    if is_dataclass(config) and getattr(config, "train", None) is train:
        config = replace(config, train=resolved)
    return config, resolved


def init_source(source: str | os.PathLike) -> Path:
    """What a train.init_from names: a run folder's latest complete checkpoint (else its final/), or the folder
    itself (a checkpoint, component or pipeline folder)."""
    src = Path(source)
    if (src / "checkpoints").is_dir() or (src / "final").is_dir():     # a run folder
        ckpts = complete_checkpoints(src / "checkpoints")
        return ckpts[-1] if ckpts else src / "final"
    return src


def _first_change(recorded, now: dict) -> tuple[str, str, str] | None:
    """(key, recorded digest, digest now) of the first entry of `now` whose recorded digest differs, or None (a
    key the record lacks is no change: the record is older than the key)."""
    recorded = recorded if isinstance(recorded, dict) else {}
    return next(((k, recorded[k], d) for k, d in now.items() if recorded.get(k) not in (None, d)), None)


def input_digests(config) -> dict[str, str]:
    """files_sha256 of the folders a run config trains with besides the data (a frozen VAE, CLAP or vocoder, a
    vocoder's `vae`, a retrieval datastore), by config key; a run folder counts by its final/."""
    from tta.checkpoint import files_sha256

    subfolder = {"components.vae": "vae", "vae": "vae", "components.clap": "text_encoder",
                 "components.vocoder": "vocoder"}   # of a pipeline folder
    out = {}
    for key in [*subfolder, "retrieval.datastore"]:
        value = getattr_path(config, key)
        if not isinstance(value, str) or not value or not Path(value).exists():
            continue
        path = Path(value)
        if (path / "final").is_dir():              # a run folder: its release artifact
            path = path / "final"
        elif (path / "pipeline.json").is_file() and key in subfolder:   # the component the run loads from it
            path = path / subfolder[key]
        # what the model holds, not notes beside it (a README added to a component folder is no new model), nor a
        # datastore's finite.json (FINITE_NAME: its load's record of the embeddings it found finite, written by the
        # first load, which changes no entry)
        files = [path] if path.is_file() else sorted(
            f for f in path.rglob("*") if f.is_file() and f.suffix.lower() not in (".md", ".txt", ".png")
            and not (key == "retrieval.datastore" and f.name == FINITE_NAME))
        out[key] = files_sha256(files, path.parent if path.is_file() else path)
    return out


# the paths of a run config that name data a run reads (manifests, frozen components, a datastore)
RUN_PATH_KEYS = ("data.manifest", "data.extra_manifests", "components.vae", "components.clap", "components.vocoder",
                 "vae", "retrieval.datastore")


def check_run_paths(config, out: str | os.PathLike, *, resume: bool) -> None:
    """Refuse a relative path of a run config (RUN_PATH_KEYS) that does not exist from the current folder, saying
    that it is read from there: `--config RUN/config.json --resume` run from another folder failed on
    "data/clean.jsonl: manifest not found", with no word that the path starts where the run was started, not at
    the config or the run folder. On a `resume`, the folder the run in `out` was started in (DATA_RECORD's cwd) is
    named when it is another (a fresh run is no run started there, whatever an older one in `out` recorded).
    Absolute paths, and those that exist, are left to the trainer's own checks."""
    cwd = Path.cwd()
    started = None
    if resume:
        try:
            record = json.loads((Path(out) / DATA_RECORD).read_text())
            if isinstance(record, dict) and isinstance(record.get("cwd"), str) and Path(record["cwd"]) != cwd:
                started = Path(record["cwd"])
        except (OSError, ValueError):
            pass
    for key, name, path in run_paths(config):
        if Path(path).is_absolute() or Path(path).exists():
            continue
        what = "manifest not found" if key.startswith("data.") else "not found"
        where = ""
        if started is not None:
            where = (f"; the run was started in {started}: run from there or give an absolute path"
                     if (started / path).exists() else f"; the run was started in {started}, where it is "
                     "missing too")
        raise RunError(f"{name}={path}: {what}; a run config's relative paths are read from the current "
                       f"folder, {cwd}{where}")


def run_paths(config, keys: tuple[str, ...] = RUN_PATH_KEYS) -> Iterator[tuple[str, str, str]]:
    """(key, name, path) of each path a run config sets under `keys`: a list's items named key[i]."""
    for key in keys:
        value = getattr_path(config, key)
        named = [(f"{key}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, (list, tuple)) \
            else [(key, value)]
        for name, path in named:
            if isinstance(path, str) and path:
                yield key, name, path


def getattr_path(obj, dotted: str):
    """obj.a.b for "a.b", or None where a part is missing."""
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj


RUN_LOCK = ".lock"   # in a run folder: held (flock) by the main process of the run training there
_RUN_ENTRIES = (CONFIG_NAME, DATA_RECORD, "metrics.jsonl", "samples", "checkpoints", "pipeline")  # not cache/
_RUN_BOOKKEEPING = {RUN_LOCK, CONFIG_NAME, DATA_RECORD}   # what a run writes before it loads or trains anything


def unstarted_run(out: str | os.PathLike) -> dict | None:
    """The saved config of a run folder that holds a run stopped before its first complete checkpoint (killed
    with SIGKILL, by the OOM killer or a reboot, which leave no chance to clean up), else None. Such a folder
    blocks a fresh run ("already holds a run") and has nothing to resume."""
    out = Path(out)
    if not (out / CONFIG_NAME).is_file() or complete_checkpoints(out / "checkpoints") or (out / "final").exists():
        return None
    try:
        saved = json.loads((out / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def restart_unstarted(out: str | os.PathLike, config, check: Callable[[Any], None] | None = None):
    """For `tta train --resume` on one process: when `out` holds a run stopped before its first complete
    checkpoint, clear it (keeping cache/) and return the config to start it again from step 0 with: `config`
    with the train.init_from the run began with. A config that differs from the saved one otherwise (but for
    train.max_steps, which a resume may change) is refused, as a resume refuses it, and so is one the restart
    would fail on before its first step (`check_restart`, then `check(config)`: the trainer's own, the rows):
    both before anything is cleared, so a refused restart leaves `out` as it was. When `out` holds no run but the
    pre-encoded cache/ a run stopped by Ctrl-C, SIGTERM or an error keeps (`left_by_a_stopped_run`), `config` as it
    is: --resume restarted a run killed with SIGKILL and refused one stopped by Ctrl-C at the same point ("nothing
    to resume"). None when there is a run to resume, or nothing that shows a run was started in `out` (a missing
    or mistyped folder, an unrelated one: the resume refuses it), or on several processes (which cannot agree on
    it before they start)."""
    from tta.config import apply_overrides

    if int(os.environ.get("WORLD_SIZE", "1")) != 1:
        return None
    if not has_run(out):   # a run stopped by Ctrl-C, SIGTERM or an error left none (but cache/): as one killed
        if not left_by_a_stopped_run(out):
            return None
        log.warning(RESTART_MESSAGE, out)
        return config
    saved = unstarted_run(out)
    if saved is None:
        return None
    then, now = resume_view(config, saved)
    init_from = now.get("train", {}).get("init_from")
    if init_from != config.train.init_from:   # the start the run recorded (--resume cannot repeat --init-from)
        config = apply_overrides(config, [f"train.init_from={json.dumps(init_from)}"])
    source = init_source(init_from) if init_from else None
    if source is not None and source != Path(init_from) and source.is_dir():
        log.warning("%s: began from the run folder %s (an earlier tta recorded no checkpoint): it starts again "
                    "from %s, that folder's latest checkpoint now, which may be newer than the one it began from",
                    out, init_from, source)
    for d in (then, now):   # a resume may change the length
        if isinstance(d.get("train"), dict):
            d["train"] = {k: v for k, v in d["train"].items() if k != "max_steps"}
    if then != now:
        raise RunError(f"{out}: cannot resume with a different config (first difference at "
                       f"{_first_diff(then, now)}); resume with the saved config, or start a new --out")
    check_restart(config)
    if check is not None:
        check(config)
    log.warning(RESTART_MESSAGE, out)
    clear_unstarted(out)
    return config


def check_restart(config) -> None:
    """Refuse a restart (`restart_unstarted`) that would fail on what the run reads or makes before its first
    step: a manifest, frozen component, datastore or train.init_from gone since the run was stopped, a
    data.cache_dir that cannot be made, fp16 without a CUDA GPU. The run checks them too, but only once the
    stopped run was cleared: a refused restart left its folder holding nothing but its lock, the config.json
    that `--config RUN/config.json` names gone with the rest."""
    for key, name, path in run_paths(config, (*RUN_PATH_KEYS, "train.init_from")):
        if Path(path).exists():
            continue
        if key == "train.init_from":   # as TrainingRun.init_weights says it
            raise RunError(f"train.init_from={path!r}: no such run, checkpoint, component or pipeline folder")
        raise RunError(f"{name}={path}: {'manifest not found' if key.startswith('data.') else 'not found'}")
    check_cache_dir(config)
    check_precision(config.train)


# said by `tta train --resume` for a run folder stopped before its first checkpoint, however it was stopped
RESTART_MESSAGE = "%s holds no checkpoint to resume from (a run stopped before its first one): starting it from step 0"


def has_run(out: str | os.PathLike) -> bool:
    """Whether `out` holds anything of a run (config.json, a checkpoint or final/), begun or stopped."""
    out = Path(out)
    return (out / CONFIG_NAME).exists() or (out / "checkpoints").exists() or (out / "final").exists()


def left_by_a_stopped_run(out: str | os.PathLike) -> bool:
    """Whether `out` holds the pre-encoded cache/ that a run stopped before its first checkpoint by Ctrl-C, SIGTERM
    or an error keeps (`_discard_unstarted`; without one its clean-up leaves nothing of the run, or no folder)."""
    cache = Path(out) / "cache"
    return cache.is_dir() and any(cache.iterdir())


def clear_unstarted(out: str | os.PathLike) -> None:
    """Remove what a run stopped before its first checkpoint wrote in `out`, keeping a pre-encoded cache/ (its
    file names say what they encode, and a run reads only the one that matches)."""
    out = Path(out)
    for name in _RUN_ENTRIES:
        _remove(out / name)


@contextlib.contextmanager
def run_lock(out: str | os.PathLike, *, create: bool = True, command: str = "tta train", doing: str = "training",
             flag: str = "--out", remove: bool = False, main_only: bool = True, name: str = RUN_LOCK,
             subject: str | os.PathLike | None = None, place: str = "in this folder") -> Iterator[None]:
    """Hold an exclusive lock on `out`/.lock while a run trains there (main process only; POSIX): the same command
    started twice, or two --resume at once, would write one folder together (and the second, refused as "already
    holds a run", removed the folder the first was training in). The lock goes with the process, also when it is
    killed. Without `create`, a folder that does not exist is not made (nothing to lock: a resume fails on its own).
    `command`, `doing` and `flag` name the command, what it does there and its folder's flag in the refusal
    (`tta generate` locks its --out-dir too). With `remove` the lock file goes when the lock is released, so the
    folder is left as it was found. `main_only`: only the main process of a distributed training run locks (a
    single-process command such as tta generate passes False: a RANK in its environment says nothing of it).
    A lock of one file in `out` rather than of the folder (`tta generate -o FILE`) names its lock file `name`, and
    the refusal names `subject` (FILE) where it names `out`, and says `place` for "in this folder"."""
    if main_only and not _is_main_process() or not create and not Path(out).is_dir():
        yield
        return
    try:
        import fcntl  # noqa: F401 -- taken by _holder
    except ImportError:   # no flock here (Windows): unguarded, as before
        yield
        return
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    f = open(path, "a+")   # noqa: SIM115 -- held for the whole run, closed below
    held = False
    try:
        while True:
            try:
                holder = _holder(f)
            except OSError as e:   # e.g. Lustre without -o flock
                log.warning("%s: cannot lock %s (%s); %s without the lock", out if subject is None else subject,
                            "the run folder" if subject is None else "it", e.strerror or e, doing)
                yield
                return
            if holder is not None:
                raise RunError(f"{out if subject is None else subject}: another {command}"
                               f"{f' (process {holder})' if holder else ''} is {doing} {place}; wait for it, or "
                               f"choose another {flag}") from None
            if _is_open_file(path, f):
                break
            f.close()   # the run before removed the file (`remove`) after this one opened it: lock the new one
            out.mkdir(parents=True, exist_ok=True)
            f = open(path, "a+")   # noqa: SIM115 -- as above
        held = True
        try:   # who holds the lock, for a refused command's message; on a full disk the lock holds without it
            os.ftruncate(f.fileno(), 0)
            os.write(f.fileno(), f"{os.getpid()}\n".encode())
        except OSError as e:
            log.warning("%s: cannot write the process id into the lock file (%s)", path, e.strerror or e)
        yield
    finally:
        if remove and held:   # while it is held: a command that opens it now finds it gone once it has the lock
            with contextlib.suppress(OSError):
                path.unlink()
        f.close()


def _holder(f) -> str | None:
    """Take run_lock's lock of the open lock file `f`: None when taken, else the process id that the live process
    holding it wrote there ('' when none; a killed process's lock went with it). An OSError other than "held"
    (a file system without flock) is raised."""
    import fcntl

    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        f.seek(0)
        return f.read().strip()
    return None


def lock_holder(path: str | os.PathLike) -> str | None:
    """The process id written in run_lock's lock file `path` while a live process holds it ('' when it wrote
    none), else None (no such file, a file a killed run left, no flock here): for a command that must not run
    beside another's lock without holding that lock itself (tta generate -o FILE in a batch's --out-dir)."""
    try:
        import fcntl  # noqa: F401 -- no flock here (Windows): no lock is held
    except ImportError:
        return None
    try:
        with open(path) as f:   # closing it releases the lock _holder took
            return _holder(f)
    except OSError:
        return None


def _is_open_file(path: Path, f) -> bool:
    """Whether `path` still names the file `f` has open."""
    try:
        a, b = os.stat(path), os.fstat(f.fileno())
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _discard_unstarted(out: Path, made: Path | None, before: set[str] | None) -> None:
    if not out.is_dir() or complete_checkpoints(out / "checkpoints") or (out / "final").exists():
        return
    if not _is_main_process():
        return
    if left_by_a_stopped_run(out):   # pre-encoded latents (hours on a large corpus): the same
        keep = {"cache", RUN_LOCK}   # command, run again, reads them instead of encoding again
        gone = sorted(n for n in os.listdir(out) if n not in keep and (before is None or n not in before))
        for name in gone:
            _remove(out / name)
        log.warning("%s: the run stopped before its first checkpoint; removed %s and kept its pre-encoded cache/ "
                    "for the next run", out, ", ".join(gone) or "nothing")
        return
    # said when the run wrote something a user may have looked at (metrics.jsonl, samples/, a partial checkpoint);
    # a run that stopped with only its lock, config.json and data.json written never started, and its folder goes
    # without a word, as an out-dir `tta generate` made does (-v tells)
    if made is not None:
        level = logging.INFO if set(os.listdir(out)) - _RUN_BOOKKEEPING else logging.DEBUG
        shutil.rmtree(out, ignore_errors=True)
        for parent in out.parents:        # the empty parents this call made, up to `made`
            if parent == made.parent:
                break
            with contextlib.suppress(OSError):
                parent.rmdir()
        log.log(level, "removed %s: the run failed before its first checkpoint", out)
        return
    new = sorted(set(os.listdir(out)) - (before or set()))
    for name in new:
        _remove(out / name)
    if new:
        log.log(logging.INFO if set(new) - _RUN_BOOKKEEPING else logging.DEBUG,
                "removed %s from %s: the run failed before its first checkpoint", ", ".join(new), out)


def _remove(path: Path) -> None:
    """Remove a file, link or folder, quietly when it is already gone."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def _killable_while_joining() -> Iterator[None]:
    """Around joining the group of a run's processes: a process other than the main one takes SIGTERM's default
    action there (it ends at once). It waits for the main process inside torch's C++ rendezvous, where the
    SystemExit that `terminate_as_exit` raises cannot run: when the main process stopped before joining (a second
    `tta train` refused by `run_lock`), the launcher's SIGTERM went unanswered until its SIGKILL 30 s later. Such a
    process has written nothing yet."""
    import signal

    if _is_main_process():
        yield
        return
    with sigterm_handler(signal.SIG_DFL):
        yield


def worker_error(e: Exception) -> Exception | None:
    """The error a DataLoader worker raised, with its own message again, from torch's copy of it (None: `e` is not
    such a copy). The copy's message begins "Caught AudioError in DataLoader worker process 0." with the worker's
    traceback below it, and that first line was all `tta train` printed (`data.num_workers` > 0), without the
    file the error named."""
    text = str(e)
    caught = re.match(r"Caught (\w+) in DataLoader worker process \d+\.\n", text)
    if caught is None:
        return None
    # the traceback ends in "module.Name: message" (traceback.format_exception), the message maybe of several lines
    last = None
    for last in re.finditer(rf"^(?:\w+\.)*{caught.group(1)}: ", text, re.MULTILINE):
        pass
    if last is None:
        return None
    return _rebuilt(type(e), text[last.end():].strip())


# an OSError's str(): "[Errno 2] No such file or directory: 'x'", and " -> 'y'" after it for a second file; a file
# name is written as its repr (a str, bytes, or a descriptor's number)
_REPR = r"""(b?'(?:[^'\\]|\\.)*'|b?"(?:[^"\\]|\\.)*"|-?\d+)"""
_OS_ERROR = re.compile(rf"\[Errno (-?\d+)\] (.*?)(?:: {_REPR}(?: -> {_REPR})?)?", re.DOTALL)


def _rebuilt(kind: type, message: str) -> Exception:
    """An exception of `kind` that reads as the worker's did, whose str() was `message`: an OSError with its errno,
    strerror and file names again (the CLI writes such an error as "FILE: No such file or directory", where
    OSError(message) has none and printed "[Errno 2] No such file or directory: 'FILE'"), a KeyError with its key
    again (its str() is the key's repr, which KeyError(message) quoted a second time)."""
    args: tuple = (message,)
    try:
        if issubclass(kind, OSError) and (m := _OS_ERROR.fullmatch(message)):
            files = [ast.literal_eval(name) for name in m.group(3, 4) if name is not None]
            args = (int(m[1]), m[2], *files[:1], *((None, files[1]) if len(files) > 1 else ()))
        elif issubclass(kind, KeyError):
            args = (ast.literal_eval(message),)
    except Exception:   # noqa: BLE001 -- not a literal's repr (a key of another type): its message as it is
        pass
    for tried in (args, (message,)):
        try:
            error = kind(*tried)
        except Exception:   # noqa: BLE001 -- a type that takes other arguments: the message is what matters
            continue
        if str(error) == message:
            return error
    return RuntimeError(message)


class _SetAsideUnreadable:
    """A DataLoader's collate_fn for a dataset whose items may stand in for rows that failed to decode: (the
    [(index, why), ...] its items list under "unreadable", the batch `collate_fn` makes of them without it)."""

    def __init__(self, collate_fn: Callable | None):
        self.collate_fn = collate_fn or torch.utils.data.default_collate

    def __call__(self, items: list) -> tuple[list[tuple[int, str]], Any]:
        found = [entry for item in items if isinstance(item, dict) for entry in item.pop("unreadable", ())]
        return found, self.collate_fn(items)


def _is_main_process() -> bool:
    if "accelerate" not in sys.modules:   # then no accelerate state was made
        return os.environ.get("RANK", "0") == "0"
    from accelerate.state import PartialState, is_initialized

    if is_initialized():
        return PartialState().is_main_process
    return os.environ.get("RANK", "0") == "0"


def load_final(run_dir: str | os.PathLike, cls: type | None = None):
    return load_component(Path(run_dir) / "final", cls)


def _name_of(modules: dict, model: nn.Module) -> str:
    for k, v in modules.items():
        if v is model:
            return k
    return ""


def _workers(config: Any) -> int:
    data = getattr(config, "data", None)
    return int(getattr(data, "num_workers", 0)) if data is not None else 0


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


_MISSING = object()


def _diffs(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) of every leaf where two configs differ, in key order."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            x, y = a.get(k, _MISSING), b.get(k, _MISSING)
            if x != y:
                out += _diffs(x, y, f"{prefix}.{k}" if prefix else k)
        return out
    return [(prefix or "<top>", a, b)]


def _first_diff(a: Any, b: Any) -> str:
    """Where the saved config `a` and the given `b` differ, for a resume's refusal: the first key with both values,
    then the other keys (a setting derived from another, e.g. a retrieval model's context width from its
    datastore, sorts before its cause, so all of them are named)."""
    found = _diffs(a, b)
    if not found:
        return "'<top>'"

    def value(v) -> str:
        return shortened("absent" if v is _MISSING else repr(v))

    key, old, new = found[0]
    rest = [k for k, _, _ in found[1:]]
    also = f"; also {', '.join(map(repr, rest[:5]))}{', ...' if len(rest) > 5 else ''}" if rest else ""
    return f"{key!r}: {value(old)} saved, {value(new)} now{also}"


def _diffusers_weights(folder: Path) -> bool:
    return any((folder / n).is_file() for n in DIFFUSERS_WEIGHT_NAMES)


def _folder_weights(folder: Path, module: nn.Module) -> dict:
    """The state dict of a component folder for `module`: a tta component (model.safetensors), or
    diffusers' own files for a module that wraps a diffusers model as `.net` (the LDM UNet); half-precision
    storage is widened when it is loaded into the module."""
    if (folder / WEIGHTS_NAME).is_file():
        return load_state_dict(folder / WEIGHTS_NAME)
    if not _diffusers_weights(folder):
        raise RunError(f"train.init_from: {folder} holds no weights ({WEIGHTS_NAME} or "
                       f"{' / '.join(DIFFUSERS_WEIGHT_NAMES)})")
    _, state, _ = read_foreign_folder(folder, DIFFUSERS_WEIGHT_NAMES, what="a diffusers model folder")
    prefix = "net." if isinstance(getattr(module, "net", None), nn.Module) else ""
    return {prefix + k: v for k, v in state.items()}
