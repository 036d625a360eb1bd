"""Demo tables de-identified the way the ingest pipeline does it (pseudonyms, day offsets,
age bands, rounded weights), for the synthesis tests of the library and of the hub."""

from __future__ import annotations

import pandas as pd

from anonymisation.dates import offsets_by_key
from anonymisation.generalise import age_band, round_to
from anonymisation.pseudonyms import pseudonymise
from contracts.cdm import ColumnType, IdentifierClass, load_cdm

KEY = b"synthesis-test-key-0123456789"
CDM = load_cdm()


def deidentify(name: str, frame: pd.DataFrame, anchors: pd.Series, lot_coi: pd.Series):
    table = CDM.table(name)
    out = {}
    for column in frame.columns:
        spec, values = table.column(column), frame[column]
        if spec.identifier in (IdentifierClass.DIRECT, IdentifierClass.FREE_TEXT):
            continue
        if spec.identifier is IdentifierClass.LINKABLE:
            out[column] = pseudonymise(values, KEY)
        elif spec.type in (ColumnType.DATE, ColumnType.DATETIME):
            keys = frame["coi_id"] if "coi_id" in frame else frame["lot_id"].map(lot_coi)
            out[column] = offsets_by_key(values, keys, anchors)
        elif column == "age":
            out[column] = age_band(values)[0]
        elif column == "weight_kg":
            out[column] = round_to(values, 5)[0]
        else:
            out[column] = values
    return pd.DataFrame(out)
