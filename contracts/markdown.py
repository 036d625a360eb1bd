"""``docs/cdm.md``, whole: the CDM's tables and contract (:func:`contracts.cdm.render_markdown`),
its shared codes (:func:`contracts.codes.render_markdown`) and its FHIR mapping
(:func:`contracts.fhir.render_markdown`).

Composed here because the code book and the FHIR mapping are built on the CDM (both import
``contracts.cdm``), so the CDM module cannot ask for their sections itself. Run
``python -m contracts.markdown`` to print the document (``scripts/update_docs.py`` writes it).
"""

from __future__ import annotations

from contracts import cdm, codes, fhir


def cdm_document(model: cdm.CommonDataModel | None = None) -> str:
    """The text of ``docs/cdm.md`` for ``model`` (the loaded CDM by default)."""
    text = cdm.render_markdown(model or cdm.load_cdm())
    for section in (codes.render_markdown(), fhir.render_markdown()):
        text += "\n" + section.rstrip() + "\n"
    return text


if __name__ == "__main__":
    print(cdm_document(), end="")
