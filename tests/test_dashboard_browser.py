"""The ``perfcallback`` tab in a real TensorBoard, in headless Chromium, with no network.

Proves that TensorBoard loads our plugin from the entry point, that the tab draws the step-time
breakdown (one bar per window written) and the findings, and that the page asks nothing of any
host but the TensorBoard server: every request Chromium's network log records goes to 127.0.0.1
(or is a ``data:``/``blob:`` URL). Needs ``chromium`` and ``chromium-driver``; skips without them.
To refresh the screenshot in the docs:

    PERFCALLBACK_SCREENSHOTS=docs/img pytest tests/test_dashboard_browser.py
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_tensorboard_browser import CHROMEDRIVER, CHROMIUM, DEEP_TEXT, ROOT, WAIT_S, screenshot

from _helpers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
LOCAL = ("127.0.0.1", "localhost")

# The SVG bars of the breakdown chart, inside the plugin's iframe.
BARS = """
const frame = document.querySelector('iframe[src*="name=perfcallback"]')
  || [...document.querySelectorAll('*')].map((e) => e.shadowRoot).filter(Boolean)
       .map((r) => r.querySelector('iframe[src*="name=perfcallback"]')).find(Boolean);
if (!frame || !frame.contentDocument) return -1;
const svg = frame.contentDocument.querySelector('section svg.chart');
return svg ? svg.querySelectorAll('g.bar').length : -1;
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a dev dependency")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--hide-scrollbars",
                "--disable-dev-shm-usage", "--window-size=1280,1100",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-dash')}"):
        options.add_argument(arg)
    # Chromium's DevTools network events (Network.requestWillBeSent) for every frame of the page,
    # and the console, where a request that TensorBoard's CSP blocks before it is sent shows up.
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _demo(path: Path) -> None:
    spec = importlib.util.spec_from_file_location("tensorboard_demo",
                                                  ROOT / "examples" / "tensorboard_demo.py")
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    demo.write_demo_logdir(path, steps=150 if os.environ.get("PERFCALLBACK_SCREENSHOTS") else 60,
                           window_steps=10)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def tensorboard(tmp_path_factory: pytest.TempPathFactory, browser: Any) -> Iterator[str]:
    root = tmp_path_factory.mktemp("tb-dash")
    _demo(root / "runs" / "demo")
    url = f"http://127.0.0.1:{free_port()}"
    log = (root / "tensorboard.log").open("wb")
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", "runs", "--host", "127.0.0.1",
           "--port", url.rsplit(":", 1)[1]]
    proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + WAIT_S
        while True:  # up, and our plugin lists the run
            assert proc.poll() is None, (root / "tensorboard.log").read_text()[-3000:]
            with contextlib.suppress(OSError, ValueError):
                if _get_json(f"{url}/data/plugin/perfcallback/runs")["runs"]:
                    break
            assert time.monotonic() < deadline, "TensorBoard did not list the perfcallback run"
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def _wait_for(browser: Any, needles: tuple[str, ...]) -> str:
    deadline = time.monotonic() + WAIT_S
    while True:
        text = str(browser.execute_script(DEEP_TEXT))
        missing = [n for n in needles if n not in text]
        if not missing:
            return text
        if time.monotonic() > deadline:
            pytest.fail(f"not shown after {WAIT_S:.0f} s: {missing}")
        time.sleep(0.5)


def _requested_urls(browser: Any) -> list[str]:
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def _csp_violations(browser: Any) -> list[str]:
    return [e["message"] for e in browser.get_log("browser")
            if "Content Security Policy" in e["message"]]


def _is_local(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme in ("data", "blob") or (parts.scheme in ("http", "https", "ws")
                                                 and parts.hostname in LOCAL)


def test_tab_shows_breakdown_and_findings_offline(browser: Any, tensorboard: str) -> None:
    view = _get_json(f"{tensorboard}/data/plugin/perfcallback/run?run=demo")
    assert view["breakdown"]["steps"], "the demo wrote windows"
    browser.get_log("performance")  # drop anything logged before this page
    browser.get_log("browser")
    browser.get("about:blank")
    browser.get(f"{tensorboard}/#perfcallback")
    _wait_for(browser, ("Step-time breakdown", "Recommendations over the run",
                        "dataloader.stall", "num_workers"))
    deadline = time.monotonic() + WAIT_S
    while browser.execute_script(BARS) != len(view["breakdown"]["steps"]):
        assert time.monotonic() < deadline, f"bars: {browser.execute_script(BARS)}"
        time.sleep(0.5)
    if os.environ.get("PERFCALLBACK_SCREENSHOTS"):
        time.sleep(2.0)
    screenshot(browser, "dashboard.png")

    urls = _requested_urls(browser)
    ours = [u for u in urls if "/data/plugin/perfcallback/" in u]
    # The log is not vacuous: it saw the plugin's module, its assets and its data requests.
    for part in ("index.js", "charts.js", "style.css", "/runs", "/run?run=demo"):
        assert any(part in u for u in ours), (part, ours)
    outside = [u for u in urls if not _is_local(u)]
    assert outside == [], f"requests that leave the machine: {outside}"
    assert _csp_violations(browser) == []  # nor any that were tried and blocked


def test_traces_tab_analyses_the_capture(browser: Any, tensorboard: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get("about:blank")
    browser.get(f"{tensorboard}/#perfcallback")
    _wait_for(browser, ("Step-time breakdown",))
    frame = browser.execute_script(
        "return [...document.querySelectorAll('*')].map((e) => e.shadowRoot).filter(Boolean)"
        ".map((r) => r.querySelector('iframe')).find(Boolean) || document.querySelector('iframe')")
    browser.switch_to.frame(frame)
    try:
        browser.find_element(By.CSS_SELECTOR, 'button[data-view="traces"]').click()
        deadline = time.monotonic() + WAIT_S
        while not browser.find_elements(By.CSS_SELECTOR, "a.download"):
            assert time.monotonic() < deadline, "no download link"
            time.sleep(0.5)
        text = browser.find_element(By.ID, "perfcallback").text
        assert "Per step" in text and "Profiler captures" in text
        assert "Top operators" in text and "aten::" in text  # the demo's CPU operators
        link = browser.find_element(By.CSS_SELECTOR, "a.download").get_attribute("href")
        assert _is_local(link) and link.endswith(".pt.trace.json.gz")
    finally:
        browser.switch_to.default_content()
    assert [u for u in _requested_urls(browser) if not _is_local(u)] == []
