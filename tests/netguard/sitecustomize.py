"""Loaded by subprocesses the tests start (PYTHONPATH): records every attempt to reach a
non-loopback address, so that a test can assert that nothing went to the network."""

import os
import socket

_LOG = os.environ.get("DAT_EXP_NETGUARD_LOG")
_LOOPBACK = ("127.", "::1", "localhost", "0.0.0.0")


def _record(what: str) -> None:
    if _LOG:
        with open(_LOG, "a") as f:
            f.write(what + "\n")


def _own_addresses() -> set[str]:
    """This machine's interface addresses: Ray binds to one (it refuses loopback), and
    reaching it is no more network than loopback is."""
    try:
        import psutil
    except ImportError:
        return set()
    return {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}


_OWN = _own_addresses()


def _is_local(host) -> bool:
    return host is None or str(host).startswith(_LOOPBACK) or str(host) in _OWN


_getaddrinfo = socket.getaddrinfo
_connect = socket.socket.connect


def guarded_getaddrinfo(host, *args, **kwargs):
    if not _is_local(host):
        _record(f"dns {host}")
        raise OSError(f"network disabled in tests: lookup of {host}")
    return _getaddrinfo(host, *args, **kwargs)


def guarded_connect(self, address):
    host = address[0] if isinstance(address, tuple) else None
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(host):
        _record(f"connect {address}")
        raise OSError(f"network disabled in tests: connect to {address}")
    return _connect(self, address)


socket.getaddrinfo = guarded_getaddrinfo
socket.socket.connect = guarded_connect
