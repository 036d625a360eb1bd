"""Object storage for the quarantine and pool zones: a local directory or an S3 bucket.

Use :func:`get_storage` to build the configured backend; all access goes through the
:class:`Storage` interface, which validates every key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hub.storage.base import (
    ZONES,
    ObjectInfo,
    Storage,
    is_valid_key,
    validate_key,
    validate_prefix,
)
from hub.storage.local import LocalStorage

if TYPE_CHECKING:
    from hub.settings import Settings

__all__ = [
    "ZONES",
    "LocalStorage",
    "ObjectInfo",
    "Storage",
    "get_storage",
    "is_valid_key",
    "validate_key",
    "validate_prefix",
]


def get_storage(settings: Settings) -> Storage:
    """The backend named by ``storage_backend``: ``local`` at ``effective_storage_path`` or
    ``s3`` from the ``s3_*`` settings. Builds a client but makes no request; call
    :meth:`Storage.check` to find out whether the store is usable."""
    if settings.storage_backend == "s3":
        from hub.storage.s3 import S3Storage  # boto3 is imported only when needed

        return S3Storage.from_settings(settings)
    return LocalStorage(settings.effective_storage_path)
