"""Object store in a local directory: one file per key under ``<root>/<zone>/...``.

Writes go to a temporary file next to the target and are renamed over it, so a reader
sees the old object or the new one, never a part. Files are 0600 and the directories this
backend creates 0700: the store holds pseudonymised but sensitive data.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import stat as stat_mod
import tempfile
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from hub.errors import Conflict, ObjectNotFound, StorageError
from hub.storage.base import (
    CHUNK_SIZE,
    ZONES,
    HashingReader,
    ObjectInfo,
    Storage,
    is_valid_key,
    validate_key,
    validate_prefix,
)

TMP_PREFIX = ".~tmp-"
"""Temporary files start with this; ``~`` is not a key character, so no key collides."""

FILE_MODE = 0o600
DIR_MODE = 0o700


def _mtime(st: os.stat_result) -> datetime:
    return datetime.fromtimestamp(st.st_mtime, tz=UTC)


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _fsync_dir(path: Path) -> None:
    """Make a rename durable; best effort (not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class LocalStorage(Storage):
    """:class:`Storage` in the directory ``root`` (created 0700 on first write)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    # Paths -----------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        validate_key(key)
        return self.root.joinpath(*key.split("/"))

    def _ensure_dir(self, path: Path) -> None:
        """Create ``path`` and missing parents with mode 0700 (whatever the umask)."""
        missing = []
        current = path
        while not current.is_dir():
            missing.append(current)
            if current.parent == current:
                break
            current = current.parent
        for directory in reversed(missing):
            try:
                directory.mkdir(mode=DIR_MODE)
            except FileExistsError:
                if not directory.is_dir():
                    raise
                continue
            os.chmod(directory, DIR_MODE)

    def _write_error(self, key: str, exc: OSError) -> Exception:
        if isinstance(exc, NotADirectoryError | IsADirectoryError | FileExistsError):
            return Conflict(
                f"cannot store object {key!r}: the local store already holds an object that "
                "is a prefix of it, or objects under it as a prefix"
            )
        reason = exc.strerror or exc
        return StorageError(
            f"cannot write object {key!r} to the local store at {self.root}: {reason}"
        )

    def _read_error(self, key: str, exc: OSError) -> Exception:
        if isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError):
            return ObjectNotFound(f"object {key!r} does not exist")
        reason = exc.strerror or exc
        return StorageError(
            f"cannot read object {key!r} from the local store at {self.root}: {reason}"
        )

    def _write_atomically(self, key: str, path: Path, reader: HashingReader) -> os.stat_result:
        """Copy ``reader`` to a temp file beside ``path``, fsync, rename over ``path``.
        Nothing is left behind on failure; errors of the source propagate unchanged."""
        tmp: str | None = None
        try:
            self._ensure_dir(path.parent)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX)
            os.fchmod(fd, FILE_MODE)  # mkstemp's 0600 is still subject to the umask
            with os.fdopen(fd, "wb") as fh:
                while chunk := reader.read(CHUNK_SIZE):
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
                st = os.fstat(fh.fileno())
            os.replace(tmp, path)
            tmp = None
        except BaseException as exc:
            if tmp is not None:
                _remove_quietly(tmp)
            if reader.error is not None or not isinstance(exc, OSError):
                raise
            raise self._write_error(key, exc) from exc
        _fsync_dir(path.parent)
        return st

    # Storage ---------------------------------------------------------------------------

    def put(
        self,
        key: str,
        stream: BinaryIO,
        *,
        max_bytes: int | None = None,
        content_type: str = "application/octet-stream",
    ) -> ObjectInfo:
        """See :meth:`Storage.put`. ``content_type`` is not stored by this backend."""
        path = self._path(key)
        reader = HashingReader(stream, max_bytes)
        st = self._write_atomically(key, path, reader)
        return ObjectInfo(key, reader.size, reader.sha256, _mtime(st))

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        path = self._path(key)
        try:
            fh = path.open("rb")
        except OSError as exc:
            raise self._read_error(key, exc) from exc
        with fh:
            yield fh

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = os.stat(path)
        except OSError as exc:
            raise self._read_error(key, exc) from exc
        if not stat_mod.S_ISREG(st.st_mode):
            raise ObjectNotFound(f"object {key!r} does not exist")
        return ObjectInfo(key, st.st_size, None, _mtime(st))

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        except OSError as exc:
            raise StorageError(
                f"cannot delete object {key!r} from the local store at {self.root}: "
                f"{exc.strerror or exc}"
            ) from exc

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        if "/" in prefix:
            starts = [self.root.joinpath(*prefix.rsplit("/", 1)[0].split("/"))]
        else:
            starts = [self.root / zone for zone in ZONES]
        return self._walk(starts, prefix)

    def _walk(self, starts: Sequence[Path], prefix: str) -> Iterator[ObjectInfo]:
        found: builtins.list[ObjectInfo] = []
        for start in starts:
            for dirpath, _dirnames, filenames in os.walk(start):
                for name in filenames:
                    full = os.path.join(dirpath, name)
                    key = os.path.relpath(full, self.root).replace(os.sep, "/")
                    if not key.startswith(prefix) or not is_valid_key(key):
                        continue  # temp files and anything not written through a key
                    try:
                        st = os.lstat(full)
                    except FileNotFoundError:
                        continue  # deleted meanwhile
                    if stat_mod.S_ISREG(st.st_mode):
                        found.append(ObjectInfo(key, st.st_size, None, _mtime(st)))
        found.sort(key=lambda info: info.key)
        yield from found

    def copy(self, src: str, dst: str) -> ObjectInfo:
        validate_key(src)
        dst_path = self._path(dst)
        if src == dst:
            return self.stat(src)
        with self.open(src) as source:
            reader = HashingReader(source)
            try:
                st = self._write_atomically(dst, dst_path, reader)
            except OSError as exc:  # a read error of the source file
                raise self._read_error(src, exc) from exc
        return ObjectInfo(dst, st.st_size, None, _mtime(st))

    def move(self, src: str, dst: str) -> ObjectInfo:
        """Atomic rename (same filesystem: both keys live under ``root``)."""
        src_path = self._path(src)
        dst_path = self._path(dst)
        info = self.stat(src)
        if src == dst:
            return info
        try:
            self._ensure_dir(dst_path.parent)
            os.replace(src_path, dst_path)
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"object {src!r} does not exist") from exc
        except OSError as exc:
            raise self._write_error(dst, exc) from exc
        _fsync_dir(dst_path.parent)
        return ObjectInfo(dst, info.size, None, info.modified)

    def check(self) -> None:
        """The root must be (or become) a directory we can create files in."""
        try:
            self._ensure_dir(self.root)
            fd, probe = tempfile.mkstemp(dir=self.root, prefix=TMP_PREFIX)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise StorageError(
                f"the local object store at {self.root} is not a writable directory "
                f"({exc.strerror or exc}). Check CLEANROOM_STORAGE_PATH (default "
                "<data_dir>/objects) and its permissions."
            ) from exc
