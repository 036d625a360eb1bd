"""The ``cleanroom`` command: one click group; each package adds its own subcommands."""

from __future__ import annotations

import ipaddress
import signal
import threading
from typing import Any

import click

from hub.command import CleanroomGroup, Hub, data_dir_option, pass_hub
from hub.errors import CleanroomError
from hub.settings import Settings, settings_markdown


@click.group(cls=CleanroomGroup)
@click.version_option(package_name="cgt-cleanroom")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Cleanroom: a neutral data-sharing hub for cell and gene therapy process data."""
    ctx.ensure_object(Hub)


@cli.command("config")
@click.option("--markdown", is_flag=True, help="Print the documentation table instead.")
@pass_hub
def config_cmd(hub: Hub, markdown: bool) -> None:
    """Print the effective settings (secrets masked) and where each came from."""
    if markdown:
        click.echo(settings_markdown(), nl=False)
        return
    rows = hub.settings.masked()
    width = max(len(name) for name, _, _ in rows)
    for name, value, source in rows:
        click.echo(f"{name:<{width}}  {value}  [{source}]")
    for problem in _production_problems(hub.settings):
        click.secho(f"warning: {problem}", fg="yellow", err=True)


def _production_problems(settings: Settings) -> list[str]:
    try:
        settings.check_production()
    except CleanroomError as err:
        return [err.message]
    return []


@cli.group()
def db() -> None:
    """Metadata database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@pass_hub
def db_upgrade(hub: Hub, revision: str) -> None:
    """Create or migrate the schema (Alembic)."""
    from hub import schema

    schema.upgrade(hub.database, revision)
    click.echo(
        f"database at revision {schema.current_revision(hub.database)} "
        f"({hub.database.engine.url.render_as_string(hide_password=True)})"
    )


@db.command("current")
@pass_hub
def db_current(hub: Hub) -> None:
    """Show the schema revision and whether it is the newest."""
    from hub import schema

    current, head = schema.current_revision(hub.database), schema.head_revision(hub.database)
    state = "up to date" if current == head else f"behind (newest is {head})"
    click.echo(f"{current or '(empty)'}: {state}")


def _start_worker(hub: Hub) -> Any:
    from hub.jobs.services import Worker, load_task_modules

    load_task_modules(hub.settings.task_modules)
    worker = Worker(hub.database, hub.settings)
    worker.start_thread()
    return worker


def check_listen(settings: Settings, host: str, what: str = "the portal") -> None:
    """Refuse a development-mode instance on an address beyond loopback unless
    ``allow_remote_development`` says so: its demo logins are public."""
    if settings.is_production or settings.allow_remote_development or _loopback(host):
        return
    raise click.ClickException(
        f"{what} would listen on {host}, beyond this machine, in development mode — where "
        "the demo's logins are public and no cookie is marked Secure. Use production mode "
        "(CLEANROOM_MODE=production, with your own keys and TLS in front), or listen on "
        "127.0.0.1, or set CLEANROOM_ALLOW_REMOTE_DEVELOPMENT=true if you mean it."
    )


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: not provably this machine
        return False


@cli.command()
@click.option("--host", default=None, help="Overrides CLEANROOM_HOST.")
@click.option("--port", type=int, default=None, help="Overrides CLEANROOM_PORT.")
@data_dir_option
@pass_hub
def serve(hub: Hub, host: str | None, port: int | None, data_dir: str | None) -> None:
    """Serve the portal and API with waitress (and the embedded worker, if enabled)."""
    from waitress import create_server

    from hub import create_app

    hub.override(data_dir=data_dir)
    settings = hub.settings
    settings.check_production()
    host = host or settings.host
    check_listen(settings, host)
    hub.require_current_schema()
    app = create_app(settings)
    port = port or settings.port
    worker = _start_worker(hub) if settings.embedded_worker else None
    proxy: dict[str, Any] = {}
    if settings.trusted_proxy:
        # Client addresses (rate limiting, audit) come from the proxy's header.
        proxy = {
            "trusted_proxy": settings.trusted_proxy,
            "trusted_proxy_count": 1,
            "trusted_proxy_headers": {"x-forwarded-for", "x-forwarded-proto"},
        }
    server = create_server(
        app,
        host=host,
        port=port,
        threads=settings.threads,
        ident="cleanroom",
        clear_untrusted_proxy_headers=True,
        # waitress's own cap (1 GiB by default) must not undercut ours.
        max_request_body_size=(settings.max_upload_mb << 20) + (1 << 20),
        **proxy,
    )
    click.echo(
        f"Cleanroom portal on http://{host}:{server.effective_port}/ "
        f"(public URL {settings.public_url})"
    )

    def stop() -> None:
        if worker is not None:
            worker.stop()
        server.close()

    main = threading.current_thread() is threading.main_thread()
    if main:
        # SIGTERM ends the loop as Ctrl-C does; the server is closed below, from the main
        # thread once the loop is left (closing it inside the handler pulled the sockets
        # from under waitress's select: "Bad file descriptor").
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        stop()
        click.echo("Cleanroom stopped.")


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


@cli.command()
@click.option("--once", is_flag=True, help="Run at most one job, then exit.")
@pass_hub
def worker(hub: Hub, once: bool) -> None:
    """Run a job worker process (production: run several)."""
    from hub.jobs.services import Worker, load_task_modules

    hub.require_current_schema()
    load_task_modules(hub.settings.task_modules)
    w = Worker(hub.database, hub.settings)
    click.echo(f"worker {w.worker_id} started", err=True)
    if once:
        state = w.run_once()
        click.echo(f"job finished: {state}" if state else "no job was waiting")
        return
    signal.signal(signal.SIGTERM, lambda *_: w.stop())
    try:
        w.run_forever()
    except KeyboardInterrupt:
        w.stop()


@cli.command()
@click.option("--host", default=None, help="Overrides CLEANROOM_HOST.")
@click.option("--port", type=int, default=None, help="Overrides CLEANROOM_PORT.")
@click.option(
    "--sandbox/--no-sandbox",
    default=None,
    help="Also start JupyterHub for researchers (default: CLEANROOM_SANDBOX_ENABLED).",
)
@data_dir_option
@click.pass_context
@pass_hub
def up(
    hub: Hub,
    ctx: click.Context,
    host: str | None,
    port: int | None,
    sandbox: bool | None,
    data_dir: str | None,
) -> None:
    """Migrate the database and start the system on the current settings: the portal and
    API, the embedded worker and the researchers' JupyterHub. Ctrl-C stops them all."""
    from hub import schema
    from hub.jupyterhub import cli as sandbox_cli

    hub.override(data_dir=data_dir)
    schema.upgrade(hub.database)
    settings = hub.settings
    jupyterhub = None
    check_listen(settings, host or settings.host)
    if settings.sandbox_enabled if sandbox is None else sandbox:
        check_listen(settings, settings.sandbox_host, "the sandbox's JupyterHub")
        try:
            jupyterhub = sandbox_cli.start(
                settings, hub_host=host or settings.host, hub_port=port or settings.port
            )
        except (click.ClickException, OSError) as err:
            message = err.format_message() if isinstance(err, click.ClickException) else err
            click.secho(
                f"the sandbox (JupyterHub) was not started: {message}", fg="yellow", err=True
            )
        else:
            threading.Thread(target=_watch_sandbox, args=(jupyterhub,), daemon=True).start()
    try:
        ctx.invoke(serve, host=host, port=port, data_dir=data_dir)
    finally:
        if jupyterhub is not None:
            sandbox_cli.stop(jupyterhub)
            click.echo("Sandbox stopped.")


def _watch_sandbox(proc: Any) -> None:
    """Say so when JupyterHub stops on its own (a port in use, a bad setting)."""
    code = proc.wait()
    if code not in (0, -signal.SIGTERM, -signal.SIGINT):
        click.secho(
            f"the sandbox (JupyterHub) stopped with status {code}; see its log above. "
            "The portal keeps running.",
            fg="yellow",
            err=True,
        )


def _register() -> None:
    from anonymisation.cli import deid
    from hub.accounts.cli import institution, token, user
    from hub.agreements.cli import agreement
    from hub.audit.cli import audit
    from hub.cdm_cli import cdm
    from hub.demo import demo
    from hub.demodata.cli import demo_data
    from hub.ingest.cli import export_fhir, pool, upload
    from hub.jobs.cli import job
    from hub.jupyterhub.cli import sandbox
    from hub.synth.cli import synth

    for command in (
        institution,
        user,
        token,
        audit,
        job,
        demo,
        upload,
        export_fhir,
        pool,
        demo_data,
        deid,
        agreement,
        sandbox,
        synth,
        cdm,
    ):
        cli.add_command(command)


_register()
