"""Run by tests/test_training_multiprocess.py under `torchrun --nproc_per_node 2` (CPU, gloo): the tiny LDM
trains with `precompute: true`. Each process records whether it encoded the training clips itself (wrote the
latent cache) and saves its trained UNet.

usage: multiprocess_ldm.py CONFIG RUN_DIR DUMP_DIR"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import tta.ldm.train as ldm_train
import tta.training as training
from tta.config import load_config

config_path, run_dir, dump = sys.argv[1:4]
wrote = []
save_state = ldm_train.save_train_state
finish = training.TrainingRun.finish


def recording_save(path, tensors):
    wrote.append(Path(path).name)
    return save_state(path, tensors)


def finish_and_dump(self, model, name=None):
    rank = self.accelerator.process_index
    torch.save({"wrote": [n for n in wrote if n.startswith("latents-")],
                "weights": {k: v.detach().clone() for k, v in self.unwrap(model).state_dict().items()}},
               Path(dump) / f"rank{rank}.pt")
    return finish(self, model, name)


ldm_train.save_train_state = recording_save
training.TrainingRun.finish = finish_and_dump
ldm_train.train(load_config(ldm_train.RunConfig, config_path), run_dir, progress=False)
