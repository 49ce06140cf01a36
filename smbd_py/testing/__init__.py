"""smbd_py as a scriptable server for client regression tests.

Run a real smbd_py inside the test process, on an ephemeral loopback port with a
temporary share, and drive it from the test: users, the current opens/oplocks/leases,
breaks on demand, injected faults (fail a request, delay or drop a response), the
break-ack timeout. README.md "Testing clients against smbd_py" is the reference.

    from smbd_py.testing import SmbdServer
    with SmbdServer(break_timeout=2) as srv:      # srv.host, srv.port, srv.share, srv.user
        ...                                       # point a client at srv.unc
        srv.break_file("f.txt", "R").result(10)   # or: await srv.break_file(...)

Pytest: the `smbd_server` fixture (smbd_py.testing.pytest_plugin, registered as a
pytest11 entry point) yields a started SmbdServer.
"""
from ..oplocks.types import (LEASE_H as H, LEASE_NONE as NONE, LEASE_R as R, LEASE_RH as RH,
                             LEASE_RW as RW, LEASE_RWH as RWH, LEASE_W as W,
                             OPLOCK_BATCH, OPLOCK_EXCLUSIVE, OPLOCK_II, OPLOCK_LEASE,
                             OPLOCK_NONE)
from ..protocol.faults import Fault
from ..wire.header import Command
from ..wire.status import NtStatus
from .breaks import BreakHandle, BreakOutcome, BrokenHolder
from .server import DEFAULT_PASSWORD, DEFAULT_USER, SmbdServer
from .snapshot import LeaseInfo, OpenInfo, OplockInfo, state_name

__all__ = [
    "SmbdServer", "BreakHandle", "BreakOutcome", "BrokenHolder", "OpenInfo", "OplockInfo",
    "LeaseInfo", "Fault", "NtStatus", "Command", "state_name", "DEFAULT_USER",
    "DEFAULT_PASSWORD", "NONE", "R", "W", "H", "RH", "RW", "RWH", "OPLOCK_NONE",
    "OPLOCK_II", "OPLOCK_EXCLUSIVE", "OPLOCK_BATCH", "OPLOCK_LEASE",
]
