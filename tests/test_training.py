"""The shared training loop: run folder, checkpoints, and bit-exact resume on CPU."""

import json
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from torch import nn

from tests.signals import chirp, noise, tone
from tta.audio import MelConfig, log_mel
from tta.checkpoint import load_component
from tta.training import EMA, ResumableSampler, RunError, TrainConfig, TrainingRun, lr_factor, make_optimizer, \
    make_warmup_scheduler


@dataclass(frozen=True)
class TinyNetConfig:
    mel: MelConfig = field(default_factory=MelConfig)
    channels: int = 8
    num_classes: int = 3


class TinyNet(nn.Module):
    """A small real mel classifier with dropout (so the loop's RNG matters)."""

    config_class = TinyNetConfig

    def __init__(self, config: TinyNetConfig):
        super().__init__()
        self.config = config
        self.net = nn.Sequential(nn.Conv1d(config.mel.n_mels, config.channels, 3, padding=1), nn.GELU(),
                                 nn.Dropout(0.2), nn.Conv1d(config.channels, config.num_classes, 1))

    def forward(self, wav):
        return self.net(log_mel(wav, self.config.mel)).mean(-1)


class ToyClips(torch.utils.data.Dataset):
    """Three kinds of 1 s clips; a (index, item_seed) key picks a random 0.25 s crop and gain."""

    def __init__(self):
        self.clips = [tone(440 + 40 * i, 1.0) if i % 3 == 0 else chirp(100, 4000, 1.0) if i % 3 == 1
                      else noise(1.0, seed=i) for i in range(9)]

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        rng = np.random.default_rng(seed)
        start = int(rng.integers(0, 12_000)) if seed is not None else 0
        gain = float(rng.uniform(0.5, 1.0)) if seed is not None else 1.0
        return {"wav": torch.from_numpy(self.clips[index][start:start + 4000] * gain), "label": index % 3}


@dataclass(frozen=True)
class ToyRunConfig:
    model: TinyNetConfig = field(default_factory=TinyNetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def run_toy(out, max_steps, *, resume=False, stop_at=None, ema=0.99, lr=3e-3, init_from="", schedule="constant"):
    cfg = ToyRunConfig(train=TrainConfig(max_steps=max_steps, batch_size=4, learning_rate=lr, warmup_steps=2,
                                         checkpoint_every=2, log_every=1, ema_decay=ema, keep_checkpoints=2,
                                         init_from=str(init_from), lr_schedule=schedule))
    run = TrainingRun(out, cfg, cfg.train, resume=resume, progress=False)
    model = TinyNet(cfg.model)
    opt = make_optimizer(model.parameters(), cfg.train)
    sched = make_warmup_scheduler(opt, cfg.train)
    model, opt = run.prepare(model, opt)
    run.track(model=model, optimizer=opt, scheduler=sched)
    run.make_ema("model", model)
    run.restore()
    if stop_at == 0:
        return run, model   # set up, nothing trained
    for batch in run.batches(ToyClips()):
        with run.accumulate(model):
            loss = nn.functional.cross_entropy(model(batch["wav"]), batch["label"])
            run.backward(loss)
            run.clip_grad(model)
            opt.step()
            sched.step()
            opt.zero_grad()
        run.end_step(loss=loss.item())
        if stop_at is not None and run.step == stop_at:
            return run, model  # simulated kill right after a checkpoint
    return run, run.finish(model)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_is_bit_exact(tmp_path, schedule):
    _, final_straight = run_toy(tmp_path / "straight", 8, schedule=schedule)
    run_toy(tmp_path / "halves", 8, stop_at=4, schedule=schedule)
    _, final_resumed = run_toy(tmp_path / "halves", 8, resume=True, schedule=schedule)
    a = load_component(final_straight, TinyNet).state_dict()
    b = load_component(final_resumed, TinyNet).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the metrics log of the resumed run equals the straight one, step for step
    rows = lambda run: [(r["step"], r["loss"]) for r in map(json.loads, (tmp_path / run / "metrics.jsonl").open())]
    assert rows("straight") == rows("halves")
    assert [p.name for p in sorted((tmp_path / "halves" / "checkpoints").iterdir())] == ["step_6", "step_8"]


def test_lr_schedules_follow_their_definitions():
    const = TrainConfig(max_steps=110, warmup_steps=10)
    cos = TrainConfig(max_steps=110, warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.2)
    for cfg in (const, cos):
        assert [lr_factor(s, cfg) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])   # linear warm-up
    assert lr_factor(10, const) == lr_factor(109, const) == lr_factor(500, const) == 1.0
    assert lr_factor(10, cos) == pytest.approx(1.0)
    assert lr_factor(60, cos) == pytest.approx(0.6)           # half-way: the mean of 1 and min_lr_ratio
    assert lr_factor(110, cos) == lr_factor(500, cos) == pytest.approx(0.2)
    falls = [lr_factor(s, cos) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(falls, falls[1:]))
    opt = torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))]},
                           {"params": [nn.Parameter(torch.zeros(1))], "lr": 0.1}], lr=1.0)
    sched = make_warmup_scheduler(opt, cos)
    for _ in range(60):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.6, 0.06])   # every group, scaled alike
    with pytest.raises(ValueError, match="train.lr_schedule"):
        TrainConfig(lr_schedule="linear")
    with pytest.raises(ValueError, match="train.min_lr_ratio"):
        TrainConfig(min_lr_ratio=1.5)


def test_training_changes_weights_and_final_uses_ema(tmp_path):
    _, final = run_toy(tmp_path / "a", 6)
    run_toy(tmp_path / "b", 6, ema=0.0)
    ema_w = load_component(final, TinyNet).state_dict()
    raw_w = load_component(tmp_path / "b" / "final", TinyNet).state_dict()
    init = TinyNet(TinyNetConfig()).state_dict()
    assert any(not torch.equal(raw_w[k], init[k]) for k in init)
    assert any(not torch.equal(raw_w[k], ema_w[k]) for k in init)
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["train"]["max_steps"] == 6 and saved["model"]["mel"]["n_mels"] == 64


def test_run_folder_guards(tmp_path):
    run_toy(tmp_path / "r", 2)
    with pytest.raises(RunError, match="already holds a run"):
        run_toy(tmp_path / "r", 2)
    with pytest.raises(RunError, match="different config .*train.learning_rate"):
        run_toy(tmp_path / "r", 2, resume=True, lr=1e-3)
    with pytest.raises(RunError, match="nothing to resume"):
        run_toy(tmp_path / "empty", 2, resume=True)


def test_init_from_keeps_reshaped_tensors_fresh_and_refuses_another_model(tmp_path, caplog):
    from tta.checkpoint import save_component

    run_toy(tmp_path / "base", 2)
    base = load_component(tmp_path / "base" / "final", TinyNet)
    # a source whose output layer has another width (3 -> 5 classes): that layer keeps its fresh init
    other = TinyNet(TinyNetConfig(num_classes=5))
    state = {**other.state_dict(), **{k: v for k, v in base.state_dict().items() if not k.startswith("net.3")}}
    other.load_state_dict(state)
    save_component(tmp_path / "wide", other)
    with caplog.at_level("WARNING"):
        run, model = run_toy(tmp_path / "ft", 2, init_from=tmp_path / "wide", stop_at=0)
    got = run.unwrap(model).state_dict()
    assert torch.equal(got["net.0.weight"], base.state_dict()["net.0.weight"])
    assert got["net.3.weight"].shape == (3, 8, 1) and "reshaped" in caplog.text
    # when most tensors do not fit, it is not a run of this model
    save_component(tmp_path / "alien", TinyNet(TinyNetConfig(channels=4, num_classes=5)))
    with pytest.raises(RunError, match="not a run of this model"):
        run_toy(tmp_path / "ft2", 2, init_from=tmp_path / "alien")


def test_a_run_from_an_older_version_resumes_when_only_new_fields_are_missing(tmp_path):
    run_toy(tmp_path / "old", 2)
    cfg_path = tmp_path / "old" / "config.json"
    saved = json.loads(cfg_path.read_text())
    del saved["train"]["init_from"]                  # a field this version added
    cfg_path.write_text(json.dumps(saved))
    run, _ = run_toy(tmp_path / "old", 4, resume=True)
    assert run.step == 4


def test_init_from_starts_a_fresh_run_from_another_runs_ema_weights(tmp_path):
    from tta.checkpoint import load_train_state

    run_toy(tmp_path / "base", 4)
    ckpt = tmp_path / "base" / "checkpoints" / "step_4"
    ema_weights = load_train_state(ckpt / "train_state.pt")["emas"]["model"]["shadow"]
    run, model = run_toy(tmp_path / "ft", 4, init_from=tmp_path / "base", stop_at=0)  # before any step
    assert run.step == 0 and not (tmp_path / "ft" / "checkpoints").exists()
    loaded = run.unwrap(model).state_dict()
    assert all(torch.equal(loaded[k], ema_weights[k]) for k in ema_weights)     # the EMA, not the raw weights
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["train"]["init_from"] == str(tmp_path / "base")
    # a fine-tune run trains on from there; its metrics start at step 1 and its optimizer is fresh
    run, _ = run_toy(tmp_path / "ft2", 2, init_from=ckpt)
    assert [json.loads(r)["step"] for r in (tmp_path / "ft2" / "metrics.jsonl").open()] == [1, 2]
    assert run._optimizers["optimizer"].state_dict()["state"][0]["step"] == 2
    # a component folder works too; nonsense is refused before anything is trained
    run, model = run_toy(tmp_path / "ft3", 2, init_from=tmp_path / "base" / "final", stop_at=0)
    final_w = load_component(tmp_path / "base" / "final", TinyNet).state_dict()
    assert all(torch.equal(run.unwrap(model).state_dict()[k], final_w[k]) for k in final_w)
    with pytest.raises(RunError, match="init_from=.*no such"):
        run_toy(tmp_path / "ft4", 2, init_from=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="no weights for model"):
        run_toy(tmp_path / "ft5", 2, init_from=tmp_path / "empty")


def test_a_fine_tune_resumes_without_repeating_init_from(tmp_path):
    """`--resume` of an init_from run continues from its own checkpoint, with or without init_from given
    again (make targets pass --init-from only on the first run), and keeps init_from in config.json."""
    run_toy(tmp_path / "base", 2)
    run, model = run_toy(tmp_path / "straight", 6, init_from=tmp_path / "base", stop_at=6)
    a = run.unwrap(model).state_dict()
    run_toy(tmp_path / "ft", 6, init_from=tmp_path / "base", stop_at=2)
    run_toy(tmp_path / "ft", 6, resume=True, stop_at=4)                       # init_from not repeated
    run, model = run_toy(tmp_path / "ft", 8, resume=True, init_from=tmp_path / "base", stop_at=6)
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["train"]["init_from"] == str(tmp_path / "base")
    b = run.unwrap(model).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(RunError, match="different config.*init_from"):
        run_toy(tmp_path / "ft", 8, resume=True, init_from=tmp_path / "straight")


def test_sampler_is_a_deterministic_resumable_stream():
    full = ResumableSampler(5, seed=3)
    it = iter(full)
    first = [next(it) for _ in range(12)]
    later = iter(ResumableSampler(5, seed=3, start=7))
    assert [next(later) for _ in range(5)] == first[7:12]
    assert sorted(i for i, _ in first[:5]) == list(range(5))  # each epoch is a permutation
    shard0 = iter(ResumableSampler(5, seed=3, rank=0, world_size=2))
    assert [next(shard0) for _ in range(3)] == first[0:6:2]


def test_ema_tracks_weights():
    model = nn.Linear(2, 2)
    ema = EMA(model, 0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    for _ in range(50):
        ema.update(model)
    assert torch.allclose(ema.averaged(model).weight, model.weight, atol=1e-6)


def test_resume_may_extend_or_shorten_a_run_and_keeps_its_trajectory(tmp_path):
    _, straight = run_toy(tmp_path / "straight", 8)
    run_toy(tmp_path / "extended", 4)                        # a finished 4-step run, continued to 8
    _, extended = run_toy(tmp_path / "extended", 8, resume=True)
    weights = lambda folder: load_component(folder, TinyNet).state_dict()
    assert all(torch.equal(weights(straight)[k], weights(extended)[k]) for k in weights(straight))
    assert json.loads((tmp_path / "extended" / "config.json").read_text())["train"]["max_steps"] == 8
    _, four = run_toy(tmp_path / "four", 4)
    run_toy(tmp_path / "cut", 8, stop_at=4)                  # killed at step 4, then stopped there
    _, cut = run_toy(tmp_path / "cut", 4, resume=True)
    assert all(torch.equal(weights(four)[k], weights(cut)[k]) for k in weights(four))
