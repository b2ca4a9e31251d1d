"""`histosynth serve`: the app on a tiny trained run, driven in a real browser (Debian's chromium)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import pytest

from histosynth.console import HistosynthError
from histosynth.imageio import png_metadata
from histosynth.workspace import Workspace

pytest.importorskip("gradio", reason="the [app] extra is not installed (pip install -e .[app])")

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SCREENSHOT = ROOT / "docs" / "images" / "serve-generate.png"
# As the demo test: a handful of steps everywhere, to check the wiring, not the model.
SMOKE = ("slides.size=32", "vae.steps=10", "train.steps=6", "train.checkpoint_every=6",
         "train.validation_images=0", "sample.steps=4")
LOCAL_HOSTS = {"127.0.0.1"}


def histosynth(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "histosynth.cli", *args], env=env or os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """The demo's workspace and tiny trained run on the built-in sample (about 20 s on 2 cores)."""
    from histosynth.experiments.demo import RUN_NAME, run_demo

    out = tmp_path_factory.mktemp("serve")
    run_demo(out, overrides=SMOKE)
    ws = out / "workspace"
    run = ws / "runs" / RUN_NAME
    shutil.copytree(out / "eval", run / "eval")   # the demo's evaluation of this run, for the Run tab
    return ws, run


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    """`histosynth serve` in a subprocess on a free port; a symlink in the workspace points outside."""
    ws, run = trained
    outside = tmp_path_factory.mktemp("outside") / "secret.txt"
    outside.write_text("not for the web")
    (ws / "tiles" / "leak.txt").symlink_to(outside)
    port = free_port()
    log = (tmp_path_factory.mktemp("log") / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "histosynth.cli", "serve", "--run", str(run), "--workspace",
                             str(ws), "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"serve exited {proc.returncode}: {Path(log.name).read_text()[-2000:]}")
        try:
            if http_status(url) == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("serve did not answer within 120 s")
    yield url, ws, run, outside
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_workspace_internals_and_outside_links_are_refused(server):
    url, ws, run, outside = server
    for path in (ws / "summaries" / "cache.sqlite", ws / "histosynth.yaml", run / "histosynth.yaml",
                 ws / "reports" / "reports.parquet", ws / "tiles" / "leak.txt", outside):
        assert path.exists()
        assert http_status(f"{url}gradio_api/file={path}") == 403, path
    # The server fetches no remote URL on the page's behalf (gradio would stream it).
    assert http_status(f"{url}gradio_api/file=https://example.org/x.png") == 403


@pytest.mark.unit
def test_non_loopback_host_without_credentials_refuses_to_start(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HISTOSYNTH_APP_")}
    proc = histosynth("serve", "--run", str(tmp_path), "--host", "0.0.0.0", "--port", str(free_port()), env=env)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "HISTOSYNTH_APP_USER" in lines[0] and "0.0.0.0" in lines[0], err


@pytest.mark.unit
def test_guard_refuses_internals_links_and_remote_urls_but_not_the_app_cache(tmp_path, monkeypatch):
    from histosynth.serve.records import Refusal
    from histosynth.serve.server import login

    ws, cache, outside = tmp_path / "ws", tmp_path / "gradio-cache", tmp_path / "outside.txt"
    (ws / "summaries").mkdir(parents=True)
    cache.mkdir()
    outside.write_text("x")
    (ws / "summaries" / "cache.sqlite").write_text("x")
    (cache / "link.png").symlink_to(outside)
    (cache / "image.png").write_text("x")
    guard = Refusal([ws])
    assert "private" in guard.reason(str(ws / "summaries" / "cache.sqlite"))
    assert guard.reason(str(tmp_path / "elsewhere" / "histosynth.yaml"))      # private wherever it lies
    assert guard.reason(str(ws / "tiles" / "x.png"))                           # inside the workspace
    assert "symlink" in guard.reason(str(cache / "link.png"))
    assert "remote" in guard.reason("https://example.org/a.png")
    assert guard.reason(str(cache / "image.png")) is None                      # gradio's own checks decide
    monkeypatch.setenv("HISTOSYNTH_APP_USER", "pathologist")
    monkeypatch.setenv("HISTOSYNTH_APP_PASSWORD", "s3cret")
    assert login("0.0.0.0") == ("pathologist", "s3cret") and login("127.0.0.1") is None and login("::1") is None


@pytest.mark.unit
def test_prompt_builder_fills_the_run_template():
    from histosynth.runfolder import Condition as TextSettings
    from histosynth.serve.backend import build_prompt

    settings = TextSettings(encoder="clip", context_length=77, template="{tumor} tumor; {til} til; {summary}",
                            levels=("low", "medium", "high"))
    text = build_prompt(settings, "invasive ductal carcinoma", "grade 3", {"tumor": "high", "til": "medium"})
    assert text == "high tumor; medium til; invasive ductal carcinoma, grade 3."
    # Patch descriptors take their own bins; a word outside them is refused, not passed on.
    settings = TextSettings(encoder="clip", context_length=77, template="{tumor} tumor; {density} nuclei; {summary}",
                            descriptor_edges={"density": [0.0, 0.5, 1.0]}, descriptor_levels=("sparse", "dense"))
    text = build_prompt(settings, "invasive lobular carcinoma", "", {"tumor": "low", "density": "dense"}, "no DCIS")
    assert text == "low tumor; dense nuclei; invasive lobular carcinoma. no DCIS"
    with pytest.raises(HistosynthError, match="density"):
        build_prompt(settings, "x", "", {"density": "high"})


# ---- the browser test -------------------------------------------------------------------------
def chrome(download_dir: Path, profile: Path):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium")
    if missing:
        reason = f"browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    return driver


def requested_hosts(driver) -> set[str]:
    """Hosts of every http(s)/ws(s) request the page made (chrome://, data: and blob: are local)."""
    hosts = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        url = params.get("request", {}).get("url") or params.get("url")
        if message["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated") and url:
            parsed = urlparse(url)
            if parsed.scheme in ("http", "https", "ws", "wss"):
                hosts.add(parsed.hostname)
    return hosts


def shoot_other_tabs(driver, wait, ws: Path) -> None:
    """Browse: pick the first real tile, its report and summary appear; Run: metrics and loss curve."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    driver.set_window_size(1400, 1100)
    driver.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Browse')]").click()
    first = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "#hs-tiles .thumbnail-item")))
    tile_id, case_id, _ = first.text.split(" · ")  # the thumbnail's caption: tile id, case, split
    first.click()
    # The picked tile's own case, and that case's report as the workspace's reports table holds it.
    wait.until(EC.text_to_be_present_in_element((By.ID, "hs-tile-info"), f"Tile {tile_id} · case {case_id}"))
    reports = pd.read_parquet(Workspace(ws).reports_path).set_index("case_id")["text"]
    assert driver.find_element(By.CSS_SELECTOR, "#hs-report textarea").get_attribute("value") == reports[case_id]
    driver.save_screenshot(str(SCREENSHOT.with_name("serve-browse.png")))
    driver.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Run')]").click()
    wait.until(EC.text_to_be_present_in_element((By.TAG_NAME, "body"), "eval/eval.json"))
    time.sleep(1)
    driver.save_screenshot(str(SCREENSHOT.with_name("serve-run.png")))


def test_generate_in_a_real_browser(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    url, ws, run, _ = server
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = chrome(downloads, tmp_path / "profile")
    try:
        wait = WebDriverWait(driver, 120)
        driver.get(url)
        box = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "#hs-prompt textarea")))
        # Over the run's token limit: refused with the count, nothing generated.
        box.send_keys("crypts lined by columnar epithelium " * 8)
        wait.until(EC.text_to_be_present_in_element((By.ID, "hs-token-count"), "over the limit"))
        driver.find_element(By.ID, "hs-generate").click()
        wait.until(EC.text_to_be_present_in_element((By.TAG_NAME, "body"), "nothing was generated"))
        assert not driver.find_elements(By.CSS_SELECTOR, "#hs-grid img")
        for close in driver.find_elements(By.CSS_SELECTOR, ".toast-close"):
            close.click()

        prompt = "Colonic mucosa; IHC with brown DAB and blue haematoxylin; crypts lined by columnar epithelium."
        box.clear()
        box.send_keys(prompt)
        wait.until(EC.text_to_be_present_in_element((By.ID, "hs-token-count"), "fits"))
        driver.find_element(By.ID, "hs-generate").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#hs-grid img")) == 4)
        button = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "#hs-download-0")))
        assert "NEAR-COPY" in driver.page_source or "Not a near-copy" in driver.page_source

        button.click()
        deadline = time.time() + 30
        while time.time() < deadline and not list(downloads.glob("*.png")):
            time.sleep(0.2)
        pngs = list(downloads.glob("*.png"))
        assert len(pngs) == 1, list(downloads.iterdir())
        meta = png_metadata(pngs[0])
        assert meta["synthetic"] == "true" and meta["prompt"] == prompt and meta["seed"] == "0"
        assert meta["run"] == run.name and meta["checkpoint_hash"] and meta["sampler"] == "ddim"

        driver.execute_script("window.scrollTo(0, 0)")
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, min(max(height, 1000), 2400))
        time.sleep(1)
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOT))
        shoot_other_tabs(driver, wait, ws)

        hosts = requested_hosts(driver)
        assert hosts and hosts <= LOCAL_HOSTS, f"the page requested {hosts - LOCAL_HOSTS}"
    finally:
        driver.quit()
