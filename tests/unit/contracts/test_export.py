"""The CDM as a data contract: its semantic version and changelog, its JSON Schemas
(checked with ``jsonschema`` against real demo rows and broken ones), its Frictionless Data
Package (checked structurally and against the demo rows) and ``cleanroom cdm``."""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from contracts.cdm import (
    CHANGELOG_PATH,
    DEFAULT_PATH,
    ColumnType,
    CommonDataModel,
    Table,
    cdm_version,
    load_cdm,
)
from contracts.export import (
    DATETIME_PATTERN,
    FORMATS,
    JSON_SCHEMA_DIALECT,
    PACKAGE_FILE,
    data_package,
    json_schemas,
    schema_file_name,
    write_export,
)
from hub.cli import cli
from hub.demodata import generate_frames

SEMVER = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")
TABLE_SCHEMA_TYPES = {"string", "integer", "number", "boolean", "date", "datetime"}


@pytest.fixture(scope="module")
def cdm() -> CommonDataModel:
    return load_cdm()


@pytest.fixture(scope="module")
def schemas(cdm: CommonDataModel) -> dict[str, dict[str, Any]]:
    return json_schemas(cdm)


@pytest.fixture(scope="module")
def package(cdm: CommonDataModel) -> dict[str, Any]:
    return data_package(cdm)


@pytest.fixture(scope="module")
def demo() -> dict[str, dict[str, pd.DataFrame]]:
    """Two institutions' CDM frames from the demo generator (CDM names, canonical units)."""
    return generate_frames(institutions=2, patients=15, seed=3)


def _json_value(value: Any, ctype: ColumnType) -> Any:
    """A frame cell as a JSON row carries it: dates as text, missing as None."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if ctype is ColumnType.DATE:
        return pd.Timestamp(value).date().isoformat()
    if ctype is ColumnType.DATETIME:
        return pd.Timestamp(value).isoformat()
    if ctype is ColumnType.INTEGER:
        return int(value)
    if ctype is ColumnType.NUMBER:
        return float(value)
    if ctype is ColumnType.BOOLEAN:
        return bool(value)
    return str(value)


def _rows(frame: pd.DataFrame, table: Table) -> list[dict[str, Any]]:
    types = {name: table.column(name).type for name in frame.columns}
    rows: list[dict[str, Any]] = []
    for record in frame.astype(object).to_dict("records"):
        row = {name: _json_value(value, types[name]) for name, value in record.items()}
        # An optional column left out and one sent as null are both allowed; try both.
        rows.append({k: v for k, v in row.items() if v is not None or len(rows) % 2})
    return rows


def _valid_batch_row(demo: dict[str, dict[str, pd.DataFrame]], cdm: CommonDataModel) -> dict:
    frame = next(iter(demo.values()))["batch"]
    return _rows(frame, cdm.table("batch"))[0]


# Version and changelog -------------------------------------------------------------------


def test_version_is_semantic_and_the_changelog_describes_it(cdm: CommonDataModel) -> None:
    assert SEMVER.match(cdm_version()), cdm_version()
    assert cdm_version() == cdm.version
    text = CHANGELOG_PATH.read_text(encoding="utf-8")
    versions = re.findall(r"^## (\S+)", text, flags=re.M)
    assert versions, "contracts/CDM-CHANGELOG.md has no `## <version>` heading"
    assert versions[0] == cdm.version, (
        f"the CDM is version {cdm.version} but the changelog's newest entry is {versions[0]}: "
        "describe the new version in contracts/CDM-CHANGELOG.md"
    )
    for version in versions:
        assert SEMVER.match(version), version
    as_tuples = [tuple(int(p) for p in v.split(".")) for v in versions]
    assert as_tuples == sorted(as_tuples, reverse=True), "newest version first, each once"
    assert len(set(as_tuples)) == len(as_tuples)


@pytest.mark.parametrize("version", ["1.0", "v1.0.0", "1.0.0-draft", "01.0.0"])
def test_loader_refuses_a_version_that_is_not_semantic(tmp_path: Path, version: str) -> None:
    raw = yaml.safe_load(DEFAULT_PATH.read_text(encoding="utf-8"))
    raw["version"] = version
    path = tmp_path / "cdm.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ValueError, match="semantic version MAJOR.MINOR.PATCH") as info:
        load_cdm(path)
    assert repr(version) in str(info.value)


def test_exports_carry_the_version_and_description(
    cdm: CommonDataModel, schemas: dict[str, dict[str, Any]], package: dict[str, Any]
) -> None:
    assert package["version"] == cdm.version
    assert cdm.description and cdm.description in package["description"]
    for name, schema in schemas.items():
        assert schema["x-cleanroom-cdm-version"] == cdm.version
        assert schema["$id"] == f"urn:cleanroom:cdm:{cdm.version}:{name}"


# JSON Schema -----------------------------------------------------------------------------


def test_one_valid_draft_2020_12_schema_per_table(
    cdm: CommonDataModel, schemas: dict[str, dict[str, Any]]
) -> None:
    assert tuple(schemas) == cdm.table_names
    for table in cdm.tables:
        schema = schemas[table.name]
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == JSON_SCHEMA_DIALECT
        assert schema["type"] == "object" and schema["additionalProperties"] is False
        assert list(schema["properties"]) == list(table.column_names)
        assert schema["required"] == [c.name for c in table.columns if c.required]
        assert schema["x-cleanroom-primary-key"] == list(table.primary_key)
        for column in table.columns:
            prop = schema["properties"][column.name]
            where = f"{table.name}.{column.name}"
            assert prop["x-cleanroom-class"] == column.identifier.value, where
            assert column.description.strip().rstrip(".") in prop["description"], where
            if column.unit:
                assert f"Unit: {column.unit}." in prop["description"], where
                assert prop["x-cleanroom-unit"] == column.unit, where
            if column.allowed:
                extra = [] if column.required else [None]
                assert prop["enum"] == [*column.allowed, *extra], where
            if column.minimum is not None:
                assert prop["minimum"] == column.minimum, where
            if column.maximum is not None:
                assert prop["maximum"] == column.maximum, where
            if column.references:
                assert prop["x-cleanroom-references"] == column.references, where
            nullable = isinstance(prop["type"], list) and "null" in prop["type"]
            assert nullable is not column.required, where


def test_integer_bounds_are_written_as_integers(schemas: dict[str, dict[str, Any]]) -> None:
    age = schemas["episode"]["properties"]["age"]
    assert age["type"] == "integer"
    assert isinstance(age["minimum"], int) and isinstance(age["maximum"], int)
    assert (age["minimum"], age["maximum"]) == (0, 120)
    text = json.dumps(schemas["episode"])
    assert '"maximum": 120,' in text or '"maximum": 120}' in text


def test_real_demo_rows_of_every_table_are_valid(
    cdm: CommonDataModel,
    schemas: dict[str, dict[str, Any]],
    demo: dict[str, dict[str, pd.DataFrame]],
) -> None:
    checked = 0
    for institution, tables in demo.items():
        for name, frame in tables.items():
            validator = Draft202012Validator(schemas[name])
            for index, row in enumerate(_rows(frame, cdm.table(name))):
                errors = [e.message for e in validator.iter_errors(row)]
                assert not errors, f"{institution} {name} row {index}: {errors[:3]}"
                checked += 1
    assert checked > 500  # every table of two institutions, not an empty sample


@pytest.mark.parametrize(
    ("change", "keyword"),
    [
        (lambda r: r.pop("manufacturing_outcome"), "required"),
        (lambda r: r.update(manufacturing_outcome=None), "type"),
        (lambda r: r.update(manufacturing_outcome="passed"), "enum"),
        (lambda r: r.update(viability=120.0), "maximum"),
        (lambda r: r.update(viability=-1), "minimum"),
        (lambda r: r.update(viability="85 %"), "type"),
        (lambda r: r.update(culture_days=7.5), "type"),
        (lambda r: r.update(manufacturing_start="05/03/2024"), "pattern"),
        (lambda r: r.update(lot_id="   "), "pattern"),
        (lambda r: r.update(lot_id=""), "minLength"),
        (lambda r: r.update(lot_number="L-1"), "additionalProperties"),
    ],
    ids=[
        "missing-required",
        "required-null",
        "not-allowed",
        "above-range",
        "below-range",
        "text-for-number",
        "fraction-for-integer",
        "date-not-iso",
        "blank-key",
        "empty-key",
        "unknown-column",
    ],
)
def test_bad_rows_are_refused_for_the_right_reason(
    cdm: CommonDataModel,
    schemas: dict[str, dict[str, Any]],
    demo: dict[str, dict[str, pd.DataFrame]],
    change: Any,
    keyword: str,
) -> None:
    validator = Draft202012Validator(schemas["batch"])
    row = _valid_batch_row(demo, cdm)
    assert not list(validator.iter_errors(row))  # the unbroken row passes
    broken = copy.deepcopy(row)
    change(broken)
    errors = list(validator.iter_errors(broken))
    assert errors, f"the broken row was accepted: {broken}"
    assert keyword in {e.validator for e in errors}, [e.message for e in errors]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schemas["batch"])


def test_optional_columns_may_be_null_or_left_out(
    cdm: CommonDataModel, schemas: dict[str, dict[str, Any]]
) -> None:
    table = cdm.table("release_test")
    validator = Draft202012Validator(schemas["release_test"])
    minimal = {"lot_id": "L-0001", "test": "sterility", "passed": True}
    assert [c.name for c in table.columns if c.required] == list(minimal)
    assert not list(validator.iter_errors(minimal))
    nulls = {**minimal, **{c.name: None for c in table.columns if not c.required}}
    assert not list(validator.iter_errors(nulls))
    assert list(validator.iter_errors({**minimal, "passed": "yes"}))  # JSON booleans only


def test_datetime_pattern_takes_the_forms_the_ingest_reads() -> None:
    pattern = re.compile(DATETIME_PATTERN)
    for ok in (
        "2024-03-05T10:20:00",
        "2024-03-05T10:20",
        "2024-03-05 10:20:00",
        "2024-03-05T10:20:00Z",
        "2024-03-05T10:20:00.250+01:00",
        datetime(2024, 3, 5, 10, 20).isoformat(),
    ):
        assert pattern.match(ok), ok
    for bad in ("2024-03-05", "05/03/2024 10:20", "2024-03-05T10", date(2024, 3, 5).isoformat()):
        assert not pattern.match(bad), bad


# Frictionless Data Package ---------------------------------------------------------------


def test_data_package_has_one_tabular_resource_per_table(
    cdm: CommonDataModel, package: dict[str, Any]
) -> None:
    assert package["profile"] == "tabular-data-package"
    assert re.fullmatch(r"[a-z0-9._-]+", package["name"])
    assert [r["name"] for r in package["resources"]] == list(cdm.table_names)
    assert json.loads(json.dumps(package)) == package  # plain JSON all the way down
    for resource, table in zip(package["resources"], cdm.tables, strict=True):
        assert resource["profile"] == "tabular-data-resource"
        assert re.fullmatch(r"[a-z0-9._-]+", resource["name"])
        assert resource["path"] == f"{table.name}.csv"
        assert resource["format"] == "csv" and resource["encoding"] == "utf-8"
        schema = resource["schema"]
        assert [f["name"] for f in schema["fields"]] == list(table.column_names)
        assert schema["primaryKey"] == list(table.primary_key)
        for field, column in zip(schema["fields"], table.columns, strict=True):
            where = f"{table.name}.{column.name}"
            assert field["type"] in TABLE_SCHEMA_TYPES, where
            assert field["description"], where
            assert field["x-cleanroom-class"] == column.identifier.value, where
            constraints = field.get("constraints", {})
            assert set(constraints) <= {"required", "enum", "minimum", "maximum"}, where
            assert constraints.get("required", False) is column.required, where
            assert constraints.get("enum") == (list(column.allowed) if column.allowed else None)
            assert constraints.get("minimum") == column.minimum, where
            assert constraints.get("maximum") == column.maximum, where
    expected = {(r.table, r.column, r.ref_table, r.ref_column) for r in cdm.relationships}
    found = set()
    by_name = {r["name"]: r for r in package["resources"]}
    for resource in package["resources"]:
        for key in resource["schema"].get("foreignKeys", []):
            target = by_name[key["reference"]["resource"]]  # an existing resource
            assert key["reference"]["fields"] == target["schema"]["primaryKey"]
            (column,), (ref_column,) = key["fields"], key["reference"]["fields"]
            found.add((resource["name"], column, target["name"], ref_column))
    assert found == expected and len(found) == 12


def _field_problems(field: dict[str, Any], value: Any) -> list[str]:
    """What a Table Schema consumer would say about one cell, in CSV text form."""
    constraints = field.get("constraints", {})
    if value is None or value == "":
        return ["required"] if constraints.get("required") else []
    casts: dict[str, Callable[[str], Any]] = {
        "integer": int,
        "number": float,
        "date": date.fromisoformat,
        "datetime": datetime.fromisoformat,
        "boolean": {"true": True, "false": False}.__getitem__,
        "string": str,
    }
    try:
        cast = casts[field["type"]](value)
    except (KeyError, ValueError):
        return ["type"]
    problems = []
    if "enum" in constraints and cast not in constraints["enum"]:
        problems.append("enum")
    if "minimum" in constraints and cast < constraints["minimum"]:
        problems.append("minimum")
    if "maximum" in constraints and cast > constraints["maximum"]:
        problems.append("maximum")
    return problems


def test_demo_tables_meet_the_package_constraints_and_keys(
    package: dict[str, Any], demo: dict[str, dict[str, pd.DataFrame]]
) -> None:
    by_name = {r["name"]: r["schema"] for r in package["resources"]}
    for institution, tables in demo.items():
        for name, frame in tables.items():
            schema = by_name[name]
            fields = {f["name"]: f for f in schema["fields"]}
            text = frame.astype(object).where(frame.notna(), None)
            for index, record in enumerate(text.to_dict("records")):
                for column, value in record.items():
                    cell = value
                    if isinstance(value, bool):
                        cell = "true" if value else "false"
                    elif isinstance(value, pd.Timestamp):
                        kind = fields[column]["type"]
                        cell = value.date().isoformat() if kind == "date" else value.isoformat()
                    elif value is not None:
                        cell = str(value)
                    problems = _field_problems(fields[column], cell)
                    assert not problems, f"{institution} {name} row {index} {column}: {problems}"
            primary = frame[schema["primaryKey"]]
            assert not primary.duplicated().any(), f"{institution} {name}: primary key repeats"
            for key in schema.get("foreignKeys", []):
                (column,), ref = key["fields"], key["reference"]
                if column not in frame.columns:
                    continue
                targets = set(tables[ref["resource"]][ref["fields"][0]])
                used = set(frame[column].dropna())
                assert used <= targets, f"{institution} {name}.{column}: {used - targets}"


def test_package_constraints_refuse_bad_cells(package: dict[str, Any]) -> None:
    fields = {f["name"]: f for f in package["resources"][3]["schema"]["fields"]}  # batch
    assert package["resources"][3]["name"] == "batch"
    assert _field_problems(fields["viability"], "101") == ["maximum"]
    assert _field_problems(fields["manufacturing_outcome"], "passed") == ["enum"]
    assert _field_problems(fields["manufacturing_outcome"], "") == ["required"]
    assert _field_problems(fields["culture_days"], "7.5") == ["type"]
    assert _field_problems(fields["viability"], "") == []  # optional


# Files and the CLI -----------------------------------------------------------------------


def test_write_export_writes_what_the_functions_return(
    tmp_path: Path, cdm: CommonDataModel
) -> None:
    written = write_export("jsonschema", tmp_path / "js", cdm)
    assert [p.name for p in written] == [schema_file_name(t) for t in cdm.table_names]
    for path in written:
        name = path.name.removesuffix(".schema.json")
        assert json.loads(path.read_text(encoding="utf-8")) == json_schemas(cdm)[name]
    (package_path,) = write_export("frictionless", tmp_path / "fr", cdm)
    assert package_path.name == PACKAGE_FILE
    assert json.loads(package_path.read_text(encoding="utf-8")) == data_package(cdm)
    with pytest.raises(ValueError, match="unknown export format 'xml'.*jsonschema, frictionless"):
        write_export("xml", tmp_path / "x", cdm)


@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_export_writes_the_files(tmp_path: Path, cdm: CommonDataModel, fmt: str) -> None:
    out = tmp_path / "new" / "folder"
    result = CliRunner().invoke(cli, ["cdm", "export", "--format", fmt, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote the CDM {cdm.version}" in result.output
    if fmt == "frictionless":
        assert sorted(p.name for p in out.iterdir()) == [PACKAGE_FILE]
        assert json.loads((out / PACKAGE_FILE).read_text(encoding="utf-8")) == data_package(cdm)
    else:
        names = sorted(p.name for p in out.iterdir())
        assert names == sorted(schema_file_name(t) for t in cdm.table_names)
        episode = json.loads((out / "episode.schema.json").read_text(encoding="utf-8"))
        Draft202012Validator.check_schema(episode)
    assert "Traceback" not in result.output


def test_cli_refuses_bad_arguments_clearly(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["cdm", "export", "--format", "xml", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "'xml' is not one of 'jsonschema', 'frictionless'" in result.output
    a_file = tmp_path / "taken.txt"
    a_file.write_text("x", encoding="utf-8")
    result = runner.invoke(cli, ["cdm", "export", "--format", "jsonschema", "--out", str(a_file)])
    assert result.exit_code == 1
    assert "is a file; name a folder to write into" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    result = runner.invoke(cli, ["cdm", "export", "--format", "jsonschema"])
    assert result.exit_code == 2 and "--out" in result.output


def test_cli_prints_the_version(cdm: CommonDataModel) -> None:
    result = CliRunner().invoke(cli, ["cdm", "version"])
    assert result.exit_code == 0
    assert result.output.strip() == cdm.version
