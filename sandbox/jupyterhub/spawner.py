"""Isolation: each researcher's notebook server runs as their own operating-system user.

``cr-<username>`` is created on first spawn (home directory mode 0700). The server's
environment is rebuilt from an allow-list: JupyterHub's own ``JUPYTERHUB_*`` variables, a
locale and ``PATH``, and the two the researcher's client needs, ``CLEANROOM_GATEWAY_URL``
and a short-lived ``sandbox``-scoped ``CLEANROOM_TOKEN`` issued by the hub at spawn. No
database URL, object-store key, HMAC key or secret key can reach it.

Each start copies the example notebooks (``sandbox/notebooks/*.ipynb``) into
``~/examples/`` where they are missing; a researcher's own copy, edited or not, is never
overwritten (delete it to get the original back on the next start).

``isolate = False`` is the developer mode: same user as the hub, and it says so loudly.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import Bool, Unicode, default

from sandbox.jupyterhub.hubapi import ask

#: What may pass from JupyterHub's environment (besides JUPYTERHUB_*, set by JupyterHub).
ENV_ALLOWED = ("PATH", "LANG", "LC_ALL", "HOME", "USER", "SHELL", "JPY_API_TOKEN")
ENV_PREFIXES_ALLOWED = ("JUPYTERHUB_",)
SYSTEM_NAME_MAX = 32
EXAMPLES = Path(__file__).resolve().parents[1] / "notebooks"


def system_name(prefix: str, username: str) -> str:
    """A safe operating-system user name for a hub username: ``cr-rosa``. Characters outside
    ``[a-z0-9_-]`` and over-long names get a short hash so two names never collide."""
    clean = re.sub(r"[^a-z0-9_-]", "-", username.lower())
    name = f"{prefix}{clean}"
    if clean != username.lower() or len(name) > SYSTEM_NAME_MAX:
        digest = hashlib.sha256(username.encode()).hexdigest()[:8]
        name = f"{name[: SYSTEM_NAME_MAX - 9]}-{digest}"
    return name


def ensure_system_user(name: str, home_root: str) -> pwd.struct_passwd:
    """Create the user (with a private group and home) unless it exists; either way the home
    directory ends up owned by the user with mode 0700. Idempotent."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        home = os.path.join(home_root, name)
        useradd = shutil.which("useradd", path="/usr/sbin:/sbin:/usr/bin") or "useradd"
        subprocess.run(  # noqa: S603 - fixed program, a name we built from [a-z0-9_-]
            [
                useradd,
                "--create-home",
                "--home-dir",
                home,
                "--shell",
                "/bin/bash",
                "--user-group",
                "--comment",
                "Cleanroom sandbox researcher",
                name,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        entry = pwd.getpwnam(name)
    os.makedirs(entry.pw_dir, mode=0o700, exist_ok=True)
    os.chown(entry.pw_dir, entry.pw_uid, entry.pw_gid)
    os.chmod(entry.pw_dir, 0o700)
    return entry


def copy_examples(
    source: str | os.PathLike[str],
    home: str | os.PathLike[str],
    *,
    folder: str = "examples",
    owner: tuple[int, int] | None = None,
) -> list[str]:
    """Copy the ``*.ipynb`` of ``source`` into ``<home>/<folder>/`` where missing; the names
    copied. A file already there (the researcher's copy, edited or not) is kept. Files are
    0600 and the folder 0700, owned by ``owner`` (uid, gid) when given.

    Run as root into a home its researcher controls, so nothing follows a symbolic link: the
    folder is opened with ``O_NOFOLLOW`` and each file created with ``O_EXCL`` (which also
    makes "never overwrite" hold against a file appearing meanwhile)."""
    notebooks = sorted(Path(source).glob("*.ipynb"))
    if not notebooks:
        return []
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    home_fd = os.open(home, flags)
    try:
        try:
            os.mkdir(folder, 0o700, dir_fd=home_fd)
        except FileExistsError:
            pass
        else:
            if owner is not None:
                os.chown(folder, *owner, dir_fd=home_fd, follow_symlinks=False)
        try:
            folder_fd = os.open(folder, flags, dir_fd=home_fd)
        except OSError:  # not a directory (a file or a link the researcher put there)
            return []
    finally:
        os.close(home_fd)
    copied = []
    try:
        for notebook in notebooks:
            try:
                fd = os.open(
                    notebook.name,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                    0o600,
                    dir_fd=folder_fd,
                )
            except FileExistsError:
                continue
            with os.fdopen(fd, "wb") as out:
                out.write(notebook.read_bytes())
                if owner is not None:
                    os.fchown(out.fileno(), *owner)
            copied.append(notebook.name)
    finally:
        os.close(folder_fd)
    return copied


def clean_env(env: dict[str, str]) -> dict[str, str]:
    """Only the allow-listed variables survive."""
    return {k: v for k, v in env.items() if k in ENV_ALLOWED or k.startswith(ENV_PREFIXES_ALLOWED)}


class CleanroomSpawner(LocalProcessSpawner):
    """LocalProcessSpawner as ``cr-<username>``, with the hub-issued token and nothing else."""

    hub_url = Unicode(config=True, help="Base URL of the Cleanroom hub (its service API).")
    service_secret = Unicode(config=True, help="Shared secret of the hub's service API.")
    gateway_url = Unicode(
        "", config=True, help="URL notebooks reach the gateway at (empty: the hub's answer)."
    )
    isolate = Bool(
        True,
        config=True,
        help="Run as a per-researcher system user (needs root). False: same user, isolation off.",
    )
    user_prefix = Unicode("cr-", config=True, help="Prefix of the system users' names.")
    home_root = Unicode("/home", config=True, help="Where system users' homes are created.")
    dev_home_root = Unicode(
        config=True, help="Same-user mode: parent of the researchers' working directories."
    )
    examples_dir = Unicode(
        str(EXAMPLES),
        config=True,
        help="Folder of example notebooks copied into each researcher's home where missing "
        "(empty: none).",
    )
    examples_folder = Unicode(
        "examples", config=True, help="Folder of the researcher's home the examples go to."
    )

    @default("dev_home_root")
    def _dev_home_root(self) -> str:
        return os.path.expanduser("~/cleanroom-sandbox")

    @default("env_keep")
    def _env_keep(self) -> list[str]:
        return ["PATH", "LANG", "LC_ALL"]

    _cleanroom_env: dict[str, str]

    @property
    def system_user(self) -> str:
        return system_name(self.user_prefix, self.user.name)

    def _home(self) -> str:
        if self.isolate:
            return pwd.getpwnam(self.system_user).pw_dir
        return os.path.join(self.dev_home_root, self.user.name)

    async def start(self) -> Any:
        if not self.hub_url or not self.service_secret:
            raise ValueError("CleanroomSpawner.hub_url and service_secret must be set")
        status, body = await ask(
            self.hub_url, self.service_secret, "token", {"username": self.user.name}
        )
        if status != 200:
            message = (body.get("error") or {}).get("message", status)
            raise RuntimeError(f"the Cleanroom hub refused a sandbox token: {message}")
        self._cleanroom_env = {
            "CLEANROOM_GATEWAY_URL": self.gateway_url or str(body["gateway_url"]),
            "CLEANROOM_TOKEN": str(body["token"]),
        }
        owner: tuple[int, int] | None = None
        if self.isolate:
            entry = ensure_system_user(self.system_user, self.home_root)
            owner = (entry.pw_uid, entry.pw_gid)
            self.log.info(
                "spawning %s as system user %s (uid %d)",
                self.user.name,
                entry.pw_name,
                entry.pw_uid,
            )
        else:
            os.makedirs(self._home(), mode=0o700, exist_ok=True)
            self.log.warning(
                "ISOLATION OFF: %s's notebook server runs as the hub's own user", self.user.name
            )
        self._copy_examples(owner)
        return await super().start()

    def _copy_examples(self, owner: tuple[int, int] | None) -> None:
        if not self.examples_dir:
            return
        try:
            copied = copy_examples(
                self.examples_dir, self._home(), folder=self.examples_folder, owner=owner
            )
        except OSError as err:  # a missing example must not keep the server from starting
            self.log.error("could not copy the example notebooks for %s: %s", self.user.name, err)
            return
        if copied:
            self.log.info(
                "copied %s into %s's ~/%s", ", ".join(copied), self.user.name, self.examples_folder
            )

    def make_preexec_fn(self, name: str) -> Any:
        if self.isolate:
            return super().make_preexec_fn(self.system_user)
        home = self._home()

        def preexec() -> None:
            os.chdir(home)

        return preexec

    def user_env(self, env: dict[str, str]) -> dict[str, str]:
        if self.isolate:
            entry = pwd.getpwnam(self.system_user)
            env.update(USER=entry.pw_name, HOME=entry.pw_dir, SHELL=entry.pw_shell or "/bin/sh")
        else:
            env.update(USER=self.user.name, HOME=self._home(), SHELL="/bin/bash")
        return env

    def get_env(self) -> dict[str, str]:
        env = clean_env(super().get_env())
        env.update(getattr(self, "_cleanroom_env", {}))
        return env
