"""The page in a real headless Chromium against the real server: upload images, read the table, open one
image's class maps, download the CSV, and compare all of it with the API and with `protloc predict`; then the
same page at a phone's width (390 px) and a desktop's (1400 px), screenshots kept in the test's folder.

Chromium and its driver come from Debian (`apt-get install chromium chromium-driver`, done by .ci/run); without
them this test fails rather than skips, so that a missing browser cannot pass unnoticed.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import httpx2
import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

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


def open_page(driver, url: str, width: int):
    from selenium.webdriver.common.by import By

    driver.set_window_size(width, 1000)
    driver.get(url + "/")
    wait_for(lambda: "test_resnet" in driver.find_element(By.ID, "run-about").text, what="the run's description")
    picker = driver.find_element(By.ID, "picker")
    driver.execute_script("arguments[0].style.display = 'block'", picker)  # it hides inside its button
    return picker


def rows_of(driver):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#results tbody tr")


def labelled(driver, count: int):
    """The rows once `count` of them show labels or an error."""
    from selenium.webdriver.common.by import By

    def done():
        rows = rows_of(driver)
        finished = [row for row in rows if row.find_elements(By.CSS_SELECTOR, ".label, .error")]
        return len(rows) == count and len(finished) == count and rows
    return wait_for(done, what=f"{count} finished rows")


def chip_labels(row) -> list[tuple[str, str]]:
    """(class name, its percentage) of each label chip of a row."""
    from selenium.webdriver.common.by import By

    chips = [chip.text for chip in row.find_elements(By.CSS_SELECTOR, ".label")]
    return [re.fullmatch(r"(.+) ([<>]?\d+%)", chip).groups() for chip in chips]


def test_the_page_labels_images_explains_one_and_downloads_the_csv(browser, live_server, image_paths, run_dir, tmp_path):
    from selenium.webdriver.common.by import By

    driver, downloads = browser
    paths = image_paths[:3]
    picker = open_page(driver, live_server.url, 1280)
    picker.send_keys("\n".join(str(path) for path in paths))
    rows = labelled(driver, 3)
    expected = api_results(live_server.url, paths)
    shown = {row.find_element(By.CSS_SELECTOR, "td.name").text: chip_labels(row) for row in rows}
    # Each label with its probability as the API gives it, most likely first.
    assert shown == {name: [(label, f"{round(100 * result['probabilities'][label])}%") for label in
                            sorted(result["labels"], key=lambda label: -result["probabilities"][label])]
                     for name, result in expected.items()}
    assert driver.find_element(By.ID, "run-trained").text == f"The model was {load_config(run_dir).trained_on}."
    warned = {row.find_element(By.CSS_SELECTOR, "td.name").text: bool(row.find_elements(By.CSS_SELECTOR, ".outlier"))
              for row in rows}
    assert warned == {name: result["outlier"] for name, result in expected.items()}

    rows[0].click()
    first = expected[paths[0].name]["labels"]
    pictures = "#detail-images img"
    wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, pictures)) == 2 + len(first), what="the class maps")
    widths = wait_for(lambda: (w := driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(i => i.complete ? i.naturalWidth : 0)", pictures))
        and all(w) and w, what="the images to load")
    assert widths[:2] == [64, 64] and set(widths[2:]) <= {32}  # the upload as sent; maps at the model's size
    captions = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#detail-images figcaption")]
    assert captions[:2] == ["the image", "protein (green channel)"]
    assert [caption.rsplit(" ", 1)[0] for caption in captions[2:]] == first
    # The legend says what the pictures show: outlines, with their shares; the colour scale once chosen.
    legend = driver.find_element(By.CSS_SELECTOR, ".key-overlay").text
    assert "grey outline" in legend and "50%" in legend and "20%" in legend
    overlay = driver.find_elements(By.CSS_SELECTOR, pictures)[2].get_attribute("src")
    driver.find_element(By.CSS_SELECTOR, "input[value=heatmap]").click()
    assert driver.find_elements(By.CSS_SELECTOR, pictures)[2].get_attribute("src") != overlay
    assert driver.find_element(By.CSS_SELECTOR, ".key-heatmap").is_displayed()
    # A map enlarges: the dialog shows it wider than its panel.
    driver.find_elements(By.CSS_SELECTOR, "#detail-images figure")[2].click()
    zoomed = wait_for(lambda: driver.find_element(By.ID, "zoom-image").size["width"], what="the enlarged map")
    assert zoomed > driver.find_elements(By.CSS_SELECTOR, pictures)[2].size["width"]
    driver.find_element(By.CSS_SELECTOR, "#zoom button").click()

    driver.find_element(By.ID, "download").click()
    csv = downloads / "submission.csv"
    wait_for(lambda: csv.exists() and not list(downloads.glob("*.crdownload")), what="the CSV download")
    assert main(["predict", str(run_dir), *map(str, paths), "--out", str(tmp_path / "predict.csv"), "--device", "cpu",
                 "--precision", "fp32", "--workers", "0", "--label-names"]) == 0
    downloaded = pd.read_csv(csv, dtype=str, keep_default_na=False)
    predicted = pd.read_csv(tmp_path / "predict.csv", dtype=str, keep_default_na=False)
    assert list(downloaded.columns) == ["Image", "Label"]
    pd.testing.assert_frame_equal(downloaded.sort_values("Image", ignore_index=True),
                                  predicted[["Image", "Label"]].sort_values("Image", ignore_index=True))
    driver.find_element(By.ID, "download-table").click()
    table = downloads / "labels.csv"
    wait_for(lambda: table.exists() and not list(downloads.glob("*.crdownload")), what="the table download")
    names = pd.read_csv(table, dtype={"id": str}, keep_default_na=False)
    assert names["id"].tolist() == downloaded["Image"].tolist()
    assert dict(zip(names["id"], names["labels"])) == dict(zip(predicted["Image"], predicted["Class names"]))


@pytest.fixture(scope="module")
def awkward_uploads(image_paths, tmp_path_factory):
    """What a biologist has at hand: a PNG and a TIFF of one image (one id, two files), a stain set whose blue and
    yellow files come in a second pick, and a grayscale protein image the 3-stain run cannot read alone."""
    folder = tmp_path_factory.mktemp("uploads")
    png = folder / "10034.png"
    png.write_bytes(image_paths[0].read_bytes())
    tiff = folder / "10034.tif"
    tifffile.imwrite(tiff, np.asarray(Image.open(image_paths[0]).convert("RGB")))
    composite = np.asarray(Image.open(image_paths[1]).convert("RGB"))
    stains = {}
    for index, stain in enumerate(("red", "green", "blue", "yellow")):
        stains[stain] = folder / f"plate_7_well_B3_field_2_{stain}.png"
        Image.fromarray(composite[:, :, min(index, 2)]).save(stains[stain])
    gray = folder / "protein_only.png"
    Image.fromarray(composite[:, :, 1]).save(gray)
    return {"png": png, "tiff": tiff, "stains": stains, "gray": gray}


def screenshot(driver, path: Path) -> None:
    """The whole page, at the window's width: the window grows to the page's height for the picture."""
    width = driver.get_window_size()["width"]
    driver.set_window_size(width, min(driver.execute_script("return document.documentElement.scrollHeight"), 6000))
    driver.save_screenshot(str(path))
    driver.set_window_size(width, 1000)


def overflow(driver) -> dict:
    """How far the page reaches past the window's right edge, and which elements do."""
    return driver.execute_script("""
        const width = document.documentElement.clientWidth;
        const wide = [...document.querySelectorAll('body *')].filter((node) => node.getClientRects().length
            && node.getBoundingClientRect().right > width + 0.5).map((node) => node.tagName + '.' + node.className);
        return {scroll: document.documentElement.scrollWidth - width, elements: wide};""")


def overlaps(first, second) -> bool:
    a, b = first.rect, second.rect
    return not (a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"] or
                a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"])


@pytest.mark.parametrize("width", [390, 1400])
def test_the_page_at_phone_and_desktop_width(browser, live_server, awkward_uploads, width, tmp_path):
    from selenium.webdriver.common.by import By

    driver, _downloads = browser
    files = awkward_uploads
    picker = open_page(driver, live_server.url, width)
    assert not overlaps(driver.find_element(By.ID, "run-name"), driver.find_element(By.CSS_SELECTOR, "nav a"))
    assert driver.find_element(By.ID, "run-trained").text.startswith("The model was")  # what it learned from
    picker.send_keys(f"{files['png']}\n{files['tiff']}")
    picker.send_keys(f"{files['stains']['red']}\n{files['stains']['green']}")
    waiting = labelled(driver, 3)
    assert "stain set without blue" in waiting[2].text  # until its blue file comes
    picker.send_keys(f"{files['stains']['blue']}\n{files['stains']['yellow']}\n{files['gray']}")
    rows = labelled(driver, 4)
    screenshot(driver, tmp_path / f"table-{width}.png")

    png, tiff, stain_set, gray = rows
    for row in (png, tiff, stain_set):  # labels with their percentages, and every row its picture
        assert chip_labels(row), row.text
        assert driver.execute_script("const i = arguments[0].querySelector('td.thumb img');"
                                     "return i.complete && i.naturalWidth > 0", row)
    assert "plate_7_well_B3_field_2 (red, green, blue, yellow)" in stain_set.text.replace("\n", " ")
    assert "yellow stain (plate_7_well_B3_field_2_yellow.png) not used" in stain_set.text
    error = gray.find_element(By.CSS_SELECTOR, ".error").text
    assert error.startswith("protein_only.png: a grayscale image")
    assert "--" not in error and "HTTP" not in error and "gray_as" not in error
    assert overflow(driver) == {"scroll": 0, "elements": []}

    # One row goes alone; the ids stay unique for the CSV.
    gray.find_element(By.CSS_SELECTOR, ".remove-button").click()
    assert len(rows_of(driver)) == 3 and "1 not labelled" not in driver.find_element(By.ID, "status").text
    assert "CSV id: 10034.tif" in rows_of(driver)[1].text

    # The detail view: bars as wide as they can be read, numbers beside them.
    rows_of(driver)[2].click()
    wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#detail-images img")) > 2, what="the class maps")
    tracks = [track.size["width"] for track in driver.find_elements(By.CSS_SELECTOR, "#detail-bars .track")]
    assert len(tracks) == 10 and min(tracks) > 0.4 * min(width, 1100) - 40
    values = [value.text for value in driver.find_elements(By.CSS_SELECTOR, "#detail-bars .bar-value")]
    assert all(re.fullmatch(r"[<>]?\d+%", value) for value in values), values
    assert overflow(driver) == {"scroll": 0, "elements": []}
    screenshot(driver, tmp_path / f"detail-{width}.png")


def test_the_bit_depth_chosen_on_the_page_goes_with_each_image(browser, live_server, image_paths, tmp_path):
    import imagecodecs
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver, _downloads = browser
    path = tmp_path / "deep.png"  # 12-bit camera data in a 16-bit PNG
    path.write_bytes(imagecodecs.png_encode(np.asarray(Image.open(image_paths[0]).convert("RGB")).astype(np.uint16) * 16))

    def chips_of(result: dict) -> list[tuple[str, str]]:
        ordered = sorted(result["labels"], key=lambda label: -result["probabilities"][label])
        return [(label, f"{round(100 * result['probabilities'][label])}%") for label in ordered]

    with httpx2.Client(trust_env=False, timeout=30) as http:
        answers = {depth: http.post(live_server.url + "/predict", files=[("files", (path.name, path.read_bytes()))],
                                    data={"bit_depth": depth} if depth else {}).json()["images"][0]
                   for depth in ("", "16")}
    assert chips_of(answers[""]) != chips_of(answers["16"])  # the depth changes what the page should show
    picker = open_page(driver, live_server.url, 1280)
    Select(driver.find_element(By.NAME, "bit_depth")).select_by_visible_text("16")
    picker.send_keys(str(path))
    (row,) = labelled(driver, 1)
    assert chip_labels(row) == chips_of(answers["16"])


def test_the_page_warns_on_the_row_of_an_image_unlike_the_training_images(browser, live_server, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By

    driver, _downloads = browser
    # Full-range noise, unlike the demo cells the run is described on whatever its weights: the served run is an
    # untrained network, whose features do not tell a real cell from a generated one (measured on trained runs
    # in docs/trust.md), but lie far out for noise (a score about 4 times the threshold).
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(noise)
    assert api_results(live_server.url, [noise])[noise.name]["outlier"]
    picker = open_page(driver, live_server.url, 1280)
    picker.send_keys(str(noise))
    warning = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#results tbody tr .outlier"), what="the warning")
    assert warning[0].is_displayed() and "unlike the training images" in warning[0].text


def test_the_page_outlines_each_cell_with_its_labels(browser, live_server, real_data, tmp_path):
    import base64
    import io

    from selenium.webdriver.common.by import By

    driver, _downloads = browser
    real = Path(real_data) / "z2g-sample" / "10034.png"
    with httpx2.Client(trust_env=False, timeout=120) as http:
        answer = http.post(live_server.url + "/predict", files=[("files", (real.name, real.read_bytes()))],
                           data={"cells": "true"}).json()["images"][0]
    cells = answer["cells"]
    labelled_cells = [cell for cell in cells if cell["labels"]]
    assert cells
    picker = open_page(driver, live_server.url, 1280)
    driver.find_element(By.NAME, "cells").click()
    picker.send_keys(str(real))
    (row,) = labelled(driver, 1)
    summary = wait_for(lambda: row.find_elements(By.CSS_SELECTOR, ".cells-count"), what="the cell count")[0].text
    assert summary.startswith(f"{len(cells)} cells found, {len(labelled_cells)} with labels")
    row.click()

    def drawn():
        pictures = driver.find_elements(By.CSS_SELECTOR, "#detail-images figure.cells-picture img")
        return pictures and pictures[0].get_attribute("src").startswith("data:image/png") and pictures[0]
    picture = wait_for(drawn, timeout=120, what="the cells picture")
    assert picture.find_element(By.XPATH, "..").text.startswith("cells")
    drawing = np.asarray(Image.open(io.BytesIO(base64.b64decode(picture.get_attribute("src").split(",", 1)[1])))
                         .convert("RGB")).astype(int)
    width, height = answer["size"]
    assert drawing.shape == (height, width, 3)  # drawn in the image's own pixels

    def near(cell, colour) -> float:
        """The share of the cell's outline points with the colour within a pixel."""
        hits = 0
        for x, y in cell["outline"]:
            x, y = min(int(round(x)), width - 1), min(int(round(y)), height - 1)
            patch = drawing[max(0, y - 1):y + 2, max(0, x - 1):x + 2].reshape(-1, 3)
            hits += bool((np.abs(patch - colour).max(axis=1) <= 12).any())
        return hits / len(cell["outline"])
    # White outlines are drawn last, so an edge a labelled cell shares with an unlabelled one is white.
    assert all(near(cell, (255, 255, 255)) >= 0.8 for cell in labelled_cells)
    unlabelled = [cell for cell in cells if not cell["labels"]]
    assert all(near(cell, (128, 128, 128)) > 0 for cell in unlabelled)
    screenshot(driver, tmp_path / "cells-1280.png")
