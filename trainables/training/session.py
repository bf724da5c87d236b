"""Where the worker loop reports to: a Ray Train worker, or the process it runs in.

The loop (``loop.py``, ``iterative.py``) asks ``current()`` for its rank and world size, the
checkpoint to resume from, and where to ``report`` metrics and checkpoints:

- ``RayTrainSession`` (the default): ``ray.train``'s context, inside a ``TorchTrainer`` worker;
- ``InProcessSession``: no Train controller and no worker process. A sweep runs a 1-worker CPU
  trial's loop in the trial's own process this way (about 15 s less per trial on a laptop):
  checkpoints are kept in storage (``orchestrator.storage``: a folder, a shared mount or an object
  store) as ``<storage>/checkpoint_<step>`` (the newest ``keep``), a re-run, on any node, resumes
  from the newest, and every report goes to the ``on_report`` callback (the trial's MLflow run and
  Tune).

``use(session)`` makes a session current for the duration of a ``with`` block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # handed in by the sweep driver; the loop's package does not import the orchestrator
    from orchestrator.storage import Storage

COMPLETE = ".complete"  # written into a checkpoint folder last: the folder is whole


class RayTrainSession:
    """``ray.train`` inside a Ray Train worker."""

    @property
    def rank(self) -> int:
        import ray.train

        return ray.train.get_context().get_world_rank()

    @property
    def world_size(self) -> int:
        import ray.train

        return ray.train.get_context().get_world_size()

    def get_checkpoint(self) -> Any:
        import ray.train

        return ray.train.get_checkpoint()

    def report(self, metrics: dict[str, Any], checkpoint: Any = None, checkpoint_dir_name: str | None = None) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_dir_name)


class InProcessSession:
    """A single worker in this process (see the module docstring).

    Args:
        storage: where the checkpoints live (``checkpoint_<step>`` folders); the newest is resumed.
        keep: how many checkpoints to keep.
        on_report: called with ``(metrics, checkpoint)`` after each report; ``checkpoint`` is a
            ``ray.train.Checkpoint`` of the persisted folder (in storage), or None.
    """

    rank, world_size = 0, 1

    def __init__(self, storage: Storage, keep: int, on_report: Callable[[dict[str, Any], Any], None]) -> None:
        self.storage, self.keep, self.on_report = storage, keep, on_report
        self.last_metrics: dict[str, Any] = {}

    def checkpoints(self) -> list[Storage]:
        """The complete checkpoints, oldest first (a crash mid-upload leaves a folder without ``COMPLETE``)."""
        return [c for c in self.storage.folders("checkpoint_") if c.exists(COMPLETE)]

    def latest(self) -> Storage | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def get_checkpoint(self) -> Any:
        latest = self.latest()
        return _ray_checkpoint(latest) if latest is not None else None

    def report(self, metrics: dict[str, Any], checkpoint: Any = None, checkpoint_dir_name: str | None = None) -> None:
        persisted = None
        if checkpoint is not None:
            target = self.storage / (checkpoint_dir_name or f"checkpoint_{len(self.checkpoints()):06d}")
            target.delete()  # a partial upload of an earlier attempt
            target.upload(checkpoint.path)
            target.write_text(COMPLETE, "")
            for old in self.checkpoints()[:-self.keep]:
                old.delete()
            persisted = _ray_checkpoint(target)
        self.last_metrics = dict(metrics)
        self.on_report(metrics, persisted)


def _ray_checkpoint(folder: Storage) -> Any:
    """A ``ray.train.Checkpoint`` of a folder in storage (``as_directory()`` downloads it if it is remote)."""
    from ray.train import Checkpoint

    return Checkpoint(folder.path, filesystem=folder.filesystem)


_current: RayTrainSession | InProcessSession | None = None


def current() -> RayTrainSession | InProcessSession:
    """The session the loop reports to (``RayTrainSession`` unless ``use`` set another)."""
    return _current or RayTrainSession()


@contextlib.contextmanager
def use(session: InProcessSession) -> Iterator[InProcessSession]:
    """Make ``session`` current inside the block."""
    global _current
    previous, _current = _current, session
    try:
        yield session
    finally:
        _current = previous
