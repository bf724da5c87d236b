"""OpenMP and the generation engine's thread: one team of workers, which spins between a step's matmuls.

torch's CPU kernels run on GNU OpenMP (libgomp). After a parallel region its worker threads spin for
a while, waiting for the next one, and then sleep; waking a sleeping worker costs tens of
microseconds. Once libgomp manages more threads than the machine has cores it spins only 100
iterations instead of 300,000 (1,000 with ``OMP_WAIT_POLICY=ACTIVE``; ``GOMP_SPINCOUNT`` in libgomp's
manual), and that is the case whenever torch runs in a second thread:
the thread that loaded the model keeps its team for as long as it lives, and the generation engine's
thread gets its own. Its workers then sleep between the ~200 small matmuls of a decode step. Measured
on SmolLM2-135M (2 cores, 2 threads, batch 1, int8 weights): a decode step took 23-25 ms in a bare
loop in the loading thread and 38-43 ms in a second thread; the int8 linears alone 11.8 ms against
26.1 ms (``docs/benchmarks.md``).

Two remedies, both applied:

- ``in_fresh_thread``: load the model in a thread that ends, so that it leaves no team behind and the
  engine's thread is the only one with workers (the second thread's step: 22.8-24.2 ms). Serve replicas
  load and hot-swap their model this way, as do the LLM judge's local model actors and ``decode.py``;
  ``moe-orch generate`` decodes in the thread that loaded the model.
- ``DECODE_ENV``, for when a second team exists anyway (a thread the replica's framework ran torch in,
  an old engine draining after a hot swap): ``OMP_WAIT_POLICY=ACTIVE`` (1,000 spins with two teams;
  29-31 ms a step) with ``GOMP_SPINCOUNT`` bounding the spin with one team (``ACTIVE`` alone spins
  without end, and an idle team then takes a core from the engine's).
  libgomp reads it once, when torch loads it, so it must be in the environment before ``import
  torch``: Serve replicas get it in their actor's runtime environment (``serve.app.deployment_options``;
  a replica then starts in a worker process of its own rather than a pooled one: the ensemble test
  app's setup took 23.5-24.0 s with it, 20.8-22.3 s without), ``benchmarks/decode.py`` calls
  ``apply_decode_env()`` first.

A variable already set by the user is left as it is. This module imports nothing heavy (no torch).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

DECODE_ENV = {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "300000"}


def decode_env(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """``DECODE_ENV`` less the variables ``environ`` (default ``os.environ``) already sets."""
    environ = os.environ if environ is None else environ
    return {key: value for key, value in DECODE_ENV.items() if key not in environ}


def apply_decode_env() -> bool:
    """Put ``DECODE_ENV``'s unset variables into this process's environment; True if that was in time
    (torch not imported yet), False if libgomp has already read its settings (then nothing changes)."""
    os.environ.update(decode_env())
    return "torch" not in sys.modules


def in_fresh_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` run in a new thread that ends when it returns: its result, or its exception
    raised here. A thread that runs torch's parallel kernels (loading a model does) keeps an OpenMP team
    while it lives; this one takes its team with it (module docstring)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="load") as pool:
        return pool.submit(fn, *args, **kwargs).result()
