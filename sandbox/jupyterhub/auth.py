"""One identity: researchers sign in to JupyterHub with their Cleanroom account.

The password goes to the hub, which checks it with its own services (rate limit and
throttling included) and says whether the user is a researcher named in at least one active
agreement. Nobody else gets in; nobody is a JupyterHub admin.
"""

from __future__ import annotations

from typing import Any

from jupyterhub.auth import Authenticator
from tornado import web
from traitlets import Unicode, default

from sandbox.jupyterhub.hubapi import HubUnavailable, ask


class CleanroomAuthenticator(Authenticator):
    """Checks logins against the Cleanroom hub; re-checks access every ``auth_refresh_age``."""

    hub_url = Unicode(config=True, help="Base URL of the Cleanroom hub (its service API).")
    service_secret = Unicode(
        config=True, help="Shared secret of the hub's /api/v1/sandbox/service/ endpoints."
    )

    @default("allow_all")
    def _allow_all(self) -> bool:
        return True  # the hub decides who is allowed, on every login and refresh

    @default("auth_refresh_age")
    def _refresh_age(self) -> int:
        return 60

    @default("refresh_pre_spawn")
    def _refresh_pre_spawn(self) -> bool:
        return True

    def _check(self) -> None:
        if not self.hub_url:
            raise ValueError("CleanroomAuthenticator.hub_url must be set")
        if not self.service_secret:
            raise ValueError("CleanroomAuthenticator.service_secret must be set")

    async def authenticate(self, handler: Any, data: dict[str, str]) -> dict[str, Any] | None:
        self._check()
        address = handler.request.remote_ip if handler is not None else ""
        try:
            status, body = await ask(
                self.hub_url,
                self.service_secret,
                "login",
                {
                    "username": data.get("username", ""),
                    "password": data.get("password", ""),
                    "address": address or "",
                },
            )
        except HubUnavailable as err:
            self.log.error("login refused: %s", err)
            return None
        if status != 200:
            message = (body.get("error") or {}).get("message", "") if isinstance(body, dict) else ""
            self.log.warning(
                "login of %r refused by the hub (%s): %s", data.get("username"), status, message
            )
            return None
        if not body.get("allowed"):
            self.log.warning("%s signed in but may not use the sandbox", body["name"])
            # The password was right: say why (JupyterHub shows it on its login form)
            # instead of "Invalid username or password".
            reason = body.get("reason") or "Your account may not use the notebook sandbox."
            raise web.HTTPError(403, "%s", str(reason))
        return {"name": body["name"], "admin": False}

    async def refresh_user(self, user: Any, handler: Any = None) -> Any:
        """Still a researcher in an active agreement? If not, the user must sign in again
        (and the access sweep stops their server)."""
        try:
            status, body = await ask(
                self.hub_url, self.service_secret, "check", {"username": user.name}
            )
        except HubUnavailable as err:
            self.log.error("access re-check of %s failed: %s", user.name, err)
            return False
        if status == 200 and body.get("allowed"):
            return {"name": user.name, "admin": False}
        return False
