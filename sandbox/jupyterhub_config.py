"""JupyterHub configuration of the Cleanroom sandbox: run through ``cleanroom sandbox`` or
``cleanroom up`` (docs/sandbox.md), which name the run's values in CLEANROOM_SANDBOX_CONFIG."""

from sandbox.jupyterhub.config import configure

configure(c)  # type: ignore[name-defined]  # noqa: F821 - JupyterHub defines `c` when it loads this file
