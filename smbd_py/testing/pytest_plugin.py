"""pytest plugin (entry point pytest11 "smbd_py"): fixtures that run smbd_py in the test
process.

* ``smbd_server``: a started SmbdServer with a temporary share and one user, stopped
  after the test; the test fails if the server logged an internal error. Settings come
  from the ``smbd_server`` marker: ``@pytest.mark.smbd_server(break_timeout=1,
  kernel_leases=False)`` (any SmbdServer keyword argument).
* ``smbd_server_factory``: ``factory(**kwargs) -> SmbdServer`` (started), for tests that
  want several servers or settings chosen inside the test; all are stopped afterwards.

Imports of the server happen inside the fixtures, so loading the plugin costs nothing
in test runs that do not use it.
"""
from __future__ import annotations

import pytest


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "smbd_server(**kwargs): SmbdServer settings for the smbd_server fixture")


def _check(srv) -> None:
    errors = srv.internal_errors()
    if errors:
        pytest.fail("smbd_py logged internal errors:\n" + "\n".join(errors[-5:]) +
                    "\n--- log tail ---\n" + srv.log_tail(), pytrace=False)


@pytest.fixture
def smbd_server_factory(tmp_path_factory):
    from smbd_py.testing.server import SmbdServer
    started = []

    def factory(**kwargs) -> SmbdServer:
        if "share_path" not in kwargs:
            kwargs["share_path"] = str(tmp_path_factory.mktemp("smbd_share"))
        kwargs.setdefault("log_level", "debug")
        srv = SmbdServer(**kwargs).start()
        started.append(srv)
        return srv
    yield factory
    try:
        for srv in started:
            _check(srv)
    finally:
        for srv in reversed(started):
            srv.stop()


@pytest.fixture
def smbd_server(request, smbd_server_factory):
    marker = request.node.get_closest_marker("smbd_server")
    kwargs = dict(marker.kwargs) if marker is not None else {}
    return smbd_server_factory(**kwargs)
