"""``cleanroom demo seed --data-dir DIR``: a data directory seeded non-interactively, with an
active agreement and a researcher's sandbox token that works against ``cleanroom serve``."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from hub import create_app
from hub.cli import cli

TOKEN_RE = re.compile(r"researcher sandbox token: (crt_\S+)")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for key in list(os.environ):
        if key.startswith("CLEANROOM_"):
            monkeypatch.delenv(key)
    return CliRunner(env={})


def test_seed_a_data_dir_and_use_the_printed_token(clean_env: CliRunner, tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    first = clean_env.invoke(cli, ["demo", "seed", "--no-data", "--data-dir", str(data_dir)])
    assert first.exit_code == 0, first.output
    assert re.search(r"agreement \S+ active", first.output), first.output
    token = TOKEN_RE.search(first.output)
    assert token, first.output
    again = clean_env.invoke(cli, ["demo", "seed", "--no-data", "--data-dir", str(data_dir)])
    assert again.exit_code == 0, again.output
    assert TOKEN_RE.search(again.output).group(1) == token.group(1)  # reused, not piled up
    assert "already exists" in again.output
    for name in ("cleanroom.db", "demo-logins.json", "demo-researcher-token"):
        assert (data_dir / name).exists(), name
    for name in ("demo-logins.json", "demo-researcher-token"):
        assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600

    app = create_app({"data_dir": str(data_dir)})
    client = app.test_client()
    resp = client.get(
        "/api/v1/sandbox/agreements", headers={"Authorization": f"Bearer {token.group(1)}"}
    )
    assert resp.status_code == 200, resp.get_json()
    listed = resp.get_json()["agreements"]
    tables = {a["agreement"]: a["tables"] for a in listed}
    assert sorted(tables) == ["demo-mfp", "demo-pc", "demo-v2v"]
    assert "batch" in tables["demo-mfp"] and "administration" in tables["demo-v2v"]

    # Release requests have two independent checkers to go to (two approvals by default).
    from sqlalchemy import select

    from hub.accounts.models import User
    from hub.db import get_database

    with get_database(app).session() as s:
        checkers = set(s.scalars(select(User.username).where(User.is_output_checker.is_(True))))
    assert checkers == {"steward", "checker"}
    assert "checker " in first.output and "output checker" in first.output
