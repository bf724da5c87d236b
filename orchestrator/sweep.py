"""Ray Tune driver: Optuna (TPE, or NSGA-II with several metrics) + ASHA over ``sweep.space``.

Each trial is a driver *function* (``sweep_trial``) in a Tune trial actor:

- a 1-worker CPU trial (``runs_in_process``) runs the shared worker loop in that process, under
  an ``InProcessSession`` (``trainables/training/session.py``): no Train controller, no worker
  process, and Tune reuses the warm actor for the next trial (``reuse_actors``), so a trial
  costs a fraction of a second beyond its training loop. It holds ``scaling.cpus_per_worker``
  CPUs; its checkpoints are kept in storage under ``<trial>/train/``. After a failure (an error,
  or its actor or node lost) Tune runs the trial again, on any node, up to ``train.max_failures``
  times, and it resumes from the newest checkpoint in the same MLflow run;
- any other trial (several workers, a GPU, DeepSpeed) holds one ``tune_driver`` resource (see
  ``ray_runtime``) and fits a ``TorchTrainer``; ``TuneReportCallback`` forwards the workers'
  reports to Tune (the Ray Train V2 pattern).

Layout under ``<storage>/<name>/sweep`` (``storage.path``: ``./ray_results`` unless set; a shared mount or
an object store on a cluster, ``orchestrator/storage.py``), deterministic so ``--resume`` works:

    <name>_000/               Tune trial dir (trial names are ``{experiment}_{index:03d}``)
      train/checkpoint_*      the trial's checkpoints (a re-run trial resumes from the newest)
      mlflow_run_id           its nested MLflow run
      timing.json             driver-function wall time (written when the trial finishes)
      final.json              the trial's last result, written once its MLflow run is closed
    mlflow_parent_run_id      the sweep's MLflow parent run
    summary.csv, plots/       written at the end (and logged to the parent run): ``report.py``

Without ``--resume`` an existing sweep folder is moved aside to ``sweep-<timestamp>``.

Interrupting (Ctrl-C) leaves Tune's state on disk and the MLflow parent run open; the
command exits with code 130 and ``--resume`` finishes the sweep (trials that completed
are not run again; an interrupted trial restarts from its latest Ray Train checkpoint).
A driver killed outright (SIGKILL, a lost head node) resumes the same way: Tune saves its
state every ``TUNE_GLOBAL_CHECKPOINT_S`` (2 s here, not Tune's 10 s or more); a trial that
finished after the last save finds its ``final.json`` and only re-reports it; and a trial
Tune never recorded (launched in that last window) has its nested MLflow run soft-deleted,
tagged ``moe_orch.status=ORPHANED``, since the searcher asks for that trial again.
Test hook: ``MOE_ORCH_STOP_AFTER_TRIALS=N`` sends that same SIGINT once N trials have
completed, so tests can exercise ``--resume`` deterministically.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune import Callback
from ray.tune.integration.ray_train import TuneReportCallback

from orchestrator import report
from orchestrator import space as space_mod
from orchestrator.callbacks import MlflowReportCallback, SweepProgress, overhead_split
from orchestrator.distinct import DistinctConfigs
from orchestrator.experiment import Experiment
from orchestrator.ray_runtime import RaySession, default_concurrency
from orchestrator.report import CHILD_ID_FILE, TIMING_FILE, expected_reports
from orchestrator.storage import Storage
from orchestrator.tracking import Run, Store
from orchestrator.trainer import build_trainer, open_run, results_root

STOP_AFTER_ENV = "MOE_ORCH_STOP_AFTER_TRIALS"
PARENT_ID_FILE, FINAL_FILE = "mlflow_parent_run_id", "final.json"  # and report.CHILD_ID_FILE, report.TIMING_FILE
STATE_SAVE_PERIOD_S = "2"  # Tune's experiment-state save period (its own default: 10 s or more)


# -- the per-trial driver function ----------------------------------------------------------


def sweep_trial(config: dict[str, Any], base: Experiment, ctx: dict[str, Any]) -> None:
    """One trial: apply the sampled ``config`` (dotted keys) to the validated ``base`` and train it, in this
    process or with a TorchTrainer (module docstring)."""
    started = time.time()
    exp = base.with_values(config)
    trial_name = tune.get_context().get_trial_name()
    trial_dir: Storage = ctx["sweep_dir"] / trial_name
    trial_dir.mkdir()
    if trial_dir.exists(FINAL_FILE):  # it finished before the driver died, after Tune last saved
        tune.report(json.loads(trial_dir.read_text(FINAL_FILE)))
        return
    parent: Run = ctx["parent"]

    run, created = Store(parent.uri).resume_or_start_run(  # a resumed trial keeps its nested run
        ctx["experiment_id"], trial_dir.file(CHILD_ID_FILE), run_name=trial_name, parent=parent,
        tags={"moe_orch.command": "sweep-trial", "moe_orch.trial": trial_name, "moe_orch.family": exp.family})
    if created:
        run.log_params({k: v for k, v in exp.to_dict().items() if k != "sweep"})

    registered = f"{exp.tracking.registered_model}-{trial_name}" if exp.tracking.registered_model else None
    with run.failed_on_error():
        if runs_in_process(exp):
            metrics, checkpoint, error = fit_in_process(exp, trial_name, trial_dir / "train", run, registered)
        else:
            trainer = build_trainer(exp, "train", trial_dir, [MlflowReportCallback(run, registered),
                                                              TuneReportCallback()])
            result = trainer.fit()
            metrics, error, checkpoint = dict(result.metrics or {}), result.error, result.checkpoint
    wall = time.time() - started
    import psutil  # a Ray dependency

    timing = overhead_split(started, time.time(), metrics, process_started=psutil.Process().create_time())
    trial_dir.write_text(TIMING_FILE, json.dumps(timing))
    evaluation: dict[str, float] = {}
    if checkpoint is not None:
        with checkpoint.as_directory() as local:  # downloaded first if storage is an object store
            run.log_artifacts(Path(local) / "model", "checkpoint")
            if exp.evaluates_at_end and error is None:
                from orchestrator.evaluate import evaluate_at_end

                with run.failed_on_error():  # the family's evaluator, logged into the trial's run
                    evaluation = evaluate_at_end(exp, run, Path(local) / "model", in_ray_worker=True)
    run.log_metrics({"trial_wall_time_s": wall, "overhead_s": wall - metrics.get("train_time_s", wall)},
                    step=int(metrics.get("step", 0)))
    run.end(ok=error is None)
    if error is not None:
        raise RuntimeError(f"trial {trial_name} failed: {error}")
    numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    trial_dir.write_text(FINAL_FILE, json.dumps({**numeric, **evaluation}))  # whole or absent
    if evaluation:  # one last Tune result with the evaluation, so sweep.metric may name e.g. babi_qa2_acc
        tune.report({**numeric, **evaluation})


def runs_in_process(exp: Experiment) -> bool:
    """Whether a trial runs its training loop in its own process: one CPU worker with DDP (nothing to
    distribute), so no Ray Train controller and worker are started for it (``session.py``)."""
    s = exp.scaling
    return s.num_workers == 1 and not s.use_gpu and s.strategy == "ddp"


def fit_in_process(exp: Experiment, trial_name: str, run_dir: Storage, run: Run, registered: str | None,
                   report: Callable[[dict[str, Any]], None] = tune.report
                   ) -> tuple[dict[str, Any], Any, BaseException | None]:
    """The worker loop in this process, reporting to the trial's MLflow run and to ``report`` (Tune), resuming
    from the newest checkpoint in ``run_dir`` (a trial Tune runs again after a failure: ``train.max_failures``).
    Returns ``(last metrics, newest checkpoint as a ray.train.Checkpoint or None, error or None)``."""
    from trainables.training.loop import train_loop_per_worker
    from trainables.training.session import InProcessSession, use

    mlflow_callback = MlflowReportCallback(run, registered)

    def on_report(metrics: dict[str, Any], checkpoint: Any) -> None:
        mlflow_callback.after_report(None, [metrics], checkpoint)
        report(metrics)  # no Tune checkpoint: a re-run trial resumes from run_dir itself

    session = InProcessSession(run_dir, exp.train.keep_checkpoints, on_report)
    try:
        with use(session):
            train_loop_per_worker({"experiment": exp, "recipe": exp.family_spec.recipe})
    except Exception as exc:  # noqa: BLE001 - reported like a failed Train run; Tune may run the trial again
        return session.last_metrics, session.get_checkpoint(), exc
    return session.last_metrics, session.get_checkpoint(), None


# -- Tune plumbing --------------------------------------------------------------------------


class TrialNamer:
    """``{experiment}_{index:03d}`` in creation order (the same name for a trial's dir).

    Indices continue after the highest one already in ``sweep_dir``, so trials added by a
    resumed sweep never reuse a name.
    """

    def __init__(self, name: str, sweep_dir: Storage) -> None:
        self.name, self.sweep_dir = name, sweep_dir

    def __call__(self, trial: Any) -> str:
        # Tune copies the creator with each trial spec, so the names live at module level.
        names = _TRIAL_NAMES.setdefault(str(self.sweep_dir), {})
        key = str(trial.trial_id)
        if key not in names:
            prefix = f"{self.name}_"
            on_disk = [folder.name for folder in self.sweep_dir.folders(prefix)]
            used = [int(n[len(prefix):]) for n in [*on_disk, *names.values()] if n[len(prefix):].isdigit()]
            names[key] = f"{prefix}{max(used, default=-1) + 1:03d}"
        return names[key]


_TRIAL_NAMES: dict[str, dict[str, str]] = {}  # sweep dir -> {trial id: name}


class _InterruptAfter(Callback):
    """Test hook: once ``$MOE_ORCH_STOP_AFTER_TRIALS`` trials completed, interrupt the sweep
    exactly as Ctrl-C would (SIGINT to this process: Tune saves its state and returns)."""

    def __init__(self) -> None:
        self.count = 0

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.count += 1
        limit = os.environ.get(STOP_AFTER_ENV)
        if limit and self.count >= int(limit):
            os.kill(os.getpid(), signal.SIGINT)


def build_search(exp: Experiment) -> tuple[Any, Any, dict[str, Any]]:
    """``(search_alg, scheduler, tune_config_metric_kwargs)`` from ``exp.sweep``."""
    from ray.tune.schedulers import ASHAScheduler

    metrics, modes, dims = exp.metrics, exp.modes, exp.dims
    if exp.evaluates_at_end:  # evaluation metrics come in the last result only: Tune must not demand them earlier
        os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    multi = len(metrics) > 1
    metric_kwargs = {} if multi else {"metric": metrics[0], "mode": modes[0]}
    search_alg = None
    if exp.sweep.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        from orchestrator import samplers

        sampler = samplers.nsga2(exp.sweep.seed) if multi else samplers.tpe(exp.sweep.seed)
        search_alg = DistinctConfigs(OptunaSearch(  # TPE repeats configurations of a small discrete space
            metric=metrics if multi else None, mode=modes if multi else None, sampler=sampler,
            points_to_evaluate=space_mod.grid_points(dims, exp.sweep.seed) or None))
    scheduler = None
    if exp.sweep.scheduler == "asha":
        # max_t one past the last report: ASHA stops a trial that reaches max_t, which would cut
        # the driver function short before it logs the final checkpoint and closes its MLflow run.
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=expected_reports(exp) + 1,
                                  grace_period=exp.sweep.grace_period, reduction_factor=exp.sweep.reduction_factor)
    return search_alg, scheduler, metric_kwargs


def _trainable(exp: Experiment, session: RaySession, ctx: dict[str, Any]) -> Any:
    fn = tune.with_parameters(sweep_trial, base=exp, ctx=ctx)
    if runs_in_process(exp):  # the trial trains itself: it holds the worker's CPUs
        return tune.with_resources(fn, {"CPU": exp.scaling.cpus_per_worker})
    return tune.with_resources(fn, session.trial_resources())


# -- the sweep ------------------------------------------------------------------------------


def run_sweep(exp: Experiment, session: RaySession, resume: bool = False) -> dict[str, Any]:
    """Run (or with ``resume``, finish) the sweep; returns a summary dict with a printable table."""
    base = results_root(exp)
    sweep_dir = base / "sweep"
    can_restore = resume and tune.Tuner.can_restore(sweep_dir.path, storage_filesystem=sweep_dir.filesystem)
    if resume and not can_restore:
        print(f"--resume: no restorable sweep at {sweep_dir}; starting a new one")
    if not can_restore and sweep_dir.exists():
        aside = base / time.strftime("sweep-%Y%m%d-%H%M%S")
        sweep_dir.move_to(aside)
        print(f"moved the previous sweep to {aside}")
    sweep_dir.mkdir()
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", STATE_SAVE_PERIOD_S)  # read by Tune's controller

    parent, experiment_id, created = open_run(exp, sweep_dir.file(PARENT_ID_FILE), f"{exp.name}/sweep", "sweep")
    if created:
        parent.log_params({"sweep": {k: v for k, v in exp.to_dict()["sweep"].items() if k != "space"}})
    print(f"MLflow: parent run {parent.run_id} in {parent.uri}")

    ctx = {"parent": parent, "experiment_id": experiment_id, "sweep_dir": sweep_dir}
    trainable = _trainable(exp, session, ctx)
    concurrency = exp.sweep.max_concurrent_trials or default_concurrency(
        session, exp.scaling.num_workers, exp.scaling.cpus_per_worker)
    started = time.time()
    expected = exp.sweep.num_samples * (space_mod.num_grid_points(exp.dims) if exp.sweep.search == "random" else 1)
    progress = SweepProgress(exp.metrics[0], exp.modes[0], exp.train.max_steps, expected, exp.family_spec.progress)
    if can_restore:
        print(f"resuming the sweep at {sweep_dir}")
        tuner = tune.Tuner.restore(sweep_dir.path, trainable=trainable, resume_errored=True,
                                   storage_filesystem=sweep_dir.filesystem)
    else:
        search_alg, scheduler, metric_kwargs = build_search(exp)
        namer = TrialNamer(exp.name, sweep_dir)
        tuner = tune.Tuner(
            trainable,
            param_space=space_mod.to_tune_space(exp.dims, exp.sweep.search),
            tune_config=tune.TuneConfig(
                num_samples=exp.sweep.num_samples, search_alg=search_alg, scheduler=scheduler,
                max_concurrent_trials=concurrency, trial_name_creator=namer, trial_dirname_creator=namer,
                reuse_actors=runs_in_process(exp),  # a warm process (torch imported) runs the next trial
                **metric_kwargs),
            run_config=tune.RunConfig(
                name="sweep", **base.ray_run_config(), callbacks=[_InterruptAfter(), progress], verbose=0,
                # an in-process trial that failed (an error, its actor or node lost) runs again, resuming from
                # its newest checkpoint; a TorchTrainer trial's restarts are Ray Train's (train.max_failures)
                failure_config=tune.FailureConfig(max_failures=exp.train.max_failures if runs_in_process(exp) else 0)),
        )
    print(f"sweeping {len(exp.dims)} keys, {exp.sweep.num_samples} samples, {concurrency} at a time", flush=True)
    grid = tuner.fit()
    wall = time.time() - started
    done = grid.num_terminated + grid.num_errors
    if done < max(expected, len(grid)):  # interrupted (Ctrl-C): Tune saved its state; leave the parent run open
        message = (f"sweep interrupted after {done}/{expected} trials; finish it with "
                   f"`moe-orch sweep {exp.source or '<experiment>'} --resume` (same overrides)")
        return {"interrupted": True, "table": message, "parent_run_id": parent.run_id, "wall_time_s": wall}
    return finish_sweep(exp, grid, sweep_dir, parent, wall)


# -- the end of a sweep: closing its MLflow runs (its results: report.py) ---------------------


def drop_orphans(sweep_dir: Storage, trials: set[str], uri: str) -> list[str]:
    """Soft-delete the nested MLflow run of each trial folder Tune does not know: a trial launched
    after Tune last saved its state, before the driver was killed (the resumed searcher asks for it
    again under a new name). MLflow keeps deleted runs restorable until ``mlflow gc``."""
    dropped = []
    for trial_dir in sweep_dir.folders():
        id_file = trial_dir.file(CHILD_ID_FILE)
        if trial_dir.name in trials or not id_file.exists():
            continue
        run = Run(uri, id_file.read_text().strip())
        if run.client.get_run(run.run_id).info.lifecycle_stage == "deleted":  # an earlier resume dropped it
            continue
        run.set_tags({"moe_orch.status": "ORPHANED"})
        run.client.set_terminated(run.run_id, status="KILLED")
        run.client.delete_run(run.run_id)
        dropped.append(trial_dir.name)
    if dropped:
        print(f"trials the killed driver had launched but Tune never recorded (runs soft-deleted): {dropped}")
    return dropped


def finish_sweep(exp: Experiment, grid: Any, sweep_dir: Storage, parent: Run, wall: float) -> dict[str, Any]:
    """Close the sweep's MLflow runs around writing its results (``report.write_summary``: summary.csv,
    plots, best trial): each trial's run with its status, orphans soft-deleted (``drop_orphans``), the parent
    last. Returns the summary dict of ``run_sweep``."""
    rows = report.trial_rows(exp, grid, sweep_dir)
    for row in rows:  # trials stopped by ASHA are cut off mid-fit: their runs end here, FINISHED (early)
        if row["run_id"]:
            child = Run(parent.uri, row["run_id"])
            child.set_tags({"moe_orch.status": row["status"]})
            child.end(ok=row["status"] != "ERROR")
    drop_orphans(sweep_dir, {row["trial"] for row in rows}, parent.uri)
    summary = report.write_summary(exp, grid, rows, sweep_dir, parent, wall)
    parent.end(ok=True)
    return summary
