"""Retrieval datastore: build from a manifest with a tiny real CLAP, exact/approximate search, exclusion,
mmap reload, bad input, and `tta index build|query|info`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from tests.clap_toy import SR, make_corpus
from tta.audio import normalize_wav
from tta.checkpoint import save_component
from tta.clap import load_clap
from tta.clap.model import TTAClap
from tta.clap.train import RunConfig
from tta.config import load_config
from tta.data.manifest import read_manifest, write_manifest
from tta.retrieval import Datastore, DatastoreConfig, DatastoreError, build_datastore
from tta.retrieval.datastore import fill_index, make_index

faiss = pytest.importorskip("faiss")


@pytest.fixture(autouse=True)
def _one_thread():
    old, old_faiss = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(old)
    faiss.omp_set_num_threads(old_faiss)


def _clap_folder(folder, seed):
    """A tiny CLAP component from configs/clap/tiny.json with seeded random weights (no training needed:
    retrieval only needs a fixed, deterministic embedder)."""
    torch.manual_seed(seed)
    save_component(folder, TTAClap(load_config(RunConfig, "configs/clap/tiny.json").model))
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Toy corpus (train split only) plus one exact duplicate of the first clip under another id."""
    folder = tmp_path_factory.mktemp("retr_corpus")
    manifest = make_corpus(folder, per_kind_train=2, per_kind_valid=0)
    rows = read_manifest(manifest)
    dup = folder / "audio" / "dup.wav"
    shutil.copy(folder / rows[0].path, dup)
    rows.append(type(rows[0])(**{**rows[0].__dict__, "id": "dup-of-first", "path": "audio/dup.wav"}))
    write_manifest(manifest, rows)
    return manifest


@pytest.fixture(scope="module")
def clap(tmp_path_factory):
    torch.set_num_threads(1)
    return load_clap(_clap_folder(tmp_path_factory.mktemp("clap") / "tiny", seed=0))


@pytest.fixture(scope="module")
def store_dir(corpus, clap, tmp_path_factory):
    torch.set_num_threads(1)
    return build_datastore(corpus, clap, tmp_path_factory.mktemp("store") / "flat", DatastoreConfig(batch_size=5),
                           progress=False)


def _wav(manifest, row_id):
    from tta.audio import load_audio
    from tta.data.manifest import resolve_path

    row = next(r for r in read_manifest(manifest) if r.id == row_id)
    return load_audio(resolve_path(row, manifest), SR)[0]


def test_build_writes_the_folder(store_dir, corpus, clap):
    info = json.loads((store_dir / "datastore.json").read_text())
    rows = read_manifest(corpus)
    assert info["clap_identity"] == clap.identity and info["count"] == len(rows) == 17
    assert info["dim"] == clap.embed_dim and info["index"] == "flat" and info["config"]["batch_size"] == 5
    meta = [json.loads(x) for x in (store_dir / "meta.jsonl").read_text().splitlines()]
    assert [m["id"] for m in meta] == [r.id for r in rows]
    assert meta[0]["audio_sha256"] == meta[-1]["audio_sha256"] != meta[1]["audio_sha256"]
    emb = np.load(store_dir / "audio_emb.npy")
    assert emb.dtype == np.float32 and emb.shape == (17, clap.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # streaming in batches of 5 == embedding everything at once, each clip normalised as the training loader does
    assert info["config"]["normalize"] is True and Datastore.load(store_dir).normalize
    np.testing.assert_allclose(emb[6:9], clap.embed_audio([normalize_wav(_wav(corpus, r.id)) for r in rows[6:9]],
                                                          SR).numpy(), atol=1e-5)
    assert not list(store_dir.parent.glob(".*tmp"))


def test_a_quiet_copy_is_stored_and_found_at_the_level_of_its_loud_original(corpus, clap, tmp_path):
    """The CLAP trains on normalised crops, so a store embeds clips normalised (DC removed, peak 0.5): a copy
    of a clip at -26 dB gets its original's embedding (its own audio hash), and an audio query is normalised
    alike. `--no-normalize` (and a store built before the setting existed) embeds and queries raw levels."""
    import soundfile as sf

    from tta.cli import main

    rows = read_manifest(corpus)[:6]
    loud = _wav(corpus, rows[1].id)
    sf.write(tmp_path / "quiet.wav", 0.05 * loud, SR, subtype="FLOAT")
    rows = [type(r)(**{**r.__dict__, "path": str(corpus.parent / r.path)}) for r in rows]
    rows.append(type(rows[0])(**{**rows[1].__dict__, "id": "quiet", "path": str(tmp_path / "quiet.wav")}))
    write_manifest(tmp_path / "m.jsonl", rows)
    stores = {}
    for name, extra in (("norm", []), ("raw", ["--no-normalize"])):
        stores[name] = tmp_path / name
        assert main(["-q", "index", "build", "--manifest", str(tmp_path / "m.jsonl"), "--clap",
                     str(_clap_folder(tmp_path / "clap", seed=0)), "--out", str(stores[name]), *extra]) == 0
    norm, raw = Datastore.load(stores["norm"]), Datastore.load(stores["raw"])
    assert norm.normalize and not raw.normalize
    assert norm.meta[1]["audio_sha256"] != norm.meta[6]["audio_sha256"] == raw.meta[6]["audio_sha256"]
    np.testing.assert_allclose(norm.emb["audio"][6], norm.emb["audio"][1], atol=1e-5)
    assert float(np.abs(raw.emb["audio"][6] - raw.emb["audio"][1]).max()) > 1e-3   # this CLAP hears the level
    np.testing.assert_allclose(raw.emb["audio"][1], clap.embed_audio(loud, SR).numpy()[0], atol=1e-5)
    # audio queries come to the store's level: the quiet file finds its loud original at cosine 1
    hits = norm.query_audio(clap, [0.05 * loud], SR, k=2, exclude_ids=[["quiet"]])
    assert hits.ids[0][0] == rows[1].id and hits.scores[0, 0] > 1 - 1e-4
    assert raw.query_audio(clap, torch.from_numpy(0.05 * loud), SR, k=1).ids[0] == ["quiet"]
    # a store written before the setting existed has no "normalize": it is read as raw, and still checks out
    info = json.loads((stores["raw"] / "datastore.json").read_text())
    assert info["format_version"] == 2   # an older tta (it reads 1) refuses it instead of querying it with raw audio
    del info["config"]["normalize"]
    (stores["raw"] / "datastore.json").write_text(json.dumps({**info, "format_version": 1}))
    old = Datastore.load(stores["raw"])
    assert not old.normalize and old._audio_agrees(clap)
    assert old.summary()["config"]["normalize"] is False   # tta index info says it, though the file does not
    # tta experiment retrieval rebuilds its own store when an older tta built it raw
    from tta.commands.retrieval_experiment import stale_store

    assert "own level" in stale_store(old, tmp_path / "m.jsonl", None, clap.identity)
    assert stale_store(norm, tmp_path / "m.jsonl", None, clap.identity) == ""
    for version in (3, True, "2"):
        (stores["raw"] / "datastore.json").write_text(json.dumps({**info, "format_version": version}))
        with pytest.raises(DatastoreError, match=rf"format_version {version!r} is not one this tta reads \(1, 2\)"):
            Datastore.load(stores["raw"])
    assert not norm._audio_agrees(load_clap(_clap_folder(tmp_path / "other", seed=3)))
    assert norm._audio_agrees(clap)


def test_own_audio_is_its_own_nearest_neighbour(store_dir, corpus, clap):
    store = Datastore.load(store_dir)
    ids = [store.ids[i] for i in (1, 5, 9, 13)]
    hits = store.query_audio(clap, [_wav(corpus, i) for i in ids], SR, k=3)
    assert [h[0] for h in hits.ids] == ids
    assert hits.scores.shape == (4, 3) and np.all(np.diff(hits.scores, axis=1) <= 1e-6)
    np.testing.assert_allclose(hits.scores[:, 0], 1.0, atol=1e-4)
    texts = store.query_text(clap, [store.meta[2]["captions"][0]], k=2, modality="text")
    assert store.meta[texts.indices[0, 0]]["captions"][0] == store.meta[2]["captions"][0]


def test_exclusion_by_id_and_by_audio_hash(store_dir, corpus, clap):
    store = Datastore.load(store_dir)
    first = store.ids[0]
    emb = clap.embed_audio(normalize_wav(_wav(corpus, first)), SR)
    k = store.count - 2
    plain = store.query(emb, 2)
    assert set(plain.ids[0]) == {first, "dup-of-first"}  # identical audio: both score 1
    no_self = store.query(emb, k, exclude_ids=[first])
    assert first not in no_self.ids[0] and no_self.ids[0][0] == "dup-of-first" and len(no_self.ids[0]) == k
    no_dups = store.query(emb, k, exclude_ids=[first], exclude_duplicates=True)
    assert not {first, "dup-of-first"} & set(no_dups.ids[0]) and len(no_dups.ids[0]) == k
    by_hash = store.query(emb, k, exclude_hashes=[store.meta[0]["audio_sha256"]])
    assert by_hash.ids == no_dups.ids
    with pytest.raises(ValueError, match="remain after exclusion"):
        store.query(emb, store.count - 1, exclude_ids=[first], exclude_duplicates=True)


def test_mmap_reload_gives_identical_results(store_dir):
    a, b = Datastore.load(store_dir, mmap=True), Datastore.load(store_dir, mmap=False)
    assert isinstance(a.emb["audio"], np.memmap) and not isinstance(b.emb["audio"], np.memmap)
    q = np.asarray(b.emb["text"][:6])
    for modality in ("audio", "text"):
        ha, hb = a.query(q, 4, modality), b.query(q, 4, modality)
        assert ha.ids == hb.ids and np.array_equal(ha.scores, hb.scores)


def test_ivf_matches_flat_recall_on_random_vectors():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 32))  # clustered, like real embeddings (IVF's premise)
    base = (centres[rng.integers(40, size=4000)] + 0.5 * rng.standard_normal((4000, 32))).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    queries = base[rng.choice(4000, 50, replace=False)] + 0.3 * rng.standard_normal((50, 32)).astype(np.float32)
    flat = fill_index(make_index(DatastoreConfig(index="flat"), 32, 4000), base)
    _, exact = flat.search(queries, 10)
    np.testing.assert_array_equal(exact[:, 0], np.argmax(queries @ base.T, axis=1))
    ivf = fill_index(make_index(DatastoreConfig(index="ivf", nprobe=1), 32, 4000), base)
    assert ivf.nlist == 4000 // 39  # auto: min(4 sqrt N, N / 39)

    def recall(nprobe):
        ivf.nprobe = nprobe
        _, approx = ivf.search(queries, 10)
        return np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])

    curve = [recall(p) for p in (1, 4, ivf.nlist // 4, ivf.nlist)]
    assert curve == sorted(curve) and curve[0] < 0.95 <= curve[2] and curve[3] == 1.0, curve


def test_ivf_datastore_round_trip(corpus, clap, store_dir, tmp_path, caplog, capfd):
    with caplog.at_level("WARNING", logger="tta.retrieval"):
        ivf_dir = build_datastore(corpus, clap, tmp_path / "ivf", DatastoreConfig(index="ivf", nlist=2, nprobe=2),
                                  progress=False)
    # 17 entries in 2 cells: one warning in our words, not FAISS's own clustering warning for each index
    small = [r for r in caplog.records if "fewer than 39 per cell" in r.getMessage()]
    assert len(small) == 1 and "17 entries for 2 IVF cells" in small[0].getMessage()
    assert "WARNING clustering" not in capfd.readouterr().err
    flat, ivf = Datastore.load(store_dir), Datastore.load(ivf_dir)
    q = np.asarray(flat.emb["audio"][:5])
    # every cell probed: exact, to float rounding (the first clip and its copy tie at 1.0 within 1e-7, and the
    # two indexes may list them in either order)
    got, exact = ivf.query(q, 5), flat.query(q, 5)
    for ids, scores, want, want_scores in zip(got.ids, got.scores, exact.ids, exact.scores):
        assert set(ids) == set(want)
        np.testing.assert_allclose(scores, want_scores, atol=1e-6)
        assert all(abs(s - dict(zip(want, want_scores))[i]) < 1e-6 for i, s in zip(ids, scores))


def test_bad_inputs(store_dir, corpus, clap, tmp_path):
    store = Datastore.load(store_dir)
    other = load_clap(_clap_folder(tmp_path / "other", seed=1))
    with pytest.raises(DatastoreError, match=f"built with CLAP {clap.identity}.*{other.identity}"):
        store.query_text(other, ["a hum"], k=1)
    with pytest.raises(ValueError, match="query_text expects a list of prompts, got a single str"):
        store.query_text(clap, "a hum", k=1)    # each character was a query: five rows of hits came back
    with pytest.raises(ValueError, match="k=18 is larger than the datastore"):
        store.query(store.emb["audio"][:1], 18)
    with pytest.raises(ValueError, match=r"must be \(B, 64\)"):
        store.query(np.zeros((1, 3), np.float32), 1)
    with pytest.raises(DatastoreError, match="datastore folder not found"):
        Datastore.load(tmp_path / "nope")
    with pytest.raises(DatastoreError, match="no rows to index"):
        build_datastore(corpus, clap, tmp_path / "empty", DatastoreConfig(split="valid"), progress=False)
    assert not (tmp_path / "empty").exists()
    with pytest.raises(ValueError, match=r"needs >= 9984 entries .*39 per centroid.*--index ivf, or a smaller --nbits"):
        build_datastore(corpus, clap, tmp_path / "pq", DatastoreConfig(index="ivfpq"), progress=False)
    broken = tmp_path / "broken"
    shutil.copytree(store_dir, broken)
    data = (broken / "audio.index").read_bytes()
    (broken / "audio.index").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatastoreError, match="audio.index: corrupted or unreadable FAISS index") as e:
        Datastore.load(broken)
    assert "\n" not in str(e.value)
    info = json.loads((broken / "datastore.json").read_text())
    (broken / "datastore.json").write_text(json.dumps({**info, "count": 0}))
    with pytest.raises(DatastoreError, match="the datastore is empty"):
        Datastore.load(broken)
    with pytest.raises(ValueError, match="nlist=20 IVF cells need"):
        build_datastore(corpus, clap, tmp_path / "ivf", DatastoreConfig(index="ivf", nlist=20), progress=False)


@pytest.mark.parametrize("damage, message", [
    ("meta-hash", r"meta.jsonl line 4: missing 'audio_sha256'"),
    ("meta-captions", r"meta.jsonl line 2: \"captions\" must be a non-empty list"),
    ("meta-list", r"meta.jsonl line 1: expected a JSON object"),
    ("info-dim", r"datastore.json: 'dim' is missing, expected an integer"),
    ("info-clap", r"datastore.json: 'clap_identity' is missing, expected a string"),
    ("info-count", r"datastore.json: 'count' is '17', expected an integer"),
])
def test_a_damaged_store_names_its_file_line_and_field(store_dir, tmp_path, damage, message):
    broken = shutil.copytree(store_dir, tmp_path / "broken")
    meta = (broken / "meta.jsonl").read_text().splitlines()
    info = json.loads((broken / "datastore.json").read_text())
    if damage == "meta-hash":
        meta[3] = json.dumps({k: v for k, v in json.loads(meta[3]).items() if k != "audio_sha256"})
    elif damage == "meta-captions":
        meta[1] = json.dumps({**json.loads(meta[1]), "captions": []})
    elif damage == "meta-list":
        meta[0] = "[1, 2]"
    else:
        key = {"info-dim": "dim", "info-clap": "clap_identity", "info-count": "count"}[damage]
        info = {k: v for k, v in info.items() if k != key}
        if damage == "info-count":
            info["count"] = "17"
    (broken / "meta.jsonl").write_text("\n".join(meta) + "\n")
    (broken / "datastore.json").write_text(json.dumps(info))
    with pytest.raises(DatastoreError, match=message) as e:
        Datastore.load(broken)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name, row, value", [("audio", 5, np.nan), ("text", 16, -np.inf)])
def test_a_store_with_non_finite_embeddings_is_refused_naming_the_file_and_first_bad_row(store_dir, clap, tmp_path,
                                                                                       name, row, value):
    """A NaN in audio_emb.npy went unnoticed: the FAISS index still answered text queries (NaN scores)."""
    broken = shutil.copytree(store_dir, tmp_path / "broken")
    emb = np.load(broken / f"{name}_emb.npy")
    emb[row, 3] = value
    emb[row + 1:, 0] = value   # later bad rows: the first is named
    np.save(broken / f"{name}_emb.npy", emb)
    rid = Datastore.load(store_dir).ids[row]
    with pytest.raises(DatastoreError, match=rf"{name}_emb.npy: row {row} \(entry '{rid}'\) holds NaN or inf") as e:
        Datastore.load(broken)
    assert "\n" not in str(e.value)
    from tta.retrieval.datastore import first_non_finite_row

    assert first_non_finite_row(emb, chunk=4) == row and first_non_finite_row(emb[:row], chunk=4) is None


def test_an_unchanged_store_is_not_read_again_for_non_finite_rows(store_dir, tmp_path, monkeypatch):
    """Every load read both embedding files whole to look for NaN (a 1 M-entry store: 4 GB each time). The
    verdict is kept in the store's finite.json: an unchanged store is not read again, while a file changed since
    (rewritten, or copied in with its mtime kept: a copied store, cp -p, rsync -t) is checked again. The digest a
    training run records of its datastore does not change with finite.json."""
    import os
    import time
    from types import SimpleNamespace

    from tta.retrieval import datastore
    from tta.training import input_digests

    Datastore.load(store_dir)            # the fixture's store has its verdict; a copy carries it along
    store = shutil.copytree(store_dir, tmp_path / "store")
    assert (store / "finite.json").is_file()
    real, scans = datastore.first_non_finite_row, []
    monkeypatch.setattr(datastore, "first_non_finite_row", lambda arr, *a, **k: scans.append(1) or real(arr, *a, **k))
    digest = input_digests(SimpleNamespace(retrieval=SimpleNamespace(datastore=str(store))))
    Datastore.load(store)
    assert len(scans) == 2               # copies: other files than those the verdict was recorded for
    Datastore.load(store)
    Datastore.load(store, mmap=False)
    assert len(scans) == 2               # unchanged: not read again
    assert input_digests(SimpleNamespace(retrieval=SimpleNamespace(datastore=str(store)))) == digest
    path = store / "text_emb.npy"
    before = path.stat()
    emb = np.load(path)
    emb[4, 1] = np.nan
    time.sleep(0.05)                     # past the file system clock's tick (the copy's ctime)
    np.save(path, emb)
    assert path.stat().st_size == before.st_size
    with pytest.raises(DatastoreError, match=r"text_emb.npy: row 4 \(entry '[^']+'\) holds NaN or inf"):
        Datastore.load(store)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))    # size and mtime as recorded
    with pytest.raises(DatastoreError, match=r"text_emb.npy: row 4 "):
        Datastore.load(store)


def test_cli_build_query_info(corpus, clap, tmp_path, capsys):
    from tta.cli import main

    clap_dir = _clap_folder(tmp_path / "clap", seed=0)
    out = tmp_path / "store"
    assert main(["-q", "index", "build", "--manifest", str(corpus), "--clap", str(clap_dir), "--out", str(out),
                 "--batch-size", "8"]) == 0
    assert (out / "audio.index").is_file()
    capsys.readouterr()
    assert main(["index", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 17 and info["ntotal"] == {"audio": 17, "text": 17}
    first = read_manifest(corpus)[3]
    wav = corpus.parent / first.path
    assert main(["index", "query", str(out), "--clap", str(clap_dir), "--audio", str(wav), "-k", "3",
                 "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"][0]["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["id"] == first.id
    assert main(["index", "query", str(out), "--clap", str(clap_dir), "--audio", str(wav), "-k", "2",
                 "--exclude-id", first.id, "--json"]) == 0
    assert [h["id"] for h in json.loads(capsys.readouterr().out)["results"][0]["hits"]] == [h["id"] for h in hits[1:]]
    assert main(["index", "query", str(out), "--clap", str(clap_dir), "--text", first.captions[0], "-k", "2"]) == 0
    text = capsys.readouterr().out
    assert "query: " + first.captions[0] in text and len(text.strip().splitlines()) == 3
    assert main(["index", "query", str(out), "--clap", str(clap_dir), "--text", "x", "-k", "99"]) == 1
    assert "k=99 is larger than the datastore" in capsys.readouterr().err
    other = _clap_folder(tmp_path / "other", seed=3)
    assert main(["index", "query", str(out), "--clap", str(other), "--text", "x"]) == 1
    assert "built with CLAP" in capsys.readouterr().err
    assert main(["index", "info", str(tmp_path / "missing")]) == 1
    assert "datastore folder not found" in capsys.readouterr().err
    import soundfile as sf

    sf.write(tmp_path / "blip.wav", np.zeros(100, np.float32), 16_000)
    assert main(["index", "query", str(out), "--clap", str(clap_dir), "--audio", str(tmp_path / "blip.wav")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--audio " in err and "blip.wav: 100 samples" in err, err
    for bad, message in ((["--nprobe", "0"], "--nprobe 0: must be >= 1"), (["-k", "0"], "-k 0: must be"),
                         (["--exclude-id", first.id, "--exclude-id", first.id.upper()],   # a typo excluded nothing
                          f"--exclude-id {first.id.upper()!r}: {out} holds no entry with this id")):
        assert main(["index", "query", str(out), "--clap", str(clap_dir), "--text", "x", *bad]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


def test_too_few_entries_left_after_exclusion_names_the_query_by_its_text_or_audio_file(store_dir, corpus, clap,
                                                                                         tmp_path, capsys):
    """`tta index query -k N --exclude-id X` on a store of N entries said "query 0: only ... remain": which one?"""
    from tta.cli import main
    from tta.config import shortened

    store, first = Datastore.load(store_dir), read_manifest(corpus)[0]
    long = "a low steady hum " * 6
    assert shortened(repr(long)).endswith("...")   # named shortened
    with pytest.raises(ValueError, match=r"^query 'a hum': only 16 of the 17 entries remain after exclusion, k=17"):
        store.query_text(clap, ["a dog", "a hum"], 17, exclude_ids=[None, first.id])
    with pytest.raises(ValueError, match=r"^query 1: only 16 of the 17"):   # bare embeddings: their position
        store.query(clap.embed_text(["a dog", "a hum"]), 17, exclude_ids=[None, first.id])
    with pytest.raises(ValueError, match="names must hold one name per query"):
        store.query(clap.embed_text(["a dog", "a hum"]), 1, names=["a dog"])
    wav = corpus.parent / first.path
    clap_dir = _clap_folder(tmp_path / "clap", seed=0)
    for query, name in ((["--text", long, "--text", "a dog"], f"--text {shortened(repr(long))}"),
                        (["--audio", str(wav)], f"--audio {wav}")):
        capsys.readouterr()
        assert main(["index", "query", str(store_dir), "--clap", str(clap_dir), *query, "-k", "17", "--exclude-id",
                     first.id]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"error: {name}: only 16 of the 17 entries remain" in err, err


def test_a_file_given_as_the_store_is_said_to_be_a_file(store_dir, corpus, capsys):
    """`tta index info corpus/manifest.jsonl` said "datastore folder not found" of a file that is there."""
    from tta.cli import main

    for path, hint in ((corpus, "(tta index build --out writes one)"),
                       (store_dir / "audio.index", f"(the datastore is its folder {store_dir})")):
        capsys.readouterr()
        assert main(["index", "info", str(path)]) == 1
        err = capsys.readouterr().err
        assert err == f"tta: error: {path}: is a file, not a datastore folder {hint}\n", err
    with pytest.raises(DatastoreError, match="is a file, not a datastore folder"):
        Datastore.load(corpus)


def test_cli_audio_query_is_cut_as_the_store_cut_its_clips(corpus, tmp_path, capsys):
    """A store embeds each clip's first --max-seconds; an audio query was embedded whole, so a clip longer than
    that, held in the store, was not its own nearest entry at cosine 1."""
    from tests.signals import noise, tone
    from tta.audio import save_audio
    from tta.cli import main

    rows = [type(r)(**{**r.__dict__, "path": str(corpus.parent / r.path)}) for r in read_manifest(corpus)[:6]]
    clip = tmp_path / "hum-then-hiss.wav"
    save_audio(clip, np.concatenate([0.3 * tone(220, 0.5), 0.9 * noise(1.0, seed=3)]), SR)
    rows.append(type(rows[0])(**{**rows[0].__dict__, "id": "long", "path": str(clip), "seconds": 1.5}))
    write_manifest(tmp_path / "m.jsonl", rows)
    clap_dir, out = _clap_folder(tmp_path / "clap", seed=0), tmp_path / "store"
    assert main(["-q", "index", "build", "--manifest", str(tmp_path / "m.jsonl"), "--clap", str(clap_dir),
                 "--out", str(out), "--max-seconds", "0.5"]) == 0
    capsys.readouterr()
    assert main(["index", "query", str(out), "--clap", str(clap_dir), "--audio", str(clip), "-k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"][0]["hits"]
    assert hits[0]["id"] == "long" and hits[0]["score"] > 1 - 1e-5, hits


def _with_bad_rows(corpus, folder, good: int = 6):
    """A manifest of the corpus's first `good` rows (absolute paths) with bad rows in between: a missing
    file, NaN samples, a text file named .wav, and a clip too short for the CLAP. Returns (manifest, good ids)."""
    import soundfile as sf

    from tta.data.manifest import resolve_path

    folder.mkdir(parents=True, exist_ok=True)
    rows = [type(r)(**{**r.__dict__, "path": str(resolve_path(r, corpus))}) for r in read_manifest(corpus)[:good]]
    sf.write(folder / "nan.wav", np.full(SR // 2, np.nan, np.float32), SR, subtype="FLOAT")
    (folder / "text.wav").write_text("not audio\n")
    sf.write(folder / "short.wav", np.zeros(20, np.float32), SR)
    bad = [type(rows[0])(**{**rows[0].__dict__, "id": f"bad-{name}", "path": str(folder / f"{name}.wav")})
           for name in ("missing", "nan", "text", "short")]
    mixed = [bad[0], rows[0], rows[1], bad[1], rows[2], bad[2], bad[3], *rows[3:]]
    write_manifest(folder / "mixed.jsonl", mixed)
    return folder / "mixed.jsonl", [r.id for r in rows]


def test_build_skips_bad_rows_and_keeps_the_rest_aligned(corpus, clap, tmp_path, caplog):
    from tests.test_ldm_fixtures import tiny_model_config
    from vae.model import MelVAE, VAEConfig

    torch.manual_seed(0)
    vae = MelVAE(tiny_model_config(VAEConfig, "vae")).requires_grad_(False).eval()
    mixed, good_ids = _with_bad_rows(corpus, tmp_path / "in")
    write_manifest(tmp_path / "good.jsonl", [r for r in read_manifest(mixed) if r.id in good_ids])
    config = DatastoreConfig(batch_size=3, latent_tokens=2)
    with caplog.at_level("WARNING", logger="tta.retrieval.datastore"):
        store = Datastore.load(build_datastore(mixed, clap, tmp_path / "mixed", config, progress=False, vae=vae))
    lines = [r.getMessage() for r in caplog.records]
    for name, reason in (("missing", "file not found"), ("nan", "non-finite samples"),
                         ("text", "not a readable audio file"), ("short", "refused by the CLAP")):
        hit = [x for x in lines if f"skipping row bad-{name}:" in x]
        assert len(hit) == 1 and f"{name}.wav" in hit[0] and reason in hit[0] and "\n" not in hit[0], lines
    assert any("skipped 4 of 10 rows" in x for x in lines)
    # the store holds exactly the good rows, each array aligned with meta as if built from them alone
    ref = Datastore.load(build_datastore(tmp_path / "good.jsonl", clap, tmp_path / "ref", config, progress=False,
                                         vae=vae))
    assert store.count == store.info["count"] == 6 and store.ids == ref.ids == good_ids
    assert [m["audio_sha256"] for m in store.meta] == [m["audio_sha256"] for m in ref.meta]
    for key in ("audio", "text", "latent"):
        np.testing.assert_allclose(np.asarray(store.emb[key]), np.asarray(ref.emb[key]), atol=1e-5)
    assert store.indexes["audio"].ntotal == 6 and not list(tmp_path.glob(".*"))
    assert store.query(np.asarray(ref.emb["audio"][4]), 1).ids == [[good_ids[4]]]


def test_build_with_no_usable_row_is_one_error(corpus, clap, tmp_path):
    mixed, good_ids = _with_bad_rows(corpus, tmp_path / "in")
    write_manifest(tmp_path / "bad.jsonl", [r for r in read_manifest(mixed) if r.id not in good_ids])
    with pytest.raises(DatastoreError, match=r"bad.jsonl: none of the 4 rows has usable audio") as e:
        build_datastore(tmp_path / "bad.jsonl", clap, tmp_path / "store", progress=False)
    assert "\n" not in str(e.value) and not (tmp_path / "store").exists() and not list(tmp_path.glob(".*"))


def test_cli_build_skips_bad_rows(corpus, tmp_path, capsys, caplog):
    from tta.cli import main

    mixed, good_ids = _with_bad_rows(corpus, tmp_path / "in", good=3)
    clap_dir = _clap_folder(tmp_path / "clap", seed=0)
    out = tmp_path / "store"
    assert main(["-q", "index", "build", "--manifest", str(mixed), "--clap", str(clap_dir), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("tta.")]
    assert sum("skipping row bad-" in x for x in warned) == 4 and "skipped 4 of 7 rows" in warned[-1]
    assert Datastore.load(out).ids == good_ids


def test_cli_build_refuses_an_existing_out(corpus, store_dir, tmp_path, capsys):
    from tta.cli import main

    clap_dir = _clap_folder(tmp_path / "clap", seed=0)
    keep = tmp_path / "keep"
    (keep / "sub").mkdir(parents=True)
    (keep / "a.txt").write_text("important\n")
    (tmp_path / "pfile").write_text("x\n")
    store = tmp_path / "store"
    shutil.copytree(store_dir, store)
    before = (store / "meta.jsonl").read_text()
    for out in (keep, tmp_path / "pfile", store):
        assert main(["index", "build", "--manifest", str(corpus), "--clap", str(clap_dir), "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert err == f"tta: error: {out}: already exists; choose a new --out\n"
    assert (keep / "a.txt").read_text() == "important\n" and (keep / "sub").is_dir()
    assert (tmp_path / "pfile").read_text() == "x\n" and (store / "meta.jsonl").read_text() == before
    assert not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_cli_build_refuses_a_bad_max_seconds(corpus, tmp_path, capsys, value):
    from tta.cli import main

    out = tmp_path / "store"
    assert main(["index", "build", "--manifest", str(corpus), "--clap", str(tmp_path / "no-clap"), "--out", str(out),
                 "--max-seconds", value]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tta: error: --max-seconds {float(value)}: expected a finite number") and err.count("\n") == 1
    assert not out.exists()
    with pytest.raises(ValueError, match="max_seconds=.* must be a finite number"):
        DatastoreConfig(max_seconds=float(value))


# ------------------------------------------------------------ related clips, renamed ids, IVF-PQ re-ranking


@pytest.fixture(scope="module")
def related(corpus, clap, tmp_path_factory):
    """The corpus with provenance: crops of one file, two mixtures, a mixture of a crop, and two clips that only
    share a synthesis setting (no "@...s": not a group). Returns (manifest, store folder, rows)."""
    folder = corpus.parent
    rows = read_manifest(corpus)
    ids = [r.id for r in rows]
    sources = {1: "debian:pkg:a.ogg@0.00s", 2: "debian:pkg:a.ogg@10.24s", 3: f"mix:{ids[4]}+{ids[5]}",
               6: f"mix:{ids[7]}+reverb small room", 8: f"mix:{ids[9]}+reverb cathedral",
               9: "debian:pkg:b.ogg@0.00s", 10: "debian:pkg:b.ogg@5.12s", 11: "fluidsynth:gm.sf2:program 0",
               12: "fluidsynth:gm.sf2:program 0"}
    rows = [type(r)(**{**r.__dict__, "source": sources.get(i, r.source)}) for i, r in enumerate(rows)]
    manifest = write_manifest(folder / "related.jsonl", rows)
    torch.set_num_threads(1)
    return manifest, build_datastore(manifest, clap, tmp_path_factory.mktemp("rel") / "store",
                                     DatastoreConfig(batch_size=8), progress=False), rows


def test_sources_groups_and_mixture_parts():
    from tta.retrieval.datastore import mixture_parts, source_group

    assert source_group("debian:0ad-data:audio/x.ogg@10.24s") == source_group("debian:0ad-data:audio/x.ogg@0.00s") \
        == "debian:0ad-data:audio/x.ogg"
    assert source_group("fluidsynth:FluidR3_GM.sf2:program 0") is None and source_group("espeak-ng:en+m1") is None
    assert source_group("synthetic") is None and source_group("") is None
    assert mixture_parts("mix:sfx-a-1234abcd-s0+music-b-5678abcd") == ("sfx-a-1234abcd-s0", "music-b-5678abcd")
    assert mixture_parts("mix:music-c-9abc0123+reverb small room") == ("music-c-9abc0123",)
    assert mixture_parts("espeak-ng:en+m1") == ()


def test_related_clips_are_excluded_in_both_directions(related, clap):
    from tta.retrieval.datastore import clip_path, relations_of_rows

    manifest, folder, rows = related
    store = Datastore.load(folder)
    assert store.has_sources and [m["source"] for m in store.meta] == [r.source for r in rows]
    paths = [clip_path(r.path, manifest) for r in rows]
    assert store.paths == paths
    rels = relations_of_rows(rows, paths)
    expect = {1: {1, 2}, 2: {1, 2}, 3: {3, 4, 5}, 4: {3, 4}, 5: {3, 5}, 6: {6, 7}, 7: {6, 7},
              9: {8, 9, 10}, 10: {8, 9, 10}, 8: {8, 9, 10}, 11: {11}, 12: {12}, 0: {0}}
    for i, want in expect.items():
        assert store.related_rows(rels[i]) == want, (i, store.related_rows(rels[i]))
    # a query keeps k hits and never returns a related entry
    q = np.asarray(store.emb["audio"])
    k = store.count - 4
    hits = store.query(q, k, exclude_ids=[[r.id] for r in rows], exclude_related=rels)
    for i, got in enumerate(hits.indices):
        assert len(got) == k and not set(got) & store.related_rows(rels[i])
    with pytest.raises(ValueError, match="exclude_related has 1 entries for 2 queries"):
        store.query(q[:2], 1, exclude_related=rels[:1])


def test_renamed_ids_are_excluded_by_audio_file(related):
    """A manifest re-imported under other ids names the same files: excluding by id alone returns the clip
    itself; excluding by its resolved path does not."""
    from tta.retrieval.datastore import clip_path

    manifest, folder, rows = related
    store = Datastore.load(folder)
    q = np.asarray(store.emb["audio"][[1, 5, 9]])
    renamed = [[f"re-{rows[i].id}"] for i in (1, 5, 9)]
    by_id = store.query(q, 1, exclude_ids=renamed)
    assert by_id.indices[:, 0].tolist() == [1, 5, 9]           # the clip itself: id exclusion did nothing
    absolute = [clip_path(str(manifest.parent / rows[i].path), "/elsewhere") for i in (1, 5, 9)]
    by_path = store.query(q, 1, exclude_ids=renamed, exclude_paths=absolute)
    assert not set(by_path.indices[:, 0].tolist()) & {1, 5, 9}


def test_a_store_without_sources_falls_back_to_duplicates_and_warns_once(related, corpus, tmp_path, caplog):
    from tta.retrieval.datastore import clip_path, relations_of_rows

    manifest, folder, rows = related
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    meta = [json.loads(x) for x in (old / "meta.jsonl").read_text().splitlines()]
    (old / "meta.jsonl").write_text("".join(json.dumps({k: v for k, v in m.items() if k != "source"}) + "\n"
                                            for m in meta))
    store = Datastore.load(old)
    assert not store.has_sources
    rels = relations_of_rows(rows, [clip_path(r.path, manifest) for r in rows])
    q = np.asarray(store.emb["audio"][[0, 0]])
    with caplog.at_level("WARNING"):
        hits = store.query(q, 2, exclude_related=rels[:1] * 2)
        store.query(q, 2, exclude_related=rels[:1] * 2)
    assert sum("built before sources were recorded" in r.message for r in caplog.records) == 1
    # the query's own clip and its exact duplicate ("dup-of-first") are left out; a mixture's parts are still
    # found through their paths (the query side knows its sources), a part's mixtures and crops are not
    assert not {"dup-of-first", rows[0].id} & set(hits.ids[0])
    assert store.related_rows(rels[3]) == {3, 4, 5} and store.related_rows(rels[4]) == {4}
    assert store.related_rows(rels[1]) == {1}


def test_ivfpq_hits_are_reranked_by_exact_score_and_sorted():
    from pathlib import Path

    rng = np.random.default_rng(0)
    n, d = 2000, 32
    centres = rng.standard_normal((20, d))
    base = (centres[rng.integers(20, size=n)] + 0.6 * rng.standard_normal((n, d))).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    queries = base[rng.choice(n, 100, replace=False)] + 0.2 * rng.standard_normal((100, d)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    config = DatastoreConfig(index="ivfpq", m=4, nbits=4, nprobe=8)
    index = fill_index(make_index(config, d, n), base)
    meta = [{"id": f"e{i}", "captions": ["c"], "path": f"{i}.wav", "audio_sha256": str(i)} for i in range(n)]
    store = Datastore(Path("in-memory"), {"clap_identity": "x", "dim": d, "count": n, "index": "ivfpq"},
                      {"audio": index, "text": index}, {"audio": base, "text": base}, meta)
    hits = store.query(queries, 5)
    assert np.all(np.diff(hits.scores, axis=1) <= 0)          # best first, by the scores reported
    exact = np.argsort(-(queries @ base.T), axis=1)[:, :5]
    assert np.mean(hits.indices[:, 0] == exact[:, 0]) >= 0.9
    np.testing.assert_allclose(hits.scores, np.einsum("bkd,bd->bk", base[hits.indices], queries), atol=1e-5)
    # PQ codebooks need 39 training points per centroid
    make_index(config, d, 39 * 16)
    with pytest.raises(ValueError, match=r"nbits=4 needs >= 624 entries.*--index ivf, or a smaller --nbits"):
        make_index(config, d, 39 * 16 - 1)


def test_the_clap_check_stops_out_of_file_descriptors_instead_of_passing_on_no_audio(store_dir, clap):
    """_audio_agrees skipped every entry it could not load, OSErrors too, and with none read said the CLAP
    agrees: out of file descriptors a LAION CLAP whose audio tower differs passed the check. The machine's error
    now stops it, naming the file."""
    import errno

    from tests.test_audio_bad_input import out_of_file_descriptors

    store = Datastore.load(store_dir)
    with out_of_file_descriptors(), pytest.raises(OSError) as caught:
        store._audio_agrees(clap)
    assert (caught.value.errno, caught.value.filename) == (errno.EMFILE, str(store.paths[0]))
    assert store._audio_agrees(clap)
