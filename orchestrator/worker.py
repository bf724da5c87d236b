"""The Ray Train worker entry point, kept light: a worker process imports this module only.

(Importing ``orchestrator.trainer`` would pull Ray Tune, MLflow and the CLI's helpers into
every worker process, seconds of start-up on a small machine.)
"""

from __future__ import annotations

import logging
from typing import Any

from orchestrator.families import FAMILIES


def worker_entry(config: dict[str, Any]) -> None:
    """Run the family's ``train_loop_per_worker(config)`` with Ray's per-report chatter quieted.

    Ray Train logs every report's whole metrics dict at INFO, from a logger named by its file
    path (so ``RunConfig(logging_config=...)`` does not reach it); with per-layer routing
    keys that is pages per report. It still goes to the session's log files.
    """
    from ray.train.v2._internal.execution import context as train_context

    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    FAMILIES[config["family"]].load_train_loop()(config)
