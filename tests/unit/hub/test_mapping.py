"""hub.ingest.mapping: how site spreadsheets' columns are matched to the CDM, how their units
are detected, and how a confirmed mapping is applied. Real CDM tables, realistic headers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from contracts.cdm import Column, ColumnType, IdentifierClass, Table, load_cdm
from hub.errors import BadRequest
from hub.ingest.mapping import (
    CHOSEN,
    REMEMBERED,
    ColumnMatch,
    MappingProposal,
    apply_mapping,
    normalise_name,
    normalise_unit,
    propose_mapping,
    split_unit,
)
from hub.ingest.validation import FACTORS_ATTR, SOURCES_ATTR


@pytest.fixture(scope="module")
def cdm():
    return load_cdm()


@pytest.fixture(scope="module")
def collection(cdm) -> Table:
    return cdm.table("collection")


@pytest.fixture(scope="module")
def batch(cdm) -> Table:
    return cdm.table("batch")


def frame(**columns: list[str | None]) -> pd.DataFrame:
    """A raw upload: every value a string or None, headers as the site wrote them."""
    return pd.DataFrame({k.replace("__", " "): v for k, v in columns.items()}, dtype=object)


def site(columns: dict[str, list[str | None]]) -> pd.DataFrame:
    return pd.DataFrame(columns, dtype=object)


# Names and units ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "name", "hint"),
    [
        ("ALC (x10^9/L)", "alc", "x10^9/L"),
        ("ALC (cells/µL)", "alc", "cells/µL"),
        ("Viabilität [%]", "viabilitat", "%"),
        ("Viab %", "viab", "%"),
        ("Viabilité en %", "viabilite", "%"),
        ("CD3 /µL", "cd3", "/µL"),
        ("ALC x10^9/L", "alc", "x10^9/L"),
        ("Lot No.", "lotno", None),
        ("Viability (post-thaw)", "viabilitypostthaw", None),  # not a unit: kept in the name
    ],
)
def test_headers_normalise_with_the_unit_set_aside(header: str, name: str, hint: str | None):
    _, found = split_unit(header)
    assert normalise_name(header) == name
    assert found == hint


def test_unit_labels_normalise_to_one_form():
    assert normalise_unit("x10^9/L") == normalise_unit("10⁹/l") == normalise_unit("G/L")
    assert normalise_unit("×10^9 /L") == normalise_unit("10e9/L") == "109/l"
    assert normalise_unit("cells/µL") == normalise_unit("/uL") == normalise_unit("/mm³")
    assert normalise_unit("percent") == normalise_unit("%")
    assert normalise_unit("g/L") != normalise_unit("G/L")  # grams, not giga-cells


def test_every_cdm_name_and_synonym_maps_back_to_its_own_column(cdm):
    """The CDM's synonyms are the mapper's vocabulary: none may collide under our
    normalisation (units set aside), and each must win its own column."""
    for table in cdm.tables:
        for col in table.columns:
            for label in (col.name, *col.synonyms):
                upload = site({label: ["x"]})
                match = propose_mapping(upload, table).columns[0]
                assert match.target == col.name, (table.name, label, match)
                assert match.confidence >= 0.9


# Realistic site files -----------------------------------------------------------------------


def test_german_site_with_units_in_headers(collection: Table):
    upload = site(
        {
            "Entnahme-Nr.": ["A9999 24 000001", "A9999 24 000002"],
            "Patient ID": ["COI-1", "COI-2"],
            "Entnahmedatum": ["05.03.2024", "13.03.2024"],
            "frisch/kryo": ["frisch", "kryo"],
            "Lymphozyten absolut (G/L)": ["1,34", "0,47"],
            "CD3 (x10^9/L)": ["0.914", "0.349"],
            "Thrombozyten": ["170", "120"],
            "Volume (mL)": ["180", "210"],
            "Bemerkungen": ["ok", None],
        }
    )
    proposal = propose_mapping(upload, collection)
    targets = {m.source: m.target for m in proposal.columns}
    assert targets == {
        "Entnahme-Nr.": "din",
        "Patient ID": "coi_id",
        "Entnahmedatum": "collection_date",
        "frisch/kryo": "fresh_or_cryo",
        "Lymphozyten absolut (G/L)": "alc_pre",
        "CD3 (x10^9/L)": "cd3_pre",
        "Thrombozyten": "platelets_pre",
        "Volume (mL)": "product_volume",
        "Bemerkungen": "notes",
    }
    assert proposal.match("Patient ID").reason == "synonym 'Patient ID'"
    alc = proposal.match("Lymphozyten absolut (G/L)")
    assert (alc.unit, alc.factor) == ("G/L", 1.0)
    cd3 = proposal.match("CD3 (x10^9/L)")  # canonical cells/µL: 10^9/L is ×1000
    assert (cd3.unit, cd3.factor) == ("x10^9/L", 1000.0)
    assert "in the header" in cd3.unit_reason
    assert proposal.missing_required == []
    assert proposal.unmapped == []


def test_french_site_fractions_and_percent(batch: Table):
    upload = site(
        {
            "Numéro de lot": ["L1", "L2"],
            "Viabilité": ["0.87", "0.91"],
            "CAR+ (%)": ["23", "37"],
            "Site de fabrication": ["Paris", "Lyon"],
        }
    )
    proposal = propose_mapping(upload, batch)
    viability = proposal.match("Viabilité")
    assert viability.target == "viability"
    assert (viability.unit, viability.factor) == ("fraction", 100.0)
    assert "between 0 and 1" in viability.unit_reason
    car = proposal.match("CAR+ (%)")
    assert (car.target, car.unit, car.factor) == ("transduction_efficiency", "%", 1.0)
    assert proposal.match("Site de fabrication").target == "processing_facility"
    assert set(proposal.missing_required) == {"coi_id", "platform", "manufacturing_outcome"}


def test_percent_values_stay_percent(batch: Table):
    upload = site({"Viability": ["87", "91.5", "78"]})
    match = propose_mapping(upload, batch).columns[0]
    assert (match.unit, match.factor) == ("%", 1.0)
    assert "no unit in the header" in match.unit_reason


def test_count_in_cells_per_microlitre_detected_from_values(collection: Table):
    """ALC is 10^9/L (0–500); a median of ~1000 only fits cells/µL."""
    upload = site({"ALC": ["1340", "470", "912", "2100"]})
    match = propose_mapping(upload, collection).columns[0]
    assert match.target == "alc_pre"
    assert match.factor == pytest.approx(0.001)
    assert match.unit in ("cells/uL", "cells/µL")
    assert "median 1126" in match.unit_reason


def test_unknown_header_unit_falls_back_to_values(collection: Table):
    upload = site({"ALC (mmol/L)": ["1.3", "0.5"]})
    match = propose_mapping(upload, collection).columns[0]
    assert match.target == "alc_pre"
    assert (match.unit, match.factor) == ("10^9/L", 1.0)
    assert match.unit_reason.startswith("header unit 'mmol/L' is not one we can convert")


# Signals and conflicts ------------------------------------------------------------------


def test_remembered_mapping_wins_over_names(collection: Table):
    upload = site({"Wert A": ["1.2", "0.4"], "ALC": ["1.3", "0.5"]})
    proposal = propose_mapping(upload, collection, remembered={"Wert A": "alc_pre"})
    remembered = proposal.match("Wert A")
    assert (remembered.target, remembered.confidence) == ("alc_pre", 1.0)
    assert remembered.reason == REMEMBERED
    loser = proposal.match("ALC")
    assert loser.target is None
    assert "also matched `alc_pre`" in loser.reason
    assert "'Wert A' fitted better" in loser.reason
    assert proposal.unmapped == ["ALC"]


def test_remembered_target_not_in_table_is_ignored(collection: Table):
    upload = site({"DIN": ["A9999 24 000001"]})
    proposal = propose_mapping(upload, collection, remembered={"DIN": "no_such_column"})
    assert proposal.columns[0].target == "din"
    assert proposal.columns[0].reason == "name matches `din`"


def test_conflict_goes_to_the_better_fit(batch: Table):
    upload = site({"Viab %": ["87"], "Viability": ["88"], "Viabilty": ["89"]})
    proposal = propose_mapping(upload, batch)
    assert proposal.match("Viability").target == "viability"
    assert proposal.match("Viability").confidence == 0.95
    for loser in ("Viab %", "Viabilty"):
        match = proposal.match(loser)
        assert match.target is None
        assert "also matched `viability`" in match.reason
        assert "'Viability' fitted better" in match.reason


def test_fuzzy_match_reports_ratio_below_exact_confidence(batch: Table):
    upload = site({"Viabilty": ["87"], "Fold Expnsion": ["30"]})
    proposal = propose_mapping(upload, batch)
    typo = proposal.match("Viabilty")
    assert typo.target == "viability"
    assert typo.reason.startswith("fuzzy name match 0.9")
    assert "'viability'" in typo.reason
    assert 0.7 < typo.confidence < 0.9
    assert proposal.match("Fold Expnsion").target == "fold_expansion"


def test_values_identify_unnamed_columns(collection: Table):
    upload = site(
        {
            "Spender-Nr": ["A9999 24 000001", "A999924000002", "A9999 24 000003"],
            "Zustand": ["Fresh", "CRYOPRESERVED", "fresh"],
            "Datum": ["05/03/2024", "13/03/2024", "01/04/2024"],
        }
    )
    proposal = propose_mapping(upload, collection)
    din = proposal.match("Spender-Nr")
    assert (din.target, din.reason) == ("din", "values look like ISBT 128 DINs: `din`")
    state = proposal.match("Zustand")
    assert state.target == "fresh_or_cryo"
    assert "allowed values" in state.reason
    date = proposal.match("Datum")
    assert date.target == "collection_date"
    assert date.reason.startswith("values look like dates")
    assert all(m.confidence < 0.9 for m in proposal.columns)


def test_numbers_fitting_many_columns_are_left_for_the_contributor(collection: Table):
    upload = site({"Sonstiges": ["12.3", "11", "15"]})
    match = propose_mapping(upload, collection).columns[0]
    assert match.target is None
    assert "could be" in match.reason and "choose one" in match.reason


def test_value_profiling_on_a_small_hand_made_table():
    """Independent of the shipped CDM: a range that only one column can hold."""
    table = Table(
        "t",
        "test table",
        "one row per thing",
        ("thing_id",),
        (
            Column("thing_id", ColumnType.STRING, "id", True, IdentifierClass.LINKABLE),
            Column(
                "dose_mg",
                ColumnType.NUMBER,
                "dose",
                False,
                IdentifierClass.SAFE,
                unit="mg",
                minimum=100,
                maximum=900,
            ),
            Column(
                "count",
                ColumnType.INTEGER,
                "count",
                False,
                IdentifierClass.SAFE,
                minimum=0,
                maximum=5,
            ),
        ),
    )
    upload = site({"xyz": ["150", "420.5", "870"], "abc": ["1", "2", "4"]})
    proposal = propose_mapping(upload, table)
    assert proposal.match("xyz").target == "dose_mg"
    assert proposal.match("xyz").reason.startswith("numbers 150–870 fit the range of")
    assert proposal.match("abc").target == "count"
    assert proposal.missing_required == ["thing_id"]


def test_missing_required_and_unmapped(collection: Table):
    upload = site({"Device": ["Spectra Optia"], "Random stuff": ["hello"]})
    proposal = propose_mapping(upload, collection)
    assert proposal.match("Device").target == "device"
    assert set(proposal.missing_required) == {"din", "coi_id", "collection_date", "fresh_or_cryo"}
    assert proposal.unmapped == ["Random stuff"]
    assert "no CDM column" in proposal.match("Random stuff").reason


def test_duplicate_headers_are_refused(collection: Table):
    upload = pd.DataFrame([["a", "b"]], columns=["DIN", "DIN"], dtype=object)
    with pytest.raises(BadRequest, match="more than one column named 'DIN'"):
        propose_mapping(upload, collection)


# The proposal as data ---------------------------------------------------------------------


def test_proposal_round_trips_through_json(collection: Table):
    upload = site({"DIN": ["A9999 24 000001"], "ALC (cells/µL)": ["1340"], "x": ["?"]})
    proposal = propose_mapping(upload, collection)
    data = json.loads(json.dumps(proposal.to_dict()))
    again = MappingProposal.from_dict(data)
    assert again == proposal
    assert again.as_mapping() == {"DIN": "din", "ALC (cells/µL)": "alc_pre"}
    assert again.sources() == {"din": "DIN", "alc_pre": "ALC (cells/µL)"}
    assert again.factors() == {"din": 1.0, "alc_pre": pytest.approx(0.001)}


def test_from_dict_refuses_malformed_data():
    with pytest.raises(ValueError, match="table"):
        MappingProposal.from_dict({"columns": []})
    with pytest.raises(ValueError, match="source"):
        MappingProposal.from_dict({"table": "t", "columns": [{"target": "x"}]})
    with pytest.raises(ValueError, match="factor"):
        ColumnMatch.from_dict({"source": "a", "target": "b", "factor": -1})


def test_with_choices_applies_the_contributors_decisions(collection: Table):
    upload = site({"ALC": ["1.3"], "Maschine": ["Amicus"], "DIN": ["A9999 24 000001"]})
    proposal = propose_mapping(upload, collection)
    assert proposal.match("Maschine").target is None
    confirmed = proposal.with_choices(
        {
            "ALC": {"target": "alc_pre", "unit": "cells/µL"},
            "Maschine": {"target": "device"},
            "DIN": {"target": ""},
        },
        collection,
    )
    alc = confirmed.match("ALC")
    assert (alc.unit, alc.factor, alc.unit_reason) == ("cells/µL", 0.001, CHOSEN)
    assert alc.reason == proposal.match("ALC").reason  # the target itself was not changed
    device = confirmed.match("Maschine")
    assert (device.target, device.confidence, device.reason) == ("device", 1.0, CHOSEN)
    assert confirmed.match("DIN").target is None
    assert "din" in confirmed.missing_required
    assert "DIN" in confirmed.unmapped
    assert proposal.match("DIN").target == "din"  # the proposal itself is unchanged


def test_with_choices_new_target_takes_the_header_unit(collection: Table):
    upload = site({"Lymphos (cells/µL)": ["1340"]})
    proposal = propose_mapping(upload, collection)
    confirmed = proposal.with_choices({"Lymphos (cells/µL)": "alc_pre"}, collection)
    match = confirmed.match("Lymphos (cells/µL)")
    assert (match.target, match.confidence, match.reason) == ("alc_pre", 1.0, CHOSEN)
    assert match.factor == pytest.approx(0.001)


@pytest.mark.parametrize(
    ("choices", "code"),
    [
        ({"nope": {"target": "din"}}, "unknown_source"),
        ({"ALC": {"target": "no_such"}}, "unknown_target"),
        ({"ALC": {"target": "alc_pre", "unit": "mg/dL"}}, "unknown_unit"),
        ({"ALC": {"target": "din"}}, "duplicate_target"),
    ],
)
def test_with_choices_refuses_what_cannot_work(collection: Table, choices, code):
    upload = site({"ALC": ["1.3"], "DIN": ["A9999 24 000001"]})
    proposal = propose_mapping(upload, collection)
    with pytest.raises(BadRequest) as err:
        proposal.with_choices(choices, collection)
    assert err.value.code == code


# Applying -------------------------------------------------------------------------------


def test_apply_mapping_renames_keeps_strings_and_orders_like_the_cdm(collection: Table):
    upload = site(
        {
            "Notes": ["=1+1", None],
            "ALC (cells/µL)": ["1,340", " 470 "],
            "DIN": ["A9999 24 000001", "A9999 24 000002"],
            "Unrelated": ["x", "y"],
        }
    )
    proposal = propose_mapping(upload, collection)
    mapped = apply_mapping(upload, proposal, collection)
    expected = [
        c
        for c in collection.column_names
        if c not in {"coi_id", "collection_date", "fresh_or_cryo"}
    ]  # required, no source: absent
    assert list(mapped.columns) == expected
    assert "Unrelated" not in mapped.columns
    assert mapped["alc_pre"].tolist() == ["1,340", " 470 "]  # converted in validation
    assert mapped["notes"].tolist() == ["=1+1", None]
    assert mapped["device"].isna().all()
    assert mapped.attrs[FACTORS_ATTR]["alc_pre"] == pytest.approx(0.001)
    assert mapped.attrs[SOURCES_ATTR] == {
        "notes": "Notes",
        "alc_pre": "ALC (cells/µL)",
        "din": "DIN",
    }


def test_apply_mapping_refuses_a_mapping_for_another_file(collection: Table):
    proposal = propose_mapping(site({"DIN": ["A9999 24 000001"]}), collection)
    with pytest.raises(BadRequest, match="no column 'DIN'"):
        apply_mapping(site({"Other": ["x"]}), proposal, collection)


def test_mapping_a_large_frame_uses_a_sample(collection: Table):
    """200,000 rows: the profile samples, so this stays quick; results are deterministic."""
    n = 200_000
    rng = np.random.default_rng(1)
    upload = pd.DataFrame(
        {
            "ALC": rng.integers(200, 4000, n).astype(str).astype(object),
            "Zustand": rng.choice(["fresh", "Cryopreserved"], n).astype(object),
        }
    )
    upload.iloc[::7, 0] = None
    first = propose_mapping(upload, collection)
    again = propose_mapping(upload, collection)
    assert first == again
    assert first.match("ALC").factor == pytest.approx(0.001)
    assert first.match("Zustand").target == "fresh_or_cryo"
