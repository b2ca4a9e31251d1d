"""TCGA barcodes: TCGA-{TSS}-{participant}-{sample}{vial}-{portion}{analyte}-{plate}-{center}.

Slide file names carry a slide barcode such as `TCGA-A2-A0CM-01Z-00-DX1.<uuid>.svs`: sample type
01 (primary tumour; 11 = solid normal), portion 00, slide type DX (FFPE diagnostic; TS/BS = frozen
top/bottom section) and slide number 1. Reports name the case (`TCGA-A2-A0CM`). Linking goes
through the case id, the first three fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BARCODE = re.compile(
    r"(?P<case>TCGA-(?P<tss>[A-Z0-9]{2})-(?P<participant>[A-Z0-9]{4}))"
    r"(?:-(?P<sample>\d{2})(?P<vial>[A-Z])?"
    r"(?:-(?P<portion>\d{2})(?:(?P<analyte>[A-Z])|-(?P<slide_type>TS|BS|MS|DX)(?P<slide_number>[0-9A-Z]))?"
    r")?)?",
    re.IGNORECASE,
)

SAMPLE_TYPES = {
    "01": "primary solid tumour", "02": "recurrent solid tumour", "03": "primary blood-derived cancer",
    "05": "additional new primary", "06": "metastatic", "07": "additional metastatic",
    "10": "blood derived normal", "11": "solid tissue normal",
}
SLIDE_TYPES = {"DX": "diagnostic (FFPE)", "TS": "top section (frozen)", "BS": "bottom section (frozen)",
               "MS": "middle section (frozen)"}


@dataclass(frozen=True)
class TCGABarcode:
    case_id: str                    # TCGA-A2-A0CM
    tss: str                        # tissue source site
    participant: str
    sample_type: str | None = None  # "01", "11", ...
    vial: str | None = None
    portion: str | None = None
    slide_type: str | None = None   # "DX", "TS", "BS", "MS"
    slide_number: str | None = None

    @property
    def sample_id(self) -> str | None:
        return f"{self.case_id}-{self.sample_type}" if self.sample_type else None


def parse_barcode(text: str) -> TCGABarcode | None:
    """The first TCGA barcode in `text` (a file name, a report id), or None."""
    m = _BARCODE.search(text)
    if not m:
        return None
    g = {k: (v.upper() if v else None) for k, v in m.groupdict().items()}
    return TCGABarcode(
        case_id=g["case"],
        tss=g["tss"],
        participant=g["participant"],
        sample_type=g["sample"],
        vial=g["vial"],
        portion=g["portion"],
        slide_type=g["slide_type"],
        slide_number=g["slide_number"],
    )


def case_id_of(name: str) -> str:
    """The TCGA case id in `name`, else `name` itself (non-TCGA slides are their own case)."""
    barcode = parse_barcode(name)
    return barcode.case_id if barcode else name
