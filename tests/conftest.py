"""Settings for the whole suite: Hypothesis profiles (also used by Schemathesis, which runs on Hypothesis).

- ``ci`` (the default: ``make test`` and CI): derandomized, so every run tries the same examples and the
  suite gives the same answer twice; no example database. Failures found before are pinned in the tests
  as explicit examples (``@example``, or ``PINNED`` for the HTTP fuzz), tried first on every run.
- ``fuzz`` (``make fuzz``): fresh random examples, ``FUZZ_FACTOR`` times as many, and a database under
  ``.hypothesis/`` so a failure replays until it is fixed. Pin what it finds, then fix it.

Choose one with ``HYPOTHESIS_PROFILE=fuzz``.

Fixtures for every module: ``s3``, an S3-compatible server for storage tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase
from support import S3Server, unused_port

settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("fuzz", derandomize=False, database=DirectoryBasedExampleDatabase(".hypothesis/examples"),
                          deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One S3-compatible server (moto) for the session, with its credentials in this process's environment
    (where pyarrow reads them; a local Ray started afterwards passes them on to its workers)."""
    for key, value in S3Server.env.items():
        os.environ.setdefault(key, value)
    server = S3Server(tmp_path_factory.mktemp("s3"), unused_port())
    yield server
    server.stop()
