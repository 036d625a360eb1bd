"""The researcher's client for the query gateway. Needs only ``requests`` and ``pandas``.

In a Cleanroom notebook the gateway's address and a short-lived token are in the
environment, so::

    >>> from sandbox import connect
    >>> cr = connect()                       # CLEANROOM_GATEWAY_URL, CLEANROOM_TOKEN
    >>> cr.agreements()                      # what you may query, and on what terms
    >>> cr.use("demo-mfp")                   # the agreement later calls default to
    >>> cr.tables()
    ['batch', 'collection', ...]
    >>> cr.schema("batch")                   # column names and types as the views hold them
    >>> df = cr.query('''
    ...     SELECT platform, COUNT(*) AS n, AVG(viability) AS mean_viability
    ...     FROM batch GROUP BY platform''')
    >>> df.attrs["suppressed"]               # which cells were withheld, and why
    >>> cr.fit("batch", ["culture_days", "moi"], "viability")        # linear
    >>> cr.fit("batch", ["viability"], "failed", kind="logistic")

Outside a notebook: ``connect("https://cleanroom.example.org", token="crt_…")``.

Answers from real data are differentially private: each carries noise, costs ε from your
privacy budget under the agreement (``cr.budget()``), and the same question asked again
returns the same answer at no cost. Withheld cells come back as missing values
(``NaN``/``None``) and the reasons are attached to the frame
(``df.attrs["suppressed"]``: ``[{"row", "column", "reason"}]``). Refusals raise
specific exceptions carrying the gateway's reason: :class:`PolicyDenied` (you may not use this
agreement or table now), :class:`QueryRejected` (the SQL uses a construct that real data does
not answer; ``.construct`` names it), :class:`BudgetExhausted`, :class:`RateLimited`, and
:class:`SandboxError` for the rest.
"""

from __future__ import annotations

import os
from typing import Any

import pandas as pd
import requests

URL_ENV = "CLEANROOM_GATEWAY_URL"
TOKEN_ENV = "CLEANROOM_TOKEN"  # noqa: S105 - the variable's name, not a secret
AGREEMENT_ENV = "CLEANROOM_AGREEMENT"


class SandboxError(Exception):
    """The gateway refused or failed a request; ``code`` and ``message`` are its own."""

    def __init__(self, message: str, *, code: str = "error", status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


class PolicyDenied(SandboxError):
    """You may not do this under the agreement now (not named, not active, expired...)."""


class QueryRejected(SandboxError):
    """The query uses a construct real data does not answer (``construct`` names it)."""

    def __init__(
        self, message: str, *, code: str, status: int, construct: str = "", reason: str = ""
    ) -> None:
        super().__init__(message, code=code, status=status)
        self.construct = construct
        self.reason = reason or message


class RateLimited(SandboxError):
    """Too many requests in a minute; wait and try again."""


class BudgetExhausted(SandboxError):
    """Your privacy budget under the agreement cannot pay for this answer."""


def _raise_for(resp: requests.Response) -> None:
    if resp.ok:
        return
    try:
        error = resp.json()["error"]
        code, message = str(error.get("code", "error")), str(error.get("message", ""))
    except (ValueError, KeyError, TypeError):
        error, code, message = {}, "error", resp.text[:500] or resp.reason
    if code == "query_rejected":
        raise QueryRejected(
            message,
            code=code,
            status=resp.status_code,
            construct=str(error.get("construct") or ""),
            reason=str(error.get("reason") or ""),
        )
    if code == "budget_exhausted":
        raise BudgetExhausted(message, code=code, status=resp.status_code)
    if resp.status_code in (401, 403):
        raise PolicyDenied(message, code=code, status=resp.status_code)
    if resp.status_code == 429:
        raise RateLimited(message, code=code, status=resp.status_code)
    raise SandboxError(message, code=code, status=resp.status_code)


class Client:
    """A connection to the gateway (see the module docstring for a tour)."""

    def __init__(
        self, url: str, token: str, *, agreement: str | None = None, timeout: float = 120.0
    ) -> None:
        if not url:
            raise SandboxError(f"no gateway URL: pass url= or set {URL_ENV}.")
        if not token:
            raise SandboxError(f"no API token: pass token= or set {TOKEN_ENV}.")
        self.url = url.rstrip("/") + "/api/v1/sandbox"
        self.releases_url = url.rstrip("/") + "/api/v1/releases"
        self.agreement = agreement
        self.timeout = timeout
        self._http = requests.Session()
        self._http.headers["Authorization"] = f"Bearer {token}"

    def __repr__(self) -> str:
        return f"<sandbox.Client {self.url} agreement={self.agreement!r}>"

    # Plumbing --------------------------------------------------------------------------

    def _get(self, path: str, **params: Any) -> Any:
        resp = self._http.get(self.url + path, params=params, timeout=self.timeout)
        _raise_for(resp)
        return resp.json()

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        resp = self._http.post(self.url + path, json=body, timeout=self.timeout)
        _raise_for(resp)
        return resp.json()

    def _agreement(self, agreement: str | None) -> str:
        chosen = agreement or self.agreement
        if chosen:
            return chosen
        found = self.agreements()
        if len(found) == 1:
            self.agreement = str(found[0]["agreement"])
            return self.agreement
        names = ", ".join(str(a["agreement"]) for a in found) or "none"
        raise SandboxError(
            f"name the agreement (you may query: {names}): pass agreement= or call .use()."
        )

    # What you may see ------------------------------------------------------------------

    def use(self, agreement: str) -> Client:
        """Make ``agreement`` the default of later calls; returns the client."""
        self.agreement = agreement
        return self

    def agreements(self) -> list[dict[str, Any]]:
        """The agreements you may query now: tables and disclosure terms of each.

        >>> [a["agreement"] for a in cr.agreements()]
        ['demo-mfp']
        """
        return list(self._get("/agreements")["agreements"])

    def tables(self, agreement: str | None = None) -> list[str]:
        """The tables you may query under the agreement."""
        found = self._get("/tables", agreement=self._agreement(agreement))["tables"]
        return [t["table"] for t in found]

    def schema(self, table: str, agreement: str | None = None) -> pd.DataFrame:
        """Columns and types of ``table`` as the gateway's view holds them (exactly the
        agreement's columns; dates are whole days since the episode's first collection;
        identifiers are pseudonyms), with the public ``bounds`` aggregated values are
        clamped to and the ``values`` a GROUP BY lists."""
        found = self._get("/tables", agreement=self._agreement(agreement))["tables"]
        for t in found:
            if t["table"] == table:
                frame = pd.DataFrame(t["columns"], columns=["name", "type", "bounds", "values"])
                return frame.astype(object).where(frame.notna(), "")
        raise PolicyDenied(f"no table {table!r} under this agreement", code="unknown_table")

    # Asking ----------------------------------------------------------------------------

    def budget(self, agreement: str | None = None) -> dict[str, Any]:
        """Your privacy budget under the agreement this period: ε total, spent, left.

        >>> cr.budget()["epsilon_left"]
        19.0
        """
        return dict(self._get("/budget", agreement=self._agreement(agreement)))

    def query(
        self,
        sql: str,
        agreement: str | None = None,
        *,
        epsilon: float | None = None,
        rows_per_patient: int | None = None,
    ) -> pd.DataFrame:
        """A differentially private answer as a DataFrame. Withheld cells are missing, their
        reasons in ``df.attrs["suppressed"]``; ``df.attrs["epsilon"]`` is what it cost
        (0 when the same question was answered before) and ``df.attrs["budget"]`` what is
        left. ``epsilon`` spends less than the agreement's per-answer ε (more noise).

        >>> df = cr.query("SELECT sex, COUNT(*) AS n FROM episode GROUP BY sex")
        """
        body: dict[str, Any] = {"agreement": self._agreement(agreement), "sql": sql}
        if epsilon is not None:
            body["epsilon"] = epsilon
        if rows_per_patient is not None:
            body["rows_per_patient"] = rows_per_patient
        answer = self._post("/query", body)
        frame = pd.DataFrame(answer["rows"], columns=answer["columns"])
        frame.attrs["suppressed"] = answer.get("suppressed", [])
        frame.attrs["epsilon"] = answer.get("spent")
        frame.attrs["budget"] = answer.get("budget", {})
        frame.attrs["aggregates"] = answer.get("aggregates", [])
        frame.attrs["rows_per_patient"] = answer.get("rows_per_patient")
        frame.attrs["query_hash"] = answer.get("query_hash")
        frame.attrs["result_hash"] = answer.get("result_hash")
        return frame

    def synthetic(
        self, table: str, agreement: str | None = None, *, limit: int | None = None
    ) -> pd.DataFrame:
        """The synthetic version of ``table``, row by row, where the agreement allows it
        (every page of it, or the first ``limit`` rows)."""
        slug = self._agreement(agreement)
        params: dict[str, Any] = {"agreement": slug}
        if limit is not None:
            params["limit"] = limit
        body = self._get(f"/synthetic/{table}", **params)
        columns, rows = body["columns"], list(body["rows"])
        while limit is None and body.get("next_offset") is not None:
            body = self._get(f"/synthetic/{table}", agreement=slug, offset=body["next_offset"])
            rows.extend(body["rows"])
        return pd.DataFrame(rows, columns=columns)

    def fit(
        self,
        table: str,
        features: list[str],
        target: str,
        *,
        kind: str = "linear",
        filters: str | None = None,
        agreement: str | None = None,
        epsilon: float | None = None,
    ) -> dict[str, Any]:
        """Fit a linear or logistic regression on real data, server-side, under
        differential privacy. Returns noisy coefficients, n and what it cost; never
        predictions or residuals.

        >>> cr.fit("batch", ["culture_days"], "viability")["coefficients"]
        """
        body: dict[str, Any] = {
            "agreement": self._agreement(agreement),
            "table": table,
            "kind": kind,
            "features": list(features),
            "target": target,
        }
        if filters:
            body["filters"] = filters
        if epsilon is not None:
            body["epsilon"] = epsilon
        return dict(self._post("/fit", body))

    # Reviewed release: exact results ---------------------------------------------------

    def request_release(
        self, outputs: list[dict[str, Any]], agreement: str | None = None, *, title: str = ""
    ) -> dict[str, Any]:
        """Ask for exact outputs for a paper or a submission. Each output is a query
        (``{"sql": "SELECT …", "purpose": "Table 1"}``) or a fit (``{"kind": "fit",
        "table", "model": "linear"|"logistic", "features", "target", "filters"?,
        "purpose"}``). The hub computes them exactly on the real pool under the agreement's
        disclosure rules; output checkers review them and the contributing institutions may
        object. Returns the request (its ``id`` and ``state``), never the results: read
        them with :meth:`released` once the request is released.

        >>> r = cr.request_release([{"sql": "SELECT site, COUNT(*) FROM batch GROUP BY site",
        ...                          "purpose": "Table 1: batches per site"}])
        """
        body: dict[str, Any] = {
            "agreement": self._agreement(agreement),
            "title": title,
            "outputs": outputs,
        }
        resp = self._http.post(self.releases_url, json=body, timeout=self.timeout)
        _raise_for(resp)
        return dict(resp.json())

    def releases(self) -> pd.DataFrame:
        """Your release requests and their states (``in_review``, ``approved``,
        ``released``, ``rejected`` with the reason, ``withdrawn``)."""
        resp = self._http.get(self.releases_url, timeout=self.timeout)
        _raise_for(resp)
        rows = [
            {k: r[k] for k in ("id", "agreement", "title", "state", "approvals", "reason")}
            for r in resp.json()["requests"]
        ]
        return pd.DataFrame(
            rows, columns=["id", "agreement", "title", "state", "approvals", "reason"]
        )

    def release_comments(self, request_id: int) -> pd.DataFrame:
        """The comments on a release request: the checkers' notes per output, the
        institutions' questions, your answers (``output`` empty: the whole request)."""
        resp = self._http.get(f"{self.releases_url}/{int(request_id)}", timeout=self.timeout)
        _raise_for(resp)
        columns = ["output", "revision", "by", "at", "text"]
        return pd.DataFrame(resp.json().get("comments", []), columns=columns)

    def comment_on_release(self, request_id: int, text: str, output: int = 0) -> None:
        """Answer the checkers or the institutions: a comment on output ``output`` of the
        request (0: the whole request)."""
        resp = self._http.post(
            f"{self.releases_url}/{int(request_id)}/comments",
            json={"output": int(output), "text": text},
            timeout=self.timeout,
        )
        _raise_for(resp)

    def released(self, request_id: int) -> list[pd.DataFrame | dict[str, Any]]:
        """The outputs of a released request: a DataFrame per query (withheld cells
        missing, ``attrs`` with the request id, the purpose and the result hash), a dict
        per fit. Refused (PolicyDenied) until the request is released."""
        resp = self._http.get(f"{self.releases_url}/{int(request_id)}", timeout=self.timeout)
        _raise_for(resp)
        body = resp.json()
        if body.get("state") != "released":
            raise PolicyDenied(
                f"release request {request_id} is {body.get('state')}: its results leave the "
                "hub once it is released.",
                code="not_released",
            )
        found: list[pd.DataFrame | dict[str, Any]] = []
        for output in body["results"]:
            result = output["result"] or {}
            if output["kind"] == "query" and result:
                frame = pd.DataFrame(result["rows"], columns=result["columns"])
                frame.attrs.update(
                    request=request_id,
                    purpose=output["purpose"],
                    result_hash=output["result_hash"],
                    suppressed=result.get("suppressed", []),
                )
                found.append(frame)
            else:
                found.append({**result, "purpose": output["purpose"], "refused": output["refused"]})
        return found


def connect(
    url: str | None = None, token: str | None = None, *, agreement: str | None = None
) -> Client:
    """A :class:`Client` from the arguments or, in a Cleanroom notebook, the environment
    (``CLEANROOM_GATEWAY_URL``, ``CLEANROOM_TOKEN``, optional ``CLEANROOM_AGREEMENT``)."""
    return Client(
        url or os.environ.get(URL_ENV, ""),
        token or os.environ.get(TOKEN_ENV, ""),
        agreement=agreement or os.environ.get(AGREEMENT_ENV) or None,
    )
