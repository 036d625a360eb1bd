"""FHIR R5 in and out of the CDM (contracts/fhir.py, contracts/fhir_r5.yaml): hand-written
samples in the shape of the R5 specification's examples map onto the right CDM rows, CDM rows
survive write_fhir -> read_fhir unchanged (keys relinked), and hostile uploads are refused or
reported with a message a data manager can act on."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from contracts.cdm import ColumnType, load_cdm
from contracts.fhir import (
    DEFAULT_MAPPING,
    WITHHELD_SYSTEM,
    FhirError,
    load_mapping,
    read_fhir,
    render_markdown,
    write_fhir,
)

SAMPLES = Path(__file__).with_name("fhir_samples")
BUNDLE = SAMPLES / "car_t_episode.bundle.json"


def _sample() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(BUNDLE.read_text(encoding="utf-8"))
    return data


def _ndjson(resources: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in resources)


def _resources() -> list[dict[str, Any]]:
    """The sample's resources with plain ``Type/id`` references, as bulk data writes them."""
    bundle = _sample()
    urls = {
        e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle["entry"]
    }
    text = json.dumps([e["resource"] for e in bundle["entry"]])
    for url, ref in urls.items():
        text = text.replace(url, ref)
    resources: list[dict[str, Any]] = json.loads(text)
    return resources


# Samples ------------------------------------------------------------------------------------


def test_sample_bundle_maps_onto_the_cdm_tables() -> None:
    result = read_fhir(BUNDLE)
    frames, report = result.frames, result.report
    assert set(frames) == {
        "episode",
        "collection",
        "batch",
        "release_test",
        "administration",
        "custody_event",
    }
    episode = frames["episode"].iloc[0]
    assert episode["coi_id"] == "COI-2024-000123"
    assert episode["mrn"] == "MRN778812"
    assert episode["age"] == 61
    assert episode["weight_kg"] == pytest.approx(176.4 * 0.45359237)  # [lb_av] -> kg
    assert episode["date_of_birth"] == pd.Timestamp("1963-04-12")

    collection = frames["collection"].iloc[0]
    assert collection["din"] == "A999924123456"
    assert collection["coi_id"] == "COI-2024-000123"  # collection.source relinked to Patient
    assert collection["collection_date"] == pd.Timestamp("2024-03-04")
    assert collection["alc_pre"] == pytest.approx(1.3)  # 1300 /uL -> 10^9/L
    assert collection["cd3_yield"] == pytest.approx(8.6)  # 86 x 10^8 -> 10^9 cells
    assert collection["product_volume"] == pytest.approx(250.0)  # 0.25 L -> mL
    assert collection["fresh_or_cryo"] == "fresh"

    batch = frames["batch"].iloc[0]
    assert batch["lot_id"] == "LOT-24-0042"
    assert batch["din"] == "A999924123456"  # parent -> the collection's DIN
    assert batch["coi_id"] == "COI-2024-000123"
    assert batch["viability"] == pytest.approx(92.0)  # fraction -> %
    assert batch["culture_days"] == 9
    assert batch["manufacturing_start"] == pd.Timestamp("2024-03-06")

    tests = frames["release_test"].set_index("test")
    assert list(tests["lot_id"]) == ["LOT-24-0042", "LOT-24-0042"]  # via subject and focus
    assert bool(tests.loc["sterility", "passed"]) is True
    assert bool(tests.loc["endotoxin", "passed"]) is False
    assert tests.loc["endotoxin", "unit"] == "EU/mL"

    dose = frames["administration"].iloc[0]
    assert dose["dose"] == pytest.approx(210.0)  # 2.1 x 10^8 -> 10^6 cells
    assert dose["infusion_date"] == pd.Timestamp("2024-03-22")
    event = frames["custody_event"].iloc[0]
    assert event["unit_id"] == "A999924123456"
    assert event["timestamp"] == pd.Timestamp("2024-03-04 18:05")  # wall-clock time kept
    assert event["event"] == "shipped"

    assert report.mapped == {
        "Patient": 1,
        "BiologicallyDerivedProduct": 2,
        "Observation": 2,
        "BiologicallyDerivedProductDispense": 1,
        "Provenance": 1,
    }
    assert report.ok


def test_report_lists_what_was_not_mapped() -> None:
    report = read_fhir(BUNDLE).report
    assert report.unknown_types == {"Organization": 1}
    assert report.unmapped_elements["BiologicallyDerivedProduct.property (bag_colour)"] == 1
    assert report.unmapped_elements["BiologicallyDerivedProduct.storageTempRequirements"] == 1
    assert report.unmapped_elements["Provenance.recorded"] == 1
    text = "\n".join(report.lines())
    assert "Organization: 1 not mapped" in text
    assert "property (bag_colour)" in text


def test_ndjson_and_bundle_give_the_same_tables() -> None:
    from_bundle = read_fhir(BUNDLE).frames
    from_ndjson = read_fhir(_ndjson(_resources())).frames
    assert from_bundle.keys() == from_ndjson.keys()
    for table, frame in from_bundle.items():
        pd.testing.assert_frame_equal(frame, from_ndjson[table], check_like=True)


def test_absolute_and_versioned_references_are_relinked() -> None:
    resources = _resources()
    for resource in resources:
        if resource["resourceType"] == "Observation":
            ref = resource.get("subject") or resource["focus"][0]
            ref["reference"] = "https://fhir.example.org/r5/" + ref["reference"] + "/_history/3"
    result = read_fhir(_ndjson(resources))
    assert result.report.ok
    assert result.frames["release_test"]["lot_id"].tolist() == ["LOT-24-0042"] * 2


def test_worker_processes_give_the_same_result(tmp_path: Path, monkeypatch: Any) -> None:
    import contracts.fhir as fhir

    monkeypatch.setattr(fhir, "_CHUNK_LINES", 3)  # several chunks in flight
    resources = _resources()
    resources[0]["birthDate"] = "yesterday"
    resources.append({"resourceType": "Spaceship", "id": "s1"})
    path = tmp_path / "bulk.ndjson"
    path.write_bytes(_ndjson(resources))
    alone, pooled = read_fhir(path), read_fhir(path, workers=2)
    assert [str(i) for i in pooled.report.invalid] == [str(i) for i in alone.report.invalid]
    assert pooled.report.invalid_count == 2
    for table, frame in alone.frames.items():
        pd.testing.assert_frame_equal(frame, pooled.frames[table])
    path.write_bytes(_ndjson(resources) + b"not json\n")
    with pytest.raises(FhirError, match="line 10 is not JSON"):
        read_fhir(path, workers=2)


class DeadWorker:
    """A validation job whose worker process died."""

    def result(self) -> list[str | None]:
        from concurrent.futures.process import BrokenProcessPool

        raise BrokenProcessPool("killed")


def test_a_dead_worker_process_is_replaced_by_validating_here() -> None:
    import contracts.fhir as fhir

    resources = _resources()
    resources[0]["birthDate"] = "yesterday"
    reader = fhir._Reader(load_mapping(), max_resources=100, max_depth=32)
    chunk = [(n, json.dumps(r).encode()) for n, r in enumerate(resources, start=1)]
    fhir._take_chunk(reader, chunk, DeadWorker())  # type: ignore[arg-type]
    report = reader.finish().report
    assert report.invalid_count == 1 and str(report.invalid[0]).startswith("line 1 (Patient")
    assert report.mapped["Observation"] == 2


def test_ndjson_is_read_from_a_file_path(tmp_path: Path) -> None:
    path = tmp_path / "bulk.ndjson"
    path.write_bytes(b"\n" + _ndjson(_resources()) + b"\n\n")  # blank lines are skipped
    result = read_fhir(str(path))
    assert result.report.resources == 8
    assert result.frames["batch"]["din"].tolist() == ["A999924123456"]


# Round trip ---------------------------------------------------------------------------------


def _rows() -> dict[str, pd.DataFrame]:
    """Three episodes through every mapped table, in the CDM's canonical units and types."""
    cdm = load_cdm()
    coi = ["COI-A", "COI-B", "COI-C"]
    din = ["W000024000001", "W000024000002", "W000024000003"]
    lot = ["L-1", "L-2", "L-3"]
    data: dict[str, dict[str, list[Any]]] = {
        "episode": {
            "coi_id": coi,
            "site": ["North", "South", None],
            "product_class": ["autologous_car_t", "autologous_car_t", "gene_modified_hsc"],
            "product": ["axi-cel", None, "academic"],
            "indication": ["LBCL", "MM", "SCD"],
            "age": [61, 45, 19],
            "sex": ["female", "male", "unknown"],
            "weight_kg": [72.5, 90.0, None],
            "prior_lines": [2, 4, None],
            "bendamustine_exposure": ["none", "lt_3_months", None],
            "bridging": [True, False, None],
            "abo_rh": ["O+", None, "AB-"],
            "patient_name": ["Ann Smith", None, None],
            "mrn": ["MRN1", "MRN2", None],
            "date_of_birth": ["1963-04-12", None, "2005-01-30"],
            "nhs_number": [None, "943 476 5919", None],
            "phone": ["+44 20 7946 0000", None, None],
            "email": [None, "b@example.org", None],
            "address": ["1 Example Road", None, None],
        },
        "collection": {
            "din": din,
            "coi_id": coi,
            "collection_date": ["2024-03-04", "2024-04-01", "2024-05-06"],
            "collection_facility": ["North Apheresis", None, "South Apheresis"],
            "fresh_or_cryo": ["fresh", "cryopreserved", "fresh"],
            "device": ["Spectra Optia", None, "Amicus"],
            "alc_pre": [1.3, 0.5, None],
            "cd3_pre": [900.0, 350.5, None],
            "platelets_pre": [180.0, None, 95.0],
            "cd4_cd8_ratio_pre": [1.2, None, 0.25],
            "blasts_pre": [None, 3.5, None],
            "blood_volume_processed": [12.0, 15.25, None],
            "cd3_yield": [8.6, 0.7, None],
            "tnc_yield": [20.0, None, 11.5],
            "product_volume": [250.0, 180.0, None],
            "anticoagulant": ["ACD-A", None, "ACD-A+heparin"],
            "complication": [False, True, None],
            "collected_by": ["Nurse One", None, None],
            "notes": [None, "citrate reaction, resolved", None],
        },
        "batch": {
            "lot_id": lot,
            "coi_id": coi,
            "din": [din[0], din[1], None],
            "product_code": ["S1234V00", None, "S5678V00"],
            "processing_facility": ["Central", "Central", "Hospital POC"],
            "platform": ["central", "central", "point_of_care"],
            "manufacturing_start": ["2024-03-06", None, "2024-05-08"],
            "release_date": ["2024-03-18", None, None],
            "expiration_date": ["2025-03-20", None, None],
            "product_status": ["applied", "discarded", "available"],
            "manufacturing_outcome": ["conforming", "failed", "non_conforming"],
            "culture_days": [9, None, 12],
            "moi": [5.0, None, 7.5],
            "fold_expansion": [31.0, None, 12.5],
            "viability": [92.0, None, 76.5],
            "transduction_efficiency": [27.0, None, 15.5],
            "vcn": [1.8, None, 2.25],
            "cd3_pct": [98.0, None, 97.5],
            "cd4_cd8_ratio": [1.1, None, None],
            "total_viable_cells": [3.2, None, 0.9],
            "released_by": ["QP One", None, None],
        },
        "release_test": {
            "lot_id": ["L-1", "L-1", "L-3"],
            "test": ["sterility", "endotoxin", "viability"],
            "value": [None, 0.2, 76.5],
            "qualitative_result": ["negative", None, None],
            "unit": [None, "EU/mL", "%"],
            "limit": ["negative", "<= 0.5", ">= 80"],
            "passed": [True, True, False],
            "test_date": ["2024-03-15", "2024-03-15", None],
        },
        "administration": {
            "lot_id": ["L-1", "L-3"],
            "coi_id": ["COI-A", "COI-C"],
            "infusion_date": ["2024-03-22", "2024-05-30"],
            "infusion_site": ["North", None],
            "dose": [210.0, None],
            "dose_per_kg": [2.9, None],
            "oos_infused": [False, True],
            "administered_by": ["Dr One", None],
        },
        "custody_event": {
            "event_id": ["E1", "E2", "E3"],
            "unit_id": [din[0], din[0], din[2]],
            "coi_id": ["COI-A", "COI-A", "COI-C"],
            "lot_id": [None, "L-1", "L-3"],
            "product_code": [None, "S1234V00", None],
            "event": ["shipped", "infused", "received"],
            "timestamp": ["2024-03-04 18:05:00", "2024-03-22 10:30:00", "2024-05-07 08:00:00"],
            "from_site": ["North", None, "South"],
            "to_site": ["Central", None, None],
            "temp_min": [3.5, None, -150.0],
            "temp_max": [6.0, None, -120.5],
            "excursion": [False, None, True],
            "logger_serial": ["LG-1", None, None],
            "shipment_id": ["AWB-1", None, None],
            "performed_by": [None, "Nurse Two", None],
        },
    }
    frames = {}
    for name, columns in data.items():
        table = cdm.table(name)
        typed = {}
        for col, values in columns.items():
            ctype = table.column(col).type
            if ctype is ColumnType.INTEGER:
                typed[col] = pd.Series(pd.array(values, dtype="Int64"))
            elif ctype is ColumnType.NUMBER:
                typed[col] = pd.Series(values, dtype="float64")
            elif ctype is ColumnType.BOOLEAN:
                typed[col] = pd.Series(pd.array(values, dtype="boolean"))
            elif ctype in {ColumnType.DATE, ColumnType.DATETIME}:
                typed[col] = pd.to_datetime(pd.Series(values, dtype=object)).astype(
                    "datetime64[ns]"
                )
            else:
                typed[col] = pd.Series(values, dtype=object)
        frames[name] = pd.DataFrame(typed)
    return frames


def _same(got: dict[str, pd.DataFrame], want: dict[str, pd.DataFrame]) -> None:
    cdm = load_cdm()
    assert set(got) == set(want)
    for name, frame in want.items():
        key = list(cdm.table(name).primary_key)
        left = got[name][list(frame.columns)].sort_values(key).reset_index(drop=True)
        right = frame.sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(left, right, check_exact=False, rtol=1e-12, obj=name)


@pytest.mark.parametrize("form", ["bundle", "ndjson"])
def test_round_trip_keeps_the_cdm_rows(form: str) -> None:
    rows = _rows()
    if form == "bundle":
        data = write_fhir(rows, form="bundle")
        assert json.loads(data)["type"] == "collection"
    else:
        data = b"".join(write_fhir(rows, form="ndjson"))
        assert data.count(b"\n") == sum(len(f) for f in rows.values())
    result = read_fhir(data)
    assert result.report.ok, result.report.lines()
    assert not result.report.unmapped_elements, result.report.unmapped_elements
    assert not result.report.unconverted
    _same(result.frames, rows)


def test_export_without_the_referenced_rows_uses_logical_references() -> None:
    rows = _rows()
    only = {"batch": rows["batch"], "release_test": rows["release_test"]}
    data = b"".join(write_fhir(only, form="ndjson"))
    lot = json.loads(data.splitlines()[0])
    assert lot["parent"] == [
        {
            "type": "BiologicallyDerivedProduct",
            "identifier": {"system": "urn:cleanroom:id:din", "value": "W000024000001"},
        }
    ]
    result = read_fhir(data)
    assert result.report.ok
    _same(result.frames, only)


def test_export_is_valid_fhir_in_the_declared_units() -> None:
    lines = list(write_fhir(_rows(), form="ndjson"))
    collection = next(json.loads(x) for x in lines if b'"collection-1"' in x)
    alc = next(p for p in collection["property"] if p["type"]["coding"][0]["code"] == "alc_pre")
    assert alc["valueQuantity"] == {
        "value": 1.3,
        "unit": "10^9/L",
        "system": "http://unitsofmeasure.org",
        "code": "10*9/L",
    }
    custody = next(json.loads(x) for x in lines if b'"custody-1"' in x)
    assert custody["occurredDateTime"] == "2024-03-04T18:05:00+00:00"
    shifted = next(
        json.loads(x)
        for x in write_fhir(_rows(), form="ndjson", utc_offset="+01:00")
        if b'"custody-1"' in x
    )
    assert shifted["occurredDateTime"] == "2024-03-04T18:05:00+01:00"


def test_export_refuses_tables_and_columns_it_cannot_write() -> None:
    deviation = pd.DataFrame({"deviation_id": ["D1"]})
    with pytest.raises(FhirError, match="table `deviation` has no FHIR R5 form"):
        write_fhir({"deviation": deviation})
    with pytest.raises(FhirError, match=r"`Lot No\.` are not columns of the data model"):
        write_fhir({"batch": pd.DataFrame({"Lot No.": ["L-1"]})})
    with pytest.raises(FhirError, match="`shipments` is not a table of the data model"):
        write_fhir({"shipments": pd.DataFrame({"x": [1]})})
    with pytest.raises(FhirError, match="utc_offset"):
        write_fhir(_rows(), utc_offset="CET")


def test_export_refuses_a_row_that_is_not_valid_fhir() -> None:
    rows = _rows()
    episode = rows["episode"].copy()
    episode.loc[1, "weight_kg"] = float("inf")  # no FHIR decimal
    with pytest.raises(
        FhirError,
        match=r"`episode`, row 2: does not make a valid Patient: extension\.\d\.valueQuantity",
    ):
        write_fhir({"episode": episode})
    episode.loc[1, "weight_kg"] = None
    episode.loc[0, "patient_name"] = " "  # blank cells are left out, not written empty
    patient = json.loads(next(iter(write_fhir({"episode": episode}, form="ndjson"))))
    assert "name" not in patient


# Hostile and broken uploads -----------------------------------------------------------------


def _nested(levels: int) -> dict[str, Any]:
    extension: dict[str, Any] = {"url": "urn:x", "valueString": "deep"}
    for _ in range(levels):
        extension = {"url": "urn:x", "extension": [extension]}
    return {"resourceType": "Patient", "id": "deep", "extension": [extension]}


def test_deeply_nested_resources_are_refused() -> None:
    with pytest.raises(FhirError, match=r"line 1: the JSON is nested more than 32 levels"):
        read_fhir(_ndjson([_nested(40)]))
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": _nested(40)}]}
    with pytest.raises(FhirError, match="the Bundle: the JSON is nested more than 32 levels"):
        read_fhir(json.dumps(bundle, indent=1).encode())
    # deeper than Python's own parser goes: still a sentence, not a stack trace
    with pytest.raises(FhirError, match="nested more than"):
        read_fhir(b"[" * 200_000 + b"]" * 200_000)
    # an ordinary resource is well within the limit
    assert read_fhir(_ndjson([_nested(5)])).report.mapped == {"Patient": 1}


def test_uploads_above_the_limits_are_refused(tmp_path: Path) -> None:
    data = _ndjson(_resources())
    with pytest.raises(FhirError, match=r"above the limit of 1,000 bytes.*split it"):
        read_fhir(data, max_bytes=1000)
    path = tmp_path / "big.ndjson"
    path.write_bytes(data)
    with pytest.raises(FhirError, match="above the limit"):
        read_fhir(path, max_bytes=1000)
    with pytest.raises(FhirError, match="more than 3 resources"):
        read_fhir(data, max_resources=3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the file is empty"),
        (b"name,dob\nAnn,1960-01-01\n", r"not JSON \(Expecting value"),
        (b'{"resourceType": "Patient", "id": "a"}\nnot json\n', r"line 2 is not JSON"),
        (b'{"name": "Ann"}', "JSON but not FHIR: it has no `resourceType`"),
        (b'{"resourceType": "Patient", "id": "p1"}\n{"id": "x"}\n', "line 2 is not a FHIR"),
        (b'{\n "resourceType": "Patient",\n "id": "p1"\n}\n', "holds a single Patient resource"),
        (b'{"resourceType": "Bundle", "type": "history", "entry": []}', "several versions"),
        (b'{"resourceType": "Bundle", "type": "batch-response"}', "server's answer"),
        (b'{"resourceType": "Bundle", "type": "nonsense"}', "type collection, transaction"),
        (
            b'{"resourceType": "Patient", "id": "a"}\n{"resourceType": "Bundle"}\n',
            "line 2 is a Bundle",
        ),
        (b"[1, 2, 3]", "no `resourceType`"),
        (b'{"resourceType": "Patient", "id": "\xc3\x28"}\n', "not UTF-8 text"),
        (b'{"name": "Ann"}\n{"name": "Bob"}\n', "line 1 is not a FHIR resource"),
    ],
)
def test_not_fhir_is_refused_with_a_sentence(data: bytes, message: str) -> None:
    with pytest.raises(FhirError, match=message):
        read_fhir(data)


def test_duplicate_ids_are_refused() -> None:
    resources = _resources()
    resources.append(copy.deepcopy(resources[0]))
    with pytest.raises(FhirError, match=r"line 9 repeats Patient/pat-1, already at line 1"):
        read_fhir(_ndjson(resources))


def test_invalid_fhir_gets_the_validators_message_and_the_rest_is_mapped() -> None:
    resources = _resources()
    resources[0]["birthDate"] = "yesterday"
    resources[4]["status"] = {"code": "final"}  # a code, not an object
    resources.append({"resourceType": "Spaceship", "id": "s1"})
    report = read_fhir(_ndjson(resources)).report
    assert report.invalid_count == 3
    messages = [str(issue) for issue in report.invalid]
    assert messages[0].startswith("line 1 (Patient/pat-1): birthDate:")
    assert messages[1].startswith("line 5 (Observation/endotoxin-1): status:")
    assert messages[2] == "line 9 (Spaceship/s1): `Spaceship` is not a FHIR R5 resource type"
    assert report.mapped["Observation"] == 1
    assert "3 resources are not valid FHIR R5" in "\n".join(report.lines())
    assert not report.ok


def test_references_to_missing_resources_are_listed() -> None:
    resources = _resources()
    resources[3]["subject"] = {"reference": "BiologicallyDerivedProduct/lot-404"}
    resources = [r for r in resources if r["resourceType"] != "Patient"]
    result = read_fhir(_ndjson(resources))
    report = result.report
    assert (
        "Observation/sterility-1 (lot_id) refers to BiologicallyDerivedProduct/lot-404, "
        "which is not in the upload" in report.missing_references
    )
    assert any("(coi_id) refers to Patient/pat-1" in m for m in report.missing_references)
    assert report.missing_reference_count == 5  # the test's lot, and four coi_id links
    tests = result.frames["release_test"].set_index("test")["lot_id"]
    assert pd.isna(tests["sterility"]) and tests["endotoxin"] == "LOT-24-0042"


def test_unconvertible_units_and_codes_are_reported_and_left_empty() -> None:
    resources = _resources()
    prop = resources[1]["property"][1]
    prop["valueQuantity"] = {
        "value": 3,
        "unit": "mg",
        "system": "http://unitsofmeasure.org",
        "code": "mg",
    }
    resources[3]["interpretation"][0]["coding"][0]["code"] = "H"
    result = read_fhir(_ndjson(resources))
    unconverted = result.report.unconverted
    assert unconverted["alc_pre (collection): unit `mg` cannot be converted into 10^9/L"] == 1
    assert unconverted["passed (release_test): code 'H' has no meaning in the data model"] == 1
    assert pd.isna(result.frames["collection"]["alc_pre"].iloc[0])


def test_partial_dates_are_reported() -> None:
    resources = _resources()
    resources[0]["birthDate"] = "1963-04"  # valid FHIR, but not a day
    result = read_fhir(_ndjson(resources))
    assert (
        result.report.unconverted[
            "date_of_birth (episode): partial dates (a year or a month only) cannot fill a "
            "date column"
        ]
        == 1
    )
    assert pd.isna(result.frames["episode"]["date_of_birth"].iloc[0])


# The mapping file and its documentation ---------------------------------------------------


def test_every_column_of_a_mapped_table_has_a_fhir_element() -> None:
    """So that an export of a mapped table loses no column, and every column named exists."""
    mapping = load_mapping()
    cdm = load_cdm()
    for profile in mapping.profiles:
        names = [c.column.name for c in profile.columns]
        assert sorted(names) == sorted(cdm.table(profile.table).column_names), profile.name
    assert {p.table for p in mapping.profiles} | set(mapping.not_mapped) == set(cdm.table_names)


def test_docs_section_names_every_mapped_column() -> None:
    text = render_markdown()
    mapping = load_mapping()
    for profile in mapping.profiles:
        assert f"→ `{profile.table}`" in text
        for cmap in profile.columns:
            assert f"| `{cmap.column.name}` |" in text
    assert "`deviation`" in text


def _broken(tmp_path: Path, change: Any) -> Path:
    raw = yaml.safe_load(DEFAULT_MAPPING.read_text(encoding="utf-8"))
    change(raw)
    path = tmp_path / "fhir.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda r: r["profiles"]["lot"]["columns"].update(lot_no={"path": "x"}),
            "table `batch` has no column `lot_no`",
        ),
        (
            lambda r: r["profiles"]["lot"].update(resource="Lot"),
            "`Lot` is not a FHIR R5 resource type",
        ),
        (
            lambda r: r["profiles"]["lot"]["columns"]["din"].update(to="vial"),
            "unknown profile `vial`",
        ),
        (lambda r: r["not_mapped"].clear(), "`deviation` have no profile"),
        (
            lambda r: r["profiles"]["lot"]["columns"]["lot_id"].update(
                path="identifier[system=@nope].value"
            ),
            "unknown system '@nope'",
        ),
    ],
)
def test_a_broken_mapping_file_is_refused(tmp_path: Path, change: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_mapping(_broken(tmp_path, change))


def test_columns_withheld_by_the_exporter_are_tagged_and_read_back() -> None:
    """A hub's export of de-identified rows says which columns it left out (ages as bands
    have no FHIR form); the reader reports them, and only for columns of the resource's
    table, whatever else a file claims."""
    episodes = pd.DataFrame(
        {"coi_id": ["COI-1", "COI-2"], "site": "St Aurelia", "sex": ["female", "male"]}
    )
    body = write_fhir({"episode": episodes}, form="bundle", withheld={"episode.age"})
    bundle = json.loads(body)
    tags = [e["resource"]["meta"]["tag"] for e in bundle["entry"]]
    assert tags == [[{"system": WITHHELD_SYSTEM, "code": "episode.age"}]] * 2
    # A tag naming a column of another table (or none) is not taken at its word.
    bundle["entry"][0]["resource"]["meta"]["tag"].append(
        {"system": WITHHELD_SYSTEM, "code": "batch.lot_id"}
    )
    imported = read_fhir(json.dumps(bundle).encode())
    assert dict(imported.report.withheld) == {"episode.age": 2}
    assert any("episode.age: left out by the hub" in line for line in imported.report.lines())
    untagged = read_fhir(write_fhir({"episode": episodes}, form="bundle"))
    assert not untagged.report.withheld


def test_export_carries_the_standard_codes_beside_the_cdms() -> None:
    """Another system reads the shared code: SNOMED CT for indications and blood groups, HL7
    ObservationInterpretation for qualitative results, each after the CDM's own coding. The
    codes are written here from their sources (SNOMED CT's browser, HL7's code system page),
    not read from the code book the exporter uses."""
    snomed = "http://snomed.info/sct"
    hl7 = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
    cdm = "urn:cleanroom:cdm:code"
    lines = [json.loads(x) for x in write_fhir(_rows(), form="ndjson")]
    patients = [r for r in lines if r["resourceType"] == "Patient"]

    def extension(resource: dict[str, Any], name: str) -> dict[str, Any] | None:
        url = f"urn:cleanroom:cdm:extension:{name}"
        return next((e for e in resource.get("extension", []) if e["url"] == url), None)

    indications = [extension(p, "indication")["valueCodeableConcept"] for p in patients]  # type: ignore[index]
    assert [[(c["system"], c["code"]) for c in i["coding"]] for i in indications] == [
        [(cdm, "LBCL"), (snomed, "109969005")],
        [(cdm, "MM"), (snomed, "109989006")],
        [(cdm, "SCD"), (snomed, "417357006")],
    ]
    blood = [extension(p, "abo_rh") for p in patients]
    assert blood[1] is None  # an empty value writes nothing
    assert [c["code"] for c in blood[0]["valueCodeableConcept"]["coding"]] == ["O+", "278147001"]  # type: ignore[index]
    observations = [r for r in lines if r["resourceType"] == "Observation"]
    qualitative = [o["valueCodeableConcept"] for o in observations if "valueCodeableConcept" in o]
    assert [[(c["system"], c["code"]) for c in q["coding"]] for q in qualitative] == [
        [(cdm, "negative"), (hl7, "NEG")]
    ]
    # Read back: the CDM's coding wins wherever it stands; without it, the standard code
    # comes through for the upload's terms step to map.
    swapped = copy.deepcopy(lines)
    for resource in swapped:
        for e in resource.get("extension", []):
            if "valueCodeableConcept" in e:
                e["valueCodeableConcept"]["coding"].reverse()
    back = read_fhir(_ndjson(swapped))
    assert back.frames["episode"]["indication"].tolist() == ["LBCL", "MM", "SCD"]
    for resource in swapped:
        for e in resource.get("extension", []):
            if e["url"].endswith(":indication"):
                e["valueCodeableConcept"]["coding"] = [
                    c for c in e["valueCodeableConcept"]["coding"] if c["system"] == snomed
                ]
    only_snomed = read_fhir(_ndjson(swapped))
    assert only_snomed.frames["episode"]["indication"].tolist() == [
        "109969005",
        "109989006",
        "417357006",
    ]


def test_files_of_the_earlier_mapping_are_still_read() -> None:
    """Mapping 1.0.0 wrote indications and blood groups as a bare `valueCode` and qualitative
    results as a CDM coding only: such files still import to the same rows."""
    rows = _rows()
    lines = [json.loads(x) for x in write_fhir(rows, form="ndjson")]
    for resource in lines:
        for e in resource.get("extension", []):
            concept = e.pop("valueCodeableConcept", None)
            if concept is not None:
                e["valueCode"] = concept["coding"][0]["code"]
        if "valueCodeableConcept" in resource:
            resource["valueCodeableConcept"]["coding"] = resource["valueCodeableConcept"]["coding"][
                :1
            ]
    assert b"valueCodeableConcept" not in _ndjson(
        [r for r in lines if r["resourceType"] == "Patient"]
    )
    result = read_fhir(_ndjson(lines))
    assert result.report.ok and not result.report.unmapped_elements
    _same(result.frames, rows)
