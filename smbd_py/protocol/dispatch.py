"""The command table: SMB2 command code -> async handler(request) -> response body."""
from __future__ import annotations

from ..wire.header import Command
from . import create, info, io, ioctl, lock, negotiate, notify, oplock_break, querydir, session, tree


HANDLERS = {
    Command.NEGOTIATE: negotiate.handle_negotiate,
    Command.SESSION_SETUP: session.handle_session_setup,
    Command.LOGOFF: session.handle_logoff,
    Command.TREE_CONNECT: tree.handle_tree_connect,
    Command.TREE_DISCONNECT: tree.handle_tree_disconnect,
    Command.CREATE: create.handle_create,
    Command.CLOSE: create.handle_close,
    Command.FLUSH: io.handle_flush,
    Command.READ: io.handle_read,
    Command.WRITE: io.handle_write,
    Command.LOCK: lock.handle_lock,
    Command.IOCTL: ioctl.handle_ioctl,
    Command.ECHO: tree.handle_echo,
    Command.QUERY_DIRECTORY: querydir.handle_query_directory,
    Command.CHANGE_NOTIFY: notify.handle_change_notify,
    Command.QUERY_INFO: info.handle_query_info,
    Command.SET_INFO: info.handle_set_info,
    Command.OPLOCK_BREAK: oplock_break.handle_oplock_break,
}
