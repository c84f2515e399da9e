"""The test session cannot reach the network (tests/netguard.py), and pydicom's data lookups stay on disk."""

from __future__ import annotations

import socket

import pytest

from tests import netguard


def test_a_connection_to_the_internet_is_blocked_and_recorded():
    start = len(netguard.ATTEMPTS)
    with pytest.raises(OSError, match="must not reach the network"):
        socket.create_connection(("pypi.org", 443), timeout=1)
    with socket.socket() as s, pytest.raises(OSError, match="must not reach the network"):
        s.connect(("93.184.216.34", 80))
    assert len(netguard.ATTEMPTS) == start + 2
    del netguard.ATTEMPTS[start:]  # recorded on purpose; the autouse fixture would fail this test


def test_loopback_stays_reachable():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(("localhost", server.getsockname()[1]), timeout=2):
            pass


def test_pydicom_test_files_come_from_disk():
    # pydicom-data ships the radiographs the demo and tests use; with download=False a miss is None,
    # and a lookup that wanted the network would be recorded by the guard and fail this test
    from pydicom.data import get_testdata_file

    for name in ("RG1_UNCR.dcm", "RG3_UNCR.dcm", "RG1_J2KR.dcm", "JPEG2000.dcm"):
        assert get_testdata_file(name, download=False), name
