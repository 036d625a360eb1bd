"""``cleanroom sandbox``: JupyterHub for researchers, configured from Cleanroom's settings.

Also used by ``cleanroom up``, which starts it beside the portal. JupyterHub gets a scrubbed
environment (no database URL, object-store or HMAC keys): what it needs is in a JSON file
(mode 0600) under ``<data_dir>/jupyterhub/``, named by ``CLEANROOM_SANDBOX_CONFIG``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from hub.command import Hub, data_dir_option, pass_hub
from hub.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_FILE = PROJECT_ROOT / "sandbox" / "jupyterhub_config.py"
PROXY = PROJECT_ROOT / "node_modules" / ".bin" / "configurable-http-proxy"
#: All JupyterHub inherits from our environment.
ENV_PASSED = ("PATH", "LANG", "LC_ALL", "TZ", "HOME")


class SandboxUnavailable(click.ClickException):
    """JupyterHub cannot be started as configured; the message says what to do."""


def isolation(settings: Settings) -> str:
    """``system-users`` or ``same-user``, from the setting and whether we run as root."""
    wanted = settings.sandbox_isolation
    root = os.geteuid() == 0
    if wanted == "auto":
        return "system-users" if root else "same-user"
    if wanted == "system-users" and not root:
        raise SandboxUnavailable(
            "sandbox_isolation is system-users, which creates one operating-system user per "
            "researcher and needs root; run as root, or set CLEANROOM_SANDBOX_ISOLATION="
            "same-user on a developer machine (isolation off)."
        )
    return wanted


def unreachable_by_others(path: Path) -> Path | None:
    """The first directory on the way to ``path`` (symlinks resolved) that other users cannot
    enter, or None when the file is reachable."""
    real = path.resolve()
    for parent in reversed(real.parents):
        if not parent.stat().st_mode & 0o001:
            return parent
    return None


def notebook_env(settings: Settings) -> Path:
    """The researchers' notebook environment (``sandbox_notebook_env``, relative to the
    project directory unless absolute)."""
    return PROJECT_ROOT / Path(settings.sandbox_notebook_env).expanduser()


def check_notebook_environment(*programs: Path, sources: tuple[Path, ...] = ()) -> None:
    """Researchers' system users must be able to run the notebook server and its Python
    (``programs``: readable and executable by all) and read ``sources``."""
    for path in (*programs, *sources):
        if not path.exists():
            raise SandboxUnavailable(
                f"{path} does not exist: run `make install`, which builds the researchers' "
                "notebook environment (sandbox_notebook_env)."
            )
        private = unreachable_by_others(path)
        if private is not None:
            raise SandboxUnavailable(
                f"researchers' system users cannot run {path} ({private} is private to its "
                "owner): install Cleanroom in a directory every user can enter (e.g. "
                "/opt/cleanroom) and let `make install` build its notebook environment from a "
                "Python outside private home directories, or set "
                "CLEANROOM_SANDBOX_ISOLATION=same-user on a developer machine."
            )
        wanted = 0o005 if path in programs else 0o004
        if path.resolve().stat().st_mode & wanted != wanted:
            raise SandboxUnavailable(
                f"researchers' system users cannot {'run' if wanted & 1 else 'read'} {path}: "
                "make it readable by all (chmod -R a+rX), or re-run `make install`."
            )


def singleuser_command(settings: Settings, mode: str) -> str:
    """The notebook server's command: the notebook environment's ``jupyterhub-singleuser``.
    Isolated, it must be there and runnable by every user; same-user (a laptop) falls back
    to the hub's own environment when it has not been built."""
    env_bin = notebook_env(settings) / "bin"
    singleuser = env_bin / "jupyterhub-singleuser"
    if mode == "system-users":
        # The project's own `sandbox` package is imported from the source tree.
        check_notebook_environment(
            singleuser, env_bin / "python", sources=(PROJECT_ROOT / "sandbox" / "__init__.py",)
        )
    elif not singleuser.exists():
        singleuser = Path(sys.executable).parent / "jupyterhub-singleuser"
    return str(singleuser)


def _loopback(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104


def prepare(
    settings: Settings, *, hub_host: str, hub_port: int
) -> tuple[list[str], dict[str, str], str]:
    """Write the run's JSON and return (command, environment, isolation mode)."""
    from hub.jupyterhub.service import service_secret

    mode = isolation(settings)
    if not PROXY.exists():
        raise SandboxUnavailable(
            f"configurable-http-proxy is not installed at {PROXY.relative_to(PROJECT_ROOT)}: "
            "run `make install` (it installs it from npm into the project)."
        )
    data = settings.data_path
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Researchers' notebook users must not reach the database, the object store or the
    # secrets: the data directory is the hub's alone.
    os.chmod(data, 0o700)
    state = data / "jupyterhub"
    state.mkdir(exist_ok=True, mode=0o700)
    os.chmod(state, 0o700)
    hub_url = f"http://{_loopback(hub_host)}:{hub_port}"
    venv_bin = Path(sys.executable).parent
    singleuser = singleuser_command(settings, mode)
    run = {
        "state_dir": str(state),
        "host": settings.sandbox_host,
        "port": settings.sandbox_port,
        "hub_port": settings.sandbox_hub_port,
        "proxy_api_port": settings.sandbox_proxy_api_port,
        "proxy_command": str(PROXY),
        "hub_url": hub_url,
        # Where people reach the portal: JupyterHub's pages link back to it.
        "portal_url": str(settings.public_url or f"http://{_loopback(hub_host)}:{hub_port}"),
        "gateway_url": str(settings.sandbox_gateway_url or hub_url),
        "service_secret": service_secret(settings),
        "isolation": mode,
        "user_prefix": settings.sandbox_user_prefix,
        "home_root": settings.sandbox_home_root,
        "access_check_seconds": settings.sandbox_access_check_seconds,
        "singleuser": singleuser,
        "log_level": settings.log_level,
    }
    path = state / "cleanroom-sandbox.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(run, fh, indent=2)
    env = {k: v for k, v in os.environ.items() if k in ENV_PASSED}
    env["CLEANROOM_SANDBOX_CONFIG"] = str(path)
    jupyterhub = venv_bin / "jupyterhub"
    program = [str(jupyterhub)] if jupyterhub.exists() else [sys.executable, "-m", "jupyterhub"]
    return [*program, "-f", str(CONFIG_FILE)], env, mode


def announce(settings: Settings, mode: str) -> None:
    host = _loopback(settings.sandbox_host)
    click.echo(
        f"Cleanroom sandbox (JupyterHub) on http://{host}:{settings.sandbox_port}/ "
        "(researchers sign in with their Cleanroom account)"
    )
    if mode == "same-user":
        click.secho(
            "WARNING: SANDBOX ISOLATION IS OFF. Notebook servers run as this same "
            "operating-system user and can read Cleanroom's data directory, database and "
            "keys. Use this only on a developer machine; run as root (sandbox_isolation = "
            "system-users) anywhere researchers are not you.",
            fg="red",
            bold=True,
            err=True,
        )


def start(settings: Settings, *, hub_host: str, hub_port: int) -> subprocess.Popen[bytes]:
    """Start JupyterHub (and through it the proxy) as a child process."""
    command, env, mode = prepare(settings, hub_host=hub_host, hub_port=hub_port)
    announce(settings, mode)
    return subprocess.Popen(  # noqa: S603 - our venv's jupyterhub with our config file
        command,
        env=env,
        cwd=env["CLEANROOM_SANDBOX_CONFIG"].rsplit("/", 1)[0],
        stdin=subprocess.DEVNULL,
    )


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. JupyterHub stops the proxy and
    the researchers' servers on SIGTERM."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@click.command("sandbox")
@data_dir_option
@pass_hub
def sandbox(hub: Hub, data_dir: str | None) -> None:
    """Run the researchers' JupyterHub (the portal must be running: `cleanroom serve`)."""
    hub.override(data_dir=data_dir)
    settings = hub.settings
    proc = start(settings, hub_host=settings.host, hub_port=settings.port)

    def forward(*_: Any) -> None:
        stop(proc)

    signal.signal(signal.SIGTERM, forward)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        stop(proc)
        code = proc.returncode or 0
    if code:
        raise click.ClickException(f"JupyterHub exited with status {code}; see its log above.")
