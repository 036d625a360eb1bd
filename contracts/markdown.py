"""``docs/cdm.md``, whole: the CDM's tables and contract (:func:`contracts.cdm.render_markdown`)
followed by its FHIR mapping (:func:`contracts.fhir.render_markdown`).

Composed here because the FHIR mapping is built on the CDM (``contracts.fhir`` imports
``contracts.cdm``), so the CDM module cannot ask for the FHIR section itself. Run
``python -m contracts.markdown`` to print the document (``scripts/update_docs.py`` writes it).
"""

from __future__ import annotations

from contracts import cdm, fhir


def cdm_document(model: cdm.CommonDataModel | None = None) -> str:
    """The text of ``docs/cdm.md`` for ``model`` (the loaded CDM by default)."""
    text = cdm.render_markdown(model or cdm.load_cdm())
    return text + "\n" + fhir.render_markdown().rstrip() + "\n"


if __name__ == "__main__":
    print(cdm_document(), end="")
