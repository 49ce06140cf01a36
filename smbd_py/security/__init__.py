"""Security: users file, NTLMSSP/SPNEGO acceptor, SMB2/3 signing, key derivation, encryption.

Pure functions and small classes over bytes and keys; no sockets, no asyncio.
"""
