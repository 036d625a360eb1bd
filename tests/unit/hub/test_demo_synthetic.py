"""``cleanroom demo seed`` publishes gated synthetic versions under the demo agreement that
allows synthetic rows, and the demo researcher's client reads them from a real server.

One seed of a temporary data directory (about a minute: the whole pipeline, then SDV), a
real ``cleanroom serve`` on a free port, and the researcher's ``sandbox.Client``.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from sandbox.client import Client
from tests.serving import cleanroom_command, free_port, healthy, server_env, stop

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

AGREEMENT = "demo-pc"
SEED_TIMEOUT_SECONDS = 900
HEALTH_DEADLINE_SECONDS = 30.0


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, str]]:
    """(data directory, output of the first seed, output of a second seed)."""
    data_dir = tmp_path_factory.mktemp("demo-synthetic") / "data"
    data_dir.mkdir(mode=0o700)
    env = server_env(data_dir, free_port())
    command = [*cleanroom_command(), "demo", "seed"]
    outputs = []
    for _ in range(2):
        done = subprocess.run(  # noqa: S603
            command, env=env, capture_output=True, text=True, timeout=SEED_TIMEOUT_SECONDS
        )
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
        outputs.append(done.stdout)
    yield data_dir, outputs[0], outputs[1]


def _versions(data_dir: Path) -> list[dict[str, object]]:
    from hub import create_app
    from hub.db import get_database
    from hub.synth.models import SyntheticVersion

    app = create_app({"data_dir": str(data_dir)})
    with get_database(app).session() as s:
        found = s.scalars(
            select(SyntheticVersion)
            .where(SyntheticVersion.agreement_slug == AGREEMENT)
            .order_by(SyntheticVersion.id)
        )
        return [
            {
                "table": v.cdm_table,
                "state": v.state,
                "gates": json.loads(v.report or "{}").get("gates", {}),
                "data_key": v.data_key,
            }
            for v in found
        ]


def test_the_seed_publishes_gated_synthetic_versions_once(
    seeded: tuple[Path, str, str],
) -> None:
    data_dir, first, second = seeded
    versions = _versions(data_dir)
    published = [v for v in versions if v["state"] == "published"]
    assert published, f"nothing published:\n{first}"
    for v in published:
        assert v["gates"] == {"passed": True, "failed": []}, v
        assert v["data_key"], v
    # Every failed attempt says which gate failed; nothing is published without its gates.
    for v in versions:
        if v["state"] != "published":
            assert v["state"] == "failed_gates" and v["gates"]["failed"], v
    assert "synthetic: batch" in first and "published" in first, first
    # A second seed synthesises nothing new.
    assert len(_versions(data_dir)) == len(versions)
    assert "already synthesised" in second, second


def test_the_researcher_reads_synthetic_rows_under_the_agreement(
    seeded: tuple[Path, str, str],
) -> None:
    data_dir, first, _ = seeded
    published = {v["table"] for v in _versions(data_dir) if v["state"] == "published"}
    assert "batch" in published, first
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = server_env(data_dir, port)
    proc = subprocess.Popen(  # noqa: S603
        [*cleanroom_command(), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + HEALTH_DEADLINE_SECONDS
        while not healthy(url):
            assert proc.poll() is None, f"`cleanroom serve` exited {proc.returncode}"
            assert time.monotonic() < deadline, "`cleanroom serve` did not become healthy"
            time.sleep(0.1)
        token = (data_dir / "demo-researcher-token").read_text().strip()
        client = Client(url, token, agreement=AGREEMENT)
        rows = client.synthetic("batch")
        assert len(rows) > 100
        assert {"lot_id", "viability", "culture_days"} <= set(rows.columns)
        # Synthetic keys: `S` + 31 hex characters, never a real pseudonym.
        assert rows["lot_id"].dropna().str.fullmatch(r"S[0-9a-f]{31}").all()
        assert rows["viability"].dropna().between(0, 100).all()
    finally:
        stop(proc)
