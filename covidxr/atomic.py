"""Files written whole or not at all: the run records of the cluster runs, the cached ONNX graphs, site profiles.

A reader (another thread, another process, the app after a power cut) sees the old file or the new one, never a
half-written one: the bytes go to a temporary file beside the target, are flushed to the disk (fsync), renamed over
the target (atomic on POSIX within one file system), and the folder itself is flushed so that the rename survives a
crash. A failure leaves the target as it was and no temporary file behind.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename, a new file) to the disk."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes | str, encoding: str = "utf-8") -> Path:
    """Replace `path` with `data` (text is encoded with `encoding`) in one step; returns the path. OSError as the
    file system gives it (the target untouched)."""
    path = Path(path)
    raw = data.encode(encoding) if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)
    return path
