"""The researcher's client for the query gateway. Needs only ``requests`` and ``pandas``.

In a Cleanroom notebook the gateway's address and a short-lived token are in the
environment, so::

    >>> from sandbox import connect
    >>> cr = connect()                       # CLEANROOM_GATEWAY_URL, CLEANROOM_TOKEN
    >>> cr.agreements                        # what you may query, and on what terms
    >>> cr.use("demo-mfp")                   # the agreement later calls default to
    >>> cr.tables()
    ['batch', 'collection', ...]
    >>> cr.schema("batch")                   # column names and types as the views hold them
    >>> cr.describe("batch")                 # the catalogue: meaning, unit, allowed values
    >>> df = cr.query('''
    ...     SELECT platform, COUNT(*) AS n, AVG(viability) AS mean_viability
    ...     FROM batch GROUP BY platform''')
    >>> df                                   # withheld cells are marked, reasons below
    >>> df.withheld                          # the same as a table: row, column, reason
    >>> cr.fit("batch", ["culture_days", "moi"], "viability")        # linear
    >>> cr.fit("batch", ["viability"], "failed", kind="logistic")
    >>> cr.synthetic("batch")                # synthetic rows, where the agreement allows
    >>> cr.synthetic_fhir("batch", path="batch.ndjson")   # the same as FHIR R5 resources

Outside a notebook: ``connect("https://cleanroom.example.org", token="crt_…")``.

Answers from real data are differentially private: each carries noise, costs ε from your
privacy budget under the agreement (``cr.budget()``), and the same question asked again
returns the same answer at no cost. Withheld cells are missing values (``NaN``/``None``,
so computations skip them); displayed, the frame marks them "withheld" with the reasons as
footnotes (``df.withheld``; also ``df.attrs["suppressed"]``: ``[{"row", "column",
"reason"}]``). Refusals raise specific exceptions carrying the gateway's reason:
:class:`PolicyDenied` (you may not use this agreement or table now), :class:`QueryRejected`
(the SQL uses a construct that real data does not answer; ``.construct`` names it),
:class:`BudgetExhausted`, :class:`RateLimited`, and :class:`SandboxError` for the rest. In a
notebook a refusal prints one line, the reason and what to do; ``sandbox.verbose(True)`` (or
``%tb`` after the fact) shows the full traceback.
"""

from __future__ import annotations

import html
import json
import os
import sys
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

    def __str__(self) -> str:
        # One line: the gateway's reason names the rule and what to change.
        return " ".join(self.message.split()) or self.code


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


# One-line errors in notebooks -------------------------------------------------------------

_VERBOSE = False
HINT = "(full traceback: sandbox.verbose(True), or %tb)"


def verbose(on: bool = True) -> None:
    """Show the full traceback of the client's errors in a notebook (``False``: one line,
    the default)."""
    global _VERBOSE
    _VERBOSE = bool(on)


def one_line(error: BaseException) -> str:
    """How a refusal reads in a notebook: ``QueryRejected: <reason and what to do>``."""
    return f"{type(error).__name__}: {error}  {HINT}"


def _show_error(
    shell: Any, etype: type[BaseException], value: BaseException, tb: Any, tb_offset: Any = None
) -> list[str]:
    """IPython's handler for :class:`SandboxError`: one line instead of a traceback through
    this module (the full one with :func:`verbose` or ``%tb``)."""
    sys.last_type, sys.last_value, sys.last_traceback = etype, value, tb
    if _VERBOSE:
        stb = list(shell.InteractiveTB.structured_traceback(etype, value, tb, tb_offset=tb_offset))
    else:
        stb = [one_line(value)]
    shell._showtraceback(etype, value, stb)
    return stb


def install_error_display(shell: Any = None) -> bool:
    """Register :func:`_show_error` with the running IPython (done on import); whether there
    was one. Outside IPython nothing changes: Python prints the usual traceback."""
    if shell is None:
        ipython = sys.modules.get("IPython")
        shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or not hasattr(shell, "set_custom_exc"):
        return False
    shell.set_custom_exc((SandboxError,), _show_error)
    return True


# Answers ---------------------------------------------------------------------------------


class Result(pd.DataFrame):
    """An answer: a real :class:`pandas.DataFrame` (withheld cells are missing values, so
    computations skip them) that, displayed, marks each withheld cell and lists the reasons.
    Frames derived from it (filters, sums, copies) are plain DataFrames."""

    @property
    def _constructor(self) -> Any:
        return pd.DataFrame

    @property
    def withheld(self) -> pd.DataFrame:
        """The withheld cells: row, column (empty: the row's aggregates) and reason."""
        found = [
            {"row": s.get("row"), "column": s.get("column") or "", "reason": s.get("reason", "")}
            for s in self.attrs.get("suppressed") or []
        ]
        return pd.DataFrame(found, columns=["row", "column", "reason"])

    def _keys(self) -> set[str]:
        """Columns that look like group keys (text, or numbers missing in at most one row
        while several rows are withheld): a withheld row's aggregates are the others."""
        rows = {s.get("row") for s in self.attrs.get("suppressed") or [] if not s.get("column")}
        keys = set()
        for column in self.columns:
            values = self[column]
            present = values.dropna()
            if any(isinstance(v, str | bool) for v in present):
                keys.add(column)
            elif len(rows) >= 2 and values.isna().sum() <= 1:
                keys.add(column)
        return keys

    def _marks(self) -> tuple[dict[tuple[Any, Any], int], list[str]]:
        """(cell -> footnote number, footnotes) for the withheld cells still in the frame."""
        reasons: list[str] = []
        marks: dict[tuple[Any, Any], int] = {}
        keys = self._keys()
        for s in self.attrs.get("suppressed") or []:
            row, column = s.get("row"), s.get("column")
            if row not in self.index:
                continue
            reason = str(s.get("reason") or "withheld")
            if reason not in reasons:
                reasons.append(reason)
            number = reasons.index(reason) + 1
            columns = [column] if column in self.columns else []
            if not column:
                columns = [c for c in self.columns if c not in keys and pd.isna(self.at[row, c])]
            for c in columns:
                marks[(row, c)] = number
        return marks, reasons

    def _shown(self, marker: Any) -> tuple[pd.DataFrame, list[str]]:
        marks, reasons = self._marks()
        shown = pd.DataFrame(self, copy=True)
        if marks:
            shown = shown.astype(object)
            for (row, column), number in marks.items():
                shown.at[row, column] = marker(number)
        return shown, reasons

    def __repr__(self) -> str:
        if not self.attrs.get("suppressed"):
            return pd.DataFrame.__repr__(self)
        shown, reasons = self._shown(lambda n: f"withheld [{n}]")
        notes = "\n".join(f"[{i}] withheld: {r}" for i, r in enumerate(reasons, 1))
        return f"{pd.DataFrame.__repr__(shown)}\n{notes}"

    def _repr_html_(self) -> str | None:
        if not self.attrs.get("suppressed"):
            return pd.DataFrame._repr_html_(self)
        shown, reasons = self._shown(lambda n: f"\x00{n}\x00")
        table = shown.to_html(max_rows=60, notebook=True)
        for i in range(1, len(reasons) + 1):
            table = table.replace(
                f"\x00{i}\x00",
                f'<span style="color:#8a5300;font-style:italic" title="'
                f'{html.escape(reasons[i - 1])}">withheld <sup>{i}</sup></span>',
            )
        notes = "".join(
            f"<li><sup>{i}</sup> withheld: {html.escape(r)}</li>" for i, r in enumerate(reasons, 1)
        )
        return (
            f'<div class="cleanroom-answer">{table}<ul style="list-style:none;'
            f'padding-left:0;font-size:smaller">{notes}</ul></div>'
        )


class Agreements(list[dict[str, Any]]):
    """The agreements you may query: a list (``cr.agreements``) that may also be called
    (``cr.agreements()``), as earlier versions of the client had it."""

    def __call__(self) -> Agreements:
        return self

    @property
    def names(self) -> list[str]:
        return [str(a["agreement"]) for a in self]


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


class FhirResources(list[dict[str, Any]]):
    """FHIR R5 resources (dicts); ``left_out`` names, in a sentence, the columns the hub left
    out of them (de-identified dates and ranges have no FHIR form), empty when none was."""

    left_out: str = ""


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

    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        try:
            resp = self._http.request(method, url, timeout=self.timeout, **kwargs)
        except requests.Timeout:
            raise SandboxError(
                f"the gateway did not answer within {self.timeout:g} s; try again, or ask "
                "a smaller question.",
                code="timeout",
            ) from None
        except requests.ConnectionError:
            raise SandboxError(
                f"cannot reach the gateway at {url.split('/api/')[0]}: the hub may be down "
                "or restarting; try again in a minute.",
                code="unreachable",
            ) from None
        _raise_for(resp)
        return resp

    def _get(self, path: str, **params: Any) -> Any:
        return self._send("GET", self.url + path, params=params).json()

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        return self._send("POST", self.url + path, json=body).json()

    def _agreement(self, agreement: str | None) -> str:
        chosen = agreement or self.agreement
        if chosen:
            return chosen
        found = self.agreements
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

    @property
    def agreements(self) -> Agreements:
        """The agreements you may query now: tables and disclosure terms of each (asked
        afresh each time; ``cr.agreements()`` works too).

        >>> cr.agreements.names
        ['demo-mfp']
        """
        return Agreements(self._get("/agreements")["agreements"])

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

    def describe(self, table: str | None = None, agreement: str | None = None) -> pd.DataFrame:
        """The data catalogue under the agreement: with no ``table``, one row per table of
        the common data model (its description and how many of its columns you may query);
        with a ``table``, one row per column (meaning, type, unit, allowed values or range,
        how it is protected, whether you may query it). ``attrs`` name the agreement, the
        institutions contributing and the patients behind it (rounded).

        >>> cr.describe("batch")[["column", "description", "unit", "covered"]]
        """
        body = self._get("/catalogue", agreement=self._agreement(agreement))
        if table is None:
            rows = [
                {
                    "table": t["table"],
                    "description": t["description"],
                    "grain": t.get("grain", ""),
                    "columns you may query": sum(bool(c["covered"]) for c in t["columns"]),
                    "covered": bool(t["covered"]),
                }
                for t in body["tables"]
            ]
            frame = pd.DataFrame(rows)
        else:
            found = [t for t in body["tables"] if t["table"] == table]
            if not found:
                names = ", ".join(t["table"] for t in body["tables"])
                raise SandboxError(
                    f"the data model has no table {table!r}; its tables: {names}.",
                    code="unknown_table",
                )
            rows = [
                {
                    "column": c["name"],
                    "description": c["description"],
                    "type": c["type"],
                    "unit": c.get("unit") or "",
                    "allowed": ", ".join(map(str, c.get("allowed_values") or []))
                    or ("–".join(map(str, c["range"])) if c.get("range") else ""),
                    "protection": c["identifier_class"],
                    "covered": bool(c["covered"]),
                }
                for c in found[0]["columns"]
            ]
            frame = pd.DataFrame(rows)
            frame.attrs["table"] = table
            frame.attrs["description"] = found[0]["description"]
        frame.attrs.update(
            agreement=body["agreement"],
            institutions=list(body["institutions"]),
            patients=body["patients"],
        )
        return frame

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
        """A differentially private answer as a DataFrame. Withheld cells are missing values,
        marked "withheld" when the frame is displayed, their reasons in ``df.withheld`` (and
        ``df.attrs["suppressed"]``); ``df.attrs["epsilon"]`` is what it cost
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
        frame = Result(answer["rows"], columns=answer["columns"])
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

    def synthetic_fhir(
        self,
        table: str,
        agreement: str | None = None,
        *,
        form: str = "ndjson",
        path: str | os.PathLike[str] | None = None,
    ) -> FhirResources:
        """The whole synthetic version of ``table`` as HL7 FHIR R5 resources (dicts), where
        the agreement allows synthetic rows. ``form`` is what the gateway sends: ``"ndjson"``
        (one resource a line) or ``"bundle"`` (one collection Bundle); with ``path`` the
        file is also saved there as received, for a FHIR server or another tool. Columns
        FHIR R5 cannot carry are named in ``.left_out``."""
        if form not in ("ndjson", "bundle"):
            raise SandboxError(f'form must be "ndjson" or "bundle", not {form!r}.')
        slug = self._agreement(agreement)
        resp = self._send(
            "GET",
            f"{self.url}/synthetic/{table}",
            params={"agreement": slug, "format": f"fhir-{form}"},
        )
        if path is not None:
            with open(path, "wb") as fh:
                fh.write(resp.content)
        if form == "bundle":
            found = FhirResources(e["resource"] for e in resp.json().get("entry", []))
        else:
            found = FhirResources(json.loads(ln) for ln in resp.text.splitlines() if ln.strip())
        found.left_out = resp.headers.get("X-Cleanroom-Left-Out", "")
        return found

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
        resp = self._send("POST", self.releases_url, json=body)
        return dict(resp.json())

    def releases(self) -> pd.DataFrame:
        """Your release requests and their states (``in_review``, ``approved``,
        ``released``, ``rejected`` with the reason, ``withdrawn``)."""
        resp = self._send("GET", self.releases_url)
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
        resp = self._send("GET", f"{self.releases_url}/{int(request_id)}")
        columns = ["output", "revision", "by", "at", "text"]
        return pd.DataFrame(resp.json().get("comments", []), columns=columns)

    def comment_on_release(self, request_id: int, text: str, output: int = 0) -> None:
        """Answer the checkers or the institutions: a comment on output ``output`` of the
        request (0: the whole request)."""
        self._send(
            "POST",
            f"{self.releases_url}/{int(request_id)}/comments",
            json={"output": int(output), "text": text},
        )

    def released(self, request_id: int) -> list[pd.DataFrame | dict[str, Any]]:
        """The outputs of a released request: a DataFrame per query (withheld cells
        missing, ``attrs`` with the request id, the purpose and the result hash), a dict
        per fit. Refused (PolicyDenied) until the request is released."""
        resp = self._send("GET", f"{self.releases_url}/{int(request_id)}")
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
                frame = Result(result["rows"], columns=result["columns"])
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


install_error_display()
