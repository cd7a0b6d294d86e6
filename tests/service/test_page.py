"""The page in a real headless Chromium against the real server: upload images, read the table, open one
image's Grad-CAMs, download the CSV, and compare all of it with the API and with `protloc predict`.

Chromium and its driver come from Debian (`apt-get install chromium chromium-driver`, done by .ci/run); without
them this test fails rather than skips, so that a missing browser cannot pass unnoticed.
"""
from __future__ import annotations

import time
from pathlib import Path

import httpx2
import pandas as pd
import pytest

from protloc.cli import main
from protloc.runs import load_config

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1000")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: apt-get install chromium chromium-driver (as .ci/run does)")
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    try:
        yield driver, downloads
    finally:
        driver.quit()


def wait_for(condition, timeout: float = 30, what: str = "the page"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def api_results(url: str, paths) -> dict[str, dict]:
    with httpx2.Client(trust_env=False, timeout=30) as http:
        response = http.post(url + "/predict", files=[("files", (p.name, p.read_bytes())) for p in paths])
    return {result["name"]: result for result in response.json()["images"]}


def api_labels(url: str, paths) -> dict[str, list[str]]:
    return {name: result["labels"] for name, result in api_results(url, paths).items()}


def test_the_page_warns_on_the_row_of_an_image_unlike_the_training_images(browser, live_server, real_data):
    from selenium.webdriver.common.by import By

    driver, _downloads = browser
    real = Path(real_data) / "z2g-sample" / "10034.png"
    assert api_results(live_server.url, [real])[real.name]["outlier"]  # a real cell, for a run described on demo cells
    driver.get(live_server.url + "/")
    wait_for(lambda: "test_resnet" in driver.find_element(By.ID, "run-about").text, what="the run's description")
    picker = driver.find_element(By.ID, "picker")
    driver.execute_script("arguments[0].style.display = 'block'", picker)
    picker.send_keys(str(real))
    warning = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#results tbody tr .outlier"), what="the warning")
    assert warning[0].is_displayed() and "unlike the training images" in warning[0].text


def test_the_page_labels_images_explains_one_and_downloads_the_csv(browser, live_server, image_paths, run_dir, tmp_path):
    from selenium.webdriver.common.by import By

    driver, downloads = browser
    paths = image_paths[:3]
    driver.get(live_server.url + "/")
    wait_for(lambda: "test_resnet" in driver.find_element(By.ID, "run-about").text, what="the run's description")
    assert driver.find_element(By.ID, "trained-on").text == f"The model was {load_config(run_dir).trained_on}."

    picker = driver.find_element(By.ID, "picker")
    driver.execute_script("arguments[0].style.display = 'block'", picker)  # it hides inside its button
    picker.send_keys("\n".join(str(path) for path in paths))
    rows = wait_for(lambda: (found := driver.find_elements(By.CSS_SELECTOR, "#results tbody tr"))
                    and len(driver.find_elements(By.CSS_SELECTOR, "#results .spark")) == 3 and found,
                    what="three labelled rows")
    driver.save_screenshot(str(tmp_path / "table.png"))
    shown = {row.find_element(By.CSS_SELECTOR, "td.name").text:
             [label.text for label in row.find_elements(By.CSS_SELECTOR, ".label")] for row in rows}
    expected = api_labels(live_server.url, paths)
    assert shown == expected
    warned = {row.find_element(By.CSS_SELECTOR, "td.name").text: bool(row.find_elements(By.CSS_SELECTOR, ".outlier"))
              for row in rows}
    assert warned == {name: result["outlier"] for name, result in api_results(live_server.url, paths).items()}

    rows[0].click()
    first = expected[paths[0].name]
    pictures = "#detail-images img"
    wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, pictures)) == 2 + len(first), what="the Grad-CAMs")
    widths = wait_for(lambda: (w := driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(i => i.complete ? i.naturalWidth : 0)", pictures))
        and all(w) and w, what="the images to load")
    assert widths[:2] == [64, 64] and set(widths[2:]) <= {32}  # the upload as sent; overlays at the model's size
    captions = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#detail-images figcaption")]
    assert captions[:2] == ["the image", "protein (green channel)"]
    assert [caption.split(" p = ")[0] for caption in captions[2:]] == first
    driver.save_screenshot(str(tmp_path / "detail.png"))

    driver.find_element(By.ID, "download").click()
    csv = downloads / "submission.csv"
    wait_for(lambda: csv.exists() and not list(downloads.glob("*.crdownload")), what="the CSV download")
    assert main(["predict", str(run_dir), *map(str, paths), "--out", str(tmp_path / "predict.csv"), "--device", "cpu",
                 "--precision", "fp32", "--workers", "0"]) == 0
    downloaded = pd.read_csv(csv, dtype=str, keep_default_na=False)
    predicted = pd.read_csv(tmp_path / "predict.csv", dtype=str, keep_default_na=False)
    assert list(downloaded.columns) == ["Image", "Label"]
    pd.testing.assert_frame_equal(downloaded.sort_values("Image", ignore_index=True),
                                  predicted.sort_values("Image", ignore_index=True))
