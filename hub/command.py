"""What every ``cleanroom`` subcommand shares: the :class:`Hub` context (settings and
database, opened on first use) and the group class that turns errors into one line. Kept
apart from ``hub.cli`` so that packages' command modules import it without a cycle."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import click
from sqlalchemy import exc as sa_exc

from hub.db import Database, check_connection, describe_operational_error
from hub.errors import CleanroomError
from hub.settings import Settings, load_settings


class Hub:
    """What subcommands share: settings and the database, opened on first use.
    ``overrides`` (e.g. from ``--data-dir``) win over the environment and instance file."""

    def __init__(self) -> None:
        self.overrides: dict[str, Any] = {}

    @cached_property
    def settings(self) -> Settings:
        return load_settings(self.overrides)

    def override(self, **values: Any) -> None:
        """Set overrides before first use (settings and database are then rebuilt)."""
        self.overrides.update({k: v for k, v in values.items() if v is not None})
        for cached in ("settings", "database"):
            self.__dict__.pop(cached, None)

    @cached_property
    def database(self) -> Database:
        db = Database(self.settings.effective_database_url)
        check_connection(db.engine, db.url)
        return db

    def require_current_schema(self) -> Database:
        from hub import schema

        db = self.database
        current, head = schema.current_revision(db), schema.head_revision(db)
        if current != head:
            raise click.ClickException(
                f"the database schema is at revision {current or '(empty)'} but this Cleanroom "
                f"needs {head}: run `cleanroom db upgrade` first."
            )
        return db


pass_hub = click.make_pass_decorator(Hub, ensure=True)

data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Overrides CLEANROOM_DATA_DIR: the directory of the embedded database and objects.",
)


class CleanroomGroup(click.Group):
    """Turns the project's errors into one readable line and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CleanroomError as err:
            raise click.ClickException(err.cli_message) from None
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as err:
            hub = ctx.find_object(Hub)
            url = hub.settings.effective_database_url if hub else "?"
            raise click.ClickException(describe_operational_error(url, err)) from None
