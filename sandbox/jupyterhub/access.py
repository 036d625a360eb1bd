"""The access sweep: a JupyterHub-managed service that stops the servers of users who are
no longer researchers named in an active agreement (suspended, expired, terminated, removed
from it, account disabled). Run by JupyterHub as ``python -m sandbox.jupyterhub.access``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from sandbox.jupyterhub.config import load_run_config
from sandbox.jupyterhub.hubapi import HubUnavailable, ask

log = logging.getLogger("cleanroom.sandbox.access")


class JupyterHubAPI:
    """The few JupyterHub REST calls the sweep needs, with the service's own token."""

    def __init__(self, api_url: str, token: str) -> None:
        self.api_url = api_url.rstrip("/")
        self.token = token

    async def _call(self, method: str, path: str) -> Any:
        resp = await AsyncHTTPClient().fetch(
            HTTPRequest(
                f"{self.api_url}{path}",
                method=method,
                headers={"Authorization": f"token {self.token}"},
                body=None if method == "GET" else b"",
                allow_nonstandard_methods=True,
                request_timeout=30,
            ),
            raise_error=False,
        )
        if resp.code >= 400:
            raise RuntimeError(f"JupyterHub {method} {path}: {resp.code} {resp.body[:200]!r}")
        return json.loads(resp.body) if resp.body else None

    async def running(self) -> list[str]:
        users = await self._call("GET", "/users?state=active")
        return [u["name"] for u in users or [] if u.get("servers") or u.get("server")]

    async def stop(self, name: str) -> None:
        await self._call("DELETE", f"/users/{name}/server")


async def sweep(
    running: Callable[[], Awaitable[list[str]]],
    allowed: Callable[[str], Awaitable[bool]],
    stop: Callable[[str], Awaitable[None]],
) -> list[str]:
    """Stop the running servers whose user may no longer use the sandbox; their names."""
    stopped = []
    for name in await running():
        if not await allowed(name):
            log.warning("stopping %s's server: no longer a researcher in an active agreement", name)
            await stop(name)
            stopped.append(name)
    return stopped


def hub_allows(hub_url: str, secret: str) -> Callable[[str], Awaitable[bool]]:
    """Whether the Cleanroom hub still lets ``name`` use the sandbox (``/service/check``)."""

    async def allowed(name: str) -> bool:
        try:
            status, body = await ask(hub_url, secret, "check", {"username": name})
        except HubUnavailable as err:
            log.error("%s; servers are left running until it answers", err)
            return True  # an outage of the hub must not look like a suspension
        return status == 200 and bool(body.get("allowed"))

    return allowed


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[cleanroom-access] %(message)s")
    run = load_run_config()
    api = JupyterHubAPI(os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"])
    allowed = hub_allows(run["hub_url"], run["service_secret"])
    period = float(run.get("access_check_seconds", 30))
    # JupyterHub stops its services with SIGINT, and Ctrl-C in the terminal of `cleanroom up`
    # sends another to the whole process group: each ends the loop after the current sweep.
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    while not stopping.is_set():
        try:
            await sweep(api.running, allowed, api.stop)
        except Exception:  # noqa: BLE001 - keep sweeping whatever one round hit
            log.exception("access sweep failed; trying again")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=period)


if __name__ == "__main__":
    # Closing the loop puts Python's own SIGINT handler back (a late signal then raises
    # KeyboardInterrupt: "stop" too), and the interpreter's shutdown the system's default,
    # which would end the process by the signal: once stopping, further signals are ignored.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
