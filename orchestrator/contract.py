"""The family contract: what a model family declares so that every command works for it.

A family is a plug-in. ``orchestrator/`` and ``serve/`` never name one; they read its
``Family`` declaration (``trainables/<family>/family.py``), registered by one line in
``orchestrator/registry.py`` or by a ``moe_orch.families`` entry point:

=================  ==========================================================================
declares           used by
=================  ==========================================================================
``model``          the ``model:`` section: a ``Section`` dataclass
``data``           the ``data:`` section: a ``DataSection`` subclass (``root`` + the family's)
``recipe``         ``trainables.training.loop``: the family's part of the one training loop
                   (a ``trainables.training.Recipe`` subclass, ``"module:Class"``)
``strategies``     validation: which of ``ddp`` / ``deepspeed`` its recipe supports
``metrics``        validation of ``sweep.metric``; MLflow ``best_*`` metrics; progress lines
``checkpoint``     ``orchestrator.checkpoints.load_checkpoint``: ``"module:function"`` that
                   rebuilds the model from a checkpoint directory and its manifest
``evaluate``       optional ``evaluate:`` section (an ``EvaluateSection`` subclass) and the
``evaluator``      ``"module:function"`` that ``moe-orch evaluate`` and ``evaluate.at_end`` call
``serve``          optional ``serve:`` section (a ``ServeSection`` subclass) and the
``endpoint``       ``"module:Class"`` each Serve replica builds (``ServeEndpoint``)
``generator``      optional ``"module:function"`` behind ``moe-orch generate``
``predictor``      optional ``"module:function"`` behind ``moe-orch predict``: texts in, one
                   ``Prediction`` (label, probabilities, gate weights) per text out
``base_models``    built on a pretrained base: ``evaluate`` / ``generate`` also take a base name
``weights``        the inference weight formats its evaluator and generator take (``fp32``,
                   the default, and e.g. ``int8``): ``moe-orch evaluate|generate --weights``
                   refuses others; the evaluator reads ``EvalRequest.weights``, the generator
                   gets ``weights=``, a serve section may declare its own ``weights`` field
``devices``        where its evaluator, generator and serve endpoint can run (``cpu``, the
                   default, and ``cuda``): ``--device cuda``, ``evaluate.device: cuda`` and
                   ``serve.num_gpus_per_replica`` > 0 are refused for a family without cuda;
                   the evaluator reads ``EvalRequest.device``, the generator gets ``device=``,
                   the endpoint reads ``ServeSection.device``
=================  ==========================================================================

Every section is an ``orchestrator.schema.Section`` dataclass: its fields declare what they accept
(``setting(default, ge=..., one_of=..., doc=...)``) and ``cross_checks`` relates fields to each other;
``errors()`` gives ``field: got X, expected Y`` lines without the section prefix. Everything here is
plain data: no Ray, no torch.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from orchestrator.schema import Section, fmt, setting

INGRESS_MODES = ("proxy", "direct", "haproxy")
STRATEGIES = ("ddp", "deepspeed")
WEIGHTS = ("fp32", "int8", "int4")  # inference weight formats a family may take (``Family.weights``)
DEVICES = ("auto", "cpu", "cuda")  # the device setting of evaluate / generate (``orchestrator.devices``)


def import_ref(ref: str) -> Any:
    """The object at ``"package.module:attribute"``."""
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


# -- section bases --------------------------------------------------------------------------


@dataclass
class DataSection(Section):
    """Where a family's data lives. ``root``: None = each process reads ``$MOE_ORCH_DATA`` of the node it
    runs on (else ``./data``), so every node of a cluster has its own copy; a path given is made absolute
    by the driver and read at that path on every node."""

    root: str | None = setting(None, doc="the data folder; null = $MOE_ORCH_DATA of each node, else ./data")


@dataclass
class EvaluateSection(Section):
    """A family's evaluation settings; ``at_end: true`` evaluates the final checkpoint of every
    train run and sweep trial, into the same MLflow run."""

    at_end: bool = setting(False, doc="evaluate the final checkpoint of every run and trial")
    device: str = setting("auto", one_of=DEVICES,
                          doc="where the evaluator runs: auto = cuda when the process sees a GPU and the family "
                              "runs there, else cpu; cuda in a sweep trial asks Ray for one GPU")


@dataclass
class ServeSection(Section):
    """The Ray Serve settings every served family shares: HTTP, batching, autoscaling, ingress.

    Families subclass it for their own request limits and route prefix. ``ingress``: ``proxy``, Ray's HTTP
    proxy routes every request to the replicas (autoscaling behind one port); ``direct``, Ray Serve's direct
    ingress: the single replica's own HTTP server answers on host:port with no proxy hop (more throughput on
    a small box; needs min_replicas = max_replicas = 1; Ray's own proxy then takes port + 1); ``haproxy``,
    HAProxy on host:port in front of replicas that each run their own HTTP server, Serve keeping its backend
    list in step with the replicas (autoscaling; Ray's proxy, its backup, on port + 1).
    """

    host: str = setting("127.0.0.1", doc="the HTTP address")
    port: int = setting(8000, doc="the HTTP port (1..65535; 1..65534 with direct or haproxy ingress)")
    route_prefix: str = setting("/", pattern=r"/.*", expect="a path starting with /", doc="the app's URL prefix")
    min_replicas: int = setting(1, ge=1, doc="autoscaling floor")
    max_replicas: int = setting(2, doc="autoscaling ceiling, >= min_replicas")
    target_ongoing_requests: float = setting(16.0, gt=0, doc="autoscaling target per replica")
    upscale_delay_s: float = setting(30.0, ge=0, doc="load above target this long before a replica is added "
                                                     "(Ray's default)")
    downscale_delay_s: float = setting(600.0, ge=0, doc="load below target this long before a replica is "
                                                        "removed (Ray's default)")
    max_ongoing_requests: int | None = setting(None, doc="per replica; null = 2 * max_batch_size (must be >= "
                                                         "max_batch_size)")
    max_batch_size: int = setting(32, ge=1, doc="requests per @serve.batch call")
    max_queued_requests: int = setting(256, ge=1, special=(-1, "no limit"),
                                       doc="requests waiting at each caller (Ray's proxy) beyond the replicas' "
                                           "max_ongoing_requests; past it a request gets 503 at once")
    batch_wait_timeout_s: float = setting(0.01, ge=0, doc="how long a batch waits to fill")
    num_cpus_per_replica: float = setting(1.0, gt=0, doc="CPUs Ray reserves per replica")
    num_gpus_per_replica: float = setting(0.0, ge=0, doc="GPUs Ray reserves per replica (a fraction shares one); "
                                                         "> 0: the replica runs its model on CUDA (bfloat16)")
    access_log: bool = setting(True, doc="one log line per request in each replica (off for load tests)")
    max_body_bytes: int = setting(1_048_576, ge=1, doc="a request body over this gets 413 before it is parsed")
    # Start-up and health checks, sized for a busy laptop (Ray's proxy ready check is 5 s by default,
    # which a loaded CPU misses: the proxy is then killed and Serve never comes up).
    proxy_ready_timeout_s: float = setting(60.0, gt=0, doc="Ray's HTTP proxy must answer its ready check "
                                                           "within this")
    health_check_period_s: float = setting(10.0, gt=0, doc="replicas and the proxy are checked this often")
    health_check_timeout_s: float = setting(60.0, gt=0, doc="a replica or proxy that misses this is restarted")
    ingress: str = setting("proxy", one_of=INGRESS_MODES, doc="proxy, direct or haproxy (see above)")

    def cross_checks(self) -> list[str]:
        errors = []
        if not self.max_replicas >= max(1, self.min_replicas):
            errors.append(f"max_replicas: got {fmt(self.max_replicas)}, expected >= {max(1, self.min_replicas)}")
        top_port = 65534 if self.ingress in ("direct", "haproxy") else 65535  # Ray's proxy takes port + 1
        if not 0 < self.port <= top_port:
            errors.append(f"port: got {fmt(self.port)}, expected 1..{top_port}")
        if self.max_ongoing_requests is not None and self.max_ongoing_requests < self.max_batch_size:
            errors.append(f"max_ongoing_requests: got {self.max_ongoing_requests}, expected null or "
                          f">= max_batch_size ({self.max_batch_size})")
        if self.ingress == "direct":
            for key in ("min_replicas", "max_replicas"):
                if getattr(self, key) != 1:
                    errors.append(f"{key}: got {fmt(getattr(self, key))}, expected 1 with serve.ingress 'direct' "
                                  "(one replica answers on serve.port; use serve.ingress 'haproxy' or 'proxy' "
                                  "to autoscale)")
        return errors

    @property
    def device(self) -> str:
        """Where a replica runs its model: ``cuda`` when it holds GPUs (``num_gpus_per_replica`` > 0), else ``cpu``."""
        return "cuda" if self.num_gpus_per_replica > 0 else "cpu"


def section_from(cls: type, data: Mapping[str, Any] | None) -> Any:
    """A section of ``cls`` from plain data (unknown keys ignored); ValueError listing its problems."""
    names = {f.name for f in dataclasses.fields(cls)}
    section = cls(**{k: v for k, v in (data or {}).items() if k in names})
    errors = section.errors()
    if errors:
        raise ValueError(f"invalid {cls.__name__}:\n  " + "\n  ".join(errors))
    return section


# -- what evaluators and serve endpoints receive ---------------------------------------------


@dataclass
class EvalRequest:
    """Everything a family's evaluator gets: ``evaluator(request) -> {metric: value}``.

    It writes its artifacts (plots, predictions, ``metrics.json``) into ``out_dir``.
    """

    checkpoint_dir: Path | None  # the model checkpoint (its config.json is the manifest); None: ``base`` alone
    settings: EvaluateSection  # the family's evaluate section
    out_dir: Path
    data_root: str | None = None  # absolute; None = $MOE_ORCH_DATA, else ./data
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # training curves from MLflow
    log: Callable[[str], None] = print
    base: str | None = None  # a pretrained base to evaluate as it is (families with ``base_models``)
    weights: str = "fp32"  # inference weights (one of the family's ``weights``): e.g. "int8" for 8-bit weights
    device: str = "cpu"  # where to run: "cpu", or "cuda" (families with it in ``devices``; bfloat16 for LMs)


class ServeEndpoint(Protocol):
    """What a family's ``endpoint`` class gives each Serve replica (built with
    ``Endpoint(checkpoint_dir, settings)``; FastAPI/pydantic allowed, no ``ray.serve``).

    ``serve/`` owns the deployment: batching, autoscaling, ingress, checkpoint download.
    """

    def asgi_app(self, batched: Callable[[Any], Awaitable[Any]], health: Callable[[], dict[str, Any]]) -> Any:
        """The replica's FastAPI app. ``batched(item)`` queues one item for ``predict_batch``;
        ``health()`` gives the replica's own facts (id, ingress) for ``/healthz``."""
        ...

    def predict_batch(self, items: Sequence[Any]) -> list[Any]:
        """Answer a batch of items (one per request), in order; runs in a worker thread."""
        ...

    # Optional: ``error_body(status, message) -> dict``, the app's own error shape for what ``serve/``
    # answers before the app runs (a body over ``serve.max_body_bytes``); FastAPI's ``{"detail": ...}``
    # without it.
    # Optional, for hot swaps (``moe-orch serve models:/<name>@<alias> --follow``, or a new
    # ``user_config.source`` in a Serve config): ``reload(checkpoint_dir | None, version | None)`` loads
    # another checkpoint (None: relabel the loaded one) in a worker thread and answers new requests from
    # it, while requests in flight finish on the old one. Without it, a family's replicas are redeployed.


@dataclass
class Prediction:
    """One text's answer from a family's ``predictor``: ``predictor(checkpoint_dir, texts) -> [Prediction]``
    (``moe-orch predict``), in the order of ``texts``."""

    text: str
    label: str  # the predicted label's name
    probabilities: dict[str, float]  # {label: probability}, sums to 1
    gate_weights: dict[str, float]  # {expert: weight} the gate gave this text, sums to 1


# -- the family ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """A model family's declaration (see the module docstring for who reads which field)."""

    name: str
    model: type  # the model config, a Section dataclass
    data: type  # a DataSection subclass
    recipe: str  # "module:Class", a trainables.training.Recipe subclass (imported in the worker)
    checkpoint: str  # "module:function": load(directory, manifest) -> model
    strategies: tuple[str, ...] = ("ddp",)
    metrics: tuple[str, ...] = ()  # scalars every training report carries
    metric_prefixes: tuple[str, ...] = ()  # families of per-layer keys, e.g. "routing/"
    progress: tuple[tuple[str, str], ...] = (("train_loss", "train_loss"), ("val_loss", "val_loss"))  # (key, label)
    evaluate: type | None = None  # an EvaluateSection subclass
    evaluator: str | None = None  # "module:function": evaluator(EvalRequest) -> metrics
    eval_metrics: tuple[str, ...] = ()  # scalars the evaluator reports (once, at the end of a run)
    eval_metric_prefixes: tuple[str, ...] = ()
    history: tuple[str, tuple[str, ...]] | None = None  # MLflow curves the evaluator gets: (prefix, suffixes)
    serve: type | None = None  # a ServeSection subclass
    endpoint: str | None = None  # "module:Class" implementing ServeEndpoint
    checks: Callable[[Any], list[str]] | None = None  # cross-section checks of a whole Experiment
    base_models: bool = False  # built on pretrained bases: evaluate / generate also accept a base reference
    generator: str | None = None  # "module:function": generate(checkpoint_dir | None, base | None, prompt,
    # max_tokens, on_text, temperature, weights="fp32"[, device="cpu"]) -> text, for ``moe-orch generate``
    # (``device=`` is passed to the generators of families with cuda in ``devices``)
    weights: tuple[str, ...] = ("fp32",)  # inference weight formats its evaluator and generator take
    devices: tuple[str, ...] = ("cpu",)  # where its evaluator, generator and serve endpoint can run: cpu, cuda
    predictor: str | None = None  # "module:function": predict(checkpoint_dir, texts) -> [Prediction],
    # for ``moe-orch predict``

    def weights_error(self, weights: str) -> str | None:
        """Why ``weights`` is not an inference weight format of this family (None if it is one)."""
        if weights in self.weights:
            return None
        return f"--weights {weights}: the {self.name} family takes {', '.join(self.weights)}"

    @property
    def runs_on_cuda(self) -> bool:
        """Whether its evaluator, generator and serve endpoint can run on a CUDA device (``devices``)."""
        return "cuda" in self.devices

    def reports(self, metric: str) -> bool:
        """Whether training or the evaluator reports ``metric``."""
        return metric in self.metrics or metric.startswith(self.metric_prefixes or ("\0",)) \
            or self.is_eval_metric(metric)

    def is_eval_metric(self, metric: str) -> bool:
        """Whether ``metric`` comes from the evaluator only (at the end of a run)."""
        return metric in self.eval_metrics or metric.startswith(self.eval_metric_prefixes or ("\0",))

    @property
    def sections(self) -> dict[str, type]:
        """The family's own sections: ``model``, ``data``, and ``evaluate`` / ``serve`` if it has them."""
        out = {"model": self.model, "data": self.data}
        if self.evaluate is not None:
            out["evaluate"] = self.evaluate
        if self.serve is not None:
            out["serve"] = self.serve
        return out

    def contract_errors(self) -> list[str]:
        """Problems with the declaration itself (checked when the family is registered)."""
        errors = []
        if not issubclass(self.data, DataSection):
            errors.append(f"data: got {self.data.__name__}, expected a DataSection subclass")
        if (self.evaluate is None) != (self.evaluator is None):
            errors.append("evaluate/evaluator: got one without the other, expected both or neither")
        elif self.evaluate is not None and not issubclass(self.evaluate, EvaluateSection):
            errors.append(f"evaluate: got {self.evaluate.__name__}, expected an EvaluateSection subclass")
        if (self.serve is None) != (self.endpoint is None):
            errors.append("serve/endpoint: got one without the other, expected both or neither")
        elif self.serve is not None and not issubclass(self.serve, ServeSection):
            errors.append(f"serve: got {self.serve.__name__}, expected a ServeSection subclass")
        errors += [f"strategies: got {s!r}, expected some of {', '.join(STRATEGIES)}"
                   for s in self.strategies if s not in STRATEGIES]
        if "fp32" not in self.weights or not set(self.weights) <= set(WEIGHTS):
            errors.append(f"weights: got {self.weights!r}, expected fp32 and some of {', '.join(WEIGHTS)}")
        if "cpu" not in self.devices or not set(self.devices) <= {"cpu", "cuda"}:
            errors.append(f"devices: got {self.devices!r}, expected cpu and optionally cuda")
        return [f"family {self.name}: {e}" for e in errors]
