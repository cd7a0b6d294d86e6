"""Shared fixtures of the service tests: one small untrained run, images, an in-process client and a real server.

The real server is `protloc serve` in a subprocess on a free loopback port, so that its memory can be read
from /proc and its limits (uvicorn's included) are the ones users get. Requests bypass any proxy.
"""
from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

THRESHOLD = 0.4
REPO = Path(__file__).resolve().parents[2]
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, whatever http_proxy says

# The live server's limits: small enough that tests reach them quickly.
LIVE_MAX_BYTES = 2_000_000
LIVE_MAX_CONNECTIONS = 32
LIVE_TIMEOUT_S = 3.0


@pytest.fixture(scope="session")
def run_dir(untrained_run, demo_data):
    # Spread probabilities, so that labels differ between images and a threshold can split the classes; the
    # demo training images' features described, so that predictions have outlier scores.
    return untrained_run(thresholds=[THRESHOLD] * 10, spread=30,
                         outliers_of=sorted((demo_data / "train").glob("*.png"))[:60])


@pytest.fixture(scope="session")
def predictor(run_dir):
    import protloc

    return protloc.load(run_dir, precision="fp32")


@pytest.fixture(scope="session")
def image_paths(demo_data):
    """Eight real-looking PNG composites (the generated demo data's test images)."""
    return sorted((demo_data / "test").glob("*.png"))[:8]


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def app(predictor):
    from protloc.service.app import create_app
    from protloc.service.limits import ServiceLimits

    limits = ServiceLimits(max_upload_bytes=1_000_000, max_pixels=1_000_000, max_files=8, batch_size=8)
    return create_app(predictor, run_name="run", limits=limits, allowed_hosts=["testserver"])


@pytest.fixture(scope="module")
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as test_client:  # `with`: runs the lifespan, which starts the batching worker
        yield test_client


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen
    log: Path

    def rss_mb(self) -> float:
        """The server process's resident memory, from /proc."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024

    def get(self, path: str, timeout: float = 10) -> tuple[int, bytes]:
        try:
            with OPENER.open(self.url + path, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.read()


def start_server(run_dir: Path, log: Path, *extra: str) -> LiveServer:
    command = [sys.executable, "-m", "protloc.cli", "serve", str(run_dir), "--port", "0", "--device", "cpu",
               "--precision", "fp32", "--max-bytes", str(LIVE_MAX_BYTES), "--max-connections", str(LIVE_MAX_CONNECTIONS),
               "--timeout", str(LIVE_TIMEOUT_S), *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    # Into a file, not a pipe: uvicorn logs every request, and a pipe nobody reads would stall the server.
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        # "serving RUN on http://127.0.0.1:PORT (Ctrl-C to stop)", printed once the socket is bound
        match = re.search(r"serving .* on (http://127\.0\.0\.1:\d+)", log.read_text())
        server = match and LiveServer(match.group(1), process, log)
        try:
            if server and server.get("/health", timeout=2)[0] == 200:
                return server
        except OSError:
            pass  # bound, but the application is still starting
        time.sleep(0.2)
    process.kill()
    process.wait()
    pytest.fail(f"protloc serve did not start\n{log.read_text()}")


def stop_server(server: LiveServer) -> None:
    """Ctrl-C, as a user stops it; once uvicorn reports its clean shutdown, the interpreter's own slow exit
    (seconds, unloading torch) is not waited for."""
    server.process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 15
    while server.process.poll() is None and time.monotonic() < deadline:
        if "Finished server process" in server.log.read_text():
            break
        time.sleep(0.1)
    server.process.kill()
    server.process.wait()
    assert "Finished server process" in server.log.read_text(), "the server did not shut down cleanly"


@pytest.fixture(scope="session")
def live_server(run_dir, tmp_path_factory):
    server = start_server(run_dir, tmp_path_factory.mktemp("live") / "server.log")
    yield server
    stop_server(server)


# ---------------------------------------------------------------- decompression bombs: small files, huge images


def png_bomb(path: Path, width: int, height: int) -> Path:
    """A valid all-black RGB PNG of width x height (height a multiple of 100), made without holding the image:
    after a full flush, deflate compresses each identical block of rows to identical bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"\0" * (1 + 3 * width) * 100  # a filter byte, then RGB, for 100 rows
    compressor = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    first = compressor.compress(rows) + compressor.flush(zlib.Z_FULL_FLUSH)  # with the zlib header
    block = compressor.compress(rows) + compressor.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(height // 100):
        adler = zlib.adler32(rows, adler)
    # The final empty block, then the checksum of everything a decoder would inflate.
    idat = first + block * (height // 100 - 1) + b"\x03\x00" + struct.pack(">I", adler)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def tiff_bomb(path: Path, side: int) -> Path:
    """A valid all-zero zlib-compressed uint8 TIFF of side x side, its identical tiles compressed once."""
    import zlib

    import tifffile

    tile = (1024, 1024)
    packed = zlib.compress(bytes(tile[0] * tile[1]), 9)
    tiles = (-(-side // tile[0])) ** 2
    tifffile.imwrite(path, data=(packed for _ in range(tiles)), shape=(side, side), dtype=np.uint8, tile=tile,
                     compression="zlib")
    return path


@pytest.fixture(scope="session")
def bombs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bombs")
    return {"tiff": tiff_bomb(folder / "bomb.tif", 14000), "png": png_bomb(folder / "bomb.png", 9000, 9000)}
