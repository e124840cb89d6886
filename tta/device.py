"""The `--device` choice every command shares: auto, cpu, cuda or mps, checked before any model loads."""

from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda", "mps")


def pick_device(name: str, flag: str = "--device") -> str:
    """The torch device for `name`; "auto" takes CUDA, then Apple's MPS, then the CPU. A device this machine
    lacks is a ValueError naming the flag."""
    import torch

    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    if name not in DEVICES:
        raise ValueError(f"{flag} {name}: expected one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{flag} cuda: no CUDA device is available")
    if name == "mps" and not mps:
        raise ValueError(f"{flag} mps: MPS is not available")
    return name
