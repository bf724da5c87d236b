"""The pretrained causal-LM base shared by the LLM families (load, cache, check, generate)."""

from trainables.lm.base import (
    ATTENTION_MODULES,
    MLP_MODULES,
    SMOLLM2,
    TINY_LLAMA,
    base_reference,
    byte_level_tokenizer,
    cache_dir,
    cache_root,
    check_architecture,
    decoder_layers,
    ensure_smollm2_cache,
    generate_text,
    gguf_path,
    load_base,
    smollm2_cache_ready,
    tiny_llama,
)

__all__ = [
    "ATTENTION_MODULES",
    "MLP_MODULES",
    "SMOLLM2",
    "TINY_LLAMA",
    "base_reference",
    "byte_level_tokenizer",
    "cache_dir",
    "cache_root",
    "check_architecture",
    "decoder_layers",
    "ensure_smollm2_cache",
    "generate_text",
    "gguf_path",
    "load_base",
    "smollm2_cache_ready",
    "tiny_llama",
]
