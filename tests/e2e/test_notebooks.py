"""The example notebooks (``sandbox/notebooks/``) run top to bottom against the demo
consortium, in a real kernel, as a researcher would run them in the sandbox.

``live_server`` here is the module's own demo hub (``notebook_server``): the notebooks run
nine times within a couple of minutes, more sandbox requests than the default per-minute
allowance (``gateway_rate_per_minute``, covered by its own unit test), and their budgets
must start unspent whatever other tests asked before."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.e2e.conftest import LiveServer, demo_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "sandbox" / "notebooks").glob("*.ipynb"))
DEADLINE = 60.0
IMAGE = "<image/png>"  # stands for a drawn chart in the text _run returns


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A demo hub of this module's own, with its synthetic versions (``cleanroom demo
    seed`` + ``cleanroom serve``): the notebooks ask more questions a minute than the
    shared server's gateway rate allows."""
    with demo_server(
        tmp_path_factory.mktemp("notebook-server"),
        command="serve",
        gateway_rate_per_minute=1000,
        login_rate_per_minute=1000,
    ) as server:
        yield server


def test_there_are_the_three_example_notebooks() -> None:
    assert [p.name for p in NOTEBOOKS] == [
        "01_pooled_data_tour.ipynb",
        "02_manufacturing_failure.ipynb",
        "03_vein_to_vein.ipynb",
    ]


def _run(path: Path, live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run one notebook as the demo researcher; return its text outputs."""
    token = (live_server.data_dir / "demo-researcher-token").read_text().strip()
    # What the sandbox's spawner puts into a notebook server's environment, and nothing else
    # of Cleanroom's.
    for name in [n for n in os.environ if n.startswith("CLEANROOM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CLEANROOM_GATEWAY_URL", live_server.url)
    monkeypatch.setenv("CLEANROOM_TOKEN", token)
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    return "".join(
        str(o.get("text", ""))
        + str(o.get("data", {}).get("text/plain", ""))
        + (IMAGE if "image/png" in o.get("data", {}) else "")
        for o in outputs
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(
    path: Path, live_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _run(path, live_server, monkeypatch)
    assert "demo-" in text or "mean_v2v_days" in text or "coefficient" in text
    assert "epsilon_left" in text  # every notebook shows the budget it leaves
    if path.name == "01_pooled_data_tour.ipynb":
        assert "withheld [1]" in text and "] withheld: fewer than" in text  # marked cells
        assert "GROUP BY age instead of AVG(age)" in text  # a refusal's one line
        assert IMAGE in text  # the chart was drawn (matplotlib in the kernel)
    if path.name == "03_vein_to_vein.ipynb":
        assert IMAGE in text


def test_the_three_notebooks_run_within_the_default_budget_and_again_for_free(
    live_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All three notebooks together spend at most the default yearly ε (20) per agreement;
    run again, their questions are answered from memory at no cost."""
    import requests

    token = (live_server.data_dir / "demo-researcher-token").read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}

    def spent() -> dict[str, float]:
        found = {}
        for slug in ("demo-mfp", "demo-v2v"):
            resp = requests.get(
                f"{live_server.url}/api/v1/sandbox/budget",
                params={"agreement": slug},
                headers=headers,
                timeout=30,
            )
            resp.raise_for_status()
            body = resp.json()
            assert body["epsilon_total"] == 20.0
            found[slug] = body["epsilon_spent"]
        return found

    for path in NOTEBOOKS:
        _run(path, live_server, monkeypatch)
    first = spent()
    assert all(0 < v <= 20 for v in first.values()), first
    for path in NOTEBOOKS:
        _run(path, live_server, monkeypatch)
    assert spent() == first
