"""Personal identifiers out of report text before it goes to a non-local LLM (Presidio's analyzer).

Built on Presidio's `AnalyzerEngine` with every recognizer configured here explicitly, so nothing is
downloaded: the NLP engine is a blank spaCy English tokenizer (no model), and all recognizers are
pattern recognizers whose cues are part of the pattern (Presidio's built-in e-mail recognizer would
fetch the public-suffix list, and its NER-based person recognizer needs a spaCy model). Imported only
when a non-local backend is used; install with the `[deid]` extra.

What is caught: names after a title (Dr./Mr./Mrs./Ms./Prof.), after a label (`Pt:`, `Name:`,
`Patient:`, `Patient Name:`, `Attending:`, `Surgeon:`, `Signed by`...) and in signatures (`Jane Roe, MD`);
record numbers after a label (MRN, medical record #, accession, account, patient ID, SSN); SSNs;
dates (numeric in any order, ISO, `March 3rd, 2021`, `3 March 2021`); phone numbers; e-mail
addresses; street addresses. Limitation: a bare name with no cue ("seen with Mary Johnson") can be
missed; offline there is no NER model to find it.

Eponyms (Nottingham, Paget, Bloom-Richardson), pTNM, scores such as `3/3` and sizes are not
identifiers and are kept (tested on the 52 real reports).
"""

from __future__ import annotations

import functools

from ..console import HistosynthError

# Words that follow a label but are not a name ("Patient History:", "Name of procedure").
_NOT_NAME = (r"(?!(?i:name|history|information|info|diagnosis|age|sex|gender|id|identifier|number|no|type|"
             r"specimen|procedure|location|status|time|date|copy|of|is|was|has|had|with|the|and|for|in|on)\b)")
_NAME_WORD = rf"{_NOT_NAME}[A-Z][A-Za-z'\-]+"
_NAME = rf"{_NAME_WORD}(?:(?:,[ \t]*|[ \t]+)(?:[A-Z]\.|{_NAME_WORD})){{0,3}}"
# Labels that need a colon (or '#', '-') before the name: "Pt: X", "Name: X", "the patient: X".
_LABEL_COLON = (r"(?i:\b(?:pt|patient(?:[ \t]+name)?|name|attending(?:[ \t]+physician)?|surgeon|physician|"
                r"pathologist|resident|referring(?:[ \t]+physician)?|(?:electronically[ \t]+)?signed(?:[ \t]+out)?"
                r"[ \t]+by|reported[ \t]+by|verified[ \t]+by|dictated[ \t]+by|cc))\b[ \t]*[:#\-][ \t]*")
# Labels that may stand without a colon before a Title-case name ("Patient Mary Johnson", "signed by Jane Roe").
_LABEL_BARE = (r"(?i:\b(?:patient|(?:electronically[ \t]+)?signed(?:[ \t]+out)?[ \t]+by|reported[ \t]+by|"
               r"verified[ \t]+by|dictated[ \t]+by))[ \t]+")
_TITLE_WORD = rf"{_NOT_NAME}[A-Z][a-z'\-]+"
_ID_LABEL = (r"(?i:\b(?:mrn|m\.r\.n?\.?|(?:medical[ \t]+)?record(?:[ \t]+(?:number|no\.?|#))?|accession(?:[ \t]+"
             r"(?:number|no\.?|#))?|acct|account(?:[ \t]+(?:number|no\.?|#))?|(?:patient|pt)[ \t]+id|"
             r"case[ \t]+(?:number|no\.?|#)|ssn|social[ \t]+security(?:[ \t]+number)?|hospital[ \t]+number))")
_MONTH = r"(?i:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
_STREET = (r"(?i:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|way|place|pl|terrace|"
           r"parkway|pkwy|circle|cir|highway|hwy)\.?")

# (kind, entity, pattern, score): kind is what the counts report; `entity` is Presidio's label.
PATTERNS: tuple[tuple[str, str, str, float], ...] = (
    ("name", "PERSON_TITLE", rf"\b(?:Dr|Mr|Mrs|Ms|Miss|Prof|DR|MR|MRS|MS)\.?[ \t]+{_NAME}", 0.9),
    ("name", "PERSON_LABEL", rf"(?<={_LABEL_COLON}){_NAME}", 0.8),
    ("name", "PERSON_LABEL_BARE", rf"(?<={_LABEL_BARE}){_TITLE_WORD}(?:[ \t]+(?:[A-Z]\.|{_TITLE_WORD})){{1,3}}", 0.7),
    ("name", "PERSON_SIGNATURE", rf"\b{_NAME_WORD}(?:[ \t]+[A-Z]\.)?[ \t]+{_NAME_WORD},[ \t]*"
                                 r"(?:M\.?D\.?|D\.?O\.?|Ph\.?D\.?|MBBS|FRCPath|FRCPC)(?![A-Za-z])", 0.85),
    ("record_number", "ID_LABEL", rf"(?<={_ID_LABEL}[ \t]*[:#.]*[ \t]*#?[ \t]*)[A-Z0-9][A-Z0-9\-]{{3,}}", 0.9),
    ("ssn", "SSN", r"\b\d{3}-\d{2}-\d{4}\b", 0.9),
    ("date", "DATE_NUMERIC", r"\b\d{1,2}[/\-]\d{1,2}[/\-](?:\d{4}|\d{2})\b|\b\d{1,2}\.\d{1,2}\.\d{4}\b|"
                             r"\b(?:19|20)\d{2}[/\-.]\d{1,2}[/\-.]\d{1,2}\b", 0.85),
    ("date", "DATE_WORDS", rf"\b{_MONTH}[ \t]+\d{{1,2}}(?i:st|nd|rd|th)?,?[ \t]+\d{{4}}\b|"
                           rf"\b\d{{1,2}}(?i:st|nd|rd|th)?(?:[ \t]+of)?[ \t]+{_MONTH},?[ \t]+\d{{4}}\b", 0.85),
    ("phone", "PHONE", r"(?:\(\d{3}\)[ \t]?|\b\d{3}[ \t.\-])\d{3}[ \t.\-]\d{4}\b", 0.8),
    ("email", "EMAIL", r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}\b", 0.95),
    ("address", "STREET_ADDRESS", rf"\b\d{{1,5}}[ \t]+(?:[A-Z][A-Za-z]+[ \t]+){{1,3}}{_STREET}(?![A-Za-z])"
                                  r"(?:,?[ \t]+(?i:apt|suite|unit)\.?[ \t]*\w+)?(?:,[ \t]*[A-Z][a-z]+(?:[ \t][A-Z][a-z]+)?)?"
                                  r"(?:,[ \t]*[A-Z]{2})?(?:[ \t]+\d{5}(?:-\d{4})?)?", 0.85),
)
KIND = {entity: kind for kind, entity, _, _ in PATTERNS}
PLACEHOLDER = {"name": "[NAME]", "record_number": "[ID]", "ssn": "[ID]", "date": "[DATE]", "phone": "[PHONE]",
               "email": "[EMAIL]", "address": "[ADDRESS]"}


@functools.lru_cache(maxsize=1)
def analyzer():
    """Presidio's AnalyzerEngine with only the recognizers above and a blank (model-free) spaCy tokenizer."""
    try:
        import regex
        import spacy
        from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
        from presidio_analyzer.nlp_engine import SpacyNlpEngine
    except ImportError:
        raise HistosynthError("identifier redaction (needed before a non-local LLM call) needs the deid extra: "
                              "pip install 'histosynth[deid]'") from None

    class BlankSpacyEngine(SpacyNlpEngine):
        def load(self) -> None:  # a tokenizer only: no model to download
            self.nlp = {"en": spacy.blank("en")}

    engine = BlankSpacyEngine(models=[{"lang_code": "en", "model_name": "blank"}])
    engine.load()
    registry = RecognizerRegistry(supported_languages=["en"])
    for _, entity, pattern, score in PATTERNS:
        registry.add_recognizer(PatternRecognizer(
            supported_entity=entity, name=entity, supported_language="en",
            patterns=[Pattern(entity, pattern, score)],
            global_regex_flags=regex.MULTILINE,  # case matters: names are capitalised
        ))
    return AnalyzerEngine(nlp_engine=engine, registry=registry, supported_languages=["en"])


def redact(text: str) -> tuple[str, dict[str, int]]:
    """`text` with identifiers replaced by placeholders, and how many of each kind (never the values)."""
    results = analyzer().analyze(text=text, language="en", entities=list(KIND))
    spans = sorted((r.start, r.end, KIND[r.entity_type]) for r in results)
    merged: list[list] = []
    for start, end, kind in spans:  # overlapping hits (a title and a label) become one
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end, kind])
    counts: dict[str, int] = {}
    out, pos = [], 0
    for start, end, kind in merged:
        out += [text[pos:start], PLACEHOLDER[kind]]
        counts[kind] = counts.get(kind, 0) + 1
        pos = end
    out.append(text[pos:])
    return "".join(out), counts
