"""The request-body limit every served app gets (``serve.body_limit.BodyLimit``), over real HTTP to a
uvicorn server on 127.0.0.1: a body over the limit gets 413 before the app parses it, with or
without a Content-Length; one within the limit reaches the app intact."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from serve.body_limit import BodyLimit

LIMIT = 1000


class Echo(BaseModel):
    text: str


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, list[str]]]:
    """``(url, texts the app parsed)`` of an echo app behind ``BodyLimit``."""
    parsed: list[str] = []
    api = FastAPI()

    @api.post("/echo")
    async def echo(body: Echo) -> dict[str, int]:
        parsed.append(body.text)
        return {"chars": len(body.text)}

    api.add_middleware(BodyLimit, max_bytes=LIMIT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield f"http://127.0.0.1:{port}", parsed
    srv.should_exit = True
    thread.join(timeout=30)


def _chunks(payload: bytes, size: int = 100) -> Iterator[bytes]:
    for i in range(0, len(payload), size):
        yield payload[i:i + size]


def test_a_body_within_the_limit_reaches_the_app(server: tuple[str, list[str]]) -> None:
    url, parsed = server
    assert requests.post(f"{url}/echo", json={"text": "hi"}, timeout=30).json() == {"chars": 2}
    payload = b'{"text": "' + b"y" * 500 + b'"}'  # chunked: no Content-Length, replayed to the app
    reply = requests.post(f"{url}/echo", data=_chunks(payload), headers={"content-type": "application/json"},
                          timeout=30)
    assert reply.status_code == 200 and reply.json() == {"chars": 500}
    assert parsed[-2:] == ["hi", "y" * 500]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_the_limit_gets_413_unparsed(server: tuple[str, list[str]], chunked: bool) -> None:
    url, parsed = server
    before = len(parsed)
    payload = b'{"text": "' + b"z" * (2 * LIMIT) + b'"}'
    reply = requests.post(f"{url}/echo", data=_chunks(payload) if chunked else payload,
                          headers={"content-type": "application/json"}, timeout=30)
    assert reply.status_code == 413 and "at most 1000" in reply.json()["detail"]
    garbage = b"not json at all " * 200  # over the limit: 413, not the parser's 422
    assert requests.post(f"{url}/echo", data=garbage, timeout=30).status_code == 413
    assert len(parsed) == before  # the app never saw either body
    assert requests.post(f"{url}/echo", json={"text": "after"}, timeout=30).status_code == 200
