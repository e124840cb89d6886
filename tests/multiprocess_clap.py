"""Run by tests/test_training_multiprocess.py under `torchrun --nproc_per_node 2` (CPU, gloo): the tiny CLAP
trains a few steps with the batch gathered over both processes. Each process records, per step, the loss it
trained on and the loss recomputed on one process from the concatenated batch (detached), then saves its
weights.

usage: multiprocess_clap.py MANIFEST RUN_DIR DUMP_DIR"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import tta.clap.train as clap_train
import tta.training as training
from tta.config import apply_overrides, load_config

ROOT = Path(__file__).resolve().parents[1]
manifest, run_dir, dump = sys.argv[1:4]
record = []
gather = clap_train.gather_batch


def checked_gather(audio_emb, text_emb, captions, audio_to_text):
    """The gathered batch, and beside it the loss that one process would compute on the same clips."""
    out = gather(audio_emb, text_emb, captions, audio_to_text)
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (audio_emb.detach(), text_emb.detach(), list(captions), audio_to_text.tolist()))
    clip_caps = [caps[i] for _, _, caps, a2t in parts for i in a2t]
    unique, a2t = clap_train.merge_captions(clip_caps)
    first = {}
    for _, t, caps, _ in parts:
        for j, c in enumerate(caps):
            first.setdefault(c, t[j])
    expected = clap_train.contrastive_loss(torch.cat([a for a, _, _, _ in parts]),
                                           torch.stack([first[c] for c in unique]), torch.tensor(10.0), a2t)
    got = clap_train.contrastive_loss(out[0].detach(), out[1].detach(), torch.tensor(10.0), out[2])
    record.append({"clips": int(out[0].shape[0]), "texts": int(out[1].shape[0]), "got": float(got),
                   "expected": float(expected)})
    return out


clap_train.gather_batch = checked_gather
finish = training.TrainingRun.finish


def finish_and_dump(self, model, name=None):
    rank = self.accelerator.process_index
    torch.save({"weights": {k: v.detach().clone() for k, v in self.unwrap(model).state_dict().items()},
                "record": record}, Path(dump) / f"rank{rank}.pt")
    return finish(self, model, name)


training.TrainingRun.finish = finish_and_dump
config = apply_overrides(load_config(clap_train.RunConfig, ROOT / "configs" / "clap" / "tiny.json"),
                         [f"data.manifest={json.dumps(manifest)}", "train.max_steps=3", "train.batch_size=3",
                          "augment.template_prob=0"])
clap_train.train(config, run_dir, progress=False)
