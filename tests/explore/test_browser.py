"""One end-to-end run of ``modinv explore`` in a real headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium): upload a photo, reconstruct, check the pixels shown,
recolour, and see nothing reach beyond the loopback server."""

from __future__ import annotations

import io
import shutil
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from modinv.analysis.color_filters import apply_filter
from modinv.explore import read_upload
from modinv.explore.inputs import to_uint8

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="Debian's chromium and chromium-driver are not "
                                "installed (.ci/run installs them with apt-get)")
TIMEOUT = 120  # seconds for one reconstruction to show on a busy 2-core machine


@pytest.fixture
def server(explorer, free_port):
    pytest.importorskip("gradio")
    from modinv.explore.app import build_app, serve, stop

    app = build_app(explorer)
    url = serve(app, host="127.0.0.1", port=free_port(), block=False, announce=None)
    assert url.startswith("http://127.0.0.1:")
    yield url
    stop(app)


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1800", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def gallery_pixels(driver, elem_id: str, count: int) -> list[np.ndarray]:
    """The images of gallery ``elem_id`` once it shows ``count`` of them, as uint8 H×W×3 arrays."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def sources(d):
        found = [img.get_attribute("src") for img in d.find_elements(By.CSS_SELECTOR, f"#{elem_id} img")]
        return found if len(found) >= count and all(found) else False

    urls = WebDriverWait(driver, TIMEOUT).until(sources)
    return [np.asarray(Image.open(io.BytesIO(urllib.request.urlopen(u, timeout=30).read())).convert("RGB"))
            for u in urls[:count]]


def expected_row(model, chain, stages, image: torch.Tensor) -> list[np.ndarray]:
    """The input and ``chain.reconstruct`` from every stage, as the PNG files hold them (uint8)."""
    trace = model.trace(image[None])
    return [to_uint8(image).numpy()] + [to_uint8(chain.reconstruct(trace, s)[0]).numpy() for s in stages]


def assert_shows(shown: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(shown) == len(expected)
    for got, want in zip(shown, expected):
        assert got.shape == want.shape
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # float rounding at the .5 boundary


def test_upload_reconstruct_recolour_in_chromium(server, browser, explorer, photo_file, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    model, chain = explorer.model, explorer.chains["chain"]
    n = len(explorer.stages["chain"]) + 1
    browser.get(server)
    WebDriverWait(browser, TIMEOUT).until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type=file]"))
    browser.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(photo_file))
    shown = gallery_pixels(browser, "row-0", n)
    browser.find_element(By.CSS_SELECTOR, "#run").click()
    shown = gallery_pixels(browser, "row-0", n)

    photo = read_upload(photo_file, explorer.size)
    assert_shows(shown, expected_row(model, chain, explorer.stages["chain"], photo.image))
    assert "MSE" in browser.find_element(By.CSS_SELECTOR, "#row-0").text

    browser.find_element(By.CSS_SELECTOR, "#filter input").click()
    option = 'li[role=option][aria-label="red"]'
    WebDriverWait(browser, TIMEOUT).until(lambda d: d.find_elements(By.CSS_SELECTOR, option))[0].click()
    perturbed = gallery_pixels(browser, "prow-0", n)
    red = apply_filter(photo.image, "red")
    assert (perturbed[0] != shown[0]).any()  # the recoloured input, then its reconstructions:
    assert_shows(perturbed, expected_row(model, chain, explorer.stages["chain"], red))
    assert "pairwise MSE" in browser.find_element(By.CSS_SELECTOR, "#numbers").text
    browser.save_screenshot(str(tmp_path / "explore.png"))
    assert (tmp_path / "explore.png").stat().st_size > 10_000

    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    browser.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(bad))
    WebDriverWait(browser, TIMEOUT).until(lambda d: "not an image" in d.find_element(By.CSS_SELECTOR, "#message").text)

    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    outside = [u for u in loaded if not u.startswith((server.rstrip("/"), "data:", "blob:"))]
    assert not outside, f"the page loaded from outside the server: {outside[:5]}"

    first = browser.current_window_handle  # a second browser session sees none of the first's images
    browser.switch_to.new_window("tab")
    browser.get(server)
    WebDriverWait(browser, TIMEOUT).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#sample input"))
    assert not browser.find_elements(By.CSS_SELECTOR, "#row-0 img")
    browser.find_element(By.CSS_SELECTOR, "#sample input").click()
    WebDriverWait(browser, TIMEOUT).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, 'li[role=option][aria-label="rocket"]'))[0].click()
    WebDriverWait(browser, TIMEOUT).until(lambda d: "input: rocket" in d.find_element(By.CSS_SELECTOR, "#row-0").text)
    browser.switch_to.window(first)  # the first session recolours its own photo, the cat
    browser.find_element(By.CSS_SELECTOR, "#filter input").click()
    WebDriverWait(browser, TIMEOUT).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, 'li[role=option][aria-label="green"]'))[0].click()
    WebDriverWait(browser, TIMEOUT).until(lambda d: "perturbed: green" in d.find_element(By.CSS_SELECTOR, "#prow-0").text)
    green = apply_filter(photo.image, "green")
    assert_shows(gallery_pixels(browser, "prow-0", n), expected_row(model, chain, explorer.stages["chain"], green))
    assert "input: cat" in browser.find_element(By.CSS_SELECTOR, "#row-0").text
