"""8.3 short names (FileAlternateNameInformation, FileBothDirectoryInformation): a name that
already fits 8.3 is its own short name; others get a stable hashed name in the style of
Samba's "mangled names" (PREFIX~HH.EXT), so clients that ask (smbclient's allinfo, old
Windows programs) get an answer."""
from __future__ import annotations

import zlib

_VALID = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'()-@^_`{}~")
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def is_8_3(name: str) -> bool:
    if name in (".", ".."):
        return True
    base, dot, ext = name.rpartition(".") if "." in name else (name, "", "")
    if not base or len(base) > 8 or len(ext) > 3 or (dot and not ext):
        return False
    return all(c in _VALID for c in (base + ext).upper()) and name == name.upper()


def short_name(name: str) -> str:
    if is_8_3(name):
        return name
    base, _, ext = name.rpartition(".") if "." in name.lstrip(".") else (name, "", "")
    clean = [c for c in base.upper() if c in _VALID and c != "~"][:5] or ["_"]
    h = zlib.crc32(name.encode("utf-8", "surrogatepass"))
    tag = _ALPHABET[h % 36] + _ALPHABET[(h // 36) % 36]
    cext = "".join(c for c in ext.upper() if c in _VALID)[:3]
    return "".join(clean) + "~" + tag + ("." + cext if cext else "")
