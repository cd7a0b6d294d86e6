"""Schema-driven fuzzing: requests generated from /openapi.json, fitting the schema and not, never get a 5xx.

Bounded in examples (about 20 s on two cores). The cases go through the ASGI app in-process, its lifespan
(batching worker, model thread) running as under uvicorn."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from protloc.service.limits import ServiceLimits

EXAMPLES = 50  # per generation mode, spread over the operations


@pytest.fixture(scope="module")
def api_schema(predictor):
    from protloc.service.app import create_app

    limits = ServiceLimits(max_upload_bytes=200_000, max_pixels=250_000)
    app = create_app(predictor, run_name="run", limits=limits, allowed_hosts=["testserver"])
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_gets_a_server_error(api_schema, mode):
    statuses = []

    @given(case=api_schema.as_strategy(mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def call(case):
        statuses.append(case.call_and_validate(checks=[not_a_server_error]).status_code)

    call()
    assert len(statuses) >= EXAMPLES // 2 and all(status < 500 for status in statuses)
    print(f"{mode}: {len(statuses)} requests, statuses {sorted(set(statuses))}")
