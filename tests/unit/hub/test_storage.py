"""Contract tests of hub.storage: the same tests run against the local directory backend and
the S3 backend talking HTTP to a real S3-protocol server (moto), one fresh bucket per test."""

from __future__ import annotations

import hashlib
import os
import random
import socket
import stat
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from hub.errors import (
    ConfigurationError,
    Conflict,
    InvalidKey,
    ObjectNotFound,
    PayloadTooLarge,
    StorageError,
)
from hub.settings import Settings, load_settings
from hub.storage import ZONES, LocalStorage, ObjectInfo, Storage, get_storage, validate_key
from hub.storage.base import CHUNK_SIZE
from hub.storage.s3 import S3Storage
from tests.s3server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, s3_server
from tests.s3server import s3_settings_overrides as s3_overrides

MIB = 1 << 20
PART_MB = 5  # the smallest part S3 allows: keeps the multipart tests small


# Fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """One moto S3 server over HTTP for the whole session (the lead may move this to
    tests/conftest.py)."""
    with s3_server() as endpoint_url:
        yield endpoint_url


@pytest.fixture(scope="session")
def s3_admin(s3_endpoint: str) -> Any:
    """A plain boto3 client, independent of the code under test, to look behind its back."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        config=Config(s3={"addressing_style": "path"}),
    )


def local_settings(tmp_path: Path, **extra: Any) -> Settings:
    overrides = {
        "data_dir": str(tmp_path),
        "storage_backend": "local",
        "storage_path": str(tmp_path / "objects"),
        **extra,
    }
    return load_settings(overrides=overrides, environ={})


def s3_settings(tmp_path: Path, endpoint: str, bucket: str, **extra: Any) -> Settings:
    overrides = {"data_dir": str(tmp_path), "s3_part_size_mb": PART_MB, **extra}
    return load_settings(overrides=s3_overrides(endpoint, bucket, **overrides), environ={})


@dataclass
class Store:
    """The storage under test plus what a test needs to inspect the backend directly."""

    backend: str
    storage: Storage
    make: Callable[..., Storage]  # same root/bucket, other settings
    root: Path | None = None
    admin: Any = None
    bucket: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def leftovers(self) -> list[str]:
        """Everything physically in the store: every file (temp files included) under the
        local root, or every object and pending multipart upload in the bucket."""
        if self.root is not None:
            if not self.root.exists():
                return []
            return sorted(
                p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()
            )
        objects = [
            obj["Key"]
            for page in self.admin.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
            for obj in page.get("Contents", [])
        ]
        uploads = self.admin.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        return sorted(objects + [f"(multipart upload of {u['Key']})" for u in uploads])


def _empty_bucket(admin: Any, bucket: str) -> None:
    for upload in admin.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        admin.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    for page in admin.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            admin.delete_object(Bucket=bucket, Key=obj["Key"])
    admin.delete_bucket(Bucket=bucket)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The backend under test: a local directory in tmp_path, or a fresh bucket on moto."""
    if request.param == "local":

        def make_local(**extra: Any) -> Storage:
            return get_storage(local_settings(tmp_path, **extra))

        yield Store("local", make_local(), make_local, root=tmp_path / "objects")
        return

    endpoint: str = request.getfixturevalue("s3_endpoint")
    admin = request.getfixturevalue("s3_admin")
    bucket = f"test-{uuid.uuid4().hex[:24]}"
    admin.create_bucket(Bucket=bucket)

    def make_s3(**extra: Any) -> Storage:
        return get_storage(s3_settings(tmp_path, endpoint, bucket, **extra))

    try:
        yield Store("s3", make_s3(), make_s3, admin=admin, bucket=bucket)
    finally:
        _empty_bucket(admin, bucket)


@pytest.fixture
def s3_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The S3 flavour of ``store`` alone, for S3-only behaviour (encryption, multipart)."""
    endpoint: str = request.getfixturevalue("s3_endpoint")
    admin = request.getfixturevalue("s3_admin")
    bucket = f"test-{uuid.uuid4().hex[:24]}"
    admin.create_bucket(Bucket=bucket)

    def make_s3(**extra: Any) -> Storage:
        return get_storage(s3_settings(tmp_path, endpoint, bucket, **extra))

    try:
        yield Store("s3", make_s3(), make_s3, admin=admin, bucket=bucket)
    finally:
        _empty_bucket(admin, bucket)


# Source streams ------------------------------------------------------------------------


class GeneratedStream:
    """A file-like source fed by a generator of pseudo-random blocks: it never holds more
    than one block, returns short reads like a socket, and can fail part-way like a client
    that disconnects. It records the SHA-256 of what it produced and the largest read asked
    of it."""

    def __init__(
        self, total: int, *, block: int = 256 * 1024, fail_after: int | None = None, seed: int = 1
    ) -> None:
        self.total = total
        self.fail_after = fail_after
        self.hash = hashlib.sha256()
        self.produced = 0
        self.largest_request = 0
        self._blocks = self._generate(total, block, seed)
        self._pending = b""

    @staticmethod
    def _generate(total: int, block: int, seed: int) -> Iterator[bytes]:
        rng = random.Random(seed)
        remaining = total
        while remaining:
            n = min(block, remaining)
            remaining -= n
            yield rng.randbytes(n)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            raise AssertionError("the storage asked for the whole stream at once")
        self.largest_request = max(self.largest_request, size)
        if not self._pending:
            self._pending = next(self._blocks, b"")
        data, self._pending = self._pending[:size], self._pending[size:]
        if self.fail_after is not None and self.produced + len(data) > self.fail_after:
            raise OSError("client disconnected")
        self.produced += len(data)
        self.hash.update(data)
        return data


class BytesSource:
    """Bytes behind a read()-only interface (no seek/tell): like a request body."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size is None or size < 0 else self._pos + size
        chunk = bytes(self._data[self._pos : end])
        self._pos += len(chunk)
        return chunk


def put_bytes(storage: Storage, key: str, data: bytes, **kwargs: Any) -> ObjectInfo:
    return storage.put(key, BytesSource(data), **kwargs)  # type: ignore[arg-type]


def read_all(storage: Storage, key: str) -> bytes:
    with storage.open(key) as fh:
        return fh.read()


def sha256_of_object(storage: Storage, key: str) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    for chunk in storage.iter_chunks(key):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


# Round trips ---------------------------------------------------------------------------


def test_round_trip_reports_size_and_sha256(store: Store) -> None:
    data = b"batch 42,viability,0.93\n" * 100
    info = put_bytes(store.storage, "quarantine/up-1/data.csv", data, content_type="text/csv")

    assert info == ObjectInfo(
        "quarantine/up-1/data.csv", len(data), hashlib.sha256(data).hexdigest(), info.modified
    )
    assert isinstance(info.modified, datetime) and info.modified.tzinfo is not None
    assert read_all(store.storage, "quarantine/up-1/data.csv") == data
    chunks = list(store.storage.iter_chunks("quarantine/up-1/data.csv", chunk_size=1000))
    assert b"".join(chunks) == data
    assert max(len(c) for c in chunks) <= 1000 and len(chunks) >= len(data) // 1000


def test_empty_object(store: Store) -> None:
    info = put_bytes(store.storage, "pool/empty", b"")

    assert (info.size, info.sha256) == (0, hashlib.sha256(b"").hexdigest())
    assert read_all(store.storage, "pool/empty") == b""
    assert list(store.storage.iter_chunks("pool/empty")) == []


def test_put_replaces_existing_object(store: Store) -> None:
    put_bytes(store.storage, "pool/x", b"old version, longer")
    info = put_bytes(store.storage, "pool/x", b"new")

    assert read_all(store.storage, "pool/x") == b"new"
    assert store.storage.stat("pool/x").size == info.size == 3
    assert store.leftovers() == ["pool/x"]


def test_large_stream_is_streamed_in_parts(store: Store) -> None:
    total = 21 * MIB  # 4 full parts of 5 MiB and one of 1 MiB
    source = GeneratedStream(total)

    info = store.storage.put("quarantine/big.bin", source)  # type: ignore[arg-type]

    assert source.produced == total
    assert (info.size, info.sha256) == (total, source.hash.hexdigest())
    assert source.largest_request <= CHUNK_SIZE  # pulled in small reads, never all at once
    assert sha256_of_object(store.storage, "quarantine/big.bin") == (total, info.sha256)
    if store.backend == "s3":
        head = store.admin.head_object(Bucket=store.bucket, Key="quarantine/big.bin")
        assert head["ETag"].strip('"').endswith("-5"), head["ETag"]  # a 5-part upload
    assert store.leftovers() == ["quarantine/big.bin"]


# Failures while writing ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "max_bytes"),
    [(1000, 999), (8 * MIB, 6 * MIB)],
    ids=["single-request", "multipart"],
)
def test_max_bytes_exceeded_leaves_nothing(store: Store, total: int, max_bytes: int) -> None:
    with pytest.raises(PayloadTooLarge, match=f"limit of .*{max_bytes} bytes"):
        store.storage.put(
            "quarantine/too-big",
            GeneratedStream(total),  # type: ignore[arg-type]
            max_bytes=max_bytes,
        )

    assert not store.storage.exists("quarantine/too-big")
    assert store.leftovers() == []  # no temp file, no object, no pending multipart upload


def test_max_bytes_is_inclusive(store: Store) -> None:
    info = put_bytes(store.storage, "quarantine/exact", b"x" * 1000, max_bytes=1000)

    assert info.size == 1000
    assert store.storage.exists("quarantine/exact")


@pytest.mark.parametrize(
    "fail_after", [1 * MIB, 7 * MIB], ids=["single-request", "after-first-part"]
)
def test_source_failure_keeps_previous_object(store: Store, fail_after: int) -> None:
    put_bytes(store.storage, "pool/data.csv", b"previous version")

    with pytest.raises(OSError, match="client disconnected"):
        store.storage.put(
            "pool/data.csv",
            GeneratedStream(12 * MIB, fail_after=fail_after),  # type: ignore[arg-type]
        )

    assert read_all(store.storage, "pool/data.csv") == b"previous version"
    assert store.leftovers() == ["pool/data.csv"]


def test_local_prefix_conflict_is_reported(tmp_path: Path) -> None:
    """A directory store cannot hold both ``a`` and ``a/b`` (S3 can): say so clearly."""
    storage = get_storage(local_settings(tmp_path))
    put_bytes(storage, "pool/a", b"file")

    with pytest.raises(Conflict, match="'pool/a/b'"):
        put_bytes(storage, "pool/a/b", b"nested")
    with pytest.raises(Conflict, match="'pool/a/c'"):
        storage.move("pool/a", "pool/a/c")

    assert read_all(storage, "pool/a") == b"file"
    assert [info.key for info in storage.list("pool/")] == ["pool/a"]


# Keys ----------------------------------------------------------------------------------

HOSTILE_KEYS = [
    "quarantine/../etc/passwd",
    "pool/a/../../../etc/passwd",
    "pool/..",
    "pool/./x",
    "./pool/x",
    "/abs",
    "/pool/x",
    "pool//x",
    "pool/x/",
    "pool/",
    "pool",
    "quarantine",
    "",
    "other/x",
    "Pool/x",
    "tmp/quarantine/x",
    "pool/a\\b",
    "pool\\x",
    "pool/\x00",
    "pool/x\x00.csv",
    "pool/x\n",
    "pool/x\ry",
    "pool/\x7f",
    "pool/a b",
    "pool/ü",
    "pool/a:b",
    "pool/%2e%2e/x",
    "pool/a?b",
    "pool/~tmp",
    "pool/" + "a" * 1020,
    "pool/" + "a" * 256,
]


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=repr)
def test_validate_key_rejects_hostile_keys(key: str) -> None:
    with pytest.raises(InvalidKey):
        validate_key(key)


def test_hostile_keys_are_rejected_by_every_operation(store: Store) -> None:
    """Every operation validates its keys before touching the store (one test per backend,
    looping over the keys, to keep the S3 run to one bucket)."""
    storage = store.storage
    put_bytes(storage, "pool/good", b"good")
    operations: dict[str, Callable[[str], object]] = {
        "put": lambda key: put_bytes(storage, key, b"evil"),
        "open": lambda key: storage.open(key).__enter__(),
        "iter_chunks": lambda key: storage.iter_chunks(key),
        "stat": lambda key: storage.stat(key),
        "exists": lambda key: storage.exists(key),
        "delete": lambda key: storage.delete(key),
        "copy from": lambda key: storage.copy(key, "pool/good"),
        "copy to": lambda key: storage.copy("pool/good", key),
        "move from": lambda key: storage.move(key, "pool/good"),
        "move to": lambda key: storage.move("pool/good", key),
    }
    accepted = []
    for key in HOSTILE_KEYS:
        for name, operation in operations.items():
            try:
                operation(key)
            except InvalidKey:
                continue
            except Exception as exc:  # noqa: BLE001 - reported below
                accepted.append(f"{name}({key!r}) raised {exc!r}")
            else:
                accepted.append(f"{name}({key!r}) was accepted")

    assert accepted == []
    assert store.leftovers() == ["pool/good"]
    assert read_all(storage, "pool/good") == b"good"


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("quarantine/../etc/passwd", "'..' path segment"),
        ("/abs", "absolute path"),
        ("pool//x", "empty path segment"),
        ("other/x", "must start with 'quarantine/' or 'pool/' or 'keys/'"),
        ("pool/a\\b", "backslash"),
        ("pool/\x00", "control character"),
        ("pool/" + "a" * 1020, "longer than 1024"),
        ("pool/" + "a" * 256, "segment longer than 255"),
        ("pool/a b", "character ' '"),
        ("", "empty"),
    ],
)
def test_invalid_key_messages_name_the_problem(key: str, problem: str) -> None:
    with pytest.raises(InvalidKey) as caught:
        validate_key(key)

    assert problem in caught.value.message
    assert caught.value.status == 400 and "\n" not in caught.value.message


VALID_KEYS = [
    "pool/a",
    "quarantine/2024-05-01/upload_1.csv",
    "pool/dataset=cart/batch=7/part-0.parquet",
    "pool/a..b/.hidden",
    "pool/" + "/".join(["a" * 254] * 4),  # exactly 1024 characters
]


def test_valid_keys_round_trip(store: Store) -> None:
    for key in VALID_KEYS:
        assert validate_key(key) == key
        put_bytes(store.storage, key, key.encode())
    for key in VALID_KEYS:
        assert read_all(store.storage, key) == key.encode()
        assert store.storage.stat(key).size == len(key)
    assert [info.key for info in store.storage.list("")] == sorted(VALID_KEYS)
    assert store.leftovers() == sorted(VALID_KEYS)


def test_invalid_list_prefix_is_rejected_immediately(store: Store) -> None:
    for prefix in ["other/", "/pool", "pool//", "pool/../x", "pool/a b", "po", "pool/~"]:
        with pytest.raises(InvalidKey, match="list prefix"):
            store.storage.list(prefix)  # no iteration needed


# Metadata operations -------------------------------------------------------------------


def test_stat_exists_delete(store: Store) -> None:
    storage = store.storage
    put_bytes(storage, "quarantine/u/1.csv", b"12345")

    info = storage.stat("quarantine/u/1.csv")
    assert (info.key, info.size, info.sha256) == ("quarantine/u/1.csv", 5, None)
    assert info.modified is not None and info.modified.tzinfo is not None
    assert storage.exists("quarantine/u/1.csv")
    assert not storage.exists("quarantine/u")  # a "directory" is not an object

    storage.delete("quarantine/u/1.csv")
    storage.delete("quarantine/u/1.csv")  # idempotent

    assert not storage.exists("quarantine/u/1.csv")
    assert store.leftovers() == []


def test_missing_object_raises_object_not_found(store: Store) -> None:
    storage = store.storage
    missing = "pool/missing.csv"

    for operation in (
        lambda: storage.stat(missing),
        lambda: storage.open(missing).__enter__(),
        lambda: storage.iter_chunks(missing),  # raised by the call, not on first next()
        lambda: storage.copy(missing, "pool/copy"),
        lambda: storage.move(missing, "pool/moved"),
    ):
        with pytest.raises(ObjectNotFound, match="'pool/missing.csv' does not exist"):
            operation()
    assert storage.exists(missing) is False
    storage.delete(missing)
    assert store.leftovers() == []


def test_list_is_sorted_and_filtered_by_prefix(store: Store) -> None:
    storage = store.storage
    for key in ["pool/b", "pool/a/c", "quarantine/a", "pool/a-b", "pool/a/b"]:
        put_bytes(storage, key, key.encode())

    def keys(prefix: str) -> list[str]:
        return [info.key for info in storage.list(prefix)]

    assert keys("pool/") == ["pool/a-b", "pool/a/b", "pool/a/c", "pool/b"]
    assert keys("pool") == ["pool/a-b", "pool/a/b", "pool/a/c", "pool/b"]
    assert keys("pool/a/") == ["pool/a/b", "pool/a/c"]
    assert keys("pool/a") == ["pool/a-b", "pool/a/b", "pool/a/c"]
    assert keys("quarantine/") == ["quarantine/a"]
    assert keys("pool/nothing/") == []
    assert keys("") == ["pool/a-b", "pool/a/b", "pool/a/c", "pool/b", "quarantine/a"]
    assert {info.key: info.size for info in storage.list("pool/a/")} == {
        "pool/a/b": 8,
        "pool/a/c": 8,
    }


def test_copy_and_move_between_zones(store: Store) -> None:
    storage = store.storage
    put_bytes(storage, "quarantine/u1/data.csv", b"checked data")
    put_bytes(storage, "pool/ds/data.csv", b"to be replaced")

    copied = storage.copy("quarantine/u1/data.csv", "quarantine/u1/copy.csv")
    moved = storage.move("quarantine/u1/data.csv", "pool/ds/data.csv")

    assert (copied.key, copied.size) == ("quarantine/u1/copy.csv", 12)
    assert (moved.key, moved.size) == ("pool/ds/data.csv", 12)
    assert read_all(storage, "quarantine/u1/copy.csv") == b"checked data"
    assert read_all(storage, "pool/ds/data.csv") == b"checked data"
    assert not storage.exists("quarantine/u1/data.csv")
    assert storage.move("pool/ds/data.csv", "pool/ds/data.csv").size == 12  # no-op
    assert storage.copy("pool/ds/data.csv", "pool/ds/data.csv").size == 12  # no-op
    assert store.leftovers() == ["pool/ds/data.csv", "quarantine/u1/copy.csv"]


def test_iter_chunks_close_releases_the_object(store: Store) -> None:
    put_bytes(store.storage, "pool/x", b"abcdef")
    chunks = store.storage.iter_chunks("pool/x", chunk_size=2)

    assert next(chunks) == b"ab"
    chunks.close()  # type: ignore[attr-defined]  # what a WSGI server does

    assert list(chunks) == []
    store.storage.delete("pool/x")  # nothing holds it open
    assert store.leftovers() == []


def test_check_passes_on_a_usable_store(store: Store) -> None:
    store.storage.check()
    assert store.leftovers() == []  # the writability probe cleans up after itself


# Local specifics -----------------------------------------------------------------------


def test_local_files_are_private(tmp_path: Path) -> None:
    old_umask = os.umask(0o277)  # modes must not depend on the umask, even a strange one
    try:
        storage = get_storage(local_settings(tmp_path))
        put_bytes(storage, "quarantine/u/deep/file.csv", b"data")
        storage.copy("quarantine/u/deep/file.csv", "pool/ds/copy.csv")
        storage.move("quarantine/u/deep/file.csv", "pool/ds2/moved.csv")
    finally:
        os.umask(old_umask)

    root = tmp_path / "objects"
    for path in [root / "pool/ds/copy.csv", root / "pool/ds2/moved.csv"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in [root, root / "pool", root / "pool/ds", root / "quarantine/u/deep"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path


def test_local_check_fails_clearly_when_not_a_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    storage = get_storage(local_settings(tmp_path, storage_path=str(blocker / "objects")))

    with pytest.raises(StorageError, match="CLEANROOM_STORAGE_PATH") as caught:
        storage.check()

    assert str(blocker / "objects") in caught.value.message
    assert "\n" not in caught.value.message


def test_get_storage_local_uses_effective_storage_path(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, storage_path="")
    storage = get_storage(settings)

    assert isinstance(storage, LocalStorage)
    assert storage.root == tmp_path.resolve() / "objects" == settings.effective_storage_path
    assert ZONES == ("quarantine", "pool", "keys", "synthetic")


# S3 specifics --------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_get_storage_s3_client_configuration(tmp_path: Path) -> None:
    settings = s3_settings(tmp_path, "http://127.0.0.1:9", "bucket-a", s3_part_size_mb=1)
    storage = get_storage(settings)

    assert isinstance(storage, S3Storage)
    config = storage._client.meta.config
    assert config.s3 == {"addressing_style": "path"}
    assert (config.connect_timeout, config.read_timeout) == (5, 60)
    assert storage._client.meta.endpoint_url == "http://127.0.0.1:9"
    assert storage.part_size == 5 * MIB  # raised to S3's minimum
    with pytest.raises(ConfigurationError, match="CLEANROOM_S3_BUCKET"):
        get_storage(s3_settings(tmp_path, "http://127.0.0.1:9", ""))


@pytest.mark.s3
def test_s3_upload_uses_configured_part_size(s3_store: Store) -> None:
    storage = s3_store.make(s3_part_size_mb=6)
    info = storage.put("pool/p", GeneratedStream(13 * MIB))  # type: ignore[arg-type]

    head = s3_store.admin.head_object(Bucket=s3_store.bucket, Key="pool/p", PartNumber=1)
    assert head["ContentLength"] == 6 * MIB  # the first part
    assert head["PartsCount"] == 3
    assert info.size == 13 * MIB


@pytest.mark.s3
def test_s3_server_side_encryption(s3_store: Store) -> None:
    admin, bucket = s3_store.admin, s3_store.bucket
    plain = s3_store.make()
    encrypted = s3_store.make(s3_sse="AES256")

    put_bytes(plain, "pool/plain", b"x")
    put_bytes(encrypted, "quarantine/small", b"x")
    encrypted.put("quarantine/big", GeneratedStream(6 * MIB))  # type: ignore[arg-type]
    encrypted.move("quarantine/small", "pool/small")
    encrypted.copy("quarantine/big", "pool/big")

    def sse(key: str) -> str | None:
        return admin.head_object(Bucket=bucket, Key=key).get("ServerSideEncryption")

    assert sse("pool/plain") is None  # the header is what makes the difference
    assert sse("quarantine/big") == "AES256"
    assert sse("pool/small") == "AES256"
    assert sse("pool/big") == "AES256"

    kms = s3_store.make(s3_sse="aws:kms", s3_sse_kms_key_id="alias/cleanroom")
    put_bytes(kms, "pool/kms", b"x")
    head = admin.head_object(Bucket=bucket, Key="pool/kms")
    assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", "alias/cleanroom")


@pytest.mark.s3
def test_s3_large_copy_uses_multipart_copy(s3_store: Store) -> None:
    storage = s3_store.make(s3_sse="AES256")
    assert isinstance(storage, S3Storage)
    storage._copy_config = TransferConfig(
        multipart_threshold=5 * MIB,
        multipart_chunksize=5 * MIB,
        preferred_transfer_client="classic",
    )
    source: Any = GeneratedStream(6 * MIB)
    info = storage.put("quarantine/big", source, content_type="text/csv")

    storage.move("quarantine/big", "pool/big")

    head = s3_store.admin.head_object(Bucket=s3_store.bucket, Key="pool/big")
    assert head["ETag"].strip('"').endswith("-2")  # copied part by part
    assert (head["ServerSideEncryption"], head["ContentType"]) == ("AES256", "text/csv")
    assert sha256_of_object(storage, "pool/big") == (6 * MIB, info.sha256)
    assert s3_store.leftovers() == ["pool/big"]


@pytest.mark.s3
def test_s3_check_fails_clearly_for_a_missing_bucket(s3_endpoint: str, tmp_path: Path) -> None:
    storage = get_storage(s3_settings(tmp_path, s3_endpoint, "no-such-bucket-here"))

    with pytest.raises(StorageError) as caught:
        storage.check()

    message = caught.value.message
    assert "'no-such-bucket-here'" in message and "does not exist" in message
    assert s3_endpoint in message and "CLEANROOM_S3_BUCKET" in message
    assert "\n" not in message and "Traceback" not in message


@pytest.mark.s3
def test_s3_operations_on_a_missing_bucket_raise_storage_error(
    s3_endpoint: str, tmp_path: Path
) -> None:
    storage = get_storage(s3_settings(tmp_path, s3_endpoint, "no-such-bucket-here"))

    for operation in (
        lambda: put_bytes(storage, "pool/x", b"x"),
        lambda: list(storage.list("pool/")),
        lambda: storage.delete("pool/x"),
        lambda: storage.open("pool/x").__enter__(),
    ):
        with pytest.raises(StorageError, match="'no-such-bucket-here'.*does not exist"):
            operation()


def test_s3_check_fails_clearly_for_an_unreachable_endpoint(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    settings = s3_settings(tmp_path, endpoint, "bucket-a")
    storage = S3Storage.from_settings(settings, connect_timeout=1, read_timeout=1, max_attempts=1)

    with pytest.raises(StorageError) as caught:
        storage.check()

    message = caught.value.message
    assert message.startswith(f"cannot reach the S3 bucket 'bucket-a' at {endpoint}")
    assert message.endswith("Check CLEANROOM_S3_ENDPOINT_URL and credentials.")
    assert "\n" not in message
    assert caught.value.status == 503
