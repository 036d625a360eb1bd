"""Asking the Cleanroom hub's service endpoints (``/api/v1/sandbox/service/``)."""

from __future__ import annotations

import json
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest


class HubUnavailable(Exception):
    """The hub did not answer (down, wrong address): nobody is let in meanwhile."""


async def ask(hub_url: str, secret: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    """POST ``body`` to ``<hub_url>/api/v1/sandbox/service/<path>``; (status, JSON body)."""
    request = HTTPRequest(
        f"{hub_url.rstrip('/')}/api/v1/sandbox/service/{path}",
        method="POST",
        body=json.dumps(body),
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
        request_timeout=30,
    )
    try:
        resp = await AsyncHTTPClient().fetch(request, raise_error=False)
    except (OSError, HTTPClientError) as err:
        raise HubUnavailable(f"the Cleanroom hub at {hub_url} did not answer: {err}") from err
    if resp.code == 599:
        raise HubUnavailable(f"the Cleanroom hub at {hub_url} did not answer: {resp.error}")
    try:
        return resp.code, json.loads(resp.body or b"{}")
    except ValueError:
        return resp.code, {}
