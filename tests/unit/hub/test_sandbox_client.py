"""The researcher client (``from sandbox import connect``) against the hub served over real
HTTP (waitress on loopback): DataFrames, suppression reasons, specific exceptions."""

from __future__ import annotations

import pandas as pd
import pytest

from hub.db import Database
from hub.settings import Settings
from sandbox import PolicyDenied, QueryRejected, SandboxError, connect
from tests.conftest import activate_agreement, bearer
from tests.unit.hub.conftest import LOTS, QUERY, gateway_terms

pytestmark = pytest.mark.db


def test_client_tour(
    served: str,
    database: Database,
    settings: Settings,
    pooled,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    activate_agreement(database, gateway_terms("disclosure:\n  allow_model_fitting: true\n"))
    token = bearer(database, settings, "rosa")["Authorization"].removeprefix("Bearer ")
    monkeypatch.setenv("CLEANROOM_GATEWAY_URL", served)
    monkeypatch.setenv("CLEANROOM_TOKEN", token)
    cr = connect()  # from the environment, as in a notebook
    assert [a["agreement"] for a in cr.agreements()] == ["v2v"]
    assert cr.tables() == ["batch"]  # the only agreement is chosen by default
    schema = cr.schema("batch")
    assert {"platform", "viability", "institution"} <= set(schema["name"])

    df = cr.query(QUERY)
    assert isinstance(df, pd.DataFrame) and list(df.columns) == ["platform", "n", "mean_viability"]
    assert "suppressed" in df.attrs and len(df.attrs["result_hash"]) == 64
    assert df.attrs["epsilon"] == 1.0 and cr.budget()["epsilon_left"] == 19.0
    # Small cells are withheld, not shown; the reasons come with the frame.
    tiny = cr.query(
        "SELECT culture_days, viability > 95 AS high, COUNT(*) AS n "
        "FROM batch GROUP BY culture_days, viability > 95"
    )
    assert tiny.attrs["suppressed"] and tiny["n"].isna().any()

    with pytest.raises(QueryRejected) as rejected:
        cr.query("SELECT MAX(viability) FROM batch")
    assert rejected.value.construct.upper().startswith("MAX")
    summary = cr.fit("batch", ["culture_days"], "viability")
    assert abs(summary["n"] - LOTS) < 100 and "culture_days" in summary["coefficients"]
    assert cr.budget()["epsilon_spent"] == 3.0
    with pytest.raises(PolicyDenied):
        cr.synthetic("batch")  # not allowed by these terms
    with pytest.raises(PolicyDenied):
        connect(served, token, agreement="someone-elses").query(QUERY)


def test_client_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLEANROOM_GATEWAY_URL", raising=False)
    monkeypatch.delenv("CLEANROOM_TOKEN", raising=False)
    with pytest.raises(SandboxError, match="CLEANROOM_GATEWAY_URL"):
        connect()
    with pytest.raises(SandboxError, match="CLEANROOM_TOKEN"):
        connect("http://127.0.0.1:9")


def test_describe_reads_the_catalogue_under_the_agreement(
    served: str,
    database: Database,
    settings: Settings,
    pooled,  # noqa: F811
) -> None:
    from contracts.cdm import IdentifierClass, load_cdm

    activate_agreement(database, gateway_terms(""))
    token = bearer(database, settings, "rosa")["Authorization"].removeprefix("Bearer ")
    cr = connect(served, token)
    tables = cr.describe()
    cdm = load_cdm()
    assert set(tables["table"]) == {t.name for t in cdm.tables}
    assert tables.set_index("table")["covered"].to_dict()["batch"] is True
    assert tables.attrs["agreement"] == "v2v" and tables.attrs["patients"]

    batch = cr.describe("batch")
    truth = cdm.table("batch")
    assert list(batch["column"]) == [c.name for c in truth.columns]
    described = batch.set_index("column")
    assert described.loc["viability", "description"] == truth.column("viability").description
    # Every column the gateway's view holds is one the catalogue says may be queried
    # (`batch: all` covers the CDM's columns; the pool here holds five of them).
    covered = set(batch.loc[batch["covered"], "column"])
    assert set(cr.schema("batch")["name"]) - {"institution"} <= covered
    assert not covered & {c.name for c in truth.columns if c.identifier is IdentifierClass.DIRECT}
    assert batch.attrs["table"] == "batch"
    with pytest.raises(SandboxError, match="no table 'batches'"):
        cr.describe("batches")
    with pytest.raises(PolicyDenied):
        cr.describe("batch", agreement="someone-elses")
