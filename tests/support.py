"""Helpers the test modules share (``tests/`` is on the test path: ``pythonpath`` in pyproject.toml)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

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


def fuzz_openapi(app_url: str, max_examples: int = 30) -> list[int]:
    """Every operation of the app's own OpenAPI schema (``<app_url>/openapi.json``) with requests that
    Schemathesis generates from it, both fitting the schema and not; fails on any 5xx. Returns the
    statuses answered. (Hypothesis drives Schemathesis's strategies directly; its pytest plugin does
    not load under pytest 9.)"""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_url(f"{app_url}/openapi.json")
    statuses: list[int] = []
    for operation in [result.ok() for result in schema.get_all_operations()]:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck),
                      database=None)
            def no_server_error(case: Any) -> None:
                response = case.call(base_url=app_url, timeout=60)
                statuses.append(response.status_code)
                case.validate_response(response, checks=[not_a_server_error])

            try:
                no_server_error()
            except Unsatisfiable:  # a route with no parameters and no body has no invalid input
                assert mode is GenerationMode.NEGATIVE and operation.method.upper() == "GET"
    return statuses


def randomize_routing(model: Any, seed: int = 0) -> None:
    """Give a MixLoRA model's routers N(0, 1) weights (decisive: no near-ties) and its expert LoRA B
    0.5 * N(0, 1) (fresh ones are zero), seeded, so routing and outputs vary from token to token."""
    import torch

    from trainables.mixlora.layer import mixlora_blocks

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in mixlora_blocks(model):
            block.router.gate.weight.copy_(torch.randn(block.router.gate.weight.shape, generator=generator))
            for bank in (block.lora_gate, block.lora_up, block.lora_down):
                bank.B.copy_(0.5 * torch.randn(bank.B.shape, generator=generator))
