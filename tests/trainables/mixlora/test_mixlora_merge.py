"""Adapters loaded for inference (``load_adapter(..., inference=True)``, serving's ``load_model_from``):
plain LoRA merged into the frozen weights gives the unmerged model's logits to float32 rounding and the
same greedy tokens, for the LoRA baseline and for MixLoRA (attention LoRA merged, routed experts kept);
training and resume keep their adapters unmerged and trainable."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft.tuners.lora import LoraLayer
from support import randomize_routing

from trainables.lm import load_base
from trainables.lm.engine import GenerationEngine, SamplingParams
from trainables.mixlora import mixlora_blocks
from trainables.mixlora.checkpoint import apply_adapters, load_adapter, load_model_from, save_adapter
from trainables.mixlora.config import MixLoRAConfig
from trainables.mixlora.recipe import MixLoRARecipe
from trainables.training.manifest import read_manifest

PROMPTS = ["Hello there, how are", "x", "def f(a, b):\n    return"]


def _config(method: str) -> MixLoRAConfig:
    return MixLoRAConfig(method=method, num_experts=4, top_k=2, rank=4, alpha=8, dropout=0.0)


def _save_trained_like(method: str, directory: Path) -> Path:
    """A tiny adapted model with every adapter weight moved well off its init (B starts at zero), saved."""
    torch.manual_seed(0)
    cfg = _config(method)
    model, _ = load_base("tiny-llama")
    apply_adapters(model, cfg)
    randomize_routing(model)  # MixLoRA: decisive routers, large expert B
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:  # peft LoRA
                param.copy_(0.2 * torch.randn_like(param))
    return save_adapter(model, cfg, directory)


def _is_unmerged(model: torch.nn.Module) -> bool:
    return any(isinstance(m, LoraLayer) for m in model.modules())


def _greedy(model: torch.nn.Module, tokenizer, max_tokens: int = 10) -> list[str]:
    engine = GenerationEngine(model, tokenizer, max_batch_size=2)  # three requests, two rows: joins mid-decode
    try:
        streams = [engine.submit(tokenizer(p, add_special_tokens=False)["input_ids"],
                                 SamplingParams(max_tokens=max_tokens, temperature=0)) for p in PROMPTS]
        return [s.collect().text for s in streams]
    finally:
        engine.close()


@pytest.mark.parametrize("method", ["lora", "mixlora"])
def test_merged_model_equals_the_unmerged_one(method: str, tmp_path: Path) -> None:
    directory = _save_trained_like(method, tmp_path)
    unmerged, tokenizer = load_adapter(directory)
    merged, _ = load_adapter(directory, inference=True)
    assert _is_unmerged(unmerged) and not _is_unmerged(merged)
    assert not any("lora_A" in n or "lora_B" in n for n, _ in merged.named_parameters())
    assert not any(p.requires_grad for p in merged.parameters()) and not merged.training
    assert len(mixlora_blocks(merged)) == (2 if method == "mixlora" else 0)  # the routed experts stay

    ids = torch.randint(3, 259, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # a left-padded row
    with torch.no_grad():
        reference, fast = unmerged(ids, attention_mask=mask).logits, merged(ids, attention_mask=mask).logits
    with torch.no_grad():
        base_logits = load_base("tiny-llama")[0](ids, attention_mask=mask).logits
    assert not torch.allclose(reference, base_logits, atol=1e-2)  # the adapters do change the function
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-4)
    texts = _greedy(merged, tokenizer)
    assert texts == _greedy(unmerged, tokenizer) and any(texts)


def test_serving_loads_merged(tmp_path: Path) -> None:
    directory = _save_trained_like("mixlora", tmp_path)
    model = load_model_from(directory, read_manifest(directory))  # the family contract's loader (serving)
    assert not _is_unmerged(model) and len(mixlora_blocks(model)) == 2


@pytest.mark.parametrize("method", ["lora", "mixlora"])
def test_training_and_resume_keep_the_adapters_unmerged(method: str, tmp_path: Path) -> None:
    directory = _save_trained_like(method, tmp_path)
    recipe = MixLoRARecipe.__new__(MixLoRARecipe)  # build_model reads only these
    recipe.experiment = SimpleNamespace(model=_config(method), name="t")
    recipe.worker = SimpleNamespace(rank=1)
    for resume in (None, directory):
        recipe.base = load_base("tiny-llama")[0]
        model = recipe.build_model(resume)
        assert _is_unmerged(model)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert any(".lora_A." in n for n in trainable)
        assert (method == "mixlora") == any(".router." in n for n in trainable)


def test_the_stacked_expert_factors_follow_weight_updates() -> None:
    """The served path caches the experts' stacked factors; an in-place update (load_weights, an
    optimizer step) must be seen by the next served forward."""
    torch.manual_seed(0)
    model, _ = load_base("tiny-llama")
    apply_adapters(model, _config("mixlora"))
    randomize_routing(model)
    model.eval()
    ids = torch.randint(3, 259, (2, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(ids).logits
        for block in mixlora_blocks(model):
            block.lora_down.B.mul_(2.0)
        after = model(ids).logits
    assert not torch.allclose(before, after)
    for block in mixlora_blocks(model):
        block.fast_inference = False
    try:
        with torch.no_grad():
            torch.testing.assert_close(after, model(ids).logits, rtol=1e-5, atol=1e-5)
    finally:
        for block in mixlora_blocks(model):
            block.fast_inference = True
