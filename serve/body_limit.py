"""Request-body limit for every served app: a body over ``max_body_bytes`` gets 413 before the app
(or its JSON parser) sees a byte of it.

A pure ASGI middleware, so it runs outside FastAPI's parsing and validation:
- a ``Content-Length`` over the limit (or not a number) is answered at once, without reading the body;
- a body without a length (chunked) is read up to the limit and refused as soon as it passes it;
  one that fits is handed on to the app as it arrived.

The refusal comes in the app's own error shape: ``error_body(status, message)`` builds it (default
FastAPI's ``{"detail": message}``; the LM app gives OpenAI's ``{"error": {...}}``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
ErrorBody = Callable[[int, str], dict[str, Any]]


def detail_body(status: int, message: str) -> dict[str, Any]:
    """FastAPI's error shape: ``{"detail": message}``."""
    return {"detail": message}


class BodyLimit:
    """ASGI middleware answering 413 to a request body over ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int, error_body: ErrorBody | None = None) -> None:
        self.app, self.max_bytes, self.error_body = app, max_bytes, error_body or detail_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                await self._refuse(send, 400, f"Content-Length: got {length[:20]!r}, expected a number of bytes")
                return
            if int(length) > self.max_bytes:
                await self._refuse(send, 413, f"request body: got {int(length)} bytes, expected at most "
                                              f"{self.max_bytes}")
                return
            await self.app(scope, receive, send)  # the server stops reading at Content-Length
            return
        messages, size = [], 0
        while True:  # no length given: buffer up to the limit, then replay to the app
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(send, 413, f"request body: got more than {self.max_bytes} bytes, expected at most "
                                              f"{self.max_bytes}")
                return
            if not message.get("more_body", False):
                break
        pending = iter(messages)

        async def replay() -> Message:
            return next(pending, None) or await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, status: int, detail: str) -> None:
        body = json.dumps(self.error_body(status, detail)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
