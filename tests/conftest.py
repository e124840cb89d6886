"""Test-suite guards: no network, no hub, seeded, small thread count, --runslow for real-size checks."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the processes the tests start load tests/netguard/sitecustomize.py: they are held offline too
_GUARD = str(Path(__file__).resolve().parent / "netguard")
os.environ["PYTHONPATH"] = os.pathsep.join([_GUARD, *filter(None, [os.environ.get("PYTHONPATH")])])


class NetworkRefused(OSError):
    pass


def _refuse(*args, **kwargs):
    raise NetworkRefused("network access is refused in tta's tests")


_real_connect = socket.socket.connect


def _guarded_connect(self, address):
    # Unix sockets (used by some local IPC) stay allowed; every inet connect is refused.
    if self.family == getattr(socket, "AF_UNIX", None):
        return _real_connect(self, address)
    _refuse()


socket.socket.connect = _guarded_connect
socket.socket.connect_ex = lambda self, address: _refuse()
socket.create_connection = _refuse
_real_getaddrinfo = socket.getaddrinfo
socket.getaddrinfo = lambda host, *a, **k: (_real_getaddrinfo(host, *a, **k) if host in (None, "", "localhost")
                                            else _refuse())


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _one_blas_thread() -> None:
    """numpy's BLAS (OpenBLAS) in one thread too, as torch is below: it takes one per core otherwise, and a 512-d
    Frechet distance took 2.8 s on 2 threads against 0.2 s on one with the suite's other work beside it."""
    try:
        import numpy  # noqa: F401  (its BLAS must be loaded for the limit to reach it)
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(1, user_api="blas")


_one_blas_thread()


@pytest.fixture(autouse=True)
def _seed_and_threads():
    import random

    import numpy as np
    import torch

    torch.set_num_threads(1)  # 2 threads on a 2-core box with anything else running is ~10x slower per step
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    yield


@pytest.fixture
def repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parents[1]
