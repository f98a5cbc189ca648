"""End-to-end test of the web page in headless Chromium (Selenium + the distribution's chromedriver) against a real
uvicorn server on 127.0.0.1: type a query, switch modes, see result cards with safety badges and the Poincaré-disk
plot, search by image upload, see an upload error, and save screenshots.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (skipped with that reason when they are absent) and
the Python package ``selenium``. Set ``HYSAC_WEB_SCREENSHOT=path.png`` to also save the main screenshot there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and Path(p).is_file()), None)
CHROMEDRIVER = next((p for p in (shutil.which("chromedriver"), "/usr/bin/chromedriver",
                                 "/usr/lib/chromium/chromedriver") if p and Path(p).is_file()), None)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="headless browser test needs Chromium and its driver: apt-get install chromium chromium-driver",
)

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from hysac.service import create_app
    from hysac.service.demo import make_demo_index, make_tiny_model
    from hysac.service.server import serve_in_thread

    root = tmp_path_factory.mktemp("web")
    model = make_tiny_model(root / "model")
    index = make_demo_index(root / "demo", model)
    app = create_app(model, index)
    with serve_in_thread(app) as url:
        yield url, root


@pytest.fixture(scope="module")
def browser(server, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, cond, timeout=30, msg=""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(cond, msg)


def _state(driver, el_id):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, el_id).get_attribute("data-state")


def test_search_modes_results_and_plot(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    url, _ = server
    d = browser
    d.get(url + "/")
    _wait(d, lambda d: "indexed items" in d.find_element(By.ID, "health").text, msg="health line")
    assert "28 indexed items" in d.find_element(By.ID, "health").text

    from selenium.webdriver.support.ui import Select

    # images are searched by default when the index holds some (the plot shows the same gallery)
    assert Select(d.find_element(By.ID, "modality")).first_selected_option.get_attribute("value") == "image"
    box = d.find_element(By.ID, "query")
    box.send_keys("a cat covered in blood")
    d.find_element(By.CSS_SELECTOR, "label[for='mode-redirect']").click()
    assert d.find_element(By.ID, "mode-redirect").is_selected()
    assert "pulled toward the origin" in d.find_element(By.ID, "mode-help").text
    d.find_element(By.ID, "submit").click()
    _wait(d, lambda d: _state(d, "results") == "done" and _state(d, "plot") == "done", msg="results + plot")

    cards = d.find_elements(By.CSS_SELECTOR, "#results .card")
    assert len(cards) == 8  # every image of the demo index (k = 12)
    badges = d.find_elements(By.CSS_SELECTOR, "#results .card .badge")
    assert len(badges) == 8 and all(b.text.split()[0] in ("safe", "unsafe") for b in badges)
    assert d.find_elements(By.CSS_SELECTOR, "#results .card .cat")  # top category shown
    # the status line says what the search did, in the server's words (hysac.policy.Moved.describe)
    import json as _json
    import urllib.request

    req = urllib.request.Request(url + "/search", method="POST", headers={"Content-Type": "application/json"},
                                 data=_json.dumps({"text": "a cat covered in blood", "mode": "redirect",
                                                   "modality": "image", "k": 12}).encode())
    with urllib.request.urlopen(req, timeout=60) as r:
        move = _json.loads(r.read())["moves"]["image"]
    note = d.find_element(By.ID, "move-note").text
    assert note.startswith(f"images: {move['status']}")
    assert ("pulled in to radius" in note) == move["moved"]
    assert "mode redirect" in d.find_element(By.ID, "status").text
    # thumbnails are served by /items/{id}/image and really load
    imgs = d.find_elements(By.CSS_SELECTOR, "#results .card img.thumb")
    assert len(imgs) == 8 and all("/items/" in i.get_attribute("src") for i in imgs)
    _wait(d, lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)
                           for i in imgs), msg="thumbnails load")

    # the plot: disk, rings, query before/after, the neighbours
    svg = d.find_element(By.CSS_SELECTOR, "#plot svg")
    assert svg.find_elements(By.CSS_SELECTOR, "circle.pt-query-before")
    assert svg.find_elements(By.CSS_SELECTOR, "circle.pt-query-after")
    assert svg.find_elements(By.CSS_SELECTOR, "line.move-arrow")
    assert len(svg.find_elements(By.CSS_SELECTOR, "circle.pt-result")) >= 5
    assert len(svg.find_elements(By.CSS_SELECTOR, "circle.ring")) == 3
    d.save_screenshot(str(tmp_path / "redirect.png"))
    assert (tmp_path / "redirect.png").stat().st_size > 10_000
    record = os.environ.get("HYSAC_WEB_SCREENSHOT")
    if record:
        Path(record).parent.mkdir(parents=True, exist_ok=True)
        d.save_screenshot(record)

    # all items, then switching the mode re-runs the search: filter leaves no unsafe item
    Select(d.find_element(By.ID, "modality")).select_by_value("")
    d.find_element(By.CSS_SELECTOR, "label[for='mode-filter']").click()
    _wait(d, lambda d: "mode filter" in d.find_element(By.ID, "status").text
          and _state(d, "plot") == "done", msg="filter results")
    cards = d.find_elements(By.CSS_SELECTOR, "#results .card")
    assert len(cards) == 12 and {c.get_attribute("data-modality") for c in cards} <= {"text", "image"}
    badges = d.find_elements(By.CSS_SELECTOR, "#results .card .badge")
    assert badges and all(b.text.startswith("safe") for b in badges)
    d.find_element(By.CSS_SELECTOR, "label[for='mode-off']").click()
    _wait(d, lambda d: "mode off" in d.find_element(By.ID, "status").text and _state(d, "plot") == "done")
    assert len(d.find_elements(By.CSS_SELECTOR, "#results .card")) == 12

    # nothing was fetched from another origin
    origins = d.execute_script(
        "return performance.getEntriesByType('resource').map(e => new URL(e.name).origin)")
    assert set(origins) <= {url}, origins
    severe = [e for e in d.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, severe


def test_image_upload_and_error_message(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    from hysac.service.demo import png_bytes

    url, _ = server
    d = browser
    d.get(url + "/")
    _wait(d, lambda d: "indexed items" in d.find_element(By.ID, "health").text)
    good = tmp_path / "my query.png"
    good.write_bytes(png_bytes(seed=3, size=40, red=True))
    d.find_element(By.ID, "image").send_keys(str(good))
    _wait(d, lambda d: d.find_element(By.ID, "image-chip").is_displayed())
    assert not d.find_element(By.ID, "query").is_enabled()
    d.find_element(By.CSS_SELECTOR, "label[for='mode-seek-unsafe']").click()
    d.find_element(By.ID, "submit").click()
    _wait(d, lambda d: _state(d, "plot") == "done", msg="image search")
    assert "Image query" in d.find_element(By.ID, "query-card").text
    assert "my query.png" in d.find_element(By.ID, "query-card").text
    assert d.find_elements(By.CSS_SELECTOR, "#results .card")
    d.save_screenshot(str(tmp_path / "image-query.png"))

    # a corrupt upload: the error box names the file, no results are claimed
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    d.find_element(By.ID, "image-clear").click()
    assert d.find_element(By.ID, "query").is_enabled()
    d.find_element(By.ID, "image").send_keys(str(bad))
    d.find_element(By.ID, "submit").click()
    _wait(d, lambda d: d.find_element(By.ID, "error").is_displayed(), msg="error shown")
    assert "broken.png" in d.find_element(By.ID, "error").text
    assert _state(d, "results") == "error"

    # an empty query is caught on the page
    d.find_element(By.ID, "image-clear").click()
    d.find_element(By.ID, "query").clear()
    d.find_element(By.ID, "submit").click()
    _wait(d, lambda d: "Type a query" in d.find_element(By.ID, "error").text)


def test_a_query_longer_than_the_model_reads_is_marked(server, browser):
    from selenium.webdriver.common.by import By

    url, _ = server
    d = browser
    d.get(url + "/")
    _wait(d, lambda d: "indexed items" in d.find_element(By.ID, "health").text, msg="health line")
    d.find_element(By.ID, "query").send_keys(" ".join(["a cat on a sofa"] * 30))  # beyond the tiny tower's reach
    d.find_element(By.ID, "submit").click()
    # the card is drawn again when the results arrive: read it in the page, not through a held element
    note = 'const n = document.getElementById("cut-note"); return n ? n.textContent : null;'
    _wait(d, lambda d: d.execute_script(note), msg="note on the cut query")
    assert "judged and searched by its opening only" in d.execute_script(note)
    box = d.find_element(By.ID, "query")
    box.clear()
    box.send_keys("a cat")
    d.find_element(By.ID, "submit").click()
    text = 'const q = document.querySelector("#query-card .qtext"); return q ? q.textContent : null;'
    _wait(d, lambda d: d.execute_script(text) == "a cat", msg="short query")
    assert d.execute_script(note) is None
