"""A real TensorBoard in headless Chromium shows our ``perf/`` scalars, the recommendations table and
the captured trace in the PyTorch Profiler tab.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and
selenium; skips with the reason when Chromium is missing. To refresh the README screenshots:

    PERFCALLBACK_SCREENSHOTS=docs/img pytest tests/test_tensorboard_browser.py
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
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

from _helpers import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))),
                None)
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOTS = os.environ.get("PERFCALLBACK_SCREENSHOTS")
SCALAR_TAGS = ("perf/step_ms", "perf/phase/data_ms", "perf/data_wait_pct",
               "perf/throughput/samples_per_s", "perf/memory/host_rss_mb")
WAIT_S = 60.0

# All text in the page, through shadow roots (Polymer dashboards) and same-origin iframes (the
# PyTorch Profiler plugin), skipping scripts and styles.
DEEP_TEXT = """
const out = [];
function walk(root) {
  for (const el of root.querySelectorAll('*')) {
    if (el.shadowRoot) walk(el.shadowRoot);
    if (el.tagName === 'IFRAME') { try { if (el.contentDocument) walk(el.contentDocument); }
                                   catch (e) {} }
    if (el.tagName === 'SCRIPT' || el.tagName === 'STYLE') continue;
    for (const c of el.childNodes)
      if (c.nodeType === 3 && c.textContent.trim()) out.push(c.textContent.trim());
  }
}
walk(document);
return out.join('\\n');
"""


def _demo_logdir(path: Path) -> Path:
    spec = importlib.util.spec_from_file_location("tensorboard_demo",
                                                  ROOT / "examples" / "tensorboard_demo.py")
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    steps = 300 if SCREENSHOTS else 60  # the README pictures want the whole story
    demo.write_demo_logdir(path, steps=steps, window_steps=20 if SCREENSHOTS else 10)
    return path


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


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
                "--disable-dev-shm-usage", "--window-size=1280,900",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    # An explicit driver path: Selenium Manager would otherwise try to download one.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def tensorboard(tmp_path_factory: pytest.TempPathFactory, browser: Any) -> Iterator[str]:
    """``tensorboard --logdir`` on a free port of 127.0.0.1, with the demo's logdir; its URL."""
    root = tmp_path_factory.mktemp("tensorboard")
    logdir = _demo_logdir(root / "runs" / "tb_demo")
    runs = sorted(p.parent.relative_to(logdir).as_posix()
                  for p in logdir.rglob("*.pt.trace.json.gz"))
    assert runs, "the demo wrote no profiler trace"
    url = f"http://127.0.0.1:{free_port()}"
    log = (root / "tensorboard.log").open("wb")
    # A relative logdir, as a user types it: TensorBoard shows it in its run list.
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", "runs/tb_demo",
           "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]]
    # Own session: the profiler plugin starts helper processes; they go with the group.
    proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + WAIT_S
        while True:  # up, and the profiler plugin has loaded every run (it scans every 10 s)
            assert proc.poll() is None, (root / "tensorboard.log").read_text()[-3000:]
            with contextlib.suppress(OSError, ValueError):
                listing = _get_json(f"{url}/data/plugin/pytorch_profiler/runs")
                if sorted(listing["runs"]) == runs and not listing["loading"]:
                    break
            assert time.monotonic() < deadline, "TensorBoard did not list the profiler runs"
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


def show(browser: Any, url: str, needles: tuple[str, ...]) -> str:
    """Open ``url`` and wait until the page shows every string in ``needles``; the page text."""
    browser.get("about:blank")  # a fresh document: TensorBoard keeps old dashboards in the DOM
    browser.get(url)
    deadline = time.monotonic() + WAIT_S
    while True:
        text = browser.execute_script(DEEP_TEXT)
        missing = [n for n in needles if n not in text]
        if not missing:
            if SCREENSHOTS:
                time.sleep(2.0)  # let the charts finish drawing
            return str(text)
        if time.monotonic() > deadline:
            pytest.fail(f"not shown after {WAIT_S:.0f} s at {url}: {missing}")
        time.sleep(0.5)


def screenshot(browser: Any, name: str) -> None:
    """Save a README picture (only when PERFCALLBACK_SCREENSHOTS names a folder); < 300 KB."""
    if not SCREENSHOTS:
        return
    path = Path(SCREENSHOTS) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(path))
    with contextlib.suppress(ImportError):  # a palette PNG is a third of the size
        from PIL import Image

        Image.open(path).convert("RGB").quantize(colors=128).save(path, optimize=True)
    assert path.stat().st_size < 300_000, path


def test_scalars_dashboard_shows_the_perf_tags(browser: Any, tensorboard: str) -> None:
    # A tag filter: the dashboard pages its cards, and our tags span more than one page.
    tags = "|".join(t.removeprefix("perf/") for t in SCALAR_TAGS)
    show(browser, f"{tensorboard}/#scalars&tagFilter={urllib.parse.quote(f'perf/({tags})$')}",
         SCALAR_TAGS)
    story = "perf/(step_ms|phase/data_ms|data_wait_pct|recommendations/dataloader)$"
    show(browser, f"{tensorboard}/#scalars&_smoothingWeight=0&tagFilter="
         f"{urllib.parse.quote(story)}", ("perf/step_ms", "perf/phase/data_ms"))
    screenshot(browser, "tensorboard_scalars.png")


def test_text_tab_shows_the_recommendations_table(browser: Any, tensorboard: str) -> None:
    show(browser, f"{tensorboard}/#text&tagFilter=recommendations",
         ("perf/recommendations/text_summary", "est. gain"))
    screenshot(browser, "tensorboard_text.png")


def test_pytorch_profiler_tab_lists_our_run(browser: Any, tensorboard: str) -> None:
    listing = _get_json(f"{tensorboard}/data/plugin/pytorch_profiler/runs")
    first = sorted(listing["runs"])[0]
    assert first.startswith("profiler/step") and first.endswith("-scheduled")
    worker = _get_json(f"{tensorboard}/data/plugin/pytorch_profiler/workers?run="
                       f"{urllib.parse.quote(first)}&view=Overview")
    assert worker
    # the worker list fills in after the run and view lists: wait for it too (a loaded CI host
    # showed the page between the two)
    show(browser, f"{tensorboard}/#pytorch_profiler", (first, "Overview", "Workers", worker[0]))
