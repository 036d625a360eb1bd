"""The settings table: precedence, parsing, production refusals, documentation."""

from __future__ import annotations

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
    assert "built-in development value" in shown["hmac_key"]


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
