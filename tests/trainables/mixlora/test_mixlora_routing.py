"""Router pictures of a MixLoRA model: load and entropy per layer over real tokens only, the PNGs."""

from __future__ import annotations

from pathlib import Path

import torch

from trainables.lm import instructions as lm_data
from trainables.lm import load_base
from trainables.mixlora.checkpoint import apply_adapters
from trainables.mixlora.config import MixLoRAConfig
from trainables.mixlora.routing import expert_load_png, measure_routing, routing_curves_png

PNG = b"\x89PNG"


def _model(method: str = "mixlora") -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    model, tokenizer = load_base("tiny-llama")
    return apply_adapters(model, MixLoRAConfig(base="tiny-llama", method=method, num_experts=4, top_k=2,
                                               rank=4, dropout=0.0)).eval(), tokenizer


EXAMPLES = [lm_data.Example("Question: Which is a gas?\nAnswer:", "steam"),
            lm_data.Example("Question: What do plants need to make food from light, water and air?\nAnswer:",
                            "sunlight through their leaves")]


def test_load_is_a_share_per_layer_and_padding_is_not_routed() -> None:
    model, tokenizer = _model()
    together = measure_routing(model, tokenizer, EXAMPLES, batch_size=2)  # the short one padded
    alone = [measure_routing(model, tokenizer, [ex], batch_size=1) for ex in EXAMPLES]
    assert together is not None and all(a is not None for a in alone)
    assert together.tokens == sum(a.tokens for a in alone)  # padding positions are not counted
    counts = sum(a.load * a.tokens for a in alone)  # (L, E) assignments / k of each example alone
    torch.testing.assert_close(together.load * together.tokens, counts, atol=1e-4, rtol=1e-4)
    assert torch.allclose(together.load.sum(-1), torch.ones(together.load.shape[0]))
    assert ((together.entropy > 0) & (together.entropy <= 1)).all() and (together.cv >= 0).all()


def test_plain_lora_has_no_routing() -> None:
    model, tokenizer = _model("lora")
    assert measure_routing(model, tokenizer, EXAMPLES) is None


def test_pictures_are_written(tmp_path: Path) -> None:
    model, tokenizer = _model()
    routing = {"ARC": measure_routing(model, tokenizer, EXAMPLES),
               "one": measure_routing(model, tokenizer, EXAMPLES[:1])}
    assert expert_load_png(routing, tmp_path / "load.png", "test").read_bytes()[:4] == PNG
    history = {f"routing/L{layer}/{kind}": [(2, 0.9), (4, 0.8)] for layer in range(2) for kind in ("entropy", "cv")}
    history["routing/L0/load/E1"] = [(2, 0.3)]  # not a curve this picture draws
    assert routing_curves_png(history, tmp_path / "curves.png", "test").read_bytes()[:4] == PNG
    assert routing_curves_png({"val_loss": [(2, 1.0)]}, tmp_path / "none.png", "test") is None
    assert not (tmp_path / "none.png").exists()


def test_no_examples_measure_nothing() -> None:
    model, tokenizer = _model()
    assert measure_routing(model, tokenizer, []) is None
