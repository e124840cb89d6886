"""CLAP score: cosine similarity between each prompt's CLAP text embedding and its audio's CLAP audio
embedding (Wu et al. 2023 / the AudioLDM 2 and Tango papers report it). Reported raw, in [-1, 1], not
x100; the mean over items plus every per-prompt value. The model is anything with tta.clap's interface:
`embed_text(list[str]) -> (B, D)` and `embed_audio(wav (B, T), sample_rate) -> (B, D)`.

One implementation serves `tta eval` and `tta clap score`: it lives in tta.clap.metrics (which eval may import,
and tta.clap may not import eval), so the two commands give one score per file and one set of result keys.
"""

from __future__ import annotations

from tta.clap.metrics import clap_score, cosine_scores

__all__ = ["clap_score", "cosine_scores"]
