"""The real-data registry: served from a mirror on 127.0.0.1, checked by sha256, cached, and
refused when corrupted; without a mirror and network, real-data tests skip (CI=true: fail)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from histosynth import datasets
from histosynth.console import HistosynthError

CMU1 = datasets.CMU1


@pytest.fixture(scope="module")
def local_mirror(tmp_path_factory) -> Path:
    """A copy of part of the real mirror (the registry's files, as the mirror serves them)."""
    from conftest import shared_file

    out = tmp_path_factory.mktemp("mirror")
    for name in (CMU1, "reports/tcga_brca_reports_52_labels.csv"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_file(name), out / name)
    return out


@pytest.fixture
def server(local_mirror):
    """http.server on 127.0.0.1 in a thread, counting the requests it answers."""
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(Handler, directory=str(local_mirror)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", requests, local_mirror
    httpd.shutdown()
    thread.join()


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv(datasets.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(datasets.MIRROR_ENV, raising=False)
    monkeypatch.setattr(datasets, "_unreachable", None)
    return tmp_path / "cache"


@pytest.mark.unit
def test_registry_covers_the_real_data():
    reg = datasets.registry()
    assert reg[CMU1].sha256.startswith("ed92d5a9f2e8") and reg[CMU1].url.startswith("https://openslide.cs.cmu.edu/")
    kather = datasets.names("tiles/")
    assert len(kather) == 124 and all(reg[n].url.startswith("https://raw.githubusercontent.com/") for n in kather)
    assert {n for n in reg if reg[n].url is None} == {"reports/tcga_brca_reports_52.csv",
                                                      "reports/tcga_brca_reports_52_labels.csv"}
    # the tfds set sits flat upstream: the class folder (added when collected) is not in its URL
    tfds = next(n for n in kather if "tfds" in n)
    assert reg[tfds].url.endswith("/src/img/test_images/" + Path(tfds).name)


def test_download_check_and_cache_reuse(server, env, monkeypatch):
    url, requests, mirror = server
    monkeypatch.setenv(datasets.MIRROR_ENV, url)
    path = datasets.fetch(CMU1)
    assert path == env / CMU1 and hashlib.sha256(path.read_bytes()).hexdigest() == datasets.entry(CMU1).sha256
    assert requests == ["/" + CMU1]
    assert datasets.fetch(CMU1) == path and len(requests) == 1              # cached: no second download
    # the upstream URL, overridden to point at the local server, works the same without a mirror
    monkeypatch.delenv(datasets.MIRROR_ENV)
    shutil.rmtree(env)
    e = datasets.entry(CMU1)
    monkeypatch.setitem(datasets.registry(), CMU1, datasets.Entry(e.name, e.sha256, e.size, f"{url}/{CMU1}"))
    assert datasets.fetch(CMU1).is_file() and len(requests) == 2


def test_a_corrupted_file_is_refused(server, env, monkeypatch):
    url, requests, mirror = server
    monkeypatch.setenv(datasets.MIRROR_ENV, url)
    name = "reports/tcga_brca_reports_52_labels.csv"
    good = (mirror / name).read_bytes()
    try:
        (mirror / name).write_bytes(good.replace(b"ductal", b"lobular", 1))
        with pytest.raises(HistosynthError, match="checksum mismatch") as info:
            datasets.fetch(name)
        assert "\n" not in str(info.value) and not (env / name).exists()   # nothing kept
        # a local-folder mirror is checked too
        monkeypatch.setenv(datasets.MIRROR_ENV, str(mirror))
        with pytest.raises(HistosynthError, match="checksum mismatch"):
            datasets.fetch(name)
    finally:
        (mirror / name).write_bytes(good)
    assert datasets.fetch(name) == mirror / name


def test_without_mirror_or_network_tests_skip_naming_the_variable_and_ci_fails(tmp_path):
    test = tmp_path / "test_needs_data.py"
    test.write_text("from conftest import shared_file\n\n"
                    "def test_reports():\n    shared_file('reports/tcga_brca_reports_52.csv')\n")
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    env = {k: v for k, v in os.environ.items()
           if k not in (datasets.MIRROR_ENV, "HISTOSYNTH_SHARED_DATA", "CI")}
    env[datasets.CACHE_ENV] = str(tmp_path / "cache")
    run = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(test)]
    out = subprocess.run(run, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0 and "1 skipped" in out.stdout
    assert sum(datasets.MIRROR_ENV in line for line in out.stdout.splitlines() if "SKIPPED" in line) == 1
    out = subprocess.run(run, capture_output=True, text=True, env={**env, "CI": "true"}, cwd=tmp_path)
    assert out.returncode == 1 and "1 failed" in out.stdout and datasets.MIRROR_ENV in out.stdout


def test_write_registry_from_a_mirror(local_mirror, tmp_path):
    out = tmp_path / "registry.txt"
    assert datasets.write_registry(local_mirror, out) == 2
    lines = out.read_text().splitlines()[1:]
    assert lines[1].split()[2:] == [CMU1, datasets.UPSTREAM[CMU1]]
    assert lines[1].split()[0] == datasets.entry(CMU1).sha256
