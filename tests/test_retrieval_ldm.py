"""Retrieval-augmented conditioning (Re-AudioLDM): the context encoder and its null path, `tta train ldm
--datastore --neighbours` (resume included), `tta generate` with and without neighbours, bad input, and
`tta experiment retrieval` producing a head/mid/tail report. Tiny real classes, synthetic audio, offline."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.clap_toy import make_corpus
from tests.test_ldm_fixtures import ROOT, one_thread, tiny_components  # noqa: F401 (autouse)
from tta.cli import main
from tta.ldm.retrieval_context import RetrievalConfig, RetrievalContext, RetrievalContextConfig

faiss = pytest.importorskip("faiss")


@pytest.fixture(autouse=True)
def _faiss_one_thread():
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(old)


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["-q", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """16 train clips (8 kinds x 2) and 8 valid clips of the toy CLAP corpus."""
    return make_corpus(tmp_path_factory.mktemp("rl_corpus"), per_kind_train=2, per_kind_valid=1)


@pytest.fixture(scope="module")
def store(corpus, tmp_path_factory):
    from tta.clap import load_clap
    from tta.retrieval import DatastoreConfig, build_datastore

    torch.set_num_threads(1)
    clap = load_clap(tiny_components()["clap"])
    return build_datastore(corpus, clap, tmp_path_factory.mktemp("rl_store") / "store",
                           DatastoreConfig(split="train", batch_size=16), progress=False)


def train_args(corpus, out, *extra):
    c = tiny_components()
    sets = [f"components.{k}={json.dumps(str(c[k]))}" for k in ("vae", "vocoder", "clap")]
    sets += [f"data.manifest={json.dumps(str(corpus))}", "validation.prompts=[\"a low steady hum\"]",
             "train.max_steps=2", "train.batch_size=4"]
    return ["train", "ldm", "--config", ROOT / "configs" / "ldm" / "tiny.json", "--out", out,
            *[a for s in sets for a in ("--set", s)], *extra]


@pytest.fixture(scope="module")
def trained(corpus, store, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("rl_run") / "run"
    assert main(["-q", *map(str, train_args(corpus, out, "--datastore", store, "--neighbours", 2))]) == 0
    return out


# ------------------------------------------------------------------------------------ the module


def test_context_tokens_and_the_null_path_is_one_function():
    from dataclasses import replace

    from tta.config import load_config
    from tta.ldm.model import LDMUNet
    from tta.ldm.train import RunConfig

    torch.manual_seed(0)
    ctx = RetrievalContext(RetrievalContextConfig(embed_dim=64, context_dim=64, max_neighbours=4, neighbours=3)).eval()
    feats = {f: torch.nn.functional.normalize(torch.randn(2, 3, 64), dim=-1) for f in ("audio", "text")}
    keep = torch.tensor([True, False])
    with torch.no_grad():
        c = ctx(feats, keep)
    assert c.shape == (2, 1 + 3 * 2, 64)
    null = ctx.null_token.detach()
    assert torch.equal(c[1], null.expand(7, -1)) and not torch.allclose(c[0, 1:], null.expand(6, -1))
    # the rank embedding makes the order of neighbours matter
    with torch.no_grad():
        swapped = ctx({f: v.flip(1) for f, v in feats.items()})
    assert not torch.allclose(swapped[0], c[0])
    with pytest.raises(ValueError, match="max_neighbours"):
        ctx({f: torch.randn(1, 5, 64) for f in ("audio", "text")})

    # a dropped training item (null copies) and "no retrieval" (one null token) give the same UNet output
    model = load_config(RunConfig, ROOT / "configs" / "ldm" / "tiny.json").model
    unet = LDMUNet(replace(model, context_dim=64)).eval()
    x, t, cond = torch.randn(2, 4, 8, 16), torch.tensor([10, 500]), torch.randn(2, 64)
    with torch.no_grad():
        one = unet(x, t, cond, ctx.null_context(2))
        many = unet(x, t, cond, ctx(feats, torch.tensor([False, False])))
        real = unet(x, t, cond, c)
    torch.testing.assert_close(one, many, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(real[0], one[0], atol=1e-4)


def test_retrieval_config_invariants():
    with pytest.raises(ValueError, match="needs a datastore"):
        RetrievalConfig(neighbours=3)
    with pytest.raises(ValueError, match="neighbours >= 1"):
        RetrievalConfig(datastore="x")
    with pytest.raises(ValueError, match="max_neighbours"):
        RetrievalConfig(datastore="x", neighbours=11)
    with pytest.raises(ValueError, match="modality"):
        RetrievalConfig(modality="audio_to_text")


# ------------------------------------------------------------------------------ train + resume


def test_a_retrieval_model_fine_tunes_from_a_text_only_run(corpus, store, tmp_path, capsys):
    """--init-from: the UNet of a plain LDM run seeds a Re-AudioLDM run; the new cross-attention layers and the
    context encoder start fresh."""
    from tta.checkpoint import load_state_dict

    torch.set_num_threads(1)
    plain = tmp_path / "plain"
    assert main(["-q", *map(str, train_args(corpus, plain))]) == 0, capsys.readouterr().err
    ft = tmp_path / "ft"
    code = main(["-q", *map(str, train_args(corpus, ft, "--datastore", store, "--neighbours", 2, "--init-from",
                                            plain, "--set", "train.max_steps=1", "--set",
                                            "train.learning_rate=1e-9"))])
    assert code == 0, capsys.readouterr().err
    base = load_state_dict(plain / "final" / "model.safetensors")
    tuned = load_state_dict(ft / "final" / "model.safetensors")
    assert set(base) <= set(tuned)
    shared = [k for k in base if base[k].is_floating_point() and base[k].shape == tuned[k].shape]
    assert all(torch.allclose(tuned[k], base[k], atol=1e-5) for k in shared)   # one step at lr 1e-9
    # recorded as the checkpoint it named, so that `--config ft/config.json` starts from the same weights
    from tta.training import init_source

    assert json.loads((ft / "config.json").read_text())["train"]["init_from"] == str(init_source(plain))
    assert init_source(plain).parent == plain / "checkpoints"
    # --init-from starts a run: with --resume it is a usage error, a missing source a one-line error
    code = main(["-q", *map(str, train_args(corpus, ft, "--resume", "--init-from", plain))])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cannot be combined with --resume" in err, err
    code = main(["-q", *map(str, train_args(corpus, tmp_path / "x", "--init-from", tmp_path / "nowhere"))])
    err = capsys.readouterr().err
    assert code != 0 and "nowhere" in err and err.count("\n") == 1 and not (tmp_path / "x").exists()


def test_train_with_retrieval_writes_both_components_and_resumes_bit_exactly(trained, corpus, store, tmp_path,
                                                                            capsys):
    from tta.checkpoint import load_state_dict

    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["retrieval"]["neighbours"] == 2 and cfg["model"]["context_dim"] == 64   # resolved from the CLAP width
    assert (trained / "final" / "retrieval" / "model.safetensors").is_file()
    spec = json.loads((trained / "pipeline" / "pipeline.json").read_text())
    assert spec["components"]["retrieval"] == "retrieval"
    assert (trained / "checkpoints" / "step_1" / "retrieval" / "model.safetensors").is_file()
    assert (trained / "samples" / "step_2").is_dir()

    again = tmp_path / "again"
    shutil.copytree(trained, again)
    for p in ("checkpoints/step_2", "final", "pipeline", "samples"):
        shutil.rmtree(again / p)
    code, _, err = run(capsys, *train_args(corpus, again, "--datastore", store, "--neighbours", 2, "--resume"))
    assert code == 0, err
    for part in ("", "retrieval"):
        a = load_state_dict(trained / "final" / part / "model.safetensors")
        b = load_state_dict(again / "final" / part / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part


# ----------------------------------------------------------------------------------- generate


def test_generate_with_and_without_neighbours(trained, store, tmp_path, capsys):
    import soundfile as sf

    model = trained / "pipeline"
    code, _, err = run(capsys, "generate", "a low steady hum", "a rising whistle sweep", "--model", model,
                       "--out-dir", tmp_path / "with", "--datastore", store, "--neighbours", 3)
    assert code == 0, err
    rec = json.loads((tmp_path / "with" / "generation.json").read_text())
    ids = {json.loads(line)["id"] for line in (store / "meta.jsonl").read_text().splitlines()}
    for o in rec["outputs"]:
        assert [n["rank"] for n in o["neighbours"]] == [1, 2, 3]
        assert all(n["id"] in ids and n["caption"] for n in o["neighbours"])
        scores = [n["score"] for n in o["neighbours"]]
        assert scores == sorted(scores, reverse=True)
    assert rec["retrieval"]["neighbours"] == 3 and rec["retrieval"]["trained_neighbours"] == 2
    # the store as built (CLAP, entries, manifest and its sha256, settings), not only its path
    assert rec["retrieval"]["datastore_info"] == json.loads((store / "datastore.json").read_text())

    code, _, err = run(capsys, "generate", "a low steady hum", "a rising whistle sweep", "--model", model,
                       "--out-dir", tmp_path / "without")
    assert code == 0, err
    rec = json.loads((tmp_path / "without" / "generation.json").read_text())
    assert rec["retrieval"]["neighbours"] == 0 and all("neighbours" not in o for o in rec["outputs"])
    assert rec["retrieval"]["datastore"] is rec["retrieval"]["datastore_info"] is None
    name = rec["outputs"][0]["file"]
    a, _ = sf.read(tmp_path / "with" / name)
    b, _ = sf.read(tmp_path / "without" / name)
    assert a.shape == b.shape and np.isfinite(a).all() and not np.allclose(a, b)   # the context matters


def test_generate_resume_takes_the_datastore_moved_and_refuses_another(trained, store, tmp_path, capsys):
    """--resume knows a datastore by its datastore.json (what it was built from and how), as it knows the model by
    its files: the batch's store copied elsewhere (another machine) was refused at 'retrieval.datastore', its
    path; a store built otherwise is refused, naming it, with nothing written."""
    args = ["generate", "a low steady hum", "a rising whistle sweep", "--model", trained / "pipeline", "--steps", 2,
            "--seconds", 0.2, "--neighbours", 2, "--out-dir", tmp_path / "out"]
    code, _, err = run(capsys, *args, "--datastore", store)
    assert code == 0, err
    whole = {p.name: p.read_bytes() for p in (tmp_path / "out").glob("*.wav")}
    (tmp_path / "out" / "001_a_rising_whistle_sweep.wav").unlink()
    moved = shutil.copytree(store, tmp_path / "moved")
    code, _, err = run(capsys, *args, "--datastore", moved, "--resume")
    assert code == 0, err
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").glob("*.wav")} == whole
    before = (tmp_path / "out" / "generation.json").read_text()
    info = json.loads((moved / "datastore.json").read_text())
    (moved / "datastore.json").write_text(json.dumps({**info, "manifest_sha256": "0" * 64}))   # built from another
    code, _, err = run(capsys, *args, "--datastore", moved, "--resume")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "cannot resume another run (first difference at 'retrieval.datastore_info.manifest_sha256': " in err
    assert (tmp_path / "out" / "generation.json").read_text() == before


@pytest.fixture(scope="module")
def bad_stores(store, corpus, tmp_path_factory):
    from tests.test_ldm_fixtures import tiny_model_config
    from tta.checkpoint import save_component
    from tta.clap import load_clap
    from tta.clap.model import ClapConfig, TTAClap
    from tta.retrieval import DatastoreConfig, build_datastore

    root = tmp_path_factory.mktemp("rl_bad")
    torch.manual_seed(123)
    save_component(root / "other_clap", TTAClap(tiny_model_config(ClapConfig, "clap")))
    other = build_datastore(corpus, load_clap(root / "other_clap"), root / "other", DatastoreConfig(split="train"),
                            progress=False)
    empty = shutil.copytree(store, root / "empty")
    info = json.loads((empty / "datastore.json").read_text())
    (empty / "datastore.json").write_text(json.dumps({**info, "count": 0}))
    corrupt = shutil.copytree(store, root / "corrupt")
    (corrupt / "audio.index").write_bytes(b"not a faiss index" * 10)
    return {"other": other, "empty": empty, "corrupt": corrupt, "missing": root / "nothing-here"}


@pytest.mark.parametrize("case, extra, message", [
    ("other", ["--neighbours", "2"], "built with CLAP tta-clap:.* given CLAP is tta-clap:"),
    ("store", ["--neighbours", "99"], "larger than the datastore"),
    ("empty", [], "empty"),
    ("corrupt", [], "corrupted or unreadable FAISS index"),
    ("missing", [], "datastore folder not found"),
    (None, ["--neighbours", "2"], "--neighbours 2 needs --datastore"),   # bad usage: exit 2
    (None, ["--context-guidance", "guided"], "--context-guidance guided needs --datastore"),   # it was ignored
])
def test_generate_bad_retrieval_input_is_one_line_exit_1(trained, store, bad_stores, tmp_path, capsys, case, extra,
                                                         message):
    where = [] if case is None else ["--datastore", store if case == "store" else bad_stores[case]]
    code, _, err = run(capsys, "generate", "a tone", "--model", trained / "pipeline", "--out-dir", tmp_path,
                       *where, *extra)
    assert code == (2 if case is None else 1) and err.count("\n") == 1 and err.startswith("tta: error:"), err
    assert __import__("re").search(message, err), err
    assert not list(tmp_path.glob("*.wav"))

def test_the_record_holds_the_store_as_the_run_opened_it(trained, store, tmp_path, capsys, monkeypatch):
    """generation.json re-read datastore.json whenever it was written, so a store rebuilt under the same path during
    a long run was recorded instead of the one the run used."""
    from tta import generate

    copy = shutil.copytree(store, tmp_path / "store")
    built = json.loads((copy / "datastore.json").read_text())
    real = generate.open_datastore

    def open_then_rebuild(args):
        loaded = real(args)
        (copy / "datastore.json").write_text(json.dumps({**built, "manifest": "another.jsonl"}))
        return loaded

    monkeypatch.setattr(generate, "open_datastore", open_then_rebuild)
    code, _, err = run(capsys, "generate", "a low steady hum", "--model", trained / "pipeline", "--steps", 2,
                       "-o", tmp_path / "x.wav", "--datastore", copy)
    assert code == 0, err
    assert json.loads((tmp_path / "x.generation.json").read_text())["retrieval"]["datastore_info"] == built



def test_train_bad_retrieval_input_and_plain_models(corpus, store, bad_stores, tmp_path, capsys):
    from tests.test_ldm_fixtures import tiny_pipeline

    cases = [(["--set", "retrieval.neighbours=2"], "needs a datastore"),   # as a config value: exit 1
             (["--datastore", bad_stores["corrupt"], "--neighbours", "2"], "corrupted"),
             (["--datastore", bad_stores["other"], "--neighbours", "2"], "built with CLAP"),
             (["--datastore", store, "--neighbours", "16", "--set", "retrieval.max_neighbours=16"],
              "k=16 neighbours .* only 16 entries")]
    for i, (extra, message) in enumerate(cases):
        code, _, err = run(capsys, *train_args(corpus, tmp_path / f"r{i}", *extra))
        assert code == 1 and err.count("\n") == 1 and __import__("re").search(message, err), err
    code, _, err = run(capsys, "train", "vae", "--config", ROOT / "configs" / "vae" / "tiny.json",   # bad usage
                       "--out", tmp_path / "v", "--neighbours", "2")
    assert code == 2 and err.count("\n") == 1 and "apply to `tta train ldm` only" in err, err
    code, _, err = run(capsys, "train", "ldm", "--config", ROOT / "configs" / "ldm" / "tiny.json",
                       "--out", tmp_path / "l", "--neighbours", "2")
    assert code == 2 and err.count("\n") == 1 and "--neighbours 2 needs --datastore DIR" in err, err
    assert not (tmp_path / "v").exists()
    # a model trained without retrieval refuses a datastore, naming the model (it named none), the embedded
    # default included
    code, _, err = run(capsys, "generate", "a tone", "--model", tiny_pipeline(), "--out-dir", tmp_path / "g",
                       "--datastore", store)
    assert code == 1 and err == f"tta: error: {tiny_pipeline()}: this model was not trained with retrieval (no " \
                                "retrieval/ component); generate without --datastore\n", err
    from tta.generate import DEFAULT_MODEL

    code, _, err = run(capsys, "generate", "a tone", "-o", tmp_path / "d.wav", "--datastore", store)
    assert code == 1 and err.startswith(f"tta: error: {DEFAULT_MODEL}: this model was not trained") and \
        err.count("\n") == 1, err
    assert not (tmp_path / "g").exists() and not list(tmp_path.glob("d.*"))


# --------------------------------------------------------------------------------- experiment


def test_experiment_runner_reports_head_mid_tail(corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)   # the config's "configs/ldm/tiny.json" is found from the config file's folder
    c = tiny_components()
    out = tmp_path / "exp"
    sets = [f"components.{k}={json.dumps(str(c[k]))}" for k in ("vae", "vocoder", "clap")]
    sets.append(f"manifest={json.dumps(str(corpus))}")
    code, stdout, err = run(capsys, "experiment", "retrieval", "--config",
                            ROOT / "configs" / "experiment" / "retrieval-tiny.json", "--out", out,
                            *[a for s in sets for a in ("--set", s)])
    assert code == 0, err
    assert stdout.strip().endswith("report.html") and (out / "report.html").stat().st_size > 1000
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["variants"]) == ["none", "k1", "k3-audio", "k3-text", "k2-latent"]
    from tta.retrieval import Datastore   # a variant reads neighbours' latents: the store holds the VAE's

    assert Datastore.load(out / "datastore").latent_info["vae_identity"].startswith("tta-vae:")
    assert summary["store_entries"] == 16 and sum(summary["bucket_counts"].values()) == 8
    assert summary["bucket_by"] == "words" and list(summary["bucket_frequencies"]) == list(summary["bucket_counts"])
    assert "Buckets (`eval.bucket_by` words)" in (out / "summary.md").read_text()
    assert set(summary["bucket_counts"]) <= {"head", "mid", "tail"} and len(summary["bucket_counts"]) >= 2
    for v in summary["variants"].values():
        assert v["metrics"]["fad"] >= 0 and -1 <= v["metrics"]["clap_score"] <= 1
        assert sum(v["buckets"][b]["files"] or 0 for b in ("head", "mid", "tail")) == 8
    prompts = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
    rank = {"head": 0, "mid": 1, "tail": 2}
    for a in prompts:   # a more frequent prompt is never in a rarer bucket; equal frequencies share one
        for b in prompts:
            if a["frequency"] > b["frequency"]:
                assert rank[a["category"]] <= rank[b["category"]]
            elif a["frequency"] == b["frequency"]:
                assert a["category"] == b["category"]
    assert summary["store_check"]["passed"] and summary["store_check"]["eval_clips"] == 8
    assert summary["store_check"]["by_id"] == summary["store_check"]["related"] == 0
    assert summary["prompt_sample"] == {"seed": 0, "split": "valid", "prompts": 8, "reference_clips": 8}
    assert sorted(p.stem for p in (out / "reference").glob("*.wav")) == sorted(p["id"] for p in prompts)
    gen = json.loads((out / "generated" / "k3-text" / "generation.json").read_text())
    assert all(len(o["neighbours"]) == 3 for o in gen["outputs"])
    # the settings that ran, those left to the pipeline included (not None)
    assert all(gen["settings"][k] is not None for k in ("seconds", "steps", "guidance", "sampler", "candidates"))
    assert all(not o["neighbours"] for o in json.loads((out / "generated" / "none" / "generation.json")
                                                     .read_text())["outputs"])
    html = (out / "report.html").read_text()
    assert all(b in html for b in ("head", "mid", "tail")) and "k3-audio" in html
    # buckets in the long-tail order (they were by file count, "mid, head"), in summary.json and the report
    listed = [b for b in ("head", "mid", "tail") if b in summary["bucket_counts"]]
    assert list(summary["bucket_counts"]) == listed, summary["bucket_counts"]
    assert re.findall(r'<td class="name">none</td><td class="name">(\w+)</td>', html) == listed
    assert 'id="categories"' in html and 'id="headtail"' not in html   # no file-count split of the buckets
    assert "| k1 | 1 | both | text_to_audio |" in (out / "summary.md").read_text()
    # k3-audio and k3-text also differ in how they search: the table and summary.json say which index
    assert "| k3-text | 3 | text | text_to_text |" in (out / "summary.md").read_text()
    assert "| none | 0 | – | – |" in (out / "summary.md").read_text()
    assert summary["variants"]["k3-text"]["modality"] == "text_to_text"
    assert gen["retrieval"]["index"] == "text" and gen["retrieval"]["features"] == "text"
    assert "FAD ↓ by embedder `mfcc@v1`" in (out / "summary.md").read_text()
    assert summary["variants"]["k1"]["generation"]["steps"] == 2
    assert (out / "runs" / "k3-audio" / "pipeline" / "retrieval").is_dir()
    enc = json.loads((out / "runs" / "k2-latent" / "pipeline" / "retrieval" / "config.json").read_text())["config"]
    assert enc["features"] == "text+latent" and enc["latent_tokens"] == 8

    # run again into the same OUT: the store and every trained variant are reused ...
    def stamps():
        return {p.parent.parent.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*/pipeline/pipeline.json")}

    before, store_before = stamps(), (out / "datastore" / "datastore.json").stat().st_mtime_ns
    one = [*sets[:-1], 'variants=[{"name": "none"}, {"name": "k1", "neighbours": 1}]']
    code, _, err = run(capsys, "experiment", "retrieval", "--config",
                       ROOT / "configs" / "experiment" / "retrieval-tiny.json", "--out", out,
                       *[a for s in [*one, sets[-1]] for a in ("--set", s)])
    assert code == 0, err
    assert (out / "datastore" / "datastore.json").stat().st_mtime_ns == store_before
    assert {k: v for k, v in stamps().items() if k in ("none", "k1")} == {k: before[k] for k in ("none", "k1")}
    # a variant trained before records existed is kept, and so is one whose record lacks a field added since
    (out / "runs" / "none" / "experiment-variant.json").unlink()
    record = json.loads((out / "runs" / "k1" / "experiment-variant.json").read_text())
    del record["run_config"]["cfg_dropout"]
    (out / "runs" / "k1" / "experiment-variant.json").write_text(json.dumps(record))
    code, _, err = run(capsys, "experiment", "retrieval", "--config",
                       ROOT / "configs" / "experiment" / "retrieval-tiny.json", "--out", out,
                       *[a for s in [*one, sets[-1]] for a in ("--set", s)])
    assert code == 0, err
    assert {k: v for k, v in stamps().items() if k in ("none", "k1")} == {k: before[k] for k in ("none", "k1")}
    # ... but with another manifest (here the same clips, one training row fewer) both are rebuilt, so no
    # variant is scored having trained on other data than the report names
    from tta.data.manifest import read_manifest, write_manifest

    rows = read_manifest(corpus)
    drop = next(r.id for r in rows if r.split == "train")
    other = write_manifest(corpus.parent / "one-fewer.jsonl", [r for r in rows if r.id != drop])
    code, _, err = run(capsys, "experiment", "retrieval", "--config",
                       ROOT / "configs" / "experiment" / "retrieval-tiny.json", "--out", out,
                       *[a for s in [*one, f"manifest={json.dumps(str(other))}"] for a in ("--set", s)])
    assert code == 0, err
    assert Datastore.load(out / "datastore").count == 15 and drop not in Datastore.load(out / "datastore").row_of
    after = stamps()
    assert after["none"] != before["none"] and after["k1"] != before["k1"]
    assert json.loads((out / "summary.json").read_text())["store_entries"] == 15


def test_a_resaved_clap_is_recognised_and_another_refused(store):
    """Identities name checkpoint files (a pipeline's text_encoder/ is a re-save): the store then compares
    the CLAP's embeddings of its stored captions instead of the names."""
    from tests.test_ldm_fixtures import tiny_model_config
    from tta.clap import load_clap
    from tta.clap.model import ClapConfig, TTAClap, TTAClapEmbedder
    from tta.retrieval import Datastore, DatastoreError

    loaded = Datastore.load(store)
    clap = load_clap(tiny_components()["clap"])
    loaded.check_clap(TTAClapEmbedder(clap.model, identity="tta-clap:resaved"))
    torch.manual_seed(5)
    other = TTAClapEmbedder(TTAClap(tiny_model_config(ClapConfig, "clap")).eval(), identity="tta-clap:other")
    with pytest.raises(DatastoreError, match=f"built with CLAP {clap.identity}.*given CLAP is tta-clap:other"):
        loaded.check_clap(other)
    # the same text tower with another audio tower: the stored captions agree, the stored audio does not
    import copy

    audio_changed = copy.deepcopy(clap.model)
    with torch.no_grad():
        for name, param in audio_changed.named_parameters():
            if name.startswith("audio"):
                param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
    assert any(n.startswith("audio") for n, _ in audio_changed.named_parameters())
    with pytest.raises(DatastoreError, match="given CLAP is tta-clap:new-audio"):
        loaded.check_clap(TTAClapEmbedder(audio_changed, identity="tta-clap:new-audio"))


def test_a_retrieval_pipeline_round_trips_and_refuses_diffusers_export(trained, store, tmp_path, capsys):
    from tta.pipeline import TTAPipeline

    pipe = TTAPipeline.from_pretrained(trained / "pipeline")
    again = TTAPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "copy"))
    a = pipe(["a deep rumble"], datastore=store, neighbours=2)
    b = again(["a deep rumble"], datastore=store, neighbours=2)
    assert np.array_equal(a.wavs[0], b.wavs[0]) and a.neighbours == b.neighbours
    code, _, err = run(capsys, "export", "diffusers", trained / "pipeline", "--out", tmp_path / "d")
    assert code == 1 and "retrieval-augmented" in err


def test_average_covers_the_retrieval_context_and_refuses_a_plain_model(trained, tmp_path, capsys):
    import torch

    from tests.test_ldm_fixtures import tiny_pipeline
    from tta.pipeline import TTAPipeline

    pipe = TTAPipeline.from_pretrained(trained / "pipeline")
    base = {k: v.clone() for k, v in pipe.retrieval.state_dict().items()}
    k = next(k for k, v in base.items() if v.is_floating_point() and v.numel() > 4)
    with torch.no_grad():
        pipe.retrieval.state_dict()[k].add_(0.3)
    pipe.save_pretrained(tmp_path / "moved")
    code, _, err = run(capsys, "export", "pipeline", trained / "pipeline", "--out", tmp_path / "soup",
                       "--dtype", "float32", "--average", tmp_path / "moved")
    assert code == 0, err
    soup = TTAPipeline.from_pretrained(tmp_path / "soup").retrieval.state_dict()
    assert torch.allclose(soup[k], base[k] + 0.15, atol=1e-6)
    code, _, err = run(capsys, "export", "pipeline", trained / "pipeline", "--out", tmp_path / "x",
                       "--average", tiny_pipeline())
    assert code == 1 and "--average" in err and "unet/ config" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_the_summary_names_what_measured_the_scores_and_the_settings():
    """summary.md gave FAD and CLAP numbers without the embedder or CLAP behind them, the bucket counts as a
    Python dict, and no generation settings."""
    from tta.commands.retrieval_experiment import render_summary

    def variant(embedder, steps):
        return {"neighbours": 0, "features": None, "metrics": {"fad": 3.0, "clap_score": 0.2},
                "buckets": {b: {"files": 1, "fad": 3.0, "clap_score": 0.2} for b in ("head", "mid", "tail")},
                "measured_by": {"fad": embedder, "clap_score": "clap@tta-clap:01"},
                "generation": {"seconds": 0.32, "steps": steps, "guidance": 2.5, "sampler": "ddim", "candidates": 1,
                               "seed": 0, "batch_size": 8}}

    summary = {"bucket_counts": {"mid": 6, "head": 2}, "store_entries": 16, "report": "r.html",
               "variants": {"none": variant("mfcc@v1", 2), "k1": variant("mfcc@v1", 2)}}
    summary["variants"]["k1"].update(neighbours=1, features="text", modality="text_to_text")
    md = render_summary(summary)
    assert "Prompts per bucket: head 2, mid 6, tail 0;" in md
    assert "| variant | k | features | modality | FAD |" in md and "| k1 | 1 | text | text_to_text | 3 |" in md
    assert "FAD ↓ by embedder `mfcc@v1`; CLAP score ↑ (mean text-audio cosine, -1 to 1) by `clap@tta-clap:01`" in md
    assert "Generation: seconds 0.32, steps 2, guidance 2.5, sampler ddim, candidates 1, seed 0." in md
    # what the buckets measured: the frequency the prompts were ranked by and each bucket's range of it
    assert "Buckets" not in md   # a summary that does not record them
    md = render_summary({**summary, "bucket_by": "words", "bucket_frequencies": {"head": [5.0, 8.5], "mid": [4.0, 4.0]}})
    assert ("Buckets (`eval.bucket_by` words): the prompts in thirds by rank of their training frequency (per prompt: "
            "the mean, over its content words, of the number of training clips whose captions hold the word): "
            "head 5–8.5, mid 4 (each prompt's in prompts.jsonl).") in md
    md = render_summary({**summary, "bucket_by": "category", "bucket_frequencies": {"tail": [0.0, 1.0]}})
    assert "(per prompt: the number of training clips labelled with its category): tail 0–1 " in md
    summary["variants"]["k1"] = variant("aisfx@sha256:1a2b", 4)
    md = render_summary(summary)
    assert "The FAD embedder or the CLAP differ per variant (see summary.json)." in md
    assert "The generation settings differ per variant (see summary.json)." in md


def test_the_summary_says_why_a_bucket_has_no_fad():
    """A bucket of one prompt (one frame per clip, as mfcc embeds) has no FAD: summary.md showed "–" without a
    word, where report.html marks the cell and says why. It marks the cell and says it in the report's words; a
    bucket no prompt fell in, and a summary that records no frame counts (an older one), are left unmarked."""
    from eval.report import NO_FAD_NOTE
    from tta.commands.retrieval_experiment import render_summary

    def bucket(files, fad, frames):
        return {"files": files, "fad": fad, "fad_frames": frames, "clap_score": 0.1 if files else None}

    variant = {"neighbours": 0, "features": None, "metrics": {"fad": 3.0, "clap_score": 0.1},
               "buckets": {"head": bucket(1, None, 1), "mid": bucket(2, 4.0, 2), "tail": bucket(0, None, None)}}
    summary = {"bucket_counts": {"head": 1, "mid": 2}, "store_entries": 16, "report": "report.html",
               "variants": {"none": variant, "k1": {**variant, "neighbours": 1}}}
    md = render_summary(summary)
    assert "| none | 0 | – | – | 3 | 0.1 | –† | 0.1 | 4 | 0.1 | – | – |" in md
    footnotes = [line for line in md.splitlines() if line.startswith("†")]
    assert footnotes == [f"† N{NO_FAD_NOTE[1:]}; each bucket's frames are in report.html."]
    for b in variant["buckets"].values():
        del b["fad_frames"]
    md = render_summary(summary)
    assert "†" not in md and "| none | 0 | – | – | 3 | 0.1 | – | 0.1 | 4 |" in md


def test_a_given_pipeline_is_recorded_with_the_retrieval_it_was_trained_with(trained, store, tmp_path, caplog):
    """A variant given as a trained `pipeline` retrieves as that pipeline was trained, whatever the variant's
    features and modality say; the experiment recorded (and summary.md showed) the variant's, so a pipeline
    trained on text->audio neighbours with both features was reported as an audio-only, text->text one."""
    from tta.commands.retrieval_experiment import GenerationSettings, VariantConfig, generate_variant
    from tta.retrieval import Datastore

    variant = VariantConfig("given", 2, features="audio", modality="text_to_text", pipeline=str(trained / "pipeline"))
    prompts = [{"id": "p0", "prompt": "a low steady hum", "category": "head"}]
    with caplog.at_level("WARNING"):
        record = generate_variant(trained / "pipeline", variant, Datastore.load(store), prompts,
                                  GenerationSettings(seconds=0.32, steps=1, batch_size=1), tmp_path / "gen", False)
    assert record["retrieval"] == {"features": "both", "modality": "text_to_audio", "index": "audio",
                                   "trained_neighbours": 2, "attention": "replace"}
    assert json.loads((tmp_path / "gen" / "generation.json").read_text())["retrieval"] == record["retrieval"]
    assert ("trained with features 'both', not the variant's 'audio' and modality 'text_to_audio', not the "
            "variant's 'text_to_text'") in caplog.text
    # only what the variant sets is compared: its defaults are those of the runs the experiment trains (a given
    # pipeline trained with other values was warned of as "not the variant's 'both' and 'text_to_audio'")
    other = shutil.copytree(trained / "pipeline", tmp_path / "a2a")
    cfg = json.loads((other / "retrieval" / "config.json").read_text())
    cfg["config"]["modality"] = "audio_to_audio"   # searches the same (audio) index
    (other / "retrieval" / "config.json").write_text(json.dumps(cfg))
    from tta.commands.retrieval_experiment import ran_retrieval
    from tta.pipeline import TTAPipeline

    pipe = TTAPipeline.from_pretrained(other)
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert ran_retrieval(pipe, VariantConfig("given", 2, pipeline=str(other)), other)["modality"] == "audio_to_audio"
        assert caplog.text == ""
        ran_retrieval(pipe, VariantConfig("given", 2, features="both", modality="text_to_text", pipeline=str(other)),
                      other)
    assert "trained with modality 'audio_to_audio', not the variant's 'text_to_text';" in caplog.text
    assert "features" not in caplog.text
    # a plain model given with neighbours is refused naming the variant
    plain = VariantConfig("plain", 2, pipeline=str(trained / "pipeline"))
    pipe = TTAPipeline.from_pretrained(trained / "pipeline")
    pipe.retrieval = None
    with pytest.raises(ValueError, match=r"variants\.plain: .* was not trained with retrieval"):
        ran_retrieval(pipe, plain, trained / "pipeline")


def test_bucket_counts_are_in_the_long_tail_order():
    from tta.commands.retrieval_experiment import bucket_counts

    prompts = [{"category": c} for c in ("mid", "tail", "mid", "head", "mid")]
    assert list(bucket_counts(prompts).items()) == [("head", 1), ("mid", 3), ("tail", 1)]
    from tta.commands.retrieval_experiment import bucket_frequencies

    for p, f in zip(prompts, (3.0, 0.5, 2.0, 7.0, 3.0)):
        p["frequency"] = f
    assert list(bucket_frequencies(prompts).items()) == [("head", [7.0, 7.0]), ("mid", [2.0, 3.0]),
                                                         ("tail", [0.5, 0.5])]
    assert list(bucket_counts(prompts[1:3])) == ["mid", "tail"]   # first seen: tail, mid


def test_buckets_follow_training_frequency_of_caption_words_and_classes():
    from tta.commands.retrieval_experiment import assign_buckets, prompt_frequencies
    from tta.data.manifest import ManifestRow

    def row(i, caption, labels=()):
        return ManifestRow(id=f"r{i}", path=f"{i}.wav", captions=(caption,), seconds=1.0, sample_rate=16_000,
                           split="train", labels=labels)

    rows = [row(i, "a dog barks loudly", ("dog",)) for i in range(6)] + \
           [row(10 + i, "rain on a roof", ("rain",)) for i in range(3)] + [row(20, "a theremin solo", ("theremin",))]
    prompts = [{"prompt": "the theremin"}, {"prompt": "dog barks"}, {"prompt": "heavy rain"},
               {"prompt": "a the of"}, {"prompt": "a dog in the rain"}, {"prompt": "barks"}]
    freqs = prompt_frequencies(prompts, rows, "words")
    assert freqs == [1.0, 6.0, 1.5, 0.0, 4.5, 6.0]     # mean over content words of clips containing each word
    assert assign_buckets(freqs) == ["tail", "head", "mid", "tail", "mid", "head"]   # thirds by rank
    by_class = prompt_frequencies([{"prompt": "x", "category": c} for c in ("dog", "rain", "theremin", "cat")],
                                  rows, "category")
    assert by_class == [6.0, 3.0, 1.0, 0.0] and assign_buckets(by_class) == ["head", "head", "mid", "tail"]


def test_nearly_tied_prompts_of_different_buckets_show_apart(tmp_path):
    """Each bucket's frequency range was taken from frequencies already rounded to 3 decimals, so two prompts
    of different buckets, 91/45 and 93/46, showed the same range (mid 2.022, tail 2.022), as prompts.jsonl
    showed them; the ranges are of the exact frequencies now, shown with the decimals that tell them apart."""
    import itertools

    from tta.commands.retrieval_experiment import ExperimentConfig, bucket_frequencies, bucket_rule, eval_prompts
    from tta.data.manifest import ManifestRow

    def row(i, caption):
        return ManifestRow(id=f"r{i}", path=f"{i}.wav", captions=(caption,), seconds=1.0, sample_rate=16_000)

    words = ["q" + a + b for a, b in itertools.product("abcdefgh", repeat=2)][:46]
    count = {w: 3 if i == 0 else 2 for i, w in enumerate(words)} | {"zebra": 5}   # training clips with the word
    train = [row(j, " ".join(w for w in count if count[w] > j)) for j in range(5)]
    rows = [row(10, "zebra"), row(11, " ".join(words[:45])), row(12, " ".join(words))]   # 5, 91/45, 93/46
    prompts, path = eval_prompts(ExperimentConfig(ldm_config="x"), rows, train, tmp_path)
    assert [p["category"] for p in prompts] == ["head", "mid", "tail"]
    ranges = bucket_frequencies(prompts)
    assert ranges == {"head": [5.0, 5.0], "mid": [2.0222, 2.0222], "tail": [2.0217, 2.0217]}
    assert "head 5, mid 2.0222, tail 2.0217 (each" in bucket_rule({"bucket_by": "words", "bucket_frequencies": ranges})[0]
    written = [json.loads(line)["frequency"] for line in path.read_text().splitlines()]
    assert written == [5.0, 2.0222, 2.0217]   # as the ranges show them
    # frequencies 3 decimals tell apart keep 3 (a range ends on its prompts' exact values, rounded)
    rows = [row(10, "zebra"), row(11, " ".join(words[:2])), row(12, " ".join(words[:3]))]   # 5, 2.5, 7/3
    prompts, path = eval_prompts(ExperimentConfig(ldm_config="x"), rows, train, tmp_path)
    assert bucket_frequencies(prompts) == {"head": [5.0, 5.0], "mid": [2.5, 2.5], "tail": [2.333, 2.333]}
    assert [json.loads(line)["frequency"] for line in path.read_text().splitlines()] == [5.0, 2.5, 2.333]


# --------------------------------------------------------------------------- decoupled attention


def _tiny_unet(**changes):
    from dataclasses import replace

    from tta.config import load_config
    from tta.ldm.model import LDMUNet
    from tta.ldm.train import RunConfig

    return LDMUNet(replace(load_config(RunConfig, ROOT / "configs" / "ldm" / "tiny.json").model, **changes)).eval()


def test_decoupled_attention_starts_as_the_plain_unet_and_keeps_one_null_function():
    import copy

    from tta.ldm.retrieval_context import attach_decoupled, attention_layers, context_config

    torch.manual_seed(0)
    plain = _tiny_unet()
    unet = copy.deepcopy(plain)
    layers = attention_layers(unet)
    assert layers and all(name.endswith(".attn2") for name in layers)
    r = RetrievalConfig(datastore="x", neighbours=3, attention="decoupled", context_dim=16)
    ctx = RetrievalContext(context_config(r, 64, 16, layers)).eval()
    attach_decoupled(unet, ctx.config)
    assert ctx.config.width == 2 * sum(layers.values())
    assert unet.state_dict().keys() == plain.state_dict().keys()       # the UNet's weights are not touched
    feats = {f: torch.nn.functional.normalize(torch.randn(2, 3, 64), dim=-1) for f in ("audio", "text")}
    x, t, cond = torch.randn(2, 4, 8, 16), torch.tensor([10, 500]), torch.randn(2, 64)
    with torch.no_grad():
        base = plain(x, t, cond)
        torch.testing.assert_close(unet(x, t, cond, ctx(feats)), base, atol=1e-6, rtol=1e-5)  # values start at 0
        torch.testing.assert_close(unet(x, t, cond), base, atol=1e-6, rtol=1e-5)   # no context: self-attention
        ctx.branch.weight.normal_(0, 0.5)                                        # as if trained
        real = unet(x, t, cond, ctx(feats))
        one = unet(x, t, cond, ctx.null_context(2))
        many = unet(x, t, cond, ctx(feats, torch.tensor([False, False])))
    assert not torch.allclose(real, base, atol=1e-3) and not torch.allclose(real[0], one[0], atol=1e-4)
    torch.testing.assert_close(one, many, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="expects a context"):
        unet(x, t, cond, torch.randn(2, 3, 16))
    # the encoder's branches must match the UNet's layers
    other = RetrievalContext(context_config(r, 64, 16, {name: width * 2 for name, width in layers.items()}))
    with pytest.raises(ValueError, match="do not match"):
        attach_decoupled(copy.deepcopy(plain), other.config)


def test_decoupled_config_checks():
    from tta.config import ConfigError, apply_overrides, load_config
    from tta.ldm.train import RunConfig

    with pytest.raises(ValueError, match="attention"):
        RetrievalConfig(datastore="x", neighbours=2, attention="gated")
    with pytest.raises(ValueError, match="learning_rate_scale"):
        RetrievalConfig(datastore="x", neighbours=2, learning_rate_scale=0.0)
    with pytest.raises(ValueError, match="branches"):
        RetrievalContextConfig(attention="decoupled")
    with pytest.raises(ValueError, match="branches"):
        RetrievalContextConfig(branches={"a.attn2": 32})
    with pytest.raises((ValueError, ConfigError), match="without cross-attention"):
        apply_overrides(load_config(RunConfig, ROOT / "configs" / "ldm" / "tiny.json"),
                        ["retrieval.datastore=\"x\"", "retrieval.neighbours=2",
                         "retrieval.attention=\"decoupled\"", "model.context_dim=64"])


def generate_with_and_without(capsys, model, store, tmp_path) -> dict:
    """{"with", "without"}: the wav `tta generate` writes for one prompt and seed with and without `store`."""
    import soundfile as sf

    wavs = {}
    for name, extra in (("with", ["--datastore", store]), ("without", [])):
        code, _, err = run(capsys, "generate", "a low steady hum", "--model", model, "--out-dir", tmp_path / name,
                           "--seed", 3, *extra)
        assert code == 0, err
        rec = json.loads((tmp_path / name / "generation.json").read_text())
        wavs[name], _ = sf.read(tmp_path / name / rec["outputs"][0]["file"])
    return wavs


def test_a_decoupled_retrieval_model_fine_tunes_a_text_only_run_and_generates(corpus, store, tmp_path, capsys):
    """--init-from a plain run with decoupled attention: every UNet tensor is the plain run's (no fresh
    cross-attention), the context encoder carries the branches and trains at its own rate, and the pipeline
    generates with and without neighbours."""

    from tta.checkpoint import load_state_dict

    torch.set_num_threads(1)
    plain = tmp_path / "plain"
    assert main(["-q", *map(str, train_args(corpus, plain))]) == 0, capsys.readouterr().err
    ft = tmp_path / "ft"
    code = main(["-q", *map(str, train_args(
        corpus, ft, "--datastore", store, "--neighbours", 2, "--init-from", plain, "--set",
        "retrieval.attention=\"decoupled\"", "--set", "retrieval.learning_rate_scale=1000", "--set",
        "train.learning_rate=1e-9", "--set", "train.warmup_steps=1", "--set", "retrieval.context_dropout=0"))])
    assert code == 0, capsys.readouterr().err
    cfg = json.loads((ft / "config.json").read_text())
    assert cfg["model"]["context_dim"] is None and cfg["retrieval"]["attention"] == "decoupled"
    base = load_state_dict(plain / "final" / "model.safetensors")
    tuned = load_state_dict(ft / "final" / "model.safetensors")
    assert base.keys() == tuned.keys()
    assert all(torch.allclose(tuned[k], base[k], atol=1e-5) for k in base if base[k].is_floating_point())
    ctx = load_state_dict(ft / "final" / "retrieval" / "model.safetensors")
    enc = json.loads((ft / "final" / "retrieval" / "config.json").read_text())["config"]
    assert enc["attention"] == "decoupled" and ctx["branch.weight"].shape[0] == 2 * sum(enc["branches"].values())
    start = 0   # the value parts left zero: the encoder's rate (1000 x 1e-9) moved them
    for width in enc["branches"].values():
        assert ctx["branch.weight"][start + width:start + 2 * width].abs().max() > 1e-7
        start += 2 * width

    outs = generate_with_and_without(capsys, ft / "pipeline", store, tmp_path)
    assert np.isfinite(outs["with"]).all() and outs["with"].shape == outs["without"].shape


def test_the_judge_and_the_quality_bench_generate_with_a_datastore(trained, store, tmp_path):
    """bench/recognisable.py and bench/default_quality.py pass --datastore to a retrieval model and record it
    with its settings (so judge runs with and without it never pool)."""
    pytest.importorskip("aisfx")
    from tests.test_ldm_fixtures import bench_module
    from tests.test_recognisable import judge_corpus

    judge = bench_module("recognisable")
    manifest = judge_corpus(tmp_path / "corpus", judge)
    common = ["--model", str(trained / "pipeline"), "--manifest", str(manifest), "--seeds", "1", "--distractors",
              "0", "--threads", "1", "--labels", "dog", "--results", str(tmp_path / "r.jsonl"), "--quiet"]
    (with_store,) = judge.main(common + ["--out", str(tmp_path / "a"), "--datastore", str(store),
                                         "--neighbours", "2"])["models"]
    (without,) = judge.main(common + ["--out", str(tmp_path / "b")])["models"]
    assert with_store["defaults"]["datastore"].endswith("store") and with_store["defaults"]["neighbours"] == 2
    assert "datastore" not in without["defaults"]
    import soundfile as sf

    a, b = (sf.read(next((tmp_path / run).glob("*/dog-0.wav")))[0] for run in ("a", "b"))
    assert a.shape == b.shape and not np.allclose(a, b)                   # the neighbours reached the UNet
    merged = judge.main(["--merge", str(tmp_path / "a" / "summary.json"), str(tmp_path / "b" / "summary.json"),
                         "--out", str(tmp_path / "m"), "--results", str(tmp_path / "r.jsonl"), "--quiet"])
    assert len(merged["models"]) == 2                                     # two models, not one pooled
    with pytest.raises(SystemExit):
        judge.parse_args(common + ["--neighbours", "2"])

    quality = bench_module("default_quality")
    s = quality.main(["--model", str(trained / "pipeline"), "--manifest", str(manifest), "--items", "2", "--steps",
                      "2", "--seconds", "1", "--no-ceiling", "--threads", "1", "--cost-runs", "1", "--out",
                      str(tmp_path / "q"), "--results", str(tmp_path / "q.jsonl"), "--quiet", "--datastore",
                      str(store), "--split", "valid"])
    assert s["settings"]["datastore"].endswith("store") and s["settings"]["neighbours"] is None
    assert np.isfinite(s["fad"]["gen"]) and np.isfinite(s["clap"]["gen"])


def test_the_attention_bench_measures_both_starts_and_a_trained_context(trained, store, tmp_path):
    from tests.test_ldm_fixtures import bench_module, tiny_pipeline

    bench = bench_module("retrieval_attention")
    results = tmp_path / "r.jsonl"
    s = bench.main(["--model", str(tiny_pipeline()), "--seconds", "1", "--threads", "1", "--results", str(results)])
    for row in s["relative_change"].values():
        assert row["decoupled"] == [0.0] * len(bench.PROMPTS) and min(row["replace"]) > 0
    assert all(min(v) > 0 for v in s["prompt_effect"].values()) and "context_vs_prompt" not in s
    s = bench.main(["--model", str(trained / "pipeline"), "--datastore", str(store), "--seconds", "1", "--threads",
                    "1", "--results", str(results)])
    assert all(np.isfinite(v).all() for v in s["relative_change"].values()) and len(s["neighbours"]) == 4
    for t, change in s["relative_change"].items():   # the ratio is the context's move over the prompt's
        assert all(r > 0 and np.isfinite(r) for r in s["context_vs_prompt"][t]) and min(s["prompt_effect"][t]) > 0
        assert s["context_vs_prompt"][t] != change
    assert len(results.read_text().splitlines()) == 2
    with pytest.raises(SystemExit, match="not a retrieval model"):
        bench.main(["--model", str(tiny_pipeline()), "--datastore", str(store), "--results", str(results)])


# ------------------------------------------------------------------ neighbours as VAE latents


@pytest.fixture(scope="module")
def latent_store(corpus, tmp_path_factory):
    """The train split indexed with the tiny CLAP and, through the CLI, the tiny VAE's pooled latents."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("rl_latent") / "store"
    assert main(["-q", "index", "build", "--manifest", str(corpus), "--split", "train", "--clap",
                 str(tiny_components()["clap"]), "--vae", str(tiny_components()["vae"]), "--latent-tokens", "4",
                 "--out", str(out)]) == 0
    return out


def test_a_given_latent_pipeline_gets_a_store_with_latents_and_no_false_warning(corpus, tmp_path, capsys,
                                                                               monkeypatch):
    """Whether the experiment's own store needs latents was decided by the variant's features (unset: "both"),
    not by what a given `pipeline` was trained with: one trained with latent features found OUT/datastore
    without them ("holds no VAE latents", after every variant before it had run), and was warned of as "not the
    variant's 'both' and 'text_to_audio'", values the variant never set."""
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "store"   # latents pooled as the experiment's own store pools them (the default tokens)
    assert main(["-q", "index", "build", "--manifest", str(corpus), "--split", "train", "--clap",
                 str(tiny_components()["clap"]), "--vae", str(tiny_components()["vae"]), "--out", str(store)]) == 0
    run_dir = tmp_path / "lat"
    code, _, err = run(capsys, *train_args(corpus, run_dir, "--datastore", store, "--neighbours", 2,
                                           "--set", "retrieval.features=\"text+latent\""))
    assert code == 0, err
    variants = json.dumps([{"name": "given", "neighbours": 2, "pipeline": str(run_dir / "pipeline")}])
    out = tmp_path / "exp"
    code, _, err = run(capsys, "experiment", "retrieval", "--config",
                       ROOT / "configs" / "experiment" / "retrieval-tiny.json", "--out", out,
                       *_experiment_sets(corpus, f"variants={variants}", "eval.max_prompts=3"))
    assert code == 0, err
    assert "not the variant's" not in err, err
    from tta.retrieval import Datastore

    assert Datastore.load(out / "datastore").latent_info is not None
    summary = json.loads((out / "summary.json").read_text())
    assert summary["variants"]["given"]["features"] == "text+latent"
    assert summary["config"]["variants"][0]["features"] is None   # as the config gave it: not set
    # a given folder that is no pipeline is refused naming the variant before OUT is made
    variants = json.dumps([{"name": "given", "neighbours": 2, "pipeline": str(run_dir)}])
    code, _, err = run(capsys, "experiment", "retrieval", "--config",
                       ROOT / "configs" / "experiment" / "retrieval-tiny.json", "--out", tmp_path / "exp2",
                       *_experiment_sets(corpus, f"variants={variants}", "eval.max_prompts=3"))
    assert code == 1 and err.count("\n") == 1 and "variants.given.pipeline: " in err, err
    assert not (tmp_path / "exp2").exists()


def test_latent_tokens_without_a_vae_is_bad_usage(corpus, tmp_path, capsys):
    """--latent-tokens without --vae built a store that recorded latent_tokens but held no latents."""
    assert main(["-q", "index", "build", "--manifest", str(corpus), "--clap", str(tiny_components()["clap"]),
                 "--latent-tokens", "4", "--out", str(tmp_path / "s")]) == 2
    assert "--latent-tokens sets the stored VAE latents' length: it needs --vae" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_vae_identity_survives_float16_and_names_other_weights():
    from tests.test_ldm_fixtures import tiny_model_config
    from vae.model import MelVAE, VAEConfig

    torch.manual_seed(0)
    vae = MelVAE(tiny_model_config(VAEConfig, "vae"))
    ident = vae.identity
    assert ident.startswith("tta-vae:") and MelVAE(vae.config).identity != ident
    half = MelVAE(vae.config)
    half.load_state_dict({k: v.half().float() for k, v in vae.state_dict().items()})
    assert half.identity == ident
    with torch.no_grad():
        half.net.encoder.conv_in.weight[0, 0, 0, 0] += 0.1
    assert half.identity != ident
    # the same weights framing audio the other way encode other latents: another identity
    import dataclasses

    from tta.audio import MelConfig

    other = MelVAE(dataclasses.replace(vae.config, mel=MelConfig(framing="tacotron")))
    other.load_state_dict(vae.state_dict())
    assert other.identity == ident + "+tacotron"


def test_a_datastore_built_with_a_vae_holds_each_clips_pooled_latents(latent_store, corpus, capsys):
    from tta.audio import load_audio, log_mel
    from tta.data.manifest import read_manifest, resolve_path
    from tta.retrieval import Datastore
    from vae.model import load_vae

    store = Datastore.load(latent_store)
    vae = load_vae(tiny_components()["vae"])
    lat = store.latent_info
    width = vae.config.latent_channels * (vae.config.mel.n_mels // vae.downsample_factor)
    assert lat["vae_identity"] == vae.identity and (lat["tokens"], lat["dim"]) == (4, width)
    rows = [r for r in read_manifest(corpus) if r.split == "train"]
    got = store.latents(np.array([[0, 5]]))
    assert got.shape == (1, 2, 4, width) and got.dtype == np.float32
    for j, i in enumerate((0, 5)):   # row i is clip i's own summary (normalised as in training; float16)
        wav = load_audio(resolve_path(rows[i], corpus), vae.config.mel.sample_rate, max_seconds=10.0,
                         normalize=True)[0]
        want = vae.latent_summary(log_mel(torch.from_numpy(wav)[None], vae.config.mel), 4).numpy()
        np.testing.assert_allclose(got[0, j], want, rtol=2e-3, atol=2e-3)
    assert not np.allclose(got[0, 0], got[0, 1])
    code, out, _ = run(capsys, "index", "info", latent_store)
    assert code == 0 and f"latents of VAE {vae.identity}: 4 tokens x {width} per clip" in out


def test_latent_neighbour_tokens_and_their_config():
    from tta.ldm.retrieval_context import feature_names

    assert feature_names("both") == ("audio", "text") and feature_names("latent+text") == ("text", "latent")
    assert feature_names("all") == ("audio", "text", "latent")
    for bad in ("mel", "text+text", "", "audio+"):
        with pytest.raises(ValueError, match="retrieval.features"):
            RetrievalConfig(features=bad)
    with pytest.raises(ValueError, match="latent_tokens, latent_dim and latent_vae"):
        RetrievalContextConfig(embed_dim=8, context_dim=8, features="latent")
    with pytest.raises(ValueError, match="latent_tokens, latent_dim and latent_vae"):
        RetrievalContextConfig(embed_dim=8, context_dim=8, latent_tokens=2, latent_dim=6, latent_vae="v")
    torch.manual_seed(0)
    ctx = RetrievalContext(RetrievalContextConfig(embed_dim=8, context_dim=16, features="text+latent", neighbours=2,
                                                  latent_tokens=3, latent_dim=6, latent_vae="tta-vae:x")).eval()
    feats = {"text": torch.randn(2, 2, 8), "latent": torch.randn(2, 2, 3, 6)}
    with torch.no_grad():
        c = ctx(feats, torch.tensor([True, False]))
        moved = ctx({**feats, "latent": feats["latent"].flip(2)})   # the time position embedding sees order
    assert c.shape == (2, 1 + 2 * (1 + 3), 16) and ctx.config.tokens_per_neighbour == 4
    assert torch.equal(c[1], ctx.null_token.detach().expand(9, -1))
    assert not torch.allclose(moved[0, 2:5], c[0, 2:5])
    with pytest.raises(ValueError, match="'latent' must be \\(B, k, 3, 6\\)"):
        ctx({**feats, "latent": torch.randn(2, 2, 4, 6)})


def test_a_latent_neighbour_model_trains_generates_and_refuses_a_store_without_latents(
        corpus, store, latent_store, tmp_path, capsys):

    torch.set_num_threads(1)
    code, _, err = run(capsys, *train_args(corpus, tmp_path / "nolat", "--datastore", store, "--neighbours", 2,
                                           "--set", "retrieval.features=\"text+latent\""))
    assert code == 1 and err.count("\n") == 1 and "holds no VAE latents" in err and "--vae" in err, err
    assert not (tmp_path / "nolat").exists()

    out = tmp_path / "lat"
    code, _, err = run(capsys, *train_args(corpus, out, "--datastore", latent_store, "--neighbours", 2,
                                           "--set", "retrieval.features=\"text+latent\""))
    assert code == 0, err
    enc = json.loads((out / "final" / "retrieval" / "config.json").read_text())["config"]
    info = json.loads((latent_store / "datastore.json").read_text())["latent"]
    assert (enc["latent_tokens"], enc["latent_dim"], enc["latent_vae"]) == (4, info["dim"], info["vae_identity"])
    model = out / "pipeline"
    wavs = generate_with_and_without(capsys, model, latent_store, tmp_path)
    assert np.isfinite(wavs["with"]).all() and not np.allclose(wavs["with"], wavs["without"])
    other = shutil.copytree(latent_store, tmp_path / "other_vae")   # latents claimed by another VAE
    info = json.loads((other / "datastore.json").read_text())
    info["latent"]["vae_identity"] = "tta-vae:0123456789abcdef"
    (other / "datastore.json").write_text(json.dumps(info))
    for bad, message in ((store, "holds no VAE latents"), (other, "latents are of VAE tta-vae:0123456789abcdef")):
        code, _, err = run(capsys, "generate", "a low steady hum", "--model", model, "--out-dir", tmp_path / "bad",
                           "--datastore", bad)
        assert code == 1 and err.count("\n") == 1 and message in err, err
        assert not list((tmp_path / "bad").glob("*.wav"))


def test_context_guidance_changes_only_the_unconditional_branch(trained, store, tmp_path, capsys):
    from tta.pipeline import PipelineError, TTAPipeline

    torch.set_num_threads(1)
    pipe = TTAPipeline.from_pretrained(trained / "pipeline")
    assert pipe.defaults.context_guidance == "shared"
    kw = dict(datastore=store, steps=3, seconds=1.0, window=0.0, candidates=1, sampler="ddim", seed=5)
    shared = pipe(["a low steady hum"], guidance=3.0, context_guidance="shared", **kw).wavs[0]
    guided = pipe(["a low steady hum"], guidance=3.0, context_guidance="guided", **kw).wavs[0]
    assert np.isfinite(guided).all() and not np.allclose(shared, guided)
    # without guidance there is no unconditional branch: both settings are the same generation
    a = pipe(["a low steady hum"], guidance=1.0, context_guidance="shared", **kw).wavs[0]
    b = pipe(["a low steady hum"], guidance=1.0, context_guidance="guided", **kw).wavs[0]
    np.testing.assert_array_equal(a, b)
    with pytest.raises(PipelineError, match="context_guidance='both' must be one of shared, guided"):
        pipe(["a low steady hum"], context_guidance="both", **kw)

    code, _, err = run(capsys, "generate", "a low steady hum", "--model", trained / "pipeline", "--out-dir", tmp_path,
                       "--datastore", store, "--context-guidance", "guided", "--seconds", 1, "--steps", 3)
    assert code == 0, err
    rec = json.loads((tmp_path / "generation.json").read_text())
    assert rec["retrieval"]["context_guidance"] == "guided"


def test_the_overhead_bench_times_latent_neighbour_tokens():
    from tests.test_ldm_fixtures import bench_module

    bench = bench_module("retrieval_overhead")
    common = ["--size", "tiny", "--store-size", "64", "-k", "2", "--prompts", "1", "--seconds", "0.32", "--steps", "2",
              "--rounds", "1", "--no-record"]
    row = bench.main([*common, "--features", "all", "--latent-tokens", "3"])
    assert row["features"] == "all" and row["context_tokens"] == 1 + 2 * (2 + 3)
    assert row["s_per_clip_plain"] > 0 and row["s_per_clip_retrieval"] > 0 and row["retrieve_ms_per_prompt"] > 0
    assert bench.main(common)["context_tokens"] == 1 + 2 * 2


# ------------------------------------------------------------- exclusion, store checks, prompt sample, k


def test_training_excludes_clips_renamed_in_the_manifest_by_their_audio_file(corpus, store, tmp_path, capsys,
                                                                              caplog, monkeypatch):
    """The training manifest names the store's clips under other ids (a re-import): training warns, and no
    training clip gets itself back as a neighbour (it is left out by its audio file). joint_dropout runs too."""
    from tta.data.manifest import read_manifest, write_manifest
    from tta.retrieval.datastore import Datastore

    rows = read_manifest(corpus)
    renamed = write_manifest(corpus.parent / "renamed.jsonl",
                             [type(r)(**{**r.__dict__, "id": f"re-{r.id}"}) for r in rows])
    calls = []
    real_query = Datastore.query

    def spy(self, emb, k, modality="audio", **kw):
        hits = real_query(self, emb, k, modality, **kw)
        calls.append((kw, hits))
        return hits

    monkeypatch.setattr(Datastore, "query", spy)
    args = train_args(renamed, tmp_path / "run", "--datastore", store, "--neighbours", 2,
                      "--set", "retrieval.joint_dropout=0.5")
    with caplog.at_level("WARNING"):
        code, _, err = run(capsys, *args)
    assert code == 0, err
    assert any("holds 16 training clips under other ids" in r.message for r in caplog.records)
    training = [(kw, h) for kw, h in calls if kw.get("exclude_ids")]
    assert training
    for kw, hits in training:
        assert "exclude_related" in kw and len(kw["exclude_paths"]) == len(hits.ids)
        for (query_id,), found in zip(kw["exclude_ids"], hits.ids):
            assert query_id.removeprefix("re-") not in found


def test_training_exclusions_log_the_overlap_and_a_plain_store_keeps_every_clip(corpus, store, caplog):
    from tta.data.dataset import AudioDataset
    from tta.ldm.retrieval_context import training_exclusions
    from tta.retrieval.datastore import Datastore

    data = AudioDataset(corpus, "train", 16_000, 0.32)
    st = Datastore.load(store)
    with caplog.at_level("INFO", logger="tta.ldm.retrieval_context"):
        ex = training_exclusions(st, data.rows, data.paths, RetrievalConfig(datastore=str(store), neighbours=2),
                                 16_000)
    assert any("holds 16 of the 16 training clips by id, 16 by audio file, 0 by decoded audio only" in r.message
               for r in caplog.records)
    assert not any(r.levelname == "WARNING" for r in caplog.records)
    assert len(ex.paths) == 16 and len(ex.relations) == 16 and not ex.duplicates
    assert set(ex.of([0, 3])) == {"exclude_paths", "exclude_related"}
    off = training_exclusions(st, data.rows, data.paths,
                              RetrievalConfig(datastore=str(store), neighbours=2, exclude_related=False), 16_000)
    assert off.relations is None and set(off.of([1])) == {"exclude_paths"}


def test_the_experiment_checks_its_inputs_before_making_out(corpus, tmp_path, capsys, monkeypatch):
    """A VAE given as the CLAP, or a split with too few prompts, left an empty OUT (or a built datastore).
    eval.embedder_weights with eval.embedder "clap" was ignored (`tta eval` refuses --embedder-weights there)."""
    from tta.data.manifest import read_manifest, write_manifest

    monkeypatch.chdir(tmp_path)
    c = tiny_components()
    rows = read_manifest(corpus)
    few = write_manifest(corpus.parent / "two-valid.jsonl",
                         [r for r in rows if r.split == "train"] + [r for r in rows if r.split == "valid"][:2])
    unfit = 'ldm_overrides=["model.latent_channels=3", "model.class_embed_dim=7"]'   # both named in one line
    (tmp_path / "empty").mkdir()   # an eval.reference without clips failed at the first variant's eval, trained
    noref = f"eval.reference={json.dumps(str(tmp_path / 'empty'))}"
    (tmp_path / "two.txt").write_text("a low hum\nrapid ticking clicks\n")   # found once the store was built
    two = f"eval.prompts={json.dumps(str(tmp_path / 'two.txt'))}"
    for name, clap, manifest, extra, message in (
            ("badclap", c["vae"], corpus, [], ""), ("few", c["clap"], few, [], "at least 3"),
            ("unfit", c["clap"], corpus, [unfit], "latent_channels=3 differs .*; model.class_embed_dim=7 differs"),
            ("noref", c["clap"], corpus, [noref], "eval.reference .*empty: no audio files"),
            ("twoprompts", c["clap"], corpus, [two], "eval.prompts .*two.txt: 2 prompts; the head/mid/tail split"),
            ("bigk", c["clap"], corpus, ['variants=[{"name": "k16", "neighbours": 16}]'],
             "variant k16: k=16 neighbours .* split 'train' of .* holds only 16 clips"),
            ("embedder", c["clap"], corpus, ['eval.embedder="vggsh"'], "eval.embedder='vggsh': unknown embedder"),
            ("weights", c["clap"], corpus, ['eval.embedder_weights="w.pt"'],
             "eval.embedder_weights is for aisfx, vggish and panns; eval.embedder 'mfcc' takes none"),
            ("clapweights", c["clap"], corpus, ['eval.embedder="clap"', 'eval.embedder_weights="w.pt"'],
             r"eval.embedder_weights is for .*; eval.embedder 'clap' takes none \(a CLAP comes with components.clap")):
        sets = [f"components.vae={json.dumps(str(c['vae']))}", f"components.vocoder={json.dumps(str(c['vocoder']))}",
                f"components.clap={json.dumps(str(clap))}", f"manifest={json.dumps(str(manifest))}", *extra]
        code, _, err = run(capsys, "experiment", "retrieval", "--config",
                           ROOT / "configs" / "experiment" / "retrieval-tiny.json", "--out", tmp_path / name,
                           *[a for s in sets for a in ("--set", s)])
        assert code == 1 and __import__("re").search(message, err) and err.count("\n") == 1, err
        assert not (tmp_path / name).exists()


def test_eval_settings_refuse_embedder_weights_for_an_embedder_that_takes_none():
    """The experiment refused eval.embedder_weights for a clap embedder only when it ran; its settings, as a
    Python caller or a config file makes them, took it (and the eval ignored the file). They refuse it."""
    from tta.commands.retrieval_experiment import EvalSettings

    for embedder in ("clap", "laion-clap", "mfcc"):
        with pytest.raises(ValueError, match=rf"^eval.embedder_weights is for aisfx, vggish and panns; eval.embedder "
                                             rf"'{embedder}' takes none \(a CLAP comes with components.clap\)$"):
            EvalSettings(embedder=embedder, embedder_weights="w.pt")
    assert EvalSettings(embedder="panns", embedder_weights="w.pt").embedder_weights == "w.pt"


def test_the_experiments_early_check_of_a_clap_fad_embedder_loads_the_clap_once(corpus, tmp_path, capsys,
                                                                                monkeypatch):
    """With eval.embedder "clap" the up-front check of the FAD embedder built it, loading the experiment's CLAP a
    second time (a LAION CLAP: 600 MB and seconds) only to drop it. Its CLAP is the one loaded to check the inputs;
    the check wraps that one, and still refuses before OUT is made."""
    import tta.clap

    monkeypatch.chdir(tmp_path)
    c = tiny_components()
    real, loads = tta.clap._open_clap, []
    monkeypatch.setattr(tta.clap, "_open_clap", lambda path, **k: loads.append(str(path)) or real(path, **k))
    sets = [f"components.{k}={json.dumps(str(c[k]))}" for k in ("vae", "vocoder", "clap")]
    sets += [f"manifest={json.dumps(str(corpus))}", 'eval.embedder="clap"',
             'variants=[{"name": "k16", "neighbours": 16}]']     # refused after the embedder's check
    code, _, err = run(capsys, "experiment", "retrieval", "--config",
                       ROOT / "configs" / "experiment" / "retrieval-tiny.json", "--out", tmp_path / "out",
                       *[a for s in sets for a in ("--set", s)])
    assert code == 1 and "variant k16: k=16 neighbours" in err and not (tmp_path / "out").exists(), err
    assert loads == [str(c["clap"])]


def test_the_experiment_remakes_reference_clips_made_at_another_length_or_from_other_audio(corpus, tmp_path):
    """A re-run into the same OUT with another generation.seconds scored against the earlier run's clips."""
    import shutil

    import soundfile as sf

    from tta.commands.retrieval_experiment import ExperimentConfig, write_reference
    from tta.data.manifest import read_manifest, resolve_path, write_manifest

    rows = []
    for r in [r for r in read_manifest(corpus) if r.split == "valid"][:3]:   # own copies: one is edited below
        shutil.copy(resolve_path(r, corpus), tmp_path / f"{r.id}.wav")
        rows.append(type(r)(**{**r.__dict__, "path": str(tmp_path / f"{r.id}.wav")}))
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    out, config = tmp_path / "exp", ExperimentConfig("configs/ldm/tiny.json")
    out.mkdir()

    def lengths():
        return {p.stem: sf.info(str(p)).frames for p in (out / "reference").glob("*.wav")}

    write_reference(config, rows, manifest, out, 0.1)
    assert set(lengths().values()) == {1600}
    write_reference(config, rows, manifest, out, 0.2)
    assert set(lengths().values()) == {3200}
    stamp = {p.name: p.stat().st_mtime_ns for p in (out / "reference").glob("*.wav")}
    write_reference(config, rows, manifest, out, 0.2)                  # unchanged: reused
    assert {p.name: p.stat().st_mtime_ns for p in (out / "reference").glob("*.wav")} == stamp
    edited = Path(rows[0].path)
    sf.write(edited, np.zeros(16_000, np.float32) + 0.1 * np.sin(np.arange(16_000)), 16_000)
    write_reference(config, rows, manifest, out, 0.2)
    again = {p.name: p.stat().st_mtime_ns for p in (out / "reference").glob("*.wav")}
    assert again[f"{rows[0].id}.wav"] != stamp[f"{rows[0].id}.wav"]
    assert {k: v for k, v in again.items() if k != f"{rows[0].id}.wav"} == {
        k: v for k, v in stamp.items() if k != f"{rows[0].id}.wav"}


def test_the_experiment_remakes_reference_clips_an_earlier_tta_rounded_down(tmp_path):
    """A tta before save_audio took the nearest step wrote a reference clip's 16-bit samples on the step below;
    its stamp (the same source file and length) reused them, so a re-run into the same OUT scored against other
    bytes than a fresh OUT's (and tta eval saw another reference)."""
    import json

    import soundfile as sf

    from tests.signals import noise
    from tta.audio import load_audio
    from tta.commands.retrieval_experiment import ExperimentConfig, write_reference
    from tta.data.manifest import ManifestRow, write_manifest

    rows = []
    for i in range(2):   # float sources: their 16-bit clips depend on the rounding
        sf.write(tmp_path / f"c{i}.wav", noise(0.5, 22_050, 0.1, seed=i), 22_050, subtype="FLOAT")
        rows.append(ManifestRow(id=f"c{i}", path=str(tmp_path / f"c{i}.wav"), captions=("x",), seconds=0.5,
                                sample_rate=22_050, split="valid"))
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    config = ExperimentConfig("configs/ldm/tiny.json")
    fresh, out = tmp_path / "fresh", tmp_path / "exp"
    for folder in (fresh, out):
        folder.mkdir()
        write_reference(config, rows, manifest, folder, 0.5)
    stamp = json.loads((out / "reference.json").read_text())
    for r in rows:   # as the earlier tta left them: libsndfile's float writer, its stamp without the rounding
        wav, sr = load_audio(r.path, 16_000, max_seconds=0.5, normalize=True)
        sf.write(out / "reference" / f"{r.id}.wav", wav, sr, subtype="PCM_16")
        stamp["clips"][r.id] = stamp["clips"][r.id][:4]
    (out / "reference.json").write_text(json.dumps(stamp))
    assert (out / "reference" / "c0.wav").read_bytes() != (fresh / "reference" / "c0.wav").read_bytes()
    write_reference(config, rows, manifest, out, 0.5)
    for r in rows:
        assert (out / "reference" / f"{r.id}.wav").read_bytes() == (fresh / "reference" / f"{r.id}.wav").read_bytes()


def test_the_experiment_refuses_a_store_holding_evaluation_clips(corpus, store, tmp_path, capsys, monkeypatch):
    """By id (a store over every split) or only through a related clip (a train crop of a valid clip's file)."""
    from tta.clap import load_clap
    from tta.commands.retrieval_experiment import check_store
    from tta.data.manifest import read_manifest, write_manifest
    from tta.retrieval import Datastore, DatastoreConfig, DatastoreError, build_datastore

    torch.set_num_threads(1)
    clap = load_clap(tiny_components()["clap"])
    every = build_datastore(corpus, clap, tmp_path / "every", DatastoreConfig(batch_size=24), progress=False)
    monkeypatch.chdir(tmp_path)
    c = tiny_components()
    sets = [f"components.{k}={json.dumps(str(c[k]))}" for k in ("vae", "vocoder", "clap")]
    sets += [f"manifest={json.dumps(str(corpus))}", f"datastore={json.dumps(str(every))}"]
    code, _, err = run(capsys, "experiment", "retrieval", "--config",
                       ROOT / "configs" / "experiment" / "retrieval-tiny.json", "--out", tmp_path / "exp",
                       *[a for s in sets for a in ("--set", s)])
    assert code == 1 and err.count("\n") == 1 and "holds 8 of the 8 evaluation clips (by id 8" in err, err
    assert not (tmp_path / "exp" / "runs").exists()

    rows = read_manifest(corpus)
    valid = [r for r in rows if r.split == "valid"]
    assert check_store(Datastore.load(store), valid, corpus, clap.sample_rate)["passed"]
    crops = {valid[0].id: "debian:pkg:x.ogg@0.00s", rows[0].id: "debian:pkg:x.ogg@10.24s"}
    manifest = write_manifest(corpus.parent / "crops.jsonl",
                              [type(r)(**{**r.__dict__, "source": crops.get(r.id, r.source)}) for r in rows])
    train_only = build_datastore(manifest, clap, tmp_path / "crops", DatastoreConfig(split="train", batch_size=16),
                                 progress=False)
    with pytest.raises(DatastoreError, match=r"holds 1 of the 8 evaluation clips \(by id 0, by audio file 0, "
                                             r"by decoded audio 0, related 1; e.g. valid-"):
        check_store(Datastore.load(train_only), [r for r in read_manifest(manifest) if r.split == "valid"], manifest,
                    clap.sample_rate)


def test_the_store_check_lists_the_reference_folder_as_eval_does(corpus, store, tmp_path):
    """A folder named x.wav and a hidden temporary file in `eval.reference` are no reference clips: the check
    counted 10 files where `tta eval` scores the 8 clips."""
    from eval.run import list_audio
    from tta.commands.retrieval_experiment import check_store
    from tta.data.manifest import read_manifest, resolve_path
    from tta.retrieval import Datastore

    valid = [r for r in read_manifest(corpus) if r.split == "valid"]
    reference = tmp_path / "reference"
    reference.mkdir()
    for r in valid:
        shutil.copy(resolve_path(r, corpus), reference / f"{r.id}.wav")
    (reference / "x.wav").mkdir()
    (reference / ".partial.wav").write_bytes(b"RIFF")
    record = check_store(Datastore.load(store), valid, corpus, 16_000, reference=reference)
    assert record["passed"] and record["reference_files"] == len(list_audio(reference, "reference")) == 8


def test_the_store_check_names_a_reference_file_by_its_path_under_the_reference(corpus, store, tmp_path):
    """A leaked file in a subfolder of `eval.reference` was named <reference>/<name>, without its subfolder (and two
    of one name in two subfolders counted as one)."""
    from tta.commands.retrieval_experiment import check_store
    from tta.data.manifest import read_manifest, resolve_path
    from tta.retrieval import Datastore, DatastoreError

    rows = read_manifest(corpus)
    valid = [r for r in rows if r.split == "valid"]
    reference = tmp_path / "reference"
    for sub in ("a/deeper", "b"):
        (reference / sub).mkdir(parents=True)
        shutil.copy(resolve_path(next(r for r in rows if r.split == "train"), corpus), reference / sub / "leak.wav")
    shutil.copy(resolve_path(valid[0], corpus), reference / "clean.wav")
    with pytest.raises(DatastoreError, match=rf"holds 2 of the 11 evaluation clips \(by id 0, by audio file 0, by "
                                             rf"decoded audio 2, related 0; e.g. {re.escape(str(reference))}/a/deeper/leak.wav;"):
        check_store(Datastore.load(store), valid, corpus, 16_000, reference=reference)


def _store_of_copies(corpus, tmp_path, clap, split=None):
    """A datastore built from a copy of the corpus in another folder, every clip under the id copy-<id>."""
    from tta.data.manifest import read_manifest, resolve_path, write_manifest
    from tta.retrieval import DatastoreConfig, build_datastore

    copies = tmp_path / "copies"
    copies.mkdir()
    moved = []
    for r in read_manifest(corpus):
        if split is None or r.split == split:
            target = copies / f"copy-{r.id}{Path(r.path).suffix}"
            shutil.copyfile(resolve_path(r, corpus), target)
            moved.append(type(r)(**{**r.__dict__, "id": f"copy-{r.id}", "path": str(target), "split": "train"}))
    return build_datastore(write_manifest(tmp_path / "copied.jsonl", moved), clap, tmp_path / "copied",
                           DatastoreConfig(batch_size=24), progress=False)


def test_training_excludes_a_clips_copy_held_under_another_id_and_file(corpus, tmp_path, caplog):
    """A store built from a copy of the training corpus (other folder, other ids): id and file exclusion
    cannot see a clip's own copy, its decoded audio does; training warns and no clip gets its copy back."""
    from tta.clap import load_clap
    from tta.data.dataset import AudioDataset
    from tta.ldm.retrieval_context import training_exclusions
    from tta.retrieval.datastore import Datastore

    torch.set_num_threads(1)
    clap = load_clap(tiny_components()["clap"])
    st = Datastore.load(_store_of_copies(corpus, tmp_path, clap, split="train"))
    data = AudioDataset(corpus, "train", 16_000, 0.32)
    with caplog.at_level("INFO", logger="tta.ldm.retrieval_context"):
        ex = training_exclusions(st, data.rows, data.paths, RetrievalConfig(datastore=str(st.folder), neighbours=2),
                                 clap.sample_rate)
    assert any("holds 0 of the 16 training clips by id, 0 by audio file, 16 by decoded audio only" in r.message for r in caplog.records)
    assert any(r.levelname == "WARNING" and "16 as copies of the audio" in r.message for r in caplog.records)
    rows = list(range(len(data.rows)))
    hits = st.query(st.embeddings(np.asarray([st.row_of[f"copy-{r.id}"] for r in data.rows]), "audio"), 2,
                    exclude_ids=[[r.id] for r in data.rows], **ex.of(rows))
    for r, found in zip(data.rows, hits.ids):
        assert f"copy-{r.id}" not in found
    # without the hashes each clip's nearest neighbour by its own audio is its copy
    plain = st.query(st.embeddings(np.asarray([st.row_of[f"copy-{r.id}"] for r in data.rows]), "audio"), 2,
                     exclude_ids=[[r.id] for r in data.rows], exclude_paths=ex.of(rows)["exclude_paths"])
    assert all(found[0] == f"copy-{r.id}" for r, found in zip(data.rows, plain.ids))


def test_training_refuses_a_store_leaving_a_clip_fewer_than_k_neighbours_before_it_starts(corpus, tmp_path):
    """Four training clips are crops of one file: each leaves out itself and the other three, so a store of 16
    cannot give them 13 neighbours. Refused up front, naming a clip, instead of on the batch that draws it."""
    from tta.clap import load_clap
    from tta.data.dataset import AudioDataset
    from tta.data.manifest import read_manifest, write_manifest
    from tta.ldm.retrieval_context import training_exclusions
    from tta.retrieval import Datastore, DatastoreConfig, DatastoreError, build_datastore

    torch.set_num_threads(1)
    clap = load_clap(tiny_components()["clap"])
    rows = read_manifest(corpus)
    crop = {r.id: f"debian:pkg:x.ogg@{10.24 * j:.2f}s" for j, r in enumerate([r for r in rows if r.split == "train"][:4])}
    manifest = write_manifest(corpus.parent / "crops-of-one-file.jsonl",
                              [type(r)(**{**r.__dict__, "source": crop.get(r.id, r.source)}) for r in rows])
    st = Datastore.load(build_datastore(manifest, clap, tmp_path / "store", DatastoreConfig(split="train", batch_size=16),
                                        progress=False))
    data = AudioDataset(manifest, "train", 16_000, 0.32)
    with pytest.raises(DatastoreError, match=r"training clip .* leaves only 12 datastore entries .* neighbours=13"):
        training_exclusions(st, data.rows, data.paths, RetrievalConfig(datastore=str(st.folder), neighbours=13, max_neighbours=13),
                            clap.sample_rate)
    training_exclusions(st, data.rows, data.paths, RetrievalConfig(datastore=str(st.folder), neighbours=12, max_neighbours=12),
                        clap.sample_rate)


def test_the_experiment_store_check_finds_evaluation_clips_copied_under_other_ids_and_files(corpus, store,
                                                                                           tmp_path):
    """A store built from a re-imported copy of the corpus (other folder, other ids) holds the evaluation
    clips under names the id and file checks cannot see; their decoded audio gives them away. Files of an
    `eval.reference` folder are checked the same way."""
    from tta.clap import load_clap
    from tta.commands.retrieval_experiment import check_store
    from tta.data.manifest import read_manifest, resolve_path
    from tta.retrieval import Datastore, DatastoreError

    torch.set_num_threads(1)
    clap = load_clap(tiny_components()["clap"])
    rows = read_manifest(corpus)
    copied = _store_of_copies(corpus, tmp_path, clap)
    valid = [r for r in rows if r.split == "valid"]
    with pytest.raises(DatastoreError, match=r"holds 8 of the 8 evaluation clips \(by id 0, by audio file 0, "
                                             r"by decoded audio 8, related 0"):
        check_store(Datastore.load(copied), valid, corpus, clap.sample_rate)
    # the training-split store holds no valid clip, but a reference folder of training clips is refused
    reference = tmp_path / "reference"
    reference.mkdir()
    train = [r for r in rows if r.split == "train"][:2]
    for r in train:
        shutil.copyfile(resolve_path(r, corpus), reference / f"ref-{r.id}{Path(r.path).suffix}")
    with pytest.raises(DatastoreError, match=r"holds 2 of the 10 evaluation clips \(by id 0, by audio file 0, "
                                             r"by decoded audio 2, related 0"):
        check_store(Datastore.load(store), valid, corpus, clap.sample_rate, reference)
    record = check_store(Datastore.load(store), valid, corpus, clap.sample_rate)
    assert record["passed"] and record["by_audio"] == 0


def test_evaluation_prompts_are_a_seeded_sample_and_the_reference_their_clips(corpus):
    from tta.commands.retrieval_experiment import EvalSettings, ExperimentConfig, eval_rows
    from tta.data.manifest import read_manifest

    valid = [r.id for r in read_manifest(corpus) if r.split == "valid"]

    def pick(**eval_settings):
        config = ExperimentConfig(ldm_config="x.json", eval=EvalSettings(max_prompts=4, **eval_settings))
        prompts, reference = eval_rows(config, corpus)
        return [r.id for r in prompts], [r.id for r in reference]

    prompts, reference = pick()
    assert len(prompts) == 4 and prompts != valid[:4] and reference == prompts
    assert prompts == [i for i in valid if i in prompts]            # kept in manifest order
    assert pick() == (prompts, reference) and pick(seed=1)[0] != prompts
    more_prompts, more = pick(reference_from="split", max_reference=6)
    assert more_prompts == prompts and len(more) == 6 and set(prompts) <= set(more)
    assert pick(reference="ref/") == (prompts, [])
    with pytest.raises(ValueError, match="reference_from"):
        EvalSettings(reference_from="all")


def test_tied_frequencies_share_a_bucket_whatever_the_prompt_order():
    from tta.commands.retrieval_experiment import assign_buckets

    freqs = [5.0, 5.0, 5.0, 1.0, 1.0, 0.0]
    assert assign_buckets(freqs) == ["head", "head", "head", "mid", "mid", "tail"]
    order = [3, 5, 0, 4, 1, 2]
    assert assign_buckets([freqs[i] for i in order]) == [assign_buckets(freqs)[i] for i in order]
    assert assign_buckets([2.0] * 6) == ["mid"] * 6


def test_more_neighbours_than_trained_warns_and_joint_dropout_nulls_the_context(store, caplog):
    from tta.ldm import retrieval_context
    from tta.ldm.retrieval_context import prompt_context, training_context
    from tta.retrieval.datastore import Datastore

    retrieval_context._warned_k.clear()   # warned once per process: another test may have warned already
    st = Datastore.load(store)
    torch.manual_seed(0)
    ctx = RetrievalContext(RetrievalContextConfig(embed_dim=st.dim, context_dim=32, max_neighbours=6,
                                                  neighbours=2)).eval()
    text = torch.tensor(np.asarray(st.emb["text"][:2]))
    with caplog.at_level("WARNING", logger="tta.ldm.retrieval_context"):
        prompt_context(ctx, st, text, 2)
        assert not caplog.records
        prompt_context(ctx, st, text, 4)
        prompt_context(ctx, st, text, 4)
    warned = [r.message for r in caplog.records]
    assert len(warned) == 1 and "neighbours=4" in warned[0] and "k=2" in warned[0] and "gradient" in warned[0]

    config = RetrievalConfig(datastore=str(store), neighbours=2, context_dropout=0.0, joint_dropout=0.5)
    with torch.no_grad():
        c = training_context(ctx, st, config, st.ids[:2], text, "cpu", drop=torch.tensor([True, False]))
    assert torch.equal(c[0], ctx.null_token.detach().expand(c.shape[1], -1))
    assert not torch.allclose(c[1, 1:], ctx.null_token.detach().expand(c.shape[1] - 1, -1))
    with pytest.raises(ValueError, match="joint_dropout"):
        RetrievalConfig(joint_dropout=1.0)


def _experiment_sets(corpus, *extra, **components):
    c = {k: str(v) for k, v in tiny_components().items()}
    c.update({k: str(v) for k, v in components.items()})
    sets = [f"components.{k}={json.dumps(c[k])}" for k in ("vae", "vocoder", "clap")]
    return [a for s in [*sets, f"manifest={json.dumps(str(corpus))}", *extra] for a in ("--set", s)]


def test_the_summary_names_its_own_files_relative_to_its_folder(corpus, store, tmp_path, capsys, monkeypatch):
    """summary.md's link to report.html, and summary.json's report, prompts, plot and pipelines, were relative to
    the folder the command ran in (`--out runs/exp`: "runs/exp/report.html", so the link opened from runs/exp
    pointed at runs/exp/runs/exp/report.html), while its datastore and reference were absolute. The experiment
    folder's own files are named relative to it now, files outside it by their absolute paths."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(store, tmp_path / "store")
    code, stdout, err = run(capsys, "experiment", "retrieval", "--config",
                            ROOT / "configs" / "experiment" / "retrieval-tiny.json", "--out", "runs/exp",
                            *_experiment_sets(corpus, 'datastore="store"', 'variants=[{"name": "none"}]',
                                              "eval.max_prompts=3", "eval.seed=1"))
    assert code == 0, err
    assert stdout.strip() == "runs/exp/report.html"   # printed for the terminal: from the current folder
    out = tmp_path / "runs" / "exp"
    summary = json.loads((out / "summary.json").read_text())
    assert {k: summary[k] for k in ("report", "plot", "prompts", "reference")} == {
        "report": "report.html", "plot": "summary.png", "prompts": "prompts.jsonl", "reference": "reference"}
    assert summary["variants"]["none"]["pipeline"] == "runs/none/pipeline"
    assert summary["datastore"] == str(tmp_path / "store")   # outside the folder: absolute
    assert (out / summary["variants"]["none"]["pipeline"] / "pipeline.json").is_file()
    link = re.search(r"^Full report: \[report\.html\]\((.+)\)$", (out / "summary.md").read_text(), re.M)
    assert link and (out / link.group(1)).is_file()
    # a bucket of one prompt: one mfcc frame, no FAD; summary.md showed "–" without the reason report.html gives
    from eval.report import NO_FAD_NOTE

    head = summary["variants"]["none"]["buckets"]["head"]
    assert head["files"] == 1 and head["fad_frames"] == 1 and head["fad"] is None, summary["bucket_counts"]
    md = (out / "summary.md").read_text()
    assert "| none | 0 | – | – | " in md and " | –† | " in md and md.count(NO_FAD_NOTE[1:]) == 1
    assert NO_FAD_NOTE in (out / "report.html").read_text()


def test_the_experiment_checks_the_store_against_every_variant_before_training_any(corpus, store, tmp_path, capsys,
                                                                                  monkeypatch):
    """A store without latents, built with another CLAP or too small for a variant's k was refused only when that
    variant trained, after every variant before it had trained, generated and been evaluated."""
    from tests.test_ldm_fixtures import tiny_model_config
    from tta.checkpoint import save_component
    from tta.clap.model import ClapConfig, TTAClap

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(5)
    other_clap = save_component(tmp_path / "other-clap", TTAClap(tiny_model_config(ClapConfig, "clap")))
    variants = '[{"name": "none"}, {"name": "k1", "neighbours": 1}, %s]'
    for name, last, clap, message in (
            ("latent", '{"name": "k1-latent", "neighbours": 1, "features": "text+latent"}', {},
             "variant k1-latent: .*holds no VAE latents"),
            ("big", '{"name": "k16", "neighbours": 16}', {}, "variant k16: .*k=16 neighbours .*holds only 16"),
            ("clap", '{"name": "k2", "neighbours": 2}', {"clap": other_clap}, "variant k1: .*built with CLAP")):
        out = tmp_path / name
        code, _, err = run(capsys, "experiment", "retrieval", "--config",
                           ROOT / "configs" / "experiment" / "retrieval-tiny.json", "--out", out,
                           *_experiment_sets(corpus, f"datastore={json.dumps(str(store))}",
                                             f"variants={variants % last}", **clap))
        assert code == 1 and __import__("re").search(message, err) and err.count("\n") == 1, err
        assert not (out / "runs").exists()


def test_the_experiments_own_store_is_rebuilt_when_its_latents_are_of_another_vae(latent_store, corpus):
    """A re-run with another VAE kept OUT/datastore and stopped at the first latent variant (after training the
    others) with 'its latents are of VAE ...'."""
    from tta.clap import load_clap
    from tta.commands.retrieval_experiment import stale_store
    from tta.retrieval import Datastore

    st = Datastore.load(latent_store)
    clap = load_clap(tiny_components()["clap"])
    ok = (st, corpus, "train", clap.identity)
    assert stale_store(*ok) == stale_store(*ok, st.latent_info["vae_identity"]) == ""
    assert stale_store(*ok, "tta-vae:other") == (f"with latents of VAE {st.latent_info['vae_identity']}, not "
                                                 "tta-vae:other")



def test_the_experiment_reuses_a_variant_only_with_the_same_component_and_store_content(corpus, store, tmp_path,
                                                                                        capsys, monkeypatch):
    """A store rebuilt under the same path with other settings, or a VAE replaced in the folder the config names,
    left the variants trained on the earlier ones in place (only paths and the store's CLAP and count were
    compared)."""
    from tests.test_ldm_fixtures import tiny_model_config
    from tta.checkpoint import save_component
    from tta.clap import load_clap
    from tta.retrieval import DatastoreConfig, build_datastore
    from vae.model import MelVAE, VAEConfig

    monkeypatch.chdir(tmp_path)
    given, vae = tmp_path / "store", tmp_path / "vae"
    shutil.copytree(store, given)
    shutil.copytree(tiny_components()["vae"], vae)
    out = tmp_path / "exp"
    args = ["experiment", "retrieval", "--config", ROOT / "configs" / "experiment" / "retrieval-tiny.json",
            "--out", out, *_experiment_sets(corpus, f"datastore={json.dumps(str(given))}",
                                            'variants=[{"name": "none"}, {"name": "k1", "neighbours": 1}]', vae=vae)]

    def stamps():
        return {v: (out / "runs" / v / "pipeline" / "pipeline.json").stat().st_mtime_ns for v in ("none", "k1")}

    assert run(capsys, *args)[0] == 0
    first = stamps()
    assert run(capsys, *args)[0] == 0 and stamps() == first          # nothing changed: both reused
    shutil.rmtree(given)   # the same clips and CLAP, each embedded from its first 0.2 s
    build_datastore(corpus, load_clap(tiny_components()["clap"]), given,
                    DatastoreConfig(split="train", batch_size=16, max_seconds=0.2), progress=False)
    assert run(capsys, *args)[0] == 0
    second = stamps()
    assert second["none"] == first["none"] and second["k1"] != first["k1"]
    shutil.rmtree(vae)     # another VAE of the same config in the same folder
    torch.manual_seed(7)
    save_component(vae, MelVAE(tiny_model_config(VAEConfig, "vae")))
    assert run(capsys, *args)[0] == 0
    third = stamps()
    assert third["none"] != second["none"] and third["k1"] != second["k1"]


def test_a_variant_recorded_before_content_hashes_is_reused_said_and_its_record_completed(corpus, store, tmp_path,
                                                                                         capsys, caplog,
                                                                                         monkeypatch):
    """experiment-variant.json of an older tta holds no inputs_sha256 / datastore.files_sha256; a key the record
    lacks is ignored, so such a variant was reused without a word after its store was rebuilt under the same path
    (e.g. with clips normalised), and, its record never completed, after every later rebuild too."""
    from tta.clap import load_clap
    from tta.commands.retrieval_experiment import VARIANT_RECORD, store_files_sha256
    from tta.retrieval import DatastoreConfig, build_datastore

    monkeypatch.chdir(tmp_path)
    given = tmp_path / "store"
    shutil.copytree(store, given)
    out = tmp_path / "exp"
    args = ["experiment", "retrieval", "--config", ROOT / "configs" / "experiment" / "retrieval-tiny.json",
            "--out", out, *_experiment_sets(corpus, f"datastore={json.dumps(str(given))}",
                                            'variants=[{"name": "k1", "neighbours": 1}]')]
    pipeline, record_path = out / "runs" / "k1" / "pipeline" / "pipeline.json", out / "runs" / "k1" / VARIANT_RECORD
    assert run(capsys, *args)[0] == 0
    first = pipeline.stat().st_mtime_ns
    record = json.loads(record_path.read_text())
    old = {k: v for k, v in record.items() if k != "inputs_sha256"}   # as the older tta wrote it
    old["datastore"] = {k: v for k, v in record["datastore"].items() if k != "files_sha256"}
    record_path.write_text(json.dumps(old))

    def rebuild(seconds: float) -> None:
        shutil.rmtree(given)
        build_datastore(corpus, load_clap(tiny_components()["clap"]), given,
                        DatastoreConfig(split="train", batch_size=16, max_seconds=seconds), progress=False)

    rebuild(0.2)
    with caplog.at_level("WARNING", logger="tta.commands.retrieval_experiment"):
        assert run(capsys, *args)[0] == 0
    assert pipeline.stat().st_mtime_ns == first
    assert any(r.levelname == "WARNING" and "variant k1: reusing" in r.message
               and "trained before the experiment recorded the content" in r.message for r in caplog.records)
    assert json.loads(record_path.read_text())["datastore"]["files_sha256"] == store_files_sha256(given, False)
    assert "inputs_sha256" in json.loads(record_path.read_text())
    rebuild(0.3)   # a later rebuild is seen
    caplog.clear()
    with caplog.at_level("WARNING", logger="tta.commands.retrieval_experiment"):
        assert run(capsys, *args)[0] == 0
    assert pipeline.stat().st_mtime_ns != first
    assert any("first difference at datastore.files_sha256" in r.message for r in caplog.records)


def test_the_experiment_runs_on_ids_with_a_slash_or_colon(corpus, tmp_path, capsys):
    """A manifest of corpora imported with --id-prefix ('clotho/...', an older tta's 'audioset:...') was
    refused: "eval prompt id 'clotho/...' cannot be a file name". Its clips' files are named by
    tta.data.prompts.id_file_name, and `tta eval` pairs them back to the prompts by the same rule."""
    from dataclasses import replace

    from tta.data.manifest import read_manifest, write_manifest

    rows = [replace(r, id=f"{'clotho/' if i % 2 else 'audioset:'}{r.id}") for i, r in enumerate(read_manifest(corpus))]
    manifest = write_manifest(corpus.parent / "prefixed.jsonl", rows)
    out = tmp_path / "exp"
    code, _, err = run(capsys, "experiment", "retrieval", "--config",
                       ROOT / "configs" / "experiment" / "retrieval-tiny.json", "--out", out,
                       *_experiment_sets(manifest, 'variants=[{"name": "none"}, {"name": "k1", "neighbours": 1}]'))
    assert code == 0, err
    valid = sorted(r.id for r in rows if r.split == "valid")
    assert sorted(json.loads(line)["id"] for line in (out / "prompts.jsonl").read_text().splitlines()) == valid
    files = sorted(i.replace("/", "%2F").replace(":", "%3A") + ".wav" for i in valid)
    assert sorted(p.name for p in (out / "reference").glob("*.wav")) == files
    gen = json.loads((out / "generated" / "k1" / "generation.json").read_text())
    assert sorted((o["id"], o["file"]) for o in gen["outputs"]) == list(zip(valid, files))
    assert all(n["id"] in {r.id for r in rows if r.split == "train"} for o in gen["outputs"] for n in o["neighbours"])
    assert sorted(p.name for p in (out / "generated" / "k1").glob("*.wav")) == files
    import csv

    with open(out / "eval" / "k1" / "items.csv") as f:
        assert sorted(r["id"] for r in csv.DictReader(f)) == valid
    summary = json.loads((out / "summary.json").read_text())
    assert sum(summary["variants"]["k1"]["buckets"][b]["files"] or 0 for b in ("head", "mid", "tail")) == 8


def test_an_id_too_long_for_a_file_name_is_refused_before_the_store_is_built(corpus, tmp_path, capsys):
    """An evaluation clip whose id, escaped, names a file of more than 255 bytes failed with "File name too long"
    (naming only the escaped file) after the store was built; it is refused first, naming the manifest and id."""
    from dataclasses import replace

    from tta.data.manifest import read_manifest, write_manifest

    rows = read_manifest(corpus)
    v = next(i for i, r in enumerate(rows) if r.split == "valid")
    rows[v] = replace(rows[v], id="clotho/" + ":" * 90 + rows[v].id)
    manifest = write_manifest(corpus.parent / "long-id.jsonl", rows)
    out = tmp_path / "exp"
    code, _, err = run(capsys, "experiment", "retrieval", "--config",
                       ROOT / "configs" / "experiment" / "retrieval-tiny.json", "--out", out,
                       *_experiment_sets(manifest, 'variants=[{"name": "none"}]'))
    assert code == 1 and err.startswith(f"tta: error: {manifest}: id 'clotho/::::") and err.count("\n") == 1
    assert "names a file of" in err and "give it a shorter id" in err
    assert not out.exists()


def test_the_experiment_writes_each_clip_as_tta_generate_does(corpus, tmp_path, capsys):
    """The experiment wrote a variant's kept clip as the pipeline returned it: one over full scale was clipped by
    the WAV writer (the Griffin-Lim tiny model, 4-5x over: ~1700 of 5120 samples at full scale) and its candidates
    were ranked before any gain, so its file and CLAP scores were not those `tta generate` writes for the same
    prompt, seed and settings. It writes through tta generate's fitting and ranking (rank_written) now."""
    from tests.test_ldm_fixtures import tiny_pipeline

    loud = tmp_path / "gl"
    assert main(["-q", "export", "pipeline", str(tiny_pipeline()), "--out", str(loud), "--vocoder", "griffin-lim:4",
                 "--default", "candidates=3"]) == 0
    out = tmp_path / "exp"   # one prompt a batch, as tta generate -o draws it (batched sums round otherwise)
    code, _, err = run(capsys, "experiment", "retrieval", "--config",
                       ROOT / "configs" / "experiment" / "retrieval-tiny.json", "--out", out,
                       *_experiment_sets(corpus, "generation.batch_size=1",
                                         f'variants=[{{"name": "gl", "pipeline": {json.dumps(str(loud))}}}]'))
    assert code == 0, err
    prompts = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
    outputs = {o["id"]: o for o in json.loads((out / "generated" / "gl" / "generation.json").read_text())["outputs"]}
    row = 1   # the experiment's row r takes seed generation.seed (0) + r, as tta generate's prompt r does
    code, _, err = run(capsys, "generate", prompts[row]["prompt"], "--model", loud, "--seconds", 0.32, "--steps", 2,
                       "--guidance", 2.5, "--sampler", "ddim", "--seed", row, "-o", tmp_path / "one.wav")
    assert code == 0, err
    mine = json.loads((tmp_path / "one.generation.json").read_text())["outputs"][0]
    theirs = outputs[prompts[row]["id"]]
    assert mine["gain"] < 0.5   # every candidate is turned down to fit
    assert (out / "generated" / "gl" / theirs["file"]).read_bytes() == (tmp_path / "one.wav").read_bytes()
    keys = ("gain", "clap_score", "candidate_clap_scores", "kept_candidate")
    assert {k: theirs[k] for k in keys} == {k: mine[k] for k in keys}
