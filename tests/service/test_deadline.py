"""RequestDeadline: a slow body gets 408, a slow answer 503, a prompt request passes untouched."""
from __future__ import annotations

import asyncio
import json

from starlette.requests import Request
from starlette.responses import JSONResponse

from protloc.service.deadline import RequestDeadline


async def echo_length(scope, receive, send):
    body = await Request(scope, receive).body()
    await JSONResponse({"length": len(body)})(scope, receive, send)


async def think(scope, receive, send):
    await asyncio.sleep(10)


def call(app, receive, method: str = "POST") -> tuple[int, dict]:
    scope = {"type": "http", "method": method, "path": "/", "headers": [], "query_string": b""}
    sent = []

    async def send(message):
        sent.append(message)

    asyncio.run(RequestDeadline(app, seconds=0.2)(scope, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"])


def test_a_body_that_does_not_arrive_in_time_is_408():
    async def trickle():
        await asyncio.sleep(10)

    assert call(echo_length, trickle) == (408, {"detail": "request not received within 0.2 s"})


def test_an_answer_that_does_not_come_in_time_is_503():
    async def whole_body():
        return {"type": "http.request", "body": b"abc", "more_body": False}

    assert call(think, whole_body) == (503, {"detail": "request not answered within 0.2 s"})
    assert call(echo_length, whole_body) == (200, {"length": 3})
