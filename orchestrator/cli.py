"""The ``moe-orch`` command line: thin click commands over the orchestrator library."""

from __future__ import annotations

import click

from orchestrator import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="moe-orch")
def main() -> None:
    """moe-orch: train, sweep, evaluate and serve Mixture-of-Experts models on Ray.

    One YAML file describes an experiment; Ray Train runs it, Ray Tune + Optuna sweep
    it, MLflow records it (sqlite:///mlflow.db by default).
    """


if __name__ == "__main__":
    main()
