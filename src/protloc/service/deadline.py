"""A request deadline: the one limit that neither uvicorn nor FastAPI has a setting for; and a client that
hangs up mid-request logged as one line, not as a traceback."""
from __future__ import annotations

import asyncio
import logging

from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("uvicorn.error")  # where uvicorn logs its own connection events


class RequestDeadline:
    """A request not answered within `seconds` is cut short: 408 when the application was waiting for more of
    its body (a slow client), else 503 (a busy server). Work it had queued is dropped when its task is
    cancelled."""

    def __init__(self, app: ASGIApp, *, seconds: float):
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        waiting_for_body = False
        response_started = False

        async def watched_receive() -> Message:
            nonlocal waiting_for_body
            waiting_for_body = True
            message = await receive()  # still True when the deadline cancels it here
            waiting_for_body = False
            return message

        async def watched_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        deadline = asyncio.timeout(self.seconds)
        try:
            async with deadline:
                await self.app(scope, watched_receive, watched_send)
        except ClientDisconnect:  # the client hung up before its body arrived: no one to answer, nothing wrong here
            logger.info("%s %s: the client closed the connection before sending its whole request",
                        scope.get("method"), scope.get("path"))
        except TimeoutError:
            if response_started or not deadline.expired():
                raise  # too late for a status (the server closes the connection), or not our deadline
            status, what = (408, "received") if waiting_for_body else (503, "answered")
            await JSONResponse({"detail": f"request not {what} within {self.seconds:g} s"}, status_code=status,
                               headers={"Connection": "close"})(scope, receive, send)
