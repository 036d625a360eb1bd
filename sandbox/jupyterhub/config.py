"""``configure(c)``: the JupyterHub configuration of a Cleanroom run.

``cleanroom sandbox`` (and ``cleanroom up``) write the run's values to a JSON file (mode
0600, in ``<data_dir>/jupyterhub/``) and name it in ``CLEANROOM_SANDBOX_CONFIG``;
``sandbox/jupyterhub_config.py`` calls :func:`configure` with JupyterHub's config object.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

CONFIG_ENV = "CLEANROOM_SANDBOX_CONFIG"
ACCESS_SERVICE = "cleanroom-access"
TEMPLATES = Path(__file__).resolve().parent / "templates"


def load_run_config(path: str | None = None) -> dict[str, Any]:
    found = path or os.environ.get(CONFIG_ENV)
    if not found:
        raise ValueError(
            f"{CONFIG_ENV} is not set: start JupyterHub with `cleanroom sandbox` (or "
            "`cleanroom up`), which writes the configuration and names it there."
        )
    run: dict[str, Any] = json.loads(Path(found).read_text())
    return run


def configure(c: Any, path: str | None = None) -> dict[str, Any]:
    """Fill JupyterHub's config ``c``; returns the run's values."""
    run = load_run_config(path)
    state = Path(run["state_dir"])
    c.JupyterHub.ip = run["host"]
    c.JupyterHub.port = int(run["port"])
    c.JupyterHub.hub_ip = "127.0.0.1"
    c.JupyterHub.hub_port = int(run["hub_port"])
    c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
    c.JupyterHub.pid_file = str(state / "jupyterhub.pid")
    c.JupyterHub.cleanup_servers = True  # Ctrl-C stops the researchers' servers too
    c.JupyterHub.log_level = run.get("log_level", "INFO")
    # Cleanroom's name, who may sign in, and a link back to the portal on every hub page.
    c.JupyterHub.template_paths = [str(TEMPLATES)]
    c.JupyterHub.template_vars = {"cleanroom_portal_url": run.get("portal_url", "")}

    c.ConfigurableHTTPProxy.command = [run["proxy_command"]]
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{int(run['proxy_api_port'])}"
    c.ConfigurableHTTPProxy.pid_file = str(state / "proxy.pid")

    c.JupyterHub.authenticator_class = "sandbox.jupyterhub.auth.CleanroomAuthenticator"
    c.CleanroomAuthenticator.hub_url = run["hub_url"]
    c.CleanroomAuthenticator.service_secret = run["service_secret"]
    c.Authenticator.admin_users = set()  # no researcher is a JupyterHub admin

    c.JupyterHub.spawner_class = "sandbox.jupyterhub.spawner.CleanroomSpawner"
    c.CleanroomSpawner.hub_url = run["hub_url"]
    c.CleanroomSpawner.service_secret = run["service_secret"]
    c.CleanroomSpawner.gateway_url = run.get("gateway_url", "")
    c.CleanroomSpawner.isolate = run["isolation"] == "system-users"
    c.CleanroomSpawner.user_prefix = run.get("user_prefix", "cr-")
    c.CleanroomSpawner.home_root = run.get("home_root", "/home")
    c.Spawner.cmd = [
        run.get("singleuser") or str(Path(sys.executable).parent / "jupyterhub-singleuser")
    ]
    c.Spawner.default_url = "/lab"
    c.Spawner.start_timeout = 60
    c.Spawner.http_timeout = 60

    c.JupyterHub.services = [
        {
            "name": ACCESS_SERVICE,
            "command": [sys.executable, "-m", "sandbox.jupyterhub.access"],
            "environment": {CONFIG_ENV: os.environ.get(CONFIG_ENV, path or "")},
        }
    ]
    c.JupyterHub.load_roles = [
        {
            "name": ACCESS_SERVICE,
            "description": "Stop servers of users who lost their last active agreement",
            "scopes": ["list:users", "read:users:name", "read:servers", "servers"],
            "services": [ACCESS_SERVICE],
        }
    ]
    return run
