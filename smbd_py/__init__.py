"""smbd_py: an asyncio SMB2/3 file server whose oplocks and leases are backed by Linux kernel leases."""

__version__ = "0.1.0"
