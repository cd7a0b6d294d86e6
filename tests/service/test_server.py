"""The real server (`protloc serve` in a subprocess, uvicorn on loopback): what it serves, and how it stands
hostile and heavy load: decompression bombs, oversized bodies, slow headers and bodies, too many connections,
500 requests."""
from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest

from tests.service.conftest import LIVE_MAX_BYTES, LIVE_MAX_CONNECTIONS, LIVE_TIMEOUT_S

RSS_GROWTH_LIMIT_MB = 200
RSS_LIMIT_MB = 2048


def test_the_started_server_serves_the_page_health_and_docs(live_server, run_dir):
    status, body = live_server.get("/health")
    health = json.loads(body)
    assert status == 200 and health["run"] == run_dir.name and health["backbone"] == "test_resnet"
    status, page = live_server.get("/")
    assert status == 200 and b'<script src="static/page.js"' in page
    assert live_server.get("/docs")[0] == 200 and live_server.get("/docs-assets/swagger-ui-bundle.js")[0] == 200


def client() -> httpx2.Client:
    return httpx2.Client(trust_env=False, timeout=30)  # loopback only, whatever the proxy variables say


def upload(url: str, name: str, data: bytes) -> httpx2.Response:
    with client() as http:
        return http.post(url + "/predict", files=[("files", (name, data))])


def test_bombs_are_refused_before_decoding_and_memory_stays_flat(live_server, bombs, image_paths):
    assert upload(live_server.url, "cell.png", image_paths[0].read_bytes()).status_code == 200  # warm
    before = live_server.rss_mb()
    for kind, path in bombs.items():
        response = upload(live_server.url, path.name, path.read_bytes())
        assert response.status_code == 413, response.text
        assert "pixels, more than the limit of 64,000,000" in response.json()["detail"]
    growth = live_server.rss_mb() - before
    print(f"RSS {before:.0f} MB before two bombs, growth {growth:+.1f} MB")
    assert growth < RSS_GROWTH_LIMIT_MB


def test_sixteen_bombs_at_once_leave_the_server_answering(live_server, bombs):
    payloads = [(path.name, path.read_bytes()) for path in bombs.values()] * 8
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda item: upload(live_server.url, *item).status_code, payloads))
    assert statuses == [413] * 16
    assert live_server.get("/health")[0] == 200
    rss = live_server.rss_mb()
    print(f"RSS after 16 bombs at once: {rss:.0f} MB")
    assert rss < RSS_LIMIT_MB


def test_a_body_over_the_byte_limit_is_413(live_server):
    response = upload(live_server.url, "big.png", b"\0" * (LIVE_MAX_BYTES + 1))
    assert response.status_code == 413
    assert live_server.get("/health")[0] == 200


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """(everything the server sent, seconds until it closed the connection)."""
    started = time.monotonic()
    received = b""
    sock.settimeout(LIVE_TIMEOUT_S * 3)
    while chunk := sock.recv(65536):
        received += chunk
    return received, time.monotonic() - started


def test_slow_headers_are_cut_and_a_slow_body_gets_408(live_server):
    host, port = live_server.url.removeprefix("http://").split(":")
    head_only = socket.create_connection((host, int(port)))
    head_only.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
    slow_body = socket.create_connection((host, int(port)))
    slow_body.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                      b"Content-Length: 100000\r\n\r\n" + b"\x89PNG" + b"\0" * 100)
    with ThreadPoolExecutor(2) as pool:  # both deadlines run at once
        (cut, cut_after), (answered, answered_after) = pool.map(read_until_closed, (head_only, slow_body))
    head_only.close()
    slow_body.close()
    assert cut == b"" and cut_after < LIVE_TIMEOUT_S + 2
    assert answered.startswith(b"HTTP/1.1 408 ") and b"request not received within" in answered
    assert answered_after < LIVE_TIMEOUT_S + 2


def test_500_requests_16_at_once_all_succeed(live_server, image_paths):
    bodies = [path.read_bytes() for path in image_paths]
    latencies = []

    def work(worker: int) -> list[int]:
        statuses = []
        with client() as http:
            for request in range(worker, 500, 16):
                started = time.perf_counter()
                response = http.post(live_server.url + "/predict",
                                     files=[("files", ("cell.png", bodies[request % len(bodies)]))])
                latencies.append(time.perf_counter() - started)
                statuses.append(response.status_code)
        return statuses

    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        statuses = [status for batch in pool.map(work, range(16)) for status in batch]
    elapsed = time.perf_counter() - started
    latencies.sort()
    print(f"500 requests, 16 at once: {500 / elapsed:.0f} requests/s, p50 {1000 * latencies[250]:.0f} ms, "
          f"p95 {1000 * latencies[475]:.0f} ms")
    assert len(statuses) == 500 and set(statuses) == {200}


def test_connections_beyond_the_cap_get_503_but_health_answers(live_server):
    host, port = live_server.url.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port))) for _ in range(LIVE_MAX_CONNECTIONS + 6)]
    try:
        time.sleep(0.2)  # let the server accept them all
        with client() as http:
            assert http.get(live_server.url + "/").status_code == 503
            # Issue 31, finding 12: a monitor's /health is answered whatever the load (it does no work).
            assert [http.get(live_server.url + "/health").status_code for _ in range(5)] == [200] * 5
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 5
    while live_server.get("/health")[0] != 200:  # the server counts the closed ones out as it notices
        assert time.monotonic() < deadline, "the server did not recover after the connections closed"
        time.sleep(0.1)


@pytest.mark.parametrize("host", ["attacker.example", "127.0.0.1.nip.example"])
def test_a_foreign_host_header_is_refused(live_server, host):
    with client() as http:
        assert http.get(live_server.url + "/health", headers={"Host": host}).status_code == 400


def test_clients_that_hang_up_mid_request_leave_no_traceback_in_the_log(live_server, image_paths):
    """Issue 31, finding 12: a client gone before its body arrived, or before its answer, is one quiet line."""
    host, port = live_server.url.removeprefix("http://").split(":")
    body = image_paths[0].read_bytes()
    form = (b"--x\r\nContent-Disposition: form-data; name=\"files\"; filename=\"cell.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + body + b"\r\n--x--\r\n")
    head = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            b"Content-Length: %d\r\n\r\n" % len(form))
    raw = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n"
           % len(body))
    before = live_server.log.read_text()
    # Gone mid-body, as a form and as a raw image body; gone before the answer.
    for sent in (head + form[:len(form) // 2], raw + body[:len(body) // 2], head + form, raw + body):
        for _ in range(3):
            sock = socket.create_connection((host, int(port)))
            sock.sendall(sent)
            sock.close()
    time.sleep(1.5)
    assert live_server.get("/health")[0] == 200
    added = live_server.log.read_text()[len(before):]
    assert "Traceback" not in added and "Exception in ASGI application" not in added, added[-3000:]
