"""``cleanroom deid`` through click's CliRunner on CSV, Parquet and broken inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from anonymisation.cli import deid
from anonymisation.pseudonyms import pseudonymise

KEY = "cli-test-key-0123456789abcdef"
ENV = {"CLEANROOM_HMAC_KEY": KEY}
ROOT = Path(__file__).resolve().parents[3]


def small_frame() -> pd.DataFrame:
    n = 30
    return pd.DataFrame(
        {
            "patient_name": [f"Patient{chr(65 + i % 26)} Surname{i}" for i in range(n)],
            "mrn": [f"MRN{5200000 + i * 13}" for i in range(n)],
            "coi_id": [f"COI-{8000 + i}" for i in range(n)],
            "collection_date": [f"2024-0{1 + i % 3}-1{i % 9}" for i in range(n)],
            "sex": ["F" if i % 2 else "M" for i in range(n)],
            "equipment": ["Spectra Optia"] * n,
        }
    )


def run(args: list[str], env: dict[str, str] | None = None):
    return CliRunner().invoke(deid, args, env=env if env is not None else ENV)


def check_outputs(out: Path, report: Path, frame: pd.DataFrame) -> None:
    table = pd.read_parquet(out)
    assert "patient_name" not in table and "mrn" not in table
    assert set(table["coi_id"]) <= set(pseudonymise(frame["coi_id"], KEY.encode()))
    assert set(table["equipment"]) == {"Spectra Optia"}
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["rows_in"] == len(frame) and data["rows_out"] == len(table)
    assert data["k"] == 5
    by_name = {c["name"]: c for c in data["columns"]}
    assert by_name["mrn"]["class"] == "direct_identifier"
    assert by_name["mrn"]["action"] == "drop"
    assert {"name", "class", "entity", "action"} <= set(by_name["coi_id"])


def test_csv_semicolon_cp1252(tmp_path: Path) -> None:
    frame = small_frame()
    frame.loc[0, "equipment"] = "Spectra Optia"
    source = tmp_path / "episodes.csv"
    text = frame.to_csv(index=False, sep=";").replace("Surname3", "Surn\u00e9me3")
    source.write_bytes(text.encode("cp1252"))
    out, report = tmp_path / "o" / "out.parquet", tmp_path / "report.json"
    result = run([str(source), "--out", str(out), "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    check_outputs(out, report, frame)


def test_parquet_with_hints(tmp_path: Path) -> None:
    frame = small_frame()
    source = tmp_path / "episodes.parquet"
    frame.to_parquet(source, index=False)
    hints = tmp_path / "hints.json"
    hints.write_text(json.dumps({"sex": "direct_identifier"}), encoding="utf-8")
    out, report = tmp_path / "out.parquet", tmp_path / "report.json"
    args = [str(source), "--out", str(out), "--report", str(report), "--hints", str(hints)]
    result = run(args)
    assert result.exit_code == 0, result.output
    check_outputs(out, report, frame)
    assert "sex" not in pd.read_parquet(out)


def test_missing_key(tmp_path: Path) -> None:
    source = tmp_path / "episodes.csv"
    small_frame().to_csv(source, index=False)
    args = [str(source), "--out", str(tmp_path / "o.parquet"), "--report", str(tmp_path / "r")]
    result = run(args, env={"CLEANROOM_HMAC_KEY": ""})
    assert result.exit_code == 1
    assert "CLEANROOM_HMAC_KEY" in result.output
    assert not (tmp_path / "o.parquet").exists()


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("broken.parquet", b"not a parquet file at all"),
        ("broken.xlsx", b"PK\x03\x04 truncated zip"),
        ("empty.csv", b""),
        ("table.json", b"{}"),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, name: str, content: bytes) -> None:
    source = tmp_path / name
    source.write_bytes(content)
    args = [str(source), "--out", str(tmp_path / "o.parquet"), "--report", str(tmp_path / "r")]
    result = run(args)
    assert result.exit_code == 1, result.output
    assert "Error: cannot read" in result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


def test_missing_file(tmp_path: Path) -> None:
    args = [str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o"), "--report", "r"]
    result = run(args)
    assert result.exit_code == 1
    assert "no such file" in result.output


def test_identifier_classes_are_the_librarys_and_load_no_nlp() -> None:
    """The CLI lists the classes from :mod:`anonymisation.identifiers`, the one definition
    the classifier and the CDM share, without loading Presidio or spaCy (so `cleanroom
    --help` stays fast)."""
    from anonymisation import classify, cli
    from anonymisation.identifiers import IdentifierClass
    from contracts.cdm import IdentifierClass as CdmIdentifierClass

    assert CdmIdentifierClass is IdentifierClass
    assert tuple(cli.CLASSES) == tuple(c.value for c in IdentifierClass) == classify.CLASSES
    code = (
        "import sys, anonymisation.cli; "
        "print(sorted(m for m in ('presidio_analyzer', 'spacy', 'anonymisation.classify') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"
