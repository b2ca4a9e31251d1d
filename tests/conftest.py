"""Shared test fixtures: the built-in sample, the real data in ../shared/data, thread limits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HISTOSYNTH_SHARED_DATA", ROOT.parent / "shared" / "data"))

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
    """A file of ../shared/data; skip when absent, but fail under CI=true (CI must have it)."""
    path = SHARED_DATA / relative
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing under CI=true")
        pytest.skip(f"{path} not found (real sample data lives in ../shared/data)")
    return path


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
