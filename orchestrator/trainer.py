"""Ray Train driver: one ``TorchTrainer`` running the family's worker loop, tracked in MLflow.

``run_train`` is what ``moe-orch train`` calls (inside ``ray_runtime.ray_session``);
``build_trainer`` is shared with the sweep's per-trial driver function.

Runs live under ``<storage>/<experiment>/train-<timestamp>`` (Ray Train storage: ``storage.path``,
a local folder, a shared mount or an object store, see ``orchestrator/storage.py``). Ray Train V2
restores a run whose name and storage path already exist, so ``--resume`` reuses the newest
``train-*`` folder: the worker loop continues from its latest checkpoint and metrics keep flowing
into the same MLflow run (its id is stored in the folder).
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from orchestrator.callbacks import MlflowReportCallback, TrainProgress, overhead_split
from orchestrator.experiment import Experiment
from orchestrator.node_interface import NodeInterfaceTorchConfig
from orchestrator.storage import Storage, StoredFile, resolve
from orchestrator.tracking import Run, Store, TextFile

RUN_ID_FILE = "mlflow_run_id"
SHARED_PROBE = ".shared-probe"  # written by the driver, read by every node: is the storage folder shared?


def build_trainer(exp: Experiment, name: str, storage: Storage, callbacks: list[Any]) -> TorchTrainer:
    """The TorchTrainer for ``exp``, keeping its checkpoints in ``storage/name`` (which makes it restorable)."""
    from trainables.training.loop import train_loop_per_worker

    scaling = exp.scaling
    return TorchTrainer(
        train_loop_per_worker,
        # the typed experiment itself, and where the workers import its family's recipe from
        train_loop_config={"experiment": exp, "recipe": exp.family_spec.recipe},
        # each worker's gloo/NCCL on the interface of its node's Ray IP, not where its hostname resolves
        torch_config=NodeInterfaceTorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker, **({"GPU": 1} if scaling.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=name,
            **storage.ray_run_config(),
            checkpoint_config=CheckpointConfig(num_to_keep=exp.train.keep_checkpoints),
            # a dead worker (or node) restarts the worker group from the latest checkpoint
            failure_config=FailureConfig(max_failures=exp.train.max_failures),
            callbacks=callbacks,
            # Ray Train's own INFO lines (every report's full metrics dict, every checkpoint path)
            # drown the progress lines; they still go to the session's log files.
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )


def results_root(exp: Experiment) -> Storage:
    """``<storage>/<experiment name>``: where ``exp``'s runs and sweeps keep their state."""
    return resolve(exp.storage.path) / exp.name


def open_run(exp: Experiment, id_file: TextFile, run_name: str, command: str) -> tuple[Run, str, bool]:
    """The top-level MLflow run of a ``train`` or ``sweep`` command: ``(run, experiment_id, created)``.

    Resumes the run whose id ``id_file`` holds, else starts one and logs the config (all
    but ``sweep``) as params and the resolved YAML as ``experiment.yaml``.
    """
    store = Store.at(exp.tracking.uri)
    experiment_id = store.experiment_id(exp.tracking.experiment or exp.name)  # a SQLite store's file exists now
    check_every_node_reaches(exp, store)
    run, created = store.resume_or_start_run(experiment_id, id_file, run_name=run_name,
                                             tags={"moe_orch.command": command, "moe_orch.family": exp.family})
    if created:
        run.log_params({k: v for k, v in exp.to_dict().items() if k != "sweep"})
        run.log_text(exp.to_yaml(), "experiment.yaml")
    return run, experiment_id, created


class NotOnEveryNode(RuntimeError):
    """A path that every node of the cluster must read or write is missing on some of them."""


def check_every_node_reaches(exp: Experiment, store: Store) -> None:
    """On a cluster (more than one alive Ray node), before any job starts: the tracking store, if it is a
    file (SQLite), the storage, if it is a folder, and the data root must exist on every node;
    NotOnEveryNode names the field, the path and the nodes without it. A node that lacked the store would
    log its trials into a file of its own; one with a storage folder of its own would keep checkpoints
    that no other node can resume from; one without the data would fail mid-sweep."""
    import ray

    from orchestrator.ray_runtime import on_every_node
    from orchestrator.tracking import local_store_path

    if not ray.is_initialized() or sum(1 for node in ray.nodes() if node.get("Alive")) < 2:
        return
    problems = []
    store_path = local_store_path(store.uri)
    storage = resolve(exp.storage.path)
    token = f"{os.getpid()}-{time.time_ns()}"  # the driver writes it; every node must read it back
    storage.write_text(SHARED_PROBE, token)
    seen = on_every_node(functools.partial(_what_this_node_sees, str(store_path) if store_path else None,
                                           storage.file(SHARED_PROBE), exp.data.root))  # one task per node
    missing = [node for node, (has_store, _, _) in seen if not has_store]
    if missing:
        problems.append(f"tracking.uri: got {store.uri}, a file that node(s) {', '.join(missing)} do not have "
                        "(each would log to a store of its own); expected an MLflow server every node "
                        "reaches, e.g. tracking.uri=http://<head private IP>:5000 (see the README, On a cluster)")
    unseen = [(node, probe) for node, (_, probe, _) in seen if probe != token]
    if unseen and storage.is_local:
        problems.append(f"storage.path: got {storage}, a folder that node(s) {', '.join(n for n, _ in unseen)} do "
                        "not share (checkpoints written there could not be resumed elsewhere); expected a shared "
                        "mount or an object store URI such as s3://bucket/prefix (see the README, On a cluster)")
    elif unseen:
        problems.append(f"storage.path: got {storage}, which node(s) {'; '.join(f'{n}: {e}' for n, e in unseen)} "
                        "cannot read; expected credentials in every node's environment (AWS_* variables, a "
                        "profile or an instance role) and the same endpoint for all")
    missing = [f"{node}: {path}" for node, (_, _, (path, ok)) in seen if not ok]
    if missing:
        given = f"got {exp.data.root}" if exp.data.root else "null, so each node reads its own $MOE_ORCH_DATA"
        problems.append(f"data.root: {given}, missing on {'; '.join(missing)}; expected the datasets on every "
                        "node (cluster.yaml's file_mounts and MOE_ORCH_DATA)")
    if problems:
        raise NotOnEveryNode("; ".join(problems))


def _what_this_node_sees(store_path: str | None, probe: StoredFile, root: str | None
                         ) -> tuple[bool, str, tuple[str, bool]]:
    """On one node: ``(whether the SQLite store file is there (True if there is none to check), the probe's
    text or the error reading it raised, (the data root as this node resolves it, whether it is a folder))``."""
    from trainables.data import data_root

    try:
        text = probe.read_text()
    except Exception as exc:  # noqa: BLE001 - reported, with the node, before the job starts
        text = f"{type(exc).__name__}: {exc}"
    path = data_root(root)
    return store_path is None or os.path.exists(store_path), text, (str(path), path.is_dir())


def run_train(exp: Experiment, resume: bool = False) -> dict[str, Any]:
    """Train ``exp`` once with Ray Train, logging to MLflow; returns a summary dict.

    Must run inside a Ray session. Raises RuntimeError if training failed.
    """
    base = results_root(exp)
    runs = base.folders("train-") if resume else []
    run_dir = runs[-1] if runs else None
    if resume and run_dir is None:
        print(f"--resume: no earlier run under {base}; starting a new one")
    if run_dir is None:
        run_dir = base / time.strftime("train-%Y%m%d-%H%M%S")
    run_dir.mkdir()

    run, _, _ = open_run(exp, run_dir.file(RUN_ID_FILE), f"{exp.name}/{run_dir.name}", "train")
    print(f"MLflow: run {run.run_id} in {run.uri}")

    callbacks = [MlflowReportCallback(run, exp.tracking.registered_model),
                 TrainProgress(exp.name, exp.train.max_steps, exp.family_spec.progress)]
    trainer = build_trainer(exp, run_dir.name, base, callbacks)
    started = time.time()
    with run.failed_on_error():
        result = trainer.fit()
    wall = time.time() - started
    metrics = dict(result.metrics or {})
    if result.error is not None:
        run.end(ok=False)
        raise RuntimeError(f"training failed: {result.error}")
    checkpoint = result.checkpoint
    if checkpoint is not None:
        with checkpoint.as_directory() as local:  # downloaded first if storage is an object store
            model_dir = Path(local) / "model"
            run.log_artifacts(model_dir, "checkpoint")
            if exp.evaluates_at_end:  # the family's evaluator on the final checkpoint, logged into this run
                from orchestrator.evaluate import evaluate_at_end

                with run.failed_on_error():
                    metrics.update(evaluate_at_end(exp, run, model_dir))
    timing = {k: v for k, v in overhead_split(started, started + wall, metrics).items() if v is not None}
    timing["overhead_s"] = wall - metrics.get("train_time_s", wall)
    run.log_metrics(timing, step=int(metrics.get("step", 0)))
    run.end(ok=True)
    return {"run_id": run.run_id, "run_dir": str(run_dir), "checkpoint": str(run_dir / Path(checkpoint.path).name)
            if checkpoint else None,
            "metrics": metrics, "wall_time_s": wall, "tracking_uri": run.uri}
