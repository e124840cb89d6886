"""Writing and reading the results of `tta eval`: `eval.json` and `items.csv` (atomic writes)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
from pathlib import Path

from tta.config import shortened

RESULT_NAME = "eval.json"
ITEMS_NAME = "items.csv"
ITEM_COLUMNS = ("name", "file", "seconds", "frames", "category", "prompt", "clap_score", "kl_softmax", "kl_sigmoid",
                "sha256", "id", "take", "row")   # sha256: the file's bytes when it was scored (the report plays
# only that audio); id: the prompts file row's id as written, where the file name is its escaped form
# (id_file_name) or a path; take, row: which of its row's takes the file is (1..N) and which row of the run
# (0-based), for a `tta generate --takes N` folder's files
FORMAT_VERSION = 1

log = logging.getLogger(__name__)


class ResultError(ValueError):
    pass


def _clean(obj):
    """JSON-safe copy: NaN/inf become null (strict JSON), numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_outputs(out: str | os.PathLike, result: dict, items: dict[str, dict], stats: dict | None = None) -> Path:
    """Write OUT/items.csv, OUT/eval.json and the statistics `stats` ({file name: FrechetStats}) together: each is
    written in full before any replaces an earlier run's file, so a failed write (a full disk) leaves the folder
    as it was, never an eval.json beside the statistics of another run (tta eval removes an earlier run's
    statistics this run did not write once these are in place)."""
    from tta.checkpoint import atomic_files, atomic_write_text

    out, stats = Path(out), stats or {}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=ITEM_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for name in sorted(items):
        row = {"name": name, **{k: ("" if v is None else v) for k, v in items[name].items()}}
        writer.writerow(row)
    body = {"format_version": FORMAT_VERSION, "kind": "tta.eval", **_clean(result), "items_csv": ITEMS_NAME,
            # eval.json is renamed into place last: a run killed between the renames, or a file changed since,
            # pairs an eval.json with items that are not its own; the report checks this
            "items_sha256": hashlib.sha256(buf.getvalue().encode("utf-8")).hexdigest()}
    with atomic_files(out, [RESULT_NAME, ITEMS_NAME, *stats]) as tmp:   # renamed in the reverse order
        for name, value in stats.items():
            value.save(tmp[name])
        atomic_write_text(tmp[ITEMS_NAME], buf.getvalue())
        atomic_write_text(tmp[RESULT_NAME], json.dumps(body, indent=2, allow_nan=False) + "\n")
    return out / RESULT_NAME


# The parts of an eval.json that `tta report` reads beyond metrics and breakdown, by dotted path (parents
# first), and what each must be where present and not null: a hand-edited or damaged file failed on Python's
# own message ("'str' object has no attribute 'get'") or rendered half a page. protocol.fad.fad_inf was the
# --fad-inf flag (a bool) in the eval.json of tta's first versions, which is still read.
PARTS = {
    "protocol": dict, "protocol.fad": dict, "protocol.clap": dict, "protocol.panns": dict, "protocol.common": dict,
    "protocol.fad.embedder": dict, "protocol.fad.reference": dict, "protocol.fad.generated": dict,
    "protocol.fad.fad_inf": (dict, bool), "protocol.clap.model": dict, "protocol.clap.generated": dict,
    "protocol.clap.clap_score_ci95_unit": str,
    "protocol.panns.embedder": dict, "protocol.panns.reference": dict, "protocol.panns.is": dict,
    "protocol.panns.generated": dict, "breakdown.head": dict, "breakdown.tail": dict,
    "protocol.fad.embedder.identity": str, "protocol.fad.reference_stats_sha256": str,
    "protocol.fad.reference.stats_file": str, "protocol.fad.reference.folder": str,
    "protocol.fad.reference.content_sha256": str, "protocol.fad.fad_inf.method": str,
    "protocol.clap.model.identity": str, "protocol.clap.prompts_sha256": str, "protocol.clap.prompt_set_sha256": str,
    "protocol.panns.embedder.identity": str, "protocol.panns.reference.folder": str,
    "protocol.panns.reference.content_sha256": str, "items_csv": str, "items_sha256": str,
}
CELL_NUMBERS = ("fad", "clap_score", "kl_softmax", "kl_sigmoid")   # a category's (or head/tail's) values


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _seen(value) -> str:
    return shortened(repr(value))


def _check_shape(body: dict, file: Path) -> None:
    """Refuse an eval.json whose parts are not what `tta eval` writes, naming the field (a hand-edited or damaged
    file rendered half a report and failed on a bare key)."""
    if "protocol" in body and not isinstance(body["protocol"], dict):
        raise ResultError(f"{file}: 'protocol' must be an object")
    metrics = body.get("metrics", {})
    if not isinstance(metrics, dict):
        raise ResultError(f"{file}: 'metrics' must be an object of numbers")
    for name, value in metrics.items():
        if value is not None and not _number(value):
            raise ResultError(f"{file}: metrics.{name} is {_seen(value)}, not a number")
    breakdown = body.get("breakdown", {})
    categories = breakdown.get("categories", {}) if isinstance(breakdown, dict) else None
    if not isinstance(categories, dict):
        raise ResultError(f"{file}: 'breakdown' must be an object with a 'categories' object")
    for path, kind in PARTS.items():
        node = body
        for key in path.split("."):   # the parents were checked before (or are absent)
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None and not isinstance(node, kind):
            raise ResultError(f"{file}: {path} is {_seen(node)}, not {'a string' if kind is str else 'an object'}")
    proto = body.get("protocol") or {}
    fit = (proto.get("fad") or {}).get("fad_inf")   # an object, a bool or None (above)
    clap = proto.get("clap") or {}
    for path, interval in (("protocol.fad.fad_inf.fad_inf_ci95", fit.get("fad_inf_ci95") if isinstance(fit, dict)
                            else None), ("protocol.clap.clap_score_ci95", clap.get("clap_score_ci95"))):
        if interval is not None and not (isinstance(interval, list) and len(interval) == 2
                                         and all(map(_number, interval))):
            raise ResultError(f"{file}: {path} is {_seen(interval)}, not [low, high] (two numbers)")
    draws = clap.get("clap_score_ci95_draws")
    if draws is not None and (isinstance(draws, bool) or not isinstance(draws, int)):
        raise ResultError(f"{file}: protocol.clap.clap_score_ci95_draws is {_seen(draws)}, not a count")
    if clap.get("clap_score_ci95") is not None and (draws is None or draws < 2):   # recorded with it, always
        raise ResultError(f"{file}: protocol.clap.clap_score_ci95_draws is {_seen(draws)}, not the interval's "
                          "draws (a count, 2 or more)")
    # Student's t's (tta.clap.interval.recorded_interval; a result from before names none: 1.96)
    distribution, df = clap.get("clap_score_ci95_distribution"), clap.get("clap_score_ci95_df")
    if distribution is not None and distribution != "t":
        raise ResultError(f"{file}: protocol.clap.clap_score_ci95_distribution is {_seen(distribution)}, "
                          "not 't'")
    if (df is not None or distribution and clap.get("clap_score_ci95") is not None) and \
            (isinstance(df, bool) or not isinstance(df, int) or df < 1):
        raise ResultError(f"{file}: protocol.clap.clap_score_ci95_df is {_seen(df)}, not the interval's "
                          "degrees of freedom (a count, 1 or more)")
    if df is not None and df != (draws or 0) - 1:   # the draws give it (recorded_interval reads them)
        raise ResultError(f"{file}: protocol.clap.clap_score_ci95_df is {df}, not clap_score_ci95_draws - 1 "
                          f"({'no draws recorded' if draws is None else draws - 1})")
    parts = {f"breakdown.categories.{name}": cat for name, cat in categories.items()}
    for name in ("head", "tail"):
        if breakdown.get(name) is not None:
            parts[f"breakdown.{name}"] = breakdown[name]
            names = breakdown[name].get("categories")
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ResultError(f"{file}: breakdown.{name}.categories is {_seen(names)}, not a list of category "
                                  "names")
    for where, cat in parts.items():
        if not isinstance(cat, dict) or isinstance(cat.get("files"), bool) or not isinstance(cat.get("files"), int):
            raise ResultError(f"{file}: {where} must be an object with a 'files' count")
        for key in CELL_NUMBERS:
            if cat.get(key) is not None and not _number(cat[key]):
                raise ResultError(f"{file}: {where}.{key} is {_seen(cat[key])}, not a number")
        if cat.get("fad_frames") is not None and (isinstance(cat["fad_frames"], bool)
                                                   or not isinstance(cat["fad_frames"], int)):
            raise ResultError(f"{file}: {where}.fad_frames is {_seen(cat['fad_frames'])}, not a count")
        if cat.get("warning") is not None and not isinstance(cat["warning"], str):
            raise ResultError(f"{file}: {where}.warning is {_seen(cat['warning'])}, not a string")


def read_result(path: str | os.PathLike) -> tuple[dict, list[dict] | None, Path]:
    """An eval result (its folder or its eval.json) -> (eval.json content, item rows, folder). The rows are None,
    with a warning, when the result's items.csv is missing."""
    path = Path(path)
    file = path / RESULT_NAME if path.is_dir() else path
    if not file.is_file():
        raise ResultError(f"{path}: no {RESULT_NAME} (pass a `tta eval --out` folder or its eval.json)")
    try:
        body = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResultError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(body, dict) or body.get("kind") != "tta.eval":
        raise ResultError(f"{file}: not a tta eval result (kind {body.get('kind') if isinstance(body, dict) else None!r})")
    version = body.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise ResultError(f"{file}: eval result format version {version!r}; this tta reads version {FORMAT_VERSION} "
                          "(run `tta eval` again with this version)")
    _check_shape(body, file)
    rows: list[dict] | None = []
    items = file.parent / body.get("items_csv", ITEMS_NAME)
    if not items.is_file():   # the metrics stand without it; the per-item sections cannot
        log.warning("%s: not found beside %s: the report has no per-item sections for this result (run `tta eval` "
                    "again to write it)", items, file.name)
        rows = None
    else:
        text = items.read_bytes()
        expected = body.get("items_sha256")
        # as written, or with text mode's \r\n on Windows (a prompt may hold a \r\n of its own)
        if expected and expected not in {hashlib.sha256(t).hexdigest() for t in (text, text.replace(b"\r\n", b"\n"))}:
            raise ResultError(f"{items}: not the items.csv written with {file} (changed, or cut short, since); run "
                              "`tta eval` again")
        rows = list(csv.DictReader(io.StringIO(text.decode("utf-8"), newline="")))
    return body, rows, file.parent
