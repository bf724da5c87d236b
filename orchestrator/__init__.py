"""The moe-orch orchestrator: CLI, experiment configs, Ray Train/Tune drivers, MLflow tracking."""

__version__ = "0.1.0"
