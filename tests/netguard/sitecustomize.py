"""Loaded by every Python process the test suite starts (tests/conftest.py puts this folder on PYTHONPATH), so
a child process (torchrun workers, bench scripts, `python -m tta`) is held offline as the test process is:
connections and name lookups are refused unless they stay on this machine (the loopback, its own host names
and addresses, which torchrun's rendezvous uses)."""

import ipaddress
import socket

_real_connect = socket.socket.connect
_real_getaddrinfo = socket.getaddrinfo


def _own_names() -> set:
    names = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", socket.gethostname()}
    try:
        names.add(socket.getfqdn())
    except OSError:
        pass
    addresses = set()
    for name in list(names):
        try:
            addresses |= {info[4][0] for info in _real_getaddrinfo(name, None)}
        except OSError:
            pass
    return names | addresses


_OWN = _own_names()


def _local(host) -> bool:
    if host is None or host == "" or host in _OWN:
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
        raise OSError(f"network access is refused in tta's tests (connect to {address[0]})")
    return _real_connect(self, address)


def _getaddrinfo(host, *args, **kwargs):
    if not _local(host.decode() if isinstance(host, bytes) else host):
        raise socket.gaierror(f"network access is refused in tta's tests (lookup of {host})")
    return _real_getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _connect
socket.getaddrinfo = _getaddrinfo
