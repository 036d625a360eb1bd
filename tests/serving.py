"""Starting and stopping a real ``cleanroom`` process, for the end-to-end tests and the
benchmarks that measure a running server (``benchmarks/upload_memory.py``)."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

# SIGTERM, then SIGKILL after a timeout: how the hub stops its own JupyterHub child.
from hub.jupyterhub.cli import stop

__all__ = ["cleanroom_command", "free_port", "healthy", "server_env", "stop"]


def cleanroom_command() -> list[str]:
    """The venv's ``cleanroom`` script next to this interpreter, else the one on PATH."""
    script = Path(sys.executable).parent / "cleanroom"
    if script.is_file():
        return [str(script)]
    found = shutil.which("cleanroom")
    if found:
        return [found]
    return [sys.executable, "-c", "from hub.cli import cli; cli()"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(data_dir: Path, port: int, **settings: str | int) -> dict[str, str]:
    """This process's environment for a server on ``port`` over ``data_dir``, with
    ``settings`` as ``CLEANROOM_<NAME>`` (``max_upload_mb=2048``). Inherited CLEANROOM_*
    settings (a developer's instance, a CI database) do not leak into the server; JupyterHub
    stays off unless a setting turns it on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEANROOM_")}
    env.update(
        {
            "CLEANROOM_DATA_DIR": str(data_dir),
            "CLEANROOM_PORT": str(port),
            "CLEANROOM_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "CLEANROOM_LOG_LEVEL": "WARNING",
            "CLEANROOM_SANDBOX_ENABLED": "false",
        }
    )
    env.update({f"CLEANROOM_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def healthy(url: str) -> bool:
    """``/healthz`` answers 200."""
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as resp:  # noqa: S310
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False
