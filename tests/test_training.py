"""The shared training loop: run folder, checkpoints, and bit-exact resume on CPU."""

import json
import logging
import os
import sys
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
    # recorded as the checkpoint it started from, as `tta train --init-from RUN` records it
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["train"]["init_from"] == str(ckpt)
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
    recorded = str(tmp_path / "base" / "checkpoints" / "step_2")    # the checkpoint the run folder held then
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["train"]["init_from"] == recorded
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


def test_a_cosine_run_cannot_change_its_length_on_resume_except_to_stop_at_a_checkpoint(tmp_path):
    """The cosine decays to max_steps: a new length would make the rate jump mid-run."""
    run_toy(tmp_path / "c", 8, stop_at=4, schedule="cosine")
    with pytest.raises(RunError, match=r"max_steps cannot change on resume \(8 -> 12\)"):
        run_toy(tmp_path / "c", 12, resume=True, schedule="cosine")
    _, stopped = run_toy(tmp_path / "c", 4, resume=True, schedule="cosine")    # nothing more to train
    assert stopped.is_dir()


# ------------------------------------------------- a fresh run that fails early leaves no run folder behind


def test_a_fresh_run_that_fails_before_its_first_checkpoint_leaves_nothing(tmp_path):
    from tta.training import discard_on_failure

    # a bad init_from is found after the run folder (config.json) exists: the folder goes, the rerun works
    out = tmp_path / "runs" / "deep" / "ft"
    with pytest.raises(RunError, match="init_from=.*no such"), discard_on_failure(out):
        run_toy(out, 2, init_from=tmp_path / "nowhere")
    assert not (tmp_path / "runs").exists()          # with the parents this call made
    with discard_on_failure(out):
        run_toy(out, 2)
    assert (out / "final").is_dir()
    # an error in the loop, after metrics.jsonl was written but before the first checkpoint (step 2)
    with pytest.raises(RuntimeError, match="bad batch"), discard_on_failure(tmp_path / "loop"):
        run, _ = run_toy(tmp_path / "loop", 4, stop_at=0)
        for _ in run.batches(ToyClips()):
            run.end_step(loss=1.0)
            assert (tmp_path / "loop" / "metrics.jsonl").is_file()
            raise RuntimeError("bad batch")
    assert not (tmp_path / "loop").exists()
    # a folder that existed before keeps what it held; only what the run wrote goes
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(RunError), discard_on_failure(kept):
        run_toy(kept, 2, init_from=tmp_path / "nowhere")
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]


def test_the_removal_of_a_run_that_never_started_is_said_only_at_debug_level(tmp_path, caplog):
    """A run that failed with only its lock and config.json written logged "removed ...: the run failed before its
    first checkpoint" at info level, just before the error line, for a folder the user never saw used; a run that
    wrote metrics still says it."""
    from tta.training import discard_on_failure

    def removals(level):
        return [r.getMessage() for r in caplog.records if r.levelno == level and "first checkpoint" in r.getMessage()]

    with caplog.at_level(logging.DEBUG, logger="tta.training"):
        with pytest.raises(RunError, match="init_from"), discard_on_failure(tmp_path / "new"):
            run_toy(tmp_path / "new", 2, init_from=tmp_path / "nowhere")
        kept = tmp_path / "kept"
        kept.mkdir()
        with pytest.raises(RunError, match="init_from"), discard_on_failure(kept):
            run_toy(kept, 2, init_from=tmp_path / "nowhere")
        assert not removals(logging.INFO)
        assert removals(logging.DEBUG) == [f"removed {tmp_path / 'new'}: the run failed before its first checkpoint",
                                           f"removed .lock, config.json from {kept}: the run failed before its "
                                           "first checkpoint"]
        caplog.clear()
        with pytest.raises(RuntimeError, match="bad batch"), discard_on_failure(tmp_path / "loop"):
            run, _ = run_toy(tmp_path / "loop", 4, stop_at=0)
            for _ in run.batches(ToyClips()):
                run.end_step(loss=1.0)
                raise RuntimeError("bad batch")
        assert removals(logging.INFO) == [f"removed {tmp_path / 'loop'}: the run failed before its first checkpoint"]
    assert not (tmp_path / "new").exists() and not (tmp_path / "loop").exists() and not any(kept.iterdir())


def test_a_run_with_a_checkpoint_and_a_resume_are_never_discarded(tmp_path):
    from tta.training import discard_on_failure

    out = tmp_path / "r"
    with pytest.raises(RuntimeError), discard_on_failure(out):
        run_toy(out, 6, stop_at=2)                   # killed after its first checkpoint: it can be resumed
        raise RuntimeError("killed")
    assert (out / "checkpoints" / "step_2").is_dir()
    with pytest.raises(RunError, match="already holds a run"), discard_on_failure(out):
        run_toy(out, 6)                              # a fresh start refused in that folder leaves it alone
    with pytest.raises(RuntimeError), discard_on_failure(out, resume=True):
        run_toy(out, 6, resume=True, stop_at=4)
        raise RuntimeError("killed again")
    assert (out / "checkpoints" / "step_4").is_dir() and (out / "config.json").is_file()
    run, _ = run_toy(out, 6, resume=True)
    assert run.step == 6
    # a resume that fails is left as it is, even with no checkpoint at all
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps({"model": {}, "train": {}}))
    with pytest.raises(RunError), discard_on_failure(bare, resume=True):
        run_toy(bare, 2, resume=True)
    assert (bare / "config.json").is_file()


def _vae_manifest(root, bad: str = ""):
    """A tiny train/valid manifest of 1 s clips; bad="nan" adds a train row whose audio is all NaN."""
    import soundfile as sf

    from tests.signals import clicks
    from tta.audio import save_audio
    from tta.data.manifest import ManifestRow, write_manifest

    rows = []
    for i, (name, wav) in enumerate({"tone": tone(440, 1.0), "chirp": chirp(100, 7000, 1.0),
                                     "noise": noise(1.0, seed=1), "clicks": clicks(1.0)}.items()):
        path = save_audio(root / f"{name}.wav", np.clip(wav, -1, 1), 16_000)
        rows.append(ManifestRow(id=name, path=str(path), captions=(f"a {name}",), seconds=1.0, sample_rate=16_000,
                                split="valid" if i == 3 else "train"))
    if bad == "nan":
        sf.write(root / "nan.wav", np.full(16_000, np.nan, dtype=np.float32), 16_000, subtype="FLOAT")
        rows.append(ManifestRow(id="nan", path=str(root / "nan.wav"), captions=("nan",), seconds=1.0,
                                sample_rate=16_000, split="train"))
    return write_manifest(root / f"manifest{bad}.jsonl", rows)


def _tta_train(capsys, kind, out, *sets, extra=()):
    from tests.test_ldm_fixtures import ROOT
    from tta.cli import main

    args = ["-q", "train", kind, "--config", str(ROOT / "configs" / kind / "tiny.json"), "--out", str(out), *extra]
    for s in sets:
        args += ["--set", s]
    capsys.readouterr()
    rc = main(args)
    return rc, capsys.readouterr().err


def test_python_train_records_init_from_a_run_folder_as_tta_train_does(tmp_path, capsys):
    """`tta train --init-from RUN` recorded RUN's latest checkpoint in config.json (so `--config ft/config.json`
    starts from the same weights); the trainers' train() called from Python recorded RUN, a moving start."""
    from tests.test_ldm_fixtures import ROOT
    from tests.test_vocoder_train import make_manifest
    from tta.checkpoint import load_state_dict
    from tta.config import apply_overrides, load_config
    from vocoder.train import RunConfig, train

    sets = [f"data.manifest={make_manifest(tmp_path)}", "train.max_steps=1", "valid_items=0", "sample_items=0"]
    assert _tta_train(capsys, "vocoder", tmp_path / "base", *sets)[0] == 0
    assert _tta_train(capsys, "vocoder", tmp_path / "cli", *sets, extra=["--init-from", str(tmp_path / "base")])[0] == 0
    config = apply_overrides(load_config(RunConfig, ROOT / "configs" / "vocoder" / "tiny.json"),
                             [*sets, f"train.init_from={json.dumps(str(tmp_path / 'base'))}"])
    train(config, tmp_path / "python", progress=False)
    recorded = json.loads((tmp_path / "python" / "config.json").read_text())
    assert recorded["train"]["init_from"] == str(tmp_path / "base" / "checkpoints" / "step_1")
    assert recorded == json.loads((tmp_path / "cli" / "config.json").read_text())
    # and it started from those weights: the same run, bit for bit
    a, b = (load_state_dict(tmp_path / run / "final" / "model.safetensors") for run in ("cli", "python"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_tta_train_errors_found_after_start_up_leave_no_run_folder(tmp_path, capsys):
    """`tta train`: a bad --init-from or a bad manifest row reached while training (data.max_unreadable=0: no
    file may fail) is a one-line error and leaves no run folder, so the corrected command runs as it is (no
    "already holds a run")."""
    good = _vae_manifest(tmp_path)
    nan = _vae_manifest(tmp_path, "nan")
    (tmp_path / "notckpt.pt").write_text("not a checkpoint\n")
    out = tmp_path / "run"
    rc, err = _tta_train(capsys, "vae", out, f"data.manifest={good}", extra=["--init-from", str(tmp_path / "notckpt.pt")])
    assert rc == 1 and err.startswith("tta: error: train.init_from=") and "notckpt.pt" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    rc, err = _tta_train(capsys, "vae", out, f"data.manifest={nan}", "valid_items=0", "train.max_steps=4",
                         "train.checkpoint_every=4", "data.max_unreadable=0")
    assert rc == 1 and "nan.wav" in err and "non-finite" in err and "Traceback" not in err
    assert not out.exists()
    rc, err = _tta_train(capsys, "vae", out, f"data.manifest={good}", "valid_items=0", "train.max_steps=1")
    assert rc == 0, err
    assert (out / "checkpoints" / "step_1").is_dir() and (out / "final").is_dir()


def test_tta_train_ldm_with_a_clap_folder_that_is_not_clap_leaves_no_run_folder(tmp_path, capsys):
    from tests.test_ldm_fixtures import tiny_components

    c = tiny_components()
    out = tmp_path / "ldm"
    rc, err = _tta_train(capsys, "ldm", out, f"components.vae={json.dumps(str(c['vae']))}",
                         f"components.vocoder={json.dumps(str(c['vocoder']))}",
                         f"components.clap={json.dumps(str(c['vae']))}",      # a VAE folder, not a CLAP model
                         f"data.manifest={json.dumps(str(c['manifest']))}")
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


# -------------------------------------------------------------------- NaN / inf in the config are refused


@pytest.mark.parametrize("field, value, fragment", [
    ("learning_rate", float("nan"), "train.learning_rate=nan must be a finite number > 0"),
    ("learning_rate", float("inf"), "train.learning_rate=inf must be a finite number > 0"),
    ("grad_clip", float("nan"), "train.grad_clip=nan must be a finite number >= 0"),
    ("grad_clip", float("inf"), "train.grad_clip=inf must be a finite number >= 0"),
    ("weight_decay", float("nan"), "train.weight_decay=nan must be a finite number >= 0"),
    ("weight_decay", -0.1, "train.weight_decay=-0.1 must be a finite number >= 0"),
    ("ema_decay", float("nan"), "train.ema_decay=nan must be in [0, 1)"),
    ("min_lr_ratio", float("nan"), "train.min_lr_ratio=nan must be in [0, 1]"),
    ("adam_betas", (0.9, float("nan")), "train.adam_betas=[0.9, nan] must be two numbers in [0, 1)"),
])
def test_train_config_refuses_non_finite_numbers(field, value, fragment):
    with pytest.raises(ValueError) as e:
        TrainConfig(**{field: value})
    assert fragment in str(e.value)


@pytest.mark.parametrize("override, key", [
    ("train.learning_rate=NaN", "train.learning_rate"),
    ("train.grad_clip=NaN", "train.grad_clip"),
    ("train.warmup_steps=NaN", "train.warmup_steps"),
    ("train.adam_betas=[0.9, Infinity]", "train.adam_betas[1]"),
    ("loss.kl_weight=Infinity", "loss.kl_weight"),
    ("model.mel.f_max=-Infinity", "model.mel.f_max"),
])
def test_non_finite_numbers_in_any_config_are_refused_by_key(override, key):
    """Python's json reads NaN / Infinity; every float field of every config refuses them by name (a NaN
    passes `x <= 0`, so grad_clip=NaN used to train with clipping silently off)."""
    from tta.config import ConfigError, apply_overrides, from_dict, to_dict
    from vae.train import RunConfig

    with pytest.raises(ConfigError) as e:
        apply_overrides(RunConfig(), [override])
    assert repr(key) in str(e.value) and ("finite" in str(e.value) or "expected int" in str(e.value))
    data = to_dict(RunConfig())
    data["loss"]["kl_weight"] = float("nan")                  # a JSON file with NaN in it
    with pytest.raises(ConfigError, match="'loss.kl_weight': expected a finite number, got nan"):
        from_dict(RunConfig, data)


def test_tta_train_refuses_nan_settings_before_making_a_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    for setting in ("train.grad_clip=NaN", "train.learning_rate=NaN", "loss.kl_weight=Infinity"):
        rc, err = _tta_train(capsys, "vae", out, "data.manifest=unused.jsonl", setting)
        assert rc == 1 and len(err.strip().splitlines()) == 1 and setting.split("=")[0] in err and "finite" in err
        assert not out.exists()


@pytest.mark.parametrize("decay_1d", [True, False])
def test_weight_decay_on_1d_tensors_is_a_choice(decay_1d):
    """weight_decay_1d=false leaves biases, norm gains and scalars undecayed (LAION-CLAP's and nanoGPT's rule);
    a group's own learning rate carries over to both halves."""
    torch.manual_seed(0)
    layer, norm, scale = nn.Linear(4, 4), nn.LayerNorm(4), nn.Parameter(torch.tensor(2.0))
    train = TrainConfig(learning_rate=0.1, weight_decay=0.5, weight_decay_1d=decay_1d)
    opt = make_optimizer([{"params": [layer.weight, layer.bias, scale]},
                          {"params": list(norm.parameters()), "lr": 0.01}], train)
    before = [t.detach().clone() for t in (layer.weight, layer.bias, scale, norm.weight)]
    for t in (layer.weight, layer.bias, scale, norm.weight, norm.bias):
        t.grad = torch.zeros_like(t)     # no gradient: only the decay moves a tensor
    opt.step()
    assert torch.allclose(layer.weight, before[0] * (1 - 0.1 * 0.5))
    for now, then, lr in ((layer.bias, before[1], 0.1), (scale, before[2], 0.1), (norm.weight, before[3], 0.01)):
        assert torch.allclose(now, then * (1 - lr * 0.5) if decay_1d else then)
    assert {g["lr"] for g in opt.param_groups} == {0.1, 0.01}
    bare = make_optimizer([{"params": layer.weight}, {"params": layer.bias}], train)   # a tensor, not a list
    assert sum(len(g["params"]) for g in bare.param_groups) == 2


def test_a_run_stopped_by_sigterm_before_its_first_checkpoint_leaves_no_folder(tmp_path):
    """torchrun stops the other processes of a run with SIGTERM when one fails; Python's default handling ran no
    cleanup, so the folder stayed and the corrected rerun was refused ("already holds a run")."""
    import os
    import signal

    from tta.checkpoint import terminate_as_exit
    from tta.training import discard_on_failure

    out = tmp_path / "r"
    with pytest.raises(SystemExit) as stopped, terminate_as_exit(), discard_on_failure(out):
        out.mkdir(exist_ok=True)   # the run's lock made it
        (out / "config.json").write_text("{}")
        os.kill(os.getpid(), signal.SIGTERM)
    assert stopped.value.code == 143 and not out.exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL        # the handler is put back


def test_a_cut_short_last_metrics_line_is_dropped_on_resume(tmp_path, caplog):
    """A metrics.jsonl whose last line was cut short (a kill or a full disk while appending) stopped --resume with
    json's bare message; a bad line before the last is an error naming the file and line."""
    run_toy(tmp_path / "straight", 8)
    run_toy(tmp_path / "halves", 8, stop_at=4)
    metrics = tmp_path / "halves" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 5, "loss": 0.')
    with caplog.at_level("WARNING", logger="tta.training"):
        run_toy(tmp_path / "halves", 8, resume=True)
    assert any("a line cut short" in r.message for r in caplog.records)
    rows = lambda run: [(r["step"], r["loss"]) for r in map(json.loads, (tmp_path / run / "metrics.jsonl").open())]
    assert rows("straight") == rows("halves")
    run_toy(tmp_path / "bad", 8, stop_at=4)
    bad = tmp_path / "bad" / "metrics.jsonl"
    lines = bad.read_text().splitlines()
    bad.write_text("\n".join(lines[:1] + ["garbage"] + lines[1:]) + "\n")
    with pytest.raises(RunError, match=r"metrics.jsonl:2: not a JSON metrics row"):
        run_toy(tmp_path / "bad", 8, resume=True)


def test_a_second_tta_train_into_a_running_folder_is_refused_and_removes_nothing(tmp_path, capsys):
    """Two launches of one command into a new --out: the second, refused as "already holds a run", removed the
    folder the first was training in. Now the folder is locked while a run trains there."""
    fcntl = pytest.importorskip("fcntl")

    good = _vae_manifest(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")            # the first run, started
    with open(out / ".lock", "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("12345\n")
        held.flush()
        for extra in ([], ["--resume"]):
            rc, err = _tta_train(capsys, "vae", out, f"data.manifest={good}", extra=extra)
            assert rc == 1 and "another tta train (process 12345) is training in this folder" in err, err
            assert (out / "config.json").read_text() == "{}"


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it_again(tmp_path, capsys, caplog):
    """A run killed (SIGKILL, the OOM killer) before its first checkpoint left config.json, data.json and
    metrics.jsonl: a fresh rerun was refused ("pass --resume") and --resume had nothing to resume, a dead end.
    --resume now starts the same run from step 0, with the weights of an uninterrupted run."""
    import shutil

    from tta.checkpoint import load_state_dict

    good = _vae_manifest(tmp_path)
    sets = (f"data.manifest={good}", "valid_items=0", "train.max_steps=2", "train.checkpoint_every=2")
    rc, err = _tta_train(capsys, "vae", tmp_path / "straight", *sets)
    assert rc == 0, err
    killed = tmp_path / "killed"
    shutil.copytree(tmp_path / "straight", killed)
    shutil.rmtree(killed / "checkpoints")
    shutil.rmtree(killed / "final")
    rc, err = _tta_train(capsys, "vae", killed, *sets)
    assert rc == 1 and "pass --resume" in err
    rc, err = _tta_train(capsys, "vae", killed, *sets, "train.learning_rate=0.5", extra=["--resume"])
    assert rc == 1 and "cannot resume with a different config (first difference at 'train.learning_rate': " in err
    assert "saved, 0.5 now)" in err, err
    assert (killed / "config.json").is_file()
    with caplog.at_level("WARNING", logger="tta"):
        rc, err = _tta_train(capsys, "vae", killed, *sets, extra=["--resume"])
    assert rc == 0, err
    assert any("starting it from step 0" in r.message for r in caplog.records)
    a = load_state_dict(tmp_path / "straight" / "final" / "model.safetensors")
    b = load_state_dict(killed / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_relative_data_path_not_found_says_where_it_is_read_from(tmp_path, capsys, monkeypatch):
    """`tta train vae --config RUN/config.json --out RUN --resume` run from another folder failed on
    "data/manifest.jsonl: manifest not found": a run config's relative paths are read from the current folder, and
    the message said neither that nor where the run had been started (data.json records it)."""
    from tta.cli import main

    start, other = tmp_path / "start", tmp_path / "other"
    (start / "data").mkdir(parents=True)
    other.mkdir()
    _vae_manifest(start / "data")
    run = tmp_path / "run"
    monkeypatch.chdir(start)
    rc, err = _tta_train(capsys, "vae", run, "data.manifest=data/manifest.jsonl", "valid_items=0",
                         "train.max_steps=1")
    assert rc == 0, err
    held = sorted(p.name for p in run.iterdir())
    monkeypatch.chdir(other)
    rc = main(["-q", "train", "vae", "--config", str(run / "config.json"), "--out", str(run), "--resume"])
    assert rc == 1
    assert capsys.readouterr().err == (
        "tta: error: data.manifest=data/manifest.jsonl: manifest not found; a run config's relative paths are read "
        f"from the current folder, {other}; the run was started in {start}: run from there or give an absolute "
        "path\n")
    assert sorted(p.name for p in run.iterdir()) == held
    # a new run: the current folder only, and no run folder made
    rc, err = _tta_train(capsys, "vae", tmp_path / "new", "data.manifest=data/manifest.jsonl")
    assert rc == 1 and err == ("tta: error: data.manifest=data/manifest.jsonl: manifest not found; a run config's "
                               f"relative paths are read from the current folder, {other}\n"), err
    assert not (tmp_path / "new").exists()
    monkeypatch.chdir(start)   # from where it began, the resume goes on
    assert main(["-q", "train", "vae", "--config", str(run / "config.json"), "--out", str(run), "--resume"]) == 0


def test_resume_of_a_run_stopped_by_ctrl_c_before_its_first_checkpoint_starts_it_as_a_killed_one(tmp_path, capsys,
                                                                                                 caplog, monkeypatch):
    """Ctrl-C before the first checkpoint leaves no run (its clean-up removes it) and --resume refused it ("nothing
    to resume (no config.json); start without --resume"), while one killed with SIGKILL at the same point started
    again under --resume. Both start from step 0 now, with the same warning and an uninterrupted run's weights,
    where the folder shows a run was started there (the pre-encoded cache/ the clean-up keeps); without one the
    clean-up left nothing to tell it from a mistyped --out, and --resume refuses it as before."""
    import shutil

    from tta.checkpoint import load_state_dict
    from tta.training import TrainingRun

    good = _vae_manifest(tmp_path)
    sets = (f"data.manifest={good}", "valid_items=0", "train.max_steps=2", "train.checkpoint_every=2")
    assert _tta_train(capsys, "vae", tmp_path / "straight", *sets)[0] == 0
    killed = tmp_path / "killed"   # what SIGKILL leaves: config.json, data.json, metrics.jsonl
    shutil.copytree(tmp_path / "straight", killed)
    shutil.rmtree(killed / "checkpoints")
    shutil.rmtree(killed / "final")
    end_step = TrainingRun.end_step

    def ctrl_c(self, **scalars):
        raise KeyboardInterrupt

    monkeypatch.setattr(TrainingRun, "end_step", ctrl_c)   # Ctrl-C in the first step
    for out in (tmp_path / "stopped", tmp_path / "cached"):
        if out.name == "cached":   # a pre-encoded cache/ stays, with the lock
            (out / "cache").mkdir(parents=True)
            (out / "cache" / "latents-0.pt").write_bytes(b"latents")
        assert _tta_train(capsys, "vae", out, *sets)[0] == 130
    assert not (tmp_path / "stopped").exists()
    assert sorted(p.name for p in (tmp_path / "cached").iterdir()) == [".lock", "cache"]
    monkeypatch.setattr(TrainingRun, "end_step", end_step)
    rc, err = _tta_train(capsys, "vae", tmp_path / "stopped", *sets, extra=["--resume"])
    assert rc == 1 and "nothing to resume (no config.json); start without --resume" in err, err
    assert not (tmp_path / "stopped").exists()
    a = load_state_dict(tmp_path / "straight" / "final" / "model.safetensors")
    for out in (tmp_path / "cached", killed):
        caplog.clear()
        with caplog.at_level("WARNING", logger="tta"):
            rc, err = _tta_train(capsys, "vae", out, *sets, extra=["--resume"])
        assert rc == 0, err
        assert [r.getMessage() for r in caplog.records if "resume" in r.getMessage()] == [
            f"{out} holds no checkpoint to resume from (a run stopped before its first one): starting it from step 0"]
        b = load_state_dict(out / "final" / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_into_a_folder_no_run_was_started_in_is_refused_and_makes_nothing(tmp_path, capsys, caplog):
    """--resume into a mistyped --out or an unrelated folder started a fresh run there, warning that "a run stopped
    before its first one" was in it; it is refused again ("nothing to resume"), and a missing folder is not made."""
    good = _vae_manifest(tmp_path)
    sets = (f"data.manifest={good}", "valid_items=0", "train.max_steps=1")
    unrelated = tmp_path / "notes"
    unrelated.mkdir()
    (unrelated / "todo.txt").write_text("buy milk\n")
    for out in (tmp_path / "typo", unrelated):
        caplog.clear()
        with caplog.at_level("WARNING", logger="tta"):
            rc, err = _tta_train(capsys, "vae", out, *sets, extra=["--resume"])
        assert rc == 1 and err == f"tta: error: {out}: nothing to resume (no config.json); start without --resume\n"
        assert not any("step 0" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "typo").exists()
    assert {p.name for p in unrelated.iterdir()} == {"todo.txt"}   # not even an empty .lock


def test_a_resume_on_several_processes_into_a_missing_folder_makes_nothing(tmp_path):
    """On several processes (WORLD_SIZE > 1) --resume into a missing --out made the folder and its .lock, and left
    them when the resume failed; it makes nothing, as on one process."""
    import subprocess

    from tests.test_ldm_fixtures import ROOT

    out = tmp_path / "missing" / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")}
    env.update(WORLD_SIZE="2", RANK="0", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "tta", "-q", "train", "vae", "--config",
                           str(ROOT / "configs" / "vae" / "tiny.json"), "--out", str(out), "--resume"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 1, done.stderr
    assert not (tmp_path / "missing").exists()


def test_a_fresh_run_names_no_start_folder_of_an_older_run_in_its_out(tmp_path, capsys, monkeypatch):
    """A relative path not found named the folder an older run in --out was started in (its data.json) also for a
    fresh command, which is no run started there: only a --resume reads that record."""
    here = tmp_path / "here"
    here.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "data.json").write_text(json.dumps({"cwd": str(tmp_path)}))
    (tmp_path / "data.jsonl").write_text("")   # found from where the older run was started
    monkeypatch.chdir(here)
    rc, err = _tta_train(capsys, "vae", run, "data.manifest=data.jsonl")
    assert rc == 1 and err == ("tta: error: data.manifest=data.jsonl: manifest not found; a run config's relative "
                               f"paths are read from the current folder, {here}\n"), err


def test_a_refused_restart_leaves_the_stopped_run_as_it_was(tmp_path, capsys):
    """--resume on a run killed before its first checkpoint cleared it (config.json, data.json, metrics.jsonl) and
    only then started it again, so a restart that failed on what it reads ("gone.jsonl: manifest not found")
    left nothing but .lock, and `--config RUN/config.json` had no config to read once the data was back. What
    the restart reads or makes before its first step is checked first now; the folder stays as it was."""
    import shutil

    from tta.cli import main

    good = _vae_manifest(tmp_path)
    sets = (f"data.manifest={good}", "valid_items=0", "train.max_steps=2", "train.checkpoint_every=2")
    rc, err = _tta_train(capsys, "vae", tmp_path / "straight", *sets)
    assert rc == 0, err
    killed = tmp_path / "killed"   # what SIGKILL leaves: config.json, data.json, metrics.jsonl
    shutil.copytree(tmp_path / "straight", killed)
    shutil.rmtree(killed / "checkpoints")
    shutil.rmtree(killed / "final")
    (killed / "samples").mkdir()
    (killed / "samples" / "step_0.png").write_bytes(b"png")
    partial = tmp_path / "partial"   # the train split's audio files, one of them gone
    partial.mkdir()
    _vae_manifest(partial)
    (partial / "tone.wav").unlink()
    broken = tmp_path / "broken"   # one of them no audio file now
    broken.mkdir()
    _vae_manifest(broken)
    (broken / "chirp.wav").write_bytes(b"not audio")
    (tmp_path / "cache_file").write_text("not a folder")
    gone = tmp_path / "gone.jsonl"
    cases = [("data.manifest", str(gone), f"data.manifest={gone}: manifest not found"),
             ("train.init_from", str(tmp_path / "moved"), f"train.init_from='{tmp_path / 'moved'}': no such run"),
             ("data.cache_dir", str(tmp_path / "cache_file"), "data.cache_dir"),
             ("data.manifest", str(partial / "manifest.jsonl"), "1 of split 'train''s audio files are missing"),
             ("data.manifest", str(broken / "manifest.jsonl"), "1 of split 'train''s 3 audio files cannot be read")]
    if not torch.cuda.is_available():
        cases.append(("train.mixed_precision", "fp16", "'fp16' needs a CUDA GPU"))

    def files(folder):
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
                if p.is_file() and p.name != ".lock"}

    saved = json.loads((killed / "config.json").read_text())
    for key, value, said in cases:
        section, name = key.split(".")
        config = {**saved, section: {**saved[section], name: value}}
        if key == "train.mixed_precision":
            config["train"]["cpu"] = False
        (killed / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        held = files(killed)
        capsys.readouterr()
        rc = main(["-q", "train", "vae", "--config", str(killed / "config.json"), "--out", str(killed), "--resume"])
        err = capsys.readouterr().err
        assert rc == 1, (key, err)
        assert files(killed) == held, (key, err)
        assert said in err and err.count("\n") == 1, (key, err)
    # the manifest back where the config says: the same command starts the run again
    (killed / "config.json").write_text(json.dumps({**saved, "data": {**saved["data"], "manifest": str(gone)}}))
    shutil.copy(good, gone)
    rc = main(["-q", "train", "vae", "--config", str(killed / "config.json"), "--out", str(killed), "--resume"])
    assert rc == 0, capsys.readouterr().err
    assert (killed / "final" / "model.safetensors").is_file() and not (killed / "samples").exists()


def test_terminate_as_exit_leaves_an_ignored_sigterm_ignored():
    """A parent's `trap '' TERM` made SIGTERM ignored; the handler turned it into an exit again."""
    import signal

    from tta.checkpoint import terminate_as_exit

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with terminate_as_exit():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_sigterm_that_arrives_in_a_finaliser_still_ends_the_command():
    """Raised inside a __del__ (a progress bar's as `tta generate` ended), Terminated was printed as 'Exception
    ignored in ...' with a traceback and lost: the command went on and ended with status 0."""
    import gc
    import signal

    from tta.checkpoint import Terminated, terminate_as_exit

    seen = []

    class SignalledWhileFinalised:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            for i in range(100_000):   # the handler runs here, inside the finaliser
                seen.append(i)

    unraisable = []
    handler_before = signal.getsignal(signal.SIGTERM)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        with pytest.raises(Terminated) as stopped, terminate_as_exit():
            SignalledWhileFinalised()
            gc.collect()
    finally:
        sys.unraisablehook = previous_hook
    assert stopped.value.code == 143 and len(seen) < 100_000 and not unraisable
    assert signal.getsignal(signal.SIGTERM) is handler_before and sys.unraisablehook is previous_hook


def test_sigterm_handler_puts_the_one_before_back_and_leaves_other_threads_alone():
    """terminate_as_exit (every command) and the joining of a run's processes (SIG_DFL) share it."""
    import signal
    import threading

    from tta.checkpoint import sigterm_handler

    def before(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, before)
    try:
        with sigterm_handler(signal.SIG_DFL):
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGTERM) is before
        seen = []

        def other():
            with sigterm_handler(signal.SIG_DFL):   # Python sets handlers in the main thread only
                seen.append(signal.getsignal(signal.SIGTERM))

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert seen == [before]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_file_system_without_locks_trains_unguarded_with_a_warning(tmp_path, monkeypatch, caplog):
    """Lustre mounted without -o flock answers ENOSYS: every run was refused as 'another tta train'."""
    import errno

    fcntl = pytest.importorskip("fcntl")
    from tta.training import run_lock

    def no_locks(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level("WARNING", logger="tta.training"), run_lock(tmp_path / "run"):
        pass
    assert any("cannot lock the run folder" in r.message for r in caplog.records)


def test_a_removed_run_lock_file_goes_when_released_and_a_replaced_one_is_locked_again(tmp_path, monkeypatch):
    """run_lock(remove=True) (tta generate's out-dir) removes its file on release, while it holds it; a command
    that opened the file just before the holder removed it locked a file no path names (and a third command the
    new file): it opens and locks the file the path names now."""
    fcntl = pytest.importorskip("fcntl")
    from tta.training import run_lock

    out = tmp_path / "out"
    real, removed = fcntl.flock, []

    def removed_meanwhile(fd, op):   # the run before removes the file between this open and this lock
        if not removed:
            removed.append((out / ".lock").unlink())
        return real(fd, op)

    monkeypatch.setattr(fcntl, "flock", removed_meanwhile)
    with run_lock(out, remove=True):
        assert (out / ".lock").read_text() == f"{os.getpid()}\n"
        with open(out / ".lock") as other, pytest.raises(BlockingIOError):
            real(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert removed and list(out.iterdir()) == []


def test_a_run_stopped_before_its_first_checkpoint_keeps_its_pre_encoded_cache(tmp_path):
    """Ctrl-C or SIGTERM (a scheduler's time limit) before the first checkpoint removed the whole folder, the
    pre-encoded latents (hours on a large corpus) with it; the same command, run again, now reads them."""
    from tta.training import discard_on_failure

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt), discard_on_failure(out):
        out.mkdir(exist_ok=True)
        (out / "config.json").write_text("{}")
        (out / "metrics.jsonl").write_text("")
        (out / "cache").mkdir()
        (out / "cache" / "latents-0.pt").write_bytes(b"latents")
        raise KeyboardInterrupt
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == ["cache"]
    assert (out / "cache" / "latents-0.pt").read_bytes() == b"latents"


def test_the_input_hash_covers_the_loaded_component_not_notes_beside_it(tmp_path):
    """A vocoder's `vae` given as a pipeline folder hashed the whole folder: editing its model card blocked the
    resume of a long run whose VAE had not changed."""
    import shutil
    from types import SimpleNamespace

    from tests.test_ldm_fixtures import tiny_pipeline
    from tta.training import input_digests

    pipe = tmp_path / "pipe"
    shutil.copytree(tiny_pipeline(), pipe)
    config = SimpleNamespace(vae=str(pipe))
    before = input_digests(config)
    (pipe / "README.md").write_text("a card\n")
    (pipe / "unet" / "notes.txt").write_text("x\n")
    (pipe / "vae" / "README.md").write_text("the VAE\n")
    assert input_digests(config) == before
    (pipe / "vae" / "config.json").write_text((pipe / "vae" / "config.json").read_text() + " ")
    assert input_digests(config) != before


def test_restarting_an_unstarted_run_accepts_the_run_folder_its_checkpoint_came_from(tmp_path, repo_root):
    """config.json records --init-from RUN as RUN/checkpoints/step_N; a config naming RUN again (a --set or the
    config file) was refused as another config when the run, killed before its first checkpoint, restarted."""
    from tta.config import apply_overrides, load_config, save_config
    from tta.training import restart_unstarted
    from vae.train import RunConfig

    base = load_config(RunConfig, repo_root / "configs/vae/tiny.json")
    src = tmp_path / "src"
    (src / "checkpoints" / "step_2").mkdir(parents=True)
    out = tmp_path / "run"
    out.mkdir()
    began = apply_overrides(base, [f'train.init_from="{src / "checkpoints" / "step_2"}"'])
    save_config(began, out / "config.json")
    restarted = restart_unstarted(out, apply_overrides(base, [f'train.init_from="{src}"']))
    assert restarted is not None and restarted.train.init_from == str(src / "checkpoints" / "step_2")
    assert not (out / "config.json").exists()


def test_a_refused_resume_names_every_setting_that_differs_with_its_values():
    """A retrieval run resumed without --datastore differed first at the derived 'model.context_dim' (keys sort
    alphabetically) and the message named only that; the cause is named too now, with the values."""
    from tta.training import _first_diff

    saved = {"model": {"context_dim": 128, "width": 64}, "retrieval": {"datastore": "stores/train", "neighbours": 3},
             "train": {"learning_rate": 1e-4}}
    now = {"model": {"context_dim": 0, "width": 64}, "retrieval": None, "train": {"learning_rate": 1e-4}}
    assert _first_diff(saved, now) == "'model.context_dim': 128 saved, 0 now; also 'retrieval'"
    now = {"model": {"context_dim": 0, "width": 64}, "retrieval": {"neighbours": 3}, "train": {}}
    assert _first_diff(saved, now) == ("'model.context_dim': 128 saved, 0 now; also 'retrieval.datastore', "
                                       "'train.learning_rate'")
    assert _first_diff({"a": 1, "b": "x" * 100}, {"b": "y"}) == "'a': 1 saved, absent now; also 'b'"


@pytest.mark.parametrize("module", ["vae.train", "vocoder.train", "vocoder.vocos_train", "vocoder.postnet_train",
                                    "tta.clap.train", "tta.ldm.train"])
def test_every_trainer_reads_a_dict_config_strictly_and_names_what_else_it_expects(module, tmp_path):
    """vae.train.train({...}, out) failed on "'dict' object has no attribute 'model'" (each trainer on its first
    field); a dict is now read as a JSON file is, and anything else is named, before the run folder is made."""
    import importlib

    from tta.config import ConfigError

    trainer = importlib.import_module(module)
    with pytest.raises(ConfigError, match=r"unknown config key 'data\.manifets' for DataConfig"):
        trainer.train({"data": {"manifets": "m.jsonl"}}, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match=rf"config: expected a {module}\.RunConfig or a dict of its fields, got "
                                          r"builtins\.str; read a config file with tta\.config\.load_config\("
                                          r"RunConfig, PATH\)"):
        trainer.train("config.json", tmp_path / "run", progress=False)
    other = importlib.import_module("tta.clap.train" if module != "tta.clap.train" else "vae.train")
    with pytest.raises(ConfigError, match=rf"expected a {module}\.RunConfig .*got {other.__name__}\.RunConfig"):
        trainer.train(other.RunConfig(), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_train_config_built_in_python_names_a_wrong_type_and_takes_numpy_numbers():
    """TrainConfig(max_steps="100") failed on "'<=' not supported", cpu="false" was taken (and true), and a numpy
    int was kept and could not be written as JSON."""
    import numpy as np

    from tta.config import to_dict
    from tta.training import TrainConfig

    for kw, message in (({"max_steps": "100"}, "train.max_steps='100' must be an integer"),
                        ({"cpu": "false"}, "train.cpu='false' must be true or false")):
        with pytest.raises(ValueError, match=message):
            TrainConfig(**kw)
    config = TrainConfig(max_steps=np.int64(5), learning_rate=np.float32(1e-4))
    assert json.loads(json.dumps(to_dict(config)))["max_steps"] == 5


def test_a_restart_checks_the_ldms_latent_cache_folder_before_it_clears_anything(tmp_path):
    """check_cache_dir, which `check_restart` runs before a stopped run is cleared, checked data.cache_dir but
    not the LDM's latent `cache_dir` under `precompute`, which the LDM checked on its own only once the run was
    cleared; it covers both now."""
    from pathlib import Path

    from tta.checkpoint import CheckpointError
    from tta.config import apply_overrides, load_config
    from tta.ldm.train import RunConfig as LDMRunConfig
    from tta.training import check_cache_dir

    root = Path(__file__).resolve().parent.parent
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    config = load_config(LDMRunConfig, root / "configs" / "ldm" / "tiny.json")
    config = apply_overrides(config, ["precompute=true", f"cache_dir={json.dumps(str(blocked))}"])
    with pytest.raises(CheckpointError, match="cache_dir is a file"):
        check_cache_dir(config)
    check_cache_dir(apply_overrides(config, ["precompute=false"]))   # unused without precompute: not checked
