"""Experiment files: every shipped YAML validates; bad ones list every error, exit 2, and never start Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.config import load_experiment
from orchestrator.experiment import ExperimentError
from orchestrator.registry import family_names

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
TINY = EXPERIMENTS / "tiny.yaml"


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_experiment_validates(path: Path) -> None:
    exp = load_experiment(path)
    assert exp.name == path.stem and exp.family in family_names()
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "name: " in result.stdout and "# search space" in result.stdout


def test_more_yaml_sweeps_all_variants() -> None:
    exp = load_experiment(EXPERIMENTS / "more.yaml")
    assert set(exp.sweep.space) >= {"model.variant", "model.num_recurrences", "model.num_experts", "model.top_k"}
    dims = {d.key: d for d in exp.dims}
    assert set(dims["model.variant"].args) == {"base", "more_a", "more_b", "more_c", "more_d"}
    assert exp.sweep.scheduler == "asha" and exp.data.dataset == "tinyshakespeare"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(TINY.read_text() + "\n" + text)
    return path


BAD_CASES = {
    "unknown key": ("train:\n  max_steps: 30\n  lrr: 0.1\n", ["train.lrr: got an unknown key"]),
    "wrong type": ("train:\n  max_steps: many\n", ["train.max_steps: got 'many', expected an integer"]),
    "top_k > num_experts": ("model:\n  num_experts: 2\n  top_k: 3\n",
                            ["model.top_k: got 3, expected <= num_experts (2)"]),
    "unknown variant": ("model:\n  variant: more_z\n", ["model.variant: got 'more_z', expected one of base"]),
    "bad space key": ("sweep:\n  space:\n    model.nonsense: {choice: [1, 2]}\n",
                      ["sweep.space.model.nonsense: got an unknown key"]),
    "unknown family": ("family: mixtral\n",
                       ["family: got 'mixtral', expected one of dylora, ensemble, llm_judge, mixlora, more"]),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
@pytest.mark.parametrize("command", ["validate", "train"])
def test_bad_file_exits_2_without_ray(tmp_path: Path, case: str, command: str) -> None:
    text, expected = BAD_CASES[case]
    # YAML keeps the last duplicate top-level key, so appended sections replace tiny.yaml's.
    result = CliRunner().invoke(main, [command, str(_write(tmp_path, text))])
    assert result.exit_code == 2, result.output
    for line in expected:
        assert line in result.stderr
    assert not ray.is_initialized()
    assert not (tmp_path / "ray_results").exists()


def test_all_errors_listed_at_once(tmp_path: Path) -> None:
    text = (
        "model:\n  variant: more_z\n  num_experts: 2\n  top_k: 3\n  bogus: 1\n"
        "train:\n  max_steps: many\n  lr: -1\n"
        "sweep:\n  metric: val_loss\n  space:\n    model.nope: {choice: [1]}\n    train.lr: {uniform: [1, 0]}\n"
    )
    result = CliRunner().invoke(main, ["validate", str(_write(tmp_path, text))])
    assert result.exit_code == 2
    for line in ["model.bogus: got an unknown key", "train.max_steps: got 'many'", "train.lr: got -1.0, expected > 0",
                 "sweep.space.model.nope: got an unknown key",
                 "sweep.space.train.lr.uniform: got [1, 0], expected lo < hi"]:
        assert line in result.stderr
    # the model's own checks need well-typed fields, so they run once the unknown key is gone
    with pytest.raises(ExperimentError) as info:
        load_experiment(TINY, ["model.variant=more_z", "model.num_experts=2", "model.top_k=3", "train.max_steps=x"])
    assert len(info.value.errors) == 3


def test_overrides_are_typed() -> None:
    exp = load_experiment(TINY, ["train.lr=3e-4", "train.max_steps=12", "scaling.use_gpu=true",
                                 "model.capacity_factor=null", "model.variant=more_c", "train.grad_clip=null",
                                 "model.capacity_factor=1.5"])
    assert exp.train.lr == pytest.approx(3e-4) and isinstance(exp.train.lr, float)
    assert exp.train.max_steps == 12 and exp.scaling.use_gpu is True and exp.train.grad_clip is None
    assert exp.model.variant == "more_c" and exp.model.capacity_factor == 1.5
    assert load_experiment(TINY, ["model.capacity_factor=null"]).model.capacity_factor is None
    assert load_experiment(TINY, ["train.lr=1"]).train.lr == 1.0  # ints widen to float fields


@pytest.mark.parametrize("override, expected", [
    ("train.max_steps=1.5", "train.max_steps: got 1.5, expected an integer"),
    ("train.lr=fast", "train.lr: got 'fast', expected a number"),
    ("scaling.use_gpu=maybe", "scaling.use_gpu: got 'maybe', expected a boolean"),
    ("train.nope=1", "train.nope: got an unknown key"),
    ("scaling.strategy=fsdp", "scaling.strategy: got 'fsdp', expected one of ddp, deepspeed"),
    ("no_equals_sign", "no_equals_sign: got a malformed override"),
])
def test_bad_override_names_the_field(override: str, expected: str) -> None:
    result = CliRunner().invoke(main, ["validate", str(TINY), override])
    assert result.exit_code == 2
    assert expected in result.stderr


@pytest.mark.parametrize("spec, expected", [
    ("model.top_k={choice: [1, 9]}",
     "sweep.space.model.top_k: got 9, which makes model.top_k: got 9, expected <= num_experts (4)"),
    ("model.top_k={choice: [1, two]}", "sweep.space.model.top_k: got 'two', expected an integer"),
    ("model.top_k={uniform: [1, 2]}", "sweep.space.model.top_k: got uniform, expected choice/grid/randint"),
    ("train.lr={loguniform: [0, 1]}", "sweep.space.train.lr.loguniform: got [0, 1], expected lo > 0"),
    ("train.lr={normal: [0, 1]}", "sweep.space.train.lr: got distribution 'normal', expected one of choice"),
    ("model.variant={grid: []}", "sweep.space.model.variant.grid: got [], expected a non-empty list"),
    ("scaling.num_workers={choice: [1, 2]}", "sweep.space.scaling.num_workers: got an unknown key"),
])
def test_bad_space_values(spec: str, expected: str) -> None:
    with pytest.raises(ExperimentError) as info:
        load_experiment(TINY, [f"sweep.space.{spec}"])
    assert any(e.startswith(expected) for e in info.value.errors), info.value.errors


def test_space_combinations_are_checked() -> None:
    with pytest.raises(ExperimentError) as info:
        load_experiment(TINY, ["sweep.space.model.num_experts={choice: [2, 4]}",
                               "sweep.space.model.top_k={choice: [1, 4]}"])
    assert info.value.errors == [
        "sweep.space: got the combination model.top_k=4, model.num_experts=2, "
        "which makes model.top_k: got 4, expected <= num_experts (2)"]
    with pytest.raises(ExperimentError) as info:  # more_b needs 3 layers; tiny has 2
        load_experiment(TINY, ["sweep.space.model.variant={grid: [base, more_b]}"])
    assert "sweep.space.model.variant: got 'more_b', which makes model.n_layer: got 2" in info.value.errors[0]


def test_sweep_rules() -> None:
    with pytest.raises(ExperimentError) as info:
        load_experiment(TINY, ["sweep.metric=[val_loss, tokens_per_s]", "sweep.mode=[min]", "sweep.num_samples=0"])
    errors = "\n".join(info.value.errors)
    assert "sweep.mode: got 1 modes, expected one per metric (2)" in errors
    assert "sweep.scheduler: got 'asha' with 2 metrics" in errors
    assert "sweep.num_samples: got 0, expected >= 1" in errors
    exp = load_experiment(TINY, ["sweep.metric=[val_loss, tokens_per_s]", "sweep.mode=[min, max]",
                                 "sweep.scheduler=none"])
    assert exp.metrics == ["val_loss", "tokens_per_s"] and exp.modes == ["min", "max"]


def test_data_root_null_is_resolved_where_data_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """null stays null (each node reads its own $MOE_ORCH_DATA); a path given is made absolute in the driver."""
    monkeypatch.setenv("MOE_ORCH_DATA", str(tmp_path))
    assert load_experiment(TINY).data.root is None
    assert load_experiment(TINY, [f"data.root={tmp_path}/x"]).data.root == str(tmp_path / "x")
    monkeypatch.chdir(tmp_path)
    assert load_experiment(TINY, ["data.root=rel"]).data.root == str(tmp_path / "rel")
