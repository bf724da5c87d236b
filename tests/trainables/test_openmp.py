"""``trainables.openmp``: models load in a thread that ends; the OpenMP wait settings reach the environment before
torch loads libgomp, and never override a user's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from trainables.openmp import DECODE_ENV, apply_decode_env, decode_env, in_fresh_thread

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _python(code: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in DECODE_ENV} | env
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=clean)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_fresh_process_gets_the_settings_before_torch_loads() -> None:
    found = _python("import json, os; from trainables.openmp import apply_decode_env, DECODE_ENV\n"
                    "in_time = apply_decode_env(); import torch\n"
                    "print(json.dumps({'in_time': in_time, 'env': {k: os.environ.get(k) for k in DECODE_ENV}}))")
    assert found == {"in_time": True, "env": DECODE_ENV}


def test_a_users_own_setting_is_kept() -> None:
    found = _python("import json, os; from trainables.openmp import apply_decode_env, DECODE_ENV\n"
                    "apply_decode_env(); print(json.dumps({k: os.environ.get(k) for k in DECODE_ENV}))",
                    OMP_WAIT_POLICY="PASSIVE")
    assert found == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "300000"}
    assert decode_env({"GOMP_SPINCOUNT": "1000"}) == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_too_late_once_torch_is_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch  # noqa: F401  (this test process has it already)

    for key in DECODE_ENV:
        monkeypatch.delenv(key, raising=False)  # restored after the test: later Ray workers inherit this env
    assert apply_decode_env() is False


def test_in_fresh_thread_returns_raises_and_leaves_no_thread_behind() -> None:
    import threading

    seen: list[threading.Thread] = []

    def work(x: int, y: int = 0) -> int:
        seen.append(threading.current_thread())
        return x + y

    assert in_fresh_thread(work, 1, y=2) == 3
    assert seen[0] is not threading.current_thread() and not seen[0].is_alive()  # its OpenMP team went with it
    with pytest.raises(ZeroDivisionError):
        in_fresh_thread(lambda: 1 / 0)
