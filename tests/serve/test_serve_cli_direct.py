"""`moe-orch serve` as a user runs it: a real process, real Ray, real HTTP on 127.0.0.1, stopped by its pid.

It serves with ``serve.ingress=direct`` (the replica's own HTTP server, no proxy hop) and with
``serve.ingress=haproxy`` (HAProxy in front of two such replicas), the modes that
benchmarks/serve_ensemble.py measures against Flask; the proxy mode is covered in
test_serve_ensemble.py.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import requests
import yaml
from click.testing import CliRunner

from orchestrator.cli import main

pytestmark = pytest.mark.slow
TEXTS = ["a charming and often affecting journey .", "unflinchingly bleak and desperate"]


def _port_pair() -> int:
    """A port p with p and p + 1 free (the replica or HAProxy takes p, Ray's proxy p + 1)."""
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


@contextmanager
def _moe_orch_serve(checkpoint: Path, tmp_path: Path, port: int, *overrides: str) -> Iterator[psutil.Process]:
    """``moe-orch serve CHECKPOINT OVERRIDES --port PORT`` until its ``/ensemble/healthz`` answers; on
    leaving, SIGTERM to its pid, and it must stop cleanly (exit 0, "stopping" logged, nothing answering)."""
    url = f"http://127.0.0.1:{port}/ensemble"
    cmd = [str(Path(sys.executable).parent / "moe-orch"), "serve", str(checkpoint), *overrides, "--port", str(port)]
    log_path = tmp_path / "serve.log"
    log = log_path.open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True,
                            env={**os.environ, "RAY_SERVE_LOG_TO_STDERR": "0", "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 180
        while not _answers(f"{url}/healthz"):
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the app did not come up in 180 s"
            time.sleep(0.5)
        yield psutil.Process(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)  # stop what we started, by its pid
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
    assert proc.returncode == 0, log_path.read_text()[-3000:]
    assert "stopping" in log_path.read_text()
    assert not _answers(f"{url}/healthz")


def _listening(root: psutil.Process) -> dict[tuple[str, int, int], str]:
    """``{(process name, pid, port): ip}`` of every listening TCP socket of ``root`` and its descendants."""
    listening = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    listening[(proc.name(), proc.pid, conn.laddr.port)] = conn.laddr.ip
        except psutil.Error:  # a worker that exited meanwhile
            continue
    return listening


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback  # ::ffff:127.0.0.1 too


def test_direct_ingress_needs_a_single_replica(tiny_checkpoint: Path) -> None:
    result = CliRunner().invoke(main, ["serve", str(tiny_checkpoint), "serve.ingress=direct", "train.lr=1"])
    assert result.exit_code == 2
    assert "serve.max_replicas: got 2, expected 1 with serve.ingress 'direct'" in result.output
    assert "train.lr=1: got a key outside serve" in result.output
    result = CliRunner().invoke(main, ["serve", str(tiny_checkpoint), "serve.ingress=sideways"])
    assert result.exit_code == 2
    assert "serve.ingress: got 'sideways', expected one of proxy, direct, haproxy" in result.output


def test_serve_command_direct_ingress_end_to_end(tiny_checkpoint: Path, tmp_path: Path,
                                                 load_batch_sizes: Callable) -> None:
    port = _port_pair()
    url = f"http://127.0.0.1:{port}/ensemble"
    with _moe_orch_serve(tiny_checkpoint, tmp_path, port, "serve.ingress=direct", "serve.max_replicas=1",
                         "serve.max_batch_size=8", "serve.batch_wait_timeout_s=0.05", "serve.num_cpus_per_replica=1"):
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


def test_haproxy_ingress_emitted_config_names_rays_switches_only(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A cluster gets Ray's switches, not this machine's folder, and a warning about Ray's own listeners."""
    path = tmp_path / "serve.yaml"
    result = CliRunner().invoke(main, ["serve", str(tiny_checkpoint), "serve.ingress=haproxy", "--port", "8100",
                                       "--emit-config", str(path)])
    assert result.exit_code == 0, result.output
    header = path.read_text().split("\n", 2)[:2]
    assert "RAY_SERVE_ENABLE_HA_PROXY=1" in header[0] and "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT=8101" in header[0]
    assert "RAY_SERVE_HAPROXY_BINARY_PATH" not in header[0] and "firewall" in header[1]
    config = yaml.safe_load(path.read_text())
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8100}  # HAProxy's port
    assert config["applications"][0]["deployments"][0]["autoscaling_config"]["max_replicas"] == 2


def test_serve_command_haproxy_ingress_two_replicas_on_loopback(tiny_checkpoint: Path, tmp_path: Path,
                                                                load_batch_sizes: Callable) -> None:
    """HAProxy in front of two replicas (autoscaling's path without Ray's Python proxy): both answer behind
    one port, HAProxy listens on that port only, every socket is on loopback, and its files are private."""
    from serve.haproxy import session_dir

    port = _port_pair()
    url = f"http://127.0.0.1:{port}/ensemble"
    with _moe_orch_serve(tiny_checkpoint, tmp_path, port, "serve.ingress=haproxy", "serve.min_replicas=2",
                         "serve.max_replicas=2", "serve.max_batch_size=8", "serve.batch_wait_timeout_s=0.05",
                         "serve.num_cpus_per_replica=1") as server:
        health = requests.get(f"{url}/healthz", timeout=10).json()
        assert health["ingress"] == "haproxy" and health["experts"] == ["bert_wp", "roberta_bpe"]
        reply = requests.post(f"{url}/predict", json={"texts": TEXTS}, timeout=30)
        assert reply.status_code == 200 and len(reply.json()["labels"]) == 2, reply.text
        bad = requests.post(f"{url}/predict", json={"texts": [3]}, timeout=30)
        assert bad.status_code == 422 and bad.json()["detail"]

        replicas: set[str] = set()  # the second replica joins HAProxy's backends once it is up
        deadline = time.monotonic() + 120
        while len(replicas) < 2:
            assert time.monotonic() < deadline, f"only {replicas} answered in 120 s"
            replicas.add(requests.get(f"{url}/healthz", timeout=10).json()["replica"])
            time.sleep(0.1)
        sizes = load_batch_sizes(f"{url}/predict", TEXTS, 32, 8)  # bounded: 32 requests
        assert max(sizes) <= 8, sizes

        listening = _listening(server)
        haproxy = {(name, pid, p): ip for (name, pid, p), ip in listening.items() if name == "haproxy"}
        assert haproxy and {p for _, _, p in haproxy} == {port}, listening  # no stats page, no exporter
        assert all(ip == "127.0.0.1" for ip in haproxy.values()), haproxy
        exposed = {where: ip for where, ip in listening.items() if not _loopback(ip)}
        replica_grpc = [where for where in exposed if where[0].startswith("ray::ServeReplica")]
        assert len(replica_grpc) <= 2 and set(exposed) == set(replica_grpc), exposed  # see test_serve_ensemble

        folder = session_dir(port)
        nodes = [node for node in folder.iterdir() if node.is_dir()]
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and len(nodes) == 1
        assert stat.S_IMODE(nodes[0].stat().st_mode) == 0o700 and (nodes[0] / "admin.sock").is_socket()
        haproxy_pids = {pid for _, pid, _ in haproxy}
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).name() == "haproxy" for pid in haproxy_pids)
    assert not folder.exists()  # removed once Serve had stopped HAProxy
