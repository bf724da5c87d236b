"""``moe-orch evaluate``: the MoRE evaluation suite on a checkpoint or an MLflow run, logged to MLflow.

TARGET is either

- an MLflow run id (``moe-orch train`` or a sweep trial): its ``checkpoint`` artifact is
  downloaded and evaluated; metrics go to *that* run at its final training step and the
  artifacts under ``evaluation/``; the router-entropy / load-CV curves come from the run's
  metric history (``routing/L*/S*/entropy|cv``);
- a checkpoint directory (a ``trainables.more.save_checkpoint`` folder, or a Ray Train
  checkpoint holding one in ``model/``): a *new* run is created in the MLflow experiment
  ``--experiment`` (default ``moe-orch-evaluate``) with the model config as params. A bare
  checkpoint carries no training history, so it gets no curves.

``--out DIR`` also copies the artifacts to DIR. ``evaluate_at_end`` is the same thing for
the train and sweep drivers when the experiment sets ``evaluate.at_end: true``.
The suite itself is ``trainables.more.evaluation.run_suite`` (torch only).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

from orchestrator import tracking
from orchestrator.config import Experiment
from orchestrator.schema import check, describe, field_types, load_yaml
from trainables.more.evaluation import EvalSettings

ARTIFACT_DIR = "evaluation"
DEFAULT_EXPERIMENT = "moe-orch-evaluate"
CURVE_SUFFIXES = ("/entropy", "/cv")


def find_model_dir(path: str | Path) -> Path | None:
    """The checkpoint folder at ``path`` or in its ``model/`` subfolder (None if neither)."""
    path = Path(path)
    for candidate in (path, path / "model"):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def parse_settings(overrides: list[str] | tuple[str, ...], tasks: list[str] | None = None) -> EvalSettings:
    """``EvalSettings`` from ``key=value`` strings (``evaluate.`` prefix optional, YAML values,
    ``null`` = no cap); raises ValueError listing every bad one."""
    types = field_types(EvalSettings)
    values: dict[str, Any] = {}
    errors = []
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip().removeprefix("evaluate.")
        if not sep or key not in types:
            errors.append(f"{item}: got an unknown setting, expected key=value with key one of {', '.join(types)}")
            continue
        value = load_yaml(text) if text.strip() else ""
        ok, coerced = check(value, types[key])
        if not ok and check(text, types[key])[0]:
            ok, coerced = True, text
        if not ok:
            errors.append(f"{key}: got {text!r}, expected {describe(types[key])}")
            continue
        values[key] = coerced
    if tasks:
        values["tasks"] = tasks
    settings = EvalSettings(**values)
    errors += settings.errors()
    if errors:
        raise ValueError("\n".join(errors))
    return settings


def run_evaluation(model_dir: Path, settings: EvalSettings, out_dir: Path,
                   history: dict[str, list[tuple[int, float]]] | None = None,
                   arith_train_digits: int | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """Load the checkpoint and run the suite into ``out_dir``; returns (metrics, checkpoint metadata)."""
    from trainables.more import load_checkpoint
    from trainables.more.evaluation import run_suite

    model, tokenizer, metadata = load_checkpoint(model_dir)
    digits = arith_train_digits or metadata.get("arith_train_digits") or 3
    metrics = run_suite(model, tokenizer, settings, out_dir, arith_train_digits=int(digits), history=history,
                        log=lambda line: print(f"[evaluate] {line}", flush=True))
    metrics["num_parameters"] = model.num_parameters()
    metrics["num_active_parameters"] = model.num_active_parameters()
    return metrics, metadata


def log_evaluation(uri: str, run_id: str, metrics: dict[str, float], folder: Path, step: int,
                   out: str | Path | None = None) -> None:
    """Metrics at ``step`` and the artifacts under ``evaluation/`` of the run; a copy in ``out`` if given."""
    tracking.log_metrics(uri, run_id, metrics, step=step)
    tracking.log_artifacts(uri, run_id, folder, ARTIFACT_DIR)
    if out is not None:
        shutil.copytree(folder, out, dirs_exist_ok=True)


def evaluate_target(target: str, uri: str, settings: EvalSettings, out: str | Path | None = None,
                    experiment: str = DEFAULT_EXPERIMENT) -> dict[str, Any]:
    """Evaluate a checkpoint directory or an MLflow run id (see the module docstring); returns a summary."""
    uri = tracking.resolve_uri(uri)
    with tempfile.TemporaryDirectory(prefix="moe-orch-eval-") as tmp:
        model_dir = find_model_dir(target) if Path(target).exists() else None
        if Path(target).exists() and model_dir is None:
            raise FileNotFoundError(f"{target}: not a checkpoint (no config.json in it or in {target}/model)")
        history = None
        if model_dir is None:  # an MLflow run id
            run_id = target
            params = tracking.get_run(uri, run_id).data.params
            model_dir = find_model_dir(tracking.download_artifacts(uri, run_id, "checkpoint", Path(tmp) / "dl"))
            if model_dir is None:
                raise FileNotFoundError(f"run {run_id} has no checkpoint artifact with a config.json")
            if "MOE_ORCH_DATA" not in os.environ and params.get("data.root") and Path(params["data.root"]).is_dir():
                os.environ["MOE_ORCH_DATA"] = params["data.root"]
            history = tracking.metric_history(uri, run_id, "routing/", CURVE_SUFFIXES)
            new_run = False
        else:
            from trainables.more import read_description

            description = read_description(model_dir)
            experiment_id = tracking.get_or_create_experiment(uri, experiment)
            run_id = tracking.start_run(uri, experiment_id, run_name=f"evaluate/{Path(target).absolute().name}",
                                        tags={"moe_orch.command": "evaluate", "moe_orch.family": "more",
                                              "moe_orch.checkpoint": str(Path(model_dir).absolute())})
            tracking.log_params(uri, run_id, {"model": description["config"]})
            new_run = True
        folder = Path(tmp) / ARTIFACT_DIR
        try:
            metrics, metadata = run_evaluation(model_dir, settings, folder, history)
            log_evaluation(uri, run_id, metrics, folder, int(metadata.get("step") or 0), out)
        except Exception:
            if new_run:
                tracking.end_run(uri, run_id, ok=False)
            raise
        if new_run:
            tracking.end_run(uri, run_id, ok=True)
        files = sorted(p.name for p in folder.iterdir())
    return {"run_id": run_id, "new_run": new_run, "metrics": metrics, "artifacts": files, "tracking_uri": uri,
            "out": str(out) if out else None}


def evaluate_at_end(exp: Experiment, uri: str, run_id: str, checkpoint_path: str | Path) -> dict[str, float]:
    """The end-of-run evaluation of a train run or sweep trial (``evaluate.at_end``): the final
    checkpoint, the experiment's ``evaluate`` settings, logged into the run ``run_id``."""
    model_dir = find_model_dir(checkpoint_path)
    if model_dir is None:
        raise FileNotFoundError(f"{checkpoint_path}: no model checkpoint to evaluate")
    if exp.data.root:
        os.environ["MOE_ORCH_DATA"] = exp.data.root
    settings = EvalSettings.from_dict({f.name: getattr(exp.evaluate, f.name) for f in fields(EvalSettings)})
    history = tracking.metric_history(uri, run_id, "routing/", CURVE_SUFFIXES)
    with tempfile.TemporaryDirectory(prefix="moe-orch-eval-") as tmp:
        folder = Path(tmp) / ARTIFACT_DIR
        metrics, metadata = run_evaluation(model_dir, settings, folder, history, exp.data.arith_train_digits)
        log_evaluation(uri, run_id, metrics, folder, int(metadata.get("step") or 0))
    return metrics
