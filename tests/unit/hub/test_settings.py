"""The settings table: precedence, parsing, production refusals, documentation."""

from __future__ import annotations

import ast
import stat
from pathlib import Path

import pytest

from hub.errors import ConfigurationError
from hub.settings import SETTINGS, load_settings, settings_markdown

ROOT = Path(__file__).resolve().parents[3]


def test_defaults_without_environment(tmp_path: Path) -> None:
    s = load_settings({"data_dir": str(tmp_path)}, environ={})
    assert s.mode == "development" and s.port == 8000 and s.embedded_worker is True
    assert s.effective_database_url == f"sqlite:///{tmp_path.resolve() / 'cleanroom.db'}"
    assert s.effective_storage_path == tmp_path.resolve() / "objects"


def test_precedence_file_then_environment_then_override(tmp_path: Path) -> None:
    (tmp_path / "cleanroom.toml").write_text('port = 9001\nthreads = 3\nlog_level = "DEBUG"\n')
    env = {"CLEANROOM_DATA_DIR": str(tmp_path), "CLEANROOM_THREADS": "5"}
    s = load_settings({"log_level": "ERROR"}, environ=env)
    assert (s.port, s.threads, s.log_level) == (9001, 5, "ERROR")
    assert s.sources["port"] == "file cleanroom.toml"
    assert s.sources["threads"] == "env CLEANROOM_THREADS"


def test_explicit_instance_file_with_section(tmp_path: Path) -> None:
    conf = tmp_path / "hub.toml"
    conf.write_text('[cleanroom]\nembedded_worker = false\nstorage_backend = "s3"\n')
    s = load_settings(environ={"CLEANROOM_CONFIG": str(conf), "CLEANROOM_DATA_DIR": str(tmp_path)})
    assert s.embedded_worker is False and s.storage_backend == "s3"


@pytest.mark.parametrize(
    "env, message",
    [
        (
            {"CLEANROOM_PORT": "eighty"},
            "setting port (env CLEANROOM_PORT): 'eighty' is not a valid int",
        ),
        ({"CLEANROOM_MODE": "prod"}, "not one of development, production"),
        ({"CLEANROOM_EMBEDDED_WORKER": "maybe"}, "not a valid bool"),
        ({"CLEANROOM_CONFIG": "/nonexistent/cleanroom.toml"}, "does not exist"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], message: str, tmp_path) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(environ={"CLEANROOM_DATA_DIR": str(tmp_path), **env})


def test_instance_file_errors_are_clear(tmp_path: Path) -> None:
    (tmp_path / "cleanroom.toml").write_text("port = \n")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        load_settings(environ={"CLEANROOM_DATA_DIR": str(tmp_path)})
    (tmp_path / "cleanroom.toml").write_text("prot = 1\n")
    with pytest.raises(ConfigurationError, match="unknown setting"):
        load_settings(environ={"CLEANROOM_DATA_DIR": str(tmp_path)})


def test_production_refuses_default_keys_naming_them(tmp_path: Path) -> None:
    s = load_settings({"data_dir": str(tmp_path), "mode": "production"}, environ={})
    with pytest.raises(ConfigurationError) as err:
        s.check_production()
    assert "CLEANROOM_SECRET_KEY" in err.value.message
    assert "CLEANROOM_HMAC_KEY" in err.value.message
    s = load_settings(
        {"data_dir": str(tmp_path), "mode": "production", "secret_key": "x" * 40}, environ={}
    )
    with pytest.raises(ConfigurationError, match="CLEANROOM_HMAC_KEY") as err:
        s.check_production()
    assert "CLEANROOM_SECRET_KEY" not in err.value.message
    s = load_settings(
        {
            "data_dir": str(tmp_path),
            "mode": "production",
            "secret_key": "x" * 40,
            "hmac_key": "short",
        },
        environ={},
    )
    with pytest.raises(ConfigurationError, match="at least 32"):
        s.check_production()
    s = load_settings(
        {
            "data_dir": str(tmp_path),
            "mode": "production",
            "secret_key": "x" * 40,
            "hmac_key": "k" * 40,
            "hmac_previous_keys": "o" * 20 + ", tiny",
        },
        environ={},
    )
    assert s.key_chain == [b"o" * 20, b"tiny", b"k" * 40]
    with pytest.raises(ConfigurationError, match="HMAC_PREVIOUS_KEYS"):
        s.check_production()


def test_deid_k_floor_is_at_least_two(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="deid_k"):
        load_settings({"data_dir": str(tmp_path), "deid_k": 1}, environ={})
    assert load_settings({"data_dir": str(tmp_path), "deid_k": 7}, environ={}).deid_k == 7


def test_create_app_refuses_production_defaults(tmp_path: Path) -> None:
    from hub import create_app

    with pytest.raises(ConfigurationError, match="CLEANROOM_SECRET_KEY"):
        create_app({"data_dir": str(tmp_path), "mode": "production"})


def test_masked_output_hides_secrets(tmp_path: Path) -> None:
    s = load_settings(
        {
            "data_dir": str(tmp_path),
            "secret_key": "s3cr3t-value-abc",
            "database_url": "postgresql://u:pw@db/x",
        },
        environ={},
    )
    shown = {name: value for name, value, _ in s.masked()}
    assert shown["secret_key"] == "********"
    assert "pw" not in shown["database_url"]
    sources = {name: source for name, _, source in s.masked()}
    assert shown["hmac_key"] == "********" and sources["hmac_key"] == "generated (keys.toml)"
    # A settings object in a log line or a traceback shows no secret either.
    assert "s3cr3t-value-abc" not in repr(s) and ":pw@" not in repr(s)
    assert str(s.hmac_key) not in repr(s) and "secret_key='********'" in repr(s)


def test_every_setting_is_a_typed_attribute(tmp_path: Path) -> None:
    """The class declares each setting with the type it is parsed as (mypy reads the
    declarations), and the attribute returns the parsed value."""
    tree = ast.parse((ROOT / "hub" / "settings.py").read_text(encoding="utf-8"))
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings"]
    (block,) = [n for n in cls.body if isinstance(n, ast.If)]
    declared = {
        n.target.id: ast.unparse(n.annotation)
        for n in block.body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
    }
    assert declared == {s.name: s.type.__name__ for s in SETTINGS}
    settings = load_settings({"data_dir": str(tmp_path), "deid_k": "7"}, environ={})
    assert settings.deid_k == 7 and isinstance(settings.worker_poll_seconds, float)
    assert settings.embedded_worker is True
    with pytest.raises(AttributeError):
        settings.no_such_setting  # noqa: B018


def test_development_keys_are_generated_once_per_instance_and_kept_private(
    tmp_path: Path,
) -> None:
    """No key of a development instance is public: each data directory gets its own,
    generated on first start into keys.toml (0600), and keeps them."""
    first = load_settings({"data_dir": str(tmp_path / "a")}, environ={})
    again = load_settings({"data_dir": str(tmp_path / "a")}, environ={})
    other = load_settings({"data_dir": str(tmp_path / "b")}, environ={})
    assert (first.secret_key, first.hmac_key) == (again.secret_key, again.hmac_key)
    assert first.secret_key != other.secret_key and first.hmac_key != other.hmac_key
    assert len(first.secret_key) >= 48 and first.secret_key != first.hmac_key
    keys = tmp_path / "a" / "keys.toml"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    # An explicit key wins over the generated one.
    mine = load_settings({"data_dir": str(tmp_path / "a"), "secret_key": "x" * 40}, environ={})
    assert mine.secret_key == "x" * 40 and mine.hmac_key == first.hmac_key


@pytest.mark.parametrize("mode", ["development", "production"])
def test_earlier_public_keys_are_refused_in_every_mode(tmp_path: Path, mode: str) -> None:
    from hub import create_app
    from hub.settings import DEV_HMAC_KEY, DEV_SECRET_KEY

    for name, value in (("secret_key", DEV_SECRET_KEY), ("hmac_key", DEV_HMAC_KEY)):
        with pytest.raises(ConfigurationError, match="public in the source"):
            create_app({"data_dir": str(tmp_path), "mode": mode, name: value})


def test_production_never_uses_generated_keys(tmp_path: Path) -> None:
    load_settings({"data_dir": str(tmp_path)}, environ={})  # development generated keys.toml
    production = load_settings({"data_dir": str(tmp_path), "mode": "production"}, environ={})
    with pytest.raises(ConfigurationError, match="CLEANROOM_SECRET_KEY and CLEANROOM_HMAC_KEY"):
        production.check_production()


def test_a_session_signed_with_the_old_public_key_opens_nothing(
    client, users, tmp_path: Path
) -> None:
    """The attack that worked: sign {"uid": <steward>, "epoch": 0} with the key that used to
    be built in. The instance's own generated key refuses it."""
    from flask.sessions import SecureCookieSessionInterface

    from hub.settings import DEV_SECRET_KEY

    steward = users.make("sam", "steward")

    class Forger:
        secret_key = DEV_SECRET_KEY
        config = client.application.config

    serializer = SecureCookieSessionInterface().get_signing_serializer(Forger())  # type: ignore[arg-type]
    forged = serializer.dumps({"uid": steward.id, "epoch": 0, "sid": "x"})
    client.set_cookie("cleanroom_session", forged)
    resp = client.get("/admin/")
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]


def test_development_refuses_to_listen_beyond_loopback(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hub.cli import check_listen, cli

    result = CliRunner().invoke(
        cli,
        ["serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path)],
        env={},  # noqa: S104
    )
    assert result.exit_code != 0 and "beyond this machine" in result.output
    dev = load_settings({"data_dir": str(tmp_path)}, environ={})
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_listen(dev, host)  # loopback: fine
    allowed = load_settings(
        {"data_dir": str(tmp_path), "allow_remote_development": True}, environ={}
    )
    check_listen(allowed, "0.0.0.0")  # noqa: S104 - told explicitly


def test_every_setting_is_documented() -> None:
    """docs/configuration.md is generated from the table and must not be stale."""
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert doc == settings_markdown(), "run `cleanroom config --markdown > docs/configuration.md`"
    for s in SETTINGS:
        assert s.help.strip() and s.help.strip()[-1] in ".)", s.name
        assert f"`{s.env}`" in doc
    readme = (ROOT / "README.md").read_text()
    assert "docs/configuration.md" in readme


def test_readme_embeds_the_current_table() -> None:
    from hub.settings import settings_table

    readme = (ROOT / "README.md").read_text()
    embedded = readme.split("<!-- settings:start -->\n")[1].split("<!-- settings:end -->")[0]
    assert embedded == settings_table(), "run scripts/update_docs.py"
