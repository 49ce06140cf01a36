"""The server's per-connection, per-session and per-open objects (MS-SMB2 3.3.1).

Plain data holders; the command handlers own the behaviour.
"""
from __future__ import annotations

import itertools
from typing import Any

_file_ids = itertools.count(1)


class Share:
    """A configured share, with its directory fd (fs.paths.ShareRoot) opened once."""

    __slots__ = ("name", "path", "root", "read_only", "guest_ok", "valid_users", "is_ipc",
                 "kernel_leases", "comment")

    def __init__(self, name: str, path: str | None, root: Any, *, read_only: bool = False,
                 guest_ok: bool = False, valid_users: list[str] | None = None,
                 is_ipc: bool = False, kernel_leases: bool = True, comment: str = "") -> None:
        self.name = name
        self.path = path
        self.root = root
        self.read_only = read_only
        self.guest_ok = guest_ok
        self.valid_users = valid_users
        self.is_ipc = is_ipc
        self.kernel_leases = kernel_leases
        self.comment = comment


class TreeConnect:
    __slots__ = ("tree_id", "share", "session", "maximal_access")

    def __init__(self, tree_id: int, share: Share, session: "Session", maximal_access: int) -> None:
        self.tree_id = tree_id
        self.share = share
        self.session = session
        self.maximal_access = maximal_access


class Channel:
    """One connection a session is usable on (MS-SMB2 3.3.1.14 Channel). A bound channel
    (multichannel session binding) has its own signing key; while its binding is being
    authenticated it has no signer yet, its own SPNEGO state and (3.1.1) its own preauth
    hash (Connection.PreauthSessionTable)."""

    __slots__ = ("conn", "signer", "auth", "preauth_hash")

    def __init__(self, conn: Any, signer: Any = None) -> None:
        self.conn = conn
        self.signer = signer           # None while a binding is in progress
        self.auth: Any = None          # security.spnego.SessionAuth of a binding in progress
        self.preauth_hash: bytes | None = None


class Session:
    __slots__ = ("session_id", "conn", "state", "auth", "user", "domain", "anonymous", "guest",
                 "session_key", "signer", "signing_required", "preauth_hash", "trees",
                 "next_tree_id", "encrypt_key", "decrypt_key", "application_key", "opens",
                 "encrypt_data", "encryptor", "decryptor", "channels", "dialect", "cipher_id",
                 "signing_algorithm")

    def __init__(self, session_id: int, conn: Any) -> None:
        self.session_id = session_id
        self.conn = conn
        self.state = "in_progress"   # "in_progress" -> "valid" | "expired"
        self.auth: Any = None          # security.spnego.SessionAuth while in progress
        self.user = ""
        self.domain = ""
        self.anonymous = False
        self.guest = False
        self.session_key = b""
        self.signer: Any = None        # security.signing.Signer once keys exist
        self.signing_required = False
        self.preauth_hash: bytes | None = None
        self.trees: dict[int, TreeConnect] = {}
        self.next_tree_id = 1
        self.encrypt_key = b""
        self.decrypt_key = b""
        self.application_key = b""
        self.encrypt_data = False
        self.encryptor: Any = None     # security.encryption.Encryptor (3.x, cipher negotiated)
        self.decryptor: Any = None     # security.encryption.Decryptor
        self.opens: dict[int, "Open"] = {}
        # Connections the session is usable on, by connection (the first one included
        # once the session is valid); Session.Connection stays `conn`.
        self.channels: dict[Any, Channel] = {}
        # What the first channel negotiated: a binding must match it (MS-SMB2 3.3.5.5).
        self.dialect = 0
        self.cipher_id = 0
        self.signing_algorithm = 0     # 0 HMAC-SHA256, 1 AES-CMAC, 2 AES-GMAC

    def signer_for(self, conn: Any) -> Any:
        """The key that signs on `conn`: the channel's own once bound, otherwise the
        session's (Session.SigningKey signs a binding in progress: MS-SMB2 3.3.5.2.4)."""
        ch = self.channels.get(conn)
        if ch is not None and ch.signer is not None:
            return ch.signer
        return self.signer


class Open:
    """One SMB2 open (MS-SMB2 3.3.1.10): an fd or a pipe, plus its sharing and caching state."""

    __slots__ = ("persistent_id", "volatile_id", "file_id", "tree", "session", "conn",
                 "components", "fd", "is_dir", "pipe", "granted_access", "share_access",
                 "create_options", "delete_on_close", "file_key", "position", "mode",
                 "dir_cursor", "dir_pattern", "oplock_level", "lease", "closed",
                 "create_guid", "locks", "stat", "name", "lock_fd", "durable", "ea_size",
                 "pending_times", "lease_fd", "sticky_times", "file",
                 "notify", "cache_id", "stream", "base_fd", "base_components",
                 "base_attributes", "durable_timeout", "disconnected", "request_name",
                 "app_instance_id", "fd_is_path")

    def __init__(self, tree: TreeConnect, session: Session, conn: Any) -> None:
        vid = next(_file_ids)
        self.persistent_id = vid
        self.volatile_id = vid
        self.file_id = vid.to_bytes(8, "little") * 2
        self.tree = tree
        self.session = session
        self.conn = conn
        self.components: tuple[str, ...] = ()
        self.name = ""                 # the path as the client sees it, backslashes
        self.fd = -1
        self.fd_is_path = False        # fd is O_PATH (a stat open): its close never blocks
        self.lock_fd = -1
        self.lease_fd = -1
        self.is_dir = False
        self.pipe: Any = None
        self.granted_access = 0
        self.share_access = 0
        self.create_options = 0
        self.delete_on_close = False
        self.file_key: tuple[int, int] | None = None
        self.position = 0
        self.mode = 0
        self.dir_cursor: Any = None
        self.dir_pattern: str | None = None
        self.oplock_level = 0
        self.lease: Any = None
        self.closed = False
        self.create_guid = b""
        self.locks: list = []
        self.stat: Any = None
        self.durable = False
        # protocol.durable: seconds a disconnected durable open is kept, whether it is
        # disconnected now, and the name the CREATE asked for (a reconnect must match it).
        self.durable_timeout = 0.0
        self.disconnected = False
        self.request_name = ""
        self.app_instance_id = b""     # SMB2_CREATE_APP_INSTANCE_ID (3.x)
        self.ea_size = 0
        self.sticky_times: dict[str, int] = {}
        self.pending_times = None
        self.file: "FileState | None" = None
        self.notify: Any = None
        self.cache_id = 0              # this open's id in the oplock table (protocol.caching)
        # A named-stream open (fs.streams): `fd`/`file` are the stream file's in the depot;
        # the stream's name as stored, an O_PATH fd on the base file (its times and
        # attributes are the stream's) and the base file's share components.
        self.stream: str | None = None
        self.base_fd = -1
        self.base_components: tuple[str, ...] = ()
        self.base_attributes: int | None = None    # the base file's stored DOS attributes


class FileState:
    """What the server knows about one inode across all its opens (MS-FSA's File):
    the opens themselves, a pending delete, byte-range locks, and the current name."""

    __slots__ = ("key", "opens", "delete_pending", "components", "locks", "lock_waiters",
                 "is_dir", "share", "attributes")

    def __init__(self, key: tuple[int, int], components: tuple[str, ...], is_dir: bool, share: Any) -> None:
        self.key = key
        self.opens: list[Open] = []
        self.delete_pending = False
        self.components = components
        self.locks: list = []           # protocol.lock.ByteRangeLock
        self.lock_waiters: list = []    # futures woken when locks are released
        self.is_dir = is_dir
        self.share = share
        self.attributes: int | None = None   # DOS attributes kept beside the mode bits
