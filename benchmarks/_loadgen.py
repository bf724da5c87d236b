"""What the serving benchmarks share (``serve_ensemble.py``, ``serve_lm.py``): loopback ports, the data
root, the closed-loop load generator and nearest-rank percentiles.

A benchmark script imports it as ``_loadgen`` (a script's own folder is first on its ``sys.path``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # every server and client of the benchmarks: loopback only

Item = TypeVar("Item")
Answer = TypeVar("Answer")


def free_port() -> int:
    """A free TCP port on ``HOST``."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def free_port_pair() -> int:
    """A port p with p and p + 1 both free (direct ingress: the replica takes p, Ray's proxy p + 1;
    haproxy: HAProxy takes p, Ray's proxy p + 1)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind((HOST, port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no two adjacent free ports on 127.0.0.1")


def data_root() -> Path:
    """``$MOE_ORCH_DATA``, else ``../shared/data`` beside the repository."""
    return Path(os.environ.get("MOE_ORCH_DATA") or REPO / ".." / "shared" / "data").resolve()


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values`` (seconds) in ms; NaN if empty."""
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@dataclass
class Load(Generic[Answer]):
    """What one closed-loop load brought back."""

    answers: list[Answer]  # what ``send`` returned for each answered request, in the order they came back
    errors: int  # failed requests, unfinished ones included
    unfinished: int  # not answered (or never sent) when the load's bound ran out
    wall_s: float


async def closed_loop(items: list[Item], concurrency: int, send: Callable[[Any, Item], Awaitable[Answer]],
                      timeout_s: float, request_timeout_s: float | None = None,
                      on_error: Callable[[BaseException, int], None] | None = None) -> Load[Answer]:
    """``concurrency`` clients over ``items`` (in order), each sending the next as soon as its last one is
    answered: ``await send(session, item)`` on one shared ``aiohttp.ClientSession`` of at most ``concurrency``
    connections, each request bounded by ``request_timeout_s`` (default ``timeout_s``).

    The whole load is bounded by ``timeout_s``: the clients still waiting then are cancelled, and what they and
    the queue still held counts as unfinished (and as errors). A request fails when ``send`` raises a timeout,
    an ``aiohttp.ClientError``, a ``RuntimeError`` (e.g. a non-200 answer), a ``ValueError`` (a body that is not
    JSON) or a ``KeyError`` (a body without the expected fields); ``on_error(exc, failures so far)`` hears of it.
    """
    import aiohttp

    answers: list[Answer] = []
    failed = 0
    queue = list(reversed(items))  # pop() takes them in order

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal failed
        while queue:
            item = queue.pop()
            try:
                answers.append(await send(session, item))
            except (TimeoutError, aiohttp.ClientError, RuntimeError, ValueError, KeyError) as exc:
                failed += 1
                if on_error is not None:
                    on_error(exc, failed)

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=request_timeout_s or timeout_s)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        start = time.perf_counter()
        tasks = [asyncio.create_task(client(session)) for _ in range(concurrency)]
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:  # the load's bound: stop the clients, count what they still waited for
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        wall = time.perf_counter() - start
    unfinished = len(items) - len(answers) - failed
    return Load(answers, failed + unfinished, unfinished, wall)
