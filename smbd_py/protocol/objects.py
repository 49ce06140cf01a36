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
    """One SMB2 open (MS-SMB2 3.3.1.10): an fd or a pipe, plus its sharing and caching state.

    The class attributes are every open's starting values; __init__ sets only what each
    open needs of its own (a CREATE sets the rest it knows): ~35 stores fewer per CREATE
    than a __slots__ class that must assign every field (bench/README.md, open+close)."""

    components: tuple[str, ...] = ()
    name = ""                 # the path as the client sees it, backslashes
    fd = -1
    fd_is_path = False        # fd is O_PATH (a stat open): its close never blocks
    lock_fd = -1
    lease_fd = -1
    is_dir = False
    pipe: Any = None
    granted_access = 0
    share_access = 0
    create_options = 0
    delete_on_close = False
    file_key: tuple[int, int] | None = None
    position = 0
    mode = 0
    dir_cursor: Any = None
    dir_pattern: str | None = None
    oplock_level = 0
    lease: Any = None
    closed = False
    create_guid = b""
    stat: Any = None
    durable = False
    # protocol.durable: seconds a disconnected durable open is kept, whether it is
    # disconnected now, and the name the CREATE asked for (a reconnect must match it).
    durable_timeout = 0.0
    disconnected = False
    request_name = ""
    app_instance_id = b""     # SMB2_CREATE_APP_INSTANCE_ID (3.x)
    ea_size = 0
    pending_times = None
    file: "FileState | None" = None
    notify: Any = None
    cache_id = 0              # this open's id in the oplock table (protocol.caching)
    resume_key = b""          # FSCTL_SRV_REQUEST_RESUME_KEY's key (protocol.copychunk)
    # A named-stream open (fs.streams): `fd`/`file` are the stream file's in the depot;
    # the stream's name as stored, an O_PATH fd on the base file (its times and
    # attributes are the stream's) and the base file's share components.
    stream: str | None = None
    base_fd = -1
    base_components: tuple[str, ...] = ()
    base_attributes: int | None = None    # the base file's stored DOS attributes

    def __init__(self, tree: TreeConnect, session: Session, conn: Any) -> None:
        vid = next(_file_ids)
        self.persistent_id = vid
        self.volatile_id = vid
        self.file_id = vid.to_bytes(8, "little") * 2
        self.tree = tree
        self.session = session
        self.conn = conn
        self.locks: list = []
        self.sticky_times: dict[str, int] = {}


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
