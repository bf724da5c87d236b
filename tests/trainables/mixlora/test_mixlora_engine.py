"""MixLoRA through the continuous-batching engine: each answer's ``moe`` counts, per layer, the experts
that carried its generated tokens, exactly as the router picks them for the sequence run alone; tracing
changes no token."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
import torch
from support import randomize_routing
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP

from trainables.lm import load_base
from trainables.lm.engine import GenerationEngine, SamplingParams
from trainables.mixlora import MixLoRALayerConfig, MixLoRAMLP, apply_mixlora, mixlora_blocks

E, K, TRACE_TOKENS = 4, 2, 4
PROMPTS = ["Hello there, how are", "x", "def f(a, b):\n    return", "The quick brown fox jumps over the dog"]


@pytest.fixture(scope="module")
def mixlora() -> Iterator[tuple]:
    """Tiny Llama with MixLoRA: expert LoRA large enough that greedy decoding does not repeat one byte
    (so routing varies from token to token), and a decisive router (no near-ties, batched or alone)."""
    model, tokenizer = load_base("tiny-llama")
    apply_mixlora(model, MixLoRALayerConfig(num_experts=E, top_k=K, rank=4, alpha=8, dropout=0.0, attention_lora=False))
    randomize_routing(model)
    model.eval()
    engine = GenerationEngine(model, tokenizer, max_batch_size=3, trace_tokens=TRACE_TOKENS)
    yield model, tokenizer, engine
    engine.close()


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_pop_expert_choices_has_the_input_shape_and_forgets() -> None:
    block = MixLoRAMLP.from_mlp(
        LlamaMLP(LlamaConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2)),
        MixLoRALayerConfig(num_experts=E, top_k=K),
    ).eval()
    assert block.pop_expert_choices() is None
    block(torch.randn(3, 5, 8))
    choices = block.pop_expert_choices()
    assert choices is not None and choices.shape == (3, 5, K) and choices.dtype == torch.long
    assert block.pop_expert_choices() is None and block.last is None


def test_moe_counts_the_experts_of_each_generated_token_as_routed_alone(mixlora: tuple) -> None:
    model, tokenizer, engine = mixlora
    budgets = [6 + 3 * i for i in range(len(PROMPTS))]
    # four requests through three rows: they join and leave mid-decode, their traces must follow them
    streams = [
        engine.submit(_ids(tokenizer, p), SamplingParams(max_tokens=n, temperature=0))
        for p, n in zip(PROMPTS, budgets, strict=True)
    ]
    answers = [s.collect() for s in streams]
    assert engine.max_running == 3
    layers = model.config.num_hidden_layers
    for prompt, budget, answer in zip(PROMPTS, budgets, answers, strict=True):
        ids = torch.tensor([_ids(tokenizer, prompt)])  # (1, P)
        alone = model.generate(ids, max_new_tokens=budget, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        new = alone[0, ids.shape[1] :].tolist()
        new = new[: new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new
        # tracing changes nothing: the batched text is the text of the sequence decoded alone
        assert answer.text == tokenizer.decode(new, skip_special_tokens=True)
        moe = answer.moe
        assert moe is not None and moe["tokens"] == answer.completion_tokens == len(new) and moe["top_k"] == K
        assert [entry["layer"] for entry in moe["layers"]] == list(range(layers))
        for entry in moe["layers"]:
            assert sum(entry["experts"].values()) == len(new) * K
            assert all(0 <= int(e) < E for e in entry["experts"])
            counts = list(entry["experts"].values())
            assert counts == sorted(counts, reverse=True)

        # the reference: one forward of prompt + completion alone; token j was computed at position P-1+j
        full = torch.tensor([ids[0].tolist() + new])  # (1, P + n)
        with torch.no_grad():
            model(full)
        routed = torch.stack([b.pop_expert_choices()[0] for b in mixlora_blocks(model)], dim=1)  # (P+n, L, k)
        expected = routed[ids.shape[1] - 1 : ids.shape[1] - 1 + len(new)]  # (n, L, k)
        assert moe["per_token"] == expected[:TRACE_TOKENS].tolist()
        for layer, entry in enumerate(moe["layers"]):
            assert entry["experts"] == {str(e): c for e, c in Counter(expected[:, layer].flatten().tolist()).items()}
