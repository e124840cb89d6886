"""CLAP on the command line: `tta clap score` (clips against prompts), `tta clap retrieve` (search, metrics).

`tta clap score` gives the CLAP score of clips against their prompts; `tta clap retrieve` a text->audio
search, or the retrieval metrics of a captioned manifest.

Inputs: `--audio DIR` (audio files found recursively, sorted by path) with `--prompts FILE`, or
`--manifest FILE [--split S]` (each row's audio and its first caption; retrieval metrics use every caption).
A prompts file is .txt (one prompt per line), .jsonl ({"file": ..., "caption": ...} per line;
"path"/"audio"/"name" and "prompt"/"text" also accepted) or .csv (a header naming the same columns); relative
files are looked up under --audio, else beside the prompts file. Rows that name no file (a .txt) pair by
position with the files of --audio as `tta eval --prompts` pairs them (tta.data.prompts.position_order): in the
run's order where the folder's generation.json lists every file (a `tta generate --takes N` row with each of its
N takes), else one file per row in the order of their leading numbers (NNN_<slug>), else by name without suffix;
refused where the names sort otherwise than the numbers in them (clip_10 before clip_2).
A CSV/JSONL row without a file field pairs by its `id` with a file of --audio as `tta eval --prompts` pairs it
(the file `tta generate --prompts` names by the id: 'clotho/a_dog' -> clotho%2Fa_dog.wav), so one prompts file
drives the three.
Every printed or written number names the CLAP model identity (backend + checkpoint hash).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from tta import UsageError
from tta.checkpoint import output_path
from tta.device import DEVICES, pick_device

log = logging.getLogger(__name__)



def add_parsers(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="clap_command", metavar="ACTION")
    sub.required = True
    score = sub.add_parser("score", help="CLAP score (mean cosine, raw) of clips against their prompts",
                           description="CLAP score (mean cosine, raw) of clips against their prompts. Files are read "
                                       "as `tta eval` reads them (mono, on the 16-bit grid, then resampled), so both "
                                       "give one score per file.")
    _common(score)
    score.add_argument("--prompts", type=Path, help="prompts file (.txt / .jsonl / .csv), paired with --audio: a "
                       "row's file field, else its id as `tta eval --prompts` pairs it ('clotho/a_dog' -> "
                       "clotho%%2Fa_dog.wav), else the row's position; a `tta generate --takes` run's takes pair "
                       "with their row where its generation.json lists them")
    retrieve = sub.add_parser("retrieve", help="text->audio search, or retrieval metrics of a manifest",
                              description="Text->audio search over --audio, or retrieval metrics of a manifest. Files "
                                          "are read as `tta eval` reads them (mono, on the 16-bit grid, then "
                                          "resampled).")
    _common(retrieve)
    retrieve.add_argument("--query", action="append", metavar="TEXT", help="a text query (repeatable)")
    retrieve.add_argument("--top-k", type=int, default=5, help="hits shown per query (default 5)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clap", "--model", dest="clap", required=True, type=Path,
                   help="CLAP: tta folder (or run folder), transformers CLAP folder, or LAION .pt "
                        "(as `tta index` and `tta import` name it; --model is its older name)")
    p.add_argument("--tokenizer", type=Path, help="RoBERTa tokenizer folder (LAION .pt checkpoints)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--audio", type=Path, help="folder of audio files")
    src.add_argument("--manifest", type=Path, help="JSONL manifest")
    p.add_argument("--split", default="test", help="manifest split (default: test)")
    p.add_argument("--out", type=output_path, help="write the full result (per-item values) as JSON here")
    p.add_argument("--batch-size", type=int, default=16, help="clips embedded per forward pass (default 16)")
    # --cache-dir: the name `tta eval` gives its embedding cache
    p.add_argument("--cache", "--cache-dir", dest="cache", type=output_path,
                   help="embedding cache folder (content hash + model identity; default: none)")
    p.add_argument("--device", default="cpu", choices=DEVICES, help="torch device (default cpu; auto: CUDA, then "
                   "MPS, then the CPU)")


def run(args: argparse.Namespace) -> int:
    from tta.clap import load_clap

    device = pick_device(args.device)
    if args.out:   # before embedding every clip
        from tta.checkpoint import check_output_path

        check_output_path(args.out, "--out")
    clap = load_clap(args.clap, tokenizer=args.tokenizer, device=device, batch_size=args.batch_size,
                     cache_dir=args.cache)
    progress = not getattr(args, "quiet", False)
    if args.clap_command == "score":
        from tta.clap.interval import interval_words

        result = _score(clap, args, progress)
        words = interval_words(result)   # as tta eval and tta report print it; none with fewer than 2 draws
        words = f"{words}; " if words else ""
        print(f"CLAP score {result['clap_score']:.4f} over {result['num_items']} clips "
              f"({words}raw cosine; model {result['model']})")
    else:
        result = _retrieve(clap, args, progress)
    if args.out:
        from tta.checkpoint import atomic_write_text

        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    return 0


# ------------------------------------------------------------------------------------------- inputs


def _audio_files(folder: Path) -> list[Path]:
    from tta.audio import AUDIO_SUFFIXES, audio_entries

    if not folder.is_dir():
        raise ValueError(f"{folder}: audio folder not found")
    files = audio_entries(folder)   # a dead link is reported, not left out
    if not files:
        raise ValueError(f"{folder}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
    return files


def _read_prompts(path: Path, audio_dir: Path | None) -> tuple[list[tuple[Path, str, int | None, int]], list[str]]:
    """(audio file, prompt, take, row) from a prompt file (tta.data.prompts), and one message per row left out;
    .txt rows (and CSV/JSONL rows with no file or id field) pair by position with the files of --audio
    (tta.data.prompts.position_order, as `tta eval --prompts` pairs them), CSV/JSONL rows name their file
    (relative to --audio, else to the file's folder), or else pair by their id with a file of --audio as `tta eval
    --prompts` pairs them (the file `tta generate` names by the id: 'clotho/a_dog' -> clotho%2Fa_dog.wav); a row
    whose id pairs with no file is reported and left out. Where the generation.json of --audio (a `tta generate
    --takes N` folder) lists a row's takes, the row pairs with each of them (the take is its number, else None);
    row: the row's position in the file, 0-based (a `--takes` run's takes of one row are one draw of its score)."""
    from tta.audio import save_format_names
    from tta.data.prompts import (PromptFileError, file_key, generation_outputs, id_file_name, position_names,
                                  position_order, read_prompt_file, takes_run)

    rows = read_prompt_file(path)
    recorded = generation_outputs(audio_dir) if audio_dir is not None and audio_dir.is_dir() else {}
    takes = recorded if takes_run(recorded) else {}

    def take(f: Path) -> int | None:
        name = f.relative_to(audio_dir).with_suffix("").as_posix() if audio_dir is not None else None
        return takes[name].take if name in takes else None

    if all(r.file is None for r in rows) and (path.suffix.lower() == ".txt" or all(r.id is None for r in rows)):
        if audio_dir is None:   # as `tta eval --prompts` pairs them: a .txt file, or rows with no file or id
            raise PromptFileError(f"{path}: a prompts file whose rows name no file pairs by position with the "
                                  "files of --audio DIR (the run's order where its generation.json lists them, "
                                  "else by leading number, else by name)")
        files = _audio_files(audio_dir)
        if len(files) != len(rows) and not recorded:
            raise PromptFileError(f"{path}: {len(rows)} prompts but {len(files)} audio files in {audio_dir}")
        paths = {f.relative_to(audio_dir).as_posix(): f for f in files}
        by_name = {n: paths[p] for n, p in position_names(paths).items()}   # as tta eval names them
        order = position_order(path, list(by_name), len(rows), recorded)
        return [(by_name[n], rows[i].prompt, take(by_name[n]), i) for n, i in order], []
    base = audio_dir if audio_dir is not None else path.parent
    of_key = _files_of_keys(rows, audio_dir, takes)
    pairs, skipped = [], []
    for i, r in enumerate(rows):
        key = file_key(r.file) if r.file is not None else id_file_name(r.id)
        if r.file is not None and not of_key.get(key):
            f = Path(r.file)
            pairs.append((f if f.is_absolute() else base / f, r.prompt, None, i))
        elif of_key.get(key):   # a file-field row's files here are its recorded takes only
            pairs.extend((f, r.prompt, take(f), i) for f in of_key[key])
        else:
            # tta generate --format writes any of its formats: x.wav, .flac or .ogg
            skipped.append(f"{r.where}: id {r.id!r} pairs with no audio file in {audio_dir} (tta generate names it "
                           f"{id_file_name(r.id)}{save_format_names()})")
    return pairs, skipped


def _files_of_keys(every: list, audio_dir: Path | None, takes: dict) -> dict[str, list[Path]]:
    """The audio files of --audio each row's key pairs with (those of the rows without a file field; of the rows
    with one too where `takes`, the `recorded_outputs` of a --takes run's folder, lists the files: a row's takes),
    by the rule of `tta eval --prompts` (tta.data.prompts.match_audio): keyed by every row, so a file a file-field
    row names is never an id row's too, and a key two rows share is refused, as tta eval refuses it."""
    from tta.data.prompts import PromptFileError, file_key, id_file_name, match_audio

    rows = [r for r in every if r.file is None]
    if not rows and not takes:
        return {}
    no_id = next((r for r in rows if r.id is None), None)
    if no_id is not None:
        raise PromptFileError(f"{no_id.where}: expected a file/path/audio/name field naming the audio, or an id")
    if audio_dir is None:
        raise PromptFileError(f"{rows[0].where}: a row without a file field pairs by its id with a file of "
                              "--audio DIR")
    keys: dict[str, str | None] = {}
    for r in every:
        key = file_key(r.file) if r.file is not None else id_file_name(r.id)
        if key in keys:
            raise PromptFileError(f"{r.where}: file {key!r} appears twice")
        keys[key] = None if r.file is not None else r.id
    by_name: dict[str, list[Path]] = {}   # x.wav and x.flac share a name
    for f in _audio_files(audio_dir):
        by_name.setdefault(f.relative_to(audio_dir).with_suffix("").as_posix(), []).append(f)
    of_key: dict[str, list[Path]] = {}
    for name, key in match_audio(keys, by_name, takes).items():
        if key is not None and (keys[key] is not None or name in takes):   # a file-field row: its takes only
            of_key.setdefault(key, []).extend(by_name[name])
    for r in every:
        key = file_key(r.file) if r.file is not None else id_file_name(r.id)
        files = of_key.get(key, [])
        names = [f.relative_to(audio_dir).with_suffix("").as_posix() for f in files]
        if len(files) > 1 and (len(set(names)) < len(names) or not all(n in takes for n in names)):
            what = f"id {r.id!r}" if r.file is None else f"file {r.file!r}"
            raise PromptFileError(f"{r.where}: {what} pairs with {len(files)} audio files in {audio_dir} ("
                                  f"{', '.join(str(f.relative_to(audio_dir)) for f in files[:3])}); keep one")
    return of_key


def _manifest_items(path: Path, split: str) -> list[tuple[Path, tuple[str, ...]]]:
    from tta.data.manifest import read_manifest, resolve_path, split_rows

    every = read_manifest(path)
    rows = split_rows(every, split)
    if not rows:
        present = ", ".join(sorted({r.split for r in every})) or "none"
        raise ValueError(f"{path}: split {split!r} has no rows (its splits: {present}; choose one with --split)")
    return [(resolve_path(r, path), r.captions) for r in rows]


def _load(files: list[Path], sample_rate: int, progress: bool,
          min_samples: int = 0) -> tuple[list[int], list, list[str]]:
    """(indices of the files that decoded, their audio, one message per file skipped): a bad file, or one
    shorter than `min_samples` (the CLAP's analysis window), is reported and left out; no usable file at all is
    an error."""
    from tqdm.auto import tqdm

    from tta.audio import AudioError, load_audio

    kept, wavs, skipped = [], [], []
    for i, f in enumerate(tqdm(files, desc="read audio", disable=not progress)):
        try:
            wav = load_audio(f, sample_rate, pcm16=True)[0]   # as `tta eval` reads it: one score per file
            if wav.shape[0] < min_samples:
                raise AudioError(f"{f}: {wav.shape[0]} samples at {sample_rate} Hz, shorter than the CLAP's "
                                 f"analysis window ({min_samples}); skipped")
            wavs.append(wav)
            kept.append(i)
        except AudioError as e:
            log.warning("skipping %s", e)
            skipped.append(str(e))
    if not wavs:
        raise ValueError(f"none of the {len(files)} audio files is readable and long enough (first: {skipped[0]})")
    if skipped:
        log.warning("skipped %d of %d audio files", len(skipped), len(files))
    return kept, wavs, skipped


# ----------------------------------------------------------------------------------------- actions


def _score(clap, args, progress: bool) -> dict:
    from tta.clap.interval import clap_interval
    from tta.clap.metrics import clap_score

    unpaired: list[str] = []   # prompts file rows whose id pairs with no audio file
    if args.manifest is not None:
        if args.prompts is not None:
            raise UsageError("--prompts pairs with --audio; a manifest already holds the captions")
        pairs = [(f, caps[0]) for f, caps in _manifest_items(args.manifest, args.split)]
    else:
        if args.prompts is None:
            raise UsageError("tta clap score --audio DIR needs --prompts FILE (or use --manifest)")
        pairs, unpaired = _read_prompts(args.prompts, args.audio)
        for msg in unpaired:
            log.warning("skipping %s", msg)
        if not pairs:
            raise ValueError(f"{args.prompts}: no row pairs with an audio file (first: {unpaired[0]})")
    kept, wavs, skipped = _load([f for f, *_ in pairs], clap.sample_rate, progress, clap.min_samples)
    skipped = unpaired + skipped
    pairs = [pairs[i] for i in kept]
    result = clap_score(clap, [p for _, p, *_ in pairs], wavs, clap.sample_rate, batch_size=args.batch_size,
                        progress=progress)
    # the score's 95% interval over its draws, as tta eval records it: the files, or a --takes run's prompts (a
    # row's takes, one draw: their mean)
    interval = clap_interval(result["clap_score"], [
        {"name": str(f), "prompt": p, "clap_score": s, **({"take": t[0], "row": t[1]} if t and t[0] else {})}
        for (f, p, *t), s in zip(pairs, result["per_item"])])
    result = {"clap_score": result.pop("clap_score"), **interval, **result}
    result["per_item"] = [{"file": str(f), "prompt": p, "score": s, **({"take": t[0]} if t and t[0] else {})}
                          for (f, p, *t), s in zip(pairs, result["per_item"])]   # a --takes run's file: its take
    result["source"] = str(args.manifest or args.prompts)
    result["skipped"] = skipped
    return result


def _retrieve(clap, args, progress: bool) -> dict:
    import torch

    if args.top_k <= 0:
        raise ValueError(f"--top-k {args.top_k} must be > 0")
    if args.manifest is not None:
        items = _manifest_items(args.manifest, args.split)
        files = [f for f, _ in items]
    else:
        items, files = None, _audio_files(args.audio)
    kept, wavs, skipped = _load(files, clap.sample_rate, progress, clap.min_samples)
    files = [files[i] for i in kept]
    items = [items[i] for i in kept] if items is not None else None
    audio = clap.embed_audio(wavs, clap.sample_rate, progress=progress)
    if args.query:
        text = clap.embed_text(args.query, progress=progress)
        sim = text @ audio.t()
        hits = []
        for q, row in zip(args.query, sim):
            top = torch.topk(row, min(args.top_k, len(files)))
            found = [{"file": str(files[i]), "cosine": float(v)} for v, i in zip(top.values, top.indices)]
            hits.append({"query": q, "hits": found})
            print(f"{q!r}:")
            for h in found:
                print(f"  {h['cosine']:+.4f}  {h['file']}")
        return {"model": clap.identity, "queries": hits, "skipped": skipped}
    if items is None:
        raise UsageError("tta clap retrieve --audio DIR needs --query TEXT (retrieval metrics need a --manifest)")
    from tta.clap.metrics import retrieval_metrics

    texts, target = [], []
    for i, (_, caps) in enumerate(items):
        texts += caps
        target += [i] * len(caps)
    metrics = retrieval_metrics(clap.embed_text(texts, progress=progress), audio, target, model=clap.identity)
    print(f"retrieval on {args.manifest} [{args.split}]: {len(items)} clips, {len(texts)} captions "
          f"(model {clap.identity}" + (f"; {len(skipped)} unreadable clips left out)" if skipped else ")"))
    for d in ("t2a", "a2t"):
        print(f"  {d}: " + "  ".join(f"{m} {metrics[f'{d}_{m}']:.3f}" for m in ("R@1", "R@5", "R@10", "mAP@10")))
    return {**metrics, "skipped": skipped}
