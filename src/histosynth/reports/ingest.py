"""Reports in (TCGA-Reports CSV, JSONL, or a folder of .txt files) -> `reports/reports.parquet`.

One row per case: the case id comes from a `patient_id` column, else from the TCGA barcode in
`patient_filename` (or the file name). Several reports of one case are joined. Each case gets its
split from the workspace, and reports are linked to the tile index when one exists (rerunning after
tiling links again): slide-level report ids link to that slide, sample-level ids to that sample's
slides, case ids to all of the case's slides.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import HistoSynthConfig
from ..console import HistosynthError, info, warn
from ..fileio import atomic_path, write_json
from ..manifest import recording
from ..slides.barcodes import case_id_of, parse_barcode
from ..workspace import Workspace
from .clean import clean_text

TEXT_COLUMNS = ("text", "report", "report_text")
ID_COLUMNS = ("patient_filename", "filename", "file", "id", "source_id")


def read_source(source: Path) -> list[dict]:
    """Rows of {source_id, case_id, text} from a CSV, a JSONL file or a folder of .txt files."""
    source = Path(source)
    if source.is_dir():
        files = sorted(source.glob("*.txt"))
        if not files:
            raise HistosynthError(f"{source}: no .txt reports in this folder")
        return [{"source_id": f.stem, "case_id": case_id_of(f.stem), "text": f.read_text(errors="replace")}
                for f in files]
    if not source.exists():
        raise HistosynthError(f"{source}: not found")
    if source.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        records = []
        for i, line in enumerate(source.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    raise HistosynthError(f"{source}:{i}: not a JSON object") from None
    else:
        import pandas as pd

        try:
            records = pd.read_csv(source, dtype=str, keep_default_na=False).to_dict("records")
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise HistosynthError(f"{source}: cannot read as CSV ({exc.__class__.__name__})") from None
    return [_row(source, i, r) for i, r in enumerate(records)]


def _row(source: Path, i: int, record: dict) -> dict:
    text_key = next((k for k in TEXT_COLUMNS if k in record), None)
    id_key = next((k for k in ID_COLUMNS if k in record), None)
    if text_key is None:
        raise HistosynthError(f"{source}: no report text column (expected one of {', '.join(TEXT_COLUMNS)})")
    source_id = str(record[id_key]) if id_key else str(record.get("patient_id", f"row-{i}"))
    case_id = str(record.get("patient_id") or "") or case_id_of(source_id)
    return {"source_id": source_id, "case_id": case_id, "text": str(record[text_key] or "")}


def read_tile_slides(ws: Workspace):
    """One row per tiled slide (slide_id, case_id, sample_type, slide_type), or None before tiling."""
    if not ws.tile_index_path.exists():
        return None
    import pandas as pd

    cols = ["slide_id", "case_id", "sample_type", "slide_type"]
    return pd.read_parquet(ws.tile_index_path, columns=cols).drop_duplicates("slide_id")


def link(source_id: str, case_id: str, slides) -> tuple[str, list[str]]:
    """(level, slide ids) for a report: 'slide', 'sample' or 'case' level, 'none' without slides."""
    if slides is None:
        return "none", []
    of_case = slides[slides.case_id == case_id]
    barcode = parse_barcode(source_id)
    if barcode is not None and barcode.case_id == case_id and barcode.sample_type:
        sample = of_case[of_case.sample_type.astype(str) == barcode.sample_type]
        if barcode.slide_type:
            tag = f"{barcode.sample_type}{barcode.vial or ''}-{barcode.portion}-{barcode.slide_type}{barcode.slide_number}"
            exact = sample[sample.slide_id.str.upper().str.contains(tag, regex=False)]
            if len(exact):
                return "slide", sorted(exact.slide_id)
        if len(sample):
            return "sample", sorted(sample.slide_id)
    return ("case", sorted(of_case.slide_id)) if len(of_case) else ("none", [])


def ingest_reports(ws: Workspace, cfg: HistoSynthConfig, source: Path) -> dict:
    """Read, clean, link and store the reports; returns a summary of what was linked."""
    import pandas as pd

    source = Path(source)
    with recording("reports", ws.reports_dir, config=cfg, seeds={"split": cfg.split.seed}) as manifest:
        manifest.add_input(source, "source")
        rows = read_source(source)
        if not rows:
            raise HistosynthError(f"{source}: no reports")
        by_case: dict[str, dict] = {}
        duplicates = 0
        for r in rows:  # several reports of one case are kept together, in source order
            case = by_case.setdefault(r["case_id"], {"case_id": r["case_id"], "source_ids": [], "texts": [], "raw": 0})
            text = clean_text(r["text"])
            if text and text in case["texts"]:  # the same report twice would double the case's text
                duplicates += 1
                continue
            case["source_ids"].append(r["source_id"])
            case["texts"].append(text)
            case["raw"] += len(r["text"])
        if duplicates:
            warn(f"{source}: dropped {duplicates} duplicate report row(s) (same case, identical text)")
        manifest.results["duplicates_dropped"] = duplicates
        split = ws.assign_split(list(by_case), cfg.split.test_fraction, cfg.split.seed)
        slides = read_tile_slides(ws)
        records = []
        for case_id, c in sorted(by_case.items()):
            level, linked = link(c["source_ids"][0], case_id, slides)
            text = "\n\n".join(t for t in c["texts"] if t)
            records.append({
                "case_id": case_id, "source_id": ";".join(c["source_ids"]), "text": text,
                "n_chars": len(text), "n_slides": len(linked), "split": split[case_id],
                "raw_chars": c["raw"], "n_reports": len(c["texts"]), "link_level": level, "slide_ids": linked,
            })
        table = pd.DataFrame.from_records(records)
        with atomic_path(ws.reports_path) as tmp:
            table.to_parquet(tmp, index=False)
        result = link_summary(table, slides)
        write_json(ws.report_links_path, result)
        manifest.results.update({k: v for k, v in result.items() if not isinstance(v, list)})
    empty = int((table.n_chars == 0).sum())
    if empty:
        warn(f"{empty} report(s) are empty after clean-up")
    info(f"reports: {len(table)} cases from {len(rows)} reports -> {ws.reports_path}")
    if slides is None:
        info("reports: no tile index yet; run `histosynth reports` again after `histosynth tile` to link slides")
    else:
        info(f"reports: {result['reports_with_slides']} linked; {len(result['reports_without_slides'])} without "
             f"slides; {len(result['slides_without_report'])} slide(s) without a report")
    return result


def link_summary(table, slides) -> dict:
    linked = set(s for ids in table.slide_ids for s in ids)
    return {
        "reports": int(len(table)),
        "tile_index": slides is not None,
        "reports_with_slides": int((table.n_slides > 0).sum()),
        "link_levels": {str(k): int(v) for k, v in table.link_level.value_counts().items()},
        "reports_without_slides": sorted(table.case_id[table.n_slides == 0]) if slides is not None else [],
        "slides_without_report": sorted(set(slides.slide_id) - linked) if slides is not None else [],
    }


def read_report_columns(ws: Workspace, columns: list[str]) -> dict[str, list]:
    """Columns of `reports.parquet` as lists, read with pyarrow alone (no pandas: light commands start fast)."""
    import pyarrow.parquet as pq

    path = ws.require(ws.reports_path, "reports SOURCE --workspace WS")
    return pq.ParquetFile(path).read(columns=columns).to_pydict()  # read_table would import pandas (via datasets)


def read_reports(ws: Workspace):
    import pandas as pd

    return pd.read_parquet(ws.require(ws.reports_path, "reports SOURCE --workspace WS"))
