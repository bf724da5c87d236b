"""OpenMP's wait policy for processes that decode: idle worker threads spin briefly before they sleep.

torch's CPU kernels run on GNU OpenMP (libgomp). After a parallel region its worker threads spin for
a while, waiting for the next one, and then sleep; waking a sleeping worker costs tens of
microseconds. libgomp spins only briefly (about 1,000 iterations instead of 300,000) once it manages
more threads than the machine has cores, and that is the case whenever torch runs in a second thread:
the thread that loaded the model keeps its team of workers, and the generation engine's thread (or
the streamer thread of ``generate``) gets its own. Its workers then sleep between the ~200 small
matmuls of a decode step. Measured on SmolLM2-135M (2 cores, 2 threads, batch 1, 64 tokens): the
int8 linears of a decode step took 11.8 ms in the main thread and 26.1 ms in a second one; the
engine decoded 23-25 tok/s with int8 weights before, 30.5 after (``docs/benchmarks.md``).

``DECODE_ENV`` makes the workers spin up to 300,000 iterations whatever the thread count
(``OMP_WAIT_POLICY=ACTIVE`` with ``GOMP_SPINCOUNT`` bounding the spin; ``ACTIVE`` alone spins
without end, and the main thread's idle team then takes a core from the engine's). libgomp reads
them once, when torch loads it, so they must be in the environment before ``import torch``:

- Serve replicas get them in their actor's runtime environment (``serve.app.deployment_options``);
- ``moe-orch generate`` and ``benchmarks/decode.py`` call ``apply_decode_env()`` before importing torch.

A variable already set by the user is left as it is. This module imports nothing heavy (no torch).
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

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
