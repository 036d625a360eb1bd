"""The object-storage interface, object keys and the streaming reader shared by the backends.

Every byte of an upload goes through :class:`Storage`: uploads land in ``quarantine/`` and
are moved to ``pool/`` once checked. ``keys/`` holds the hub's own index of released keys (as
pseudonyms) for validating later uploads' links; the gateway never reads it. ``synthetic/``
holds published synthetic versions and their report plots, apart from the real pool. Keys are
validated here, once, so that no backend ever sees a path-traversal or an oddly encoded name.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

from hub.errors import InvalidKey, ObjectNotFound, PayloadTooLarge

ZONES: tuple[str, ...] = ("quarantine", "pool", "keys", "synthetic")
"""Top-level prefixes a key may start with: uploads wait in quarantine, checked data is pooled."""

MAX_KEY_LENGTH = 1024
"""S3's own limit (in UTF-8 bytes; keys are ASCII, so characters)."""

MAX_SEGMENT_LENGTH = 255
"""Longest file name of common filesystems: keeps keys portable to the local backend."""

CHUNK_SIZE = 1 << 20
"""Bytes read from a source stream at a time: bounds the memory of an upload."""

_ALLOWED = re.compile(r"[A-Za-z0-9._=/-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows about one object.

    ``sha256`` is the hex digest computed while streaming; it is only known right after
    :meth:`Storage.put` (the metadata database keeps it), so ``stat`` and ``list`` leave it
    ``None``. ``modified`` is timezone-aware (UTC) when known.
    """

    key: str
    size: int
    sha256: str | None = None
    modified: datetime | None = None


def _show(key: str) -> str:
    """A short, printable rendering of a (possibly hostile) key for error messages."""
    text = repr(key)
    return text if len(text) <= 80 else text[:77] + "..."


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe object key, else raise :class:`InvalidKey` naming why.

    A key is ``<zone>/<segment>[/<segment>...]`` with zone in :data:`ZONES`, at most 1024
    characters of ``[A-Za-z0-9._=/-]``, no empty, ``.`` or ``..`` segment and no segment
    longer than 255 characters (a file name on the local backend).
    """
    if not isinstance(key, str):
        raise InvalidKey(f"object key must be a string, not {type(key).__name__}")
    shown = _show(key)
    if not key:
        raise InvalidKey("object key is empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(f"object key {shown} is longer than {MAX_KEY_LENGTH} characters")
    if _CONTROL.search(key):
        raise InvalidKey(f"object key {shown} contains a NUL or control character")
    if "\\" in key:
        raise InvalidKey(f"object key {shown} contains a backslash")
    if key.startswith("/"):
        raise InvalidKey(f"object key {shown} is an absolute path")
    segments = key.split("/")
    if any(s in (".", "..") for s in segments):
        raise InvalidKey(f"object key {shown} contains a '.' or '..' path segment")
    if segments[0] not in ZONES or len(segments) < 2:
        zones = " or ".join(f"'{z}/'" for z in ZONES)
        raise InvalidKey(f"object key {shown} must start with {zones}")
    if any(not s for s in segments):
        raise InvalidKey(f"object key {shown} has an empty path segment ('//' or a trailing '/')")
    if any(len(s) > MAX_SEGMENT_LENGTH for s in segments):
        raise InvalidKey(
            f"object key {shown} has a path segment longer than {MAX_SEGMENT_LENGTH} characters"
        )
    if not _ALLOWED.fullmatch(key):
        bad = next(c for c in key if not _ALLOWED.fullmatch(c))
        raise InvalidKey(
            f"object key {shown} contains the character {bad!r}; only letters, digits "
            "and . _ = - / are allowed"
        )
    return key


def is_valid_key(key: str) -> bool:
    """True when :func:`validate_key` accepts ``key`` (used to skip foreign objects)."""
    try:
        validate_key(key)
    except InvalidKey:
        return False
    return True


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it may be listed: ``""`` (every zone), a zone name, or the start
    of a valid key, optionally ending in one ``/``. Raise :class:`InvalidKey` otherwise."""
    if not isinstance(prefix, str):
        raise InvalidKey(f"list prefix must be a string, not {type(prefix).__name__}")
    core = prefix[:-1] if prefix.endswith("/") else prefix
    if core == "" and prefix == "":
        return prefix
    if core in ZONES:
        return prefix
    try:
        validate_key(core)
    except InvalidKey as exc:
        raise InvalidKey(f"list prefix: {exc.message}") from None
    return prefix


def human_size(n: int) -> str:
    """``1536`` -> ``'1.5 KiB'``: sizes in messages people read."""
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


class HashingReader:
    """Wrap a source stream: hash and count what is read, refuse more than ``max_bytes``.

    ``read(n)`` returns exactly ``n`` bytes unless the source is exhausted (boto3 takes a
    short read for the end of the stream), pulling at most :data:`CHUNK_SIZE` from the
    source at a time. The first exception raised while reading (by the source, or
    :class:`PayloadTooLarge`) is kept in ``error`` so a caller can re-raise it even when a
    library wrapped it. Deliberately not seekable, so boto3 streams it part by part.
    """

    def __init__(self, stream: BinaryIO, max_bytes: int | None = None) -> None:
        self._stream = stream
        self._max_bytes = max_bytes
        self._hash = hashlib.sha256()
        self._eof = False
        self.size = 0
        self.error: BaseException | None = None

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, size: int | None = -1) -> bytes:
        if self.error is not None:
            raise self.error
        want = sys.maxsize if size is None or size < 0 else size
        parts: list[bytes] = []
        got = 0
        try:
            while got < want and not self._eof:
                data = self._stream.read(min(want - got, CHUNK_SIZE))
                if not data:
                    self._eof = True
                    break
                self._account(data)
                parts.append(bytes(data))
                got += len(data)
        except BaseException as exc:
            self.error = exc
            raise
        return b"".join(parts)

    def _account(self, data: bytes) -> None:
        self.size += len(data)
        if self._max_bytes is not None and self.size > self._max_bytes:
            raise PayloadTooLarge(
                f"the upload is larger than the limit of {human_size(self._max_bytes)} "
                f"({self._max_bytes} bytes)"
            )
        self._hash.update(data)


class ChunkIterator(Iterator[bytes]):
    """Chunks of an object, read through :meth:`Storage.open`; closes it when exhausted,
    on error or on :meth:`close` (WSGI servers call it when a response ends)."""

    def __init__(self, opened: contextlib.AbstractContextManager[BinaryIO], chunk_size: int):
        self._closed = True  # until opened: __del__ must not close what was never opened
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        self._stack = contextlib.ExitStack()
        self._body = self._stack.enter_context(opened)
        self._chunk_size = chunk_size
        self._closed = False

    def __next__(self) -> bytes:
        if self._closed:
            raise StopIteration
        try:
            chunk = self._body.read(self._chunk_size)
        except BaseException:
            self._closed = True
            # Let the backend's context manager translate the error (e.g. botocore's).
            if not self._stack.__exit__(*sys.exc_info()):
                raise
            raise StopIteration from None
        if not chunk:
            self.close()
            raise StopIteration
        return bytes(chunk)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._stack.close()

    def __del__(self) -> None:
        self.close()


class Storage(abc.ABC):
    """An object store holding the ``quarantine/`` and ``pool/`` zones.

    All object access in the hub goes through this interface; every method validates its
    keys. Errors are :mod:`hub.errors` exceptions (``InvalidKey``, ``ObjectNotFound``,
    ``PayloadTooLarge``, ``StorageError``) with messages a person can act on; an exception
    raised by the source stream of :meth:`put` propagates unchanged.
    """

    @abc.abstractmethod
    def put(
        self,
        key: str,
        stream: BinaryIO,
        *,
        max_bytes: int | None = None,
        content_type: str = "application/octet-stream",
    ) -> ObjectInfo:
        """Stream ``stream`` into ``key`` (replacing it) in bounded memory; return its size and
        SHA-256. On any failure, including ``PayloadTooLarge`` when more than ``max_bytes``
        arrive, nothing of the new upload remains and a previous object is left intact."""

    @abc.abstractmethod
    def open(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """Context manager yielding a binary file-like object to stream ``key`` from."""

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size and modification time of ``key``; ``ObjectNotFound`` when it is missing."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; deleting a missing object is not an error."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix``, sorted by key. ``prefix`` is validated
        immediately (see :func:`validate_prefix`); the store is read lazily."""

    @abc.abstractmethod
    def copy(self, src: str, dst: str) -> ObjectInfo:
        """Copy ``src`` to ``dst`` (replacing it) without passing the bytes through the
        caller; ``ObjectNotFound`` when ``src`` is missing."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise ``StorageError`` with a one-line reason if the store cannot be used."""

    def move(self, src: str, dst: str) -> ObjectInfo:
        """Move ``src`` to ``dst`` (e.g. quarantine -> pool). This default copies then deletes;
        a backend with an atomic rename overrides it."""
        validate_key(src)
        validate_key(dst)
        if src == dst:
            return self.stat(src)
        info = self.copy(src, dst)
        self.delete(src)
        return info

    def exists(self, key: str) -> bool:
        """True when ``key`` is an object."""
        try:
            self.stat(key)
        except ObjectNotFound:
            return False
        return True

    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """Iterate over the bytes of ``key`` in chunks of at most ``chunk_size``.

        The object is opened now, so ``ObjectNotFound`` is raised by this call rather than by
        the first ``next()`` (before a web response has started)."""
        return ChunkIterator(self.open(key), chunk_size)
