"""Ensemble MoE model: gate shapes and mixing, top-k, freezing, training, checkpoints, config checks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from trainables.ensemble.checkpoint import load_checkpoint, read_checkpoint_config, save_checkpoint
from trainables.ensemble.config import EnsembleConfig
from trainables.ensemble.fit import batches, build_optimizer, evaluate, train_step
from trainables.ensemble.gate import ngram_buckets
from trainables.ensemble.model import EnsembleMoE

TEXTS = ["a charming and often affecting journey .", "unflinchingly bleak and desperate", "",
         "the acting , costumes , music , cinematography and sound are all astounding"]


def build(experts: list[dict[str, Any]], **kwargs: Any) -> EnsembleMoE:
    torch.manual_seed(0)
    return EnsembleMoE.build(EnsembleConfig(experts=experts, max_length=48, **kwargs))


def force_gate(model: EnsembleMoE, expert: int) -> None:
    """Make the gate put all its weight on ``expert`` for every input."""
    last = model.gate.mlp[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-1e4)
        last.bias[expert] = 1e4


def test_shapes_and_mixture(tiny_experts: list[dict[str, Any]]) -> None:
    model = build(tiny_experts).eval()
    labels = torch.tensor([1, 0, 1, 1])
    out = model(TEXTS, labels)
    assert out.log_probs.shape == (4, 2) and out.gate_weights.shape == (4, 2) and out.gate_probs.shape == (4, 2)
    assert out.expert_log_probs.shape == (4, 2, 2) and out.expert_mask.all()
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(4))
    torch.testing.assert_close(out.gate_weights.sum(-1), torch.ones(4))
    # the output is the gate-weighted mixture of the experts' probabilities
    mixture = (out.gate_weights.unsqueeze(-1) * out.expert_log_probs.exp()).sum(1)
    torch.testing.assert_close(out.probs, mixture)
    assert out.nll.item() > 0 and out.expert_loss.item() > 0 and out.balance_loss.item() >= 1.0 - 1e-6


@pytest.mark.parametrize("top_k", [None, 1])
def test_forced_gate_equals_expert(tiny_experts: list[dict[str, Any]], top_k: int | None) -> None:
    model = build(tiny_experts, top_k=top_k).eval()
    for e in range(2):
        force_gate(model, e)
        with torch.no_grad():
            out = model(TEXTS)
            alone = torch.softmax(model.expert_logits(e, TEXTS), dim=-1)
        torch.testing.assert_close(out.probs, alone, atol=1e-6, rtol=1e-5)
        assert (out.gate_weights[:, e] == 1).all()


def test_top_k_runs_only_routed_experts(tiny_experts: list[dict[str, Any]]) -> None:
    model = build(tiny_experts + [dict(tiny_experts[0], name="bert_copy")], top_k=2).eval()
    out = model(TEXTS * 2)
    assert ((out.gate_weights > 0).sum(-1) == 2).all()
    assert torch.equal(out.expert_mask, out.gate_weights > 0)  # unselected experts did not run
    torch.testing.assert_close(out.gate_weights.sum(-1), torch.ones(8))
    dense = model(TEXTS * 2, all_experts=True)
    torch.testing.assert_close(dense.log_probs, out.log_probs)
    assert dense.expert_mask.all()


def test_gate_features_are_stable() -> None:
    assert ngram_buckets("Great movie !", 1000, 2) == ngram_buckets("great movie !", 1000, 2)
    assert len(ngram_buckets("great movie !", 1000, 2)) == 3 + 2
    assert ngram_buckets("", 1000, 2) == []


@pytest.mark.parametrize("mode", ["frozen", "heads"])
def test_freezing(tiny_experts: list[dict[str, Any]], sst2: dict[str, Any], mode: str) -> None:
    model = build(tiny_experts, expert_training=mode)
    experts_before = {k: v.clone() for k, v in model.experts.state_dict().items()}
    gate_before = {k: v.clone() for k, v in model.gate.state_dict().items()}
    optimizer = build_optimizer(model, 1e-2, 0.01)
    stream = batches(sst2["train"], 16, torch.Generator().manual_seed(0))
    model.train()
    for _ in range(3):
        train_step(model, *next(stream), optimizer)
    after = model.experts.state_dict()
    changed = {k for k, v in after.items() if not torch.equal(v, experts_before[k])}
    if mode == "frozen":
        assert not changed
        assert not model.experts[0].training  # frozen experts stay in eval mode (no dropout)
    else:  # only classifier heads move
        assert changed and all(".classifier." in f".{k}" or k.startswith("classifier") for k in changed)
        assert any(k.startswith("0.classifier") for k in changed)
    assert any(not torch.equal(v, gate_before[k]) for k, v in model.gate.state_dict().items())


def test_training_improves_dev_accuracy(tiny_experts: list[dict[str, Any]], sst2: dict[str, Any]) -> None:
    # a statistical check, not a knife-edge: on all 872 dev sentences a model at chance scores
    # 0.5 ± 0.017, so "learnt" means at least 3 standard errors above chance
    dev = sst2["dev_all"]
    model = build(tiny_experts, gate_lr=3e-3)
    before = evaluate(model, dev)
    optimizer = build_optimizer(model, 2e-3, 0.0)  # from-scratch experts sit at chance for ~80 steps, then learn
    stream = batches(sst2["train"], 32, torch.Generator().manual_seed(0))
    model.train()
    for _ in range(160):
        train_step(model, *next(stream), optimizer)
    after = evaluate(model, dev)
    stderr = math.sqrt(0.25 / len(dev))
    assert after["val_accuracy"] >= 0.5 + 3 * stderr, after["val_accuracy"]
    assert after["val_accuracy"] >= before["val_accuracy"] + 2 * stderr, (before["val_accuracy"], after["val_accuracy"])
    for name in ("bert_wp", "roberta_bpe"):
        assert 0 <= after[f"gate/{name}/mean"] <= 1 and f"gate/{name}/p90" in after
    assert after["val_gain_over_best"] == pytest.approx(after["val_accuracy"] - after["val_best_expert_accuracy"])


def test_checkpoint_round_trip(tiny_experts: list[dict[str, Any]], tmp_path: Path) -> None:
    model = build(tiny_experts, top_k=1)
    with torch.no_grad():  # move the gate off its init so the test sees it saved
        model.gate.mlp[-1].bias.copy_(torch.tensor([0.3, -0.2]))
    model.eval()
    save_checkpoint(model, tmp_path / "ckpt", {"step": 7, "serve": {"port": 8123}})
    files = {p.relative_to(tmp_path / "ckpt").as_posix() for p in (tmp_path / "ckpt").rglob("*") if p.is_file()}
    assert {"config.json", "gate.safetensors", "experts/bert_wp/model.safetensors",
            "experts/roberta_bpe/tokenizer.json"} <= files
    assert not any(f.endswith((".pt", ".bin", ".pkl")) for f in files)  # no pickles
    doc = read_checkpoint_config(tmp_path / "ckpt")
    assert doc["metadata"]["step"] == 7 and doc["config"]["top_k"] == 1
    loaded = load_checkpoint(tmp_path / "ckpt")
    with torch.no_grad():
        a, b = model(TEXTS, all_experts=True), loaded(TEXTS, all_experts=True)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert loaded.predict(TEXTS) == model.predict(TEXTS)


def test_config_errors() -> None:
    assert EnsembleConfig().errors() == []
    bad = EnsembleConfig(experts=[{"name": "a", "pretrained": "x", "arch": "bert"},
                                  {"name": "a", "arch": "bert", "tokenizer": "bpe", "hidden_size": 30, "num_heads": 4},
                                  {"name": "b", "pretrained": "x", "colour": 1}],
                         top_k=4, expert_training="some")
    errs = "\n".join(bad.errors())
    for needle in ("experts[0]: got both of pretrained/arch", "experts[1].name: got 'a' twice",
                   "experts[1].hidden_size: got 30", "experts[2].colour: got an unknown key",
                   "top_k: got 4, expected null or <= 3", "expert_training: got 'some'"):
        assert needle in errs, errs
    assert "experts: got []" in EnsembleConfig(experts=[]).errors()[0]
