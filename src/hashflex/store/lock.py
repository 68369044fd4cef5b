"""One daemon per store: an exclusive lock taken before anything is written (issue 15, auditor review finding 3).

A second ``hashflex run`` on the same SQLite store used to record a ``restart`` in the audit trail
(and take over the first daemon's MQTT sessions) before failing to bind its HTTP port: a false record
in the tamper-evident trail. :func:`lock_store` takes ``flock(LOCK_EX | LOCK_NB)`` on a lock file next to
the store (``<store>.lock``; POSIX ``flock(2)``: the kernel drops it when the process dies, kill -9
included, so there is no stale lock to clean up) and raises :class:`StoreLockedError` at once when
another process holds it. The holder's pid is written into the file for the error message only.

Readers (``hashflex report``, ``audit verify``) do not take the lock: SQLite's WAL lets them read a
store the daemon writes.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["StoreLock", "StoreLockedError", "lock_store"]


class StoreLockedError(RuntimeError):
    """Another process holds the store's lock (a daemon already runs on it).

    Parameters
    ----------
    store_path : str
        The store.
    holder : str
        What the lock file says about its holder (``pid 1234``, or ``unknown``).
    """

    def __init__(self, store_path: str, holder: str) -> None:
        self.store_path, self.holder = store_path, holder
        super().__init__(f"store {store_path} is in use by another hashflex process ({holder}); "
                         "one daemon per store: stop it first, or give --store another path")


class StoreLock:
    """The held lock; :meth:`release` (or the context manager's exit, or the process's end) frees it.

    Parameters
    ----------
    path : Path
        The lock file.
    fd : int
        Its open descriptor, holding the ``flock``.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    def release(self) -> None:
        """Unlock and close (idempotent). The file is left in place: removing it would race a new locker."""
        if self._fd < 0:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> StoreLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_path(store_path: str | Path) -> Path:
    """The lock file of a store: ``<store>.lock`` beside it (absolute).

    Parameters
    ----------
    store_path : str or Path
        The SQLite store's path.

    Returns
    -------
    Path
    """
    path = Path(store_path).expanduser().resolve()
    return path.with_name(path.name + ".lock")


def lock_store(store_path: str | Path) -> StoreLock | None:
    """Take the store's exclusive lock without waiting.

    Parameters
    ----------
    store_path : str or Path
        The SQLite store's path; ``":memory:"`` (or an empty path) needs no lock (None is returned).

    Returns
    -------
    StoreLock or None

    Raises
    ------
    StoreLockedError
        Another process holds it (the message names the store and the holder's pid).
    OSError
        The lock file cannot be created (e.g. the directory does not exist or is read-only).
    """
    if str(store_path) in ("", ":memory:"):
        return None
    path = lock_path(store_path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 64, 0).decode("ascii", errors="replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise StoreLockedError(str(Path(store_path).expanduser().resolve()), holder) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}\n".encode("ascii"), 0)
    return StoreLock(path, fd)
