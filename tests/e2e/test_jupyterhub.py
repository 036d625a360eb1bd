"""The researcher sandbox end to end: ``cleanroom up`` starts the hub, JupyterHub and its
proxy on loopback ports; a researcher signs in through JupyterHub's login form with their
Cleanroom password, gets a notebook server running as their own operating-system user, and
a notebook runs in its kernel through the Jupyter server's API (REST + kernel websocket).

Needs root (one system user per researcher) and ``make install``'s notebook environment
(``.venv-notebook``, built from a Python every user can run); the test users (``crt-*``)
persist across runs and are reused. Own data directory, because it suspends the demo agreement.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psutil
import pytest
import requests
import websocket

from tests.serving import cleanroom_command, free_port, healthy, server_env, stop

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NOTEBOOKS = Path(__file__).resolve().parents[2] / "sandbox" / "notebooks"
PREFIX = "crt-"  # the test's system users, apart from a real deployment's cr-*
DEADLINE = 60.0


@dataclass(frozen=True)
class Sandbox:
    hub: str
    jupyterhub: str
    data_dir: Path
    logins: dict[str, str]
    env: dict[str, str]


def _wait(what: str, ok: Any, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + DEADLINE
    while not ok():
        if proc.poll() is not None:
            pytest.fail(
                f"`cleanroom up` exited ({proc.returncode}) before {what}:\n"
                f"{log.read_text(errors='replace')[-4000:]}"
            )
        if time.monotonic() > deadline:
            pytest.fail(
                f"{what} not ready in {DEADLINE:.0f} s:\n{log.read_text(errors='replace')[-4000:]}"
            )
        time.sleep(0.2)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    if os.geteuid() != 0:
        pytest.skip("the sandbox's isolation creates operating-system users: run as root")
    # Researchers' servers run from the notebook environment `make install` builds from a
    # Python every user can run (sandbox_notebook_env); `cleanroom up` refuses, and this
    # test fails, when it is missing or private.
    # A traversable parent, so that only the data directory's own mode (0700) stands
    # between a notebook user and the hub's files.
    root = Path(tempfile.mkdtemp(prefix="cleanroom-e2e-"))
    root.chmod(0o755)
    data_dir = root / "data"
    port = free_port()
    env = server_env(data_dir, port)
    env.update(
        {
            "CLEANROOM_SANDBOX_ENABLED": "true",
            "CLEANROOM_SANDBOX_ISOLATION": "system-users",
            "CLEANROOM_SANDBOX_PORT": str(free_port()),
            "CLEANROOM_SANDBOX_HUB_PORT": str(free_port()),
            "CLEANROOM_SANDBOX_PROXY_API_PORT": str(free_port()),
            "CLEANROOM_SANDBOX_USER_PREFIX": PREFIX,
            "CLEANROOM_SANDBOX_ACCESS_CHECK_SECONDS": "2",
            "CLEANROOM_LOG_LEVEL": "INFO",
        }
    )
    command = cleanroom_command()
    seeded = subprocess.run(
        [*command, "demo", "seed"], env=env, capture_output=True, text=True, timeout=300
    )
    assert seeded.returncode == 0, seeded.stdout + seeded.stderr
    logins = json.loads((data_dir / "demo-logins.json").read_text())
    log = root / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*command, "up", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    hub = f"http://127.0.0.1:{port}"
    jupyterhub = f"http://127.0.0.1:{env['CLEANROOM_SANDBOX_PORT']}"
    try:
        _wait("the portal", lambda: healthy(hub), proc, log)
        _wait("JupyterHub", lambda: _answers(f"{jupyterhub}/hub/api"), proc, log)
        yield Sandbox(hub, jupyterhub, data_dir, logins, env)
    finally:
        stop(proc)
        print(log.read_text(errors="replace")[-3000:])
        shutil.rmtree(root, ignore_errors=True)


def _login(sandbox: Sandbox, username: str) -> tuple[requests.Session, requests.Response]:
    http = requests.Session()
    page = http.get(f"{sandbox.jupyterhub}/hub/login", timeout=10)
    xsrf = re.search(r'name="_xsrf"\s+value="([^"]+)"', page.text)
    data = {"username": username, "password": sandbox.logins[username]}
    if xsrf:
        data["_xsrf"] = xsrf.group(1)
    resp = http.post(f"{sandbox.jupyterhub}/hub/login?next=", data=data, timeout=60)
    return http, resp


class Kernel:
    """A kernel of the researcher's server, driven over the Jupyter server's API."""

    def __init__(self, http: requests.Session, base: str) -> None:
        self.http, self.base = http, base
        # The hub (/hub/) and the server (/user/<name>/) each set an _xsrf cookie.
        path = urlparse(base).path.rstrip("/") + "/"
        xsrf = http.cookies.get("_xsrf", default="", path=path)
        self.headers = {"X-XSRFToken": xsrf}
        resp = http.post(
            f"{base}/api/kernels", json={"name": "python3"}, headers=self.headers, timeout=30
        )
        assert resp.status_code == 201, resp.text
        self.id = resp.json()["id"]
        cookie = "; ".join(
            f"{c.name}={c.value}" for c in http.cookies if path.startswith(c.path or "/")
        )
        ws_url = base.replace("http://", "ws://") + f"/api/kernels/{self.id}/channels"
        self.ws = websocket.create_connection(
            ws_url, header=[f"Cookie: {cookie}", f"X-XSRFToken: {xsrf}"], timeout=60
        )
        self.session = uuid.uuid4().hex

    def run(self, code: str) -> tuple[str, dict[str, str] | None]:
        """Execute ``code``; (printed output and results, error or None)."""
        msg_id = uuid.uuid4().hex
        self.ws.send(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "username": "test",
                        "session": self.session,
                        "msg_type": "execute_request",
                        "version": "5.3",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "channel": "shell",
                    "content": {
                        "code": code,
                        "silent": False,
                        "store_history": True,
                        "user_expressions": {},
                        "allow_stdin": False,
                        "stop_on_error": True,
                    },
                }
            )
        )
        out: list[str] = []
        error = None
        idle = replied = False
        while not (idle and replied):
            msg = json.loads(self.ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind in ("execute_result", "display_data"):
                out.append(content["data"].get("text/plain", ""))
            elif kind == "error":
                error = {"ename": content["ename"], "evalue": content["evalue"]}
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
            elif kind == "execute_reply":
                replied = True
        return "".join(out), error

    def close(self) -> None:
        self.ws.close()


def _server(http: requests.Session, sandbox: Sandbox, name: str) -> str:
    """Wait until the user's server answers (the OAuth dance with the hub included)."""
    base = f"{sandbox.jupyterhub}/user/{name}"
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        resp = http.get(f"{base}/api/status", timeout=30)
        if resp.status_code == 200 and resp.headers.get("content-type", "").startswith(
            "application/json"
        ):
            http.get(f"{base}/lab", timeout=30)  # sets the server's _xsrf cookie
            return base
        if resp.status_code == 403:
            # Up, but its API does not redirect: a page does, through the hub's OAuth, and
            # leaves the server's own cookie in the session.
            http.get(f"{base}/lab", timeout=30)
        time.sleep(0.5)
    pytest.fail(f"the notebook server of {name} did not start in {DEADLINE:.0f} s")


def test_the_sign_in_page_is_cleanrooms_and_links_back_to_the_portal(sandbox: Sandbox) -> None:
    page = requests.get(f"{sandbox.jupyterhub}/hub/login", timeout=10)
    assert page.status_code == 200
    text = page.text
    assert "<title>Cleanroom sandbox</title>" in text
    assert "Researchers named in an active data-sharing agreement sign in here" in text
    assert "Cleanroom portal username and password" in text
    assert f'href="{sandbox.hub}"' in text  # back to the portal
    assert "JupyterHub logo" not in text


def test_only_researchers_in_an_active_agreement_sign_in(sandbox: Sandbox) -> None:
    for username in ("steward", "northbridge-data"):
        _, resp = _login(sandbox, username)
        assert resp.status_code == 403 and "/hub/login" in resp.url, username
        # The password was right: the form says why, not "Invalid username or password".
        assert "The notebook sandbox is for researchers" in resp.text, username
        assert "Invalid username or password" not in resp.text
    http = requests.Session()
    resp = http.post(
        f"{sandbox.jupyterhub}/hub/login",
        data={"username": "researcher", "password": "not the password"},
    )
    assert resp.status_code == 403
    assert "for researchers" not in resp.text  # a wrong password learns nothing more


def test_a_researchers_notebook_runs_isolated_and_follows_the_agreement(
    sandbox: Sandbox,
) -> None:
    http, resp = _login(sandbox, "researcher")
    assert resp.status_code == 200, resp.text[-500:]
    base = _server(http, sandbox, "researcher")
    # The first start put the example notebooks into the researcher's home.
    listing = http.get(f"{base}/api/contents/examples", timeout=30)
    assert listing.status_code == 200, listing.text[-500:]
    shipped = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert sorted(c["name"] for c in listing.json()["content"]) == shipped
    # Every hub page links back to the portal.
    home = http.get(f"{sandbox.jupyterhub}/hub/home", timeout=30)
    assert home.status_code == 200 and 'id="cleanroom-portal-link"' in home.text
    assert f'href="{sandbox.hub}"' in home.text
    kernel = Kernel(http, base)
    try:
        # The tour notebook, top to bottom, in the researcher's kernel.
        notebook = json.loads((NOTEBOOKS / "01_pooled_data_tour.ipynb").read_text())
        for cell in notebook["cells"]:
            if cell["cell_type"] == "code":
                _, error = kernel.run("".join(cell["source"]))
                assert error is None, (cell["source"], error)

        out, error = kernel.run(
            "from sandbox import connect\n"
            "cr = connect(agreement='demo-mfp')\n"
            "df = cr.query('SELECT product, COUNT(*) AS n FROM episode GROUP BY product')\n"
            "print(int(df['n'].fillna(0).sum()))"
        )
        assert error is None, error
        assert int(out.strip()) >= 10  # aggregates come back

        # Who the kernel runs as, and what it cannot reach.
        data = sandbox.data_dir
        probe = f"""
import os, pwd, json
result = {{"user": pwd.getpwuid(os.getuid()).pw_name,
           "home_mode": oct(os.stat(os.path.expanduser('~')).st_mode & 0o777)}}
for label, path in [("database", {str(data / "cleanroom.db")!r}),
                    ("quarantine", {str(data / "objects" / "quarantine")!r}),
                    ("pool", {str(data / "objects" / "pool")!r}),
                    ("secret", {str(data / "sandbox-service-secret")!r})]:
    try:
        open(path, "rb").read(1) if label in ("database", "secret") else os.listdir(path)
        result[label] = "readable"
    except PermissionError:
        result[label] = "PermissionError"
    except Exception as err:
        result[label] = type(err).__name__
examples = os.path.expanduser("~/examples")
result["examples"] = sorted(
    (name, pwd.getpwuid(os.stat(os.path.join(examples, name)).st_uid).pw_name,
     oct(os.stat(os.path.join(examples, name)).st_mode & 0o777))
    for name in os.listdir(examples))
result["env"] = sorted(os.environ)
result["env_values"] = "".join(os.environ.values())
print(json.dumps(result))
"""
        out, error = kernel.run(probe)
        assert error is None, error
        seen = json.loads(out)
        assert seen["user"] == f"{PREFIX}researcher"
        assert seen["home_mode"] == "0o700"
        assert [tuple(e) for e in seen["examples"]] == [
            (name, f"{PREFIX}researcher", "0o600") for name in shipped
        ]
        for label in ("database", "quarantine", "pool", "secret"):
            assert seen[label] == "PermissionError", (label, seen[label])
        assert data.stat().st_mode & 0o777 == 0o700
        names = seen["env"]
        assert {"CLEANROOM_GATEWAY_URL", "CLEANROOM_TOKEN"} <= set(names)
        assert [n for n in names if n.startswith("CLEANROOM_")] == [
            "CLEANROOM_GATEWAY_URL",
            "CLEANROOM_TOKEN",
        ]
        for word in ("DATABASE", "S3", "AWS", "HMAC", "SECRET", "PASSWORD", "PG"):
            assert not [n for n in names if word in n], (word, names)
        assert "cleanroom.db" not in seen["env_values"]

        # The steward suspends demo-mfp: the next query under it is refused (the server
        # stays, demo-v2v is still active).
        from hub.agreements import services as agreements
        from hub.db import Database

        database = Database(f"sqlite:///{data / 'cleanroom.db'}")

        def suspend(slug: str) -> None:
            with database.session() as s:
                agreements.transition(s, agreements.get(s, slug), "suspend", actor="user:steward")

        suspend("demo-mfp")
        out, error = kernel.run(
            "from sandbox import PolicyDenied\n"
            "try:\n"
            "    cr.query('SELECT COUNT(*) AS n FROM episode', agreement='demo-mfp')\n"
            "    print('answered')\n"
            "except PolicyDenied as err:\n"
            "    print('refused:', err.code)\n"
        )
        assert error is None, error
        assert out.startswith("refused:"), out
    finally:
        kernel.close()

    # The last agreements go too (demo-v2v, and any other the demo names the researcher
    # in): the access sweep stops the server.
    from sqlalchemy import select

    from hub.agreements.models import AgreementRecord

    with database.session() as s:
        active = s.scalars(
            select(AgreementRecord.slug).where(AgreementRecord.state == "active")
        ).all()
    assert "demo-v2v" in active
    for slug in active:
        suspend(slug)
    database.engine.dispose()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        running = [
            p
            for p in psutil.process_iter(["username"])
            if p.info["username"] == f"{PREFIX}researcher"
        ]
        if not running:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the suspended researcher's server is still running")
    _, resp = _login(sandbox, "researcher")
    assert resp.status_code == 403  # and cannot sign in again
