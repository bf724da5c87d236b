"""Two Ray nodes on loopback (a head and a second ``ray start`` node, each with its own temp dir and one
CPU), joined by ``moe-orch`` with ``--address``: a 2-worker DDP run spans both nodes, a sweep places
trials on both, and when the second node is killed mid-sweep its trial runs again on the head and
resumes from its checkpoint. Real ``ray start`` processes, stopped by their process groups."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from support import unused_port, wait_for

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "experiments" / "tiny.yaml"
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()
RAY = str(Path(sys.executable).with_name("ray"))
pytestmark = pytest.mark.slow


UNSHARE = shutil.which("unshare")


class Node:
    """One ``ray start --block`` in its own process group, with its own temp dir and log. ``private``: a
    folder this node does not share: it runs in its own mount namespace with an empty tmpfs there, so
    what the other node writes under it is not visible to this one."""

    def __init__(self, name: str, root: Path, env: dict[str, str], *args: str, private: Path | None = None) -> None:
        self.temp_dir = Path("/tmp") / f"ray-{name}-{os.getpid()}"  # short: Ray's socket paths are length-limited
        self.log = (root / f"{name}.log").open("w")
        command = [RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                   f"--temp-dir={self.temp_dir}", *args]
        if private is not None:  # `exec` keeps the pid: the process group is still this node's
            command = [UNSHARE, "--mount", "--propagation", "private", "sh", "-c",
                       'mount -t tmpfs moe-orch-private "$0" && exec "$@"', str(private), *command]
        self.proc = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the raylet, its workers and the blocking `ray start`
        self.proc.wait(timeout=60)
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Node]]:
    """``(gcs address, dashboard url, second node)`` of a fresh 2-node cluster on loopback."""
    root = tmp_path_factory.mktemp("cluster")
    # each node resolves data.root null to its own $MOE_ORCH_DATA (given here: `make` exports it, plain pytest not)
    os.environ.setdefault("MOE_ORCH_DATA", str(SHARED_DATA))
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_AUTH_MODE": "token",  # joinable, on loopback
           "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5",
           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    port, dashboard = unused_port(), unused_port()
    head = Node("head", root, env, "--head", f"--port={port}", "--num-cpus=1", '--resources={"tune_driver": 4}',
                "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}")
    nodes = [head]
    try:
        address = f"127.0.0.1:{port}"
        wait_for(lambda: _alive_nodes(address) >= 1, 120, alive=head.proc)
        if PRIVATE is not None:
            PRIVATE.mkdir(exist_ok=True)  # the second node's mount point
        second = Node("second", root, env, f"--address={address}", "--num-cpus=1", private=PRIVATE)
        nodes.append(second)
        wait_for(lambda: _alive_nodes(address) == 2, 120, alive=second.proc)
        yield address, f"http://127.0.0.1:{dashboard}", second
    finally:
        for node in reversed(nodes):
            node.kill()
        if PRIVATE is not None:
            shutil.rmtree(PRIVATE, ignore_errors=True)


def _can_unshare() -> bool:
    return UNSHARE is not None and subprocess.run([UNSHARE, "--mount", "true"], capture_output=True).returncode == 0


# A folder the second node does not share with the head (its own tmpfs there), when mount namespaces work.
PRIVATE = Path("/tmp") / f"moe-orch-private-{os.getpid()}" if _can_unshare() else None


def _alive_nodes(address: str) -> int:
    code = (f"import ray, json; ray.init(address={address!r}, logging_level='ERROR'); "
            "print(json.dumps(sum(n['Alive'] for n in ray.nodes())))")
    out = subprocess.run([sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=120,
                         env=_env())
    return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else 0


def _actor_nodes(dashboard: str, class_name: str) -> set[str]:
    """The node ids of every actor of ``class_name`` so far (Ray's state API, with the cluster's token). Ray
    names a class by its qualified name in some jobs (``wrap_function.<locals>.ImplicitFunc``), so the
    last part is compared."""
    code = ("import json; from ray.util.state import list_actors; print(json.dumps(sorted({a.node_id for a in "
            f"list_actors(address={dashboard!r}, detail=True, limit=1000) "
            f"if a.class_name.rsplit('.', 1)[-1] == {class_name!r}}})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_env())
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _moe_orch(workdir: Path, address: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", *args[:1], str(TINY), "--address", address,
            f"tracking.uri=sqlite:///{workdir}/mlflow.db", *args[1:]]


def _env() -> dict[str, str]:
    return {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_AUTH_MODE": "token"}


def test_ddp_spans_both_nodes(cluster: tuple[str, str, Node], workdir: Path) -> None:
    address, dashboard, _ = cluster
    done = subprocess.run(_moe_orch(workdir, address, "train", "scaling.num_workers=2", "train.max_steps=20"),
                          cwd=workdir, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"Ray: cluster at {address}" in done.stdout and "step 20/20" in done.stdout
    assert len(_actor_nodes(dashboard, "RayTrainWorker")) == 2  # one worker on each node


@pytest.mark.skipif(PRIVATE is None, reason="no mount namespaces here (unshare --mount failed)")
def test_a_store_or_data_root_that_a_node_lacks_fails_before_training(cluster: tuple[str, str, Node],
                                                                      workdir: Path) -> None:
    """The head has a SQLite store, a storage folder and a data root under a folder the second node does
    not share: each node would log to a store of its own, keep checkpoints no other node can resume from,
    and find no data, so the job stops first, naming all three."""
    address, _, _ = cluster
    assert PRIVATE is not None
    data = PRIVATE / "data"
    shutil.copytree(Path(os.environ["MOE_ORCH_DATA"]) / "tinyshakespeare", data / "tinyshakespeare")
    try:
        command = _moe_orch(workdir, address, "train", f"tracking.uri=sqlite:///{PRIVATE}/mlflow.db",
                            f"data.root={data}", f"storage.path={PRIVATE}/results")
        done = subprocess.run(command, cwd=workdir, env=_env(), capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(PRIVATE / "results", ignore_errors=True)
        (PRIVATE / "mlflow.db").unlink(missing_ok=True)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    error = done.stderr.strip().splitlines()[-1]
    assert "NotOnEveryNode" in error and f"tracking.uri: got sqlite:///{PRIVATE}/mlflow.db" in error, error
    assert re.search(rf"data.root: got {re.escape(str(data))}, missing on [0-9.]+ \(\w+\): {re.escape(str(data))}",
                     error), error
    assert re.search(rf"storage.path: got {re.escape(str(PRIVATE))}/results, a folder that node\(s\) [0-9.]+ "
                     r"\(\w+\) do not share", error), error
    assert "step " not in done.stdout  # not a step was trained


def test_sweep_uses_both_nodes_and_survives_losing_one(cluster: tuple[str, str, Node], workdir: Path) -> None:
    address, dashboard, second = cluster
    sweep_dir = workdir / "ray_results" / "tiny" / "sweep"
    args = ["sweep", "train.max_steps=300", "train.eval_every=30", "sweep.num_samples=3",
            "sweep.max_concurrent_trials=2", "sweep.scheduler=none", "train.max_failures=2"]
    with (workdir / "sweep.log").open("w") as log:
        proc = subprocess.Popen(_moe_orch(workdir, address, *args), cwd=workdir, env=_env(), stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            # both first trials are training (one per node: each node has one CPU) and have a checkpoint
            wait_for(lambda: all(list((sweep_dir / f"tiny_00{i}" / "train").glob("checkpoint_*")) for i in (0, 1)),
                     600, alive=proc)
            assert len(_actor_nodes(dashboard, "ImplicitFunc")) == 2  # trials were placed on both nodes
            second.kill()
            assert proc.wait(timeout=900) == 0, (workdir / "sweep.log").read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    out = (workdir / "sweep.log").read_text()
    assert out.count("TERMINATED") == 3, out[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")
    parent = (sweep_dir / "mlflow_parent_run_id").read_text().strip()
    runs = client.search_runs([client.get_run(parent).info.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    assert len(children) == 3 and all(r.info.status == "FINISHED" for r in children)
    resumed = [r for r in children if "resumed_from_step" in r.data.metrics]
    assert len(resumed) == 1  # the trial of the lost node ran again on the head, from its checkpoint
    steps = [m.step for m in client.get_metric_history(resumed[0].info.run_id, "val_loss")]
    assert sorted(set(steps)) == list(range(30, 301, 30))  # one continuous history
    timing = json.loads((sweep_dir / resumed[0].info.run_name / "timing.json").read_text())
    assert timing["train_time_s"] > 0
