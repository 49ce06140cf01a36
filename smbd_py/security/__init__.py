"""Security: users file, NTLMSSP/SPNEGO acceptor, SMB2/3 signing, key derivation, encryption.

Pure functions and small classes over bytes and keys; no sockets, no asyncio.
The names below are the API the protocol layer uses; the submodules hold the rest.
"""

from smbd_py.security.encryption import DecryptError, Decryptor, Encryptor
from smbd_py.security.kdf import SessionKeys, derive_keys
from smbd_py.security.ntlm import AuthResult, InvalidToken, LogonFailure, NtlmAcceptor
from smbd_py.security.preauth import preauth_update
from smbd_py.security.signing import Signer, signing_algorithm_for
from smbd_py.security.spnego import SessionAuth, negotiate_token
from smbd_py.security.users import UserDb, UserDbError

__all__ = ["AuthResult", "DecryptError", "Decryptor", "Encryptor", "InvalidToken",
           "LogonFailure", "NtlmAcceptor", "SessionAuth", "SessionKeys", "Signer", "UserDb",
           "UserDbError", "derive_keys", "negotiate_token", "preauth_update",
           "signing_algorithm_for"]
