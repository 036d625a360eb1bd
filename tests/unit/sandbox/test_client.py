"""The researcher client's presentation (``sandbox.client``): withheld cells marked when an
answer is displayed, ``cr.agreements`` as a list that may be called, refusals in one line
in IPython (the full traceback on request), and an unreachable gateway said in words."""

from __future__ import annotations

import io
import math
import socket
from contextlib import redirect_stderr, redirect_stdout

import pandas as pd
import pytest

import sandbox
from sandbox.client import (
    Agreements,
    QueryRejected,
    Result,
    SandboxError,
    connect,
    install_error_display,
    one_line,
)

SUPPRESSED = [
    {"row": 1, "column": None, "reason": "fewer than 10 patients (noisy count)"},
    {"row": 2, "column": None, "reason": "fewer than 3 institutions (noisy counts)"},
    {"row": 3, "column": "mean", "reason": "fewer than 10 patients (noisy count)"},
]


def _answer() -> Result:
    frame = Result(
        [
            ["axi-cel", 91.0, 3.2],
            ["ide-cel", None, None],
            ["academic", None, None],
            [None, 12.0, None],
        ],
        columns=["product", "n", "mean"],
    )
    frame.attrs["suppressed"] = SUPPRESSED
    return frame


def test_withheld_cells_are_marked_with_their_reasons_and_stay_missing() -> None:
    df = _answer()
    text = repr(df)
    assert text.count("withheld [1]") == 3  # rows 1 (n, mean) and 3 (mean)
    assert text.count("withheld [2]") == 2
    assert "[1] withheld: fewer than 10 patients (noisy count)" in text
    assert "[2] withheld: fewer than 3 institutions (noisy counts)" in text
    assert "axi-cel" in text and "NaN" not in text.split("[1] withheld")[0]
    # The group key of a withheld row is shown as it is, not marked.
    assert "ide-cel" in text and "academic" in text
    page = df._repr_html_()
    assert page is not None and page.count("withheld <sup>1</sup>") == 3
    assert "<li><sup>2</sup> withheld: fewer than 3 institutions (noisy counts)</li>" in page
    # Still a DataFrame whose withheld values are missing: computations skip them.
    assert isinstance(df, pd.DataFrame) and math.isnan(df.at[1, "n"])
    assert df["n"].sum() == 103.0
    assert df.attrs["suppressed"] == SUPPRESSED  # callers reading attrs keep working
    assert list(df.withheld.columns) == ["row", "column", "reason"]
    assert df.withheld["row"].tolist() == [1, 2, 3]
    # A frame derived from it is a plain DataFrame (its rows may no longer match).
    assert type(df[df["n"] > 1]) is pd.DataFrame


def test_an_answer_without_withheld_cells_displays_as_a_dataframe() -> None:
    df = Result([["a", 1.0]], columns=["k", "n"])
    assert repr(df) == repr(pd.DataFrame([["a", 1.0]], columns=["k", "n"]))
    assert "withheld" not in (df._repr_html_() or "")


def test_agreements_is_a_list_that_may_also_be_called() -> None:
    found = Agreements([{"agreement": "demo-mfp"}, {"agreement": "demo-v2v"}])
    assert found() is found and found()[0]["agreement"] == "demo-mfp"
    assert found.names == ["demo-mfp", "demo-v2v"] and len(found) == 2


def test_a_refusal_is_one_line_naming_the_rule_and_what_to_do() -> None:
    err = QueryRejected(
        "AVG(age): `age` is given in bands such as '40-49', not as a number:\n"
        "GROUP BY age instead of AVG(age)",
        code="query_rejected",
        status=400,
        construct="AVG(age)",
    )
    assert "\n" not in str(err)
    line = one_line(err)
    assert line.startswith("QueryRejected: AVG(age): `age` is given in bands")
    assert "GROUP BY age instead of AVG(age)" in line and "sandbox.verbose(True)" in line


def test_ipython_shows_the_one_line_and_the_traceback_on_request() -> None:
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        assert install_error_display(shell)
        cell = (
            "from sandbox import QueryRejected\n"
            "raise QueryRejected('MAX: returns a single record\\'s value; use AVG', "
            "code='query_rejected', status=400)"
        )
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            result = shell.run_cell(cell)
        shown = out.getvalue() + err.getvalue()
        assert isinstance(result.error_in_exec, QueryRejected)  # the cell still fails
        assert shown.strip().splitlines() == [
            "QueryRejected: MAX: returns a single record's value; use AVG  "
            "(full traceback: sandbox.verbose(True), or %tb)"
        ]
        sandbox.verbose(True)
        out = io.StringIO()
        with redirect_stdout(out), redirect_stderr(out):
            shell.run_cell(cell)
        assert "Traceback" in out.getvalue() and len(out.getvalue().splitlines()) > 3
    finally:
        sandbox.verbose(False)
        shell.set_custom_exc((), None)
        InteractiveShell.clear_instance()


def test_outside_ipython_nothing_is_registered() -> None:
    assert install_error_display(object()) is False


def test_an_unreachable_gateway_is_said_in_words() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cr = connect(f"http://127.0.0.1:{port}", token="crt_x", agreement="demo")  # noqa: S106
    with pytest.raises(SandboxError) as failed:
        cr.budget()
    assert failed.value.code == "unreachable"
    assert str(failed.value).startswith(f"cannot reach the gateway at http://127.0.0.1:{port}")
