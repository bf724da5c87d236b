"""ARC-Easy / HellaSwag through lm-eval on an in-memory model: fidelity to lm-eval's own tasks and HFLM,
metrics of a tiny model, no network (the local readers and the HellaSwag split: tests/trainables/data)."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import datasets
import lm_eval
import pytest
import torch
import yaml
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks.hellaswag.utils import process_docs
from peft import LoraConfig, get_peft_model
from support import SHARED_DATA
from torch import nn

from trainables.data.hellaswag import hellaswag_records, hellaswag_split
from trainables.lm import tiny_llama
from trainables.lm.lm_eval_tasks import (
    ModuleLM,
    arc_easy_task,
    evaluate_lm,
    hellaswag_doc,
    hellaswag_task,
    lm_eval_version,
)

# The first three records of upstream hellaswag_val.jsonl (rowanz/hellaswag), with the
# fields the local file dropped; local idx 0, 1, 2 are these items.
ORIGINAL_HELLASWAG = [
    {
        "ind": 24,
        "activity_label": "Roof shingle removal",
        "ctx_a": "A man is sitting on a roof.",
        "ctx_b": "he",
        "label": "3",
        "endings": [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
    },
    {
        "ind": 92,
        "activity_label": "Clean and jerk",
        "ctx_a": "A lady walks to a barbell. She bends down and grabs the pole.",
        "ctx_b": "the lady",
        "label": "3",
        "endings": [
            "swings and lands in her arms.",
            "pulls the barbell forward.",
            "pulls a rope attached to the barbell.",
            "stands and lifts the weight over her head.",
        ],
    },
    {
        "ind": 106,
        "activity_label": "Canoeing",
        "ctx_a": "Two women in a child are shown in a canoe while a man pulls the canoe while standing in the "
        "water, with other individuals visible in the background.",
        "ctx_b": "the child and a different man",
        "label": "2",
        "endings": [
            "are then shown paddling down a river in a boat while a woman talks.",
            "are driving the canoe, they go down the river flowing side to side.",
            "sit in a canoe while the man paddles.",
            "walking go down the rapids, while the man in his helicopter almost falls and goes out of canoehood.",
        ],
    },
]


@pytest.fixture(scope="module")
def data_root() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data not found at {SHARED_DATA}: CI and the README expect ../shared/data beside the repo")
    return SHARED_DATA


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Hub-offline flags set, and any attempt to open a network connection recorded and refused."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        attempts.append(args)
        raise OSError("network access attempted during an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


class BareLM(nn.Module):
    """A causal LM that is not a transformers model: forward(input_ids, attention_mask) -> .logits only."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.inner(input_ids=input_ids, attention_mask=attention_mask).logits)


# ---------------------------------------------------------------------------- fidelity to lm-eval


def test_hellaswag_docs_equal_lm_evals_processing_of_the_original_records(data_root: Path) -> None:
    expected = process_docs(datasets.Dataset.from_list(ORIGINAL_HELLASWAG))  # lm-eval's own code
    local = hellaswag_records(data_root)[:3]
    for ours, theirs in zip(map(hellaswag_doc, local), expected, strict=True):
        assert ours["query"] == theirs["query"]
        assert ours["choices"] == theirs["choices"]
        assert ours["gold"] == theirs["gold"]
    assert hellaswag_doc(local[0])["query"] == "Roof shingle removal: A man is sitting on a roof. He"


def test_hellaswag_docs_are_clean_and_wikihow_contexts_unchanged(data_root: Path) -> None:
    records = hellaswag_records(data_root)
    docs = [hellaswag_doc(r) for r in records]
    texts = [text for d in docs for text in (d["query"], *d["choices"])]
    assert not any(re.search(r"\[.*?\]", text) for text in texts)  # markup gone; 5 lone "[" stay, as in lm-eval
    wikihow = records[3243]  # ctx ends a sentence: ctx_b was empty, nothing to capitalise
    assert wikihow["ctx"].endswith(".") and hellaswag_doc(wikihow)["query"] == wikihow["ctx"]


def _packaged_yaml(relative: str) -> dict[str, Any]:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    path = Path(lm_eval.__file__).parent / "tasks" / relative
    return yaml.load(path.read_text(), Loader=Loader)


@pytest.mark.parametrize(
    ("build", "packaged"), [(arc_easy_task, "arc/arc_easy.yaml"), (hellaswag_task, "hellaswag/hellaswag.yaml")]
)
def test_task_configs_match_lm_evals_builtin_tasks(build: Any, packaged: str, data_root: Path) -> None:
    ours = build(data_root).config
    theirs = _packaged_yaml(packaged)
    for field in ("task", "output_type", "doc_to_text", "doc_to_target", "doc_to_choice"):
        assert getattr(ours, field) == theirs[field], field
    assert [m["metric"] for m in ours.metric_list] == [m["metric"] for m in theirs["metric_list"]]
    assert ours.metadata["version"] == theirs["metadata"]["version"]
    assert ours.num_fewshot == 0


def test_tasks_serve_the_local_splits(data_root: Path) -> None:
    assert len(arc_easy_task(data_root).test_docs()) == 2376
    hellaswag = hellaswag_task(data_root)
    assert len(hellaswag.validation_docs()) == len(hellaswag_split("eval", data_root))
    assert len(hellaswag.training_docs()) == len(hellaswag_split("train", data_root))


def test_module_lm_scores_like_hflm_at_any_batch_size() -> None:
    model, tokenizer = tiny_llama("bytes")
    pairs = [
        ("Question: Which gas do plants take in?\nAnswer:", " carbon dioxide"),
        ("Question: Which gas do plants take in?\nAnswer:", " oxygen"),
        ("Roof shingle removal: A man is sitting on a roof. He", " starts pulling up roofing on a roof."),
        ("Short", " and a much longer continuation, to force padding in the batch"),
        ("Trailing space ", "moves"),
    ]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    reference = HFLM(pretrained=tiny_llama("bytes")[0], tokenizer=tokenizer, batch_size=2).loglikelihood(requests)
    for batch_size in (1, 3, 8):
        ours = ModuleLM(model, tokenizer, batch_size=batch_size).loglikelihood(requests)
        torch.testing.assert_close([s for s, _ in ours], [s for s, _ in reference], atol=1e-4, rtol=1e-5)
        assert [g for _, g in ours] == [g for _, g in reference]


# ---------------------------------------------------------------------------- evaluate_lm


def test_evaluate_lm_reports_every_metric_offline(data_root: Path, offline: list[Any]) -> None:
    model, tokenizer = tiny_llama("bytes")
    limit = 8
    metrics = evaluate_lm(model, tokenizer, limit=limit, batch_size=8, data_root=data_root)
    for task in ("arc_easy", "hellaswag"):
        assert metrics[f"{task}/n"] == limit
        for name in ("acc", "acc_norm"):
            value, stderr = metrics[f"{task}/{name}"], metrics[f"{task}/{name}_stderr"]
            assert 0.0 <= value <= 1.0 and 0.0 <= stderr <= 1.0
            assert value * limit == pytest.approx(round(value * limit))  # k correct of n
    assert metrics["lm_eval_version"] == lm_eval_version() == lm_eval.__version__
    assert offline == []  # no connection was even attempted


def test_peft_and_bare_modules_score_like_the_plain_model(data_root: Path, offline: list[Any]) -> None:
    model, tokenizer = tiny_llama("bytes")
    expected = evaluate_lm(model, tokenizer, tasks=("arc_easy",), limit=4, data_root=data_root)

    bare = evaluate_lm(BareLM(model), tokenizer, tasks=("arc_easy",), limit=4, batch_size=3, data_root=data_root)
    peft_model = get_peft_model(tiny_llama("bytes")[0], LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    peft_model.train()  # LoRA B starts at zero: same function as the base model
    peft = evaluate_lm(peft_model, tokenizer, tasks=("arc_easy",), limit=4, data_root=data_root)

    for key in ("arc_easy/acc", "arc_easy/acc_norm", "arc_easy/n"):
        assert bare[key] == expected[key] and peft[key] == expected[key]
    assert peft_model.training and all(m.training for m in peft_model.modules())  # modes given back


def test_evaluate_lm_refuses_unknown_tasks_and_bad_limits(data_root: Path) -> None:
    model, tokenizer = tiny_llama("bytes")
    with pytest.raises(ValueError, match="tasks"):
        evaluate_lm(model, tokenizer, tasks=("mmlu",), data_root=data_root)
    with pytest.raises(ValueError, match="limit"):
        evaluate_lm(model, tokenizer, limit=0, data_root=data_root)
