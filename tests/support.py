"""Helpers the test modules share (``tests/`` is on the test path: ``pythonpath`` in pyproject.toml)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

# The tests' data root: $MOE_ORCH_DATA if set, else ../shared/data beside the repository (where CI and the
# README put it). Tests that need real data skip or fail naming it when it is missing.
SHARED_DATA = Path(os.environ.get("MOE_ORCH_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data").resolve()


def ray_processes(title_prefix: str) -> list[psutil.Process]:
    """The descendants of this test process whose title starts with ``title_prefix`` (Ray names its
    worker processes ``ray::<actor class>``: ``ray::RayTrainWorker``, ``ray::ServeReplica:<app>:...``)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.cmdline()[:1] and proc.cmdline()[0].startswith(title_prefix):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def wait_for(condition: Callable[[], bool], timeout_s: float, alive: subprocess.Popen | None = None) -> None:
    """Poll ``condition`` every 0.2 s until it holds; fail after ``timeout_s``, or as soon as ``alive``
    (a process the condition waits on) has exited."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if alive is not None:
            assert alive.poll() is None, f"the process ended (exit {alive.returncode}) before that happened"
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s"
        time.sleep(0.2)


@contextlib.contextmanager
def raw_post(url: str, path: str, body: dict[str, Any], timeout_s: float = 60) -> Iterator[socket.socket]:
    """``POST <url><path>`` with a JSON ``body`` on a bare socket, held open while the ``with`` block runs and
    closed after it: a client that goes away mid-answer, which ``requests`` cannot be made to be."""
    import requests

    payload = requests.models.PreparedRequest()
    payload.prepare(method="POST", url=f"{url}{path}", json=body)
    host, port = url.removeprefix("http://").split("/", 1)[0].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        head = "".join(f"{k}: {v}\r\n" for k, v in payload.headers.items())
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{head}\r\n".encode() + payload.body)
        yield sock


class MlflowServer:
    """A real ``mlflow server`` on loopback, as a team runs one: a SQLite backend and proxied artifacts
    (``--serve-artifacts --artifacts-destination``), so clients need no shared disk. Started in its own
    process group and stopped by its pid (``stop``); ``url`` once ``/health`` answers.
    """

    def __init__(self, root: Path, port: int, timeout_s: float = 300) -> None:
        import os
        import signal
        import sys

        import requests

        self.root, self.url, self.artifacts = root, f"http://127.0.0.1:{port}", root / "artifacts"
        self._signal = signal
        self.log = (root / "mlflow-server.log").open("w")
        mlflow = str(Path(sys.executable).with_name("mlflow"))
        self.proc = subprocess.Popen(
            [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{root}/server.db", "--serve-artifacts",
             "--artifacts-destination", str(self.artifacts)],
            cwd=root, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})
        try:
            wait_for(lambda: _answers(requests, f"{self.url}/health"), timeout_s, alive=self.proc)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM to the server's process group (its pid), SIGKILL after 30 s."""
        import os

        for sig in (self._signal.SIGTERM, self._signal.SIGKILL):  # the group: the CLI and its uvicorn
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                continue
        self.log.close()


class Pausable:
    """``pause`` / ``resume`` for a server started in its own process group (``self.proc``)."""

    proc: subprocess.Popen

    def pause(self) -> None:
        """SIGSTOP to the server's process group: clients' requests wait (the kernel still accepts connections)
        until ``resume``: e.g. to hold a run at its next upload or log call. Keep it to seconds where a
        client gives up after its own timeout (S3 clients do)."""
        import os
        import signal

        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT to the server's process group (after ``pause``; harmless otherwise)."""
        import os
        import signal

        try:
            os.killpg(self.proc.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


class S3Server(Pausable):
    """moto's standalone S3-compatible server (``moto_server``), as storage for tests: it speaks the S3 API
    that pyarrow reads. Started in its own process group, stopped by its pid (``stop``); the bucket exists.

    ``env``: the credentials every process that reads the storage needs (from the environment, as on a
    cluster); ``uri(prefix)``: a ``storage.path`` for ``s3://<bucket>/<prefix>`` on this server.
    ``wrap``: a command prefix to start it with (e.g. ``ip netns exec <ns>``), ``host``: where it listens.
    """

    env = {"AWS_ACCESS_KEY_ID": "moe-orch-test", "AWS_SECRET_ACCESS_KEY": "moe-orch-test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def __init__(self, root: Path, port: int, bucket: str = "moe-orch", host: str = "127.0.0.1",
                 wrap: tuple[str, ...] = (), timeout_s: float = 300) -> None:
        import os
        import sys

        import requests

        self.endpoint, self.bucket = f"http://{host}:{port}", bucket
        self.log = (root / "s3-server.log").open("w")
        moto = str(Path(sys.executable).with_name("moto_server"))
        self.proc = subprocess.Popen([*wrap, moto, "-H", host, "-p", str(port)], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **self.env})
        try:
            wait_for(lambda: _answers(requests, f"{self.endpoint}/moto-api/"), timeout_s, alive=self.proc)
            self.filesystem().create_dir(bucket)
        except BaseException:
            self.stop()
            raise

    def uri(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}?endpoint_override={self.endpoint}"

    def filesystem(self) -> Any:
        """A pyarrow S3 filesystem on this server (bucket creation allowed)."""
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(endpoint_override=self.endpoint, access_key=self.env["AWS_ACCESS_KEY_ID"],
                                 secret_key=self.env["AWS_SECRET_ACCESS_KEY"], region=self.env["AWS_DEFAULT_REGION"],
                                 allow_bucket_creation=True)

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``<bucket>/<prefix>``, sorted."""
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(f"{self.bucket}/{prefix}".rstrip("/"), recursive=True, allow_not_found=True)
        return sorted(info.path for info in self.filesystem().get_file_info(selector)
                      if info.type == pafs.FileType.File)

    def stop(self) -> None:
        """SIGKILL to the server's process group (it holds nothing worth flushing)."""
        import os
        import signal

        self.resume()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)
        self.log.close()


def nested_runs(client: Any, parent: str) -> list[Any]:
    """The MLflow runs nested under the run ``parent`` (a sweep's trials), through ``client`` (an MlflowClient)."""
    experiment = client.get_run(parent).info.experiment_id
    return client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent}'")


def _answers(requests: Any, url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def unused_port() -> int:
    """A free TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


FUZZ_FACTOR = 20  # how many times more examples ``make fuzz`` (HYPOTHESIS_PROFILE=fuzz) tries than the suite


def examples(n: int) -> int:
    """A property test's example count: ``n`` in the suite, ``FUZZ_FACTOR * n`` in ``make fuzz``."""
    from hypothesis import settings

    return n * FUZZ_FACTOR if settings.get_current_profile_name() == "fuzz" else n


Pinned = tuple[str, str, Any]  # (method, path under the app's root, JSON body): a request a fuzz run broke


def fuzz_openapi(app_url: str, max_examples: int = 30, pinned: tuple[Pinned, ...] = ()) -> list[int]:
    """Every operation of the app's own OpenAPI schema (``<app_url>/openapi.json``) with requests that
    Schemathesis generates from it, both fitting the schema and not; fails on any 5xx. Returns the
    statuses answered. (Hypothesis drives Schemathesis's strategies directly; its pytest plugin does
    not load under pytest 9.)

    ``pinned`` requests, each a failure some run found, are sent first, every run. The generated ones
    follow the Hypothesis profile (tests/conftest.py): the same ones every run in the suite, fresh and
    ``FUZZ_FACTOR`` times as many under ``make fuzz``. A failure names its body, ready to pin.
    """
    import json

    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_url(f"{app_url}/openapi.json")
    statuses: list[int] = []

    def check(case: Any) -> None:
        response = case.call(base_url=app_url, timeout=60)
        statuses.append(response.status_code)
        try:
            case.validate_response(response, checks=[not_a_server_error])
        except BaseException as exc:
            body = json.dumps(case.body, ensure_ascii=True, default=repr) if case.body is not None else None
            raise AssertionError(f"{case.method} {case.path} answered {response.status_code}: {exc}\n"
                                 f"pin it: ({case.method!r}, {case.path!r}, {body}) in the test's PINNED") from exc

    operations = [result.ok() for result in schema.get_all_operations()]
    for method, path, body in pinned:
        operation = next(o for o in operations if o.method.upper() == method.upper() and o.path == path)
        check(operation.Case(body=body, media_type="application/json"))
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=examples(max_examples), suppress_health_check=list(HealthCheck))
            def no_server_error(case: Any) -> None:
                check(case)

            try:
                no_server_error()
            except Unsatisfiable:  # a route with no parameters and no body has no invalid input
                assert mode is GenerationMode.NEGATIVE and operation.method.upper() == "GET"
    return statuses


def save_tiny_pool(directory: Path, seed: int, step: int, name: str = "pool-test") -> Path:
    """A tiny-llama pool of two DyLoRA experts with distinct prototypes and non-zero weights (``seed``),
    saved as an LM checkpoint of experiment ``name`` at ``step``."""
    import torch

    from trainables.dylora.checkpoint import save_pool
    from trainables.dylora.config import DyLoRAConfig
    from trainables.dylora.experts import DyLoRAModel, ExpertManager
    from trainables.lm.base import load_base

    cfg = DyLoRAConfig(max_experts=2, rank=4, router_temperature=0.1)
    base, tokenizer = load_base("tiny-llama")
    model = DyLoRAModel(base, cfg)
    model.set_template(tokenizer)
    manager = ExpertManager(model, cfg)
    torch.manual_seed(seed)
    manager.add_expert(0, prototype=torch.randn(model.config.hidden_size))
    manager.add_expert(3, prototype=torch.randn(model.config.hidden_size))
    with torch.no_grad():
        for layer in model.expert_linears():
            for slot in (0, 1):
                layer.lora_B[slot].normal_(0, 0.05)
    return save_pool(model, manager, None, cfg, directory, {"step": step, "experiment": name})


def randomize_routing(model: Any, seed: int = 0) -> None:
    """Give a MixLoRA model's routers N(0, 1) weights (decisive: no near-ties) and its expert LoRA B
    0.5 * N(0, 1) (fresh ones are zero), seeded, so routing and outputs vary from token to token."""
    import torch

    from trainables.mixlora.surgery import mixlora_blocks

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in mixlora_blocks(model):
            block.router.gate.weight.copy_(torch.randn(block.router.gate.weight.shape, generator=generator))
            for bank in (block.lora_gate, block.lora_up, block.lora_down):
                bank.B.copy_(0.5 * torch.randn(bank.B.shape, generator=generator))
