"""``moe-orch evaluate``: a family's evaluator on a checkpoint or an MLflow run, logged to MLflow.

TARGET is one of

- an MLflow run id (``moe-orch train`` or a sweep trial): its ``checkpoint`` artifact is
  downloaded and evaluated; metrics go to *that* run at its final training step and the
  artifacts under ``evaluation/``; the evaluator also gets the training curves its family
  asks for (``Family.history``, e.g. MoRE's ``routing/L*/S*/entropy|cv``) and the run's data root;
- a checkpoint directory (any family's, or a Ray checkpoint holding one in ``model/``): a
  *new* run is created in the MLflow experiment ``--experiment`` (default
  ``moe-orch-evaluate``) with the model config as params. A bare checkpoint carries no
  training history, so it gets no curves;
- a pretrained base reference (``smollm2-135m-instruct``) of a family built on bases
  (``Family.base_models``; ``--family`` picks one when several are): the base as it is, the
  zero-shot baseline, in a new run of ``--experiment``.

The checkpoint's manifest names its family; a family without an evaluator is refused with a
message naming it. Settings are ``key=value`` pairs of the family's ``evaluate:`` section.
``weights`` (``--weights``): the inference weights the evaluator loads the model with
(``EvalRequest.weights``; one of the family's ``weights``, e.g. ``int8``, else refused).
``device`` (``--device``, else the ``device`` setting, default ``auto``): where the evaluator runs,
resolved by ``orchestrator.devices.resolve_device`` to ``cpu`` or ``cuda`` (``EvalRequest.device``).
``evaluate_at_end`` is the same thing for the train and sweep drivers (``evaluate.at_end``).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any

from orchestrator.checkpoints import RUN_ID_RE, find_checkpoint_dir
from orchestrator.contract import EvalRequest, EvaluateSection, Family, import_ref
from orchestrator.devices import DeviceError, gpu_task_options, resolve_device
from orchestrator.experiment import Experiment
from orchestrator.overrides import section_with_overrides
from orchestrator.registry import base_family, family_with
from orchestrator.tracking import Run, Store
from trainables.training.manifest import UnsafeCheckpointError, read_manifest

ARTIFACT_DIR = "evaluation"
DEFAULT_EXPERIMENT = "moe-orch-evaluate"


class EvaluateError(ValueError):
    """Bad input to ``moe-orch evaluate`` (exit 2): the message says what."""


def parse_settings(family: Family, overrides: list[str] | tuple[str, ...],
                   base: EvaluateSection | None = None) -> EvaluateSection:
    """The family's evaluate section from ``key=value`` strings (``evaluate.`` prefix optional, YAML
    values, ``null`` = no cap) over ``base`` (default: the section's defaults); EvaluateError
    listing every bad one."""
    assert family.evaluate is not None
    prefixed = tuple(item if item.strip().startswith("evaluate.") else f"evaluate.{item.strip()}"
                     for item in overrides)
    settings, errors = section_with_overrides("evaluate", base or family.evaluate(), prefixed)
    if errors:
        raise EvaluateError("\n".join(errors))
    return settings


def run_evaluator(family: Family, request: EvalRequest) -> dict[str, float]:
    """Call the family's evaluator (it writes its artifacts into ``request.out_dir``)."""
    request.out_dir.mkdir(parents=True, exist_ok=True)
    return import_ref(family.evaluator)(request)


def log_evaluation(run: Run, metrics: dict[str, float], folder: Path, step: int, out: str | Path | None = None) -> None:
    """Metrics at ``step`` and the artifacts under ``evaluation/`` of the run; a copy in ``out`` if given."""
    run.log_metrics(metrics, step=step)
    run.log_artifacts(folder, ARTIFACT_DIR)
    if out is not None:
        shutil.copytree(folder, out, dirs_exist_ok=True)


def evaluate_target(target: str, tracking_uri: str | None, overrides: list[str] | tuple[str, ...] = (),
                    out: str | Path | None = None, experiment: str = DEFAULT_EXPERIMENT,
                    family_name: str | None = None, weights: str = "fp32",
                    device: str | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint directory, an MLflow run id or a pretrained base (see the module docstring);
    returns a summary. ``device``: ``auto``, ``cpu`` or ``cuda`` (None: the ``device`` setting). EvaluateError
    for bad input (no checkpoint, a checkpoint holding pickles, a family without an evaluator, bad settings,
    a device that cannot be used here)."""
    try:
        return _evaluate_target(target, tracking_uri, overrides, out, experiment, family_name, weights, device)
    except (UnsafeCheckpointError, DeviceError) as exc:
        raise EvaluateError(str(exc)) from exc


def _evaluate_target(target: str, tracking_uri: str | None, overrides: list[str] | tuple[str, ...],
                     out: str | Path | None, experiment: str, family_name: str | None,
                     weights: str, device: str | None) -> dict[str, Any]:
    store = Store.at(tracking_uri)
    log = lambda line: print(f"[evaluate] {line}", flush=True)
    with tempfile.TemporaryDirectory(prefix="moe-orch-eval-") as tmp:
        run, model_dir, manifest = None, None, None
        if Path(target).exists():
            model_dir = find_checkpoint_dir(target)
            if model_dir is None:
                raise EvaluateError(f"{target}: not a checkpoint (no config.json manifest in it or in {target}/model)")
        elif RUN_ID_RE.match(target):
            try:
                run = store.run(target)
            except LookupError as exc:
                raise EvaluateError(str(exc)) from exc
            model_dir = find_checkpoint_dir(run.download("checkpoint", Path(tmp) / "dl"))
            if model_dir is None:
                raise EvaluateError(f"run {target} has no checkpoint artifact with a config.json manifest")
        try:
            if model_dir is not None:
                manifest = read_manifest(model_dir)
                family = family_with(manifest.family, "evaluator", target)
            else:  # a pretrained base, evaluated as it is
                family = base_family("evaluator", target, family_name)
        except LookupError as exc:
            raise EvaluateError(str(exc)) from exc
        refused = family.weights_error(weights)
        if refused:
            raise EvaluateError(refused)
        settings = parse_settings(family, overrides)
        device = resolve_device(device or settings.device, family, weights,
                                "--device" if device else "evaluate.device")
        history: dict[str, list[tuple[int, float]]] = {}
        data_root = None
        new_run = run is None
        if run is not None:
            if family.history is not None:
                history = run.metric_history(*family.history)
            data_root = run.params().get("data.root")
            data_root = None if data_root in (None, "", "None") else data_root  # null: this machine's own
            if data_root is not None and not Path(data_root).is_dir():
                data_root = None  # trained on another machine: use this one's default
        else:
            name = Path(target).absolute().name if model_dir is not None else target
            tags = {"moe_orch.command": "evaluate", "moe_orch.family": family.name,
                    "moe_orch.checkpoint" if model_dir is not None else "moe_orch.base":
                        str(Path(model_dir).absolute()) if model_dir is not None else target}
            run = store.start_run(store.experiment_id(experiment), run_name=f"evaluate/{name}", tags=tags)
            run.log_params({"model": manifest.config} if manifest is not None else {"base": target})
        if weights != "fp32":
            run.set_tags({"moe_orch.eval_weights": weights})  # the metrics it logs are of these weights
        if device != "cpu":
            run.set_tags({"moe_orch.eval_device": device})  # e.g. cuda: bfloat16 for the LM families
        folder = Path(tmp) / ARTIFACT_DIR
        request = EvalRequest(model_dir, settings, folder, data_root, history, log,
                              base=target if model_dir is None else None, weights=weights, device=device)
        step = int(manifest.metadata.get("step") or 0) if manifest is not None else 0
        try:
            metrics = run_evaluator(family, request)
            log_evaluation(run, metrics, folder, step, out)
        except Exception:
            if new_run:
                run.end(ok=False)
            raise
        if new_run:
            run.end(ok=True)
        files = sorted(p.name for p in folder.iterdir())
    return {"run_id": run.run_id, "new_run": new_run, "family": family.name, "metrics": metrics, "artifacts": files,
            "tracking_uri": store.uri, "out": str(out) if out else None}


def _run_as_task(family: Family, request: EvalRequest, options: dict[str, Any]) -> dict[str, float]:
    """``run_evaluator`` as a Ray task with ``options`` (e.g. one GPU), on this node: the checkpoint and
    ``request.out_dir`` are local paths."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    task = ray.remote(run_evaluator).options(scheduling_strategy=here, **options)
    return ray.get(task.remote(family, request))


def evaluate_at_end(exp: Experiment, run: Run, model_dir: str | Path, in_ray_worker: bool = False) -> dict[str, float]:
    """The end-of-run evaluation of a train run or sweep trial (``evaluate.at_end``): the family's
    evaluator on the final checkpoint with the experiment's ``evaluate`` settings, logged into ``run``.

    ``evaluate.device`` is resolved in this process; ``in_ray_worker`` (a sweep trial): a ``cuda``
    evaluation runs as a Ray task on this node that asks for one GPU (``gpu_task_options``), a ``cpu``
    one here, as before."""
    family = exp.family_spec
    assert exp.evaluate is not None and family.evaluator is not None
    found = find_checkpoint_dir(model_dir)
    if found is None:
        raise FileNotFoundError(f"{model_dir}: no model checkpoint to evaluate")
    history = run.metric_history(*family.history) if family.history is not None else {}
    with tempfile.TemporaryDirectory(prefix="moe-orch-eval-") as tmp:
        folder = Path(tmp) / ARTIFACT_DIR
        settings = dataclasses.replace(exp.evaluate)
        device = resolve_device(settings.device, family, name="evaluate.device")
        request = EvalRequest(found, settings, folder, exp.data.root, history,
                              lambda line: print(f"[evaluate] {line}", flush=True), device=device)
        options = gpu_task_options(device) if in_ray_worker else None
        metrics = run_evaluator(family, request) if options is None else _run_as_task(family, request, options)
        log_evaluation(run, metrics, folder, int(read_manifest(found).metadata.get("step") or 0))
    return metrics
