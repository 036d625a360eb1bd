"""A real S3-protocol server for tests: moto's ``ThreadedMotoServer`` on 127.0.0.1.

The server runs in a thread of the test process and speaks HTTP, so the code under test
goes through boto3, botocore and the network stack exactly as against MinIO or AWS (no
in-process patching). It binds port 0, i.e. the OS picks a free port, with no race.

    with s3_server() as endpoint_url:
        ...  # boto3 client(endpoint_url=endpoint_url, credentials below)

or ``server = start_s3_server()`` ... ``stop_s3_server(server)`` for a session fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from moto.server import ThreadedMotoServer

ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"  # noqa: S105 - moto accepts any credentials
REGION = "us-east-1"


@dataclass
class S3Server:
    """A running moto server and the URL to reach it at."""

    endpoint_url: str
    server: ThreadedMotoServer


def start_s3_server(host: str = "127.0.0.1") -> S3Server:
    """Start moto's S3-compatible server on a free port of ``host``; returns once it listens."""
    server = ThreadedMotoServer(ip_address=host, port=0, verbose=False)
    server.start()
    bound_host, port = server.get_host_and_port()
    return S3Server(endpoint_url=f"http://{bound_host}:{port}", server=server)


def stop_s3_server(s3: S3Server) -> None:
    """Shut the server down and wait for its thread."""
    s3.server.stop()


@contextmanager
def s3_server(host: str = "127.0.0.1") -> Iterator[str]:
    """Run an S3 server for the duration of the ``with`` block; yields its endpoint URL."""
    s3 = start_s3_server(host)
    try:
        yield s3.endpoint_url
    finally:
        stop_s3_server(s3)


def s3_settings_overrides(endpoint_url: str, bucket: str, **extra: object) -> dict[str, object]:
    """``load_settings`` overrides pointing the hub's S3 backend at this server."""
    return {
        "storage_backend": "s3",
        "s3_bucket": bucket,
        "s3_endpoint_url": endpoint_url,
        "s3_region": REGION,
        "s3_access_key_id": ACCESS_KEY_ID,
        "s3_secret_access_key": SECRET_ACCESS_KEY,
        **extra,
    }
