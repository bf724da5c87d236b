"""experiments/ensemble.yaml validates (train and sweep), and its serve section is checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import load_experiment
from orchestrator.experiment import ExperimentError

YAML = Path(__file__).resolve().parents[3] / "experiments" / "ensemble.yaml"


def test_ensemble_yaml_validates() -> None:
    exp = load_experiment(YAML)
    assert exp.family == "ensemble" and exp.data.dataset == "sst2"
    assert exp.model.expert_names == ["minilm", "bert_wp", "roberta_bpe"]
    assert exp.metrics == ["val_accuracy"] and {d.key for d in exp.dims} >= {"model.top_k", "model.gate_hidden"}
    assert exp.serve.route_prefix == "/ensemble" and exp.serve.host == "127.0.0.1"
    assert exp.to_dict()["serve"]["max_batch_size"] == 32


def test_bad_values_are_listed() -> None:
    with pytest.raises(ExperimentError) as info:
        load_experiment(YAML, ["model.top_k=4", "serve.max_ongoing_requests=8", "serve.port=0",
                               "data.val_split=test", "sweep.metric=val_perplexity"])
    errs = "\n".join(info.value.errors)
    for needle in ("model.top_k: got 4", "serve.max_ongoing_requests: got 8", "serve.port: got 0",
                   "data.val_split: got 'test'", "sweep.metric: got 'val_perplexity'"):
        assert needle in errs, errs


@pytest.mark.parametrize("override, expected", [
    # what the ensemble family does not support is refused before Ray starts, naming the field
    ("evaluate.at_end=true", "evaluate: got a section, expected none (family ensemble has no evaluator)"),
    ("scaling.strategy=deepspeed", "scaling.strategy: got 'deepspeed', expected one of ddp (what family ensemble "
                                   "supports)"),
])
def test_what_the_family_lacks_is_refused(override: str, expected: str) -> None:
    with pytest.raises(ExperimentError) as info:
        load_experiment(YAML, [override])
    assert expected in info.value.errors
