"""Object store in an S3 bucket (AWS, MinIO, Ceph...) through boto3.

Uploads stream through a multipart upload in parts of ``s3_part_size_mb`` MiB, so memory
stays bounded whatever the size; a failed upload is aborted and leaves no object. botocore
errors are translated into :mod:`hub.errors` exceptions with readable messages.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from hub.errors import CleanroomError, ConfigurationError, ObjectNotFound, StorageError
from hub.storage.base import (
    HashingReader,
    ObjectInfo,
    Storage,
    is_valid_key,
    validate_key,
    validate_prefix,
)

if TYPE_CHECKING:
    from hub.settings import Settings

MIB = 1 << 20
MIN_PART_MB = 5  # S3's minimum part size (except the last part)
MAX_PART_MB = 5 * 1024  # and its maximum
COPY_MULTIPART_THRESHOLD = 4 * 1024 * MIB  # CopyObject handles up to 5 GiB in one request
COPY_PART_SIZE = 512 * MIB
UPLOAD_CONCURRENCY = 4  # parts in flight; memory of an upload is about (this + 1) x part

_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
_NO_BUCKET_CODES = {"NoSuchBucket"}
_DENIED_CODES = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def make_s3_client(
    settings: Settings,
    *,
    connect_timeout: float = 5,
    read_timeout: float = 60,
    max_attempts: int = 5,
) -> Any:
    """A boto3 S3 client for the ``s3_*`` settings (path-style addressing for a custom
    endpoint, bounded timeouts and retries)."""
    endpoint = settings.s3_endpoint_url or None
    options: dict[str, Any] = {
        "retries": {"max_attempts": max_attempts, "mode": "standard"},
        "connect_timeout": connect_timeout,
        "read_timeout": read_timeout,
        "user_agent_extra": "cleanroom",
    }
    if endpoint:
        options["s3"] = {"addressing_style": "path"}
        # S3-compatible stores do not all accept the flexible checksums boto3 sends by
        # default since 1.36; compute them only where the API requires them.
        options["request_checksum_calculation"] = "when_required"
        options["response_checksum_validation"] = "when_required"
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=endpoint,
        region_name=settings.s3_region or None,
        aws_access_key_id=settings.s3_access_key_id or None,
        aws_secret_access_key=settings.s3_secret_access_key or None,
        config=Config(**options),
    )


class S3Storage(Storage):
    """:class:`Storage` in one S3 bucket. ``client`` is a boto3 S3 client (thread-safe)."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        sse: str = "",
        sse_kms_key_id: str = "",
        part_size_mb: int = 8,
    ) -> None:
        if not bucket:
            raise ConfigurationError(
                "storage_backend is s3 but no bucket is set: set CLEANROOM_S3_BUCKET."
            )
        self._client = client
        self.bucket = bucket
        self._sse: dict[str, str] = {}
        if sse:
            self._sse["ServerSideEncryption"] = sse
            if sse == "aws:kms" and sse_kms_key_id:
                self._sse["SSEKMSKeyId"] = sse_kms_key_id
        self.part_size = min(max(int(part_size_mb), MIN_PART_MB), MAX_PART_MB) * MIB
        self._upload_config = TransferConfig(
            multipart_threshold=self.part_size,
            multipart_chunksize=self.part_size,
            max_concurrency=UPLOAD_CONCURRENCY,
            preferred_transfer_client="classic",
        )
        # Parts read ahead of the uploads: bounds the memory of a non-seekable upload.
        self._upload_config.max_in_memory_upload_chunks = UPLOAD_CONCURRENCY
        self._copy_config = TransferConfig(
            multipart_threshold=COPY_MULTIPART_THRESHOLD,
            multipart_chunksize=COPY_PART_SIZE,
            max_concurrency=UPLOAD_CONCURRENCY,
            preferred_transfer_client="classic",
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        connect_timeout: float = 5,
        read_timeout: float = 60,
        max_attempts: int = 5,
    ) -> S3Storage:
        """Build the backend from the ``s3_*`` settings (what :func:`get_storage` does)."""
        if not settings.s3_bucket:
            raise ConfigurationError(
                "storage_backend is s3 but no bucket is set: set CLEANROOM_S3_BUCKET."
            )
        client = make_s3_client(
            settings,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_attempts=max_attempts,
        )
        return cls(
            client,
            settings.s3_bucket,
            sse=settings.s3_sse,
            sse_kms_key_id=settings.s3_sse_kms_key_id,
            part_size_mb=settings.s3_part_size_mb,
        )

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, endpoint={self.endpoint!r})"

    @property
    def endpoint(self) -> str:
        return str(self._client.meta.endpoint_url)

    # Errors ----------------------------------------------------------------------------

    def _error(self, exc: Exception, action: str | None, key: str | None = None) -> CleanroomError:
        """Translate a botocore exception into a hub error with a one-line message.
        ``action`` names the operation (``None`` for :meth:`check`)."""
        where = f"the S3 bucket {self.bucket!r} at {self.endpoint}"
        what = f"{action} of object {key!r}" if action and key else action
        failed = f"{what} failed: " if what else ""
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            message = _one_line(error.get("Message") or exc)
            if code in _NOT_FOUND_CODES and key is not None:
                # A HEAD answers a bare 404 for a missing bucket too; check() tells them apart.
                return ObjectNotFound(f"object {key!r} does not exist")
            if code in _NO_BUCKET_CODES or code in _NOT_FOUND_CODES:
                return StorageError(
                    f"{failed}{where} does not exist. Create the bucket or fix CLEANROOM_S3_BUCKET."
                )
            if code in _DENIED_CODES:
                return StorageError(
                    f"{failed}access to {where} was denied ({code}). Check "
                    "CLEANROOM_S3_ACCESS_KEY_ID, CLEANROOM_S3_SECRET_ACCESS_KEY and the "
                    "bucket policy."
                )
            return StorageError(f"{failed}{where} answered {code}: {message}")
        if isinstance(exc, NoCredentialsError):
            return StorageError(
                f"{failed}no S3 credentials found. Set CLEANROOM_S3_ACCESS_KEY_ID and "
                "CLEANROOM_S3_SECRET_ACCESS_KEY, or configure boto3's credential chain."
            )
        during = f" ({what})" if what else ""
        return StorageError(
            f"cannot reach {where}{during}: {_one_line(exc)}. Check "
            "CLEANROOM_S3_ENDPOINT_URL and credentials."
        )

    # Storage ---------------------------------------------------------------------------

    def put(
        self,
        key: str,
        stream: BinaryIO,
        *,
        max_bytes: int | None = None,
        content_type: str = "application/octet-stream",
    ) -> ObjectInfo:
        """See :meth:`Storage.put`. Streams below one part go in a single PutObject, larger
        ones in a multipart upload that boto3 aborts if anything fails."""
        validate_key(key)
        reader = HashingReader(stream, max_bytes)
        extra = {"ContentType": content_type, **self._sse}
        try:
            self._client.upload_fileobj(
                reader, self.bucket, key, ExtraArgs=extra, Config=self._upload_config
            )
        except BaseException as exc:
            if reader.error is not None:
                if reader.error is exc:
                    raise
                raise reader.error from None
            if isinstance(exc, ClientError | BotoCoreError):
                raise self._error(exc, "upload", key) from exc
            raise
        info = self.stat(key)
        if info.size != reader.size:
            raise StorageError(
                f"upload of object {key!r} to {self.bucket!r} stored {info.size} bytes, "
                f"expected {reader.size}"
            )
        return ObjectInfo(key, reader.size, reader.sha256, info.modified)

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        """Yield the object's botocore ``StreamingBody``; errors while reading it inside the
        ``with`` block are translated too."""
        validate_key(key)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "download", key) from exc
        body = response["Body"]
        try:
            yield body
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "download", key) from exc
        finally:
            body.close()

    def stat(self, key: str) -> ObjectInfo:
        validate_key(key)
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "stat", key) from exc
        return ObjectInfo(key, int(head["ContentLength"]), None, head.get("LastModified"))

    def delete(self, key: str) -> None:
        validate_key(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchKey":
                return  # S3 itself answers 204; some compatible stores do not
            raise self._error(exc, "delete", key) from exc
        except BotoCoreError as exc:
            raise self._error(exc, "delete", key) from exc

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        return self._list(prefix)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    if is_valid_key(key):  # skip anything not written through a key
                        yield ObjectInfo(key, int(obj["Size"]), None, obj.get("LastModified"))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, f"listing of prefix {prefix!r}") from exc

    def copy(self, src: str, dst: str) -> ObjectInfo:
        """Server-side copy (CopyObject, or UploadPartCopy above 4 GiB), applying the
        configured server-side encryption to the copy."""
        validate_key(src)
        validate_key(dst)
        if src == dst:
            return self.stat(src)
        try:
            self._client.copy(
                {"Bucket": self.bucket, "Key": src},
                self.bucket,
                dst,
                ExtraArgs=dict(self._sse),
                Config=self._copy_config,
            )
        except (ClientError, BotoCoreError) as exc:
            error = self._error(exc, "copy", src)
            if isinstance(error, ObjectNotFound):
                raise error from exc
            raise self._error(exc, f"copy of object {src!r} to {dst!r}") from exc
        return self.stat(dst)

    def check(self) -> None:
        """HeadBucket: proves the endpoint answers, the credentials work and the bucket
        exists."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, None) from exc
