"""Keeps the test process off the network: only loopback and this host's own addresses are reachable.

Installed by tests/conftest.py for the whole session. A blocked attempt raises OSError where it
happens and is recorded, because libraries often swallow the error (pydicom turns a failed download
into a warning); the conftest fixture fails the test that made it. Processes the tests start (Dask
workers, the Prefect server, SeaweedFS) are not covered; they are given loopback addresses.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

ATTEMPTS: list[str] = []
_LOCAL_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}
_own: set[str] = set()
_real: dict[str, object] = {}


def _is_local(host) -> bool:
    if host in (None, "", b""):
        return True
    if isinstance(host, bytes):
        host = host.decode()
    host = str(host).strip("[]").split("%")[0].lower()
    if host in _LOCAL_NAMES or host.endswith(".localhost") or host in _own:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def _blocked(what: str) -> OSError:
    ATTEMPTS.append(what)
    return OSError(errno.ENETUNREACH, f"tests must not reach the network ({what}); see tests/netguard.py")


def _getaddrinfo(host, *args, **kwargs):
    if not _is_local(host):
        raise socket.gaierror(socket.EAI_NONAME, str(_blocked(f"getaddrinfo {host!r}")))
    return _real["getaddrinfo"](host, *args, **kwargs)


def _address_ok(sock: socket.socket, address) -> bool:
    return sock.family not in (socket.AF_INET, socket.AF_INET6) or _is_local(address[0])


def _connect(self, address):
    if not _address_ok(self, address):
        raise _blocked(f"connect {address!r}")
    return _real["connect"](self, address)


def _connect_ex(self, address):
    if not _address_ok(self, address):
        _blocked(f"connect_ex {address!r}")
        return errno.ENETUNREACH
    return _real["connect_ex"](self, address)


def install() -> None:
    """Patch socket's name lookup and connects (idempotent)."""
    if _real:
        return
    _real.update(getaddrinfo=socket.getaddrinfo, connect=socket.socket.connect, connect_ex=socket.socket.connect_ex)
    # this host's own names and addresses are as local as loopback (a scheduler may advertise them)
    for name in {socket.gethostname(), socket.getfqdn()}:
        _own.add(name.lower())
        try:
            _own.update(info[4][0] for info in socket.getaddrinfo(name, None))
        except OSError:
            pass
    socket.getaddrinfo = _getaddrinfo
    socket.socket.connect = _connect
    socket.socket.connect_ex = _connect_ex
