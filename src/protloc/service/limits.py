"""How much the service takes on at once: every bound on memory, time and concurrency, in one place.

A hostile or careless client must not be able to make the server hold unbounded memory or time: uploads are
capped in bytes (413), images in pixels before they are decoded (413), decodes and queued predictions in
number (excess waits briefly, then 503), connections in number (uvicorn answers 503), and each request in
time (slow headers are cut, a slow body gets 408, a slow answer 503).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from protloc.errors import ProtlocError

MIB = 1024 * 1024


@dataclass(frozen=True)
class ServiceLimits:
    # Uploads. A 2048 x 2048 16-bit RGBA TIFF, the largest HPA field, is 32 MiB uncompressed.
    max_upload_bytes: int = 50 * MIB
    # Height x width x channels, as `protloc predict` counts them, checked from the file's header before any
    # pixel is decoded: a 200 KB PNG may claim 9000 x 9000. A 4096 x 4096 RGB field (50 million) fits.
    max_pixels: int = 64_000_000
    max_files: int = 64  # images in one request

    # Decoding: at most this many uploads decode at once; the others wait up to `admission_wait_s`.
    decode_slots: int = 2

    # Batching: requests arriving within `batch_wait_ms` of each other share a forward pass of up to
    # `batch_size` images. Queued images are bounded in number and in decoded bytes.
    batch_size: int = 32
    batch_wait_ms: float = 5.0
    max_queued_images: int = 256
    max_queued_bytes: int = 512 * MIB
    explain_slots: int = 2  # Grad-CAM requests running or waiting for the model thread
    admission_wait_s: float = 2.0  # how long excess work waits for room before it gets 503

    # Connections and time.
    max_connections: int = 64  # uvicorn's limit_concurrency: connections beyond it get 503
    header_timeout_s: float = 10.0  # a connection that has not sent a whole request head by then is closed
    keep_alive_s: int = 5  # idle keep-alive connections are closed after this
    request_timeout_s: float = 60.0  # a request not answered by then gets 408 (body still arriving) or 503

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not value > 0:
                raise ProtlocError(f"service limit {field.name.replace('_', '-')} = {value}: expected a positive number")
