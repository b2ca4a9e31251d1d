"""Image-relevant findings in real, noisy pathology reports.

TCGA reports are OCR'd: line ends became ". " ("INFILTRATING DUCTAL. CARCINOMA"), letters are
misread ("DUCIAL", "carcinuna", "GRADE Il") and styles differ (synoptic checklists, narrative
diagnoses, translated reports). The patterns therefore allow punctuation between the words of a
term, and every mention is checked for negation ("no evidence of lobular carcinoma") and for
in-situ context (ductal carcinoma in situ is not an invasive ductal carcinoma). What is not
stated is not found: a report without a diagnosis yields no histologic type.

Each `Finding` carries its renderings, longest first; a summary uses exactly one of them, so a
finding is never cut.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

VOCABULARY_VERSION = "findings-v2"
FLAGS = re.IGNORECASE


@dataclass(frozen=True)
class Finding:
    kind: str                 # "type", "grade", "dcis", "lvi", "necrosis", ... (see find_findings)
    forms: tuple[str, ...]    # complete renderings, longest first


# ---- negation and context ---------------------------------------------------------------------
_NEG_BEFORE = re.compile(
    r"\b(?:no\b(?!\W+special\W+type)\.?|not\b|without\b|negative\s+for\b|free\s+of\b|absence\s+of\b|rule\s+out\b|r/o\b|neg\b)"
    r"(?:[^\w.]+\w+){0,5}[^\w.]*$", FLAGS)  # cue and mention in one sentence (OCR: "No. angiolymphatic")
_NEG_AFTER = re.compile(
    r"^\W{0,4}(?:(?:is|are|was|were)\s+)?(?:not\s+(?:identified|seen|present|detected|"
    r"found|evident|noted)|absent|negative|none\b|no\b(?!\s+\w))|^\s*:\s*no\b", FLAGS)  # within the sentence
_EMPTY_FIELD = re.compile(r"^\s*:\s*[A-Z][A-Z ,'/-]*:")  # "ANGIOLYMPHATIC INVASION: CALCIFICATION:"
_UNKNOWN_AFTER = re.compile(
    r"^\W{0,4}(?:\w+\W+)?(?:not\s+(?:specified|applicable|assessed|stated)|cannot\s+be\s+(?:determined|assessed)|"
    r"indeterminate|n/a|unknown)", FLAGS)
_IN_SITU_AFTER = re.compile(r"^\W{0,3}in[\s.-]*situ", FLAGS)
_IN_SITU_NEAR = re.compile(r"in[\s.-]*situ|\bdcis\b|\blcis\b|intraductal", FLAGS)


def _clause_before(text: str, start: int, width: int = 60) -> str:
    """The text before a mention, back to the last clause boundary (';', ':' or a new item)."""
    before = text[max(0, start - width):start]
    cut = max(before.rfind(";"), before.rfind(":"), before.rfind(" - "))
    return before[cut + 1:] if cut >= 0 else before


_FIELD_NOTE = re.compile(r"\([^)]{0,30}\)")  # "(yes/no)", "(select all that apply)", "(DCIS)"


def _after(text: str, end: int) -> str:
    return _FIELD_NOTE.sub(" ", text[end:end + 70])[:45]


def is_negated(text: str, start: int, end: int) -> bool:
    return bool(_NEG_BEFORE.search(_clause_before(text, start)) or _NEG_AFTER.search(_after(text, end)))


_CHECKLIST_HEADING = re.compile(r"^[\s)]*(?:\([^)]{0,30}\)\s*)*\((?:select|check)", FLAGS)


def is_unknown(text: str, end: int) -> bool:
    """Not stated: "not specified", an empty checklist field, or a checklist heading."""
    after = _after(text, end)
    return bool(_UNKNOWN_AFTER.search(after) or _EMPTY_FIELD.search(after) or _CHECKLIST_HEADING.search(text[end:end + 80]))


# ---- histologic types -------------------------------------------------------------------------
CARC = r"(?:adeno)?carc\w*"
GAP = r"\W+(?:[a-z]+\W+){0,2}?"  # up to two words between the words of a term
DUCT = r"\b(?:duct|ductal|ducial|ductai|ductale)\b"

# (rendering, pattern), most specific first; a mention inside an earlier type's mention is dropped.
# The vocabulary covers the WHO classifications of breast, colorectal and lung tumours (listed in
# docs/architecture.md, reports section) and the common types of other organs.
_LUNG_PATTERNS = ("lepidic", "acinar", "micropapillary", "papillary", "solid")


def _predominant(sub: str) -> str:
    """Lung adenocarcinoma by predominant pattern: "acinar predominant adenocarcinoma", "adenocarcinoma, solid predominant"."""
    return (rf"\b{sub}\W+(?:predominant\W+)?(?:pattern\W+)?adenocarc\w*|\badenocarc\w*\W+(?:[a-z]+\W+){{0,2}}?{sub}"
            rf"[\s-]+predominant|\b{sub}[\s-]+predominant")


TYPES: tuple[tuple[str, str], ...] = (
    ("metaplastic carcinoma", rf"\bmetaplastic{GAP}{CARC}"),
    ("invasive mucinous adenocarcinoma", r"\binvasive\W+mucinous\W+adenocarc\w*"),
    ("mucinous adenocarcinoma", rf"\b(?:mucinous|colloid){GAP}adenocarc\w*"),
    ("mucinous carcinoma", rf"\b(?:mucinous|colloid){GAP}{CARC}"),
    ("signet-ring cell carcinoma", r"\bsignet[\s-]*ring(?:[\s-]+cell)?\W+(?:adeno)?carc\w*"),
    ("medullary carcinoma", rf"\bmedullary{GAP}{CARC}"),
    ("minimally invasive adenocarcinoma", r"\bminimally\W+invasive\W+adenocarc\w*"),
    *((f"{sub} adenocarcinoma", _predominant(sub)) for sub in _LUNG_PATTERNS),
    ("micropapillary carcinoma", rf"\bmicropapillary\W+{CARC}"),
    ("serrated adenocarcinoma", r"\bserrated\W+adenocarc\w*"),
    ("adenosquamous carcinoma", r"\badenosquamous\W+carc\w*"),
    ("tubular carcinoma", rf"\btubular\W+{CARC}"),
    ("cribriform carcinoma", rf"\bcribriform\W+{CARC}"),
    ("apocrine carcinoma", rf"\bapocrine\W+{CARC}"),
    ("lobular carcinoma", rf"\blobular{GAP}{CARC}|{CARC}\W+lobulare|histologic(?:al)?\W+type\W+"
                          rf"(?:invasive\W+|infiltrating\W+)?lobular"),
    ("ductal carcinoma", rf"{DUCT}{GAP}{CARC}|{CARC}\W+ductale|histologic(?:al)?\W+type\W+(?:invasive\W+|"
                         rf"infiltrating\W+)?{DUCT}|(?:infiltrating|invasive)\W+duct\b|no\W+special\W+type"),
    ("clear cell renal cell carcinoma", r"\bclear[\s-]+cell\W+renal\W+cell\W+carc\w*"),
    ("papillary renal cell carcinoma", r"\bpapillary\W+renal\W+cell\W+carc\w*"),
    ("chromophobe renal cell carcinoma", r"\bchromophobe\W+(?:renal\W+cell\W+)?carc\w*"),
    ("renal cell carcinoma", r"\brenal\W+cell\W+carc\w*"),
    ("papillary thyroid carcinoma", r"\bpapillary\W+(?:thyroid\W+)?carc\w*(?=[^.]{0,40}thyroid)|"
                                    r"\bpapillary\W+thyroid\W+carc\w*"),
    ("urothelial carcinoma", rf"\b(?:urothelial|transitional\W+cell){GAP}{CARC}"),
    ("large cell neuroendocrine carcinoma", r"\blarge\W+cell\W+neuroendocrine\W+carc\w*|\blcnec\b"),
    ("large cell carcinoma", r"\blarge\W+cell\W+(?:undifferentiated\W+)?carc\w*"),
    ("non-small cell carcinoma", r"\bnon[\s-]*small\W+cell\W+(?:lung\W+)?carc\w*|\bnsclc\b"),
    ("squamous cell carcinoma", r"\bsquamous\W+cell\W+carc\w*"),
    ("small cell carcinoma", r"(?<!non-)(?<!non )\bsmall\W+cell\W+(?:lung\W+)?carc\w*|\bsclc\b"),
    ("sarcomatoid carcinoma", r"\b(?:sarcomatoid|pleomorphic|spindle\W+cell|giant\W+cell)\W+carc\w*"),
    ("carcinoid tumour", r"\b(?:(?:typical|atypical)\W+)?carcinoid\b(?:\W+tumou?r)?"),
    ("adenoid cystic carcinoma", r"\badenoid\W+cystic\W+carc\w*"),
    ("mucoepidermoid carcinoma", r"\bmucoepidermoid\W+carc\w*"),
    ("undifferentiated carcinoma", r"\bundifferentiated\W+carc\w*"),
    ("hepatocellular carcinoma", r"\bhepatocellular\W+carc\w*"),
    ("cholangiocarcinoma", r"\bcholangiocarc\w*"),
    ("adrenocortical carcinoma", r"\badrenocortical\W+carc\w*"),
    ("serous carcinoma", rf"\bserous{GAP}{CARC}"),
    ("endometrioid adenocarcinoma", rf"\bendometrioid{GAP}{CARC}"),
    ("carcinosarcoma", r"\bcarcinosarcoma"),
    ("glioblastoma", r"\bglioblastoma|\bgbm\b"),
    ("oligodendroglioma", r"\boligodendroglioma"),
    ("astrocytoma", r"\bastrocytoma"),
    ("melanoma", r"\bmelanoma"),
    ("mesothelioma", r"\bmesothelioma"),
    ("thymoma", r"\bthymoma"),
    ("pheochromocytoma", r"\bpheochromocytoma|\bparaganglioma"),
    ("seminoma", r"\bseminoma"),
    ("germ cell tumour", r"\bgerm\W+cell\W+tumou?r"),
    ("leiomyosarcoma", r"\bleiomyosarcoma"),
    ("sarcoma", r"\b(?:lipo|rhabdomyo|angio|myxofibro|undifferentiated\W+pleomorphic\W+)?sarcoma"),
    ("lymphoma", r"\blymphoma"),
    ("neuroendocrine carcinoma", r"\bneuroendocrine\W+carc\w*"),
    ("neuroendocrine tumour", r"\bneuroendocrine\W+tumou?r"),
    ("adenocarcinoma", r"\badeno\W{0,3}carc\w*"),  # OCR: "ADENO- CARCINOMA"
)
# The patterns (all lower-case literals) run on the lower-cased text: case-insensitive matching makes
# Python's re several times slower. Each is compiled on first use (most reports need few of them).
_TYPE_PATTERNS = dict(TYPES)


@functools.lru_cache(maxsize=None)
def _type_regex(name: str, ignore_case: bool) -> re.Pattern:
    return re.compile(_TYPE_PATTERNS[name], FLAGS if ignore_case else 0)


def _branches(pattern: str) -> list[str]:
    """The top-level alternatives of a pattern."""
    out, depth, start, i = [], 0, 0, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        depth += c in "([" and 1 or 0
        depth -= c in ")]" and 1 or 0
        if c == "|" and depth == 0:
            out.append(pattern[start:i])
            start = i + 1
        i += 1
    return out + [pattern[start:]]


def _keys(pattern: str) -> tuple[str, ...] | None:
    """Words one of which a match must contain (each branch's leading literal), or None when unknown.

    A pattern that starts with \\b is scanned character by character by Python's re (~0.2 ms per
    report each); a substring test first skips the type patterns a report cannot match.
    """
    keys: list[str] = []
    for branch in _branches(pattern):
        rest = re.sub(r"^(?:\(\?<![^)]*\))*(?:\\b)?", "", branch)
        rest = re.sub(r"^\(\?:[a-z|]+\)\?", "", rest)  # an optional leading group ("(?:adeno)?carc")
        if m := re.match(r"\(\?:([a-z|]+)\)", rest):  # a group of alternatives ("(?:mucinous|colloid)")
            keys += m[1].split("|")
        elif m := re.match(r"[a-z]{2,}", rest):
            keys.append(m[0])
        else:
            return None
    return tuple(keys)


_TYPE_KEYS = {name: _keys(p) for name, p in TYPES}
# "70 % micropapillary", "micropapillary component (30%)": a growth pattern with a stated share.
COMPONENTS = {"micropapillary": "micropapillary carcinoma", "mucinous": "mucinous carcinoma",
              "lobular": "lobular carcinoma", "ductal": "ductal carcinoma", "tubular": "tubular carcinoma",
              "cribriform": "cribriform carcinoma", "no special type": "ductal carcinoma"}
_GROWTH_SHARE = re.compile(r"\b(micropapillary|mucinous|lobular|ductal|tubular|cribriform|no\W+special\W+type)\b"
                        r"(?:\W+(?:features?|component|pattern|areas?|differentiation|type|growth))?", FLAGS)
_PCT = r"(\d{1,3}(?:\.\d+)?)\s*%"
_PCT_BEFORE = re.compile(rf"{_PCT}\s*(?:(?:of|the|tumou?r|is|are|shows?|invasive|infiltrating|pure|carcinoma)\W+){{0,4}}$", FLAGS)
_PCT_AFTER = re.compile(rf"^[\s,:(-]{{0,4}}(?:(?:carcinoma|component|pattern|features?|areas?|type)\W+){{0,2}}\(?\s*{_PCT}", FLAGS)
BREAST_TYPES = {"ductal carcinoma", "lobular carcinoma", "micropapillary carcinoma"}  # WHO: "invasive ..."
GENERIC_TYPES = ("non-small cell carcinoma", "adenocarcinoma")  # least specific last: dropped for a specific type

_CLINICAL = re.compile(r"\w*inical\W+(?:diagnosis|history|information)|pre[\s-]*op\w*\W+diagnosis|indication", FLAGS)
_REPORTED_BEFORE = re.compile(r"\b(?:showed|history\s+of|prior|previous(?:ly)?)\b[^.;:]*$", FLAGS)  # "Core bx. showed"


@dataclass
class TypeMentions:
    name: str
    count: int = 0            # affirmed mentions as a type in its own right
    first: int = 0            # position of the first mention
    share: float | None = None  # largest stated proportion (%), e.g. "70 % micropapillary"
    word: str = ""              # the growth pattern's word when only stated with a share ("mucinous component, 30 %")


def _share(text: str, start: int, end: int) -> float | None:
    after = _PCT_AFTER.search(text[end:end + 30])
    before = _PCT_BEFORE.search(text[max(0, start - 40):start])
    value = after[1] if after else before[1] if before else None
    return float(value) if value is not None and 0 < float(value) <= 100 else None


def _affirmed(text: str, s: int, e: int) -> bool:
    if _IN_SITU_AFTER.search(text[e:e + 12]) or is_negated(text, s, e):
        return False
    return not (_CLINICAL.search(text[max(0, s - 80):s]) or _REPORTED_BEFORE.search(text[max(0, s - 40):s]))


def type_mentions(text: str) -> list[TypeMentions]:
    """Invasive histologic types stated (not negated, not in situ, not the referral's history), dominant first.

    The dominant type is the one with a stated majority share ("70 % micropapillary" beats one "no
    special type" mention), else the most often mentioned. A growth pattern stated only with a share
    ("micropapillary component, 30 %") counts as a second type. The generic "adenocarcinoma" counts only
    when no specific type is stated. Linear in the text: covered characters are marked in a bytearray.
    """
    covered = bytearray(len(text))
    found: dict[str, TypeMentions] = {}
    full: set[str] = set()
    lowered = text.lower()
    fast = len(lowered) == len(text)  # a few characters change length when lower-cased: then match ignoring case
    for name, _ in TYPES:
        keys = _TYPE_KEYS[name]
        if keys is not None and not any(k in lowered for k in keys):
            continue
        for m in _type_regex(name, not fast).finditer(lowered if fast else text):
            s, e = m.span()
            if covered.find(1, s, e) != -1:
                continue  # part of a more specific type's mention
            covered[s:e] = b"\x01" * (e - s)
            if not _affirmed(text, s, e):
                continue
            t = found.setdefault(name, TypeMentions(name, first=s))
            t.count += 1
            full.add(name)
            share = _share(text, s, e)
            if share is not None:
                t.share = max(t.share or 0.0, share)
    for m in _GROWTH_SHARE.finditer(text):
        s, e = m.span()
        if covered.find(1, s, e) != -1 or (share := _share(text, s, e)) is None or not _affirmed(text, s, e):
            continue
        word = re.sub(r"\W+", " ", m[1].lower())
        name = COMPONENTS[word]
        t = found.setdefault(name, TypeMentions(name, first=s, word=word))
        t.share = max(t.share or 0.0, share)
    specific = [n for n in full if n not in GENERIC_TYPES] + [n for n, t in found.items() if (t.share or 0) >= 50]
    for generic in GENERIC_TYPES:
        if specific or (generic != "adenocarcinoma" and "adenocarcinoma" in full):
            found.pop(generic, None)
    if not full:
        return []  # a share alone ("30 % lobular") without any stated tumour type is not a diagnosis

    def rank(t: TypeMentions) -> tuple:
        majority = t.share if t.share is not None and t.share >= 50 else 0.0
        return (-majority, -t.count, -(t.share or 0.0), t.first)

    return sorted(found.values(), key=rank)


def find_types(text: str) -> list[str]:
    """The stated invasive histologic types, dominant first (see `type_mentions`)."""
    return [t.name for t in type_mentions(text)]


def _invasive(name: str) -> str:
    return f"invasive {name}" if name in BREAST_TYPES else name


def type_finding(types: list[TypeMentions]) -> Finding | None:
    if not types:
        return None
    main = types[:2]  # a second type only when stated in its own right (mixed tumours)
    if len(main) == 2 and all(t.name in ("ductal carcinoma", "lobular carcinoma") for t in main):
        a, b = (t.name.split()[0] for t in main)
        return Finding("type", (f"invasive {a} and {b} carcinoma", f"{a} and {b} carcinoma"))
    first = _invasive(main[0].name)
    pct = f" ({main[0].share:g}%)" if main[0].share is not None else ""
    forms = []
    if len(main) == 2:
        other = main[1]
        # a pattern stated only as a minority share stays a component ("adenocarcinoma with mucinous component")
        second = f"{other.word} component" if other.count == 0 and (other.share or 0) < 50 else other.name
        second_pct = f" ({other.share:g}%)" if other.share is not None else ""
        forms += [f"{first}{pct} with {second}{second_pct}", f"{first} with {second}"]
    forms += [f"{first}{pct}", first, main[0].name]
    return Finding("type", tuple(dict.fromkeys(forms)))


# ---- grade ------------------------------------------------------------------------------------
_ROMAN = {"I": 1, "II": 2, "III": 3, "1": 1, "2": 2, "3": 3}
VAL = r"(?P<v>[1-3]|i{1,3}|il|li|ll)\b(?:\s*(?P<sep>-|/|of)\s*(?P<w>[1-3]|i{1,3})\b)?"
_SCALE_NOTE = re.compile(r"\((?:1[,.\s]+2[,.\s]+3|of\.?\s*(?:iii|3)|0-3[^)]*)\)", FLAGS)
_GRADE_WORD = re.compile(r"\bgrad(?:e|ing)\b", FLAGS)
_GRADE_VALUE = re.compile(rf"^\W{{0,5}}(?:grade\W*)?{VAL}", FLAGS)
_GRADE_WORDVALUE = re.compile(r"^\W{0,5}(?:\(?g?\d?\)?\W*)?(poor|moderate|well|high|intermediate|low)", FLAGS)
_SYSTEM = re.compile(r"nottingham|sbr|bloom|elston|scarff|histologic|overall|combined|\bnhg\b", FLAGS)
_NHG = re.compile(r"\bNHG\s?([1-3])\b|\bG\s?(I{1,3}|[1-3])\b(?=[\s,.;)])")
_SCORE = re.compile(r"(?:nottingham|total|overall)\W+(?:\w+\W+){0,2}?score\W{0,5}(?:-\W*)?([3-9])\b"
                    r"(?:\s*/\s*9)?(?!\s*/\s*[0-8])", FLAGS)
_SCORE_OF_3 = re.compile(r"^\W{0,5}(?:nottingham|histologic)\W+(?:\w+\W+)?score\W{0,3}([1-3])\s*/\s*3\b", FLAGS)  # "score 3/3"
_BARE_SYSTEM = re.compile(r"\b(?i:nottingham|sbr)[\s.,]+(I{1,3}|[1-3])\b(?!\s*[/+-])")  # "Nottingham I (of III)"
_SUM = re.compile(r"\(\s*([1-3])\s*\+\s*([1-3])\s*\+\s*([1-3])\s*(?:=\s*([3-9]))?\s*\)")
_DIFF = re.compile(r"\b(poorly|moderately|well|highly)[\s.-]+differentiated", FLAGS)
_WORD_GRADE = {"poor": 3, "poorly": 3, "high": 3, "moderate": 2, "moderately": 2, "intermediate": 2,
               "well": 1, "highly": 1, "low": 1}


def _roman(value: str) -> int | None:
    return _ROMAN.get(value.upper().replace("L", "I"))


def _score_grade(score: int) -> int:
    return 1 if score <= 5 else 2 if score <= 7 else 3  # Nottingham: 3-5, 6-7, 8-9 points


@dataclass(frozen=True)
class Grade:
    value: int
    system: bool        # stated as Nottingham/SBR/histologic grade (vs. only differentiation)
    differentiation: str | None
    components: tuple[int, int, int] | None  # tubules, pleomorphism, mitoses


def find_grade(text: str) -> Grade | None:
    """The tumour's histologic grade: explicit grading systems first, then scores, then wording."""
    text = _SCALE_NOTE.sub(" ", text)
    candidates: list[tuple[int, int, int, bool]] = []  # (rank, position, grade, system)
    for m in _GRADE_WORD.finditer(text):
        before = _clause_before(text, m.start(), 45)
        if re.search(r"nucle\w*\W*$", before, FLAGS) or _IN_SITU_NEAR.search(before):
            continue  # nuclear grade or the grade of an in-situ component
        after = text[m.end():m.end() + 45]
        system = bool(_SYSTEM.search(before))
        if v := _GRADE_VALUE.search(after):
            g, w = _roman(v["v"]), _roman(v["w"]) if v["w"] else None
            if g and w and v["sep"] == "-":
                g = max(g, w)  # "grade II-III": the higher one
            if g:
                candidates.append((0 if system else 1, m.start(), g, system))
        elif (v := _SCORE_OF_3.search(after)) and system:
            candidates.append((0, m.start(), int(v[1]), True))
        elif (v := _GRADE_WORDVALUE.search(after)) and system:
            candidates.append((1, m.start(), _WORD_GRADE[v[1].lower()], True))
    for m in _BARE_SYSTEM.finditer(text):
        candidates.append((0, m.start(), _roman(m[1]), True))
    for m in _NHG.finditer(text):
        candidates.append((1, m.start(), _roman(m[1] or m[2]), True))
    for m in _SCORE.finditer(text):
        candidates.append((1, m.start(), _score_grade(int(m[1])), True))
    for m in _SUM.finditer(text):
        candidates.append((2, m.start(), _score_grade(sum(int(x) for x in m.groups()[:3])), True))
    diff = next((m for m in _DIFF.finditer(text) if not _IN_SITU_AFTER.search(text[m.end():m.end() + 40])), None)
    if diff is not None:
        candidates.append((3, diff.start(), _WORD_GRADE[diff[1].lower()], False))
    components = find_components(text)
    if components:
        candidates.append((2, len(text), _score_grade(sum(components)), True))
    if not candidates:
        return None
    _, _, grade, system = min(candidates)
    return Grade(grade, system, f"{diff[1].lower()} differentiated" if diff else None, components)


_TUBULES = r"(?:tubul\w*|architectur\w*|glandular)(?:\W+(?:formation|score|differentiation|\(acinar\)))*"
_PLEO = r"(?:nuclear\W+pleomorphism|pleomorphism|nuclear\W+grade|nuclear\W+score|nuc\w*)"
_MITO = r"mito\w*(?:\W+(?:count|rate|activity|score|index|figures))?"
_COMPONENT = r"\W{{0,12}}(?:score\W*|grade\W*)?(?P<{}>[1-3])\b"
_COMPONENTS = re.compile(
    rf"{_TUBULES}{_COMPONENT.format('t')}(?:(?!tubul).){{0,120}}?{_PLEO}{_COMPONENT.format('p')}"
    rf"(?:(?!tubul).){{0,120}}?{_MITO}{_COMPONENT.format('m')}|"
    rf"{_PLEO}{_COMPONENT.format('p2')}(?:(?!nucle).){{0,80}}?{_TUBULES}{_COMPONENT.format('t2')}"
    rf"(?:(?!tubul).){{0,80}}?{_MITO}{_COMPONENT.format('m2')}",
    FLAGS | re.DOTALL)


def find_components(text: str) -> tuple[int, int, int] | None:
    """Nottingham components (tubule formation, nuclear pleomorphism, mitoses), 1-3 each."""
    m = _COMPONENTS.search(text)
    if m:
        t, p, mi = (m["t"], m["p"], m["m"]) if m["t"] else (m["t2"], m["p2"], m["m2"])
        return int(t), int(p), int(mi)
    if s := _SUM.search(text):
        return int(s[1]), int(s[2]), int(s[3])
    return None


def grade_finding(grade: Grade | None, breast: bool) -> Finding | None:
    if grade is None:
        return None
    name = f"Nottingham grade {grade.value}" if breast and grade.system else f"grade {grade.value}"
    if grade.differentiation and not grade.system:
        name = f"{grade.differentiation}, grade {grade.value}"
    forms = [name]
    if grade.components:
        t, p, m = grade.components
        forms.insert(0, f"{name} (tubules {t}, pleomorphism {p}, mitoses {m})")
    forms.append(f"grade {grade.value}")
    return Finding("grade", tuple(dict.fromkeys(forms)))


# ---- other findings visible in an H&E patch ---------------------------------------------------
# Words every mention of a status finding contains (lower case), checked before its pattern runs.
_STATUS_KEYS = {
    "dcis": ("situ", "dcis", "intraductal"), "lcis": ("situ", "lcis"), "lvi": ("vascular", "lymphatic", "lvi"),
    "necrosis": ("necros", "comedo"), "lymphocytes": ("lymph", "til"), "medullary": ("medullary", "syncytial"),
    "mucin": ("mucin",),
    "treatment": ("treatment", "therapy", "chemo", "radiation", "neoadjuvant", "burden", "bed", "regress"),
}


def _status_finding(text: str, pattern: re.Pattern, kind: str, present: tuple[str, ...],
                    absent: tuple[str, ...]) -> Finding | None:
    """Present if any mention is affirmed, absent if every stated mention is negated."""
    keys = _STATUS_KEYS.get(kind)
    if keys and not any(k in text.lower() for k in keys):
        return None  # a word every mention contains is absent: skip the (slow, look-behind) scan
    stated = []
    for m in pattern.finditer(text):
        if is_unknown(text, m.end()):
            continue
        stated.append(not is_negated(text, m.start(), m.end()))
    if not stated:
        return None
    return Finding(kind, present if any(stated) else absent)


_DCIS = re.compile(rf"{DUCT}\W+carc\w*\W+in[\s.-]*situ|\bDCIS\b|\bintraductal\W+(?:carc\w*|component)", FLAGS)
_LCIS = re.compile(r"\blobular\W+carc\w*\W+in[\s.-]*situ|\bLCIS\b", FLAGS)
_LVI = re.compile(r"(?<!dermal\W)(?<![-\w])(?:lympho[\s-]*vascular|lymph[\s-]*vascular|angio[\s-]*lymphatic|vascular|lymphatic)"
                  r"(?:\W+space)?\W+(?:invasion|involvement)|\bLVI\b", FLAGS)
_NECROSIS = re.compile(r"\bnecros[ie]s\b|\bcomedo\w*", FLAGS)
_LYMPHO = re.compile(r"\b(?:(?P<q>mild|moderate|marked|brisk|prominent|dense|sparse|focal)\W+)?"
                     r"(?:lymphocytic|lymphoid|lymphoplasmacytic)\W+(?:infiltrat\w*|reaction|response|stroma)|"
                     r"tumou?r[\s-]+infiltrating\W+lymphocytes|\bTILs?\b", FLAGS)


def lymphocyte_finding(text: str) -> Finding | None:
    found = _status_finding(text, _LYMPHO, "lymphocytes", ("lymphocytic infiltrate",), ("no lymphocytic infiltrate",))
    if found and found.forms[0] == "lymphocytic infiltrate":
        m = next((m for m in _LYMPHO.finditer(text) if m["q"]), None)
        if m is not None:
            return Finding("lymphocytes", (f"{m['q'].lower()} lymphocytic infiltrate", "lymphocytic infiltrate"))
    return found


# ---- specimens without a diagnosis (e.g. the built-in sample): tissue, stain, glands ---------
_MUCOSA = re.compile(r"\b(colonic|colon|gastric|small\W+bowel|rectal|duodenal|oesophageal|esophageal)\W+mucosa", FLAGS)
_H_ONLY = re.compile(r"\bha?ematoxylin[\s-]+only\b", FLAGS)
_IHC = re.compile(r"\bimmunohistochem\w*|\bIHC\b", FLAGS)
_DAB = re.compile(r"\bDAB\b", FLAGS)
_HE = re.compile(r"\bH\s?&\s?E\b|\bha?ematoxylin\W+and\W+eosin", FLAGS)
_GLANDS = re.compile(r"\bcrypts?\b|\bglands?\b", FLAGS)
_COLUMNAR = re.compile(r"\bcolumnar\W+epitheli\w*", FLAGS)


def tissue_finding(text: str) -> Finding | None:
    m = _MUCOSA.search(text)
    if not m:
        return None
    organ = m[1].lower().replace("colon", "colonic").replace("colonicic", "colonic")
    return Finding("tissue", (f"{organ} mucosa",))


def stain_finding(text: str) -> Finding | None:
    if _H_ONLY.search(text):
        return Finding("stain", ("haematoxylin only, no brown DAB", "haematoxylin only"))
    if _IHC.search(text):
        if _DAB.search(text):
            return Finding("stain", ("IHC with brown DAB and blue haematoxylin", "IHC, brown DAB", "IHC"))
        return Finding("stain", ("immunohistochemistry", "IHC"))
    if _HE.search(text):
        return Finding("stain", ("H&E stain",))
    return None


def gland_finding(text: str) -> Finding | None:
    if not _GLANDS.search(text):
        return None
    crypts = "crypts" if re.search(r"\bcrypts?\b", text, FLAGS) else "glands"
    if _COLUMNAR.search(text):
        return Finding("glands", (f"{crypts} lined by columnar epithelium", crypts))
    return Finding("glands", (crypts,))


# ---- visual qualifiers of the tumour (what the patch shows beyond its type) --------------------
_TREATMENT = re.compile(r"\b(?:treatment|therapy|chemotherapy|chemo|radiation)[\s-]+(?:related\W+)?(?:effects?|changes?|response)\b|"
                        r"\b(?:post|after)[\s-]*(?:neoadjuvant|chemo\w*|treatment)\b|\bresidual\W+cancer\W+burden|"
                        r"\btumou?r\W+bed\b|\bregressive\W+changes|\btumou?r\W+regression\W+grade", FLAGS)
_NEOADJUVANT = re.compile(r"\bneo[\s-]*adjuvant|\bpre[\s-]*operative\W+(?:chemo|therapy|treatment)", FLAGS)
_MEDULLARY = re.compile(r"\bmedullary(?:[\s-]+like)?\W+(?:features?|pattern|growth|type\W+features|differentiation)|"
                        r"\bsyncytial\W+growth", FLAGS)
_MUCIN = re.compile(r"\b(?:extracellular\W+)?mucin\W+(?:pools?|lakes?)\b|\bpools?\W+of\W+(?:extracellular\W+)?mucin|"
                    r"\bextracellular\W+mucin\b|\bmucinous\W+(?:component|features?|areas?|differentiation)", FLAGS)


def treatment_finding(text: str) -> Finding | None:
    found = _status_finding(text, _TREATMENT, "treatment", ("treatment effect",), ("no treatment effect",))
    if found and found.forms[0] == "treatment effect" and _NEOADJUVANT.search(text):
        return Finding("treatment", ("treatment effect after neoadjuvant therapy", "treatment effect"))
    return found


def qualifier_findings(text: str) -> list[Finding | None]:
    return [
        treatment_finding(text),
        _status_finding(text, _MEDULLARY, "medullary", ("medullary features",), ("no medullary features",)),
        _status_finding(text, _MUCIN, "mucin", ("extracellular mucin pools", "mucin pools"), ("no mucin pools",)),
    ]


# Grading systems named by organ; elsewhere a grade is "grade N" or the stated differentiation.
_BREAST = re.compile(r"\bbreast\b|\bmammary\b", FLAGS)


def find_findings(text: str) -> list[Finding]:
    """All findings, most important first (the order a budget keeps them in)."""
    types = type_mentions(text)
    breast = any(t.name in BREAST_TYPES for t in types) or bool(_BREAST.search(text))
    found = [
        type_finding(types),
        grade_finding(find_grade(text), breast),
        *qualifier_findings(text),
        _status_finding(text, _DCIS, "dcis", ("ductal carcinoma in situ present", "DCIS present", "DCIS"), ("no DCIS",)),
        _status_finding(text, _LVI, "lvi", ("lymphovascular invasion present", "LVI present"),
                        ("no lymphovascular invasion", "no LVI")),
        _status_finding(text, _NECROSIS, "necrosis", ("necrosis present", "necrosis"), ("no necrosis",)),
        lymphocyte_finding(text),
        _status_finding(text, _LCIS, "lcis", ("lobular carcinoma in situ present", "LCIS present", "LCIS"), ("no LCIS",)),
    ]
    if not types:  # no diagnosis: describe what the tissue shows, never a made-up tumour
        found = [tissue_finding(text), stain_finding(text), gland_finding(text)] + found[1:]
    return [f for f in found if f is not None]
