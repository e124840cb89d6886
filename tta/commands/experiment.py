"""`tta experiment retrieval --config FILE --out DIR`: the Re-AudioLDM retrieval experiment end to end.

Trains (or loads) each variant (no retrieval; k neighbours; audio/text/both features), generates the
evaluation prompts, evaluates FAD + CLAP score, splits prompts into head / mid / tail by how often their
caption words (or classes) occur in the training manifest, and writes OUT/report.html (through
`tta report`), OUT/summary.md and OUT/summary.json. Re-running with the same --out reuses finished
variants. Example configs: configs/experiment/retrieval-tiny.json, configs/experiment/retrieval-starter.json.

Light module: argparse only at top level.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from tta.checkpoint import output_path


def add_parsers(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    sub.required = True
    r = sub.add_parser("retrieval", help="retrieval-augmented LDM variants vs none, long-tail (head/mid/tail) report",
                       description=__doc__.split("\n\nLight module")[0].strip(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--config", required=True, type=Path, help="experiment JSON (configs/experiment/retrieval-*.json)")
    r.add_argument("--out", required=True, type=output_path, help="experiment folder (runs, audio, evals, report)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override an experiment config value, e.g. --set components.clap=DIR (repeatable)")


def find_relative(path: str, config_file: Path) -> Path:
    """A relative path an experiment config names (e.g. "configs/ldm/tiny.json"): from the current folder if
    it is there, else from the config file's folder or the nearest folder above it that holds it, so the
    shipped experiments run from anywhere."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    for folder in Path(config_file).resolve().parents:
        if (folder / p).exists():
            return folder / p
    return p     # not found anywhere: the loader names it


def run(args: argparse.Namespace) -> int:
    from tta.commands.retrieval_experiment import ExperimentConfig, run_experiment
    from tta.config import apply_overrides, load_config

    config = apply_overrides(load_config(ExperimentConfig, args.config), args.set or [])
    config = dataclasses.replace(config, ldm_config=str(find_relative(config.ldm_config, args.config)))
    result = run_experiment(config, args.out, progress=not getattr(args, "quiet", False))
    print(result["report"])
    return 0
