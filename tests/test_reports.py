"""Report ingestion: sources, clean-up, TCGA barcode linking, splits."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from histosynth.reports.clean import clean_text
from histosynth.reports.ingest import ingest_reports, read_reports
from histosynth.workspace import Workspace


def test_clean_text_is_mild():
    raw = ("ACME HOSPITAL PATHOLOGY\nInvasive ductal carci-\nnoma,  grade   2.\nPage 1 of 2\n"
           "ACME HOSPITAL PATHOLOGY\nDCIS present.\r\n\n\n\nER positive.")
    out = clean_text(raw)
    assert out == "ACME HOSPITAL PATHOLOGY\nInvasive ductal carcinoma, grade 2.\n\nDCIS present.\n\nER positive."
    assert clean_text("INFILTRATING DUCTAL. CARCINOMA, NOTTINGHAM GRADE 3") == "INFILTRATING DUCTAL. CARCINOMA, NOTTINGHAM GRADE 3"


def test_ingest_real_csv(tmp_path, real_reports):
    ws = Workspace(tmp_path / "ws")
    cfg = ws.ensure_config()
    result = ingest_reports(ws, cfg, real_reports)
    table = read_reports(ws)
    assert result["reports"] == 52 and not result["tile_index"]
    assert list(table.columns[:6]) == ["case_id", "source_id", "text", "n_chars", "n_slides", "split"]
    assert table.case_id.is_unique and table.case_id.str.fullmatch(r"TCGA-\w\w-\w{4}").all()
    assert set(table.split) == {"train", "test"} and ws.split() == dict(zip(table.case_id, table.split))
    assert (table.n_slides == 0).all() and (table.n_chars > 100).all()
    assert json.loads((ws.reports_dir / "manifest.json").read_text())["status"] == "ok"


def test_jsonl_folder_and_linking(tmp_path, sample_dir):
    sample = pd.read_csv(sample_dir / "reports.csv")
    folder = tmp_path / "txt"
    folder.mkdir()
    for case, text in zip(sample.patient_id, sample.text):
        (folder / f"{case}.txt").write_text(text)
    (folder / "TCGA-ZZ-0009-11A-01-TS1.txt").write_text("Normal breast tissue.")  # a slide-level report id
    jsonl = tmp_path / "reports.jsonl"
    jsonl.write_text("".join(json.dumps({"patient_filename": p, "text": t}) + "\n"
                             for p, t in zip(sample.patient_filename, sample.text)))

    ws = Workspace(tmp_path / "ws")
    cfg = ws.ensure_config()
    assert ingest_reports(ws, cfg, jsonl)["reports"] == 3
    # a tile index appears (tiling ran): re-running links again, at case, sample and slide level
    index = pd.DataFrame({
        "slide_id": ["TCGA-HS-0001-01Z-00-DX1", "TCGA-HS-0002-01Z-00-DX1", "TCGA-ZZ-0009-11A-01-TS1",
                     "TCGA-ZZ-0009-01A-01-TS1", "TCGA-QQ-0001-01Z-00-DX1"],
        "case_id": ["TCGA-HS-0001", "TCGA-HS-0002", "TCGA-ZZ-0009", "TCGA-ZZ-0009", "TCGA-QQ-0001"],
        "sample_type": ["01", "01", "11", "01", "01"], "slide_type": ["DX", "DX", "TS", "TS", "DX"],
    })
    ws.tile_index_path.parent.mkdir(parents=True)
    index.to_parquet(ws.tile_index_path)
    result = ingest_reports(ws, cfg, folder)
    table = read_reports(ws).set_index("case_id")
    assert result["reports_without_slides"] == ["TCGA-HS-0003"]
    # the slide-level report covers its own slide only, not the same case's tumour slide
    assert result["slides_without_report"] == ["TCGA-QQ-0001-01Z-00-DX1", "TCGA-ZZ-0009-01A-01-TS1"]
    assert table.loc["TCGA-HS-0001", "link_level"] == "case" and table.loc["TCGA-HS-0001", "n_slides"] == 1
    assert table.loc["TCGA-ZZ-0009", "link_level"] == "slide"
    assert list(table.loc["TCGA-ZZ-0009", "slide_ids"]) == ["TCGA-ZZ-0009-11A-01-TS1"]
    # splits are assigned once: the cases seen in the first run keep theirs
    assert all(ws.split()[c] == s for c, s in table.split.items())


def test_bad_source(tmp_path):
    from histosynth.console import HistosynthError

    ws = Workspace(tmp_path / "ws")
    bad = tmp_path / "bad.csv"
    bad.write_text("patient_filename,notes\nTCGA-AA-0001,x\n")
    with pytest.raises(HistosynthError, match="no report text column"):
        ingest_reports(ws, ws.ensure_config(), bad)
