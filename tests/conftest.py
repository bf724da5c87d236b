"""Settings for the whole suite: Hypothesis profiles (also used by Schemathesis, which runs on Hypothesis).

- ``ci`` (the default: ``make test`` and CI): derandomized, so every run tries the same examples and the
  suite gives the same answer twice; no example database. Failures found before are pinned in the tests
  as explicit examples (``@example``, or ``PINNED`` for the HTTP fuzz), tried first on every run.
- ``fuzz`` (``make fuzz``): fresh random examples, ``FUZZ_FACTOR`` times as many, and a database under
  ``.hypothesis/`` so a failure replays until it is fixed. Pin what it finds, then fix it.

Choose one with ``HYPOTHESIS_PROFILE=fuzz``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("fuzz", derandomize=False, database=DirectoryBasedExampleDatabase(".hypothesis/examples"),
                          deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
