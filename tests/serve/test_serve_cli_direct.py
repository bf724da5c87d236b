"""`moe-orch serve` as a user runs it: a real process, real Ray, real HTTP on 127.0.0.1, stopped by its pid.

It serves with ``serve.ingress=direct`` (the replica's own HTTP server, no proxy hop), the mode
that benchmarks/serve_ensemble.py measures against Flask; the proxy mode is covered in
test_serve_ensemble.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from orchestrator.cli import main

pytestmark = pytest.mark.slow
TEXTS = ["a charming and often affecting journey .", "unflinchingly bleak and desperate"]


def _port_pair() -> int:
    """A port p with p and p + 1 free (the replica takes p, Ray's proxy p + 1)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no two adjacent free ports")


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_direct_ingress_needs_a_single_replica(tiny_checkpoint: Path) -> None:
    result = CliRunner().invoke(main, ["serve", str(tiny_checkpoint), "serve.ingress=direct", "train.lr=1"])
    assert result.exit_code == 2
    assert "serve.max_replicas: got 2, expected 1 with serve.ingress 'direct'" in result.output
    assert "train.lr=1: got a key outside serve" in result.output
    result = CliRunner().invoke(main, ["serve", str(tiny_checkpoint), "serve.ingress=sideways"])
    assert result.exit_code == 2 and "serve.ingress: got 'sideways', expected one of proxy, direct" in result.output


def test_serve_command_direct_ingress_end_to_end(tiny_checkpoint: Path, tmp_path: Path,
                                                 load_batch_sizes: Callable) -> None:
    port = _port_pair()
    url = f"http://127.0.0.1:{port}/ensemble"
    cmd = [str(Path(sys.executable).parent / "moe-orch"), "serve", str(tiny_checkpoint), "serve.ingress=direct",
           "serve.max_replicas=1", "serve.max_batch_size=8", "serve.batch_wait_timeout_s=0.05",
           "serve.num_cpus_per_replica=1", "--port", str(port)]
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True,
                            env={**os.environ, "RAY_SERVE_LOG_TO_STDERR": "0", "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 180
        while not _answers(f"{url}/healthz"):
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the app did not come up in 180 s"
            time.sleep(0.5)
        health = requests.get(f"{url}/healthz", timeout=10).json()
        assert health["ingress"] == "direct" and health["experts"] == ["bert_wp", "roberta_bpe"]
        assert requests.get(f"{url}/docs", timeout=10).status_code == 200

        reply = requests.post(f"{url}/predict", json={"texts": TEXTS}, timeout=30)
        assert reply.status_code == 200, reply.text
        assert len(reply.json()["labels"]) == 2
        bad = requests.post(f"{url}/predict", json={"texts": [3]}, timeout=30)
        assert bad.status_code == 422 and bad.json()["detail"]

        sizes = load_batch_sizes(f"{url}/predict", TEXTS, 32, 8)  # bounded: 32 requests
        assert 1 < max(sizes) <= 8, sizes
    finally:
        proc.send_signal(signal.SIGTERM)  # stop what we started, by its pid
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
    assert proc.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
    assert "stopping" in (tmp_path / "serve.log").read_text()
    assert not _answers(f"{url}/healthz")
