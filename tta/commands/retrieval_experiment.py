"""The retrieval experiment (Re-AudioLDM, Yuan et al. 2024, §5 long-tail analysis) as one reproducible run.

    OUT/datastore/             built from the training split with the run's CLAP (unless `datastore` is given),
                               and with its VAE's latents when a variant uses the "latent" feature; rebuilt when
                               the manifest (path or content), the split or the CLAP changed, or a variant reads
                               latents and the VAE did; refused before any variant trains when one of them could
                               not train on it (another CLAP, too few entries for k, no latents of the VAE)
    OUT/runs/<variant>/        `tta train ldm` run folders (pipeline/ reused when its experiment-variant.json
                               shows the same run config, manifest content, component content and datastore (the
                               files the variant reads); trained again otherwise)
    OUT/prompts.jsonl          evaluation prompts with their bucket (category = head | mid | tail) and frequency
    OUT/reference/             reference clips for FAD (unless `eval.reference` is given): by default the
                               evaluation prompts' own clips
    OUT/generated/<variant>/   wavs + generation.json (retrieved ids and captions per prompt)
                               (a clip's wav is named by its id as tta.data.prompts.id_file_name writes it: an
                               id with '/' or ':', 'clotho/a_dog', becomes clotho%2Fa_dog.wav)
    OUT/eval/<variant>/        `tta eval` results (eval.json, items.csv; per-bucket breakdown)
    OUT/report.html            `tta report` over all variants; OUT/summary.{md,json,png}: variant x bucket table

Buckets: each prompt gets a frequency — with `bucket_by` "words" the mean, over its content words, of the
number of training clips whose captions contain the word; with "category" the number of training clips
labelled with the prompt's category — and prompts are split by rank into thirds: head (most frequent),
mid, tail; prompts of equal frequency share a bucket (the one of their mean rank), so the thirds are equal
only up to ties.

Evaluation prompts (without a prompt file) are a seeded random sample (`eval.seed`) of `eval.max_prompts`
clips of `eval.prompt_split`, not its first rows (manifests are often sorted by kind). The store is checked to
hold none of the evaluation clips (prompts and reference, or the files of `eval.reference`) by id, by audio
file, by decoded audio (a copy under another id and file) or through a related clip (another crop of the same
file, a mixture and its parts); a store that does is refused, and the check is recorded in summary.json
("store_check").
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tta.ldm.retrieval_context import Modality, entries_needed, feature_names
from tta.ldm.train import ComponentsConfig

log = logging.getLogger(__name__)

BUCKETS = ("head", "mid", "tail")
REFERENCE_STAMP = "reference.json"   # in OUT: what each reference clip was made from (write_reference)
STOPWORDS = frozenset((
    "a", "an", "the", "and", "or", "of", "in", "on", "at", "to", "by", "for", "with", "from", "into",
    "onto", "over", "under", "as", "is", "are", "was", "were", "be", "being", "been", "it", "its", "this",
    "that", "these", "those", "some", "someone", "something", "while", "then", "than", "there", "their",
    "they", "them", "his", "her", "he", "she", "him", "we", "you", "your", "our", "out", "up", "down",
    "off", "very", "more", "most", "much", "many", "few", "one", "two", "three", "has", "have", "had"
))


@dataclass(frozen=True)
class VariantConfig:
    """features and modality: those of the run the experiment trains; None (not set): "both" and
    "text_to_audio". A variant given as a trained `pipeline` retrieves as that was trained (generates_with,
    ran_retrieval), with a warning only where the variant sets one that differs."""
    name: str
    neighbours: int = 0                        # 0: no retrieval (the baseline)
    features: str | None = None                # None: "both"
    modality: Modality | None = None           # None: "text_to_audio"
    pipeline: str = ""                         # an already trained pipeline folder: load, do not train

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[\w.\-]+", self.name):
            raise ValueError(f"variants: name {self.name!r} must be letters, digits, _ . - (a folder name)")
        if self.neighbours < 0:
            raise ValueError(f"variants.{self.name}.neighbours={self.neighbours} must be >= 0")
        try:
            feature_names(self.run_features)
        except ValueError as e:
            raise ValueError(f"variants.{self.name}: {e}") from None

    @property
    def run_features(self) -> str:
        """The features of the run the experiment trains for the variant."""
        return "both" if self.features is None else self.features

    @property
    def run_modality(self) -> str:
        return "text_to_audio" if self.modality is None else self.modality

    def generates_with(self) -> tuple[str, ...]:
        """The neighbour features the variant generates with (none without neighbours): a given `pipeline`'s
        as it was trained, read from its retrieval/ config (none without one: generating refuses it), else
        those of the run the experiment trains."""
        if not self.neighbours:
            return ()
        if not self.pipeline:
            return feature_names(self.run_features)
        from tta.checkpoint import CheckpointError, read_component_config
        from tta.pipeline import PipelineError, read_pipeline_json

        try:
            part = read_pipeline_json(self.pipeline)["components"].get("retrieval")
            if part is None:
                return ()
            return feature_names(read_component_config(Path(self.pipeline) / part)["config"].get("features", "both"))
        except (PipelineError, CheckpointError, ValueError) as e:
            raise ValueError(f"variants.{self.name}.pipeline: {e}") from None


@dataclass(frozen=True)
class GenerationSettings:
    seconds: float | None = None            # None: the pipeline's defaults
    steps: int | None = None
    guidance: float | None = None
    sampler: str | None = None
    seed: int = 0
    batch_size: int = 4


@dataclass(frozen=True)
class EvalSettings:
    prompts: str = ""              # prompt file (tta.data.prompts); "" = captions of `prompt_split` clips
    prompt_split: str = "valid"
    max_prompts: int = 60          # a seeded random sample of this many `prompt_split` clips
    seed: int = 0                  # the sample's seed (prompts and reference)
    reference: str = ""            # reference audio folder for FAD; "" = `prompt_split` clips, see reference_from
    reference_from: Literal["prompts", "split"] = "prompts"   # the prompts' own clips, or `max_reference` clips
    max_reference: int = 200       # "split": the prompts' clips plus more of the sample, this many in all
    embedder: str = "mfcc"         # eval embedder registry name (mfcc, vggish, panns, clap, ...)
    embedder_weights: str = ""
    clap_score: bool = True        # CLAP score with components.clap
    bucket_by: Literal["words", "category"] = "words"

    def __post_init__(self) -> None:
        if self.max_prompts < 3 or self.max_reference < 2:
            raise ValueError("eval.max_prompts must be >= 3 (three buckets) and eval.max_reference >= 2")
        if self.reference_from not in ("prompts", "split"):
            raise ValueError(f"eval.reference_from={self.reference_from!r} must be 'prompts' or 'split'")
        from eval.run import check_embedder_weights

        # (a clap or laion-clap embedder wraps components.clap and ignored the file)
        check_embedder_weights(self.embedder, self.embedder_weights, embedder_field="eval.embedder",
                               weights_field="eval.embedder_weights", clap_field="components.clap", error=ValueError)


@dataclass(frozen=True)
class ExperimentConfig:
    ldm_config: str                                      # base `tta train ldm` config (retrieval off)
    components: ComponentsConfig = field(default_factory=ComponentsConfig)   # non-empty entries override it
    manifest: str = ""                                   # training manifest ("" = the base config's)
    ldm_overrides: tuple[str, ...] = ()                  # KEY=VALUE overrides of the base config
    datastore: str = ""                                  # "" = build OUT/datastore from the training split
    variants: tuple[VariantConfig, ...] = (
        VariantConfig("none"), VariantConfig("k1", 1), VariantConfig("k3", 3), VariantConfig("k5", 5),
        VariantConfig("k10", 10), VariantConfig("k3-audio", 3, "audio"), VariantConfig("k3-text", 3, "text"))
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)

    def __post_init__(self) -> None:
        names = [v.name for v in self.variants]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"variants: names must be unique and non-empty, got {names}")


# ------------------------------------------------------------------------------------------ pieces


def base_run_config(config: ExperimentConfig):
    """The base LDM RunConfig: ldm_config + components/manifest + ldm_overrides."""
    from tta.config import apply_overrides, load_config
    from tta.ldm.train import RunConfig

    sets = [f"components.{k}={json.dumps(v)}" for k, v in vars(config.components).items() if v]
    if config.manifest:
        sets.append(f"data.manifest={json.dumps(config.manifest)}")
    base = apply_overrides(load_config(RunConfig, config.ldm_config), [*sets, *config.ldm_overrides])
    if base.retrieval.enabled:
        raise ValueError(f"{config.ldm_config}: the base config must have retrieval off (variants turn it on)")
    if not base.data.manifest:
        raise ValueError("manifest: no training manifest (set `manifest` or data.manifest in the base config)")
    return base


def content_words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 2 and w not in STOPWORDS]


def prompt_frequencies(prompts: list[dict], rows, by: str) -> list[float]:
    """Training-set frequency of each prompt (see the module docstring)."""
    if by == "category":
        counts = Counter(c for r in rows for c in {*r.labels, *([r.category] if r.category else [])})
        return [float(counts.get(p.get("category") or "", 0)) for p in prompts]
    docs = Counter(w for r in rows for w in {w for c in r.captions for w in content_words(c)})
    out = []
    for p in prompts:
        words = content_words(p["prompt"])
        out.append(sum(docs[w] for w in words) / len(words) if words else 0.0)
    return out


def assign_buckets(freqs: list[float]) -> list[str]:
    """Thirds by frequency rank: head, mid, tail. Prompts of equal frequency share the bucket of their mean
    rank (so a bucket never depends on prompt order)."""
    order = sorted(range(len(freqs)), key=lambda i: (-freqs[i], i))
    out = [""] * len(freqs)
    start = 0
    while start < len(order):
        end = start
        while end < len(order) and freqs[order[end]] == freqs[order[start]]:
            end += 1
        bucket = BUCKETS[min(2, int((start + end - 1) / 2 * 3 // len(freqs)))]
        for i in order[start:end]:
            out[i] = bucket
        start = end
    return out


def eval_rows(config: ExperimentConfig, manifest: Path) -> tuple[list, list]:
    """(prompt rows, reference rows) of `eval.prompt_split`: a seeded random sample (`eval.seed`) of
    `eval.max_prompts` clips (none with a prompt file), in manifest order; the reference is the prompts' own
    clips (`reference_from` "prompts"; with a prompt file, or with "split": the first `max_reference` clips of
    the same seeded order, which begins with the prompts'). No reference rows when `eval.reference` is given."""
    from tta.data.manifest import read_manifest

    e = config.eval
    split = [r for r in read_manifest(manifest) if r.split == e.prompt_split]
    order = list(range(len(split)))
    random.Random(e.seed).shuffle(order)
    prompts = [] if e.prompts else [split[i] for i in sorted(order[:e.max_prompts])]
    if e.reference:
        return prompts, []
    if e.reference_from == "prompts" and not e.prompts:
        return prompts, prompts
    return prompts, [split[i] for i in sorted(order[:max(e.max_reference, len(prompts))])]


def check_id_names(config: ExperimentConfig, prompt_rows, reference_rows, manifest: Path) -> None:
    """Refuse, before a store is built, an evaluation clip or prompt whose id names a file (its generated and
    reference wavs, tta.data.prompts.id_file_name) longer than a file name can be."""
    from tta.data.prompts import id_name_problem, read_prompt_file

    rows = [(manifest, r.id) for r in [*prompt_rows, *reference_rows]]
    if config.eval.prompts:
        rows += [(Path(config.eval.prompts), r.id) for r in read_prompt_file(config.eval.prompts) if r.id]
    for where, id_ in rows:
        problem = id_name_problem(id_)
        if problem:
            raise ValueError(f"{where}: {problem}")


def eval_prompts(config: ExperimentConfig, rows, train_rows, out: Path) -> tuple[list[dict], Path]:
    """The evaluation prompts (a prompt file's, else the captions of the sampled `rows`) with bucket and
    frequency, written to OUT/prompts.jsonl."""
    from tta.checkpoint import atomic_write_text
    from tta.data.prompts import read_prompt_file

    e = config.eval
    if e.prompts:
        rows = read_prompt_file(e.prompts)
        prompts = [{"id": r.id or f"{i:03d}", "prompt": r.prompt, "category": r.category} for i, r in enumerate(rows)]
    else:
        prompts = [{"id": r.id, "prompt": r.captions[0], "category": r.category or (r.labels[0] if r.labels else None)}
                   for r in rows]
    if len(prompts) < 3:
        raise ValueError(f"eval: {len(prompts)} prompts; the head/mid/tail split needs at least 3")
    freqs = prompt_frequencies(prompts, train_rows, e.bucket_by)
    for p, f, b in zip(prompts, freqs, assign_buckets(freqs)):
        p.update(frequency=f, label=p["category"], category=b)   # exact: bucket_frequencies' ranges are of these
    path = out / "prompts.jsonl"
    digits = shown_decimals(freqs)
    atomic_write_text(path, "".join(json.dumps({**p, "frequency": round(p["frequency"], digits)}) + "\n"
                                    for p in prompts))
    return prompts, path


def shown_decimals(values: list[float], decimals: int = 3) -> int:
    """The decimals a frequency is shown with (prompts.jsonl, the bucket ranges): `decimals`, or as many more as
    tell every two different `values` apart (rounded first, nearly tied prompts of different buckets showed one
    frequency, and touching ranges)."""
    exact = set(values)
    while decimals < 15 and len({round(v, decimals) for v in exact}) < len(exact):
        decimals += 1
    return decimals


def write_reference(config: ExperimentConfig, rows, manifest: Path, out: Path, seconds: float) -> Path:
    """Reference clips for FAD: eval.reference, or `rows` (first `seconds`) in OUT/reference (wavs of an earlier
    selection that are not among them are removed)."""
    from tta.audio import PCM_ROUNDING, load_audio, save_audio
    from tta.checkpoint import atomic_write_text
    from tta.data.manifest import resolve_path
    from tta.data.prompts import id_file_name

    if config.eval.reference:
        return Path(config.eval.reference)
    folder = out / "reference"
    if len(rows) < 2:
        raise ValueError(f"{manifest}: split {config.eval.prompt_split!r} gives {len(rows)} reference clips; FAD "
                         "needs >= 2 (set eval.reference)")
    _remove_stale_wavs(folder, {id_file_name(r.id) for r in rows})
    # a clip is reused only when made from the same file (size, mtime) at the same length and written with the same
    # 16-bit rounding: a re-run with another generation.seconds, edited audio or a tta that rounded down (a stamp
    # without PCM_ROUNDING) would otherwise score against clips a fresh run does not write
    stamp_path = out / REFERENCE_STAMP
    try:
        old = json.loads(stamp_path.read_text())["clips"]
    except (OSError, ValueError, KeyError, TypeError):
        old = {}
    stamp = {}
    for r in rows:
        target, source = folder / f"{id_file_name(r.id)}.wav", resolve_path(r, manifest)
        st = source.stat()
        stamp[r.id] = [str(Path(source).resolve()), st.st_size, st.st_mtime_ns, seconds, PCM_ROUNDING]
        if not target.is_file() or old.get(r.id) != stamp[r.id]:
            stamp_path.unlink(missing_ok=True)   # a run stopped here rewrites the rest next time
            wav, sr = load_audio(source, 16_000, max_seconds=seconds, normalize=True)
            save_audio(target, wav, sr)
    atomic_write_text(stamp_path, json.dumps({"clips": stamp}, indent=1) + "\n")
    return folder


def _remove_stale_wavs(folder: Path, keep: set[str]) -> None:
    """Remove the wavs of `folder` whose names (without suffix) are not in `keep`."""
    stale = [p for p in folder.glob("*.wav") if p.stem not in keep] if folder.is_dir() else []
    if stale:
        from tta.config import counted

        log.info("%s: removing %s of an earlier prompt selection", folder, counted(len(stale), "wav"))
        for p in stale:
            p.unlink()


def check_store(store, rows, manifest: Path, sample_rate: int, reference: Path | None = None) -> dict:
    """Refuse (DatastoreError) a store holding any of the evaluation clips `rows` (ManifestRows of `manifest`)
    by id, by audio file, by decoded audio (a copy under another id and file; hashed at the CLAP's
    `sample_rate` as the store hashes its entries) or through a related clip, or holding the audio of a
    `reference` folder's files (`eval.reference`); returns the check's record for summary.json."""
    from tta.data.manifest import read_manifest
    from tta.retrieval.datastore import DatastoreError, clip_hashes, clip_path, relations_of_rows

    everything = read_manifest(manifest)
    paths = [clip_path(r.path, manifest) for r in rows]
    relations = relations_of_rows(rows, paths, (everything, [clip_path(r.path, manifest) for r in everything]))
    by_id = [r.id for r in rows if r.id in store.row_of]
    by_path = [r.id for r, p in zip(rows, paths) if p in store.rows_of_path]
    hashes = clip_hashes(paths, sample_rate, store.max_seconds)
    by_audio = [r.id for r, h in zip(rows, hashes) if h in store.rows_of_hash]
    related = [r.id for r, rel in zip(rows, relations) if store.related_rows(rel)]
    if reference is not None:
        from tta.audio import audio_entries

        # listed as `tta eval` lists the folder it scores: a folder named x.wav or a hidden temporary file is none
        files = audio_entries(Path(reference))
        ref_paths = [os.path.realpath(p) for p in files]
        ref_hashes = clip_hashes(ref_paths, sample_rate, store.max_seconds)
        names = [f"{reference}/{p.relative_to(reference).as_posix()}" for p in files]   # a subfolder's file: with it
        by_path += [n for n, rp in zip(names, ref_paths) if rp in store.rows_of_path]
        by_audio += [n for n, h in zip(names, ref_hashes) if h in store.rows_of_hash]
    record = {"datastore_split": store.info.get("config", {}).get("split"), "datastore_manifest": store.manifest,
              "eval_clips": len(rows), "reference_files": None if reference is None else len(files),
              "by_id": len(by_id), "by_path": len(by_path), "by_audio": len(by_audio), "related": len(related),
              "sources_recorded": store.has_sources}
    leaked = sorted({*by_id, *by_path, *by_audio, *related})
    if leaked:
        built = record["datastore_split"] or "every split"
        total = len(rows) + (record["reference_files"] or 0)
        origin = store.manifest or "an unknown manifest"
        raise DatastoreError(f"{store.folder}: holds {len(leaked)} of the {total} evaluation clips (by id "
                             f"{len(by_id)}, by audio file {len(by_path)}, by decoded audio {len(by_audio)}, related "
                             f"{len(related)}; e.g. {leaked[0]}; built from {built} of {origin}), so retrieval "
                             "would return them: build it from the training split only "
                             "(tta index build --split train)")
    if not store.has_sources:
        log.warning("%s: records no sources, so only ids and audio files of the evaluation clips were checked "
                    "(no crops of the same file or mixtures); rebuild the store to check those", store.folder)
    return {**record, "passed": True}


def stale_store(store, manifest: Path, split: str, clap_identity: str, vae_identity: str = "") -> str:
    """Why an experiment's own OUT/datastore does not serve this run ("" when it does): built from another
    manifest file, another content of it (stores that record its sha256), another split or another CLAP,
    (`vae_identity`: a variant reads neighbour latents of this VAE) holding latents of another VAE, or with clips
    embedded at their files' own level (an older tta's store; see DatastoreConfig.normalize)."""
    import hashlib

    if store.manifest != str(manifest.resolve()):
        return f"from {store.manifest or 'an unknown manifest'}, not {manifest.resolve()}"
    recorded = store.info.get("manifest_sha256")
    if recorded and recorded != hashlib.sha256(manifest.read_bytes()).hexdigest():
        return f"from an earlier content of {manifest}"
    if store.info.get("config", {}).get("split") != split:
        return f"from split {store.info.get('config', {}).get('split')!r}, not {split!r}"
    if store.identity != clap_identity:
        return f"with CLAP {store.identity}, not {clap_identity}"
    if vae_identity and store.latent_info and store.latent_info.get("vae_identity") != vae_identity:
        return f"with latents of VAE {store.latent_info.get('vae_identity')}, not {vae_identity}"
    if not store.normalize:   # an older tta's store: this one builds stores with clips normalised
        return "with clips at their files' own level (built before stores normalised them)"
    return ""


def check_variants(store, variants, clap, vae_identity: str) -> None:
    """Refuse, before any variant trains, a store that some retrieval variant's training would refuse: built
    with another CLAP, too small for its k (its own clip is left out while training), or without latents of
    the run's VAE (`vae_identity`) for a variant that reads them. A variant given as a trained `pipeline` is
    not trained: its own CLAP and VAE check the store when it generates."""
    from tta.ldm.retrieval_context import open_store
    from tta.retrieval import DatastoreError

    for v in variants:
        if not v.neighbours or v.pipeline:
            continue
        try:
            open_store(store, clap, v.neighbours, exclude_self=True,
                       latent_vae=vae_identity if "latent" in feature_names(v.run_features) else "")
        except DatastoreError as e:
            raise DatastoreError(f"variant {v.name}: {e}") from None


def store_files_sha256(folder: Path, latent: bool) -> str:
    """files_sha256 of what a variant's training reads from a datastore folder: its entries, embeddings and
    indexes, and its latents when it reads them (`latent`); a store rebuilt to add latents stays the same to
    the variants that do not read them."""
    from tta.checkpoint import files_sha256
    from tta.retrieval.datastore import META_NAME, MODALITIES

    names = [META_NAME, *(f"{m}_emb.npy" for m in MODALITIES), *(f"{m}.index" for m in MODALITIES)]
    return files_sha256([Path(folder) / n for n in [*names, *(["latent.npy"] if latent else [])]], folder)


VARIANT_RECORD = "experiment-variant.json"


def train_variant(base, variant: VariantConfig, store: Path, out: Path, progress: bool) -> Path:
    """The variant's pipeline folder: given, already trained under OUT/runs with the same settings and data
    (its VARIANT_RECORD: the resolved run config and, with retrieval, the datastore it read), or trained now."""
    from tta.checkpoint import atomic_write_text
    from tta.checkpoint import file_sha256
    from tta.config import apply_overrides, to_dict
    from tta.ldm.train import train
    from tta.training import input_digests

    if variant.pipeline:
        return Path(variant.pipeline)
    run = out / "runs" / variant.name
    cfg = base
    if variant.neighbours:
        cfg = apply_overrides(base, [f"retrieval.datastore={json.dumps(str(store))}",
                                     f"retrieval.neighbours={variant.neighbours}",
                                     f"retrieval.features={json.dumps(variant.run_features)}",
                                     f"retrieval.modality={json.dumps(variant.run_modality)}",
                                     f"retrieval.max_neighbours={max(10, variant.neighbours)}"])
    # the content of the components and of the store, not only their paths: one replaced under the same path
    # (a VAE trained again into the folder the config names, a store rebuilt with other settings) is another input
    record = {"run_config": to_dict(cfg), "manifest_sha256": file_sha256(base.data.manifest),
              "inputs_sha256": input_digests(base)}
    if variant.neighbours:
        info = json.loads((Path(store) / "datastore.json").read_text())
        record["datastore"] = {k: info.get(k) for k in ("clap_identity", "count", "manifest", "manifest_sha256")}
        record["datastore"]["files_sha256"] = store_files_sha256(store, "latent" in feature_names(variant.run_features))
    if (run / "pipeline" / "pipeline.json").is_file():
        try:
            old = json.loads((run / VARIANT_RECORD).read_text())
        except (OSError, ValueError):
            old = None
        if old is None:   # trained before runs were recorded: nothing says it differs, so it is kept (and
            # recorded from now on, so a later change of settings or data is seen)
            log.warning("variant %s: reusing %s, trained before the experiment recorded its settings (delete %s to "
                        "train it again)", variant.name, run / "pipeline", run)
            atomic_write_text(run / VARIANT_RECORD, json.dumps(record, indent=2) + "\n")
            return run / "pipeline"
        if _same_settings(old, json.loads(json.dumps(record))):
            # recorded before the content of its inputs was: a component or store rebuilt
            # under the same path since cannot be seen, so it is kept, as an unrecorded run is, and said, and its
            # record completed, so a later change is seen
            if "inputs_sha256" not in old or ("files_sha256" in record.get("datastore", {})
                                              and "files_sha256" not in old.get("datastore", {})):
                log.warning("variant %s: reusing %s, trained before the experiment recorded the content of its "
                            "components and datastore files: one rebuilt under the same path since (e.g. a store "
                            "rebuilt with clips normalised) is not seen (delete %s to train it again)",
                            variant.name, run / "pipeline", run)
                atomic_write_text(run / VARIANT_RECORD, json.dumps(record, indent=2) + "\n")
                return run / "pipeline"
            log.info("variant %s: reusing %s", variant.name, run / "pipeline")
            return run / "pipeline"
        log.warning("variant %s: %s was trained with other settings or data (first difference at %s); training it "
                    "again", variant.name, run / "pipeline", _first_difference(old, json.loads(json.dumps(record))))
    if run.exists():   # an unfinished or outdated earlier attempt: start it again
        import shutil

        shutil.rmtree(run)
    train(cfg, run, resume=False, progress=progress)
    atomic_write_text(run / VARIANT_RECORD, json.dumps(record, indent=2) + "\n")
    return run / "pipeline"


def _same_settings(old, new) -> bool:
    """Whether `new` holds `old`'s settings: a key `old` lacks (a field added since it was recorded) is ignored."""
    if isinstance(old, dict) and isinstance(new, dict):
        return all(k in new and _same_settings(v, new[k]) for k, v in old.items())
    return old == new


def _first_difference(old, new, where: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for k, v in old.items():
            if k not in new or not _same_settings(v, new[k]):
                return _first_difference(v, new.get(k), f"{where}.{k}" if where else k)
    return where or "the record"


def generate_variant(pipeline: Path, variant: VariantConfig, store, prompts: list[dict], g: GenerationSettings,
                     folder: Path, progress: bool) -> dict:
    """Generate every prompt with the variant's pipeline into `folder`; returns its generation record. Each clip
    is written as `tta generate` writes it for the same prompt, seed and settings: its candidates ranked, and
    recorded, as the file holds them, one over full scale turned down to fit (tta.generate.rank_written)."""
    from tqdm.auto import tqdm

    from tta.audio import save_audio
    from tta.checkpoint import atomic_write_text
    from tta.data.prompts import id_file_name
    from tta.generate import rank_written, warn_turned_down
    from tta.pipeline import TTAPipeline

    pipe = TTAPipeline.from_pretrained(pipeline)
    k = variant.neighbours or None
    retrieval = ran_retrieval(pipe, variant, pipeline) if k else None
    _remove_stale_wavs(folder, {id_file_name(p["id"]) for p in prompts})
    t0, outputs = time.time(), []
    for start in tqdm(range(0, len(prompts), g.batch_size), desc=f"generate {variant.name}", disable=not progress):
        chunk = prompts[start:start + g.batch_size]
        out = pipe([p["prompt"] for p in chunk], seconds=g.seconds, steps=g.steps, guidance=g.guidance,
                   sampler=g.sampler, seed=g.seed + start, batch_size=len(chunk),
                   datastore=store if k else None, neighbours=k, return_candidates=True)
        for i, p in enumerate(chunk):
            (wav, gain, _), scores, best = rank_written(pipe, out, i, p["prompt"], None)
            path = folder / f"{id_file_name(p['id'])}.wav"
            warn_turned_down(f"{variant.name}/{path.name}", gain, {})
            save_audio(path, wav, out.sample_rate)
            outputs.append({"id": p["id"], "file": path.name, "prompt": p["prompt"], "bucket": p["category"],
                            "gain": round(gain, 6), "clap_score": round(scores[best], 6),
                            "candidate_clap_scores": [round(s, 6) for s in scores], "kept_candidate": best,
                            "neighbours": out.neighbours[i] if out.neighbours else []})
    d = pipe.defaults   # what ran: a setting left to the pipeline is its default (variants may differ there)
    ran = {**vars(g), **{k: getattr(d, k) for k in ("seconds", "steps", "guidance", "sampler") if getattr(g, k) is None},
           "candidates": d.candidates, "guidance_rule": d.guidance_rule, "precision": d.precision}
    record = {"variant": vars(variant), "retrieval": retrieval, "model": str(pipeline.resolve()), "settings": ran,
              "datastore": str(store.folder) if k else None, "wall_seconds": round(time.time() - t0, 3),
              "outputs": outputs}
    atomic_write_text(folder / "generation.json", json.dumps(record, indent=2) + "\n")
    return record


def ran_retrieval(pipe, variant: VariantConfig, pipeline: Path) -> dict:
    """What the variant's pipeline retrieves with: its context encoder's features, modality (how its training
    clips found their neighbours) and index (the one generation searches: "text" for text_to_text, else
    "audio"), not the variant's settings, which only the runs the experiment trains are made from; a given
    `pipeline` trained with others retrieves with its own (it was reported under the variant's)."""
    if pipe.retrieval is None:
        raise ValueError(f"variants.{variant.name}: {pipeline} was not trained with retrieval (no retrieval/ "
                         f"component), but neighbours={variant.neighbours}; set its neighbours to 0")
    c = pipe.retrieval.config
    # only what the variant sets: its defaults are those of the runs the experiment trains (a pipeline trained
    # with features "text" was warned of as "not the variant's 'both' and 'text_to_audio'", which it never set)
    differ = [f"{what} {mine!r}, not the variant's {theirs!r}" for what, mine, theirs, same in (
        ("features", c.features, variant.features,
         variant.features is None or feature_names(variant.features) == feature_names(c.features)),
        ("modality", c.modality, variant.modality, variant.modality in (None, c.modality))) if not same]
    if variant.pipeline and differ:
        log.warning("variant %s: %s was trained with %s; it generates, and is reported, with its own",
                    variant.name, pipeline, " and ".join(differ))
    return {"features": c.features, "modality": c.modality, "index": c.index, "trained_neighbours": c.neighbours,
            "attention": c.attention}


# ------------------------------------------------------------------------------------------- main


def run_experiment(config: ExperimentConfig, out: str | os.PathLike, *, progress: bool = True) -> dict:
    """Run every stage (reusing finished ones); returns the summary (also OUT/summary.json)."""
    from eval.run import run_eval
    from tta.checkpoint import atomic_write_text
    from tta.clap import load_clap
    from tta.data.manifest import read_manifest
    from tta.ldm.train import component_dir
    from tta.retrieval import Datastore, DatastoreConfig, build_datastore

    from tta.checkpoint import load_component
    from tta.ldm.train import check_component_fit
    from vae.model import MelVAE

    out = Path(out)
    base = base_run_config(config)
    manifest = Path(base.data.manifest)
    clap = load_clap(base.components.clap)   # the inputs are checked before OUT is made or a store is built
    base_vae = load_component(component_dir(base.components.vae, "vae"), MelVAE)
    check_component_fit(base.model, base_vae, clap.embed_dim)
    train_rows = [r for r in read_manifest(manifest) if r.split == base.data.train_split]
    prompt_rows, reference_rows = eval_rows(config, manifest)
    check_id_names(config, prompt_rows, reference_rows, manifest)
    if not config.eval.prompts and len(prompt_rows) < 3:
        raise ValueError(f"eval: {len(prompt_rows)} prompts from split {config.eval.prompt_split!r} of {manifest}; "
                         "the head/mid/tail split needs at least 3")
    if config.eval.prompts:   # too few was found only once the store was built
        from tta.data.prompts import read_prompt_file

        n = len(read_prompt_file(config.eval.prompts))
        if n < 3:
            raise ValueError(f"eval.prompts {config.eval.prompts}: {n} prompts; the head/mid/tail split needs at "
                             "least 3")
    # a missing or empty reference folder, an unknown embedder or its missing weights failed only at the first
    # variant's eval, after its store was built and its model trained (a CLAP embedder's CLAP is the one loaded
    # above: wrapped, not loaded again)
    if config.eval.reference:
        from eval.run import list_audio

        list_audio(Path(config.eval.reference), "eval.reference")
    from eval.embedders import EmbedderError
    from eval.run import fad_embedder

    try:
        fad_embedder(eval_options(config, base, out, out / "reference", out / "prompts.jsonl", "check", False),
                     clap=clap)
    except EmbedderError as e:
        weights = f", eval.embedder_weights={config.eval.embedder_weights!r}" if config.eval.embedder_weights else ""
        raise EmbedderError(f"eval.embedder={config.eval.embedder!r}{weights}: {e}") from None
    too_big = [v for v in config.variants if not config.datastore and not v.pipeline and v.neighbours
               and entries_needed(v.neighbours, exclude_self=True) > len(train_rows)]
    if too_big:   # OUT/datastore would hold the training split: check_variants refused it only once it was built
        v = too_big[0]
        raise ValueError(f"variant {v.name}: k={v.neighbours} neighbours (+1: the query clip itself is excluded in "
                         f"training) but split {base.data.train_split!r} of {manifest} holds only {len(train_rows)} "
                         "clips for the datastore")
    # what each variant generates with: a given pipeline's own features, not the variant's (its OUT/datastore was
    # built without latents for one trained with them, and with them for one the variant said reads them)
    latent = any("latent" in v.generates_with() for v in config.variants)
    out.mkdir(parents=True, exist_ok=True)
    store_dir = Path(config.datastore) if config.datastore else out / "datastore"
    built = (store_dir / "datastore.json").is_file()
    if built and not config.datastore:
        stale = stale_store(Datastore.load(store_dir), manifest, base.data.train_split, clap.identity,
                            base_vae.identity if latent else "")
        if stale:   # OUT/datastore of an earlier run on other data: rebuilt (the variants trained on it follow)
            import shutil

            log.warning("%s: built %s; rebuilding it", store_dir, stale)
            shutil.rmtree(store_dir)
            built = False
    if not config.datastore and (not built or latent and Datastore.load(store_dir).latent_info is None):
        from vae.model import load_vae

        vae = load_vae(component_dir(base.components.vae, "vae")).eval() if latent else None
        build_datastore(manifest, clap, store_dir, DatastoreConfig(split=base.data.train_split), progress=progress,
                        vae=vae)
    store = Datastore.load(store_dir)
    store_check = check_store(store, list({r.id: r for r in [*prompt_rows, *reference_rows]}.values()), manifest,
                              clap.sample_rate, Path(config.eval.reference) if config.eval.reference else None)
    check_variants(store, config.variants, clap, base_vae.identity)
    prompts, prompts_path = eval_prompts(config, prompt_rows, train_rows, out)
    seconds = config.generation.seconds or base.validation.seconds
    reference = write_reference(config, reference_rows, manifest, out, seconds)

    summary: dict = {"config": _plain(config), "datastore": summary_path(store_dir, out),
                     "store_entries": store.count, "store_check": store_check,
                     "prompts": summary_path(prompts_path, out),
                     "prompt_sample": {"seed": config.eval.seed, "split": config.eval.prompt_split,
                                       "prompts": len(prompts), "reference_clips": len(reference_rows) or None},
                     "reference": summary_path(reference, out),
                     "bucket_counts": bucket_counts(prompts), "bucket_by": config.eval.bucket_by,
                     "bucket_frequencies": bucket_frequencies(prompts), "variants": {}}
    evals = []
    for variant in config.variants:
        t0 = time.time()
        pipeline = train_variant(base, variant, store_dir, out, progress)
        trained_s = time.time() - t0
        gen_dir = out / "generated" / variant.name
        record = generate_variant(pipeline, variant, store, prompts, config.generation, gen_dir, progress)
        opts = eval_options(config, base, out, Path(reference), prompts_path, variant.name, progress)
        result = run_eval(opts)
        evals.append(opts.out)
        cats = result.get("breakdown", {}).get("categories", {})
        summary["variants"][variant.name] = {
            "neighbours": variant.neighbours, "features": (record["retrieval"] or {}).get("features"),
            "modality": (record["retrieval"] or {}).get("modality"),
            "pipeline": summary_path(pipeline, out), "train_or_load_seconds": round(trained_s, 2),
            "generate_seconds": record["wall_seconds"], "generation": record["settings"], "metrics": result["metrics"],
            "measured_by": {"fad": result["protocol"]["fad"]["embedder"]["identity"],
                            "clap_score": (result["protocol"].get("clap") or {}).get("model", {}).get("identity")},
            "buckets": {b: {k: cats.get(b, {}).get(k) for k in ("files", "fad", "fad_frames", "clap_score")}
                        for b in BUCKETS}}
    from eval.report import write_report

    report = out / "report.html"
    # the prompts' categories are the frequency buckets: no second head/tail split of them by file count
    write_report(evals, report, labels=[v.name for v in config.variants], head_tail=False, category_order=BUCKETS,
                 title=f"Retrieval experiment ({len(prompts)} prompts, head/mid/tail by training frequency)")
    summary["report"] = summary_path(report, out)
    summary["plot"] = summary_path(plot_buckets(summary, out / "summary.png"), out)
    atomic_write_text(out / "summary.md", render_summary(summary))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    summary["report"] = report   # the caller's: from the current folder, as `tta experiment` prints it
    return summary


def summary_path(path: str | os.PathLike, out: Path) -> str:
    """`path` as summary.json and summary.md name it: relative to their folder `out` when it lies inside it (the
    experiment folder moves or is copied as a whole), else absolute. They named OUT's own files relative to the
    folder the command ran in, so summary.md's link to report.html, opened from OUT, pointed at OUT/OUT/."""
    from tta.data.manifest import absolute_path, relative_path

    return Path(relative_path(str(absolute_path(path)), absolute_path(out))).as_posix()


def bucket_counts(prompts: list[dict]) -> dict[str, int]:
    """Prompts per bucket, in the long-tail order head, mid, tail (a bucket no prompt fell in is left out)."""
    counts = Counter(p["category"] for p in prompts)
    return {b: counts[b] for b in BUCKETS if b in counts}


def bucket_frequencies(prompts: list[dict]) -> dict[str, list[float]]:
    """Each bucket's [lowest, highest] training frequency of its prompts (long-tail order), from their exact
    frequencies, rounded as prompts.jsonl rounds them (shown_decimals) only for display."""
    freqs: dict[str, list[float]] = {}
    for p in prompts:
        freqs.setdefault(p["category"], []).append(p["frequency"])
    digits = shown_decimals([p["frequency"] for p in prompts])
    return {b: [round(min(freqs[b]), digits), round(max(freqs[b]), digits)] for b in BUCKETS if b in freqs}


BUCKET_RULES = {"words": "the mean, over its content words, of the number of training clips whose captions hold "
                         "the word",
                "category": "the number of training clips labelled with its category"}


def eval_options(config: ExperimentConfig, base, out: Path, reference: Path, prompts: Path, name: str,
                 progress: bool):
    """`tta eval`'s options for variant `name`: its generated clips in OUT/generated/<name> vs `reference`."""
    from eval.run import EvalOptions

    return EvalOptions(generated=out / "generated" / name, reference=reference, out=out / "eval" / name,
                       metrics=("fad", "clap") if config.eval.clap_score else ("fad",), embedder=config.eval.embedder,
                       embedder_weights=config.eval.embedder_weights or None, clap_model=base.components.clap,
                       prompts=prompts, cache_dir=out / "cache", progress=progress)


def render_summary(summary: dict) -> str:
    """Markdown: one row per variant, FAD and CLAP score overall and per bucket, under what measured them (the
    FAD embedder, the CLAP), the prompts per bucket and the generation settings."""
    from eval.report import NO_FAD_MARK, NO_FAD_NOTE, fad_cell, no_fad_for_frames

    def f(v):
        return "–" if v is None else f"{v:.4g}"

    def one(key: str, show, differ: str) -> str:   # the variants' common value, or where to find each one's
        values = {json.dumps(v.get(key), sort_keys=True) for v in summary["variants"].values()}
        first = next(iter(summary["variants"].values()), {}).get(key)
        return show(first) if len(values) == 1 and first else f"{differ} differ per variant (see summary.json)"

    counts = ", ".join(f"{b} {summary['bucket_counts'].get(b, 0)}" for b in BUCKETS)
    measured = one("measured_by", lambda m: f"FAD ↓ by embedder `{m['fad']}`" + (
        f"; CLAP score ↑ (mean text-audio cosine, -1 to 1) by `{m['clap_score']}`" if m.get("clap_score") else ""),
        "The FAD embedder or the CLAP")
    settings = one("generation", lambda g: "Generation: " + ", ".join(
        f"{k} {g[k]}" for k in ("seconds", "steps", "guidance", "sampler", "candidates", "seed") if k in g),
        "The generation settings")
    head = ("| variant | k | features | modality | FAD | CLAP | " + " | ".join(f"FAD {b} | CLAP {b}" for b in BUCKETS)
            + " |")
    lines = ["# Retrieval experiment", "", (f"Prompts per bucket: {counts}; datastore {summary['store_entries']} "
             "entries. FAD per bucket: that bucket's generated audio vs the whole reference."), "",
             *bucket_rule(summary), f"{measured}.", "", f"{settings}.", "", head,
             "|" + "---|" * (6 + 2 * len(BUCKETS))]
    for name, v in summary["variants"].items():
        m, b = v["metrics"], v["buckets"]
        lines.append(f"| {name} | {v['neighbours']} | {v['features'] or '–'} | {v.get('modality') or '–'} | "
                     f"{f(m.get('fad'))} | "
                     f"{f(m.get('clap_score'))} | " + " | ".join(f"{fad_cell(b[x])} | {f(b[x]['clap_score'])}"
                                                            for x in BUCKETS) + " |")
    # a bucket of one prompt (with an embedder of one frame per clip) has no FAD: the report's note says why
    if any(no_fad_for_frames(v["buckets"][x]) for v in summary["variants"].values() for x in BUCKETS):
        lines += ["", f"{NO_FAD_MARK} {NO_FAD_NOTE[0].upper()}{NO_FAD_NOTE[1:]}; each bucket's frames are in "
                  "report.html."]
    report = summary["report"]   # relative to summary.md's folder (summary_path)
    lines += ["", f"Full report: [{report}]({report})"]
    return "\n".join(lines) + "\n"


def bucket_rule(summary: dict) -> list[str]:
    """summary.md's lines saying what the buckets measured: the frequency each prompt was ranked by, and each
    bucket's range of it (none for a summary that does not record them)."""
    by, ranges = summary.get("bucket_by"), summary.get("bucket_frequencies")
    if by not in BUCKET_RULES or not ranges:
        return []

    def span(lo: float, hi: float) -> str:   # as recorded (:g kept 6 digits: 1234.567 read 1234.57)
        return f"{lo:.15g}" if lo == hi else f"{lo:.15g}–{hi:.15g}"

    spans = ", ".join(f"{b} {span(*ranges[b])}" for b in BUCKETS if b in ranges)
    return [f"Buckets (`eval.bucket_by` {by}): the prompts in thirds by rank of their training frequency (per "
            f"prompt: {BUCKET_RULES[by]}): {spans} (each prompt's in prompts.jsonl).", ""]


def plot_buckets(summary: dict, path: Path) -> Path:
    """FAD and CLAP score per bucket, one line per variant (PNG)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from tta.checkpoint import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, metric, label in ((axes[0], "fad", "FAD ↓"), (axes[1], "clap_score", "CLAP score ↑")):
        for name, v in summary["variants"].items():
            ys = [v["buckets"][b][metric] for b in BUCKETS]
            ax.plot(BUCKETS, [float("nan") if y is None else y for y in ys], marker="o", label=name)
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=90)
    finally:
        plt.close(fig)
    return path


def _plain(obj):
    from tta.config import to_dict

    return to_dict(obj)
