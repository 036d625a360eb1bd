"""End-to-end fixtures: a real ``cleanroom serve`` subprocess and a real headless Chromium.

- ``live_server`` (session): seeds the demo consortium (``cleanroom demo seed``) in a
  temporary data directory, starts ``cleanroom serve`` on a free port of 127.0.0.1, waits
  for ``/healthz`` and yields a :class:`LiveServer` (``url``, ``data_dir``, ``logins``).
- ``browser`` (session): Debian's Chromium driven by Playwright; ``make test`` installs it.
- ``page``: a fresh browser context and page per test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

PG_URL_ENV = "CLEANROOM_TEST_POSTGRES_URL"
HEALTH_DEADLINE_SECONDS = 30.0
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass(frozen=True)
class LiveServer:
    url: str
    data_dir: Path
    logins: dict[str, str]


def _cleanroom_command() -> list[str]:
    """The venv's ``cleanroom`` script next to this interpreter, else the one on PATH."""
    script = Path(sys.executable).parent / "cleanroom"
    if script.is_file():
        return [str(script)]
    found = shutil.which("cleanroom")
    if found:
        return [found]
    return [sys.executable, "-c", "from hub.cli import cli; cli()"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_env(data_dir: Path, port: int) -> dict[str, str]:
    # Inherited CLEANROOM_* settings (a developer's instance, a CI database) must not leak
    # into the server under test; the PostgreSQL URL of the unit suite is not passed either.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEANROOM_")}
    env.update(
        {
            "CLEANROOM_DATA_DIR": str(data_dir),
            "CLEANROOM_PORT": str(port),
            "CLEANROOM_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "CLEANROOM_LOG_LEVEL": "WARNING",
            # JupyterHub has its own fixture (test_jupyterhub.py) on ports of its own.
            "CLEANROOM_SANDBOX_ENABLED": "false",
        }
    )
    return env


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as resp:  # noqa: S310
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("live-server")
    data_dir = root / "data"
    data_dir.mkdir(mode=0o700)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = _server_env(data_dir, port)
    command = _cleanroom_command()

    seeded = subprocess.run(  # noqa: S603
        [*command, "demo", "seed"], env=env, capture_output=True, text=True, timeout=120
    )
    if seeded.returncode != 0:
        pytest.fail(
            f"`cleanroom demo seed` exited {seeded.returncode}:\n{seeded.stdout}\n{seeded.stderr}"
        )
    logins: dict[str, str] = json.loads((data_dir / "demo-logins.json").read_text())

    stdout_path, stderr_path = root / "serve.out", root / "serve.err"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        proc = subprocess.Popen(  # noqa: S603
            # What `make demo` runs after seeding.
            [*command, "up", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + HEALTH_DEADLINE_SECONDS
        while not _healthy(url):
            if proc.poll() is not None:
                pytest.fail(
                    f"`cleanroom serve` exited early with status {proc.returncode}:\n"
                    f"{stderr_path.read_text(errors='replace')}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"`cleanroom serve` did not answer {url}/healthz with 200 within "
                    f"{HEALTH_DEADLINE_SECONDS:.0f} s:\n{stderr_path.read_text(errors='replace')}"
                )
            time.sleep(0.1)
        yield LiveServer(url=url, data_dir=data_dir, logins=logins)
    finally:
        _stop(proc)


def _chromium_path() -> str | None:
    found = shutil.which("chromium")
    if found:
        return found
    fallback = Path("/usr/bin/chromium")
    return str(fallback) if fallback.is_file() else None


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    executable = _chromium_path()
    if executable is None:
        pytest.fail(
            "Chromium was not found (looked for `chromium` on PATH and /usr/bin/chromium): "
            "run the suite with `make test`, which installs it."
        )
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        playwright.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(10_000)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()
