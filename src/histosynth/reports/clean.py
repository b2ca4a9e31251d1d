"""Mild, fact-preserving clean-up of OCR'd reports: whitespace, broken hyphenation, repeated headers.

Nothing that could carry a finding is rewritten: misread letters ("DUCIAL") stay as they are (the
summarizers tolerate them), and only exact repeats of header-like lines or page markers are dropped.
"""

from __future__ import annotations

import re

_PAGE = re.compile(r"\bpage\s+\d+\s+of\s+\d+\b\.?", re.IGNORECASE)
_HYPHEN_BREAK = re.compile(r"(\b[a-z]{2,})-\s*\n\s*([a-z]{2,}\b)")     # "infil-\ntrating"
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def _is_header(line: str) -> bool:
    """Short, upper-case lines (institution names, 'SURGICAL PATHOLOGY REPORT') repeat per page."""
    letters = [c for c in line if c.isalpha()]
    return 0 < len(line) <= 80 and len(letters) >= 4 and all(c.isupper() for c in letters)


def clean_text(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "".join(c for c in text if c == "\n" or c.isprintable())
    text = _HYPHEN_BREAK.sub(r"\1\2", text)
    text = _PAGE.sub(" ", text)
    lines, seen_headers = [], set()
    for line in text.split("\n"):
        line = _SPACES.sub(" ", line).strip()
        if _is_header(line):
            if line in seen_headers:
                continue  # the same header again on the next page
            seen_headers.add(line)
        lines.append(line)
    text = "\n".join(lines)
    return _BLANK_LINES.sub("\n\n", text).strip()
