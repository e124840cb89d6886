"""The `--device` choice every command shares: auto, cpu, cuda or mps, checked before any model loads; and the
arithmetic a model runs in whatever `torch.autocast` its caller entered (`without_caller_autocast`)."""

from __future__ import annotations

import contextlib
import functools

DEVICES = ("auto", "cpu", "cuda", "mps")
# the device types a caller's torch.autocast can be on for (torch lists none)
AUTOCAST_TYPES = ("cpu", "cuda", "mps", "xpu", "hpu", "mtia", "maia", "xla", "ipu")


def pick_device(name: str, flag: str = "--device") -> str:
    """The torch device for `name`; "auto" takes CUDA, then Apple's MPS, then the CPU. A device this machine
    lacks is a ValueError naming the flag."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if name not in DEVICES:
        raise ValueError(f"{flag} {name}: expected one of {', '.join(DEVICES)}")
    why = unavailable(torch.device(name))
    if why:
        raise ValueError(f"{flag} {name}: {why}")
    return name


def torch_device(device):
    """`device` (a torch.device or its name: "cpu", "cuda:1", "meta") as a torch.device, or a ValueError naming it:
    a dtype, a name torch does not know (torch lists every device type it has), or a CUDA / MPS device this
    machine lacks (torch's "Torch not compiled with CUDA enabled" is an AssertionError, raised once a model has
    loaded)."""
    import torch

    if isinstance(device, torch.dtype):
        raise ValueError(f"device={device}: expected a device, got a dtype")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r}: expected a torch device or its name, e.g. 'cpu', 'cuda', 'cuda:1', "
                         "'mps'") from None
    why = unavailable(dev)
    if why:
        raise ValueError(f"device={device!r}: {why}")
    return dev


def unavailable(device) -> str | None:
    """Why the torch.device `device` cannot be used on this machine (a CUDA or MPS device it lacks), or None."""
    import torch

    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA device is available"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"this machine has {torch.cuda.device_count()} CUDA device(s)"
    if device.type == "mps" and not _mps_available():
        return "MPS is not available"
    return None


def _mps_available() -> bool:
    import torch

    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


@contextlib.contextmanager
def caller_autocast_off():
    """A block run with every torch.autocast its caller has on switched off, on each device type; nothing changes
    when none is on. A model whose arithmetic is its own setting (a pipeline's precision=, which turns autocast on
    for its UNet itself; a CLAP's float32 embeddings, which its identity names) runs as set and recorded, not as
    an autocast around the call would round it (bfloat16 text embeddings, VAE and vocoder in a float32 call)."""
    import torch

    with contextlib.ExitStack() as stack:
        for kind in AUTOCAST_TYPES:
            if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
                stack.enter_context(torch.autocast(kind, enabled=False))
        yield


def without_caller_autocast(fn):
    """`fn` run under caller_autocast_off."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with caller_autocast_off():
            return fn(*args, **kwargs)

    return run
