"""Injected faults: a plan of requests to fail and responses to delay or drop.

Owns the fault rules and the decision of which rule a request meets. A server that
runs with no plan pays one attribute test per request (ServerContext.faults is None);
with a plan, the connection asks ``FaultPlan.wrap(req, handler)`` for the handler to
run, and the wrapper does the rest:

* fail: the request is not handled; it is answered with the rule's NTSTATUS (after the
  session, signing and tree checks, so the error response is signed as usual);
* delay: the request is handled, its response (success or error) goes out N seconds
  later; other requests on the connection carry on meanwhile;
* drop: the request is handled and its response is never sent (the client's request
  times out; the connection stays up).

Rules are consumed in the order they were added, each for `count` matching requests
(None: every one). The plan is touched only on the server's event loop thread
(smbd_py.testing marshals its calls there), so it needs no lock.
"""
from __future__ import annotations

import asyncio
import struct
from typing import Any, Awaitable, Callable

from ..wire.header import Command
from ..wire.status import NtStatus, SmbError

Handler = Callable[[Any], Awaitable[Any]]

# MS-SMB2 2.2.13 CREATE request: NameOffset (from the start of the header) and
# NameLength sit at body offset 44.
_CREATE_NAME = struct.Struct("<HH")
_CREATE_NAME_AT = 44

FAIL = "fail"
DELAY = "delay"
DROP = "drop"
_KINDS = (FAIL, DELAY, DROP)


def command_of(value: Any) -> Command:
    """A Command from a Command, its value, or its name ("CREATE", "create")."""
    if isinstance(value, str):
        try:
            return Command[value.upper()]
        except KeyError:
            raise ValueError(f"unknown SMB2 command {value!r}") from None
    return Command(int(value))


def status_of(value: Any) -> int:
    """An NTSTATUS from an NtStatus, an int, or a name ("ACCESS_DENIED",
    "STATUS_ACCESS_DENIED")."""
    if isinstance(value, str):
        name = value.upper()
        if name.startswith("STATUS_"):
            name = name[7:]
        try:
            return NtStatus[name]
        except KeyError:
            raise ValueError(f"unknown NTSTATUS name {value!r}") from None
    status = int(value)
    if not 0 <= status <= 0xFFFFFFFF:
        raise ValueError(f"NTSTATUS out of range: {status:#x}")
    return status


def normalize_path(path: str) -> str:
    """The form paths are compared in: backslashes, no leading or trailing separator,
    case-folded (share paths match case-insensitively, as on Windows)."""
    return path.replace("/", "\\").strip("\\").casefold()


def create_name(req: Any) -> str | None:
    """The path a CREATE request names (share-relative, as the client sent it), or None
    when the body is too short to say."""
    body = req.body
    if len(body) < _CREATE_NAME_AT + _CREATE_NAME.size:
        return None
    off, length = _CREATE_NAME.unpack_from(body, _CREATE_NAME_AT)
    if not length:
        return ""
    raw = req.raw
    if off + length > len(raw):
        return None
    return bytes(raw[off:off + length]).decode("utf-16-le", "replace")


class Fault:
    """One rule. `hits` counts the requests it has acted on; `remaining` is how many it
    will still act on (None: unlimited)."""

    __slots__ = ("kind", "command", "remaining", "status", "seconds", "path", "hits")

    def __init__(self, kind: str, command: Any, *, count: int | None = 1,
                 status: Any = NtStatus.UNSUCCESSFUL, seconds: float = 0.0,
                 path: str | None = None) -> None:
        if kind not in _KINDS:
            raise ValueError(f"fault kind must be one of {_KINDS}, not {kind!r}")
        if count is not None and count < 1:
            raise ValueError("count must be at least 1 (or None for every request)")
        if seconds < 0:
            raise ValueError("delay must not be negative")
        self.kind = kind
        self.command = command_of(command)
        if path is not None and self.command != Command.CREATE:
            raise ValueError("a path filter applies to CREATE only")
        self.remaining = count
        self.status = status_of(status)
        self.seconds = float(seconds)
        self.path = normalize_path(path) if path is not None else None
        self.hits = 0

    @property
    def spent(self) -> bool:
        return self.remaining is not None and self.remaining <= 0

    def matches(self, req: Any) -> bool:
        if self.spent or req.hdr.command != self.command:
            return False
        if self.path is not None:
            name = create_name(req)
            return name is not None and normalize_path(name) == self.path
        return True

    def take(self) -> None:
        self.hits += 1
        if self.remaining is not None:
            self.remaining -= 1

    def __repr__(self) -> str:
        what = {FAIL: f"status={self.status:#010x}", DELAY: f"seconds={self.seconds}",
                DROP: ""}[self.kind]
        return (f"Fault({self.kind} {self.command.name} {what} path={self.path!r} "
                f"remaining={self.remaining} hits={self.hits})")


class FaultPlan:
    """The rules in force on one server (ServerContext.faults)."""

    def __init__(self) -> None:
        self.rules: list[Fault] = []

    def add(self, fault: Fault) -> Fault:
        self.rules.append(fault)
        return fault

    def fail_next(self, status: Any, command: Any = Command.CREATE, *, path: str | None = None,
                  count: int | None = 1) -> Fault:
        return self.add(Fault(FAIL, command, count=count, status=status, path=path))

    def delay(self, command: Any, seconds: float, *, count: int | None = 1,
              path: str | None = None) -> Fault:
        return self.add(Fault(DELAY, command, count=count, seconds=seconds, path=path))

    def drop_next(self, command: Any, *, count: int | None = 1, path: str | None = None) -> Fault:
        return self.add(Fault(DROP, command, count=count, path=path))

    def clear(self) -> None:
        self.rules.clear()

    def remove(self, fault: Fault) -> None:
        try:
            self.rules.remove(fault)
        except ValueError:
            pass

    def match(self, req: Any) -> tuple[Fault | None, Fault | None, Fault | None]:
        """The first live rule of each kind this request meets (fail, delay, drop);
        each returned rule is consumed once. Spent rules are forgotten."""
        found: dict[str, Fault] = {}
        for f in self.rules:
            if f.kind not in found and f.matches(req):
                found[f.kind] = f
        for f in found.values():
            f.take()
        if any(f.spent for f in self.rules):
            self.rules = [f for f in self.rules if not f.spent]
        return found.get(FAIL), found.get(DELAY), found.get(DROP)

    def wrap(self, req: Any, handler: Handler) -> Handler:
        """The handler to run for `req`: `handler` itself when no rule applies."""
        if not self.rules:
            return handler
        fail, delay, drop = self.match(req)
        if fail is None and delay is None and drop is None:
            return handler
        seconds = delay.seconds if delay is not None else 0.0
        dropping = drop is not None

        async def faulty(r: Any) -> Any:
            try:
                if fail is not None:
                    raise SmbError(fail.status, "injected fault")
                body = await handler(r)
            except SmbError:
                if seconds:
                    await asyncio.sleep(seconds)
                if dropping:
                    return None
                raise
            if seconds:
                await asyncio.sleep(seconds)
            # None makes the connection send nothing for this request (as for CANCEL).
            return None if dropping else body
        return faulty
