"""bench/recognisable.py's judge: the k-nearest-neighbour vote, the silence trim and the resynthesis ceilings."""

from __future__ import annotations

import numpy as np

from tests import signals
from tests.test_ldm_fixtures import ROOT, SR, one_thread, tiny_pipeline  # noqa: F401 (autouse)


def load_bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_recognisable", ROOT / "bench" / "recognisable.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_judge_counts_the_nearest_clip_and_a_strict_majority():
    bench = load_bench()
    refs = np.eye(4, dtype=np.float32)
    labels = ["dog", "dog", "cow", "cow"]
    query = np.array([1.0, 0.9, 0.0, 0.0], dtype=np.float32)
    assert bench.nearest(query, refs, labels, 2) == ["dog", "dog"]
    assert bench.judge(query, refs, labels, "dog", 2) == (True, True)
    assert bench.judge(query, refs, labels, "cow", 2) == (False, False)
    tie = np.array([1.0, 0.0, 0.9, 0.0], dtype=np.float32)        # dog then cow: a tie is no vote
    assert bench.judge(tie, refs, labels, "dog", 2) == (True, False)
    assert bench.rates([(True, True), (False, True)], 2) == {"hit@1": 0.5, "vote@2": 1.0}


def test_active_trims_silence_but_keeps_a_quarter_second():
    bench = load_bench()
    wav = np.zeros(SR * 2, dtype=np.float32)
    wav[SR // 2: SR // 2 + 100] = 0.5
    cut = bench.active(wav, SR)
    assert len(cut) == SR // 4 and cut[0] == 0.5


def test_resynthesis_ceilings_keep_length_and_stay_finite():
    from tta.pipeline import TTAPipeline

    bench = load_bench()
    pipe = TTAPipeline.from_pretrained(tiny_pipeline())
    wavs = [signals.tone(440, 0.5), signals.noise(0.3, seed=3)]
    vocoded, through_vae = bench.resynthesised(pipe, wavs)
    for src, a, b in zip(wavs, vocoded, through_vae):
        assert a.shape == b.shape == src.shape
        assert np.isfinite(a).all() and np.isfinite(b).all() and np.abs(a).max() > 0
