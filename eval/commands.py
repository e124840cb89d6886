"""`tta eval`: FAD / FD / KL / IS / CLAP score of generated audio against a reference folder or statistics.

Writes OUT/eval.json (every number with its protocol: embedder and checkpoint hash, sample rates, counts,
paired or not, versions, date), OUT/items.csv (one row per generated file) and the Gaussian statistics of
both sets (OUT/reference_stats.npz can be passed as --reference later).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tta.checkpoint import output_path


def add_parsers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generated", required=True, type=Path, help="folder of generated audio")
    parser.add_argument("--reference", required=True, type=Path,
                        help="folder of reference audio, or a reference statistics .npz (fad only)")
    parser.add_argument("--out", required=True, type=output_path, help="output folder for eval.json and items.csv")
    parser.add_argument("--metrics", default="fad",
                        help="comma-separated subset of fad,fd,kl,is,clap (default: fad)")
    parser.add_argument("--embedder", default="mfcc",
                        help="FAD embedder: mfcc, aisfx, vggish, panns, clap, laion-clap (default: mfcc)")
    parser.add_argument("--embedder-weights", help="local weights file for the embedder (aisfx, vggish or panns)")
    parser.add_argument("--panns-weights", help="local PANNs Cnn14_16k .pth for fd/kl/is (or $TTA_PANNS_WEIGHTS)")
    parser.add_argument("--prompts", type=Path,
                        help="CSV/JSONL with file (or id), prompt and optional category columns; .txt by position "
                             "(an id pairs with the file `tta generate` names by it: 'clotho/a_dog' -> "
                             "clotho%%2Fa_dog.wav; a `tta generate --takes` run's takes pair with their row "
                             "where its generation.json lists them)")
    parser.add_argument("--clap", "--clap-model", dest="clap_model", metavar="CLAP",
                        help="CLAP for --metrics clap and --embedder clap/laion-clap: tta folder (or run "
                             "folder), transformers CLAP folder, or LAION .pt (--clap-model is its older "
                             "name)")
    parser.add_argument("--tokenizer", "--clap-tokenizer", dest="clap_tokenizer", metavar="TOKENIZER",
                        help="local RoBERTa tokenizer folder for an original LAION CLAP .pt "
                             "(--clap-tokenizer is its older name)")
    parser.add_argument("--cache-dir", type=output_path, help="embedding cache (default $TTA_CACHE_DIR/eval or "
                                                        "~/.cache/tta/eval)")
    parser.add_argument("--fad-inf", action="store_true", help="also report FAD-inf and its nominal 95%% interval (nearer 90%% "
                        "measured on real speech; Chung et al. 2020; needs 2 x max(500, 5 x D) generated frames)")
    parser.add_argument("--batch-size", type=int, default=32, help="files embedded per batch (default 32)")


def run(args: argparse.Namespace) -> int:
    from tta import UsageError
    from eval.report import clap_words, fad_inf_words   # the intervals as tta report writes them (no torch)
    from eval.run import EvalOptions, run_eval
    from tta.checkpoint import check_output_path

    check_output_path(args.out, "--out", folder=True)   # before embedding both folders
    metrics = {m.strip() for m in args.metrics.split(",") if m.strip()}
    if args.fad_inf and "fad" not in metrics:
        raise UsageError("--fad-inf extends the FAD: it needs fad in --metrics")
    if args.clap_tokenizer and "clap" not in metrics and args.embedder not in ("clap", "laion-clap"):
        raise UsageError("--tokenizer is for a LAION CLAP .pt: it needs --metrics clap or --embedder "
                         "clap/laion-clap")
    opts = EvalOptions(generated=args.generated, reference=args.reference, out=args.out,
                       metrics=tuple(m.strip() for m in args.metrics.split(",") if m.strip()),
                       embedder=args.embedder, embedder_weights=args.embedder_weights,
                       panns_weights=args.panns_weights, clap_model=args.clap_model,
                       clap_tokenizer=args.clap_tokenizer, prompts=args.prompts,
                       cache_dir=args.cache_dir, fad_inf=args.fad_inf, batch_size=args.batch_size,
                       progress=not getattr(args, "quiet", False), flags=True)
    result = run_eval(opts)
    for name, value in result["metrics"].items():
        line = f"{name}\t{value:.6g}" if isinstance(value, float) else f"{name}\t{value}"
        note = (fad_inf_words(result) if name == "fad_inf" else clap_words(result) if name == "clap_score"
                else None)
        print(line + (f"\t{note}" if note else ""))
    print(args.out / "eval.json")
    return 0
