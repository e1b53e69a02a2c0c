"""An exclusive lock on a run (or output) directory, held for the whole run.

``RunLock(DIR)`` takes ``fcntl.flock`` on ``DIR/.flowprox.lock`` and writes the holder into it
(pid, host, command line, start time). A second process asking for the same directory fails at
once with a :class:`RunLockedError` (a ``ValueError``, so the command line exits with code 2)
naming the holder; so does a process asking for a directory *inside* a locked one. The lock
file is removed on release; the kernel drops a ``flock`` when its process dies, so a lock file
left by a killed run is stale: the next run takes it over and says so. Where ``flock`` is not
supported (some network file systems) the holder's pid is checked instead (same host only).

Within one process the lock is re-entrant, and locks on different directories nest: ``flowprox
reproduce`` holds its folder while each of its stages holds its own run directory inside it.
Under ``torchrun`` only rank 0 takes the lock (``RunDirectory(enabled=False)`` on other ranks).
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import socket
import sys
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

try:  # pragma: no cover - always there on Linux and macOS
    import fcntl
except ImportError:  # pragma: no cover - Windows: pid checks only
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".flowprox.lock"

#: directories this process holds, by resolved path (for re-entrancy and nesting)
_HELD: dict[Path, RunLock] = {}


class RunLockedError(ValueError):
    """The directory is in use by another flowprox process."""


def _holder_text(info: dict[str, Any]) -> str:
    pid, host = info.get("pid", "?"), info.get("host", "?")
    text = f"pid {pid} on {host}"
    details = [f"`{info['command']}`" if info.get("command") else "",
               f"since {info['started']}" if info.get("started") else ""]  # fmt: skip
    details = [d for d in details if d]
    return text + (f" ({', '.join(details)})" if details else "")


def _read_info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _alive(info: dict[str, Any]) -> bool:
    """Whether the process of ``info`` still runs (assumed so for another host)."""
    pid = info.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if info.get("host") != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _flock_unsupported(error: OSError) -> bool:
    return error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class RunLock:
    """Exclusive use of ``directory`` (created if missing) by this process.

    Use as a context manager, or ``acquire()`` / ``release()``. A directory (and any missing
    parent) that the lock created is removed again on release if it is left empty.

    Raises (from ``acquire``):
        RunLockedError: another live process holds ``directory`` or a directory around it.
        ValueError: ``directory`` (or a parent) is an existing file.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.created: list[Path] = []  # directories made by acquire, outermost first
        self._fd: int | None = None
        self._depth = 0
        self._key: Path | None = None

    # ----------------------------------------------------------------------------- acquire
    def acquire(self) -> RunLock:
        key = self.directory.resolve()
        held = _HELD.get(key)
        if held is not None:
            held._depth += 1
            self._key, self._depth = key, -1  # a re-entry: release() hands back to ``held``
            return self
        self._make_directory()
        try:
            self._check_enclosing(key)
            self._lock()
        except BaseException:
            self._remove_created()
            raise
        self._key, self._depth = key, 1
        _HELD[key] = self
        return self

    def _make_directory(self) -> None:
        directory = self.directory
        if directory.exists() and not directory.is_dir():
            raise ValueError(
                f"{directory} is a file, not a directory; pass a folder (new or existing) for "
                "the run's outputs."
            )
        missing = []
        for candidate in (directory, *directory.parents):
            if candidate.exists():
                break
            missing.append(candidate)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as error:
            raise ValueError(
                f"cannot create the directory {directory}: a part of its path is a file, not a "
                "directory; choose another folder."
            ) from error
        self.created = list(reversed(missing))

    def _check_enclosing(self, key: Path) -> None:
        """Refuse a directory inside one that another process holds."""
        for parent in key.parents:
            lock_file = parent / LOCK_NAME
            if parent in _HELD or not lock_file.is_file():
                continue
            holder = _probe(lock_file)
            if holder is not None:
                raise RunLockedError(
                    f"{self.directory} lies inside {parent}, which is in use by another flowprox "
                    f"run: {_holder_text(holder)}; wait for it to finish or choose a folder "
                    "outside it."
                )

    def _lock(self) -> None:
        for _ in range(20):  # retried only when the holder removed the file under us
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            try:
                if not self._flock(fd):
                    continue
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            self._take_over(fd)
            return
        raise RunLockedError(f"could not lock {self.directory}: its lock file keeps changing.")

    def _flock(self, fd: int) -> bool:
        """Lock ``fd``; False when the file was replaced meanwhile (then retry)."""
        if fcntl is None:
            self._check_pid()
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(self._in_use(_read_info(self.path))) from None
        except OSError as error:
            if not _flock_unsupported(error):
                raise
            self._check_pid()
            return True
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
        return same

    def _check_pid(self) -> None:
        info = _read_info(self.path)
        if info and info.get("pid") != os.getpid() and _alive(info):
            raise RunLockedError(
                self._in_use(info) + f" If that process is gone, delete {self.path}."
            )

    def _in_use(self, info: dict[str, Any]) -> str:
        return (
            f"{self.directory} is in use by another flowprox run: {_holder_text(info)}; wait "
            "for it to finish, or choose another --out folder."
        )

    def _take_over(self, fd: int) -> None:
        """Report a stale lock file, then write this process into it."""
        previous = os.read(fd, 1 << 16)
        if previous.strip():
            try:
                info = json.loads(previous)
            except ValueError:
                info = {}
            print(
                f"flowprox: taking over the stale lock of {self.directory}, left by "
                f"{_holder_text(info if isinstance(info, dict) else {})}, which ended without "
                "releasing it (killed?); its files are kept (use --resume to continue a run).",
                file=sys.stderr,
            )
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": shlex.join(["flowprox", *sys.argv[1:]]),
            "started": datetime.now().isoformat(timespec="seconds"),
        }
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())

    # ----------------------------------------------------------------------------- release
    def release(self) -> None:
        """Give the directory back (the outermost release of this process removes the file)."""
        if self._depth == -1 and self._key is not None:  # a re-entry
            owner = _HELD.get(self._key)
            self._depth, self._key = 0, None
            if owner is not None:
                owner.release()
            return
        if self._depth <= 0:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        _HELD.pop(self._key, None)  # type: ignore[arg-type]
        self._key = None
        if self._fd is not None:
            try:
                self.path.unlink(missing_ok=True)  # while still locked: no one sees it half-gone
            finally:
                os.close(self._fd)
                self._fd = None
        self._remove_created()

    def _remove_created(self) -> None:
        for directory in reversed(self.created):
            try:
                directory.rmdir()
            except OSError:
                break  # not empty (the run wrote something): kept
        self.created = []

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def _probe(lock_file: Path) -> dict[str, Any] | None:
    """The holder of ``lock_file`` if a live process holds it, else None."""
    info = _read_info(lock_file)
    if fcntl is None:
        return info if info and _alive(info) else None
    try:
        fd = os.open(lock_file, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return info or {"pid": "?", "host": "?"}
    except OSError as error:
        if not _flock_unsupported(error):
            raise
        return info if info and _alive(info) else None
    finally:
        os.close(fd)  # also drops the shared lock
    return None


def held_by_this_process(directory: str | Path) -> bool:
    """Whether this process holds ``directory``'s lock."""
    return Path(directory).resolve() in _HELD
