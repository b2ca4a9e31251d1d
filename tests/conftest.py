"""Shared test fixtures: the built-in sample, the real data in ../shared/data, thread limits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Real data comes through the registry (histosynth.datasets); HISTOSYNTH_SHARED_DATA is the older
# name of the mirror variable, still honoured.
if "HISTOSYNTH_SHARED_DATA" in os.environ:
    os.environ.setdefault("HISTOSYNTH_DATA_MIRROR", os.environ["HISTOSYNTH_SHARED_DATA"])

# Two cores: one torch thread per test process unless asked otherwise, and offline model loading.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config):
    try:
        import torch

        torch.set_num_threads(int(os.environ.get("HISTOSYNTH_TEST_THREADS", "2")))
    except ImportError:
        pass


def shared_file(relative: str) -> Path:
    """A real-data file or folder (a path in ../shared/data's layout), through the data registry
    (histosynth.datasets: HISTOSYNTH_DATA_MIRROR, the cache, or the upstream URL; sha256 checked).
    Unavailable: skip with one line naming the variable; under CI=true fail (CI must have it)."""
    from histosynth import datasets

    try:
        return datasets.fetch(relative) if relative in datasets.registry() else datasets.fetch_folder(relative)
    except datasets.DataUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{exc} (CI=true: real data must be there)")
        pytest.skip(f"real data unavailable: {exc}")


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """The built-in sample (3 pseudo-slides + reports.csv), made once per test session."""
    from histosynth.sample_data import make_sample

    out = tmp_path_factory.mktemp("sample")
    make_sample(out)
    return out


@pytest.fixture
def real_slide() -> Path:
    return shared_file("slides/CMU-1-Small-Region.svs")


@pytest.fixture
def real_reports() -> Path:
    return shared_file("reports/tcga_brca_reports_52.csv")


@pytest.fixture
def real_labels() -> Path:
    return shared_file("reports/tcga_brca_reports_52_labels.csv")


# ---- test tiers -----------------------------------------------------------------------------------
# `make test-fast` runs `-m unit`: whole files listed here plus tests marked `@pytest.mark.unit` in
# the slower files, so every test file keeps at least one test in the fast tier (checked below).
# test_descriptors.py, test_reports_summaries.py and test_slides_descriptors.py are not whole files here:
# their real-data fixtures (Kather medians, every budget on the 52 labelled reports, a real-slide workspace)
# cost seconds each; their fast tests carry the mark instead.
UNIT_FILES = {
    "test_architecture.py", "test_migration.py", "test_core.py", "test_foundation.py", "test_text.py",
    "test_reports.py", "test_summarize_extractive.py", "test_redact.py", "test_cross_cancer.py",
    "test_features.py", "test_slides.py", "test_slides_dataset.py", "test_experiments.py",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in UNIT_FILES:
            item.add_marker(pytest.mark.unit)
    if config.getoption("markexpr", "") == "unit" and not config.getoption("keyword", ""):
        files = {item.path.name for item in items}
        fast = {item.path.name for item in items if item.get_closest_marker("unit")}
        missing = sorted(files - fast)
        if missing:
            raise pytest.UsageError("the unit tier has no test from " + ", ".join(missing))
