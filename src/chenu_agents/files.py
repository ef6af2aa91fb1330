"""Files written whole or not at all."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

_CHUNK = 1 << 20


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Write via a temp file in the same directory, created with its final mode, then rename over."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600, so a private file is never readable by others; widen only if asked.
        if mode != 0o600:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dirfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)


def write_if_changed(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> bool:
    """atomic_write, unless the file already holds exactly these bytes."""
    path = Path(path)
    if path.is_file() and not path.is_symlink() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    atomic_write(path, data, mode)
    return True


def canonical_json(obj: object) -> bytes:
    """The one canonical JSON encoding: sorted keys, no whitespace. What is hashed or signed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def file_digests(path: str | os.PathLike[str], algorithms: tuple[str, ...] = ("sha256",)) -> tuple[int, dict[str, str]]:
    """Size and hex digests of a file in one read, 1 MiB at a time into one reused buffer.

    md5 is allowed for what it is here (an S3 ETag to compare with), never for trust.
    """
    hashes = {name: hashlib.new(name, usedforsecurity=name != "md5") for name in algorithms}
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    size = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            size += n
            for h in hashes.values():
                h.update(view[:n])
    return size, {name: h.hexdigest() for name, h in hashes.items()}
