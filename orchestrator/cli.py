"""The ``moe-orch`` command line: thin click commands over the orchestrator library."""

from __future__ import annotations

import sys

import click

from orchestrator import __version__

ADDRESS_HELP = (
    "Ray cluster to join (e.g. ray://head:10001 or head:6379); default $RAY_ADDRESS, else a local "
    "Ray with its dashboard on 127.0.0.1. Joining sets RAY_AUTH_MODE=token for this client unless set "
    "(the token comes from $RAY_AUTH_TOKEN or ~/.ray/auth_token)."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="moe-orch")
def main() -> None:
    """moe-orch: train, sweep, evaluate and serve Mixture-of-Experts models on Ray.

    One YAML file describes an experiment; Ray Train runs it, Ray Tune + Optuna sweep
    it, MLflow records it (sqlite:///mlflow.db by default).
    """


def _load(path: str, overrides: tuple[str, ...]):  # -> Experiment
    """Load + validate, or print every error to stderr and exit 2 (Ray is never started)."""
    from orchestrator.config import ExperimentError, load_experiment

    try:
        return load_experiment(path, overrides)
    except ExperimentError as exc:
        click.echo(f"{path}: {len(exc.errors)} error(s):", err=True)
        for line in exc.errors:
            click.echo(f"  {line}", err=True)
        sys.exit(2)


@main.command()
@click.argument("experiment", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
def validate(experiment: str, overrides: tuple[str, ...]) -> None:
    """Check EXPERIMENT (+ key=value OVERRIDES) and print the resolved config and search space.

    Errors go to stderr, one `path: got X, expected Y` line each, with exit code 2.
    """
    from orchestrator.schema import dump_yaml
    from orchestrator.space import describe_space

    exp = _load(experiment, overrides)
    click.echo(exp.to_yaml().rstrip())
    click.echo("# search space" + ("" if exp.sweep.space else ": empty"))
    if exp.sweep.space:
        click.echo(dump_yaml({"space": describe_space(exp.dims)}).rstrip())


@main.command()
@click.argument("experiment", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--resume", is_flag=True, help="Continue the newest run of this experiment from its latest checkpoint.")
@click.option("--address", default=None, help=ADDRESS_HELP)
def train(experiment: str, overrides: tuple[str, ...], resume: bool, address: str | None) -> None:
    """Train EXPERIMENT once with Ray Train (DDP or DeepSpeed), tracked in MLflow.

    OVERRIDES are key=value pairs typed by the schema, e.g. train.lr=3e-4 model.variant=more_a.
    """
    exp = _load(experiment, overrides)
    from orchestrator.ray_runtime import ray_session
    from orchestrator.trainer import run_train

    try:
        with ray_session(address):
            summary = run_train(exp, resume=resume)
    except Exception as exc:  # the traceback is already in the Ray output above
        click.echo(f"train failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", err=True)
        sys.exit(1)
    m = summary["metrics"]
    click.echo(f"done in {summary['wall_time_s']:.1f}s: step {m.get('step')} "
               f"val_loss {m.get('val_loss', float('nan')):.4f} "
               f"(train loop {m.get('train_time_s', 0):.1f}s)")
    click.echo(f"checkpoint: {summary['checkpoint']}")
    click.echo(f"MLflow run: {summary['run_id']} ({summary['tracking_uri']})")


@main.command()
@click.argument("experiment", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--resume", is_flag=True, help="Finish an interrupted sweep without rerunning finished trials.")
@click.option("--address", default=None, help=ADDRESS_HELP)
def sweep(experiment: str, overrides: tuple[str, ...], resume: bool, address: str | None) -> None:
    """Sweep EXPERIMENT's sweep.space with Ray Tune + Optuna (TPE / NSGA-II) and ASHA.

    Each trial fits a TorchTrainer; MLflow gets a parent run, one nested run per trial,
    a summary CSV and Optuna plots. Results live in ./ray_results/<name>/sweep.
    An interrupted sweep (Ctrl-C) exits with code 130; --resume finishes it.
    """
    exp = _load(experiment, overrides)
    from orchestrator.ray_runtime import ray_session
    from orchestrator.sweep import run_sweep

    with ray_session(address) as session:
        summary = run_sweep(exp, session, resume=resume)
    click.echo(summary["table"])
    click.echo(f"sweep wall time {summary['wall_time_s']:.1f}s; MLflow parent run {summary['parent_run_id']}")
    if summary["interrupted"]:
        sys.exit(130)


if __name__ == "__main__":
    main()
