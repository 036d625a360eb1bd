"""End-to-end fixtures: a real ``cleanroom serve`` subprocess and a real headless Chromium.

- ``live_server`` (session): seeds the demo consortium (``cleanroom demo seed
  --no-synthetic``) in a temporary data directory, starts ``cleanroom serve`` on a free
  port of 127.0.0.1, waits for ``/healthz`` and yields a :class:`LiveServer` (``url``,
  ``data_dir``, ``logins``).
- ``browser`` (session): Debian's Chromium driven by Playwright; ``make test`` installs it.
- ``page``: a fresh browser context and page per test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Error, Page, sync_playwright

from tests.serving import cleanroom_command, free_port, healthy, server_env, stop

PG_URL_ENV = "CLEANROOM_TEST_POSTGRES_URL"
HEALTH_DEADLINE_SECONDS = 30.0
SEED_TIMEOUT_SECONDS = 300  # a loaded two-core machine needs well over the usual 20 s
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


@contextmanager
def demo_server(
    root: Path, *seed_options: str, command: str = "up", **settings: object
) -> Iterator[LiveServer]:
    """A demo consortium in a fresh data directory under ``root`` (``cleanroom demo seed
    SEED_OPTIONS``) served by ``cleanroom up`` (what `make demo` runs after seeding; or
    ``command="serve"``: the portal alone) on a free port of 127.0.0.1, with ``settings``
    as environment overrides; stopped on exit."""
    data_dir = root / "data"
    data_dir.mkdir(mode=0o700)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = server_env(data_dir, port, **settings)
    program = cleanroom_command()
    seeded = subprocess.run(  # noqa: S603
        [*program, "demo", "seed", *seed_options],
        env=env,
        capture_output=True,
        text=True,
        timeout=SEED_TIMEOUT_SECONDS,
    )
    if seeded.returncode != 0:
        pytest.fail(
            f"`cleanroom demo seed` exited {seeded.returncode}:\n{seeded.stdout}\n{seeded.stderr}"
        )
    logins: dict[str, str] = json.loads((data_dir / "demo-logins.json").read_text())
    log = root / f"{command}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603
            [*program, command, "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + HEALTH_DEADLINE_SECONDS
        while not healthy(url):
            if proc.poll() is not None:
                pytest.fail(
                    f"`cleanroom {command}` exited early with status {proc.returncode}:\n"
                    f"{log.read_text(errors='replace')[-4000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"`cleanroom {command}` did not answer {url}/healthz with 200 within "
                    f"{HEALTH_DEADLINE_SECONDS:.0f} s:\n{log.read_text(errors='replace')[-4000:]}"
                )
            time.sleep(0.1)
        yield LiveServer(url=url, data_dir=data_dir, logins=logins)
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # Without the demo's synthetic versions: SDV would add about half a minute per session,
    # and tests/unit/hub/test_demo_synthetic.py covers them. One address signs in as every
    # role of the demo, many times a minute across the session's tests: the per-address
    # sign-in rate would answer 429 (a unit test covers it).
    with demo_server(
        tmp_path_factory.mktemp("live-server"), "--no-synthetic", login_rate_per_minute=1000
    ) as server:
        yield server


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


def sign_in(page: Page, server: LiveServer, username: str, password: str | None = None) -> None:
    """Fill and submit the real sign-in form."""
    page.goto(f"{server.url}/login")
    page.fill("#username", username)
    page.fill("#password", server.logins[username] if password is None else password)
    page.click("form button[type=submit]")


class ConsoleProblems(list[str]):
    """Console errors and uncaught page errors of every page it is attached to."""

    def watch(self, page: Page) -> None:
        def on_console(msg: ConsoleMessage) -> None:
            # base.html declares an inline icon, so Chromium asks for no /favicon.ico (whose
            # 404 it would log as an error at a moment of its choosing).
            if msg.type == "error":
                self.append(f"console: {msg.text} ({msg.location.get('url')})")

        def on_page_error(err: Error) -> None:
            self.append(f"page error: {err}")

        page.on("console", on_console)
        page.on("pageerror", on_page_error)


@pytest.fixture
def console_problems(page: Page) -> ConsoleProblems:
    problems = ConsoleProblems()
    problems.watch(page)
    return problems
