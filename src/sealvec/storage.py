"""Storage backends: where sealed objects live.

A backend stores opaque, already-encrypted objects under '/'-separated names. It
never sees plaintext. Writes are atomic: a reader sees the whole object or nothing.
"""

from __future__ import annotations

import abc
import errno
import fcntl
import logging
import os
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from sealvec import _core
from sealvec.errors import (
    ConflictError,
    StorageError,
    StoreLockedError,
    ValidationError,
)

logger = logging.getLogger(__name__)

_TEMP_PREFIX = ".tmp-"


class Storage(abc.ABC):
    """Get, put, list and delete whole objects; create-only puts for commits."""

    #: Whether ``writer_lock`` really excludes other writers. Without it, only the
    #: create-only manifest commit keeps writers apart, and objects that no manifest
    #: names may belong to a writer still at work, so they are not swept.
    exclusive_writer_lock = True

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where the store is, for messages."""

    @abc.abstractmethod
    def exists(self) -> bool:
        """Whether the store location exists at all."""

    @abc.abstractmethod
    def get(self, name: str) -> bytes:
        """The whole object; StorageError (with FileNotFoundError cause) if missing."""

    @abc.abstractmethod
    def open(self, name: str) -> BinaryIO:
        """A binary stream over the object, for reading it segment by segment."""

    @abc.abstractmethod
    def size(self, name: str) -> int:
        """The object's size in bytes."""

    @abc.abstractmethod
    def put(self, name: str, chunks: Iterable[bytes], *, create_only: bool = False) -> None:
        """Store an object atomically and durably.

        ``chunks`` are bytes-like; each is valid only until the next is requested
        (writers reuse their buffers), so write or copy it first. With
        ``create_only`` an existing object is never replaced: ConflictError.
        """

    @abc.abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Names of the objects whose names start with ``prefix``, sorted."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Remove an object; a missing one is not an error."""

    @abc.abstractmethod
    def writer_lock(self) -> Iterator[None]:
        """Context manager holding the store's exclusive writer lock."""

    def initialise(self) -> None:
        """Create the store location if needed."""

    def remove_temporary(self) -> None:
        """Remove partial objects left by writers that crashed mid-write.

        Only called under the writer lock, when no write is in progress.
        """


def _check_name(name: str) -> None:
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise ValidationError(f"invalid object name {name!r}")


class LocalDirectory(Storage):
    """Objects as files under a directory.

    Each put writes a temporary file in the target's directory, fsyncs it, renames
    (or, for create-only, hard-links) it into place and fsyncs the directory, so a
    crash at any point leaves either the old state or the whole new object. The
    writer lock is an ``flock`` on ``.writer.lock``: the kernel drops it when its
    holder dies, so a writer killed with SIGKILL never leaves a stale lock.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        # Resolved, so one store has one name however it is reached (symlinks), which
        # the rollback record relies on.
        self.root = Path(root).expanduser().resolve()

    @property
    def location(self) -> str:
        return str(self.root)

    def exists(self) -> bool:
        return self.root.is_dir()

    def initialise(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as error:
            raise StorageError(f"cannot create store directory {self.root}: {error}") from None

    def _path(self, name: str) -> Path:
        _check_name(name)
        return self.root / name

    def get(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError as error:
            raise StorageError(f"object {name} is missing from {self.root}") from error
        except OSError as error:
            raise StorageError(f"cannot read {name} from {self.root}: {error}") from None

    def open(self, name: str) -> BinaryIO:
        try:
            return open(self._path(name), "rb")  # noqa: SIM115 - caller closes
        except FileNotFoundError as error:
            raise StorageError(f"object {name} is missing from {self.root}") from error
        except OSError as error:
            raise StorageError(f"cannot read {name} from {self.root}: {error}") from None

    def size(self, name: str) -> int:
        try:
            return self._path(name).stat().st_size
        except FileNotFoundError as error:
            raise StorageError(f"object {name} is missing from {self.root}") from error

    def put(self, name: str, chunks: Iterable[bytes], *, create_only: bool = False) -> None:
        target = self._path(name)
        directory = target.parent
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as error:
            raise StorageError(f"cannot create {directory}: {error}") from None
        temp = directory / f"{_TEMP_PREFIX}{secrets.token_hex(8)}"
        placed = False  # the object is visible under its name
        try:
            # Write and flush the whole object under a temporary name.
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                _write_chunks(fd, chunks)
                os.fsync(fd)
            finally:
                os.close(fd)

            # Move it into place: link fails if the name exists (create-only).
            if create_only:
                try:
                    os.link(temp, target)
                except FileExistsError:
                    raise ConflictError(
                        f"object {name} already exists in {self.root} "
                        "(another writer committed first)"
                    ) from None
                placed = True
                temp.unlink()
            else:
                os.replace(temp, target)
                placed = True
            _fsync_directory(directory)
        except (ConflictError, StorageError):
            temp.unlink(missing_ok=True)
            raise
        except OSError as error:
            temp.unlink(missing_ok=True)
            if placed:
                raise StorageError(
                    f"{name} is in place in {self.root}, but syncing its directory failed "
                    f"({error}); it may not survive a crash"
                ) from None
            if error.errno == errno.ENOSPC:
                raise StorageError(
                    f"disk full while writing {name} to {self.root}; nothing was committed"
                ) from None
            raise StorageError(f"cannot write {name} to {self.root}: {error}") from None
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def list(self, prefix: str) -> list[str]:
        names = []
        base = self.root
        for path in base.rglob("*"):
            if not path.is_file():
                continue
            rel = path.relative_to(base).as_posix()
            if any(part.startswith(".") for part in rel.split("/")):
                continue
            if rel.startswith(prefix):
                names.append(rel)
        return sorted(names)

    def list_temporary(self) -> list[Path]:
        """Temporary files left by writers that crashed mid-write."""
        return sorted(p for p in self.root.rglob(f"{_TEMP_PREFIX}*") if p.is_file())

    def remove_temporary(self) -> None:
        for path in self.list_temporary():
            logger.info("removing partial object %s left by a crashed writer", path.name)
            path.unlink(missing_ok=True)

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as error:
            raise StorageError(f"cannot delete {name} from {self.root}: {error}") from None
        _fsync_directory(path.parent)

    @contextmanager
    def writer_lock(self) -> Iterator[None]:
        lock_path = self.root / ".writer.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            raise StorageError(f"cannot open writer lock {lock_path}: {error}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
                raise StoreLockedError(
                    f"store {self.root} is locked by another writer (pid {holder}); "
                    "wait for it to finish"
                ) from None
            # A previous holder that died left its pid here; the kernel already
            # dropped its flock, so taking over is safe. The pid is only a hint for
            # error messages: a full disk must not stop the writer here.
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
            except OSError:
                pass
            try:
                yield
            finally:
                try:
                    os.ftruncate(fd, 0)
                except OSError:
                    pass
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


# Written bytes after which the kernel is asked to start writing them to storage, so
# that the disk works while later chunks are still being produced and the final fsync
# has less left to wait for. Durability still comes from that fsync alone.
_WRITEBACK_BYTES = 8 << 20


def _write_chunks(fd: int, chunks: Iterable[bytes]) -> None:
    written = started = 0
    for chunk in chunks:
        with memoryview(chunk) as whole, whole.cast("B") as view:
            done = 0
            while done < len(view):
                done += os.write(fd, view[done:])
        written += done
        if written - started >= _WRITEBACK_BYTES:
            _core.start_writeback(fd, started, written - started)
            started = written


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
