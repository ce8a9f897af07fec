"""End to end in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, through Selenium).

The server runs in this process on a free loopback port; the test loads the page, chooses an image, moves
the α slider and checks that the Finer-CAM image changes, switches the comparison to the siblings, labels a
support by uploading its label map, propagates to a small folder and sees the results. Screenshots go to the
test's tmp folder (``pytest --basetemp=...`` keeps them). It also checks the page asked nothing of any
host but the app's own. Skips with the reason when Chromium, its driver or Selenium is missing.
"""

from __future__ import annotations

import json
import shutil
import socket
import time

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if CHROMIUM is None or DRIVER is None:
    pytest.skip("no Chromium: apt-get install chromium chromium-driver (Debian/Ubuntu) to run the browser test",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (the dev extras)")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what, predicate, timeout: float = 60.0):
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            value = predicate()
        except Exception:  # noqa: BLE001 - elements come and go while the page updates
            value = None
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture()
def server(vit_run, collection, tmp_path):
    from traitlens.app import create_session, launch_options
    from traitlens.app import build_app

    session = create_session(vit_run, collection / "test", project=tmp_path / "project", work=tmp_path / "work")
    session.project.options["work_size"] = 32
    app = build_app(None, None, session=session)
    app.queue(default_concurrency_limit=4)
    port = _free_port()
    app.launch(prevent_thread_lock=True, **launch_options("127.0.0.1", port))
    try:
        yield f"http://127.0.0.1:{port}/", session
    finally:
        app.close()


@pytest.fixture()
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1100"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _src(driver, element_id):
    imgs = driver.find_elements(By.CSS_SELECTOR, f"#{element_id} img")
    return imgs[0].get_attribute("src") if imgs else None


def test_explain_slider_comparison_and_propagation(server, browser, tmp_path):
    url, session = server
    d = browser
    shots = tmp_path / "screenshots"
    shots.mkdir()
    d.get(url)
    thumbs = _wait("the thumbnail grid", lambda: d.find_elements(By.CSS_SELECTOR, "#tl-grid .thumbnail-item"))
    assert len(thumbs) == len(session.collection)
    d.save_screenshot(str(shots / "0-loaded.png"))

    # Choose an image: the base CAM, Finer-CAM and top-5 appear.
    thumbs[0].click()
    first = _wait("the Finer-CAM map", lambda: _src(d, "tl-finer-map"))
    assert _src(d, "tl-base-map")
    sid = session.collection_ids()[0]
    _wait("the caption", lambda: sid in d.find_element(By.ID, "tl-info").text)
    assert "α = 1.00" in d.find_element(By.ID, "tl-info").text
    assert len(d.find_elements(By.CSS_SELECTOR, "#tl-top5 .label, #tl-top5 [data-testid='label-output-value'], "
                                                "#tl-top5 dd, #tl-top5 button")) > 0 or d.find_element(By.ID, "tl-top5").text

    # Move the α slider: a new map, drawn from the kept gradients.
    box = d.find_element(By.CSS_SELECTOR, "#tl-alpha input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("0.3", Keys.ENTER)
    second = _wait("the map to change after α moved", lambda: (s := _src(d, "tl-finer-map")) != first and s)
    assert second != first
    _wait("the caption at α = 0.30", lambda: "α = 0.30" in d.find_element(By.ID, "tl-info").text)
    d.save_screenshot(str(shots / "1-explain.png"))

    # Switch the comparison to the siblings of the explained class: the caption names them.
    view = session.view({"id": sid}, comparison="siblings (same genus)")
    siblings = session.explorer.names(view.cache.references)
    assert siblings
    d.find_element(By.CSS_SELECTOR, "#tl-comparison label[data-testid='siblings (same genus)-radio-label']").click()
    _wait("the siblings in the caption",
          lambda: ("against " + ", ".join(siblings)) in d.find_element(By.ID, "tl-info").text)
    _wait("the map after the comparison changed", lambda: (s := _src(d, "tl-finer-map")) not in (second, None) and s)

    # Segment: a support from the collection, its label map uploaded, propagated to the folder.
    d.find_element(By.ID, "tab-segment-button").click()
    support = session.collection_ids()[1]
    box = _wait("the support picker", lambda: d.find_element(By.CSS_SELECTOR, "#tl-support input"))
    box.click()
    box.send_keys(support)
    time.sleep(0.5)
    box.send_keys(Keys.ENTER)
    _wait("the support in the editor", lambda: f"Paint the parts of {support}" in
          d.find_element(By.ID, "tl-seg-status").text)
    mask = session.collection.root.parent / "masks" / "test" / support
    d.find_element(By.CSS_SELECTOR, "#tl-label-file input[type=file]").send_keys(str(mask))
    time.sleep(2)  # the upload handler fills the editor
    d.find_element(By.ID, "tl-add-support").click()
    _wait("the support to be added", lambda: "Support 1 added" in d.find_element(By.ID, "tl-seg-status").text)
    d.find_element(By.ID, "tl-propagate").click()
    n = len(session.collection)
    results = _wait("the propagation results",
                    lambda: len(d.find_elements(By.CSS_SELECTOR, "#tl-results .thumbnail-item")) == n, timeout=120)
    assert results
    assert f"{n} new" in d.find_element(By.ID, "tl-seg-status").text
    assert len(session.project.results()) == n and len(session.project.supports) == 1
    d.save_screenshot(str(shots / "2-segment.png"))

    # Offline: every request the page made went to the app itself (or was inline data).
    hosts = set()
    for entry in d.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            request_url = message["params"]["request"]["url"]
            if not request_url.startswith(("data:", "blob:")):
                hosts.add(request_url.split("/")[2])
    assert hosts == {url.split("/")[2]}, hosts
