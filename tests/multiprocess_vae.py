"""Run by tests/test_training_multiprocess.py under `torchrun --nproc_per_node 2` (CPU, gloo): the tiny VAE
with its discriminator trains a few steps; every process then saves its own copy of the trained weights and
its random state, so the test can compare the processes.

usage: multiprocess_vae.py MANIFEST RUN_DIR DUMP_DIR"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import tta.training as training
from tta.config import apply_overrides, load_config
from vae.train import RunConfig, train

ROOT = Path(__file__).resolve().parents[1]
manifest, run_dir, dump = sys.argv[1:4]
finish = training.TrainingRun.finish


def finish_and_dump(self, model, name=None):
    rank = self.accelerator.process_index
    torch.save({"weights": {n: {k: v.detach().clone() for k, v in self.unwrap(m).state_dict().items()}
                            for n, m in self._modules.items()},
                "rng": torch.get_rng_state(), "processes": self.accelerator.num_processes},
               Path(dump) / f"rank{rank}.pt")
    return finish(self, model, name)


training.TrainingRun.finish = finish_and_dump
config = apply_overrides(load_config(RunConfig, ROOT / "configs" / "vae" / "tiny.json"),
                         [f"data.manifest={json.dumps(manifest)}", "train.max_steps=3", "train.checkpoint_every=2",
                          "loss.disc_start=1", "valid_items=0"])
train(config, run_dir, progress=False)
