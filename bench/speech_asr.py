"""How intelligible a corpus's English speech is: the word error rate of an offline recogniser on every speech
clip whose first caption quotes what is said ('a man says "turn left at the next corner"'), per engine and voice
(mixtures are left out).

The recogniser is pocketsphinx's US-English model (in its wheel; `pip install 'tta[judge]'`), the same for every
clip, so the rates compare the engines and voices of one corpus, not with other recognisers. Its rates are high
for any voice it was not trained on; a voice much worse than the others is one a listener finds hard too.

Usage: .venv/bin/python bench/speech_asr.py --manifest CORPUS/manifest.jsonl
Prints a table and appends a JSON line to bench/results.jsonl (--results).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.default_quality import machine  # noqa: E402
from bench.record import tta_version  # noqa: E402
from tta.data.manifest import read_manifest, resolve_path  # noqa: E402

QUOTE = re.compile(r' says "([^"]+)"')


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]+", " ", text.lower()).split()


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance (substitutions, insertions and deletions all cost 1)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[:], i
        for j, h in enumerate(hyp, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (r != h))
    return row[-1]


def engine_of(source: str) -> str:
    """'festival:festvox-kallpc16k:kal_diphone' -> 'festival:kal_diphone'; 'flite:slt', 'espeak-ng:en+f3' and
    'piper:en_US-joe-medium' stay as they are."""
    head = source.split(":")
    if head[0] == "festival" and len(head) == 3:
        return f"festival:{head[2]}"
    return ":".join(head[:2])


def quoted_rows(manifest: Path) -> list[tuple[object, str]]:
    """(row, the quoted words) of the speech clips; mixtures are left out (their speech is under other sound)."""
    rows = []
    for row in read_manifest(manifest):
        if row.category == "mixture" or row.source.startswith("mix:"):
            continue
        match = QUOTE.search(row.captions[0]) if row.captions else None
        if match:
            rows.append((row, match.group(1)))
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", type=Path, required=True, help="a corpus manifest (tta data recipe starter)")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results.jsonl"),
                    help="append the summary here ('' to skip)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        import pocketsphinx
    except ImportError:
        raise SystemExit("bench/speech_asr.py: pocketsphinx is not installed (pip install 'tta[judge]')") from None
    import numpy as np

    from tta.audio import load_audio

    rows = quoted_rows(args.manifest)
    if not rows:
        raise SystemExit(f"{args.manifest}: no clip's first caption quotes what is said ('... says \"...\"')")
    decoder = pocketsphinx.Decoder(samprate=16_000, loglevel="FATAL")
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])      # engine -> clips, words, errors
    start = time.perf_counter()
    for row, said in rows:
        wav, _ = load_audio(resolve_path(row, args.manifest), 16_000)
        pcm = (np.clip(wav, -1, 1) * 32767).astype("<i2").tobytes()
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        heard = decoder.hyp().hypstr if decoder.hyp() else ""
        ref = words(said)
        t = totals[engine_of(row.source)]
        t[0], t[1], t[2] = t[0] + 1, t[1] + len(ref), t[2] + edit_distance(ref, words(heard))
    engines = {k: {"clips": c, "words": n, "errors": e, "wer": round(e / max(n, 1), 4)}
               for k, (c, n, e) in sorted(totals.items())}
    summary = {"bench": "speech_asr", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "machine": machine(),
               "versions": {"pocketsphinx": importlib.metadata.version("pocketsphinx"), "tta": tta_version()},
               # repository-relative like the other benches' paths (no machine path), and the manifest's hash
               "settings": {"manifest": os.path.relpath(Path(args.manifest).resolve(), ROOT),
                            "manifest_sha256": hashlib.sha256(Path(args.manifest).read_bytes()).hexdigest(),
                            "recogniser": "pocketsphinx default US-English model"},
               "seconds": round(time.perf_counter() - start, 1), "engines": engines}
    if not args.quiet:
        print(f"{'engine / voice':34s} {'clips':>5s} {'words':>6s} {'WER':>6s}")
        for k, v in engines.items():
            print(f"{k:34s} {v['clips']:5d} {v['words']:6d} {v['wer']:6.2f}")
    if args.results:
        with open(args.results, "a", encoding="utf-8") as f:
            f.write(json.dumps(summary) + "\n")
    return summary


if __name__ == "__main__":
    main()
