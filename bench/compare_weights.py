"""Do two pipeline folders hold the same weights? The reproduction check of the embedded default (issue 8).

The model card's "Training (how to reproduce)" rebuilds the shipped folder stage by stage; this bench says how
close a rebuilt folder came. Every `*.safetensors` file under A is compared with the file at the same
relative path under B, tensor by tensor:

  names      tensors only in A or only in B
  layout     tensors whose dtype or shape differ
  values     tensors and elements whose stored bits differ (NaNs compare by their bits); per dtype the
             largest |a - b|, the largest |a - b| / max(|a|, |b|), and for floating-point tensors the largest
             distance in representable steps ("ulp": 1 means neighbouring values; float16 has 1 024 steps
             between 1 and 2, so one step is at most 2^-10 = 0.1 % of a value)

Every `*.json` file (component configs, pipeline.json) is compared as parsed JSON; the first differing key is
named. Files of other kinds (the model card, licences) are not compared.

The verdict is "identical" (every weight file byte for byte, every config equal), "close" (the same names,
layouts and configs, and every value within |a - b| <= atol + rtol * max(|a|, |b|): by default one float16
rounding step, or float32 noise around zero) or "different"; the exit status is 0 for the first two, 1 for
the last. Appends the summary to --results unless --no-record.

Usage: .venv/bin/python bench/compare_weights.py A B [--rtol R] [--atol A] [--no-record]
       e.g. A = tta/assets/default, B = the folder `make pack-default` wrote from rebuilt run folders
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.default_quality import machine, versions
from bench.recognisable import relative

RTOL, ATOL = 1e-3, 1e-6
# float dtype -> the signed integer type of the same width, to read its bits
BITS = {"float16": "int16", "bfloat16": "int16", "float32": "int32", "float64": "int64"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("a", type=Path, help="a pipeline (or component) folder, e.g. tta/assets/default")
    ap.add_argument("b", type=Path, help="the folder to compare with it, e.g. a rebuilt and packed one")
    ap.add_argument("--rtol", type=float, default=RTOL,
                    help=f"relative tolerance of a \"close\" verdict (default: {RTOL}, one float16 step)")
    ap.add_argument("--atol", type=float, default=ATOL,
                    help=f"absolute tolerance of a \"close\" verdict (default: {ATOL})")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results.jsonl")
    ap.add_argument("--no-record", action="store_true", help="do not append the summary to --results")
    args = ap.parse_args(argv)
    for folder in (args.a, args.b):
        if not folder.is_dir():
            ap.error(f"{folder}: not a folder")
    for flag in ("rtol", "atol"):
        if not getattr(args, flag) >= 0:
            ap.error(f"--{flag}: expected a tolerance >= 0, got {getattr(args, flag)}")
    return args


def ordered_bits(t):
    """A float tensor's bits as int64 keys that order like the values: neighbouring floats differ by 1."""
    import torch

    width = torch.finfo(t.dtype).bits
    i = t.view(getattr(torch, BITS[str(t.dtype).removeprefix("torch.")])).to(torch.int64)
    lowest = -(1 << (width - 1))                       # the bits of -0.0 read as a signed integer
    return torch.where(i < 0, lowest - i, i)           # negatives: larger magnitude -> smaller key


def same_bits(a, b):
    """Element-wise: do the two tensors (same dtype and shape) store the same bits?"""
    import torch

    if a.is_floating_point() and str(a.dtype).removeprefix("torch.") in BITS:
        kind = getattr(torch, BITS[str(a.dtype).removeprefix("torch.")])
        return a.view(kind) == b.view(kind)
    return a == b


def compare_tensors(a: dict, b: dict, rtol: float, atol: float) -> dict:
    """The per-file comparison of two {name: tensor} dicts, with per-dtype statistics of the differences."""
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    layout, differ, dtypes = [], [], {}
    elements = differing = not_close = 0
    for name in sorted(set(a) & set(b)):
        x, y = a[name], b[name]
        if x.dtype != y.dtype or x.shape != y.shape:
            layout.append({"name": name, "a": [str(x.dtype), list(x.shape)], "b": [str(y.dtype), list(y.shape)]})
            continue
        elements += x.numel()
        same = same_bits(x, y)
        n = int((~same).sum())
        if not n:
            continue
        differing += n
        differ.append(name)
        u, v = x[~same].double(), y[~same].double()
        delta = (u - v).abs().nan_to_num(nan=float("inf"))
        not_close += int((delta > atol + rtol * torch_max_abs(u, v)).sum())
        steps = None
        if x.is_floating_point() and str(x.dtype).removeprefix("torch.") in BITS:
            steps = int((ordered_bits(x[~same]).double() - ordered_bits(y[~same]).double()).abs().max())
        add_stats(dtypes, str(x.dtype).removeprefix("torch."), {
            "differing_elements": n, "max_abs": float(delta.max()), "max_ulp": steps,
            "max_rel": float((delta / torch_max_abs(u, v)).nan_to_num(nan=0.0).max())})
    return {"tensors": len(a), "only_a": only_a, "only_b": only_b, "layout": layout,
            "differing_tensors": len(differ), "first_differing": differ[:5], "elements": elements,
            "differing_elements": differing, "not_close": not_close, "dtypes": dtypes}


def add_stats(into: dict, dtype: str, stats: dict) -> None:
    """Fold one tensor's (or file's) difference statistics into `into[dtype]`."""
    d = into.setdefault(dtype, {"differing_elements": 0, "max_abs": 0.0, "max_rel": 0.0, "max_ulp": None})
    d["differing_elements"] += stats["differing_elements"]
    d["max_abs"], d["max_rel"] = max(d["max_abs"], stats["max_abs"]), max(d["max_rel"], stats["max_rel"])
    if stats["max_ulp"] is not None:
        d["max_ulp"] = max(d["max_ulp"] or 0, stats["max_ulp"])


def torch_max_abs(u, v):
    """max(|u|, |v|) element-wise, the scale a relative tolerance refers to."""
    return u.abs().maximum(v.abs())


def first_difference(x, y, where: str = "") -> str | None:
    """The path of the first key at which two parsed JSON values differ, or None."""
    if isinstance(x, dict) and isinstance(y, dict):
        for key in sorted(set(x) | set(y)):
            if key not in x or key not in y:
                return f"{where}.{key} (only in {'B' if key not in x else 'A'})".lstrip(".")
            found = first_difference(x[key], y[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        for i, (u, v) in enumerate(zip(x, y)):
            found = first_difference(u, v, f"{where}[{i}]")
            if found:
                return found
        return None
    return None if x == y else (where.lstrip(".") or "(the whole file)")


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SystemExit(f"{path}: not a readable JSON file ({e})") from None


def read_weights(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise SystemExit(f"{path}: not a readable safetensors file ({e})") from None


def compare(a: Path, b: Path, rtol: float = RTOL, atol: float = ATOL) -> dict:
    """Compare folder b with folder a; the summary without machine and versions."""
    files = {}
    for kind in ("safetensors", "json"):
        names = {p.relative_to(a).as_posix() for p in a.rglob(f"*.{kind}")} | \
                {p.relative_to(b).as_posix() for p in b.rglob(f"*.{kind}")}
        for name in sorted(names):
            pa, pb = a / name, b / name
            if not pa.is_file() or not pb.is_file():
                files[name] = {"missing_in": "A" if not pa.is_file() else "B"}
            elif kind == "json":
                diff = first_difference(read_json(pa), read_json(pb))
                files[name] = {"equal": diff is None, **({"first_difference": diff} if diff else {})}
            else:
                same_bytes = pa.read_bytes() == pb.read_bytes()
                files[name] = {"bytes_equal": same_bytes,
                               **compare_tensors(read_weights(pa), read_weights(pb), rtol, atol)}
    weights = [f for n, f in files.items() if n.endswith(".safetensors") and "missing_in" not in f]
    configs = [f for n, f in files.items() if n.endswith(".json") and "missing_in" not in f]
    missing = [n for n, f in files.items() if "missing_in" in f]
    layout_ok = not missing and all(not (f["only_a"] or f["only_b"] or f["layout"]) for f in weights) \
        and all(f["equal"] for f in configs)
    if layout_ok and all(f["bytes_equal"] for f in weights):
        verdict = "identical"
    elif layout_ok and not any(f["not_close"] for f in weights):
        verdict = "close"
    else:
        verdict = "different"
    dtypes = {}
    for f in weights:
        for dtype, stats in f["dtypes"].items():
            add_stats(dtypes, dtype, stats)
    return {"verdict": verdict, "rtol": rtol, "atol": atol, "files": files,
            "elements": sum(f["elements"] for f in weights),
            "differing_elements": sum(f["differing_elements"] for f in weights),
            "not_close": sum(f["not_close"] for f in weights), "dtypes": dtypes}


def report(s: dict) -> str:
    lines = []
    for name, f in s["files"].items():
        if "missing_in" in f:
            lines.append(f"{name}: missing in {f['missing_in']}")
        elif name.endswith(".json"):
            if not f["equal"]:
                lines.append(f"{name}: differs at {f['first_difference']}")
        elif f["bytes_equal"]:
            lines.append(f"{name}: {f['tensors']} tensors, {f['elements']:,} values, identical bytes")
        else:
            parts = [f"{name}: {f['tensors']} tensors"]
            if f["only_a"] or f["only_b"]:
                parts.append(f"{len(f['only_a'])} only in A (e.g. {(f['only_a'] or ['-'])[0]}), "
                             f"{len(f['only_b'])} only in B (e.g. {(f['only_b'] or ['-'])[0]})")
            if f["layout"]:
                e = f["layout"][0]
                parts.append(f"{len(f['layout'])} of another dtype or shape (e.g. {e['name']}: {e['a']} vs {e['b']})")
            if f["differing_elements"]:
                share = f["differing_elements"] / max(f["elements"], 1)
                parts.append(f"{f['differing_elements']:,} of {f['elements']:,} values differ ({share:.2%}) in "
                             f"{f['differing_tensors']} tensors" + "".join(
                                 f"; {dtype}: {d['differing_elements']:,}, max |a - b| {d['max_abs']:.3g}, "
                                 f"relative {d['max_rel']:.3g}" + (f", {d['max_ulp']} ulp" if d["max_ulp"] else "")
                                 for dtype, d in f["dtypes"].items()))
                if f["not_close"]:
                    parts.append(f"{f['not_close']:,} beyond the tolerance")
            elif not f["layout"] and not f["only_a"] and not f["only_b"]:
                parts.append("the same values in another byte layout")
            lines.append(", ".join(parts))
    configs = [n for n in s["files"] if n.endswith(".json") and s["files"][n].get("equal")]
    lines.append(f"{len(configs)} JSON files equal")
    tolerance = f" (rtol {s['rtol']:g}, atol {s['atol']:g})" if s["verdict"] != "identical" else ""
    lines.append(f"verdict: {s['verdict']}{tolerance}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    summary = {"bench": "compare_weights", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "machine": machine(), "versions": versions(),
               "settings": {"a": relative(args.a), "b": relative(args.b)},
               **compare(args.a, args.b, args.rtol, args.atol)}
    print(report(summary))
    if not args.no_record:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with open(args.results, "a") as f:
            f.write(json.dumps(summary) + "\n")
    return summary


if __name__ == "__main__":
    sys.exit(0 if main()["verdict"] != "different" else 1)
