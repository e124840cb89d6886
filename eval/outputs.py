"""Writing and reading the results of `tta eval`: `eval.json` and `items.csv` (atomic writes)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from pathlib import Path

RESULT_NAME = "eval.json"
ITEMS_NAME = "items.csv"
ITEM_COLUMNS = ("name", "file", "seconds", "frames", "category", "prompt", "clap_score", "kl_softmax", "kl_sigmoid",
                "sha256")   # sha256: the file's bytes when it was scored (the report plays only that audio)
FORMAT_VERSION = 1


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
    as it was, never an eval.json beside the statistics of another run."""
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


def _check_shape(body: dict, file: Path) -> None:
    """Refuse an eval.json whose parts are not what `tta eval` writes, naming the field (a hand-edited or damaged
    file rendered half a report and failed on a bare key)."""
    metrics = body.get("metrics", {})
    if not isinstance(metrics, dict):
        raise ResultError(f"{file}: 'metrics' must be an object of numbers")
    for name, value in metrics.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ResultError(f"{file}: metrics.{name} is {value!r}, not a number")
    if not isinstance(body.get("protocol", {}), dict):
        raise ResultError(f"{file}: 'protocol' must be an object")
    breakdown = body.get("breakdown", {})
    categories = breakdown.get("categories", {}) if isinstance(breakdown, dict) else None
    if not isinstance(categories, dict):
        raise ResultError(f"{file}: 'breakdown' must be an object with a 'categories' object")
    for name, cat in categories.items():
        if not isinstance(cat, dict) or not isinstance(cat.get("files"), int):
            raise ResultError(f"{file}: breakdown.categories.{name} must be an object with a 'files' count")


def read_result(path: str | os.PathLike) -> tuple[dict, list[dict], Path]:
    """An eval result (its folder or its eval.json) -> (eval.json content, item rows, folder)."""
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
    rows: list[dict] = []
    items = file.parent / body.get("items_csv", ITEMS_NAME)
    if items.is_file():
        text = items.read_bytes()
        expected = body.get("items_sha256")
        # as written, or with text mode's \r\n on Windows (a prompt may hold a \r\n of its own)
        if expected and expected not in {hashlib.sha256(t).hexdigest() for t in (text, text.replace(b"\r\n", b"\n"))}:
            raise ResultError(f"{items}: not the items.csv written with {file} (changed, or cut short, since); run "
                              "`tta eval` again")
        rows = list(csv.DictReader(io.StringIO(text.decode("utf-8"), newline="")))
    return body, rows, file.parent
