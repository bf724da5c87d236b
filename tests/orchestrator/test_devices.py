"""The device of ``moe-orch evaluate`` / ``generate`` (``--device``, ``evaluate.device``; ``orchestrator.devices``):
``auto`` keeps a machine without a GPU on CPU exactly as before and nothing asks Ray for a GPU by default;
CUDA asked where it cannot be had fails with a message naming why; the settings validate like every field.
The ``gpu`` tests run evaluate and generate on a CUDA device (``make gpu-check``)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.config import load_experiment
from orchestrator.contract import EvaluateSection
from orchestrator.devices import DeviceError, gpu_task_options, resolve_device
from orchestrator.experiment import ExperimentError
from orchestrator.registry import get_family

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
no_cuda = pytest.mark.skipif(HAS_CUDA, reason="checks the refusal on a machine without CUDA")


# -- resolution --------------------------------------------------------------------------------


def test_auto_picks_cuda_only_where_torch_sees_one_and_the_family_runs_there() -> None:
    mixlora, more = get_family("mixlora"), get_family("more")
    assert resolve_device("auto", mixlora) == ("cuda" if HAS_CUDA else "cpu")
    assert resolve_device("auto", more) == "cpu"  # its evaluator runs on cpu only
    assert resolve_device("auto", mixlora, weights="int8") == "cpu"  # a CPU weight format
    assert resolve_device("cpu", mixlora) == "cpu"
    assert EvaluateSection().device == "auto" and resolve_device(EvaluateSection().device, more) == "cpu"


@pytest.mark.parametrize(("family", "weights", "message"), [
    ("more", "fp32", "--device cuda: the more family runs on cpu only"),
    ("mixlora", "int8", "--device cuda: --weights int8 runs on cpu only (use --weights fp32 on cuda)"),
])
def test_cuda_where_it_cannot_run_is_refused_with_the_reason(family: str, weights: str, message: str) -> None:
    with pytest.raises(DeviceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_device("cuda", get_family(family), weights)


@no_cuda
def test_cuda_on_a_machine_without_one_is_refused() -> None:
    with pytest.raises(DeviceError, match=r"evaluate.device cuda: no CUDA device here"):
        resolve_device("cuda", get_family("mixlora"), name="evaluate.device")
    with pytest.raises(DeviceError, match=r"--device: got 'tpu', expected one of auto, cpu, cuda"):
        resolve_device("tpu", get_family("mixlora"))


def test_only_a_cuda_evaluation_asks_ray_for_a_gpu() -> None:
    assert gpu_task_options("cpu") is None  # runs in the calling process, as before
    assert gpu_task_options("cuda") == {"num_gpus": 1, "num_cpus": 0}


def test_families_declare_where_they_run() -> None:
    assert get_family("mixlora").runs_on_cuda and get_family("dylora").runs_on_cuda
    assert not get_family("more").runs_on_cuda and not get_family("ensemble").runs_on_cuda
    assert replace(get_family("more"), devices=("cuda",)).contract_errors() == [
        "family more: devices: got ('cuda',), expected cpu and optionally cuda"]


# -- the settings, validated before anything runs -------------------------------------------


@pytest.mark.parametrize(("path", "overrides", "line"), [
    ("mixlora_tiny.yaml", ["evaluate.device=gpu"], "evaluate.device: got 'gpu', expected one of auto, cpu, cuda"),
    ("tiny.yaml", ["evaluate.device=cuda"],
     "evaluate.device: got 'cuda', expected auto or cpu (family more evaluates on cpu only)"),
    ("mixlora_tiny.yaml", ["serve.num_gpus_per_replica=-1"], "serve.num_gpus_per_replica: got -1.0, expected >= 0"),
    ("ensemble.yaml", ["serve.num_gpus_per_replica=1"],
     "serve.num_gpus_per_replica: got 1.0, expected 0 (family ensemble serves on cpu only)"),
    ("mixlora_tiny.yaml", ["serve.weights=int8", "serve.num_gpus_per_replica=1"],
     "serve.weights: got 'int8', expected 'fp32' with serve.num_gpus_per_replica > 0 (int8 weights run on CPU)"),
    ("llm_judge.yaml", ["model.local_gpus=-0.5"], "model.local_gpus: got -0.5, expected >= 0"),
])
def test_a_bad_device_setting_names_its_field(path: str, overrides: list[str], line: str) -> None:
    with pytest.raises(ExperimentError) as info:
        load_experiment(EXPERIMENTS / path, overrides)
    assert line in info.value.errors, info.value.errors


def test_cuda_settings_validate_on_a_machine_without_a_gpu() -> None:
    """The experiment may run on a cluster: validation does not look for a GPU here."""
    exp = load_experiment(EXPERIMENTS / "mixlora_tiny.yaml", ["evaluate.device=cuda", "serve.num_gpus_per_replica=0.5"])
    assert exp.evaluate.device == "cuda" and exp.serve.num_gpus_per_replica == 0.5 and exp.serve.device == "cuda"
    defaults = load_experiment(EXPERIMENTS / "mixlora_tiny.yaml")
    assert defaults.evaluate.device == "auto" and defaults.serve.num_gpus_per_replica == 0
    assert defaults.serve.device == "cpu"


# -- the commands ---------------------------------------------------------------------------


@no_cuda
@pytest.mark.parametrize("command", [["evaluate", "tiny-llama", "--device", "cuda"],
                                     ["evaluate", "tiny-llama", "device=cuda"],
                                     ["generate", "tiny-llama", "--prompt", "Hi", "--device", "cuda"]])
def test_the_commands_refuse_cuda_without_one_exit_2(command: list[str], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # evaluate's default MLflow store: ./mlflow.db
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 2, result.output
    assert "cuda: no CUDA device here" in result.stderr


def test_a_bad_device_option_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["generate", "tiny-llama", "--prompt", "Hi", "--device", "tpu"])
    assert result.exit_code == 2 and "'tpu' is not one of 'auto', 'cpu', 'cuda'" in result.stderr


def _evaluate_base(tmp_path: Path, device: str | None) -> tuple[dict, dict]:
    """``moe-orch evaluate tiny-llama`` on two ARC-Easy items: ``(metrics.json, the run's tags)``."""
    from mlflow.tracking import MlflowClient

    from orchestrator.evaluate import evaluate_target

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    summary = evaluate_target("tiny-llama", uri, ["tasks=[arc_easy]", "limit=2", "batch_size=8"], out=tmp_path / "out",
                              device=device)
    return json.loads((tmp_path / "out" / "metrics.json").read_text()), \
        MlflowClient(tracking_uri=uri).get_run(summary["run_id"]).data.tags


@pytest.mark.skipif(HAS_CUDA, reason="auto picks cuda here: the gpu test below covers it")
def test_evaluate_and_generate_with_auto_stay_on_cpu_in_float32(tmp_path: Path) -> None:
    from orchestrator.generate import generate_from

    metrics, tags = _evaluate_base(tmp_path, None)  # the device setting's default: auto
    assert metrics["device"] == "cpu" and metrics["dtype"] == "float32" and metrics["arc_easy/n"] == 2
    assert "moe_orch.eval_device" not in tags
    pieces: list[str] = []
    text = generate_from("tiny-llama", "Hi", 3, 0.0, None, None, on_text=pieces.append, device="auto")
    assert text == "".join(pieces)


# -- on a GPU (make gpu-check) ----------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
def test_evaluate_with_auto_runs_on_cuda_in_bfloat16(tmp_path: Path) -> None:
    metrics, tags = _evaluate_base(tmp_path, None)
    assert metrics["device"] == "cuda" and metrics["dtype"] == "bfloat16" and metrics["arc_easy/n"] == 2
    assert tags["moe_orch.eval_device"] == "cuda"
    cpu, _ = _evaluate_base(tmp_path / "cpu", "cpu")
    assert cpu["device"] == "cpu" and cpu["dtype"] == "float32"


@pytest.mark.gpu
@needs_cuda
def test_generate_with_auto_decodes_on_cuda() -> None:
    from orchestrator.generate import generate_from

    torch.cuda.reset_peak_memory_stats()
    pieces: list[str] = []
    text = generate_from("tiny-llama", "Hi", 8, 0.0, None, None, on_text=pieces.append, device="auto")
    assert text == "".join(pieces) and torch.cuda.max_memory_allocated() > 0  # the model and its cache on the GPU


@pytest.mark.gpu
@needs_cuda
def test_an_evaluation_at_the_end_of_a_sweep_trial_runs_as_a_ray_task_holding_a_gpu(tmp_path: Path) -> None:
    import ray

    from orchestrator.evaluate import evaluate_at_end
    from orchestrator.ray_runtime import start_local_ray
    from orchestrator.tracking import Store
    from trainables.lm.base import load_base
    from trainables.mixlora.checkpoint import apply_adapters, save_adapter

    exp = load_experiment(EXPERIMENTS / "mixlora_tiny.yaml", ["evaluate.tasks=[arc_easy]", "evaluate.limit=2"])
    model, _ = load_base("tiny-llama")
    apply_adapters(model, exp.model)
    checkpoint = save_adapter(model, exp.model, tmp_path / "model", {"step": 4})
    store = Store.at(f"sqlite:///{tmp_path}/mlflow.db")
    run = store.start_run(store.experiment_id("gpu-check"), "gpu-check/trial")
    started = not ray.is_initialized()
    if started:
        start_local_ray(2)
    try:
        assert ray.cluster_resources().get("GPU", 0) >= 1
        metrics = evaluate_at_end(exp, run, checkpoint, in_ray_worker=True)
    finally:
        if started:
            ray.shutdown()
    run.end()
    assert metrics["arc_easy/n"] == 2
    written = json.loads(Path(run.download("evaluation/metrics.json", tmp_path / "dl")).read_text())
    assert written["device"] == "cuda" and written["dtype"] == "bfloat16"
