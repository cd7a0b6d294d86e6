"""protloc serve: the HTTP service answers as the Python API does, and refuses bad requests with JSON errors.

Servers listen on 127.0.0.1 with an ephemeral port; every request has a timeout and bypasses any proxy.
"""
from __future__ import annotations

import _thread
import io
import json
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tifffile
from PIL import Image

import protloc
from protloc.cli import main
from protloc.errors import ProtlocError
from protloc.labels import HPA10
from protloc.service.app import make_server

THRESHOLD = 0.4
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, whatever http_proxy says


@pytest.fixture(scope="module")
def run_dir(untrained_run):
    # Spread probabilities, so that a threshold can split the classes.
    return untrained_run(thresholds=[THRESHOLD] * 10, spread=30)


@pytest.fixture(scope="module")
def predictor(run_dir):
    return protloc.load(run_dir, precision="fp32")


def start(server):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


def stop(server, thread):
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def base_url(run_dir):
    server = make_server(run_dir, "127.0.0.1", 0, precision="fp32")
    thread = start(server)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stop(server, thread)


@pytest.fixture(scope="module")
def image_path(demo_data):
    return sorted((demo_data / "train").glob("*.png"))[0]


def call(url: str, body: bytes | None = None, content_type: str = "image/png") -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET (no body) or POST; error statuses are returned, not raised."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type} if body is not None else {})
    try:
        with OPENER.open(request, timeout=30) as response:
            return response.status, response.headers.get_content_type(), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers.get_content_type(), error.read()


def call_json(url: str, body: bytes | None = None, content_type: str = "image/png") -> tuple[int, dict]:
    status, kind, payload = call(url, body, content_type)
    assert kind == "application/json"
    return status, json.loads(payload)


def expected_labels(probabilities: np.ndarray, threshold: float) -> list[str]:
    return [name for name, p in zip(HPA10.names, probabilities) if p >= threshold]


def test_health_names_the_run_and_its_labels(base_url, run_dir):
    status, health = call_json(f"{base_url}/health")
    assert status == 200
    assert health == {"status": "ok", "run": run_dir.name, "backbone": "test_resnet", "engine": "torch",
                      "labels": list(HPA10.names)}


def test_predict_gives_the_python_api_probabilities_and_the_run_thresholds(base_url, predictor, image_path):
    expected = predictor.predict_proba([image_path])[0]
    status, result = call_json(f"{base_url}/predict", image_path.read_bytes())
    assert status == 200
    assert list(result["probabilities"]) == list(HPA10.names)
    np.testing.assert_allclose([result["probabilities"][name] for name in HPA10.names], expected, atol=1e-5)
    assert result["thresholds"] == {name: THRESHOLD for name in HPA10.names}
    # The run's thresholds decide, with the most likely class when none reaches its threshold.
    labels = expected_labels(expected, THRESHOLD) or [HPA10.names[int(np.argmax(expected))]]
    assert result["labels"] == labels


def test_threshold_and_allow_empty_in_the_query_decide_the_labels(base_url, predictor, image_path):
    probabilities = predictor.predict_proba([image_path])[0]
    ranked = np.sort(probabilities)[::-1]
    assert ranked[2] - ranked[3] > 1e-3, "the untrained run should spread its probabilities"
    between_third_and_fourth = float((ranked[2] + ranked[3]) / 2)
    status, result = call_json(f"{base_url}/predict?threshold={between_third_and_fourth}", image_path.read_bytes())
    assert status == 200
    assert result["labels"] == expected_labels(probabilities, between_third_and_fourth)
    assert len(result["labels"]) == 3
    assert set(result["thresholds"].values()) == {between_third_and_fourth}

    above_all = float(min(ranked[0] + (1 - ranked[0]) / 2, 0.999999))
    status, result = call_json(f"{base_url}/predict?threshold={above_all}&allow_empty=1", image_path.read_bytes())
    assert status == 200 and result["labels"] == []
    status, result = call_json(f"{base_url}/predict?threshold={above_all}&allow_empty=0", image_path.read_bytes())
    assert status == 200 and result["labels"] == [HPA10.names[int(np.argmax(probabilities))]]


def test_tta_in_the_query_averages_the_views(base_url, predictor, image_path):
    expected = predictor.predict_proba([image_path], tta=True)[0]
    assert np.abs(expected - predictor.predict_proba([image_path])[0]).max() > 1e-4  # TTA changes the answer
    status, result = call_json(f"{base_url}/predict?tta=1", image_path.read_bytes(), "application/octet-stream")
    assert status == 200
    np.testing.assert_allclose(list(result["probabilities"].values()), expected, atol=1e-5)


def test_16_bit_tiff_uploads_convert_as_files_do_and_grayscale_is_refused(base_url, predictor, image_path):
    array = np.asarray(Image.open(image_path))
    tiff = io.BytesIO()
    tifffile.imwrite(tiff, array.astype(np.uint16) * 257)
    status, result = call_json(f"{base_url}/predict", tiff.getvalue(), "image/tiff")
    assert status == 200
    np.testing.assert_allclose(list(result["probabilities"].values()), predictor.predict_proba([image_path])[0], atol=1e-5)

    # A grayscale image is refused by an RGB run, as by the Python API and the CLI.
    gray = io.BytesIO()
    Image.fromarray(array[:, :, 1]).save(gray, format="PNG")
    status, result = call_json(f"{base_url}/predict", gray.getvalue())
    assert status == 400 and "1 channel (grayscale), but the run reads 3 (red, green, blue)" in result["error"]


def test_concurrent_requests_all_get_the_same_answer(base_url, image_path):
    body, results = image_path.read_bytes(), [None] * 4

    def ask(slot: int) -> None:
        results[slot] = call_json(f"{base_url}/predict", body)

    threads = [threading.Thread(target=ask, args=(slot,)) for slot in range(len(results))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(result is not None and result[0] == 200 for result in results)
    assert all(result[1] == results[0][1] for result in results)


@pytest.mark.parametrize("body", [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"II*\x00garbage", b""],
                         ids=["text", "truncated-png", "broken-tiff", "empty"])
def test_unreadable_bodies_are_a_400_with_a_message(base_url, body):
    status, result = call_json(f"{base_url}/predict", body)
    assert status == 400
    assert isinstance(result["error"], str) and result["error"] and "Traceback" not in result["error"]


@pytest.mark.parametrize("query", ["threshold=abc", "threshold=1.5", "threshold=0", "threshold=nan", "threshold=",
                                   "tta=maybe", "allow_empty=2", "colour=red", "threshold=0.3&threshold=0.4"])
def test_bad_query_values_are_a_400(base_url, image_path, query):
    status, result = call_json(f"{base_url}/predict?{query}", image_path.read_bytes())
    assert status == 400
    assert query.split("=")[0] in result["error"]


def test_unknown_paths_are_a_404_and_wrong_methods_a_405(base_url, image_path):
    status, result = call_json(f"{base_url}/nowhere")
    assert status == 404 and "/nowhere" in result["error"]
    status, result = call_json(f"{base_url}/nowhere", image_path.read_bytes())
    assert status == 404
    status, result = call_json(f"{base_url}/predict")
    assert status == 405 and "POST" in result["error"]


def test_index_page_uploads_a_file_to_predict(base_url):
    status, kind, page = call(f"{base_url}/")
    assert status == 200 and kind == "text/html"
    text = page.decode("utf-8")
    assert '<input type="file"' in text
    assert 'fetch("predict"' in text
    assert "<script src" not in text and "<link" not in text  # self-contained: no external assets


def test_bodies_over_the_limit_are_a_413(run_dir, image_path):
    body = image_path.read_bytes()
    server = make_server(run_dir, "127.0.0.1", 0, max_bytes=len(body) - 1)
    thread = start(server)
    try:
        status, result = call_json(f"http://127.0.0.1:{server.server_address[1]}/predict", body)
        assert status == 413 and str(len(body) - 1) in result["error"]
    finally:
        stop(server, thread)


def test_a_missing_run_fails_before_serving(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "no-run"), "--port", "0"]) == 2
    assert "no-run" in capsys.readouterr().err


def test_a_busy_port_is_a_protloc_error(run_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ProtlocError, match="cannot listen on 127.0.0.1"):
            make_server(run_dir, "127.0.0.1", taken.getsockname()[1])


def test_the_command_serves_until_ctrl_c_then_exits_0(run_dir, capsys):
    """`protloc serve` in this process; a helper thread talks to it, then presses Ctrl-C (SIGINT to the main thread)."""
    seen = {}

    def use_then_interrupt() -> None:
        try:
            for _ in range(600):  # up to a minute for the model to load and the line to appear
                out = capsys.readouterr().out
                if "serving" in out:
                    seen["line"] = out.strip()
                    break
                time.sleep(0.1)
            else:
                return
            url = seen["line"].split(" on ")[1].split()[0]
            seen["health"] = call_json(f"{url}/health")
        finally:
            # Stop the server even if the line never showed, so a failure cannot hang the suite; but never
            # interrupt pytest itself once the command has returned.
            if not returned.is_set():
                _thread.interrupt_main(signal.SIGINT)

    returned = threading.Event()
    helper = threading.Thread(target=use_then_interrupt, daemon=True)
    helper.start()
    try:
        code = main(["serve", str(run_dir), "--port", "0"])
    finally:
        returned.set()
    assert code == 0
    helper.join(timeout=10)
    assert seen["line"].startswith(f"serving {run_dir} on http://127.0.0.1:")
    status, health = seen["health"]
    assert status == 200 and health["labels"] == list(HPA10.names)
    log = capsys.readouterr().err
    assert '"GET /health HTTP/1.1" 200' in log and "stopped" in log and "Traceback" not in log
