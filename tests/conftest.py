"""Fixtures shared by the suite: a real smbd_py server over TCP on loopback."""
from __future__ import annotations

import os
import shutil

import pytest

from tests.peers.smbd_py_server import smbd_py_server


def require_tool(name: str) -> str:
    """Real peers are required: a missing one fails the test loudly, never skips it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; run the README's test command (scripts/test.sh) "
                    "which installs every peer the suite needs")
    return path


@pytest.fixture
def server(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    with smbd_py_server(str(share)) as srv:
        yield srv
        assert srv.alive(), "server died during the test:\n" + srv.log_tail()


@pytest.fixture(scope="module")
def module_server(tmp_path_factory):
    share = tmp_path_factory.mktemp("mshare")
    with smbd_py_server(str(share)) as srv:
        yield srv
        assert srv.alive(), "server died during the tests:\n" + srv.log_tail()
