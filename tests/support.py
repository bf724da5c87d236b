"""Helpers the test modules share (``tests/`` is on the test path: ``pythonpath`` in pyproject.toml)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import psutil


def ray_processes(title_prefix: str) -> list[psutil.Process]:
    """The descendants of this test process whose title starts with ``title_prefix`` (Ray names its
    worker processes ``ray::<actor class>``: ``ray::RayTrainWorker``, ``ray::ServeReplica:<app>:...``)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.cmdline()[:1] and proc.cmdline()[0].startswith(title_prefix):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def wait_for(condition: Callable[[], bool], timeout_s: float, alive: subprocess.Popen | None = None) -> None:
    """Poll ``condition`` every 0.2 s until it holds; fail after ``timeout_s``, or as soon as ``alive``
    (a process the condition waits on) has exited."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if alive is not None:
            assert alive.poll() is None, f"the process ended (exit {alive.returncode}) before that happened"
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s"
        time.sleep(0.2)
