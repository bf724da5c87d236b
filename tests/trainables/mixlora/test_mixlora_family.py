"""The MixLoRA family's pieces without Ray: adapter directories and the config checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from orchestrator.config import load_experiment
from orchestrator.experiment import ExperimentError
from trainables.lm import load_base
from trainables.mixlora.checkpoint import apply_adapters, load_adapter, save_adapter, trainable_parameters
from trainables.mixlora.config import MixLoRAConfig
from trainables.training.manifest import read_manifest

TINY_YAML = Path(__file__).resolve().parents[3] / "experiments" / "mixlora_tiny.yaml"


def _trained_like(cfg: MixLoRAConfig) -> torch.nn.Module:
    """A tiny adapted model with every adapter weight moved off its init (B starts at zero)."""
    torch.manual_seed(0)
    model, _ = load_base("tiny-llama")
    apply_adapters(model, cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("method", ["mixlora", "lora"])
def test_adapter_directory_reloads_to_identical_logits(method: str, tmp_path: Path) -> None:
    cfg = MixLoRAConfig(method=method, num_experts=4, rank=4)
    model = _trained_like(cfg)
    save_adapter(model, cfg, tmp_path, {"step": 3})
    files = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "adapter_config.json", "adapter_model.safetensors"} <= files
    assert ("mixlora.safetensors" in files) == (method == "mixlora")
    manifest = read_manifest(tmp_path)
    assert manifest.family == "mixlora" and manifest.base["name"] == "tiny-llama"
    assert manifest.extra["trainable_parameters"] == trainable_parameters(model)
    x = torch.randint(0, 200, (2, 11))
    reloaded, _ = load_adapter(tmp_path)
    with torch.no_grad():
        assert torch.equal(model(x).logits, reloaded(x).logits)


def test_peft_loads_the_adapter_on_the_base(tmp_path: Path) -> None:
    from peft import PeftModel

    cfg = MixLoRAConfig(method="lora", rank=4)
    model = _trained_like(cfg)
    save_adapter(model, cfg, tmp_path)
    base, _ = load_base("tiny-llama")
    peft_model = PeftModel.from_pretrained(base, str(tmp_path)).eval()
    x = torch.randint(0, 200, (1, 9))
    with torch.no_grad():
        assert torch.allclose(peft_model(x).logits, model(x).logits, atol=1e-6)


def test_lora_baseline_matches_mixlora_parameters() -> None:
    mix = trainable_parameters(_trained_like(MixLoRAConfig(method="mixlora")))
    lora = trainable_parameters(_trained_like(MixLoRAConfig(method="lora")))
    assert abs(lora - mix) <= 0.1 * mix


def test_tiny_experiment_validates_and_bad_values_are_named() -> None:
    exp = load_experiment(TINY_YAML)
    assert exp.family == "mixlora" and exp.model.method == "mixlora" and exp.train.grad_accum_steps == 2
    with pytest.raises(ExperimentError) as info:
        load_experiment(TINY_YAML, ["model.method=dora", "model.top_k=9", "data.sources=[wiki]",
                                    "evaluate.tasks=[mmlu]", "serve.max_n=0"])
    errors = "\n".join(info.value.errors)
    for needle in ("model.method: got 'dora'", "model.top_k: got 9", "data.sources: got 'wiki'",
                   "evaluate.tasks: got 'mmlu'", "serve.max_n: got 0, expected >= 1"):
        assert needle in errors, errors
