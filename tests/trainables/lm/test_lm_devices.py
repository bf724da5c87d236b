"""LM placement (``trainables.lm.base``: ``inference_dtype``, ``to_device``, ``load_base(device=...)``): on CPU a
model stays exactly as loaded, in float32; in bfloat16 (what CUDA gets) every LM the families serve (a base, a
merged MixLoRA adapter, a DyLoRA-MoE pool) still decodes, close to float32, with float32 rotary frequencies.
The bfloat16 half runs here on CPU; the ``gpu`` tests put the same models on a CUDA device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support import randomize_routing, save_tiny_pool

from trainables.lm.base import inference_dtype, load_base, to_device
from trainables.lm.engine import GenerationEngine, SamplingParams
from trainables.mixlora.checkpoint import apply_adapters, load_adapter, save_adapter
from trainables.mixlora.config import MixLoRAConfig

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
PROMPT = "def add(a, b):"


def _mixlora_checkpoint(directory: Path) -> Path:
    cfg = MixLoRAConfig(method="mixlora", num_experts=4, top_k=2, rank=4, alpha=8, dropout=0.0)
    torch.manual_seed(0)
    model, _ = load_base("tiny-llama")
    apply_adapters(model, cfg)
    randomize_routing(model)
    return save_adapter(model, cfg, directory)


def _load(kind: str, tmp_path: Path) -> tuple[torch.nn.Module, object]:
    """A float32 model as the loaders give it on CPU: ``base``, a merged ``mixlora`` adapter, a DyLoRA ``pool``."""
    from trainables.lm.serving import load_lm

    if kind == "base":
        return load_base("tiny-llama")
    if kind == "mixlora":
        return load_adapter(_mixlora_checkpoint(tmp_path / "adapter"), inference=True)
    model, tokenizer, _ = load_lm(save_tiny_pool(tmp_path / "pool", seed=0, step=1))
    return model, tokenizer


def _decode(model: torch.nn.Module, tokenizer: object, temperature: float = 0.0) -> str:
    engine = GenerationEngine(model, tokenizer, max_batch_size=2)
    try:
        ids = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
        event = engine.submit(ids, SamplingParams(max_tokens=4, temperature=temperature, seed=1)).collect()
        assert event.completion_tokens == 4 and event.finish_reason == "length"
        return event.text
    finally:
        engine.close()


@torch.no_grad()
def _logits(model: torch.nn.Module, tokenizer: object) -> torch.Tensor:
    device = next(model.parameters()).device
    ids = torch.tensor([tokenizer(PROMPT, add_special_tokens=False)["input_ids"]], device=device)  # (1, T)
    return model(input_ids=ids).logits.float().cpu()[0]  # (T, V)


def _rotary_dtypes(model: torch.nn.Module) -> set[torch.dtype]:
    return {b.dtype for name, b in model.named_buffers() if name.endswith("inv_freq")}


def test_inference_dtype_is_bfloat16_on_cuda_only() -> None:
    assert inference_dtype("cuda") == inference_dtype(torch.device("cuda", 0)) == torch.bfloat16
    assert inference_dtype("cpu") == torch.float32


@pytest.mark.parametrize("kind", ["base", "mixlora", "pool"])
def test_on_cpu_a_model_stays_as_loaded(kind: str, tmp_path: Path) -> None:
    model, _ = _load(kind, tmp_path)
    before = {name: (p.data_ptr(), p.dtype) for name, p in model.named_parameters()}
    assert to_device(model, "cpu") is model
    assert {name: (p.data_ptr(), p.dtype) for name, p in model.named_parameters()} == before  # not even copied
    base, _ = load_base("tiny-llama", device="cpu")
    assert {p.dtype for p in base.parameters()} == {torch.float32}


@pytest.mark.parametrize("kind", ["base", "mixlora", "pool"])
def test_in_bfloat16_every_served_lm_decodes_close_to_float32(kind: str, tmp_path: Path) -> None:
    model, tokenizer = _load(kind, tmp_path)
    reference = _logits(model, tokenizer)  # float32
    to_device(model, "cpu", torch.bfloat16)  # what to_device(model, "cuda") does, but the move
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert _rotary_dtypes(model) == {torch.float32}  # as from_pretrained(dtype=bfloat16) keeps them
    cos = torch.nn.functional.cosine_similarity(reference, _logits(model, tokenizer), dim=-1)
    assert cos.min() > 0.99, cos
    _decode(model, tokenizer)
    _decode(model, tokenizer, temperature=0.8)


# -- on a GPU (make gpu-check) ----------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
def test_a_base_loads_on_cuda_in_bfloat16() -> None:
    model, tokenizer = load_base("tiny-llama", device="cuda")
    weight = next(model.parameters())
    assert weight.device.type == "cuda" and {p.dtype for p in model.parameters()} == {torch.bfloat16}
    _decode(model, tokenizer)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("kind", ["mixlora", "pool"])
def test_a_checkpoint_moved_to_cuda_decodes_in_bfloat16_close_to_cpu(kind: str, tmp_path: Path) -> None:
    model, tokenizer = _load(kind, tmp_path)
    reference = _logits(model, tokenizer)
    to_device(model, "cuda")
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("cuda", torch.bfloat16)}
    assert _rotary_dtypes(model) == {torch.float32}
    cos = torch.nn.functional.cosine_similarity(reference, _logits(model, tokenizer), dim=-1)
    assert cos.min() > 0.99, cos
    _decode(model, tokenizer)
    _decode(model, tokenizer, temperature=0.8)
