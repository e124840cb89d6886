"""`tta report RESULT... --out report.html`: one self-contained HTML page (or Markdown) from eval results.

Each RESULT is a `tta eval --out` folder (or its eval.json); several results are compared side by side.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tta.checkpoint import output_path


def add_parsers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", type=Path, metavar="RESULT", help="tta eval output folder(s)")
    parser.add_argument("--out", type=output_path, help="report file: .html (self-contained) or .md")
    parser.add_argument("--markdown", type=output_path,
                        help="also (or only) write a Markdown report here (the metric and category tables; the "
                             "spectrograms, audio and head/tail table are in the HTML page only)")
    parser.add_argument("--label", action="append", help="column label per RESULT, in order (repeatable)")
    parser.add_argument("--title", default="tta evaluation report",
                        help="the report's heading (default: tta evaluation report)")


def run(args: argparse.Namespace) -> int:
    from eval.report import write_report

    for path in write_report(args.results, args.out, markdown=args.markdown, labels=args.label, title=args.title):
        print(path)
    return 0
