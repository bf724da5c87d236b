"""Three hosts built from Linux network namespaces (tests/hosts.py), each with its own IP, /etc/hosts,
process table and local disk, one Ray node on each (one CPU); on the head, one ``mlflow server`` (proxied
artifacts) and one S3-compatible server (moto), the storage every run uses (``storage.path: s3://...``).

What Ray nodes side by side on loopback cannot show: the hosts really are apart (a file on one host's local disk
is on no other; each /etc/hosts is its own), Ray's three nodes report three addresses, a 2-worker DDP run
spans two hosts (one of them resolving its hostname to 127.0.1.1, as Debian writes /etc/hosts: gloo must
use the interface of Ray's node IP) and keeps its checkpoints in the bucket, a sweep puts trials on every
host, all of it reaches the one tracking server over the network, ``moe-orch serve <run id>`` on the head
answers from a replica on another host, and a host lost mid-sweep has its trial run again on another host
from its newest checkpoint in the bucket. Drivers (``moe-orch ... --address``) run on the head host, from
its local disk, as on a real cluster (a Ray driver must run on a Ray node: tests/hosts.py's docstring)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hosts import Cluster, TrackingServer, read_on, resolve_on, unavailable_reason, write_on
from mlflow.tracking import MlflowClient
from support import S3Server, nested_runs, wait_for

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "experiments" / "tiny.yaml"
MIXLORA_TINY = REPO / "experiments" / "mixlora_tiny.yaml"
MOE_ORCH = str(Path(sys.executable).with_name("moe-orch"))
RAY = str(Path(sys.executable).with_name("ray"))
TRIAL = "ImplicitFunc"  # the class of a Tune trial actor (a function trainable)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three hosts (no Ray yet); their logs stay in pytest's temp folder."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"no network namespaces here: {reason}")
    # every host has the object store's credentials in its environment, as a cloud node has its instance role
    with Cluster(size=3, debian_host=1, logs=tmp_path_factory.mktemp("hosts"), env=S3Server.env) as created:
        yield created


@pytest.fixture(scope="module")
def ray_cluster(cluster: Cluster) -> Iterator[tuple[Cluster, TrackingServer]]:
    """A Ray node on every host (the head with the ``tune_driver`` resource, as the README's cluster) and
    the tracking server on the head; both go when the cluster does."""
    server = TrackingServer(cluster.head, wait=False)  # starts while Ray does
    try:
        cluster.start_ray(num_cpus=1, head_resources={"tune_driver": 4}, timeout_s=300)
        server.wait_ready(timeout_s=300)
        yield cluster, server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def s3(cluster: Cluster) -> Iterator[S3Server]:
    """The object store: an S3-compatible server (moto) on the head host's address, as every host reaches a
    cloud bucket. Overrides the suite's loopback one for this module."""
    server = S3Server(cluster.logs, 9000, host=cluster.head.ip, wrap=tuple(cluster.head.prefix()))
    yield server
    server.stop()


def test_a_file_on_one_hosts_local_disk_is_on_no_other(cluster: Cluster) -> None:
    h0, h1, h2 = cluster.hosts
    local = cluster.private / f"moe-hosts-{cluster.owner}-only-here.txt"  # /tmp: each host has its own
    write_on(h1, local, "h1's disk")
    assert read_on(h1, local) == "h1's disk"  # a later process of the same host reads it back
    assert read_on(h0, local) is None and read_on(h2, local) is None
    assert not local.exists()  # nor does the root namespace see it
    write_on(h0, local, "h0's disk")  # the same path, another disk
    assert (read_on(h0, local), read_on(h1, local)) == ("h0's disk", "h1's disk")

    shared = cluster.shared / "everyone.txt"
    write_on(h2, shared, "shared")
    assert read_on(h0, shared) == read_on(h1, shared) == shared.read_text() == "shared"


def test_each_host_has_its_own_etc_hosts(cluster: Cluster) -> None:
    name = socket.gethostname()
    resolved = {host.name: resolve_on(host, name) for host in cluster.hosts}
    assert resolved == {"h0": cluster.hosts[0].ip, "h1": "127.0.1.1", "h2": cluster.hosts[2].ip}
    assert read_on(cluster.hosts[1], "/etc/hosts") == cluster.hosts_file(1)
    assert socket.gethostbyname(name) not in {host.ip for host in cluster.hosts}  # the root namespace's: untouched


def test_three_ray_nodes_on_three_addresses(ray_cluster: tuple[Cluster, TrackingServer]) -> None:
    cluster, _ = ray_cluster
    ips = sorted(cluster.alive_nodes().values())
    assert ips == sorted(host.ip for host in cluster.hosts)
    assert len(set(ips)) == 3 and all(ip.startswith(f"{cluster.subnet}.") for ip in ips)


def _start_moe_orch(cluster: Cluster, s3: S3Server, prefix: str, *args: str) -> tuple[subprocess.Popen, Path]:
    """``moe-orch <args> --address <head>`` as a user runs it on the head host, from its local disk, with
    ``storage.path`` in the object store under ``prefix``: checkpoints and Tune's trial state go there, where
    every host reads them; its output goes to ``<logs>/<command>.log``."""
    log = cluster.logs / f"{args[0]}-{prefix}.log"
    with log.open("w") as out:
        proc = cluster.head.run([MOE_ORCH, *args, f"storage.path={s3.uri(prefix)}", "--address", cluster.address],
                                cwd=cluster.private, stdout=out, stderr=subprocess.STDOUT)
    return proc, log


def _finish(proc: subprocess.Popen, log: Path, timeout_s: float = 600) -> str:
    """Wait for a ``_start_moe_orch`` command (killing it after ``timeout_s``); its output, once it exited 0."""
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        _kill(proc)
    text = log.read_text()
    assert code == 0, f"exit {code}:\n{text[-5000:]}"
    return text


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL to a ``_start_moe_orch`` command's process group, if it still runs."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


def _new_actor_hosts(cluster: Cluster, class_name: str, before: dict[str, str]) -> list[str]:
    """The hosts of the actors of ``class_name`` that are not in ``before`` (an earlier ``cluster.actors``)."""
    return sorted(host for actor, host in cluster.actors(class_name).items() if actor not in before)


def test_ddp_spans_two_hosts_one_resolving_its_name_to_loopback(ray_cluster: tuple[Cluster, TrackingServer],
                                                              s3: S3Server) -> None:
    cluster, server = ray_cluster
    before = cluster.actors("RayTrainWorker")
    with cluster.holding(cluster.head):  # the head's CPU is taken: the two workers go to h1 and h2
        out = _finish(*_start_moe_orch(cluster, s3, "ddp", "train", str(TINY), "scaling.num_workers=2",
                                       "train.max_steps=20", f"tracking.uri={server.url}"))
    assert f"Ray: cluster at {cluster.address}" in out and "step 20/20" in out
    # h1 resolves its hostname to 127.0.1.1; h2's address sorts above it, so h2 dials h1 (tests/hosts.py)
    assert _new_actor_hosts(cluster, "RayTrainWorker", before) == ["h1", "h2"]

    run_id = out.rsplit("MLflow run: ", 1)[1].split()[0]
    client = MlflowClient(tracking_uri=server.url)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [10, 20]
    assert "checkpoint" in {f.path for f in client.list_artifacts(run_id)}
    assert client.list_artifacts(run_id, "checkpoint"), "the checkpoint artifact is empty"
    keys = s3.keys("ddp")  # the checkpoints, written by the workers on h1 and h2, are in the bucket
    assert any(k.endswith("/checkpoint_000020/model/model.safetensors") for k in keys), keys


def test_a_store_storage_or_data_on_the_heads_disk_alone_stops_the_job_first(
        ray_cluster: tuple[Cluster, TrackingServer]) -> None:
    """A SQLite store, a storage folder and a data root on the head's own disk: the other hosts would log to
    stores of their own, keep checkpoints nobody can resume and find no data, so the job stops before it
    trains, naming each field and the hosts without it."""
    cluster, _ = ray_cluster
    data = cluster.private / f"moe-hosts-{cluster.owner}-data"
    cluster.head.check_output(["mkdir", "-p", str(data)])
    cluster.head.check_output(["cp", "-r", str(Path(cluster.env["MOE_ORCH_DATA"]) / "tinyshakespeare"), str(data)])
    log = cluster.logs / "lacks.log"
    with log.open("w") as out:
        proc = cluster.head.run([MOE_ORCH, "train", str(TINY), f"tracking.uri=sqlite:///{data}/mlflow.db",
                                 f"data.root={data}", f"storage.path={data}/results", "--address", cluster.address],
                                cwd=cluster.private, stdout=out, stderr=subprocess.STDOUT)
    try:
        code = proc.wait(timeout=600)
    finally:
        _kill(proc)
    text = log.read_text()
    assert code == 1, text[-3000:]
    error = text.strip().splitlines()[-1]
    assert "NotOnEveryNode" in error and "step " not in text, text[-3000:]
    others = [host.ip for host in cluster.hosts[1:]]
    for field in (f"tracking.uri: got sqlite:///{data}/mlflow.db", f"storage.path: got {data}/results",
                  f"data.root: got {data}"):
        part = error.split(field, 1)[1].split("; expected", 1)[0]  # the hosts named for this field
        assert all(ip in part for ip in others) and cluster.head.ip not in part, (field, error)


def _trial_hosts(cluster: Cluster, s3: S3Server, prefix: str) -> dict[str, list[str]]:
    """``{trial: the hosts it reported from}``, from the ``node_ip`` of every result in Tune's
    ``<trial>/result.json``, in the bucket."""
    host_of = {host.ip: host.name for host in cluster.hosts}
    found = {}
    for key in s3.keys(f"{prefix}/tiny/sweep"):
        if key.endswith("/result.json"):
            with s3.filesystem().open_input_stream(key) as f:
                lines = f.read().decode().splitlines()
            found[key.split("/")[-2]] = sorted({host_of.get(json.loads(line)["node_ip"], "?")
                                                for line in lines if line.strip()})
    return found


def test_a_sweep_puts_trials_on_every_host_and_all_report_to_one_server(
        ray_cluster: tuple[Cluster, TrackingServer], s3: S3Server) -> None:
    cluster, server = ray_cluster
    # A 1-worker trial trains in its Tune trial actor (one CPU), and Tune hands a finished trial's actor to a
    # trial whose own actor is still starting: seconds-long trials would all run in the first actor that
    # started. So every CPU is held until Tune waits on all three trials, and the tracking server is paused
    # (no trial can end) until all three trial actors run: one on each 1-CPU node.
    before = cluster.actors(TRIAL)
    proc: subprocess.Popen | None = None
    try:
        with cluster.holding(*cluster.hosts):
            proc, log = _start_moe_orch(cluster, s3, "sweep", "sweep", str(TINY), "train.max_steps=40",
                                        "train.eval_every=20",
                                        "sweep.num_samples=3", "sweep.max_concurrent_trials=3",
                                        "sweep.scheduler=none", f"tracking.uri={server.url}")
            wait_for(lambda: cluster.placement_groups("PENDING") == 3, 300, alive=proc)
            server.pause()
        wait_for(lambda: len(set(cluster.actors(TRIAL, state="ALIVE")) - set(before)) == 3, 300, alive=proc)
    except BaseException:
        if proc is not None:
            _kill(proc)
        raise
    finally:
        server.resume()
    assert proc is not None
    out = _finish(proc, log)
    trial_hosts = _trial_hosts(cluster, s3, "sweep")
    assert sorted(h for hosts in trial_hosts.values() for h in hosts) == ["h0", "h1", "h2"], trial_hosts

    parent = out.rsplit("MLflow parent run ", 1)[1].split()[0]
    client = MlflowClient(tracking_uri=server.url)
    children = nested_runs(client, parent)
    assert len(children) == 3 and all(r.info.status == "FINISHED" for r in children)
    for child in children:
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_loss")] == [20, 40]


def test_a_ray_job_from_outside_trains_and_serve_on_the_head_answers_from_another_host(
        ray_cluster: tuple[Cluster, TrackingServer], s3: S3Server) -> None:
    """``ray job submit --working-dir`` from the root namespace (outside every host), as a user submits to a
    remote cluster, trains a MixLoRA run: the driver runs on the head from a temporary copy of the folder, so
    its checkpoints go to the bucket and its run to the tracking server. Then ``moe-orch serve <run id>`` on the
    head, its replica on another host (the head's CPU held), downloads the checkpoint from the tracking server
    itself, and Serve's proxy on the head answers an OpenAI completion."""
    cluster, server = ray_cluster
    job_dir = cluster.logs / "job"
    job_dir.mkdir()
    shutil.copy(MIXLORA_TINY, job_dir / "mixlora_tiny.yaml")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=cluster.token)
    done = subprocess.run([RAY, "job", "submit", "--address", cluster.dashboard, "--working-dir", str(job_dir), "--",
                           MOE_ORCH, "train", "mixlora_tiny.yaml", f"tracking.uri={server.url}",
                           f"storage.path={s3.uri('job')}"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0 and "succeeded" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    run_id = done.stdout.rsplit("MLflow run: ", 1)[1].split()[0]
    assert MlflowClient(tracking_uri=server.url).get_run(run_id).info.status == "FINISHED"
    assert any(k.endswith("/model/config.json") for k in s3.keys("job")), s3.keys("job")

    log = cluster.logs / "serve.log"
    with cluster.holding(cluster.head), log.open("w") as sink:
        proc = cluster.head.run([MOE_ORCH, "serve", run_id, "serve.ingress=proxy", "serve.max_replicas=1",
                                 "--tracking-uri", server.url, "--address", cluster.address],
                                cwd=cluster.private, stdout=sink, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: "Ctrl-C to stop" in log.read_text(), 600, alive=proc)
        except BaseException:
            _kill(proc)
            raise
    try:
        url = log.read_text().split("serving ", 1)[1].splitlines()[1].split()[0]  # the line after "serving ..."
        ask = ("import json, requests; r = requests.post('" + url + "/v1/completions', timeout=120, "
               "json={'model': 'mixlora_tiny', 'prompt': 'The capital of France is', 'max_tokens': 4}); "
               "print(json.dumps([r.status_code, r.json()]))")
        status, body = json.loads(cluster.head.check_output([sys.executable, "-c", ask]).strip().splitlines()[-1])
        assert status == 200 and body["choices"][0]["text"] is not None, body
        assert body["usage"]["completion_tokens"] >= 1
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # stops the app as Ctrl-C does: its replica's CPU is given back
        try:
            proc.wait(timeout=120)
        finally:
            _kill(proc)


def test_a_host_lost_mid_sweep_reruns_its_trial_on_another_from_the_bucket(
        ray_cluster: tuple[Cluster, TrackingServer], s3: S3Server) -> None:
    """Last in the module: it takes h2 down. The trial starts on h2 (the other hosts' CPUs held) and keeps its
    checkpoints in the bucket. Once its step-100 metrics are in MLflow (logged after the step-100 checkpoint
    was complete), the bucket is paused, so the trial stops at its next checkpoint upload (a consistent
    point: every complete checkpoint's metrics logged, on an idle machine or a loaded one), and h2's Ray is
    killed. Tune runs the trial again on h0 or h1, which resumes from the newest complete checkpoint in the
    bucket: one continuous val_loss history, no step reported twice."""
    cluster, server = ray_cluster
    h0, h1, h2 = cluster.hosts
    client = MlflowClient(tracking_uri=server.url)
    before = cluster.actors(TRIAL)
    proc: subprocess.Popen | None = None

    def logged_steps() -> list[int]:
        text = log.read_text()
        if "MLflow: parent run " not in text:
            return []
        parent = text.split("MLflow: parent run ", 1)[1].split()[0]
        return [m.step for child in nested_runs(client, parent)
                for m in client.get_metric_history(child.info.run_id, "val_loss")]

    try:
        with cluster.holding(h0, h1):
            proc, log = _start_moe_orch(cluster, s3, "lost", "sweep", str(TINY), "train.max_steps=600",
                                        "train.eval_every=100", "sweep.num_samples=1", "sweep.scheduler=none",
                                        "train.max_failures=2", f"tracking.uri={server.url}")
            wait_for(lambda: _new_actor_hosts(cluster, TRIAL, before) == ["h2"], 300, alive=proc)
        # 500 steps are left (at least several seconds) when the step-100 metrics are logged
        wait_for(lambda: 100 in logged_steps(), 600, alive=proc)
        s3.pause()
        try:
            time.sleep(2)  # the trial logs what it has and waits on its next upload
            h2.kill_ray()
        finally:
            s3.resume()
    except BaseException:
        if proc is not None:
            _kill(proc)
        raise
    out = _finish(proc, log, timeout_s=900)
    assert "TERMINATED" in out, out[-3000:]
    hosts = _new_actor_hosts(cluster, TRIAL, before)
    assert len(hosts) == 2 and hosts[1] == "h2" and hosts[0] in ("h0", "h1"), hosts  # started on h2, ran again

    parent = out.rsplit("MLflow parent run ", 1)[1].split()[0]
    (child,) = nested_runs(client, parent)
    assert child.info.status == "FINISHED" and child.data.metrics["resumed_from_step"] >= 100
    steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_loss")]
    assert sorted(steps) == list(range(100, 601, 100)), steps  # continuous, and no step reported twice
