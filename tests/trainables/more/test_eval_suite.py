"""The whole suite on a tiny random MoRE model: every artifact written, routing traces per variant."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from support import SHARED_DATA

from trainables.data import ByteTokenizer
from trainables.more import MoREConfig, MoRELM
from trainables.more.evaluation import ARTIFACTS, EvalSettings, routing_trace, run_suite
from trainables.more.routing_plots import sankey_links

TOK = ByteTokenizer()
TINY = dict(block_size=48, n_layer=3, n_head=2, d_model=16, num_experts=4, top_k=2, expert_hidden=32)
SMALL = EvalSettings(batch_size=16, ppl_max_tokens=600, babi_max_questions=6, arith_n=3, generation_tokens=8,
                     routing_batches=1, arith_long_digits=[4])


@pytest.fixture(autouse=True)
def _data(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("MOE_ORCH_DATA", os.environ.get("MOE_ORCH_DATA", str(SHARED_DATA)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and it stays fast on a busy machine
    yield
    torch.set_num_threads(threads)


def _model(variant: str) -> MoRELM:
    torch.manual_seed(0)
    return MoRELM(MoREConfig(variant=variant, num_recurrences=2, **TINY)).eval()


def test_suite_writes_every_artifact_and_metric(tmp_path: Path) -> None:
    history = {"routing/L1/S1/entropy": [(10, 0.9), (20, 0.7)], "routing/L1/S1/cv": [(10, 0.3), (20, 0.5)]}
    metrics = run_suite(_model("more_b"), TOK, SMALL, tmp_path, arith_train_digits=2, history=history,
                        log=lambda _: None)
    assert {p.name for p in tmp_path.iterdir()} == set(ARTIFACTS)
    for key in ("wikitext_ppl", "wikitext_bpb", "babi_qa2_acc", "babi_qa3_acc", "arith_acc_in", "arith_acc_long",
                "arith_acc_d2", "arith_acc_d4", "eval_load_cv", "eval_time_s"):
        assert key in metrics
    assert 1 < metrics["wikitext_ppl"] < 2 * TOK.vocab_size and metrics["wikitext_tokens"] == 600
    assert json.loads((tmp_path / "metrics.json").read_text())["babi_qa2_acc"] == metrics["babi_qa2_acc"]
    rows = list(csv.DictReader((tmp_path / "predictions.csv").open()))
    assert list(rows[0]) == ["task", "context", "question", "true_answer", "predicted_answer", "correct"]
    assert [r["task"] for r in rows].count("qa3") == 6 and [r["task"] for r in rows].count("arith_d4") == 3
    assert rows[0]["context"].startswith("Mary") and rows[0]["question"].endswith("?")
    assert (tmp_path / "generation.txt").read_text().startswith(SMALL.generation_prompt)
    assert "Sankey" in (tmp_path / "routing_sankey.html").read_text()[:5_000_000]
    assert (tmp_path / "routing_sankey.png").read_bytes()[:4] == b"\x89PNG"


def test_suite_runs_only_the_tasks_asked_for(tmp_path: Path) -> None:
    settings = EvalSettings(**{**SMALL.__dict__, "tasks": ["babi"], "babi_tasks": [3]})
    metrics = run_suite(_model("base"), TOK, settings, tmp_path, log=lambda _: None)
    assert set(metrics) == {"babi_qa3_acc", "eval_time_s"}
    assert {p.name for p in tmp_path.iterdir()} == {"metrics.json", "predictions.csv"}


@pytest.mark.parametrize(("variant", "calls"), [
    ("base", ["L0 S0", "L1 S0", "L2 S0"]),
    ("more_b", ["L0 S0", "L1 S0", "L1 S1", "L2 S0"]),
    ("more_c", ["L0 S0", "L1 S0", "L2 S0", "L0 S1", "L1 S1", "L2 S1"]),
])
def test_routing_trace_and_sankey_links(variant: str, calls: list[str]) -> None:
    ids = TOK.encode("Mary went to the kitchen.")
    trace = routing_trace(_model(variant), ids, [TOK.decode([i]) for i in ids])
    assert [f"L{layer} S{step}" for layer, step in trace.calls] == calls
    assert all(len(col) == len(ids) and set(col) <= set(range(4)) for col in trace.top1)
    links = sankey_links(trace)
    pairs = {c for c, *_ in links}
    for c in pairs:  # every token flows once from each call to the next
        assert sum(n for cc, _, _, n, _ in links if cc == c) == len(ids)
    # more_c's branches run side by side: no band from the last layer of branch 0 to branch 1
    assert pairs == ({0, 1, 3, 4} if variant == "more_c" else set(range(len(calls) - 1)))
