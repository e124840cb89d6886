"""Synthetic test signals made in the tests: tones, chirps, noise, clicks."""

from __future__ import annotations

import numpy as np


def tone(freq: float, seconds: float, sample_rate: int = 16_000, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def chirp(f0: float, f1: float, seconds: float, sample_rate: int = 16_000, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
    return (amplitude * np.sin(phase)).astype(np.float32)


def noise(seconds: float, sample_rate: int = 16_000, amplitude: float = 0.3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (amplitude * rng.standard_normal(int(seconds * sample_rate))).clip(-1, 1).astype(np.float32)


def clicks(seconds: float, sample_rate: int = 16_000, every_seconds: float = 0.25) -> np.ndarray:
    out = np.zeros(int(seconds * sample_rate), dtype=np.float32)
    out[:: max(1, int(every_seconds * sample_rate))] = 0.9
    return out
