"""Crash-safe file primitives: atomic writes, temp-file cleanup, the data-dir lock.

A file is either absent or complete: it is written to a temporary name in the same
directory, flushed and fsynced, renamed over the final name with ``os.replace`` (atomic
on POSIX within one filesystem), and then the directory is fsynced so the rename itself
survives a power cut. Any failure removes the temporary file before raising.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import secrets
from pathlib import Path
from typing import IO

from .errors import StoreError

logger = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
# Exactly what temp_path() makes, so start-up cleanup never touches a user's own files.
_TEMP_NAME = re.compile(r"\..+\.[0-9]+\.[0-9a-f]{8}\.tmp")
LOCK_NAME = "LOCK"
# Written in slices so a huge state never needs one giant syscall, and so tests can
# inject a short write followed by ENOSPC, the way a real full disk behaves.
_CHUNK = 16 << 20


def io_error(action: str, path: Path, err: OSError) -> StoreError:
    """A :class:`StoreError` for a failed file operation, with a fix matched to the errno."""
    reason = err.strerror or str(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = ("free disk space on that filesystem, or lower how many versions the peer "
               "keeps, then restart the peer")
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make the directory writable by this user, or pass another --data-dir"
    elif err.errno == errno.ENOENT:
        fix = "check that the directory exists and was not removed while the peer ran"
    else:
        fix = "check the disk and the data directory, then retry"
    code = errno.errorcode.get(err.errno, "") if err.errno is not None else ""
    detail = f"{code}: {reason}" if code else reason
    return StoreError(f"could not {action} {path} ({detail}); {fix}")


def is_temp_name(name: str) -> bool:
    """True for names made by :func:`temp_path` (``.<name>.<pid>.<8 hex>.tmp``)."""
    return _TEMP_NAME.fullmatch(name) is not None


def temp_path(final: Path) -> Path:
    """A fresh temporary name beside ``final`` (same directory, so the rename is atomic)."""
    return final.with_name(f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def _write_chunk(fd: int, view: memoryview) -> int:
    return os.write(fd, view)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = _write_chunk(fd, view[:_CHUNK])
        view = view[written:]


def fsync_dir(directory: Path) -> None:
    """fsync a directory so renames and unlinks in it survive a crash; raises StoreError."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError as err:
        raise io_error("open directory", directory, err) from err
    try:
        os.fsync(fd)
    except OSError as err:
        # Some filesystems (certain network and FUSE mounts) cannot fsync a directory
        # and say so with EINVAL/ENOTSUP; the rename is then as durable as that
        # filesystem allows, and failing the write would only hide a complete file.
        if err.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise io_error("sync directory", directory, err) from err
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    Raises :class:`StoreError` naming ``path`` on any OS error; the temporary file is
    removed first and any previous ``path`` is left untouched.
    """
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as err:
        _discard(tmp, err)
        raise io_error("write", path, err) from err


def _discard(tmp: Path, cause: OSError) -> None:
    """Remove a temp file after a failed write; a failure to remove is noted on the cause."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError as unlink_err:
        # The original error is the one to report; this one must not replace it, but it
        # must not vanish either: the next start removes the leftover.
        cause.add_note(f"also could not remove temporary file {tmp}: {unlink_err}")


def remove_temp_files(directory: Path) -> list[Path]:
    """Delete leftover temporary files (from a crash mid-write) in ``directory``."""
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        if is_temp_name(entry.name) and entry.is_file():
            try:
                entry.unlink()
            except FileNotFoundError:
                continue
            except OSError as err:
                raise io_error("remove leftover temporary file", entry, err) from err
            removed.append(entry)
    if removed:
        fsync_dir(directory)
    return removed


class DirLock:
    """An exclusive ``flock`` on ``<dir>/LOCK``: one writing peer per data directory.

    Two peers writing one store would delete each other's temp files during recovery
    and race on HEAD. The lock is released when :meth:`release` is called or the
    process exits (the kernel drops flocks of a dead process, so no stale locks).
    """

    def __init__(self, directory: Path) -> None:
        path = directory / LOCK_NAME
        try:
            handle: IO[str] = open(path, "a+", encoding="utf-8")
        except OSError as err:
            raise io_error("open lock file", path, err) from err
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise StoreError(
                f"{directory} is in use by another swarmtrain peer (pid {holder}); stop "
                "that peer or pass a different --data-dir (read-only commands such as "
                "`swarmtrain log` and `export` can run beside it)"
            ) from None
        except OSError as err:
            handle.close()
            raise io_error("lock", path, err) from err
        # The pid is only a hint for the message above; the flock is the lock.
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle: IO[str] | None = handle

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._handle is not None:
            self._handle.close()  # closing the descriptor drops the flock
            self._handle = None
