"""``cleanroom institution``, ``cleanroom user`` and ``cleanroom token``."""

from __future__ import annotations

import click
from sqlalchemy import select

from hub.accounts import services
from hub.accounts.models import ApiToken, Institution, InstitutionKind, Role, User
from hub.command import Hub, pass_hub

ACTOR = "cli"


@click.group()
def institution() -> None:
    """Institutions taking part in the hub."""


@institution.command("add")
@click.argument("slug")
@click.option("--name", required=True, help="Full name, e.g. 'St Aurelia University Hospital'.")
@click.option("--kind", type=click.Choice([k.value for k in InstitutionKind]), required=True)
@pass_hub
def institution_add(hub: Hub, slug: str, name: str, kind: str) -> None:
    """Add an institution with the short id SLUG."""
    with hub.require_current_schema().session() as s:
        services.create_institution(s, slug, name, kind, actor=ACTOR)
    click.echo(f"institution {slug} added")


@institution.command("list")
@pass_hub
def institution_list(hub: Hub) -> None:
    """List institutions."""
    with hub.require_current_schema().session() as s:
        for i in s.scalars(select(Institution).order_by(Institution.slug)):
            click.echo(f"{i.slug:<24} {i.kind:<13} {i.name}")


@click.group()
def user() -> None:
    """User accounts."""


@user.command("add")
@click.argument("username")
@click.option("--role", type=click.Choice([r.value for r in Role]), required=True)
@click.option("--institution", "institution_slug", default=None, help="Institution id.")
@click.option("--name", "display_name", default="", help="Display name.")
@click.option("--email", default="")
@click.password_option(
    help="Prompted for when not given (at least 12 characters, not a common one)."
)
@pass_hub
def user_add(
    hub: Hub,
    username: str,
    role: str,
    institution_slug: str | None,
    display_name: str,
    email: str,
    password: str,
) -> None:
    """Add a user."""
    with hub.require_current_schema().session() as s:
        services.create_user(
            s,
            username,
            password,
            role,
            institution=institution_slug,
            actor=ACTOR,
            display_name=display_name,
            email=email,
            temporary=True,
            min_length=hub.settings.password_min_length,
        )
    click.echo(f"user {username} added ({role}); they choose their own password at first sign-in")


@user.command("list")
@pass_hub
def user_list(hub: Hub) -> None:
    """List users."""
    with hub.require_current_schema().session() as s:
        for u in s.scalars(select(User).order_by(User.username)):
            inst = u.institution.slug if u.institution else "-"
            state = "active" if u.is_active else "disabled"
            click.echo(f"{u.username:<24} {u.role:<18} {inst:<24} {state}")


@user.command("unlock")
@click.argument("username")
@pass_hub
def user_unlock(hub: Hub, username: str) -> None:
    """Forget a user name's failed sign-ins: the delays they caused end at once."""
    with hub.require_current_schema().session() as s:
        services.unlock(s, services.get_user(s, username), actor=ACTOR)
    click.echo(f"user {username} unlocked")


@user.command("checker")
@click.argument("username")
@click.option("--off", is_flag=True, help="Un-name them.")
@pass_hub
def user_checker(hub: Hub, username: str, off: bool) -> None:
    """Name a user an output checker: they review release requests (never their own)."""
    with hub.require_current_schema().session() as s:
        services.set_output_checker(s, services.get_user(s, username), not off, actor=ACTOR)
    click.echo(f"{username} is {'no longer ' if off else ''}an output checker")


@user.command("password")
@click.argument("username")
@click.password_option(help="Prompted for when not given.")
@pass_hub
def user_password(hub: Hub, username: str, password: str) -> None:
    """Reset a user's password: their sessions end, their API tokens are revoked, and they
    choose their own password at the next sign-in."""
    with hub.require_current_schema().session() as s:
        services.set_password(
            s,
            services.get_user(s, username),
            password,
            actor=ACTOR,
            min_length=hub.settings.password_min_length,
        )
    click.echo(
        f"password of {username} reset: their sessions ended and API tokens were revoked; "
        "they choose their own at the next sign-in"
    )


@click.group()
def token() -> None:
    """API tokens for LIMS scripts and the sandbox."""


@token.command("create")
@click.argument("username")
@click.option("--name", default="cli", show_default=True)
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice(services.TOKEN_SCOPES),
    required=True,
    help="Repeat for several scopes.",
)
@click.option("--days", type=int, default=None, help="Lifetime (default: token_default_days).")
@pass_hub
def token_create(
    hub: Hub, username: str, name: str, scopes: tuple[str, ...], days: int | None
) -> None:
    """Issue a token for USERNAME; the token is printed once and stored only as a hash."""
    with hub.require_current_schema().session() as s:
        issued = services.create_token(
            s,
            hub.settings,
            services.get_user(s, username),
            name,
            list(scopes),
            days=days,
            actor=ACTOR,
        )
        expires = issued.token.expires_at
    click.echo(issued.secret)
    click.echo(
        f"expires {expires:%Y-%m-%d %H:%M} UTC; store it now, it is not shown again", err=True
    )


@token.command("list")
@click.argument("username")
@pass_hub
def token_list(hub: Hub, username: str) -> None:
    """List a user's tokens."""
    with hub.require_current_schema().session() as s:
        u = services.get_user(s, username)
        for t in s.scalars(select(ApiToken).where(ApiToken.user_id == u.id).order_by(ApiToken.id)):
            click.echo(
                f"crt_{t.lookup}_…  {t.name:<20} {t.scopes:<20} "
                f"expires {t.expires_at:%Y-%m-%d}  {services.token_status(t)}"
            )


@token.command("revoke")
@click.argument("lookup")
@pass_hub
def token_revoke(hub: Hub, lookup: str) -> None:
    """Revoke a token by its public part (the 16 characters after crt_)."""
    lookup = lookup.removeprefix("crt_").split("_")[0]
    with hub.require_current_schema().session() as s:
        t = s.scalar(select(ApiToken).where(ApiToken.lookup == lookup))
        if t is None:
            raise click.ClickException(f"no token crt_{lookup}_…")
        services.revoke_token(s, t, actor=ACTOR)
    click.echo(f"token crt_{lookup}_… revoked")
