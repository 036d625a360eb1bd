"""The common data model: the contract file loads, is complete and coherent, its docs are
current, and the loader refuses broken variants with a message naming the problem."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from contracts.cdm import (
    DEFAULT_PATH,
    ColumnType,
    CommonDataModel,
    IdentifierClass,
    load_cdm,
    normalise_name,
)
from contracts.markdown import cdm_document

ROOT = Path(__file__).resolve().parents[3]
TABLES = (
    "episode",
    "collection",
    "custody_event",
    "batch",
    "release_test",
    "deviation",
    "administration",
)


@pytest.fixture(scope="module")
def cdm() -> CommonDataModel:
    return load_cdm()


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml keeps these tests fast
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@pytest.fixture(scope="module")
def contract() -> dict[str, Any]:
    return yaml.load(DEFAULT_PATH.read_text(encoding="utf-8"), Loader=_LOADER)  # noqa: S506 - safe loader


@pytest.fixture
def raw(contract: dict[str, Any]) -> dict[str, Any]:
    """The contract as plain data, to break in one place per test."""
    return copy.deepcopy(contract)


def _load_broken(tmp_path: Path, data: dict[str, Any] | str) -> str:
    path = tmp_path / "cdm.yaml"
    text = data if isinstance(data, str) else yaml.dump(data, Dumper=_DUMPER, allow_unicode=True)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as info:
        load_cdm(path)
    return str(info.value)


def test_docs_are_current(cdm: CommonDataModel) -> None:
    current = (ROOT / "docs" / "cdm.md").read_text(encoding="utf-8")
    assert current == cdm_document(cdm), (
        "docs/cdm.md is stale: run `.venv/bin/python scripts/update_docs.py`"
    )


def test_every_table_exists_with_a_primary_key(cdm: CommonDataModel) -> None:
    assert cdm.table_names == TABLES
    assert cdm.version
    for table in cdm.tables:
        assert table.description and table.grain, table.name
        assert table.primary_key, table.name
        for key in table.primary_key:
            assert table.column(key).required, f"{table.name}.{key}"


def test_every_column_is_described_and_classified(cdm: CommonDataModel) -> None:
    for table in cdm.tables:
        for column in table.columns:
            where = f"{table.name}.{column.name}"
            assert column.description.strip(), where
            assert isinstance(column.identifier, IdentifierClass), where
            assert isinstance(column.type, ColumnType), where
            assert column.synonyms, f"{where} has no synonyms for the mapper"
            if column.type is ColumnType.CATEGORY:
                assert column.allowed, where


def test_identifier_classes_follow_the_reference(cdm: CommonDataModel) -> None:
    expect = {
        "episode.coi_id": IdentifierClass.LINKABLE,
        "collection.din": IdentifierClass.LINKABLE,
        "batch.lot_id": IdentifierClass.LINKABLE,
        "custody_event.unit_id": IdentifierClass.LINKABLE,
        "custody_event.logger_serial": IdentifierClass.LINKABLE,
        "custody_event.shipment_id": IdentifierClass.LINKABLE,
        "episode.age": IdentifierClass.QUASI,
        "episode.sex": IdentifierClass.QUASI,
        "episode.weight_kg": IdentifierClass.QUASI,
        "episode.site": IdentifierClass.QUASI,
        "batch.processing_facility": IdentifierClass.QUASI,
        "collection.collection_date": IdentifierClass.QUASI,
        "administration.infusion_date": IdentifierClass.QUASI,
        "custody_event.timestamp": IdentifierClass.QUASI,
        "deviation.description": IdentifierClass.FREE_TEXT,
        "administration.oos_infused": IdentifierClass.SENSITIVE,
        "collection.collected_by": IdentifierClass.DIRECT,
    }
    for name in ("patient_name", "mrn", "date_of_birth", "nhs_number", "phone", "email", "address"):
        expect[f"episode.{name}"] = IdentifierClass.DIRECT
    for dotted, cls in expect.items():
        table, column = dotted.split(".")
        col = cdm.table(table).column(column)
        assert col.identifier is cls, dotted
        if cls is IdentifierClass.DIRECT:
            assert not col.required, f"{dotted}: a direct identifier must be optional"
    assert cdm.table("collection").column("collection_date").type is ColumnType.DATE
    assert cdm.table("custody_event").column("timestamp").type is ColumnType.DATETIME


def test_every_reference_resolves(cdm: CommonDataModel) -> None:
    rels = cdm.relationships
    assert len(rels) >= 8
    for rel in rels:
        target = cdm.table(rel.ref_table)
        assert rel.ref_column in target.column_names, rel
        assert target.primary_key == (rel.ref_column,), rel
    pairs = {(r.table, r.column, r.ref_table) for r in rels}
    for table in ("collection", "batch", "administration", "custody_event"):
        assert (table, "coi_id", "episode") in pairs
    for table in ("release_test", "deviation", "administration"):
        assert (table, "lot_id", "batch") in pairs
    assert ("custody_event", "unit_id", "collection") in pairs
    assert not cdm.table("deviation").column("lot_id").required


def test_alternate_units_are_positive_and_convert(cdm: CommonDataModel) -> None:
    seen = 0
    for table in cdm.tables:
        for column in table.columns:
            if column.alternate_units:
                assert column.unit, f"{table.name}.{column.name}"
            for label, factor in column.alternate_units.items():
                seen += 1
                assert factor > 0, f"{table.name}.{column.name}: {label}"
    assert seen > 20
    alc = cdm.table("collection").column("alc_pre")
    assert alc.unit == "10^9/L" and 1340 * alc.alternate_units["cells/µL"] == pytest.approx(1.34)
    assert cdm.table("batch").column("viability").alternate_units["fraction"] == 100


def test_synonyms_map_to_one_column_per_table(cdm: CommonDataModel) -> None:
    for table in cdm.tables:
        owners: dict[str, str] = {}
        for column in table.columns:
            for name in (column.name, *column.synonyms):
                assert owners.setdefault(normalise_name(name), column.name) == column.name
    assert normalise_name("Lot No.") == normalise_name("lot_no")
    assert normalise_name("ALC (cells/µL)") == normalise_name("alc cells/uL")


def test_lookup_errors_are_helpful(cdm: CommonDataModel) -> None:
    with pytest.raises(KeyError, match="no column `viabilty`.*viability"):
        cdm.table("batch").column("viabilty")
    with pytest.raises(KeyError, match="no table `batches`.*batch"):
        cdm.table("batches")


def test_default_is_cached_and_explicit_path_is_not(tmp_path: Path) -> None:
    assert load_cdm() is load_cdm()
    copy_path = tmp_path / "cdm.yaml"
    copy_path.write_text(DEFAULT_PATH.read_text(encoding="utf-8"), encoding="utf-8")
    assert load_cdm(copy_path) == load_cdm()
    assert load_cdm(copy_path) is not load_cdm()


def test_rejects_unknown_column_key(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw["tables"]["batch"]["columns"]["viability"]["unti"] = "%"
    message = _load_broken(tmp_path, raw)
    assert "table `batch`, column `viability`" in message and "`unti`" in message


def test_rejects_unknown_table_key(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw["tables"]["episode"]["primary_keys"] = ["coi_id"]
    assert "`primary_keys`" in _load_broken(tmp_path, raw)


def test_rejects_bad_type_and_identifier(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw["tables"]["episode"]["columns"]["age"]["type"] = "int"
    assert "column `age`: unknown type 'int'" in _load_broken(tmp_path, raw)
    raw["tables"]["episode"]["columns"]["age"]["type"] = "integer"
    raw["tables"]["episode"]["columns"]["age"]["identifier"] = "quasi"
    assert "column `age`: unknown identifier class 'quasi'" in _load_broken(tmp_path, raw)


def test_rejects_reference_to_missing_table_or_column(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw["tables"]["batch"]["columns"]["coi_id"]["references"] = "patient.coi_id"
    message = _load_broken(tmp_path, raw)
    assert "table `batch`, column `coi_id`" in message and "missing table `patient`" in message
    raw["tables"]["batch"]["columns"]["coi_id"]["references"] = "episode.coi"
    assert "missing column `episode.coi`" in _load_broken(tmp_path, raw)


def test_rejects_primary_key_naming_missing_column(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw["tables"]["release_test"]["primary_key"] = ["lot_id", "test_name"]
    message = _load_broken(tmp_path, raw)
    assert "table `release_test`" in message and "missing column `test_name`" in message


def test_rejects_synonym_shared_by_two_columns(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw["tables"]["collection"]["columns"]["cd3_yield"]["synonyms"].append("alc pre")
    message = _load_broken(tmp_path, raw)
    assert "table `collection`" in message and "`cd3_yield`" in message
    assert "`alc_pre`" in message


def test_rejects_non_positive_factor_and_missing_unit(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw["tables"]["batch"]["columns"]["viability"]["alternate_units"]["fraction"] = 0
    assert "alternate unit `fraction` needs a positive factor" in _load_broken(tmp_path, raw)
    raw["tables"]["batch"]["columns"]["viability"]["alternate_units"]["fraction"] = 100
    del raw["tables"]["batch"]["columns"]["viability"]["unit"]
    assert "needs a canonical `unit`" in _load_broken(tmp_path, raw)


def test_rejects_category_without_allowed_values(tmp_path: Path, raw: dict[str, Any]) -> None:
    del raw["tables"]["batch"]["columns"]["platform"]["allowed"]
    assert "column `platform`: a category needs an `allowed` list" in _load_broken(tmp_path, raw)


def test_rejects_duplicate_yaml_keys(tmp_path: Path) -> None:
    text = DEFAULT_PATH.read_text(encoding="utf-8").replace(
        "      site:\n", "      age:\n        type: integer\n      site:\n", 1
    )
    assert "duplicate key `age`" in _load_broken(tmp_path, text)


def test_rejects_missing_description_and_not_yaml(tmp_path: Path, raw: dict[str, Any]) -> None:
    del raw["tables"]["deviation"]["columns"]["stage"]["description"]
    message = _load_broken(tmp_path, raw)
    assert "table `deviation`, column `stage`: missing key(s) `description`" in message
    assert "not valid YAML" in _load_broken(tmp_path, "tables: [unclosed")
